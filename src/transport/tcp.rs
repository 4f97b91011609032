//! A raw TCP byte pipe (`tcp://host:port`): a relay such as ser2net's raw port, socat, or a
//! cellular modem in transparent mode.
//!
//! The connection carries bytes and nothing else: there is no way to reach the far end's baud
//! rate, parity or modem-control lines. Those are set where the serial port is (the relay's
//! configuration, or the modem's `AT+IPR` / `AT+ICF`). [`TcpLink`] therefore records the line
//! settings it is given, for timing and messages, and reports DTR, RTS and break as
//! [`LinkError::Unsupported`].
//!
//! Also holds [`connect`], the connection step shared with the RFC 2217 transport.

use crate::link::{LineSettings, Link, LinkError, Parity};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long to wait for a TCP connection to be accepted, per address the host resolves to.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write may wait for the peer to take data before it fails. Frames are a few
/// hundred bytes, so a write only waits this long when the far end has stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many bytes are dropped by one [`Link::discard_input`], so that a peer that
/// never stops sending cannot keep it busy forever.
const DISCARD_LIMIT: usize = 1 << 20;

/// Open a TCP connection to `addr` (`host:port`) with TCP_NODELAY set. `port` is the port as
/// the user gave it (`tcp://host:port`), for messages. Each address the host resolves to is
/// tried in turn, for at most [`CONNECT_TIMEOUT`] each.
pub fn connect(addr: &str, port: &str) -> Result<TcpStream, LinkError> {
    let open_error = |reason: String| LinkError::Open {
        port: port.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| {
            open_error(format!(
                "cannot resolve '{addr}' ({e}): check the host name and the network"
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(open_error(format!(
            "'{addr}' resolves to no address: check the host name"
        )));
    }
    let mut last = None;
    for sa in &addrs {
        match TcpStream::connect_timeout(sa, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| open_error(format!("cannot set TCP_NODELAY: {e}")))?;
                return Ok(stream);
            }
            Err(e) => last = Some((*sa, e)),
        }
    }
    let reason = match last {
        Some((sa, e)) => connect_hint(sa, &e),
        None => "no address to connect to".to_string(),
    };
    Err(open_error(reason))
}

fn connect_hint(sa: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => format!(
            "{sa} refused the connection ({e}): nothing listens on that port; is the relay \
             (ser2net, socat) running, and is the port number right?"
        ),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => format!(
            "{sa} did not answer within {}s: check the host address, the network and any \
             firewall in between",
            CONNECT_TIMEOUT.as_secs()
        ),
        ErrorKind::AddrNotAvailable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::HostUnreachable => {
            format!("{sa} cannot be reached ({e}): check the host address and the network")
        }
        _ => format!("cannot connect to {sa}: {e}"),
    }
}

/// Whether an I/O error means the other end has gone away.
pub(crate) fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::UnexpectedEof
    )
}

/// Whether an I/O error only means "nothing yet".
pub(crate) fn is_would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The usual short form of a line setting: "115200 8E1".
pub(crate) fn line_text(line: LineSettings) -> String {
    let p = match line.parity {
        Parity::Even => "8E1",
        Parity::None => "8N1",
        Parity::Odd => "8O1",
    };
    format!("{} {}", line.baud, p)
}

/// A raw TCP connection to a relay that passes bytes to and from the bootloader's UART.
///
/// Each [`Link::write_all`] is handed to the socket in one `write` where the socket takes it
/// (TCP_NODELAY is set, so a frame leaves at once). The line settings are only recorded: see
/// [`Link::set_line`].
#[derive(Debug)]
pub struct TcpLink {
    stream: TcpStream,
    /// `host:port`.
    addr: String,
    line: LineSettings,
    /// The read timeout the socket holds now.
    read_timeout: Option<Duration>,
    /// The peer closed its side; further reads report [`LinkError::Closed`].
    eof: bool,
}

impl TcpLink {
    /// Connect to `addr` (`host:port`). `line` is what the far end's serial port is assumed to
    /// run at; it is not sent anywhere (a raw pipe has no remote line control).
    pub fn connect(addr: &str, line: LineSettings) -> Result<TcpLink, LinkError> {
        let port = format!("tcp://{addr}");
        let stream = connect(addr, &port)?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| LinkError::Open {
                port: port.clone(),
                reason: format!("cannot set the write timeout: {e}"),
            })?;
        Ok(TcpLink {
            stream,
            addr: addr.to_string(),
            line,
            read_timeout: None,
            eof: false,
        })
    }

    /// Wait on `addr` (`host:port`) for a device that dials out to us, at most `wait`, and
    /// take the first connection. `line` is what the device's UART runs at (recorded only).
    pub fn accept(addr: &str, wait: Duration, line: LineSettings) -> Result<TcpLink, LinkError> {
        let port = format!("listen://{addr}");
        let open_error = |reason: String| LinkError::Open {
            port: port.clone(),
            reason,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            open_error(format!(
                "cannot listen on {addr} ({e}): check that the address is this host's and the \
                 port is free"
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| open_error(format!("cannot configure the listener: {e}")))?;
        let deadline = Instant::now() + wait;
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(x) => break x,
                Err(e) if is_would_block(&e) || e.kind() == ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        return Err(open_error(format!(
                            "no device dialled in within {}: check the device's server address \
                             and port, that this host is reachable from its network (NAT, \
                             firewall), and that it is due to call (raise ?wait=)",
                            humantime::format_duration(wait)
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(open_error(format!("accepting a connection: {e}"))),
            }
        };
        let setup = |e: std::io::Error| open_error(format!("configuring the connection: {e}"));
        stream.set_nonblocking(false).map_err(setup)?;
        stream.set_nodelay(true).map_err(setup)?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(setup)?;
        Ok(TcpLink {
            stream,
            addr: peer.to_string(),
            line,
            read_timeout: None,
            eof: false,
        })
    }

    /// The address connected to, as given (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn unsupported(&self, what: &str) -> LinkError {
        LinkError::Unsupported {
            what: format!(
                "{what} (a raw TCP link has no modem-control lines; use rfc2217:// with a \
                 bridge that provides them)"
            ),
            link: format!("tcp://{}", self.addr),
        }
    }

    fn read_error(&self, e: std::io::Error) -> LinkError {
        if is_disconnect(&e) {
            LinkError::Closed
        } else {
            LinkError::io(format!("reading from tcp://{}", self.addr), e)
        }
    }

    /// One non-blocking read; `Ok(0)` when nothing is there.
    fn read_now(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        self.set_nonblocking(true)?;
        let r = loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    break Err(LinkError::Closed);
                }
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_would_block(&e) => break Ok(0),
                Err(e) => break Err(self.read_error(e)),
            }
        };
        self.set_nonblocking(false)?;
        r
    }

    fn set_nonblocking(&self, on: bool) -> Result<(), LinkError> {
        self.stream
            .set_nonblocking(on)
            .map_err(|e| LinkError::io("switching the socket's blocking mode", e))
    }
}

impl Link for TcpLink {
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        self.stream.write_all(data).map_err(|e| {
            if is_disconnect(&e) {
                LinkError::Closed
            } else if is_would_block(&e) {
                LinkError::io(
                    format!(
                        "writing to tcp://{} (the peer took no data for {}s)",
                        self.addr,
                        WRITE_TIMEOUT.as_secs()
                    ),
                    e,
                )
            } else {
                LinkError::io(format!("writing to tcp://{}", self.addr), e)
            }
        })
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.eof {
            return Err(LinkError::Closed);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // A zero timeout cannot be given to the socket: poll once.
                return match self.read_now(buf)? {
                    0 => Err(LinkError::Timeout(timeout)),
                    n => Ok(n),
                };
            }
            if self.read_timeout != Some(remaining) {
                self.stream
                    .set_read_timeout(Some(remaining))
                    .map_err(|e| LinkError::io("setting the read timeout", e))?;
                self.read_timeout = Some(remaining);
            }
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Err(LinkError::Closed);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_would_block(&e) => return Err(LinkError::Timeout(timeout)),
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    /// Drop the bytes that have already arrived, without waiting for more. Bytes still in
    /// flight (sent by the far end but not yet here) are not dropped.
    fn discard_input(&mut self) -> Result<(), LinkError> {
        if self.eof {
            return Ok(());
        }
        let mut scratch = [0u8; 4096];
        let mut dropped = 0;
        while dropped < DISCARD_LIMIT {
            match self.read_now(&mut scratch) {
                Ok(0) => break,
                Ok(n) => dropped += n,
                // The next read reports the closed connection.
                Err(LinkError::Closed) => break,
                Err(e) => return Err(e),
            }
        }
        if dropped > 0 {
            tracing::debug!(dropped, "discarded input on tcp://{}", self.addr);
        }
        Ok(())
    }

    fn set_dtr(&mut self, _level: bool) -> Result<(), LinkError> {
        Err(self.unsupported("driving DTR"))
    }

    fn set_rts(&mut self, _level: bool) -> Result<(), LinkError> {
        Err(self.unsupported("driving RTS"))
    }

    fn set_break(&mut self, _on: bool) -> Result<(), LinkError> {
        Err(self.unsupported("a break condition"))
    }

    /// Only records the settings: a raw TCP pipe cannot change the far end's baud rate or
    /// parity. They must match what the relay's serial port is configured for; the recorded
    /// value is used for wire-time estimates and messages.
    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        self.line = settings;
        Ok(())
    }

    fn line(&self) -> LineSettings {
        self.line
    }

    fn describe(&self) -> String {
        format!(
            "tcp://{} (raw TCP; the relay's port is assumed at {})",
            self.addr,
            line_text(self.line)
        )
    }

    fn close(&mut self) -> Result<(), LinkError> {
        match self.stream.shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if is_disconnect(&e) => Ok(()),
            Err(e) => Err(LinkError::io(format!("closing tcp://{}", self.addr), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    const LONG: Duration = Duration::from_secs(10);

    /// A listener on a free loopback port and its `host:port`.
    fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = l.local_addr().expect("test setup").to_string();
        (l, addr)
    }

    /// Read exactly `n` bytes.
    fn read_n(link: &mut TcpLink, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < n {
            let k = link.read(&mut buf, LONG).expect("test setup");
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    #[test]
    fn echoes() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).expect("test setup"),
                }
            }
        });
        let mut link = TcpLink::connect(&addr, LineSettings::default()).expect("test setup");
        let data = [0x7F, 0x00, 0xFF, 0xFF, 0x79, 0x0D, 0x00];
        link.write_all(&data).expect("test setup");
        assert_eq!(read_n(&mut link, data.len()), data);
        assert!(link.describe().contains("115200 8E1"));
        link.close().expect("test setup");
        assert!(matches!(
            link.read(&mut [0u8; 4], LONG),
            Err(LinkError::Closed)
        ));
        server.join().expect("test setup");
    }

    #[test]
    fn read_times_out() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            // Hold the connection open until the client closes it.
            let _ = s.read(&mut [0u8; 16]);
        });
        let mut link = TcpLink::connect(&addr, LineSettings::default()).expect("test setup");
        let wait = Duration::from_millis(50);
        match link.read(&mut [0u8; 4], wait) {
            Err(LinkError::Timeout(t)) => assert_eq!(t, wait),
            other => panic!("expected a timeout, got {other:?}"),
        }
        match link.read(&mut [0u8; 4], Duration::ZERO) {
            Err(LinkError::Timeout(_)) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        link.close().expect("test setup");
        server.join().expect("test setup");
    }

    #[test]
    fn eof_is_closed() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (s, _) = l.accept().expect("test setup");
            drop(s);
        });
        let mut link = TcpLink::connect(&addr, LineSettings::default()).expect("test setup");
        server.join().expect("test setup");
        assert!(matches!(
            link.read(&mut [0u8; 4], LONG),
            Err(LinkError::Closed)
        ));
        assert!(matches!(
            link.read(&mut [0u8; 4], LONG),
            Err(LinkError::Closed)
        ));
    }

    #[test]
    fn discard_drops_what_arrived() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            s.write_all(b"stale").expect("test setup");
            let mut go = [0u8; 2];
            s.read_exact(&mut go).expect("test setup");
            assert_eq!(&go, b"go");
            s.write_all(b"fresh").expect("test setup");
            let _ = s.read(&mut go);
        });
        let mut link = TcpLink::connect(&addr, LineSettings::default()).expect("test setup");
        // Wait until all of "stale" is here, without consuming it.
        link.stream
            .set_read_timeout(Some(LONG))
            .expect("test setup");
        let mut peek = [0u8; 8];
        while link.stream.peek(&mut peek).expect("test setup") < 5 {
            thread::sleep(Duration::from_millis(1));
        }
        link.discard_input().expect("test setup");
        link.write_all(b"go").expect("test setup");
        assert_eq!(read_n(&mut link, 5), b"fresh");
        link.close().expect("test setup");
        server.join().expect("test setup");
    }

    #[test]
    fn line_control_is_unsupported_and_line_is_recorded() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            let _ = s.read(&mut [0u8; 16]);
        });
        let mut link = TcpLink::connect(&addr, LineSettings::default()).expect("test setup");
        assert!(matches!(
            link.set_dtr(true),
            Err(LinkError::Unsupported { .. })
        ));
        assert!(matches!(
            link.set_rts(false),
            Err(LinkError::Unsupported { .. })
        ));
        assert!(matches!(
            link.set_break(true),
            Err(LinkError::Unsupported { .. })
        ));
        let none = LineSettings {
            baud: 57_600,
            parity: Parity::None,
        };
        link.set_line(none).expect("test setup");
        assert_eq!(link.line(), none);
        assert!(link.describe().contains("57600 8N1"));
        link.close().expect("test setup");
        server.join().expect("test setup");
    }

    #[test]
    fn refused_connection_names_the_port() {
        let (l, addr) = listener();
        drop(l);
        match TcpLink::connect(&addr, LineSettings::default()) {
            Err(e @ LinkError::Open { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&format!("tcp://{addr}")), "{text}");
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }
}
