//! A conversation with one bootloader over a [`Link`]: sync, every AN3155 command, per-command
//! timeouts, and the re-sync after commands that reset the device.

use crate::error::{Error, Phase, Result};
use crate::link::{Link, LinkError};
use crate::protocol::{
    self, Command, EraseRequest, GetReply, ProtocolVersion, ACK, MAX_BLOCK, NACK, SYNC,
};
use std::time::Duration;

/// How long to wait for each kind of reply. Every value is multiplied by `scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// Factor applied to every timeout (`--timeout-scale`), for slow or remote links.
    pub scale: f64,
    /// An ACK for a command or field that involves no flash work.
    pub ack: Duration,
    /// The answer to one 0x7F.
    pub sync: Duration,
    /// The ACK after a 256-byte block is programmed.
    pub write_block: Duration,
    /// Erase of one page or sector when the caller has no estimate for its size.
    pub page_erase: Duration,
    /// A mass or bank erase.
    pub mass_erase: Duration,
    /// The final ACK of Write Protect / Write Unprotect / Readout Protect (option-byte programming).
    pub protect: Duration,
    /// Readout Unprotect: its ACKs, the mass erase that follows and the reset.
    pub readout_unprotect: Duration,
    /// Wait after a command that resets the device before the first 0x7F.
    pub reset_settle: Duration,
    /// The whole re-sync after a reset.
    pub resync: Duration,
    /// Quiet time used to drain stray bytes (a second NACK from some parts).
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            scale: 1.0,
            ack: Duration::from_secs(1),
            sync: Duration::from_millis(500),
            write_block: Duration::from_secs(1),
            page_erase: Duration::from_secs(5),
            mass_erase: Duration::from_secs(35),
            protect: Duration::from_secs(2),
            readout_unprotect: Duration::from_secs(35),
            reset_settle: Duration::from_millis(100),
            resync: Duration::from_secs(10),
            drain: Duration::from_millis(30),
        }
    }
}

impl Timeouts {
    /// Defaults scaled by `scale` (values below 0.01 are taken as 0.01).
    pub fn scaled(scale: f64) -> Self {
        Timeouts {
            scale: scale.max(0.01),
            ..Timeouts::default()
        }
    }

    /// `base` multiplied by the scale factor.
    pub fn apply(&self, base: Duration) -> Duration {
        base.mul_f64(self.scale)
    }
}

/// What the bootloader told us about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootloaderInfo {
    /// Protocol version from Get.
    pub version: ProtocolVersion,
    /// Command codes from Get, as listed.
    pub commands: Vec<u8>,
    /// The two option bytes Get Version returns (always 00 00 on current parts).
    pub version_option_bytes: [u8; 2],
    /// Product ID from Get ID.
    pub pid: u16,
    /// The part sent an extra ACK after init (L412/422 V13.1).
    pub extra_ack: bool,
}

impl BootloaderInfo {
    /// Whether Get listed `command`.
    pub fn supports(&self, command: Command) -> bool {
        self.commands.contains(&command.code())
    }

    /// The listed commands as names, for messages.
    pub fn command_names(&self) -> String {
        self.commands
            .iter()
            .map(|&c| match Command::from_code(c) {
                Some(cmd) => format!("{} 0x{:02X}", cmd.name(), c),
                None => format!("unknown 0x{c:02X}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How the device answered the sync byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// ACK: freshly synced.
    Synced,
    /// NACK: it was already synced and took 0x7F as half a command.
    AlreadySynced,
}

/// The reply to a Special (0x50) command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecialReply {
    /// The data packet.
    pub data: Vec<u8>,
    /// The status packet.
    pub status: Vec<u8>,
}

/// A live conversation with one bootloader.
pub struct Session {
    link: Box<dyn Link>,
    timeouts: Timeouts,
    info: Option<BootloaderInfo>,
    stray_bytes: usize,
}

impl Session {
    /// A session over `link`. Nothing is sent until [`Session::connect`] or [`Session::sync`].
    pub fn new(link: Box<dyn Link>, timeouts: Timeouts) -> Self {
        Session {
            link,
            timeouts,
            info: None,
            stray_bytes: 0,
        }
    }

    /// The link, for boot-pin sequences and line changes.
    pub fn link_mut(&mut self) -> &mut dyn Link {
        self.link.as_mut()
    }

    /// The link's description.
    pub fn describe_link(&self) -> String {
        self.link.describe()
    }

    /// The timeouts in use.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// What [`Session::connect`] learned, if it ran.
    pub fn info(&self) -> Option<&BootloaderInfo> {
        self.info.as_ref()
    }

    /// Bytes seen during sync that were neither ACK nor NACK (USB adapters that emit 0x00).
    pub fn stray_bytes(&self) -> usize {
        self.stray_bytes
    }

    /// Close the link (a simulated link saves its state).
    pub fn close(mut self) -> Result<()> {
        self.link.close()?;
        Ok(())
    }

    /// Sync, then identify: Get Version, Get, Get ID.
    pub fn connect(&mut self) -> Result<&BootloaderInfo> {
        self.sync()?;
        self.identify()
    }

    /// Send 0x7F until the device answers ACK (synced) or NACK (already synced). Bytes that are
    /// neither are skipped.
    pub fn sync(&mut self) -> Result<SyncOutcome> {
        let attempts = 3;
        self.link.discard_input()?;
        for _ in 0..attempts {
            self.link.write_all(&[SYNC])?;
            let wait = self.timeouts.apply(self.timeouts.sync);
            loop {
                match self.read_byte(wait) {
                    Ok(ACK) => return Ok(SyncOutcome::Synced),
                    Ok(NACK) => {
                        self.drain()?;
                        return Ok(SyncOutcome::AlreadySynced);
                    }
                    Ok(_) => self.stray_bytes += 1,
                    Err(LinkError::Timeout(_)) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(Error::NoSync {
            link: self.link.describe(),
            attempts,
            stray_bytes: self.stray_bytes,
            hint: no_sync_hint(self.stray_bytes),
        })
    }

    /// Get Version, Get and Get ID, in the order stm32flash uses, absorbing the extra ACK that
    /// some bootloaders send after init.
    pub fn identify(&mut self) -> Result<&BootloaderInfo> {
        let (_, option_bytes, extra_ack) = self.get_version_inner()?;
        let get = self.get()?;
        let pid = self.get_id()?;
        self.info = Some(BootloaderInfo {
            version: get.version,
            commands: get.codes,
            version_option_bytes: option_bytes,
            pid,
            extra_ack,
        });
        self.info
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("identify left no bootloader info".into()))
    }

    /// Get (0x00): version and supported commands.
    pub fn get(&mut self) -> Result<GetReply> {
        let cmd = Command::Get;
        self.command(cmd)?;
        let n = self.read_reply_byte(cmd)?;
        let mut body = vec![0u8; usize::from(n) + 1];
        self.read_reply(cmd, &mut body)?;
        self.expect_ack(cmd, Phase::Reply, self.timeouts.ack)?;
        Ok(GetReply {
            version: ProtocolVersion(body[0]),
            codes: body[1..].to_vec(),
        })
    }

    /// Get Version (0x01): the version and the two compatibility option bytes.
    pub fn get_version(&mut self) -> Result<(ProtocolVersion, [u8; 2])> {
        let (v, ob, _) = self.get_version_inner()?;
        Ok((v, ob))
    }

    fn get_version_inner(&mut self) -> Result<(ProtocolVersion, [u8; 2], bool)> {
        let cmd = Command::GetVersion;
        self.command(cmd)?;
        let mut version = self.read_reply_byte(cmd)?;
        let mut extra_ack = false;
        if version == ACK {
            // An extra ACK after init (L412/422 V13.1): no version byte is ever 0x79.
            extra_ack = true;
            version = self.read_reply_byte(cmd)?;
        }
        let mut ob = [0u8; 2];
        self.read_reply(cmd, &mut ob)?;
        self.expect_ack(cmd, Phase::Reply, self.timeouts.ack)?;
        Ok((ProtocolVersion(version), ob, extra_ack))
    }

    /// Get ID (0x02): the product ID.
    pub fn get_id(&mut self) -> Result<u16> {
        let cmd = Command::GetId;
        self.command(cmd)?;
        let n = self.read_reply_byte(cmd)?;
        if n == 0 || n > 8 {
            return Err(Error::MalformedReply {
                command: cmd,
                detail: format!("ID length byte {n} (expected 1: two PID bytes)"),
            });
        }
        let mut id = vec![0u8; usize::from(n) + 1];
        self.read_reply(cmd, &mut id)?;
        self.expect_ack(cmd, Phase::Reply, self.timeouts.ack)?;
        Ok(u16::from_be_bytes([id[0], id[1]]))
    }

    /// Read Memory (0x11): fill `buf` (1 to 256 bytes) from `address`.
    pub fn read_memory(&mut self, address: u32, buf: &mut [u8]) -> Result<()> {
        let cmd = Command::ReadMemory;
        let count = protocol::read_count(buf.len()).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "Read Memory moves 1 to {MAX_BLOCK} bytes, not {}",
                buf.len()
            ))
        })?;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(cmd, Phase::Address, &protocol::u32_field(address), self.timeouts.ack)?;
        self.field(cmd, Phase::Count, &count, self.timeouts.ack)?;
        let wait = self.timeouts.apply(self.timeouts.ack) + self.wire_time(buf.len()) * 2;
        self.read_exact(buf, wait).map_err(|e| self.timeout_as(e, cmd, Phase::Reply, wait))
    }

    /// Write Memory (0x31): write 1 to 256 bytes at `address`. The bootloader reports no
    /// programming error: verify afterwards.
    pub fn write_memory(&mut self, address: u32, data: &[u8]) -> Result<()> {
        let cmd = Command::WriteMemory;
        let frame = protocol::write_data(data).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "Write Memory moves 1 to {MAX_BLOCK} bytes, not {}",
                data.len()
            ))
        })?;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(cmd, Phase::Address, &protocol::u32_field(address), self.timeouts.ack)?;
        let wait = self.timeouts.write_block + self.wire_time(frame.len());
        self.field(cmd, Phase::Data, &frame, wait)
    }

    /// Go (0x21): jump to the application whose vector table is at `address`.
    pub fn go(&mut self, address: u32) -> Result<()> {
        let cmd = Command::Go;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(cmd, Phase::Address, &protocol::u32_field(address), self.timeouts.ack)?;
        self.info = None;
        Ok(())
    }

    /// Erase with whichever of Erase (0x43) or Extended Erase (0x44) the bootloader lists.
    /// `timeout` covers the flash work; callers estimate it from the pages' sizes.
    pub fn erase(&mut self, request: &EraseRequest, timeout: Duration) -> Result<()> {
        let info = self.info.as_ref().ok_or_else(not_identified)?;
        let (cmd, frame) = if info.supports(Command::ExtendedErase) {
            (Command::ExtendedErase, request.extended_frame())
        } else if info.supports(Command::Erase) {
            (Command::Erase, request.legacy_frame())
        } else {
            return Err(Error::Unsupported {
                command: Command::ExtendedErase,
                listed: info.command_names(),
            });
        };
        let frame = frame.ok_or_else(|| {
            Error::InvalidRequest(format!("{cmd} cannot express {request:?}"))
        })?;
        self.command(cmd)?;
        let wait = timeout + self.wire_time(frame.len());
        self.field(cmd, Phase::Pages, &frame, wait)
    }

    /// Write Protect (0x63) with family-specific codes; the device resets and is re-synced.
    pub fn write_protect(&mut self, codes: &[u8]) -> Result<()> {
        let cmd = Command::WriteProtect;
        let frame = protocol::write_protect_frame(codes).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "Write Protect takes 1 to 256 codes, not {}",
                codes.len()
            ))
        })?;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(cmd, Phase::Data, &frame, self.timeouts.protect)?;
        self.after_reset(self.timeouts.reset_settle, self.timeouts.resync)
    }

    /// Write Unprotect (0x73): clears all write protection; the device resets and is re-synced.
    pub fn write_unprotect(&mut self) -> Result<()> {
        self.two_ack_reset_command(Command::WriteUnprotect, self.timeouts.protect)?;
        self.after_reset(self.timeouts.reset_settle, self.timeouts.resync)
    }

    /// Readout Protect (0x82): sets RDP level 1; the device resets. Afterwards the bootloader
    /// answers only Get, Get Version, Get ID and Readout Unprotect.
    pub fn readout_protect(&mut self) -> Result<()> {
        self.two_ack_reset_command(Command::ReadoutProtect, self.timeouts.protect)?;
        self.after_reset(self.timeouts.reset_settle, self.timeouts.resync)
    }

    /// Readout Unprotect (0x92): **mass-erases the flash**, sets RDP level 0 and resets. Waits
    /// for the erase and re-syncs.
    pub fn readout_unprotect(&mut self) -> Result<()> {
        let total = self.timeouts.readout_unprotect;
        self.two_ack_reset_command(Command::ReadoutUnprotect, total)?;
        self.after_reset(self.timeouts.reset_settle, total)
    }

    /// Get Checksum (0xA1): the CRC of `words` 32-bit words from `address`.
    pub fn get_checksum(
        &mut self,
        address: u32,
        words: u32,
        polynomial: u32,
        init: u32,
    ) -> Result<u32> {
        let cmd = Command::GetChecksum;
        if words == 0 {
            return Err(Error::InvalidRequest(
                "Get Checksum needs at least one word".into(),
            ));
        }
        self.require(cmd)?;
        self.command(cmd)?;
        let ack = self.timeouts.ack;
        self.field(cmd, Phase::Address, &protocol::u32_field(address), ack)?;
        self.field(cmd, Phase::Size, &protocol::u32_field(words), ack)?;
        self.field(cmd, Phase::Polynomial, &protocol::u32_field(polynomial), ack)?;
        self.field(cmd, Phase::Init, &protocol::u32_field(init), ack)?;
        // The CRC unit runs at about a word per clock; allow 1 s per MiB on top.
        let work = ack + Duration::from_secs(1).mul_f64(f64::from(words) / 262_144.0);
        self.expect_ack(cmd, Phase::Completion, work)?;
        let mut result = [0u8; 5];
        self.read_reply(cmd, &mut result)?;
        protocol::parse_u32_field(&result).ok_or_else(|| Error::MalformedReply {
            command: cmd,
            detail: format!("CRC field {result:02X?} has a bad checksum byte"),
        })
    }

    /// Special (0x50): a product-specific operation with up to 128 bytes of data.
    pub fn special(&mut self, op: u16, data: &[u8]) -> Result<SpecialReply> {
        let cmd = Command::Special;
        if data.len() > protocol::MAX_SPECIAL_DATA {
            return Err(Error::InvalidRequest(format!(
                "Special carries at most {} bytes, not {}",
                protocol::MAX_SPECIAL_DATA,
                data.len()
            )));
        }
        let packet = protocol::special_packet(data)
            .ok_or_else(|| Error::InvalidRequest("Special packet too long".into()))?;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(cmd, Phase::Opcode, &protocol::special_opcode(op), self.timeouts.ack)?;
        self.field(cmd, Phase::Data, &packet, self.timeouts.write_block)?;
        let data = self.read_packet(cmd)?;
        let status = self.read_packet(cmd)?;
        self.expect_ack(cmd, Phase::Completion, self.timeouts.ack)?;
        Ok(SpecialReply { data, status })
    }

    /// Extended Special (0x51): up to 128 bytes in the first packet and 1024 in the second.
    pub fn extended_special(&mut self, op: u16, first: &[u8], second: &[u8]) -> Result<Vec<u8>> {
        let cmd = Command::ExtendedSpecial;
        if first.len() > protocol::MAX_SPECIAL_DATA
            || second.len() > protocol::MAX_EXTENDED_SPECIAL_DATA
        {
            return Err(Error::InvalidRequest(format!(
                "Extended Special carries at most {} + {} bytes, not {} + {}",
                protocol::MAX_SPECIAL_DATA,
                protocol::MAX_EXTENDED_SPECIAL_DATA,
                first.len(),
                second.len()
            )));
        }
        let p1 = protocol::special_packet(first)
            .ok_or_else(|| Error::InvalidRequest("packet too long".into()))?;
        let p2 = protocol::special_packet(second)
            .ok_or_else(|| Error::InvalidRequest("packet too long".into()))?;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(cmd, Phase::Opcode, &protocol::special_opcode(op), self.timeouts.ack)?;
        self.field(cmd, Phase::Data, &p1, self.timeouts.ack)?;
        self.field(cmd, Phase::Data, &p2, self.timeouts.write_block)?;
        let reply = self.read_packet(cmd)?;
        self.expect_ack(cmd, Phase::Completion, self.timeouts.ack)?;
        Ok(reply)
    }

    /// After a command or option-byte write that resets the device: wait `settle`, then send
    /// 0x7F until the bootloader answers or `total` runs out, then identify again.
    pub fn after_reset(&mut self, settle: Duration, total: Duration) -> Result<()> {
        self.info = None;
        let settle = self.timeouts.apply(settle);
        self.link.delay(settle);
        let per_try = self.timeouts.apply(self.timeouts.sync);
        let total = self.timeouts.apply(total);
        let tries = (total.as_secs_f64() / per_try.as_secs_f64().max(0.001)).ceil() as u32;
        let mut last = None;
        for _ in 0..tries.max(1) {
            match self.sync() {
                Ok(_) => {
                    self.identify()?;
                    return Ok(());
                }
                Err(e @ Error::NoSync { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NoSync {
            link: self.link.describe(),
            attempts: 0,
            stray_bytes: self.stray_bytes,
            hint: no_sync_hint(self.stray_bytes),
        }))
    }

    /// The command pair, its ACK, and for the protection commands the second ACK.
    fn two_ack_reset_command(&mut self, cmd: Command, work: Duration) -> Result<()> {
        self.require(cmd)?;
        self.command(cmd)?;
        self.expect_ack(cmd, Phase::Completion, work)
    }

    fn require(&self, cmd: Command) -> Result<()> {
        match &self.info {
            Some(info) if !info.supports(cmd) => Err(Error::Unsupported {
                command: cmd,
                listed: info.command_names(),
            }),
            _ => Ok(()),
        }
    }

    fn command(&mut self, cmd: Command) -> Result<()> {
        self.link.write_all(&cmd.frame())?;
        self.expect_ack(cmd, Phase::Command, self.timeouts.ack)
    }

    fn field(&mut self, cmd: Command, phase: Phase, bytes: &[u8], wait: Duration) -> Result<()> {
        self.link.write_all(bytes)?;
        self.expect_ack(cmd, phase, wait)
    }

    fn expect_ack(&mut self, cmd: Command, phase: Phase, wait: Duration) -> Result<()> {
        let wait = self.timeouts.apply(wait);
        match self.read_byte(wait) {
            Ok(ACK) => Ok(()),
            Ok(NACK) => {
                self.drain()?;
                Err(Error::Nack {
                    command: cmd,
                    phase,
                    hint: nack_hint(cmd, phase),
                })
            }
            Ok(byte) => Err(Error::UnexpectedReply {
                command: cmd,
                phase,
                byte,
            }),
            Err(e) => Err(self.timeout_as(e, cmd, phase, wait)),
        }
    }

    fn read_reply_byte(&mut self, cmd: Command) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_reply(cmd, &mut b)?;
        Ok(b[0])
    }

    fn read_reply(&mut self, cmd: Command, buf: &mut [u8]) -> Result<()> {
        let wait = self.timeouts.apply(self.timeouts.ack) + self.wire_time(buf.len()) * 2;
        self.read_exact(buf, wait)
            .map_err(|e| self.timeout_as(e, cmd, Phase::Reply, wait))
    }

    fn read_packet(&mut self, cmd: Command) -> Result<Vec<u8>> {
        let mut len = [0u8; 2];
        self.read_reply(cmd, &mut len)?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > protocol::MAX_EXTENDED_SPECIAL_DATA {
            return Err(Error::MalformedReply {
                command: cmd,
                detail: format!("packet length {len} exceeds the protocol's 1024"),
            });
        }
        let mut data = vec![0u8; len];
        if len > 0 {
            self.read_reply(cmd, &mut data)?;
        }
        Ok(data)
    }

    fn read_byte(&mut self, wait: Duration) -> std::result::Result<u8, LinkError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, wait)?;
        Ok(b[0])
    }

    /// Read exactly `buf.len()` bytes; `wait` bounds each gap between arriving bytes.
    fn read_exact(&mut self, buf: &mut [u8], wait: Duration) -> std::result::Result<(), LinkError> {
        let mut filled = 0;
        while filled < buf.len() {
            filled += self.link.read(&mut buf[filled..], wait)?;
        }
        Ok(())
    }

    /// Drop bytes that arrive within a short quiet time (a second NACK, say).
    fn drain(&mut self) -> Result<()> {
        let wait = self.timeouts.apply(self.timeouts.drain);
        let mut scratch = [0u8; 64];
        loop {
            match self.link.read(&mut scratch, wait) {
                Ok(_) => continue,
                Err(LinkError::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn wire_time(&self, bytes: usize) -> Duration {
        self.link.line().char_time() * bytes as u32
    }

    fn timeout_as(&self, e: LinkError, command: Command, phase: Phase, wait: Duration) -> Error {
        match e {
            LinkError::Timeout(_) => Error::Timeout {
                command,
                phase,
                timeout: wait,
                hint: timeout_hint(command, phase),
            },
            other => Error::Link(other),
        }
    }
}

fn not_identified() -> Error {
    Error::InvalidRequest("the bootloader has not been identified yet: connect first".into())
}

fn no_sync_hint(stray: usize) -> String {
    let mut hint = String::from(
        "the chip is probably running its application rather than the ROM bootloader; check that \
         BOOT0 is high (or the boot option bits select system memory) and reset the chip, that TX \
         and RX are crossed, and that the baud rate is one the bootloader can detect (1200-115200)",
    );
    if stray > 0 {
        hint.push_str(
            "; bytes that were neither ACK nor NACK suggest a baud/parity mismatch, an \
             application printing on this UART, or an adapter that echoes",
        );
    }
    hint
}

fn nack_hint(cmd: Command, phase: Phase) -> Option<String> {
    let h = match (cmd, phase) {
        (Command::ReadMemory | Command::WriteMemory | Command::Go, Phase::Command)
        | (Command::ExtendedErase | Command::Erase, Phase::Command) => {
            "read protection (RDP level 1) is probably active: the bootloader refuses this \
             command until `stm32boot protect readout off`, which erases the flash"
        }
        (Command::ReadMemory | Command::WriteMemory, Phase::Address) => {
            "the address is outside the memory the bootloader accepts (flash, RAM above the \
             bootloader's own area, option bytes, OTP, system memory for reads)"
        }
        (Command::ReadMemory, Phase::Count) | (Command::GetChecksum, Phase::Size) => {
            "the range runs past the end of the memory area"
        }
        (Command::WriteMemory, Phase::Data) => {
            "the data frame was corrupted on the way (checksum), or the length is not allowed"
        }
        (Command::Go, Phase::Address) => {
            "Go only jumps into flash or RAM, never into option bytes or system memory"
        }
        (Command::ExtendedErase | Command::Erase, Phase::Pages) => {
            "the page list was refused: a page number past the end of flash, a reserved code, \
             or a corrupted frame"
        }
        (Command::Special | Command::ExtendedSpecial, Phase::Opcode) => {
            "this bootloader does not implement that special opcode"
        }
        _ => return None,
    };
    Some(h.to_string())
}

fn timeout_hint(cmd: Command, phase: Phase) -> Option<String> {
    let h = match (cmd, phase) {
        (Command::ExtendedErase | Command::Erase, Phase::Pages) => {
            "large sectors and mass erase can take tens of seconds; raise --timeout-scale"
        }
        (_, Phase::Command) => {
            "the bootloader stopped answering: it may have been reset or left for the \
             application; reconnect, and raise --timeout-scale on slow links"
        }
        _ => "raise --timeout-scale for slow or remote links",
    };
    Some(h.to_string())
}
