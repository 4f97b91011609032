//! Option-byte layouts as data: where each option register sits in the option-byte windows,
//! where its complement is, and the named fields inside it (RDP, BOR, watchdog and reset bits,
//! boot bits, bank bits, write protection, PCROP).
//!
//! A layout is declared in the device table (`[ob_layout.NAME]`), may build on another one
//! (`base`), and is chosen per family or per part (`ob_layout = "NAME"`). This module only
//! interprets the bytes: [`ObImage`] holds what was read from the windows, [`ObLayout`] reads and
//! changes named fields in it and rewrites complements. Nothing here talks to a chip.

use super::AddrRange;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Who writes the complement half of each option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Complements {
    /// The host writes value and complement; the option loader compares them (F0/F1/F3, L0/L1,
    /// L4, G4, WB, WL).
    Host,
    /// The flash controller computes the complement itself (F2/F4/F7, G0): what the host sends in
    /// the complement positions is ignored.
    Chip,
}

/// What the option loader does with a value whose complement does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mismatch {
    /// The value loads as all ones (`FF`): on F0/F1 this means read protection (devices.md §7.1).
    Ones,
    /// A secure configuration that may lock the device for good (G0, RM0444).
    Lock,
}

/// How a field's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    /// One bit.
    Flag,
    /// A number (user data, PCROP addresses, WRP area bounds, sizes).
    Number,
    /// A number whose values have names (`values`).
    Choice,
    /// The read-protection byte: `AA` level 0, `CC` level 2, anything else level 1 (F1: `A5`
    /// level 0, anything else level 1).
    Rdp,
    /// One write-protection bit per sector or per `unit` bytes.
    WrpMask,
}

/// One option register: value bytes (little-endian, at `bytes` offsets inside `window`) and
/// their complements `complement` bytes further on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObRegister {
    /// Name (`OPTR`, `USER`, `WRP1A`).
    pub name: String,
    /// Which option-byte window of the part (0 = the first).
    pub window: usize,
    /// Offsets of the value bytes from the window's base, least significant first.
    pub bytes: Vec<u32>,
    /// Distance from each value byte to its complement, if the family stores one.
    pub complement: Option<u32>,
}

/// One named field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObField {
    /// Name as the reference manuals spell it (`BFB2`, `nBOOT0`).
    pub name: String,
    /// Register holding it.
    pub register: String,
    /// Lowest bit.
    pub lo: u8,
    /// Highest bit (inclusive).
    pub hi: u8,
    /// How to read it.
    pub kind: FieldKind,
    /// What it does, in a line.
    pub doc: String,
    /// Meaning of particular values.
    pub values: BTreeMap<u64, String>,
    /// For write-protection masks: bytes covered by one bit (else one bit per erase unit).
    pub unit: Option<u32>,
    /// For write-protection masks: the sector the lowest bit covers.
    pub first: u32,
    /// For write-protection masks: the bit value that means "protected".
    pub protected_when: u8,
    /// For write-protection masks: the last bit also covers everything after it (F1 WRP3 bit 7).
    pub last_covers_rest: bool,
    /// Whether changing it by name is refused (read-only or reserved for the chip).
    pub read_only: bool,
}

/// A start/end pair of fields that protects a range of pages in one bank.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObArea {
    /// Name (`WRP1A`).
    pub name: String,
    /// Field with the first page (relative to the bank).
    pub start: String,
    /// Field with the last page (inclusive).
    pub end: String,
    /// Bank, from 1.
    pub bank: u8,
    /// Write protection (`true`) or PCROP.
    pub write_protect: bool,
}

/// A resolved option-byte layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObLayout {
    /// Layout name in the table.
    pub name: String,
    /// Who writes complements.
    pub complements: Complements,
    /// What a mismatched pair does at load.
    pub mismatch: Mismatch,
    /// Registers.
    pub registers: Vec<ObRegister>,
    /// Fields.
    pub fields: Vec<ObField>,
    /// Protected areas.
    pub areas: Vec<ObArea>,
    /// Remarks shown under the decoded fields (e.g. what is unverified).
    pub notes: Vec<String>,
    /// The field and value that make the chip boot bank 2 (BFB2 = 1; F1 XL BFB2 = 0; G0
    /// nSWAP_BANK = 0), on dual-bank parts.
    pub boot_bank2: Option<BankSwap>,
}

/// The option that makes a dual-bank part boot its second bank.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankSwap {
    /// Field name.
    pub field: String,
    /// The value that selects bank 2.
    pub value: u64,
}

// ---- TOML schema -----------------------------------------------------------------------------

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LayoutEntry {
    base: Option<String>,
    complements: Option<Complements>,
    mismatch: Option<Mismatch>,
    #[serde(default)]
    register: Vec<RegisterEntry>,
    #[serde(default)]
    field: Vec<FieldEntry>,
    #[serde(default)]
    area: Vec<AreaEntry>,
    #[serde(default)]
    notes: Vec<String>,
    boot_bank2: Option<BankSwap>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RegisterEntry {
    name: String,
    #[serde(default)]
    window: usize,
    bytes: Vec<u32>,
    complement: Option<u32>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct FieldEntry {
    name: String,
    register: String,
    bits: String,
    kind: Option<FieldKind>,
    doc: String,
    #[serde(default)]
    values: BTreeMap<String, String>,
    unit: Option<u32>,
    #[serde(default)]
    first: u32,
    protected_when: Option<u8>,
    #[serde(default)]
    last_covers_rest: bool,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct AreaEntry {
    name: String,
    start: String,
    end: String,
    bank: u8,
    #[serde(default = "yes")]
    write_protect: bool,
}

fn yes() -> bool {
    true
}

fn parse_bits(s: &str) -> Result<(u8, u8), String> {
    let bit = |t: &str| {
        t.trim()
            .parse::<u8>()
            .ok()
            .filter(|b| *b < 64)
            .ok_or_else(|| format!("'{s}' is not a bit number or a HI:LO range"))
    };
    match s.split_once(':') {
        Some((hi, lo)) => {
            let (hi, lo) = (bit(hi)?, bit(lo)?);
            if hi < lo {
                return Err(format!("bits '{s}': write the high bit first"));
            }
            Ok((lo, hi))
        }
        None => {
            let b = bit(s)?;
            Ok((b, b))
        }
    }
}

fn parse_value_key(k: &str) -> Result<u64, String> {
    let t = k.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("value key '{k}' is not a number"))
}

/// Resolve layout `name` from the table's entries (following `base` chains).
pub(super) fn resolve(
    name: &str,
    entries: &BTreeMap<String, LayoutEntry>,
) -> Result<ObLayout, String> {
    let mut chain = Vec::new();
    let mut cur = Some(name.to_string());
    while let Some(n) = cur {
        if chain.iter().any(|(c, _): &(String, &LayoutEntry)| *c == n) {
            return Err(format!("ob_layout {name}: `base` goes round in a circle"));
        }
        let e = entries
            .get(&n)
            .ok_or_else(|| format!("ob_layout {n} is not defined"))?;
        cur = e.base.clone();
        chain.push((n, e));
    }
    let mut out = ObLayout {
        name: name.to_string(),
        complements: Complements::Host,
        mismatch: Mismatch::Ones,
        registers: Vec::new(),
        fields: Vec::new(),
        areas: Vec::new(),
        notes: Vec::new(),
        boot_bank2: None,
    };
    // From the root base to the layout itself: later entries add to or replace earlier ones.
    for (n, e) in chain.iter().rev() {
        let who = format!("ob_layout {n}");
        if let Some(c) = e.complements {
            out.complements = c;
        }
        if let Some(m) = e.mismatch {
            out.mismatch = m;
        }
        for r in &e.register {
            if r.bytes.is_empty() || r.bytes.len() > 8 {
                return Err(format!("{who}: register {} needs 1 to 8 bytes", r.name));
            }
            out.registers.retain(|x| x.name != r.name);
            out.registers.push(ObRegister {
                name: r.name.clone(),
                window: r.window,
                bytes: r.bytes.clone(),
                complement: r.complement,
            });
        }
        for f in &e.field {
            let (lo, hi) = parse_bits(&f.bits).map_err(|m| format!("{who}: {}: {m}", f.name))?;
            let reg = out
                .registers
                .iter()
                .find(|r| r.name == f.register)
                .ok_or_else(|| {
                    format!(
                        "{who}: field {} names unknown register {}",
                        f.name, f.register
                    )
                })?;
            if usize::from(hi) >= reg.bytes.len() * 8 {
                return Err(format!(
                    "{who}: field {} (bits {}) does not fit register {}",
                    f.name, f.bits, f.register
                ));
            }
            let mut values = BTreeMap::new();
            for (k, v) in &f.values {
                values.insert(
                    parse_value_key(k).map_err(|m| format!("{who}: {}: {m}", f.name))?,
                    v.clone(),
                );
            }
            let kind = f.kind.unwrap_or(if lo == hi {
                FieldKind::Flag
            } else if values.is_empty() {
                FieldKind::Number
            } else {
                FieldKind::Choice
            });
            out.fields.retain(|x| x.name != f.name);
            out.fields.push(ObField {
                name: f.name.clone(),
                register: f.register.clone(),
                lo,
                hi,
                kind,
                doc: f.doc.clone(),
                values,
                unit: f.unit,
                first: f.first,
                protected_when: f.protected_when.unwrap_or(0),
                last_covers_rest: f.last_covers_rest,
                read_only: f.read_only,
            });
        }
        for a in &e.area {
            for fname in [&a.start, &a.end] {
                if !out.fields.iter().any(|f| f.name == *fname) {
                    return Err(format!(
                        "{who}: area {} names unknown field {fname}",
                        a.name
                    ));
                }
            }
            out.areas.retain(|x| x.name != a.name);
            out.areas.push(ObArea {
                name: a.name.clone(),
                start: a.start.clone(),
                end: a.end.clone(),
                bank: a.bank,
                write_protect: a.write_protect,
            });
        }
        out.notes.extend(e.notes.iter().cloned());
        if let Some(b) = &e.boot_bank2 {
            if !out.fields.iter().any(|f| f.name == b.field) {
                return Err(format!("{who}: boot_bank2 names unknown field {}", b.field));
            }
            out.boot_bank2 = Some(b.clone());
        }
    }
    Ok(out)
}

// ---- The bytes ---------------------------------------------------------------------------------

/// The contents of a part's option-byte windows, as read from the chip (or as a simulated chip
/// holds them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObImage {
    /// Each window's first address and bytes, in the order of the device's windows.
    pub windows: Vec<(u32, Vec<u8>)>,
}

impl ObImage {
    /// An image from the device's windows and their bytes.
    pub fn new(windows: Vec<(u32, Vec<u8>)>) -> ObImage {
        ObImage { windows }
    }

    /// The byte at `offset` in `window`.
    pub fn byte(&self, window: usize, offset: u32) -> Option<u8> {
        self.windows
            .get(window)
            .and_then(|(_, b)| b.get(offset as usize).copied())
    }

    fn set_byte(&mut self, window: usize, offset: u32, value: u8) -> bool {
        match self
            .windows
            .get_mut(window)
            .and_then(|(_, b)| b.get_mut(offset as usize))
        {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// The byte at an absolute address.
    pub fn at(&self, addr: u32) -> Option<u8> {
        self.windows.iter().find_map(|(base, b)| {
            let off = addr.checked_sub(*base)? as usize;
            b.get(off).copied()
        })
    }
}

/// Why a field cannot take a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// No field of that name; the valid names follow.
    UnknownField(Vec<String>),
    /// The field is there in the layout but not in this part's windows.
    Absent,
    /// The field cannot be changed by name.
    ReadOnly,
    /// The value does not fit; the text says what does.
    BadValue(String),
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::UnknownField(names) => {
                write!(f, "unknown option; valid names: {}", names.join(", "))
            }
            SetError::Absent => f.write_str("this part's option bytes do not hold it"),
            SetError::ReadOnly => f.write_str("it cannot be changed by name"),
            SetError::BadValue(m) => f.write_str(m),
        }
    }
}

/// A field read from an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldValue {
    /// Field name.
    pub name: String,
    /// Register holding it.
    pub register: String,
    /// Bits, as `HI:LO` or `N`.
    pub bits: String,
    /// Its value.
    pub value: u64,
    /// What the value means.
    pub meaning: String,
    /// What the field does.
    pub doc: String,
}

/// A register read from an image, with its complement check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegisterValue {
    /// Name.
    pub name: String,
    /// Address of its first value byte.
    pub address: u32,
    /// Value.
    pub value: u64,
    /// Complement as stored, if the family stores one.
    pub complement: Option<u64>,
    /// Whether the complement matches (`None` if there is none).
    pub complement_ok: Option<bool>,
}

fn mask(lo: u8, hi: u8) -> u64 {
    let width = u32::from(hi - lo) + 1;
    if width >= 64 {
        u64::MAX
    } else {
        ((1u64 << width) - 1) << lo
    }
}

impl ObLayout {
    /// The register called `name`.
    pub fn register(&self, name: &str) -> Option<&ObRegister> {
        self.registers.iter().find(|r| r.name == name)
    }

    /// The field called `name` (case-insensitive).
    pub fn field(&self, name: &str) -> Option<&ObField> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Whether `image` holds every byte of `reg`.
    pub fn present(&self, reg: &ObRegister, image: &ObImage) -> bool {
        reg.bytes.iter().all(|o| {
            image.byte(reg.window, *o).is_some()
                && reg
                    .complement
                    .is_none_or(|c| image.byte(reg.window, o + c).is_some())
        })
    }

    /// The register's value, if the image holds it.
    pub fn register_value(&self, reg: &ObRegister, image: &ObImage) -> Option<u64> {
        let mut v = 0u64;
        for (i, o) in reg.bytes.iter().enumerate() {
            v |= u64::from(image.byte(reg.window, *o)?) << (8 * i);
        }
        Some(v)
    }

    fn complement_value(&self, reg: &ObRegister, image: &ObImage) -> Option<u64> {
        let c = reg.complement?;
        let mut v = 0u64;
        for (i, o) in reg.bytes.iter().enumerate() {
            v |= u64::from(image.byte(reg.window, o + c)?) << (8 * i);
        }
        Some(v)
    }

    /// Every register the image holds, with its complement check.
    pub fn registers_in(&self, image: &ObImage) -> Vec<RegisterValue> {
        self.registers
            .iter()
            .filter(|r| self.present(r, image))
            .filter_map(|r| {
                let value = self.register_value(r, image)?;
                let complement = self.complement_value(r, image);
                let width_mask = mask(0, (r.bytes.len() * 8 - 1) as u8);
                Some(RegisterValue {
                    name: r.name.clone(),
                    address: image.windows[r.window].0 + r.bytes[0],
                    value,
                    complement,
                    complement_ok: complement.map(|c| c == !value & width_mask),
                })
            })
            .collect()
    }

    /// The raw value of field `f`, if the image holds its register.
    pub fn value(&self, f: &ObField, image: &ObImage) -> Option<u64> {
        let reg = self.register(&f.register)?;
        if !self.present(reg, image) {
            return None;
        }
        Some((self.register_value(reg, image)? & mask(f.lo, f.hi)) >> f.lo)
    }

    /// The raw value of the field called `name`.
    pub fn value_of(&self, name: &str, image: &ObImage) -> Option<u64> {
        self.value(self.field(name)?, image)
    }

    /// Where a one-bit field sits: the absolute address of its byte and the bit mask, given the
    /// device's windows.
    pub fn bit_location(&self, name: &str, windows: &[AddrRange]) -> Option<(u32, u8)> {
        let f = self.field(name)?;
        if f.lo != f.hi {
            return None;
        }
        let reg = self.register(&f.register)?;
        let off = *reg.bytes.get(usize::from(f.lo / 8))?;
        let base = windows.get(reg.window)?;
        Some((base.start + off, 1 << (f.lo % 8)))
    }

    /// Fields this image holds, decoded. `rdp_unprotected` is the family's level-0 value.
    pub fn decode(&self, image: &ObImage, rdp_unprotected: u8) -> Vec<FieldValue> {
        self.fields
            .iter()
            .filter_map(|f| {
                let value = self.value(f, image)?;
                Some(FieldValue {
                    name: f.name.clone(),
                    register: f.register.clone(),
                    bits: if f.lo == f.hi {
                        f.lo.to_string()
                    } else {
                        format!("{}:{}", f.hi, f.lo)
                    },
                    value,
                    meaning: self.meaning(f, value, rdp_unprotected),
                    doc: f.doc.clone(),
                })
            })
            .collect()
    }

    /// What `value` of field `f` means, in words.
    pub fn meaning(&self, f: &ObField, value: u64, rdp_unprotected: u8) -> String {
        if let Some(m) = f.values.get(&value) {
            return m.clone();
        }
        match f.kind {
            FieldKind::Rdp => match rdp_level(value as u8, rdp_unprotected) {
                0 => "level 0: no read protection".into(),
                2 => {
                    "level 2: chip locked for good (no debug, no bootloader reads or writes)".into()
                }
                _ => "level 1: flash unreadable over the bootloader and debug".into(),
            },
            FieldKind::WrpMask => {
                let width = u32::from(f.hi - f.lo) + 1;
                let bits: Vec<u32> = (0..width)
                    .filter(|i| (value >> i) & 1 == u64::from(f.protected_when))
                    .collect();
                if bits.is_empty() {
                    "nothing write-protected".into()
                } else {
                    let what = if f.unit.is_some() { "unit" } else { "sector" };
                    let list: Vec<String> =
                        bits.iter().map(|b| (b + f.first).to_string()).collect();
                    format!(
                        "write-protected {what}{}: {}",
                        if bits.len() > 1 { "s" } else { "" },
                        list.join(", ")
                    )
                }
            }
            FieldKind::Flag => {
                if value == 1 {
                    "set".into()
                } else {
                    "clear".into()
                }
            }
            FieldKind::Choice => "reserved value".into(),
            FieldKind::Number => format!("{value} (0x{value:X})"),
        }
    }

    /// Change field `name` to `value` in `image` (the complement is rewritten too).
    pub fn set(&self, image: &mut ObImage, name: &str, value: u64) -> Result<(), SetError> {
        let f = self
            .field(name)
            .ok_or_else(|| SetError::UnknownField(self.settable_names(image)))?;
        if f.read_only {
            return Err(SetError::ReadOnly);
        }
        let reg = self.register(&f.register).ok_or(SetError::Absent)?;
        if !self.present(reg, image) {
            return Err(SetError::Absent);
        }
        let width = u32::from(f.hi - f.lo) + 1;
        let max = if width >= 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        if value > max {
            return Err(SetError::BadValue(format!(
                "{} is {width} bit{} wide: 0 to {max} (0x{max:X})",
                f.name,
                if width > 1 { "s" } else { "" }
            )));
        }
        let old = self.register_value(reg, image).ok_or(SetError::Absent)?;
        let new = (old & !mask(f.lo, f.hi)) | (value << f.lo);
        self.write_register(reg, image, new);
        Ok(())
    }

    fn write_register(&self, reg: &ObRegister, image: &mut ObImage, value: u64) {
        for (i, o) in reg.bytes.iter().enumerate() {
            let b = (value >> (8 * i)) as u8;
            image.set_byte(reg.window, *o, b);
            if let Some(c) = reg.complement {
                image.set_byte(reg.window, o + c, !b);
            }
        }
    }

    /// Rewrite every complement from its value (what a correct option-byte block holds).
    pub fn fix_complements(&self, image: &mut ObImage) {
        for reg in &self.registers {
            if let Some(v) = self.register_value(reg, image) {
                self.write_register(reg, image, v);
            }
        }
    }

    /// Names of the fields this image holds that can be changed.
    pub fn settable_names(&self, image: &ObImage) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| !f.read_only && self.value(f, image).is_some())
            .map(|f| f.name.clone())
            .collect()
    }

    /// Option values as the option loader would load them: a mismatched pair becomes all ones
    /// (families where the host writes complements and a mismatch loads as `FF`). Returns the
    /// loaded image and the names of the registers that did not match.
    pub fn loaded(&self, image: &ObImage) -> (ObImage, Vec<String>) {
        let mut out = image.clone();
        let mut bad = Vec::new();
        if self.complements == Complements::Chip {
            return (out, bad);
        }
        for r in self.registers_in(image) {
            if r.complement_ok == Some(false) {
                if let Some(reg) = self.register(&r.name) {
                    if self.mismatch == Mismatch::Ones {
                        for o in &reg.bytes {
                            out.set_byte(reg.window, *o, 0xFF);
                        }
                    }
                }
                bad.push(r.name);
            }
        }
        (out, bad)
    }
}

/// The read-protection level an RDP byte means (0, 1 or 2).
pub fn rdp_level(value: u8, unprotected: u8) -> u8 {
    if value == unprotected {
        0
    } else if value == 0xCC && unprotected == 0xAA {
        2
    } else {
        1
    }
}

/// The range a window covers, clipped to what a single Write Memory can carry: the whole window
/// if it is at most 256 bytes, else the bytes up to the last register (rounded up to 8).
pub fn write_span(layout: &ObLayout, window: usize, range: AddrRange) -> u32 {
    let len = range.len() as u32;
    if len <= 256 {
        return len;
    }
    let last = layout
        .registers
        .iter()
        .filter(|r| r.window == window)
        .flat_map(|r| {
            r.bytes
                .iter()
                .map(move |o| o + r.complement.unwrap_or(0) + 1)
        })
        .max()
        .unwrap_or(8);
    last.div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(text: &str) -> ObLayout {
        let entries: BTreeMap<String, LayoutEntry> = toml::from_str(text).expect("test setup");
        resolve("T", &entries).expect("test setup")
    }

    const F0: &str = r#"
[T]
register = [
  { name = "RDP", bytes = [0], complement = 1 },
  { name = "USER", bytes = [2], complement = 1 },
  { name = "WRP", bytes = [8, 10, 12, 14], complement = 1 },
]
field = [
  { name = "RDP", register = "RDP", bits = "7:0", kind = "rdp", doc = "read protection" },
  { name = "nRST_STOP", register = "USER", bits = "1", doc = "reset on Stop", values = { 0 = "reset", 1 = "no reset" } },
  { name = "WRP", register = "WRP", bits = "31:0", kind = "wrp-mask", unit = 4096, doc = "write protection" },
]
"#;

    fn f0_image() -> ObImage {
        ObImage::new(vec![(
            0x1FFF_F800,
            vec![
                0xAA, 0x55, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFE, 0x01, 0xFF, 0x00, 0xFF, 0x00,
                0x7F, 0x80,
            ],
        )])
    }

    #[test]
    fn fields_decode_with_meanings() {
        let l = layout(F0);
        let d = l.decode(&f0_image(), 0xAA);
        let get = |n: &str| d.iter().find(|f| f.name == n).expect("test setup").clone();
        assert_eq!(get("RDP").value, 0xAA);
        assert!(get("RDP").meaning.starts_with("level 0"));
        assert_eq!(get("nRST_STOP").meaning, "no reset");
        assert_eq!(get("WRP").value, 0x7FFF_FFFE);
        assert_eq!(get("WRP").meaning, "write-protected units: 0, 31");
    }

    #[test]
    fn set_changes_only_the_field_and_its_complement() {
        let l = layout(F0);
        let mut img = f0_image();
        l.set(&mut img, "nrst_stop", 0).expect("test setup");
        assert_eq!(img.byte(0, 2), Some(0xFD));
        assert_eq!(img.byte(0, 3), Some(0x02));
        assert_eq!(img.byte(0, 0), Some(0xAA), "RDP untouched");
        assert!(l
            .registers_in(&img)
            .iter()
            .all(|r| r.complement_ok == Some(true)));
        assert!(matches!(
            l.set(&mut img, "nRST_STOP", 2),
            Err(SetError::BadValue(m)) if m.contains("0 to 1")
        ));
        match l.set(&mut img, "BFB2", 1) {
            Err(SetError::UnknownField(names)) => {
                assert_eq!(names, ["RDP", "nRST_STOP", "WRP"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mismatched_pairs_load_as_ones() {
        let l = layout(F0);
        let mut img = f0_image();
        img.set_byte(0, 1, 0x54);
        let (loaded, bad) = l.loaded(&img);
        assert_eq!(bad, ["RDP"]);
        assert_eq!(loaded.byte(0, 0), Some(0xFF));
        assert_eq!(rdp_level(0xFF, 0xAA), 1);
        l.fix_complements(&mut img);
        assert!(l.loaded(&img).1.is_empty());
    }

    #[test]
    fn bases_add_and_replace_fields() {
        let text = format!(
            "{F0}\n[U]\nbase = \"T\"\nfield = [{{ name = \"BFB2\", register = \"USER\", bits = \"3\", doc = \"boot bank 2\" }}]\n"
        );
        let entries: BTreeMap<String, LayoutEntry> = toml::from_str(&text).expect("test setup");
        let u = resolve("U", &entries).expect("test setup");
        assert_eq!(u.fields.len(), 4);
        assert_eq!(u.value_of("BFB2", &f0_image()), Some(1));
        let bad = "[A]\nbase = \"B\"\n[B]\nbase = \"A\"\n";
        let entries: BTreeMap<String, LayoutEntry> = toml::from_str(bad).expect("test setup");
        assert!(resolve("A", &entries).unwrap_err().contains("circle"));
    }

    #[test]
    fn bit_ranges_parse_high_first() {
        assert_eq!(parse_bits("15:8"), Ok((8, 15)));
        assert_eq!(parse_bits("20"), Ok((20, 20)));
        assert!(parse_bits("8:15").is_err());
        assert!(parse_bits("x").is_err());
    }

    #[test]
    fn write_span_keeps_windows_up_to_256_bytes() {
        let l = layout(F0);
        assert_eq!(write_span(&l, 0, AddrRange::from_len(0x1FFF_F800, 16)), 16);
        assert_eq!(
            write_span(&l, 0, AddrRange::from_len(0x1FFF_7800, 2048)),
            16
        );
    }
}
