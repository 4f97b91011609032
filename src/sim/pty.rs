//! Serving a simulated target on a pseudo-terminal, for clients that open a serial device path
//! (our own serial transport, stm32flash with `-m 8n1`).
//!
//! The endpoint keeps its own handle on the slave side open, so that clients can come and go
//! without the master seeing a hang-up, and puts the slave in raw mode before any client opens
//! it, so that nothing is echoed.

use super::target::Target;
use crate::error::{Error, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A pseudo-terminal pair whose slave path clients open.
pub struct PtyEndpoint {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
    symlink: Option<PathBuf>,
}

impl PtyEndpoint {
    /// Create the pair; with `symlink`, also make a stable path that points at the slave.
    pub fn open(symlink: Option<&Path>) -> Result<PtyEndpoint> {
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
        Ok(PtyEndpoint {
            master: File::from(pty.master),
            _slave: pty.slave,
            path,
            symlink: symlink.map(Path::to_path_buf),
        })
    }

    /// The slave path clients open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve `target` until `stop` is set. Bytes are fed one at a time, replies written at once.
    pub fn serve(&mut self, target: &mut Target, stop: &AtomicBool) -> Result<()> {
        let mut buf = [0u8; 1024];
        let mut out = Vec::with_capacity(512);
        while !stop.load(Ordering::Relaxed) {
            let ready = {
                let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(100u16)) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(Error::io("waiting for the pseudo-terminal", e.into())),
                }
            };
            if ready == 0 {
                continue;
            }
            let n = match self.master.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: no client has the slave open at the moment.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(Error::io("reading the pseudo-terminal", e)),
            };
            for &b in &buf[..n] {
                target.feed(b, &mut out);
            }
            if !out.is_empty() {
                self.master
                    .write_all(&out)
                    .map_err(|e| Error::io("writing the pseudo-terminal", e))?;
                out.clear();
            }
        }
        Ok(())
    }
}

impl Drop for PtyEndpoint {
    fn drop(&mut self) {
        if let Some(link) = &self.symlink {
            let _ = std::fs::remove_file(link);
        }
    }
}
