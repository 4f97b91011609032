//! Connecting: sync, identify the bootloader, find the part in the device table and read what
//! varies within a PID (flash size) from the chip.

use crate::device::{Device, DeviceTable};
use crate::error::{Error, Result};
use crate::ops::progress::{Note, Progress};
use crate::protocol::Command;
use crate::session::{BootloaderInfo, Session};

/// Options for [`connect`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Use this flash size instead of the table's or the chip's (`--flash-size`).
    pub flash_size: Option<u32>,
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

    /// Read the 96-bit unique device ID, where the part has one and reads are allowed.
    pub fn unique_id(&mut self) -> Result<Option<[u8; 12]>> {
        let Some(addr) = self.device.uid else {
            return Ok(None);
        };
        if self.read_protected {
            return Ok(None);
        }
        let mut uid = [0u8; 12];
        self.session.read_memory(addr, &mut uid)?;
        Ok(Some(uid))
    }

    /// Close the link.
    pub fn close(self) -> Result<()> {
        self.session.close()
    }
}

/// Sync, identify, look the PID up and read the flash size where the part reports it.
pub fn connect(
    mut session: Session,
    table: &DeviceTable,
    options: &ConnectOptions,
    progress: &mut dyn Progress,
) -> Result<Connection> {
    let info = session.connect()?.clone();
    if session.stray_bytes() > 0 {
        progress.note(Note::Info(format!(
            "ignored {} stray bytes before the bootloader's first ACK",
            session.stray_bytes()
        )));
    }
    let mut device = table.by_pid(info.pid).cloned().ok_or_else(|| {
        Error::Device(format!(
            "PID 0x{:03X} is not in the device table (bootloader {}, commands: {}); describe \
                 the part in a device file and pass --device-file",
            info.pid,
            info.version,
            info.command_names()
        ))
    })?;
    let mut read_protected = false;
    if !info.supports(Command::ReadMemory) {
        read_protected = true;
    }
    if let Some(size) = options.flash_size {
        device = device.with_flash_size(size)?;
    } else if let Some(reg) = device.flash_size_register {
        let mut kib = [0u8; 2];
        match session.read_memory(reg, &mut kib) {
            Ok(()) => {
                let kib = u16::from_le_bytes(kib);
                let size = u32::from(kib) * 1024;
                if kib != 0 && kib != 0xFFFF && size != device.flash_size() {
                    match device.with_flash_size(size) {
                        Ok(d) => device = d,
                        Err(e) => progress.note(Note::Warning(format!(
                            "the chip reports {kib} KiB of flash, which does not fit the table's \
                             layout ({e}); using the table's {} KiB (override with --flash-size)",
                            device.flash_size() / 1024
                        ))),
                    }
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
    Ok(Connection {
        session,
        device,
        bootloader: info,
        read_protected,
    })
}
