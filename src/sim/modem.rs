//! A simulated AT modem on a pseudo-terminal, to rehearse `modem:` ports against the simulated
//! chip (`stm32boot sim-modem --profile telit --pty`).
//!
//! [`SimModem`] is the modem itself, with no I/O and an explicit clock, so that unit tests can
//! drive it byte by byte: a Hayes command interpreter (echo until `ATE0`, `ATV0`/`ATV1` result
//! codes, `ATS12` guard time, `+CME ERROR` after `AT+CMEE`) and a table of extended commands per
//! dialect ([`Profile`]), as links.md §5 gives them:
//!
//! - Telit: `+CGDCONT`, `#SGACT` (answers `#SGACT: 10.0.0.2`), `#SCFG`, `#SKIPESC`, `#SD`
//!   (online mode), `#SO`, `#SH`;
//! - SIMCom: the `IP INITIAL → IP START → IP GPRSACT → IP STATUS` states of `+CSTT`, `+CIICR`,
//!   `+CIFSR` (a bare IP address, no OK), `+CIPMODE` (only in IP INITIAL), `+CIPCCFG` (with
//!   `esc`), `+CIPSTART` (OK, then CONNECT), `+CIPCLOSE`, `+CIPSHUT`, `+CIPSTATUS`;
//! - u-blox: `+CGACT`, `+USOCR`, `+USOCO`, `+UDCONF`, direct link `+USODL`, `+USOCL`;
//! - Quectel: `+QICSGP`, `+QIACT`, `+QICFG`, `+QIOPEN` access mode 2, `+QICLOSE`;
//! - Hayes: `ATD<host>:<port>` (as TCP modem emulators do), `ATH`, `ATO`.
//!
//! In data mode it forwards bytes both ways and watches for the escape: exactly three `+` with
//! the guard time of silence before and after (Telit: right after CONNECT no silence before is
//! needed). Telit forwards the `+` to the peer unless `AT#SKIPESC=1`; the others hold them back
//! until they know whether it was an escape. SIMCom's `esc=0` turns detection off. When the
//! peer closes, it prints `NO CARRIER` (SIMCom: `CLOSED`) and returns to command mode; the
//! `--cut-after` fault does the same after that many bytes towards the chip.
//!
//! [`ModemPty`] serves it on a pseudo-terminal and makes the real TCP connections it dials.
//! A pseudo-terminal carries no parity and no modem lines: the host↔modem hop is 8N1, DTR and
//! DCD are not modelled.

use crate::error::{Error, Result};
use crate::transport::modem::Profile;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The address the simulated network gives the modem.
pub const SIM_IP: &str = "10.0.0.2";
/// One unit of S12 (1/50 s).
const S12_UNIT: Duration = Duration::from_millis(20);
/// Longest command line kept.
const LINE_MAX: usize = 1024;
/// Most bytes kept for the peer while in command mode, or for the host while it is not reading.
const BACKLOG_MAX: usize = 1 << 20;

/// How the simulated modem behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimModemConfig {
    /// Its AT dialect.
    pub profile: Profile,
    /// The escape guard time at start (S12; `ATS12` changes it where the dialect has it).
    pub guard: Duration,
    /// Cut the connection after this many bytes towards the chip (once).
    pub cut_after: Option<u64>,
    /// Answer every dial with a failure, without connecting.
    pub fail_dial: bool,
}

impl SimModemConfig {
    /// The defaults for `profile`: 1 s guard time, no faults.
    pub fn new(profile: Profile) -> SimModemConfig {
        SimModemConfig {
            profile,
            guard: Duration::from_secs(1),
            cut_after: None,
            fail_dial: false,
        }
    }
}

/// What the modem asks of the network side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRequest {
    /// Open a TCP connection; answer with [`SimModem::dial_done`].
    Dial {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// Close the TCP connection.
    HangUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialKind {
    /// CONNECT, then data mode.
    Online,
    /// OK, the socket open in command mode (u-blox `+USOCO`).
    Socket,
    /// SIMCom `+CIPSTART` without `+CIPMODE=1`: `CONNECT OK`, command mode.
    SimcomCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Command,
    Dialing(DialKind),
    Data,
}

/// SIMCom's connection states (`AT+CIPSTATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpState {
    Initial,
    Start,
    GprsAct,
    Status,
    Connecting,
    Connected,
    Closed,
}

impl IpState {
    fn name(self) -> &'static str {
        match self {
            IpState::Initial => "IP INITIAL",
            IpState::Start => "IP START",
            IpState::GprsAct => "IP GPRSACT",
            IpState::Status => "IP STATUS",
            IpState::Connecting => "TCP CONNECTING",
            IpState::Connected => "CONNECT OK",
            IpState::Closed => "TCP CLOSED",
        }
    }
}

/// A final result code.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Code {
    Ok,
    Error,
    /// `+CME ERROR: n` (27.007 numbers).
    Cme(u16),
    Connect,
    NoCarrier,
    /// A dialect's own final line (`SHUT OK`, `CONNECT FAIL`, an IP address).
    Text(String),
}

fn cme_text(n: u16) -> &'static str {
    match n {
        3 => "operation not allowed",
        4 => "operation not supported",
        10 => "SIM not inserted",
        30 => "no network service",
        50 => "incorrect parameters",
        _ => "unknown",
    }
}

/// What a command did.
enum Step {
    /// Fine: go on with the rest of the line.
    Next,
    /// Stop the line with this result.
    Done(Code),
    /// Stop the line; the command answered (or will answer) by itself.
    Answered,
}

/// How an extended command was written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `AT+X`.
    Exec,
    /// `AT+X?`.
    Read,
    /// `AT+X=?`.
    Test,
    /// `AT+X=a,b`: the parameters, quotes removed.
    Set(Vec<String>),
}

/// An extended command (`+NAME` or `#NAME`).
#[derive(Debug, Clone)]
struct Ext {
    name: String,
    form: Form,
}

impl Ext {
    fn args(&self) -> &[String] {
        match &self.form {
            Form::Set(a) => a,
            _ => &[],
        }
    }

    /// Parameter `i` as a number within `range`.
    fn num(&self, i: usize, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        self.args()
            .get(i)
            .and_then(|a| a.trim().parse::<i64>().ok())
            .filter(|n| range.contains(n))
    }

    fn text(&self, i: usize) -> Option<&str> {
        self.args().get(i).map(|s| s.as_str())
    }
}

/// Split at the first `;` outside quotes.
fn split_extended(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, "")
}

fn parse_ext(s: &str) -> Ext {
    let end = s
        .char_indices()
        .skip(1)
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(s.len(), |(i, _)| i);
    let name = s[..end].to_ascii_uppercase();
    let rest = s[end..].trim();
    let form = if rest.is_empty() {
        Form::Exec
    } else if rest == "?" {
        Form::Read
    } else if rest == "=?" {
        Form::Test
    } else if let Some(params) = rest.strip_prefix('=') {
        let mut args = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in params.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => args.push(std::mem::take(&mut cur).trim().to_string()),
                _ => cur.push(c),
            }
        }
        args.push(cur.trim().to_string());
        Form::Set(args)
    } else {
        // Junk after the name: no handler takes it.
        return Ext {
            name: format!("{name}{rest}"),
            form: Form::Exec,
        };
    };
    Ext { name, form }
}

type Handler = fn(&mut SimModem, &Ext) -> Step;

/// Commands every cellular dialect has.
const CELLULAR: &[(&str, Handler)] = &[
    ("+CMEE", SimModem::cmee),
    ("+CPIN", SimModem::cpin),
    ("+CGDCONT", SimModem::cgdcont),
    ("+IFC", SimModem::accept),
    ("+CSQ", SimModem::csq),
    ("+CREG", SimModem::creg),
    ("+CEREG", SimModem::creg),
    ("+CGMI", SimModem::cgmi),
];

const TELIT: &[(&str, Handler)] = &[
    ("#SGACT", SimModem::telit_sgact),
    ("#SCFG", SimModem::telit_scfg),
    ("#SKIPESC", SimModem::telit_skipesc),
    ("#SD", SimModem::telit_sd),
    ("#SO", SimModem::telit_so),
    ("#SH", SimModem::telit_sh),
];

const SIMCOM: &[(&str, Handler)] = &[
    ("+CIPMODE", SimModem::simcom_cipmode),
    ("+CIPCCFG", SimModem::simcom_cipccfg),
    ("+CSTT", SimModem::simcom_cstt),
    ("+CIICR", SimModem::simcom_ciicr),
    ("+CIFSR", SimModem::simcom_cifsr),
    ("+CIPSTART", SimModem::simcom_cipstart),
    ("+CIPCLOSE", SimModem::simcom_cipclose),
    ("+CIPSHUT", SimModem::simcom_cipshut),
    ("+CIPSTATUS", SimModem::simcom_cipstatus),
];

const UBLOX: &[(&str, Handler)] = &[
    ("+CGACT", SimModem::ublox_cgact),
    ("+USOCR", SimModem::ublox_usocr),
    ("+USOCO", SimModem::ublox_usoco),
    ("+UDCONF", SimModem::ublox_udconf),
    ("+USODL", SimModem::ublox_usodl),
    ("+USOCL", SimModem::ublox_usocl),
];

const QUECTEL: &[(&str, Handler)] = &[
    ("+QICSGP", SimModem::quectel_qicsgp),
    ("+QIACT", SimModem::quectel_qiact),
    ("+QIDEACT", SimModem::quectel_qideact),
    ("+QICFG", SimModem::quectel_qicfg),
    ("+QIOPEN", SimModem::quectel_qiopen),
    ("+QICLOSE", SimModem::quectel_qiclose),
];

fn dialect_table(profile: Profile) -> &'static [(&'static str, Handler)] {
    match profile {
        Profile::Telit => TELIT,
        Profile::Simcom => SIMCOM,
        Profile::Ublox => UBLOX,
        Profile::Quectel => QUECTEL,
        Profile::Hayes => &[],
    }
}

/// The simulated modem: feed it what the host sends, what the network delivers and the time;
/// take what it sends to the host, to the network, and its requests.
#[derive(Debug)]
pub struct SimModem {
    cfg: SimModemConfig,
    now: Duration,
    mode: Mode,
    echo: bool,
    verbose: bool,
    cmee: u8,
    guard: Duration,
    line: Vec<u8>,
    // Network.
    socket_open: bool,
    backlog: Vec<u8>,
    context_active: bool,
    apn: Option<String>,
    skipesc: bool,
    esc_enabled: bool,
    cipmode: bool,
    ip_state: IpState,
    ublox_socket: Option<i64>,
    next_socket: i64,
    // Escape detection.
    last_host: Duration,
    fresh: bool,
    plus: u8,
    plus_at: Duration,
    held: Vec<u8>,
    // Counters.
    to_net_total: u64,
    to_host_total: u64,
    // Outputs.
    to_host: Vec<u8>,
    to_net: Vec<u8>,
    requests: VecDeque<NetRequest>,
    log: Vec<String>,
}

impl SimModem {
    /// A modem in command mode, echo on, verbose result codes.
    pub fn new(cfg: SimModemConfig) -> SimModem {
        let units = cfg.guard.as_nanos().div_ceil(S12_UNIT.as_nanos()).min(255) as u32;
        SimModem {
            guard: S12_UNIT * units,
            cfg,
            now: Duration::ZERO,
            mode: Mode::Command,
            echo: true,
            verbose: true,
            cmee: 0,
            line: Vec::new(),
            socket_open: false,
            backlog: Vec::new(),
            context_active: false,
            apn: None,
            skipesc: false,
            esc_enabled: true,
            cipmode: false,
            ip_state: IpState::Initial,
            ublox_socket: None,
            next_socket: 0,
            last_host: Duration::ZERO,
            fresh: false,
            plus: 0,
            plus_at: Duration::ZERO,
            held: Vec::new(),
            to_net_total: 0,
            to_host_total: 0,
            to_host: Vec::new(),
            to_net: Vec::new(),
            requests: VecDeque::new(),
            log: Vec::new(),
        }
    }

    /// Its dialect.
    pub fn profile(&self) -> Profile {
        self.cfg.profile
    }

    /// Whether it is in data mode.
    pub fn is_online(&self) -> bool {
        self.mode == Mode::Data
    }

    /// Whether a TCP connection is open (in data or command mode).
    pub fn is_connected(&self) -> bool {
        self.socket_open
    }

    /// The escape guard time now in force.
    pub fn guard(&self) -> Duration {
        self.guard
    }

    /// Data bytes forwarded towards the chip and towards the host so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.to_net_total, self.to_host_total)
    }

    /// Bytes from the host (the pseudo-terminal) at time `now`.
    pub fn host_input(&mut self, now: Duration, bytes: &[u8]) {
        self.now = now;
        for &b in bytes {
            match self.mode {
                Mode::Data => self.data_byte(b),
                // A real modem aborts a dial on a key press; here the dial is quick.
                Mode::Dialing(_) => {}
                Mode::Command => self.command_byte(b),
            }
        }
    }

    /// Bytes from the network peer.
    pub fn net_input(&mut self, now: Duration, bytes: &[u8]) {
        self.now = now;
        if self.mode == Mode::Data {
            self.to_host.extend_from_slice(bytes);
            self.to_host_total += bytes.len() as u64;
        } else if self.socket_open && self.backlog.len() < BACKLOG_MAX {
            self.backlog.extend_from_slice(bytes);
        }
    }

    /// The peer closed the TCP connection.
    pub fn peer_closed(&mut self, now: Duration) {
        self.now = now;
        if !self.socket_open {
            return;
        }
        self.socket_open = false;
        self.backlog.clear();
        if self.cfg.profile == Profile::Simcom {
            self.ip_state = IpState::Closed;
        }
        let text = self.closed_text();
        self.note(format!("the peer closed the connection: {text}"));
        if self.mode == Mode::Data {
            self.drop_to_command();
        } else {
            self.info(text);
        }
    }

    /// The outcome of a [`NetRequest::Dial`].
    pub fn dial_done(&mut self, now: Duration, result: std::result::Result<(), String>) {
        self.now = now;
        let Mode::Dialing(kind) = self.mode else {
            return;
        };
        self.mode = Mode::Command;
        match result {
            Ok(()) => {
                self.socket_open = true;
                if self.cfg.profile == Profile::Simcom {
                    self.ip_state = IpState::Connected;
                }
                match kind {
                    DialKind::Online => {
                        self.note("connected: CONNECT, data mode".into());
                        self.result(Code::Connect);
                        self.enter_data();
                    }
                    DialKind::Socket => {
                        self.note("connected (socket in command mode)".into());
                        self.result(Code::Ok);
                    }
                    DialKind::SimcomCommand => {
                        self.note("connected (non-transparent mode)".into());
                        self.result(Code::Text("CONNECT OK".into()));
                    }
                }
            }
            Err(e) => {
                self.note(format!("the dial failed: {e}"));
                self.dial_failed();
            }
        }
    }

    /// Let time pass: completes an escape sequence once the guard time after it is silent.
    pub fn tick(&mut self, now: Duration) {
        self.now = now;
        if self.mode != Mode::Data || self.plus == 0 {
            return;
        }
        if now.saturating_sub(self.plus_at) < self.guard {
            return;
        }
        if self.plus == 3 {
            self.plus = 0;
            self.held.clear();
            self.mode = Mode::Command;
            let guard = self.guard;
            self.note(format!(
                "escape: +++ with {guard:?} of silence around it; command mode, the connection \
                 stays open"
            ));
            self.result(Code::Ok);
        } else {
            self.plus = 0;
            let held = std::mem::take(&mut self.held);
            self.forward(&held);
        }
    }

    /// When [`SimModem::tick`] next has something to decide.
    pub fn next_deadline(&self) -> Option<Duration> {
        (self.mode == Mode::Data && self.plus > 0).then(|| self.plus_at + self.guard)
    }

    /// Bytes for the host.
    pub fn take_to_host(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_host)
    }

    /// Bytes for the network peer.
    pub fn take_to_net(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_net)
    }

    /// The next request for the network side.
    pub fn take_request(&mut self) -> Option<NetRequest> {
        self.requests.pop_front()
    }

    /// What it did since the last call (AT commands received, connections, escapes).
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    fn note(&mut self, text: String) {
        self.log.push(text);
    }

    fn closed_text(&self) -> &'static str {
        match self.cfg.profile {
            Profile::Simcom => "CLOSED",
            _ => "NO CARRIER",
        }
    }

    fn connect_text(&self) -> &'static str {
        match self.cfg.profile {
            Profile::Hayes => "CONNECT 115200",
            _ => "CONNECT",
        }
    }

    /// An intermediate line.
    fn info(&mut self, text: &str) {
        self.to_host.extend_from_slice(b"\r\n");
        self.to_host.extend_from_slice(text.as_bytes());
        self.to_host.extend_from_slice(b"\r\n");
    }

    fn result(&mut self, code: Code) {
        let numeric = match &code {
            Code::Ok => "0",
            Code::Connect => "1",
            Code::NoCarrier => "3",
            Code::Error | Code::Cme(_) => "4",
            Code::Text(_) => "",
        };
        if !self.verbose && !numeric.is_empty() {
            self.to_host.extend_from_slice(numeric.as_bytes());
            self.to_host.push(b'\r');
            return;
        }
        let text = match code {
            Code::Ok => "OK".to_string(),
            Code::Error => "ERROR".to_string(),
            Code::Cme(n) => match self.cmee {
                0 => "ERROR".to_string(),
                1 => format!("+CME ERROR: {n}"),
                _ => format!("+CME ERROR: {}", cme_text(n)),
            },
            Code::Connect => self.connect_text().to_string(),
            Code::NoCarrier => "NO CARRIER".to_string(),
            Code::Text(t) => t,
        };
        self.info(&text);
    }

    fn command_byte(&mut self, b: u8) {
        if self.echo {
            self.to_host.push(b);
        }
        match b {
            b'\r' => {
                let line = std::mem::take(&mut self.line);
                self.execute(&line);
            }
            b'\n' => {}
            0x08 | 0x7F => {
                self.line.pop();
            }
            // V.250: characters before the "AT" prefix are ignored.
            _ if self.line.len() < 2 => {
                let want = if self.line.is_empty() { b'A' } else { b'T' };
                if b.eq_ignore_ascii_case(&want) {
                    self.line.push(b);
                } else {
                    self.line.clear();
                    if b.eq_ignore_ascii_case(&b'A') {
                        self.line.push(b);
                    }
                }
            }
            _ if self.line.len() < LINE_MAX => self.line.push(b),
            _ => {}
        }
    }

    fn execute(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw).trim().to_string();
        if text.is_empty() {
            return;
        }
        if !text.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("AT")) {
            self.note(format!(
                "ignored a line that is not an AT command: {text:?}"
            ));
            return;
        }
        self.note(format!("AT command: {}", redact(&text)));
        let mut rest: &str = &text[2..];
        loop {
            rest = rest.trim_start();
            let Some(c) = rest.chars().next() else {
                self.result(Code::Ok);
                return;
            };
            let step = match c.to_ascii_uppercase() {
                '+' | '#' => {
                    let (cmd, tail) = split_extended(rest);
                    rest = tail;
                    let ext = parse_ext(cmd);
                    match self.handler(&ext.name) {
                        Some(h) => h(self, &ext),
                        None => Step::Done(Code::Error),
                    }
                }
                'D' => {
                    let dial = rest[1..].to_string();
                    rest = "";
                    self.dial_string(&dial)
                }
                _ => self.basic(&mut rest),
            };
            match step {
                Step::Next => {}
                Step::Done(code) => {
                    self.result(code);
                    return;
                }
                Step::Answered => return,
            }
        }
    }

    fn handler(&self, name: &str) -> Option<Handler> {
        let own = dialect_table(self.cfg.profile);
        let common: &[(&str, Handler)] = if self.cfg.profile.is_cellular() {
            CELLULAR
        } else {
            &[]
        };
        own.iter()
            .chain(common)
            .find(|(n, _)| *n == name)
            .map(|(_, h)| *h)
    }

    /// One basic command (`E0`, `&C1`, `S12=50`, `H`, `O`…) from the front of `rest`.
    fn basic(&mut self, rest: &mut &str) -> Step {
        let s = *rest;
        let mut chars = s.char_indices();
        let Some((_, first)) = chars.next() else {
            return Step::Next;
        };
        let first = first.to_ascii_uppercase();
        let (name, after) = if first == '&' {
            match chars.next() {
                Some((i, c)) => (
                    format!("&{}", c.to_ascii_uppercase()),
                    &s[i + c.len_utf8()..],
                ),
                None => return Step::Done(Code::Error),
            }
        } else {
            (first.to_string(), &s[first.len_utf8()..])
        };
        if name == "S" {
            let digits = after.chars().take_while(char::is_ascii_digit).count();
            let reg: u32 = after[..digits].parse().unwrap_or(u32::MAX);
            let tail = &after[digits..];
            if let Some(q) = tail.strip_prefix('?') {
                *rest = q;
                if reg == 12 {
                    let units = self.guard.as_millis() / S12_UNIT.as_millis();
                    self.info(&format!("{units:03}"));
                } else {
                    self.info("000");
                }
                return Step::Next;
            }
            let Some(v) = tail.strip_prefix('=') else {
                return Step::Done(Code::Error);
            };
            let vd = v.chars().take_while(char::is_ascii_digit).count();
            *rest = &v[vd..];
            let Ok(value) = v[..vd].parse::<u32>() else {
                return Step::Done(Code::Error);
            };
            if reg == 12 {
                if !self.cfg.profile.has_s12() || value > 255 {
                    return Step::Done(Code::Error);
                }
                self.guard = S12_UNIT * value;
                self.note(format!("escape guard time now {:?}", self.guard));
            }
            return Step::Next;
        }
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let n: u32 = after[..digits].parse().unwrap_or(0);
        *rest = &after[digits..];
        match name.as_str() {
            "E" => self.echo = n == 1,
            "V" => self.verbose = n == 1,
            "Q" | "X" | "L" | "M" | "&C" | "&D" | "&K" | "&W" => {}
            "Z" | "&F" => {
                self.echo = true;
                self.verbose = true;
                self.cmee = 0;
            }
            "I" => {
                let p = self.cfg.profile;
                self.info(&format!("stm32boot simulated modem ({p} dialect)"));
            }
            "H" => self.hang_up("ATH"),
            "O" => return self.resume(),
            "A" => return Step::Done(Code::NoCarrier),
            _ => return Step::Done(Code::Error),
        }
        Step::Next
    }

    /// `ATD…`: Hayes dials `host:port`; cellular dialects have no data calls here.
    fn dial_string(&mut self, dial: &str) -> Step {
        if self.cfg.profile.is_cellular() {
            self.note(format!(
                "ATD{dial}: data calls are not modelled, use the socket commands"
            ));
            return Step::Done(Code::Error);
        }
        let target = dial.trim().trim_start_matches(['T', 't', 'P', 'p']).trim();
        let parsed = target.rsplit_once(':').and_then(|(h, p)| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let p = p.parse::<u16>().ok().filter(|p| *p > 0)?;
            (!h.is_empty()).then(|| (h.to_string(), p))
        });
        match parsed {
            Some((host, port)) => self.dial(host, port, DialKind::Online),
            None => {
                self.note(format!(
                    "ATD{dial}: the simulated modem dials HOST:PORT only (no telephone numbers)"
                ));
                Step::Done(Code::NoCarrier)
            }
        }
    }

    fn dial(&mut self, host: String, port: u16, kind: DialKind) -> Step {
        if self.socket_open {
            self.note("dial refused: a connection is already open".into());
            return match self.cfg.profile {
                Profile::Simcom => Step::Done(Code::Text("ALREADY CONNECT".into())),
                _ => Step::Done(Code::Cme(3)),
            };
        }
        self.note(format!("dialling {host}:{port}"));
        self.mode = Mode::Dialing(kind);
        if self.cfg.fail_dial {
            self.dial_done(self.now, Err("refused on purpose (--fail-dial)".into()));
        } else {
            self.requests.push_back(NetRequest::Dial { host, port });
        }
        Step::Answered
    }

    fn dial_failed(&mut self) {
        match self.cfg.profile {
            Profile::Telit | Profile::Hayes => self.result(Code::NoCarrier),
            Profile::Simcom => {
                self.ip_state = IpState::Closed;
                self.result(Code::Text("CONNECT FAIL".into()));
            }
            Profile::Ublox => self.result(Code::Cme(3)),
            Profile::Quectel => self.result(Code::Error),
        }
    }

    fn hang_up(&mut self, why: &str) {
        if self.socket_open {
            self.socket_open = false;
            self.backlog.clear();
            self.requests.push_back(NetRequest::HangUp);
            let (to_net, to_host) = self.totals();
            self.note(format!(
                "hung up ({why}); {to_net} bytes went towards the chip, {to_host} came back"
            ));
        }
    }

    fn resume(&mut self) -> Step {
        if !self.socket_open {
            return Step::Done(Code::NoCarrier);
        }
        self.note("back online".into());
        self.result(Code::Connect);
        self.enter_data();
        Step::Answered
    }

    fn enter_data(&mut self) {
        self.mode = Mode::Data;
        self.fresh = true;
        self.last_host = self.now;
        self.plus = 0;
        self.held.clear();
        let backlog = std::mem::take(&mut self.backlog);
        self.to_host_total += backlog.len() as u64;
        self.to_host.extend_from_slice(&backlog);
    }

    /// The connection is gone while in data mode: report it, back to command mode.
    fn drop_to_command(&mut self) {
        self.mode = Mode::Command;
        self.plus = 0;
        self.held.clear();
        self.line.clear();
        let text = self.closed_text();
        self.info(text);
    }

    fn escape_detection(&self) -> bool {
        self.cfg.profile != Profile::Simcom || self.esc_enabled
    }

    /// Whether the `+` of a possible escape wait until it is known whether they are one.
    fn holds_plus(&self) -> bool {
        self.cfg.profile != Profile::Telit || self.skipesc
    }

    fn data_byte(&mut self, b: u8) {
        let now = self.now;
        if self.plus > 0 {
            if b == b'+' && self.plus < 3 && now.saturating_sub(self.plus_at) < self.guard {
                self.plus += 1;
                self.plus_at = now;
                self.plus_byte(b);
                self.last_host = now;
                return;
            }
            // Not an escape after all.
            self.plus = 0;
            let held = std::mem::take(&mut self.held);
            self.forward(&held);
            if self.mode != Mode::Data {
                return;
            }
        }
        let quiet_before = now.saturating_sub(self.last_host) >= self.guard
            || (self.fresh && self.cfg.profile == Profile::Telit);
        if b == b'+' && self.escape_detection() && quiet_before {
            self.plus = 1;
            self.plus_at = now;
            self.plus_byte(b);
        } else {
            self.forward(&[b]);
        }
        self.last_host = now;
        self.fresh = false;
    }

    fn plus_byte(&mut self, b: u8) {
        if self.holds_plus() {
            self.held.push(b);
        } else {
            self.forward(&[b]);
        }
    }

    /// Send towards the chip, cutting the connection at `--cut-after`.
    fn forward(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.mode != Mode::Data || !self.socket_open {
                return;
            }
            self.to_net.push(b);
            self.to_net_total += 1;
            if self.cfg.cut_after.is_some_and(|n| self.to_net_total >= n) {
                self.cfg.cut_after = None;
                let n = self.to_net_total;
                self.note(format!(
                    "cutting the connection after {n} bytes (--cut-after)"
                ));
                self.hang_up("--cut-after");
                if self.cfg.profile == Profile::Simcom {
                    self.ip_state = IpState::Closed;
                }
                self.drop_to_command();
                return;
            }
        }
    }

    // ---- Commands every cellular dialect has ----

    fn accept(&mut self, _e: &Ext) -> Step {
        Step::Next
    }

    fn cmee(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                let n = self.cmee;
                self.info(&format!("+CMEE: {n}"));
                Step::Next
            }
            Form::Set(_) => match e.num(0, 0..=2) {
                Some(n) => {
                    self.cmee = n as u8;
                    Step::Next
                }
                None => Step::Done(Code::Cme(50)),
            },
            _ => Step::Next,
        }
    }

    fn cpin(&mut self, e: &Ext) -> Step {
        match e.form {
            Form::Read => {
                self.info("+CPIN: READY");
                Step::Next
            }
            Form::Set(_) => Step::Done(Code::Cme(3)),
            _ => Step::Next,
        }
    }

    fn cgdcont(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Set(_) => {
                if e.num(0, 1..=16).is_none() {
                    return Step::Done(Code::Cme(50));
                }
                if e.num(0, 1..=1).is_some() {
                    self.apn = Some(e.text(2).unwrap_or("").to_string());
                }
                Step::Next
            }
            Form::Read => {
                if let Some(apn) = self.apn.clone() {
                    self.info(&format!("+CGDCONT: 1,\"IP\",\"{apn}\",\"0.0.0.0\",0,0"));
                }
                Step::Next
            }
            _ => Step::Next,
        }
    }

    fn csq(&mut self, _e: &Ext) -> Step {
        self.info("+CSQ: 20,0");
        Step::Next
    }

    fn creg(&mut self, e: &Ext) -> Step {
        if e.form == Form::Read {
            let name = e.name.clone();
            self.info(&format!("{name}: 0,1"));
        }
        Step::Next
    }

    fn cgmi(&mut self, _e: &Ext) -> Step {
        let vendor = match self.cfg.profile {
            Profile::Telit => "Telit",
            Profile::Simcom => "SIMCOM_Ltd",
            Profile::Ublox => "u-blox",
            Profile::Quectel => "Quectel",
            Profile::Hayes => "Hayes",
        };
        self.info(vendor);
        Step::Next
    }

    // ---- Telit ----

    fn telit_sgact(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                let on = u8::from(self.context_active);
                self.info(&format!("#SGACT: 1,{on}"));
                Step::Next
            }
            Form::Test => {
                self.info("#SGACT: (1-5),(0,1)");
                Step::Next
            }
            Form::Set(_) => {
                let (Some(_), Some(stat)) = (e.num(0, 1..=5), e.num(1, 0..=1)) else {
                    return Step::Done(Code::Cme(50));
                };
                if stat == 1 {
                    if self.context_active {
                        return Step::Done(Code::Cme(3));
                    }
                    if self.apn.is_none() {
                        self.note("#SGACT: no APN defined (AT+CGDCONT)".into());
                        return Step::Done(Code::Cme(3));
                    }
                    self.context_active = true;
                    self.info(&format!("#SGACT: {SIM_IP}"));
                } else {
                    self.hang_up("context deactivated");
                    self.context_active = false;
                }
                Step::Next
            }
            Form::Exec => Step::Done(Code::Error),
        }
    }

    fn telit_scfg(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                self.info("#SCFG: 1,1,300,90,600,50");
                Step::Next
            }
            Form::Set(a) => {
                let ok = a.len() == 6
                    && e.num(0, 1..=6).is_some()
                    && e.num(1, 0..=5).is_some()
                    && e.num(2, 0..=1500).is_some()
                    && e.num(3, 0..=65535).is_some()
                    && (e.num(4, 10..=1200).is_some() || e.num(4, 0..=0).is_some())
                    && e.num(5, 0..=257).is_some();
                if !ok {
                    return Step::Done(Code::Cme(50));
                }
                let tx = e.num(5, 0..=257).unwrap_or(50);
                let ms = match tx {
                    256 => 10,
                    257 => 20,
                    n => n * 100,
                };
                self.note(format!("send timer txTo={tx} ({ms} ms)"));
                Step::Next
            }
            _ => Step::Next,
        }
    }

    fn telit_skipesc(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                let on = u8::from(self.skipesc);
                self.info(&format!("#SKIPESC: {on}"));
                Step::Next
            }
            Form::Set(_) => match e.num(0, 0..=1) {
                Some(n) => {
                    self.skipesc = n == 1;
                    Step::Next
                }
                None => Step::Done(Code::Cme(50)),
            },
            _ => Step::Next,
        }
    }

    fn telit_sd(&mut self, e: &Ext) -> Step {
        let (Some(_), Some(prot), Some(port), Some(host)) = (
            e.num(0, 1..=6),
            e.num(1, 0..=1),
            e.num(2, 1..=65535),
            e.text(3).filter(|h| !h.is_empty()),
        ) else {
            return Step::Done(Code::Cme(50));
        };
        if prot != 0 {
            self.note("#SD: UDP is not modelled".into());
            return Step::Done(Code::Cme(4));
        }
        if e.args().len() > 6 && e.num(6, 0..=0).is_none() {
            self.note("#SD: command-mode sockets (connMode 1) are not modelled".into());
            return Step::Done(Code::Cme(4));
        }
        if !self.context_active {
            self.note("#SD: the context is not active (AT#SGACT=1,1)".into());
            return Step::Done(Code::Cme(3));
        }
        let host = host.to_string();
        self.dial(host, port as u16, DialKind::Online)
    }

    fn telit_so(&mut self, _e: &Ext) -> Step {
        self.resume()
    }

    fn telit_sh(&mut self, _e: &Ext) -> Step {
        self.hang_up("AT#SH");
        Step::Next
    }

    // ---- SIMCom ----

    fn simcom_cipmode(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                let n = u8::from(self.cipmode);
                self.info(&format!("+CIPMODE: {n}"));
                Step::Next
            }
            Form::Set(_) => {
                if self.ip_state != IpState::Initial {
                    self.note("+CIPMODE is only taken in state IP INITIAL (AT+CIPSHUT)".into());
                    return Step::Done(Code::Error);
                }
                match e.num(0, 0..=1) {
                    Some(n) => {
                        self.cipmode = n == 1;
                        Step::Next
                    }
                    None => Step::Done(Code::Error),
                }
            }
            _ => Step::Next,
        }
    }

    fn simcom_cipccfg(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                let esc = u8::from(self.esc_enabled);
                self.info(&format!("+CIPCCFG: 5,2,1024,{esc},0,1460,50"));
                Step::Next
            }
            Form::Set(a) => {
                let mut ok = (4..=7).contains(&a.len())
                    && e.num(0, 3..=8).is_some()
                    && e.num(1, 2..=10).is_some()
                    && e.num(2, 1..=1460).is_some()
                    && e.num(3, 0..=1).is_some();
                if a.len() > 4 {
                    ok &= e.num(4, 0..=1).is_some();
                }
                if a.len() > 5 {
                    ok &= e.num(5, 50..=1460).is_some() && e.num(6, 20..=1000).is_some();
                }
                if !ok {
                    return Step::Done(Code::Error);
                }
                self.esc_enabled = e.num(3, 1..=1).is_some();
                let (wait, size) = (
                    e.num(1, 2..=10).unwrap_or(2),
                    e.num(2, 1..=1460).unwrap_or(1),
                );
                self.note(format!(
                    "send timer WaitTm={} ms, SendSz={size}, +++ detection {}",
                    wait * 200,
                    if self.esc_enabled { "on" } else { "off" }
                ));
                Step::Next
            }
            _ => Step::Next,
        }
    }

    fn simcom_cstt(&mut self, e: &Ext) -> Step {
        if self.ip_state != IpState::Initial {
            return Step::Done(Code::Error);
        }
        match (&e.form, e.text(0)) {
            (Form::Set(_), Some(apn)) => {
                self.apn = Some(apn.to_string());
                self.ip_state = IpState::Start;
                Step::Next
            }
            _ => Step::Done(Code::Error),
        }
    }

    fn simcom_ciicr(&mut self, _e: &Ext) -> Step {
        if self.ip_state != IpState::Start {
            return Step::Done(Code::Error);
        }
        self.ip_state = IpState::GprsAct;
        self.context_active = true;
        Step::Next
    }

    fn simcom_cifsr(&mut self, _e: &Ext) -> Step {
        match self.ip_state {
            IpState::GprsAct | IpState::Status | IpState::Closed | IpState::Connected => {
                if self.ip_state == IpState::GprsAct {
                    self.ip_state = IpState::Status;
                }
                Step::Done(Code::Text(SIM_IP.into()))
            }
            _ => Step::Done(Code::Error),
        }
    }

    fn simcom_cipstart(&mut self, e: &Ext) -> Step {
        let (Some(kind), Some(host), Some(port)) = (
            e.text(0),
            e.text(1).filter(|h| !h.is_empty()),
            e.num(2, 1..=65535),
        ) else {
            return Step::Done(Code::Error);
        };
        if !kind.eq_ignore_ascii_case("TCP") {
            self.note("+CIPSTART: only TCP is modelled".into());
            return Step::Done(Code::Error);
        }
        if !matches!(self.ip_state, IpState::Status | IpState::Closed) {
            self.note(format!(
                "+CIPSTART refused in state {} (the sequence is CSTT, CIICR, CIFSR)",
                self.ip_state.name()
            ));
            return Step::Done(Code::Error);
        }
        self.info("OK");
        self.ip_state = IpState::Connecting;
        let kind = if self.cipmode {
            DialKind::Online
        } else {
            DialKind::SimcomCommand
        };
        let host = host.to_string();
        self.dial(host, port as u16, kind)
    }

    fn simcom_cipclose(&mut self, _e: &Ext) -> Step {
        if !self.socket_open {
            return Step::Done(Code::Error);
        }
        self.hang_up("AT+CIPCLOSE");
        self.ip_state = IpState::Closed;
        Step::Done(Code::Text("CLOSE OK".into()))
    }

    fn simcom_cipshut(&mut self, _e: &Ext) -> Step {
        self.hang_up("AT+CIPSHUT");
        self.context_active = false;
        self.ip_state = IpState::Initial;
        Step::Done(Code::Text("SHUT OK".into()))
    }

    fn simcom_cipstatus(&mut self, _e: &Ext) -> Step {
        self.info("OK");
        let state = self.ip_state.name();
        Step::Done(Code::Text(format!("STATE: {state}")))
    }

    // ---- u-blox ----

    fn ublox_cgact(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                let on = u8::from(self.context_active);
                self.info(&format!("+CGACT: 1,{on}"));
                Step::Next
            }
            Form::Set(_) => match e.num(0, 0..=1) {
                Some(1) => {
                    self.context_active = true;
                    Step::Next
                }
                Some(_) => {
                    self.hang_up("context deactivated");
                    self.context_active = false;
                    Step::Next
                }
                None => Step::Done(Code::Cme(50)),
            },
            _ => Step::Next,
        }
    }

    fn ublox_usocr(&mut self, e: &Ext) -> Step {
        match e.num(0, 6..=17) {
            Some(6) => {}
            Some(17) => return Step::Done(Code::Cme(4)),
            _ => return Step::Done(Code::Cme(50)),
        }
        self.hang_up("socket replaced");
        let id = self.next_socket;
        self.next_socket = (self.next_socket + 1) % 7;
        self.ublox_socket = Some(id);
        self.info(&format!("+USOCR: {id}"));
        Step::Next
    }

    fn ublox_usoco(&mut self, e: &Ext) -> Step {
        let (Some(id), Some(host), Some(port)) = (
            e.num(0, 0..=6),
            e.text(1).filter(|h| !h.is_empty()),
            e.num(2, 1..=65535),
        ) else {
            return Step::Done(Code::Cme(50));
        };
        if self.ublox_socket != Some(id) || !self.context_active {
            return Step::Done(Code::Cme(3));
        }
        let host = host.to_string();
        self.dial(host, port as u16, DialKind::Socket)
    }

    fn ublox_udconf(&mut self, e: &Ext) -> Step {
        let Form::Set(_) = e.form else {
            return Step::Next;
        };
        let ok = match e.num(0, 0..=1000) {
            Some(5) => {
                e.num(1, 0..=6).is_some()
                    && (e.num(2, 0..=0).is_some() || e.num(2, 100..=120_000).is_some())
            }
            Some(6) => e.num(1, 0..=6).is_some() && e.num(2, 0..=2048).is_some(),
            Some(7) => e.num(1, 0..=6).is_some() && e.num(2, 0..=255).is_some(),
            Some(_) => true,
            None => false,
        };
        if !ok {
            return Step::Done(Code::Cme(50));
        }
        if e.num(0, 5..=5).is_some() {
            let ms = e.num(2, 0..=120_000).unwrap_or(0);
            self.note(format!("direct link timer trigger {ms} ms"));
        }
        Step::Next
    }

    fn ublox_usodl(&mut self, e: &Ext) -> Step {
        match e.num(0, 0..=6) {
            Some(id) if self.ublox_socket == Some(id) && self.socket_open => self.resume(),
            _ => Step::Done(Code::Cme(3)),
        }
    }

    fn ublox_usocl(&mut self, e: &Ext) -> Step {
        match e.num(0, 0..=6) {
            Some(id) if self.ublox_socket == Some(id) => {
                self.hang_up("AT+USOCL");
                self.ublox_socket = None;
                Step::Next
            }
            _ => Step::Done(Code::Cme(3)),
        }
    }

    // ---- Quectel ----

    fn quectel_qicsgp(&mut self, e: &Ext) -> Step {
        if let Form::Set(_) = e.form {
            if e.num(0, 1..=16).is_none() {
                return Step::Done(Code::Error);
            }
            self.apn = Some(e.text(2).unwrap_or("").to_string());
        }
        Step::Next
    }

    fn quectel_qiact(&mut self, e: &Ext) -> Step {
        match &e.form {
            Form::Read => {
                if self.context_active {
                    self.info(&format!("+QIACT: 1,1,1,\"{SIM_IP}\""));
                }
                Step::Next
            }
            Form::Set(_) => {
                if e.num(0, 1..=16).is_none() || self.context_active {
                    return Step::Done(Code::Error);
                }
                self.context_active = true;
                Step::Next
            }
            _ => Step::Next,
        }
    }

    fn quectel_qideact(&mut self, _e: &Ext) -> Step {
        self.hang_up("context deactivated");
        self.context_active = false;
        Step::Next
    }

    fn quectel_qicfg(&mut self, e: &Ext) -> Step {
        let Form::Set(_) = e.form else {
            return Step::Next;
        };
        let ok = match e.text(0).map(str::to_ascii_lowercase).as_deref() {
            Some("transwaittm") => e.num(1, 0..=20).is_some(),
            Some("transpktsize") => e.num(1, 1..=1460).is_some(),
            Some(_) => true,
            None => false,
        };
        if !ok {
            return Step::Done(Code::Error);
        }
        if let (Some("transwaittm"), Some(n)) = (e.text(0), e.num(1, 0..=20)) {
            self.note(format!("send timer transwaittm={} ms", n * 100));
        }
        Step::Next
    }

    fn quectel_qiopen(&mut self, e: &Ext) -> Step {
        let (Some(_), Some(_), Some(kind), Some(host), Some(port)) = (
            e.num(0, 1..=16),
            e.num(1, 0..=11),
            e.text(2),
            e.text(3).filter(|h| !h.is_empty()),
            e.num(4, 1..=65535),
        ) else {
            return Step::Done(Code::Error);
        };
        if !self.context_active {
            return Step::Done(Code::Error);
        }
        if !kind.eq_ignore_ascii_case("TCP") || e.num(6, 2..=2).is_none() {
            self.note("+QIOPEN: only TCP in access mode 2 (transparent) is modelled".into());
            return Step::Done(Code::Cme(4));
        }
        let host = host.to_string();
        self.dial(host, port as u16, DialKind::Online)
    }

    fn quectel_qiclose(&mut self, _e: &Ext) -> Step {
        self.hang_up("AT+QICLOSE");
        Step::Next
    }
}

fn redact(line: &str) -> String {
    if line.to_ascii_uppercase().starts_with("AT+CPIN=") {
        "AT+CPIN=****".into()
    } else {
        line.to_string()
    }
}

/// The simulated modem's pseudo-terminal: the slave path is what `modem:PATH` opens.
pub struct ModemPty {
    pty: super::pty::RawPty,
}

impl ModemPty {
    /// Create the pair (raw mode, non-blocking master); with `symlink`, also make a stable
    /// path that points at the slave.
    pub fn open(symlink: Option<&Path>) -> Result<ModemPty> {
        let pty = super::pty::RawPty::open(symlink)?;
        nix::fcntl::fcntl(
            pty.master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::io("making the pseudo-terminal non-blocking", e.into()))?;
        Ok(ModemPty { pty })
    }

    /// The slave path.
    pub fn path(&self) -> &Path {
        self.pty.path()
    }

    /// Run the modem until `stop` is set: bytes between the pseudo-terminal and the modem, the
    /// TCP connections it dials, and its log to `on_log`.
    pub fn serve(
        &mut self,
        modem: &mut SimModem,
        stop: &AtomicBool,
        on_log: &mut dyn FnMut(String),
    ) -> Result<()> {
        const TICK: Duration = Duration::from_millis(50);
        let start = Instant::now();
        let mut net: Option<TcpStream> = None;
        let mut pending: VecDeque<u8> = VecDeque::new();
        let mut buf = vec![0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let now = start.elapsed();
            modem.tick(now);
            // Bytes forwarded before a hang-up leave before it.
            let out = modem.take_to_net();
            if !out.is_empty() {
                if let Some(s) = net.as_mut() {
                    if let Err(e) = s.write_all(&out) {
                        on_log(format!("writing to the peer failed: {e}"));
                        net = None;
                        modem.peer_closed(start.elapsed());
                    }
                }
            }
            while let Some(req) = modem.take_request() {
                match req {
                    NetRequest::Dial { host, port } => match dial(&host, port) {
                        Ok(stream) => {
                            net = Some(stream);
                            modem.dial_done(start.elapsed(), Ok(()));
                        }
                        Err(e) => modem.dial_done(start.elapsed(), Err(e)),
                    },
                    NetRequest::HangUp => {
                        if let Some(s) = net.take() {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                    }
                }
            }
            pending.extend(modem.take_to_host());
            if pending.len() > BACKLOG_MAX {
                let excess = pending.len() - BACKLOG_MAX;
                pending.drain(..excess);
                on_log(format!("the host is not reading: dropped {excess} bytes"));
            }
            for line in modem.take_log() {
                on_log(line);
            }
            flush(&mut self.pty.master, &mut pending)?;
            // A request or output produced above (a peer that closed) is handled at once.
            if !modem.to_net.is_empty() || !modem.requests.is_empty() || !modem.log.is_empty() {
                continue;
            }
            let now = start.elapsed();
            let wait = modem
                .next_deadline()
                .map_or(TICK, |d| d.saturating_sub(now).min(TICK));
            let (host_ready, host_gone, net_ready) = {
                let mut events = PollFlags::POLLIN;
                if !pending.is_empty() {
                    events |= PollFlags::POLLOUT;
                }
                let mut fds = vec![PollFd::new(self.pty.master.as_fd(), events)];
                if let Some(s) = &net {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                }
                match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(Error::io("waiting for the pseudo-terminal", e.into())),
                }
                let host = fds[0].revents().unwrap_or(PollFlags::empty());
                let net_ev = fds
                    .get(1)
                    .and_then(|f| f.revents())
                    .unwrap_or(PollFlags::empty());
                (
                    host.contains(PollFlags::POLLIN),
                    host.intersects(PollFlags::POLLHUP | PollFlags::POLLERR),
                    net_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR),
                )
            };
            if host_ready {
                match self.pty.master.read(&mut buf) {
                    Ok(n) => modem.host_input(start.elapsed(), &buf[..n]),
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(Error::io("reading the pseudo-terminal", e)),
                }
            } else if host_gone {
                std::thread::sleep(Duration::from_millis(20));
            }
            if net_ready {
                if let Some(s) = net.as_mut() {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            net = None;
                            modem.peer_closed(start.elapsed());
                        }
                        Ok(n) => modem.net_input(start.elapsed(), &buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock | ErrorKind::Interrupted
                            ) => {}
                        Err(_) => {
                            net = None;
                            modem.peer_closed(start.elapsed());
                        }
                    }
                }
            }
        }
        if let Some(s) = net {
            let _ = s.shutdown(Shutdown::Both);
        }
        Ok(())
    }
}

/// Write what the pseudo-terminal takes now.
fn flush(master: &mut File, pending: &mut VecDeque<u8>) -> Result<()> {
    while !pending.is_empty() {
        let (front, _) = pending.as_slices();
        match master.write(front) {
            Ok(0) => break,
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => break,
            // No client has the slave open: keep the bytes for the next one.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => break,
            Err(e) => return Err(Error::io("writing the pseudo-terminal", e)),
        }
    }
    Ok(())
}

/// Open the TCP connection a dial command asked for.
fn dial(host: &str, port: u16) -> std::result::Result<TcpStream, String> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                return Ok(s);
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{LineSettings, Link, LinkError};
    use crate::transport::modem::{ModemIo, ModemLink, ModemSpec};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn modem(profile: Profile) -> SimModem {
        SimModem::new(SimModemConfig::new(profile))
    }

    /// Send a command line at `now`; return what came back.
    fn cmd(m: &mut SimModem, now: Duration, line: &str) -> String {
        m.host_input(now, format!("{line}\r").as_bytes());
        String::from_utf8_lossy(&m.take_to_host()).into_owned()
    }

    /// Complete a pending dial successfully.
    fn connect(m: &mut SimModem, now: Duration) -> String {
        match m.take_request() {
            Some(NetRequest::Dial { .. }) => {}
            other => panic!("expected a dial, got {other:?}"),
        }
        m.dial_done(now, Ok(()));
        String::from_utf8_lossy(&m.take_to_host()).into_owned()
    }

    /// A Telit modem online at t = 0.
    fn telit_online() -> SimModem {
        let mut m = modem(Profile::Telit);
        for line in ["ATE0", "AT+CGDCONT=1,\"IP\",\"internet\"", "AT#SGACT=1,1"] {
            cmd(&mut m, Duration::ZERO, line);
        }
        cmd(&mut m, Duration::ZERO, "AT#SD=1,0,7000,\"127.0.0.1\",0,0,0");
        assert_eq!(connect(&mut m, Duration::ZERO), "\r\nCONNECT\r\n");
        assert!(m.is_online());
        m
    }

    #[test]
    fn telit_dialect() {
        let mut m = modem(Profile::Telit);
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT"), "AT\r\r\nOK\r\n");
        assert_eq!(cmd(&mut m, Duration::ZERO, "ATE0"), "ATE0\r\r\nOK\r\n");
        assert_eq!(cmd(&mut m, Duration::ZERO, "ATV0"), "0\r");
        assert_eq!(cmd(&mut m, Duration::ZERO, "ATV1"), "\r\nOK\r\n");
        // No APN yet: activation fails, with the error format AT+CMEE chose.
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT#SGACT=1,1"), "\r\nERROR\r\n");
        cmd(&mut m, Duration::ZERO, "AT+CMEE=2");
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT#SGACT=1,1"),
            "\r\n+CME ERROR: operation not allowed\r\n"
        );
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT+CGDCONT=1,\"IP\",\"internet\""),
            "\r\nOK\r\n"
        );
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT#SGACT?"),
            "\r\n#SGACT: 1,0\r\n\r\nOK\r\n"
        );
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT#SGACT=1,1"),
            "\r\n#SGACT: 10.0.0.2\r\n\r\nOK\r\n"
        );
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT#SCFG=1,1,300,0,600,256"),
            "\r\nOK\r\n"
        );
        assert!(cmd(&mut m, Duration::ZERO, "AT#SCFG=1,1,300,0,600,999").contains("ERROR"));
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT#SKIPESC=1"), "\r\nOK\r\n");
        assert_eq!(cmd(&mut m, Duration::ZERO, "ATS12=5"), "\r\nOK\r\n");
        assert_eq!(m.guard(), Duration::from_millis(100));
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "ATS12?"),
            "\r\n005\r\n\r\nOK\r\n"
        );
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT#BOGUS"), "\r\nERROR\r\n");
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT#SD=1,0,7000,\"h\",0,0,0"),
            ""
        );
        assert_eq!(
            m.take_request(),
            Some(NetRequest::Dial {
                host: "h".into(),
                port: 7000
            })
        );
        m.dial_done(Duration::ZERO, Err("refused".into()));
        assert_eq!(m.take_to_host(), b"\r\nNO CARRIER\r\n");
        let log = m.take_log().join("\n");
        assert!(log.contains("AT command: AT#SKIPESC=1"), "{log}");
        assert!(log.contains("send timer txTo=256 (10 ms)"), "{log}");
    }

    #[test]
    fn simcom_dialect_follows_its_states() {
        let mut m = modem(Profile::Simcom);
        cmd(&mut m, Duration::ZERO, "ATE0");
        // CIPSTART before CIFSR: refused (the usual SIM800 pitfall).
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT+CSTT=\"web\""), "\r\nOK\r\n");
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT+CIPMODE=1"), "\r\nERROR\r\n");
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT+CIPSHUT"), "\r\nSHUT OK\r\n");
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT+CIPMODE=1"), "\r\nOK\r\n");
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT+CIPCCFG=5,2,1,1"),
            "\r\nOK\r\n"
        );
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT+CIPCCFG=5,1,1,1"),
            "\r\nERROR\r\n"
        );
        cmd(&mut m, Duration::ZERO, "AT+CSTT=\"web\"");
        cmd(&mut m, Duration::ZERO, "AT+CIICR");
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT+CIPSTART=\"TCP\",\"h\",\"1\""),
            "\r\nERROR\r\n"
        );
        assert_eq!(cmd(&mut m, Duration::ZERO, "AT+CIFSR"), "\r\n10.0.0.2\r\n");
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT+CIPSTATUS"),
            "\r\nOK\r\n\r\nSTATE: IP STATUS\r\n"
        );
        assert_eq!(
            cmd(&mut m, Duration::ZERO, "AT+CIPSTART=\"TCP\",\"h\",\"1\""),
            "\r\nOK\r\n"
        );
        assert_eq!(connect(&mut m, Duration::ZERO), "\r\nCONNECT\r\n");
        // The peer closes: CLOSED, command mode.
        m.peer_closed(SEC);
        assert_eq!(m.take_to_host(), b"\r\nCLOSED\r\n");
        assert!(!m.is_online());
        assert_eq!(
            cmd(&mut m, SEC, "AT+CIPSTART=\"TCP\",\"h\",\"1\""),
            "\r\nOK\r\n"
        );
        m.take_request();
        m.dial_done(SEC, Err("refused".into()));
        assert_eq!(m.take_to_host(), b"\r\nCONNECT FAIL\r\n");
    }

    #[test]
    fn a_guarded_plus_plus_plus_escapes_and_the_connection_stays_open() {
        for profile in Profile::ALL {
            let mut m = modem(profile);
            cmd(&mut m, Duration::ZERO, "ATE0");
            m.socket_open = true;
            m.enter_data();
            m.host_input(Duration::ZERO, b"data");
            assert_eq!(m.take_to_net(), b"data");
            // Silence, +++, silence: OK and command mode.
            m.host_input(2 * SEC, b"+++");
            m.tick(2 * SEC + 500 * MS);
            assert!(m.is_online(), "{profile}: not before the guard time");
            assert_eq!(m.next_deadline(), Some(3 * SEC));
            m.tick(3 * SEC);
            assert!(!m.is_online(), "{profile}");
            assert_eq!(m.take_to_host(), b"\r\nOK\r\n", "{profile}");
            // Telit forwards the + unless AT#SKIPESC=1; the others hold them back.
            let forwarded = m.take_to_net();
            if profile == Profile::Telit {
                assert_eq!(forwarded, b"+++");
            } else {
                assert!(forwarded.is_empty(), "{profile}");
            }
            assert!(m.is_connected());
            // ATO goes back online; hanging up closes the socket.
            assert!(cmd(&mut m, 4 * SEC, "ATO").contains("CONNECT"));
            assert!(m.is_online());
            m.host_input(6 * SEC, b"+++");
            m.tick(7 * SEC);
            m.take_to_host();
            assert_eq!(cmd(&mut m, 8 * SEC, "ATH"), "\r\nOK\r\n");
            assert_eq!(m.take_request(), Some(NetRequest::HangUp));
            assert!(!m.is_connected());
        }
    }

    #[test]
    fn plus_plus_plus_inside_the_data_does_not_escape() {
        let mut m = telit_online();
        // Inside a frame, with bytes right before or after, or four of them.
        let t = 5 * SEC;
        m.host_input(t, b"\x31\xCE+++\x08");
        m.host_input(t + 5 * SEC, b"+++x");
        m.host_input(t + 10 * SEC, b"++++");
        m.tick(t + 20 * SEC);
        m.host_input(t + 20 * SEC, b"++");
        m.tick(t + 30 * SEC);
        assert!(m.is_online());
        assert!(m.take_to_host().is_empty());
        assert_eq!(m.take_to_net(), b"\x31\xCE+++\x08+++x++++++");
        // A short guard time changes nothing for bytes that arrive together.
        let mut m = telit_online();
        m.guard = 20 * MS;
        m.skipesc = true;
        m.host_input(SEC, b"\x2B\x2B\x2B\x2B\x00\xFF+++\x01");
        m.tick(2 * SEC);
        assert!(m.is_online());
        assert_eq!(m.take_to_net(), b"\x2B\x2B\x2B\x2B\x00\xFF+++\x01");
    }

    #[test]
    fn telit_needs_no_silence_before_plus_right_after_connect() {
        let mut m = telit_online();
        m.host_input(10 * MS, b"+++");
        m.tick(SEC + 10 * MS);
        assert!(!m.is_online());
        assert_eq!(m.take_to_host(), b"\r\nOK\r\n");
        // SIMCom does need it.
        let mut m = modem(Profile::Simcom);
        m.socket_open = true;
        m.enter_data();
        m.host_input(10 * MS, b"+++");
        m.tick(2 * SEC);
        assert!(m.is_online());
        assert_eq!(m.take_to_net(), b"+++");
    }

    #[test]
    fn simcom_esc_0_turns_detection_off() {
        let mut m = modem(Profile::Simcom);
        cmd(&mut m, Duration::ZERO, "AT+CIPCCFG=5,2,1,0");
        m.socket_open = true;
        m.enter_data();
        m.host_input(5 * SEC, b"+++");
        m.tick(10 * SEC);
        assert!(m.is_online());
        assert_eq!(m.take_to_net(), b"+++");
    }

    #[test]
    fn the_peer_closing_and_a_cut_say_no_carrier() {
        let mut m = telit_online();
        m.net_input(SEC, b"\x79");
        assert_eq!(m.take_to_host(), b"\x79");
        m.peer_closed(2 * SEC);
        assert_eq!(m.take_to_host(), b"\r\nNO CARRIER\r\n");
        assert!(!m.is_online() && !m.is_connected());
        let mut cfg = SimModemConfig::new(Profile::Telit);
        cfg.cut_after = Some(5);
        let mut m = SimModem::new(cfg);
        cmd(&mut m, Duration::ZERO, "ATE0");
        cmd(&mut m, Duration::ZERO, "AT+CGDCONT=1,\"IP\",\"x\"");
        cmd(&mut m, Duration::ZERO, "AT#SGACT=1,1");
        cmd(&mut m, Duration::ZERO, "AT#SD=1,0,1,\"h\",0,0,0");
        connect(&mut m, Duration::ZERO);
        m.host_input(SEC, b"0123456789");
        assert_eq!(m.take_to_net(), b"01234");
        assert_eq!(m.take_request(), Some(NetRequest::HangUp));
        assert_eq!(m.take_to_host(), b"\r\nNO CARRIER\r\n");
        assert!(m.take_log().iter().any(|l| l.contains("--cut-after")));
        // Once only.
        cmd(&mut m, SEC, "AT#SD=1,0,1,\"h\",0,0,0");
        connect(&mut m, SEC);
        m.host_input(2 * SEC, b"0123456789");
        assert_eq!(m.take_to_net(), b"0123456789");
    }

    #[test]
    fn fail_dial_answers_like_the_dialect() {
        for (profile, setup, dial, answer) in [
            (
                Profile::Telit,
                &["AT+CGDCONT=1,\"IP\",\"x\"", "AT#SGACT=1,1"][..],
                "AT#SD=1,0,1,\"h\",0,0,0",
                "\r\nOK\r\n\r\n#SGACT: 10.0.0.2\r\n\r\nOK\r\n\r\nNO CARRIER\r\n",
            ),
            (
                Profile::Hayes,
                &[][..],
                "ATDT127.0.0.1:9",
                "\r\nNO CARRIER\r\n",
            ),
            (
                Profile::Quectel,
                &["AT+QIACT=1"][..],
                "AT+QIOPEN=1,0,\"TCP\",\"h\",9,0,2",
                "\r\nOK\r\n\r\nERROR\r\n",
            ),
        ] {
            let mut cfg = SimModemConfig::new(profile);
            cfg.fail_dial = true;
            let mut m = SimModem::new(cfg);
            cmd(&mut m, Duration::ZERO, "ATE0");
            let mut got = String::new();
            for line in setup {
                got += &cmd(&mut m, Duration::ZERO, line);
            }
            got += &cmd(&mut m, Duration::ZERO, dial);
            assert_eq!(got, answer, "{profile}");
            assert_eq!(m.take_request(), None);
        }
    }

    /// The client transport wired straight to the simulated modem, with a virtual clock and an
    /// echoing peer.
    struct Wired {
        modem: SimModem,
        now: Duration,
        to_host: VecDeque<u8>,
        peer_up: bool,
        /// What reached the peer.
        peer_got: Vec<u8>,
        /// The modem's log.
        log: Vec<String>,
    }

    impl Wired {
        fn new(profile: Profile) -> Wired {
            Wired {
                modem: modem(profile),
                now: Duration::ZERO,
                to_host: VecDeque::new(),
                peer_up: false,
                peer_got: Vec::new(),
                log: Vec::new(),
            }
        }

        fn pump(&mut self) {
            loop {
                let mut busy = false;
                let out = self.modem.take_to_net();
                if !out.is_empty() && self.peer_up {
                    busy = true;
                    self.peer_got.extend_from_slice(&out);
                    // The peer echoes.
                    self.modem.net_input(self.now, &out);
                }
                while let Some(r) = self.modem.take_request() {
                    busy = true;
                    match r {
                        NetRequest::Dial { .. } => {
                            self.peer_up = true;
                            self.modem.dial_done(self.now, Ok(()));
                        }
                        NetRequest::HangUp => self.peer_up = false,
                    }
                }
                self.to_host.extend(self.modem.take_to_host());
                self.log.extend(self.modem.take_log());
                if !busy {
                    return;
                }
            }
        }

        /// Let time pass, up to `by`; with `until_output`, only until the host has bytes.
        fn advance(&mut self, by: Duration, until_output: bool) {
            let end = self.now + by;
            loop {
                self.pump();
                if until_output && !self.to_host.is_empty() {
                    return;
                }
                match self.modem.next_deadline() {
                    Some(d) if d > self.now && d <= end => {
                        self.now = d;
                        self.modem.tick(d);
                    }
                    _ => {
                        self.now = end;
                        self.modem.tick(end);
                        self.pump();
                        return;
                    }
                }
            }
        }
    }

    #[derive(Clone)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Wired>>);

    impl Shared {
        fn lock(&self) -> std::sync::MutexGuard<'_, Wired> {
            self.0.lock().expect("test setup")
        }
    }

    impl ModemIo for Shared {
        fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
            let mut w = self.lock();
            let now = w.now;
            w.modem.host_input(now, data);
            w.pump();
            Ok(())
        }

        fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
            let mut w = self.lock();
            if w.to_host.is_empty() {
                w.advance(timeout, true);
            }
            let n = buf.len().min(w.to_host.len());
            for (slot, b) in buf.iter_mut().zip(w.to_host.drain(..n)) {
                *slot = b;
            }
            Ok(n)
        }

        fn clear_input(&mut self) -> std::io::Result<()> {
            self.lock().to_host.clear();
            Ok(())
        }

        fn carrier(&mut self) -> Option<bool> {
            None
        }

        fn set_dtr(&mut self, _on: bool) -> std::io::Result<()> {
            Err(std::io::Error::new(ErrorKind::Unsupported, "no DTR"))
        }

        fn now(&self) -> Duration {
            self.lock().now
        }

        fn sleep(&mut self, d: Duration) {
            self.lock().advance(d, false);
        }
    }

    fn url(profile: Profile) -> String {
        match profile {
            Profile::Hayes => "/dev/sim?profile=hayes&host=127.0.0.1&port=7000".into(),
            p => format!("/dev/sim?profile={p}&apn=internet&host=127.0.0.1&port=7000"),
        }
    }

    #[test]
    fn the_client_dials_every_simulated_dialect_and_hangs_up() {
        for profile in Profile::ALL {
            let wired = Shared(std::sync::Arc::new(std::sync::Mutex::new(Wired::new(
                profile,
            ))));
            let spec = ModemSpec::parse(&url(profile)).expect("test setup");
            let mut link =
                ModemLink::with_io(&spec, LineSettings::default(), Box::new(wired.clone()))
                    .unwrap_or_else(|e| panic!("{profile}: {e}\n{}", wired.lock().log.join("\n")));
            // Frames with +++ inside them go through unchanged and come back.
            let data = b"\x31\xCE\x2B\x2B\x2B\x2B\x2B\x2B\x00+++\xFF";
            link.write_all(data).expect("test setup");
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < data.len() {
                let n = link.read(&mut buf, SEC).expect("echo");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, data, "{profile}");
            assert!(wired.lock().modem.is_online(), "{profile}");
            link.close().expect("test setup");
            let w = wired.lock();
            assert!(!w.modem.is_connected(), "{profile}: still connected");
            assert_eq!(w.peer_got, data, "{profile}: the escape reached the peer");
            let log = w.log.join("\n");
            assert!(log.contains("escape: +++"), "{profile}: {log}");
            assert!(log.contains("hung up"), "{profile}: {log}");
        }
    }

    #[test]
    fn the_client_sees_the_simulated_no_carrier() {
        for profile in [Profile::Telit, Profile::Simcom] {
            let wired = Shared(std::sync::Arc::new(std::sync::Mutex::new(Wired::new(
                profile,
            ))));
            wired.lock().modem.cfg.cut_after = Some(3);
            let spec = ModemSpec::parse(&url(profile)).expect("test setup");
            let mut link =
                ModemLink::with_io(&spec, LineSettings::default(), Box::new(wired.clone()))
                    .expect("test setup");
            link.write_all(b"abcdef").expect("test setup");
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            let err = loop {
                match link.read(&mut buf, SEC) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
            };
            assert!(b"abc".starts_with(&got), "{profile}: {got:?}");
            assert_eq!(wired.lock().peer_got, b"abc", "{profile}");
            let text = err.to_string();
            let report = if profile == Profile::Simcom {
                "CLOSED"
            } else {
                "NO CARRIER"
            };
            assert!(text.contains(report), "{profile}: {text}");
            assert!(matches!(err, LinkError::Io { .. }));
            link.close().expect("test setup");
        }
    }
}
