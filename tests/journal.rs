//! Nothing lost: a 64-byte update inside a page that holds firmware, with power cut (or the link
//! cut) at every step of read–merge–erase–write–verify, then `recover` (or simply the next
//! write). Every byte outside the new data must be the firmware's afterwards, and the new data
//! must be in place.

mod common;

use common::*;

const FLASH: u32 = 0x0800_0000;
const FIRMWARE_LEN: usize = 8 * 1024;
/// Inside page 1 of an STM32L476 (2 KB pages).
const COEFF_AT: u32 = 0x0800_0900;
const COEFF_LEN: usize = 64;

struct Case {
    chip: SimChip,
    journal: std::path::PathBuf,
    firmware: Vec<u8>,
    coeffs: Vec<u8>,
    coeff_file: std::path::PathBuf,
}

fn setup() -> Case {
    let chip = SimChip::new("stm32l476");
    let firmware = pattern(FIRMWARE_LEN, 21);
    let fw_file = chip.file("fw.bin");
    std::fs::write(&fw_file, &firmware).expect("firmware file");
    ok(&[
        "write",
        path_str(&fw_file),
        "-a",
        "0x08000000",
        "--port",
        &chip.port(),
        "--no-journal",
    ]);
    let coeffs = pattern(COEFF_LEN, 99);
    let coeff_file = chip.file("coeffs.bin");
    std::fs::write(&coeff_file, &coeffs).expect("coefficient file");
    let journal = chip.file("journal");
    Case {
        chip,
        journal,
        firmware,
        coeffs,
        coeff_file,
    }
}

impl Case {
    /// The port with extra simulator options for one command.
    fn port_with(&self, options: &str) -> String {
        format!("{}&{options}", self.chip.port())
    }

    fn write_args<'a>(&'a self, port: &'a str) -> Vec<&'a str> {
        vec![
            "write",
            path_str(&self.coeff_file),
            "-a",
            "0x08000900",
            "--verify",
            "--journal",
            path_str(&self.journal),
            "--port",
            port,
        ]
    }

    /// `stm32boot recover` on this chip with its journal (and `extra` flags); returns stdout.
    fn recover(&self, extra: &[&str]) -> String {
        let port = self.chip.port();
        let mut args = vec![
            "recover",
            "--journal",
            path_str(&self.journal),
            "--port",
            &port,
        ];
        args.extend(extra);
        ok(&args)
    }

    fn expected(&self) -> Vec<u8> {
        let mut want = self.firmware.clone();
        let off = (COEFF_AT - FLASH) as usize;
        want[off..off + COEFF_LEN].copy_from_slice(&self.coeffs);
        want
    }

    fn assert_intact(&self, what: &str) {
        let got = self.chip.peek(FLASH, FIRMWARE_LEN);
        let want = self.expected();
        let bad: Vec<usize> = (0..FIRMWARE_LEN).filter(|&i| got[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "{what}: {} byte(s) differ, first at 0x{:08X}",
            bad.len(),
            FLASH as usize + bad[0]
        );
    }
}

/// Faults at every flash operation of the update: the page erase (before it starts, half way,
/// done but not acknowledged) and each of the page's eight 256-byte blocks.
fn faults() -> Vec<String> {
    let mut f: Vec<String> = ["0.0", "0.5", "1.0"]
        .iter()
        .map(|x| format!("power_loss_at=erase:1@{x}"))
        .collect();
    for block in 1..=8 {
        f.push(format!("power_loss_at=write:{block}@0.5"));
    }
    f.push("reset_at=write:4@0.25".into());
    f
}

#[test]
fn an_uninterrupted_update_keeps_the_firmware_and_clears_the_journal() {
    let case = setup();
    let port = case.chip.port();
    let out = ok(&case.write_args(&port));
    assert!(out.contains("verified"), "{out}");
    assert!(out.contains("1 partly covered page(s) kept"), "{out}");
    case.assert_intact("after the update");
    let left: Vec<_> = std::fs::read_dir(&case.journal)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the journal is removed on success");
}

#[test]
fn power_cut_at_every_step_then_recover_keeps_every_byte() {
    for fault in faults() {
        let case = setup();
        let port = case.port_with(&fault);
        let out = run(&case.write_args(&port));
        assert!(
            !out.status.success(),
            "{fault}: the write should have failed"
        );
        let out = case.recover(&[]);
        assert!(out.contains("journal"), "{fault}: {out}");
        case.assert_intact(&format!("after {fault} and recover"));
        // The journal is gone: a second recover has nothing to do.
        let out = case.recover(&[]);
        assert!(out.contains("nothing to recover"), "{fault}: {out}");
    }
}

#[test]
fn the_next_write_finishes_an_interrupted_one_first() {
    let case = setup();
    let port = case.port_with("power_loss_at=write:2@0.5");
    assert!(!run(&case.write_args(&port)).status.success());
    // A different, unrelated write to the same chip (same unique ID) finishes the old page first.
    let other = case.chip.file("other.bin");
    std::fs::write(&other, [0x5A; 16]).expect("file");
    let out = run(&[
        "write",
        path_str(&other),
        "-a",
        "0x08001800",
        "--journal",
        path_str(&case.journal),
        "--port",
        &case.chip.port(),
    ]);
    assert!(out.status.success(), "{:?}", out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not finish"), "{stderr}");
    let got = case.chip.peek(FLASH, FIRMWARE_LEN);
    let mut want = case.expected();
    want[0x1800..0x1810].fill(0x5A);
    assert_eq!(got, want);
}

#[test]
fn restore_puts_the_page_back_as_it_was() {
    let case = setup();
    let port = case.port_with("power_loss_at=write:3@0.5");
    assert!(!run(&case.write_args(&port)).status.success());
    case.recover(&["--restore"]);
    assert_eq!(case.chip.peek(FLASH, FIRMWARE_LEN), case.firmware);
}

#[test]
fn link_cut_at_many_points_then_recover_keeps_every_byte() {
    // Connect and reading the page move a few thousand bytes; erase and write follow. Cut the
    // link at points spread over the whole exchange.
    for cut in [40, 600, 2400, 2700, 2760, 3200, 4000, 5200, 6500] {
        let case = setup();
        let port = case.port_with(&format!("cut_after={cut}"));
        let cut_run = run(&case.write_args(&port));
        let out = case.recover(&[]);
        if cut_run.status.success() {
            assert!(out.contains("nothing to recover"), "cut {cut}: {out}");
        }
        // Whether the cut came before the journal was written (nothing changed: the firmware
        // is intact and the update simply did not happen) or after (recover finished it).
        let got = case.chip.peek(FLASH, FIRMWARE_LEN);
        assert!(
            got == case.expected() || got == case.firmware,
            "cut after {cut} bytes: the page is neither the old nor the new content"
        );
    }
}

#[test]
fn protected_ranges_are_refused_unless_forced_and_no_preserve_says_what_is_lost() {
    let case = setup();
    let port = case.chip.port();
    let err = fails(
        &[
            "write",
            path_str(&case.coeff_file),
            "-a",
            "0x08000900",
            "--protect",
            "0x08000000:1K",
            "--protect",
            "0x08000A00:16",
            "--port",
            &port,
        ],
        2,
    );
    assert!(
        err.contains("protected") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(case.chip.peek(FLASH, FIRMWARE_LEN), case.firmware);
    let out = run(&[
        "write",
        path_str(&case.coeff_file),
        "-a",
        "0x08000900",
        "--no-preserve",
        "--port",
        &port,
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("erased") && stderr.contains("--no-preserve"),
        "{stderr}"
    );
    let got = case.chip.peek(0x0800_0800, 2048);
    assert!(
        got[..0x100].iter().all(|&b| b == 0xFF),
        "the rest of the page is gone"
    );
}

#[test]
fn writes_spanning_two_pages_keep_both_pages_on_f4_sectors_and_l4_pages() {
    // (part, firmware length, update address): the update straddles a page/sector boundary.
    for (part, fw_len, at) in [
        ("stm32f411", 40 * 1024, 0x0800_3F80u32),
        ("stm32l476", 8 * 1024, 0x0800_07C0),
    ] {
        let chip = SimChip::new(part);
        let firmware = pattern(fw_len, 3);
        let fw = chip.file("fw.bin");
        std::fs::write(&fw, &firmware).expect("file");
        ok(&[
            "write",
            path_str(&fw),
            "-a",
            "0x08000000",
            "--port",
            &chip.port(),
        ]);
        let update = pattern(200, 4);
        let up = chip.file("up.bin");
        std::fs::write(&up, &update).expect("file");
        let addr = format!("0x{at:08X}");
        let out = ok(&[
            "write",
            path_str(&up),
            "-a",
            &addr,
            "--verify",
            "--journal",
            path_str(&chip.file("journal")),
            "--port",
            &chip.port(),
        ]);
        assert!(out.contains("2 page(s) erased"), "{part}: {out}");
        let mut want = firmware.clone();
        let off = (at - FLASH) as usize;
        want[off..off + update.len()].copy_from_slice(&update);
        assert_eq!(chip.peek(FLASH, fw_len), want, "{part}");
    }
}
