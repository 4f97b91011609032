//! Every CLI command against the in-process simulator, checking the chip's memory afterwards.

mod common;

use common::*;
use stm32boot::image::Image;

const F411: &str = "stm32f411";
const L476: &str = "stm32l476";

#[test]
fn info_on_both_simulated_families() {
    for (part, pid, name) in [(F411, "0x431", "STM32F411"), (L476, "0x415", "STM32L47")] {
        let sim = SimChip::new(part);
        let text = ok(&["info", "--port", &sim.port()]);
        assert!(
            text.contains(name) && text.contains(&format!("PID {pid}")),
            "{text}"
        );
        assert!(text.contains("protocol 3.1"), "{text}");
        assert!(text.contains("readout inactive"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&ok(&["info", "--port", &sim.port(), "--json"])).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["pid"], pid);
        assert_eq!(json["unique_id"].as_str().unwrap().len(), 24);
    }
    let text = ok(&["info", "--port", "sim:stm32l476"]);
    assert!(
        text.contains("512 x 2 KiB") && text.contains("2 banks"),
        "{text}"
    );
}

#[test]
fn write_hex_with_verify_lands_in_flash_and_erases_only_its_sector() {
    let sim = SimChip::new(F411);
    // An older firmware in sectors 0 and 1.
    sim.fill(0x0800_0000, &[0x5A; 0x8000]);
    let data = pattern(5000, 1);
    let img = Image::from_bin(&data, 0x0800_0000).unwrap();
    let hex = sim.file("fw.hex");
    std::fs::write(&hex, img.to_ihex().unwrap()).unwrap();
    let out = ok(&["write", path_str(&hex), "--port", &sim.port(), "--verify"]);
    assert!(out.contains("verified by reading back"), "{out}");
    assert_eq!(sim.peek(0x0800_0000, 5000), data);
    // The rest of sector 0 is kept; sector 1 is not touched.
    assert_eq!(sim.peek(0x0800_1388, 8), vec![0x5A; 8]);
    assert_eq!(sim.peek(0x0800_4000, 8), vec![0x5A; 8]);
    let chip = sim.chip();
    assert_eq!(chip.erase_counts(), &[1, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn write_verifies_by_crc_where_the_bootloader_offers_get_checksum() {
    let sim = SimChip::with_options(L476, "version=0x33");
    // Old content in pages 2 to 4.
    sim.fill(0x0800_1000, &[0x00; 0x1800]);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(3001, 2)).unwrap();
    let out = ok(&[
        "write",
        path_str(&bin),
        "--address",
        "0x08001000",
        "--port",
        &sim.port(),
        "--verify",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["report"]["verified"], "crc");
    assert_eq!(sim.peek(0x0800_1000, 3001), pattern(3001, 2));
    // Pages 2 and 3 only.
    let counts = sim.chip().erase_counts().to_vec();
    assert_eq!(counts.iter().sum::<u32>(), 2);
    assert_eq!((counts[2], counts[3]), (1, 1));
}

#[test]
fn sparse_hex_round_trip_leaves_untouched_pages_unerased() {
    let sim = SimChip::new(F411);
    let mut img = Image::new();
    img.add(0x0800_0000, &pattern(512, 3)).unwrap();
    img.add(0x0806_0000, &pattern(64, 4)).unwrap();
    let hex = sim.file("sparse.hex");
    std::fs::write(&hex, img.to_ihex().unwrap()).unwrap();
    let out = ok(&["write", path_str(&hex), "--port", &sim.port(), "--verify"]);
    // A blank chip: both pieces go into erased bytes, so nothing is erased at all.
    assert!(out.contains("0 page(s) erased"), "{out}");
    assert_eq!(sim.chip().erase_counts(), &[0, 0, 0, 0, 0, 0, 0, 0]);
    // Read both pieces back as HEX and compare with the image.
    for (addr, len) in [(0x0800_0000u32, 512u32), (0x0806_0000, 64)] {
        let out = sim.file("back.hex");
        ok(&[
            "read",
            &format!("0x{addr:08X}"),
            &len.to_string(),
            "-o",
            path_str(&out),
            "--port",
            &sim.port(),
        ]);
        let back = Image::load(&out, None, None).unwrap();
        assert_eq!(back.slice(addr, len), img.slice(addr, len));
    }
    // The gap between the pieces was neither written nor erased.
    assert_eq!(sim.peek(0x0800_4000, 16), vec![0xFF; 16]);
    assert_eq!(
        sim.peek(0x0800_0200, 16),
        vec![0xFF; 16],
        "nothing past the first piece"
    );
}

#[test]
fn read_to_bin() {
    let sim = SimChip::new(L476);
    // Old content in bank 2's first page, so the write erases it.
    sim.fill(0x0808_0000, &[0x00; 2048]);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(1024, 5)).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "--address",
        "0x08080000",
        "--port",
        &sim.port(),
    ]);
    let out = sim.file("out.bin");
    ok(&[
        "read",
        "0x08080000",
        "1K",
        "-o",
        path_str(&out),
        "--port",
        &sim.port(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), pattern(1024, 5));
    assert_eq!(
        sim.chip().erase_counts()[256],
        1,
        "bank 2 page 0 is page 256"
    );
}

#[test]
fn erase_pages_range_bank_and_all() {
    let sim = SimChip::new(L476);
    let bin = sim.file("fill.bin");
    std::fs::write(&bin, vec![0u8; 16 * 2048]).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "--address",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    ok(&["erase", "--pages", "1..2", "--port", &sim.port()]);
    assert_eq!(sim.peek(0x0800_0000, 4), vec![0; 4]);
    assert_eq!(sim.peek(0x0800_0800, 4096), vec![0xFF; 4096]);
    assert_eq!(sim.peek(0x0800_1800, 4), vec![0; 4]);
    // A range off page bounds is refused and changes nothing...
    let err = fails(
        &[
            "erase",
            "--range",
            "0x08001900:0x100",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(
        err.contains("--expand") && err.contains("0x08001800:0x800"),
        "{err}"
    );
    assert_eq!(sim.peek(0x0800_1800, 4), vec![0; 4]);
    // ...unless expanded.
    ok(&[
        "erase",
        "--range",
        "0x08001900:0x100",
        "--expand",
        "--port",
        &sim.port(),
    ]);
    assert_eq!(sim.peek(0x0800_1800, 2048), vec![0xFF; 2048]);
    assert_eq!(sim.peek(0x0800_2000, 4), vec![0; 4]);
    ok(&["erase", "--range", "0x08002000:4K", "--port", &sim.port()]);
    assert_eq!(sim.peek(0x0800_2000, 4096), vec![0xFF; 4096]);
    // Bank 2 leaves bank 1 alone.
    ok(&[
        "write",
        path_str(&bin),
        "--address",
        "0x08080000",
        "--port",
        &sim.port(),
    ]);
    ok(&["erase", "--bank", "2", "--port", &sim.port()]);
    assert_eq!(sim.peek(0x0808_0000, 16), vec![0xFF; 16]);
    assert_eq!(sim.peek(0x0800_3000, 4), vec![0; 4]);
    ok(&["erase", "--all", "--port", &sim.port()]);
    assert_eq!(sim.peek(0x0800_3000, 4), vec![0xFF; 4]);
    // Pages that do not exist.
    let err = fails(&["erase", "--pages", "600", "--port", &sim.port()], 2);
    assert!(err.contains("no page 600"), "{err}");
}

#[test]
fn erase_dry_run_changes_nothing() {
    let sim = SimChip::new(F411);
    let bin = sim.file("x.bin");
    std::fs::write(&bin, [0u8; 16]).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "--address",
        "0x08004000",
        "--port",
        &sim.port(),
    ]);
    let out = ok(&[
        "erase",
        "--pages",
        "0..1",
        "--dry-run",
        "--port",
        &sim.port(),
    ]);
    assert!(
        out.contains("page    1 at 0x08004000") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(sim.peek(0x0800_4000, 4), vec![0; 4]);
}

#[test]
fn write_dry_run_prints_plan_and_writes_nothing() {
    let sim = SimChip::new(F411);
    let bin = sim.file("x.bin");
    std::fs::write(&bin, pattern(0x5000, 9)).unwrap();
    let out = ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08000000",
        "--dry-run",
        "--port",
        &sim.port(),
    ]);
    assert!(
        out.contains("page    0") && out.contains("page    1") && !out.contains("page    2"),
        "{out}"
    );
    assert_eq!(sim.peek(0x0800_0000, 4), vec![0xFF; 4]);
    assert!(sim.chip().erase_counts().iter().all(|&c| c == 0));
}

#[test]
fn verify_matches_and_mismatches() {
    let sim = SimChip::new(F411);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(700, 6)).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    let out = ok(&[
        "verify",
        path_str(&bin),
        "-a",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    assert!(out.contains("matches"), "{out}");
    let mut other = pattern(700, 6);
    other[300] ^= 0x01;
    std::fs::write(&bin, &other).unwrap();
    let err = fails(
        &[
            "verify",
            path_str(&bin),
            "-a",
            "0x08000000",
            "--port",
            &sim.port(),
        ],
        4,
    );
    assert!(err.contains("0x0800012C"), "{err}");
}

#[test]
fn checksum_by_crc_and_by_read_back_agree() {
    let a = SimChip::new(F411);
    let b = SimChip::with_options(F411, "version=0x33");
    let erased_crc = "0xD000A3E2";
    let ra = ok(&["checksum", "0x08000000", "1024", "--port", &a.port()]);
    let rb = ok(&["checksum", "0x08000000", "1024", "--port", &b.port()]);
    assert!(
        ra.starts_with(erased_crc) && ra.contains("read back"),
        "{ra}"
    );
    assert!(
        rb.starts_with(erased_crc) && rb.contains("Get Checksum"),
        "{rb}"
    );
    let err = fails(&["checksum", "0x08000001", "8", "--port", &a.port()], 2);
    assert!(err.contains("multiples of 4"), "{err}");
}

#[test]
fn go_starts_the_application_and_refuses_option_bytes() {
    let sim = SimChip::new(F411);
    let out = ok(&["go", "--port", &sim.port(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["address"], 0x0800_0000);
    // The chip now runs whatever is at 0x08000000 and ignores the bootloader protocol, as a
    // real one does until it is reset with BOOT0 high.
    let err = fails(&["info", "--port", &sim.port()], 3);
    assert!(err.contains("running its application"), "{err}");
    let sim = SimChip::new(F411);
    let err = fails(&["go", "0x1FFFC000", "--port", &sim.port()], 5);
    assert!(
        err.contains("Go (0x21)") && err.contains("address"),
        "{err}"
    );
}

#[test]
fn write_go_jumps_to_the_image() {
    let sim = SimChip::new(F411);
    let out = ok(&[
        "write",
        "examples/blinky-f411.hex",
        "--port",
        &sim.port(),
        "--go",
    ]);
    assert!(
        out.contains("started the application at 0x08000000"),
        "{out}"
    );
}

#[test]
fn readout_protection_on_blocks_reads_and_off_mass_erases() {
    let sim = SimChip::new(F411);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(256, 7)).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    ok(&["protect", "--port", &sim.port(), "readout", "on"]);
    assert_eq!(sim.chip().rdp_level(), 1);
    let out = sim.file("r.bin");
    let err = fails(
        &[
            "read",
            "0x08000000",
            "16",
            "-o",
            path_str(&out),
            "--port",
            &sim.port(),
        ],
        5,
    );
    assert!(err.contains("read protection"), "{err}");
    let info = ok(&["info", "--port", &sim.port()]);
    assert!(info.contains("readout active"), "{info}");
    let err = fails(&["protect", "--port", &sim.port(), "readout", "off"], 2);
    assert!(err.contains("--confirm-mass-erase"), "{err}");
    assert_eq!(sim.peek(0x0800_0000, 4), pattern(4, 7));
    ok(&[
        "protect",
        "--port",
        &sim.port(),
        "readout",
        "off",
        "--confirm-mass-erase",
    ]);
    assert_eq!(sim.chip().rdp_level(), 0);
    assert_eq!(sim.peek(0x0800_0000, 256), vec![0xFF; 256]);
}

#[test]
fn write_protection_keeps_a_sector_and_the_write_is_refused_first() {
    let sim = SimChip::new(F411);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(256, 8)).unwrap();
    ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08004000",
        "--port",
        &sim.port(),
    ]);
    ok(&["protect", "--port", &sim.port(), "write", "on", "1"]);
    std::fs::write(&bin, pattern(256, 9)).unwrap();
    let err = fails(
        &[
            "write",
            path_str(&bin),
            "-a",
            "0x08004000",
            "--verify",
            "--port",
            &sim.port(),
        ],
        5,
    );
    assert!(
        err.contains("nothing was changed")
            && err.contains("sector 1 (0x08004000-0x08007FFF) is write-protected"),
        "{err}"
    );
    assert_eq!(sim.peek(0x0800_4000, 256), pattern(256, 8));
    ok(&["protect", "--port", &sim.port(), "write", "off"]);
    ok(&[
        "write",
        path_str(&bin),
        "-a",
        "0x08004000",
        "--verify",
        "--port",
        &sim.port(),
    ]);
    assert_eq!(sim.peek(0x0800_4000, 256), pattern(256, 9));
}

#[test]
fn bad_input_is_refused_before_the_chip_is_touched() {
    let sim = SimChip::new(F411);
    let bin = sim.file("fw.bin");
    std::fs::write(&bin, pattern(64, 10)).unwrap();
    let err = fails(&["write", path_str(&bin), "--port", &sim.port()], 2);
    assert!(err.contains("--address"), "{err}");
    let err = fails(
        &[
            "write",
            path_str(&bin),
            "-a",
            "0x1FFF0000",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(err.contains("system memory"), "{err}");
    let err = fails(
        &[
            "write",
            path_str(&bin),
            "-a",
            "0x0807FFF0",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(err.contains("past the end of flash"), "{err}");
    let err = fails(&["write", "no-such-file.hex", "--port", &sim.port()], 2);
    assert!(err.contains("no-such-file.hex"), "{err}");
    let bad = sim.file("bad.hex");
    std::fs::write(&bad, ":0400000001020304F0\n:00000001FF\n").unwrap();
    let err = fails(&["write", path_str(&bad), "--port", &sim.port()], 2);
    assert!(err.contains("line 1"), "{err}");
    let err = fails(&["info"], 2);
    assert!(err.contains("--port"), "{err}");
    let err = fails(&["info", "--port", "sim:stm32x999"], 2);
    assert!(err.contains("stm32boot devices"), "{err}");
    assert!(!sim.state().exists() || sim.chip().erase_counts().iter().all(|&c| c == 0));
    assert_eq!(sim.peek(0x0800_0000, 64), vec![0xFF; 64]);
}

#[test]
fn no_bootloader_answer_says_what_to_check() {
    // After Go the simulated chip runs its application and ignores the bootloader protocol.
    let sim = SimChip::new(F411);
    let json = ok(&["devices", "f411", "--json"]);
    assert!(json.contains("0x431"));
    let err = fails(&["info", "--port", "/dev/null/not-a-port"], 3);
    assert!(err.contains("not-a-port"), "{err}");
    drop(sim);
}

#[test]
fn ports_and_devices_list() {
    ok(&["ports"]);
    let out = ok(&["devices"]);
    assert!(
        out.contains("STM32F411") && out.contains("STM32L47"),
        "{out}"
    );
    let out = ok(&["devices", "L4"]);
    assert!(!out.contains("STM32F411"), "{out}");
}
