//! The relay on tokio: the accept loop or the dial-out loop, the handshake, and the RFC 2217
//! session that bridges an authenticated client to the serial port.

use super::auth::{AuthFailure, Challenge, Direction, Key, LineError, LineReader, RelayLine};
use super::limit::{Admission, RateLimiter};
use super::modem::{self, Call, Dialout, Outbound};
use super::seq::{self, Assembled, Assembler, Outcome};
use super::{RelayConfig, RelayReport, StopHandle};
use crate::error::{Error, Result};
use crate::link::{LineStep, LinkError};
use rfc2217::{DataBits, FlowControl, Parity, PortSettings, Purge, Server, ServerEvent, StopBits};
use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort as _, SerialStream};

/// The relay's RFC 2217 signature.
const SIGNATURE: &str = concat!("stm32boot relay ", env!("CARGO_PKG_VERSION"));

/// Handshakes in progress at most; further connections are refused until one ends.
const MAX_HANDSHAKES: usize = 8;

/// Refusals being written at most; beyond that, refused connections are dropped without a
/// word, so that a flood of connections cannot pile up tasks.
const MAX_REFUSALS: usize = 64;

/// How long a refusal or verdict line may take to write.
const LINE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a refused peer's leftovers are read before the socket is dropped (so that the
/// close is a clean FIN and the peer can read the refusal).
const LINGER: Duration = Duration::from_secs(1);

/// How long one dial-out attempt may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The first and the longest wait between dial-out attempts that found nobody listening.
const DIAL_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

/// Socket and port read size.
pub(crate) const CHUNK: usize = 4096;

/// Open the serial port for the relay: 8N1 at `baud`, exclusively (TIOCEXCL and an exclusive
/// `flock`), so that no other local program can open it while the relay runs. Must run inside
/// the runtime.
pub(super) fn open_port(path: &str, baud: u32) -> Result<SerialStream> {
    let builder = tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .exclusive(true);
    SerialStream::open(&builder).map_err(|e| {
        let text = e.to_string();
        let lower = text.to_lowercase();
        let reason = if lower.contains("lock") || lower.contains("busy") {
            format!(
                "{text}: another program has the port open (a terminal, ser2net, another relay, \
                 stm32boot); close it first (`fuser {path}` shows which)"
            )
        } else if lower.contains("no such file") || lower.contains("not found") {
            format!("{text}: no such port; `stm32boot ports` lists serial ports")
        } else if lower.contains("permission") {
            format!(
                "{text}: permission denied; add yourself to the port's group (dialout on Debian)"
            )
        } else {
            text
        };
        Error::Link(LinkError::Open {
            port: path.to_string(),
            reason,
        })
    })
}

/// The modem-control lines, which a reset or boot-entry sequence drives.
pub(crate) trait LineControl {
    /// Drive DTR.
    fn set_dtr(&mut self, on: bool) -> io::Result<()>;
    /// Drive RTS.
    fn set_rts(&mut self, on: bool) -> io::Result<()>;
    /// Start or stop a break.
    fn set_break(&mut self, on: bool) -> io::Result<()>;
}

/// The serial port as the relay drives it.
pub(crate) trait Port: LineControl + AsyncRead + AsyncWrite + Unpin + Send {
    /// The settings in effect now.
    fn settings(&self) -> PortSettings;
    /// Change what differs between `old` and `new`; returns the settings in effect afterwards
    /// (values the port cannot take stay as they were, or read back as the port has them).
    fn apply(&mut self, old: &PortSettings, new: &PortSettings) -> PortSettings;
    /// Drop buffered data.
    fn purge(&mut self, what: Purge) -> io::Result<()>;
}

impl LineControl for SerialStream {
    fn set_dtr(&mut self, on: bool) -> io::Result<()> {
        self.write_data_terminal_ready(on).map_err(io::Error::from)
    }

    fn set_rts(&mut self, on: bool) -> io::Result<()> {
        self.write_request_to_send(on).map_err(io::Error::from)
    }

    fn set_break(&mut self, on: bool) -> io::Result<()> {
        let r = if on {
            tokio_serial::SerialPort::set_break(self)
        } else {
            self.clear_break()
        };
        r.map_err(io::Error::from)
    }
}

impl Port for SerialStream {
    fn settings(&self) -> PortSettings {
        let fallback = PortSettings::default();
        PortSettings {
            baud_rate: self.baud_rate().unwrap_or(fallback.baud_rate),
            data_bits: self
                .data_bits()
                .map(|d| match d {
                    tokio_serial::DataBits::Five => DataBits::Five,
                    tokio_serial::DataBits::Six => DataBits::Six,
                    tokio_serial::DataBits::Seven => DataBits::Seven,
                    tokio_serial::DataBits::Eight => DataBits::Eight,
                })
                .unwrap_or(fallback.data_bits),
            parity: self
                .parity()
                .map(|p| match p {
                    tokio_serial::Parity::None => Parity::None,
                    tokio_serial::Parity::Odd => Parity::Odd,
                    tokio_serial::Parity::Even => Parity::Even,
                })
                .unwrap_or(fallback.parity),
            stop_bits: self
                .stop_bits()
                .map(|s| match s {
                    tokio_serial::StopBits::One => StopBits::One,
                    tokio_serial::StopBits::Two => StopBits::Two,
                })
                .unwrap_or(fallback.stop_bits),
            flow_control: self
                .flow_control()
                .map(|f| match f {
                    tokio_serial::FlowControl::None => FlowControl::None,
                    tokio_serial::FlowControl::Software => FlowControl::XonXoff,
                    tokio_serial::FlowControl::Hardware => FlowControl::RtsCts,
                })
                .unwrap_or(fallback.flow_control),
        }
    }

    fn apply(&mut self, old: &PortSettings, new: &PortSettings) -> PortSettings {
        let mut failures: Vec<String> = Vec::new();
        let mut note = |what: &str, r: std::result::Result<(), String>| {
            if let Err(e) = r {
                failures.push(format!("{what}: {e}"));
            }
        };
        if new.baud_rate != old.baud_rate && new.baud_rate != 0 {
            note(
                "baud rate",
                self.set_baud_rate(new.baud_rate).map_err(|e| e.to_string()),
            );
        }
        if new.data_bits != old.data_bits {
            let bits = match new.data_bits {
                DataBits::Five => tokio_serial::DataBits::Five,
                DataBits::Six => tokio_serial::DataBits::Six,
                DataBits::Seven => tokio_serial::DataBits::Seven,
                DataBits::Eight => tokio_serial::DataBits::Eight,
            };
            note(
                "data bits",
                self.set_data_bits(bits).map_err(|e| e.to_string()),
            );
        }
        if new.parity != old.parity {
            let parity = match new.parity {
                Parity::None => Ok(tokio_serial::Parity::None),
                Parity::Odd => Ok(tokio_serial::Parity::Odd),
                Parity::Even => Ok(tokio_serial::Parity::Even),
                Parity::Mark | Parity::Space => Err("mark and space parity are not supported"),
            };
            note(
                "parity",
                parity
                    .map_err(str::to_string)
                    .and_then(|p| self.set_parity(p).map_err(|e| e.to_string())),
            );
        }
        if new.stop_bits != old.stop_bits {
            let stop = match new.stop_bits {
                StopBits::One => Ok(tokio_serial::StopBits::One),
                StopBits::Two => Ok(tokio_serial::StopBits::Two),
                StopBits::OnePointFive => Err("1.5 stop bits are not supported"),
            };
            note(
                "stop bits",
                stop.map_err(str::to_string)
                    .and_then(|s| self.set_stop_bits(s).map_err(|e| e.to_string())),
            );
        }
        if new.flow_control != old.flow_control {
            let flow = match new.flow_control {
                FlowControl::None => Ok(tokio_serial::FlowControl::None),
                FlowControl::XonXoff => Ok(tokio_serial::FlowControl::Software),
                FlowControl::RtsCts => Ok(tokio_serial::FlowControl::Hardware),
                FlowControl::Dcd | FlowControl::Dsr => {
                    Err("DCD and DSR flow control are not supported")
                }
            };
            note(
                "flow control",
                flow.map_err(str::to_string)
                    .and_then(|f| self.set_flow_control(f).map_err(|e| e.to_string())),
            );
        }
        for failure in failures {
            tracing::debug!("relay: the port did not take the {failure}");
        }
        Port::settings(self)
    }

    fn purge(&mut self, what: Purge) -> io::Result<()> {
        let which = match what {
            Purge::Receive => tokio_serial::ClearBuffer::Input,
            Purge::Transmit => tokio_serial::ClearBuffer::Output,
            Purge::Both => tokio_serial::ClearBuffer::All,
        };
        self.clear(which).map_err(io::Error::from)
    }
}

fn step_name(step: &LineStep) -> &'static str {
    match step {
        LineStep::Dtr(_) => "DTR",
        LineStep::Rts(_) => "RTS",
        LineStep::Break(_) => "break",
        LineStep::Wait(_) => "wait",
    }
}

/// Run a sequence on the port with tokio's timers, stopping at the first step that fails.
pub(crate) async fn run_steps<L: LineControl + ?Sized>(
    port: &mut L,
    steps: &[LineStep],
) -> Outcome {
    for (index, step) in steps.iter().enumerate() {
        let r = match *step {
            LineStep::Dtr(on) => port.set_dtr(on),
            LineStep::Rts(on) => port.set_rts(on),
            LineStep::Break(on) => port.set_break(on),
            LineStep::Wait(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        };
        if let Err(e) = r {
            return Outcome::Failed {
                index,
                reason: format!("{}: {e}", step_name(step)),
            };
        }
    }
    Outcome::Done
}

/// Why a handshake failed. Carries nothing secret: it is logged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeFailure {
    /// The answer was wrong or malformed.
    #[error("{0}")]
    Auth(AuthFailure),
    /// The peer sent something that is not a handshake line.
    #[error("it sent {0}")]
    Line(LineError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before answering.
    #[error("it closed the connection without answering")]
    Closed,
    /// A socket error.
    #[error("{0}")]
    Io(io::Error),
    /// No random bytes for the challenge.
    #[error("{0}")]
    Internal(String),
}

/// Read one handshake line, byte by byte, so that nothing after it is consumed.
async fn read_line<S: AsyncRead + Unpin>(
    s: &mut S,
) -> std::result::Result<String, HandshakeFailure> {
    let mut reader = LineReader::new();
    loop {
        let byte = match s.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(HandshakeFailure::Closed)
            }
            Err(e) => return Err(HandshakeFailure::Io(e)),
        };
        if let Some(line) = reader.push(byte).map_err(HandshakeFailure::Line)? {
            return Ok(line);
        }
    }
}

/// The relay's side of the handshake: send a fresh challenge and check the answer. On success,
/// the `OK` line to send once the relay has decided to serve the peer. Reads nothing beyond the
/// answer line.
pub(crate) async fn challenge_peer<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &Key,
    dir: Direction,
    timeout: Duration,
) -> std::result::Result<String, HandshakeFailure> {
    let challenge = Challenge::fresh(dir).map_err(|e| HandshakeFailure::Internal(e.to_string()))?;
    let exchange = async {
        s.write_all(challenge.line().as_bytes())
            .await
            .map_err(HandshakeFailure::Io)?;
        let answer = read_line(s).await?;
        challenge
            .check(key, &answer)
            .map_err(HandshakeFailure::Auth)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HandshakeFailure::Timeout(timeout))?
}

/// Send a refusal or verdict line, close the sending side, and read (and drop) what the peer
/// still sends for a moment, so that the close does not reset the connection before the peer
/// has read the line. Nothing read here goes anywhere.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, line: RelayLine) {
    let _ = tokio::time::timeout(LINE_WRITE_TIMEOUT, s.write_all(line.encode().as_bytes())).await;
    let _ = s.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 256];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// [`refuse`] on a task of its own, if fewer than [`MAX_REFUSALS`] are running; else just close.
fn refuse_later(slots: &Arc<tokio::sync::Semaphore>, stream: TcpStream, line: RelayLine) {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        tokio::spawn(async move {
            refuse(stream, line).await;
            drop(permit);
        });
    }
}

/// Bytes moved in one session.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) to_port: u64,
    pub(crate) from_port: u64,
}

/// Why a session step failed: the client (the session ends) or the port (the relay stops).
enum Fault {
    Client(io::Error),
    Port(Error),
}

fn port_gone(port: &str, e: Option<io::Error>) -> Error {
    match e {
        Some(e) => Error::io(format!("the serial port {port} failed"), e),
        None => Error::io(
            format!("the serial port {port} went away"),
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ),
    }
}

/// One authenticated client's RFC 2217 session.
struct Session<'a> {
    server: Server,
    model: PortSettings,
    assembler: Assembler,
    out: Vec<u8>,
    counts: Counts,
    peer: &'a str,
    port_name: &'a str,
}

impl Session<'_> {
    /// Queue a frame of our own after what the server has queued.
    fn push_frame(&mut self, frame: &[u8]) {
        let queued = self.server.take_output();
        self.out.extend_from_slice(&queued);
        self.out.extend_from_slice(frame);
    }

    async fn flush<S: AsyncWrite + Unpin>(
        &mut self,
        sock: &mut S,
    ) -> std::result::Result<(), Fault> {
        let queued = self.server.take_output();
        self.out.extend_from_slice(&queued);
        if self.out.is_empty() {
            return Ok(());
        }
        sock.write_all(&self.out).await.map_err(Fault::Client)?;
        self.out.clear();
        Ok(())
    }

    /// Report settings the port did not take, with the values in effect (RFC 2217 replies
    /// carry the value in effect; the `rfc2217` server has already acknowledged the request,
    /// so this second reply corrects it).
    fn correct(&mut self, old: &PortSettings, new: &PortSettings, actual: &PortSettings) {
        if new.baud_rate != old.baud_rate && new.baud_rate != 0 && actual.baud_rate != new.baud_rate
        {
            self.push_frame(&seq::frame(101, &actual.baud_rate.to_be_bytes()));
        }
        if new.data_bits != old.data_bits && actual.data_bits != new.data_bits {
            let code = match actual.data_bits {
                DataBits::Five => 5,
                DataBits::Six => 6,
                DataBits::Seven => 7,
                DataBits::Eight => 8,
            };
            self.push_frame(&seq::frame(102, &[code]));
        }
        if new.parity != old.parity && actual.parity != new.parity {
            let code = match actual.parity {
                Parity::None => 1,
                Parity::Odd => 2,
                Parity::Even => 3,
                Parity::Mark => 4,
                Parity::Space => 5,
            };
            self.push_frame(&seq::frame(103, &[code]));
        }
        if new.stop_bits != old.stop_bits && actual.stop_bits != new.stop_bits {
            let code = match actual.stop_bits {
                StopBits::One => 1,
                StopBits::Two => 2,
                StopBits::OnePointFive => 3,
            };
            self.push_frame(&seq::frame(104, &[code]));
        }
    }

    async fn on_event<S, P>(
        &mut self,
        event: ServerEvent,
        sock: &mut S,
        port: &mut P,
    ) -> std::result::Result<(), Fault>
    where
        S: AsyncWrite + Unpin,
        P: Port,
    {
        let (peer, name) = (self.peer, self.port_name);
        match event {
            ServerEvent::ComPortActive => tracing::debug!("relay: {peer}: RFC 2217 is active"),
            ServerEvent::SettingsChanged(new) => {
                let old = self.model;
                let actual = port.apply(&old, &new);
                self.correct(&old, &new, &actual);
                self.model = new;
                tracing::debug!("relay: {peer}: port settings now {actual:?}");
            }
            ServerEvent::Purge(what) => {
                if let Err(e) = port.purge(what) {
                    tracing::debug!("relay: {peer}: purging {name} failed: {e}");
                }
            }
            ServerEvent::Dtr(on) => {
                if let Err(e) = port.set_dtr(on) {
                    tracing::debug!("relay: {peer}: DTR {on} not applied on {name}: {e}");
                }
            }
            ServerEvent::Rts(on) => {
                if let Err(e) = port.set_rts(on) {
                    tracing::debug!("relay: {peer}: RTS {on} not applied on {name}: {e}");
                }
            }
            ServerEvent::Break(on) => {
                if let Err(e) = port.set_break(on) {
                    tracing::debug!("relay: {peer}: break {on} not applied on {name}: {e}");
                }
            }
            ServerEvent::ClientSignature(text) => {
                match self.assembler.push(text.as_bytes(), text.is_truncated()) {
                    Assembled::NotOurs => tracing::debug!(
                        "relay: {peer}: client signature {:?}",
                        String::from_utf8_lossy(text.as_bytes())
                    ),
                    Assembled::Partial => {}
                    Assembled::Complete { id, steps } => {
                        // Replies produced so far go out before the sequence takes its time.
                        self.flush(sock).await?;
                        tracing::debug!(
                            "relay: {peer}: replaying a sequence of {} steps on {name}",
                            steps.len()
                        );
                        let outcome = run_steps(port, &steps).await;
                        if let Outcome::Failed { index, reason } = &outcome {
                            tracing::debug!(
                                "relay: {peer}: sequence step {index} failed: {reason}"
                            );
                        }
                        self.push_frame(&seq::frame(
                            seq::SERVER_SIGNATURE,
                            &seq::encode_reply(id, &outcome),
                        ));
                    }
                    Assembled::Rejected { id, reason } => {
                        tracing::debug!("relay: {peer}: sequence request rejected: {reason}");
                        self.push_frame(&seq::frame(
                            seq::SERVER_SIGNATURE,
                            &seq::encode_reply(id, &Outcome::Rejected(reason)),
                        ));
                    }
                }
            }
            other => tracing::trace!("relay: {peer}: {other:?}"),
        }
        Ok(())
    }

    /// Feed what the client sent: data to the port, requests applied at their place in it.
    async fn take_from_client<S, P>(
        &mut self,
        mut input: &[u8],
        sock: &mut S,
        port: &mut P,
    ) -> std::result::Result<(), Fault>
    where
        S: AsyncWrite + Unpin,
        P: Port,
    {
        while !input.is_empty() {
            let mut payload = Vec::new();
            let k = self.server.receive_until_event(input, &mut payload);
            input = &input[k.min(input.len())..];
            if !payload.is_empty() {
                port.write_all(&payload)
                    .await
                    .map_err(|e| Fault::Port(port_gone(self.port_name, Some(e))))?;
                self.counts.to_port += payload.len() as u64;
            }
            while let Some(event) = self.server.poll_event() {
                self.on_event(event, sock, port).await?;
            }
            if k == 0 {
                break;
            }
        }
        self.flush(sock).await
    }
}

/// Bridge an authenticated client to the port until it leaves or `stop` is set. Fails only
/// when the port fails.
pub(crate) async fn run_session<S, P>(
    sock: &mut S,
    port: &mut P,
    peer: &str,
    port_name: &str,
    stop: &StopHandle,
) -> Result<Counts>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Port,
{
    let model = port.settings();
    let mut session = Session {
        server: Server::new(model).with_signature(SIGNATURE),
        model,
        assembler: Assembler::new(),
        out: Vec::new(),
        counts: Counts::default(),
        peer,
        port_name,
    };
    let mut net = vec![0u8; CHUNK];
    let mut ser = vec![0u8; CHUNK];
    let mut fault = session.flush(sock).await.err();
    while fault.is_none() {
        tokio::select! {
            _ = stop.wait() => {
                tracing::info!("relay: stopping; closing the session with {peer}");
                break;
            }
            r = sock.read(&mut net) => match r {
                Ok(0) => {
                    tracing::info!("relay: {peer} closed the session");
                    break;
                }
                Ok(n) => fault = session.take_from_client(&net[..n], sock, port).await.err(),
                Err(e) => fault = Some(Fault::Client(e)),
            },
            r = port.read(&mut ser) => match r {
                Ok(0) => fault = Some(Fault::Port(port_gone(port_name, None))),
                Ok(n) => {
                    session.server.write_data(&ser[..n]);
                    session.counts.from_port += n as u64;
                    fault = session.flush(sock).await.err();
                }
                Err(e) => fault = Some(Fault::Port(port_gone(port_name, Some(e)))),
            },
        }
    }
    match fault {
        Some(Fault::Port(e)) => Err(e),
        Some(Fault::Client(e)) => {
            tracing::info!("relay: the connection to {peer} failed: {e}");
            Ok(session.counts)
        }
        None => Ok(session.counts),
    }
}

/// Await `fut` while reading and dropping what the port sends (nobody is connected to take
/// it); `None` if `stop` is set first. Fails if the port fails.
async fn draining<F: Future, P: Port>(
    port: &mut P,
    port_name: &str,
    stop: &StopHandle,
    fut: F,
) -> Result<Option<F::Output>> {
    tokio::pin!(fut);
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            out = &mut fut => return Ok(Some(out)),
            _ = stop.wait() => return Ok(None),
            r = port.read(&mut buf) => match r {
                Ok(0) => return Err(port_gone(port_name, None)),
                Ok(n) => tracing::trace!("relay: dropped {n} bytes from {port_name}: no client"),
                Err(e) => return Err(port_gone(port_name, Some(e))),
            },
        }
    }
}

/// A finished handshake, handed from its task to the accept loop.
struct Handshake {
    stream: TcpStream,
    peer: SocketAddr,
    result: std::result::Result<String, HandshakeFailure>,
}

type SessionTask = JoinHandle<(SerialStream, Result<Counts>)>;

async fn join(
    task: &mut Option<SessionTask>,
) -> std::result::Result<(SerialStream, Result<Counts>), tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn drain_idle(port: &mut Option<SerialStream>, buf: &mut [u8]) -> io::Result<usize> {
    match port {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

fn log_failure(peer: &SocketAddr, failure: &HandshakeFailure, backoff: Duration) {
    tracing::warn!(
        "relay: {peer}: authentication failed: {failure}; further attempts from {} are refused \
         for {:.0?}",
        peer.ip(),
        backoff
    );
}

/// Accept clients on `listener`, one session at a time.
pub(super) async fn serve_listen(
    listener: TcpListener,
    port: SerialStream,
    config: &RelayConfig,
    stop: &StopHandle,
) -> Result<RelayReport> {
    let key = Arc::new(config.key.clone());
    let port_name = config.port.clone();
    let mut report = RelayReport::default();
    let mut limiter = RateLimiter::new(config.limits);
    let mut port = Some(port);
    let mut session: Option<SessionTask> = None;
    let mut client: Option<SocketAddr> = None;
    let mut handshaking: HashSet<IpAddr> = HashSet::new();
    let (tx, mut rx) = mpsc::channel::<Handshake>(MAX_HANDSHAKES);
    let mut idle = vec![0u8; CHUNK];
    let mut capped = false;
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    loop {
        // In this order: a session that has ended frees the port before a new connection or a
        // finished handshake is looked at (else a client that connects right after the last
        // one left could be told BUSY), and the idle port is drained last.
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            joined = join(&mut session) => {
                session = None;
                client = None;
                let (serial, r) = joined.map_err(|e| {
                    Error::io("the relay session", io::Error::other(e.to_string()))
                })?;
                let counts = r?;
                report.bytes_to_port += counts.to_port;
                report.bytes_from_port += counts.from_port;
                port = Some(serial);
                if config.once {
                    break;
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("relay: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let refusal = match limiter.admit(peer.ip(), Instant::now()) {
                    Admission::PeerBackoff { remaining, failures } => {
                        tracing::debug!(
                            "relay: {peer} refused without a challenge: {failures} failed \
                             attempts, backoff {remaining:.1?} left"
                        );
                        Some(RelayLine::RetryLater)
                    }
                    Admission::GlobalCap { remaining } => {
                        if !capped {
                            tracing::warn!(
                                "relay: too many failed authentications recently; refusing \
                                 every connection for {remaining:.0?}"
                            );
                            capped = true;
                        }
                        Some(RelayLine::RetryLater)
                    }
                    Admission::Allowed => {
                        capped = false;
                        if let (Some(_), Some(current)) = (&session, client) {
                            tracing::info!("relay: {peer} refused: busy with {current}");
                            Some(RelayLine::Busy)
                        } else if handshaking.contains(&peer.ip())
                            || handshaking.len() >= MAX_HANDSHAKES
                        {
                            tracing::info!(
                                "relay: {peer} refused: another handshake is in progress"
                            );
                            Some(RelayLine::Busy)
                        } else {
                            None
                        }
                    }
                };
                if let Some(line) = refusal {
                    report.refused += 1;
                    refuse_later(&refusals, stream, line);
                    continue;
                }
                tracing::debug!("relay: {peer} connected; challenging it");
                handshaking.insert(peer.ip());
                let (key, tx, timeout) = (key.clone(), tx.clone(), config.handshake_timeout);
                tokio::spawn(async move {
                    let mut stream = stream;
                    let result =
                        challenge_peer(&mut stream, &key, Direction::ToRelay, timeout).await;
                    let _ = tx.send(Handshake { stream, peer, result }).await;
                });
            }
            Some(done) = rx.recv() => {
                let Handshake { stream, peer, result } = done;
                handshaking.remove(&peer.ip());
                let ok_line = match result {
                    Err(failure) => {
                        report.auth_failures += 1;
                        let backoff = limiter.failed(peer.ip(), Instant::now());
                        log_failure(&peer, &failure, backoff);
                        refuse_later(&refusals, stream, RelayLine::Denied);
                        continue;
                    }
                    Ok(line) => line,
                };
                limiter.succeeded(peer.ip());
                let taken = if session.is_none() { port.take() } else { None };
                let Some(mut serial) = taken else {
                    tracing::info!("relay: {peer} authenticated, but another client was first");
                    report.refused += 1;
                    refuse_later(&refusals, stream, RelayLine::Busy);
                    continue;
                };
                let mut stream = stream;
                let write = stream.write_all(ok_line.as_bytes());
                let sent = tokio::time::timeout(LINE_WRITE_TIMEOUT, write).await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::info!("relay: {peer} authenticated but went away");
                    port = Some(serial);
                    continue;
                }
                tracing::info!("relay: {peer} authenticated; serving {port_name}");
                report.sessions += 1;
                client = Some(peer);
                let (stop, name, peer_text) = (stop.clone(), port_name.clone(), peer.to_string());
                session = Some(tokio::spawn(async move {
                    let r = run_session(&mut stream, &mut serial, &peer_text, &name, &stop).await;
                    (serial, r)
                }));
            }
            r = drain_idle(&mut port, &mut idle) => match r {
                Ok(0) => return Err(port_gone(&port_name, None)),
                Ok(n) => tracing::trace!("relay: dropped {n} bytes from {port_name}: no client"),
                Err(e) => return Err(port_gone(&port_name, Some(e))),
            },
        }
    }
    if let Some(task) = session.take() {
        // The session sees the stop too and ends.
        if let Ok((_, Ok(counts))) = task.await {
            report.bytes_to_port += counts.to_port;
            report.bytes_from_port += counts.from_port;
        }
    }
    Ok(report)
}

/// What to do after one dialled connection.
enum Next {
    /// A client was served.
    Served,
    /// Dial again at once.
    Again,
    /// Dial again after this pause.
    Pause(Duration),
    /// The relay is stopping.
    Stop,
}

/// Dial once: a TCP socket, or the pipe to a modem that is online (and its call).
async fn dial(how: &Dialout) -> std::result::Result<(Outbound, Option<Call>), String> {
    match how {
        Dialout::Tcp(target) => {
            match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target.as_str())).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    Ok((Outbound::Tcp(stream), None))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {DIAL_TIMEOUT:?}")),
            }
        }
        // The modem's own timeout= bounds its dial.
        Dialout::Modem(spec) => modem::dial(spec.clone())
            .await
            .map(|(pipe, call)| (Outbound::Modem(pipe), Some(call))),
    }
}

/// Wait until the modem of `call` has hung up, reading and dropping what the port sends
/// meanwhile (when `drain`, i.e. the port still works). A stop does not cut this short: the
/// modem is not left online.
async fn hang_up<P: Port>(
    mut call: Call,
    port: &mut P,
    port_name: &str,
    drain: bool,
) -> Result<()> {
    if drain {
        if let Err(e) = draining(port, port_name, &StopHandle::new(), call.hung_up()).await {
            call.hung_up().await;
            return Err(e);
        }
        return Ok(());
    }
    call.hung_up().await;
    Ok(())
}

/// Dial out (to a client waiting on `relay-listen://`, over TCP or through a modem), serve it,
/// and dial again.
pub(super) async fn serve_connect<P: Port>(
    how: &Dialout,
    mut port: P,
    config: &RelayConfig,
    stop: &StopHandle,
) -> Result<RelayReport> {
    let port_name = config.port.as_str();
    let label = how.label();
    let mut report = RelayReport::default();
    let mut dial_delay = DIAL_BACKOFF.0;
    let mut auth_failures: u32 = 0;
    let mut warned = false;
    loop {
        let Some(dialled) = draining(&mut port, port_name, stop, dial(how)).await? else {
            break;
        };
        let (stream, call) = match dialled {
            Ok(d) => d,
            Err(why) => {
                if warned {
                    tracing::debug!("relay: cannot reach {label}: {why}; retrying");
                } else {
                    tracing::warn!(
                        "relay: cannot reach {label}: {why}; retrying every {}s at most \
                         (is a client waiting with --port relay-listen://{}?)",
                        DIAL_BACKOFF.1.as_secs(),
                        how.listen_addr()
                    );
                    warned = true;
                }
                let pause = tokio::time::sleep(dial_delay);
                dial_delay = (dial_delay * 2).min(DIAL_BACKOFF.1);
                if draining(&mut port, port_name, stop, pause).await?.is_none() {
                    break;
                }
                continue;
            }
        };
        warned = false;
        dial_delay = DIAL_BACKOFF.0;
        // `stream` is consumed (so dropped) by the time this returns: a modem's thread sees
        // the pipe closed and hangs up.
        let served = serve_dialled(
            stream,
            &mut port,
            config,
            stop,
            &label,
            &mut report,
            &mut auth_failures,
        )
        .await;
        if let Some(call) = call {
            hang_up(call, &mut port, port_name, served.is_ok()).await?;
        }
        match served? {
            Next::Stop => break,
            Next::Again => {}
            Next::Pause(d) => {
                let pause = tokio::time::sleep(d);
                if draining(&mut port, port_name, stop, pause).await?.is_none() {
                    break;
                }
            }
            Next::Served => {
                if config.once || stop.is_stopped() {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// The handshake on a dialled connection and, if it passes, the session.
async fn serve_dialled<P: Port>(
    mut stream: Outbound,
    port: &mut P,
    config: &RelayConfig,
    stop: &StopHandle,
    label: &str,
    report: &mut RelayReport,
    auth_failures: &mut u32,
) -> Result<Next> {
    let port_name = config.port.as_str();
    let handshake = challenge_peer(
        &mut stream,
        &config.key,
        Direction::FromRelay,
        config.handshake_timeout,
    );
    let Some(result) = draining(port, port_name, stop, handshake).await? else {
        return Ok(Next::Stop);
    };
    let ok_line = match result {
        Ok(line) => line,
        Err(failure) => {
            report.auth_failures += 1;
            *auth_failures += 1;
            let backoff = config
                .limits
                .backoff_base
                .saturating_mul(1u32 << (*auth_failures - 1).min(20))
                .min(config.limits.backoff_max);
            tracing::warn!(
                "relay: {label}: authentication failed: {failure}; dialling again in \
                 {backoff:.0?}"
            );
            refuse(stream, RelayLine::Denied).await;
            return Ok(Next::Pause(backoff));
        }
    };
    *auth_failures = 0;
    if stream.write_all(ok_line.as_bytes()).await.is_err() {
        tracing::info!("relay: {label} authenticated but went away");
        return Ok(Next::Again);
    }
    tracing::info!("relay: {label} authenticated; serving {port_name}");
    report.sessions += 1;
    let counts = run_session(&mut stream, port, label, port_name, stop).await?;
    report.bytes_to_port += counts.to_port;
    report.bytes_from_port += counts.from_port;
    Ok(Next::Served)
}

/// A relay in front of `port` for tests: accepts one connection on `listener`, runs the
/// handshake with `key` and, if it passes, the session. Returns the port and what the session
/// moved, or the handshake failure.
#[cfg(test)]
pub(crate) async fn serve_one_for_test<P: Port>(
    listener: TcpListener,
    port: &mut P,
    key: &Key,
) -> std::result::Result<Counts, String> {
    let (mut stream, peer) = listener.accept().await.map_err(|e| e.to_string())?;
    match challenge_peer(
        &mut stream,
        key,
        Direction::ToRelay,
        Duration::from_secs(10),
    )
    .await
    {
        Ok(line) => {
            stream
                .write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            run_session(
                &mut stream,
                port,
                &peer.to_string(),
                "fake",
                &StopHandle::new(),
            )
            .await
            .map_err(|e| e.to_string())
        }
        Err(failure) => {
            let text = failure.to_string();
            refuse(stream, RelayLine::Denied).await;
            Err(text)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};
    use tokio::io::{DuplexStream, ReadBuf};

    /// One thing a fake port saw: a line change or a settings change, and when (the paused
    /// clock in runner tests, the real one elsewhere).
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Seen {
        Dtr(bool),
        Rts(bool),
        Break(bool),
        Settings(PortSettings),
        Purge(Purge),
        Data(Vec<u8>),
    }

    /// A serial port in memory: what the relay writes goes to `chip`, what the test writes to
    /// the other end of `chip` comes back; line changes are recorded with their time. With
    /// `lines_fail`, DTR/RTS/break fail as on a pseudo-terminal; with `no_parity`, parity reads
    /// back as none, as on a pseudo-terminal.
    pub(crate) struct FakePort {
        pub(crate) chip: DuplexStream,
        pub(crate) seen: Arc<Mutex<Vec<(Seen, tokio::time::Instant)>>>,
        pub(crate) lines_fail: bool,
        pub(crate) no_parity: bool,
        pub(crate) settings: PortSettings,
    }

    impl FakePort {
        pub(crate) fn new() -> (FakePort, DuplexStream) {
            let (a, b) = tokio::io::duplex(64 * 1024);
            (
                FakePort {
                    chip: a,
                    seen: Arc::default(),
                    lines_fail: false,
                    no_parity: false,
                    settings: PortSettings {
                        baud_rate: 115_200,
                        ..PortSettings::default()
                    },
                },
                b,
            )
        }

        fn record(&self, what: Seen) {
            if let Ok(mut seen) = self.seen.lock() {
                seen.push((what, tokio::time::Instant::now()));
            }
        }

        fn line(&self, what: Seen) -> io::Result<()> {
            if self.lines_fail {
                return Err(io::Error::from_raw_os_error(25)); // ENOTTY
            }
            self.record(what);
            Ok(())
        }
    }

    impl LineControl for FakePort {
        fn set_dtr(&mut self, on: bool) -> io::Result<()> {
            self.line(Seen::Dtr(on))
        }
        fn set_rts(&mut self, on: bool) -> io::Result<()> {
            self.line(Seen::Rts(on))
        }
        fn set_break(&mut self, on: bool) -> io::Result<()> {
            self.line(Seen::Break(on))
        }
    }

    impl Port for FakePort {
        fn settings(&self) -> PortSettings {
            self.settings
        }
        fn apply(&mut self, _old: &PortSettings, new: &PortSettings) -> PortSettings {
            self.settings = *new;
            if self.no_parity {
                self.settings.parity = Parity::None;
            }
            self.record(Seen::Settings(self.settings));
            self.settings
        }
        fn purge(&mut self, what: Purge) -> io::Result<()> {
            self.record(Seen::Purge(what));
            Ok(())
        }
    }

    impl AsyncRead for FakePort {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.chip).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for FakePort {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.chip).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = &r {
                let data = buf[..*n].to_vec();
                self.record(Seen::Data(data));
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.chip).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.chip).poll_shutdown(cx)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_keeps_the_sequence_timing_on_the_paused_clock() {
        let (mut port, _chip) = FakePort::new();
        let start = tokio::time::Instant::now();
        let steps = [
            LineStep::Rts(true),
            LineStep::Dtr(true),
            LineStep::Wait(ms(100)),
            LineStep::Dtr(false),
            LineStep::Wait(ms(500)),
            LineStep::Break(true),
            LineStep::Wait(Duration::from_micros(250)),
            LineStep::Break(false),
            LineStep::Rts(false),
        ];
        assert_eq!(run_steps(&mut port, &steps).await, Outcome::Done);
        let seen: Vec<(Seen, Duration)> = port
            .seen
            .lock()
            .expect("test setup")
            .iter()
            .map(|(s, t)| (s.clone(), *t - start))
            .collect();
        let at = |n: u64| Duration::from_micros(n);
        assert_eq!(
            seen,
            [
                (Seen::Rts(true), at(0)),
                (Seen::Dtr(true), at(0)),
                (Seen::Dtr(false), at(100_000)),
                (Seen::Break(true), at(600_000)),
                // tokio's timers count whole milliseconds: 250 µs become 1 ms, never less.
                (Seen::Break(false), at(601_000)),
                (Seen::Rts(false), at(601_000)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_stops_at_the_first_failing_step() {
        let (mut port, _chip) = FakePort::new();
        port.lines_fail = true;
        let start = tokio::time::Instant::now();
        let outcome = run_steps(
            &mut port,
            &[
                LineStep::Wait(ms(10)),
                LineStep::Dtr(true),
                LineStep::Wait(ms(1000)),
            ],
        )
        .await;
        match outcome {
            Outcome::Failed { index: 1, reason } => {
                assert!(reason.starts_with("DTR: "), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The wait after the failure did not run.
        assert_eq!(tokio::time::Instant::now() - start, ms(10));
    }

    /// Drive a session over an in-memory socket: the client's side is raw RFC 2217 bytes.
    async fn session_with(port: &mut FakePort, client_bytes: Vec<u8>) -> (Counts, Vec<u8>) {
        let (mut relay_side, mut client_side) = tokio::io::duplex(64 * 1024);
        let writer = async move {
            client_side
                .write_all(&client_bytes)
                .await
                .expect("test setup");
            client_side.shutdown().await.expect("test setup");
            let mut back = Vec::new();
            client_side
                .read_to_end(&mut back)
                .await
                .expect("test setup");
            back
        };
        let session = async {
            let counts = run_session(&mut relay_side, port, "test", "fake", &StopHandle::new())
                .await
                .expect("the port does not fail");
            drop(relay_side);
            counts
        };
        tokio::join!(session, writer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_sequence_request_runs_in_order_with_the_data_and_is_acknowledged() {
        let (mut port, mut chip) = FakePort::new();
        let mut input = vec![0xFF, 0xFB, 0x2C]; // WILL COM-PORT-OPTION
        input.extend_from_slice(b"a");
        let frames = seq::encode_request(
            5,
            &[
                LineStep::Dtr(true),
                LineStep::Wait(ms(100)),
                LineStep::Dtr(false),
            ],
        )
        .expect("test setup");
        input.extend(seq::frame(seq::CLIENT_SIGNATURE, &frames[0]));
        input.extend_from_slice(b"b\xFF\xFF");
        let (counts, back) = session_with(&mut port, input).await;
        assert_eq!(counts.to_port, 3);
        let mut to_chip = vec![0u8; 3];
        chip.read_exact(&mut to_chip).await.expect("test setup");
        assert_eq!(to_chip, b"ab\xFF");
        let seen: Vec<Seen> = port
            .seen
            .lock()
            .expect("test setup")
            .iter()
            .map(|(s, _)| s.clone())
            .collect();
        assert_eq!(
            seen,
            [
                Seen::Data(b"a".to_vec()),
                Seen::Dtr(true),
                Seen::Dtr(false),
                Seen::Data(b"b\xFF".to_vec()),
            ]
        );
        let reply = seq::frame(seq::SERVER_SIGNATURE, b"stm32boot-seq/1 5 ok");
        assert!(
            back.windows(reply.len()).any(|w| w == reply.as_slice()),
            "{back:02X?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parity_the_port_cannot_take_is_corrected() {
        let (mut port, _chip) = FakePort::new();
        port.no_parity = true;
        let mut input = vec![0xFF, 0xFB, 0x2C];
        input.extend_from_slice(&[0xFF, 0xFA, 0x2C, 0x03, 0x03, 0xFF, 0xF0]); // SET-PARITY EVEN
        let (_, back) = session_with(&mut port, input).await;
        let ack = [0xFF, 0xFA, 0x2C, 0x67, 0x03, 0xFF, 0xF0];
        let correction = [0xFF, 0xFA, 0x2C, 0x67, 0x01, 0xFF, 0xF0];
        let at = |pat: &[u8]| back.windows(pat.len()).position(|w| w == pat);
        let (a, c) = (at(&ack), at(&correction));
        assert!(a.is_some() && c.is_some() && a < c, "{back:02X?}");
    }

    #[tokio::test(start_paused = true)]
    async fn line_requests_that_fail_do_not_end_the_session() {
        let (mut port, mut chip) = FakePort::new();
        port.lines_fail = true;
        let mut input = vec![0xFF, 0xFB, 0x2C];
        input.extend_from_slice(&[0xFF, 0xFA, 0x2C, 0x05, 0x08, 0xFF, 0xF0]); // DTR ON
        input.extend_from_slice(b"x");
        let frames = seq::encode_request(9, &[LineStep::Rts(true)]).expect("test setup");
        input.extend(seq::frame(seq::CLIENT_SIGNATURE, &frames[0]));
        let (counts, back) = session_with(&mut port, input).await;
        assert_eq!(counts.to_port, 1);
        let mut to_chip = [0u8; 1];
        chip.read_exact(&mut to_chip).await.expect("test setup");
        assert_eq!(&to_chip, b"x");
        let text = String::from_utf8_lossy(&back);
        assert!(text.contains("stm32boot-seq/1 9 failed 0 RTS: "), "{text}");
    }
}
