//! Dialling out through a local AT modem (`stm32boot relay --connect 'modem:…'`).
//!
//! [`ModemLink`] is synchronous: it dials with blocking AT commands and, once online, reads and
//! writes the modem's serial port with timeouts. The relay runs on tokio. Each call bridges the
//! two with a [`tokio::io::duplex`] pipe: the relay's end goes to the dial-out session code
//! exactly as a TCP socket would (the same handshake first, then the RFC 2217 session), and a
//! thread of its own owns the [`ModemLink`] and pumps the other end to and from it:
//!
//! - bytes from the relay's side are written to the modem as soon as the thread sees them (it
//!   looks at the pipe at least every [`POLL`], between short reads of the modem);
//! - bytes from the modem go to the pipe; while the relay's side does not take them, the thread
//!   stops reading the modem (no unbounded buffering);
//! - when the modem reports that the connection ended (`NO CARRIER`, `CLOSED`, DCD) the thread
//!   drops its end of the pipe: the relay reads the data that came before the report, then the
//!   end of the stream, and the session is over;
//! - when the relay's side closes (the session ended, the handshake failed, the relay stops) the
//!   thread sees the end of the stream.
//!
//! Either way the thread then closes the [`ModemLink`] (guard time, `+++`, the profile's
//! hang-up; only the hang-up when the modem already reported the drop) and signals [`Call`].
//! The relay waits for that before it dials again or exits, so the modem is never left online.
//!
//! The pipe is polled with a no-op waker, so the thread never blocks on the relay's side and
//! cannot deadlock with it; the cost is at most [`POLL`] of extra latency towards the modem.

use super::server::CHUNK;
use crate::link::{LineSettings, Link, LinkError};
use crate::transport::modem::{ModemLink, ModemSpec};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

/// How long the pump waits for the modem before it looks at the relay's side again: the most a
/// byte from the client waits before it is written to the modem.
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// Bytes each direction of the pipe holds.
const PIPE: usize = 64 * 1024;

/// A call in progress on the modem's thread.
#[derive(Debug)]
pub(crate) struct Call {
    done: oneshot::Receiver<()>,
}

impl Call {
    /// Wait until the modem has hung up. The relay's end of the pipe must be dropped first:
    /// the thread hangs up once it sees it closed (or once the modem reports the drop).
    pub(crate) async fn hung_up(&mut self) {
        // An error means the thread is gone without saying so (a panic): the link was
        // dropped, which hangs up too.
        let _ = (&mut self.done).await;
    }
}

/// Dial `spec` on a thread of its own; once the modem is online, the relay's end of the pipe
/// to it and the [`Call`]. Fails with the modem's own explanation (the AT step that failed and
/// what to check).
pub(crate) async fn dial(
    spec: Arc<ModemSpec>,
) -> std::result::Result<(DuplexStream, Call), String> {
    let name = spec.url();
    dial_with(name, move || {
        ModemLink::open(&spec, LineSettings::default())
    })
    .await
}

/// [`dial`] with any link: `open` runs on the thread (tests pass a fake link).
pub(crate) async fn dial_with<L, F>(
    name: String,
    open: F,
) -> std::result::Result<(DuplexStream, Call), String>
where
    L: Link + 'static,
    F: FnOnce() -> std::result::Result<L, LinkError> + Send + 'static,
{
    let (relay_end, pump_end) = tokio::io::duplex(PIPE);
    let (ready_tx, ready_rx) = oneshot::channel::<std::result::Result<(), String>>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("relay-modem".into())
        .spawn(move || {
            let mut link = match open() {
                Ok(link) => link,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            if ready_tx.send(Ok(())).is_err() {
                // Nobody waits for this call any more (the relay is stopping).
                tracing::debug!("relay: {name} came online after the relay gave up; hanging up");
                drop(pump_end);
            } else {
                match pump(&mut link, pump_end, POLL) {
                    Ended::RelayClosed => {
                        tracing::debug!("relay: {name}: the session is over; hanging up")
                    }
                    Ended::RelayGone(e) => {
                        tracing::debug!(
                            "relay: {name}: the relay's side went away ({e}); hanging up"
                        )
                    }
                    Ended::ModemDropped(e) => {
                        tracing::info!("relay: {name}: the modem connection ended");
                        tracing::debug!("relay: {name}: {e}");
                    }
                }
            }
            // Escape and hang up (only hang up if the modem already dropped the connection);
            // a failure is logged by the link.
            let _ = link.close();
            drop(link);
            tracing::info!("relay: {name} hung up");
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start a thread for the modem: {e}"))?;
    match ready_rx.await {
        Ok(Ok(())) => Ok((relay_end, Call { done: done_rx })),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("the modem's thread ended before it dialled".into()),
    }
}

/// Why [`pump`] returned.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The relay's side closed its end of the pipe (after sending everything).
    RelayClosed,
    /// The relay's side is gone while data from the modem was waiting for it.
    RelayGone(io::Error),
    /// The modem reported that the connection ended, or its port failed.
    ModemDropped(LinkError),
}

/// Move bytes between `pipe` and `link` until one of them ends; `pipe` is dropped on return.
/// Never blocks on the pipe: it is polled with a no-op waker, and `link` is read for at most
/// `poll` at a time.
pub(crate) fn pump<L: Link + ?Sized>(
    link: &mut L,
    mut pipe: DuplexStream,
    poll: Duration,
) -> Ended {
    let mut cx = Context::from_waker(Waker::noop());
    let mut from_relay = vec![0u8; CHUNK];
    let mut from_modem = vec![0u8; CHUNK];
    // From the modem, not yet taken by the pipe.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        while !pending.is_empty() {
            match Pin::new(&mut pipe).poll_write(&mut cx, &pending) {
                Poll::Ready(Ok(0)) => return Ended::RelayGone(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Ended::RelayGone(e),
                Poll::Pending => break,
            }
        }
        loop {
            let mut buf = ReadBuf::new(&mut from_relay);
            match Pin::new(&mut pipe).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Ended::RelayClosed,
                Poll::Ready(Ok(())) => {
                    if let Err(e) = link.write_all(buf.filled()) {
                        return Ended::ModemDropped(e);
                    }
                }
                Poll::Ready(Err(e)) => return Ended::RelayGone(e),
                Poll::Pending => break,
            }
        }
        if !pending.is_empty() {
            // The relay's side is not reading: leave the modem's data in the modem until it is.
            std::thread::sleep(poll);
            continue;
        }
        match link.read(&mut from_modem, poll) {
            Ok(n) => pending.extend_from_slice(&from_modem[..n]),
            Err(LinkError::Timeout(_)) => {}
            Err(e) => return Ended::ModemDropped(e),
        }
    }
}

/// What the dial-out loop dials: the client's address over the network stack, or through a
/// local AT modem.
#[derive(Debug, Clone)]
pub(crate) enum Dialout {
    /// `host:port`, with TCP.
    Tcp(String),
    /// `host=`/`port=` of the spec, through the modem.
    Modem(Arc<ModemSpec>),
}

impl Dialout {
    /// The peer as logs name it: `host:port`, or `host:port via modem:/dev/ttyUSB2` (never the
    /// modem's options: `pin=` is a secret).
    pub(crate) fn label(&self) -> String {
        match self {
            Dialout::Tcp(target) => target.clone(),
            Dialout::Modem(spec) => format!("{} via {}", spec.target, spec.url()),
        }
    }

    /// The address the client listens on (`relay-listen://` of it).
    pub(crate) fn listen_addr(&self) -> String {
        match self {
            Dialout::Tcp(target) => target.clone(),
            Dialout::Modem(spec) => spec.target.to_string(),
        }
    }
}

/// A dialled connection: a TCP socket, or the relay's end of the pipe to a modem's data mode.
pub(crate) enum Outbound {
    /// Dialled with TCP.
    Tcp(tokio::net::TcpStream),
    /// Dialled through a modem.
    Modem(DuplexStream),
}

impl AsyncRead for Outbound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Outbound::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Outbound::Modem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Outbound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Outbound::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Outbound::Modem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Outbound::Tcp(s) => Pin::new(s).poll_flush(cx),
            Outbound::Modem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Outbound::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Outbound::Modem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Limit that only stops a broken test.
    const LONG: Duration = Duration::from_secs(60);

    /// A modem in data mode, in memory: `rx` is what the far end sends, `written` what reached
    /// the modem; `dropped` makes reads fail once `rx` is empty, as after `NO CARRIER`.
    #[derive(Clone, Default)]
    struct FakeModem {
        rx: Arc<Mutex<VecDeque<u8>>>,
        written: Arc<Mutex<Vec<u8>>>,
        dropped: Arc<AtomicBool>,
        closed: Arc<AtomicBool>,
    }

    impl FakeModem {
        fn written(&self) -> Vec<u8> {
            self.written.lock().expect("test setup").clone()
        }

        fn send(&self, bytes: &[u8]) {
            self.rx.lock().expect("test setup").extend(bytes);
        }
    }

    impl Link for FakeModem {
        fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
            self.written
                .lock()
                .expect("test setup")
                .extend_from_slice(data);
            Ok(())
        }
        fn read(
            &mut self,
            buf: &mut [u8],
            timeout: Duration,
        ) -> std::result::Result<usize, LinkError> {
            {
                let mut rx = self.rx.lock().expect("test setup");
                if !rx.is_empty() {
                    let n = buf.len().min(rx.len());
                    for (slot, b) in buf.iter_mut().zip(rx.drain(..n)) {
                        *slot = b;
                    }
                    return Ok(n);
                }
            }
            if self.dropped.load(Ordering::SeqCst) {
                return Err(LinkError::io(
                    "the modem reported NO CARRIER",
                    io::Error::from(io::ErrorKind::ConnectionAborted),
                ));
            }
            std::thread::sleep(timeout);
            Err(LinkError::Timeout(timeout))
        }
        fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_dtr(&mut self, _level: bool) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_rts(&mut self, _level: bool) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_break(&mut self, _on: bool) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_line(&mut self, _settings: LineSettings) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn line(&self) -> LineSettings {
            LineSettings::default()
        }
        fn describe(&self) -> String {
            "fake modem".into()
        }
        fn close(&mut self) -> std::result::Result<(), LinkError> {
            self.closed.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    async fn online(modem: &FakeModem) -> (DuplexStream, Call) {
        let link = modem.clone();
        dial_with("fake".into(), move || Ok(link))
            .await
            .expect("the fake modem dials")
    }

    async fn read_exactly(pipe: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(LONG, pipe.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("the data");
        got
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_closing_the_relay_side_hangs_up() {
        let modem = FakeModem::default();
        let (mut pipe, mut call) = online(&modem).await;
        pipe.write_all(b"\x7F").await.expect("test setup");
        modem.send(b"\x79");
        assert_eq!(read_exactly(&mut pipe, 1).await, b"\x79");
        pipe.write_all(b"\x00\xFF").await.expect("test setup");
        drop(pipe);
        tokio::time::timeout(LONG, call.hung_up())
            .await
            .expect("the call ends");
        // Everything the relay wrote reached the modem before the hang-up.
        assert_eq!(modem.written(), b"\x7F\x00\xFF");
        assert!(modem.closed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_modem_drop_ends_the_stream_after_the_data_before_it() {
        let modem = FakeModem::default();
        let (mut pipe, mut call) = online(&modem).await;
        let data: Vec<u8> = (0..=255u8).cycle().take(3 * PIPE).collect();
        modem.send(&data);
        modem.dropped.store(true, Ordering::SeqCst);
        // More than the pipe holds: the pump waits for the relay's side to read.
        let mut got = Vec::new();
        tokio::time::timeout(LONG, pipe.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("the data");
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        tokio::time::timeout(LONG, call.hung_up())
            .await
            .expect("the call ends");
        assert!(modem.closed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failed_dial_says_why() {
        let r = dial_with::<FakeModem, _>("fake".into(), || {
            Err(LinkError::Open {
                port: "modem:/dev/null".into(),
                reason: "`AT#SD=1,0,7000,\"h\",0,0,0` was answered NO CARRIER".into(),
            })
        })
        .await;
        match r {
            Err(why) => assert!(why.contains("NO CARRIER"), "{why}"),
            Ok(_) => panic!("dialled"),
        }
    }
}
