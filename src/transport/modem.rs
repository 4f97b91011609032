//! An AT modem on the host's serial port, dialled into a transparent TCP connection
//! (`modem:/dev/ttyUSB2?profile=telit&apn=internet&host=HOST&port=PORT`).
//!
//! # Design
//!
//! The transport has two layers:
//!
//! - **An AT layer** (`At`) over a small byte-pipe abstraction (`ModemIo`): it sends one
//!   command line at a time, waits at least [`COMMAND_GAP`] after the modem's last byte before
//!   the next command (Telit's advice), skips the echo, collects intermediate lines
//!   (`#SGACT: 10.0.0.2`, `+USOCR: 0`, a bare IP address from SIMCom's `AT+CIFSR`) and waits,
//!   with a timeout per command, for a final result code: `OK`, `ERROR`, `+CME ERROR: …`,
//!   `CONNECT`, `NO CARRIER`, `BUSY`, SIMCom's `SHUT OK` / `CLOSE OK` / `CONNECT FAIL`, or the
//!   numeric forms of `ATV0` until verbose codes are on. Each vendor's dial sequence
//!   ([`Profile`]) is written against that layer, so unit tests script the modem's replies
//!   without hardware.
//! - **A data layer** ([`ModemLink`]): after `CONNECT` the port is a byte pipe to the far
//!   end, and everything a [`Link`] does is passing bytes. The only text still looked for is
//!   the modem's own report that the connection dropped (`NO CARRIER`, and `CLOSED` for
//!   SIMCom), see `CarrierWatch`, plus DCD where the port can read it.
//!
//! It is written by hand because no maintained Rust crate dials these vendors' transparent
//! modes from a host's serial port (`atat` is a no_std framework for typed AT commands on
//! microcontrollers, not a dialler), and the sequences are short enough to read in full below.
//!
//! # Dial sequences
//!
//! Common to all: `AT` (until it answers; if it never does, the modem may still be online from
//! an earlier run, so a guarded `+++` and the profile's hang-up are tried once), `ATE0`,
//! `ATV1`, `AT+CMEE=2` (cellular, optional), `AT&C1` (DCD follows the carrier, optional),
//! `AT&K3` / `AT+IFC=2,2` with `flow=rtscts`, `ATS12=n` when `guard=` is given (not SIMCom,
//! whose guard time is fixed), `AT+CPIN?` (cellular; `AT+CPIN="…"` with `pin=`). Then:
//!
//! | Profile | Context | Send timers | Dial |
//! |---|---|---|---|
//! | telit | `AT+CGDCONT=1,"IP","apn"`, `AT#SGACT?`, `AT#SGACT=1,1` | `AT#SCFG=1,1,300,0,600,256` (txTo 10 ms; `…,1` = 100 ms on older firmware), `AT#SKIPESC=1` | `AT#SD=1,0,port,"host",0,0,0` |
//! | simcom | `AT+CIPSHUT`, `AT+CIPMODE=1`, `AT+CSTT="apn"`, `AT+CIICR`, `AT+CIFSR` | `AT+CIPCCFG=5,2,1,1` (WaitTm 400 ms, SendSz 1, esc on) | `AT+CIPSTART="TCP","host","port"` |
//! | ublox | `AT+CGDCONT=1,"IP","apn"`, `AT+CGACT?`, `AT+CGACT=1,1`, `AT+USOCR=6` | `AT+UDCONF=5,s,100` (100 ms timer trigger) | `AT+USOCO=s,"host",port`, `AT+USODL=s` |
//! | quectel | `AT+QICSGP=1,1,"apn","","",1`, `AT+QIACT?`, `AT+QIACT=1` | `AT+QICFG="transwaittm",0` | `AT+QIOPEN=1,0,"TCP","host",port,0,2` |
//! | hayes | — | — | `ATD<number>` or `ATDT<host>:<port>` |
//!
//! Closing: silence for the guard time, `+++`, silence, `OK`, then `AT#SH=1`, `AT+CIPCLOSE` and
//! `AT+CIPSHUT`, `AT+USOCL=s`, `AT+QICLOSE=0` or `ATH`. A failure to hang up is logged, not
//! returned: the job is done by then.
//!
//! # Escape detection (`+++` in the payload)
//!
//! An escape needs silence before and after exactly three `+` (links.md §5.8). Bootloader
//! frames are written back to back and are never exactly three bytes long, so payload bytes
//! `2B 2B 2B` do not escape. SIMCom's `esc` is therefore left **on** by default: the host needs
//! `+++` to leave data mode and hang up cleanly, on ports (and pseudo-terminals) where DTR is
//! not wired. `esc=off` turns detection off for the paranoid; closing then drops DTR (`AT&D1`)
//! instead, which needs a real port with DTR wired to the modem.
//!
//! # NO CARRIER in the data stream
//!
//! When the far end closes, the modem returns to command mode and prints `\r\nNO CARRIER\r\n`
//! (SIMCom: `\r\nCLOSED\r\n`). `CarrierWatch` holds back only a tail of received bytes that
//! could be the start of such a report, and releases it as data as soon as a byte arrives that
//! rules it out, or after [`HOLD`] without more bytes (a modem prints its report in one burst).
//! Residual risk: data from the chip that contains exactly `\r\nNO CARRIER\r\n` (a read-back of
//! firmware that holds that string) is taken for a dropped connection, unless DCD is wired and
//! still asserted, in which case the text is passed on as data. Once the modem is back in
//! command mode, bytes sent to it are read as commands: each write first reads what has
//! arrived, so a report already received stops it, but a write racing the report can still
//! reach the modem's command interpreter (which ignores anything not starting with `AT`).
//!
//! The STM32's UART settings (`--baud`, `--parity`) belong to the far end and are only
//! recorded; the host↔modem line is 8N1 at `baud=`.

use crate::error::{Error, Result};
use crate::link::{LineSettings, Link, LinkError};
use crate::transport::tcp::line_text;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Default rate of the host↔modem serial line (8N1).
pub const DEFAULT_BAUD: u32 = 115_200;
/// Default escape guard time (S12 = 50, 1 s).
pub const DEFAULT_GUARD: Duration = Duration::from_secs(1);
/// Default limit for context activation and for the dial.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for an ordinary AT command to answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Quiet time between the modem's last byte and our next command.
pub const COMMAND_GAP: Duration = Duration::from_millis(20);
/// How long a possible start of `\r\nNO CARRIER\r\n` is held back before it is passed on as
/// data.
pub const HOLD: Duration = Duration::from_millis(50);
/// One unit of S12, the guard time register.
const S12_UNIT: Duration = Duration::from_millis(20);
/// How often DCD is read while data flows.
const DCD_POLL: Duration = Duration::from_millis(250);

/// Which AT dialect the modem speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Telit (`#SGACT`, `#SCFG`, `#SD`).
    Telit,
    /// SIMCom SIM800/SIM7000 (`+CSTT`, `+CIICR`, `+CIPSTART` with `+CIPMODE=1`).
    Simcom,
    /// u-blox SARA-R4 (`+USOCR`, `+USOCO`, direct link `+USODL`).
    Ublox,
    /// Quectel BG95 (`+QIACT`, `+QIOPEN` access mode 2).
    Quectel,
    /// Plain Hayes / V.250 (`ATD`, `ATH`).
    Hayes,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 5] = [
        Profile::Telit,
        Profile::Simcom,
        Profile::Ublox,
        Profile::Quectel,
        Profile::Hayes,
    ];

    /// The valid names, for messages.
    pub const NAMES: &'static str = "telit, simcom, ublox, quectel or hayes";

    /// The name used in `profile=`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Telit => "telit",
            Profile::Simcom => "simcom",
            Profile::Ublox => "ublox",
            Profile::Quectel => "quectel",
            Profile::Hayes => "hayes",
        }
    }

    /// Parse a profile name (case-insensitive; `u-blox` is accepted too).
    pub fn parse(name: &str) -> Option<Profile> {
        match name.to_ascii_lowercase().as_str() {
            "telit" => Some(Profile::Telit),
            "simcom" => Some(Profile::Simcom),
            "ublox" | "u-blox" => Some(Profile::Ublox),
            "quectel" => Some(Profile::Quectel),
            "hayes" => Some(Profile::Hayes),
            _ => None,
        }
    }

    /// Whether it is a cellular modem (SIM, APN, packet context).
    pub fn is_cellular(self) -> bool {
        self != Profile::Hayes
    }

    /// Whether the escape guard time can be set with `ATS12` (SIMCom's is fixed).
    pub fn has_s12(self) -> bool {
        self != Profile::Simcom
    }

    /// What the modem prints in the data stream when the connection drops.
    pub fn drop_reports(self) -> &'static [&'static [u8]] {
        match self {
            Profile::Simcom => &[b"\r\nNO CARRIER\r\n", b"\r\nCLOSED\r\n"],
            _ => &[b"\r\nNO CARRIER\r\n"],
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Profile::parse(s)
            .ok_or_else(|| format!("unknown modem profile '{s}': use {}", Profile::NAMES))
    }
}

/// Flow control on the host↔modem line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// None (the default: frames are small next to a modem's buffers).
    None,
    /// RTS/CTS, on both the port and the modem (`AT&K3`, or `AT+IFC=2,2`).
    RtsCts,
}

/// What the modem dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTarget {
    /// A TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A number for `ATD` (hayes only).
    Number(String),
}

impl std::fmt::Display for DialTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialTarget::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            DialTarget::Tcp { host, port } => write!(f, "{host}:{port}"),
            DialTarget::Number(n) => write!(f, "number {n}"),
        }
    }
}

/// A `modem:` port: the serial port the modem is on, its dialect, and what to dial.
#[derive(Debug, Clone, PartialEq)]
pub struct ModemSpec {
    /// Serial port path (`/dev/ttyUSB2`).
    pub path: String,
    /// AT dialect.
    pub profile: Profile,
    /// Rate of the host↔modem line (8N1).
    pub baud: u32,
    /// Access point name (cellular profiles; may be empty for the network's default).
    pub apn: Option<String>,
    /// What to connect to.
    pub target: DialTarget,
    /// SIM PIN, if the SIM asks for one.
    pub pin: Option<String>,
    /// Escape guard time, a multiple of 20 ms.
    pub guard: Duration,
    /// Whether `guard=` was given (then `ATS12` sets it on the modem).
    pub guard_given: bool,
    /// Limit for context activation and for the dial.
    pub timeout: Duration,
    /// Flow control on the host↔modem line.
    pub flow: Flow,
    /// SIMCom only: whether the modem watches for `+++` (`esc` of `AT+CIPCCFG`).
    pub escape: bool,
}

/// Keys `modem:` accepts, for messages.
const KEYS: &str = "profile, apn, host, port, number, pin, baud, guard, timeout, flow, esc";

const EXAMPLE: &str = "modem:/dev/ttyUSB2?profile=telit&apn=internet&host=203.0.113.7&port=7000";

fn bad(what: impl std::fmt::Display) -> Error {
    Error::InvalidRequest(format!("modem: port: {what}"))
}

/// Undo `%XX` escapes (`+` is left as it is).
fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A value that goes inside a quoted AT parameter: no quotes, no control characters.
fn check_quoted(key: &str, v: &str) -> Result<()> {
    if v.chars().any(|c| c == '"' || c.is_control()) {
        return Err(bad(format!(
            "{key}= cannot hold quotes or control characters (it is sent inside \"…\" in an AT \
             command)"
        )));
    }
    Ok(())
}

impl ModemSpec {
    /// Parse what follows `modem:` in a port: `PATH?profile=…&…`.
    ///
    /// Keys: `profile` (required: telit, simcom, ublox, quectel, hayes), `apn` (required for
    /// cellular profiles; empty for the network's default), `host` and `port` (required; hayes
    /// may give `number` instead), `pin`, `baud` (host↔modem line, default 115200, 8N1),
    /// `guard` (escape guard time, default 1s), `timeout` (context activation and dial,
    /// default 120s), `flow` (none or rtscts), `esc` (simcom: on or off). Values may use `%XX`
    /// escapes.
    pub fn parse(rest: &str) -> Result<ModemSpec> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(bad(format!(
                "no serial port: give the modem's port first, e.g. {EXAMPLE}"
            )));
        }
        let mut seen: Vec<String> = Vec::new();
        let mut profile = None;
        let mut apn = None;
        let mut host = None;
        let mut port = None;
        let mut number = None;
        let mut pin = None;
        let mut baud = DEFAULT_BAUD;
        let mut guard = None;
        let mut timeout = DEFAULT_TIMEOUT;
        let mut flow = Flow::None;
        let mut escape = None;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, raw) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("'{kv}' needs a value (key=value)")))?;
            let k = k.to_ascii_lowercase();
            if seen.contains(&k) {
                return Err(bad(format!("{k}= is given twice")));
            }
            seen.push(k.clone());
            let v = percent_decode(raw)
                .ok_or_else(|| bad(format!("{k}={raw}: bad %-escape or not UTF-8")))?;
            match k.as_str() {
                "profile" => {
                    profile = Some(Profile::parse(&v).ok_or_else(|| {
                        bad(format!("unknown profile '{v}': use {}", Profile::NAMES))
                    })?)
                }
                "apn" => {
                    check_quoted("apn", &v)?;
                    apn = Some(v);
                }
                "host" => {
                    if v.is_empty()
                        || v.chars()
                            .any(|c| c.is_whitespace() || matches!(c, '"' | ',' | '/' | '?'))
                    {
                        return Err(bad(format!(
                            "host={v}: give a host name or address, e.g. host=203.0.113.7"
                        )));
                    }
                    host = Some(v.trim_start_matches('[').trim_end_matches(']').to_string());
                }
                "port" => {
                    port = Some(v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        bad(format!("port={v}: give a TCP port number (1 to 65535)"))
                    })?)
                }
                "number" => {
                    if v.is_empty()
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+*#,.:-@!W ".contains(c))
                    {
                        return Err(bad(format!(
                            "number={v}: give what follows ATD, e.g. number=T5551234"
                        )));
                    }
                    number = Some(v);
                }
                "pin" => {
                    if !(4..=8).contains(&v.len()) || !v.chars().all(|c| c.is_ascii_digit()) {
                        return Err(bad("pin= takes the SIM PIN, 4 to 8 digits"));
                    }
                    pin = Some(v);
                }
                "baud" => {
                    baud = v
                        .parse::<u32>()
                        .ok()
                        .filter(|b| (300..=4_000_000).contains(b))
                        .ok_or_else(|| {
                            bad(format!(
                                "baud={v}: give the host↔modem line rate, e.g. baud=115200"
                            ))
                        })?
                }
                "guard" => {
                    let d =
                        crate::units::parse_duration(&v).map_err(|e| bad(format!("guard: {e}")))?;
                    let units = d.as_nanos().div_ceil(S12_UNIT.as_nanos());
                    if !(1..=255).contains(&units) {
                        return Err(bad(format!(
                            "guard={v}: the escape guard time must be from 20ms to 5.1s (S12 \
                             counts 1/50 s)"
                        )));
                    }
                    guard = Some(S12_UNIT * units as u32);
                }
                "timeout" => {
                    timeout = crate::units::parse_duration(&v)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            bad(format!("timeout={v}: give a duration such as 60s or 2m"))
                        })?
                }
                "flow" => {
                    flow = match v.to_ascii_lowercase().as_str() {
                        "none" | "off" => Flow::None,
                        "rtscts" | "hw" | "hardware" => Flow::RtsCts,
                        _ => return Err(bad(format!("flow={v}: use none or rtscts"))),
                    }
                }
                "esc" => {
                    escape = Some(match v.to_ascii_lowercase().as_str() {
                        "on" | "1" | "true" | "yes" => true,
                        "off" | "0" | "false" | "no" => false,
                        _ => return Err(bad(format!("esc={v}: use on or off"))),
                    })
                }
                other => {
                    return Err(bad(format!(
                        "unknown option '{other}': valid options are {KEYS}"
                    )))
                }
            }
        }
        let profile = profile.ok_or_else(|| {
            bad(format!(
                "profile= is required: one of {} (e.g. {EXAMPLE})",
                Profile::NAMES
            ))
        })?;
        if escape.is_some() && profile != Profile::Simcom {
            return Err(bad(
                "esc= applies to profile=simcom only (other modems cannot turn off +++ detection)",
            ));
        }
        let target =
            match (host, port, number) {
                (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                    return Err(bad("give either number= or host= and port=, not both"))
                }
                (Some(host), Some(port), None) => DialTarget::Tcp { host, port },
                (Some(_), None, None) => return Err(bad("host= needs port= too")),
                (None, Some(_), None) => return Err(bad("port= needs host= too")),
                (None, None, Some(n)) if profile == Profile::Hayes => DialTarget::Number(n),
                (None, None, Some(_)) => {
                    return Err(bad(format!(
                        "number= is for profile=hayes; profile={profile} dials host= and port="
                    )))
                }
                (None, None, None) if profile == Profile::Hayes => return Err(bad(
                    "profile=hayes needs number= (dialled with ATD) or host= and port= (dialled \
                     as ATDThost:port)",
                )),
                (None, None, None) => {
                    return Err(bad(format!(
                        "host= and port= are required: what the modem connects to (e.g. {EXAMPLE})"
                    )))
                }
            };
        if profile.is_cellular() {
            if apn.is_none() {
                return Err(bad(format!(
                    "apn= is required for profile={profile}: your SIM provider's access point \
                     name (apn= with nothing uses the network's default)"
                )));
            }
        } else if apn.is_some() || pin.is_some() {
            return Err(bad(
                "apn= and pin= are for cellular profiles; profile=hayes only dials",
            ));
        }
        Ok(ModemSpec {
            path: path.to_string(),
            profile,
            baud,
            apn,
            target,
            pin,
            guard_given: guard.is_some(),
            guard: guard.unwrap_or(DEFAULT_GUARD),
            timeout,
            flow,
            escape: escape.unwrap_or(true),
        })
    }

    /// `modem:PATH`, for messages (no secrets).
    pub fn url(&self) -> String {
        format!("modem:{}", self.path)
    }

    /// The guard time in S12 units (1/50 s).
    pub fn guard_units(&self) -> u32 {
        u32::try_from(self.guard.as_millis() / S12_UNIT.as_millis()).unwrap_or(255)
    }
}

/// The byte pipe under the AT layer: the serial port in use, a script in tests.
pub(crate) trait ModemIo: Send {
    /// Send all bytes.
    fn write(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Read what has arrived, waiting at most `timeout`; `Ok(0)` when nothing came.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize>;
    /// Drop unread input.
    fn clear_input(&mut self) -> std::io::Result<()>;
    /// DCD, where the port can read it.
    fn carrier(&mut self) -> Option<bool>;
    /// Drive DTR.
    fn set_dtr(&mut self, on: bool) -> std::io::Result<()>;
    /// Time since an arbitrary start.
    fn now(&self) -> Duration;
    /// Wait.
    fn sleep(&mut self, d: Duration);
}

/// The real serial port.
struct SerialIo {
    port: Box<dyn serialport::SerialPort>,
    timeout: Duration,
    start: Instant,
}

impl ModemIo for SerialIo {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.port.write_all(data)?;
        self.port.flush()
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        use std::io::Read;
        if timeout != self.timeout {
            self.port
                .set_timeout(timeout)
                .map_err(std::io::Error::from)?;
            self.timeout = timeout;
        }
        match self.port.read(buf) {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    fn clear_input(&mut self) -> std::io::Result<()> {
        self.port
            .clear(serialport::ClearBuffer::Input)
            .map_err(std::io::Error::from)
    }

    fn carrier(&mut self) -> Option<bool> {
        // A pseudo-terminal has no modem lines: the error only means "cannot tell".
        self.port.read_carrier_detect().ok()
    }

    fn set_dtr(&mut self, on: bool) -> std::io::Result<()> {
        self.port
            .write_data_terminal_ready(on)
            .map_err(std::io::Error::from)
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// What counts as success for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// `OK`.
    Ok,
    /// `CONNECT` or `CONNECT <rate>` (an `OK` before it is intermediate).
    Connect,
    /// This exact line (`SHUT OK`).
    Exact(&'static str),
    /// A line that is an IP address (SIMCom `AT+CIFSR` answers with the address alone).
    Address,
}

/// Why a command failed.
#[derive(Debug)]
enum AtFail {
    /// No final result code in time.
    Timeout {
        cmd: String,
        heard: Vec<String>,
        waited: Duration,
    },
    /// A final result code that means failure.
    Refused {
        cmd: String,
        said: String,
        heard: Vec<String>,
    },
    /// The port failed.
    Io { cmd: String, error: std::io::Error },
}

impl AtFail {
    fn describe(&self) -> String {
        let heard = |h: &[String]| {
            if h.is_empty() {
                String::new()
            } else {
                format!(" (after: {})", h.join(" | "))
            }
        };
        match self {
            AtFail::Timeout {
                cmd,
                heard: h,
                waited,
            } => format!(
                "`{cmd}` got no final result code within {:.1}s{}",
                waited.as_secs_f64(),
                heard(h)
            ),
            AtFail::Refused {
                cmd,
                said,
                heard: h,
            } => {
                format!("`{cmd}` was answered {said}{}", heard(h))
            }
            AtFail::Io { cmd, error } => format!("`{cmd}`: the serial port failed: {error}"),
        }
    }
}

/// Hide the PIN in logs and messages.
fn redact(cmd: &str) -> String {
    if cmd.to_ascii_uppercase().starts_with("AT+CPIN=") {
        "AT+CPIN=****".to_string()
    } else {
        cmd.to_string()
    }
}

fn is_failure(line: &str, numeric: bool) -> bool {
    let upper = line.to_ascii_uppercase();
    matches!(
        upper.as_str(),
        "ERROR"
            | "NO CARRIER"
            | "BUSY"
            | "NO ANSWER"
            | "NO DIALTONE"
            | "NO DIAL TONE"
            | "CONNECT FAIL"
            | "ALREADY CONNECT"
    ) || upper.starts_with("+CME ERROR")
        || upper.starts_with("+CMS ERROR")
        || (numeric && matches!(line, "3" | "4" | "6" | "7" | "8"))
}

fn is_connect(line: &str) -> bool {
    let upper = line.to_ascii_uppercase();
    upper == "CONNECT" || upper.starts_with("CONNECT ")
}

/// The AT command layer over a [`ModemIo`].
struct At {
    io: Box<dyn ModemIo>,
    /// Received bytes not yet split into lines.
    buf: Vec<u8>,
    /// When the modem's last byte arrived.
    last_rx: Duration,
    /// When our last byte left.
    last_tx: Duration,
    /// Accept the numeric result codes of ATV0 (until ATV1 is through).
    numeric: bool,
}

impl At {
    fn new(io: Box<dyn ModemIo>) -> At {
        At {
            io,
            buf: Vec::new(),
            last_rx: Duration::ZERO,
            last_tx: Duration::ZERO,
            numeric: true,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.io.write(data)?;
        self.last_tx = self.io.now();
        Ok(())
    }

    /// Read once, at most `timeout`; returns how many bytes were added to `buf`.
    fn fill(&mut self, timeout: Duration) -> std::io::Result<usize> {
        let mut tmp = [0u8; 512];
        let n = self.io.read(&mut tmp, timeout)?;
        if n > 0 {
            self.buf.extend_from_slice(&tmp[..n]);
            self.last_rx = self.io.now();
        }
        Ok(n)
    }

    /// The next non-empty line, or None at `deadline`.
    fn next_line(&mut self, deadline: Duration) -> std::io::Result<Option<String>> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\r' || *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&raw).trim().to_string();
                if !line.is_empty() {
                    return Ok(Some(line));
                }
            }
            let now = self.io.now();
            if now >= deadline {
                return Ok(None);
            }
            self.fill(deadline - now)?;
        }
    }

    /// Send `cmd` and a CR, after the quiet gap Telit asks for.
    fn send(&mut self, cmd: &str) -> std::result::Result<(), AtFail> {
        let ready = self.last_rx.max(self.last_tx) + COMMAND_GAP;
        let now = self.io.now();
        if now < ready {
            self.io.sleep(ready - now);
        }
        tracing::debug!("modem < {}", redact(cmd));
        let mut line = cmd.as_bytes().to_vec();
        line.push(b'\r');
        self.write(&line).map_err(|error| AtFail::Io {
            cmd: redact(cmd),
            error,
        })
    }

    /// Wait for the final result code of `cmd`.
    fn finish(
        &mut self,
        cmd: &str,
        want: Want,
        timeout: Duration,
    ) -> std::result::Result<Vec<String>, AtFail> {
        let deadline = self.io.now() + timeout;
        let mut heard = Vec::new();
        loop {
            let line = match self.next_line(deadline) {
                Ok(Some(line)) => line,
                Ok(None) => {
                    return Err(AtFail::Timeout {
                        cmd: redact(cmd),
                        heard,
                        waited: timeout,
                    })
                }
                Err(error) => {
                    return Err(AtFail::Io {
                        cmd: redact(cmd),
                        error,
                    })
                }
            };
            if line.eq_ignore_ascii_case(cmd) {
                continue; // the echo
            }
            tracing::debug!("modem > {line}");
            if is_failure(&line, self.numeric) {
                return Err(AtFail::Refused {
                    cmd: redact(cmd),
                    said: line,
                    heard,
                });
            }
            let done = match want {
                Want::Ok => line.eq_ignore_ascii_case("OK") || (self.numeric && line == "0"),
                Want::Connect => is_connect(&line) || (self.numeric && line == "1"),
                Want::Exact(s) => line.eq_ignore_ascii_case(s),
                Want::Address => line.trim_matches('"').parse::<std::net::IpAddr>().is_ok(),
            };
            heard.push(line);
            if done {
                return Ok(heard);
            }
        }
    }

    /// Send a command and wait for its final result code; returns every line it printed,
    /// the final one last.
    fn command(
        &mut self,
        cmd: &str,
        want: Want,
        timeout: Duration,
    ) -> std::result::Result<Vec<String>, AtFail> {
        self.send(cmd)?;
        self.finish(cmd, want, timeout)
    }

    /// Guard time, `+++`, guard time: back to command mode. Returns false if the modem said
    /// the connection had dropped instead of OK.
    fn escape(&mut self, guard: Duration) -> std::result::Result<bool, AtFail> {
        let quiet = guard + guard / 10 + COMMAND_GAP;
        let now = self.io.now();
        let ready = self.last_tx + quiet;
        if now < ready {
            self.io.sleep(ready - now);
        }
        tracing::debug!("modem < +++");
        self.write(b"+++").map_err(|error| AtFail::Io {
            cmd: "+++".into(),
            error,
        })?;
        // Whatever the far end sent before the escape is of no use any more.
        self.buf.clear();
        let deadline = self.io.now() + guard * 2 + Duration::from_secs(3);
        loop {
            match self.next_line(deadline) {
                Ok(Some(line)) => {
                    let upper = line.to_ascii_uppercase();
                    if upper == "OK" || upper == "DISCONNECT" {
                        return Ok(true);
                    }
                    if upper == "NO CARRIER" || upper == "CLOSED" {
                        return Ok(false);
                    }
                }
                Ok(None) => {
                    return Err(AtFail::Timeout {
                        cmd: "+++".into(),
                        heard: Vec::new(),
                        waited: guard * 2 + Duration::from_secs(3),
                    })
                }
                Err(error) => {
                    return Err(AtFail::Io {
                        cmd: "+++".into(),
                        error,
                    })
                }
            }
        }
    }
}

/// Context for [`AtFail`]s turned into [`LinkError::Open`].
struct Dialler<'a> {
    at: &'a mut At,
    spec: &'a ModemSpec,
}

const HINT_PORT: &str = "check the port path, the host↔modem rate (baud=), that the modem is \
                         powered, and that no other program (ModemManager, a terminal) holds the \
                         port";
const HINT_SIM: &str = "check that a SIM is inserted and active; give pin= if it asks for a PIN";
const HINT_APN: &str = "check the APN (apn=), that the SIM has a data plan, and the coverage \
                        (AT+CSQ, AT+CREG? in a terminal)";
const HINT_TUNE: &str = "the modem's firmware may not take this setting; check its AT manual \
                         and the profile= you chose";
const HINT_DIAL: &str = "check host= and port=, that a relay or the device listens there and can \
                         be reached from the modem's network, and the APN and coverage";

impl Dialler<'_> {
    fn fail(&self, f: &AtFail, hint: &str) -> LinkError {
        LinkError::Open {
            port: self.spec.url(),
            reason: format!("{}: {hint}", f.describe()),
        }
    }

    fn run(
        &mut self,
        cmd: &str,
        want: Want,
        timeout: Duration,
        hint: &str,
    ) -> std::result::Result<Vec<String>, LinkError> {
        self.at
            .command(cmd, want, timeout)
            .map_err(|f| self.fail(&f, hint))
    }

    fn ok(&mut self, cmd: &str, hint: &str) -> std::result::Result<Vec<String>, LinkError> {
        self.run(cmd, Want::Ok, COMMAND_TIMEOUT, hint)
    }

    /// A command whose failure does not matter (a port error still does, at the next step).
    fn optional(&mut self, cmd: &str) {
        if let Err(f) = self.at.command(cmd, Want::Ok, COMMAND_TIMEOUT) {
            tracing::debug!("optional modem command failed: {}", f.describe());
        }
    }

    fn sync(&mut self) -> std::result::Result<(), LinkError> {
        let _ = self.at.io.clear_input();
        if self.try_at(4) {
            return Ok(());
        }
        // Perhaps still online from an earlier run that did not hang up: escape, hang up.
        tracing::debug!("the modem does not answer AT; trying +++ in case it is online");
        if self.at.escape(self.spec.guard).is_ok() {
            hang_up(self.at, self.spec, None);
        }
        if self.try_at(3) {
            return Ok(());
        }
        Err(LinkError::Open {
            port: self.spec.url(),
            reason: format!(
                "the modem does not answer AT (nor after a +++ escape): {HINT_PORT}; a modem \
                 set to ATQ1 (quiet) answers nothing"
            ),
        })
    }

    fn try_at(&mut self, attempts: u32) -> bool {
        for _ in 0..attempts {
            match self.at.command("AT", Want::Ok, Duration::from_millis(500)) {
                Ok(_) => return true,
                Err(AtFail::Io { .. }) => return false,
                Err(_) => {}
            }
        }
        false
    }

    fn common(&mut self) -> std::result::Result<(), LinkError> {
        self.sync()?;
        self.ok("ATE0", HINT_PORT)?;
        self.ok("ATV1", HINT_PORT)?;
        self.at.numeric = false;
        let cellular = self.spec.profile.is_cellular();
        if cellular {
            self.optional("AT+CMEE=2");
        }
        self.optional("AT&C1");
        if self.spec.flow == Flow::RtsCts {
            let cmd = match self.spec.profile {
                Profile::Simcom | Profile::Quectel => "AT+IFC=2,2",
                _ => "AT&K3",
            };
            self.ok(
                cmd,
                "the modem refused RTS/CTS flow control; use flow=none or check its manual",
            )?;
        }
        if self.spec.guard_given && self.spec.profile.has_s12() {
            let cmd = format!("ATS12={}", self.spec.guard_units());
            self.ok(
                &cmd,
                "the modem does not take ATS12 (the escape guard time); leave guard= out to use \
                 its default of 1 s",
            )?;
        }
        if cellular {
            self.sim_ready()?;
        }
        Ok(())
    }

    fn sim_ready(&mut self) -> std::result::Result<(), LinkError> {
        let lines = self.ok("AT+CPIN?", HINT_SIM)?;
        let state = lines
            .iter()
            .find_map(|l| l.strip_prefix("+CPIN:"))
            .map(|s| s.trim().to_ascii_uppercase())
            .unwrap_or_else(|| "READY".into());
        if state == "READY" {
            return Ok(());
        }
        if state != "SIM PIN" {
            return Err(LinkError::Open {
                port: self.spec.url(),
                reason: format!(
                    "the SIM reports {state}: unlock it in a phone or terminal first ({HINT_SIM})"
                ),
            });
        }
        let Some(pin) = self.spec.pin.clone() else {
            return Err(LinkError::Open {
                port: self.spec.url(),
                reason: "the SIM asks for its PIN: add pin=NNNN to the port".into(),
            });
        };
        self.ok(
            &format!("AT+CPIN=\"{pin}\""),
            "the SIM refused the PIN: check pin= (a few wrong PINs lock the SIM; it then needs \
             its PUK)",
        )?;
        // The SIM takes a moment to become ready after the PIN.
        for _ in 0..20 {
            let lines = self.ok("AT+CPIN?", HINT_SIM)?;
            if lines
                .iter()
                .any(|l| l.to_ascii_uppercase().contains("READY"))
            {
                return Ok(());
            }
            self.at.io.sleep(Duration::from_millis(500));
        }
        Err(LinkError::Open {
            port: self.spec.url(),
            reason: format!("the SIM did not become ready after the PIN: {HINT_SIM}"),
        })
    }

    fn apn(&self) -> &str {
        self.spec.apn.as_deref().unwrap_or("")
    }

    fn host_port(&self) -> (String, u16) {
        match &self.spec.target {
            DialTarget::Tcp { host, port } => (host.clone(), *port),
            DialTarget::Number(n) => (n.clone(), 0),
        }
    }

    fn dial(&mut self, cmd: &str) -> std::result::Result<(), LinkError> {
        let hint = format!("the connection to {} failed: {HINT_DIAL}", self.spec.target);
        self.run(cmd, Want::Connect, self.spec.timeout, &hint)?;
        Ok(())
    }

    /// Run the profile's sequence up to CONNECT; returns the socket number where the dialect
    /// has one the hang-up needs.
    fn connect(&mut self) -> std::result::Result<Option<u32>, LinkError> {
        self.common()?;
        let timeout = self.spec.timeout;
        let (host, port) = self.host_port();
        match self.spec.profile {
            Profile::Telit => {
                self.ok(&format!("AT+CGDCONT=1,\"IP\",\"{}\"", self.apn()), HINT_APN)?;
                let state = self.ok("AT#SGACT?", HINT_APN)?;
                let active = state
                    .iter()
                    .any(|l| l.replace(' ', "").starts_with("#SGACT:1,1"));
                if !active {
                    self.run("AT#SGACT=1,1", Want::Ok, timeout, HINT_APN)?;
                }
                // txTo 256 (10 ms) is newer firmware; 1 (100 ms) is the smallest older takes.
                if let Err(f) =
                    self.at
                        .command("AT#SCFG=1,1,300,0,600,256", Want::Ok, COMMAND_TIMEOUT)
                {
                    if let AtFail::Io { .. } = f {
                        return Err(self.fail(&f, HINT_PORT));
                    }
                    self.ok("AT#SCFG=1,1,300,0,600,1", HINT_TUNE)?;
                }
                self.ok("AT#SKIPESC=1", HINT_TUNE)?;
                self.dial(&format!("AT#SD=1,0,{port},\"{host}\",0,0,0"))?;
                Ok(None)
            }
            Profile::Simcom => {
                self.run(
                    "AT+CIPSHUT",
                    Want::Exact("SHUT OK"),
                    COMMAND_TIMEOUT * 4,
                    HINT_APN,
                )?;
                self.ok("AT+CIPMODE=1", HINT_TUNE)?;
                let esc = u8::from(self.spec.escape);
                self.ok(&format!("AT+CIPCCFG=5,2,1,{esc}"), HINT_TUNE)?;
                if !self.spec.escape {
                    // Without +++, DTR is the way out of data mode.
                    self.ok("AT&D1", HINT_TUNE)?;
                }
                self.ok(&format!("AT+CSTT=\"{}\"", self.apn()), HINT_APN)?;
                self.run("AT+CIICR", Want::Ok, timeout, HINT_APN)?;
                self.run("AT+CIFSR", Want::Address, COMMAND_TIMEOUT, HINT_APN)?;
                self.dial(&format!("AT+CIPSTART=\"TCP\",\"{host}\",\"{port}\""))?;
                Ok(None)
            }
            Profile::Ublox => {
                self.ok(&format!("AT+CGDCONT=1,\"IP\",\"{}\"", self.apn()), HINT_APN)?;
                let state = self.ok("AT+CGACT?", HINT_APN)?;
                let active = state
                    .iter()
                    .any(|l| l.replace(' ', "").starts_with("+CGACT:1,1"));
                if !active {
                    self.run("AT+CGACT=1,1", Want::Ok, timeout, HINT_APN)?;
                }
                let lines = self.ok("AT+USOCR=6", HINT_APN)?;
                let socket = lines
                    .iter()
                    .find_map(|l| l.strip_prefix("+USOCR:"))
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .ok_or_else(|| LinkError::Open {
                        port: self.spec.url(),
                        reason: format!(
                            "`AT+USOCR=6` gave no socket number (it said: {}): {HINT_TUNE}",
                            lines.join(" | ")
                        ),
                    })?;
                let hint = format!("the connection to {} failed: {HINT_DIAL}", self.spec.target);
                self.run(
                    &format!("AT+USOCO={socket},\"{host}\",{port}"),
                    Want::Ok,
                    timeout,
                    &hint,
                )?;
                self.ok(&format!("AT+UDCONF=5,{socket},100"), HINT_TUNE)?;
                self.dial(&format!("AT+USODL={socket}"))?;
                Ok(Some(socket))
            }
            Profile::Quectel => {
                self.ok(
                    &format!("AT+QICSGP=1,1,\"{}\",\"\",\"\",1", self.apn()),
                    HINT_APN,
                )?;
                let state = self.ok("AT+QIACT?", HINT_APN)?;
                let active = state
                    .iter()
                    .any(|l| l.replace(' ', "").starts_with("+QIACT:1,"));
                if !active {
                    self.run("AT+QIACT=1", Want::Ok, timeout, HINT_APN)?;
                }
                self.ok("AT+QICFG=\"transwaittm\",0", HINT_TUNE)?;
                self.dial(&format!("AT+QIOPEN=1,0,\"TCP\",\"{host}\",{port},0,2"))?;
                Ok(None)
            }
            Profile::Hayes => {
                let cmd = match &self.spec.target {
                    DialTarget::Number(n) => format!("ATD{n}"),
                    DialTarget::Tcp { .. } => format!("ATDT{host}:{port}"),
                };
                self.dial(&cmd)?;
                Ok(None)
            }
        }
    }
}

/// The profile's hang-up, in command mode. Best effort: failures are logged.
fn hang_up(at: &mut At, spec: &ModemSpec, socket: Option<u32>) {
    let cmds: Vec<(String, Want)> = match spec.profile {
        Profile::Telit => vec![("AT#SH=1".into(), Want::Ok)],
        Profile::Simcom => vec![
            ("AT+CIPCLOSE".into(), Want::Exact("CLOSE OK")),
            ("AT+CIPSHUT".into(), Want::Exact("SHUT OK")),
        ],
        Profile::Ublox => match socket {
            Some(s) => vec![(format!("AT+USOCL={s}"), Want::Ok)],
            None => Vec::new(),
        },
        Profile::Quectel => vec![("AT+QICLOSE=0".into(), Want::Ok)],
        Profile::Hayes => vec![("ATH".into(), Want::Ok)],
    };
    for (cmd, want) in cmds {
        if let Err(f) = at.command(&cmd, want, COMMAND_TIMEOUT) {
            tracing::debug!("hang-up step failed: {}", f.describe());
        }
    }
}

/// Watches the data stream for the modem's report that the connection dropped, holding back
/// only a tail that could be the start of one.
#[derive(Debug)]
struct CarrierWatch {
    reports: &'static [&'static [u8]],
    held: Vec<u8>,
    held_since: Duration,
}

impl CarrierWatch {
    fn new(reports: &'static [&'static [u8]]) -> CarrierWatch {
        CarrierWatch {
            reports,
            held: Vec::new(),
            held_since: Duration::ZERO,
        }
    }

    /// Take received bytes: data goes to `out`; returns the report found, if any (the bytes
    /// before it are in `out`, the ones after it are the modem's and are dropped).
    /// `confirm` is asked whether a report is real (DCD); if not it is passed on as data.
    fn feed(
        &mut self,
        bytes: &[u8],
        now: Duration,
        out: &mut VecDeque<u8>,
        confirm: &mut dyn FnMut() -> bool,
    ) -> Option<&'static [u8]> {
        let old_held = self.held.len();
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(bytes);
        for i in 0..buf.len() {
            for report in self.reports {
                if buf[i..].starts_with(report) && confirm() {
                    out.extend(&buf[..i]);
                    return Some(report);
                }
            }
        }
        let hold_from = (0..buf.len())
            .find(|&i| {
                let tail = &buf[i..];
                self.reports
                    .iter()
                    .any(|r| tail.len() < r.len() && r.starts_with(tail))
            })
            .unwrap_or(buf.len());
        out.extend(&buf[..hold_from]);
        if hold_from >= old_held {
            self.held_since = now;
        }
        self.held = buf.split_off(hold_from);
        None
    }

    /// When held bytes must be released as data.
    fn release_at(&self) -> Option<Duration> {
        (!self.held.is_empty()).then(|| self.held_since + HOLD)
    }

    fn release(&mut self, out: &mut VecDeque<u8>) {
        out.extend(self.held.drain(..));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Data mode.
    Online,
    /// The modem reported the connection gone; it is in command mode.
    Dropped,
    /// Hung up.
    Closed,
}

/// A transparent connection through an AT modem on a local serial port.
///
/// After `CONNECT` it is a byte pipe to whatever the modem dialled (a relay in front of the
/// STM32's UART, or a modem next to it). The far UART's rate and parity are set there, so
/// [`Link::set_line`] only records them, and DTR, RTS and break are
/// [`LinkError::Unsupported`].
pub struct ModemLink {
    at: At,
    spec: ModemSpec,
    line: LineSettings,
    socket: Option<u32>,
    watch: CarrierWatch,
    ready: VecDeque<u8>,
    state: State,
    /// What ended the connection.
    dropped: Option<String>,
    /// DCD was asserted at CONNECT: watch it.
    dcd: bool,
    last_dcd_check: Duration,
}

impl ModemLink {
    /// Open the modem's serial port (8N1 at `baud=`), run the profile's AT sequence and dial.
    /// `line` is what the STM32's UART at the far end runs at; it is only recorded.
    pub fn open(spec: &ModemSpec, line: LineSettings) -> std::result::Result<ModemLink, LinkError> {
        let flow = match spec.flow {
            Flow::None => serialport::FlowControl::None,
            Flow::RtsCts => serialport::FlowControl::Hardware,
        };
        let timeout = Duration::from_millis(100);
        let mut port = serialport::new(&spec.path, spec.baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(flow)
            .timeout(timeout)
            .dtr_on_open(true)
            .open()
            .map_err(|e| LinkError::Open {
                port: spec.url(),
                reason: open_hint(&e),
            })?;
        // A modem set to AT&D2 hangs up while DTR is low; a pseudo-terminal has no DTR.
        let _ = port.write_data_terminal_ready(true);
        let _ = port.write_request_to_send(true);
        let io = SerialIo {
            port,
            timeout,
            start: Instant::now(),
        };
        ModemLink::with_io(spec, line, Box::new(io))
    }

    /// Dial over any byte pipe (tests script the modem, or wire in the simulated one).
    pub(crate) fn with_io(
        spec: &ModemSpec,
        line: LineSettings,
        io: Box<dyn ModemIo>,
    ) -> std::result::Result<ModemLink, LinkError> {
        let mut at = At::new(io);
        let socket = Dialler { at: &mut at, spec }.connect()?;
        // CONNECT came in "\r\nCONNECT\r\n": drop its LF if it is already here or follows at
        // once; anything after it is data.
        if at.buf.is_empty() {
            let _ = at.fill(Duration::from_millis(20));
        }
        if at.buf.first() == Some(&b'\n') {
            at.buf.remove(0);
        }
        let leftover = std::mem::take(&mut at.buf);
        let dcd = at.io.carrier() == Some(true);
        let now = at.io.now();
        let mut link = ModemLink {
            at,
            spec: spec.clone(),
            line,
            socket,
            watch: CarrierWatch::new(spec.profile.drop_reports()),
            ready: VecDeque::new(),
            state: State::Online,
            dropped: None,
            dcd,
            last_dcd_check: now,
        };
        tracing::debug!(
            "{} connected to {} (DCD {})",
            spec.url(),
            spec.target,
            if dcd { "watched" } else { "not available" }
        );
        if !leftover.is_empty() {
            link.take_input(&leftover);
        }
        Ok(link)
    }

    /// The spec the link was opened with.
    pub fn spec(&self) -> &ModemSpec {
        &self.spec
    }

    fn dropped_error(&self) -> LinkError {
        let what = self
            .dropped
            .clone()
            .unwrap_or_else(|| "the modem connection is closed".into());
        LinkError::Io {
            context: what,
            error: std::io::Error::new(ErrorKind::ConnectionAborted, "carrier lost"),
        }
    }

    fn mark_dropped(&mut self, how: &str) {
        self.state = State::Dropped;
        self.dropped = Some(format!(
            "{how}: the connection to {} dropped; the chip waits in its bootloader (reset it if \
             it was cut mid-command), then run the command again, or `stm32boot recover` after \
             an interrupted write",
            self.spec.target
        ));
        tracing::debug!("{} {how}", self.spec.url());
    }

    /// Pass received bytes through the carrier watch.
    fn take_input(&mut self, bytes: &[u8]) {
        let now = self.at.io.now();
        let dcd = self.dcd;
        let io = &mut self.at.io;
        let mut confirm = || {
            if !dcd {
                return true;
            }
            // DCD is wired: believe the text only if DCD drops too.
            for _ in 0..10 {
                if io.carrier() == Some(false) {
                    return true;
                }
                io.sleep(Duration::from_millis(10));
            }
            false
        };
        if let Some(report) = self.watch.feed(bytes, now, &mut self.ready, &mut confirm) {
            let text = String::from_utf8_lossy(report).trim().to_string();
            self.mark_dropped(&format!("the modem reported {text}"));
        }
    }

    fn check_dcd(&mut self) {
        if !self.dcd || self.state != State::Online {
            return;
        }
        let now = self.at.io.now();
        if now < self.last_dcd_check + DCD_POLL {
            return;
        }
        self.last_dcd_check = now;
        if self.at.io.carrier() == Some(false) {
            self.mark_dropped("the modem dropped DCD (carrier lost)");
        }
    }

    /// Read what has already arrived, without waiting.
    fn poll_input(&mut self) -> std::result::Result<(), LinkError> {
        let mut tmp = [0u8; 1024];
        let n = self
            .at
            .io
            .read(&mut tmp, Duration::ZERO)
            .map_err(|e| LinkError::io(format!("reading from {}", self.spec.url()), e))?;
        if n > 0 {
            self.take_input(&tmp[..n]);
        }
        Ok(())
    }

    fn pop(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.ready.len());
        for (slot, b) in buf.iter_mut().zip(self.ready.drain(..n)) {
            *slot = b;
        }
        n
    }

    fn unsupported(&self, what: &str) -> LinkError {
        LinkError::Unsupported {
            what: format!(
                "{what} (the chip is behind a modem connection: its DTR, RTS and break cannot be \
                 driven from here; wire NRST and BOOT0 at the far end, or have the application \
                 jump to the bootloader)"
            ),
            link: self.spec.url(),
        }
    }

    /// Leave data mode and hang up.
    fn shut_down(&mut self) -> std::result::Result<(), String> {
        let state = self.state;
        self.state = State::Closed;
        self.ready.clear();
        if state == State::Online {
            if self.spec.profile == Profile::Simcom && !self.spec.escape {
                // esc=off: DTR takes the modem to command mode (AT&D1).
                self.at
                    .io
                    .set_dtr(false)
                    .map_err(|e| format!("cannot drop DTR to leave data mode (esc=off): {e}"))?;
                self.at.io.sleep(Duration::from_millis(500));
                let _ = self.at.io.set_dtr(true);
                self.at
                    .command("AT", Want::Ok, Duration::from_secs(2))
                    .map_err(|f| f.describe())?;
            } else {
                self.at
                    .escape(self.spec.guard)
                    .map_err(|f| format!("the escape to command mode failed: {}", f.describe()))?;
            }
        }
        hang_up(&mut self.at, &self.spec, self.socket);
        Ok(())
    }
}

fn open_hint(e: &serialport::Error) -> String {
    let base = e.to_string();
    match e.kind() {
        serialport::ErrorKind::NoDevice => {
            format!("{base}: is the modem plugged in? `stm32boot ports` lists ports")
        }
        serialport::ErrorKind::Io(ErrorKind::NotFound) => {
            format!("{base}: no such port; `stm32boot ports` lists ports")
        }
        serialport::ErrorKind::Io(ErrorKind::PermissionDenied) => format!(
            "{base}: permission denied; add yourself to the port's group (dialout on Debian)"
        ),
        _ => format!("{base}: {HINT_PORT}"),
    }
}

impl Link for ModemLink {
    fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
        if self.state == State::Online {
            // A drop reported since the last read must stop us: the modem is in command
            // mode, and bytes sent now would be read as AT commands.
            self.poll_input()?;
            self.check_dcd();
        }
        if self.state != State::Online {
            return Err(self.dropped_error());
        }
        self.at
            .write(data)
            .map_err(|e| LinkError::io(format!("writing to {}", self.spec.url()), e))
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::result::Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.ready.is_empty() {
            return Ok(self.pop(buf));
        }
        if self.state != State::Online {
            return Err(self.dropped_error());
        }
        let deadline = self.at.io.now() + timeout;
        let mut tmp = [0u8; 1024];
        loop {
            self.check_dcd();
            if self.state != State::Online {
                return Err(self.dropped_error());
            }
            let now = self.at.io.now();
            let release = self.watch.release_at();
            let until = release.map_or(deadline, |r| r.min(deadline));
            if now >= until {
                if release.is_some() {
                    self.watch.release(&mut self.ready);
                    return Ok(self.pop(buf));
                }
                return Err(LinkError::Timeout(timeout));
            }
            let mut wait = until - now;
            if self.dcd {
                wait = wait.min(DCD_POLL);
            }
            let n = self
                .at
                .io
                .read(&mut tmp, wait)
                .map_err(|e| LinkError::io(format!("reading from {}", self.spec.url()), e))?;
            if n > 0 {
                self.take_input(&tmp[..n]);
                if !self.ready.is_empty() {
                    return Ok(self.pop(buf));
                }
                if self.state != State::Online {
                    return Err(self.dropped_error());
                }
            }
        }
    }

    /// Drop what has arrived, still watching it for a dropped connection.
    fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
        if self.state == State::Online {
            for _ in 0..1024 {
                let before = self.ready.len();
                self.poll_input()?;
                if self.ready.len() == before || self.state != State::Online {
                    break;
                }
            }
        }
        self.ready.clear();
        Ok(())
    }

    fn set_dtr(&mut self, _level: bool) -> std::result::Result<(), LinkError> {
        Err(self.unsupported("driving DTR"))
    }

    fn set_rts(&mut self, _level: bool) -> std::result::Result<(), LinkError> {
        Err(self.unsupported("driving RTS"))
    }

    fn set_break(&mut self, _on: bool) -> std::result::Result<(), LinkError> {
        Err(self.unsupported("a break condition"))
    }

    /// Only records the settings: the far UART's rate and parity are the remote modem's (or
    /// relay's) configuration, out of reach of this connection.
    fn set_line(&mut self, settings: LineSettings) -> std::result::Result<(), LinkError> {
        self.line = settings;
        Ok(())
    }

    fn line(&self) -> LineSettings {
        self.line
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} modem connected to {}; the far UART is assumed at {})",
            self.spec.url(),
            self.spec.profile,
            self.spec.target,
            line_text(self.line)
        )
    }

    /// Escape to command mode and hang up. A failure is logged, not returned: by now the job
    /// is done, and the modem hangs up by itself when the far end goes.
    fn close(&mut self) -> std::result::Result<(), LinkError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if let Err(e) = self.shut_down() {
            tracing::warn!("{}: could not hang up cleanly: {e}", self.spec.url());
        }
        Ok(())
    }
}

impl Drop for ModemLink {
    fn drop(&mut self) {
        // An error path that never called close(): do not leave the modem online.
        let _ = self.close();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A scripted modem: each expected write (a command line, or data) gets its reply; time is
    /// virtual.
    #[derive(Default)]
    pub(crate) struct ScriptState {
        steps: VecDeque<(Vec<u8>, Vec<u8>)>,
        pending: Vec<u8>,
        pub(crate) written: Vec<u8>,
        rx: VecDeque<u8>,
        now: Duration,
        chunk: usize,
        carrier: Option<bool>,
        unexpected: Vec<String>,
        dtr: Vec<bool>,
    }

    #[derive(Clone, Default)]
    pub(crate) struct Script(Arc<Mutex<ScriptState>>);

    impl Script {
        fn lock(&self) -> std::sync::MutexGuard<'_, ScriptState> {
            self.0.lock().expect("test setup")
        }

        /// Expect `cmd` + CR and answer `reply` (lines wrapped as "\r\nLINE\r\n").
        fn at(&self, cmd: &str, reply: &[&str]) -> &Self {
            let mut r = Vec::new();
            for line in reply {
                r.extend_from_slice(format!("\r\n{line}\r\n").as_bytes());
            }
            self.raw(format!("{cmd}\r").as_bytes(), &r)
        }

        /// Expect these bytes and answer those.
        fn raw(&self, expect: &[u8], reply: &[u8]) -> &Self {
            self.lock()
                .steps
                .push_back((expect.to_vec(), reply.to_vec()));
            self
        }

        /// Bytes the modem sends without being asked.
        fn inject(&self, bytes: &[u8]) {
            self.lock().rx.extend(bytes);
        }

        fn check_done(&self) {
            let s = self.lock();
            assert!(
                s.unexpected.is_empty(),
                "unexpected writes: {:?}",
                s.unexpected
            );
            let left: Vec<String> = s
                .steps
                .iter()
                .map(|(e, _)| String::from_utf8_lossy(e).into_owned())
                .collect();
            assert!(left.is_empty(), "steps left: {left:?}");
        }

        fn written_text(&self) -> String {
            String::from_utf8_lossy(&self.lock().written).into_owned()
        }
    }

    impl ModemIo for Script {
        fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
            let mut s = self.lock();
            s.written.extend_from_slice(data);
            s.pending.extend_from_slice(data);
            loop {
                let Some((expect, _)) = s.steps.front() else {
                    if !s.pending.is_empty() {
                        let p = String::from_utf8_lossy(&s.pending).into_owned();
                        s.unexpected.push(p);
                        s.pending.clear();
                    }
                    break;
                };
                if s.pending.starts_with(expect) {
                    let n = expect.len();
                    let (_, reply) = s.steps.pop_front().unwrap_or_default();
                    s.pending.drain(..n);
                    s.rx.extend(reply);
                    continue;
                }
                if !expect.starts_with(&s.pending) {
                    let p = String::from_utf8_lossy(&s.pending).into_owned();
                    let e = String::from_utf8_lossy(expect).into_owned();
                    s.unexpected.push(format!("{p:?} (expected {e:?})"));
                    s.pending.clear();
                }
                break;
            }
            Ok(())
        }

        fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
            let mut s = self.lock();
            if s.rx.is_empty() {
                s.now += timeout;
                return Ok(0);
            }
            let chunk = if s.chunk == 0 { usize::MAX } else { s.chunk };
            let n = buf.len().min(s.rx.len()).min(chunk);
            for (slot, b) in buf.iter_mut().zip(s.rx.drain(..n)) {
                *slot = b;
            }
            Ok(n)
        }

        fn clear_input(&mut self) -> std::io::Result<()> {
            self.lock().rx.clear();
            Ok(())
        }

        fn carrier(&mut self) -> Option<bool> {
            self.lock().carrier
        }

        fn set_dtr(&mut self, on: bool) -> std::io::Result<()> {
            self.lock().dtr.push(on);
            Ok(())
        }

        fn now(&self) -> Duration {
            self.lock().now
        }

        fn sleep(&mut self, d: Duration) {
            self.lock().now += d;
        }
    }

    fn spec(url: &str) -> ModemSpec {
        ModemSpec::parse(url).expect("test setup")
    }

    fn parse_err(url: &str) -> String {
        match ModemSpec::parse(url) {
            Ok(s) => panic!("{url} parsed as {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The common start of every cellular dialect (echo on until ATE0).
    fn cellular_start(s: &Script) {
        s.raw(b"AT\r", b"AT\r\r\nOK\r\n")
            .raw(b"ATE0\r", b"ATE0\r\r\nOK\r\n")
            .at("ATV1", &["OK"])
            .at("AT+CMEE=2", &["OK"])
            .at("AT&C1", &["OK"])
            .at("AT+CPIN?", &["+CPIN: READY", "OK"]);
    }

    fn open(url: &str, s: &Script) -> std::result::Result<ModemLink, LinkError> {
        ModemLink::with_io(&spec(url), LineSettings::default(), Box::new(s.clone()))
    }

    fn open_err(url: &str, s: &Script) -> String {
        match open(url, s) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        }
    }

    const TELIT: &str = "/dev/ttyUSB2?profile=telit&apn=internet&host=203.0.113.7&port=7000";
    const SIMCOM: &str = "/dev/ttyS1?profile=simcom&apn=web&host=relay.example&port=2000";

    fn telit_dial(s: &Script) {
        cellular_start(s);
        s.at("AT+CGDCONT=1,\"IP\",\"internet\"", &["OK"])
            .at("AT#SGACT?", &["#SGACT: 1,0", "OK"])
            .at("AT#SGACT=1,1", &["#SGACT: 10.0.0.2", "OK"])
            .at("AT#SCFG=1,1,300,0,600,256", &["OK"])
            .at("AT#SKIPESC=1", &["OK"])
            .at("AT#SD=1,0,7000,\"203.0.113.7\",0,0,0", &["CONNECT"]);
    }

    fn read_n(link: &mut ModemLink, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < n {
            let k = link
                .read(&mut buf, Duration::from_secs(5))
                .expect("test setup");
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    #[test]
    fn spec_parses() {
        let s = spec("/dev/ttyUSB2?profile=Telit&apn=internet.v6%2Dx&host=[2001:db8::1]&port=7000&baud=921600&guard=100ms&timeout=30s&pin=1234&flow=rtscts");
        assert_eq!(s.path, "/dev/ttyUSB2");
        assert_eq!(s.profile, Profile::Telit);
        assert_eq!(s.apn.as_deref(), Some("internet.v6-x"));
        assert_eq!(
            s.target,
            DialTarget::Tcp {
                host: "2001:db8::1".into(),
                port: 7000
            }
        );
        assert_eq!(s.target.to_string(), "[2001:db8::1]:7000");
        assert_eq!(s.baud, 921_600);
        assert_eq!(s.guard, Duration::from_millis(100));
        assert_eq!(s.guard_units(), 5);
        assert!(s.guard_given);
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.flow, Flow::RtsCts);
        let s = spec("/dev/ttyS0?profile=hayes&number=T5551234");
        assert_eq!(s.target, DialTarget::Number("T5551234".into()));
        assert_eq!(s.baud, DEFAULT_BAUD);
        assert_eq!(s.guard, DEFAULT_GUARD);
        assert!(!s.guard_given);
        let s = spec("/dev/ttyS0?profile=simcom&apn=&host=h&port=1&esc=off");
        assert_eq!(s.apn.as_deref(), Some(""));
        assert!(!s.escape);
        // Guard times round up to S12's 20 ms units.
        assert_eq!(
            spec("/dev/x?profile=hayes&host=h&port=1&guard=30ms").guard,
            Duration::from_millis(40)
        );
    }

    #[test]
    fn spec_errors_name_the_valid_values() {
        let e = parse_err("/dev/x?apn=a&host=h&port=1");
        assert!(
            e.contains("profile=") && e.contains("telit, simcom, ublox, quectel or hayes"),
            "{e}"
        );
        let e = parse_err("/dev/x?profile=nokia&apn=a&host=h&port=1");
        assert!(e.contains("nokia") && e.contains("quectel"), "{e}");
        let e = parse_err("/dev/x?profile=telit&apn=a&host=h&port=1&colour=red");
        assert!(e.contains("colour") && e.contains("guard"), "{e}");
        assert!(parse_err("?profile=telit").contains("serial port"));
        assert!(parse_err("/dev/x?profile=telit&apn=a&host=h").contains("port="));
        assert!(parse_err("/dev/x?profile=telit&apn=a&port=1").contains("host="));
        assert!(parse_err("/dev/x?profile=telit&apn=a").contains("host= and port= are required"));
        assert!(parse_err("/dev/x?profile=telit&host=h&port=1").contains("apn="));
        assert!(parse_err("/dev/x?profile=hayes").contains("number="));
        assert!(parse_err("/dev/x?profile=hayes&number=1&apn=x").contains("cellular"));
        assert!(parse_err("/dev/x?profile=telit&apn=a&number=1").contains("hayes"));
        assert!(parse_err("/dev/x?profile=telit&apn=a&host=h&port=1&esc=off").contains("simcom"));
        assert!(parse_err("/dev/x?profile=telit&apn=a&host=h&port=0").contains("1 to 65535"));
        assert!(parse_err("/dev/x?profile=telit&apn=a&host=h&port=1&guard=10s").contains("5.1s"));
        assert!(parse_err("/dev/x?profile=telit&apn=a\"b&host=h&port=1").contains("quotes"));
        assert!(parse_err("/dev/x?profile=telit&apn=a&host=h&port=1&pin=12").contains("PIN"));
        assert!(parse_err("/dev/x?profile=telit&profile=telit").contains("twice"));
        assert!(parse_err("/dev/x?profile=telit&apn=%zz").contains("escape"));
    }

    #[test]
    fn telit_dials_passes_data_and_hangs_up() {
        let s = Script::default();
        telit_dial(&s);
        s.raw(&[0x7F], &[0x79]);
        let mut link = open(TELIT, &s).expect("test setup");
        link.write_all(&[0x7F]).expect("test setup");
        assert_eq!(read_n(&mut link, 1), [0x79]);
        assert!(link
            .describe()
            .contains("telit modem connected to 203.0.113.7:7000"));
        // Closing: silence, +++, silence, OK, hang up.
        s.raw(b"+++", b"\r\nOK\r\n").at("AT#SH=1", &["OK"]);
        let before = s.lock().now;
        link.close().expect("test setup");
        assert!(
            s.lock().now - before >= DEFAULT_GUARD,
            "the guard time was kept"
        );
        s.check_done();
        let text = s.written_text();
        assert!(text.ends_with("\u{7f}+++AT#SH=1\r"), "{text:?}");
    }

    #[test]
    fn telit_takes_an_active_context_and_falls_back_to_a_100ms_send_timer() {
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+CGDCONT=1,\"IP\",\"internet\"", &["OK"])
            .at("AT#SGACT?", &["#SGACT: 1,1", "OK"])
            .at(
                "AT#SCFG=1,1,300,0,600,256",
                &["+CME ERROR: operation not supported"],
            )
            .at("AT#SCFG=1,1,300,0,600,1", &["OK"])
            .at("AT#SKIPESC=1", &["OK"])
            .at("AT#SD=1,0,7000,\"203.0.113.7\",0,0,0", &["CONNECT"]);
        let link = open(TELIT, &s).expect("test setup");
        s.check_done();
        std::mem::forget(link); // no hang-up script
    }

    #[test]
    fn simcom_dials_with_cifsr_and_closes() {
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+CIPSHUT", &["SHUT OK"])
            .at("AT+CIPMODE=1", &["OK"])
            .at("AT+CIPCCFG=5,2,1,1", &["OK"])
            .at("AT+CSTT=\"web\"", &["OK"])
            .at("AT+CIICR", &["OK"])
            .at("AT+CIFSR", &["10.0.0.2"])
            .at(
                "AT+CIPSTART=\"TCP\",\"relay.example\",\"2000\"",
                &["OK", "CONNECT"],
            );
        let mut link = open(SIMCOM, &s).expect("test setup");
        s.check_done();
        s.raw(b"+++", b"\r\nOK\r\n")
            .at("AT+CIPCLOSE", &["CLOSE OK"])
            .at("AT+CIPSHUT", &["SHUT OK"]);
        link.close().expect("test setup");
        s.check_done();
    }

    #[test]
    fn ublox_uses_the_socket_it_is_given() {
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+CGDCONT=1,\"IP\",\"iot\"", &["OK"])
            .at("AT+CGACT?", &["+CGACT: 1,0", "OK"])
            .at("AT+CGACT=1,1", &["OK"])
            .at("AT+USOCR=6", &["+USOCR: 3", "OK"])
            .at("AT+USOCO=3,\"h\",9", &["OK"])
            .at("AT+UDCONF=5,3,100", &["OK"])
            .at("AT+USODL=3", &["CONNECT"]);
        let mut link = open("/dev/x?profile=ublox&apn=iot&host=h&port=9", &s).expect("test setup");
        s.check_done();
        s.raw(b"+++", b"\r\nDISCONNECT\r\n\r\nOK\r\n")
            .at("AT+USOCL=3", &["OK"]);
        link.close().expect("test setup");
        s.check_done();
    }

    #[test]
    fn quectel_opens_in_transparent_mode() {
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+QICSGP=1,1,\"iot\",\"\",\"\",1", &["OK"])
            .at("AT+QIACT?", &["OK"])
            .at("AT+QIACT=1", &["OK"])
            .at("AT+QICFG=\"transwaittm\",0", &["OK"])
            .at("AT+QIOPEN=1,0,\"TCP\",\"h\",9,0,2", &["CONNECT"]);
        let mut link =
            open("/dev/x?profile=quectel&apn=iot&host=h&port=9", &s).expect("test setup");
        s.check_done();
        s.raw(b"+++", b"\r\nOK\r\n").at("AT+QICLOSE=0", &["OK"]);
        link.close().expect("test setup");
        s.check_done();
    }

    #[test]
    fn hayes_dials_a_number_or_a_host_and_sets_the_guard_time() {
        let s = Script::default();
        s.raw(b"AT\r", b"AT\r\r\nOK\r\n")
            .raw(b"ATE0\r", b"ATE0\r0\r") // numeric codes until ATV1
            .at("ATV1", &["OK"])
            .at("AT&C1", &["OK"])
            .at("ATS12=10", &["OK"])
            .at("ATDT5551234", &["CONNECT 9600"]);
        let mut link =
            open("/dev/x?profile=hayes&number=T5551234&guard=200ms", &s).expect("test setup");
        s.check_done();
        s.raw(b"+++", b"\r\nOK\r\n").at("ATH", &["OK"]);
        link.close().expect("test setup");
        s.check_done();
        let s = Script::default();
        s.at("AT", &["OK"])
            .at("ATE0", &["OK"])
            .at("ATV1", &["OK"])
            .at("AT&C1", &["ERROR"])
            .at("ATDTexample.org:23", &["CONNECT"]);
        let link = open("/dev/x?profile=hayes&host=example.org&port=23", &s).expect("test setup");
        s.check_done();
        std::mem::forget(link);
    }

    #[test]
    fn an_error_reply_names_the_command_the_answer_and_a_fix() {
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+CGDCONT=1,\"IP\",\"internet\"", &["OK"])
            .at("AT#SGACT?", &["#SGACT: 1,0", "OK"])
            .at("AT#SGACT=1,1", &["+CME ERROR: activation failed"]);
        let e = open_err(TELIT, &s);
        assert!(e.contains("modem:/dev/ttyUSB2"), "{e}");
        assert!(e.contains("`AT#SGACT=1,1`"), "{e}");
        assert!(e.contains("+CME ERROR: activation failed"), "{e}");
        assert!(e.contains("APN"), "{e}");
    }

    #[test]
    fn a_failed_dial_names_the_host() {
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+CIPSHUT", &["SHUT OK"])
            .at("AT+CIPMODE=1", &["OK"])
            .at("AT+CIPCCFG=5,2,1,1", &["OK"])
            .at("AT+CSTT=\"web\"", &["OK"])
            .at("AT+CIICR", &["OK"])
            .at("AT+CIFSR", &["10.0.0.2"])
            .at(
                "AT+CIPSTART=\"TCP\",\"relay.example\",\"2000\"",
                &["OK", "CONNECT FAIL"],
            );
        let e = open_err(SIMCOM, &s);
        assert!(
            e.contains("CONNECT FAIL") && e.contains("relay.example:2000"),
            "{e}"
        );
        assert!(e.contains("host="), "{e}");
    }

    #[test]
    fn a_silent_modem_times_out_after_an_escape_attempt() {
        let s = Script::default();
        let e = open_err(TELIT, &s);
        assert!(e.contains("does not answer AT"), "{e}");
        let text = s.written_text();
        assert!(text.starts_with("AT\rAT\rAT\rAT\r+++"), "{text:?}");
        // A command that never completes times out with the command named.
        let s = Script::default();
        cellular_start(&s);
        s.at("AT+CGDCONT=1,\"IP\",\"internet\"", &["OK"])
            .at("AT#SGACT?", &["#SGACT: 1,0", "OK"])
            .raw(b"AT#SGACT=1,1\r", b"");
        let e = open_err(&format!("{TELIT}&timeout=30s"), &s);
        assert!(
            e.contains("`AT#SGACT=1,1` got no final result code within 30.0s"),
            "{e}"
        );
    }

    #[test]
    fn the_sim_pin_is_sent_when_asked_for_and_kept_out_of_messages() {
        let start = |s: &Script, cpin: &str| {
            s.at("AT", &["OK"])
                .at("ATE0", &["OK"])
                .at("ATV1", &["OK"])
                .at("AT+CMEE=2", &["OK"])
                .at("AT&C1", &["OK"])
                .at("AT+CPIN?", &[cpin, "OK"]);
        };
        let s = Script::default();
        start(&s, "+CPIN: SIM PIN");
        let e = open_err(TELIT, &s);
        assert!(e.contains("pin="), "{e}");
        let s = Script::default();
        start(&s, "+CPIN: SIM PIN");
        s.at("AT+CPIN=\"4321\"", &["+CME ERROR: incorrect password"]);
        let e = open_err(&format!("{TELIT}&pin=4321"), &s);
        assert!(e.contains("AT+CPIN=****") && !e.contains("4321"), "{e}");
        let s = Script::default();
        start(&s, "+CPIN: SIM PUK");
        assert!(open_err(TELIT, &s).contains("SIM PUK"));
    }

    fn online(chunk: usize) -> (Script, ModemLink) {
        let s = Script::default();
        telit_dial(&s);
        let link = open(TELIT, &s).expect("test setup");
        s.check_done();
        s.lock().chunk = chunk;
        (s, link)
    }

    fn read_all(link: &mut ModemLink) -> (Vec<u8>, Option<LinkError>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match link.read(&mut buf, Duration::from_secs(1)) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(LinkError::Timeout(_)) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    #[test]
    fn no_carrier_in_the_stream_ends_the_link_after_the_data_before_it() {
        for chunk in [0, 1, 3] {
            let (s, mut link) = online(chunk);
            s.inject(b"\x79\r\n\x79\r\nNO CARRIER\r\n");
            let (got, err) = read_all(&mut link);
            assert_eq!(got, b"\x79\r\n\x79", "chunk {chunk}");
            let err = err.expect("the link ends").to_string();
            assert!(
                err.contains("NO CARRIER") && err.contains("dropped"),
                "{err}"
            );
            // Writing now would reach the modem's command interpreter: refused.
            let err = link.write_all(&[0x7F]).expect_err("refused").to_string();
            assert!(err.contains("NO CARRIER"), "{err}");
            // Closing after a drop only hangs up (no escape).
            s.at("AT#SH=1", &["OK"]);
            link.close().expect("test setup");
            s.check_done();
        }
    }

    #[test]
    fn a_drop_reported_before_a_write_stops_the_write() {
        let (s, mut link) = online(0);
        s.inject(b"\r\nNO CARRIER\r\n");
        assert!(link.write_all(b"\x31\xCE").is_err());
        assert!(!s.lock().written.ends_with(&[0x31, 0xCE]));
        std::mem::forget(link);
    }

    #[test]
    fn a_possible_report_is_held_only_until_it_is_ruled_out() {
        let (s, mut link) = online(0);
        // A tail that could start NO CARRIER comes out after HOLD, not at the caller's timeout.
        s.inject(b"\x79\r\nNO CARR");
        let mut buf = [0u8; 64];
        let n = link.read(&mut buf, Duration::from_secs(10)).expect("data");
        assert_eq!(&buf[..n], b"\x79");
        let before = s.lock().now;
        let n = link.read(&mut buf, Duration::from_secs(10)).expect("data");
        assert_eq!(&buf[..n], b"\r\nNO CARR");
        assert!(s.lock().now - before <= HOLD + Duration::from_millis(1));
        // A byte that rules it out releases it at once.
        s.inject(b"\r\nNO");
        s.inject(b"PE");
        let (got, err) = read_all(&mut link);
        assert_eq!(got, b"\r\nNOPE");
        assert!(err.is_none());
        // With a short caller timeout the held tail comes out at the timeout.
        s.inject(b"\r");
        let n = link.read(&mut buf, Duration::from_millis(5)).expect("data");
        assert_eq!(&buf[..n], b"\r");
        // CLOSED is SIMCom's report, data for Telit.
        s.inject(b"\r\nCLOSED\r\n");
        let (got, err) = read_all(&mut link);
        assert_eq!(got, b"\r\nCLOSED\r\n");
        assert!(err.is_none());
        std::mem::forget(link);
    }

    #[test]
    fn simcom_closed_ends_the_link() {
        let mut watch = CarrierWatch::new(Profile::Simcom.drop_reports());
        let mut out = VecDeque::new();
        let found = watch.feed(b"ab\r\nCLOSED\r\nxx", Duration::ZERO, &mut out, &mut || {
            true
        });
        assert_eq!(found, Some(&b"\r\nCLOSED\r\n"[..]));
        assert_eq!(out, b"ab");
    }

    #[test]
    fn with_dcd_wired_the_text_alone_is_data() {
        let s = Script::default();
        telit_dial(&s);
        s.lock().carrier = Some(true);
        let mut link = open(TELIT, &s).expect("test setup");
        s.inject(b"\r\nNO CARRIER\r\n");
        let (got, err) = read_all(&mut link);
        assert_eq!(got, b"\r\nNO CARRIER\r\n");
        assert!(err.is_none());
        // DCD dropping ends the link even without text.
        s.lock().carrier = Some(false);
        let err = link
            .read(&mut [0u8; 4], Duration::from_secs(1))
            .expect_err("dropped")
            .to_string();
        assert!(err.contains("DCD"), "{err}");
        std::mem::forget(link);
    }

    #[test]
    fn line_control_is_unsupported_and_the_line_is_recorded() {
        let (_s, mut link) = online(0);
        for r in [
            link.set_dtr(true),
            link.set_rts(false),
            link.set_break(true),
        ] {
            match r {
                Err(LinkError::Unsupported { what, link }) => {
                    assert!(what.contains("modem"), "{what}");
                    assert_eq!(link, "modem:/dev/ttyUSB2");
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
        let none = LineSettings {
            baud: 57_600,
            parity: crate::link::Parity::None,
        };
        link.set_line(none).expect("test setup");
        assert_eq!(link.line(), none);
        assert!(link.describe().contains("57600 8N1"));
        std::mem::forget(link);
    }

    #[test]
    fn discard_input_still_sees_a_drop() {
        let (s, mut link) = online(0);
        s.inject(b"stale\r\nNO CARRIER\r\n");
        link.discard_input().expect("test setup");
        assert!(link.read(&mut [0u8; 4], Duration::from_secs(1)).is_err());
        std::mem::forget(link);
    }

    #[test]
    fn a_failed_escape_is_not_an_error_at_close() {
        let (s, mut link) = online(0);
        s.raw(b"+++", b"");
        link.close().expect("close does not fail");
        s.check_done();
    }
}
