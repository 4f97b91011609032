//! The byte pipe to a bootloader: the [`Link`] trait every transport implements.
//!
//! A link moves bytes, waits with a timeout, drives the modem-control lines that boards wire to
//! NRST and BOOT0, and knows its line rate. It knows nothing of AN3155.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The wall clock's fixed start for [`Link::now`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing arrived within the timeout.
    #[error("no data within {0:?}")]
    Timeout(Duration),
    /// The other end closed the connection.
    #[error("the link was closed by the other end")]
    Closed,
    /// The transport cannot do this (DTR/RTS on a pseudo-terminal, for example).
    #[error("{what} is not supported on {link}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// Which link.
        link: String,
    },
    /// The port could not be opened.
    #[error("cannot open {port}: {reason}")]
    Open {
        /// The port as given.
        port: String,
        /// Why it failed, with what to check.
        reason: String,
    },
    /// An operating-system error while using the link.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error (shown in the message, so not chained as a source).
        error: std::io::Error,
    },
}

impl LinkError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        LinkError::Io {
            context: context.into(),
            error,
        }
    }
}

/// Serial character framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// Even parity: 8E1, what the bootloader expects on its own UART.
    Even,
    /// No parity: 8N1, for pseudo-terminals and network hops that carry no parity.
    None,
    /// Odd parity.
    Odd,
}

impl Parity {
    /// Bits one character takes on the wire: start, 8 data, parity if any, 1 stop.
    pub fn bits_per_char(self) -> u32 {
        match self {
            Parity::None => 10,
            Parity::Even | Parity::Odd => 11,
        }
    }
}

impl std::str::FromStr for Parity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "even" | "e" => Ok(Parity::Even),
            "none" | "n" => Ok(Parity::None),
            "odd" | "o" => Ok(Parity::Odd),
            other => Err(format!("unknown parity '{other}': use even, none or odd")),
        }
    }
}

/// Line settings a transport is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
}

impl Default for LineSettings {
    fn default() -> Self {
        LineSettings {
            baud: 115_200,
            parity: Parity::Even,
        }
    }
}

impl LineSettings {
    /// How long one character takes on the wire.
    pub fn char_time(&self) -> Duration {
        if self.baud == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(
            u64::from(self.parity.bits_per_char()) * 1_000_000_000 / u64::from(self.baud),
        )
    }
}

/// One step of a reset or boot-entry sequence on the modem-control lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStep {
    /// Drive DTR (`true` = asserted: the modem-control bit set, 0 V on a TTL adapter).
    Dtr(bool),
    /// Drive RTS (`true` = asserted).
    Rts(bool),
    /// Start (`true`) or stop a break condition.
    Break(bool),
    /// Wait this long before the next step.
    Wait(Duration),
}

/// A byte pipe to the bootloader.
pub trait Link: Send {
    /// Send all bytes.
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError>;

    /// Read at least one byte into `buf`, waiting at most `timeout`. Returns how many bytes were
    /// read, or [`LinkError::Timeout`] if none arrived.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError>;

    /// Drop whatever has been received and not read yet.
    fn discard_input(&mut self) -> Result<(), LinkError>;

    /// Drive DTR (`true` = asserted).
    fn set_dtr(&mut self, level: bool) -> Result<(), LinkError>;

    /// Drive RTS (`true` = asserted).
    fn set_rts(&mut self, level: bool) -> Result<(), LinkError>;

    /// Start or stop a break condition.
    fn set_break(&mut self, on: bool) -> Result<(), LinkError>;

    /// Change the line settings.
    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError>;

    /// The current line settings.
    fn line(&self) -> LineSettings;

    /// Wait. Simulated links advance their own clock instead of sleeping.
    fn delay(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    /// Time since a fixed start, as this link counts it: the wall clock, or a simulated link's
    /// virtual clock. Sessions measure round trips with it.
    fn now(&self) -> Duration {
        epoch().elapsed()
    }

    /// Run a reset or boot-entry sequence. The default drives the lines one step at a time and
    /// waits with [`Link::delay`]; a link to a relay hands the whole sequence over so that the
    /// relay replays it next to the port, where network latency cannot stretch the pulses.
    fn run_steps(&mut self, steps: &[LineStep]) -> Result<(), LinkError> {
        for step in steps {
            match *step {
                LineStep::Dtr(on) => self.set_dtr(on)?,
                LineStep::Rts(on) => self.set_rts(on)?,
                LineStep::Break(on) => self.set_break(on)?,
                LineStep::Wait(d) => self.delay(d),
            }
        }
        Ok(())
    }

    /// A short description for messages ("/dev/ttyUSB0 at 115200 8E1").
    fn describe(&self) -> String;

    /// Finish using the link (a simulated link saves its state here).
    fn close(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

impl<L: Link + ?Sized> Link for Box<L> {
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        (**self).write_all(data)
    }
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        (**self).read(buf, timeout)
    }
    fn discard_input(&mut self) -> Result<(), LinkError> {
        (**self).discard_input()
    }
    fn set_dtr(&mut self, level: bool) -> Result<(), LinkError> {
        (**self).set_dtr(level)
    }
    fn set_rts(&mut self, level: bool) -> Result<(), LinkError> {
        (**self).set_rts(level)
    }
    fn set_break(&mut self, on: bool) -> Result<(), LinkError> {
        (**self).set_break(on)
    }
    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        (**self).set_line(settings)
    }
    fn line(&self) -> LineSettings {
        (**self).line()
    }
    fn delay(&mut self, duration: Duration) {
        (**self).delay(duration)
    }
    fn run_steps(&mut self, steps: &[LineStep]) -> Result<(), LinkError> {
        (**self).run_steps(steps)
    }
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn close(&mut self) -> Result<(), LinkError> {
        (**self).close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_time_counts_parity() {
        let even = LineSettings {
            baud: 115_200,
            parity: Parity::Even,
        };
        let none = LineSettings {
            baud: 115_200,
            parity: Parity::None,
        };
        assert_eq!(even.char_time().as_nanos(), 11 * 1_000_000_000 / 115_200);
        assert_eq!(none.char_time().as_nanos(), 10 * 1_000_000_000 / 115_200);
    }

    #[test]
    fn parity_parses() {
        assert_eq!("EVEN".parse::<Parity>(), Ok(Parity::Even));
        assert_eq!("n".parse::<Parity>(), Ok(Parity::None));
        assert!("mark".parse::<Parity>().is_err());
    }
}
