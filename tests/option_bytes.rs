//! Option bytes by name, dual-bank boot, write and read protection, and the diagnoses of
//! failures, through the CLI against the simulated target.

mod common;

use common::{fails, ok, path_str, run, SimChip};
use serde_json::Value;
use stm32boot::device::DeviceTable;
use stm32boot::sim::{Mode, SimSpec, Target};

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(&a)).expect("JSON output")
}

fn field(v: &Value, name: &str) -> u64 {
    v["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("field {name} in {v}"))["value"]
        .as_u64()
        .expect("value")
}

/// The chip of `sim` as its state file holds it, ready to be reset.
fn target(sim: &SimChip) -> Target {
    let port = sim.port();
    SimSpec::parse(port.trim_start_matches("sim:"))
        .expect("spec")
        .build(DeviceTable::builtin().expect("table"))
        .expect("state loads")
}

/// A minimal application: initial stack pointer, reset vector, then filler.
fn app(sp: u32, reset: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&sp.to_le_bytes());
    v.extend_from_slice(&reset.to_le_bytes());
    v.extend((8..len).map(|i| (i * 7) as u8));
    v
}

#[test]
fn factory_option_bytes_decode_for_every_family_group() {
    for (part, rdp) in [
        ("stm32f030x8", 0xAA),
        ("stm32f103xb", 0xA5),
        ("stm32f303xc", 0xAA),
        ("stm32f205", 0xAA),
        ("stm32f411", 0xAA),
        ("stm32f746", 0xAA),
        ("stm32l072", 0xAA),
        ("stm32l152xc", 0xAA),
        ("stm32l476", 0xAA),
        ("stm32l4r5", 0xAA),
        ("stm32g071", 0xAA),
        ("stm32g474", 0xAA),
        ("stm32wb55", 0xAA),
        ("stm32wle5", 0xAA),
    ] {
        let port = format!("sim:{part}");
        let v = json(&["ob", "show", "--port", &port]);
        assert_eq!(field(&v, "RDP"), rdp, "{part}");
        assert_eq!(
            v["write_protected_pages"].as_array().map(Vec::len),
            Some(0),
            "{part}"
        );
        assert!(
            v["complement_mismatch"]
                .as_array()
                .expect("list")
                .is_empty(),
            "{part}"
        );
    }
    let g4 = json(&["ob", "show", "--port", "sim:stm32g474"]);
    assert_eq!(field(&g4, "DBANK"), 1);
    assert_eq!(field(&g4, "BFB2"), 0);
    let f4 = ok(&["ob", "show", "--port", "sim:stm32f411"]);
    assert!(
        f4.contains("BOR_LEV") && f4.contains("off (POR/PDR only)"),
        "{f4}"
    );
    let raw = ok(&["ob", "show", "--raw", "--port", "sim:stm32f411"]);
    assert!(raw.contains("0x1FFFC000  EC AA 13 55"), "{raw}");
    // Families without a layout print the raw bytes and say so.
    let c0 = ok(&["ob", "show", "--port", "sim:stm32c031"]);
    assert!(
        c0.contains("not decoded yet") && c0.contains("0x1FFF7800"),
        "{c0}"
    );
}

#[test]
fn set_changes_named_fields_and_reads_them_back_on_each_family_group() {
    for (part, name, value) in [
        ("stm32f030x8", "nRST_STOP", 0),
        ("stm32f103xb", "nRST_STDBY", 0),
        ("stm32f411", "BOR_LEV", 1),
        ("stm32l072", "IWDG_SW", 0),
        ("stm32l476", "nRST_SHDW", 0),
        ("stm32g071", "BORR_LEV", 2),
        ("stm32g474", "SRAM_PE", 0),
        ("stm32wb55", "WWDG_SW", 0),
    ] {
        let sim = SimChip::new(part);
        let port = sim.port();
        let assignment = format!("{name}={value}");
        let before = json(&["ob", "show", "--port", &port]);
        let out = ok(&["ob", "set", &assignment, "--port", &port]);
        assert!(out.contains("reads back as written"), "{part}: {out}");
        let after = json(&["ob", "show", "--port", &port]);
        assert_eq!(field(&after, name), value, "{part}");
        // Only that field changed, and every complement still matches.
        for f in before["fields"].as_array().expect("fields") {
            let n = f["name"].as_str().expect("name");
            if n != name {
                assert_eq!(
                    field(&after, n),
                    f["value"].as_u64().expect("value"),
                    "{part} {n}"
                );
            }
        }
        assert!(
            after["complement_mismatch"]
                .as_array()
                .expect("list")
                .is_empty(),
            "{part}"
        );
    }
}

#[test]
fn set_checks_names_values_and_dry_run_changes_nothing() {
    let sim = SimChip::new("stm32f411");
    let port = sim.port();
    let err = fails(&["ob", "set", "BFB2=1", "--port", &port], 2);
    assert!(
        err.contains("no option called BFB2") && err.contains("nRST_STOP"),
        "{err}"
    );
    let err = fails(&["ob", "set", "BOR_LEV=9", "--port", &port], 2);
    assert!(err.contains("valid values are 0 (level 3"), "{err}");
    let err = fails(&["ob", "set", "nRST_STOP", "--port", &port], 2);
    assert!(err.contains("NAME=VALUE"), "{err}");
    let before = sim.peek(0x1FFF_C000, 16);
    let out = ok(&["ob", "set", "nRST_STOP=0", "--dry-run", "--port", &port]);
    assert!(
        out.contains("nRST_STOP: 1 (no reset) -> 0 (resets the chip)"),
        "{out}"
    );
    assert!(out.contains("write 16 bytes at 0x1FFFC000"), "{out}");
    assert_eq!(sim.peek(0x1FFF_C000, 16), before, "dry run");
}

#[test]
fn read_protection_by_name_warns_and_level_2_needs_the_flag() {
    let sim = SimChip::new("stm32f411");
    let port = sim.port();
    let err = fails(&["ob", "set", "RDP=2", "--port", &port], 2);
    assert!(err.contains("--allow-permanent-lock"), "{err}");
    let out = run(&["ob", "set", "RDP=1", "--port", &port]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("flash can no longer be read"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("read protection is active, as asked"));
    let err = fails(&["ob", "show", "--port", &port], 5);
    assert!(err.contains("read protection is active"), "{err}");
    // Level 2 with the flag: the chip locks for good; the bootloader is gone after reset.
    let sim = SimChip::new("stm32f411");
    let port = sim.port();
    ok(&[
        "ob",
        "set",
        "RDP=2",
        "--allow-permanent-lock",
        "--port",
        &port,
    ]);
    assert_eq!(sim.chip().rdp_level(), 2);
}

/// Write a bank-1 image into bank 2, swap, and reset with BOOT0 low: bank 2 runs.
fn bank2_boot(part: &str, sp: u32, bank2: u32, flash_text: &str) {
    let sim = SimChip::new(part);
    let port = sim.port();
    let image = sim.file("app.bin");
    std::fs::write(&image, app(sp, 0x0800_0101, 4096)).expect("write image");
    let img = path_str(&image);
    let err = fails(&["bank", "swap", "--port", &port], 2);
    assert!(err.contains("bank 2 is empty"), "{err}");
    ok(&["write", img, "-a", "0x08000000", "--port", &port]);
    let out = ok(&[
        "write",
        "--bank",
        "2",
        img,
        "-a",
        "0x08000000",
        "--port",
        &port,
    ]);
    assert!(out.contains("wrote 4096 bytes"), "{out}");
    assert_eq!(
        sim.peek(bank2, 8),
        app(sp, 0x0800_0101, 8),
        "{part}: landed in bank 2"
    );
    let status = ok(&["bank", "status", "--port", &port]);
    assert!(
        status.contains(&format!("bank 2 at 0x{bank2:08X} holds an image")),
        "{status}"
    );
    let out = ok(&["bank", "swap", "--port", &port]);
    assert!(
        out.contains("BFB2: 0") && out.contains("runs bank 2"),
        "{out}"
    );
    let status = ok(&["bank", "status", "--port", &port]);
    assert!(
        status.contains("BFB2=1") && status.contains("runs bank 2"),
        "{status}"
    );
    let mut t = target(&sim);
    t.set_boot0_pin(false);
    t.reset();
    assert!(
        matches!(t.mode(), Mode::Application { .. }),
        "{part}: {:?}",
        t.mode()
    );
    assert_eq!(t.booted_bank(), Some(2), "{part}");
    let banner = String::from_utf8_lossy(&t.take_boot_output()).to_string();
    assert!(banner.contains(flash_text), "{banner}");
    // Swapping back boots bank 1.
    ok(&["bank", "swap", "--port", &port]);
    let mut t = target(&sim);
    t.set_boot0_pin(false);
    t.reset();
    assert_eq!(t.booted_bank(), Some(1), "{part}");
}

#[test]
fn l476_bank_swap_boots_bank_2() {
    bank2_boot("stm32l476", 0x2001_8000, 0x0808_0000, "bank 2 (0x08080000)");
}

#[test]
fn l072_bank_swap_boots_bank_2() {
    bank2_boot("stm32l072", 0x2000_5000, 0x0801_8000, "bank 2 (0x08018000)");
}

#[test]
fn ob_set_bfb2_by_name_on_l476_and_l072() {
    for (part, sp, bank2) in [
        ("stm32l476", 0x2001_8000u32, 0x0808_0000u32),
        ("stm32l072", 0x2000_5000, 0x0801_8000),
    ] {
        let sim = SimChip::new(part);
        let port = sim.port();
        let image = sim.file("app.bin");
        std::fs::write(&image, app(sp, 0x0800_0101, 2048)).expect("write image");
        ok(&[
            "write",
            "--bank",
            "2",
            path_str(&image),
            "-a",
            "0x08000000",
            "--port",
            &port,
        ]);
        ok(&["ob", "set", "BFB2=1", "--port", &port]);
        let mut t = target(&sim);
        t.set_boot0_pin(false);
        t.reset();
        assert_eq!(t.booted_bank(), Some(2), "{part}");
        assert_eq!(sim.peek(bank2, 4), sp.to_le_bytes(), "{part}");
        // A further image for bank 1 gets a warning: the chip boots bank 2.
        let out = run(&[
            "write",
            path_str(&image),
            "-a",
            "0x08000000",
            "--port",
            &port,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bank 2 is selected (BFB2=1)"), "{stderr}");
    }
}

#[test]
fn write_bank_2_refuses_images_outside_bank_1_and_single_bank_parts() {
    let sim = SimChip::new("stm32l476");
    let image = sim.file("far.hex");
    ok(&[
        "read",
        "0x08080000",
        "256",
        "-o",
        path_str(&image),
        "--port",
        &sim.port(),
    ]);
    let err = fails(
        &[
            "write",
            "--bank",
            "2",
            path_str(&image),
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(err.contains("linked for bank 1"), "{err}");
    let f4 = SimChip::new("stm32f411");
    let bin = f4.file("a.bin");
    std::fs::write(&bin, [0u8; 16]).expect("write");
    let err = fails(
        &[
            "write",
            "--bank",
            "2",
            path_str(&bin),
            "-a",
            "0x08000000",
            "--port",
            &f4.port(),
        ],
        2,
    );
    assert!(err.contains("there is no bank 2"), "{err}");
    let err = fails(&["bank", "swap", "--port", &f4.port()], 2);
    assert!(err.contains("no dual-bank boot option"), "{err}");
}

#[test]
fn write_protected_sectors_are_diagnosed_in_plain_words() {
    let sim = SimChip::new("stm32f411");
    let port = sim.port();
    let image = sim.file("app.bin");
    std::fs::write(&image, common::pattern(0x10000, 3)).expect("write image");
    let img = path_str(&image);
    let out = ok(&["protect", "--port", &port, "write", "on", "3"]);
    assert!(out.contains("page(s) 3 are now write-protected"), "{out}");
    let before = sim.peek(0x0800_0000, 0x10000);
    // Write: refused before anything is erased.
    let err = fails(&["write", img, "-a", "0x08000000", "--port", &port], 5);
    assert!(
        err.contains("sector 3 (0x0800C000-0x0800FFFF) is write-protected")
            && err.contains("fix: run `stm32boot protect write off`"),
        "{err}"
    );
    assert_eq!(sim.peek(0x0800_0000, 0x10000), before, "nothing changed");
    // Erase: likewise.
    let err = fails(&["erase", "--pages", "2..3", "--port", &port], 5);
    assert!(
        err.contains("sector 3") && err.contains("protect write off"),
        "{err}"
    );
    let err = fails(&["erase", "--all", "--port", &port], 5);
    assert!(err.contains("mass erase is refused"), "{err}");
    // Verify against the protected content: the mismatch is explained.
    let err = fails(&["verify", img, "-a", "0x08000000", "--port", &port], 4);
    assert!(err.contains("cause: sector 3"), "{err}");
    let v: Value = serde_json::from_slice(
        &run(&["verify", img, "-a", "0x08000000", "--port", &port, "--json"]).stdout,
    )
    .expect("json");
    assert_eq!(v["error"]["exit_code"], 4);
    assert!(v["error"]["findings"][0]["fix"]
        .as_str()
        .expect("fix")
        .contains("protect write off"));
    ok(&["protect", "--port", &port, "write", "off"]);
    ok(&[
        "write",
        img,
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &port,
    ]);
}

#[test]
fn write_protection_pages_per_family() {
    // F103 medium density protects 4 KB units: four 1 KB pages per code.
    let sim = SimChip::new("stm32f103xb");
    let out = run(&["protect", "--port", &sim.port(), "write", "on", "5"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pages 4-7 will be protected"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("page(s) 4-7 are now write-protected"));
    // L476 areas, in bank 2.
    let sim = SimChip::new("stm32l476");
    let v = json(&["info", "--port", &sim.port()]);
    assert_eq!(v["flash"]["pages"], 512, "two banks of 256 pages");
    let first2 = 256;
    let pages = format!("{}..{}", first2 + 1, first2 + 2);
    let out = ok(&["protect", "--port", &sim.port(), "write", "on", &pages]);
    assert!(
        out.contains(&format!("{}-{}", first2 + 1, first2 + 2)),
        "{out}"
    );
    let ob = json(&["ob", "show", "--port", &sim.port()]);
    assert_eq!(field(&ob, "WRP2A_STRT"), 1);
    assert_eq!(field(&ob, "WRP2A_END"), 2);
    let err = fails(
        &["protect", "--port", &sim.port(), "write", "on", "0,2,4"],
        2,
    );
    assert!(err.contains("separate runs"), "{err}");
}

#[test]
fn readout_protection_is_diagnosed_and_removed_with_the_mass_erase() {
    let sim = SimChip::new("stm32f411");
    let port = sim.port();
    let image = sim.file("app.bin");
    std::fs::write(&image, common::pattern(4096, 5)).expect("write image");
    ok(&[
        "write",
        path_str(&image),
        "-a",
        "0x08000000",
        "--port",
        &port,
    ]);
    ok(&["protect", "--port", &port, "readout", "on"]);
    let out = sim.file("out.bin");
    let err = fails(
        &[
            "read",
            "0x08000000",
            "16",
            "-o",
            path_str(&out),
            "--port",
            &port,
        ],
        5,
    );
    assert!(
        err.contains("cause: read protection is active")
            && err.contains("protect readout off --confirm-mass-erase"),
        "{err}"
    );
    let err = fails(&["protect", "--port", &port, "readout", "off"], 2);
    assert!(err.contains("MASS-ERASES"), "{err}");
    ok(&[
        "protect",
        "--port",
        &port,
        "readout",
        "off",
        "--confirm-mass-erase",
    ]);
    assert_eq!(sim.chip().rdp_level(), 0);
    assert!(
        sim.peek(0x0800_0000, 4096).iter().all(|b| *b == 0xFF),
        "mass-erased"
    );
    ok(&[
        "read",
        "0x08000000",
        "16",
        "-o",
        path_str(&out),
        "--port",
        &port,
    ]);
}

#[test]
fn doctor_reports_a_healthy_chip_and_the_usual_faults() {
    let out = ok(&["doctor", "--port", "sim:stm32l476"]);
    assert!(
        out.contains("[ ok ] sync: the bootloader answered ACK at 115200 baud 8E1"),
        "{out}"
    );
    assert!(out.contains("[info] banks: 2 bank(s), DUALBANK=1"), "{out}");
    let err = fails(&["doctor", "--port", "sim:stm32f411?echo=1"], 3);
    assert!(
        err.contains("[FAIL] echo: every byte sent comes back"),
        "{err}"
    );
    let err = fails(
        &["doctor", "--port", "sim:stm32f411", "--parity", "none"],
        3,
    );
    assert!(err.contains("set --parity even"), "{err}");
    // Read and write protection show up in the checklist.
    let sim = SimChip::new("stm32f411");
    ok(&["protect", "--port", &sim.port(), "write", "on", "0,1"]);
    let out = ok(&["doctor", "--port", &sim.port()]);
    assert!(
        out.contains("[warn] write protection: page(s) 0-1"),
        "{out}"
    );
    ok(&["protect", "--port", &sim.port(), "readout", "on"]);
    let out = ok(&["doctor", "--port", &sim.port()]);
    assert!(out.contains("[warn] read protection: active"), "{out}");
    // An application running instead of the bootloader.
    let sim = SimChip::new("stm32f411");
    let image = sim.file("app.bin");
    std::fs::write(&image, app(0x2002_0000, 0x0800_0101, 1024)).expect("write image");
    ok(&[
        "write",
        path_str(&image),
        "-a",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    ok(&["go", "0x08000000", "--port", &sim.port()]);
    let err = fails(&["doctor", "--port", &sim.port()], 3);
    assert!(err.contains("sync"), "{err}");
}
