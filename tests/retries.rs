//! Repeats and resyncs after one lost or corrupted byte, at every position of an exchange.
//!
//! A link wrapper loses (or flips a bit of) exactly the Nth byte one way, counted from the
//! first byte of the exchange under test; for every N across the exchange the operation must
//! succeed and the chip must hold exactly what it should: the block written, the page erased,
//! the bytes read, and nothing else changed. Together these cover a byte lost inside every
//! field of Write Memory, Read Memory and Extended Erase (the bootloader then waits for one
//! more byte, which the resync's filler supplies without ever making the checksum match), a
//! corrupted byte (NACKed), and a lost or garbled ACK (the bootloader went on without us).

mod common;

use common::{pattern, SimChip};
use std::time::Duration;
use stm32boot::device::DeviceTable;
use stm32boot::link::{LineSettings, Link, LinkError, Parity};
use stm32boot::ops::{connect, flash, ConnectOptions, Connection, NoProgress};
use stm32boot::protocol::EraseRequest;
use stm32boot::session::{Session, Timeouts};
use stm32boot::sim::SimSpec;
use stm32boot::transport::sim::SimLink;

const LINE: LineSettings = LineSettings {
    baud: 115_200,
    parity: Parity::Even,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    ToChip,
    FromChip,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Damage {
    Lose,
    Flip,
    /// Flip the same bit of this byte and the next: the frame's XOR checksum still matches.
    FlipPair,
}

/// A link that damages one byte going one way: the `at`th counted from when it is armed.
struct OneBadByte {
    inner: SimLink,
    way: Way,
    damage: Damage,
    armed: bool,
    at: u64,
    seen: u64,
    done: bool,
}

impl OneBadByte {
    fn hit(&mut self, way: Way) -> bool {
        if !self.armed || self.done || way != self.way {
            return false;
        }
        let last = if self.damage == Damage::FlipPair {
            self.at + 1
        } else {
            self.at
        };
        let hit = (self.at..=last).contains(&self.seen);
        self.seen += 1;
        if self.seen > last {
            self.done = true;
        }
        hit
    }

    fn damage(&self, byte: u8) -> Option<u8> {
        match self.damage {
            Damage::Lose => None,
            Damage::Flip | Damage::FlipPair => Some(byte ^ 0x10),
        }
    }
}

impl Link for OneBadByte {
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        if data.is_empty() {
            // The test's signal: count from here.
            self.armed = true;
            return Ok(());
        }
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if self.hit(Way::ToChip) {
                out.extend(self.damage(b));
            } else {
                out.push(b);
            }
        }
        self.inner.write_all(&out)
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        loop {
            let n = self.inner.read(buf, timeout)?;
            let mut kept = 0;
            for i in 0..n {
                let b = buf[i];
                let b = if self.hit(Way::FromChip) {
                    match self.damage(b) {
                        Some(x) => x,
                        None => continue,
                    }
                } else {
                    b
                };
                buf[kept] = b;
                kept += 1;
            }
            if kept > 0 || n == 0 {
                return Ok(kept);
            }
        }
    }

    fn discard_input(&mut self) -> Result<(), LinkError> {
        self.inner.discard_input()
    }
    fn set_dtr(&mut self, level: bool) -> Result<(), LinkError> {
        self.inner.set_dtr(level)
    }
    fn set_rts(&mut self, level: bool) -> Result<(), LinkError> {
        self.inner.set_rts(level)
    }
    fn set_break(&mut self, on: bool) -> Result<(), LinkError> {
        self.inner.set_break(on)
    }
    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        self.inner.set_line(settings)
    }
    fn line(&self) -> LineSettings {
        self.inner.line()
    }
    fn delay(&mut self, duration: Duration) {
        self.inner.delay(duration)
    }
    fn now(&self) -> Duration {
        self.inner.now()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn close(&mut self) -> Result<(), LinkError> {
        self.inner.close()
    }
}

/// A chip holding old firmware in its first 16 KiB, and a connection to it whose link damages
/// the `at`th byte going `way` once [`arm`] is called.
fn connected(chip: &SimChip, way: Way, damage: Damage, at: u64) -> Connection {
    let table = DeviceTable::builtin().expect("test setup");
    let port = chip.port();
    let spec = SimSpec::parse(port.trim_start_matches("sim:")).expect("test setup");
    let inner = SimLink::new(spec, table, LINE).expect("test setup");
    let link = OneBadByte {
        inner,
        way,
        damage,
        armed: false,
        at,
        seen: 0,
        done: false,
    };
    let session = Session::new(Box::new(link), Timeouts::default());
    connect(session, table, &ConnectOptions::default(), &mut NoProgress).expect("test setup")
}

/// Arm the damage: from now on bytes are counted. The wrapper sits behind the session's
/// `Box<dyn Link>`, so an empty write (which the session never makes) is the signal.
fn arm(conn: &mut Connection) {
    conn.session.link_mut().write_all(&[]).expect("test setup");
}

const PART: &str = "stm32l476";
const OLD: u32 = 0x0800_0000;
const OLD_LEN: usize = 16 * 1024;

fn chip_with_old_firmware() -> SimChip {
    let chip = SimChip::with_options(PART, "timing=typical&clock=virtual");
    chip.fill(OLD, &pattern(OLD_LEN, 99));
    chip
}

fn flash_of(chip: &SimChip) -> Vec<u8> {
    chip.peek(OLD, 64 * 1024)
}

/// Runs `op` once for every position of one damaged byte in `range`, each on a fresh chip;
/// `expect` gives the flash the chip must hold afterwards (from the flash before).
fn every_position(
    way: Way,
    damage: Damage,
    range: std::ops::Range<u64>,
    op: &dyn Fn(&mut Connection),
    expect: &dyn Fn(&mut Vec<u8>),
) {
    for at in range {
        let chip = chip_with_old_firmware();
        let mut want = flash_of(&chip);
        expect(&mut want);
        let mut conn = connected(&chip, way, damage, at);
        arm(&mut conn);
        op(&mut conn);
        conn.close().expect("state saved");
        let got = flash_of(&chip);
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{damage:?} byte {at} {way:?}: 0x{:08X} holds 0x{:02X}, 0x{:02X} expected",
                OLD + i as u32,
                got[i],
                want[i]
            );
        }
    }
}

const BLANK_BLOCK: u32 = 0x0800_8000;

#[test]
fn a_write_survives_one_bad_byte_anywhere_either_way() {
    let data = pattern(256, 5);
    let op = |conn: &mut Connection| {
        conn.session
            .write_memory_reliably(BLANK_BLOCK, &data)
            .expect("the write lands")
    };
    let expect = |flash: &mut Vec<u8>| {
        let off = (BLANK_BLOCK - OLD) as usize;
        flash[off..off + 256].copy_from_slice(&data);
    };
    // 31 CE, 5 address bytes, N + 256 data + checksum: 265 bytes to the chip; three ACKs back.
    for damage in [Damage::Lose, Damage::Flip] {
        every_position(Way::ToChip, damage, 0..266, &op, &expect);
        every_position(Way::FromChip, damage, 0..4, &op, &expect);
    }
}

#[test]
fn a_read_survives_one_bad_byte_anywhere_but_in_the_data() {
    let op = |conn: &mut Connection| {
        let mut buf = [0u8; 256];
        conn.session.read_memory(OLD + 512, &mut buf).expect("read");
        assert_eq!(&buf[..], &pattern(OLD_LEN, 99)[512..768]);
    };
    // 11 EE, 5 address bytes, N ~N to the chip; three ACKs and the first data byte back (a
    // lost data byte is a short read, repeated; a flipped one is not detectable here: that is
    // what read_memory_stable is for, tested below).
    for damage in [Damage::Lose, Damage::Flip] {
        every_position(Way::ToChip, damage, 0..10, &op, &|_| {});
        every_position(Way::FromChip, damage, 0..3, &op, &|_| {});
    }
    every_position(Way::FromChip, Damage::Lose, 3..260, &op, &|_| {});
}

#[test]
fn a_stable_read_catches_a_corrupted_data_byte() {
    let op = |conn: &mut Connection| {
        let mut buf = [0u8; 64];
        conn.session
            .read_memory_stable(OLD + 512, &mut buf)
            .expect("read");
        assert_eq!(&buf[..], &pattern(OLD_LEN, 99)[512..576]);
    };
    every_position(Way::FromChip, Damage::Flip, 3..140, &op, &|_| {});
}

#[test]
fn an_erase_survives_one_bad_byte_anywhere_and_erases_only_its_page() {
    // Page 3 of the old firmware (2 KiB pages): 44 BB, then 00 00 00 03 03.
    let op = |conn: &mut Connection| {
        conn.session
            .erase(&EraseRequest::Pages(vec![3]), Duration::from_secs(1))
            .expect("the erase lands")
    };
    let expect = |flash: &mut Vec<u8>| {
        flash[3 * 2048..4 * 2048].fill(0xFF);
    };
    for damage in [Damage::Lose, Damage::Flip] {
        every_position(Way::ToChip, damage, 0..7, &op, &expect);
        every_position(Way::FromChip, damage, 0..2, &op, &expect);
    }
}

#[test]
fn a_page_safe_write_keeps_every_other_byte_with_a_bad_byte_in_its_preserve_read() {
    // 100 bytes into the middle of page 2: the page is read (kept bytes), erased and written.
    let data = pattern(100, 11);
    let op = |conn: &mut Connection| {
        let image =
            stm32boot::image::Image::from_bin(&data, OLD + 2 * 2048 + 700).expect("test setup");
        let mut options = flash::WriteOptions::for_connection(conn);
        options.verify = true;
        options.journal = None;
        flash::write_image(conn, &image, &options, &mut NoProgress).expect("the write lands");
    };
    let expect = |flash: &mut Vec<u8>| {
        let off = 2 * 2048 + 700;
        flash[off..off + 100].copy_from_slice(&data);
    };
    // The preserve read of the page comes first: every 10th byte of its first 1.5 blocks.
    for at in (3..400).step_by(10) {
        every_position(Way::FromChip, Damage::Flip, at..at + 1, &op, &expect);
    }
}

#[test]
fn without_retries_the_first_error_stands() {
    let chip = chip_with_old_firmware();
    let mut conn = connected(&chip, Way::ToChip, Damage::Lose, 100);
    conn.session.set_attempts(1);
    arm(&mut conn);
    let err = conn
        .session
        .write_memory_reliably(BLANK_BLOCK, &pattern(256, 5))
        .expect_err("a lost byte fails the write");
    assert!(err.to_string().contains("Write Memory"), "{err}");
    assert_eq!(conn.session.retried(), 0);
}

#[test]
fn a_block_garbled_past_the_checksum_is_found_by_verify_and_its_page_written_again() {
    // Two data bytes of a block's frame flipped alike: the bootloader ACKs and programs them.
    // The verify sees it; the page is erased and written again. The write goes over old
    // firmware: after the page's reads (9 bytes of blank check, 144 of kept bytes read twice)
    // and its erase (7 bytes), the first Write Memory starts at byte 160 and its data at 168.
    // (Two alike flips in a command pair can make another valid command, 31 CE into Go 21 DE:
    // no checksum catches that, and the chip leaves for its application.)
    let data = pattern(1024, 21);
    let rewrites = std::cell::Cell::new(0);
    let op = |conn: &mut Connection| {
        let image = stm32boot::image::Image::from_bin(&data, OLD + 4096).expect("test setup");
        let mut options = flash::WriteOptions::for_connection(conn);
        options.verify = true;
        options.journal = None;
        let mut log = stm32boot::ops::NoteLog::default();
        flash::write_image(conn, &image, &options, &mut log).expect("the write lands");
        if log
            .notes
            .iter()
            .any(|n| format!("{n:?}").contains("writing the pages that differ again"))
        {
            rewrites.set(rewrites.get() + 1);
        }
    };
    let expect = |flash: &mut Vec<u8>| {
        flash[4096..4096 + 1024].copy_from_slice(&data);
    };
    every_position(Way::ToChip, Damage::FlipPair, 168..423, &op, &expect);
    assert_eq!(
        rewrites.get(),
        423 - 168,
        "every garbled block is written again"
    );
}
