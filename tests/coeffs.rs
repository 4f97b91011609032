//! `stm32boot coeffs` against the simulator: page-safe writes next to firmware, A/B alternation,
//! power loss, per-unit tables, every type's round trip, the C header in a C program, and bad
//! input that writes nothing.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use stm32boot::image::Image;

const L476: &str = "stm32l476";
const F411: &str = "stm32f411";

/// The fields of a 64-byte block (the README's sensor layout).
const FIELDS: &str = r#"
[[field]]
name = "gain"
type = "f32"
[[field]]
name = "offset"
type = "i32"
[[field]]
name = "temp_coeffs"
type = "f32"
count = 3
[[field]]
name = "serial"
type = "bytes"
len = 16
[[field]]
name = "calibrated_at"
type = "u64"
"#;

fn values_toml(gain: f32, serial: &str) -> String {
    format!(
        "gain = {gain:?}\noffset = -412\ntemp_coeffs = [1.0, -0.0021, 0.000004]\n\
         serial = \"{serial}\"\ncalibrated_at = 1718000000\n"
    )
}

fn write_file(sim: &SimChip, name: &str, text: &str) -> PathBuf {
    let p = sim.file(name);
    std::fs::write(&p, text).expect("test file");
    p
}

/// A one-slot layout at `address`.
fn single_layout(sim: &SimChip, address: u32) -> PathBuf {
    write_file(
        sim,
        "cal.toml",
        &format!("name = \"cal\"\nversion = 1\naddress = 0x{address:08X}\n{FIELDS}"),
    )
}

/// An A/B layout with slots at `a` and `b`.
fn ab_layout(sim: &SimChip, a: u32, b: u32) -> PathBuf {
    write_file(
        sim,
        "ab.toml",
        &format!(
            "name = \"cal\"\nversion = 1\naddress = 0x{a:08X}\nslots = 2\naddress_b = 0x{b:08X}\n{FIELDS}"
        ),
    )
}

fn read_json(layout: &Path, port: &str) -> Value {
    serde_json::from_str(&ok(&[
        "coeffs",
        "read",
        path_str(layout),
        "--port",
        port,
        "--json",
    ]))
    .expect("JSON")
}

fn coeffs_write(layout: &Path, values: &Path, port: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "coeffs",
        "write",
        path_str(layout),
        path_str(values),
        "--port",
        port,
    ];
    args.extend(extra);
    ok(&args)
}

/// Firmware that leaves a 64-byte hole at `hole` inside its page: written with `stm32boot
/// write` first, then a block goes into the hole; every firmware byte must survive.
fn firmware_survives_a_block_in_its_page(part: &str, fw_start: u32, hole: u32, fw_end: u32) {
    let sim = SimChip::new(part);
    let mut fw = Image::new();
    let before = pattern((hole - fw_start) as usize, 11);
    let after = pattern((fw_end - hole - 64) as usize, 12);
    fw.add(fw_start, &before).expect("image");
    fw.add(hole + 64, &after).expect("image");
    let hex = sim.file("fw.hex");
    std::fs::write(&hex, fw.to_ihex().expect("hex")).expect("fw file");
    ok(&["write", path_str(&hex), "--port", &sim.port(), "--verify"]);
    let layout = single_layout(&sim, hole);
    let values = write_file(&sim, "v.toml", &values_toml(0.0125, "PS-0001"));
    let erases_before: u32 = sim.chip().erase_counts().iter().sum();
    // The hole is blank: a first block is programmed into it and nothing is erased.
    let older = write_file(&sim, "old.toml", &values_toml(0.5, "PS-0000"));
    let out = coeffs_write(&layout, &older, &sim.port(), &[]);
    assert!(
        out.contains("sequence 1") && out.contains("0 page(s) erased"),
        "{out}"
    );
    assert_eq!(sim.chip().erase_counts().iter().sum::<u32>(), erases_before);
    // Over that block the page must be erased: the firmware around it is kept.
    let erases_before: u32 = sim.chip().erase_counts().iter().sum();
    let out = coeffs_write(&layout, &values, &sim.port(), &[]);
    assert!(
        out.contains("sequence 2") && out.contains("1 page(s) erased"),
        "{out}"
    );
    assert_eq!(
        sim.peek(fw_start, before.len()),
        before,
        "firmware before the block"
    );
    assert_eq!(
        sim.peek(hole + 64, after.len()),
        after,
        "firmware after the block"
    );
    let erases_after: u32 = sim.chip().erase_counts().iter().sum();
    assert_eq!(
        erases_after - erases_before,
        1,
        "only the block's page is erased"
    );
    let v = read_json(&layout, &sim.port());
    assert_eq!(v["ok"], true);
    assert_eq!(v["sequence"], 2);
    assert_eq!(v["slot"], "A");
    assert_eq!(v["address"], format!("0x{hole:08X}"));
    assert_eq!(v["values"]["gain"], 0.0125);
    assert_eq!(v["values"]["offset"], -412);
    assert_eq!(v["values"]["serial"], "PS-0001");
    assert_eq!(v["values"]["calibrated_at"], 1_718_000_000u64);
    assert_eq!(
        v["values"]["temp_coeffs"],
        serde_json::json!([1.0, -0.0021, 0.000004])
    );
    // The chip holds exactly what `coeffs pack` makes offline.
    let bin = sim.file("cal.bin");
    ok(&[
        "coeffs",
        "pack",
        path_str(&layout),
        path_str(&values),
        "--sequence",
        "2",
        "-o",
        path_str(&bin),
    ]);
    assert_eq!(sim.peek(hole, 64), std::fs::read(&bin).expect("bin"));
}

#[test]
fn a_block_in_a_firmware_page_keeps_every_firmware_byte_l476() {
    // 2 KiB pages: firmware over pages 0-2, the block in page 2.
    firmware_survives_a_block_in_its_page(L476, 0x0800_0000, 0x0800_1400, 0x0800_1800);
}

#[test]
fn a_block_in_a_firmware_sector_keeps_every_firmware_byte_f411() {
    // 16 KiB sector 1: firmware in it before and after the block.
    firmware_survives_a_block_in_its_page(F411, 0x0800_4000, 0x0800_5F00, 0x0800_7000);
}

#[test]
fn ab_slots_alternate_and_sequences_increment() {
    let sim = SimChip::new(L476);
    let (a, b) = (0x080F_F000, 0x080F_F800);
    let layout = ab_layout(&sim, a, b);
    let e = fails(
        &["coeffs", "read", path_str(&layout), "--port", &sim.port()],
        4,
    );
    assert!(e.contains("slot A at 0x080FF000: blank (all 0xFF"), "{e}");
    for n in 1..=4u32 {
        let values = write_file(&sim, "v.toml", &values_toml(n as f32, &format!("SN-{n}")));
        let out = coeffs_write(&layout, &values, &sim.port(), &[]);
        let slot = if n % 2 == 1 { "A" } else { "B" };
        assert!(
            out.contains(&format!("sequence {n}")) && out.contains(&format!("to slot {slot}")),
            "write {n}: {out}"
        );
        let v = read_json(&layout, &sim.port());
        assert_eq!(v["sequence"], n);
        assert_eq!(v["slot"], slot);
        assert_eq!(v["values"]["gain"], f64::from(n));
        assert_eq!(v["values"]["serial"], format!("SN-{n}"));
        if n > 1 {
            // The other slot still holds the previous block.
            let other = &v["slots"][if slot == "A" { 1 } else { 0 }];
            assert_eq!(other["state"], "valid");
            assert_eq!(other["sequence"], n - 1);
        }
    }
    let text = ok(&["coeffs", "read", path_str(&layout), "--port", &sim.port()]);
    assert!(
        text.contains("in slot B at 0x080FF800: sequence 4"),
        "{text}"
    );
    assert!(
        text.contains("serial         bytes[16]  \"SN-4\""),
        "{text}"
    );
    // Each write erased only its own slot's page, and the first into each blank slot none.
    let counts = sim.chip().erase_counts().to_vec();
    assert_eq!((counts[510], counts[511]), (1, 1));
    assert_eq!(counts.iter().sum::<u32>(), 2);
}

#[test]
fn ab_slots_in_one_page_are_refused_before_anything_is_written() {
    let sim = SimChip::new(F411);
    // Both in 16 KiB sector 1.
    let layout = ab_layout(&sim, 0x0800_4000, 0x0800_4800);
    let values = write_file(&sim, "v.toml", &values_toml(1.0, "X"));
    let e = fails(
        &[
            "coeffs",
            "write",
            path_str(&layout),
            path_str(&values),
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(
        e.contains("share page 1") && e.contains("different pages"),
        "{e}"
    );
    assert_eq!(sim.chip().erase_counts().iter().sum::<u32>(), 0);
    assert!(sim.peek(0x0800_4000, 0x4000).iter().all(|&b| b == 0xFF));
}

/// Two blocks written (A: 1, B: 2), then a third write to slot A that power cuts off. (The
/// block is the first 64 bytes of its page, so a cut in the first Write Memory must come before
/// 64 of its 256 bytes: `@0.1`.)
fn ab_power_loss(fault: &str) {
    let sim = SimChip::new(L476);
    let journal = tempfile::tempdir().expect("journal dir");
    let jdir = path_str(journal.path());
    let (a, b) = (0x080F_F000, 0x080F_F800);
    // Firmware shares slot A's page, so the journal has bytes to keep.
    let fw = pattern(1024, 21);
    let fw_file = write_file(&sim, "fw.bin", "");
    std::fs::write(&fw_file, &fw).expect("fw");
    ok(&[
        "write",
        path_str(&fw_file),
        "-a",
        "0x080FF400",
        "--port",
        &sim.port(),
    ]);
    let layout = ab_layout(&sim, a, b);
    for n in 1..=2 {
        let values = write_file(&sim, "v.toml", &values_toml(n as f32, &format!("SN-{n}")));
        coeffs_write(&layout, &values, &sim.port(), &["--journal", jdir]);
    }
    let values = write_file(&sim, "v.toml", &values_toml(3.0, "SN-3"));
    let faulty = format!("{}&power_loss_at={fault}", sim.port());
    let out = run(&[
        "coeffs",
        "write",
        path_str(&layout),
        path_str(&values),
        "--port",
        &faulty,
        "--journal",
        jdir,
    ]);
    assert!(!out.status.success(), "the write is cut off");
    // Power is back (a command without the fault option): slot B's block is still there.
    let v = read_json(&layout, &sim.port());
    assert_eq!(v["slot"], "B", "{v}");
    assert_eq!(v["sequence"], 2);
    assert_eq!(v["values"]["serial"], "SN-2");
    assert_ne!(v["slots"][0]["state"], "valid", "slot A was cut off: {v}");
    // The journal finishes slot A's page: the new block and the firmware beside it.
    let text = ok(&["recover", "--journal", jdir, "--port", &sim.port()]);
    assert!(
        text.contains("page at 0x080FF000 (2048 bytes): finished"),
        "{text}"
    );
    let v = read_json(&layout, &sim.port());
    assert_eq!(
        (v["slot"].as_str(), v["sequence"].as_u64()),
        (Some("A"), Some(3))
    );
    assert_eq!(v["values"]["serial"], "SN-3");
    assert_eq!(sim.peek(0x080F_F400, fw.len()), fw);
}

#[test]
fn power_loss_while_writing_slot_a_leaves_slot_b_valid_and_recover_finishes_it() {
    ab_power_loss("write:1@0.1");
}

#[test]
fn power_loss_while_erasing_slot_a_leaves_slot_b_valid_and_recover_finishes_it() {
    ab_power_loss("erase:1@0.5");
}

#[test]
fn an_interrupted_write_is_finished_before_the_next_write_picks_its_slot() {
    let sim = SimChip::new(L476);
    let journal = tempfile::tempdir().expect("journal dir");
    let jdir = path_str(journal.path());
    let layout = ab_layout(&sim, 0x080F_F000, 0x080F_F800);
    for n in 1..=2 {
        let values = write_file(&sim, "v.toml", &values_toml(n as f32, &format!("SN-{n}")));
        coeffs_write(&layout, &values, &sim.port(), &["--journal", jdir]);
    }
    let values = write_file(&sim, "v.toml", &values_toml(3.0, "SN-3"));
    let faulty = format!("{}&power_loss_at=write:1@0.1", sim.port());
    let out = run(&[
        "coeffs",
        "write",
        path_str(&layout),
        path_str(&values),
        "--port",
        &faulty,
        "--journal",
        jdir,
    ]);
    assert!(!out.status.success());
    // The next write finishes slot A (sequence 3) first, then writes sequence 4 to slot B.
    let values = write_file(&sim, "v.toml", &values_toml(4.0, "SN-4"));
    let out = run(&[
        "coeffs",
        "write",
        path_str(&layout),
        path_str(&values),
        "--port",
        &sim.port(),
        "--journal",
        jdir,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not finish"), "{stderr}");
    assert!(
        stdout.contains("sequence 4") && stdout.contains("to slot B"),
        "{stdout}"
    );
    let v = read_json(&layout, &sim.port());
    assert_eq!(v["slots"][0]["sequence"], 3);
    assert_eq!(v["slots"][1]["sequence"], 4);
}

#[test]
fn power_loss_on_a_single_slot_is_a_crc_failure_until_recover_restores_the_page() {
    let sim = SimChip::new(L476);
    let journal = tempfile::tempdir().expect("journal dir");
    let jdir = path_str(journal.path());
    let fw = pattern(0x1000, 31);
    let fw_file = sim.file("fw.bin");
    std::fs::write(&fw_file, &fw).expect("fw");
    ok(&[
        "write",
        path_str(&fw_file),
        "-a",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    let layout = single_layout(&sim, 0x0800_1000);
    let values = write_file(&sim, "v.toml", &values_toml(2.0, "ONE"));
    coeffs_write(&layout, &values, &sim.port(), &["--journal", jdir]);
    let faulty = format!("{}&power_loss_at=write:1@0.1", sim.port());
    let values2 = write_file(&sim, "v2.toml", &values_toml(3.0, "TWO"));
    let out = run(&[
        "coeffs",
        "write",
        path_str(&layout),
        path_str(&values2),
        "--port",
        &faulty,
        "--journal",
        jdir,
    ]);
    assert!(!out.status.success());
    let e = fails(
        &["coeffs", "read", path_str(&layout), "--port", &sim.port()],
        4,
    );
    assert!(e.contains("CRC FAILURE") && e.contains("stored CRC"), "{e}");
    // --restore puts the page back as it was: the old block.
    ok(&[
        "recover",
        "--restore",
        "--journal",
        jdir,
        "--port",
        &sim.port(),
    ]);
    let v = read_json(&layout, &sim.port());
    assert_eq!(v["values"]["serial"], "ONE");
    assert_eq!(v["sequence"], 1);
    assert_eq!(sim.peek(0x0800_0000, fw.len()), fw);
}

#[test]
fn a_table_row_is_picked_by_the_chips_unique_id() {
    let sim = SimChip::with_options(L476, "uid=unit-2");
    let layout = single_layout(&sim, 0x080F_F000);
    let uid = |seed: &str| {
        stm32boot::sim::uid_from_seed(seed)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    };
    // The chip reports the ID the table is keyed by.
    let info: Value =
        serde_json::from_str(&ok(&["info", "--json", "--port", &sim.port()])).expect("JSON");
    assert_eq!(info["unique_id"], uid("unit-2"));
    let mut csv = String::from("uid,serial,gain,offset,temp_coeffs,calibrated_at\n");
    for (i, seed) in ["unit-1", "unit-2", "unit-3"].iter().enumerate() {
        csv.push_str(&format!(
            "{},SN-{i},{}.5,{},1;2;3,{}\n",
            uid(seed),
            i + 1,
            -(i as i32),
            1_700_000_000 + i
        ));
    }
    let table = write_file(&sim, "calib.csv", &csv);
    let out = ok(&[
        "coeffs",
        "write",
        path_str(&layout),
        "--table",
        path_str(&table),
        "--key",
        "uid",
        "--port",
        &sim.port(),
    ]);
    assert!(
        out.contains("line 3 of") && out.contains(&uid("unit-2")),
        "{out}"
    );
    let v = read_json(&layout, &sim.port());
    assert_eq!(v["values"]["serial"], "SN-1");
    assert_eq!(v["values"]["gain"], 2.5);
    assert_eq!(v["values"]["offset"], -1);
    assert_eq!(v["values"]["calibrated_at"], 1_700_000_001u64);
    // By serial number instead.
    let out = ok(&[
        "coeffs",
        "write",
        path_str(&layout),
        "--table",
        path_str(&table),
        "--key",
        "serial",
        "--serial",
        "SN-2",
        "--port",
        &sim.port(),
    ]);
    assert!(out.contains("sequence 2"), "{out}");
    assert_eq!(read_json(&layout, &sim.port())["values"]["gain"], 3.5);
    // A chip the table does not list: nothing is written.
    let stranger = SimChip::with_options(L476, "uid=unit-9");
    let e = fails(
        &[
            "coeffs",
            "write",
            path_str(&layout),
            "--table",
            path_str(&table),
            "--key",
            "uid",
            "--port",
            &stranger.port(),
        ],
        2,
    );
    assert!(
        e.contains(&format!("no row has uid {}", uid("unit-9"))),
        "{e}"
    );
    assert!(e.contains("nothing was written"), "{e}");
    assert_eq!(stranger.chip().erase_counts().iter().sum::<u32>(), 0);
    let e = fails(
        &[
            "coeffs",
            "write",
            path_str(&layout),
            "--table",
            path_str(&table),
            "--key",
            "serial",
            "--serial",
            "SN-7",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(e.contains("no row has serial 'SN-7'"), "{e}");
    let e = fails(
        &[
            "coeffs",
            "write",
            path_str(&layout),
            "--table",
            path_str(&table),
            "--key",
            "serial",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(e.contains("--serial"), "{e}");
}

const EVERY_TYPE: &str = r#"
name = "every_type"
version = 7
address = 0x08010000
slots = 2
slot_size = 0x4000

[[field]]
name = "a_u8"
type = "u8"
[[field]]
name = "a_u16"
type = "u16"
[[field]]
name = "a_u32"
type = "u32"
[[field]]
name = "a_u64"
type = "u64"
[[field]]
name = "a_i8"
type = "i8"
[[field]]
name = "a_i16"
type = "i16"
[[field]]
name = "a_i32"
type = "i32"
[[field]]
name = "a_i64"
type = "i64"
[[field]]
name = "a_f32"
type = "f32"
[[field]]
name = "a_f64"
type = "f64"
[[field]]
name = "label"
type = "bytes"
len = 5
[[field]]
name = "raw"
type = "bytes"
len = 4
[[field]]
name = "arr_u8"
type = "u8"
count = 2
[[field]]
name = "arr_i16"
type = "i16"
count = 3
[[field]]
name = "arr_u32"
type = "u32"
count = 2
[[field]]
name = "arr_i64"
type = "i64"
count = 2
[[field]]
name = "arr_f32"
type = "f32"
count = 2
[[field]]
name = "arr_f64"
type = "f64"
count = 2
[[field]]
name = "names"
type = "bytes"
len = 3
count = 2
"#;

const EVERY_VALUES: &str = r#"
a_u8 = 255
a_u16 = 0xBEEF
a_u32 = 4000000000
a_u64 = "0xFFFF_FFFF_FFFF_FFFF"
a_i8 = -128
a_i16 = -300
a_i32 = -2000000000
a_i64 = -9223372036854775808
a_f32 = 0.1
a_f64 = -2.5e300
label = "hi"
raw = [0, 255, 1, 128]
arr_u8 = [0, 200]
arr_i16 = [-1, 0, -32767]
arr_u32 = [1, 4294967295]
arr_i64 = [9223372036854775807, -1]
arr_f32 = [3.5, -1e-7]
arr_f64 = [1.5, -0.25]
names = ["ab", [120, 121, 122]]
"#;

#[test]
fn every_type_round_trips_pack_write_read() {
    let sim = SimChip::new(L476);
    let layout = write_file(&sim, "every.toml", EVERY_TYPE);
    let values = write_file(&sim, "every-values.toml", EVERY_VALUES);
    let bin = sim.file("every.bin");
    let hex = sim.file("every.hex");
    ok(&[
        "coeffs",
        "pack",
        path_str(&layout),
        path_str(&values),
        "-o",
        path_str(&bin),
    ]);
    ok(&[
        "coeffs",
        "pack",
        path_str(&layout),
        path_str(&values),
        "-o",
        path_str(&hex),
        "--slot",
        "b",
    ]);
    let block = std::fs::read(&bin).expect("bin");
    let from_hex =
        Image::from_ihex(&std::fs::read_to_string(&hex).expect("hex")).expect("hex parses");
    assert_eq!(from_hex.start(), Some(0x0801_4000));
    assert_eq!(
        from_hex.to_dense(0x0801_4000, block.len() as u32, 0xFF),
        block
    );
    assert_eq!(&block[0..4], b"CoEf");
    let crc_at = block.len() - 4;
    assert_eq!(
        u32::from_le_bytes(block[crc_at..].try_into().expect("4 bytes")),
        stm32boot::protocol::crc::stm32_crc(&block[..crc_at])
    );
    coeffs_write(&layout, &values, &sim.port(), &[]);
    assert_eq!(
        sim.peek(0x0801_0000, block.len()),
        block,
        "the chip holds the packed block"
    );
    let v = read_json(&layout, &sim.port());
    let want: Value = serde_json::json!({
        "a_u8": 255, "a_u16": 0xBEEF, "a_u32": 4_000_000_000u32, "a_u64": u64::MAX,
        "a_i8": -128, "a_i16": -300, "a_i32": -2_000_000_000, "a_i64": i64::MIN,
        "a_f32": 0.1, "a_f64": -2.5e300, "label": "hi", "raw": [0, 255, 1, 128],
        "arr_u8": [0, 200], "arr_i16": [-1, 0, -32767], "arr_u32": [1, u32::MAX],
        "arr_i64": [i64::MAX, -1], "arr_f32": [3.5, -1e-7], "arr_f64": [1.5, -0.25],
        "names": ["ab", "xyz"],
    });
    assert_eq!(v["values"], want);
    // The JSON that `read` prints is a values file: packing it again gives the same block.
    let again = write_file(&sim, "again.json", &v["values"].to_string());
    let bin2 = sim.file("again.bin");
    ok(&[
        "coeffs",
        "pack",
        path_str(&layout),
        path_str(&again),
        "-o",
        path_str(&bin2),
    ]);
    assert_eq!(std::fs::read(&bin2).expect("bin"), block);
    // And so is a one-row CSV of the same values.
    let csv = write_file(
        &sim,
        "every.csv",
        "a_u8,a_u16,a_u32,a_u64,a_i8,a_i16,a_i32,a_i64,a_f32,a_f64,label,raw,arr_u8,arr_i16,arr_u32,arr_i64,arr_f32,arr_f64,names\n\
         255,0xBEEF,4000000000,18446744073709551615,-128,-300,-2000000000,-9223372036854775808,0.1,-2.5e300,hi,\
         \"\",0;200,-1;0;-32767,1;4294967295,9223372036854775807;-1,3.5;-1e-7,1.5;-0.25,ab;xyz\n",
    );
    // (A CSV cell is text, so `raw` cannot hold 0x00 0xFF there: that cell is refused.)
    let e = fails(
        &[
            "coeffs",
            "pack",
            path_str(&layout),
            path_str(&csv),
            "-o",
            path_str(&bin2),
        ],
        2,
    );
    assert!(e.contains("field 'raw': the cell is empty"), "{e}");
}

#[test]
fn blank_slots_are_recognised_with_the_parts_erased_value() {
    // The L0's flash erases to 0x00.
    let sim = SimChip::new("stm32l051");
    let layout = ab_layout(&sim, 0x0800_F000, 0x0800_F080);
    let e = fails(
        &["coeffs", "read", path_str(&layout), "--port", &sim.port()],
        4,
    );
    assert!(
        e.contains("slot A at 0x0800F000: blank (all 0x00")
            && e.contains("slot B at 0x0800F080: blank"),
        "{e}"
    );
    let values = write_file(&sim, "v.toml", &values_toml(1.0, "L0"));
    coeffs_write(&layout, &values, &sim.port(), &[]);
    coeffs_write(&layout, &values, &sim.port(), &[]);
    let v = read_json(&layout, &sim.port());
    assert_eq!(
        (v["slot"].as_str(), v["sequence"].as_u64()),
        (Some("B"), Some(2))
    );
}

#[test]
fn malformed_layouts_and_values_exit_2_and_leave_the_chip_alone() {
    let sim = SimChip::new(L476);
    // A chip with something on it, so the state file exists.
    let fw = sim.file("fw.bin");
    std::fs::write(&fw, pattern(512, 5)).expect("fw");
    ok(&[
        "write",
        path_str(&fw),
        "-a",
        "0x08000000",
        "--port",
        &sim.port(),
    ]);
    let state_before = std::fs::read(sim.state()).expect("state");
    let good_layout = single_layout(&sim, 0x0800_0800);
    let good_values = write_file(&sim, "good.toml", &values_toml(1.0, "OK"));
    let bad_layouts: &[(&str, &str)] = &[
        (
            "name = \"cal\"\nversion = 1\naddress = 0x08000800\n[[field]]\nname = \"gain\"\ntype = \"f33\"\n",
            "line 6: field 'gain': unknown type \"f33\"",
        ),
        (
            "name = \"cal\"\nversion = 1\naddress = 0x08000800\ncolor = 1\n[[field]]\nname = \"a\"\ntype = \"u8\"\n",
            "line 4: unknown field `color`",
        ),
        (
            "name = \"cal\"\nversion = 1\naddress = 0x08000802\n[[field]]\nname = \"a\"\ntype = \"u8\"\n",
            "not a multiple of 4",
        ),
    ];
    for (i, (text, want)) in bad_layouts.iter().enumerate() {
        let layout = write_file(&sim, &format!("bad{i}.toml"), text);
        for cmd in [
            vec![
                "coeffs",
                "write",
                path_str(&layout),
                path_str(&good_values),
                "--port",
            ],
            vec!["coeffs", "read", path_str(&layout), "--port"],
        ] {
            let port = sim.port();
            let mut args = cmd.clone();
            args.push(&port);
            let e = fails(&args, 2);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = fails(&["coeffs", "header", path_str(&layout)], 2);
        assert!(e.contains(want), "{e}");
    }
    let bad_values: &[(&str, &str, &str)] = &[
        ("v1.toml", "gain = 1.0\noffset = 3000000000\ntemp_coeffs = [1, 2, 3]\nserial = \"x\"\ncalibrated_at = 0\n",
         "line 2: field 'offset': 3000000000 is out of range for i32"),
        ("v2.toml", "gain = 1.0\noffset = 1\ntemp_coeffs = [1, 2]\nserial = \"x\"\ncalibrated_at = 0\n",
         "field 'temp_coeffs': expected 3 elements"),
        ("v3.toml", "gain = 1.0\noffset = 1\ntemp_coeffs = [1, 2, 3]\nserial = \"much too long for it\"\ncalibrated_at = 0\n",
         "field 'serial': \"much too long for it\" is 20 bytes long; the field holds 16"),
        ("v4.toml", "gain = 1.0\noffset = 1\ntemp_coeffs = [1, 2, 3]\nserial = \"x\"\n",
         "no value for calibrated_at"),
        ("v5.json", "{\"gain\": 1, \"offset\": 1, \"temp_coeffs\": [1, 2, 3], \"serial\": \"x\", \"calibrated_at\": -5}",
         "field 'calibrated_at': -5 is out of range for u64"),
        ("v6.csv", "gain,offset,temp_coeffs,serial,calibrated_at\n1e40,1,1;2;3,x,0\n",
         "line 2: field 'gain': \"1e40\" is out of range for f32"),
        ("v7.yaml", "gain: 1\n", "give a .toml, .json or .csv file"),
    ];
    for (name, text, want) in bad_values {
        let values = write_file(&sim, name, text);
        let e = fails(
            &[
                "coeffs",
                "write",
                path_str(&good_layout),
                path_str(&values),
                "--port",
                &sim.port(),
            ],
            2,
        );
        assert!(e.contains(want), "{name}: {e}");
        let e = fails(
            &[
                "coeffs",
                "pack",
                path_str(&good_layout),
                path_str(&values),
                "-o",
                path_str(&sim.file("x.bin")),
            ],
            2,
        );
        assert!(e.contains(want), "{name}: {e}");
    }
    assert!(!sim.file("x.bin").exists(), "pack wrote nothing");
    // A table with one bad row anywhere is refused before connecting.
    let table = write_file(
        &sim,
        "t.csv",
        "uid,gain,offset,temp_coeffs,serial,calibrated_at\n\
         000000000000000000000001,1,1,1;2;3,a,0\n\
         000000000000000000000002,1,1,1;2;3,b,-1\n",
    );
    let e = fails(
        &[
            "coeffs",
            "write",
            path_str(&good_layout),
            "--table",
            path_str(&table),
            "--key",
            "uid",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(
        e.contains("t.csv, line 3: field 'calibrated_at': -1 is out of range"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(sim.state()).expect("state"),
        state_before,
        "state file unchanged"
    );
    // The good pair works on the same chip.
    coeffs_write(&good_layout, &good_values, &sim.port(), &[]);
}

/// The generated header compiles into a C program that checks a packed block the way firmware
/// does (software CRC model, validity check, A/B choice) and reads its fields.
#[test]
fn c_firmware_validates_the_packed_block_with_the_generated_header() {
    let sim = SimChip::new(L476);
    let layout = ab_layout(&sim, 0x080F_F000, 0x080F_F800);
    let header = sim.file("cal.h");
    ok(&[
        "coeffs",
        "header",
        path_str(&layout),
        "-o",
        path_str(&header),
    ]);
    let text = std::fs::read_to_string(&header).expect("header");
    assert!(
        text.contains("} cal_t;") && text.contains("#define CAL_ADDRESS_B"),
        "{text}"
    );
    for (seq, name) in [(7u32, "a.bin"), (8, "b.bin")] {
        let values = write_file(
            &sim,
            "v.toml",
            &values_toml(seq as f32 / 2.0, &format!("SN-{seq}")),
        );
        ok(&[
            "coeffs",
            "pack",
            path_str(&layout),
            path_str(&values),
            "-o",
            path_str(&sim.file(name)),
            "--sequence",
            &seq.to_string(),
        ]);
    }
    let program = sim.file("check.c");
    std::fs::write(
        &program,
        r#"#include <stdio.h>
#include <string.h>
#include "cal.h"
static int load(const char *path, cal_t *out) {
    FILE *f = fopen(path, "rb");
    size_t n;
    if (!f) return 0;
    n = fread(out, 1, sizeof *out, f);
    fclose(f);
    return n == sizeof *out;
}
int main(int argc, char **argv) {
    cal_t a, b;
    const cal_t *active;
    if (argc < 3 || !load(argv[1], &a) || !load(argv[2], &b)) return 2;
    if (!cal_is_valid(&a) || !cal_is_valid(&b)) return 3;
    if (cal_crc32(&a, CAL_CRC_WORDS + 1) != 0) return 4;
    active = cal_active(&a, &b);
    printf("%u %.3f %d %.4f %s %llu\n", (unsigned)active->sequence, active->gain, active->offset,
           active->temp_coeffs[1], (const char *)active->serial,
           (unsigned long long)active->calibrated_at);
    b.gain += 1.0f; /* a damaged block B: A becomes active */
    active = cal_active(&a, &b);
    printf("%u\n", (unsigned)active->sequence);
    return 0;
}
"#,
    )
    .expect("program");
    let exe = sim.file("check");
    let cc = std::process::Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&program)
        .output()
        .expect("cc runs (install gcc)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = std::process::Command::new(&exe)
        .arg(sim.file("a.bin"))
        .arg(sim.file("b.bin"))
        .output()
        .expect("the program runs");
    assert!(out.status.success(), "exit {:?}", out.status.code());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "8 4.000 -412 -0.0021 SN-8 1718000000\n7\n"
    );
}

#[test]
fn dry_run_says_where_the_block_goes_and_changes_nothing() {
    let sim = SimChip::new(L476);
    let layout = ab_layout(&sim, 0x080F_F000, 0x080F_F800);
    let values = write_file(&sim, "v.toml", &values_toml(1.0, "A"));
    coeffs_write(&layout, &values, &sim.port(), &[]);
    let erases = sim.chip().erase_counts().to_vec();
    let flash = sim.peek(0x080F_F000, 4096);
    let out = coeffs_write(&layout, &values, &sim.port(), &["--dry-run"]);
    assert!(
        out.contains("write sequence 2 to slot B at 0x080FF800")
            && out.contains("slot A at 0x080FF000: valid, sequence 1")
            && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(sim.peek(0x080F_F000, 4096), flash);
    assert_eq!(sim.chip().erase_counts(), erases.as_slice());
}
