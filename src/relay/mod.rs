//! `stm32boot relay`: share a local serial port with remote stm32boot clients.
//!
//! The relay opens the port exclusively (TIOCEXCL and an exclusive `flock`, so other local
//! programs cannot open it while the relay runs), then either listens for clients
//! ([`RelayEndpoint::Listen`], 127.0.0.1:7000 by default; any other address must be given
//! explicitly) or dials out to a client waiting with `--port relay-listen://HOST:PORT`
//! ([`RelayEndpoint::Connect`], for gateways behind NAT; it dials again after every session).
//!
//! A gateway without a network of its own dials out through a local AT modem instead:
//! `--connect 'modem:/dev/ttyUSB2?profile=telit&apn=internet&host=HOST&port=PORT'` (the keys of
//! a `modem:` port, [`ModemSpec::parse`], checked before anything is opened; `host=` and
//! `port=` are where the client waits). For each session the relay dials with
//! [`ModemLink`](crate::transport::modem::ModemLink) on a thread of its own, bridged to the
//! session by an in-memory pipe (the private `modem` module); the handshake and the session are
//! the same as over TCP, so nothing reaches the port before the handshake has passed. The modem
//! reporting `NO CARRIER` ends the session like a closed socket; after every session (or failed
//! handshake) the relay escapes to command mode and hangs up, and waits for that before it dials
//! again (with the same backoff) or exits.
//!
//! Every connection must first pass the challenge-response handshake of [`auth`] with the
//! pre-shared key; until it has, nothing it sends is read beyond the handshake line, and nothing
//! reaches the port. Failures are logged with the peer's address (never the key or the proofs)
//! and rate-limited ([`limit`]): exponential backoff per peer address and a global cap; a peer in
//! backoff is refused before a challenge. One client is served at a time: another one gets a
//! `BUSY` line and is closed.
//!
//! After the handshake the connection speaks RFC 2217 (the `rfc2217` crate's server state
//! machine): data goes to the port and back, SET-BAUDRATE/DATASIZE/PARITY/STOPSIZE change the
//! port's settings (a value the port cannot take is answered with the one in effect, so a client
//! asking for parity on a pseudo-terminal learns that it has none), SET-CONTROL drives DTR, RTS
//! and break (where the port cannot, as on a pseudo-terminal, the failure is logged at debug
//! level and the client stays connected), PURGE-DATA clears the port's buffers. The vendor
//! extension of [`seq`] carries a whole reset or boot-entry sequence, which the relay replays
//! with its own timers next to the port, so that network latency cannot break its timing.
//!
//! The relay runs on a tokio runtime that [`Relay::open`] creates; the rest of the crate stays
//! synchronous. Its logs go through `tracing`.

pub mod auth;
pub mod limit;
pub(crate) mod modem;
pub mod seq;
pub(crate) mod server;

pub use auth::Key;
pub use limit::Limits;

use crate::error::{Error, Result};
use crate::link::LinkError;
use crate::transport::modem::{DialTarget, ModemSpec};
use modem::Dialout;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the relay listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";

/// How long a client has to complete the handshake, by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the relay meets its clients.
#[derive(Clone, PartialEq, Eq)]
pub enum RelayEndpoint {
    /// Listen on this address (`host:port`; port 0 picks a free one).
    Listen(String),
    /// Dial out to a client waiting on `relay-listen://` at this `host:port`, and again after
    /// each session or failure (with backoff). `modem:PATH?profile=…&host=HOST&port=PORT`
    /// dials `HOST:PORT` through a local AT modem instead ([`RelayEndpoint::modem`]).
    Connect(String),
}

/// What `modem:` targets start with.
const MODEM_PREFIX: &str = "modem:";

impl RelayEndpoint {
    /// For `Connect("modem:…")`, the modem to dial through, parsed and checked (without
    /// opening anything); `None` for any other endpoint. Fails with
    /// [`Error::InvalidRequest`] on a malformed spec, or one that dials a number (`number=`)
    /// instead of the client's `host=` and `port=`.
    pub fn modem(&self) -> Result<Option<ModemSpec>> {
        let RelayEndpoint::Connect(target) = self else {
            return Ok(None);
        };
        let Some(rest) = target.strip_prefix(MODEM_PREFIX) else {
            return Ok(None);
        };
        let spec = ModemSpec::parse(rest).map_err(|e| match e {
            Error::InvalidRequest(text) => Error::InvalidRequest(format!("--connect {text}")),
            other => other,
        })?;
        if let DialTarget::Number(_) = spec.target {
            return Err(Error::InvalidRequest(
                "--connect modem: the relay dials a client waiting with --port \
                 relay-listen://HOST:PORT: give the modem host= and port= (number= dials a phone \
                 line, where no client can wait)"
                    .into(),
            ));
        }
        Ok(Some(spec))
    }

    /// The endpoint for messages: the address, or for a modem `HOST:PORT through the telit
    /// modem on /dev/ttyUSB2` (never the modem's options: `pin=` is a secret).
    pub fn describe(&self) -> String {
        match self {
            RelayEndpoint::Listen(addr) => addr.clone(),
            RelayEndpoint::Connect(target) => match self.modem() {
                Ok(Some(spec)) => format!(
                    "{} through the {} modem on {}",
                    spec.target, spec.profile, spec.path
                ),
                Ok(None) => target.clone(),
                Err(_) => "an invalid modem: target".into(),
            },
        }
    }
}

impl std::fmt::Debug for RelayEndpoint {
    /// Like the derived form, with a modem's options left out (`pin=` is a secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEndpoint::Listen(addr) => f.debug_tuple("Listen").field(addr).finish(),
            RelayEndpoint::Connect(target) => match target.split_once('?') {
                Some((head, _)) if target.starts_with(MODEM_PREFIX) => f
                    .debug_tuple("Connect")
                    .field(&format!("{head}?…"))
                    .finish(),
                _ => f.debug_tuple("Connect").field(target).finish(),
            },
        }
    }
}

/// Whether two paths name the same file (as given, or once links are resolved).
fn same_file(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// What the relay serves, where, and with which key.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The serial port to share (`/dev/ttyUSB0`, a pseudo-terminal).
    pub port: String,
    /// The baud rate it starts at (8N1); clients set their own.
    pub baud: u32,
    /// Listen or dial out.
    pub endpoint: RelayEndpoint,
    /// The pre-shared key.
    pub key: Key,
    /// Stop after the first client session.
    pub once: bool,
    /// How long a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Rate limiting of failed handshakes.
    pub limits: Limits,
}

impl RelayConfig {
    /// Share `port` at 115200 baud on [`DEFAULT_LISTEN`] with the default limits.
    pub fn new(port: impl Into<String>, key: Key) -> RelayConfig {
        RelayConfig {
            port: port.into(),
            baud: 115_200,
            endpoint: RelayEndpoint::Listen(DEFAULT_LISTEN.to_string()),
            key,
            once: false,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            limits: Limits::default(),
        }
    }
}

/// What the relay did, once it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayReport {
    /// Client sessions served (authenticated connections).
    pub sessions: u64,
    /// Handshakes that failed (wrong key, no answer in time, garbage).
    pub auth_failures: u64,
    /// Connections refused before a challenge (busy, backoff, global cap, too many at once).
    pub refused: u64,
    /// Bytes written to the serial port.
    pub bytes_to_port: u64,
    /// Bytes read from the serial port and sent to clients.
    pub bytes_from_port: u64,
}

/// Stops a running relay from another thread (a Ctrl-C handler, a test).
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl StopHandle {
    /// A handle that has not been used.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Ask the relay to stop: it closes the session and returns from [`Relay::run`].
    pub fn stop(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Wait until [`StopHandle::stop`] is called.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// A relay with its port open and its listener bound, ready to [`Relay::run`].
pub struct Relay {
    runtime: tokio::runtime::Runtime,
    port: tokio_serial::SerialStream,
    listener: Option<tokio::net::TcpListener>,
    /// The modem to dial out through, for a `modem:` target.
    modem: Option<Arc<ModemSpec>>,
    config: RelayConfig,
    stop: StopHandle,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("port", &self.config.port)
            .field("endpoint", &self.config.endpoint)
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Open the serial port exclusively and, when listening, bind the address. Fails with
    /// [`LinkError::Open`] if the port cannot be opened (another program holds it, for
    /// example), and with [`Error::Io`] if the address cannot be bound. A `modem:` target is
    /// checked first ([`RelayEndpoint::modem`]): if it is malformed, or names the shared port
    /// itself, nothing is opened. The modem itself is only opened to dial, for each session.
    pub fn open(config: RelayConfig) -> Result<Relay> {
        let modem = config.endpoint.modem()?;
        if let Some(spec) = &modem {
            if same_file(&spec.path, &config.port) {
                return Err(Error::InvalidRequest(format!(
                    "--connect modem:{} is the port the relay shares (--port {}): give the \
                     modem's own serial port",
                    spec.path, config.port
                )));
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the relay's runtime", e))?;
        let port = {
            let _guard = runtime.enter();
            server::open_port(&config.port, config.baud)?
        };
        let listener = match &config.endpoint {
            RelayEndpoint::Listen(addr) => Some(runtime.block_on(async {
                tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| {
                        Error::io(
                            format!(
                                "listening on {addr} (is another relay or program using that \
                                 port? give another with --listen)"
                            ),
                            e,
                        )
                    })
            })?),
            RelayEndpoint::Connect(_) => None,
        };
        Ok(Relay {
            runtime,
            port,
            listener,
            modem: modem.map(Arc::new),
            config,
            stop: StopHandle::new(),
        })
    }

    /// The address the relay listens on (`None` when it dials out).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What clients pass as `--port`: `relay://127.0.0.1:7000`, or, when the relay dials out,
    /// `relay-listen://HOST:PORT`.
    pub fn url(&self) -> String {
        match (&self.config.endpoint, self.local_addr()) {
            (RelayEndpoint::Listen(_), Some(addr)) => format!("relay://{addr}"),
            (RelayEndpoint::Listen(addr), None) => format!("relay://{addr}"),
            (RelayEndpoint::Connect(addr), _) => match &self.modem {
                Some(spec) => format!("relay-listen://{}", spec.target),
                None => format!("relay-listen://{addr}"),
            },
        }
    }

    /// A handle that stops [`Relay::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serve until stopped (or, with [`RelayConfig::once`], until the first session ends).
    /// Fails if the serial port fails (a USB adapter unplugged, the simulator gone).
    pub fn run(self) -> Result<RelayReport> {
        let Relay {
            runtime,
            port,
            listener,
            modem,
            config,
            stop,
        } = self;
        runtime.block_on(async move {
            match (listener, &config.endpoint) {
                (Some(listener), _) => server::serve_listen(listener, port, &config, &stop).await,
                (None, RelayEndpoint::Connect(target)) => {
                    let how = match modem {
                        Some(spec) => Dialout::Modem(spec),
                        None => Dialout::Tcp(target.clone()),
                    };
                    server::serve_connect(&how, port, &config, &stop).await
                }
                (None, RelayEndpoint::Listen(addr)) => Err(Error::Link(LinkError::Open {
                    port: format!("relay://{addr}"),
                    reason: "not bound".into(),
                })),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::modem::Profile;

    const TELIT: &str = "modem:/dev/ttyUSB2?profile=telit&apn=internet&host=203.0.113.7&port=7000";

    fn config(port: &str, target: &str) -> RelayConfig {
        let key = Key::from_bytes(b"0123456789abcdef0123456789", "the test").expect("test setup");
        let mut config = RelayConfig::new(port, key);
        config.endpoint = RelayEndpoint::Connect(target.into());
        config
    }

    fn refusal(port: &str, target: &str) -> String {
        match Relay::open(config(port, target)) {
            Err(Error::InvalidRequest(text)) => text,
            Err(other) => panic!("{target}: not refused as invalid: {other}"),
            Ok(relay) => panic!("{target}: opened {relay:?}"),
        }
    }

    #[test]
    fn a_modem_target_is_parsed_and_named_without_its_options() {
        let endpoint = RelayEndpoint::Connect(format!("{TELIT}&pin=1234"));
        let spec = endpoint.modem().expect("valid").expect("a modem");
        assert_eq!(spec.path, "/dev/ttyUSB2");
        assert_eq!(spec.profile, Profile::Telit);
        assert_eq!(spec.target.to_string(), "203.0.113.7:7000");
        assert_eq!(
            endpoint.describe(),
            "203.0.113.7:7000 through the telit modem on /dev/ttyUSB2"
        );
        let debug = format!("{endpoint:?}");
        assert!(
            !debug.contains("1234") && debug.contains("/dev/ttyUSB2"),
            "{debug}"
        );
        for plain in [
            RelayEndpoint::Connect("203.0.113.7:7000".into()),
            RelayEndpoint::Listen(DEFAULT_LISTEN.into()),
        ] {
            assert_eq!(plain.modem().expect("valid"), None);
        }
    }

    #[test]
    fn a_malformed_modem_target_is_refused_before_the_port_is_opened() {
        // The shared port does not exist: opening it first would fail differently.
        let port = "/nonexistent/ttyUSB0";
        for (target, says) in [
            ("modem:/dev/ttyUSB2?profile=telit&host=h&port=7000", "apn="),
            (
                "modem:/dev/ttyUSB2?profile=nokia&apn=x&host=h&port=7000",
                "telit",
            ),
            ("modem:/dev/ttyUSB2?profile=telit&apn=x&host=h", "port="),
            ("modem:?profile=telit&apn=x&host=h&port=7000", "serial port"),
            (
                "modem:/dev/ttyUSB2?profile=hayes&number=T5551234",
                "number=",
            ),
        ] {
            let text = refusal(port, target);
            assert!(
                text.contains("--connect") && text.contains(says),
                "{target}: {text}"
            );
        }
        // The modem on the shared port itself.
        let text = refusal(
            "/dev/ttyUSB2",
            "modem:/dev/ttyUSB2?profile=telit&apn=x&host=h&port=7000",
        );
        assert!(text.contains("the port the relay shares"), "{text}");
    }
}
