//! The client's session against a device that says anything: a fake link hands the session
//! bytes from the fuzz input, in chunks and with delays and timeouts the input also decides, on
//! a virtual clock. The session connects, then runs operations the input chooses.
//!
//! Input: `flags`, `op count`, ops (9 bytes each: kind and parameters), a little-endian u16
//! length and that many control bytes (one per read: 0 times out, 1..=0x7F hands over up to
//! that many bytes at once, 0x80 | k waits k/128 of the read's timeout, then hands over one
//! byte; once they run out, reads hand over all they can), then the device's bytes.
//!
//! Checked, besides "no panic":
//! - no single wait is longer than the longest timeout the operations and [`Timeouts`] allow
//!   (with a generous allowance for the link latency the session measures);
//! - the number of reads that time out is bounded by the operations (a retry loop that never
//!   ends would exceed it), and the whole virtual time by that and the bytes received;
//! - the number of reads is bounded (a loop that reads without consuming would exceed it);
//! - no allocation is larger than 256 KiB (nothing may be sized by a length the device sends
//!   beyond the protocol's limits: Get's count byte, Get ID's length, Special's packets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stm32boot::link::{LineSettings, Link, LinkError, Parity};
use stm32boot::protocol::EraseRequest;
use stm32boot::session::{Session, Timeouts};
use stm32boot_fuzz::Input;

/// Allocations above this abort the run (libFuzzer reports it as a crash).
const MAX_ALLOC: usize = 256 * 1024;

struct CheckedAlloc;

unsafe impl GlobalAlloc for CheckedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC && !std::thread::panicking() {
            oversized(layout.size());
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC && !std::thread::panicking() {
            oversized(layout.size());
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC && !std::thread::panicking() {
            oversized(new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn oversized(size: usize) -> ! {
    // No allocation here: write the message with a fixed buffer and abort.
    use std::io::Write;
    let mut buf = [0u8; 96];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "allocation of {size} bytes (limit {MAX_ALLOC})\n");
    let n = cursor.position() as usize;
    let _ = std::io::stderr().write_all(&buf[..n]);
    std::process::abort()
}

#[global_allocator]
static ALLOC: CheckedAlloc = CheckedAlloc;

/// Reads above this are a busy loop.
const MAX_READS: u64 = 200_000;

#[derive(Default)]
struct Stats {
    clock: Duration,
    reads: u64,
    timeouts: u64,
    bytes: u64,
    delayed: Duration,
    longest_wait: Duration,
}

struct FakeLink {
    data: Vec<u8>,
    pos: usize,
    control: Vec<u8>,
    cpos: usize,
    line: LineSettings,
    stats: Arc<Mutex<Stats>>,
    written: Arc<AtomicU64>,
}

impl Link for FakeLink {
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.reads += 1;
        assert!(
            st.reads <= MAX_READS,
            "more than {MAX_READS} reads: a busy loop"
        );
        st.longest_wait = st.longest_wait.max(timeout);
        if buf.is_empty() {
            return Ok(0);
        }
        let c = match self.control.get(self.cpos) {
            Some(&c) => {
                self.cpos += 1;
                c
            }
            None => 0x7F,
        };
        if c == 0 || self.pos >= self.data.len() {
            st.clock += timeout;
            st.timeouts += 1;
            return Err(LinkError::Timeout(timeout));
        }
        let want = if c & 0x80 != 0 {
            st.clock += timeout.mul_f64(f64::from(c & 0x7F) / 128.0);
            1
        } else {
            usize::from(c)
        };
        let n = want.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        st.bytes += n as u64;
        st.clock += self.line.char_time() * n as u32;
        Ok(n)
    }

    fn discard_input(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
    fn set_dtr(&mut self, _: bool) -> Result<(), LinkError> {
        Ok(())
    }
    fn set_rts(&mut self, _: bool) -> Result<(), LinkError> {
        Ok(())
    }
    fn set_break(&mut self, _: bool) -> Result<(), LinkError> {
        Ok(())
    }
    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        self.line = settings;
        Ok(())
    }
    fn line(&self) -> LineSettings {
        self.line
    }
    fn delay(&mut self, duration: Duration) {
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.clock += duration;
        st.delayed += duration;
    }
    fn now(&self) -> Duration {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clock
    }
    fn describe(&self) -> String {
        "fuzz link".into()
    }
}

/// One operation and the allowance it brings: its longest legitimate single wait (before
/// scaling and latency), how many reads may time out during it, and its explicit delays.
struct Budget {
    longest: Duration,
    timeouts: u64,
    delays: Duration,
}

/// Reads that may time out in one exchange that fails and recovers (an ACK that does not
/// come, the drain after a NACK, the settle after a failed pipelined exchange).
const PER_EXCHANGE: u64 = 8;
/// Reads that may time out in one sync (three 0x7F, then settling or draining).
const PER_SYNC: u64 = 12;
/// Filler sent by a resync: at most 300 bytes (2 x 64 Ki + 8 after an Extended Erase) in
/// batches doubling up to 4096.
const FILLER: u64 = 300;
const ERASE_FILLER: u64 = 2 * 0x10000 + 8;

/// How many reads may time out in the session's retry structure: `repeating` tries an
/// exchange up to `attempts` times with a resync after each failure (and one after the last);
/// a resync drains, sends filler batches and settles, or syncs and identifies again (once,
/// without repeats) within `Timeouts::resync`; `after_reset` tries to sync for its total and
/// identifies (with repeats).
struct Model {
    attempts: u64,
    sync_total: Duration,
    resync: Duration,
}

impl Model {
    fn batches(filler: u64) -> u64 {
        let (mut sent, mut batch, mut n) = (0, 1, 0);
        while sent < filler {
            sent += batch;
            batch = (batch * 2)
                .min(4096)
                .min(filler.saturating_sub(sent).max(1));
            n += 1;
        }
        n
    }
    /// Sync tries of an `after_reset` over `total` (unscaled): the session divides the scaled
    /// total plus latency by a sync's scaled time plus three latencies, which is at most this.
    fn tries(&self, total: Duration) -> u64 {
        (total.as_secs_f64() / self.sync_total.as_secs_f64()).ceil() as u64 + 2
    }
    fn resync_(&self, erase: bool) -> u64 {
        let filler = if erase { ERASE_FILLER } else { FILLER };
        1 + Self::batches(filler) + 4 + self.after_reset(self.resync, true)
    }
    fn repeating(&self, exchange: u64, once: bool, erase: bool) -> u64 {
        if once {
            exchange
        } else {
            self.attempts * (exchange + self.resync_(erase)) + self.resync_(erase)
        }
    }
    fn identify(&self, once: bool) -> u64 {
        3 * self.repeating(PER_EXCHANGE, once, false)
    }
    fn after_reset(&self, total: Duration, once: bool) -> u64 {
        self.tries(total) * (PER_SYNC + self.identify(once))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let nops = usize::from(input.u8() % 16);
    let ops: Vec<[u8; 9]> = (0..nops).map(|_| input.array()).collect();
    let control_len = usize::from(input.u16());
    let control = input.take(control_len).to_vec();
    let device = input.rest().to_vec();

    let scale = [1.0, 0.01, 1.5, 10.0][usize::from(flags & 3)];
    let line = LineSettings {
        baud: [115_200, 9_600, 1_200, 0][usize::from((flags >> 2) & 3)],
        parity: if flags & 0x10 != 0 {
            Parity::None
        } else {
            Parity::Even
        },
    };
    let stats = Arc::new(Mutex::new(Stats::default()));
    let link = FakeLink {
        data: device,
        pos: 0,
        control,
        cpos: 0,
        line,
        stats: stats.clone(),
        written: Arc::new(AtomicU64::new(0)),
    };
    let timeouts = Timeouts::scaled(scale);
    let t = timeouts.clone();
    // The latency allowance the session may measure: twice a round trip, which can itself
    // take up to the longest wait. Generous: a satellite link.
    let latency_cap = Duration::from_secs(120).mul_f64(t.scale.max(1.0));

    let mut session = Session::new(Box::new(link), timeouts);
    if flags & 0x20 != 0 {
        session.set_pipelining(false);
    }
    session.set_attempts([6, 1, 2, 3][usize::from(flags >> 6)]);
    let m = Model {
        attempts: u64::from(session.attempts()),
        sync_total: (0..3).map(|i| t.sync * (1 << i)).sum(),
        resync: t.resync,
    };
    let z = Duration::ZERO;
    let budget = |longest: Duration, timeouts: u64| Budget {
        longest,
        timeouts,
        delays: Duration::ZERO,
    };
    // After a command that resets the device: its own exchange, then after_reset.
    let reset = |work: Duration, total: Duration| Budget {
        longest: work.max(total),
        timeouts: 2 * PER_EXCHANGE + m.after_reset(total, false),
        delays: t.reset_settle,
    };
    // Connect: a sync and an identify.
    let mut budgets = vec![budget(t.sync * 4, PER_SYNC + m.identify(false))];
    let _ = session.connect();
    // FUZZ_DEBUG=1 prints what each operation cost, to study an input.
    let debug = std::env::var_os("FUZZ_DEBUG").is_some();

    for op in &ops {
        let mut p = Input::new(&op[1..]);
        let addr = p.u32();
        let b = match op[0] % 24 {
            0 => {
                let mut buf = vec![0u8; usize::from(p.u8()) + 1];
                let _ = session.read_memory(addr, &mut buf);
                budget(t.ack, m.repeating(3 * PER_EXCHANGE, false, false))
            }
            1 => {
                let len = usize::from(p.u8()) + 1;
                let fill = p.u8();
                let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let _ = session.write_memory(addr, &data);
                budget(t.write_block + t.ack, 3 * PER_EXCHANGE)
            }
            2 => {
                let kind = p.u8();
                let ms = Duration::from_millis(u64::from(p.u16()));
                let request = match kind % 5 {
                    0 => EraseRequest::Mass,
                    1 => EraseRequest::Bank1,
                    2 => EraseRequest::Bank2,
                    3 => EraseRequest::Pages(vec![]),
                    _ => {
                        let n = usize::from(kind >> 3) + 1;
                        EraseRequest::Pages(
                            (0..n)
                                .map(|i| (addr as u16).wrapping_add(i as u16))
                                .collect(),
                        )
                    }
                };
                let _ = session.erase(&request, ms);
                budget(ms + t.ack, m.repeating(2 * PER_EXCHANGE, false, true))
            }
            3 => {
                let words = p.u32() >> (p.u8() % 32);
                let _ = session.get_checksum(addr, words, 0x04C1_1DB7, 0xFFFF_FFFF);
                let work = t.ack + Duration::from_secs(1).mul_f64(f64::from(words) / 262_144.0);
                budget(work, m.repeating(6 * PER_EXCHANGE, false, false))
            }
            4 => {
                let n = usize::from(p.u8() % 4);
                let codes: Vec<u8> = (0..n).map(|i| (addr >> (8 * i)) as u8).collect();
                let _ = session.write_protect(&codes);
                reset(t.protect, t.resync)
            }
            5 => {
                let _ = session.write_unprotect();
                reset(t.protect, t.resync)
            }
            6 => {
                let _ = session.readout_protect();
                reset(t.protect, t.resync)
            }
            7 => {
                let _ = session.readout_unprotect();
                reset(t.readout_unprotect, t.readout_unprotect)
            }
            8 => {
                let n = usize::from(p.u8()) % 140;
                let data = vec![p.u8(); n];
                let _ = session.special(addr as u16, &data);
                budget(t.write_block, 6 * PER_EXCHANGE)
            }
            9 => {
                let n1 = usize::from(p.u8()) % 140;
                let n2 = usize::from(p.u16()) % 1100;
                let _ = session.extended_special(addr as u16, &vec![0x5A; n1], &vec![0xA5; n2]);
                budget(t.write_block, 6 * PER_EXCHANGE)
            }
            10 => {
                let _ = session.go(addr);
                budget(t.ack, 2 * PER_EXCHANGE)
            }
            11 => {
                let _ = session.sync();
                budget(t.sync * 4, PER_SYNC)
            }
            12 => {
                let _ = session.connect();
                budget(t.sync * 4, PER_SYNC + m.identify(false))
            }
            13 => {
                let _ = session.get();
                budget(t.ack, PER_EXCHANGE)
            }
            14 => {
                let _ = session.get_version();
                budget(t.ack, PER_EXCHANGE)
            }
            15 => {
                let _ = session.get_id();
                budget(t.ack, PER_EXCHANGE)
            }
            16 => {
                let _ = session.identify();
                budget(t.ack, m.identify(false))
            }
            17 => {
                let settle = Duration::from_millis(u64::from(p.u8()) * 10);
                let total = Duration::from_millis(u64::from(p.u16()));
                let _ = session.after_reset(settle, total);
                Budget {
                    longest: total.max(settle),
                    timeouts: m.after_reset(total, false),
                    delays: settle,
                }
            }
            18 => {
                session.set_pipelining(addr & 1 != 0);
                budget(z, 0)
            }
            19 => {
                let _ = session.resync();
                budget(t.resync, m.resync_(false))
            }
            20 => {
                let mut buf = vec![0u8; usize::from(p.u8()) + 1];
                let _ = session.read_memory_stable(addr, &mut buf);
                let one = m.repeating(3 * PER_EXCHANGE, false, false);
                budget(t.ack, (m.attempts + 1) * one)
            }
            21 => {
                let len = usize::from(p.u8()) + 1;
                let data = vec![p.u8(); len];
                let _ = session.write_memory_reliably(addr, &data);
                let read = m.repeating(3 * PER_EXCHANGE, false, false);
                budget(
                    t.write_block + t.ack,
                    m.attempts * (3 * PER_EXCHANGE + m.resync_(false) + read),
                )
            }
            _ => {
                let _ = (session.info(), session.stray_bytes(), session.round_trips());
                let _ = session.round_trip_time();
                budget(z, 0)
            }
        };
        if debug {
            let st = stats.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "op {:?}: clock {:?}, {} reads, {} timeouts, {} bytes, latency {:?}",
                op,
                st.clock,
                st.reads,
                st.timeouts,
                st.bytes,
                session.timeouts().latency
            );
        }
        budgets.push(b);
    }

    let st = stats.lock().unwrap_or_else(|e| e.into_inner());
    // The longest wait any read may legitimately be given: the longest of the operations'
    // timeouts and the fixed ones, scaled, plus the latency allowance and the wire time of the
    // longest reply, twice.
    let fixed = [
        t.ack,
        t.sync * 4,
        t.write_block,
        t.page_erase,
        t.mass_erase,
        t.protect,
        t.readout_unprotect,
        t.drain,
    ];
    let longest = budgets
        .iter()
        .map(|b| b.longest)
        .chain(fixed)
        .max()
        .unwrap_or_default();
    let wire = line.char_time() * 8192;
    let max_wait = longest.mul_f64(t.scale) + latency_cap + wire;
    assert!(
        st.longest_wait <= max_wait,
        "a read waited {:?}, more than the {:?} any operation allows (latency now {:?})",
        st.longest_wait,
        max_wait,
        session.timeouts().latency
    );
    let allowed_timeouts: u64 = budgets.iter().map(|b| b.timeouts).sum();
    assert!(
        st.timeouts <= allowed_timeouts,
        "{} reads timed out, more than the {allowed_timeouts} the operations allow",
        st.timeouts
    );
    // Every read that received bytes or timed out may have taken up to the longest wait;
    // delays: the resets' settle times and the pauses while a reply trickles in.
    let delays: Duration = budgets
        .iter()
        .map(|b| b.delays.mul_f64(t.scale) + latency_cap)
        .sum::<Duration>()
        + Duration::from_millis(2) * u32::try_from(st.reads).unwrap_or(u32::MAX);
    let bound = max_wait * u32::try_from(st.timeouts + st.bytes).unwrap_or(u32::MAX) + delays;
    assert!(
        st.clock <= bound,
        "virtual time {:?} exceeds the bound {bound:?} ({} timeouts, {} bytes, {} reads)",
        st.clock,
        st.timeouts,
        st.bytes,
        st.reads
    );
});
