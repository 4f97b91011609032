//! `stm32boot relay`: share a local serial port with remote stm32boot clients.
//!
//! The relay opens the port exclusively (TIOCEXCL and an exclusive `flock`, so other local
//! programs cannot open it while the relay runs), then either listens for clients
//! ([`RelayEndpoint::Listen`], 127.0.0.1:7000 by default; any other address must be given
//! explicitly) or dials out to a client waiting with `--port relay-listen://HOST:PORT`
//! ([`RelayEndpoint::Connect`], for gateways behind NAT; it dials again after every session).
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
pub mod seq;
pub(crate) mod server;

pub use auth::Key;
pub use limit::Limits;

use crate::error::{Error, Result};
use crate::link::LinkError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the relay listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";

/// How long a client has to complete the handshake, by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the relay meets its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEndpoint {
    /// Listen on this address (`host:port`; port 0 picks a free one).
    Listen(String),
    /// Dial out to a client waiting on `relay-listen://` at this `host:port`, and again after
    /// each session or failure (with backoff).
    Connect(String),
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
    /// example), and with [`Error::Io`] if the address cannot be bound.
    pub fn open(config: RelayConfig) -> Result<Relay> {
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
            (RelayEndpoint::Connect(addr), _) => format!("relay-listen://{addr}"),
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
            config,
            stop,
        } = self;
        runtime.block_on(async move {
            match (listener, &config.endpoint) {
                (Some(listener), _) => server::serve_listen(listener, port, &config, &stop).await,
                (None, RelayEndpoint::Connect(target)) => {
                    server::serve_connect(target, port, &config, &stop).await
                }
                (None, RelayEndpoint::Listen(addr)) => Err(Error::Link(LinkError::Open {
                    port: format!("relay://{addr}"),
                    reason: "not bound".into(),
                })),
            }
        })
    }
}
