//! `stm32boot otp` against the simulated target: write once, refuse a second write, lock, and
//! the checks that keep every byte off the chip until the request is safe.
//!
//! The simulator ACKs OTP writes the hardware rejects (as the ROM does), so a refusal is proved
//! in two ways: the OTP is unchanged (on F4 the simulator would AND a write into a used block,
//! so a write of zeros that reached the chip would show), and no command at all follows the
//! OTP read: the simulator NACKs the first command after it (`nack_at`), which a Write Memory
//! would have been, and the refusal still ends with exit code 2.

mod common;

use common::*;
use stm32boot::image::Image;

const F411: &str = "stm32f411";
const L476: &str = "stm32l476";
const G071: &str = "stm32g071";

const F4_OTP: u32 = 0x1FFF_7800;
const F4_LOCKS: u32 = 0x1FFF_7A00;
const DW_OTP: u32 = 0x1FFF_7000;

/// The whole F4 OTP window (data and lock bytes).
fn f4_otp(sim: &SimChip) -> Vec<u8> {
    sim.peek(F4_OTP, 528)
}

/// How many bootloader commands `otp show` sends (connect and the OTP read): the smallest
/// `nack_at` with which it still succeeds, less one. A `write` or `lock` that is refused in
/// planning sends exactly these, and nothing after them.
fn commands_to_read_otp(sim: &SimChip) -> u64 {
    for n in 1..=64u64 {
        let port = format!("{}&nack_at={n}", sim.port());
        if run(&["otp", "show", "--port", &port]).status.success() {
            assert!(n > 1, "otp show must send commands");
            // Any earlier command NACKed makes it fail: n - 1 is the last command it sends.
            let port = format!("{}&nack_at={}", sim.port(), n - 1);
            assert!(!run(&["otp", "show", "--port", &port]).status.success());
            return n - 1;
        }
    }
    panic!("otp show never succeeded with nack_at up to 64");
}

/// The port of `sim` with the first command after the OTP read NACKed.
fn port_nacking_after_read(sim: &SimChip) -> String {
    let n = commands_to_read_otp(sim);
    format!("{}&nack_at={}", sim.port(), n + 1)
}

#[test]
fn f4_block_is_written_once_and_a_second_write_sends_nothing() {
    let sim = SimChip::new(F411);
    let out = ok(&[
        "otp",
        "write",
        "--block",
        "1",
        "--hex",
        "DE AD BE EF 01 02 03 04",
        "--confirm-otp",
        "--port",
        &sim.port(),
    ]);
    assert!(
        out.contains("wrote 8 bytes at 0x1FFF7820 (block 1)") && out.contains("verified"),
        "{out}"
    );
    assert_eq!(
        sim.peek(0x1FFF_7820, 8),
        [0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4]
    );
    assert_eq!(sim.peek(0x1FFF_7828, 24), vec![0xFF; 24]);
    assert_eq!(sim.peek(F4_LOCKS, 16), vec![0xFF; 16]);
    let before = f4_otp(&sim);

    // Zeros would only clear bits: the simulator (like the F4 flash) would AND them in, so the
    // chip would change if the write went out. It is refused, and nothing follows the read.
    let probe = port_nacking_after_read(&sim);
    let err = fails(
        &[
            "otp",
            "write",
            "--block",
            "1",
            "--hex",
            "00 00 00 00 00 00 00 00",
            "--confirm-otp",
            "--port",
            &probe,
        ],
        2,
    );
    assert!(
        err.contains("0x1FFF7820-0x1FFF7827 is not blank")
            && err.contains("0x1FFF7820 holds DE")
            && err.contains("cannot be erased"),
        "{err}"
    );
    assert_eq!(f4_otp(&sim), before, "the OTP did not change");
    // The same bytes again are refused too.
    fails(
        &[
            "otp",
            "write",
            "--address",
            "0x1FFF7820",
            "--hex",
            "DEADBEEF",
            "--confirm-otp",
            "--port",
            &probe,
        ],
        2,
    );
    assert_eq!(f4_otp(&sim), before);

    // The probe does see a write: a valid one fails at the first command after the read.
    fails(
        &[
            "otp",
            "write",
            "--block",
            "2",
            "--hex",
            "01020304",
            "--confirm-otp",
            "--port",
            &probe,
        ],
        5,
    );
    assert_eq!(f4_otp(&sim), before);

    // The blank rest of block 1 can still be written.
    ok(&[
        "otp",
        "write",
        "--block",
        "1",
        "--offset",
        "8",
        "--hex",
        "05 06 07 08",
        "--confirm-otp",
        "--port",
        &sim.port(),
    ]);
    assert_eq!(sim.peek(0x1FFF_7828, 4), [5, 6, 7, 8]);
}

#[test]
fn a_locked_block_is_never_written() {
    let sim = SimChip::new(F411);
    let out = ok(&["otp", "lock", "3", "--confirm-otp", "--port", &sim.port()]);
    assert!(
        out.contains("locked block 3") && out.contains("0x1FFF7A03"),
        "{out}"
    );
    let mut locks = vec![0xFF; 16];
    locks[3] = 0x00;
    assert_eq!(sim.peek(F4_LOCKS, 16), locks);
    let before = f4_otp(&sim);
    let probe = port_nacking_after_read(&sim);
    let err = fails(
        &[
            "otp",
            "write",
            "--block",
            "3",
            "--hex",
            "11 22 33 44",
            "--confirm-otp",
            "--port",
            &probe,
        ],
        2,
    );
    assert!(
        err.contains("block 3") && err.contains("is locked") && err.contains("0x1FFF7A03"),
        "{err}"
    );
    // Running into the locked block from the one before is refused too.
    fails(
        &[
            "otp",
            "write",
            "--address",
            "0x1FFF785C",
            "--hex",
            "11 22 33 44 55 66 77 88",
            "--confirm-otp",
            "--port",
            &probe,
        ],
        2,
    );
    assert_eq!(f4_otp(&sim), before);
    // Locking again sends nothing and says so.
    let out = ok(&["otp", "lock", "3", "--confirm-otp", "--port", &probe]);
    assert!(out.contains("already locked"), "{out}");
    assert_eq!(f4_otp(&sim), before);
    // A lock byte is not written through `write`.
    let err = fails(
        &[
            "otp",
            "write",
            "--address",
            "0x1FFF7A04",
            "--hex",
            "00 FF FF FF",
            "--confirm-otp",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(
        err.contains("lock bytes") && err.contains("otp lock"),
        "{err}"
    );
    assert_eq!(f4_otp(&sim), before);
}

#[test]
fn nothing_is_written_without_confirm_otp() {
    let sim = SimChip::new(F411);
    let err = fails(
        &[
            "otp",
            "write",
            "--block",
            "0",
            "--hex",
            "53 4E 2D 30 30 34 32 00",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(
        err.contains("can never be undone")
            && err.contains("8 bytes at 0x1FFF7800-0x1FFF7807")
            && err.contains("53 4E 2D 30 30 34 32 00")
            && err.contains("--confirm-otp"),
        "{err}"
    );
    let out = ok(&[
        "otp",
        "write",
        "--block",
        "0",
        "--hex",
        "53 4E 2D 30 30 34 32 00",
        "--dry-run",
        "--port",
        &sim.port(),
    ]);
    assert!(
        out.contains("0x1FFF7800  53 4E 2D 30 30 34 32 00")
            && out.contains("block 0 at 0x1FFF7800 before: blank, unlocked")
            && out.contains("dry run"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "otp",
        "write",
        "--block",
        "0",
        "--hex",
        "53 4E 2D 30 30 34 32 00",
        "--dry-run",
        "--json",
        "--port",
        &sim.port(),
    ]))
    .expect("json");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["plan"]["address"], "0x1FFF7800");
    assert_eq!(v["plan"]["data"], "534E2D3030343200");
    assert_eq!(v["plan"]["before"][0]["state"], "blank");
    let err = fails(&["otp", "lock", "0", "--port", &sim.port()], 2);
    assert!(
        err.contains("can never be undone") && err.contains("--confirm-otp"),
        "{err}"
    );
    let out = ok(&["otp", "lock", "0", "--dry-run", "--port", &sim.port()]);
    assert!(
        out.contains("00 FF FF FF at 0x1FFF7A00") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(f4_otp(&sim), vec![0xFF; 528]);
}

#[test]
fn misaligned_outside_and_oversized_writes_are_refused() {
    let sim = SimChip::new(F411);
    let port = sim.port();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--address", "0x1FFF7802", "--hex", "01020304"],
            "not a multiple of 4",
        ),
        (
            &["--address", "0x1FFF7800", "--hex", "010203040506"],
            "multiple of 4 bytes",
        ),
        (
            &["--address", "0x08000000", "--hex", "01020304"],
            "outside the OTP data area",
        ),
        (
            &["--address", "0x1FFF79FC", "--hex", "0102030405060708"],
            "lock bytes",
        ),
        (
            &["--address", "0x1FFF7A10", "--hex", "01020304"],
            "outside the OTP data area",
        ),
        (
            &["--block", "16", "--hex", "01020304"],
            "block 16 does not exist",
        ),
        (
            &["--block", "0", "--offset", "30", "--hex", "01020304"],
            "do not fit in block 0",
        ),
        (&["--block", "0", "--hex", "0102 0X"], "not hex"),
    ];
    for (args, want) in cases {
        let mut all = vec!["otp", "write"];
        all.extend_from_slice(args);
        all.extend(["--confirm-otp", "--port", &port]);
        let err = fails(&all, 2);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(f4_otp(&sim), vec![0xFF; 528]);
}

#[test]
fn data_files_raw_and_addressed() {
    let sim = SimChip::new(F411);
    let bin = sim.file("serial.bin");
    std::fs::write(&bin, [0x10, 0x20, 0x30, 0x40]).expect("test setup");
    ok(&[
        "otp",
        "write",
        path_str(&bin),
        "--block",
        "4",
        "--confirm-otp",
        "--port",
        &sim.port(),
    ]);
    assert_eq!(sim.peek(0x1FFF_7880, 4), [0x10, 0x20, 0x30, 0x40]);
    let err = fails(
        &[
            "otp",
            "write",
            path_str(&bin),
            "--confirm-otp",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(
        err.contains("no address") && err.contains("--block"),
        "{err}"
    );

    let hex = sim.file("mac.hex");
    let image = Image::from_bin(&[0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0, 0], 0x1FFF_78A0)
        .expect("test setup");
    std::fs::write(&hex, image.to_ihex().expect("test setup")).expect("test setup");
    let err = fails(
        &[
            "otp",
            "write",
            path_str(&hex),
            "--address",
            "0x1FFF78C0",
            "--confirm-otp",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(err.contains("places its data at 0x1FFF78A0"), "{err}");
    ok(&[
        "otp",
        "write",
        path_str(&hex),
        "--confirm-otp",
        "--port",
        &sim.port(),
    ]);
    assert_eq!(
        sim.peek(0x1FFF_78A0, 8),
        [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0, 0]
    );

    let mut two = Image::new();
    two.add(0x1FFF_78C0, &[1, 2, 3, 4]).expect("test setup");
    two.add(0x1FFF_78E0, &[1, 2, 3, 4]).expect("test setup");
    let gappy = sim.file("two.hex");
    std::fs::write(&gappy, two.to_ihex().expect("test setup")).expect("test setup");
    let err = fails(
        &[
            "otp",
            "write",
            path_str(&gappy),
            "--confirm-otp",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert!(err.contains("2 separate ranges"), "{err}");
    let missing = sim.file("missing.bin");
    fails(
        &[
            "otp",
            "write",
            path_str(&missing),
            "--block",
            "5",
            "--confirm-otp",
            "--port",
            &sim.port(),
        ],
        2,
    );
    assert_eq!(sim.peek(0x1FFF_78C0, 64), vec![0xFF; 64]);
}

#[test]
fn double_words_are_written_once_on_l4_and_g0() {
    for part in [L476, G071] {
        let sim = SimChip::new(part);
        let data = "01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 10";
        let out = ok(&[
            "otp",
            "write",
            "--address",
            "0x1FFF7010",
            "--hex",
            data,
            "--confirm-otp",
            "--port",
            &sim.port(),
        ]);
        assert!(out.contains("double words 2, 3"), "{part}: {out}");
        let written: Vec<u8> = (1..=16).collect();
        assert_eq!(sim.peek(0x1FFF_7010, 16), written, "{part}");
        let before = sim.peek(DW_OTP, 1024);
        let probe = port_nacking_after_read(&sim);
        // Even all zeros (which the flash would accept on used main flash) is refused.
        let err = fails(
            &[
                "otp",
                "write",
                "--block",
                "3",
                "--hex",
                "00 00 00 00 00 00 00 00",
                "--confirm-otp",
                "--port",
                &probe,
            ],
            2,
        );
        assert!(
            err.contains("double word at 0x1FFF7018")
                && err.contains("already written")
                && err.contains("09 0A 0B 0C 0D 0E 0F 10"),
            "{part}: {err}"
        );
        let err = fails(
            &[
                "otp",
                "write",
                "--address",
                "0x1FFF7004",
                "--hex",
                "0102030405060708",
                "--confirm-otp",
                "--port",
                &probe,
            ],
            2,
        );
        assert!(err.contains("multiple of 8"), "{part}: {err}");
        let err = fails(
            &[
                "otp",
                "write",
                "--address",
                "0x1FFF7020",
                "--hex",
                "01020304",
                "--confirm-otp",
                "--port",
                &probe,
            ],
            2,
        );
        assert!(err.contains("multiple of 8 bytes"), "{part}: {err}");
        let err = fails(&["otp", "lock", "0", "--confirm-otp", "--port", &probe], 2);
        assert!(
            err.contains("no lock bytes") && err.contains("locks itself"),
            "{part}: {err}"
        );
        assert_eq!(sim.peek(DW_OTP, 1024), before, "{part}");
    }
}

#[test]
fn show_json_describes_blocks_locks_and_free_space() {
    let sim = SimChip::new(F411);
    ok(&[
        "otp",
        "write",
        "--block",
        "0",
        "--hex",
        "53 4E 2D 30",
        "--confirm-otp",
        "--port",
        &sim.port(),
    ]);
    ok(&["otp", "lock", "1", "--confirm-otp", "--port", &sim.port()]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["otp", "show", "--json", "--port", &sim.port()])).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["family"], "F4");
    let otp = &v["otp"];
    assert_eq!(otp["scheme"], "lock-bytes");
    assert_eq!(otp["address"], "0x1FFF7800");
    assert_eq!(otp["end"], "0x1FFF79FF");
    assert_eq!(
        (otp["count"].as_u64(), otp["unit_size"].as_u64()),
        (Some(16), Some(32))
    );
    assert_eq!(otp["lock_bytes"]["address"], "0x1FFF7A00");
    assert_eq!(otp["lock_bytes"]["values"][1], "00");
    assert_eq!(otp["lock_bytes"]["values"][0], "FF");
    let blocks = otp["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 16);
    assert_eq!(blocks[0]["state"], "partly-used");
    assert_eq!(blocks[0]["used_bytes"], 4);
    assert_eq!(blocks[0]["locked"], false);
    assert_eq!(blocks[0]["writable"], true);
    assert!(blocks[0]["data"]
        .as_str()
        .expect("data")
        .starts_with("534E2D30FFFF"));
    assert_eq!(blocks[1]["state"], "blank");
    assert_eq!(blocks[1]["locked"], true);
    assert_eq!(blocks[1]["lock"], "locked");
    assert_eq!(blocks[1]["writable"], false);
    assert_eq!(blocks[2]["address"], "0x1FFF7840");
    assert_eq!(otp["free"]["blocks"], 14);
    assert_eq!(otp["free"]["bytes"], 14 * 32 + 28);
    let ranges = otp["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 3);
    assert_eq!(
        (&ranges[2]["first"], &ranges[2]["last"]),
        (&2.into(), &15.into())
    );

    let text = ok(&["otp", "show", "--port", &sim.port()]);
    assert!(
        text.contains("0        0x1FFF7800  used: 4 of 32 bytes, unlocked")
            && text.contains("1        0x1FFF7820  blank, locked")
            && text.contains("2-15     0x1FFF7840  blank, unlocked")
            && text.contains("lock bytes at 0x1FFF7A00: FF 00 FF"),
        "{text}"
    );
    let text = ok(&["otp", "show", "--blocks", "--port", &sim.port()]);
    assert!(text.contains("0x1FFF7800  53 4E 2D 30 FF"), "{text}");

    let l4 = SimChip::new(L476);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["otp", "show", "--json", "--port", &l4.port()])).expect("json");
    assert_eq!(v["otp"]["scheme"], "write-once");
    assert_eq!(v["otp"]["unit"], "double word");
    assert_eq!(v["otp"]["lock_bytes"], serde_json::Value::Null);
    assert_eq!(v["otp"]["blocks"].as_array().map(Vec::len), Some(128));
    assert_eq!(v["otp"]["free"]["bytes"], 1024);
}

#[test]
fn read_protection_refuses_otp() {
    let sim = SimChip::new(F411);
    let port = sim.port();
    ok(&["protect", "--port", &port, "readout", "on"]);
    for args in [
        vec!["otp", "show"],
        vec![
            "otp",
            "write",
            "--block",
            "0",
            "--hex",
            "01020304",
            "--confirm-otp",
        ],
        vec!["otp", "lock", "0", "--confirm-otp"],
    ] {
        let mut all = args.clone();
        all.extend(["--port", &port]);
        let err = fails(&all, 5);
        assert!(
            err.contains("read protection is active")
                && err.contains("protect readout off")
                && err.contains("not the OTP"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(f4_otp(&sim), vec![0xFF; 528]);
}

#[test]
fn parts_without_otp_say_so() {
    let err = fails(&["otp", "show", "--port", "sim:stm32f103xb"], 2);
    assert!(err.contains("has no OTP area"), "{err}");
}
