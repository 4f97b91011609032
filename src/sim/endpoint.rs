//! Serving a simulated chip to other programs in real time: over a pseudo-terminal, raw TCP, or
//! as an RFC 2217 server (so that clients can set baud rate and parity, purge, and drive DTR and
//! RTS, which the wire routes to NRST and BOOT0).
//!
//! Every endpoint runs the same loop: bytes from the client go onto the [`Wire`] at the wall
//! clock's time, and the chip's bytes go back when the wire says they reach the host. The wire
//! (and so the chip) outlives connections: a client can disconnect and another connect, as to a
//! board that stays powered. The RFC 2217 side uses the `rfc2217` crate's server state machine;
//! this module only moves bytes and events between it, the socket and the wire.

use super::wire::Wire;
use crate::error::{Error, Result};
use crate::link::{LineSettings, Parity};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest a serve loop waits before it looks at the stop flag again.
const TICK: Duration = Duration::from_millis(50);

/// The wall clock as the wire sees it: nanoseconds since the endpoint started.
#[derive(Debug, Clone, Copy)]
pub struct RealClock(Instant);

impl RealClock {
    /// Start counting now.
    pub fn start() -> RealClock {
        RealClock(Instant::now())
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One client connection, seen from the chip's side.
pub trait Connection {
    /// Wait at most `timeout` for the client; hand what it sent (bytes, and line events for
    /// RFC 2217) to the wire. Returns false once the client has gone.
    fn receive(&mut self, wire: &mut Wire, clock: &RealClock, timeout: Duration) -> Result<bool>;

    /// Send the chip's bytes to the client.
    fn send(&mut self, bytes: &[u8]) -> Result<()>;
}

/// Why a serve loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The stop flag was set.
    Stopped,
    /// The client went away.
    Disconnected,
    /// An injected fault cut the link.
    Cut,
}

/// Run the wire against one connection until it ends or `stop` is set.
pub fn serve(
    wire: &mut Wire,
    clock: &RealClock,
    conn: &mut dyn Connection,
    stop: &AtomicBool,
) -> Result<Ended> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Ended::Stopped);
        }
        let now = clock.now();
        let out = wire.take_delivered(now, usize::MAX);
        if !out.is_empty() {
            conn.send(&out)?;
        }
        if wire.is_cut() {
            return Ok(Ended::Cut);
        }
        let wait = match wire.next_event() {
            Some(t) => Duration::from_nanos(t.saturating_sub(now)).min(TICK),
            None => TICK,
        };
        if !conn.receive(wire, clock, wait)? {
            return Ok(Ended::Disconnected);
        }
    }
}

/// A raw TCP client: bytes only, at the line settings the endpoint was given.
pub struct TcpConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpConnection {
    /// Wrap an accepted stream.
    pub fn new(stream: TcpStream) -> Result<TcpConnection> {
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
        Ok(TcpConnection {
            stream,
            buf: vec![0; 4096],
        })
    }
}

/// Read with a timeout; `Ok(None)` when nothing came, `Ok(Some(0))` at end of stream.
fn read_timeout(
    stream: &mut TcpStream,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<Option<usize>> {
    let timeout = timeout.max(Duration::from_micros(100));
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| Error::io("setting a socket timeout", e))?;
    match stream.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Ok(Some(0))
        }
        Err(e) => Err(Error::io("reading from the client", e)),
    }
}

impl Connection for TcpConnection {
    fn receive(&mut self, wire: &mut Wire, clock: &RealClock, timeout: Duration) -> Result<bool> {
        match read_timeout(&mut self.stream, &mut self.buf, timeout)? {
            None => Ok(true),
            Some(0) => Ok(false),
            Some(n) => {
                wire.host_send(clock.now(), &self.buf[..n]);
                Ok(true)
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            // The client went away; the next receive reports it.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                Ok(())
            }
            Err(e) => Err(Error::io("writing to the client", e)),
        }
    }
}

/// An RFC 2217 client: Telnet COM-PORT-OPTION, so baud rate, parity, purges and DTR/RTS reach
/// the wire at their place in the byte stream.
pub struct Rfc2217Connection {
    stream: TcpStream,
    server: rfc2217::Server,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

impl Rfc2217Connection {
    /// Wrap an accepted stream and send the Telnet opening. `line` is the port's current
    /// setting, reported to clients that ask.
    pub fn new(stream: TcpStream, line: LineSettings) -> Result<Rfc2217Connection> {
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
        let settings = rfc2217::PortSettings {
            baud_rate: line.baud,
            parity: match line.parity {
                Parity::Even => rfc2217::Parity::Even,
                Parity::Odd => rfc2217::Parity::Odd,
                Parity::None => rfc2217::Parity::None,
            },
            ..Default::default()
        };
        let mut server = rfc2217::Server::new(settings).with_signature("stm32boot simulator");
        // pyserial's client waits for a modem state: report CTS, DSR and CD present.
        server.set_modem_state(
            rfc2217::ModemState::CTS | rfc2217::ModemState::DSR | rfc2217::ModemState::CD,
        );
        let mut conn = Rfc2217Connection {
            stream,
            server,
            buf: vec![0; 4096],
            payload: Vec::with_capacity(4096),
        };
        conn.flush()?;
        Ok(conn)
    }

    fn flush(&mut self) -> Result<()> {
        let out = self.server.take_output();
        if out.is_empty() {
            return Ok(());
        }
        match self.stream.write_all(&out) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                Ok(())
            }
            Err(e) => Err(Error::io("writing to the client", e)),
        }
    }
}

fn line_from(settings: &rfc2217::PortSettings) -> LineSettings {
    LineSettings {
        baud: settings.baud_rate,
        parity: match settings.parity {
            rfc2217::Parity::Even => Parity::Even,
            rfc2217::Parity::Odd => Parity::Odd,
            // Mark and space take a bit like even and odd; the chip sees errors either way.
            rfc2217::Parity::Mark | rfc2217::Parity::Space => Parity::Odd,
            rfc2217::Parity::None => Parity::None,
        },
    }
}

impl Connection for Rfc2217Connection {
    fn receive(&mut self, wire: &mut Wire, clock: &RealClock, timeout: Duration) -> Result<bool> {
        let n = match read_timeout(&mut self.stream, &mut self.buf, timeout)? {
            None => return Ok(true),
            Some(0) => return Ok(false),
            Some(n) => n,
        };
        let now = clock.now();
        let mut input = &self.buf[..n];
        while !input.is_empty() {
            let used = self.server.receive_until_event(input, &mut self.payload);
            input = &input[used.max(1).min(input.len())..];
            if !self.payload.is_empty() {
                wire.host_send(now, &self.payload);
                self.payload.clear();
            }
            while let Some(event) = self.server.poll_event() {
                match event {
                    rfc2217::ServerEvent::SettingsChanged(s) if s.baud_rate > 0 => {
                        wire.set_line(now, line_from(&s));
                    }
                    rfc2217::ServerEvent::Dtr(on) => {
                        let (_, rts) = wire.lines();
                        wire.set_lines(now, on, rts);
                    }
                    rfc2217::ServerEvent::Rts(on) => {
                        let (dtr, _) = wire.lines();
                        wire.set_lines(now, dtr, on);
                    }
                    rfc2217::ServerEvent::Purge(p) => {
                        let (rx, tx) = match p {
                            rfc2217::Purge::Receive => (true, false),
                            rfc2217::Purge::Transmit => (false, true),
                            rfc2217::Purge::Both => (true, true),
                        };
                        wire.purge(now, rx, tx);
                    }
                    _ => {}
                }
            }
        }
        self.flush()?;
        Ok(true)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.server.write_data(bytes);
        self.flush()
    }
}

/// Which network protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    /// Raw bytes.
    Tcp,
    /// RFC 2217.
    Rfc2217,
}

/// A TCP listener that serves the wire to one client at a time.
pub struct NetEndpoint {
    listener: TcpListener,
    kind: NetKind,
}

impl NetEndpoint {
    /// Listen on `addr` (port 0 picks a free port).
    pub fn bind(addr: &str, kind: NetKind) -> Result<NetEndpoint> {
        let listener =
            TcpListener::bind(addr).map_err(|e| Error::io(format!("listening on {addr}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the listener", e))?;
        Ok(NetEndpoint { listener, kind })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading the listening address", e))
    }

    /// Serve clients one after another until `stop` is set. `on_event` hears of connections
    /// and disconnections (for the command's log).
    pub fn run(
        &self,
        wire: &mut Wire,
        clock: &RealClock,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(String),
    ) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            // Keep the chip running while nobody is connected.
            wire.advance(clock.now());
            let (stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(Error::io("accepting a client", e)),
            };
            stream
                .set_nonblocking(false)
                .map_err(|e| Error::io("configuring the client socket", e))?;
            on_event(format!("client {peer} connected"));
            // Bytes the chip sent while nobody listened are gone, as on a real port.
            let now = clock.now();
            wire.purge(now, true, false);
            let ended = match self.kind {
                NetKind::Tcp => serve(wire, clock, &mut TcpConnection::new(stream)?, stop)?,
                NetKind::Rfc2217 => {
                    let mut conn = Rfc2217Connection::new(stream, wire.line())?;
                    serve(wire, clock, &mut conn, stop)?
                }
            };
            // Closing a serial port drops DTR and RTS (HUPCL): so does the end of a connection.
            wire.set_lines(clock.now(), false, false);
            match ended {
                Ended::Cut => {
                    on_event(format!("link to {peer} cut (injected fault)"));
                    wire.reconnect();
                }
                Ended::Disconnected => on_event(format!("client {peer} disconnected")),
                Ended::Stopped => {}
            }
        }
        Ok(())
    }
}

/// How long a dialling device waits between attempts to reach its server.
const REDIAL: Duration = Duration::from_millis(500);

/// Serve the wire as a field device that dials out: connect to `addr` (raw TCP), serve the
/// connection, and dial again whenever it ends (or while the server is not there yet), until
/// `stop` is set. `on_event` hears of connections, refusals and disconnections.
pub fn dial(
    addr: &str,
    wire: &mut Wire,
    clock: &RealClock,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(String),
) -> Result<()> {
    let mut told = false;
    while !stop.load(Ordering::Relaxed) {
        wire.advance(clock.now());
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                if !told {
                    on_event(format!("{addr} does not answer yet ({e}); redialling"));
                    told = true;
                }
                std::thread::sleep(REDIAL);
                continue;
            }
        };
        told = false;
        on_event(format!("connected to {addr}"));
        wire.purge(clock.now(), true, false);
        let ended = serve(wire, clock, &mut TcpConnection::new(stream)?, stop)?;
        match ended {
            Ended::Cut => {
                on_event(format!("link to {addr} cut (injected fault)"));
                wire.reconnect();
            }
            Ended::Disconnected => on_event(format!("{addr} hung up")),
            Ended::Stopped => {}
        }
        std::thread::sleep(REDIAL);
    }
    Ok(())
}
