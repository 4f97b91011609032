//! Coefficient layouts: a TOML file that names the block, its version, where it lives (one slot,
//! or two for A/B storage) and its typed fields, parsed strictly (unknown keys are errors) and
//! checked before anything touches a chip.
//!
//! ```toml
//! name = "sensor_cal"        # a C identifier: the struct is `sensor_cal_t`, macros SENSOR_CAL_*
//! version = 1                # layout version, 0-65535, stored in every block
//! address = 0x0801F800       # slot A
//! slots = 2                  # optional: A/B storage (default 1)
//! address_b = 0x0801F000     # slot B (or `slot_size = 2048`: slot B = address + slot_size)
//!
//! [[field]]
//! name = "gain"
//! type = "f32"               # u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bytes
//! description = "ADC gain"   # optional, becomes a comment in the C header
//!
//! [[field]]
//! name = "offsets"
//! type = "i16"
//! count = 4                  # optional: a fixed-length array
//!
//! [[field]]
//! name = "serial"
//! type = "bytes"
//! len = 16                   # required for bytes: a fixed-length byte string
//! ```
//!
//! Fields are laid out in file order, little-endian, each at its natural alignment (the size of
//! its element type; 1 for byte strings), after a 12-byte header; explicit padding fills the
//! gaps so that a plain C struct has exactly this layout (see [`super::header`]).

use crate::error::{Error, Result};
use crate::units::line_of;
use serde::Deserialize;
use toml::Spanned;

/// Bytes before the first field: magic (4), layout version (2), payload length (2), sequence (4).
pub const HEADER_LEN: u32 = 12;

/// The largest block: the payload length is a 16-bit field.
pub const MAX_BLOCK: u32 = HEADER_LEN + 0xFFFF + 4;

/// The element type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// A fixed-length byte string of this many bytes (zero-padded).
    Bytes(u32),
}

/// Type names a layout accepts, for error messages.
pub const TYPE_NAMES: &str = "u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, bytes";

impl ElemType {
    /// Size of one element in bytes.
    pub fn size(self) -> u32 {
        match self {
            ElemType::U8 | ElemType::I8 => 1,
            ElemType::U16 | ElemType::I16 => 2,
            ElemType::U32 | ElemType::I32 | ElemType::F32 => 4,
            ElemType::U64 | ElemType::I64 | ElemType::F64 => 8,
            ElemType::Bytes(n) => n,
        }
    }

    /// Alignment of one element (natural: its size; byte strings 1).
    pub fn align(self) -> u32 {
        match self {
            ElemType::Bytes(_) => 1,
            other => other.size(),
        }
    }

    /// The name a layout uses (`bytes` for byte strings).
    pub fn name(self) -> &'static str {
        match self {
            ElemType::U8 => "u8",
            ElemType::U16 => "u16",
            ElemType::U32 => "u32",
            ElemType::U64 => "u64",
            ElemType::I8 => "i8",
            ElemType::I16 => "i16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::Bytes(_) => "bytes",
        }
    }

    /// The C type of one element.
    pub fn c_type(self) -> &'static str {
        match self {
            ElemType::U8 | ElemType::Bytes(_) => "uint8_t",
            ElemType::U16 => "uint16_t",
            ElemType::U32 => "uint32_t",
            ElemType::U64 => "uint64_t",
            ElemType::I8 => "int8_t",
            ElemType::I16 => "int16_t",
            ElemType::I32 => "int32_t",
            ElemType::I64 => "int64_t",
            ElemType::F32 => "float",
            ElemType::F64 => "double",
        }
    }

    /// Whether this is an integer type.
    pub fn is_integer(self) -> bool {
        !matches!(self, ElemType::F32 | ElemType::F64 | ElemType::Bytes(_))
    }

    /// The inclusive range of an integer type, as i128 (None for floats and bytes).
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            ElemType::U8 => (0, u8::MAX.into()),
            ElemType::U16 => (0, u16::MAX.into()),
            ElemType::U32 => (0, u32::MAX.into()),
            ElemType::U64 => (0, u64::MAX.into()),
            ElemType::I8 => (i8::MIN.into(), i8::MAX.into()),
            ElemType::I16 => (i16::MIN.into(), i16::MAX.into()),
            ElemType::I32 => (i32::MIN.into(), i32::MAX.into()),
            ElemType::I64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }

    fn parse(name: &str, len: Option<u32>) -> Option<ElemType> {
        Some(match name {
            "u8" => ElemType::U8,
            "u16" => ElemType::U16,
            "u32" => ElemType::U32,
            "u64" => ElemType::U64,
            "i8" => ElemType::I8,
            "i16" => ElemType::I16,
            "i32" => ElemType::I32,
            "i64" => ElemType::I64,
            "f32" => ElemType::F32,
            "f64" => ElemType::F64,
            "bytes" => ElemType::Bytes(len.unwrap_or(0)),
            _ => return None,
        })
    }
}

/// One field of a layout, placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Name (a C identifier).
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// `Some(n)`: an array of n elements; `None`: one element.
    pub count: Option<u32>,
    /// Byte offset from the start of the block.
    pub offset: u32,
    /// What the field means (a comment in the C header).
    pub description: Option<String>,
}

impl Field {
    /// Number of elements (1 for a scalar).
    pub fn elements(&self) -> u32 {
        self.count.unwrap_or(1)
    }

    /// Bytes the field occupies.
    pub fn size(&self) -> u32 {
        self.elem.size() * self.elements()
    }

    /// The type as a person reads it: `f32`, `i16[4]`, `bytes[16]`, `bytes[16][2]`.
    pub fn type_label(&self) -> String {
        let base = match self.elem {
            ElemType::Bytes(n) => format!("bytes[{n}]"),
            e => e.name().to_string(),
        };
        match self.count {
            Some(n) => format!("{base}[{n}]"),
            None => base,
        }
    }
}

/// A validated layout: fields placed, block size and CRC position known.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Block name (a C identifier).
    pub name: String,
    /// Layout version stored in each block.
    pub version: u16,
    /// Slot addresses: one, or two for A/B storage (A first).
    pub slots: Vec<u32>,
    /// What the block is (a comment in the C header).
    pub description: Option<String>,
    /// Fields in block order.
    pub fields: Vec<Field>,
    /// Alignment of the block (the largest field alignment, at least 4).
    pub align: u32,
    /// Offset of the CRC word: the CRC covers bytes `[0, crc_offset)`.
    pub crc_offset: u32,
    /// Where the file came from, for messages.
    pub origin: String,
}

impl Layout {
    /// Whole block size in bytes, CRC included (a multiple of [`Layout::align`]).
    pub fn size(&self) -> u32 {
        self.crc_offset + 4
    }

    /// Payload bytes between the header and the CRC (padding included): the header's length
    /// field.
    pub fn payload_len(&self) -> u16 {
        // Checked against MAX_BLOCK when the layout was built.
        u16::try_from(self.crc_offset - HEADER_LEN).unwrap_or(u16::MAX)
    }

    /// Whether the layout has two slots (A/B storage).
    pub fn is_ab(&self) -> bool {
        self.slots.len() == 2
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Read and validate a layout file.
    pub fn load(path: &std::path::Path) -> Result<Layout> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading layout {}", path.display()), e))?;
        Layout::from_toml(&text, &path.display().to_string())
    }

    /// Parse and validate a layout; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Layout> {
        let raw: RawLayout = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(", line {}", line_of(text, s.start)))
                .unwrap_or_default();
            Error::InvalidRequest(format!("layout {origin}{at}: {}", e.message().trim_end()))
        })?;
        build(raw, text, origin)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayout {
    name: Spanned<String>,
    version: Spanned<i64>,
    address: Spanned<i64>,
    slots: Option<Spanned<i64>>,
    address_b: Option<Spanned<i64>>,
    slot_size: Option<Spanned<i64>>,
    description: Option<String>,
    #[serde(default)]
    field: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Spanned<String>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    len: Option<Spanned<i64>>,
    count: Option<Spanned<i64>>,
    description: Option<String>,
}

/// Names the header and generated code use, which fields may not take.
const RESERVED: &[&str] = &["magic", "version", "length", "sequence", "crc"];

/// C keywords (C11 and common C++ ones), which are not valid field or block names.
const C_KEYWORDS: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "bool",
    "true",
    "false",
    "class",
    "namespace",
    "template",
    "this",
    "new",
    "delete",
    "private",
    "public",
    "protected",
    "virtual",
    "operator",
    "friend",
];

fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn build(raw: RawLayout, text: &str, origin: &str) -> Result<Layout> {
    let err = |span: std::ops::Range<usize>, msg: String| {
        Error::InvalidRequest(format!(
            "layout {origin}, line {}: {msg}",
            line_of(text, span.start)
        ))
    };
    let name = raw.name.get_ref().clone();
    if !is_c_identifier(&name) || C_KEYWORDS.contains(&name.as_str()) || name.starts_with('_') {
        return Err(err(
            raw.name.span(),
            format!(
                "name '{name}' must be a C identifier (letters, digits and _, not starting with a \
                 digit or _, not a C keyword): it names the struct and the macros of the C header"
            ),
        ));
    }
    let version = u16::try_from(*raw.version.get_ref()).map_err(|_| {
        err(
            raw.version.span(),
            format!(
                "version {} is out of range (0 to 65535)",
                raw.version.get_ref()
            ),
        )
    })?;
    let addr = |v: &Spanned<i64>, what: &str| -> Result<u32> {
        u32::try_from(*v.get_ref()).map_err(|_| {
            err(
                v.span(),
                format!(
                    "{what} {} is not a 32-bit address (write it as hex, e.g. 0x0801F800)",
                    v.get_ref()
                ),
            )
        })
    };
    let address = addr(&raw.address, "address")?;
    let slots = match &raw.slots {
        None => 1,
        Some(s) => match *s.get_ref() {
            1 => 1,
            2 => 2,
            n => {
                return Err(err(
                    s.span(),
                    format!("slots = {n}: use 1 (one block) or 2 (A/B storage)"),
                ))
            }
        },
    };

    // Fields, in file order, at natural alignment.
    if raw.field.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "layout {origin}: no fields: add at least one [[field]] with a name and a type"
        )));
    }
    let mut fields: Vec<Field> = Vec::with_capacity(raw.field.len());
    let mut pos = u64::from(HEADER_LEN);
    let mut align = 4u32;
    for f in &raw.field {
        let fname = f.name.get_ref().clone();
        let ferr = |span: std::ops::Range<usize>, msg: String| {
            err(span, format!("field '{fname}': {msg}"))
        };
        if !is_c_identifier(&fname) || fname.starts_with('_') {
            return Err(ferr(
                f.name.span(),
                "the name must be a C identifier (letters, digits and _, not starting with a \
                 digit or _)"
                    .into(),
            ));
        }
        if C_KEYWORDS.contains(&fname.as_str()) || RESERVED.contains(&fname.as_str()) {
            return Err(ferr(
                f.name.span(),
                format!(
                    "the name is reserved (C keywords and the header's {} are taken)",
                    RESERVED.join(", ")
                ),
            ));
        }
        if let Some(prev) = fields.iter().find(|p| p.name == fname) {
            return Err(ferr(
                f.name.span(),
                format!("defined twice (the first '{}' is also a field)", prev.name),
            ));
        }
        let ty = f.ty.get_ref().as_str();
        let len = match &f.len {
            Some(l) => {
                if ty != "bytes" {
                    return Err(ferr(
                        l.span(),
                        format!(
                            "`len` is only for type \"bytes\"; for an array of {ty} use `count`"
                        ),
                    ));
                }
                Some(
                    u32::try_from(*l.get_ref())
                        .ok()
                        .filter(|n| (1..=4096).contains(n))
                        .ok_or_else(|| {
                            ferr(
                                l.span(),
                                format!("len = {} is out of range (1 to 4096 bytes)", l.get_ref()),
                            )
                        })?,
                )
            }
            None => None,
        };
        let elem = ElemType::parse(ty, len).ok_or_else(|| {
            ferr(
                f.ty.span(),
                format!("unknown type \"{ty}\" (valid types: {TYPE_NAMES})"),
            )
        })?;
        if elem == ElemType::Bytes(0) {
            return Err(ferr(
                f.ty.span(),
                "type \"bytes\" needs `len`, the fixed length in bytes (e.g. len = 16)".into(),
            ));
        }
        let count = match &f.count {
            Some(c) => Some(
                u32::try_from(*c.get_ref())
                    .ok()
                    .filter(|n| (1..=4096).contains(n))
                    .ok_or_else(|| {
                        ferr(
                            c.span(),
                            format!(
                                "count = {} is out of range (1 to 4096 elements)",
                                c.get_ref()
                            ),
                        )
                    })?,
            ),
            None => None,
        };
        let a = u64::from(elem.align());
        let offset = pos.div_ceil(a) * a;
        let size = u64::from(elem.size()) * u64::from(count.unwrap_or(1));
        pos = offset + size;
        if pos + 8 > u64::from(MAX_BLOCK) {
            return Err(ferr(
                f.name.span(),
                format!(
                    "the block grows past {MAX_BLOCK} bytes here (its payload length is a \
                     16-bit field)"
                ),
            ));
        }
        align = align.max(elem.align());
        fields.push(Field {
            name: fname,
            elem,
            count,
            offset: offset as u32,
            description: f.description.clone(),
        });
    }
    // The CRC word at the next multiple of 4, moved on so the block ends on its alignment.
    let mut crc_offset = pos.div_ceil(4) * 4;
    while (crc_offset + 4) % u64::from(align) != 0 {
        crc_offset += 4;
    }
    let size = crc_offset + 4;

    let mut slot_addrs = vec![address];
    let check_slot = |a: u32, span: std::ops::Range<usize>, what: &str| -> Result<()> {
        if a % align != 0 {
            return Err(err(
                span,
                format!(
                    "{what} 0x{a:08X} is not a multiple of {align}, the block's alignment \
                     (its largest field alignment, at least 4 for the CRC unit)"
                ),
            ));
        }
        if u64::from(a) + size > 1 << 32 {
            return Err(err(
                span,
                format!("{what} 0x{a:08X} + {size} bytes runs past the 4 GiB address space"),
            ));
        }
        Ok(())
    };
    check_slot(address, raw.address.span(), "address")?;
    match (slots, &raw.address_b, &raw.slot_size) {
        (1, Some(s), _) => {
            return Err(err(
                s.span(),
                "address_b is for A/B storage: add slots = 2, or remove it".into(),
            ))
        }
        (1, _, Some(s)) => {
            return Err(err(
                s.span(),
                "slot_size is for A/B storage: add slots = 2, or remove it".into(),
            ))
        }
        (2, Some(_), Some(s)) => {
            return Err(err(
                s.span(),
                "give slot B by address_b or by slot_size, not both".into(),
            ))
        }
        (2, None, None) => {
            return Err(err(
                raw.slots.as_ref().map(|s| s.span()).unwrap_or(0..0),
                "slots = 2 needs slot B: address_b = 0x... or slot_size = N (slot B = address + \
                 slot_size)"
                    .into(),
            ))
        }
        (2, Some(b), None) => {
            let b_addr = addr(b, "address_b")?;
            check_slot(b_addr, b.span(), "address_b")?;
            slot_addrs.push(b_addr);
        }
        (2, None, Some(s)) => {
            let step = u32::try_from(*s.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    err(
                        s.span(),
                        format!("slot_size = {} is not a size", s.get_ref()),
                    )
                })?;
            let b_addr = address.checked_add(step).ok_or_else(|| {
                err(
                    s.span(),
                    "address + slot_size runs past the address space".into(),
                )
            })?;
            check_slot(b_addr, s.span(), "slot B (address + slot_size)")?;
            slot_addrs.push(b_addr);
        }
        _ => {}
    }
    if let [a, b] = slot_addrs[..] {
        if u64::from(a.abs_diff(b)) < size {
            let span = raw
                .address_b
                .as_ref()
                .or(raw.slot_size.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(err(
                span,
                format!("slots A (0x{a:08X}) and B (0x{b:08X}) overlap: the block is {size} bytes"),
            ));
        }
    }
    Ok(Layout {
        name,
        version,
        slots: slot_addrs,
        description: raw.description,
        fields,
        align,
        crc_offset: crc_offset as u32,
        origin: origin.to_string(),
    })
}

/// Check a layout against a part's flash map: every slot inside the main flash and, for A/B
/// storage, no flash page holding both slots (so that erasing the slot being written can never
/// touch the other one).
pub fn check_device(layout: &Layout, device: &crate::device::Device) -> Result<()> {
    let size = u64::from(layout.size());
    if device.pages.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "the page map of this {} is unknown, so writing a coefficient block would mean a \
             mass erase: describe the part in a device file and pass --device-file",
            device.name
        )));
    }
    for (i, &a) in layout.slots.iter().enumerate() {
        if !device.in_flash(a, size) {
            return Err(Error::InvalidRequest(format!(
                "layout {}: slot {} at 0x{a:08X} ({size} bytes) is not inside the flash of the \
                 {} (0x{:08X}-0x{:08X})",
                layout.origin,
                slot_name(i),
                device.name,
                device.flash.start,
                device.flash.end
            )));
        }
    }
    if let [a, b] = layout.slots[..] {
        let pa = device.pages_overlapping(a, u64::from(a) + size);
        let pb = device.pages_overlapping(b, u64::from(b) + size);
        if let Some(shared) = pa.iter().find(|p| pb.contains(p)) {
            return Err(Error::InvalidRequest(format!(
                "layout {}: slots A (0x{a:08X}) and B (0x{b:08X}) share page {} of the {} \
                 (0x{:08X}, {} bytes): erasing one slot would erase the other; put them in \
                 different pages",
                layout.origin, shared.index, device.name, shared.address, shared.size
            )));
        }
    }
    Ok(())
}

/// "A" or "B".
pub fn slot_name(index: usize) -> &'static str {
    if index == 0 {
        "A"
    } else {
        "B"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::coeffs::testdata::every_type_layout;

    fn parse_err(text: &str) -> String {
        Layout::from_toml(text, "t.toml")
            .expect_err("layout should be refused")
            .to_string()
    }

    #[test]
    fn every_type_is_placed_at_its_natural_alignment() {
        let l = every_type_layout();
        let offs: Vec<(&str, u32)> = l
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.offset))
            .collect();
        assert_eq!(
            offs,
            [
                ("a_u8", 12),
                ("a_u16", 14),
                ("a_u32", 16),
                ("a_u64", 24),
                ("a_i8", 32),
                ("a_i16", 34),
                ("a_i32", 36),
                ("a_i64", 40),
                ("a_f32", 48),
                ("a_f64", 56),
                ("label", 64),
                ("arr_i16", 70),
                ("arr_f64", 80),
                ("names", 96),
            ]
        );
        // Fields end at 102; the CRC goes to 104, and the block ends on 8 (u64/f64 alignment).
        assert_eq!(l.align, 8);
        assert_eq!(l.crc_offset, 108);
        assert_eq!(l.size(), 112);
        assert_eq!(l.payload_len(), 96);
        assert_eq!(l.slots, [0x0801_0000, 0x0801_4000]);
        assert_eq!(l.version, 7);
        assert_eq!(l.fields[13].type_label(), "bytes[3][2]");
    }

    #[test]
    fn a_small_layout_has_no_padding_before_the_crc() {
        let l = Layout::from_toml(
            "name = \"x\"\nversion = 1\naddress = 0x08000000\n[[field]]\nname = \"a\"\ntype = \"u8\"\n",
            "t.toml",
        )
        .expect("test setup");
        assert_eq!((l.align, l.crc_offset, l.size()), (4, 16, 20));
        assert!(!l.is_ab());
    }

    #[test]
    fn malformed_layouts_name_the_line_and_the_field() {
        let head = "name = \"cal\"\nversion = 1\naddress = 0x08000000\n";
        let cases: &[(&str, &[&str])] = &[
            (
                "colour = 3\n",
                &["t.toml", "line 4", "unknown field `colour`"],
            ),
            (
                "[[field]]\nname = \"gain\"\ntype = \"f33\"\n",
                &["line 6", "field 'gain'", "unknown type \"f33\"", "u8, u16"],
            ),
            (
                "[[field]]\nname = \"sn\"\ntype = \"bytes\"\n",
                &["line 6", "field 'sn'", "needs `len`"],
            ),
            (
                "[[field]]\nname = \"x\"\ntype = \"u8\"\nlen = 3\n",
                &["line 7", "field 'x'", "`len` is only for type \"bytes\""],
            ),
            (
                "[[field]]\nname = \"x\"\ntype = \"u8\"\ncount = 0\n",
                &["line 7", "count = 0 is out of range"],
            ),
            (
                "[[field]]\nname = \"2x\"\ntype = \"u8\"\n",
                &["line 5", "field '2x'", "C identifier"],
            ),
            (
                "[[field]]\nname = \"crc\"\ntype = \"u32\"\n",
                &["line 5", "field 'crc'", "reserved"],
            ),
            (
                "[[field]]\nname = \"a\"\ntype = \"u8\"\n[[field]]\nname = \"a\"\ntype = \"u16\"\n",
                &["line 8", "field 'a'", "defined twice"],
            ),
            (
                "[[field]]\nname = \"a\"\ntype = \"u8\"\nunit = \"mV\"\n",
                &["line 7", "unknown field `unit`"],
            ),
            ("", &["no fields"]),
        ];
        for (tail, wants) in cases {
            let e = parse_err(&format!("{head}{tail}"));
            for w in *wants {
                assert!(e.contains(w), "{tail:?}: {e} lacks {w}");
            }
        }
        let e = parse_err("version = 1\naddress = 0x08000000\n");
        assert!(e.contains("missing field `name`"), "{e}");
        let e = parse_err("name = \"cal\"\nversion = 70000\naddress = 0x08000000\n");
        assert!(e.contains("line 2") && e.contains("version 70000"), "{e}");
        let e = parse_err("name = \"int\"\nversion = 1\naddress = 1\n");
        assert!(e.contains("C identifier"), "{e}");
        let e = parse_err("name = \"cal\"\nversion = 1\naddress = -4\n");
        assert!(e.contains("line 3") && e.contains("32-bit address"), "{e}");
        let e = parse_err("name = \"cal\"\nversion = 1\naddress = 0x08000002\n[[field]]\nname = \"a\"\ntype = \"u8\"\n");
        assert!(
            e.contains("line 3") && e.contains("not a multiple of 4"),
            "{e}"
        );
        let e = parse_err("name = \"cal\"\nversion = 1\naddress = 0x08000004\n[[field]]\nname = \"a\"\ntype = \"f64\"\n");
        assert!(e.contains("not a multiple of 8"), "{e}");
    }

    #[test]
    fn slot_options_are_checked() {
        let field = "[[field]]\nname = \"a\"\ntype = \"u32\"\n";
        let lay = |head: &str| {
            format!("name = \"cal\"\nversion = 1\naddress = 0x08000000\n{head}{field}")
        };
        let e = Layout::from_toml(&lay("slots = 3\n"), "t.toml").expect_err("3 slots");
        assert!(
            e.to_string().contains("line 4") && e.to_string().contains("slots = 3"),
            "{e}"
        );
        let e = Layout::from_toml(&lay("slots = 2\n"), "t.toml").expect_err("no slot B");
        assert!(e.to_string().contains("needs slot B"), "{e}");
        let e = Layout::from_toml(&lay("address_b = 0x08000800\n"), "t.toml").expect_err("B only");
        assert!(e.to_string().contains("add slots = 2"), "{e}");
        let e = Layout::from_toml(
            &lay("slots = 2\naddress_b = 0x08000800\nslot_size = 8\n"),
            "t.toml",
        )
        .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
        let e =
            Layout::from_toml(&lay("slots = 2\nslot_size = 8\n"), "t.toml").expect_err("overlap");
        assert!(e.to_string().contains("overlap"), "{e}");
        let l = Layout::from_toml(&lay("slots = 2\naddress_b = 0x08000800\n"), "t.toml")
            .expect("test setup");
        assert_eq!(l.slots, [0x0800_0000, 0x0800_0800]);
        assert!(l.is_ab());
    }

    #[test]
    fn slots_must_not_share_a_page() {
        let table = crate::device::DeviceTable::builtin().expect("test setup");
        let l476 = table.by_part("stm32l476").expect("test setup");
        let f411 = table.by_part("stm32f411").expect("test setup");
        let field = "[[field]]\nname = \"a\"\ntype = \"u32\"\n";
        let lay = |b: &str| {
            Layout::from_toml(
                &format!("name = \"cal\"\nversion = 1\naddress = 0x08004000\nslots = 2\naddress_b = {b}\n{field}"),
                "t.toml",
            )
            .expect("test setup")
        };
        // 2 KiB pages: 0x08004800 is the next page; on the F411 both are in 16 KiB sector 1.
        let l = lay("0x08004800");
        check_device(&l, l476).expect("different L4 pages");
        let e = check_device(&l, f411)
            .expect_err("same F4 sector")
            .to_string();
        assert!(
            e.contains("share page 1") && e.contains("different pages"),
            "{e}"
        );
        let e = check_device(&lay("0x08004400"), l476)
            .expect_err("same page")
            .to_string();
        assert!(e.contains("share page 8"), "{e}");
        check_device(&lay("0x08008000"), f411).expect("sectors 1 and 2");
        let out = Layout::from_toml(
            &format!("name = \"cal\"\nversion = 1\naddress = 0x20000000\n{field}"),
            "t.toml",
        )
        .expect("test setup");
        let e = check_device(&out, f411).expect_err("in RAM").to_string();
        assert!(e.contains("not inside the flash"), "{e}");
    }
}
