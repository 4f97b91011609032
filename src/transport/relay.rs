//! The client side of `stm32boot relay`: `relay://HOST:PORT` connects to a relay, and
//! `relay-listen://ADDR:PORT` waits for a relay that dials out (`stm32boot relay --connect`,
//! for gateways behind NAT).
//!
//! Either way the connection first runs the handshake of [`crate::relay::auth`] with the
//! pre-shared key, which proves the key to the relay and the relay's key to us; then it speaks
//! RFC 2217 through [`Rfc2217Link`], so the baud rate, parity, DTR, RTS, break and purges reach
//! the relay's port. [`Link::run_steps`] hands a whole reset or boot-entry sequence to the relay
//! ([`crate::relay::seq`]), which replays it next to the port with its own timers.
//!
//! The key comes from the file named by `?key_file=PATH`, else from the file named by
//! `STM32BOOT_RELAY_KEY_FILE`, else from `STM32BOOT_RELAY_KEY` itself. It is never part of
//! the port (`?key=` is refused), so it does not end up in shell histories or logs.

use super::rfc2217::{Rfc2217Link, NEGOTIATE_TIMEOUT};
use super::tcp::{connect, is_disconnect, is_would_block, line_text};
use crate::error::{Error, Result};
use crate::link::{LineSettings, LineStep, Link, LinkError};
use crate::relay::auth::{self, Direction, Key, LineReader, RelayLine, Response};
use crate::relay::seq::{self, Outcome};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long the relay's handshake may take, from the connection to its verdict.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `relay-listen://` waits for a relay to dial in, unless `?wait=` says otherwise.
pub const LISTEN_WAIT: Duration = Duration::from_secs(60);

/// How much longer than the sequence's own waits the relay may take to acknowledge it.
const SEQUENCE_MARGIN: Duration = Duration::from_secs(10);

/// A `relay://` or `relay-listen://` port, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// `host:port`: where the relay listens, or (`relay-listen://`) where we listen.
    pub addr: String,
    /// `?key_file=PATH`.
    pub key_file: Option<PathBuf>,
    /// `?wait=DURATION` (`relay-listen://` only): how long to wait for a relay.
    pub wait: Option<Duration>,
}

impl RelayTarget {
    /// Parse what follows `scheme://`: `HOST:PORT`, then optionally `?key_file=PATH` and, for
    /// `relay-listen`, `&wait=DURATION` (in either order).
    pub(crate) fn parse(scheme: &str, rest: &str) -> Result<RelayTarget> {
        let (addr, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let addr = super::host_port(scheme, addr)?;
        let mut target = RelayTarget {
            addr,
            key_file: None,
            wait: None,
        };
        let listen = scheme == "relay-listen";
        // Messages show the address only: the query might hold a misplaced key.
        let shown = format!("{scheme}://{}", target.addr);
        let bad = |what: String| Error::InvalidRequest(format!("'{shown}?…': {what}"));
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "key_file" if !value.is_empty() => target.key_file = Some(PathBuf::from(value)),
                "wait" if listen && !value.is_empty() => {
                    let wait = humantime::parse_duration(value).map_err(|e| {
                        bad(format!(
                            "wait '{value}' is not a duration ({e}); write e.g. 90s or 5m"
                        ))
                    })?;
                    target.wait = Some(wait);
                }
                "key" => {
                    return Err(bad(format!(
                        "the key itself cannot be part of the port (it would end up in shell \
                         histories and logs): put it in a file readable only by you and pass \
                         ?key_file=PATH, or set {}=PATH",
                        auth::KEY_FILE_ENV
                    )))
                }
                _ => {
                    let known = if listen {
                        "key_file and wait"
                    } else {
                        "key_file"
                    };
                    return Err(bad(format!(
                        "unknown or empty option '{name}' (known: {known})"
                    )));
                }
            }
        }
        Ok(target)
    }
}

/// The key for a client: `?key_file=`, else `STM32BOOT_RELAY_KEY_FILE`, else
/// `STM32BOOT_RELAY_KEY`. A key file that cannot be read or a key of the wrong length is bad
/// input ([`Error::InvalidRequest`], exit code 2), found before anything is connected; no key
/// at all is a link that cannot be opened.
fn client_key(target: &RelayTarget, port: &str) -> Result<Key> {
    let file = target
        .key_file
        .clone()
        .or_else(|| std::env::var_os(auth::KEY_FILE_ENV).map(PathBuf::from));
    let key = match file {
        Some(path) => Key::from_file(&path).map(Some),
        None => Key::from_env(),
    };
    match key {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(Error::Link(LinkError::Open {
            port: port.to_string(),
            reason: format!(
                "no relay key configured: put the relay's key in a file readable only by you \
                 and set {}=PATH (or add ?key_file=PATH to the port), or set {}",
                auth::KEY_FILE_ENV,
                auth::KEY_ENV
            ),
        })),
        Err(e) => Err(Error::InvalidRequest(format!(
            "{port}: nothing was connected: {}",
            e.root()
        ))),
    }
}

/// Why the client's handshake failed.
#[derive(Debug)]
enum HandshakeError {
    /// Refused: the reason for [`LinkError::Open`].
    Refused(String),
    /// Something other than a relay answered.
    NotARelay(String),
    /// I/O.
    Link(LinkError),
}

impl HandshakeError {
    fn text(self) -> String {
        match self {
            HandshakeError::Refused(s) | HandshakeError::NotARelay(s) => s,
            HandshakeError::Link(e) => format!("during the relay handshake: {e}"),
        }
    }
}

/// Read one handshake line by the deadline, byte by byte so that nothing after it is taken
/// from the socket.
fn read_line(
    stream: &mut TcpStream,
    deadline: Instant,
    what: &str,
) -> std::result::Result<String, HandshakeError> {
    let mut reader = LineReader::new();
    let mut byte = [0u8; 1];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HandshakeError::NotARelay(format!(
                "no {what} from the peer within {}s: is it a stm32boot relay (`stm32boot \
                 relay`), and is the port number right?",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| HandshakeError::Link(LinkError::io("setting the read timeout", e)))?;
        match stream.read(&mut byte) {
            Ok(0) => {
                let said = if reader.is_empty() {
                    String::new()
                } else {
                    " in the middle of a line".to_string()
                };
                return Err(HandshakeError::Refused(format!(
                    "the relay closed the connection{said} before its {what} (another stm32boot \
                     relay client may be connected, or it refuses this address for a while \
                     after failed attempts)"
                )));
            }
            Ok(_) => match reader.push(byte[0]) {
                Ok(Some(line)) => return Ok(line),
                Ok(None) => {}
                Err(e) => {
                    let hint = if byte[0] == 0xFF {
                        "; it speaks Telnet: an RFC 2217 bridge? use rfc2217://"
                    } else {
                        ""
                    };
                    return Err(HandshakeError::NotARelay(format!(
                        "the peer is not a stm32boot relay: it sent {e}{hint}"
                    )));
                }
            },
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_would_block(&e) => {}
            Err(e) if is_disconnect(&e) => return Err(HandshakeError::Link(LinkError::Closed)),
            Err(e) => {
                return Err(HandshakeError::Link(LinkError::io(
                    "reading the relay's handshake",
                    e,
                )))
            }
        }
    }
}

/// The client's side of the handshake on a connected stream: answer the relay's challenge and
/// check its proof. Leaves the stream right after the relay's `OK` line.
fn handshake(
    stream: &mut TcpStream,
    key: &Key,
    dir: Direction,
) -> std::result::Result<(), HandshakeError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let greeting = read_line(stream, deadline, "challenge")?;
    let relay_nonce = match RelayLine::parse(&greeting) {
        Ok(RelayLine::Challenge(n)) => n,
        Ok(RelayLine::Busy) => {
            return Err(HandshakeError::Refused(
                "the relay is busy with another client (it serves one at a time); try again \
                 when that one is done"
                    .into(),
            ))
        }
        Ok(RelayLine::RetryLater) => {
            return Err(HandshakeError::Refused(
                "the relay refuses this address for now after failed authentication attempts \
                 (wrong or missing key); fix the key, wait, and try again"
                    .into(),
            ))
        }
        Ok(other) => {
            return Err(HandshakeError::NotARelay(format!(
                "the relay sent {} before any challenge",
                other.encode().split(' ').nth(1).unwrap_or("?").trim_end()
            )))
        }
        Err(e) => {
            return Err(HandshakeError::NotARelay(format!(
                "the peer is not a stm32boot relay: {e}"
            )))
        }
    };
    let client_nonce = auth::fresh_nonce().map_err(|e| HandshakeError::Refused(e.to_string()))?;
    let answer = Response::new(key, dir, &relay_nonce, client_nonce).encode();
    stream
        .set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|()| stream.write_all(answer.as_bytes()))
        .map_err(|e| {
            if is_disconnect(&e) {
                HandshakeError::Link(LinkError::Closed)
            } else {
                HandshakeError::Link(LinkError::io("sending the relay handshake", e))
            }
        })?;
    let verdict = read_line(stream, deadline, "verdict")?;
    match RelayLine::parse(&verdict) {
        Ok(RelayLine::Ok(tag)) => {
            if key.verify_relay(dir, &relay_nonce, &client_nonce, &tag) {
                Ok(())
            } else {
                Err(HandshakeError::Refused(format!(
                    "the peer accepted our answer but could not prove that it holds {}: it is \
                     not a relay holding this key (a different relay, or something in between); \
                     nothing was sent to it",
                    key.source()
                )))
            }
        }
        Ok(RelayLine::Denied) => Err(HandshakeError::Refused(format!(
            "the relay refused the key: {} is not the key the relay was started with; check \
             {} (or ?key_file=) and the relay's --key-file",
            key.source(),
            auth::KEY_FILE_ENV
        ))),
        Ok(RelayLine::Busy) => Err(HandshakeError::Refused(
            "the relay accepted the key but is busy with another client; try again when that \
             one is done"
                .into(),
        )),
        Ok(_) | Err(_) => Err(HandshakeError::NotARelay(
            "the relay answered the handshake with something unexpected".into(),
        )),
    }
}

/// A serial port behind `stm32boot relay`.
#[derive(Debug)]
pub struct RelayLink {
    inner: Rfc2217Link,
    /// `relay://host:port` or `relay-listen://addr:port`, for messages.
    url: String,
    /// The next sequence id.
    next_id: u32,
}

impl RelayLink {
    /// Connect to the relay at `target.addr`, authenticate, and set the line to `line`.
    pub fn connect(target: &RelayTarget, line: LineSettings) -> Result<RelayLink> {
        let url = format!("relay://{}", target.addr);
        let key = client_key(target, &url)?;
        let mut stream = connect(&target.addr, &url)?;
        handshake(&mut stream, &key, Direction::ToRelay).map_err(|e| LinkError::Open {
            port: url.clone(),
            reason: e.text(),
        })?;
        Ok(RelayLink::after_handshake(stream, &target.addr, url, line)?)
    }

    /// Listen on `target.addr` for a relay that dials out (`stm32boot relay --connect`), for
    /// at most `target.wait` (default [`LISTEN_WAIT`]); serve the first one that passes the
    /// handshake. Connections that fail it are logged and closed, and waiting goes on.
    pub fn listen(target: &RelayTarget, line: LineSettings) -> Result<RelayLink> {
        let url = format!("relay-listen://{}", target.addr);
        let open_error = |reason: String| LinkError::Open {
            port: url.clone(),
            reason,
        };
        let key = client_key(target, &url)?;
        let wait = target.wait.unwrap_or(LISTEN_WAIT);
        let listener = TcpListener::bind(target.addr.as_str()).map_err(|e| {
            open_error(format!(
                "cannot listen on {}: {e} (is another program using that port?)",
                target.addr
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| open_error(format!("cannot set up the listener: {e}")))?;
        tracing::info!(
            "waiting up to {:.0?} for a relay to dial in on {}",
            wait,
            target.addr
        );
        let deadline = Instant::now() + wait;
        let mut last_failure: Option<(SocketAddr, String)> = None;
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let ready = stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_nodelay(true));
                    if let Err(e) = ready {
                        last_failure = Some((peer, e.to_string()));
                        continue;
                    }
                    match handshake(&mut stream, &key, Direction::FromRelay) {
                        Ok(()) => {
                            tracing::info!("relay {peer} dialled in and proved the key");
                            return Ok(RelayLink::after_handshake(
                                stream,
                                &peer.to_string(),
                                url.clone(),
                                line,
                            )?);
                        }
                        Err(e) => {
                            let text = e.text();
                            tracing::warn!("{url}: {peer} failed the relay handshake: {text}");
                            last_failure = Some((peer, text));
                        }
                    }
                }
                Err(e) if is_would_block(&e) || e.kind() == ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        let mut reason = format!(
                            "no relay dialled in within {:.0?}: start `stm32boot relay --connect \
                             HOST:{}` next to the chip, or wait longer with ?wait=",
                            wait,
                            target.addr.rsplit_once(':').map_or("PORT", |(_, p)| p)
                        );
                        if let Some((peer, text)) = last_failure {
                            reason.push_str(&format!(
                                "; the last attempt, from {peer}, failed: {text}"
                            ));
                        }
                        return Err(open_error(reason).into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(open_error(format!("accepting a connection: {e}")).into()),
            }
        }
    }

    fn after_handshake(
        stream: TcpStream,
        addr: &str,
        url: String,
        line: LineSettings,
    ) -> std::result::Result<RelayLink, LinkError> {
        let inner = Rfc2217Link::over_stream(stream, addr, &url, line, NEGOTIATE_TIMEOUT)?;
        Ok(RelayLink {
            inner,
            url,
            next_id: 1,
        })
    }
}

impl Link for RelayLink {
    fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
        self.inner.write_all(data)
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::result::Result<usize, LinkError> {
        self.inner.read(buf, timeout)
    }

    fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
        self.inner.discard_input()
    }

    fn set_dtr(&mut self, level: bool) -> std::result::Result<(), LinkError> {
        self.inner.set_dtr(level)
    }

    fn set_rts(&mut self, level: bool) -> std::result::Result<(), LinkError> {
        self.inner.set_rts(level)
    }

    fn set_break(&mut self, on: bool) -> std::result::Result<(), LinkError> {
        self.inner.set_break(on)
    }

    fn set_line(&mut self, settings: LineSettings) -> std::result::Result<(), LinkError> {
        self.inner.set_line(settings)
    }

    fn line(&self) -> LineSettings {
        self.inner.line()
    }

    /// Hand the whole sequence to the relay, which replays it next to the port with its own
    /// timers, and wait until it says it is done. Stops, as the default does, at the first step
    /// that fails there: a DTR, RTS or break step the relay's port cannot drive (a
    /// pseudo-terminal) is [`LinkError::Unsupported`].
    fn run_steps(&mut self, steps: &[LineStep]) -> std::result::Result<(), LinkError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let frames = seq::encode_request(id, steps).map_err(|reason| LinkError::Unsupported {
            what: format!("this reset sequence ({reason})"),
            link: self.describe(),
        })?;
        for frame in &frames {
            self.inner.send_com_port(seq::CLIENT_SIGNATURE, frame)?;
        }
        let waits: Duration = steps
            .iter()
            .map(|s| match s {
                LineStep::Wait(d) => *d,
                _ => Duration::ZERO,
            })
            .sum();
        let limit = waits + SEQUENCE_MARGIN;
        let deadline = Instant::now() + limit;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let text = match self.inner.next_signature(remaining) {
                Ok(t) => t,
                Err(LinkError::Timeout(_)) => {
                    return Err(LinkError::io(
                        format!(
                            "{}: waiting for the relay to run the reset sequence",
                            self.url
                        ),
                        std::io::Error::new(
                            ErrorKind::TimedOut,
                            format!("no answer within {:.1}s", limit.as_secs_f64()),
                        ),
                    ))
                }
                Err(e) => return Err(e),
            };
            match seq::parse_reply(&text) {
                Some((got, outcome)) if got == id => {
                    return match outcome {
                        Outcome::Done => Ok(()),
                        Outcome::Failed { index, reason } => Err(LinkError::Unsupported {
                            what: format!(
                                "step {} of the reset sequence on the relay's port ({reason})",
                                index + 1
                            ),
                            link: self.describe(),
                        }),
                        Outcome::Rejected(reason) => Err(LinkError::Unsupported {
                            what: format!("this reset sequence (the relay rejected it: {reason})"),
                            link: self.describe(),
                        }),
                    }
                }
                _ => tracing::debug!(
                    "{}: ignoring signature {:?}",
                    self.url,
                    String::from_utf8_lossy(&text)
                ),
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} at {}", self.url, line_text(self.inner.line()))
    }

    fn close(&mut self) -> std::result::Result<(), LinkError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Parity;
    use crate::relay::server::serve_one_for_test;
    use crate::relay::server::tests::{FakePort, Seen};
    use std::thread;

    const KEY: &[u8] = b"relay-test-key-0123456789abcdef";

    fn key_file(dir: &tempfile::TempDir, content: &[u8]) -> PathBuf {
        let path = dir.path().join("key");
        std::fs::write(&path, content).expect("test setup");
        path
    }

    fn line() -> LineSettings {
        LineSettings {
            baud: 115_200,
            parity: Parity::None,
        }
    }

    /// A relay on a thread with its own runtime, in front of a fake port; returns its address
    /// and a handle that yields what the port saw (or the handshake failure).
    fn spawn_relay(
        lines_fail: bool,
    ) -> (
        String,
        thread::JoinHandle<std::result::Result<Vec<Seen>, String>>,
    ) {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = std_listener.local_addr().expect("test setup").to_string();
        std_listener.set_nonblocking(true).expect("test setup");
        let handle = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test setup");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("test setup");
                let (mut port, mut chip) = FakePort::new();
                port.lines_fail = lines_fail;
                let seen = port.seen.clone();
                // The chip answers every byte it gets with 0x79 (ACK).
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 64];
                    while let Ok(n) = chip.read(&mut buf).await {
                        if n == 0 || chip.write_all(&vec![0x79; n]).await.is_err() {
                            break;
                        }
                    }
                });
                let key = Key::from_bytes(KEY, "test").expect("test setup");
                serve_one_for_test(listener, &mut port, &key).await?;
                let seen = seen.lock().expect("test setup");
                Ok(seen.iter().map(|(s, _)| s.clone()).collect())
            })
        });
        (addr, handle)
    }

    fn target(addr: &str, key: Option<PathBuf>) -> RelayTarget {
        RelayTarget {
            addr: addr.to_string(),
            key_file: key,
            wait: None,
        }
    }

    #[test]
    fn data_settings_and_sequences_reach_the_port_after_the_handshake() {
        let dir = tempfile::tempdir().expect("test setup");
        let key = key_file(&dir, KEY);
        let (addr, relay) = spawn_relay(false);
        let mut link = RelayLink::connect(&target(&addr, Some(key)), line()).expect("connects");
        assert!(
            link.describe().starts_with("relay://127.0.0.1:"),
            "{}",
            link.describe()
        );
        link.run_steps(&[
            LineStep::Rts(true),
            LineStep::Dtr(true),
            LineStep::Wait(Duration::from_millis(20)),
            LineStep::Dtr(false),
        ])
        .expect("the relay runs the sequence");
        link.write_all(&[0x7F]).expect("test setup");
        let mut buf = [0u8; 4];
        let n = link
            .read(&mut buf, Duration::from_secs(10))
            .expect("test setup");
        assert_eq!(&buf[..n], &[0x79]);
        link.close().expect("test setup");
        drop(link);
        let seen = relay
            .join()
            .expect("test setup")
            .expect("the handshake passed");
        let lines: Vec<&Seen> = seen
            .iter()
            .filter(|s| !matches!(s, Seen::Settings(_) | Seen::Purge(_)))
            .collect();
        assert_eq!(
            lines,
            [
                &Seen::Rts(true),
                &Seen::Dtr(true),
                &Seen::Dtr(false),
                &Seen::Data(vec![0x7F])
            ]
        );
    }

    #[test]
    fn a_failing_step_on_the_relay_is_unsupported_and_the_link_stays_usable() {
        let dir = tempfile::tempdir().expect("test setup");
        let key = key_file(&dir, KEY);
        let (addr, relay) = spawn_relay(true);
        let mut link = RelayLink::connect(&target(&addr, Some(key)), line()).expect("connects");
        match link.run_steps(&[
            LineStep::Wait(Duration::from_millis(1)),
            LineStep::Dtr(true),
        ]) {
            Err(LinkError::Unsupported { what, .. }) => {
                assert!(what.contains("step 2") && what.contains("DTR"), "{what}")
            }
            other => panic!("{other:?}"),
        }
        link.write_all(&[0x7F]).expect("test setup");
        let mut buf = [0u8; 4];
        assert_eq!(
            link.read(&mut buf, Duration::from_secs(10))
                .expect("test setup"),
            1
        );
        link.close().expect("test setup");
        drop(link);
        relay
            .join()
            .expect("test setup")
            .expect("the handshake passed");
    }

    #[test]
    fn a_wrong_key_is_refused_and_nothing_reaches_the_port() {
        let dir = tempfile::tempdir().expect("test setup");
        let key = key_file(&dir, b"not-the-relay-key-0123456789");
        let (addr, relay) = spawn_relay(false);
        let err = RelayLink::connect(&target(&addr, Some(key)), line()).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("the relay refused the key"), "{text}");
        assert!(text.contains(auth::KEY_FILE_ENV), "{text}");
        let failure = relay
            .join()
            .expect("test setup")
            .expect_err("the relay refused");
        assert!(failure.contains("wrong proof"), "{failure}");
    }

    /// A fake relay that accepts any answer and sends a proof made with another key.
    #[test]
    fn a_relay_that_cannot_prove_the_key_is_not_trusted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = l.local_addr().expect("test setup").to_string();
        let impostor = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            s.write_all(RelayLine::Challenge([3; 32]).encode().as_bytes())
                .expect("test setup");
            let mut answer = Vec::new();
            let mut byte = [0u8; 1];
            while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
                answer.push(byte[0]);
            }
            s.write_all(RelayLine::Ok([0; 32]).encode().as_bytes())
                .expect("test setup");
            // Whatever the client sends after this would reach the impostor: it must be nothing.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            rest
        });
        let dir = tempfile::tempdir().expect("test setup");
        let key = key_file(&dir, KEY);
        let err = RelayLink::connect(&target(&addr, Some(key)), line()).expect_err("refused");
        assert!(
            err.to_string().contains("not a relay holding this key"),
            "{err}"
        );
        assert!(impostor.join().expect("test setup").is_empty());
    }

    #[test]
    fn something_else_on_the_port_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = l.local_addr().expect("test setup").to_string();
        let bridge = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            s.write_all(&[0xFF, 0xFB, 0x03]).expect("test setup");
            let _ = s.read(&mut [0u8; 16]);
        });
        let dir = tempfile::tempdir().expect("test setup");
        let key = key_file(&dir, KEY);
        let err = RelayLink::connect(&target(&addr, Some(key)), line()).expect_err("refused");
        assert!(err.to_string().contains("rfc2217://"), "{err}");
        bridge.join().expect("test setup");
    }

    #[test]
    fn targets_parse() {
        let t = RelayTarget::parse("relay", "host:7000").expect("test setup");
        assert_eq!(t, target("host:7000", None));
        let t = RelayTarget::parse("relay", "10.0.0.1:7000?key_file=/etc/k").expect("test setup");
        assert_eq!(t.key_file, Some(PathBuf::from("/etc/k")));
        let t = RelayTarget::parse("relay-listen", "0.0.0.0:7001?wait=5m&key_file=k")
            .expect("test setup");
        assert_eq!(t.wait, Some(Duration::from_secs(300)));
        assert_eq!(t.key_file, Some(PathBuf::from("k")));
        let err = |scheme: &str, rest: &str| match RelayTarget::parse(scheme, rest) {
            Ok(t) => panic!("{rest} parsed as {t:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err("relay", "h:1?key=secret-value").contains("cannot be part of the port"));
        assert!(!err("relay", "h:1?key=secret-value").contains("secret-value"));
        assert!(err("relay", "h:1?wait=5s").contains("unknown"));
        assert!(err("relay", "h:1?key_file=").contains("unknown or empty"));
        assert!(err("relay-listen", "h:1?wait=soon").contains("not a duration"));
        assert!(err("relay", "h").contains("no port"));
    }
}
