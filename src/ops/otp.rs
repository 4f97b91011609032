//! The one-time-programmable (OTP) area: read its state, plan a write or a lock, and carry it
//! out with a read-back check.
//!
//! OTP cannot be erased, and the ROM bootloader ACKs a Write Memory even when the flash
//! controller rejects it (AN3155; `an3155.md` §10.4). So every rule is checked on the host,
//! before any Write Memory is sent, and every write is read back:
//!
//! - **Lock-byte families** (F2/F4: 16 blocks × 32 bytes at 0x1FFF7800, lock bytes at
//!   0x1FFF7A00; F7: 16 × 64 bytes at 0x1FF0F000, lock bytes at 0x1FF0F400): one lock byte per
//!   block, `00` locked and `FF` unlocked. The hardware would AND new data into used bytes;
//!   stm32boot still writes only to bytes that read `FF`, since nothing can undo a wrong bit.
//! - **Write-once families** (L4, G0, G4, WB, WL, C0: 1 KiB of 64-bit double words at
//!   0x1FFF7000): no lock bytes; a double word with any 0 bit can never be written again.
//!
//! [`read_state`] reads the area, [`plan_write`] and [`plan_lock`] are pure and refuse anything
//! the chip would reject or that cannot be undone by accident, and [`write`] and [`lock`] send
//! the plan and verify it.

use crate::device::{AddrRange, Device};
use crate::error::{Error, Result};
use crate::ops::connect::Connection;
use crate::ops::progress::{Note, Progress, Stage};
use crate::protocol::MAX_BLOCK;

/// What the user is told when read protection hides the OTP.
pub const READ_PROTECTED: &str = "read protection is active: OTP cannot be read or written until \
`stm32boot protect readout off` (which erases the flash, not the OTP)";

/// How a part's OTP is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtpScheme {
    /// Blocks with one lock byte each (F2/F4/F7).
    LockBytes,
    /// Units (64-bit double words) that each lock themselves when written (L4/G0/G4/WB/WL).
    WriteOnce,
}

/// Where a part's OTP sits and the rules for writing it, from the device table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OtpLayout {
    /// The part's display name, for messages.
    pub part: String,
    /// The part's family.
    pub family: String,
    /// Lock bytes or write-once units.
    pub scheme: OtpScheme,
    /// The data area (lock bytes excluded).
    pub data: AddrRange,
    /// Size of a block (lock-byte families) or of a write-once unit (a double word).
    pub unit_size: u32,
    /// Number of blocks or units.
    pub count: usize,
    /// The lock bytes, one per block (lock-byte families).
    pub locks: Option<AddrRange>,
    /// A write's address must be a multiple of this.
    pub address_align: u32,
    /// A write's length must be a multiple of this.
    pub length_align: u32,
}

impl OtpLayout {
    /// The OTP layout of `device`, or an error saying that it has none.
    pub fn for_device(device: &Device) -> Result<OtpLayout> {
        let otp = device.otp.ok_or_else(|| {
            Error::InvalidRequest(format!(
                "the {} has no OTP area in the device table (`stm32boot devices {}` shows its \
                 memory windows); describe one in a --device-file if the part has it",
                device.name, device.family
            ))
        })?;
        let bad = |why: String| {
            Error::Device(format!(
                "the OTP entry of the {} in the device table is inconsistent: {why}",
                device.name
            ))
        };
        let rules = &device.rules;
        match (otp.block_size, otp.lock_start) {
            (Some(block_size), Some(lock_start)) => {
                if block_size == 0
                    || lock_start <= otp.range.start
                    || !otp.range.contains(lock_start)
                    || (lock_start - otp.range.start) % block_size != 0
                {
                    return Err(bad(format!(
                        "blocks of {block_size} bytes from 0x{:08X} do not end at the lock \
                         bytes (0x{lock_start:08X})",
                        otp.range.start
                    )));
                }
                let count = ((lock_start - otp.range.start) / block_size) as usize;
                let locks = AddrRange::from_len(lock_start, count as u32);
                if locks.end > otp.range.end {
                    return Err(bad(format!(
                        "{count} lock bytes from 0x{lock_start:08X} run past the window's end \
                         0x{:08X}",
                        otp.range.end
                    )));
                }
                Ok(OtpLayout {
                    part: device.name.clone(),
                    family: device.family.clone(),
                    scheme: OtpScheme::LockBytes,
                    data: AddrRange {
                        start: otp.range.start,
                        end: lock_start - 1,
                    },
                    unit_size: block_size,
                    count,
                    locks: Some(locks),
                    // AN3155: address and length multiples of 4; AN2606 Table 7 asks 8-byte
                    // addresses on F7, which the device table's write alignment carries.
                    address_align: rules.write_align.max(4),
                    length_align: 4,
                })
            }
            _ => {
                // Double words (or the part's wider programming unit), each written once.
                let unit = rules.program_unit.max(rules.write_align).max(8);
                let size = otp.range.len();
                if size % u64::from(unit) != 0 {
                    return Err(bad(format!(
                        "{size} bytes are not a whole number of {unit}-byte units"
                    )));
                }
                Ok(OtpLayout {
                    part: device.name.clone(),
                    family: device.family.clone(),
                    scheme: OtpScheme::WriteOnce,
                    data: otp.range,
                    unit_size: unit,
                    count: (size / u64::from(unit)) as usize,
                    locks: None,
                    address_align: unit,
                    length_align: unit,
                })
            }
        }
    }

    /// What one block or unit is called in messages ("block", "double word").
    pub fn unit_name(&self) -> &'static str {
        match self.scheme {
            OtpScheme::LockBytes => "block",
            OtpScheme::WriteOnce if self.unit_size == 8 => "double word",
            OtpScheme::WriteOnce => "unit",
        }
    }

    /// First address of block (or unit) `index`.
    pub fn block_address(&self, index: usize) -> u32 {
        self.data.start + index as u32 * self.unit_size
    }

    /// The block (or unit) holding `addr`, which must lie in the data area.
    pub fn block_of(&self, addr: u32) -> usize {
        ((addr - self.data.start) / self.unit_size) as usize
    }

    /// Address of the lock byte of block `index` (lock-byte families).
    pub fn lock_address(&self, index: usize) -> Option<u32> {
        self.locks.map(|l| l.start + index as u32)
    }

    /// The address `offset` bytes into block (or unit) `index`, for `len` bytes of data.
    ///
    /// On lock-byte families the data must stay inside the block, as each block is locked on
    /// its own; write-once units are independent, so the data may run on into the next ones.
    pub fn address_in_block(&self, index: usize, offset: u32, len: usize) -> Result<u32> {
        let name = self.unit_name();
        if index >= self.count {
            return Err(Error::InvalidRequest(format!(
                "{name} {index} does not exist: the OTP of the {} has {name}s 0-{} of {} bytes",
                self.part,
                self.count - 1,
                self.unit_size
            )));
        }
        let start = self.block_address(index);
        if self.scheme == OtpScheme::LockBytes {
            let end = u64::from(offset) + len as u64;
            if end > u64::from(self.unit_size) {
                return Err(Error::InvalidRequest(format!(
                    "{len} bytes at offset {offset} do not fit in {name} {index} (0x{start:08X}, \
                     {} bytes): each block is locked on its own, so a --block write stays \
                     inside it; use --address 0x{:08X} to run on into the next block on purpose",
                    self.unit_size,
                    u64::from(start) + u64::from(offset)
                )));
            }
        } else if offset >= self.unit_size * (self.count - index) as u32 {
            return Err(Error::InvalidRequest(format!(
                "offset {offset} from {name} {index} is past the end of the OTP area (0x{:08X})",
                self.data.end
            )));
        }
        Ok(start + offset)
    }

    /// A one-line description: where the area is and how it is organised.
    pub fn describe(&self) -> String {
        let size = self.data.len();
        match self.locks {
            Some(l) => format!(
                "{size} bytes at 0x{:08X}-0x{:08X} in {} blocks of {} bytes, lock bytes at \
                 0x{:08X}-0x{:08X} (00 = locked, FF = unlocked)",
                self.data.start, self.data.end, self.count, self.unit_size, l.start, l.end
            ),
            None => format!(
                "{size} bytes at 0x{:08X}-0x{:08X} in {} {}s of {} bytes, each written once \
                 (no lock bytes)",
                self.data.start,
                self.data.end,
                self.count,
                self.unit_name(),
                self.unit_size
            ),
        }
    }
}

/// How much of a block is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fill {
    /// Every byte reads `FF`.
    Blank,
    /// Some bytes are written, others still read `FF` and can be written (lock-byte families).
    PartlyUsed,
    /// Every byte is written; on write-once families, any written bit uses up the unit.
    Used,
}

/// The lock of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "value")]
pub enum LockState {
    /// The lock byte reads `FF`.
    Unlocked,
    /// The lock byte reads `00`: the block can never be written again.
    Locked,
    /// The lock byte holds a value other than `00` and `FF`, which the reference manual
    /// forbids; stm32boot does not write to such a block.
    Invalid(u8),
    /// The family has no lock bytes: each unit locks itself when written.
    WriteOnce,
}

impl LockState {
    /// A short, stable code for scripts.
    pub fn code(self) -> &'static str {
        match self {
            LockState::Unlocked => "unlocked",
            LockState::Locked => "locked",
            LockState::Invalid(_) => "invalid",
            LockState::WriteOnce => "write-once",
        }
    }
}

/// One block (lock-byte families) or unit (write-once families) of the OTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OtpBlock {
    /// Number, from 0.
    pub index: usize,
    /// First address.
    pub address: u32,
    /// Size in bytes.
    pub size: u32,
    /// Bytes that no longer read `FF`.
    pub used_bytes: u32,
    /// Blank, partly used or used.
    pub fill: Fill,
    /// Its lock.
    pub lock: LockState,
}

impl OtpBlock {
    /// Whether any byte of it can still be written.
    pub fn writable(&self) -> bool {
        self.fill != Fill::Used && matches!(self.lock, LockState::Unlocked | LockState::WriteOnce)
    }

    /// What it holds, in words ("blank, unlocked", "used: 8 of 32 bytes, locked").
    pub fn describe(&self) -> String {
        let fill = match (self.fill, self.lock) {
            (Fill::Blank, _) => "blank".to_string(),
            (Fill::Used, LockState::WriteOnce) => "used (written once)".to_string(),
            (Fill::Used, _) => format!("used: all {} bytes", self.size),
            (Fill::PartlyUsed, _) => format!("used: {} of {} bytes", self.used_bytes, self.size),
        };
        match self.lock {
            LockState::Unlocked => format!("{fill}, unlocked"),
            LockState::Locked => format!("{fill}, locked"),
            LockState::Invalid(v) => format!("{fill}, lock byte 0x{v:02X} (invalid)"),
            LockState::WriteOnce => fill,
        }
    }
}

/// A run of consecutive blocks in the same state, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OtpRun {
    /// First block of the run.
    pub first: usize,
    /// Last block of the run (inclusive).
    pub last: usize,
    /// The state every block of the run is in (its `index`, `address` and `used_bytes` are
    /// those of the first block).
    pub block: OtpBlock,
}

/// The OTP area as read from a chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpState {
    /// Where it is and how it is organised.
    pub layout: OtpLayout,
    /// The data area's bytes.
    pub data: Vec<u8>,
    /// The lock bytes (empty on write-once families).
    pub locks: Vec<u8>,
}

impl OtpState {
    /// A state from bytes read elsewhere (a dump, or a test); the lengths must match `layout`.
    pub fn from_bytes(layout: OtpLayout, data: Vec<u8>, locks: Vec<u8>) -> Result<OtpState> {
        let want_locks = layout.locks.map(|l| l.len()).unwrap_or(0);
        if data.len() as u64 != layout.data.len() || locks.len() as u64 != want_locks {
            return Err(Error::InvalidRequest(format!(
                "OTP state of the {}: {} data bytes and {} lock bytes, expected {} and {}",
                layout.part,
                data.len(),
                locks.len(),
                layout.data.len(),
                want_locks
            )));
        }
        Ok(OtpState {
            layout,
            data,
            locks,
        })
    }

    /// The bytes of `[addr, addr + len)`, which must lie in the data area.
    pub fn bytes(&self, addr: u32, len: usize) -> &[u8] {
        let off = (addr - self.layout.data.start) as usize;
        &self.data[off..off + len]
    }

    /// Block (or unit) `index`.
    pub fn block(&self, index: usize) -> OtpBlock {
        let l = &self.layout;
        let address = l.block_address(index);
        let bytes = self.bytes(address, l.unit_size as usize);
        let used = bytes.iter().filter(|&&b| b != 0xFF).count() as u32;
        let lock = match l.scheme {
            OtpScheme::WriteOnce => LockState::WriteOnce,
            OtpScheme::LockBytes => match self.locks.get(index).copied() {
                Some(0xFF) => LockState::Unlocked,
                Some(0x00) => LockState::Locked,
                Some(v) => LockState::Invalid(v),
                None => LockState::Unlocked,
            },
        };
        let fill = if used == 0 {
            Fill::Blank
        } else if used == l.unit_size || l.scheme == OtpScheme::WriteOnce {
            Fill::Used
        } else {
            Fill::PartlyUsed
        };
        OtpBlock {
            index,
            address,
            size: l.unit_size,
            used_bytes: used,
            fill,
            lock,
        }
    }

    /// Every block (or unit), in order.
    pub fn blocks(&self) -> Vec<OtpBlock> {
        (0..self.layout.count).map(|i| self.block(i)).collect()
    }

    /// Consecutive blocks in the same state, merged: blank blocks merge whatever their count of
    /// used bytes; used and partly used blocks stand alone.
    pub fn runs(&self) -> Vec<OtpRun> {
        let mut runs: Vec<OtpRun> = Vec::new();
        for b in self.blocks() {
            if let Some(r) = runs.last_mut() {
                let same = r.block.fill == b.fill
                    && r.block.lock == b.lock
                    && (b.fill == Fill::Blank || b.lock == LockState::WriteOnce);
                if same && r.last + 1 == b.index {
                    r.last = b.index;
                    continue;
                }
            }
            runs.push(OtpRun {
                first: b.index,
                last: b.index,
                block: b,
            });
        }
        runs
    }

    /// Blocks that are blank and writable, and bytes that can still be written.
    pub fn free(&self) -> (usize, u64) {
        let mut blocks = 0;
        let mut bytes = 0u64;
        for b in self.blocks() {
            if !b.writable() {
                continue;
            }
            if b.fill == Fill::Blank {
                blocks += 1;
            }
            bytes += u64::from(b.size - b.used_bytes);
        }
        (blocks, bytes)
    }
}

fn readable(conn: &Connection) -> Result<()> {
    if conn.read_protected {
        return Err(Error::Refused(READ_PROTECTED.into()));
    }
    Ok(())
}

fn read_range(
    conn: &mut Connection,
    start: u32,
    len: usize,
    progress: &mut dyn Progress,
    stage: Stage,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    progress.start(stage, len as u64);
    let mut done = 0usize;
    for chunk in out.chunks_mut(MAX_BLOCK) {
        conn.session
            .read_memory_stable(start + done as u32, chunk)
            .map_err(|e| otp_read_error(e, &conn.device.name))?;
        done += chunk.len();
        progress.update(stage, done as u64);
    }
    progress.finish(stage);
    Ok(out)
}

fn otp_read_error(e: Error, part: &str) -> Error {
    match e {
        Error::Nack {
            command,
            phase,
            hint: None,
        } => Error::Nack {
            command,
            phase,
            hint: Some(format!(
                "the bootloader refused to read the OTP area of the {part}: read protection may \
                 be active (G0 parts hide OTP at RDP level 1 unless booted from main flash), or \
                 the device table's OTP address is wrong for this chip"
            )),
        },
        other => other,
    }
}

/// Read the whole OTP area (data and lock bytes) in Read Memory chunks of at most 256 bytes.
pub fn read_state(conn: &mut Connection, progress: &mut dyn Progress) -> Result<OtpState> {
    readable(conn)?;
    let layout = OtpLayout::for_device(&conn.device)?;
    let start = layout.data.start;
    let end = layout.locks.map(|l| l.end).unwrap_or(layout.data.end);
    let all = read_range(
        conn,
        start,
        (end - start) as usize + 1,
        progress,
        Stage::Read,
    )?;
    let data_len = layout.data.len() as usize;
    let locks = match layout.locks {
        Some(l) => {
            let off = (l.start - start) as usize;
            all[off..off + l.len() as usize].to_vec()
        }
        None => Vec::new(),
    };
    let data = all[..data_len].to_vec();
    OtpState::from_bytes(layout, data, locks)
}

/// A checked OTP write: everything it needs was verified against the state it was planned
/// from, so sending it programs only blank bytes of unlocked blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpWritePlan {
    /// The layout it was planned for.
    pub layout: OtpLayout,
    /// First address.
    pub address: u32,
    /// The bytes to write.
    pub data: Vec<u8>,
    /// The blocks (or units) it touches, as they were before.
    pub before: Vec<OtpBlock>,
    /// Things worth knowing that do not stop the write.
    pub notes: Vec<Note>,
}

impl OtpWritePlan {
    /// One past the last address written.
    pub fn end(&self) -> u64 {
        u64::from(self.address) + self.data.len() as u64
    }

    /// The Write Memory commands: (address, offset into `data`, length), each at most 256 bytes
    /// and on the family's alignment.
    pub fn chunks(&self) -> Vec<(u32, usize, usize)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        while off < self.data.len() {
            let n = (self.data.len() - off).min(MAX_BLOCK);
            out.push((self.address + off as u32, off, n));
            off += n;
        }
        out
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn range_text(start: u32, end_exclusive: u64) -> String {
    if end_exclusive <= u64::from(start) + 1 {
        format!("0x{start:08X}")
    } else {
        format!("0x{start:08X}-0x{:08X}", end_exclusive - 1)
    }
}

/// Check a write of `data` at `address` against the OTP `state` of `device`, before anything is
/// sent. Refuses, with what to do instead: an empty write; a range outside the data area or
/// into the lock bytes (locking goes through [`plan_lock`]); an address or length off the
/// family's alignment; a locked block (or one whose lock byte is neither `00` nor `FF`); and
/// target bytes that are not blank. On lock-byte families even a write that would only clear
/// more bits (which the hardware would AND in) is refused, since OTP cannot be undone.
pub fn plan_write(
    device: &Device,
    state: &OtpState,
    address: u32,
    data: &[u8],
) -> Result<OtpWritePlan> {
    let layout = OtpLayout::for_device(device)?;
    if state.layout != layout {
        return Err(Error::InvalidRequest(format!(
            "the OTP state was read from a {}, not this {}: read it again",
            state.layout.part, layout.part
        )));
    }
    let name = layout.unit_name();
    let invalid = |msg: String| Err(Error::InvalidRequest(msg));
    if data.is_empty() {
        return invalid(format!(
            "nothing to write: the data is empty (OTP writes on the {} take {} bytes or a \
             multiple)",
            layout.part, layout.length_align
        ));
    }
    let end = u64::from(address) + data.len() as u64;
    let span = range_text(address, end);
    if let Some(locks) = layout.locks {
        if u64::from(address) <= u64::from(locks.end) && end > u64::from(locks.start) {
            return invalid(format!(
                "{span} reaches the OTP lock bytes of the {} (0x{:08X}-0x{:08X}): they change \
                 only through `stm32boot otp lock BLOCK`, which locks one block for ever",
                layout.part, locks.start, locks.end
            ));
        }
    }
    if !layout.data.contains_span(address, data.len() as u64) {
        let why = if layout.data.contains(address) {
            format!(
                "runs past the end of the OTP data area (0x{:08X})",
                layout.data.end
            )
        } else {
            "is outside the OTP data area".to_string()
        };
        return invalid(format!(
            "{span} {why} of the {}: {}; `stm32boot write` programs flash",
            layout.part,
            layout.describe()
        ));
    }
    if address % layout.address_align != 0 {
        let down = address / layout.address_align * layout.address_align;
        return invalid(format!(
            "0x{address:08X} is not a multiple of {}: the {} bootloader writes OTP at addresses \
             that are multiples of {} ({}); use 0x{down:08X} or 0x{:08X}",
            layout.address_align,
            layout.family,
            layout.address_align,
            align_source(&layout),
            down + layout.address_align
        ));
    }
    if data.len() as u32 % layout.length_align != 0 {
        let up = (data.len() as u32).div_ceil(layout.length_align) * layout.length_align;
        let pad = match layout.scheme {
            OtpScheme::LockBytes => format!(
                "pad it to {up} bytes with FF, which programs nothing and leaves those bytes \
                 writable"
            ),
            OtpScheme::WriteOnce => format!(
                "pad it to {up} bytes yourself (the write uses up every {} it touches anyway)",
                layout.unit_name()
            ),
        };
        return invalid(format!(
            "the data is {} bytes: OTP writes on the {} take a multiple of {} bytes ({}); {pad}",
            data.len(),
            layout.part,
            layout.length_align,
            align_source(&layout)
        ));
    }
    let first = layout.block_of(address);
    let last = layout.block_of((end - 1) as u32);
    let before: Vec<OtpBlock> = (first..=last).map(|i| state.block(i)).collect();
    for b in &before {
        let lock_at = layout.lock_address(b.index).unwrap_or(0);
        match b.lock {
            LockState::Locked => {
                return invalid(format!(
                    "{name} {} ({}) is locked (lock byte 0x{lock_at:08X} holds 00): a locked \
                     block can never be written again; `stm32boot otp show` lists the free ones",
                    b.index,
                    range_text(b.address, u64::from(b.address) + u64::from(b.size))
                ))
            }
            LockState::Invalid(v) => {
                return invalid(format!(
                    "{name} {}'s lock byte 0x{lock_at:08X} holds 0x{v:02X}, neither 00 (locked) \
                     nor FF (unlocked): the reference manual allows only those two values and \
                     the block may not program reliably, so stm32boot does not write to it",
                    b.index
                ))
            }
            LockState::Unlocked | LockState::WriteOnce => {}
        }
    }
    match layout.scheme {
        OtpScheme::LockBytes => {
            let target = state.bytes(address, data.len());
            let used: Vec<(u32, u8)> = target
                .iter()
                .enumerate()
                .filter(|(_, &b)| b != 0xFF)
                .map(|(i, &b)| (address + i as u32, b))
                .collect();
            if !used.is_empty() {
                let mut list: Vec<String> = used
                    .iter()
                    .take(8)
                    .map(|(a, b)| format!("0x{a:08X} holds {b:02X}"))
                    .collect();
                if used.len() > 8 {
                    list.push(format!("and {} more", used.len() - 8));
                }
                return invalid(format!(
                    "{span} is not blank: {} ({} of the {} bytes already written). OTP cannot be \
                     erased, so stm32boot writes only bytes that still read FF, even where the \
                     new value would only clear more bits; `stm32boot otp show` lists the free \
                     blocks",
                    list.join(", "),
                    used.len(),
                    data.len()
                ));
            }
        }
        OtpScheme::WriteOnce => {
            let used: Vec<&OtpBlock> = before.iter().filter(|b| b.fill != Fill::Blank).collect();
            if let Some(b) = used.first() {
                let more = if used.len() > 1 {
                    format!(
                        " ({} of the {} {name}s written are used)",
                        used.len(),
                        before.len()
                    )
                } else {
                    String::new()
                };
                return invalid(format!(
                    "the {name} at 0x{:08X} ({name} {}) was already written: it holds {}{more}. \
                     Each {name} of the {} OTP can be written only once, even with zeros, and \
                     the chip would ignore this write; `stm32boot otp show` lists the free ones",
                    b.address,
                    b.index,
                    hex_bytes(state.bytes(b.address, b.size as usize)),
                    layout.family
                ));
            }
        }
    }
    let mut notes = Vec::new();
    match layout.scheme {
        OtpScheme::LockBytes => {
            let ff = data.iter().filter(|&&b| b == 0xFF).count();
            if ff > 0 {
                notes.push(Note::Info(format!(
                    "{ff} of the {} bytes are FF: they program nothing and stay writable",
                    data.len()
                )));
            }
        }
        OtpScheme::WriteOnce => {
            let blank = data
                .chunks(layout.unit_size as usize)
                .filter(|c| c.iter().all(|&b| b == 0xFF))
                .count();
            if blank > 0 {
                notes.push(Note::Info(format!(
                    "{blank} {name}(s) of the data are all FF: they stay blank"
                )));
            }
        }
    }
    Ok(OtpWritePlan {
        layout,
        address,
        data: data.to_vec(),
        before,
        notes,
    })
}

fn align_source(layout: &OtpLayout) -> &'static str {
    match layout.scheme {
        OtpScheme::LockBytes if layout.address_align > 4 => "AN3155, AN2606 Table 7",
        OtpScheme::LockBytes => "AN3155",
        OtpScheme::WriteOnce => "the flash programs whole 64-bit double words",
    }
}

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OtpWriteReport {
    /// First address written.
    pub address: u32,
    /// Bytes written.
    pub length: usize,
    /// The blocks (or units) written to.
    pub blocks: Vec<usize>,
    /// Write Memory commands sent.
    pub commands: usize,
    /// The bytes were read back and matched.
    pub verified: bool,
}

/// Send a write planned by [`plan_write`], then read it back.
///
/// The OTP is read again first and the plan re-checked against it, so a plan made from an
/// older state (or another chip) sends nothing. The ROM ACKs writes the flash rejects, so a
/// read-back that differs is reported as [`Error::Verify`].
pub fn write(
    conn: &mut Connection,
    plan: &OtpWritePlan,
    progress: &mut dyn Progress,
) -> Result<OtpWriteReport> {
    readable(conn)?;
    let fresh = read_state(conn, progress)?;
    let checked = plan_write(&conn.device, &fresh, plan.address, &plan.data)?;
    if checked.layout != plan.layout {
        return Err(Error::InvalidRequest(format!(
            "the OTP plan was made for a {}, not this {}",
            plan.layout.part, checked.layout.part
        )));
    }
    let chunks = plan.chunks();
    progress.start(Stage::Write, plan.data.len() as u64);
    for &(addr, off, n) in &chunks {
        conn.session.write_memory(addr, &plan.data[off..off + n])?;
        progress.update(Stage::Write, (off + n) as u64);
    }
    progress.finish(Stage::Write);
    let back = read_range(conn, plan.address, plan.data.len(), progress, Stage::Verify)?;
    if let Some(i) = back.iter().zip(&plan.data).position(|(a, b)| a != b) {
        let differ = back.iter().zip(&plan.data).filter(|(a, b)| a != b).count();
        return Err(Error::Verify {
            address: plan.address + i as u32,
            detail: format!(
                "OTP reads back {:02X} where {:02X} was written ({differ} of {} bytes differ): \
                 the bootloader ACKed the write but the flash did not take it (a locked or \
                 already written {}, or an OTP address the chip does not have); \
                 `stm32boot otp show` shows what the chip holds now",
                back[i],
                plan.data[i],
                plan.data.len(),
                plan.layout.unit_name()
            ),
        });
    }
    Ok(OtpWriteReport {
        address: plan.address,
        length: plan.data.len(),
        blocks: plan.before.iter().map(|b| b.index).collect(),
        commands: chunks.len(),
        verified: true,
    })
}

/// A checked lock of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpLockPlan {
    /// The layout it was planned for.
    pub layout: OtpLayout,
    /// The block, as it was before.
    pub block: OtpBlock,
    /// Its lock byte.
    pub lock_address: u32,
    /// Where the Write Memory goes (the lock byte's aligned word).
    pub write_address: u32,
    /// What it writes: `00` for the lock byte, `FF` (no change) for its neighbours.
    pub bytes: Vec<u8>,
    /// The block was locked already: nothing is sent.
    pub already_locked: bool,
    /// Things worth knowing.
    pub notes: Vec<Note>,
}

/// Plan locking block `index`: lock-byte families only. A write-once family is refused, since
/// each of its units locks itself when written. An already locked block gives a plan that sends
/// nothing (`already_locked`), so that provisioning scripts can run again.
pub fn plan_lock(device: &Device, state: &OtpState, index: usize) -> Result<OtpLockPlan> {
    let layout = OtpLayout::for_device(device)?;
    if state.layout != layout {
        return Err(Error::InvalidRequest(format!(
            "the OTP state was read from a {}, not this {}: read it again",
            state.layout.part, layout.part
        )));
    }
    let Some(locks) = layout.locks else {
        return Err(Error::InvalidRequest(format!(
            "the OTP of the {} ({} family) has no lock bytes: each {} locks itself when it is \
             written, so there is nothing to lock",
            layout.part,
            layout.family,
            layout.unit_name()
        )));
    };
    if index >= layout.count {
        return Err(Error::InvalidRequest(format!(
            "block {index} does not exist: the OTP of the {} has blocks 0-{}",
            layout.part,
            layout.count - 1
        )));
    }
    let block = state.block(index);
    let lock_address = locks.start + index as u32;
    let width = layout.address_align.max(layout.length_align);
    let write_address = lock_address / width * width;
    if !locks.contains_span(write_address, u64::from(width)) {
        return Err(Error::Device(format!(
            "the lock bytes of the {} (0x{:08X}-0x{:08X}) cannot be written in aligned \
             {width}-byte words",
            layout.part, locks.start, locks.end
        )));
    }
    let mut bytes = vec![0xFFu8; width as usize];
    bytes[(lock_address - write_address) as usize] = 0x00;
    let mut notes = Vec::new();
    if let LockState::Invalid(v) = block.lock {
        notes.push(Note::Warning(format!(
            "the lock byte of block {index} holds 0x{v:02X}, neither 00 nor FF: writing 00 \
             makes it a valid lock"
        )));
    }
    if block.lock != LockState::Locked {
        match block.fill {
            Fill::Blank => notes.push(Note::Warning(format!(
                "block {index} is blank: once locked it can never be written"
            ))),
            Fill::PartlyUsed => notes.push(Note::Warning(format!(
                "block {index} has {} blank bytes: once locked they can never be written",
                block.size - block.used_bytes
            ))),
            Fill::Used => {}
        }
    }
    Ok(OtpLockPlan {
        layout,
        block,
        lock_address,
        write_address,
        bytes,
        already_locked: block.lock == LockState::Locked,
        notes,
    })
}

/// What [`lock_block`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OtpLockReport {
    /// The block.
    pub block: usize,
    /// Its lock byte.
    pub lock_address: u32,
    /// Whether a Write Memory was sent (false when the block was locked already).
    pub written: bool,
    /// The lock byte reads `00` now.
    pub verified: bool,
}

/// Send a lock planned by [`plan_lock`] and check that the lock byte reads `00`.
pub fn lock_block(
    conn: &mut Connection,
    plan: &OtpLockPlan,
    progress: &mut dyn Progress,
) -> Result<OtpLockReport> {
    readable(conn)?;
    let fresh = read_state(conn, progress)?;
    let checked = plan_lock(&conn.device, &fresh, plan.block.index)?;
    if checked.layout != plan.layout {
        return Err(Error::InvalidRequest(format!(
            "the OTP plan was made for a {}, not this {}",
            plan.layout.part, checked.layout.part
        )));
    }
    if checked.already_locked {
        return Ok(OtpLockReport {
            block: plan.block.index,
            lock_address: plan.lock_address,
            written: false,
            verified: true,
        });
    }
    progress.start(Stage::Write, plan.bytes.len() as u64);
    conn.session
        .write_memory(checked.write_address, &checked.bytes)?;
    progress.update(Stage::Write, plan.bytes.len() as u64);
    progress.finish(Stage::Write);
    let back = read_range(conn, plan.lock_address, 1, progress, Stage::Verify)?;
    if back[0] != 0x00 {
        return Err(Error::Verify {
            address: plan.lock_address,
            detail: format!(
                "the lock byte of block {} reads {:02X} after writing 00: the bootloader ACKed \
                 the write but the flash did not take it; the block is NOT locked",
                plan.block.index, back[0]
            ),
        });
    }
    Ok(OtpLockReport {
        block: plan.block.index,
        lock_address: plan.lock_address,
        written: true,
        verified: true,
    })
}

/// Read the OTP, plan locking block `index` and carry it out (see [`plan_lock`]).
pub fn lock(
    conn: &mut Connection,
    index: usize,
    progress: &mut dyn Progress,
) -> Result<OtpLockReport> {
    let state = read_state(conn, progress)?;
    let plan = plan_lock(&conn.device, &state, index)?;
    for n in &plan.notes {
        progress.note(n.clone());
    }
    lock_block(conn, &plan, progress)
}

/// Where OTP data goes, as the user gives it: at an address, or into a block (resolved with
/// [`OtpLayout::address_in_block`] once the part is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpTarget {
    /// At this address.
    Address(u32),
    /// Into this block (F2/F4/F7) or from this double word on (L4/G0/G4/WB/WL), at this byte
    /// offset.
    Block(usize, u32),
}

/// OTP data checked before the port opens: the bytes, where they go (if known yet), and where
/// they came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpData {
    /// The bytes.
    pub data: Vec<u8>,
    /// Where they go: given, or the address an addressed file carries.
    pub target: Option<OtpTarget>,
    /// `--hex` or the file name.
    pub from: String,
}

/// Load OTP data from hex text or a file, before the port opens. A raw file (`.bin` or an
/// unknown format) needs `given`; an Intel HEX, S-record or ELF file carries its address (one
/// contiguous range), which must agree with a given address and rules out a block.
pub fn load_data(
    hex: Option<&str>,
    file: Option<&std::path::Path>,
    given: Option<OtpTarget>,
) -> Result<OtpData> {
    use crate::image::{Image, ImageError, ImageFormat};
    let invalid = Error::InvalidRequest;
    if let Some(text) = hex {
        let data = parse_hex_bytes(text).map_err(|e| invalid(format!("--hex: {e}")))?;
        return Ok(OtpData {
            data,
            target: given,
            from: "--hex".into(),
        });
    }
    let Some(path) = file else {
        return Err(invalid("give a data file or --hex \"BYTES\"".into()));
    };
    let content = std::fs::read(path).map_err(|e| {
        Error::Image(ImageError::Io {
            path: path.to_path_buf(),
            error: e,
        })
    })?;
    let from = path.display().to_string();
    match ImageFormat::detect(path, &content) {
        None | Some(ImageFormat::Bin) => {
            if content.is_empty() {
                return Err(invalid(format!("{from} is empty: nothing to write")));
            }
            if given.is_none() {
                return Err(invalid(format!(
                    "{from} holds raw bytes with no address: say where they go with --block N \
                     [--offset O] or --address A"
                )));
            }
            Ok(OtpData {
                data: content,
                target: given,
                from,
            })
        }
        Some(_) => {
            let image = Image::load(path, None, None)?;
            let segments: Vec<(u32, &[u8])> = image.segments().collect();
            let [(start, data)] = segments.as_slice() else {
                let list: Vec<String> = segments
                    .iter()
                    .map(|(a, d)| format!("0x{a:08X}+{}", d.len()))
                    .collect();
                return Err(invalid(format!(
                    "{from} holds {} separate ranges ({}): an OTP write takes one contiguous \
                     range, so write them one by one",
                    segments.len(),
                    list.join(", ")
                )));
            };
            match given {
                Some(OtpTarget::Address(a)) if a != *start => {
                    return Err(invalid(format!(
                        "{from} places its data at 0x{start:08X}, but --address says 0x{a:08X}: \
                         drop --address (the file carries its address) or make them agree"
                    )))
                }
                Some(OtpTarget::Block(..)) => {
                    return Err(invalid(format!(
                        "{from} places its data at 0x{start:08X} itself: --block is for raw \
                         data (.bin or --hex)"
                    )))
                }
                _ => {}
            }
            Ok(OtpData {
                data: data.to_vec(),
                target: Some(OtpTarget::Address(*start)),
                from,
            })
        }
    }
}

/// Parse bytes given as hex text: `DE AD BE EF`, `DEADBEEF`, `de:ad:be:ef`, `0xDE,0xAD`.
/// Separators are whitespace, `,`, `:` and `-`; each piece holds an even number of hex digits.
pub fn parse_hex_bytes(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let pieces = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ':' | '-'))
        .filter(|p| !p.is_empty());
    for piece in pieces {
        let digits = piece
            .strip_prefix("0x")
            .or_else(|| piece.strip_prefix("0X"))
            .unwrap_or(piece);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidRequest(format!(
                "'{piece}' is not hex: give bytes as hex digits, e.g. \"DE AD BE EF\" or \
                 DEADBEEF"
            )));
        }
        if digits.len() % 2 != 0 {
            return Err(Error::InvalidRequest(format!(
                "'{piece}' has an odd number of hex digits: give each byte as two digits \
                 (0{digits} or {digits}0?)"
            )));
        }
        for i in (0..digits.len()).step_by(2) {
            let b = u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|e| Error::InvalidRequest(format!("'{piece}' is not hex: {e}")))?;
            out.push(b);
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidRequest(
            "no bytes given: write them as hex digits, e.g. \"DE AD BE EF\"".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;

    fn device(part: &str) -> Device {
        DeviceTable::builtin()
            .expect("test setup")
            .by_part(part)
            .expect("test setup")
            .clone()
    }

    fn blank(d: &Device) -> OtpState {
        let layout = OtpLayout::for_device(d).expect("test setup");
        let locks = vec![0xFF; layout.locks.map(|l| l.len() as usize).unwrap_or(0)];
        OtpState::from_bytes(
            layout.clone(),
            vec![0xFF; layout.data.len() as usize],
            locks,
        )
        .expect("test setup")
    }

    fn set(state: &mut OtpState, addr: u32, bytes: &[u8]) {
        let off = (addr - state.layout.data.start) as usize;
        state.data[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn refusal(r: Result<OtpWritePlan>) -> String {
        match r {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn layouts_follow_the_device_table() {
        let f4 = OtpLayout::for_device(&device("stm32f411")).expect("test setup");
        assert_eq!(f4.scheme, OtpScheme::LockBytes);
        assert_eq!((f4.data.start, f4.data.end), (0x1FFF_7800, 0x1FFF_79FF));
        assert_eq!((f4.unit_size, f4.count), (32, 16));
        let l = f4.locks.expect("test setup");
        assert_eq!((l.start, l.end), (0x1FFF_7A00, 0x1FFF_7A0F));
        assert_eq!((f4.address_align, f4.length_align), (4, 4));
        assert_eq!(f4.lock_address(3), Some(0x1FFF_7A03));
        assert_eq!(f4.block_of(0x1FFF_7861), 3);

        let f7 = OtpLayout::for_device(&device("stm32f746")).expect("test setup");
        assert_eq!((f7.unit_size, f7.count), (64, 16));
        assert_eq!(f7.data.end, 0x1FF0_F3FF);
        assert_eq!(f7.locks.map(|l| l.start), Some(0x1FF0_F400));
        assert_eq!(
            f7.address_align, 8,
            "AN2606 Table 7: F7 writes at 8-byte addresses"
        );

        for part in ["stm32l476", "stm32g071"] {
            let dw = OtpLayout::for_device(&device(part)).expect("test setup");
            assert_eq!(dw.scheme, OtpScheme::WriteOnce);
            assert_eq!((dw.data.start, dw.data.end), (0x1FFF_7000, 0x1FFF_73FF));
            assert_eq!((dw.unit_size, dw.count, dw.locks), (8, 128, None));
            assert_eq!((dw.address_align, dw.length_align), (8, 8));
            assert_eq!(dw.unit_name(), "double word");
        }
        let e = OtpLayout::for_device(&device("stm32f103xb"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no OTP area"), "{e}");
    }

    #[test]
    fn block_states_and_free_space() {
        let d = device("stm32f411");
        let mut s = blank(&d);
        set(&mut s, 0x1FFF_7800, &[0xDE, 0xAD, 0xBE, 0xEF]);
        set(&mut s, 0x1FFF_7820, &[0x00; 32]);
        s.locks[1] = 0x00;
        s.locks[2] = 0x00;
        s.locks[3] = 0x5A;
        let b = s.blocks();
        assert_eq!(
            (b[0].fill, b[0].used_bytes, b[0].lock),
            (Fill::PartlyUsed, 4, LockState::Unlocked)
        );
        assert_eq!(b[0].describe(), "used: 4 of 32 bytes, unlocked");
        assert_eq!((b[1].fill, b[1].lock), (Fill::Used, LockState::Locked));
        assert_eq!(b[2].describe(), "blank, locked");
        assert_eq!(b[3].lock, LockState::Invalid(0x5A));
        assert!(b[0].writable() && !b[1].writable() && !b[2].writable() && !b[3].writable());
        assert!(b[4].writable());
        // Blocks 4-15 blank: 12 free blocks, plus the 28 blank bytes of block 0.
        assert_eq!(s.free(), (12, 12 * 32 + 28));
        let runs: Vec<(usize, usize)> = s.runs().iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(runs, vec![(0, 0), (1, 1), (2, 2), (3, 3), (4, 15)]);
    }

    #[test]
    fn write_once_units_merge_into_runs() {
        let d = device("stm32l476");
        let mut s = blank(&d);
        set(&mut s, 0x1FFF_7000, &[0x11; 16]);
        set(
            &mut s,
            0x1FFF_7018,
            &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        );
        let runs: Vec<(usize, usize, Fill)> = s
            .runs()
            .iter()
            .map(|r| (r.first, r.last, r.block.fill))
            .collect();
        assert_eq!(
            runs,
            vec![
                (0, 1, Fill::Used),
                (2, 2, Fill::Blank),
                (3, 3, Fill::Used),
                (4, 127, Fill::Blank)
            ]
        );
        assert_eq!(s.block(3).describe(), "used (written once)");
        assert_eq!(s.free(), (125, 125 * 8));
    }

    #[test]
    fn a_blank_unlocked_block_plans_a_write() {
        let d = device("stm32f411");
        let s = blank(&d);
        let plan = plan_write(&d, &s, 0x1FFF_7820, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("plan");
        assert_eq!(plan.before.len(), 1);
        assert_eq!(plan.before[0].index, 1);
        assert_eq!(plan.chunks(), vec![(0x1FFF_7820, 0, 8)]);
        assert!(plan.notes.is_empty());
        // Across blocks with --address, in 256-byte commands.
        let data = vec![0x42; 320];
        let plan = plan_write(&d, &s, 0x1FFF_7800, &data).expect("plan");
        assert_eq!(
            plan.before.iter().map(|b| b.index).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(
            plan.chunks(),
            vec![(0x1FFF_7800, 0, 256), (0x1FFF_7900, 256, 64)]
        );
        let plan = plan_write(&d, &s, 0x1FFF_7800, &[0xFF, 0xFF, 0x00, 0xFF]).expect("plan");
        assert!(matches!(&plan.notes[0], Note::Info(m) if m.contains("3 of the 4 bytes are FF")));
    }

    #[test]
    fn used_bytes_are_refused_even_when_only_bits_would_clear() {
        let d = device("stm32f411");
        let mut s = blank(&d);
        set(&mut s, 0x1FFF_7800, &[0xDE, 0xAD, 0xBE, 0xEF]);
        // 0x00 would only clear bits (an AND the F4 hardware accepts), and is still refused.
        let m = refusal(plan_write(&d, &s, 0x1FFF_7800, &[0, 0, 0, 0]));
        assert!(m.contains("is not blank"), "{m}");
        assert!(
            m.contains("0x1FFF7800 holds DE") && m.contains("0x1FFF7803 holds EF"),
            "{m}"
        );
        assert!(m.contains("cannot be") && m.contains("erased"), "{m}");
        // Writing the same bytes again is refused too.
        refusal(plan_write(&d, &s, 0x1FFF_7800, &[0xDE, 0xAD, 0xBE, 0xEF]));
        // The blank rest of a partly used block can still be written.
        let plan = plan_write(&d, &s, 0x1FFF_7804, &[1, 2, 3, 4]).expect("plan");
        assert_eq!(plan.before[0].fill, Fill::PartlyUsed);
        // A long list is cut short.
        set(&mut s, 0x1FFF_7840, &[0u8; 32]);
        let m = refusal(plan_write(&d, &s, 0x1FFF_7840, &[0u8; 32]));
        assert!(
            m.contains("and 24 more") && m.contains("32 of the 32"),
            "{m}"
        );
    }

    #[test]
    fn locked_and_invalid_lock_bytes_are_refused() {
        let d = device("stm32f411");
        let mut s = blank(&d);
        s.locks[2] = 0x00;
        s.locks[5] = 0xA5;
        let m = refusal(plan_write(&d, &s, 0x1FFF_7840, &[1, 2, 3, 4]));
        assert!(
            m.contains("block 2") && m.contains("is locked") && m.contains("0x1FFF7A02"),
            "{m}"
        );
        // A write that starts in an unlocked block and runs into a locked one.
        let m = refusal(plan_write(&d, &s, 0x1FFF_783C, &[1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(m.contains("block 2"), "{m}");
        let m = refusal(plan_write(&d, &s, 0x1FFF_78A0, &[1, 2, 3, 4]));
        assert!(m.contains("0xA5") && m.contains("neither 00"), "{m}");
    }

    #[test]
    fn range_alignment_and_empty_writes_are_refused() {
        let d = device("stm32f411");
        let s = blank(&d);
        let m = refusal(plan_write(&d, &s, 0x1FFF_7800, &[]));
        assert!(m.contains("empty"), "{m}");
        let m = refusal(plan_write(&d, &s, 0x1FFF_7A00, &[0, 0, 0, 0]));
        assert!(m.contains("lock bytes") && m.contains("otp lock"), "{m}");
        let m = refusal(plan_write(&d, &s, 0x1FFF_79FC, &[0; 8]));
        assert!(m.contains("lock bytes"), "{m}");
        let m = refusal(plan_write(&d, &s, 0x0800_0000, &[0; 4]));
        assert!(
            m.contains("outside the OTP data area") && m.contains("0x1FFF7800"),
            "{m}"
        );
        let m = refusal(plan_write(&d, &s, 0x1FFF_77FC, &[0; 8]));
        assert!(m.contains("outside"), "{m}");
        let m = refusal(plan_write(&d, &s, 0x1FFF_7802, &[0; 4]));
        assert!(
            m.contains("not a multiple of 4") && m.contains("0x1FFF7800"),
            "{m}"
        );
        let m = refusal(plan_write(&d, &s, 0x1FFF_7800, &[0; 6]));
        assert!(
            m.contains("6 bytes") && m.contains("multiple of 4") && m.contains("8 bytes"),
            "{m}"
        );
        let f7 = device("stm32f746");
        let m = refusal(plan_write(&f7, &blank(&f7), 0x1FF0_F004, &[0; 4]));
        assert!(m.contains("multiple of 8"), "{m}");
        // A state from another part.
        let m = refusal(plan_write(&f7, &s, 0x1FF0_F000, &[0; 8]));
        assert!(m.contains("read it again"), "{m}");
    }

    #[test]
    fn double_words_are_written_once() {
        for part in ["stm32l476", "stm32g071"] {
            let d = device(part);
            let mut s = blank(&d);
            let plan = plan_write(&d, &s, 0x1FFF_7008, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("plan");
            assert_eq!(plan.before[0].index, 1);
            let m = refusal(plan_write(&d, &s, 0x1FFF_7004, &[0; 8]));
            assert!(
                m.contains("multiple of 8") && m.contains("double words"),
                "{m}"
            );
            let m = refusal(plan_write(&d, &s, 0x1FFF_7000, &[0; 4]));
            assert!(m.contains("multiple of 8"), "{m}");
            // One 0 bit uses the double word up; even an all-zero write is refused.
            set(
                &mut s,
                0x1FFF_7008,
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            );
            let m = refusal(plan_write(&d, &s, 0x1FFF_7008, &[0; 8]));
            assert!(
                m.contains("already written") && m.contains("FF FF FF FF FF FF FF 7F"),
                "{m}"
            );
            assert!(m.contains("only once"), "{m}");
            let m = refusal(plan_write(&d, &s, 0x1FFF_7000, &[0; 16]));
            assert!(m.contains("0x1FFF7008"), "{m}");
            let m = refusal(plan_write(&d, &s, 0x1FFF_7400, &[0; 8]));
            assert!(m.contains("outside"), "{m}");
        }
    }

    #[test]
    fn address_in_block() {
        let f4 = OtpLayout::for_device(&device("stm32f411")).expect("test setup");
        assert_eq!(f4.address_in_block(2, 4, 8).expect("fits"), 0x1FFF_7844);
        let e = f4.address_in_block(2, 28, 8).unwrap_err().to_string();
        assert!(
            e.contains("do not fit in block 2") && e.contains("--address 0x1FFF785C"),
            "{e}"
        );
        let e = f4.address_in_block(16, 0, 4).unwrap_err().to_string();
        assert!(
            e.contains("block 16 does not exist") && e.contains("0-15"),
            "{e}"
        );
        let l4 = OtpLayout::for_device(&device("stm32l476")).expect("test setup");
        // Double words are independent: data may run on into the next ones.
        assert_eq!(l4.address_in_block(3, 0, 32).expect("fits"), 0x1FFF_7018);
        assert!(l4.address_in_block(128, 0, 8).is_err());
    }

    #[test]
    fn lock_plans() {
        let d = device("stm32f411");
        let mut s = blank(&d);
        set(&mut s, 0x1FFF_78A0, &[0; 32]);
        let p = plan_lock(&d, &s, 5).expect("plan");
        assert_eq!(
            (p.lock_address, p.write_address),
            (0x1FFF_7A05, 0x1FFF_7A04)
        );
        assert_eq!(p.bytes, vec![0xFF, 0x00, 0xFF, 0xFF]);
        assert!(!p.already_locked && p.notes.is_empty());
        let p = plan_lock(&d, &s, 6).expect("plan");
        assert!(matches!(&p.notes[0], Note::Warning(m) if m.contains("blank")));
        s.locks[7] = 0x00;
        let p = plan_lock(&d, &s, 7).expect("plan");
        assert!(p.already_locked);
        let e = plan_lock(&d, &s, 16).unwrap_err().to_string();
        assert!(e.contains("0-15"), "{e}");
        let f7 = device("stm32f746");
        let p = plan_lock(&f7, &blank(&f7), 15).expect("plan");
        assert_eq!((p.write_address, p.bytes.len()), (0x1FF0_F408, 8));
        assert_eq!(p.bytes[7], 0x00);
        let l4 = device("stm32l476");
        let e = plan_lock(&l4, &blank(&l4), 0).unwrap_err().to_string();
        assert!(
            e.contains("no lock bytes") && e.contains("locks itself"),
            "{e}"
        );
    }

    #[test]
    fn hex_bytes_parse() {
        assert_eq!(
            parse_hex_bytes("DE AD be ef").expect("hex"),
            vec![0xDE, 0xAD, 0xBE, 0xEF]
        );
        assert_eq!(
            parse_hex_bytes("DEADBEEF").expect("hex"),
            vec![0xDE, 0xAD, 0xBE, 0xEF]
        );
        assert_eq!(
            parse_hex_bytes("0x01,0x02:03-04").expect("hex"),
            vec![1, 2, 3, 4]
        );
        assert!(parse_hex_bytes("").is_err());
        assert!(parse_hex_bytes("ABC")
            .unwrap_err()
            .to_string()
            .contains("odd"));
        assert!(parse_hex_bytes("XY")
            .unwrap_err()
            .to_string()
            .contains("not hex"));
    }
}
