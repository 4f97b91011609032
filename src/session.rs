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
    /// Added to every wait: the link's round-trip allowance, set from the round trip measured
    /// at connect (twice the measurement, for jitter). Zero until then.
    pub latency: Duration,
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
            latency: Duration::ZERO,
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

    /// `base` multiplied by the scale factor, plus the link's latency allowance.
    pub fn apply(&self, base: Duration) -> Duration {
        base.mul_f64(self.scale) + self.latency.min(Duration::from_secs(60))
    }

    /// How long one [`Session::sync`] may take in all: each 0x7F waits twice as long as the one
    /// before, so that a link whose round trip is not known yet (up to 2 s at the default
    /// scale) still answers within an attempt.
    pub fn sync_total(&self) -> Duration {
        (0..SYNC_ATTEMPTS).map(|i| self.sync_wait(i)).sum()
    }

    fn sync_wait(&self, attempt: u32) -> Duration {
        self.apply(self.sync * (1 << attempt))
    }
}

/// A read still waiting for at least this many bytes pauses before the next read, so that a
/// reply arriving at the line rate costs a few system calls rather than one per character.
const GATHER_MIN: usize = 16;

/// The longest such pause (about 23 characters at 115200 baud).
const GATHER_SLICE: Duration = Duration::from_millis(2);

/// How many 0x7F one [`Session::sync`] sends before it gives up.
const SYNC_ATTEMPTS: u32 = 3;

/// How many times an exchange that can be repeated safely is tried before its error stands
/// (see [`Session::set_attempts`]). At a byte error rate of 1e-3 each way a 256-byte read fails
/// about two times in five; six tries leave one block in a few hundred failing.
pub const DEFAULT_ATTEMPTS: u32 = 6;

/// The most filler bytes [`Session::resync`] sends to complete a frame the bootloader is still
/// reading: a Write Memory data frame is at most 258 bytes.
const MAX_FILLER: usize = 300;

/// The same after an Extended Erase: a page count taken from filler bytes makes the bootloader
/// wait for 2 × (count + 1) + 1 bytes.
const MAX_ERASE_FILLER: usize = 2 * 0x10000 + 8;

/// The largest batch of filler bytes sent before listening again.
const MAX_FILLER_BATCH: usize = 4096;

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
///
/// **Pipelining.** On links with latency every wait for an ACK costs a round trip, so where it
/// is safe the session sends a command's phases in one write and then collects the ACKs
/// (links.md §10): only within one command (the ROM reads a command's bytes as fast as they
/// come, but not while it programs or erases, so commands never overlap), only once a Read or
/// Write Memory has been ACKed in stop-and-wait (read protection would NACK the command and
/// leave the rest to be parsed as commands), and only where the bytes sent ahead hold no
/// command/complement pair ([`Command::misparse_safe`]). A NACK or an unexpected byte during a
/// pipelined exchange drains the replies, re-syncs and turns pipelining off for the rest of
/// the session.
pub struct Session {
    link: Box<dyn Link>,
    timeouts: Timeouts,
    info: Option<BootloaderInfo>,
    stray_bytes: usize,
    /// Pipelining allowed (the caller may turn it off; a failed pipelined exchange does).
    pipelining: bool,
    /// A Read or Write Memory was ACKed since the last reset: no read protection in the way.
    proven: bool,
    /// Times the session waited for the device after sending.
    round_trips: u64,
    /// Something was sent since the last read.
    awaiting: bool,
    /// The round trip measured at identify.
    rtt: Option<Duration>,
    /// Tries per repeatable exchange (1: never repeat, never resync on errors).
    attempts: u32,
    /// Bytes sent since the current exchange began (to pick a filler byte that cannot complete
    /// any of its frames with a matching checksum).
    sent: Vec<u8>,
    /// Exchanges repeated after a failure.
    retried: u64,
    /// Times a filler byte was ACKed during a resync: the bootloader accepted a frame that
    /// filler bytes completed, so memory may hold something nobody meant to write.
    uncertain: u64,
}

impl Session {
    /// A session over `link`. Nothing is sent until [`Session::connect`] or [`Session::sync`].
    pub fn new(link: Box<dyn Link>, timeouts: Timeouts) -> Self {
        Session {
            link,
            timeouts,
            info: None,
            stray_bytes: 0,
            pipelining: true,
            proven: false,
            round_trips: 0,
            awaiting: false,
            rtt: None,
            attempts: DEFAULT_ATTEMPTS,
            sent: Vec::new(),
            retried: 0,
            uncertain: 0,
        }
    }

    /// How many times a failed exchange that can be repeated safely (reads, erases, Get
    /// Checksum, identification, and flash writes through [`Session::write_memory_reliably`])
    /// is tried before its error stands. Between tries the session brings the bootloader back
    /// to waiting for a command ([`Session::resync`]). 1 turns this off: the first error stands
    /// and no resync follows.
    pub fn set_attempts(&mut self, attempts: u32) {
        self.attempts = attempts.max(1);
    }

    /// Tries per repeatable exchange (see [`Session::set_attempts`]).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Exchanges repeated after a NACK, a timeout or a garbled reply so far.
    pub fn retried(&self) -> u64 {
        self.retried
    }

    /// Times a resync's filler byte was ACKed: a frame the bootloader was still reading was
    /// completed by filler and accepted. Anything written since then must be verified.
    pub fn uncertain_resyncs(&self) -> u64 {
        self.uncertain
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

    /// Allow or forbid sending a command's phases in one write (on by default; see the type's
    /// documentation for when it applies).
    pub fn set_pipelining(&mut self, on: bool) {
        self.pipelining = on;
    }

    /// Whether pipelining is still allowed (a failed pipelined exchange turns it off).
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// How many times the session has waited for the device after sending: the round trips a
    /// job cost, which on a remote link is what its duration is made of.
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// The round trip measured when the bootloader was identified (from sending Get Version to
    /// its ACK, less the two characters' wire time).
    pub fn round_trip_time(&self) -> Option<Duration> {
        self.rtt
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
        let attempts = SYNC_ATTEMPTS;
        self.link.discard_input()?;
        self.proven = false;
        let first = self.link.now();
        for attempt in 0..attempts {
            self.send(&[SYNC])?;
            let wait = self.timeouts.sync_wait(attempt);
            loop {
                match self.read_byte(wait) {
                    Ok(ACK) if attempt == 0 => {
                        self.allow_round_trip(first);
                        return Ok(SyncOutcome::Synced);
                    }
                    Ok(ACK) => {
                        // The ACK may answer an earlier 0x7F (so the round trip is taken from
                        // the first), and a later one may be waiting in the bootloader for
                        // its complement: settle that first.
                        self.allow_round_trip(first);
                        self.settle_idle(wait)?;
                        return Ok(SyncOutcome::Synced);
                    }
                    Ok(NACK) => {
                        self.allow_round_trip(first);
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
        let (_, option_bytes, extra_ack) = self.repeating(|s| s.get_version_inner())?;
        if let Some(rtt) = self.rtt {
            // Twice the measurement: room for jitter on cellular links. On a local port this is
            // a few milliseconds.
            self.timeouts.latency = rtt * 2;
        }
        // Get and Get ID carry no checksum: with repeats on, each is asked until two answers
        // agree, so that a corrupted byte cannot pass for another part or command list.
        let get = self.agreed(|s| s.get())?;
        let pid = self.agreed(|s| s.get_id())?;
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
        let sent = self.link.now();
        self.command(cmd)?;
        let took = self.link.now().saturating_sub(sent);
        self.rtt = Some(took.saturating_sub(self.wire_time(2)));
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

    /// Read Memory (0x11): fill `buf` (1 to 256 bytes) from `address`. A failed exchange is
    /// repeated (see [`Session::set_attempts`]). The bootloader sends no checksum with the
    /// data: a byte corrupted on the line is not detected here.
    pub fn read_memory(&mut self, address: u32, buf: &mut [u8]) -> Result<()> {
        self.repeating(|s| s.read_memory_once(address, buf))
    }

    /// Read Memory until two reads in a row agree (three, once the session has had to repeat
    /// anything: on a line that corrupts bytes, two reads corrupted alike are rare but not
    /// rare enough), for bytes a decision rests on or that are written back (a unique ID,
    /// option bytes, OTP, the kept bytes of a page rewrite): the bootloader sends no checksum,
    /// so this is how a byte corrupted on the line is caught. Gives up after
    /// 2 × [`Session::set_attempts`] reads without such a run.
    pub fn read_memory_stable(&mut self, address: u32, buf: &mut [u8]) -> Result<()> {
        self.read_memory(address, buf)?;
        if self.attempts <= 1 {
            return Ok(());
        }
        let mut again = vec![0u8; buf.len()];
        let mut alike = 1;
        for _ in 0..2 * self.attempts {
            self.read_memory(address, &mut again)?;
            if again == buf {
                alike += 1;
                let needed = if self.retried > 0 { 3 } else { 2 };
                if alike >= needed {
                    return Ok(());
                }
            } else {
                self.retried += 1;
                alike = 1;
                buf.copy_from_slice(&again);
            }
        }
        Err(Error::Verify {
            address,
            detail: format!(
                "{} bytes never read back the same way {} times in a row in {} reads: the link \
                 corrupts data (check the cable, the ground and the baud rate)",
                buf.len(),
                if self.retried > 0 { 3 } else { 2 },
                2 * self.attempts + 1
            ),
        })
    }

    fn read_memory_once(&mut self, address: u32, buf: &mut [u8]) -> Result<()> {
        let cmd = Command::ReadMemory;
        let count = protocol::read_count(buf.len()).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "Read Memory moves 1 to {MAX_BLOCK} bytes, not {}",
                buf.len()
            ))
        })?;
        self.require(cmd)?;
        let addr = protocol::u32_field(address);
        let ack = self.timeouts.ack;
        let ahead = [&addr[..], &count[..]].concat();
        if self.may_pipeline(&ahead) {
            self.send(&[&cmd.frame()[..], &ahead].concat())?;
            self.pipelined_acks(
                cmd,
                &[
                    (Phase::Command, ack),
                    (Phase::Address, ack),
                    (Phase::Count, ack),
                ],
            )?;
        } else {
            self.command(cmd)?;
            self.proven = true;
            self.field(cmd, Phase::Address, &addr, ack)?;
            self.field(cmd, Phase::Count, &count, ack)?;
        }
        let wait = self.timeouts.apply(self.timeouts.ack) + self.wire_time(buf.len()) * 2;
        self.read_exact(buf, wait)
            .map_err(|e| self.timeout_as(e, cmd, Phase::Reply, wait))
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
        let addr = protocol::u32_field(address);
        let ack = self.timeouts.ack;
        let wait = self.timeouts.write_block + self.wire_time(addr.len() + frame.len());
        let whole = [&addr[..], &frame].concat();
        if self.may_pipeline(&whole) {
            // The whole command in one write, one round trip.
            self.send(&[&cmd.frame()[..], &whole].concat())?;
            return self.pipelined_acks(
                cmd,
                &[
                    (Phase::Command, ack),
                    (Phase::Address, ack),
                    (Phase::Data, wait),
                ],
            );
        }
        if self.may_pipeline(&addr) {
            // The data holds a command pair: send it only once the address is ACKed.
            self.send(&[&cmd.frame()[..], &addr].concat())?;
            self.pipelined_acks(cmd, &[(Phase::Command, ack), (Phase::Address, ack)])?;
        } else {
            self.command(cmd)?;
            self.proven = true;
            self.field(cmd, Phase::Address, &addr, ack)?;
        }
        self.field(cmd, Phase::Data, &frame, wait)
    }

    /// Write Memory into flash, repeated until it is known to have landed: after a failed
    /// exchange the bootloader is resynced and the block read back; if it holds `data` the
    /// write is done, otherwise it is sent again (up to [`Session::set_attempts`] tries). For
    /// flash only: a second write over programmed bytes is refused or harmless there and a
    /// verify follows, while option bytes and OTP must never be written twice.
    pub fn write_memory_reliably(&mut self, address: u32, data: &[u8]) -> Result<()> {
        let mut attempt = 1;
        loop {
            self.sent.clear();
            let err = match self.write_memory(address, data) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !repeatable(&err) || self.attempts <= 1 {
                return Err(err);
            }
            if let Err(lost) = self.resync() {
                return Err(gone(err, &lost));
            }
            let mut back = vec![0u8; data.len()];
            self.read_memory(address, &mut back)?;
            if back == data {
                return Ok(());
            }
            if attempt >= self.attempts {
                return Err(tried(err, attempt));
            }
            attempt += 1;
            self.retried += 1;
        }
    }

    /// Go (0x21): jump to the application whose vector table is at `address`.
    pub fn go(&mut self, address: u32) -> Result<()> {
        let cmd = Command::Go;
        self.require(cmd)?;
        self.command(cmd)?;
        self.field(
            cmd,
            Phase::Address,
            &protocol::u32_field(address),
            self.timeouts.ack,
        )?;
        self.info = None;
        Ok(())
    }

    /// Erase with whichever of Erase (0x43) or Extended Erase (0x44) the bootloader lists.
    /// `timeout` covers the flash work; callers estimate it from the pages' sizes. Erasing is
    /// idempotent, so a failed exchange is repeated (see [`Session::set_attempts`]).
    pub fn erase(&mut self, request: &EraseRequest, timeout: Duration) -> Result<()> {
        self.repeating(|s| s.erase_once(request, timeout))
    }

    fn erase_once(&mut self, request: &EraseRequest, timeout: Duration) -> Result<()> {
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
        let frame = frame
            .ok_or_else(|| Error::InvalidRequest(format!("{cmd} cannot express {request:?}")))?;
        let wait = timeout + self.wire_time(frame.len());
        if self.may_pipeline(&frame) {
            self.send(&[&cmd.frame()[..], &frame].concat())?;
            return self.pipelined_acks(
                cmd,
                &[(Phase::Command, self.timeouts.ack), (Phase::Pages, wait)],
            );
        }
        self.command(cmd)?;
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

    /// Get Checksum (0xA1): the CRC of `words` 32-bit words from `address`. A failed exchange
    /// is repeated (see [`Session::set_attempts`]).
    pub fn get_checksum(
        &mut self,
        address: u32,
        words: u32,
        polynomial: u32,
        init: u32,
    ) -> Result<u32> {
        self.repeating(|s| s.get_checksum_once(address, words, polynomial, init))
    }

    fn get_checksum_once(
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
        let ack = self.timeouts.ack;
        let fields = [
            (Phase::Address, protocol::u32_field(address)),
            (Phase::Size, protocol::u32_field(words)),
            (Phase::Polynomial, protocol::u32_field(polynomial)),
            (Phase::Init, protocol::u32_field(init)),
        ];
        let ahead: Vec<u8> = fields.iter().flat_map(|(_, f)| *f).collect();
        if self.may_pipeline(&ahead) {
            self.send(&[&cmd.frame()[..], &ahead].concat())?;
            let mut phases = vec![(Phase::Command, ack)];
            phases.extend(fields.iter().map(|(p, _)| (*p, ack)));
            self.pipelined_acks(cmd, &phases)?;
        } else {
            self.command(cmd)?;
            for (phase, field) in &fields {
                self.field(cmd, *phase, field, ack)?;
            }
        }
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
        self.field(
            cmd,
            Phase::Opcode,
            &protocol::special_opcode(op),
            self.timeouts.ack,
        )?;
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
        self.field(
            cmd,
            Phase::Opcode,
            &protocol::special_opcode(op),
            self.timeouts.ack,
        )?;
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
        self.proven = false;
        let settle = self.timeouts.apply(settle);
        self.link.delay(settle);
        // Each sync() sends up to SYNC_ATTEMPTS bytes and waits for each.
        let per_try = self.timeouts.sync_total();
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
        self.send(&cmd.frame())?;
        self.expect_ack(cmd, Phase::Command, self.timeouts.ack)
    }

    fn field(&mut self, cmd: Command, phase: Phase, bytes: &[u8], wait: Duration) -> Result<()> {
        self.send(bytes)?;
        self.expect_ack(cmd, phase, wait)
    }

    /// Raise the latency allowance to twice the time since `sent`: an upper bound of the round
    /// trip until Get Version measures it (a link with a round trip of a second must not time
    /// out before it is measured).
    fn allow_round_trip(&mut self, sent: Duration) {
        let took = self.link.now().saturating_sub(sent);
        self.timeouts.latency = self.timeouts.latency.max(took * 2);
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.link.write_all(bytes)?;
        self.awaiting = true;
        if self.sent.len() < 2 * MAX_BLOCK {
            self.sent.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Run `exchange`, and after an error it can recover from (a NACK, a timeout, a garbled
    /// reply) resync and run it again, up to the session's attempts. The last error stands.
    fn repeating<T>(&mut self, mut exchange: impl FnMut(&mut Session) -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            self.sent.clear();
            let err = match exchange(self) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !repeatable(&err) || self.attempts <= 1 {
                return Err(err);
            }
            // A command refused outright is most often refused for good (read protection, a
            // command the bootloader lacks): try it less often than a garbled exchange.
            let limit = match err {
                Error::Nack {
                    phase: Phase::Command,
                    ..
                } => self.attempts.min(3),
                _ => self.attempts,
            };
            if attempt >= limit {
                // Leave the bootloader waiting for a command for whatever comes next.
                let _ = self.resync();
                return Err(tried(err, attempt));
            }
            attempt += 1;
            self.retried += 1;
            if let Err(lost) = self.resync() {
                return Err(gone(err, &lost));
            }
        }
    }

    /// Run `exchange` (repeated as [`Session::repeating`] does) until two answers in a row
    /// agree; once only when repeats are off.
    fn agreed<T: PartialEq>(
        &mut self,
        mut exchange: impl FnMut(&mut Session) -> Result<T>,
    ) -> Result<T> {
        let mut answer = self.repeating(&mut exchange)?;
        if self.attempts <= 1 {
            return Ok(answer);
        }
        for _ in 0..self.attempts {
            let again = self.repeating(&mut exchange)?;
            if again == answer {
                return Ok(answer);
            }
            self.retried += 1;
            answer = again;
        }
        Err(Error::MalformedReply {
            command: Command::Get,
            detail: format!(
                "the bootloader's answers to Get/Get ID kept changing over {} tries: the link \
                 corrupts data (check the cable, the ground and the baud rate)",
                self.attempts
            ),
        })
    }

    /// Bring the bootloader back to waiting for a command after a failed exchange, whatever
    /// part of a frame it was still reading.
    ///
    /// A byte lost on the way leaves the bootloader waiting for one more; a lost ACK leaves it
    /// waiting for the next field. So filler bytes are sent, in growing batches, until it
    /// answers: it then completes the frame with them and checks the checksum. The filler is
    /// an even value (a Write Memory data frame or a legacy erase list made of filler then
    /// holds an odd number of equal bytes, whose XOR is not zero; an Extended Erase list always
    /// does), neither 0x00 nor 0x80 (so that 0x7F cannot complete it as a command pair), and
    /// where possible a value that the exchange never sent, nor any complement of what it sent:
    /// a frame short of one byte is then never completed with the byte it lost, and a waiting
    /// command byte never meets its complement. Once a NACK comes, [`Session::settle_idle`]
    /// makes sure no half command is left. If nothing answers (the chip reset and its
    /// bootloader waits for 0x7F), the session syncs and identifies again.
    pub fn resync(&mut self) -> Result<()> {
        let filler = filler_for(&self.sent);
        let budget = if self.sent.first() == Some(&Command::ExtendedErase.code()) {
            MAX_ERASE_FILLER
        } else {
            MAX_FILLER
        };
        self.sent.clear();
        let wait = self.timeouts.sync_wait(0);
        let quiet = self.timeouts.drain;
        self.timeouts.drain = quiet.max(wait);
        let drained = self.drain();
        self.timeouts.drain = quiet;
        drained?;
        let mut sent = 0;
        let mut batch = 1;
        'filling: while sent < budget {
            self.link.write_all(&vec![filler; batch])?;
            self.awaiting = true;
            sent += batch;
            // Listen until the batch is answered or the line goes quiet; a stray byte (noise,
            // an echo) is skipped without sending more.
            loop {
                match self.read_byte(wait + self.wire_time(batch)) {
                    Ok(reply @ (ACK | NACK)) => {
                        if reply == ACK {
                            self.uncertain += 1;
                        }
                        self.settle_idle(wait)?;
                        self.sent.clear();
                        return Ok(());
                    }
                    Ok(_) => self.stray_bytes += 1,
                    Err(LinkError::Timeout(_)) => {
                        batch = (batch * 2)
                            .min(MAX_FILLER_BATCH)
                            .min(budget.saturating_sub(sent));
                        continue 'filling;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Nothing answered filler: the bootloader restarted and waits for 0x7F.
        let info = self.info.clone();
        // Identify once, without repeats: a repeat would resync from inside this one.
        let attempts = std::mem::replace(&mut self.attempts, 1);
        let restarted = self.after_reset(Duration::ZERO, self.timeouts.resync);
        self.attempts = attempts;
        restarted?;
        if let (Some(before), Some(now)) = (&info, &self.info) {
            if before.pid != now.pid {
                return Err(Error::InvalidRequest(format!(
                    "after a resync the bootloader reports PID 0x{:03X}, not 0x{:03X}: is another \
                     chip on this link?",
                    now.pid, before.pid
                )));
            }
        }
        self.sent.clear();
        Ok(())
    }

    /// Whether `ahead` may follow a command's first phase in the same write.
    fn may_pipeline(&self, ahead: &[u8]) -> bool {
        self.pipelining && self.proven && Command::misparse_safe(ahead)
    }

    /// Collect the ACKs of a pipelined exchange, one per phase. On a NACK or a byte that is
    /// no ACK, the rest of what was sent may be read as commands: drain, bring the bootloader
    /// back to waiting for a command, turn pipelining off, and report the failed phase.
    fn pipelined_acks(&mut self, cmd: Command, phases: &[(Phase, Duration)]) -> Result<()> {
        for &(phase, wait) in phases {
            match self.expect_ack(cmd, phase, wait) {
                Ok(()) => {}
                Err(e @ (Error::Nack { .. } | Error::UnexpectedReply { .. })) => {
                    self.pipelining = false;
                    if self.attempts <= 1 {
                        self.drain()?;
                        let wait = self.timeouts.sync_wait(0);
                        self.settle_idle(wait)?;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Bring a synced bootloader to a known state, waiting for a command: drop what is still
    /// arriving, then send 0x7F until it is NACKed. A bootloader holding a stray byte pairs it
    /// with the first 0x7F (no command has 0x80 as complement: NACK); an idle one keeps that
    /// 0x7F waiting and NACKs the second.
    fn settle_idle(&mut self, wait: Duration) -> Result<()> {
        // The latency allowance may have grown since `wait` was worked out.
        let wait = wait.max(self.timeouts.sync_wait(0));
        let quiet = self.timeouts.drain;
        self.timeouts.drain = quiet.max(wait);
        let drained = self.drain();
        self.timeouts.drain = quiet;
        drained?;
        for _ in 0..2 {
            self.send(&[SYNC])?;
            match self.read_byte(wait) {
                Ok(NACK) => return self.drain(),
                Ok(_) | Err(LinkError::Timeout(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::NoSync {
            link: self.link.describe(),
            attempts: 2,
            stray_bytes: self.stray_bytes,
            hint: "the bootloader did not come back to waiting for a command after a failed \
                   exchange; reset the chip and reconnect"
                .into(),
        })
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
        if self.awaiting && !buf.is_empty() {
            self.awaiting = false;
            self.round_trips += 1;
        }
        let mut filled = 0;
        while filled < buf.len() {
            filled += self.link.read(&mut buf[filled..], wait)?;
            // A reply that trickles in at the line rate: let a few more characters arrive
            // before asking again, rather than waking for each one (never longer than the rest
            // takes on the wire, so nothing arrives later for it).
            let left = buf.len() - filled;
            if left >= GATHER_MIN {
                self.link.delay(self.wire_time(left - 1).min(GATHER_SLICE));
            }
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

/// Whether an exchange that failed with `e` can be repeated after a resync: the bootloader
/// refused or garbled it, or stayed silent. Link errors (a closed port) and refusals made
/// before anything was sent cannot.
fn repeatable(e: &Error) -> bool {
    matches!(
        e,
        Error::Nack { .. }
            | Error::Timeout { .. }
            | Error::UnexpectedReply { .. }
            | Error::MalformedReply { .. }
    )
}

/// `e`, after which the bootloader did not come back to a resync (`lost`): say so, since that
/// (a reset chip that booted its application, power lost, a cut link) is what to look at.
fn gone(e: Error, lost: &Error) -> Error {
    let why = match lost {
        Error::NoSync { .. } => "it did not answer 0x7F either: the chip lost power, reset into \
                                 its application, or the link is down"
            .to_string(),
        other => other.to_string(),
    };
    e.map_hint(|_| Some(format!("then the bootloader did not come back: {why}")))
}

/// `e` after `attempts` tries: its hint says so, since a timeout's usual advice (a longer
/// timeout) rarely helps a bootloader that failed the same exchange that often.
fn tried(e: Error, attempts: u32) -> Error {
    if attempts <= 1 {
        return e;
    }
    e.map_hint(|hint| {
        Some(format!(
            "failed {attempts} times with a resync between tries{}",
            hint.map(|h| format!("; {h}")).unwrap_or_default()
        ))
    })
}

/// The filler byte for [`Session::resync`] after an exchange that sent `sent`: the first even
/// value from 0x02 (small, so that an Extended Erase count made of it stays short) that is
/// neither 0x80 nor in `sent` nor the complement of a byte in `sent`; failing that, the even
/// value that occurs least often in `sent`.
fn filler_for(sent: &[u8]) -> u8 {
    let mut seen = [0u32; 256];
    for &b in sent {
        seen[usize::from(b)] += 1;
        seen[usize::from(!b)] += 1;
    }
    let candidates = (0x02..=0xFEu8).step_by(2).filter(|&f| f != 0x80);
    candidates
        .clone()
        .find(|&f| seen[usize::from(f)] == 0)
        .or_else(|| candidates.min_by_key(|&f| seen[usize::from(f)]))
        .unwrap_or(0x02)
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LineSettings;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex, MutexGuard};

    /// One exchange: the bytes the host must write, then the bytes the device answers.
    type Step = (Vec<u8>, Vec<u8>);

    fn step(host: &[u8], device: &[u8]) -> Step {
        (host.to_vec(), device.to_vec())
    }

    fn hex(bytes: &[u8]) -> String {
        let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        format!("[{}]", parts.join(" "))
    }

    #[derive(Default)]
    struct Script {
        steps: VecDeque<Step>,
        /// Bytes written so far towards the current step (writes may be split).
        written: Vec<u8>,
        /// Device bytes not yet read by the host.
        rx: VecDeque<u8>,
        done: usize,
    }

    fn lock(script: &Mutex<Script>) -> MutexGuard<'_, Script> {
        script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A link that plays a fixed script and fails the test on any other byte.
    struct ScriptedLink(Arc<Mutex<Script>>);

    impl Link for ScriptedLink {
        fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
            let mut s = lock(&self.0);
            s.written.extend_from_slice(data);
            let written = s.written.clone();
            let done = s.done;
            let Some((expected, _)) = s.steps.front() else {
                drop(s);
                panic!(
                    "host wrote {} after the script ended ({done} steps)",
                    hex(&written)
                );
            };
            if !expected.starts_with(&written) {
                let expected = expected.clone();
                drop(s);
                panic!(
                    "step {done}: host wrote {}, expected {}",
                    hex(&written),
                    hex(&expected)
                );
            }
            if written.len() == expected.len() {
                let (_, reply) = s.steps.pop_front().unwrap_or_default();
                s.rx.extend(reply);
                s.written.clear();
                s.done += 1;
            }
            Ok(())
        }

        fn read(
            &mut self,
            buf: &mut [u8],
            timeout: Duration,
        ) -> std::result::Result<usize, LinkError> {
            let mut s = lock(&self.0);
            if s.rx.is_empty() {
                return Err(LinkError::Timeout(timeout));
            }
            let n = buf.len().min(s.rx.len());
            for (slot, b) in buf.iter_mut().zip(s.rx.drain(..n)) {
                *slot = b;
            }
            Ok(n)
        }

        fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
            lock(&self.0).rx.clear();
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

        fn delay(&mut self, _duration: Duration) {}

        fn describe(&self) -> String {
            "scripted link".into()
        }
    }

    /// Lets the test check, after the session is done, that the whole script was played.
    struct Handle(Arc<Mutex<Script>>);

    impl Handle {
        fn assert_done(&self) {
            let s = lock(&self.0);
            assert!(
                s.steps.is_empty() && s.written.is_empty(),
                "script not consumed after {} steps: next expected write {}, partial write {}",
                s.done,
                hex(s.steps.front().map(|x| x.0.as_slice()).unwrap_or_default()),
                hex(&s.written)
            );
            assert!(
                s.rx.is_empty(),
                "device bytes left unread: {}",
                hex(&s.rx.iter().copied().collect::<Vec<_>>())
            );
        }
    }

    fn session(steps: Vec<Step>) -> (Session, Handle) {
        let script = Arc::new(Mutex::new(Script {
            steps: steps.into(),
            ..Script::default()
        }));
        let link = ScriptedLink(Arc::clone(&script));
        let mut session = Session::new(Box::new(link), Timeouts::default());
        // The scripts spell out every byte of one try; repeats have tests of their own.
        session.set_attempts(1);
        (session, Handle(script))
    }

    const V31: [u8; 11] = [
        0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92,
    ];
    const V22: [u8; 11] = [
        0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x63, 0x73, 0x82, 0x92,
    ];

    /// 7F → ACK, then Get Version, Get and Get ID for a part with this version and list.
    fn connect_steps(version: u8, codes: &[u8]) -> Vec<Step> {
        let mut get = vec![0x79, codes.len() as u8, version];
        get.extend_from_slice(codes);
        get.push(0x79);
        vec![
            step(&[0x7F], &[0x79]),
            step(&[0x01, 0xFE], &[0x79, version, 0x00, 0x00, 0x79]),
            (vec![0x00, 0xFF], get),
            step(&[0x02, 0xFD], &[0x79, 0x01, 0x04, 0x13, 0x79]),
        ]
    }

    /// A session that has connected to a part with this version and list; `rest` follows.
    fn connected(version: u8, codes: &[u8], rest: Vec<Step>) -> (Session, Handle) {
        let mut steps = connect_steps(version, codes);
        steps.extend(rest);
        let (mut s, h) = session(steps);
        s.connect().expect("test setup");
        (s, h)
    }

    fn assert_nack(e: Error, cmd: Command, at: Phase) {
        match e {
            Error::Nack { command, phase, .. } if command == cmd && phase == at => {}
            other => panic!("expected a NACK of {cmd} at {at}, got {other:?}"),
        }
    }

    fn assert_invalid(e: Error) {
        assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
    }

    #[test]
    fn the_latency_allowance_is_capped() {
        // Fuzz regression (fuzz/regressions/session/latency-ratchet): a device answering just
        // before each deadline made every reconnect double the allowance without end.
        let t = Timeouts {
            latency: Duration::from_secs(100_000),
            ..Timeouts::default()
        };
        assert_eq!(
            t.apply(Duration::from_secs(1)),
            Duration::from_secs(61),
            "one second plus at most a minute of latency"
        );
    }

    /// Stays silent, but once 255 bytes have been written (a resync's batches 1 + 2 + ... +
    /// 128) answers one byte that is neither ACK nor NACK, so the resync sends its 128-byte
    /// batch again, past its 300-byte budget; the virtual clock advances by every wait.
    struct StrayThenSilent {
        stray: bool,
        now: Duration,
        written: usize,
    }

    impl Link for StrayThenSilent {
        fn write_all(&mut self, data: &[u8]) -> std::result::Result<(), LinkError> {
            self.written += data.len();
            Ok(())
        }
        fn read(
            &mut self,
            buf: &mut [u8],
            timeout: Duration,
        ) -> std::result::Result<usize, LinkError> {
            if self.written >= 255 && !self.stray {
                self.stray = true;
                buf[0] = 0x42;
                return Ok(1);
            }
            self.now += timeout;
            Err(LinkError::Timeout(timeout))
        }
        fn discard_input(&mut self) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_dtr(&mut self, _: bool) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_rts(&mut self, _: bool) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_break(&mut self, _: bool) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn set_line(&mut self, _: LineSettings) -> std::result::Result<(), LinkError> {
            Ok(())
        }
        fn line(&self) -> LineSettings {
            LineSettings::default()
        }
        fn delay(&mut self, d: Duration) {
            self.now += d;
        }
        fn now(&self) -> Duration {
            self.now
        }
        fn describe(&self) -> String {
            "stray then silent".into()
        }
    }

    #[test]
    fn a_stray_byte_during_resync_neither_panics_nor_overruns_the_filler_budget() {
        // Fuzz regression (fuzz/regressions/session/resync-filler-underflow): a stray byte kept
        // the batch size, `sent` passed the budget and the next size underflowed.
        let link = StrayThenSilent {
            stray: false,
            now: Duration::ZERO,
            written: 0,
        };
        let mut session = Session::new(Box::new(link), Timeouts::default());
        assert!(
            session.resync().is_err(),
            "nobody answers: the resync fails"
        );
    }

    #[test]
    fn filler_is_even_and_never_a_byte_or_complement_the_exchange_sent() {
        // Nothing sent yet: the smallest even value.
        assert_eq!(filler_for(&[]), 0x02);
        // 0x02 sent, and 0x04's complement (0xFB): the next free even value.
        assert_eq!(filler_for(&[0x02, 0xFB]), 0x06);
        let frame: Vec<u8> = (0u8..=0x3F).collect();
        let f = filler_for(&frame);
        assert!(f % 2 == 0 && f != 0x80 && f != 0);
        assert!(!frame.contains(&f) && !frame.iter().any(|&b| !b == f));
        // Every value sent: the even value sent least often, still never 0x00 or 0x80.
        let mut all: Vec<u8> = (0u8..=255).chain(0u8..=255).collect();
        all.retain(|&b| b != 0x42 && b != !0x42);
        let f = filler_for(&all);
        assert_eq!(f, 0x42);
    }

    #[test]
    fn sync_ack_is_synced() {
        let (mut s, h) = session(vec![step(&[0x7F], &[0x79])]);
        assert_eq!(s.sync().expect("test setup"), SyncOutcome::Synced);
        assert_eq!(s.stray_bytes(), 0);
        h.assert_done();
    }

    #[test]
    fn sync_nack_is_already_synced() {
        let (mut s, h) = session(vec![step(&[0x7F], &[0x1F])]);
        assert_eq!(s.sync().expect("test setup"), SyncOutcome::AlreadySynced);
        h.assert_done();
    }

    #[test]
    fn sync_skips_stray_bytes() {
        let (mut s, h) = session(vec![step(&[0x7F], &[0x00, 0x00, 0x79])]);
        assert_eq!(s.sync().expect("test setup"), SyncOutcome::Synced);
        assert_eq!(s.stray_bytes(), 2);
        h.assert_done();
    }

    #[test]
    fn sync_retries_after_silence_and_accepts_nack() {
        // stm32flash's case: the first 7F completes a half-received command, the second is NACKed.
        let (mut s, h) = session(vec![step(&[0x7F], &[]), step(&[0x7F], &[0x1F])]);
        assert_eq!(s.sync().expect("test setup"), SyncOutcome::AlreadySynced);
        h.assert_done();
    }

    #[test]
    fn sync_silence_is_no_sync() {
        let (mut s, h) = session(vec![
            step(&[0x7F], &[]),
            step(&[0x7F], &[]),
            step(&[0x7F], &[]),
        ]);
        let e = s.sync().unwrap_err();
        match &e {
            Error::NoSync {
                attempts,
                stray_bytes,
                ..
            } => assert_eq!((*attempts, *stray_bytes), (3, 0)),
            other => panic!("expected NoSync, got {other:?}"),
        }
        assert!(e.to_string().contains("BOOT0"), "{e}");
        h.assert_done();
    }

    #[test]
    fn connect_v31_part() {
        let (mut s, h) = session(vec![
            step(&[0x7F], &[0x79]),
            step(&[0x01, 0xFE], &[0x79, 0x31, 0x00, 0x00, 0x79]),
            step(
                &[0x00, 0xFF],
                &[
                    0x79, 0x0B, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82,
                    0x92, 0x79,
                ],
            ),
            step(&[0x02, 0xFD], &[0x79, 0x01, 0x04, 0x13, 0x79]),
        ]);
        let info = s.connect().expect("test setup").clone();
        assert_eq!(info.pid, 0x413);
        assert_eq!(info.version.to_string(), "3.1");
        assert_eq!(info.commands, V31.to_vec());
        assert_eq!(info.version_option_bytes, [0x00, 0x00]);
        assert!(!info.extra_ack);
        assert!(info.supports(Command::ExtendedErase));
        assert!(!info.supports(Command::Erase));
        assert!(!info.supports(Command::GetChecksum));
        assert_eq!(s.info(), Some(&info));
        h.assert_done();
    }

    #[test]
    fn connect_absorbs_l412_extra_ack() {
        let mut steps = connect_steps(0x31, &V31);
        steps[1] = step(&[0x01, 0xFE], &[0x79, 0x79, 0x31, 0x00, 0x00, 0x79]);
        let (mut s, h) = session(steps);
        let info = s.connect().expect("test setup").clone();
        assert!(info.extra_ack);
        assert_eq!(info.version, ProtocolVersion(0x31));
        assert_eq!(info.pid, 0x413);
        h.assert_done();
    }

    #[test]
    fn get_version_returns_version_and_option_bytes() {
        let (mut s, h) = session(vec![step(&[0x01, 0xFE], &[0x79, 0x22, 0x00, 0x00, 0x79])]);
        assert_eq!(
            s.get_version().expect("test setup"),
            (ProtocolVersion(0x22), [0x00, 0x00])
        );
        h.assert_done();
    }

    #[test]
    fn read_memory_256_bytes() {
        let data: Vec<u8> = (0..=255u8).collect();
        let mut reply = vec![0x79];
        reply.extend_from_slice(&data);
        let (mut s, h) = session(vec![
            step(&[0x11, 0xEE], &[0x79]),
            step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
            (vec![0xFF, 0x00], reply),
        ]);
        let mut buf = [0u8; 256];
        s.read_memory(0x0800_0000, &mut buf).expect("test setup");
        assert_eq!(buf.to_vec(), data);
        h.assert_done();
    }

    #[test]
    fn read_memory_of_0_or_257_bytes_sends_nothing() {
        let (mut s, h) = session(vec![]);
        assert_invalid(s.read_memory(0x0800_0000, &mut []).unwrap_err());
        assert_invalid(s.read_memory(0x0800_0000, &mut [0u8; 257]).unwrap_err());
        assert_invalid(s.write_memory(0x0800_0000, &[]).unwrap_err());
        assert_invalid(s.write_memory(0x0800_0000, &[0u8; 257]).unwrap_err());
        assert_invalid(s.special(0x0082, &[0u8; 129]).unwrap_err());
        assert_invalid(s.get_checksum(0x0800_0000, 0, 0x04C1_1DB7, !0).unwrap_err());
        h.assert_done();
    }

    #[test]
    fn write_memory_frames() {
        let (mut s, h) = session(vec![
            step(&[0x31, 0xCE], &[0x79]),
            step(&[0x08, 0x00, 0x01, 0x00, 0x09], &[0x79]),
            step(&[0x03, 0xDE, 0xAD, 0xBE, 0xEF, 0x21], &[0x79]),
        ]);
        s.write_memory(0x0800_0100, &[0xDE, 0xAD, 0xBE, 0xEF])
            .expect("test setup");
        h.assert_done();
    }

    /// The stop-and-wait write that proves no read protection is in the way.
    fn proving_write() -> Vec<Step> {
        vec![
            step(&[0x31, 0xCE], &[0x79]),
            step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
            step(&[0x00, 0x55, 0x55], &[0x79]),
        ]
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn after_a_proving_write_a_write_takes_one_round_trip() {
        let mut steps = proving_write();
        steps.push((
            cat(&[
                &[0x31, 0xCE],
                &[0x08, 0x00, 0x01, 0x00, 0x09],
                &[0x01, 0x12, 0x34, 0x27],
            ]),
            vec![0x79, 0x79, 0x79],
        ));
        let (mut s, h) = session(steps);
        s.write_memory(0x0800_0000, &[0x55]).expect("test setup");
        assert_eq!(s.round_trips(), 3);
        s.write_memory(0x0800_0100, &[0x12, 0x34])
            .expect("test setup");
        assert_eq!(s.round_trips(), 4);
        h.assert_done();
    }

    #[test]
    fn data_holding_a_command_pair_waits_for_the_address_ack() {
        let mut steps = proving_write();
        steps.push((
            cat(&[&[0x31, 0xCE], &[0x08, 0x00, 0x01, 0x00, 0x09]]),
            vec![0x79, 0x79],
        ));
        // 82 7D is Readout Protect: never sent before the address is ACKed.
        steps.push(step(&[0x01, 0x82, 0x7D, 0xFE], &[0x79]));
        let (mut s, h) = session(steps);
        s.write_memory(0x0800_0000, &[0x55]).expect("test setup");
        s.write_memory(0x0800_0100, &[0x82, 0x7D])
            .expect("test setup");
        h.assert_done();
    }

    #[test]
    fn an_address_with_a_command_pair_goes_stop_and_wait() {
        let mut steps = proving_write();
        // 0x0800738C holds 73 8C (Write Unprotect).
        steps.push(step(&[0x31, 0xCE], &[0x79]));
        steps.push(step(&[0x08, 0x00, 0x73, 0x8C, 0xF7], &[0x79]));
        steps.push(step(&[0x00, 0xAA, 0xAA], &[0x79]));
        let (mut s, h) = session(steps);
        s.write_memory(0x0800_0000, &[0x55]).expect("test setup");
        s.write_memory(0x0800_738C, &[0xAA]).expect("test setup");
        h.assert_done();
    }

    #[test]
    fn a_nack_in_a_pipelined_write_resyncs_and_stops_pipelining() {
        let mut steps = proving_write();
        // The command is NACKed; the address pairs are NACKed too, and the last byte waits.
        steps.push((
            cat(&[
                &[0x31, 0xCE],
                &[0x08, 0x00, 0x01, 0x00, 0x09],
                &[0x00, 0x12, 0x12],
            ]),
            vec![0x1F, 0x1F, 0x1F, 0x1F],
        ));
        // Re-sync: the waiting byte pairs with the first 0x7F.
        steps.push(step(&[0x7F], &[0x1F]));
        // Then stop-and-wait again.
        steps.push(step(&[0x31, 0xCE], &[0x79]));
        steps.push(step(&[0x08, 0x00, 0x01, 0x00, 0x09], &[0x79]));
        steps.push(step(&[0x00, 0x12, 0x12], &[0x79]));
        let (mut s, h) = session(steps);
        s.write_memory(0x0800_0000, &[0x55]).expect("test setup");
        assert_nack(
            s.write_memory(0x0800_0100, &[0x12]).unwrap_err(),
            Command::WriteMemory,
            Phase::Command,
        );
        assert!(!s.pipelining());
        s.write_memory(0x0800_0100, &[0x12]).expect("test setup");
        h.assert_done();
    }

    #[test]
    fn reads_are_pipelined_once_proven_and_not_with_pipelining_off() {
        let mut steps = proving_write();
        steps.push((
            cat(&[
                &[0x11, 0xEE],
                &[0x08, 0x00, 0x00, 0x00, 0x08],
                &[0x03, 0xFC],
            ]),
            vec![0x79, 0x79, 0x79, 0xAB, 0xCD, 0xEF, 0x01],
        ));
        steps.push(step(&[0x11, 0xEE], &[0x79]));
        steps.push(step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]));
        steps.push(step(&[0x03, 0xFC], &[0x79, 0xAB, 0xCD, 0xEF, 0x01]));
        // Two bytes: the count 01 FE would be Get Version's pair, so stop-and-wait.
        steps.push(step(&[0x11, 0xEE], &[0x79]));
        steps.push(step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]));
        steps.push(step(&[0x01, 0xFE], &[0x79, 0xAB, 0xCD]));
        let (mut s, h) = session(steps);
        s.write_memory(0x0800_0000, &[0x55]).expect("test setup");
        let mut buf = [0u8; 4];
        s.read_memory(0x0800_0000, &mut buf).expect("test setup");
        assert_eq!(buf, [0xAB, 0xCD, 0xEF, 0x01]);
        s.set_pipelining(false);
        s.read_memory(0x0800_0000, &mut buf).expect("test setup");
        s.set_pipelining(true);
        s.read_memory(0x0800_0000, &mut buf[..2])
            .expect("test setup");
        h.assert_done();
    }

    #[test]
    fn write_memory_nack_at_data_phase() {
        let (mut s, h) = session(vec![
            step(&[0x31, 0xCE], &[0x79]),
            step(&[0x08, 0x00, 0x01, 0x00, 0x09], &[0x79]),
            step(&[0x03, 0xDE, 0xAD, 0xBE, 0xEF, 0x21], &[0x1F]),
        ]);
        let e = s
            .write_memory(0x0800_0100, &[0xDE, 0xAD, 0xBE, 0xEF])
            .unwrap_err();
        assert_nack(e, Command::WriteMemory, Phase::Data);
        h.assert_done();
    }

    #[test]
    fn go_frames() {
        let (mut s, h) = session(vec![
            step(&[0x21, 0xDE], &[0x79]),
            step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
        ]);
        s.go(0x0800_0000).expect("test setup");
        assert!(s.info().is_none());
        h.assert_done();
    }

    #[test]
    fn extended_erase_pages() {
        let (mut s, h) = connected(
            0x31,
            &V31,
            vec![
                step(&[0x44, 0xBB], &[0x79]),
                step(
                    &[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x01],
                    &[0x79],
                ),
            ],
        );
        s.erase(&EraseRequest::Pages(vec![0, 1, 2]), Duration::from_secs(5))
            .expect("test setup");
        h.assert_done();
    }

    #[test]
    fn extended_erase_mass_and_banks() {
        let (mut s, h) = connected(
            0x31,
            &V31,
            vec![
                step(&[0x44, 0xBB], &[0x79]),
                step(&[0xFF, 0xFF, 0x00], &[0x79]),
                step(&[0x44, 0xBB], &[0x79]),
                step(&[0xFF, 0xFE, 0x01], &[0x79]),
                step(&[0x44, 0xBB], &[0x79]),
                step(&[0xFF, 0xFD, 0x02], &[0x79]),
            ],
        );
        let t = Duration::from_secs(35);
        s.erase(&EraseRequest::Mass, t).expect("test setup");
        s.erase(&EraseRequest::Bank1, t).expect("test setup");
        s.erase(&EraseRequest::Bank2, t).expect("test setup");
        h.assert_done();
    }

    #[test]
    fn extended_erase_nack_at_pages() {
        let (mut s, h) = connected(
            0x31,
            &V31,
            vec![
                step(&[0x44, 0xBB], &[0x79]),
                step(&[0x00, 0x00, 0x01, 0x00, 0x01], &[0x1F]),
            ],
        );
        let e = s
            .erase(&EraseRequest::Pages(vec![256]), Duration::from_secs(5))
            .unwrap_err();
        assert_nack(e, Command::ExtendedErase, Phase::Pages);
        h.assert_done();
    }

    #[test]
    fn legacy_erase_when_only_43_is_listed() {
        let (mut s, h) = connected(
            0x22,
            &V22,
            vec![
                step(&[0x43, 0xBC], &[0x79]),
                step(&[0x02, 0x00, 0x01, 0x02, 0x01], &[0x79]),
                step(&[0x43, 0xBC], &[0x79]),
                step(&[0xFF, 0x00], &[0x79]),
            ],
        );
        let t = Duration::from_secs(5);
        s.erase(&EraseRequest::Pages(vec![0, 1, 2]), t)
            .expect("test setup");
        s.erase(&EraseRequest::Mass, t).expect("test setup");
        // Neither a bank erase nor a page past 255 exists in 0x43: nothing is sent.
        assert_invalid(s.erase(&EraseRequest::Bank2, t).unwrap_err());
        assert_invalid(s.erase(&EraseRequest::Pages(vec![300]), t).unwrap_err());
        h.assert_done();
    }

    #[test]
    fn erase_before_connect_sends_nothing() {
        let (mut s, h) = session(vec![]);
        let e = s
            .erase(&EraseRequest::Mass, Duration::from_secs(1))
            .unwrap_err();
        assert_invalid(e);
        h.assert_done();
    }

    #[test]
    fn erase_without_43_or_44_is_unsupported() {
        let (mut s, h) = connected(0x31, &[0x00, 0x01, 0x02, 0x11], vec![]);
        let e = s
            .erase(&EraseRequest::Mass, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
        h.assert_done();
    }

    fn v33() -> Vec<u8> {
        let mut codes = V31.to_vec();
        codes.push(0xA1);
        codes
    }

    #[test]
    fn get_checksum_reference_example() {
        // 256 erased words: CRC D000A3E2 (an3155.md §7), two ACKs back to back.
        let (mut s, h) = connected(
            0x33,
            &v33(),
            vec![
                step(&[0xA1, 0x5E], &[0x79]),
                step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                step(&[0x00, 0x00, 0x01, 0x00, 0x01], &[0x79]),
                step(&[0x04, 0xC1, 0x1D, 0xB7, 0x6F], &[0x79]),
                step(
                    &[0xFF, 0xFF, 0xFF, 0xFF, 0x00],
                    &[0x79, 0x79, 0xD0, 0x00, 0xA3, 0xE2, 0x91],
                ),
            ],
        );
        let crc = s
            .get_checksum(0x0800_0000, 256, 0x04C1_1DB7, 0xFFFF_FFFF)
            .expect("test setup");
        assert_eq!(crc, 0xD000_A3E2);
        h.assert_done();
    }

    #[test]
    fn get_checksum_bad_result_checksum_is_malformed() {
        let (mut s, h) = connected(
            0x33,
            &v33(),
            vec![
                step(&[0xA1, 0x5E], &[0x79]),
                step(&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                step(&[0x00, 0x00, 0x00, 0x01, 0x01], &[0x79]),
                step(&[0x04, 0xC1, 0x1D, 0xB7, 0x6F], &[0x79]),
                step(
                    &[0xFF, 0xFF, 0xFF, 0xFF, 0x00],
                    &[0x79, 0x79, 0xDF, 0x8A, 0x8A, 0x2B, 0x00],
                ),
            ],
        );
        let e = s
            .get_checksum(0x0800_0000, 1, 0x04C1_1DB7, 0xFFFF_FFFF)
            .unwrap_err();
        assert!(matches!(e, Error::MalformedReply { .. }), "{e:?}");
        h.assert_done();
    }

    #[test]
    fn write_protect_then_resync_and_identify() {
        let mut rest = vec![
            step(&[0x63, 0x9C], &[0x79]),
            step(&[0x01, 0x00, 0x01, 0x00], &[0x79]),
        ];
        rest.extend(connect_steps(0x31, &V31));
        let (mut s, h) = connected(0x31, &V31, rest);
        s.write_protect(&[0, 1]).expect("test setup");
        assert_eq!(s.info().map(|i| i.pid), Some(0x413));
        h.assert_done();
    }

    #[test]
    fn write_unprotect_and_readout_protect_resync() {
        let mut rest = vec![step(&[0x73, 0x8C], &[0x79, 0x79])];
        rest.extend(connect_steps(0x31, &V31));
        rest.push(step(&[0x82, 0x7D], &[0x79, 0x79]));
        rest.extend(connect_steps(0x31, &V31));
        let (mut s, h) = connected(0x31, &V31, rest);
        s.write_unprotect().expect("test setup");
        assert!(s.info().is_some());
        s.readout_protect().expect("test setup");
        assert!(s.info().is_some());
        h.assert_done();
    }

    #[test]
    fn readout_unprotect_waits_for_the_erase_and_resyncs() {
        let mut rest = vec![
            step(&[0x92, 0x6D], &[0x79, 0x79]),
            // Still erasing: the first 0x7F goes unanswered.
            step(&[0x7F], &[]),
            step(&[0x7F], &[0x79]),
            // The ACK may have answered the first 0x7F, with the second waiting for its
            // complement: one more 0x7F, unanswered here (the first was lost), then a NACK.
            step(&[0x7F], &[]),
            step(&[0x7F], &[0x1F]),
        ];
        rest.extend(connect_steps(0x31, &V31).into_iter().skip(1));
        let (mut s, h) = connected(0x31, &V31, rest);
        s.readout_unprotect().expect("test setup");
        assert_eq!(s.info().map(|i| i.pid), Some(0x413));
        h.assert_done();
    }

    #[test]
    fn readout_unprotect_nack_at_completion() {
        let (mut s, h) = connected(0x31, &V31, vec![step(&[0x92, 0x6D], &[0x79, 0x1F])]);
        assert_nack(
            s.readout_unprotect().unwrap_err(),
            Command::ReadoutUnprotect,
            Phase::Completion,
        );
        h.assert_done();
    }

    #[test]
    fn special_op_0082_with_4_bytes() {
        let mut codes = V31.to_vec();
        codes.push(0x50);
        let (mut s, h) = connected(
            0x31,
            &codes,
            vec![
                step(&[0x50, 0xAF], &[0x79]),
                step(&[0x00, 0x82, 0x82], &[0x79]),
                step(
                    &[0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF, 0x26],
                    &[0x79, 0x00, 0x02, 0xAA, 0xBB, 0x00, 0x01, 0x00, 0x79],
                ),
            ],
        );
        let reply = s
            .special(0x0082, &[0xDE, 0xAD, 0xBE, 0xEF])
            .expect("test setup");
        assert_eq!(
            reply,
            SpecialReply {
                data: vec![0xAA, 0xBB],
                status: vec![0x00],
            }
        );
        h.assert_done();
    }

    #[test]
    fn special_unknown_op_is_nacked_at_opcode() {
        let mut codes = V31.to_vec();
        codes.push(0x50);
        let (mut s, h) = connected(
            0x31,
            &codes,
            vec![
                step(&[0x50, 0xAF], &[0x79]),
                step(&[0x12, 0x34, 0x26], &[0x1F]),
            ],
        );
        assert_nack(
            s.special(0x1234, &[]).unwrap_err(),
            Command::Special,
            Phase::Opcode,
        );
        h.assert_done();
    }

    #[test]
    fn extended_special_two_packets() {
        let mut codes = V31.to_vec();
        codes.push(0x51);
        let (mut s, h) = connected(
            0x31,
            &codes,
            vec![
                step(&[0x51, 0xAE], &[0x79]),
                step(&[0x00, 0x01, 0x01], &[0x79]),
                step(&[0x00, 0x01, 0x11, 0x10], &[0x79]),
                step(
                    &[0x00, 0x02, 0x22, 0x33, 0x13],
                    &[0x79, 0x00, 0x01, 0x44, 0x79],
                ),
            ],
        );
        let reply = s
            .extended_special(0x0001, &[0x11], &[0x22, 0x33])
            .expect("test setup");
        assert_eq!(reply, vec![0x44]);
        h.assert_done();
    }

    #[test]
    fn nack_at_address_phase() {
        let (mut s, h) = session(vec![
            step(&[0x11, 0xEE], &[0x79]),
            step(&[0x20, 0x00, 0x00, 0x00, 0x20], &[0x1F]),
        ]);
        let e = s.read_memory(0x2000_0000, &mut [0u8; 4]).unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");
        assert_nack(e, Command::ReadMemory, Phase::Address);
        h.assert_done();
    }

    #[test]
    fn unlisted_commands_are_unsupported_and_send_nothing() {
        let (mut s, h) = connected(0x31, &V31, vec![]);
        let errors = [
            s.get_checksum(0x0800_0000, 1, 0x04C1_1DB7, !0).unwrap_err(),
            s.special(0x0082, &[1, 2, 3, 4]).unwrap_err(),
            s.extended_special(0x0001, &[], &[]).unwrap_err(),
        ];
        for (e, cmd) in errors.into_iter().zip([
            Command::GetChecksum,
            Command::Special,
            Command::ExtendedSpecial,
        ]) {
            match e {
                Error::Unsupported { command, listed } => {
                    assert_eq!(command, cmd);
                    assert!(listed.contains("Extended Erase 0x44"), "{listed}");
                }
                other => panic!("expected Unsupported for {cmd}, got {other:?}"),
            }
        }
        h.assert_done();
    }

    #[test]
    fn unexpected_byte_is_reported() {
        let (mut s, h) = session(vec![step(&[0x21, 0xDE], &[0x00])]);
        match s.go(0x0800_0000).unwrap_err() {
            Error::UnexpectedReply {
                command,
                phase,
                byte,
            } => assert_eq!((command, phase, byte), (Command::Go, Phase::Command, 0x00)),
            other => panic!("expected UnexpectedReply, got {other:?}"),
        }
        h.assert_done();
    }

    #[test]
    fn double_nack_is_drained() {
        let (mut s, h) = session(vec![
            step(&[0x11, 0xEE], &[0x1F, 0x1F]),
            step(&[0x02, 0xFD], &[0x79, 0x01, 0x04, 0x13, 0x79]),
        ]);
        let e = s.read_memory(0x0800_0000, &mut [0u8; 4]).unwrap_err();
        assert_nack(e, Command::ReadMemory, Phase::Command);
        assert_eq!(s.get_id().expect("test setup"), 0x413);
        h.assert_done();
    }

    #[test]
    fn silence_is_a_timeout_at_the_phase() {
        let (mut s, h) = session(vec![
            step(&[0x31, 0xCE], &[0x79]),
            step(&[0x08, 0x00, 0x01, 0x00, 0x09], &[]),
        ]);
        match s.write_memory(0x0800_0100, &[0; 4]).unwrap_err() {
            Error::Timeout { command, phase, .. } => {
                assert_eq!((command, phase), (Command::WriteMemory, Phase::Address))
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        h.assert_done();
    }

    #[test]
    fn get_id_rejects_zero_length() {
        let (mut s, h) = session(vec![step(&[0x02, 0xFD], &[0x79, 0x00])]);
        assert!(
            matches!(s.get_id().unwrap_err(), Error::MalformedReply { .. }),
            "N = 0 cannot carry a PID"
        );
        h.assert_done();
    }

    fn sim_session(spec: &str) -> Session {
        use crate::sim::SimSpec;
        use crate::transport::sim::SimLink;
        let spec = SimSpec::parse(spec).expect("test setup");
        let target = spec
            .build(crate::device::DeviceTable::builtin().expect("test setup"))
            .expect("test setup");
        let link = SimLink::with_target(target, spec, LineSettings::default());
        Session::new(Box::new(link), Timeouts::default())
    }

    #[test]
    fn end_to_end_protection_cycle_with_simulated_f411() {
        let mut s = sim_session("stm32f411");
        s.connect().expect("test setup");
        s.write_memory(0x0800_0000, &[1, 2, 3, 4])
            .expect("test setup");
        s.readout_protect().expect("test setup");
        assert_eq!(s.info().map(|i| i.pid), Some(0x431));
        let e = s.read_memory(0x0800_0000, &mut [0u8; 4]).unwrap_err();
        assert_nack(e, Command::ReadMemory, Phase::Command);
        s.readout_unprotect().expect("test setup");
        let mut buf = [0u8; 4];
        s.read_memory(0x0800_0000, &mut buf).expect("test setup");
        assert_eq!(buf, [0xFF; 4]);
        s.write_protect(&[0]).expect("test setup");
        s.write_memory(0x0800_0000, &[0; 4]).expect("test setup");
        s.read_memory(0x0800_0000, &mut buf).expect("test setup");
        assert_eq!(buf, [0xFF; 4], "sector 0 is write-protected");
        s.write_unprotect().expect("test setup");
        s.write_memory(0x0800_0000, &[0; 4]).expect("test setup");
        s.read_memory(0x0800_0000, &mut buf).expect("test setup");
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn end_to_end_checksum_and_go_with_simulated_l476() {
        let mut s = sim_session("stm32l476?version=0x33");
        assert!(s
            .connect()
            .expect("test setup")
            .supports(Command::GetChecksum));
        s.write_memory(0x0800_0000, &[0x78, 0x56, 0x34, 0x12])
            .expect("test setup");
        let crc = s
            .get_checksum(0x0800_0000, 1, 0x04C1_1DB7, 0xFFFF_FFFF)
            .expect("test setup");
        assert_eq!(crc, 0xDF8A_8A2B);
        s.go(0x0800_0000).expect("test setup");
        assert!(matches!(s.sync().unwrap_err(), Error::NoSync { .. }));
    }

    #[test]
    fn end_to_end_with_simulated_f411() {
        let mut s = sim_session("stm32f411");
        let info = s.connect().expect("test setup").clone();
        assert_eq!((info.pid, info.version), (0x431, ProtocolVersion(0x31)));
        assert_eq!(info.commands, V31.to_vec());
        s.write_memory(0x0800_0100, &[0xDE, 0xAD, 0xBE, 0xEF])
            .expect("test setup");
        let mut buf = [0u8; 8];
        s.read_memory(0x0800_00FC, &mut buf).expect("test setup");
        assert_eq!(buf, [0xFF, 0xFF, 0xFF, 0xFF, 0xDE, 0xAD, 0xBE, 0xEF]);
        s.erase(&EraseRequest::Pages(vec![0]), Duration::from_secs(5))
            .expect("test setup");
        s.read_memory(0x0800_0100, &mut buf[..4])
            .expect("test setup");
        assert_eq!(buf[..4], [0xFF; 4]);
        assert_eq!(s.sync().expect("test setup"), SyncOutcome::AlreadySynced);
        assert_eq!(s.get_id().expect("test setup"), 0x431);
    }
}
