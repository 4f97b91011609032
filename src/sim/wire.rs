//! The wire between a host and the simulated chip, and time.
//!
//! A [`Wire`] owns a [`Target`] and models what sits between it and the host: characters take
//! their time on the line at the configured baud and framing (10 bits for 8N1, 11 for 8E1); the
//! ROM bootloader polls a one-byte receive register, so while the chip programs, erases or sends
//! (it waits for each character to leave), the first byte that arrives is held and the rest are
//! lost to overrun, exactly as on the silicon; flash work takes the family's typical or maximum
//! datasheet time; after a reset the ROM needs its start-up delay before it listens; a remote
//! link adds latency and a modem's send timer; DTR and RTS drive NRST and BOOT0 as a board wires
//! them; and faults (dropped or corrupted bytes, a cut link, power loss) happen on demand, drawn
//! from a seeded generator so that a run can be replayed.
//!
//! Line faults a `doctor` has to tell apart: a half-duplex (one-wire) adapter echoes every byte
//! the host sends (`echo`); and where the host's line settings are known (the in-process link),
//! the ROM's own framing is modelled: its auto-baud locks onto the host's rate at the first 0x7F
//! after it starts, and bytes at another rate are lost both ways; it runs 8E1, so a host at 8N1
//! has the bytes with an even number of one bits dropped (its stop bit is read as a wrong
//! parity bit) and loses the replies whose parity bit is 0 (read as a broken stop bit), and a
//! host at odd parity gets every byte wrong both ways.
//!
//! The wire has no clock of its own: callers pass the time in nanoseconds since the wire was
//! made. The in-process link passes a virtual clock (tests never depend on timing); the
//! pseudo-terminal, TCP and RFC 2217 endpoints pass the wall clock. The same bytes at the same
//! times with the same seed give the same replies at the same times.

use super::target::{Effects, FaultKind, Mode, Target, Work};
use crate::link::{LineSettings, Parity};
use crate::protocol::SYNC;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::time::Duration;

/// Which datasheet figures the flash and the ROM take, and whether characters take time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    /// Nothing takes time (the default: tests and quick rehearsals).
    #[default]
    Fast,
    /// Wire rate, typical flash times and start-up delays.
    Typical,
    /// Wire rate, maximum flash times and start-up delays.
    Max,
}

impl std::str::FromStr for Timing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Timing::Fast),
            "typical" | "typ" => Ok(Timing::Typical),
            "max" => Ok(Timing::Max),
            other => Err(format!(
                "unknown timing '{other}': use fast, typical or max"
            )),
        }
    }
}

/// A modem-control line of the host's serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlLine {
    /// Data Terminal Ready.
    Dtr,
    /// Request To Send.
    Rts,
}

/// How one of the chip's pins is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinDrive {
    /// By a modem-control line. Not inverted, an asserted line pulls the pin low, as USB-UART
    /// adapters do at TTL level (links.md §9.3); inverted, an asserted line drives it high.
    Line {
        /// Which line.
        line: ControlLine,
        /// Whether the adapter or the board inverts it.
        inverted: bool,
    },
    /// Tied to a fixed level (`true` = high).
    Fixed(bool),
}

impl PinDrive {
    fn level(self, dtr: bool, rts: bool) -> bool {
        match self {
            PinDrive::Fixed(level) => level,
            PinDrive::Line { line, inverted } => {
                let asserted = match line {
                    ControlLine::Dtr => dtr,
                    ControlLine::Rts => rts,
                };
                asserted == inverted
            }
        }
    }
}

/// How the board wires the host's control lines to NRST and BOOT0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wiring {
    /// What drives NRST (low = held in reset).
    pub nrst: PinDrive,
    /// What drives BOOT0 (high = system memory, sampled at reset).
    pub boot0: PinDrive,
}

impl Default for Wiring {
    /// The common auto-reset wiring that stm32loader assumes: DTR → NRST, RTS → BOOT0, both
    /// active low, so that with both lines released the chip runs its bootloader.
    fn default() -> Self {
        Wiring {
            nrst: PinDrive::Line {
                line: ControlLine::Dtr,
                inverted: false,
            },
            boot0: PinDrive::Line {
                line: ControlLine::Rts,
                inverted: false,
            },
        }
    }
}

/// Faults on the link itself, drawn from a seeded generator.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkFaults {
    /// Seed of the generator.
    pub seed: u64,
    /// Probability that a byte (either way) is lost.
    pub drop: f64,
    /// Probability that a byte (either way) has one bit flipped.
    pub corrupt: f64,
    /// The link is cut after this many bytes (both ways together).
    pub cut_after: Option<u64>,
}

/// Everything the wire models besides the chip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireConfig {
    /// Datasheet figures to use.
    pub timing: Timing,
    /// Round-trip latency of the link, split evenly between the two directions.
    pub latency: Duration,
    /// Send timer of a modem next to the chip: bytes from the chip wait until the line has
    /// been idle this long, then go out together.
    pub send_timer: Duration,
    /// Control lines to pins.
    pub wiring: Wiring,
    /// Link faults.
    pub faults: LinkFaults,
    /// How long power stays off after an injected power loss.
    pub power_off: Duration,
    /// A half-duplex (one-wire) adapter: every byte the host sends comes back to it.
    pub echo: bool,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            timing: Timing::Fast,
            latency: Duration::ZERO,
            send_timer: Duration::ZERO,
            wiring: Wiring::default(),
            faults: LinkFaults::default(),
            power_off: Duration::from_secs(1),
            echo: false,
        }
    }
}

/// Counters of what crossed the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireStats {
    /// Bytes the host sent.
    pub to_device: u64,
    /// Bytes the chip sent.
    pub to_host: u64,
    /// Bytes lost to UART overrun.
    pub overruns: u64,
    /// Bytes lost to injected drops.
    pub dropped: u64,
    /// Bytes corrupted on purpose.
    pub corrupted: u64,
    /// Time the chip spent programming and erasing (and writing option bytes).
    pub flash_time: Duration,
    /// Bytes a half-duplex adapter echoed to the host.
    pub echoed: u64,
    /// Bytes lost to a baud-rate mismatch (framing errors), or read as a broken stop bit by a
    /// host without parity.
    pub framing_errors: u64,
    /// Bytes lost to a parity mismatch.
    pub parity_errors: u64,
    /// Round trips: times the host sent after bytes from the chip had reached it since its
    /// last send (a stop-and-wait client makes one per phase, a pipelining one per command).
    pub round_trips: u64,
}

/// Who sends bytes to the host: the ROM (8E1, at its auto-baud rate) or anything else (the
/// application's banner, whose UART settings are not modelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Rom { baud: Option<u32> },
    Other,
}

/// Whether two baud rates are close enough for a UART (AN3155 allows the host 2.5 %).
fn same_rate(a: u32, b: u32) -> bool {
    u64::from(a.abs_diff(b)) * 40 <= u64::from(a.max(b))
}

/// The even-parity bit the ROM sends and expects for `byte`.
fn even_parity_bit(byte: u8) -> bool {
    byte.count_ones() % 2 == 1
}

/// The host, the wire and the chip, advanced by the caller's clock (nanoseconds).
pub struct Wire {
    target: Target,
    cfg: WireConfig,
    line: LineSettings,
    rng: ChaCha8Rng,
    now: u64,
    /// Host → chip: (time the character's stop bit reaches the chip, byte, the host's line
    /// settings when it sent it).
    inbound: VecDeque<(u64, u8, LineSettings)>,
    /// Whether `line` is what the host really uses (then baud and parity mismatches count).
    host_line_known: bool,
    host_line_free: u64,
    held: Option<u8>,
    busy_until: u64,
    ready_at: u64,
    chip_line_free: u64,
    modem: Vec<u8>,
    modem_last: u64,
    /// Chip → host: (time the byte reaches the host, byte).
    outbound: VecDeque<(u64, u8)>,
    /// Bytes reached the host since its last send (for [`WireStats::round_trips`]).
    replied: bool,
    dtr: bool,
    rts: bool,
    in_reset: bool,
    power_on_at: Option<u64>,
    cut: bool,
    carried: u64,
    stats: WireStats,
    scratch: Vec<u8>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Wire {
    /// Put `target` on a wire. The chip has been powered for a while: unless it resumes a saved
    /// run, it has booted as its pins say (both control lines released); it listens at once.
    pub fn new(mut target: Target, cfg: WireConfig, line: LineSettings) -> Wire {
        let boot0 = cfg.wiring.boot0.level(false, false);
        let nrst = cfg.wiring.nrst.level(false, false);
        target.set_boot0_pin(boot0);
        if !target.resumed() {
            target.power_on();
        }
        target.take_boot_output();
        target.take_effects();
        Wire {
            target,
            rng: ChaCha8Rng::seed_from_u64(cfg.faults.seed),
            cfg,
            line,
            now: 0,
            inbound: VecDeque::new(),
            host_line_known: false,
            host_line_free: 0,
            held: None,
            busy_until: 0,
            ready_at: 0,
            chip_line_free: 0,
            modem: Vec::new(),
            modem_last: 0,
            outbound: VecDeque::new(),
            replied: false,
            dtr: false,
            rts: false,
            in_reset: !nrst,
            power_on_at: None,
            cut: false,
            carried: 0,
            stats: WireStats::default(),
            scratch: Vec::with_capacity(300),
        }
    }

    /// The chip.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The chip, mutable (tests arrange memory; endpoints save state).
    pub fn target_mut(&mut self) -> &mut Target {
        &mut self.target
    }

    /// The configuration.
    pub fn config(&self) -> &WireConfig {
        &self.cfg
    }

    /// What crossed the wire so far.
    pub fn stats(&self) -> WireStats {
        self.stats
    }

    /// The line settings in use.
    pub fn line(&self) -> LineSettings {
        self.line
    }

    /// Whether an injected cut has broken the link.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// A new connection after a cut: the link carries bytes again (the cut fires once).
    pub fn reconnect(&mut self) {
        self.cut = false;
        self.cfg.faults.cut_after = None;
        self.inbound.clear();
        self.outbound.clear();
        self.modem.clear();
    }

    /// Whether NRST is held low.
    pub fn in_reset(&self) -> bool {
        self.in_reset
    }

    /// Declare that the line settings given to [`Wire::new`] and [`Wire::set_line`] are the
    /// host's real ones, so that the ROM's auto-baud and 8E1 framing apply: bytes at another
    /// rate or parity are lost. Only a link that knows them says so (the in-process one); a
    /// pseudo-terminal carries no parity and a network hop may not carry the rate.
    pub fn set_host_line_known(&mut self, known: bool) {
        self.host_line_known = known;
    }

    fn char_ns(&self) -> u64 {
        match self.cfg.timing {
            Timing::Fast => 0,
            _ => ns(self.line.char_time()),
        }
    }

    fn work_ns(&self, work: Work) -> u64 {
        match self.cfg.timing {
            Timing::Fast => 0,
            Timing::Typical => ns(work.typical),
            Timing::Max => ns(work.max),
        }
    }

    fn startup_ns(&self) -> u64 {
        match self.cfg.timing {
            Timing::Fast => 0,
            _ => u64::from(self.target.chip().device().rules.startup_us) * 1000,
        }
    }

    fn half_latency(&self) -> u64 {
        ns(self.cfg.latency) / 2
    }

    /// The link's own faults for one byte: `None` if it is lost.
    fn through_link(&mut self, byte: u8) -> Option<u8> {
        if self.cut {
            return None;
        }
        let f = self.cfg.faults;
        if let Some(limit) = f.cut_after {
            if self.carried >= limit {
                self.cut = true;
                return None;
            }
        }
        self.carried += 1;
        if f.drop > 0.0 && self.rng.random_bool(f.drop) {
            self.stats.dropped += 1;
            return None;
        }
        if f.corrupt > 0.0 && self.rng.random_bool(f.corrupt) {
            self.stats.corrupted += 1;
            return Some(byte ^ (1 << self.rng.random_range(0..8u32)));
        }
        Some(byte)
    }

    /// The host sends `bytes` at time `t`.
    pub fn host_send(&mut self, t: u64, bytes: &[u8]) {
        self.advance(t);
        if self.replied && !bytes.is_empty() {
            self.replied = false;
            self.stats.round_trips += 1;
        }
        let c = self.char_ns();
        let half = self.half_latency();
        for &b in bytes {
            if self.cut {
                return;
            }
            self.stats.to_device += 1;
            // The character occupies the chip's RX line whether or not it survives.
            let start = (t + half).max(self.host_line_free);
            let arrival = start + c;
            self.host_line_free = arrival;
            if let Some(b) = self.through_link(b) {
                self.inbound.push_back((arrival, b, self.line));
            }
        }
    }

    /// The host drives DTR and RTS at time `t`.
    pub fn set_lines(&mut self, t: u64, dtr: bool, rts: bool) {
        self.advance(t);
        let at = t + self.half_latency();
        self.dtr = dtr;
        self.rts = rts;
        let w = self.cfg.wiring;
        self.target.set_boot0_pin(w.boot0.level(dtr, rts));
        let nrst = w.nrst.level(dtr, rts);
        if !nrst && !self.in_reset {
            self.in_reset = true;
            self.held = None;
        } else if nrst && self.in_reset {
            self.in_reset = false;
            if self.target.mode() != Mode::Off {
                self.target.reset();
                let fx = self.target.take_effects();
                self.after_effects(at, fx);
            }
        }
    }

    /// The levels last driven on DTR and RTS.
    pub fn lines(&self) -> (bool, bool) {
        (self.dtr, self.rts)
    }

    /// The host changes baud rate or framing at time `t`.
    pub fn set_line(&mut self, t: u64, line: LineSettings) {
        self.advance(t);
        self.line = line;
    }

    /// Discard, at time `t`, what the chip has sent that the host has not read (`received`),
    /// and what the host has sent that has not reached the chip (`sent`).
    pub fn purge(&mut self, t: u64, received: bool, sent: bool) {
        self.advance(t);
        if received {
            self.outbound.retain(|(at, _)| *at > t);
        }
        if sent {
            self.inbound.clear();
        }
    }

    /// When something next happens on the wire (a byte reaching either end, the chip becoming
    /// free, power returning), if anything is pending.
    pub fn next_event(&self) -> Option<u64> {
        [
            self.inbound.front().map(|x| x.0),
            self.held.map(|_| self.busy_until),
            self.power_on_at,
            self.modem_flush_at(),
            self.outbound.front().map(|x| x.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn modem_flush_at(&self) -> Option<u64> {
        (!self.modem.is_empty()).then(|| self.modem_last + ns(self.cfg.send_timer))
    }

    /// Bytes that have reached the host by time `t`, removed from the wire.
    pub fn take_delivered(&mut self, t: u64, max: usize) -> Vec<u8> {
        self.advance(t);
        let mut out = Vec::new();
        if self.outbound.front().is_some_and(|x| x.0 <= t) {
            self.replied = true;
        }
        while out.len() < max {
            match self.outbound.front() {
                Some(&(at, b)) if at <= t => {
                    out.push(b);
                    self.outbound.pop_front();
                }
                _ => break,
            }
        }
        out
    }

    /// Whether a byte has reached the host by time `t`.
    pub fn has_delivered(&mut self, t: u64) -> bool {
        self.advance(t);
        self.outbound.front().is_some_and(|x| x.0 <= t)
    }

    /// Run the chip up to time `t`.
    pub fn advance(&mut self, t: u64) {
        loop {
            let arrival = self.inbound.front().map(|x| x.0);
            let held = self.held.map(|_| self.busy_until);
            let power = self.power_on_at;
            let flush = self.modem_flush_at();
            // Earliest event at or before t; at equal times power comes first, then the held
            // byte (it is older than any arrival), then the modem, then arrivals.
            let mut best: Option<(u64, u8)> = None;
            for (at, kind) in [(power, 0u8), (held, 1), (flush, 2), (arrival, 3)] {
                if let Some(at) = at {
                    if at <= t && best.is_none_or(|(b, _)| at < b) {
                        best = Some((at, kind));
                    }
                }
            }
            let Some((at, kind)) = best else {
                break;
            };
            match kind {
                0 => self.power_returns(at),
                1 => {
                    if let Some(b) = self.held.take() {
                        self.chip_reads(at, b);
                    }
                }
                2 => self.flush_modem(),
                _ => {
                    if let Some((at, b, line)) = self.inbound.pop_front() {
                        self.arrives(at, b, line);
                    }
                }
            }
        }
        self.now = self.now.max(t);
    }

    fn power_returns(&mut self, at: u64) {
        self.power_on_at = None;
        self.target.power_on();
        let fx = self.target.take_effects();
        if self.in_reset {
            self.target.take_boot_output();
            return;
        }
        self.after_effects(at, fx);
    }

    /// A character's stop bit reached the chip at `at`; the host sent it with `line`.
    fn arrives(&mut self, at: u64, b: u8, line: LineSettings) {
        if self.cfg.echo {
            self.stats.echoed += 1;
            self.emit(at, b);
        }
        if self.in_reset || self.target.mode() == Mode::Off || at < self.ready_at {
            return;
        }
        if !self.rom_receives(b, line) {
            return;
        }
        if at < self.busy_until {
            // The receive register holds one byte; the rest are lost to overrun.
            if self.held.is_none() {
                self.held = Some(b);
            } else {
                self.stats.overruns += 1;
            }
            return;
        }
        self.chip_reads(at, b);
    }

    /// Whether the ROM takes a byte the host sent with `line`: at its auto-baud rate and with
    /// the right parity bit. An unsynced ROM locks its rate onto the first 0x7F. Only where the
    /// host's settings are known and the ROM is listening.
    fn rom_receives(&mut self, b: u8, line: LineSettings) -> bool {
        let mode = self.target.mode();
        if !self.host_line_known || !matches!(mode, Mode::Bootloader | Mode::BootloaderUnsynced) {
            return true;
        }
        if let Some(rate) = self.target.autobaud() {
            if !same_rate(rate, line.baud) {
                self.stats.framing_errors += 1;
                return false;
            }
        }
        // The bit after the data: the host's parity bit, or its stop bit (1) at 8N1.
        let ninth = match line.parity {
            Parity::Even => even_parity_bit(b),
            Parity::Odd => !even_parity_bit(b),
            Parity::None => true,
        };
        if ninth != even_parity_bit(b) {
            self.stats.parity_errors += 1;
            return false;
        }
        if mode == Mode::BootloaderUnsynced && b == SYNC && self.target.autobaud().is_none() {
            self.target.lock_autobaud(line.baud);
        }
        true
    }

    /// Whether the host receives a byte the ROM sent at `baud` (8E1), at its own settings.
    fn host_receives(&mut self, b: u8, from: Sender) -> bool {
        let Sender::Rom { baud } = from else {
            return true;
        };
        if !self.host_line_known {
            return true;
        }
        if baud.is_some_and(|rate| !same_rate(rate, self.line.baud)) {
            self.stats.framing_errors += 1;
            return false;
        }
        match self.line.parity {
            Parity::Even => true,
            // The ROM's parity bit lands where the host expects its stop bit.
            Parity::None => {
                let ok = even_parity_bit(b);
                if !ok {
                    self.stats.framing_errors += 1;
                }
                ok
            }
            Parity::Odd => {
                self.stats.parity_errors += 1;
                false
            }
        }
    }

    /// The chip takes a byte from its receive register at `at`.
    fn chip_reads(&mut self, at: u64, b: u8) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let from = match self.target.mode() {
            Mode::Bootloader | Mode::BootloaderUnsynced => Sender::Rom {
                baud: self.target.autobaud(),
            },
            _ => Sender::Other,
        };
        self.target.feed(b, &mut out);
        let fx = self.target.take_effects();
        let work = self.work_ns(fx.work);
        self.stats.flash_time += Duration::from_nanos(work);
        let done = if fx.reply_first {
            let sent = self.send(at, &out, from);
            sent + work
        } else {
            let sent = self.send(at + work, &out, from);
            sent.max(at + work)
        };
        self.scratch = out;
        self.busy_until = self.busy_until.max(done);
        self.after_effects(done, fx);
    }

    fn after_effects(&mut self, at: u64, fx: Effects) {
        if fx.fault == Some(FaultKind::PowerLoss) {
            self.held = None;
            self.power_on_at = Some(at + ns(self.cfg.power_off));
            return;
        }
        if fx.restarted {
            self.held = None;
            self.ready_at = at + self.startup_ns();
            self.busy_until = self.busy_until.max(at);
            let banner = self.target.take_boot_output();
            if !banner.is_empty() {
                let ready = self.ready_at;
                let sent = self.send(ready, &banner, Sender::Other);
                self.busy_until = self.busy_until.max(sent);
            }
        }
    }

    /// The chip sends `bytes` starting no earlier than `at`; returns when the last one has left.
    fn send(&mut self, at: u64, bytes: &[u8], from: Sender) -> u64 {
        let c = self.char_ns();
        let mut end = at.max(self.chip_line_free);
        for &b in bytes {
            let start = at.max(self.chip_line_free);
            end = start + c;
            self.chip_line_free = end;
            self.stats.to_host += 1;
            let Some(b) = self.through_link(b) else {
                continue;
            };
            if self.host_receives(b, from) {
                self.emit(end, b);
            }
        }
        end
    }

    /// A byte whose last bit left the chip's end of the line at `end` heads for the host:
    /// directly, or through the modem's send timer.
    fn emit(&mut self, end: u64, b: u8) {
        let timer = ns(self.cfg.send_timer);
        if timer == 0 {
            let half = self.half_latency();
            self.outbound.push_back((end + half, b));
            return;
        }
        if !self.modem.is_empty() && end > self.modem_last + timer {
            self.flush_modem();
        }
        self.modem.push(b);
        self.modem_last = end;
    }

    fn flush_modem(&mut self) {
        let at = self.modem_last + ns(self.cfg.send_timer) + self.half_latency();
        for b in self.modem.drain(..) {
            self.outbound.push_back((at, b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;
    use crate::sim::target::{FaultOp, OpFault};
    use crate::sim::SimSpec;

    fn target(part: &str) -> Target {
        SimSpec::parse(part)
            .expect("test setup")
            .build(DeviceTable::builtin().expect("test setup"))
            .expect("test setup")
    }

    fn typical() -> WireConfig {
        WireConfig {
            timing: Timing::Typical,
            ..WireConfig::default()
        }
    }

    const LINE: LineSettings = LineSettings {
        baud: 115_200,
        parity: Parity::Even,
    };

    /// Run until the wire is quiet; returns (time, byte) as the host receives them.
    fn drain(w: &mut Wire) -> Vec<(u64, u8)> {
        let mut got = Vec::new();
        while let Some(t) = w.next_event() {
            for b in w.take_delivered(t, usize::MAX) {
                got.push((t, b));
            }
        }
        got
    }

    fn bytes(v: &[(u64, u8)]) -> Vec<u8> {
        v.iter().map(|x| x.1).collect()
    }

    #[test]
    fn characters_take_eleven_bits_at_8e1_and_ten_at_8n1() {
        let mut w = Wire::new(target("stm32f411"), typical(), LINE);
        w.host_send(0, &[0x7F]);
        let got = drain(&mut w);
        assert_eq!(bytes(&got), [0x79]);
        let c = 11 * 1_000_000_000 / 115_200;
        assert_eq!(got[0].0, 2 * c, "7F in, then 79 out: two 11-bit characters");

        let n1 = LineSettings {
            baud: 115_200,
            parity: Parity::None,
        };
        let mut w = Wire::new(target("stm32f411"), typical(), n1);
        w.host_send(0, &[0x7F]);
        let got = drain(&mut w);
        assert_eq!(got[0].0, 2 * (10 * 1_000_000_000 / 115_200));
    }

    #[test]
    fn fast_timing_takes_no_time() {
        let mut w = Wire::new(target("stm32f411"), WireConfig::default(), LINE);
        w.host_send(0, &[0x7F, 0x00, 0xFF]);
        let got = drain(&mut w);
        assert!(got.iter().all(|(t, _)| *t == 0));
        assert_eq!(bytes(&got)[..3], [0x79, 0x79, 11]);
    }

    #[test]
    fn bytes_sent_while_the_chip_erases_are_lost_but_one() {
        let mut w = Wire::new(target("stm32f103xb"), typical(), LINE);
        w.host_send(0, &[0x7F]);
        drain(&mut w);
        let t = w.now;
        // Extended Erase is not on F103 (V2.2): use Erase 43 of page 0, then pipeline a Get
        // and a Get Version straight behind it.
        w.host_send(t, &[0x43, 0xBC]);
        drain(&mut w);
        let t = w.now;
        // Page 0, then Get and Get Version pipelined straight behind the erase.
        w.host_send(t, &[0x00, 0x00, 0x00, 0x00, 0xFF, 0x01, 0xFE]);
        let got = bytes(&drain(&mut w));
        // The erase ACK comes after the erase (20 ms). The first byte behind it waited in the
        // receive register; the other three were lost to overrun.
        assert_eq!(got, [0x79]);
        assert_eq!(w.stats().overruns, 3);
        // What comes next is parsed as the chip parses it: 00 was taken as a command, so
        // Get Version's 01 is its "complement": NACK, and FE starts a new command.
        let t = w.now;
        w.host_send(t, &[0x01, 0xFE]);
        assert_eq!(bytes(&drain(&mut w)), [0x1F]);
    }

    #[test]
    fn within_a_command_bytes_back_to_back_are_safe() {
        let mut w = Wire::new(target("stm32f411"), typical(), LINE);
        w.host_send(0, &[0x7F]);
        drain(&mut w);
        let t = w.now;
        // Read Memory sent in one burst: command, address, count.
        w.host_send(t, &[0x11, 0xEE, 0x08, 0x00, 0x00, 0x00, 0x08, 0x03, 0xFC]);
        let got = bytes(&drain(&mut w));
        assert_eq!(got, [0x79, 0x79, 0x79, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(w.stats().overruns, 0);
    }

    #[test]
    fn latency_and_send_timer_delay_replies() {
        let cfg = WireConfig {
            latency: Duration::from_millis(150),
            send_timer: Duration::from_millis(20),
            ..WireConfig::default()
        };
        let mut w = Wire::new(target("stm32f411"), cfg, LINE);
        w.host_send(0, &[0x7F]);
        let got = drain(&mut w);
        assert_eq!(got, vec![(170_000_000, 0x79)]);
    }

    #[test]
    fn dtr_resets_and_rts_selects_boot0() {
        let mut t = target("stm32f411");
        // A firmware whose vector table is valid.
        let mut fw = vec![0u8; 8];
        fw[..4].copy_from_slice(&0x2000_8000u32.to_le_bytes());
        fw[4..].copy_from_slice(&0x0800_0101u32.to_le_bytes());
        t.chip_mut().flash[..8].copy_from_slice(&fw);
        let mut w = Wire::new(t, typical(), LINE);
        // RTS asserted pulls BOOT0 low; a DTR pulse resets: the application starts and prints
        // its banner after the start-up delay.
        w.set_lines(0, true, true);
        assert!(w.in_reset());
        w.set_lines(1_000_000, false, true);
        let got = drain(&mut w);
        let text = String::from_utf8(bytes(&got)).expect("test setup");
        assert!(
            text.contains("application running from 0x08000100"),
            "{text}"
        );
        assert!(got[0].0 >= 1_000_000 + 74_000_000);
        // The application ignores AN3155.
        let t0 = w.now;
        w.host_send(t0, &[0x7F]);
        assert!(drain(&mut w).is_empty());
        // RTS released (BOOT0 high) and another pulse: the bootloader answers.
        let t0 = w.now;
        w.set_lines(t0, true, false);
        w.set_lines(t0 + 1_000_000, false, false);
        w.host_send(t0 + 100_000_000, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79]);
    }

    #[test]
    fn bytes_before_the_rom_has_started_are_ignored() {
        let mut w = Wire::new(target("stm32f411"), typical(), LINE);
        w.set_lines(0, true, false);
        w.set_lines(1000, false, false);
        w.host_send(2000, &[0x7F]);
        assert!(drain(&mut w).is_empty(), "F40x needs 74 ms to start");
        let t = w.now.max(80_000_000);
        w.host_send(t, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79]);
    }

    #[test]
    fn magic_string_enters_the_bootloader() {
        let mut t = target("stm32f411");
        t.chip_mut().flash[..8].copy_from_slice(&[0, 0x80, 0, 0x20, 0x01, 0x01, 0, 0x08]);
        t.set_app_magic(Some(b"UPDATE!".to_vec()));
        let cfg = WireConfig {
            wiring: Wiring {
                nrst: PinDrive::Fixed(true),
                boot0: PinDrive::Fixed(false),
            },
            ..WireConfig::default()
        };
        let mut w = Wire::new(t, cfg, LINE);
        assert!(matches!(w.target().mode(), Mode::Application { .. }));
        w.host_send(0, b"xxUPDATE!");
        drain(&mut w);
        assert_eq!(w.target().mode(), Mode::BootloaderUnsynced);
        w.host_send(1, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79]);
    }

    #[test]
    fn seeded_faults_replay_exactly() {
        let run = |seed: u64| {
            let cfg = WireConfig {
                faults: LinkFaults {
                    seed,
                    drop: 0.05,
                    corrupt: 0.05,
                    cut_after: None,
                },
                ..WireConfig::default()
            };
            let mut w = Wire::new(target("stm32f411"), cfg, LINE);
            let mut got = Vec::new();
            for i in 0..200u32 {
                w.host_send(u64::from(i), &[0x7F, 0x00, 0xFF, 0x01, 0xFE]);
                got.extend(bytes(&drain(&mut w)));
            }
            (got, w.stats())
        };
        let (a, sa) = run(7);
        let (b, sb) = run(7);
        let (c, _) = run(8);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert!(sa.dropped > 0 && sa.corrupted > 0);
        assert_ne!(a, c, "another seed, other faults");
    }

    #[test]
    fn cut_link_stops_everything() {
        let cfg = WireConfig {
            faults: LinkFaults {
                cut_after: Some(3),
                ..LinkFaults::default()
            },
            ..WireConfig::default()
        };
        let mut w = Wire::new(target("stm32f411"), cfg, LINE);
        w.host_send(0, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79]);
        w.host_send(0, &[0x01, 0xFE]);
        assert!(drain(&mut w).is_empty());
        assert!(w.is_cut());
    }

    #[test]
    fn power_loss_mid_write_leaves_half_a_block_and_comes_back() {
        let mut t = target("stm32f411");
        t.set_op_fault(Some(OpFault {
            op: FaultOp::Write,
            nth: 1,
            fraction: 0.5,
            kind: FaultKind::PowerLoss,
        }));
        let mut w = Wire::new(t, WireConfig::default(), LINE);
        let mut frame = vec![0x7F, 0x31, 0xCE, 0x08, 0x00, 0x00, 0x00, 0x08, 0x0F];
        let data = [0x11u8; 16];
        frame.extend_from_slice(&data);
        frame.push(crate::protocol::checksum(&[&[0x0F][..], &data].concat()));
        w.host_send(0, &frame);
        // Sync ACK, command ACK, address ACK, then silence.
        assert_eq!(bytes(&drain(&mut w)), [0x79, 0x79, 0x79]);
        let flash = w.target().chip().peek(0x0800_0000, 16).expect("test setup");
        assert_eq!(&flash[..8], &[0x11; 8]);
        assert_eq!(&flash[8..], &[0xFF; 8]);
        // Power returns after a second; the ROM answers again.
        w.host_send(2_000_000_000, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79]);
    }

    /// A wire whose host line settings are known (as the in-process link's are).
    fn known(part: &str, cfg: WireConfig, line: LineSettings) -> Wire {
        let mut w = Wire::new(target(part), cfg, line);
        w.set_host_line_known(true);
        w
    }

    const GET_ID: [u8; 5] = [0x79, 0x01, 0x04, 0x31, 0x79];

    #[test]
    fn half_duplex_adapter_echoes_before_the_reply() {
        let cfg = WireConfig {
            echo: true,
            ..typical()
        };
        let mut w = Wire::new(target("stm32f411"), cfg, LINE);
        w.host_send(0, &[0x7F]);
        let got = drain(&mut w);
        assert_eq!(bytes(&got), [0x7F, 0x79]);
        assert!(got[0].0 < got[1].0, "the echo comes first");
        let t = w.now;
        w.host_send(t, &[0x02, 0xFD]);
        let mut want = vec![0x02, 0xFD];
        want.extend_from_slice(&GET_ID);
        assert_eq!(bytes(&drain(&mut w)), want);
        assert_eq!(w.stats().echoed, 3);
    }

    #[test]
    fn auto_baud_locks_at_the_first_7f_and_other_rates_are_lost() {
        let slow = LineSettings {
            baud: 57_600,
            parity: Parity::Even,
        };
        let mut w = known("stm32f411", typical(), slow);
        w.host_send(0, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79], "any rate can sync");
        assert_eq!(w.target().autobaud(), Some(57_600));
        let t = w.now;
        w.set_line(t, LINE);
        w.host_send(t, &[0x02, 0xFD]);
        assert!(drain(&mut w).is_empty(), "115200 after locking at 57600");
        assert_eq!(w.stats().framing_errors, 2);
        // Within 2.5 %: still understood.
        let t = w.now;
        w.set_line(
            t,
            LineSettings {
                baud: 58_500,
                parity: Parity::Even,
            },
        );
        w.host_send(t, &[0x02, 0xFD]);
        assert_eq!(bytes(&drain(&mut w)), GET_ID);
        // A reset forgets the rate: the next 0x7F locks again.
        let t = w.now;
        w.set_line(t, LINE);
        w.set_lines(t, true, false);
        w.set_lines(t + 1_000, false, false);
        let t = t + 100_000_000;
        w.host_send(t, &[0x7F, 0x02, 0xFD]);
        let mut want = vec![0x79];
        want.extend_from_slice(&GET_ID);
        assert_eq!(bytes(&drain(&mut w)), want);
        assert_eq!(w.target().autobaud(), Some(115_200));
    }

    #[test]
    fn a_host_without_parity_syncs_but_loses_even_bytes() {
        let n1 = LineSettings {
            baud: 115_200,
            parity: Parity::None,
        };
        let mut w = known("stm32f411", WireConfig::default(), n1);
        // 7F has seven ones: its parity bit is 1, the host's stop bit. ACK (79) has five.
        w.host_send(0, &[0x7F]);
        assert_eq!(bytes(&drain(&mut w)), [0x79]);
        // Get (00 FF): both bytes have an even number of ones and are dropped.
        w.host_send(0, &[0x00, 0xFF]);
        assert!(drain(&mut w).is_empty());
        assert_eq!(w.stats().parity_errors, 2);
        // Get Version (01 FE) reaches the chip; of its reply 79 31 00 00 79 the two 00 have a
        // parity bit of 0, which the host takes for a broken stop bit.
        w.host_send(0, &[0x01, 0xFE]);
        assert_eq!(bytes(&drain(&mut w)), [0x79, 0x31, 0x79]);
        assert_eq!(w.stats().framing_errors, 2);
    }

    #[test]
    fn odd_parity_gets_every_byte_wrong_and_unknown_lines_are_not_judged() {
        let odd = LineSettings {
            baud: 115_200,
            parity: Parity::Odd,
        };
        let mut w = known("stm32f411", WireConfig::default(), odd);
        w.host_send(0, &[0x7F, 0x7F]);
        assert!(drain(&mut w).is_empty());
        assert_eq!(w.stats().parity_errors, 2);
        assert_eq!(w.target().mode(), Mode::BootloaderUnsynced);
        // The same settings from an endpoint that cannot know them (a pty): no model.
        let mut w = Wire::new(target("stm32f411"), WireConfig::default(), odd);
        w.host_send(0, &[0x7F, 0x02, 0xFD]);
        let mut want = vec![0x79];
        want.extend_from_slice(&GET_ID);
        assert_eq!(bytes(&drain(&mut w)), want);
    }
}
