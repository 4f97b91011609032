//! A link that reports everything that crosses it: [`TraceLink`] wraps any other link, forwards
//! every call to it unchanged, and hands a [`TraceEvent`] for each byte run sent or received and
//! for each line event (DTR, RTS, break, baud rate and parity, purges, waits, reset sequences)
//! to a sink the caller provides. The library never prints: the command line's `--trace` gives
//! a sink that writes each event's [`Display`](std::fmt::Display) form to stderr.
//!
//! Times are measured with the wrapped link's own [`Link::now`], so a trace of the simulated
//! target shows its virtual clock, and a trace of a serial port the wall clock.

use crate::link::{LineSettings, LineStep, Link, LinkError, Parity};
use std::fmt;
use std::time::Duration;

/// Bytes shown on one line of a hex dump.
pub const BYTES_PER_LINE: usize = 16;

/// Which way an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the host to the target (shown as `>`).
    Sent,
    /// From the target to the host (shown as `<`).
    Received,
    /// A line or link event: modem-control lines, line settings, purges, waits (shown as `*`).
    Control,
}

impl Direction {
    /// The character that marks this direction in a trace line.
    pub fn marker(self) -> char {
        match self {
            Direction::Sent => '>',
            Direction::Received => '<',
            Direction::Control => '*',
        }
    }
}

/// What happened on the link.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TraceKind {
    /// Bytes written ([`Direction::Sent`]) or read ([`Direction::Received`]).
    Bytes(Vec<u8>),
    /// A read that got nothing within this timeout.
    Timeout(Duration),
    /// An operation failed (the event for the attempt itself comes first).
    Failed {
        /// What was being done ("read", "write", "DTR on", …).
        what: String,
        /// The error, as text.
        error: String,
    },
    /// Received bytes not read yet were dropped.
    Purge,
    /// DTR driven (`true` = asserted).
    Dtr(bool),
    /// RTS driven (`true` = asserted).
    Rts(bool),
    /// A break condition started (`true`) or stopped.
    Break(bool),
    /// The line settings changed.
    Line {
        /// The settings before.
        from: LineSettings,
        /// The settings asked for.
        to: LineSettings,
    },
    /// A wait ([`Link::delay`]).
    Delay(Duration),
    /// A whole reset or boot-entry sequence, handed to the link at once ([`Link::run_steps`]).
    Steps(Vec<LineStep>),
    /// The link was closed.
    Close,
}

/// One thing that happened on a traced link.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    /// Time since the link was wrapped, by the wrapped link's clock ([`Link::now`]).
    pub at: Duration,
    /// Which way.
    pub direction: Direction,
    /// What.
    pub kind: TraceKind,
}

/// Where a [`TraceLink`] reports its events.
pub type TraceSink = Box<dyn FnMut(&TraceEvent) + Send>;

/// Wraps a link, forwards every call to it, and reports each event to a sink.
///
/// Only what passes through the [`Link`] methods is seen. Whatever a transport does while it
/// opens happens before there is a link to wrap: the AT dialogue of a modem, the RFC 2217
/// negotiation and, for a relay, the pre-shared-key handshake, which runs inside
/// [`crate::transport::relay::RelayLink::connect`]. Wrapping the link after it is opened is
/// therefore enough to keep key material out of a trace.
pub struct TraceLink {
    inner: Box<dyn Link>,
    sink: TraceSink,
    start: Duration,
}

impl TraceLink {
    /// Wrap `inner`; times in events count from now, by `inner`'s clock.
    pub fn new(inner: Box<dyn Link>, sink: TraceSink) -> TraceLink {
        let start = inner.now();
        TraceLink { inner, sink, start }
    }

    /// Stop tracing and give back the wrapped link.
    pub fn into_inner(self) -> Box<dyn Link> {
        self.inner
    }

    /// Time since the link was wrapped.
    fn elapsed(&self) -> Duration {
        self.inner.now().saturating_sub(self.start)
    }

    fn emit(&mut self, at: Duration, direction: Direction, kind: TraceKind) {
        (self.sink)(&TraceEvent {
            at,
            direction,
            kind,
        });
    }

    /// Report `kind` as a control event, run `op` on the inner link, and report a failure.
    fn control<T>(
        &mut self,
        kind: TraceKind,
        what: impl FnOnce() -> String,
        op: impl FnOnce(&mut dyn Link) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        let at = self.elapsed();
        self.emit(at, Direction::Control, kind);
        let result = op(&mut *self.inner);
        if let Err(e) = &result {
            let at = self.elapsed();
            let failed = TraceKind::Failed {
                what: what(),
                error: e.to_string(),
            };
            self.emit(at, Direction::Control, failed);
        }
        result
    }
}

impl Link for TraceLink {
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        let at = self.elapsed();
        self.emit(at, Direction::Sent, TraceKind::Bytes(data.to_vec()));
        let result = self.inner.write_all(data);
        if let Err(e) = &result {
            let at = self.elapsed();
            let failed = TraceKind::Failed {
                what: "write".into(),
                error: e.to_string(),
            };
            self.emit(at, Direction::Sent, failed);
        }
        result
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        let result = self.inner.read(buf, timeout);
        let at = self.elapsed();
        let kind = match &result {
            Ok(n) => TraceKind::Bytes(buf.get(..*n).unwrap_or(buf).to_vec()),
            Err(LinkError::Timeout(after)) => TraceKind::Timeout(*after),
            Err(e) => TraceKind::Failed {
                what: "read".into(),
                error: e.to_string(),
            },
        };
        self.emit(at, Direction::Received, kind);
        result
    }

    fn discard_input(&mut self) -> Result<(), LinkError> {
        self.control(TraceKind::Purge, || "purge".into(), |l| l.discard_input())
    }

    fn set_dtr(&mut self, level: bool) -> Result<(), LinkError> {
        self.control(
            TraceKind::Dtr(level),
            || format!("DTR {}", on_off(level)),
            |l| l.set_dtr(level),
        )
    }

    fn set_rts(&mut self, level: bool) -> Result<(), LinkError> {
        self.control(
            TraceKind::Rts(level),
            || format!("RTS {}", on_off(level)),
            |l| l.set_rts(level),
        )
    }

    fn set_break(&mut self, on: bool) -> Result<(), LinkError> {
        self.control(
            TraceKind::Break(on),
            || format!("break {}", on_off(on)),
            |l| l.set_break(on),
        )
    }

    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        let from = self.inner.line();
        self.control(
            TraceKind::Line { from, to: settings },
            || "line change".into(),
            |l| l.set_line(settings),
        )
    }

    fn line(&self) -> LineSettings {
        self.inner.line()
    }

    fn delay(&mut self, duration: Duration) {
        let at = self.elapsed();
        self.emit(at, Direction::Control, TraceKind::Delay(duration));
        self.inner.delay(duration);
    }

    fn now(&self) -> Duration {
        self.inner.now()
    }

    fn run_steps(&mut self, steps: &[LineStep]) -> Result<(), LinkError> {
        // Forwarded whole, so that a relay still replays the sequence next to the port.
        self.control(
            TraceKind::Steps(steps.to_vec()),
            || "sequence".into(),
            |l| l.run_steps(steps),
        )
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn close(&mut self) -> Result<(), LinkError> {
        self.control(TraceKind::Close, || "close".into(), |l| l.close())
    }
}

fn on_off(level: bool) -> &'static str {
    if level {
        "on"
    } else {
        "off"
    }
}

/// `115200 8E1`.
fn line_text(line: &LineSettings) -> String {
    let parity = match line.parity {
        Parity::Even => 'E',
        Parity::None => 'N',
        Parity::Odd => 'O',
    };
    format!("{} 8{parity}1", line.baud)
}

fn step_text(step: &LineStep) -> String {
    match *step {
        LineStep::Dtr(on) => format!("DTR {}", on_off(on)),
        LineStep::Rts(on) => format!("RTS {}", on_off(on)),
        LineStep::Break(on) => format!("break {}", on_off(on)),
        LineStep::Wait(d) => format!("wait {}", humantime::format_duration(d)),
    }
}

/// One hex-dump line: up to [`BYTES_PER_LINE`] bytes in hex, padded, then the printable ones.
fn hex_line(f: &mut fmt::Formatter<'_>, chunk: &[u8]) -> fmt::Result {
    let mut hex = String::with_capacity(BYTES_PER_LINE * 3);
    for (i, b) in chunk.iter().enumerate() {
        if i > 0 {
            hex.push(' ');
        }
        hex.push_str(&format!("{b:02X}"));
    }
    let ascii: String = chunk
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    write!(
        f,
        "{hex:<width$}  |{ascii}|",
        width = BYTES_PER_LINE * 3 - 1
    )
}

impl fmt::Display for TraceEvent {
    /// `  0.012345 > 7F` and the like: seconds with microseconds, a direction marker (`>` sent,
    /// `<` received, `*` line events), then a hex dump of 16 bytes a line with an ASCII column
    /// (later lines of one event leave the time blank), or the event in words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.at.as_secs();
        let micros = self.at.subsec_micros();
        let time = format!("{secs:>3}.{micros:06}");
        let marker = self.direction.marker();
        write!(f, "{time} {marker} ")?;
        match &self.kind {
            TraceKind::Bytes(bytes) if bytes.is_empty() => write!(f, "(no bytes)"),
            TraceKind::Bytes(bytes) => {
                for (i, chunk) in bytes.chunks(BYTES_PER_LINE).enumerate() {
                    if i > 0 {
                        write!(f, "\n{:width$} {marker} ", "", width = time.len())?;
                    }
                    hex_line(f, chunk)?;
                }
                Ok(())
            }
            TraceKind::Timeout(after) => {
                write!(f, "(timeout after {})", humantime::format_duration(*after))
            }
            TraceKind::Failed { what, error } if self.direction == Direction::Control => {
                write!(f, "{what} failed: {error}")
            }
            TraceKind::Failed { what, error } => write!(f, "({what} failed: {error})"),
            TraceKind::Purge => write!(f, "purge input"),
            TraceKind::Dtr(on) => write!(f, "DTR {}", on_off(*on)),
            TraceKind::Rts(on) => write!(f, "RTS {}", on_off(*on)),
            TraceKind::Break(on) => write!(f, "break {}", on_off(*on)),
            TraceKind::Line { from, to } => {
                write!(f, "line {} -> {}", line_text(from), line_text(to))
            }
            TraceKind::Delay(d) => write!(f, "wait {}", humantime::format_duration(*d)),
            TraceKind::Steps(steps) => {
                let steps: Vec<String> = steps.iter().map(step_text).collect();
                write!(f, "sequence: {}", steps.join(", "))
            }
            TraceKind::Close => write!(f, "close"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// What the scripted link was asked to do.
    type Calls = Arc<Mutex<Vec<String>>>;

    /// A link with a virtual clock: writes take 1 ms a byte, reads hand out scripted replies
    /// (and time out, advancing the clock, when none is left).
    struct Scripted {
        clock: Duration,
        replies: VecDeque<Vec<u8>>,
        line: LineSettings,
        calls: Calls,
    }

    impl Scripted {
        fn new(replies: &[&[u8]]) -> (Scripted, Calls) {
            let calls = Calls::default();
            let link = Scripted {
                clock: Duration::from_secs(5),
                replies: replies.iter().map(|r| r.to_vec()).collect(),
                line: LineSettings::default(),
                calls: calls.clone(),
            };
            (link, calls)
        }

        fn call(&self, what: String) {
            self.calls.lock().expect("test setup").push(what);
        }
    }

    impl Link for Scripted {
        fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
            self.call(format!("write {}", data.len()));
            self.clock += Duration::from_millis(data.len() as u64);
            Ok(())
        }
        fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
            self.clock += Duration::from_micros(500);
            match self.replies.pop_front() {
                Some(reply) => {
                    let n = reply.len().min(buf.len());
                    buf[..n].copy_from_slice(&reply[..n]);
                    Ok(n)
                }
                None => {
                    self.clock += timeout;
                    Err(LinkError::Timeout(timeout))
                }
            }
        }
        fn discard_input(&mut self) -> Result<(), LinkError> {
            self.call("purge".into());
            Ok(())
        }
        fn set_dtr(&mut self, level: bool) -> Result<(), LinkError> {
            self.call(format!("dtr {level}"));
            Ok(())
        }
        fn set_rts(&mut self, _level: bool) -> Result<(), LinkError> {
            Err(LinkError::Unsupported {
                what: "RTS".into(),
                link: "script".into(),
            })
        }
        fn set_break(&mut self, on: bool) -> Result<(), LinkError> {
            self.call(format!("break {on}"));
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
            self.clock += duration;
        }
        fn now(&self) -> Duration {
            self.clock
        }
        fn run_steps(&mut self, steps: &[LineStep]) -> Result<(), LinkError> {
            self.call(format!("steps {}", steps.len()));
            Ok(())
        }
        fn describe(&self) -> String {
            "script".into()
        }
    }

    fn traced(replies: &[&[u8]]) -> (TraceLink, Arc<Mutex<Vec<TraceEvent>>>, Calls) {
        let (inner, calls) = Scripted::new(replies);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let link = TraceLink::new(
            Box::new(inner),
            Box::new(move |e: &TraceEvent| sink.lock().expect("test setup").push(e.clone())),
        );
        (link, events, calls)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn events_in_order_with_the_inner_clock() {
        let (mut link, events, _) = traced(&[&[0x79]]);
        link.set_dtr(true).expect("test setup");
        link.delay(ms(10));
        link.write_all(&[0x7F]).expect("test setup");
        let mut buf = [0u8; 8];
        assert_eq!(link.read(&mut buf, ms(100)).expect("test setup"), 1);
        link.discard_input().expect("test setup");
        let even = LineSettings::default();
        let slow = LineSettings {
            baud: 9600,
            parity: Parity::None,
        };
        link.set_line(slow).expect("test setup");
        assert_eq!(link.line(), slow);
        link.close().expect("test setup");
        let events = events.lock().expect("test setup").clone();
        let expected = [
            (Duration::ZERO, Direction::Control, TraceKind::Dtr(true)),
            (Duration::ZERO, Direction::Control, TraceKind::Delay(ms(10))),
            (ms(10), Direction::Sent, TraceKind::Bytes(vec![0x7F])),
            (
                Duration::from_micros(11_500),
                Direction::Received,
                TraceKind::Bytes(vec![0x79]),
            ),
            (
                Duration::from_micros(11_500),
                Direction::Control,
                TraceKind::Purge,
            ),
            (
                Duration::from_micros(11_500),
                Direction::Control,
                TraceKind::Line {
                    from: even,
                    to: slow,
                },
            ),
            (
                Duration::from_micros(11_500),
                Direction::Control,
                TraceKind::Close,
            ),
        ];
        let got: Vec<_> = events
            .into_iter()
            .map(|e| (e.at, e.direction, e.kind))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_twenty_byte_write_is_two_lines() {
        let (mut link, events, _) = traced(&[]);
        let data: Vec<u8> = (0x30..0x44).collect();
        link.write_all(&data).expect("test setup");
        let text = events.lock().expect("test setup")[0].to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(
            lines[0],
            "  0.000000 > 30 31 32 33 34 35 36 37 38 39 3A 3B 3C 3D 3E 3F  |0123456789:;<=>?|"
        );
        assert_eq!(
            lines[1],
            "           > 40 41 42 43                                      |@ABC|"
        );
    }

    #[test]
    fn short_lines_and_unprintable_bytes() {
        let event = TraceEvent {
            at: Duration::from_micros(12_345),
            direction: Direction::Sent,
            kind: TraceKind::Bytes(vec![0x7F]),
        };
        assert!(event.to_string().starts_with("  0.012345 > 7F "));
        assert!(event.to_string().ends_with("|.|"));
        let event = TraceEvent {
            at: Duration::from_micros(12_500),
            direction: Direction::Received,
            kind: TraceKind::Bytes(vec![0x79]),
        };
        assert!(event.to_string().starts_with("  0.012500 < 79 "));
        let event = TraceEvent {
            at: Duration::from_secs(1234),
            direction: Direction::Control,
            kind: TraceKind::Dtr(false),
        };
        assert_eq!(event.to_string(), "1234.000000 * DTR off");
    }

    #[test]
    fn timeouts_are_marked() {
        let (mut link, events, _) = traced(&[]);
        let mut buf = [0u8; 1];
        assert!(matches!(
            link.read(&mut buf, Duration::from_secs(1)),
            Err(LinkError::Timeout(_))
        ));
        let events = events.lock().expect("test setup");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, TraceKind::Timeout(Duration::from_secs(1)));
        assert_eq!(events[0].at, Duration::from_micros(1_000_500));
        assert_eq!(events[0].to_string(), "  1.000500 < (timeout after 1s)");
    }

    #[test]
    fn failures_follow_the_attempt() {
        let (mut link, events, _) = traced(&[]);
        assert!(link.set_rts(true).is_err());
        let events = events.lock().expect("test setup");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].to_string(), "  0.000000 * RTS on");
        assert!(
            events[1]
                .to_string()
                .starts_with("  0.000000 * RTS on failed: RTS is not supported"),
            "{}",
            events[1]
        );
    }

    #[test]
    fn run_steps_is_forwarded_whole() {
        let (mut link, events, calls) = traced(&[]);
        let steps = [
            LineStep::Dtr(true),
            LineStep::Wait(ms(100)),
            LineStep::Dtr(false),
            LineStep::Break(true),
        ];
        link.run_steps(&steps).expect("test setup");
        assert_eq!(*calls.lock().expect("test setup"), ["steps 4"]);
        let events = events.lock().expect("test setup");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, TraceKind::Steps(steps.to_vec()));
        assert_eq!(
            events[0].to_string(),
            "  0.000000 * sequence: DTR on, wait 100ms, DTR off, break on"
        );
    }

    #[test]
    fn into_inner_gives_the_link_back() {
        let (link, _, _) = traced(&[]);
        assert_eq!(link.describe(), "script");
        assert_eq!(link.into_inner().describe(), "script");
    }
}
