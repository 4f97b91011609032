//! The simulator's timing model against the wire-rate bound, on the virtual clock (so the
//! numbers are exact and the test does not depend on how fast this machine is).
//!
//! The bound for a write is what the protocol must move at the line rate — every byte of every
//! phase, both ways, at 11 bits per character for 8E1 — plus the part's typical programming and
//! erase times from the device table. A stop-and-wait client on an ideal host meets it exactly;
//! the model must not add time of its own.

mod common;

use common::pattern;
use std::time::Duration;
use stm32boot::device::DeviceTable;
use stm32boot::image::Image;
use stm32boot::link::{LineSettings, Parity};
use stm32boot::ops::{connect, flash, ConnectOptions, NoProgress};
use stm32boot::session::{Session, Timeouts};
use stm32boot::sim::SimSpec;
use stm32boot::transport::sim::{MeterHandle, SimLink};

const LINE: LineSettings = LineSettings {
    baud: 115_200,
    parity: Parity::Even,
};

/// Bytes per 256-byte Write Memory: 31 CE / ACK / address+X / ACK / N data X / ACK.
const WRITE_BLOCK: u64 = 2 + 1 + 5 + 1 + 1 + 256 + 1 + 1;
/// Bytes per 256-byte Read Memory: 11 EE / ACK / address+X / ACK / N ~N / ACK data.
const READ_BLOCK: u64 = 2 + 1 + 5 + 1 + 2 + 1 + 256;

fn write_on(spec: &str, image: &[u8], verify: bool) -> (MeterHandle, flash::WriteReport) {
    let table = DeviceTable::builtin().expect("test setup");
    let spec = SimSpec::parse(spec).expect("test setup");
    let link = SimLink::new(spec, table, LINE).expect("test setup");
    let meter = link.meter();
    let mut session = Session::new(Box::new(link), Timeouts::default());
    // The model is checked against a stop-and-wait client; pipelining overlaps the host's
    // bytes with the chip's ACKs and beats this half-duplex bound (tests/remote.rs).
    session.set_pipelining(false);
    let mut conn =
        connect(session, table, &ConnectOptions::default(), &mut NoProgress).expect("test setup");
    let image = Image::from_bin(image, 0x0800_0000).expect("test setup");
    let mut options = flash::WriteOptions::for_connection(&conn);
    options.verify = verify;
    options.journal = None;
    let report =
        flash::write_image(&mut conn, &image, &options, &mut NoProgress).expect("test setup");
    (meter, report)
}

fn char_time() -> Duration {
    LINE.char_time()
}

#[test]
fn a_256_kib_write_with_verify_takes_the_wire_rate_bound() {
    let image = pattern(256 * 1024, 7);
    let (meter, report) = write_on("stm32f411?timing=typical&clock=virtual", &image, true);
    assert_eq!(report.verified, Some(flash::VerifyMethod::ReadBack));
    let m = meter.read();
    let blocks = 1024u64;
    let protocol_min = blocks * (WRITE_BLOCK + READ_BLOCK);
    let moved = m.stats.to_device + m.stats.to_host;
    // Connect (sync, Get Version, Get, Get ID, flash size) and one erase add a few hundred bytes.
    assert!(
        moved >= protocol_min && moved < protocol_min + 1000,
        "{moved} bytes moved; the protocol needs {protocol_min}"
    );
    // Flash time from the table: sectors 0-5 (4 x 16K, 64K, 128K) at typical times, and 256 KiB
    // programmed at F4's typical 16 µs per byte (x8).
    let typ_erase = Duration::from_millis(4 * 250 + 550 + 1100);
    let typ_program = Duration::from_micros(16 * 256 * 1024);
    assert_eq!(m.stats.flash_time, typ_erase + typ_program);
    let bound = char_time() * moved as u32 + m.stats.flash_time;
    let ratio = m.elapsed.as_secs_f64() / bound.as_secs_f64();
    assert!(
        (1.0..=1.05).contains(&ratio),
        "write+verify took {:?}, bound {:?} (ratio {ratio:.4})",
        m.elapsed,
        bound
    );
    assert_eq!(m.stats.overruns, 0, "a stop-and-wait client never overruns");
}

#[test]
fn max_timing_takes_the_maximum_figures_and_fast_takes_none() {
    let image = pattern(16 * 1024, 9);
    let (meter, _) = write_on("stm32f411?timing=max&clock=virtual", &image, false);
    let m = meter.read();
    // Sector 0 at 800 ms, 16 KiB at 100 µs a byte.
    assert_eq!(
        m.stats.flash_time,
        Duration::from_millis(800) + Duration::from_micros(100 * 16 * 1024)
    );
    let (meter, _) = write_on("stm32f411", &image, false);
    let m = meter.read();
    assert_eq!(m.elapsed, Duration::ZERO);
    assert_eq!(m.stats.flash_time, Duration::ZERO);
}

#[test]
fn latency_costs_one_round_trip_per_phase() {
    let image = pattern(4 * 1024, 3);
    let (fast, _) = write_on("stm32f411?timing=typical&clock=virtual", &image, false);
    let (slow, _) = write_on(
        "stm32f411?timing=typical&latency=150ms&clock=virtual",
        &image,
        false,
    );
    let (a, b) = (fast.read(), slow.read());
    assert_eq!(a.stats.to_device, b.stats.to_device);
    let extra = b.elapsed - a.elapsed;
    let rtt = Duration::from_millis(150);
    // 16 blocks x 3 phases waited for, plus connect and erase: every wait costs one round trip.
    let waits = extra.as_secs_f64() / rtt.as_secs_f64();
    assert!(
        (waits - waits.round()).abs() < 1e-6 && waits >= 48.0,
        "{waits} round trips"
    );
}

/// A sparse image (a quarter firmware, the rest erased value) with read-back verify: the erased
/// blocks of pages this run erased are left to the erase's ACK, so only the written quarter is
/// read back; `verify_erased_blocks` reads everything.
#[test]
fn read_back_verify_of_a_sparse_image_reads_only_what_was_written() {
    let mut image = vec![0xFFu8; 64 * 1024];
    image[..16 * 1024].copy_from_slice(&pattern(16 * 1024, 3));
    let run = |all: bool| {
        let table = DeviceTable::builtin().expect("test setup");
        let spec = SimSpec::parse("stm32f411?clock=virtual").expect("test setup");
        let link = SimLink::new(spec, table, LINE).expect("test setup");
        let meter = link.meter();
        let session = Session::new(Box::new(link), Timeouts::default());
        let mut conn = connect(session, table, &ConnectOptions::default(), &mut NoProgress)
            .expect("test setup");
        let img = Image::from_bin(&image, 0x0800_0000).expect("test setup");
        let mut options = flash::WriteOptions::for_connection(&conn);
        options.journal = None;
        options.verify_erased_blocks = all;
        let report =
            flash::write_image(&mut conn, &img, &options, &mut NoProgress).expect("test setup");
        assert_eq!(report.verified, Some(flash::VerifyMethod::ReadBack));
        (report, meter.read().stats.to_host)
    };
    let (sparse, read_sparse) = run(false);
    let (full, read_full) = run(true);
    assert_eq!(sparse.blocks_written, 64);
    assert_eq!(sparse.blocks_covered_by_erase, 192);
    assert_eq!(full.blocks_covered_by_erase, 0);
    // 192 blocks of 256 bytes fewer came back from the chip.
    assert!(
        read_full - read_sparse >= 192 * 256,
        "{read_full} vs {read_sparse}"
    );
}
