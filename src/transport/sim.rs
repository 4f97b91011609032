//! The in-process link to a simulated target.
//!
//! Bytes written are fed to the target at once and its replies queued. Time is virtual: a read
//! that finds nothing queued times out immediately (advancing the virtual clock by the timeout),
//! and delays advance the clock without sleeping, so tests are fast and never depend on timing.

use crate::device::DeviceTable;
use crate::error::Result;
use crate::link::{LineSettings, Link, LinkError};
use crate::sim::{state, SimSpec, Target};
use std::collections::VecDeque;
use std::time::Duration;

/// A link whose other end is a [`Target`] in this process.
pub struct SimLink {
    target: Target,
    spec: SimSpec,
    rx: VecDeque<u8>,
    out: Vec<u8>,
    line: LineSettings,
    clock: Duration,
    dtr: bool,
    rts: bool,
    closed: bool,
}

impl SimLink {
    /// Build the target that `spec` names (loading its state file if any).
    pub fn new(spec: SimSpec, table: &DeviceTable, line: LineSettings) -> Result<SimLink> {
        let target = spec.build(table)?;
        Ok(SimLink::with_target(target, spec, line))
    }

    /// Wrap an existing target.
    pub fn with_target(target: Target, spec: SimSpec, line: LineSettings) -> SimLink {
        SimLink {
            target,
            spec,
            rx: VecDeque::new(),
            out: Vec::with_capacity(512),
            line,
            clock: Duration::ZERO,
            dtr: false,
            rts: false,
            closed: false,
        }
    }

    /// The simulated target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The simulated target, mutable.
    pub fn target_mut(&mut self) -> &mut Target {
        &mut self.target
    }

    /// Virtual time spent so far.
    pub fn elapsed(&self) -> Duration {
        self.clock
    }

    /// Last levels driven on DTR and RTS. This link does not wire them to NRST/BOOT0.
    pub fn lines(&self) -> (bool, bool) {
        (self.dtr, self.rts)
    }

    fn save(&mut self) -> Result<()> {
        if let Some(path) = &self.spec.state {
            state::save(self.target.chip(), path)?;
        }
        Ok(())
    }
}

impl Link for SimLink {
    fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        self.clock += self.line.char_time() * data.len() as u32;
        for &b in data {
            self.target.feed(b, &mut self.out);
        }
        self.clock += self.target.take_busy();
        self.rx.extend(self.out.drain(..));
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::result::Result<usize, LinkError> {
        if self.rx.is_empty() {
            self.clock += timeout;
            return Err(LinkError::Timeout(timeout));
        }
        let n = buf.len().min(self.rx.len());
        for (slot, b) in buf.iter_mut().zip(self.rx.drain(..n)) {
            *slot = b;
        }
        self.clock += self.line.char_time() * n as u32;
        Ok(n)
    }

    fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
        self.rx.clear();
        Ok(())
    }

    fn set_dtr(&mut self, level: bool) -> std::result::Result<(), LinkError> {
        self.dtr = level;
        Ok(())
    }

    fn set_rts(&mut self, level: bool) -> std::result::Result<(), LinkError> {
        self.rts = level;
        Ok(())
    }

    fn set_break(&mut self, _on: bool) -> std::result::Result<(), LinkError> {
        Ok(())
    }

    fn set_line(&mut self, settings: LineSettings) -> std::result::Result<(), LinkError> {
        self.line = settings;
        Ok(())
    }

    fn line(&self) -> LineSettings {
        self.line
    }

    fn delay(&mut self, duration: Duration) {
        self.clock += duration;
    }

    fn describe(&self) -> String {
        format!(
            "simulated {} (sim:{})",
            self.target.chip().device().name,
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
