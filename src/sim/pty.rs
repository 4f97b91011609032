//! Serving a simulated target on a pseudo-terminal, for clients that open a serial device path
//! (our own serial transport, stm32flash with `-m 8n1`). The chip sees the baud rate the client
//! sets on the slave side, with no parity: a pseudo-terminal has none (links.md §3.3).
//!
//! The endpoint keeps its own handle on the slave side open, so that clients can come and go
//! without the master seeing a hang-up, and puts the slave in raw mode before any client opens
//! it, so that nothing is echoed.

use super::endpoint::{serve, Connection, RealClock};
use super::wire::Wire;
use crate::error::{Error, Result};
use crate::link::{LineSettings, Parity};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use nix::sys::time::TimeSpec;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A pseudo-terminal pair in raw mode, with an optional stable symlink to its slave side
/// (removed on drop). The simulator's endpoint and its simulated modem both serve one.
pub struct RawPty {
    /// The master side, which the simulator reads and writes.
    pub master: File,
    /// Kept open so that clients can come and go without the master seeing a hang-up; the
    /// endpoint reads the baud rate a client sets from it.
    pub slave: OwnedFd,
    path: PathBuf,
    symlink: Option<PathBuf>,
}

impl RawPty {
    /// Create the pair and put the slave in raw mode; with `symlink`, also make a stable path
    /// that points at the slave.
    pub fn open(symlink: Option<&Path>) -> Result<RawPty> {
        let pty =
            openpty(None, None).map_err(|e| Error::io("creating a pseudo-terminal", e.into()))?;
        let mut t = tcgetattr(&pty.slave)
            .map_err(|e| Error::io("reading pseudo-terminal settings", e.into()))?;
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t)
            .map_err(|e| Error::io("setting the pseudo-terminal to raw mode", e.into()))?;
        let path = nix::unistd::ttyname(pty.slave.as_fd())
            .map_err(|e| Error::io("finding the pseudo-terminal's name", e.into()))?;
        if let Some(link) = symlink {
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(link).map_err(|e| {
                    Error::io(format!("replacing the old link {}", link.display()), e)
                })?;
            }
            std::os::unix::fs::symlink(&path, link)
                .map_err(|e| Error::io(format!("creating the link {}", link.display()), e))?;
        }
        Ok(RawPty {
            master: File::from(pty.master),
            slave: pty.slave,
            path,
            symlink: symlink.map(Path::to_path_buf),
        })
    }

    /// The slave path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RawPty {
    fn drop(&mut self) {
        if let Some(link) = &self.symlink {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// A pseudo-terminal pair whose slave path clients open.
pub struct PtyEndpoint {
    pty: RawPty,
}

impl PtyEndpoint {
    /// Create the pair; with `symlink`, also make a stable path that points at the slave.
    pub fn open(symlink: Option<&Path>) -> Result<PtyEndpoint> {
        Ok(PtyEndpoint {
            pty: RawPty::open(symlink)?,
        })
    }

    /// The slave path clients open.
    pub fn path(&self) -> &Path {
        self.pty.path()
    }

    /// Serve the wire until `stop` is set. Clients may open and close the slave side as often
    /// as they like; the chip keeps running in between.
    pub fn serve(&mut self, wire: &mut Wire, clock: &RealClock, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let mut conn = PtyConnection {
                master: &mut self.pty.master,
                slave: &self.pty.slave,
                buf: [0; 1024],
                baud: 0,
            };
            serve(wire, clock, &mut conn, stop)?;
        }
        Ok(())
    }
}

/// The master side of the pair as a [`Connection`]. A pseudo-terminal carries no parity and no
/// modem lines: the chip sees 8N1 at whatever baud rate the client set on the slave side.
struct PtyConnection<'a> {
    master: &'a mut File,
    slave: &'a OwnedFd,
    buf: [u8; 1024],
    baud: u32,
}

impl PtyConnection<'_> {
    /// The output rate the client set on the slave side. Read with TCGETS2, which reports the
    /// number itself: clients such as serialport-rs set rates with BOTHER, which the classic
    /// termios speed constants cannot express.
    fn client_baud(&self) -> Option<u32> {
        // SAFETY: termios2 is plain old data, and TCGETS2 fills it from the descriptor we own.
        let mut t: nix::libc::termios2 = unsafe { std::mem::zeroed() };
        let r = unsafe { nix::libc::ioctl(self.slave.as_raw_fd(), nix::libc::TCGETS2, &mut t) };
        (r == 0).then_some(t.c_ospeed)
    }
}

impl Connection for PtyConnection<'_> {
    fn receive(&mut self, wire: &mut Wire, clock: &RealClock, timeout: Duration) -> Result<bool> {
        // ppoll takes nanoseconds: characters at 115200 baud are 87-95 µs apart.
        let timeout = TimeSpec::from_duration(timeout);
        let ready = {
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            match ppoll(&mut fds, Some(timeout), None) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => return Ok(true),
                Err(e) => return Err(Error::io("waiting for the pseudo-terminal", e.into())),
            }
        };
        if ready == 0 {
            return Ok(true);
        }
        let n = match self.master.read(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(true),
            // EIO: no client has the slave open at the moment.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                std::thread::sleep(Duration::from_millis(20));
                return Ok(true);
            }
            Err(e) => return Err(Error::io("reading the pseudo-terminal", e)),
        };
        let now = clock.now();
        if let Some(baud) = self.client_baud() {
            if baud != self.baud && baud > 0 {
                self.baud = baud;
                wire.set_line(
                    now,
                    LineSettings {
                        baud,
                        parity: Parity::None,
                    },
                );
            }
        }
        wire.host_send(now, &self.buf[..n]);
        Ok(true)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.master
            .write_all(bytes)
            .map_err(|e| Error::io("writing the pseudo-terminal", e))
    }
}
