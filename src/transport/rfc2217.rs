//! An RFC 2217 (Telnet COM Port Control) client (`rfc2217://host:port`): a serial port behind a
//! bridge such as ser2net, sredird or a Moxa/Lantronix/Digi device server, with remote control
//! of the baud rate, parity, DTR, RTS, break and buffer purges.
//!
//! The protocol itself (Telnet option negotiation, `0xFF` doubling, the COM-PORT-OPTION
//! subnegotiations and notifications between data bytes) is the `rfc2217` crate's sans-IO
//! [`Client`]; this module drives it over a blocking [`TcpStream`]:
//!
//! - At open it connects, negotiates COM-PORT-OPTION and asks for the line settings (8 data
//!   bits, 1 stop bit, no flow control, the given baud rate and parity), and waits until the
//!   bridge confirms them or a deadline passes.
//! - DTR, RTS and break requests are sent in order with the data and never waited for: some
//!   bridges never answer them (ser2net in front of a pseudo-terminal).
//! - Writes keep reading: while the socket takes no more data, whatever has arrived is moved
//!   into an internal buffer, so a peer that echoes cannot deadlock a long write.

use crate::link::{LineSettings, Link, LinkError, Parity};
use crate::transport::tcp::{connect, is_disconnect, is_would_block, line_text, WRITE_TIMEOUT};
use ::rfc2217::{
    Client, DataBits, Event, FlowControl, ModemState, NotReady, Parity as WireParity,
    PartialSettings, PortSettings, Purge, Setting, SettingSet, StopBits,
};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// How long [`Rfc2217Link::connect`] waits for the bridge to accept COM-PORT-OPTION and confirm
/// the line settings (pyserial waits 3 s too).
pub const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`Link::discard_input`] waits for the bridge to confirm a purge. Bytes that arrive
/// before the confirmation were sent before the purge and are dropped.
const PURGE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one blocking `write` may wait before the write loop reads what has arrived.
const WRITE_SLICE: Duration = Duration::from_millis(20);

/// The socket read size.
const CHUNK: usize = 4096;

/// The settings the bridge is asked for: 8 data bits, 1 stop bit, no flow control.
fn port_settings(line: LineSettings) -> PortSettings {
    PortSettings {
        baud_rate: line.baud,
        data_bits: DataBits::Eight,
        parity: match line.parity {
            Parity::Even => WireParity::Even,
            Parity::None => WireParity::None,
            Parity::Odd => WireParity::Odd,
        },
        stop_bits: StopBits::One,
        flow_control: FlowControl::None,
    }
}

/// "115200 baud, 8 data bits, parity none, 1 stop bit, no flow control", with "?" for what the
/// bridge has not reported.
fn reported_text(r: &PartialSettings) -> String {
    let baud = r
        .baud_rate
        .map_or_else(|| "? baud".to_string(), |b| format!("{b} baud"));
    let data = match r.data_bits {
        Some(DataBits::Five) => "5 data bits",
        Some(DataBits::Six) => "6 data bits",
        Some(DataBits::Seven) => "7 data bits",
        Some(DataBits::Eight) => "8 data bits",
        None => "? data bits",
    };
    let parity = match r.parity {
        Some(WireParity::None) => "parity none",
        Some(WireParity::Odd) => "parity odd",
        Some(WireParity::Even) => "parity even",
        Some(WireParity::Mark) => "parity mark",
        Some(WireParity::Space) => "parity space",
        None => "parity ?",
    };
    let stop = match r.stop_bits {
        Some(StopBits::One) => "1 stop bit",
        Some(StopBits::Two) => "2 stop bits",
        Some(StopBits::OnePointFive) => "1.5 stop bits",
        None => "? stop bits",
    };
    let flow = match r.flow_control {
        Some(FlowControl::None) => "no flow control",
        Some(FlowControl::XonXoff) => "XON/XOFF flow control",
        Some(FlowControl::RtsCts) => "RTS/CTS flow control",
        Some(FlowControl::Dcd) => "DCD flow control",
        Some(FlowControl::Dsr) => "DSR flow control",
        None => "flow control ?",
    };
    format!("{baud}, {data}, {parity}, {stop}, {flow}")
}

/// Settings whose confirmation matters: without them the line may be wrong.
fn essential(set: SettingSet) -> SettingSet {
    set.iter()
        .filter(|s| matches!(s, Setting::BaudRate | Setting::DataBits | Setting::Parity))
        .collect()
}

/// A serial port behind an RFC 2217 bridge.
#[derive(Debug)]
pub struct Rfc2217Link {
    stream: TcpStream,
    client: Client,
    /// `host:port`.
    addr: String,
    line: LineSettings,
    /// Serial data received and not read yet.
    rx: VecDeque<u8>,
    /// Output taken from the client and not yet written to the socket.
    out: Vec<u8>,
    /// Purge confirmations still awaited; data that arrives meanwhile predates the purge.
    purges_pending: u32,
    /// A purge went unconfirmed once: later purges are not waited for.
    purge_unconfirmed: bool,
    /// COM-PORT-OPTION replies the client could not decode (a peer echoing our requests).
    unknown_replies: u32,
    /// The read timeout the socket holds now.
    read_timeout: Option<Duration>,
    /// The peer closed its side.
    eof: bool,
    /// Signatures the bridge sent (the relay's vendor replies), oldest first, at most
    /// [`SIGNATURES_KEPT`].
    signatures: VecDeque<Vec<u8>>,
}

/// How many unread signatures [`Rfc2217Link`] keeps.
const SIGNATURES_KEPT: usize = 16;

impl Rfc2217Link {
    /// Connect to the bridge at `addr` (`host:port`), negotiate RFC 2217 and set the line to
    /// `line` (8 data bits, 1 stop bit, no flow control), waiting at most
    /// [`NEGOTIATE_TIMEOUT`] for the bridge to confirm.
    pub fn connect(addr: &str, line: LineSettings) -> Result<Rfc2217Link, LinkError> {
        Rfc2217Link::connect_with(addr, line, NEGOTIATE_TIMEOUT)
    }

    /// [`Rfc2217Link::connect`] with another negotiation deadline.
    ///
    /// Fails with [`LinkError::Open`] when nothing answers the RFC 2217 offer by the deadline
    /// (probably a raw TCP port), when the peer refuses the option (a plain Telnet server), when
    /// the bridge applies other settings than those asked for, or when it leaves the baud rate,
    /// data bits or parity unconfirmed. Unconfirmed stop bits or flow control are tolerated
    /// (some bridges never answer those).
    pub fn connect_with(
        addr: &str,
        line: LineSettings,
        negotiate_timeout: Duration,
    ) -> Result<Rfc2217Link, LinkError> {
        let port = format!("rfc2217://{addr}");
        let stream = connect(addr, &port)?;
        Rfc2217Link::over_stream(stream, addr, &port, line, negotiate_timeout)
    }

    /// [`Rfc2217Link::connect_with`] over a stream that is already connected (and, for the
    /// relay transport, authenticated); `port` is the port as the user gave it, for messages.
    pub(crate) fn over_stream(
        stream: TcpStream,
        addr: &str,
        port: &str,
        line: LineSettings,
        negotiate_timeout: Duration,
    ) -> Result<Rfc2217Link, LinkError> {
        let port = port.to_string();
        stream
            .set_write_timeout(Some(WRITE_SLICE))
            .map_err(|e| LinkError::Open {
                port: port.clone(),
                reason: format!("cannot set the write timeout: {e}"),
            })?;
        let mut link = Rfc2217Link {
            stream,
            client: Client::new(port_settings(line)),
            addr: addr.to_string(),
            line,
            rx: VecDeque::new(),
            out: Vec::new(),
            purges_pending: 0,
            purge_unconfirmed: false,
            unknown_replies: 0,
            read_timeout: None,
            eof: false,
            signatures: VecDeque::new(),
        };
        link.negotiate(negotiate_timeout)
            .map_err(|reason| LinkError::Open { port, reason })?;
        Ok(link)
    }

    /// The address connected to, as given (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The last value the bridge reported for each setting (for diagnostics).
    pub fn reported_settings(&self) -> PartialSettings {
        self.client.reported_settings()
    }

    /// The last modem state (CTS, DSR, RI, CD) the bridge sent, if any.
    pub fn modem_state(&self) -> Option<ModemState> {
        self.client.modem_state()
    }

    /// Whether the bridge has confirmed every setting last asked for; if not, why (its
    /// `Display` is a ready-made diagnostic).
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.client.readiness()
    }

    /// Run the negotiation until the settings are confirmed; on failure, the reason for a
    /// [`LinkError::Open`].
    fn negotiate(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.flush().map_err(|e| self.negotiation_failure(e))?;
            let now = Instant::now();
            match self.client.readiness() {
                Ok(()) => return Ok(()),
                Err(NotReady::Refused) => {
                    return Err(
                        "the peer refused RFC 2217 (COM-PORT-OPTION): it is a plain Telnet \
                         server, not a serial bridge; check the port number, or use tcp:// if \
                         it is a raw byte pipe"
                            .to_string(),
                    )
                }
                Err(NotReady::Mismatched(set)) => return Err(self.mismatch_reason(set)),
                Err(reason) if now >= deadline => return self.deadline_outcome(reason, timeout),
                Err(_) => {}
            }
            match self.fill(deadline - now) {
                Ok(()) | Err(LinkError::Timeout(_)) => {}
                Err(e) => return Err(self.negotiation_failure(e)),
            }
        }
    }

    /// What to do when the negotiation deadline passes without full confirmation.
    fn deadline_outcome(&self, reason: NotReady, timeout: Duration) -> Result<(), String> {
        let secs = timeout.as_secs_f64();
        match reason {
            NotReady::Negotiating => Err(format!(
                "no answer to the RFC 2217 offer within {secs:.1}s: this is probably a raw TCP \
                 port, not an RFC 2217 one; use tcp://{} for a raw byte pipe, or check the port \
                 number",
                self.addr
            )),
            NotReady::Pending(set) if self.unknown_replies > 0 => Err(format!(
                "the peer sent our own RFC 2217 requests back and never confirmed {set}: this \
                 looks like a raw TCP port in front of a device that echoes; use tcp://{} \
                 instead",
                self.addr
            )),
            NotReady::Pending(set) if !essential(set).is_empty() => Err(format!(
                "the bridge did not confirm {} within {secs:.1}s (it reported {}); check the \
                 bridge and its serial port",
                essential(set),
                reported_text(&self.client.reported_settings())
            )),
            NotReady::Pending(set) => {
                tracing::debug!(
                    "rfc2217://{}: the bridge did not confirm {set}; continuing",
                    self.addr
                );
                Ok(())
            }
            NotReady::Refused => Err("the peer refused RFC 2217 (COM-PORT-OPTION)".to_string()),
            NotReady::Mismatched(set) => Err(self.mismatch_reason(set)),
            other => Err(other.to_string()),
        }
    }

    fn mismatch_reason(&self, set: SettingSet) -> String {
        let requested = self.client.requested_settings();
        let mut reason = format!(
            "the bridge applied other settings than the requested {} (differing: {set}); it \
             reported {}",
            line_text(self.line),
            reported_text(&self.client.reported_settings())
        );
        if set.contains(Setting::Parity)
            && requested.parity != WireParity::None
            && self.client.reported_settings().parity == Some(WireParity::None)
        {
            reason.push_str(
                "; its serial port may be a pseudo-terminal, which has no parity: use \
                 --parity none for it",
            );
        } else if set.contains(Setting::BaudRate) {
            reason.push_str("; choose a baud rate the bridge's serial port supports");
        }
        reason
    }

    /// The reason for an I/O failure during negotiation.
    fn negotiation_failure(&self, e: LinkError) -> String {
        match e {
            LinkError::Closed => {
                let said = self.peer_text();
                if said.is_empty() {
                    "the bridge closed the connection while negotiating RFC 2217 (ser2net \
                     serves one client at a time: is another one connected?)"
                        .to_string()
                } else {
                    format!("the bridge closed the connection while negotiating RFC 2217: {said:?}")
                }
            }
            other => format!("while negotiating RFC 2217: {other}"),
        }
    }

    /// What the peer sent as data so far, as text (ser2net says "Port's device already in use"
    /// before it closes).
    fn peer_text(&self) -> String {
        let bytes: Vec<u8> = self.rx.iter().take(200).copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> LinkError {
        if is_disconnect(&e) {
            LinkError::Closed
        } else {
            LinkError::io(format!("{what} rfc2217://{}", self.addr), e)
        }
    }

    fn set_nonblocking(&self, on: bool) -> Result<(), LinkError> {
        self.stream
            .set_nonblocking(on)
            .map_err(|e| LinkError::io("switching the socket's blocking mode", e))
    }

    /// Feed bytes from the socket to the client: data goes to `rx` (or is dropped while a purge
    /// is unconfirmed), events are applied at their position.
    fn ingest(&mut self, mut input: &[u8]) {
        let mut payload = Vec::new();
        while !input.is_empty() {
            payload.clear();
            let n = self.client.receive_until_event(input, &mut payload);
            input = &input[n.min(input.len())..];
            if self.purges_pending == 0 {
                self.rx.extend(payload.iter().copied());
            }
            while let Some(event) = self.client.poll_event() {
                match event {
                    Event::Purged(Purge::Receive | Purge::Both) => {
                        self.purges_pending = self.purges_pending.saturating_sub(1);
                    }
                    Event::Unknown(_) => self.unknown_replies += 1,
                    Event::Signature(text) => {
                        if self.signatures.len() >= SIGNATURES_KEPT {
                            self.signatures.pop_front();
                        }
                        self.signatures.push_back(text.as_bytes().to_vec());
                    }
                    other => tracing::trace!("rfc2217://{}: {other:?}", self.addr),
                }
            }
            if n == 0 {
                break;
            }
        }
    }

    /// Move whatever has arrived into the client without waiting.
    fn pump(&mut self) -> Result<(), LinkError> {
        if self.eof {
            return Ok(());
        }
        self.set_nonblocking(true)?;
        let mut buf = [0u8; CHUNK];
        let r = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break Ok(());
                }
                Ok(n) => self.ingest(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_would_block(&e) => break Ok(()),
                Err(e) => break Err(self.io_error("reading from", e)),
            }
        };
        self.set_nonblocking(false)?;
        r
    }

    /// One blocking read of at most `timeout` into the client, then write out what it produced.
    /// [`LinkError::Timeout`] when nothing arrived; [`LinkError::Closed`] at the end of the
    /// stream.
    fn fill(&mut self, timeout: Duration) -> Result<(), LinkError> {
        if self.eof {
            return Err(LinkError::Closed);
        }
        let mut buf = [0u8; CHUNK];
        let n = if timeout.is_zero() {
            self.set_nonblocking(true)?;
            let r = self.stream.read(&mut buf);
            self.set_nonblocking(false)?;
            r
        } else {
            if self.read_timeout != Some(timeout) {
                self.stream
                    .set_read_timeout(Some(timeout))
                    .map_err(|e| LinkError::io("setting the read timeout", e))?;
                self.read_timeout = Some(timeout);
            }
            self.stream.read(&mut buf)
        };
        match n {
            Ok(0) => {
                self.eof = true;
                Err(LinkError::Closed)
            }
            Ok(n) => {
                self.ingest(&buf[..n]);
                self.flush()
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) if is_would_block(&e) => Err(LinkError::Timeout(timeout)),
            Err(e) => Err(self.io_error("reading from", e)),
        }
    }

    /// Write out everything the client has queued. While the socket takes nothing, read what
    /// has arrived, so that a peer that also writes cannot deadlock us.
    fn flush(&mut self) -> Result<(), LinkError> {
        let mut stalled_since = Instant::now();
        loop {
            let more = self.client.take_output();
            self.out.extend_from_slice(&more);
            if self.out.is_empty() {
                return Ok(());
            }
            match self.stream.write(&self.out) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => {
                    self.out.drain(..n);
                    stalled_since = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_would_block(&e) => {
                    if stalled_since.elapsed() >= WRITE_TIMEOUT {
                        return Err(LinkError::io(
                            format!(
                                "writing to rfc2217://{} (the bridge took no data for {}s)",
                                self.addr,
                                WRITE_TIMEOUT.as_secs()
                            ),
                            e,
                        ));
                    }
                    self.pump()?;
                }
                Err(e) => return Err(self.io_error("writing to", e)),
            }
        }
    }

    /// Send a COM-PORT-OPTION subnegotiation the `rfc2217` client has no call for (the relay's
    /// vendor requests), in order with the data and commands queued before it.
    pub(crate) fn send_com_port(&mut self, command: u8, payload: &[u8]) -> Result<(), LinkError> {
        let queued = self.client.take_output();
        self.out.extend_from_slice(&queued);
        self.out.extend_from_slice(&[0xFF, 0xFA, 0x2C, command]);
        for &b in payload {
            self.out.push(b);
            if b == 0xFF {
                self.out.push(0xFF);
            }
        }
        self.out.extend_from_slice(&[0xFF, 0xF0]);
        self.flush()
    }

    /// The oldest signature the bridge has sent and not taken yet, waiting at most `timeout`
    /// for one; serial data that arrives meanwhile is kept for [`Link::read`].
    pub(crate) fn next_signature(&mut self, timeout: Duration) -> Result<Vec<u8>, LinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(text) = self.signatures.pop_front() {
                return Ok(text);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LinkError::Timeout(timeout));
            }
            match self.fill(remaining) {
                Ok(()) | Err(LinkError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Copy buffered serial data into `buf`.
    fn take_rx(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.rx.len());
        for (slot, byte) in buf.iter_mut().zip(self.rx.drain(..n)) {
            *slot = byte;
        }
        n
    }
}

impl Link for Rfc2217Link {
    /// Queue the data (each `0xFF` doubled) and write it out, normally in one `write`.
    fn write_all(&mut self, data: &[u8]) -> Result<(), LinkError> {
        self.client.write_data(data);
        self.flush()
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if !self.rx.is_empty() {
                return Ok(self.take_rx(buf));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.fill(remaining) {
                Ok(()) => {}
                Err(LinkError::Timeout(_)) => {
                    if !self.rx.is_empty() {
                        continue;
                    }
                    if remaining.is_zero() || Instant::now() >= deadline {
                        return Err(LinkError::Timeout(timeout));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ask the bridge to purge its receive buffer (what its serial port received and has not
    /// sent yet) and drop what is buffered here. Until the bridge confirms the purge (at most
    /// 2 s), arriving data predates it and is dropped too. A bridge that does not confirm is
    /// not waited for again.
    fn discard_input(&mut self) -> Result<(), LinkError> {
        self.rx.clear();
        if self.eof {
            // The next read reports the closed connection.
            return Ok(());
        }
        self.client.purge(Purge::Receive);
        self.flush()?;
        if self.purge_unconfirmed {
            self.pump()?;
            self.rx.clear();
            return Ok(());
        }
        self.purges_pending += 1;
        let deadline = Instant::now() + PURGE_TIMEOUT;
        while self.purges_pending > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                tracing::debug!(
                    "rfc2217://{}: the bridge did not confirm a purge; not waiting for it again",
                    self.addr
                );
                self.purge_unconfirmed = true;
                self.purges_pending = 0;
                self.rx.clear();
                break;
            }
            match self.fill(remaining) {
                Ok(()) | Err(LinkError::Timeout(_)) => {}
                Err(e) => {
                    self.purges_pending = 0;
                    self.rx.clear();
                    return match e {
                        // The next read reports the closed connection.
                        LinkError::Closed => Ok(()),
                        e => Err(e),
                    };
                }
            }
        }
        Ok(())
    }

    /// Sent in order with the data; the bridge's reply is not waited for (ser2net in front of
    /// a pseudo-terminal never answers).
    fn set_dtr(&mut self, level: bool) -> Result<(), LinkError> {
        self.client.set_dtr(level);
        self.flush()
    }

    /// As [`Link::set_dtr`].
    fn set_rts(&mut self, level: bool) -> Result<(), LinkError> {
        self.client.set_rts(level);
        self.flush()
    }

    /// As [`Link::set_dtr`].
    fn set_break(&mut self, on: bool) -> Result<(), LinkError> {
        self.client.set_break(on);
        self.flush()
    }

    /// Send the new settings; the bridge applies them in order with the data. The reply is not
    /// waited for: [`Rfc2217Link::readiness`] tells whether it has been confirmed.
    fn set_line(&mut self, settings: LineSettings) -> Result<(), LinkError> {
        self.client.set_port_settings(port_settings(settings));
        self.flush()?;
        self.line = settings;
        Ok(())
    }

    fn line(&self) -> LineSettings {
        self.line
    }

    fn describe(&self) -> String {
        format!("rfc2217://{} at {}", self.addr, line_text(self.line))
    }

    /// Write out what is queued and close the sending side.
    fn close(&mut self) -> Result<(), LinkError> {
        match self.flush() {
            Ok(()) | Err(LinkError::Closed) => {}
            Err(e) => return Err(e),
        }
        match self.stream.shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if is_disconnect(&e) => Ok(()),
            Err(e) => Err(LinkError::io(format!("closing rfc2217://{}", self.addr), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rfc2217::{Server, ServerEvent};
    use std::net::TcpListener;
    use std::thread::{self, JoinHandle};

    const LONG: Duration = Duration::from_secs(10);

    /// What the bridge's UART saw, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Rec {
        Data(Vec<u8>),
        Event(ServerEvent),
    }

    fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = l.local_addr().expect("test setup").to_string();
        (l, addr)
    }

    /// An RFC 2217 bridge (the `rfc2217` crate's `Server`) in front of a loopback UART that
    /// echoes every byte. Its UART also "receives" `stale` when COM-PORT-OPTION becomes active
    /// and whenever DTR is asserted. Serves one client; when the client closes its side, the
    /// thread closes the connection and returns what the UART saw.
    fn spawn_bridge(stale: &'static [u8]) -> (String, JoinHandle<Vec<Rec>>) {
        let (l, addr) = listener();
        let handle = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            let mut server = Server::new(PortSettings::default());
            let mut log: Vec<Rec> = Vec::new();
            s.write_all(&server.take_output()).expect("test setup");
            let mut buf = [0u8; 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let mut payload = Vec::new();
                    let k = server.receive_until_event(rest, &mut payload);
                    rest = &rest[k..];
                    if !payload.is_empty() {
                        server.write_data(&payload);
                        match log.last_mut() {
                            Some(Rec::Data(d)) => d.extend_from_slice(&payload),
                            _ => log.push(Rec::Data(payload)),
                        }
                    }
                    while let Some(event) = server.poll_event() {
                        if matches!(event, ServerEvent::ComPortActive | ServerEvent::Dtr(true)) {
                            server.write_data(stale);
                        }
                        log.push(Rec::Event(event));
                    }
                }
                s.write_all(&server.take_output()).expect("test setup");
            }
            log
        });
        (addr, handle)
    }

    /// A peer that sends `greeting`, then, if `replies` is given, waits for the settings
    /// round (five subnegotiations) and sends `replies`; then holds the connection until the
    /// client drops it.
    fn spawn_fake(
        greeting: &'static [u8],
        replies: Option<&'static [u8]>,
    ) -> (String, JoinHandle<()>) {
        let (l, addr) = listener();
        let handle = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            s.write_all(greeting).expect("test setup");
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            let mut replied = replies.is_none();
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
                let ends = seen.windows(2).filter(|w| w == &[0xFF, 0xF0]).count();
                if !replied && ends >= 5 {
                    if let Some(r) = replies {
                        s.write_all(r).expect("test setup");
                    }
                    replied = true;
                }
            }
        });
        (addr, handle)
    }

    fn read_n(link: &mut Rfc2217Link, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < n {
            let k = link.read(&mut buf, LONG).expect("test setup");
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    /// Close the link and read until the bridge closes too; returns what was still unread.
    fn finish(mut link: Rfc2217Link) -> Vec<u8> {
        link.close().expect("test setup");
        let mut rest = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match link.read(&mut buf, LONG) {
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(LinkError::Closed) => return rest,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }

    fn even(baud: u32) -> LineSettings {
        LineSettings {
            baud,
            parity: Parity::Even,
        }
    }

    fn settings(baud_rate: u32, parity: WireParity) -> ServerEvent {
        ServerEvent::SettingsChanged(PortSettings {
            baud_rate,
            parity,
            ..PortSettings::default()
        })
    }

    #[test]
    fn negotiates_and_sets_the_line() {
        let (addr, bridge) = spawn_bridge(b"");
        let mut link = Rfc2217Link::connect_with(&addr, even(57_600), LONG).expect("test setup");
        assert_eq!(link.readiness(), Ok(()));
        let reported = link.reported_settings();
        assert_eq!(reported.baud_rate, Some(57_600));
        assert_eq!(reported.parity, Some(WireParity::Even));
        assert_eq!(reported.data_bits, Some(DataBits::Eight));
        assert_eq!(reported.stop_bits, Some(StopBits::One));
        assert!(link.describe().contains("57600 8E1"), "{}", link.describe());

        let none = LineSettings {
            baud: 115_200,
            parity: Parity::None,
        };
        link.set_line(none).expect("test setup");
        assert_eq!(link.line(), none);
        assert!(finish(link).is_empty());

        let log = bridge.join().expect("test setup");
        assert_eq!(log.first(), Some(&Rec::Event(ServerEvent::ComPortActive)));
        assert!(log.contains(&Rec::Event(settings(57_600, WireParity::Even))));
        let last = log
            .iter()
            .rev()
            .find(|r| matches!(r, Rec::Event(ServerEvent::SettingsChanged(_))));
        assert_eq!(last, Some(&Rec::Event(settings(115_200, WireParity::None))));
    }

    #[test]
    fn line_control_arrives_in_order_with_the_data() {
        let (addr, bridge) = spawn_bridge(b"");
        let mut link = Rfc2217Link::connect_with(&addr, even(115_200), LONG).expect("test setup");
        link.set_dtr(true).expect("test setup");
        link.write_all(&[0x01]).expect("test setup");
        link.set_rts(false).expect("test setup");
        link.write_all(&[0x02]).expect("test setup");
        link.set_dtr(false).expect("test setup");
        link.set_break(true).expect("test setup");
        link.set_break(false).expect("test setup");
        link.set_rts(true).expect("test setup");
        assert_eq!(read_n(&mut link, 2), [0x01, 0x02]);
        assert!(finish(link).is_empty());

        let log: Vec<Rec> = bridge
            .join()
            .expect("test setup")
            .into_iter()
            .filter(|r| {
                !matches!(
                    r,
                    Rec::Event(ServerEvent::ComPortActive | ServerEvent::SettingsChanged(_))
                )
            })
            .collect();
        assert_eq!(
            log,
            [
                Rec::Event(ServerEvent::Dtr(true)),
                Rec::Data(vec![0x01]),
                Rec::Event(ServerEvent::Rts(false)),
                Rec::Data(vec![0x02]),
                Rec::Event(ServerEvent::Dtr(false)),
                Rec::Event(ServerEvent::Break(true)),
                Rec::Event(ServerEvent::Break(false)),
                Rec::Event(ServerEvent::Rts(true)),
            ]
        );
    }

    #[test]
    fn ff_bytes_round_trip() {
        let (addr, bridge) = spawn_bridge(b"");
        let mut link = Rfc2217Link::connect_with(&addr, even(115_200), LONG).expect("test setup");
        let small = [0x00, 0xFF, 0xFF, 0x7F];
        link.write_all(&small).expect("test setup");
        assert_eq!(read_n(&mut link, small.len()), small);
        // 256 × FF, then every byte value: 520 bytes on the wire each way.
        let mut big = vec![0xFF; 256];
        big.extend(0..=255u8);
        link.write_all(&big).expect("test setup");
        assert_eq!(read_n(&mut link, big.len()), big);
        assert!(finish(link).is_empty());

        let data: Vec<u8> = bridge
            .join()
            .expect("test setup")
            .into_iter()
            .filter_map(|r| match r {
                Rec::Data(d) => Some(d),
                Rec::Event(_) => None,
            })
            .flatten()
            .collect();
        let mut want = small.to_vec();
        want.extend_from_slice(&big);
        assert_eq!(data, want);
    }

    #[test]
    fn discard_input_purges_and_drops_stale_data() {
        let (addr, bridge) = spawn_bridge(b"stale");
        let mut link = Rfc2217Link::connect_with(&addr, even(115_200), LONG).expect("test setup");
        // The first "stale" preceded the settings replies, so it is buffered here by now.
        assert_eq!(link.rx.len(), 5);
        // The bridge sends "stale" again when it sees DTR, before it sees the purge: whether
        // it is still in flight or already here, it precedes the purge confirmation.
        link.set_dtr(true).expect("test setup");
        link.discard_input().expect("test setup");
        link.write_all(b"new").expect("test setup");
        assert_eq!(read_n(&mut link, 3), b"new");
        assert!(finish(link).is_empty());
        let log = bridge.join().expect("test setup");
        assert!(log.contains(&Rec::Event(ServerEvent::Purge(Purge::Receive))));
    }

    #[test]
    fn read_times_out() {
        let (addr, bridge) = spawn_bridge(b"");
        let mut link = Rfc2217Link::connect_with(&addr, even(115_200), LONG).expect("test setup");
        let wait = Duration::from_millis(50);
        match link.read(&mut [0u8; 4], wait) {
            Err(LinkError::Timeout(t)) => assert_eq!(t, wait),
            other => panic!("expected a timeout, got {other:?}"),
        }
        match link.read(&mut [0u8; 4], Duration::ZERO) {
            Err(LinkError::Timeout(_)) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(finish(link).is_empty());
        bridge.join().expect("test setup");
    }

    fn open_error(result: Result<Rfc2217Link, LinkError>) -> String {
        match result {
            Err(e @ LinkError::Open { .. }) => e.to_string(),
            Err(e) => panic!("expected an open error, got {e}"),
            Ok(link) => panic!("expected an open error, got {}", link.describe()),
        }
    }

    #[test]
    fn raw_port_fails_at_the_deadline_with_a_tcp_hint() {
        let (addr, peer) = spawn_fake(b"", None);
        let text = open_error(Rfc2217Link::connect_with(
            &addr,
            even(115_200),
            Duration::from_millis(200),
        ));
        assert!(text.contains(&format!("rfc2217://{addr}")), "{text}");
        assert!(text.contains("raw TCP"), "{text}");
        assert!(text.contains(&format!("tcp://{addr}")), "{text}");
        peer.join().expect("test setup");
    }

    #[test]
    fn plain_telnet_server_is_refused() {
        // DONT COM-PORT-OPTION.
        let (addr, peer) = spawn_fake(&[0xFF, 0xFE, 0x2C], None);
        let text = open_error(Rfc2217Link::connect_with(&addr, even(115_200), LONG));
        assert!(text.contains("plain Telnet"), "{text}");
        peer.join().expect("test setup");
    }

    #[test]
    fn other_settings_are_reported() {
        // DO COM-PORT-OPTION, then answers for 57600 baud, 8 data bits, parity NONE, 1 stop
        // bit, no flow control.
        let replies: &[u8] = &[
            0xFF, 0xFA, 0x2C, 0x65, 0x00, 0x00, 0xE1, 0x00, 0xFF, 0xF0, //
            0xFF, 0xFA, 0x2C, 0x66, 0x08, 0xFF, 0xF0, //
            0xFF, 0xFA, 0x2C, 0x67, 0x01, 0xFF, 0xF0, //
            0xFF, 0xFA, 0x2C, 0x68, 0x01, 0xFF, 0xF0, //
            0xFF, 0xFA, 0x2C, 0x69, 0x01, 0xFF, 0xF0,
        ];
        let (addr, peer) = spawn_fake(&[0xFF, 0xFD, 0x2C], Some(replies));
        let text = open_error(Rfc2217Link::connect_with(&addr, even(57_600), LONG));
        assert!(text.contains("parity none"), "{text}");
        assert!(text.contains("57600 8E1"), "{text}");
        assert!(text.contains("--parity none"), "{text}");
        peer.join().expect("test setup");
    }

    #[test]
    fn bridge_that_hangs_up_is_quoted() {
        let (l, addr) = listener();
        let peer = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("test setup");
            s.write_all(b"Port's device already in use\r\n")
                .expect("test setup");
            // Read the client's opening before closing, so that the close is a clean FIN.
            let _ = s.read(&mut [0u8; 64]);
        });
        let text = open_error(Rfc2217Link::connect_with(&addr, even(115_200), LONG));
        assert!(text.contains("already in use"), "{text}");
        peer.join().expect("test setup");
    }
}
