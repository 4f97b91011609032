//! Connecting: sync, identify the bootloader, find the part in the device table and read what
//! varies within a PID (flash size) from the chip.

use crate::device::{Device, DeviceTable};
use crate::error::{Error, Result};
use crate::link::{LineSettings, LineStep, LinkError};
use crate::ops::progress::{Note, Progress};
use crate::protocol::Command;
use crate::session::{BootloaderInfo, Session};
use std::time::Duration;

/// Options for [`connect`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Use this flash size instead of the table's or the chip's (`--flash-size`).
    pub flash_size: Option<u32>,
    /// Reset and boot-entry steps on DTR/RTS, run before the first 0x7F (`--before`).
    pub entry: Vec<LineStep>,
    /// An application command that makes the firmware jump to its bootloader (`--enter`).
    pub enter: Option<EnterCommand>,
    /// The bootloader was left synced by an earlier run: identify it without sending 0x7F
    /// (`--before no-sync`).
    pub no_sync: bool,
    /// What [`Connection::finish`] does after a successful job (`--after`).
    pub leave: Leave,
}

/// How to leave the chip after a successful job (`--after`).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Leave {
    /// Stay in the bootloader (the next run can resume with `--before no-sync`).
    #[default]
    Stay,
    /// Start the application with Go, at this vector table (default: start of flash).
    Go(Option<u32>),
    /// Run this DTR/RTS sequence (a reset with BOOT0 low).
    Reset(Vec<LineStep>),
}

/// Entering the bootloader through the running application (`--enter`).
#[derive(Debug, Clone, PartialEq)]
pub struct EnterCommand {
    /// The bytes the application takes as "jump to the bootloader".
    pub bytes: Vec<u8>,
    /// How long the application may talk before the first 0x7F; what it says meanwhile is
    /// kept for the error message if the bootloader does not answer.
    pub wait: Duration,
    /// Line settings the application's console uses, when not the bootloader's 8E1.
    pub line: Option<LineSettings>,
}

/// The most of the application's reply kept for messages.
const APP_REPLY_MAX: usize = 256;

/// Send the application's entry command and collect what it answers within its wait.
fn enter_through_application(session: &mut Session, enter: &EnterCommand) -> Result<Vec<u8>> {
    let link = session.link_mut();
    let bootloader_line = link.line();
    if let Some(line) = enter.line {
        link.set_line(line)?;
    }
    link.discard_input()?;
    link.write_all(&enter.bytes)?;
    let mut reply = Vec::new();
    let deadline = link.now() + enter.wait;
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_sub(link.now());
        if left.is_zero() {
            break;
        }
        match link.read(&mut buf, left) {
            Ok(n) => {
                let room = APP_REPLY_MAX.saturating_sub(reply.len());
                reply.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(LinkError::Timeout(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if enter.line.is_some() {
        link.set_line(bootloader_line)?;
    }
    Ok(reply)
}

/// What to check when the bootloader did not answer after `--enter`.
fn enter_hint(reply: &[u8]) -> String {
    if reply.is_empty() {
        return "nothing answered the entry string and no bootloader answered 0x7F: check that \
                the application is running and listens on this UART at this baud rate and \
                parity (--enter-parity), and the string itself (\\r, \\n and \\xNN escapes \
                are understood)"
            .into();
    }
    let text: String = String::from_utf8_lossy(reply)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "the application answered \"{}\", not the bootloader: it took the entry string as an \
         ordinary command (check the string and that this firmware has a bootloader entry \
         command), or it needs longer to jump (--enter-wait)",
        text.trim()
    )
}

/// A session with an identified chip.
pub struct Connection {
    /// The session.
    pub session: Session,
    /// The part, with its real flash size.
    pub device: Device,
    /// What the bootloader reported.
    pub bootloader: BootloaderInfo,
    /// Whether read protection refused a probe read (RDP level 1 or 2).
    pub read_protected: bool,
    /// What [`Connection::finish`] does.
    pub leave: Leave,
}

impl Connection {
    /// Re-identify after a command that reset the chip.
    pub fn refresh(&mut self) -> Result<()> {
        let info =
            self.session.info().cloned().ok_or_else(|| {
                Error::InvalidRequest("the session lost its bootloader info".into())
            })?;
        self.bootloader = info;
        Ok(())
    }

    /// Derive the page map again from the option bits that choose it (after an option-byte
    /// change such as DB1M, DBANK or DUALBANK).
    pub fn reload_layout(&mut self, progress: &mut dyn Progress) -> Result<()> {
        if self.read_protected {
            return Ok(());
        }
        let size = self.device.flash_size();
        self.device = layout_for(&mut self.session, &self.device, size, progress)?;
        Ok(())
    }

    /// Read the 96-bit unique device ID, where the part has one and reads are allowed.
    pub fn unique_id(&mut self) -> Result<Option<[u8; 12]>> {
        let Some(addr) = self.device.uid else {
            return Ok(None);
        };
        if self.read_protected {
            return Ok(None);
        }
        let mut uid = [0u8; 12];
        self.session.read_memory_stable(addr, &mut uid)?;
        Ok(Some(uid))
    }

    /// Close the link.
    pub fn close(self) -> Result<()> {
        self.session.close()
    }

    /// After a successful job: leave the chip as [`ConnectOptions::leave`] asked (a Go is
    /// skipped when the job already started the application), then close the link.
    pub fn finish(mut self) -> Result<()> {
        match std::mem::take(&mut self.leave) {
            Leave::Stay => {}
            Leave::Go(address) => {
                if self.session.info().is_some() {
                    let address = address.unwrap_or(self.device.flash.start);
                    self.session.go(address)?;
                }
            }
            Leave::Reset(steps) => self.session.link_mut().run_steps(&steps)?,
        }
        self.close()
    }
}

/// Sync, identify, look the PID up and read the flash size where the part reports it.
pub fn connect(
    mut session: Session,
    table: &DeviceTable,
    options: &ConnectOptions,
    progress: &mut dyn Progress,
) -> Result<Connection> {
    if !options.entry.is_empty() {
        session.link_mut().run_steps(&options.entry)?;
    }
    let reply = match &options.enter {
        Some(enter) => Some(enter_through_application(&mut session, enter)?),
        None => None,
    };
    let synced = if options.no_sync {
        Ok(())
    } else {
        session.sync().map(|_| ())
    };
    let identified = synced.and_then(|()| session.identify().cloned());
    let identified = match identified {
        Err(Error::Timeout { .. }) if options.no_sync => Err(Error::NoSync {
            link: session.describe_link(),
            attempts: 0,
            stray_bytes: session.stray_bytes(),
            hint: "no-sync assumes a bootloader that an earlier run left synced, and this one did \
                   not answer Get Version: leave out --before no-sync (or reset the chip into its \
                   bootloader with a --before sequence)"
                .into(),
        }),
        other => other,
    };
    let info = match (identified, reply) {
        (Ok(info), _) => info,
        (
            Err(Error::NoSync {
                link,
                attempts,
                stray_bytes,
                ..
            }),
            Some(reply),
        ) => {
            return Err(Error::NoSync {
                link,
                attempts,
                stray_bytes,
                hint: enter_hint(&reply),
            })
        }
        (Err(e), _) => return Err(e),
    };
    if session.stray_bytes() > 0 {
        progress.note(Note::Info(format!(
            "ignored {} stray bytes before the bootloader's first ACK",
            session.stray_bytes()
        )));
    }
    let mut read_protected = !info.supports(Command::ReadMemory);
    let mut device = match table.by_pid(info.pid) {
        Some(d) => d.clone(),
        None => {
            let d = generic_profile(&mut session, &info)?;
            progress.note(Note::Warning(format!(
                "PID 0x{:03X} is not in the device table: continuing with a generic profile \
                 (flash at 0x{:08X}, {} KiB found by probing, page map unknown, so any erase is a \
                 mass erase); describe the part in a device file and pass --device-file for \
                 page-exact erases",
                info.pid,
                d.flash.start,
                d.flash_size() / 1024
            )));
            d
        }
    };
    let mut size = device.flash_size();
    if let Some(s) = options.flash_size {
        size = s;
    } else if let Some(reg) = device.flash_size_register {
        let mut kib = [0u8; 2];
        match read_unless_protected(&mut session, reg, &mut kib) {
            Ok(()) => {
                let kib = u16::from_le_bytes(kib);
                if kib != 0 && kib != 0xFFFF {
                    size = u32::from(kib) * 1024;
                }
            }
            Err(Error::Nack {
                phase: crate::error::Phase::Command,
                ..
            }) => {
                read_protected = true;
                progress.note(Note::Warning(
                    "read protection is active: reads, writes and erases are refused until \
                     `stm32boot protect readout off`, which mass-erases the flash"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    if !read_protected || size != device.flash_size() {
        device = layout_for(&mut session, &device, size, progress)?;
    }
    Ok(Connection {
        session,
        device,
        bootloader: info,
        read_protected,
        leave: options.leave.clone(),
    })
}

/// Read `buf` at `addr`, where a NACK of the command itself means read protection. A bootloader
/// can also refuse a few commands in a row for other reasons (a burst of line noise): read
/// protection is only concluded when the refusal persists across three rounds of tries.
fn read_unless_protected(session: &mut Session, addr: u32, buf: &mut [u8]) -> Result<()> {
    let rounds = if session.attempts() > 1 { 3 } else { 1 };
    let mut last = None;
    for _ in 0..rounds {
        match session.read_memory_stable(addr, buf) {
            Err(
                e @ Error::Nack {
                    phase: crate::error::Phase::Command,
                    ..
                },
            ) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidRequest("no read was tried".into())))
}

/// The device with the page map its flash size and its layout-selecting option bits give
/// (F42x DB1M, G4 DBANK). Option bits are read only where reads are allowed.
fn layout_for(
    session: &mut Session,
    device: &Device,
    size: u32,
    progress: &mut dyn Progress,
) -> Result<Device> {
    let mut option_bytes = Vec::new();
    for addr in device.layout_option_addresses(size) {
        let mut b = [0u8; 1];
        match session.read_memory_stable(addr, &mut b) {
            Ok(()) => option_bytes.push((addr, b[0])),
            Err(Error::Nack {
                phase: crate::error::Phase::Command,
                ..
            }) => break,
            Err(e) => return Err(e),
        }
    }
    if size == device.flash_size() && option_bytes.is_empty() {
        return Ok(device.clone());
    }
    let reader = |a: u32| option_bytes.iter().find(|(x, _)| *x == a).map(|(_, b)| *b);
    match device.with_layout(size, &reader) {
        Ok(d) => Ok(d),
        Err(e) => {
            progress.note(Note::Warning(format!(
                "the chip reports {} KiB of flash, which does not fit the table's layout ({e}); \
                 using the table's {} KiB (override with --flash-size)",
                size / 1024,
                device.flash_size() / 1024
            )));
            Ok(device.clone())
        }
    }
}

/// A profile for a PID the table does not know: flash at 0x08000000 with its size found by
/// probing Read Memory (the bootloader NACKs addresses past the end), the bootloader's own
/// command list, conservative alignment (32 bytes, the largest flash word) and no page map.
fn generic_profile(session: &mut Session, info: &BootloaderInfo) -> Result<Device> {
    const BASE: u32 = 0x0800_0000;
    let mut probe = |addr: u32| -> Result<bool> {
        let mut b = [0u8; 1];
        match session.read_memory(addr, &mut b) {
            Ok(()) => Ok(true),
            Err(Error::Nack {
                phase: crate::error::Phase::Address,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    };
    if !probe(BASE)? {
        return Err(Error::Device(format!(
            "PID 0x{:03X} is not in the device table and no flash answers at 0x{BASE:08X}: \
             describe the part in a device file and pass --device-file",
            info.pid
        )));
    }
    // Find the first unreadable power of two, then the end to 1 KiB by bisection.
    let mut good: u32 = 1024;
    let mut bad: u32 = 2048;
    while bad <= 64 << 20 && probe(BASE + bad - 1)? {
        good = bad;
        bad *= 2;
    }
    while bad - good > 1024 {
        let mid = good + (bad - good) / 2 / 1024 * 1024;
        if probe(BASE + mid - 1)? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(Device::generic(
        info.pid,
        BASE,
        good,
        info.version.0,
        info.commands.clone(),
    ))
}
