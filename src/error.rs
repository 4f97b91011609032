//! The library's error type: what went wrong, where, and what the user can do about it.

use crate::link::LinkError;
use crate::protocol::Command;
use std::fmt;
use std::time::Duration;

/// A step inside one bootloader command, for messages that say exactly where it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The command byte and its complement.
    Command,
    /// The address field.
    Address,
    /// The byte count of Read Memory.
    Count,
    /// The data of Write Memory, or a packet of Special.
    Data,
    /// The page list of an erase.
    Pages,
    /// The size field of Get Checksum.
    Size,
    /// The polynomial field of Get Checksum.
    Polynomial,
    /// The initial-value field of Get Checksum.
    Init,
    /// The opcode of Special / Extended Special.
    Opcode,
    /// The device's reply body.
    Reply,
    /// The second ACK of a command that ends with two (protection commands, Get Checksum).
    Completion,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Phase::Command => "command",
            Phase::Address => "address",
            Phase::Count => "count",
            Phase::Data => "data",
            Phase::Pages => "page list",
            Phase::Size => "size",
            Phase::Polynomial => "polynomial",
            Phase::Init => "initial value",
            Phase::Opcode => "opcode",
            Phase::Reply => "reply",
            Phase::Completion => "completion",
        };
        f.write_str(s)
    }
}

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bootloader answered NACK.
    #[error("{command} was refused by the bootloader (NACK) at the {phase} phase{}", hint_suffix(.hint))]
    Nack {
        /// The command.
        command: Command,
        /// Where in the command.
        phase: Phase,
        /// What commonly causes this.
        hint: Option<String>,
    },
    /// No answer in time.
    #[error("no answer to {command} at the {phase} phase within {}{}", fmt_duration(*.timeout), hint_suffix(.hint))]
    Timeout {
        /// The command.
        command: Command,
        /// Where in the command.
        phase: Phase,
        /// How long we waited.
        timeout: Duration,
        /// What to check.
        hint: Option<String>,
    },
    /// A byte that is neither ACK nor NACK where one of them was due.
    #[error("{command}: expected ACK (0x79) or NACK (0x1F) at the {phase} phase, got 0x{byte:02X}; the link is noisy, echoes, or runs at another baud rate or parity")]
    UnexpectedReply {
        /// The command.
        command: Command,
        /// Where in the command.
        phase: Phase,
        /// What arrived.
        byte: u8,
    },
    /// The reply body does not have the shape AN3155 gives it.
    #[error("{command}: malformed reply: {detail}")]
    MalformedReply {
        /// The command.
        command: Command,
        /// What is wrong with it.
        detail: String,
    },
    /// Nothing answered the 0x7F sync byte.
    #[error("no answer from the bootloader on {link} after {attempts} sync attempts{}: {hint}", stray_note(*.stray_bytes))]
    NoSync {
        /// The link.
        link: String,
        /// How many 0x7F were sent.
        attempts: u32,
        /// Bytes that arrived but were neither ACK nor NACK.
        stray_bytes: usize,
        /// What to check.
        hint: String,
    },
    /// The bootloader does not list the command in its Get reply.
    #[error("the bootloader does not offer {command}; it lists {listed}")]
    Unsupported {
        /// The command.
        command: Command,
        /// The commands it does offer.
        listed: String,
    },
    /// A request that cannot be sent as asked (bad length, alignment, range...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The link failed. (Its text is in the message, so it is not chained as a source as
    /// well: `{:#}` would print it twice.)
    #[error("link error: {0}")]
    Link(LinkError),
    /// Reading back or checking a CRC found different content.
    #[error("verify failed at 0x{address:08X}: {detail}")]
    Verify {
        /// First address that differs (or start of the range whose CRC differs).
        address: u32,
        /// What differs.
        detail: String,
    },
    /// Image input could not be used.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// Device table or device file problem.
    #[error("{0}")]
    Device(String),
    /// A local file could not be read or written.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error (shown in the message, so not chained as a source).
        error: std::io::Error,
    },
    /// The chip's own settings (write or read protection, bank mode) forbid the operation;
    /// nothing was sent that changes the chip.
    #[error("{0}")]
    Refused(String),
    /// A failure, with what the chip's protection and bank settings say about it.
    #[error("{failure}{}", findings_text(.findings))]
    Diagnosed {
        /// The failure (shown in the message, so not chained as a source).
        failure: Box<Error>,
        /// Why it happened and what to do, in plain words.
        findings: Vec<Finding>,
    },
}

/// One cause of a failure found by reading the chip's settings, and its fix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// What is wrong ("sector 3 is write-protected").
    pub problem: String,
    /// What to do about it ("run `stm32boot protect write off`").
    pub fix: String,
}

fn findings_text(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("\n  cause: {}\n  fix: {}", f.problem, f.fix))
        .collect()
}

impl Error {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            error,
        }
    }

    /// The failure itself, without the diagnosis around it.
    pub fn root(&self) -> &Error {
        match self {
            Error::Diagnosed { failure, .. } => failure.root(),
            other => other,
        }
    }

    /// Attach findings (no-op when there are none).
    pub fn with_findings(self, findings: Vec<Finding>) -> Error {
        if findings.is_empty() {
            self
        } else {
            Error::Diagnosed {
                failure: Box::new(self),
                findings,
            }
        }
    }

    /// A short, stable code for scripts (`--json` output and exit codes).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Diagnosed { failure, .. } => failure.code(),
            Error::Nack { .. } => "nack",
            Error::Timeout { .. } => "timeout",
            Error::UnexpectedReply { .. } => "unexpected-reply",
            Error::MalformedReply { .. } => "malformed-reply",
            Error::NoSync { .. } => "no-sync",
            Error::Unsupported { .. } => "unsupported-command",
            Error::InvalidRequest(_) => "invalid-request",
            Error::Link(_) => "link",
            Error::Verify { .. } => "verify-failed",
            Error::Image(_) => "bad-image",
            Error::Device(_) => "device",
            Error::Io { .. } => "io",
            Error::Refused(_) => "refused-by-chip-settings",
        }
    }

    /// The same error with its hint replaced by `f(hint)`, for a NACK or a timeout (the errors
    /// that carry one); any other error is returned as it is.
    pub fn map_hint(self, f: impl FnOnce(Option<String>) -> Option<String>) -> Error {
        match self {
            Error::Timeout {
                command,
                phase,
                timeout,
                hint,
            } => Error::Timeout {
                command,
                phase,
                timeout,
                hint: f(hint),
            },
            Error::Nack {
                command,
                phase,
                hint,
            } => Error::Nack {
                command,
                phase,
                hint: f(hint),
            },
            other => other,
        }
    }

    /// The process exit code the command-line tool uses for this error (the README's table):
    /// 2 bad input, 3 no connection, 4 verify failed, 5 refused or out of protocol, 6 link or
    /// file I/O.
    pub fn exit_code(&self) -> u8 {
        match self.root() {
            Error::InvalidRequest(_) | Error::Image(_) | Error::Device(_) => 2,
            Error::NoSync { .. } | Error::Link(LinkError::Open { .. }) => 3,
            Error::Verify { .. } => 4,
            Error::Nack { .. }
            | Error::Timeout { .. }
            | Error::UnexpectedReply { .. }
            | Error::MalformedReply { .. }
            | Error::Unsupported { .. }
            | Error::Refused(_) => 5,
            Error::Link(_) | Error::Io { .. } => 6,
            Error::Diagnosed { .. } => 1,
        }
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(": {h}"),
        None => String::new(),
    }
}

fn stray_note(stray: usize) -> String {
    if stray == 0 {
        String::new()
    } else {
        format!(" ({stray} stray bytes that were neither ACK nor NACK)")
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.as_millis() >= 1000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        Error::Link(e)
    }
}
