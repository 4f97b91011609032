//! The in-process link to a simulated target.
//!
//! The chip sits on a [`Wire`] (wire-rate timing, overrun, latency, boot pins, faults). Time is
//! virtual: a read advances the link's clock to the moment the next byte reaches the host, or
//! by the whole timeout if none does, and delays advance it without sleeping. So tests are fast
//! and never depend on timing, yet every duration the timing model implies is exact and can be
//! checked. With `clock=real` (the default once anything takes time), the link also waits on the
//! wall clock until it catches up with the virtual one, so that rehearsals last as long as they
//! would on hardware.

use crate::device::DeviceTable;
use crate::error::Result;
use crate::link::{LineSettings, Link, LinkError};
use crate::sim::wire::WireStats;
use crate::sim::{state, SimSpec, Target, Wire};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A link whose other end is a simulated chip in this process.
pub struct SimLink {
    wire: Wire,
    spec: SimSpec,
    clock: u64,
    started: Option<Instant>,
    closed: bool,
    meter: Arc<Mutex<Meter>>,
}

/// The link's virtual time and the wire's counters, readable while a session owns the link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meter {
    /// Virtual time since the link opened.
    pub elapsed: Duration,
    /// What crossed the wire.
    pub stats: WireStats,
}

/// A handle on a [`SimLink`]'s [`Meter`].
#[derive(Debug, Clone)]
pub struct MeterHandle(Arc<Mutex<Meter>>);

impl MeterHandle {
    /// The latest reading.
    pub fn read(&self) -> Meter {
        match self.0.lock() {
            Ok(m) => *m,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SimLink {
    /// Build the chip that `spec` names (loading its state file if any).
    pub fn new(spec: SimSpec, table: &DeviceTable, line: LineSettings) -> Result<SimLink> {
        let target = spec.build(table)?;
        Ok(SimLink::with_target(target, spec, line))
    }

    /// Wrap an existing chip, with the wire options of `spec`. `line` is what the host uses,
    /// and so are later [`Link::set_line`] calls: the chip's auto-baud and 8E1 framing apply.
    pub fn with_target(target: Target, spec: SimSpec, line: LineSettings) -> SimLink {
        let started = spec.realtime().then(Instant::now);
        let mut wire = Wire::new(target, spec.wire, line);
        wire.set_host_line_known(true);
        SimLink {
            wire,
            spec,
            clock: 0,
            started,
            closed: false,
            meter: Arc::new(Mutex::new(Meter::default())),
        }
    }

    /// A handle that reads this link's time and counters from elsewhere (the link itself is
    /// usually owned by a session).
    pub fn meter(&self) -> MeterHandle {
        MeterHandle(self.meter.clone())
    }

    fn update_meter(&self) {
        if let Ok(mut m) = self.meter.lock() {
            m.elapsed = Duration::from_nanos(self.clock);
            m.stats = self.wire.stats();
        }
    }

    /// The simulated chip.
    pub fn target(&self) -> &Target {
        self.wire.target()
    }

    /// The simulated chip, mutable.
    pub fn target_mut(&mut self) -> &mut Target {
        self.wire.target_mut()
    }

    /// The wire, with its counters.
    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// Byte counters, overruns and injected faults so far.
    pub fn stats(&self) -> WireStats {
        self.wire.stats()
    }

    /// Virtual time spent so far.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.clock)
    }

    /// Last levels driven on DTR and RTS.
    pub fn lines(&self) -> (bool, bool) {
        self.wire.lines()
    }

    /// Move the clock to `t`, waiting on the wall clock in real-time mode.
    fn advance_to(&mut self, t: u64) {
        self.clock = self.clock.max(t);
        self.update_meter();
        if let Some(start) = self.started {
            let target = start + Duration::from_nanos(self.clock);
            let now = Instant::now();
            if target > now {
                std::thread::sleep(target - now);
            }
        }
    }

    fn save(&mut self) -> Result<()> {
        if let Some(path) = &self.spec.state {
            state::save_target(self.wire.target(), path)?;
        }
        Ok(())
    }
}

impl Link for SimLink {
    fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        self.wire.host_send(self.clock, data);
        self.update_meter();
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::result::Result<usize, LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        let deadline = self.clock.saturating_add(ns(timeout));
        loop {
            if self.wire.has_delivered(self.clock) {
                let got = self.wire.take_delivered(self.clock, buf.len());
                buf[..got.len()].copy_from_slice(&got);
                self.update_meter();
                return Ok(got.len());
            }
            if self.wire.is_cut() {
                return Err(LinkError::Closed);
            }
            match self.wire.next_event() {
                Some(t) if t <= deadline => self.advance_to(t),
                _ => {
                    self.advance_to(deadline);
                    return Err(LinkError::Timeout(timeout));
                }
            }
        }
    }

    fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
        self.wire.purge(self.clock, true, false);
        Ok(())
    }

    fn set_dtr(&mut self, level: bool) -> std::result::Result<(), LinkError> {
        let (_, rts) = self.wire.lines();
        self.wire.set_lines(self.clock, level, rts);
        Ok(())
    }

    fn set_rts(&mut self, level: bool) -> std::result::Result<(), LinkError> {
        let (dtr, _) = self.wire.lines();
        self.wire.set_lines(self.clock, dtr, level);
        Ok(())
    }

    fn set_break(&mut self, _on: bool) -> std::result::Result<(), LinkError> {
        Ok(())
    }

    fn set_line(&mut self, settings: LineSettings) -> std::result::Result<(), LinkError> {
        self.wire.set_line(self.clock, settings);
        Ok(())
    }

    fn line(&self) -> LineSettings {
        self.wire.line()
    }

    fn delay(&mut self, duration: Duration) {
        let t = self.clock.saturating_add(ns(duration));
        self.advance_to(t);
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.clock)
    }

    fn describe(&self) -> String {
        format!(
            "simulated {} (sim:{})",
            self.wire.target().chip().device().name,
            self.spec.part
        )
    }

    fn close(&mut self) -> std::result::Result<(), LinkError> {
        if !self.closed {
            self.closed = true;
            self.save().map_err(|e| {
                LinkError::io(
                    "saving the simulator state",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for SimLink {
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            if let Err(e) = self.save() {
                tracing::warn!("could not save the simulator state: {e}");
            }
        }
    }
}
