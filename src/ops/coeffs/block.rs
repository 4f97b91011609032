//! Packing and unpacking blocks, recognising what a slot holds, and choosing the slot to write.
//!
//! A block, little-endian throughout:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4 | magic `0x66456F43` (the bytes `C o E f` in memory) |
//! | 4 | 2 | layout version |
//! | 6 | 2 | payload length: bytes from offset 12 up to the CRC word |
//! | 8 | 4 | sequence counter (A/B: the slot with the newer valid block is the active one) |
//! | 12 | … | the fields at their natural alignment, padding bytes 0 |
//! | `crc_offset` | 4 | STM32 CRC-32 of bytes `[0, crc_offset)` |
//!
//! The CRC is the CRC unit's default (polynomial 0x04C11DB7, initial value 0xFFFFFFFF, no
//! reflection, no final XOR) fed one little-endian 32-bit word at a time, as the bootloader's
//! Get Checksum computes it ([`crate::protocol::crc::stm32_crc`]); `crc_offset` is a multiple
//! of 4, so firmware can feed the block's words straight to its CRC unit. Fed the CRC word too,
//! the unit ends at 0.

use super::layout::{ElemType, Layout, HEADER_LEN};
use super::values::{Scalar, Values};
use crate::error::{Error, Result};
use crate::protocol::crc::stm32_crc;

/// The magic word at offset 0: the bytes `C o E f` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CoEf");

/// Pack `values` into a block with this sequence number.
pub fn pack(layout: &Layout, values: &Values, sequence: u32) -> Result<Vec<u8>> {
    values.check(layout)?;
    let mut out = vec![0u8; layout.size() as usize];
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&layout.version.to_le_bytes());
    out[6..8].copy_from_slice(&layout.payload_len().to_le_bytes());
    out[8..12].copy_from_slice(&sequence.to_le_bytes());
    for (i, field) in layout.fields.iter().enumerate() {
        let mut pos = field.offset as usize;
        for elem in values.field(i) {
            let size = field.elem.size() as usize;
            let dst = &mut out[pos..pos + size];
            match (field.elem, elem) {
                (ElemType::U8, Scalar::Unsigned(v)) => {
                    dst.copy_from_slice(&(*v as u8).to_le_bytes())
                }
                (ElemType::U16, Scalar::Unsigned(v)) => {
                    dst.copy_from_slice(&(*v as u16).to_le_bytes())
                }
                (ElemType::U32, Scalar::Unsigned(v)) => {
                    dst.copy_from_slice(&(*v as u32).to_le_bytes())
                }
                (ElemType::U64, Scalar::Unsigned(v)) => dst.copy_from_slice(&v.to_le_bytes()),
                (ElemType::I8, Scalar::Signed(v)) => dst.copy_from_slice(&(*v as i8).to_le_bytes()),
                (ElemType::I16, Scalar::Signed(v)) => {
                    dst.copy_from_slice(&(*v as i16).to_le_bytes())
                }
                (ElemType::I32, Scalar::Signed(v)) => {
                    dst.copy_from_slice(&(*v as i32).to_le_bytes())
                }
                (ElemType::I64, Scalar::Signed(v)) => dst.copy_from_slice(&v.to_le_bytes()),
                (ElemType::F32, Scalar::Float(v)) => {
                    dst.copy_from_slice(&(*v as f32).to_le_bytes())
                }
                (ElemType::F64, Scalar::Float(v)) => dst.copy_from_slice(&v.to_le_bytes()),
                (ElemType::Bytes(_), Scalar::Bytes(b)) => dst.copy_from_slice(b),
                (elem, other) => {
                    return Err(Error::InvalidRequest(format!(
                        "field '{}': {other:?} is not a {} value",
                        field.name,
                        elem.name()
                    )))
                }
            }
            pos += size;
        }
    }
    let crc_at = layout.crc_offset as usize;
    let crc = stm32_crc(&out[..crc_at]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decode the fields of a block (no header or CRC checks: see [`inspect`]).
pub fn unpack(layout: &Layout, block: &[u8]) -> Result<Values> {
    if block.len() < layout.size() as usize {
        return Err(Error::InvalidRequest(format!(
            "a {} block is {} bytes; got {}",
            layout.name,
            layout.size(),
            block.len()
        )));
    }
    let mut fields = Vec::with_capacity(layout.fields.len());
    for field in &layout.fields {
        let size = field.elem.size() as usize;
        let mut elems = Vec::with_capacity(field.elements() as usize);
        for k in 0..field.elements() as usize {
            let at = field.offset as usize + k * size;
            let b = &block[at..at + size];
            let mut w = [0u8; 8];
            w[..size.min(8)].copy_from_slice(&b[..size.min(8)]);
            let raw = u64::from_le_bytes(w);
            elems.push(match field.elem {
                ElemType::U8 | ElemType::U16 | ElemType::U32 | ElemType::U64 => {
                    Scalar::Unsigned(raw)
                }
                ElemType::I8 => Scalar::Signed((raw as u8 as i8).into()),
                ElemType::I16 => Scalar::Signed((raw as u16 as i16).into()),
                ElemType::I32 => Scalar::Signed((raw as u32 as i32).into()),
                ElemType::I64 => Scalar::Signed(raw as i64),
                ElemType::F32 => Scalar::Float(f32::from_bits(raw as u32).into()),
                ElemType::F64 => Scalar::Float(f64::from_bits(raw)),
                ElemType::Bytes(_) => Scalar::Bytes(b.to_vec()),
            });
        }
        fields.push(elems);
    }
    Ok(Values::from_elements(fields))
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotState {
    /// Every byte holds the flash's erased value: nothing was ever written (or the slot was
    /// erased).
    Blank,
    /// A block of this layout with a good CRC.
    Valid {
        /// Its sequence number.
        sequence: u32,
        /// Its CRC.
        crc: u32,
        /// Its values.
        values: Values,
    },
    /// The header of this layout, but the CRC does not match: a write that was cut off, or
    /// damaged flash.
    CrcMismatch {
        /// Sequence number in the header.
        sequence: u32,
        /// CRC stored in the block.
        stored: u32,
        /// CRC of the bytes before it.
        computed: u32,
    },
    /// A block (magic found) of another layout version or size.
    OtherLayout {
        /// Its version.
        version: u16,
        /// Its payload length.
        length: u16,
        /// Its sequence number.
        sequence: u32,
    },
    /// Neither blank nor a block: no magic at offset 0.
    NoBlock {
        /// The first word found.
        word: u32,
    },
}

impl SlotState {
    /// Whether this is a valid block of the layout.
    pub fn is_valid(&self) -> bool {
        matches!(self, SlotState::Valid { .. })
    }

    /// A short word for scripts: `valid`, `blank`, `crc-mismatch`, `other-layout`, `no-block`.
    pub fn code(&self) -> &'static str {
        match self {
            SlotState::Blank => "blank",
            SlotState::Valid { .. } => "valid",
            SlotState::CrcMismatch { .. } => "crc-mismatch",
            SlotState::OtherLayout { .. } => "other-layout",
            SlotState::NoBlock { .. } => "no-block",
        }
    }

    /// What the slot holds, for people.
    pub fn describe(&self, erased: u8) -> String {
        match self {
            SlotState::Blank => format!("blank (all 0x{erased:02X}: no block written)"),
            SlotState::Valid { sequence, crc, .. } => {
                format!("valid, sequence {sequence}, CRC 0x{crc:08X}")
            }
            SlotState::CrcMismatch {
                sequence,
                stored,
                computed,
            } => format!(
                "CRC FAILURE: sequence {sequence}, stored CRC 0x{stored:08X}, computed 0x{computed:08X} \
                 (a write that was cut off, or damaged flash)"
            ),
            SlotState::OtherLayout {
                version,
                length,
                sequence,
            } => format!(
                "a block of another layout (version {version}, {length}-byte payload, sequence \
                 {sequence})"
            ),
            SlotState::NoBlock { word } => {
                format!("no block (0x{word:08X} where the magic 0x{MAGIC:08X} \"CoEf\" belongs)")
            }
        }
    }
}

/// What `bytes` (the slot's `layout.size()` bytes) hold; `erased` is the flash's erased value.
pub fn inspect(layout: &Layout, bytes: &[u8], erased: u8) -> SlotState {
    if bytes.iter().all(|&b| b == erased) {
        return SlotState::Blank;
    }
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .unwrap_or(0)
    };
    let magic = word(0);
    if magic != MAGIC || bytes.len() < HEADER_LEN as usize {
        return SlotState::NoBlock { word: magic };
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let length = u16::from_le_bytes([bytes[6], bytes[7]]);
    let sequence = word(8);
    if length != layout.payload_len() || bytes.len() < layout.size() as usize {
        return SlotState::OtherLayout {
            version,
            length,
            sequence,
        };
    }
    let crc_at = layout.crc_offset as usize;
    let stored = word(crc_at);
    let computed = stm32_crc(&bytes[..crc_at]);
    if stored != computed {
        return SlotState::CrcMismatch {
            sequence,
            stored,
            computed,
        };
    }
    if version != layout.version {
        return SlotState::OtherLayout {
            version,
            length,
            sequence,
        };
    }
    match unpack(layout, bytes) {
        Ok(values) => SlotState::Valid {
            sequence,
            crc: stored,
            values,
        },
        Err(_) => SlotState::NoBlock { word: magic },
    }
}

/// Whether sequence `a` is newer than `b`, with wrap-around (serial-number arithmetic: `a` is
/// newer when it is less than 2^31 ahead).
pub fn is_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The active slot: the valid block with the newest sequence (slot A on a tie).
pub fn active_slot(states: &[SlotState]) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for (i, s) in states.iter().enumerate() {
        if let SlotState::Valid { sequence, .. } = s {
            match best {
                Some((_, b)) if !is_newer(*sequence, b) => {}
                _ => best = Some((i, *sequence)),
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Where the next block goes and its sequence number.
///
/// With one slot: that slot, the valid block's sequence + 1 (1 if none). With two: the slot
/// that is *not* active, so the active block survives until the new one is complete, with the
/// active sequence + 1; if neither slot is valid, slot A with sequence 1, unless slot A holds a
/// block of another layout and slot B does not (then B, so that block is kept).
pub fn next_write(states: &[SlotState]) -> (usize, u32) {
    match active_slot(states) {
        Some(active) => {
            let seq = match &states[active] {
                SlotState::Valid { sequence, .. } => sequence.wrapping_add(1),
                _ => 1,
            };
            let target = if states.len() == 2 {
                1 - active
            } else {
                active
            };
            (target, seq)
        }
        None => {
            let foreign = |s: &SlotState| matches!(s, SlotState::OtherLayout { .. });
            if states.len() == 2 && foreign(&states[0]) && !foreign(&states[1]) {
                (1, 1)
            } else {
                (0, 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::coeffs::testdata::{every_type_layout, EVERY_TYPE_VALUES};
    use crate::protocol::crc::{stm32_crc_with, DEFAULT_INIT, DEFAULT_POLYNOMIAL};

    fn every() -> (Layout, Values) {
        let l = every_type_layout();
        let v = Values::from_toml(&l, EVERY_TYPE_VALUES, "v.toml").expect("test setup");
        (l, v)
    }

    #[test]
    fn pack_unpack_round_trip_of_every_type() {
        let (l, v) = every();
        let block = pack(&l, &v, 42).expect("packs");
        assert_eq!(block.len(), 112);
        assert_eq!(unpack(&l, &block).expect("unpacks"), v);
        match inspect(&l, &block, 0xFF) {
            SlotState::Valid {
                sequence, values, ..
            } => {
                assert_eq!(sequence, 42);
                assert_eq!(values, v);
            }
            other => panic!("not valid: {other:?}"),
        }
    }

    #[test]
    fn block_bytes_are_little_endian_at_the_layout_offsets() {
        let (l, v) = every();
        let b = pack(&l, &v, 0x0102_0304).expect("packs");
        assert_eq!(&b[0..4], b"CoEf");
        assert_eq!(&b[4..6], &7u16.to_le_bytes());
        assert_eq!(&b[6..8], &96u16.to_le_bytes());
        assert_eq!(&b[8..12], &[4, 3, 2, 1]);
        assert_eq!(b[12], 255); // a_u8
        assert_eq!(b[13], 0); // padding
        assert_eq!(&b[14..16], &0xBEEFu16.to_le_bytes());
        assert_eq!(&b[24..32], &u64::MAX.to_le_bytes());
        assert_eq!(&b[40..48], &i64::MIN.to_le_bytes());
        assert_eq!(&b[48..52], &0.1f32.to_le_bytes());
        assert_eq!(&b[56..64], &(-2.5e300f64).to_le_bytes());
        assert_eq!(&b[64..69], b"hi\0\0\0");
        assert_eq!(&b[70..76], &[0xFF, 0xFF, 0, 0, 0x01, 0x80]); // -1, 0, -32767
        assert_eq!(&b[96..102], b"ab\0xyz");
        assert_eq!(&b[102..108], &[0; 6]); // padding before the CRC
    }

    #[test]
    fn the_crc_is_the_stm32_crc_of_the_block_before_it() {
        let (l, v) = every();
        let b = pack(&l, &v, 1).expect("packs");
        let at = l.crc_offset as usize;
        let crc = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        assert_eq!(crc, stm32_crc(&b[..at]));
        assert_eq!(
            crc,
            stm32_crc_with(&b[..at], DEFAULT_POLYNOMIAL, DEFAULT_INIT)
        );
        // The CRC unit fed the whole block, CRC word included, ends at 0.
        assert_eq!(stm32_crc(&b), 0);
    }

    #[test]
    fn slots_are_recognised() {
        let (l, v) = every();
        let good = pack(&l, &v, 9).expect("packs");
        assert_eq!(inspect(&l, &[0xFF; 112], 0xFF), SlotState::Blank);
        assert_eq!(inspect(&l, &[0x00; 112], 0x00), SlotState::Blank);
        // On an L0/L1 (erased = 0x00), all-0xFF is not blank.
        assert_eq!(
            inspect(&l, &[0xFF; 112], 0x00),
            SlotState::NoBlock { word: 0xFFFF_FFFF }
        );
        let mut bad = good.clone();
        bad[60] ^= 0x10;
        match inspect(&l, &bad, 0xFF) {
            SlotState::CrcMismatch {
                sequence,
                stored,
                computed,
            } => {
                assert_eq!(sequence, 9);
                assert_ne!(stored, computed);
                assert!(SlotState::CrcMismatch {
                    sequence,
                    stored,
                    computed
                }
                .describe(0xFF)
                .contains("CRC FAILURE"));
            }
            other => panic!("{other:?}"),
        }
        // Half-programmed: the tail still erased.
        let mut half = good.clone();
        half[56..].fill(0xFF);
        assert!(matches!(
            inspect(&l, &half, 0xFF),
            SlotState::CrcMismatch { .. }
        ));
        let mut other_version = good.clone();
        other_version[4] = 8;
        let at = l.crc_offset as usize;
        let crc = stm32_crc(&other_version[..at]).to_le_bytes();
        other_version[at..at + 4].copy_from_slice(&crc);
        assert_eq!(
            inspect(&l, &other_version, 0xFF),
            SlotState::OtherLayout {
                version: 8,
                length: 96,
                sequence: 9
            }
        );
        let mut other_len = good;
        other_len[6] = 40;
        assert!(matches!(
            inspect(&l, &other_len, 0xFF),
            SlotState::OtherLayout { length: 40, .. }
        ));
        let firmware = vec![0x12; 112];
        assert_eq!(
            inspect(&l, &firmware, 0xFF),
            SlotState::NoBlock { word: 0x1212_1212 }
        );
    }

    #[test]
    fn sequences_compare_with_wrap_around() {
        assert!(is_newer(2, 1));
        assert!(!is_newer(1, 2));
        assert!(!is_newer(5, 5));
        assert!(is_newer(0, u32::MAX));
        assert!(is_newer(3, 0xFFFF_FFF0));
        assert!(!is_newer(0xFFFF_FFF0, 3));
    }

    #[test]
    fn the_next_write_goes_to_the_inactive_slot() {
        let (_, v) = every();
        let valid = |sequence: u32| SlotState::Valid {
            sequence,
            crc: 0,
            values: v.clone(),
        };
        let crc_bad = SlotState::CrcMismatch {
            sequence: 7,
            stored: 1,
            computed: 2,
        };
        let foreign = SlotState::OtherLayout {
            version: 1,
            length: 8,
            sequence: 3,
        };
        use SlotState::Blank;
        assert_eq!(next_write(&[Blank, Blank]), (0, 1));
        assert_eq!(next_write(&[valid(1), Blank]), (1, 2));
        assert_eq!(next_write(&[valid(1), valid(2)]), (0, 3));
        assert_eq!(next_write(&[valid(3), valid(2)]), (1, 4));
        assert_eq!(next_write(&[valid(5), crc_bad.clone()]), (1, 6));
        assert_eq!(next_write(&[crc_bad.clone(), valid(6)]), (0, 7));
        assert_eq!(next_write(&[valid(u32::MAX), valid(u32::MAX - 1)]), (1, 0));
        assert_eq!(next_write(&[valid(0), valid(u32::MAX)]), (1, 1));
        assert_eq!(next_write(&[crc_bad.clone(), Blank]), (0, 1));
        assert_eq!(next_write(&[foreign.clone(), Blank]), (1, 1));
        assert_eq!(next_write(&[Blank, foreign.clone()]), (0, 1));
        assert_eq!(next_write(&[valid(4)]), (0, 5));
        assert_eq!(next_write(&[crc_bad]), (0, 1));
        assert_eq!(active_slot(&[valid(2), valid(2)]), Some(0));
        assert_eq!(active_slot(&[foreign, Blank]), None);
    }

    #[test]
    fn values_that_do_not_fit_are_not_packed() {
        let (l, _) = every();
        let wrong = Values::from_elements(vec![vec![Scalar::Unsigned(1)]]);
        assert!(pack(&l, &wrong, 1).is_err());
    }
}
