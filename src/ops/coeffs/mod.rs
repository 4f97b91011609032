//! Coefficient blocks: typed calibration data in flash, with a header, a CRC the chip's own CRC
//! unit can check, and optional A/B storage that keeps a valid block through a power cut.
//!
//! - [`layout`]: the layout file (TOML): block name, version, slot address(es), typed fields
//!   (u8–u64, i8–i64, f32, f64, fixed-length byte strings, arrays of any of them), placed
//!   little-endian at natural alignment after a 12-byte header;
//! - [`values`]: values from TOML, JSON or CSV, range-checked per type, and per-unit CSV tables
//!   keyed by the chip's unique ID or a serial-number column;
//! - [`block`]: the block format (magic `"CoEf"`, layout version, payload length, sequence
//!   counter, fields, STM32 CRC-32 of everything before the CRC word), recognition of blank and
//!   damaged slots, and the A/B rules;
//! - [`header`]: a C header with the struct, addresses, sizes and CRC parameters for the
//!   firmware.
//!
//! All of that is pure. The chip operations here ([`read_slots`], [`plan_write`],
//! [`write_block`]) go through [`crate::ops::flash`]: slots are read with
//! [`flash::read_memory`], and a block is written with [`flash::write_image`], so the rest of its
//! page is read, journalled and written back (page-safe), and the write is verified.
//!
//! **A/B storage** (`slots = 2`): both slots are read; the valid block with the newer sequence
//! (wrap-around compare) is active; a write goes to the other slot with sequence + 1, so the
//! active block is never erased before its successor is complete. With no valid block, slot A
//! gets sequence 1 (slot B if A holds a block of another layout and B does not). The slots must
//! not share a flash page: [`layout::check_device`] refuses such a layout before anything is
//! written. A journal left by an interrupted write is finished before the slots are read, so the
//! choice is made on what the chip will hold.

pub mod block;
pub mod header;
pub mod layout;
pub mod values;

pub use block::{SlotState, MAGIC};
pub use layout::{check_device, slot_name, ElemType, Field, Layout};
pub use values::{Scalar, Table, TableKey, Values};

use crate::error::{Error, Result};
use crate::image::Image;
use crate::ops::connect::Connection;
use crate::ops::flash::{self, WriteOptions, WriteReport};
use crate::ops::plan::FlashPlan;
use crate::ops::progress::{Note, Progress};

/// One slot as read from the chip.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotReport {
    /// Address of the slot.
    pub address: u32,
    /// What it holds.
    pub state: SlotState,
}

/// Both (or the one) slots of a layout as read from the chip.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadReport {
    /// Slots in layout order (A, then B).
    pub slots: Vec<SlotReport>,
    /// Index of the active slot: the valid block with the newest sequence.
    pub active: Option<usize>,
    /// The flash's erased value (what a blank slot holds).
    pub erased: u8,
}

impl ReadReport {
    /// The active block's sequence and values.
    pub fn active_block(&self) -> Option<(usize, u32, &Values)> {
        let i = self.active?;
        match &self.slots.get(i)?.state {
            SlotState::Valid {
                sequence, values, ..
            } => Some((i, *sequence, values)),
            _ => None,
        }
    }

    /// One line per slot: its name, address and what it holds.
    pub fn slot_lines(&self) -> Vec<String> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "slot {} at 0x{:08X}: {}",
                    slot_name(i),
                    s.address,
                    s.state.describe(self.erased)
                )
            })
            .collect()
    }

    /// Why there is no valid block, naming each slot (for the error when none is found).
    pub fn why_none(&self, layout: &Layout) -> String {
        let parts = self.slot_lines();
        format!(
            "no valid {} block (layout version {}): {}",
            layout.name,
            layout.version,
            parts.join("; ")
        )
    }
}

/// Read every slot of `layout` and say what each holds.
pub fn read_slots(
    conn: &mut Connection,
    layout: &Layout,
    progress: &mut dyn Progress,
) -> Result<ReadReport> {
    if conn.read_protected {
        return Err(Error::InvalidRequest(
            "read protection is active: the coefficient block cannot be read".into(),
        ));
    }
    let erased = conn.device.rules.erased;
    let mut slots = Vec::with_capacity(layout.slots.len());
    for &address in &layout.slots {
        let bytes = flash::read_memory_stable(conn, address, layout.size(), progress)?;
        slots.push(SlotReport {
            address,
            state: block::inspect(layout, &bytes, erased),
        });
    }
    let states: Vec<SlotState> = slots.iter().map(|s| s.state.clone()).collect();
    Ok(ReadReport {
        active: block::active_slot(&states),
        slots,
        erased,
    })
}

/// What a block write will do.
#[derive(Debug, Clone)]
pub struct WritePlan {
    /// The slot written (0 = A, 1 = B).
    pub slot: usize,
    /// Its address.
    pub address: u32,
    /// The new block's sequence number.
    pub sequence: u32,
    /// The new block.
    pub block: Vec<u8>,
    /// Its CRC.
    pub crc: u32,
    /// The slots before the write.
    pub before: ReadReport,
    /// The flash plan for the block alone (the page-safe write reads and rewrites the
    /// partly covered pages it lists).
    pub flash: FlashPlan,
}

impl WritePlan {
    /// The block as an image at its slot.
    pub fn image(&self) -> Result<Image> {
        Image::from_bin(&self.block, self.address).map_err(Error::Image)
    }
}

/// Check the layout against the chip, read the slots, and decide where the block goes (changes
/// nothing).
pub fn plan_write(
    conn: &mut Connection,
    layout: &Layout,
    values: &Values,
    progress: &mut dyn Progress,
) -> Result<WritePlan> {
    check_device(layout, &conn.device)?;
    values.check(layout)?;
    let before = read_slots(conn, layout, progress)?;
    let states: Vec<SlotState> = before.slots.iter().map(|s| s.state.clone()).collect();
    let (slot, sequence) = block::next_write(&states);
    let data = block::pack(layout, values, sequence)?;
    let at = layout.crc_offset as usize;
    let crc = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let address = layout.slots[slot];
    let image = Image::from_bin(&data, address).map_err(Error::Image)?;
    let fplan = flash::plan_write(conn, &image, &flash::plan_options(conn))?;
    Ok(WritePlan {
        slot,
        address,
        sequence,
        block: data,
        crc,
        before,
        flash: fplan,
    })
}

/// What [`write_block`] did.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The plan it carried out.
    pub plan: WritePlan,
    /// The flash write.
    pub report: WriteReport,
    /// Pages of an earlier, interrupted write that were finished first.
    pub finished_pages: usize,
}

/// Write a block: finish an interrupted write from the journal (if `options.journal`), read the
/// slots, write the new block to the slot [`block::next_write`] picks with
/// [`flash::write_image`] (page-safe with `options.preserve`, journalled with
/// `options.journal`), then read the slot back and check that it holds the new block.
pub fn write_block(
    conn: &mut Connection,
    layout: &Layout,
    values: &Values,
    options: &WriteOptions,
    progress: &mut dyn Progress,
) -> Result<WriteOutcome> {
    check_device(layout, &conn.device)?;
    values.check(layout)?;
    let mut finished_pages = 0;
    if let Some(dir) = &options.journal {
        let mut journal = flash::open_journal(conn, dir)?;
        if !journal.pending().is_empty() {
            progress.note(Note::Warning(format!(
                "an earlier write to this chip did not finish ({} page(s) in {}): finishing it \
                 before reading the slots",
                journal.pending().len(),
                journal.path().display()
            )));
            finished_pages =
                flash::recover(conn, &mut journal, flash::RecoverMode::Finish, progress)?.len();
        }
    }
    let plan = plan_write(conn, layout, values, progress)?;
    let report = flash::write_image(conn, &plan.image()?, options, progress)?;
    let back = flash::read_memory_stable(conn, plan.address, layout.size(), progress)?;
    match block::inspect(layout, &back, conn.device.rules.erased) {
        SlotState::Valid { sequence, .. } if sequence == plan.sequence => {}
        other => {
            return Err(Error::Verify {
                address: plan.address,
                detail: format!(
                    "slot {} should hold the new block (sequence {}), but holds {}",
                    slot_name(plan.slot),
                    plan.sequence,
                    other.describe(conn.device.rules.erased)
                ),
            })
        }
    }
    Ok(WriteOutcome {
        plan,
        report,
        finished_pages,
    })
}

#[cfg(test)]
pub(crate) mod testdata {
    use super::Layout;

    /// A layout with every type, arrays and byte strings, and A/B slots 16 KiB apart.
    pub const EVERY_TYPE_LAYOUT: &str = r#"
name = "every_type"
version = 7
address = 0x08010000
slots = 2
slot_size = 0x4000

[[field]]
name = "a_u8"
type = "u8"
[[field]]
name = "a_u16"
type = "u16"
[[field]]
name = "a_u32"
type = "u32"
[[field]]
name = "a_u64"
type = "u64"
[[field]]
name = "a_i8"
type = "i8"
[[field]]
name = "a_i16"
type = "i16"
[[field]]
name = "a_i32"
type = "i32"
[[field]]
name = "a_i64"
type = "i64"
[[field]]
name = "a_f32"
type = "f32"
[[field]]
name = "a_f64"
type = "f64"
[[field]]
name = "label"
type = "bytes"
len = 5
[[field]]
name = "arr_i16"
type = "i16"
count = 3
[[field]]
name = "arr_f64"
type = "f64"
count = 2
[[field]]
name = "names"
type = "bytes"
len = 3
count = 2
"#;

    /// Values for [`EVERY_TYPE_LAYOUT`], with the extremes of the 64-bit types.
    pub const EVERY_TYPE_VALUES: &str = r#"
a_u8 = 255
a_u16 = 0xBEEF
a_u32 = 4000000000
a_u64 = "0xFFFF_FFFF_FFFF_FFFF"
a_i8 = -128
a_i16 = -300
a_i32 = -2000000000
a_i64 = -9223372036854775808
a_f32 = 0.1
a_f64 = -2.5e300
label = "hi"
arr_i16 = [-1, 0, -32767]
arr_f64 = [1.5, -0.25]
names = ["ab", [120, 121, 122]]
"#;

    /// [`EVERY_TYPE_LAYOUT`], parsed.
    pub fn every_type_layout() -> Layout {
        Layout::from_toml(EVERY_TYPE_LAYOUT, "every_type.toml").expect("test setup")
    }
}
