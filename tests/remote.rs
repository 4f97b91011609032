//! Remote links: a device that dials out to us (`listen://`), entering the bootloader through
//! the application (`--enter`), DTR/RTS entry sequences over the simulator's RFC 2217 endpoint,
//! and latency: pipelined phases and round trips at 150 ms and 1 s, on the virtual clock so the
//! figures are exact and the tests do not depend on this machine's speed.

mod common;

use common::*;
use std::net::TcpListener;
use std::time::Duration;
use stm32boot::device::DeviceTable;
use stm32boot::image::Image;
use stm32boot::link::{LineSettings, Parity};
use stm32boot::ops::{connect, flash, ConnectOptions, NoProgress};
use stm32boot::session::{Session, Timeouts};
use stm32boot::sim::SimSpec;
use stm32boot::transport::sim::SimLink;

const FLASH: u32 = 0x0800_0000;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    l.local_addr().expect("probe address").port()
}

/// A firmware image whose vector table the simulated chip accepts, followed by filler.
fn firmware(len: usize) -> Vec<u8> {
    let mut fw = pattern(len, 5);
    fw[..4].copy_from_slice(&0x2001_0000u32.to_le_bytes());
    fw[4..8].copy_from_slice(&0x0800_0101u32.to_le_bytes());
    fw
}

/// Put firmware on the chip and leave it running.
fn run_firmware(chip: &SimChip) {
    let file = chip.file("fw.bin");
    std::fs::write(&file, firmware(4096)).expect("image");
    ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--go",
        "--port",
        &chip.port(),
    ]);
}

/// A simulated device that dials out to a fresh local port; returns it and our listen URL.
fn dialling_device(chip: &SimChip, extra: &[&str]) -> (SimProcess, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let sim = SimProcess::start(chip, &["--dial", &addr], extra);
    assert!(sim.first_line.starts_with("dialling"), "{}", sim.first_line);
    (sim, format!("listen://{addr}?wait=60s"))
}

#[test]
fn a_device_that_dials_out_takes_a_verified_write() {
    let chip = SimChip::new("stm32f411");
    let (sim, url) = dialling_device(&chip, &[]);
    let image = pattern(40_000, 11);
    let file = chip.file("image.bin");
    std::fs::write(&file, &image).expect("image");
    let out = ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &url,
    ]);
    assert!(out.contains("verified by reading back"), "{out}");
    sim.stop();
    assert_eq!(chip.peek(FLASH, image.len()), image);
}

#[test]
fn nobody_dialling_in_is_a_clear_error() {
    let url = format!("listen://127.0.0.1:{}?wait=300ms", free_port());
    let err = fails(&["info", "--port", &url], 3);
    assert!(err.contains("no device dialled in within 300ms"), "{err}");
}

#[test]
fn the_entry_string_takes_the_application_to_its_bootloader() {
    let chip = SimChip::new("stm32f411");
    run_firmware(&chip);
    let (sim, url) = dialling_device(&chip, &["--app-enter-bootloader", "UPDATE-NOW"]);
    // The firmware runs: without the entry string nothing answers 0x7F.
    let err = fails(&["info", "--port", &url], 3);
    assert!(err.contains("application"), "{err}");
    // A string the firmware does not know: it says so, and the error quotes it.
    let err = fails(&["info", "--port", &url, "--enter", "HELLO\\r"], 3);
    assert!(
        err.contains("the application answered \"ERROR unknown command\", not the bootloader"),
        "{err}"
    );
    // The right one: the firmware jumps to the ROM, which syncs.
    let out = ok(&["info", "--port", &url, "--enter", "UPDATE-NOW"]);
    assert!(out.contains("STM32F411"), "{out}");
    sim.stop();
}

#[test]
fn bad_entry_strings_and_sequences_are_refused_before_the_port_opens() {
    // The port would fail to open (no such device): the argument errors come first.
    let err = fails(
        &["info", "--port", "/nonexistent/tty", "--enter", "BOOT\\q"],
        2,
    );
    assert!(err.contains("unknown escape"), "{err}");
    let err = fails(
        &["info", "--port", "/nonexistent/tty", "--before", "rts,cts"],
        2,
    );
    assert!(err.contains("unknown signal 'cts'"), "{err}");
}

#[test]
fn rfc2217_entry_sequences_drive_nrst_and_boot0() {
    let chip = SimChip::new("stm32l476");
    run_firmware(&chip);
    let sim = SimProcess::start(&chip, &["--rfc2217", "127.0.0.1:0"], &[]);
    let url = sim.first_line.clone();
    assert!(url.starts_with("rfc2217://"), "{url}");
    // stm32flash syntax, BOOT0 low (RTS asserted) through a reset pulse on DTR: the firmware
    // starts, and 0x7F goes unanswered.
    let err = fails(&["info", "--port", &url, "--before", "rts&dtr,-dtr"], 3);
    assert!(err.contains("no answer"), "{err}");
    // The chip stays in its application until the next reset.
    fails(&["info", "--port", &url], 3);
    // The preset for this wiring: BOOT0 high through the pulse, into the ROM.
    let out = ok(&["info", "--port", &url, "--before", "dtr-reset-rts-boot0"]);
    assert!(out.contains("STM32L47x"), "{out}");
    // Back to the firmware, then in again with stm32flash's syntax for the same thing.
    fails(&["info", "--port", &url, "--before", "rts&dtr,-dtr"], 3);
    let out = ok(&["info", "--port", &url, "--before", "-rts&dtr,-dtr"]);
    assert!(out.contains("STM32L47x"), "{out}");
    // The same wiring with BOOT0 inverted on the board: the preset follows the flag.
    sim.stop();
    let sim = SimProcess::start(&chip, &["--rfc2217", "127.0.0.1:0"], &["--invert-boot0"]);
    let url = sim.first_line.clone();
    fails(
        &["info", "--port", &url, "--before", "dtr-reset-rts-boot0"],
        3,
    );
    let out = ok(&[
        "info",
        "--port",
        &url,
        "--before",
        "dtr-reset-rts-boot0",
        "--invert-boot0",
    ]);
    assert!(out.contains("STM32L47x"), "{out}");
    sim.stop();
}

/// A 64 KiB write with verify over the in-process simulator with `latency` round trips, on the
/// virtual clock: (virtual seconds, round trips, measured round trip).
fn write_at_latency(latency: &str, pipelining: bool) -> (f64, u64, Duration) {
    let table = DeviceTable::builtin().expect("test setup");
    let spec = SimSpec::parse(&format!(
        "stm32f411?timing=typical&latency={latency}&clock=virtual&version=0x33"
    ))
    .expect("test setup");
    let line = LineSettings {
        baud: 115_200,
        parity: Parity::Even,
    };
    let link = SimLink::new(spec, table, line).expect("test setup");
    let meter = link.meter();
    let mut session = Session::new(Box::new(link), Timeouts::default());
    session.set_pipelining(pipelining);
    let mut conn =
        connect(session, table, &ConnectOptions::default(), &mut NoProgress).expect("test setup");
    let data = pattern(64 * 1024, 21);
    let image = Image::from_bin(&data, FLASH).expect("test setup");
    let mut options = flash::WriteOptions::for_connection(&conn);
    options.verify = true;
    options.journal = None;
    let report =
        flash::write_image(&mut conn, &image, &options, &mut NoProgress).expect("test setup");
    assert_eq!(report.verified, Some(flash::VerifyMethod::Crc));
    assert_eq!(conn.session.pipelining(), pipelining, "no pipelined NACK");
    let trips = conn.session.round_trips();
    let rtt = conn.session.round_trip_time().expect("measured at connect");
    let secs = meter.read().elapsed.as_secs_f64();
    let stats = meter.read().stats;
    assert_eq!(
        stats.overruns, 0,
        "pipelining within a command never overruns"
    );
    (secs, trips, rtt)
}

#[test]
fn at_150_ms_a_pipelined_write_takes_one_round_trip_per_block() {
    let (fast, trips, rtt) = write_at_latency("150ms", true);
    let (slow, slow_trips, _) = write_at_latency("150ms", false);
    // The round trip measured at connect is the link's (plus two characters' processing).
    assert!(
        rtt >= Duration::from_millis(150) && rtt < Duration::from_millis(152),
        "{rtt:?}"
    );
    // 256 blocks: one round trip each pipelined, three each in stop-and-wait, plus connect,
    // erase and the CRC.
    assert!((256..300).contains(&trips), "{trips} round trips");
    assert!(slow_trips >= 3 * 256, "{slow_trips} round trips");
    assert!(
        fast / slow <= 0.45,
        "pipelined {fast:.1} s, stop-and-wait {slow:.1} s"
    );
}

#[test]
fn at_1_s_the_default_timeouts_adapt_to_the_measured_round_trip() {
    let (secs, trips, rtt) = write_at_latency("1s", true);
    assert!(
        rtt >= Duration::from_secs(1) && rtt < Duration::from_millis(1010),
        "{rtt:?}"
    );
    assert!((256..300).contains(&trips), "{trips} round trips");
    // Dominated by one round trip per block.
    assert!(secs < 300.0 * 1.1, "{secs:.0} s");
}

#[test]
fn the_json_result_reports_round_trips_per_kib() {
    let chip = SimChip::with_options("stm32f411", "latency=150ms&clock=virtual");
    let file = chip.file("image.bin");
    std::fs::write(&file, pattern(16 * 1024, 4)).expect("image");
    let out = ok(&[
        "--json",
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &chip.port(),
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    let link = &v["link"];
    let per_kib = link["round_trips_per_kib"].as_f64().expect("per KiB");
    // F411's bootloader 3.1 has no Get Checksum: one round trip per 256-byte block to write
    // and one to read back, plus connect and erase.
    assert!((8.0..9.5).contains(&per_kib), "{link}");
    assert!(
        link["round_trip_ms"].as_f64().expect("rtt") >= 149.0,
        "{link}"
    );
    let out = ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--verify",
        "--no-pipeline",
        "--port",
        &chip.port(),
    ]);
    assert!(out.contains("stop-and-wait"), "{out}");
    assert!(
        out.contains("round trip 14") || out.contains("round trip 15"),
        "{out}"
    );
}

#[test]
fn a_station_enters_and_leaves_with_a_preset_and_with_an_stm32flash_sequence() {
    // DTR → NRST, RTS → BOOT0 (the simulator's default wiring), over RFC 2217.
    let chip = SimChip::new("stm32f411");
    run_firmware(&chip);
    let sim = SimProcess::start(&chip, &["--rfc2217", "127.0.0.1:0"], &[]);
    let url = sim.first_line.clone();
    // The firmware runs: nothing answers without an entry sequence.
    fails(&["info", "--port", &url], 3);
    // Entered and left with the preset: afterwards the firmware runs again.
    let out = ok(&[
        "info",
        "--port",
        &url,
        "--before",
        "dtr-reset-rts-boot0",
        "--after",
        "reset",
    ]);
    assert!(out.contains("STM32F411"), "{out}");
    fails(&["info", "--port", &url], 3);
    // The same with stm32flash's syntax, entry and exit.
    let out = ok(&[
        "info",
        "--port",
        &url,
        "--before",
        "-rts&dtr,-dtr:rts&dtr,-dtr",
        "--after",
        "reset",
    ]);
    assert!(out.contains("STM32F411"), "{out}");
    fails(&["info", "--port", &url], 3);
    // Left in the bootloader (--after none), the next run resumes without 0x7F.
    ok(&["info", "--port", &url, "--before", "dtr-reset-rts-boot0"]);
    let out = ok(&["info", "--port", &url, "--before", "no-sync"]);
    assert!(out.contains("STM32F411"), "{out}");
    // --after go starts the firmware.
    ok(&[
        "info", "--port", &url, "--before", "no-sync", "--after", "go",
    ]);
    fails(&["info", "--port", &url], 3);
    sim.stop();
}

#[test]
fn after_reset_needs_a_wiring_and_no_sync_needs_a_synced_bootloader() {
    let err = fails(&["info", "--port", "sim:stm32f411", "--after", "reset"], 2);
    assert!(
        err.contains("--after reset needs to know the wiring"),
        "{err}"
    );
    let err = fails(
        &[
            "info",
            "--port",
            "sim:stm32f411",
            "--before",
            "rts,-dtr",
            "--after",
            "reset",
        ],
        2,
    );
    assert!(err.contains("exit part"), "{err}");
    // A fresh simulated chip has not been synced by anyone.
    let err = fails(
        &["info", "--port", "sim:stm32f411", "--before", "no-sync"],
        3,
    );
    assert!(err.contains("no-sync assumes"), "{err}");
}
