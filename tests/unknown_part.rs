//! A PID the table does not know: the generic profile, and a user device file.

mod common;

use common::*;

#[test]
fn unknown_pid_continues_with_a_generic_profile_and_says_so() {
    let sim = SimChip::with_options("stm32f411", "pid=0x4FF");
    let out = run(&["info", "--port", &sim.port()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("PID 0x4FF is not in the device table") && stderr.contains("--device-file"),
        "{stderr}"
    );
    assert!(
        stdout.contains("512 KiB"),
        "flash size found by probing: {stdout}"
    );
    // A write still works: the unknown page map means a mass erase, which the plan says.
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(1000, 11)).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &sim.port(),
    ]);
    assert_eq!(sim.peek(0x0800_0000, 1000), pattern(1000, 11));
}

#[test]
fn a_device_file_describes_a_new_part_without_recompiling() {
    let sim = SimChip::with_options("stm32f411", "pid=0x4FF");
    let file = sim.file("part.toml");
    std::fs::write(
        &file,
        r#"
[[device]]
pid = 0x4FF
name = "STM32X999 (from a device file)"
parts = ["stm32x999"]
family = "F4"
flash_size = "512K"
sectors = ["16K", "16K", "16K", "16K", "64K", "128K"]
ram = { start = 0x20000000, end = 0x2001FFFF }
bootloader_ram_end = 0x20003000
system_memory = { start = 0x1FFF0000, end = 0x1FFF77FF }
option_bytes = [{ start = 0x1FFFC000, end = 0x1FFFC00F }]
bootloader = { version = 0x31, commands = [0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92] }
"#,
    )
    .unwrap();
    let text = ok(&[
        "info",
        "--port",
        &sim.port(),
        "--device-file",
        path_str(&file),
    ]);
    assert!(
        text.contains("STM32X999 (from a device file)") && text.contains("8 erase units"),
        "{text}"
    );
    // Old content where the image goes, so that the write has to erase.
    sim.fill(0x0800_4000, &[0x00; 100]);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(100, 12)).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08004000",
        "--verify",
        "--port",
        &sim.port(),
        "--device-file",
        path_str(&file),
    ]);
    assert_eq!(
        sim.chip().erase_counts(),
        &[0, 1, 0, 0, 0, 0, 0, 0],
        "page-exact with the file's map"
    );
    // A malformed device file is refused with its name and the problem.
    std::fs::write(&file, "[[device]]\npid = 0x4FF\nname = \"x\"\n").unwrap();
    let err = fails(
        &[
            "info",
            "--port",
            &sim.port(),
            "--device-file",
            path_str(&file),
        ],
        2,
    );
    assert!(
        err.contains("part.toml") && err.contains("missing field"),
        "{err}"
    );
}
