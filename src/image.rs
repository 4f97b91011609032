//! Firmware images as sparse maps from address to bytes.
//!
//! An [`Image`] is the set of bytes a firmware file asks to be written, keyed
//! by absolute target address. It is deliberately **sparse**: the gaps
//! between pieces of data are neither filled with a pad byte nor meant to be
//! erased; they are simply not part of the image. Adjacent pieces are merged
//! into one segment, so an image is a short ascending list of disjoint,
//! non-empty, non-touching segments.
//!
//! Two pieces of data that cover the same address are an error
//! ([`ImageError::Overlap`]), even if they agree on the value: a file that
//! writes the same byte twice is almost always a build or merge mistake.
//!
//! Supported formats and the parser used for each:
//!
//! * raw binary (`.bin`): the file's bytes, placed at an address the user
//!   gives (the file itself carries none);
//! * Intel HEX: records are decoded by the [`ihex`] crate, addresses (record
//!   types 02 and 04) are resolved here; [`Image::to_ihex`] writes with the
//!   same crate;
//! * Motorola S-records: decoded by the [`srec`] crate (the S0 header is only
//!   checksum-checked here, as its text need not be UTF-8);
//! * ELF: read with the [`object`] crate's ELF reader, generic over 32/64-bit
//!   and little/big endian. Every `PT_LOAD` program header with a non-zero
//!   file size contributes its `p_filesz` bytes at its **physical** load
//!   address `p_paddr`. The virtual address `p_vaddr` would be wrong for
//!   initialised data, which runs from RAM but is stored in (and must be
//!   programmed to) flash. The part of a segment beyond its file size (`.bss`,
//!   `p_memsz > p_filesz`) is zeroed at run time, not data, and is not loaded.
//!
//! Text formats report problems with the 1-based line number, and
//! [`Image::load`] adds the file's path, e.g.
//! `image.hex line 12: checksum mismatch (record says 0x3A, computed 0x3B)`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use object::read::elf::{FileHeader, ProgramHeader};

/// One past the highest 32-bit address.
const ADDRESS_SPACE: u64 = 1 << 32;

/// Number of data bytes per Intel HEX data record written by [`Image::to_ihex`].
const IHEX_RECORD_LEN: usize = 16;

/// The file formats an [`Image`] can be loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Raw binary: bytes with no address information.
    Bin,
    /// Intel HEX text.
    IntelHex,
    /// Motorola S-record text.
    SRecord,
    /// ELF executable (32- or 64-bit, either endianness).
    Elf,
}

impl ImageFormat {
    /// Works out the format of a file.
    ///
    /// The extension decides first (case-insensitively): `.bin`/`.img`/`.raw`
    /// are [`Bin`](Self::Bin), `.hex`/`.ihex`/`.ihx` are
    /// [`IntelHex`](Self::IntelHex), `.s19`/`.s28`/`.s37`/`.srec`/`.mot`/`.sx`
    /// are [`SRecord`](Self::SRecord) and `.elf`/`.axf`/`.out` are
    /// [`Elf`](Self::Elf). Otherwise the content is sniffed: `\x7fELF` is ELF,
    /// a first non-whitespace `:` is Intel HEX, and a first non-whitespace `S`
    /// followed by a digit is an S-record file. Anything else gives `None`.
    pub fn detect(path: &Path, content: &[u8]) -> Option<ImageFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("bin" | "img" | "raw") => return Some(ImageFormat::Bin),
            Some("hex" | "ihex" | "ihx") => return Some(ImageFormat::IntelHex),
            Some("s19" | "s28" | "s37" | "srec" | "mot" | "sx") => {
                return Some(ImageFormat::SRecord)
            }
            Some("elf" | "axf" | "out") => return Some(ImageFormat::Elf),
            _ => {}
        }
        if content.starts_with(b"\x7fELF") {
            return Some(ImageFormat::Elf);
        }
        let text = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
        let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
        match &text[start..] {
            [b':', ..] => Some(ImageFormat::IntelHex),
            [b'S', d, ..] if d.is_ascii_digit() => Some(ImageFormat::SRecord),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    /// A human-readable name: "raw binary", "Intel HEX", "S-record" or "ELF".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Bin => "raw binary",
            ImageFormat::IntelHex => "Intel HEX",
            ImageFormat::SRecord => "S-record",
            ImageFormat::Elf => "ELF",
        })
    }
}

/// Why an image could not be built, loaded or written.
///
/// Every message is complete on its own (it includes the path, line and
/// underlying I/O error where known), so [`std::error::Error::source`] is
/// always `None` and error reporters that print the source chain do not
/// repeat text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system reported.
        error: std::io::Error,
    },
    /// A problem inside a file; added by [`Image::load`].
    #[error("{}", in_file_message(path, error))]
    InFile {
        /// The file in which the problem was found.
        path: PathBuf,
        /// The problem.
        error: Box<ImageError>,
    },
    /// A problem on a given line of a text format (Intel HEX or S-record).
    #[error("line {line}: {error}")]
    AtLine {
        /// 1-based line number.
        line: usize,
        /// The problem.
        error: Box<ImageError>,
    },
    /// A record's checksum does not match its contents.
    #[error("checksum mismatch (record says 0x{record:02X}, computed 0x{computed:02X})")]
    Checksum {
        /// The checksum byte stored in the record.
        record: u8,
        /// The checksum computed from the record's other bytes.
        computed: u8,
    },
    /// A malformed, truncated or unsupported record in a text format.
    #[error("{problem}")]
    BadRecord {
        /// What is wrong with the record.
        problem: String,
    },
    /// An Intel HEX file ended without its end-of-file record.
    #[error(
        "no end-of-file record (:00000001FF): the file may be truncated; \
         if it is complete, add that line at the end"
    )]
    MissingEndOfFile,
    /// The ELF file could not be parsed.
    #[error("not a usable ELF file: {problem}")]
    Elf {
        /// What is wrong with the file.
        problem: String,
    },
    /// Two pieces of data cover the same addresses.
    #[error(
        "overlapping data at 0x{start:08X}..0x{end:08X}: \
         two segments of the image write the same bytes"
    )]
    Overlap {
        /// First overlapping address.
        start: u32,
        /// One past the last overlapping address of the first overlap found.
        end: u64,
    },
    /// Data would lie outside the 32-bit address space.
    #[error("{}", overflow_message(*start, *len))]
    AddressOverflow {
        /// The (possibly negative or too large) start address of the data.
        start: i64,
        /// Number of bytes of the data.
        len: u64,
    },
    /// The file or byte string holds no data to program.
    #[error("{}", empty_message(path.as_deref()))]
    Empty {
        /// The file, when known.
        path: Option<PathBuf>,
    },
    /// A raw binary file was loaded without a base address.
    #[error(
        "{}: a .bin file has no address: pass --address (for example --address 0x08000000)",
        path.display()
    )]
    NeedAddress {
        /// The raw binary file.
        path: PathBuf,
    },
    /// A base address was given for a format that carries its own addresses.
    #[error(
        "--address is only for raw .bin files; {} is {format} and carries its own addresses",
        path.display()
    )]
    AddressNotAllowed {
        /// The format of the file.
        format: ImageFormat,
        /// The file.
        path: PathBuf,
    },
    /// The format could be told neither from the extension nor the content.
    #[error(
        "cannot tell the format of {}: give it an extension such as .bin, .hex, .s19 or .elf, \
         or state the format explicitly",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// Writing Intel HEX failed.
    #[error("cannot write Intel HEX: {problem}")]
    HexWrite {
        /// What the writer reported.
        problem: String,
    },
}

fn in_file_message(path: &Path, error: &ImageError) -> String {
    match error {
        ImageError::AtLine { line, error } => {
            format!("{} line {line}: {error}", path.display())
        }
        other => format!("{}: {other}", path.display()),
    }
}

fn overflow_message(start: i64, len: u64) -> String {
    if start < 0 {
        format!(
            "{len} bytes of data would start at -0x{:X}, below address 0x00000000",
            start.unsigned_abs()
        )
    } else {
        format!(
            "{len} bytes of data at 0x{start:08X} run past the end of the 32-bit \
             address space (0xFFFFFFFF)"
        )
    }
}

fn empty_message(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("{} contains no data to program", path.display()),
        None => "the image contains no data to program".to_string(),
    }
}

impl ImageError {
    /// Wraps `self` with a line number.
    fn at_line(self, line: usize) -> ImageError {
        ImageError::AtLine {
            line,
            error: Box::new(self),
        }
    }

    fn bad_record(problem: impl Into<String>) -> ImageError {
        ImageError::BadRecord {
            problem: problem.into(),
        }
    }

    /// The line number of the problem, for errors in text formats.
    pub fn line(&self) -> Option<usize> {
        match self {
            ImageError::AtLine { line, .. } => Some(*line),
            ImageError::InFile { error, .. } => error.line(),
            _ => None,
        }
    }

    /// The innermost error, with the [`InFile`](Self::InFile) and
    /// [`AtLine`](Self::AtLine) context wrappers removed.
    pub fn root_cause(&self) -> &ImageError {
        match self {
            ImageError::AtLine { error, .. } | ImageError::InFile { error, .. } => {
                error.root_cause()
            }
            other => other,
        }
    }
}

/// A firmware image: disjoint segments of bytes at 32-bit addresses, plus an
/// optional entry point.
///
/// Segments never overlap, are never empty, and adjacent data is always
/// merged, so two images holding the same bytes (and entry point) compare
/// equal whatever order the data was added in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    segments: BTreeMap<u32, Vec<u8>>,
    entry: Option<u32>,
}

/// A piece of data read from a text file, not yet placed in an image.
struct Chunk {
    line: usize,
    addr: u32,
    data: Vec<u8>,
}

/// Checks that `len` bytes at `addr` fit below 2^32.
fn check_fits(addr: u64, len: usize) -> Result<(), ImageError> {
    let len = len as u64;
    if addr.saturating_add(len) > ADDRESS_SPACE {
        return Err(ImageError::AddressOverflow {
            start: i64::try_from(addr).unwrap_or(i64::MAX),
            len,
        });
    }
    Ok(())
}

/// Places chunks in ascending address order, so that merging is always an
/// append and loading is O(n log n) whatever the order in the file.
fn build(mut chunks: Vec<Chunk>, entry: Option<u32>) -> Result<Image, ImageError> {
    chunks.sort_by_key(|c| c.addr);
    let mut image = Image::new();
    for chunk in chunks {
        image
            .add(chunk.addr, &chunk.data)
            .map_err(|e| e.at_line(chunk.line))?;
    }
    image.entry = entry;
    Ok(image)
}

/// Decodes a string of an even number of ASCII hex digits.
fn decode_hex(digits: &str) -> Result<Vec<u8>, ImageError> {
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| ImageError::bad_record("invalid hex digits in record"))
        })
        .collect()
}

/// Rejects non-hex characters and records whose length disagrees with their
/// byte count. `body` is the record after its start code (and type, for
/// S-records); it begins with the two-digit byte count, which
/// `expected_digits` turns into the number of hex digits `body` must have.
fn check_record_body(
    body: &str,
    expected_digits: impl Fn(usize) -> usize,
) -> Result<(), ImageError> {
    if let Some(c) = body.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(ImageError::bad_record(format!(
            "invalid character {c:?} in record: only hexadecimal digits may follow the record start"
        )));
    }
    if body.len() < 2 {
        return Err(ImageError::bad_record(
            "truncated record: it ends before its byte count",
        ));
    }
    let count = usize::from(u8::from_str_radix(&body[..2], 16).unwrap_or(0));
    let want = expected_digits(count);
    if body.len() < want {
        return Err(ImageError::bad_record(format!(
            "truncated record: its byte count (0x{count:02X}) needs {want} hex digits, \
             the line has only {}",
            body.len()
        )));
    }
    if body.len() > want {
        return Err(ImageError::bad_record(format!(
            "record is longer than its byte count (0x{count:02X}) says: {want} hex digits \
             expected, the line has {}",
            body.len()
        )));
    }
    Ok(())
}

/// Lines of a text file: (1-based number, trimmed text), skipping blank ones.
fn text_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        let line = line.trim();
        (!line.is_empty()).then_some((i + 1, line))
    })
}

/// A short, printable excerpt of a line for error messages.
fn preview(line: &str) -> String {
    let excerpt: String = line.chars().take(12).collect();
    if excerpt.len() < line.len() {
        format!("{excerpt:?}...")
    } else {
        format!("{excerpt:?}")
    }
}

fn parse_ihex_record(line: &str) -> Result<ihex::Record, ImageError> {
    let Some(body) = line.strip_prefix(':') else {
        return Err(ImageError::bad_record(format!(
            "expected an Intel HEX record starting with ':', found {}",
            preview(line)
        )));
    };
    // Byte count, address (2), type, data, checksum.
    check_record_body(body, |count| 2 * (count + 5))?;
    ihex::Record::from_record_string(line).map_err(|e| match e {
        ihex::ReaderError::ChecksumMismatch(computed, record) => {
            ImageError::Checksum { record, computed }
        }
        ihex::ReaderError::UnsupportedRecordType(t) => ImageError::bad_record(format!(
            "unsupported record type 0x{t:02X} (only 00 to 05 exist in Intel HEX)"
        )),
        ihex::ReaderError::InvalidLengthForType => {
            let t = body.get(6..8).unwrap_or("??");
            ImageError::bad_record(format!(
                "record of type 0x{t} has the wrong number of data bytes for its type"
            ))
        }
        other => ImageError::bad_record(format!("malformed record: {other}")),
    })
}

/// Parses one S-record line. `Ok(None)` for the ignored S0 header.
fn parse_srec_record(line: &str) -> Result<Option<srec::Record>, ImageError> {
    let bytes = line.as_bytes();
    if bytes.first() != Some(&b'S') {
        return Err(ImageError::bad_record(format!(
            "expected an S-record starting with 'S', found {}",
            preview(line)
        )));
    }
    let record_type = match bytes.get(1) {
        Some(d) if d.is_ascii_digit() => *d - b'0',
        _ => {
            return Err(ImageError::bad_record(format!(
                "'S' must be followed by the record type digit 0-9, found {}",
                preview(line)
            )))
        }
    };
    if record_type == 4 {
        return Err(ImageError::bad_record(
            "record type S4 is reserved and not supported",
        ));
    }
    // Both bytes checked above are ASCII, so index 2 is a char boundary.
    let body = &line[2..];
    // Byte count, then that many bytes (address, data, checksum).
    check_record_body(body, |count| 2 * (count + 1))?;
    let raw = decode_hex(body)?;
    let Some((&record, covered)) = raw.split_last() else {
        return Err(ImageError::bad_record("truncated record"));
    };
    if covered.is_empty() {
        return Err(ImageError::bad_record(
            "byte count is zero: every record needs at least its checksum byte",
        ));
    }
    let computed = !covered.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
    if record != computed {
        return Err(ImageError::Checksum { record, computed });
    }
    if record_type == 0 {
        return Ok(None);
    }
    line.parse::<srec::Record>().map(Some).map_err(|e| match e {
        srec::ReaderError::NotEnoughData => ImageError::bad_record(format!(
            "byte count 0x{:02X} is wrong for an S{record_type} record",
            raw[0]
        )),
        other => ImageError::bad_record(format!("malformed record: {other}")),
    })
}

fn parse_elf<Elf: FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> Result<Image, ImageError> {
    let elf_error = |problem: &str| ImageError::Elf {
        problem: problem.to_string(),
    };
    let header = Elf::parse(data).map_err(|e| elf_error(&e.to_string()))?;
    let endian = header.endian().map_err(|e| elf_error(&e.to_string()))?;
    let program_headers = header
        .program_headers(endian, data)
        .map_err(|e| elf_error(&e.to_string()))?;
    let mut loads: Vec<(u32, &[u8])> = Vec::new();
    for (index, ph) in program_headers.iter().enumerate() {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let filesz: u64 = ph.p_filesz(endian).into();
        if filesz == 0 {
            continue;
        }
        let paddr: u64 = ph.p_paddr(endian).into();
        let bytes = ph.data(endian, data).map_err(|()| ImageError::Elf {
            problem: format!(
                "program header {index} says its {filesz} bytes lie beyond the end of the file"
            ),
        })?;
        check_fits(paddr, bytes.len())?;
        // check_fits guarantees paddr < 2^32 as bytes is not empty.
        let addr = u32::try_from(paddr).map_err(|_| ImageError::AddressOverflow {
            start: i64::try_from(paddr).unwrap_or(i64::MAX),
            len: filesz,
        })?;
        loads.push((addr, bytes));
    }
    loads.sort_by_key(|(addr, _)| *addr);
    let mut image = Image::new();
    for (addr, bytes) in loads {
        image.add(addr, bytes)?;
    }
    let entry: u64 = header.e_entry(endian).into();
    image.entry = u32::try_from(entry).ok();
    Ok(image)
}

impl Image {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data` at `addr`.
    ///
    /// Data adjacent to existing data is merged into one segment. Empty
    /// `data` is a no-op. Fails with [`ImageError::Overlap`] if any byte is
    /// already present (the image is then unchanged), and with
    /// [`ImageError::AddressOverflow`] if the data would extend past
    /// `0xFFFFFFFF`.
    pub fn add(&mut self, addr: u32, data: &[u8]) -> Result<(), ImageError> {
        if data.is_empty() {
            return Ok(());
        }
        check_fits(u64::from(addr), data.len())?;
        let start = u64::from(addr);
        let end = start + data.len() as u64;

        // The segment starting at or before addr, if it reaches addr.
        let mut merge_before = None;
        if let Some((&s, seg)) = self.segments.range(..=addr).next_back() {
            let seg_end = u64::from(s) + seg.len() as u64;
            if seg_end > start {
                return Err(ImageError::Overlap {
                    start: addr,
                    end: seg_end.min(end),
                });
            }
            if seg_end == start {
                merge_before = Some(s);
            }
        }
        // The first segment starting after addr, if it is reached.
        let mut merge_after = None;
        // (None starts exactly at addr: the check above would have failed.)
        if let Some((&s, seg)) = self.segments.range(addr..).next() {
            let s64 = u64::from(s);
            if s64 < end {
                return Err(ImageError::Overlap {
                    start: s,
                    end: (s64 + seg.len() as u64).min(end),
                });
            }
            if s64 == end {
                merge_after = Some(s);
            }
        }

        let after = merge_after.and_then(|s| self.segments.remove(&s));
        let target = match merge_before.and_then(|s| self.segments.get_mut(&s)) {
            Some(seg) => seg,
            None => self.segments.entry(addr).or_default(),
        };
        target.extend_from_slice(data);
        if let Some(after) = after {
            target.extend_from_slice(&after);
        }
        Ok(())
    }

    /// The segments as `(address, bytes)`, in ascending address order.
    pub fn segments(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.segments.iter().map(|(&a, d)| (a, d.as_slice()))
    }

    /// Number of segments (runs of contiguous data).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// True if the image holds no data.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Number of data bytes (not the span from start to end).
    pub fn total_len(&self) -> u64 {
        self.segments.values().map(|d| d.len() as u64).sum()
    }

    /// The lowest address holding data.
    pub fn start(&self) -> Option<u32> {
        self.segments.keys().next().copied()
    }

    /// One past the highest address holding data (a `u64`, so that data
    /// ending at `0xFFFFFFFF` gives `0x1_0000_0000`).
    pub fn end(&self) -> Option<u64> {
        self.segments
            .iter()
            .next_back()
            .map(|(&a, d)| u64::from(a) + d.len() as u64)
    }

    /// The data inside `[start, start + len)`, as `(address, bytes)` pieces
    /// in ascending order. Gaps are left out; nothing is filled.
    pub fn slice(&self, start: u32, len: u32) -> Vec<(u32, &[u8])> {
        let lo = u64::from(start);
        let hi = lo + u64::from(len);
        let mut pieces = Vec::new();
        if len == 0 {
            return pieces;
        }
        let first = self
            .segments
            .range(..=start)
            .next_back()
            .map_or(start, |(&a, _)| a);
        for (&a, data) in self.segments.range(first..) {
            let seg_lo = u64::from(a);
            if seg_lo >= hi {
                break;
            }
            let from = seg_lo.max(lo);
            let to = (seg_lo + data.len() as u64).min(hi);
            if from < to {
                // from and to lie within the segment, so the offsets fit.
                let piece = &data[(from - seg_lo) as usize..(to - seg_lo) as usize];
                pieces.push((from as u32, piece));
            }
        }
        pieces
    }

    /// The byte at `addr`, if the image has one there.
    pub fn get(&self, addr: u32) -> Option<u8> {
        let (&a, data) = self.segments.range(..=addr).next_back()?;
        data.get((addr - a) as usize).copied()
    }

    /// A copy of the image moved by `offset` bytes (negative moves down).
    ///
    /// The entry point, if any, moves with the data. Fails with
    /// [`ImageError::AddressOverflow`] if any data or the entry point would
    /// leave the 32-bit address space.
    pub fn relocate(&self, offset: i64) -> Result<Image, ImageError> {
        let shift = |addr: u32, len: u64| -> Result<u32, ImageError> {
            let moved = i128::from(addr) + i128::from(offset);
            if moved < 0 || moved + i128::from(len) > i128::from(ADDRESS_SPACE) {
                return Err(ImageError::AddressOverflow {
                    start: i64::try_from(moved).unwrap_or(if moved < 0 {
                        i64::MIN
                    } else {
                        i64::MAX
                    }),
                    len,
                });
            }
            u32::try_from(moved).map_err(|_| ImageError::AddressOverflow {
                start: i64::MAX,
                len,
            })
        };
        let mut segments = BTreeMap::new();
        for (&addr, data) in &self.segments {
            segments.insert(shift(addr, data.len() as u64)?, data.clone());
        }
        let entry = self.entry.map(|e| shift(e, 0)).transpose()?;
        Ok(Image { segments, entry })
    }

    /// A raw binary placed at `addr`. Empty `data` is [`ImageError::Empty`].
    pub fn from_bin(data: &[u8], addr: u32) -> Result<Image, ImageError> {
        if data.is_empty() {
            return Err(ImageError::Empty { path: None });
        }
        let mut image = Image::new();
        image.add(addr, data)?;
        Ok(image)
    }

    /// Parses Intel HEX text.
    ///
    /// Handles record types 00 (data), 01 (end of file; anything after it is
    /// ignored), 02 (extended segment address, base = value × 16), 03 (start
    /// segment address, entry = CS × 16 + IP), 04 (extended linear address)
    /// and 05 (start linear address). Blank lines and surrounding whitespace
    /// are ignored. A missing end-of-file record is an error, as it usually
    /// means a truncated file. Errors are wrapped in
    /// [`ImageError::AtLine`] with the 1-based line number.
    pub fn from_ihex(text: &str) -> Result<Image, ImageError> {
        let mut chunks = Vec::new();
        let mut base: u64 = 0;
        let mut entry = None;
        let mut saw_eof = false;
        for (line_no, line) in text_lines(text) {
            let record = parse_ihex_record(line).map_err(|e| e.at_line(line_no))?;
            match record {
                ihex::Record::Data { offset, value } => {
                    let addr = base + u64::from(offset);
                    check_fits(addr, value.len()).map_err(|e| e.at_line(line_no))?;
                    if !value.is_empty() {
                        chunks.push(Chunk {
                            line: line_no,
                            addr: addr as u32,
                            data: value,
                        });
                    }
                }
                ihex::Record::EndOfFile => {
                    saw_eof = true;
                    break;
                }
                ihex::Record::ExtendedSegmentAddress(segment) => {
                    base = u64::from(segment) * 16;
                }
                ihex::Record::StartSegmentAddress { cs, ip } => {
                    entry = Some(u32::from(cs) * 16 + u32::from(ip));
                }
                ihex::Record::ExtendedLinearAddress(upper) => {
                    base = u64::from(upper) << 16;
                }
                ihex::Record::StartLinearAddress(address) => entry = Some(address),
            }
        }
        if !saw_eof {
            return Err(ImageError::MissingEndOfFile);
        }
        build(chunks, entry)
    }

    /// Parses Motorola S-record text.
    ///
    /// S0 (header) is checked and ignored, S1/S2/S3 carry data with 16/24/32
    /// bit addresses, S5/S6 (record counts) are ignored and S7/S8/S9 give the
    /// entry point. Blank lines and surrounding whitespace are ignored.
    /// Errors are wrapped in [`ImageError::AtLine`] with the 1-based line
    /// number.
    pub fn from_srec(text: &str) -> Result<Image, ImageError> {
        let mut chunks = Vec::new();
        let mut entry = None;
        for (line_no, line) in text_lines(text) {
            let Some(record) = parse_srec_record(line).map_err(|e| e.at_line(line_no))? else {
                continue;
            };
            let (addr, data) = match record {
                srec::Record::S1(d) => (u32::from(d.address), d.data),
                srec::Record::S2(d) => (u32::from(d.address), d.data),
                srec::Record::S3(d) => (u32::from(d.address), d.data),
                srec::Record::S7(a) => {
                    entry = Some(u32::from(a));
                    continue;
                }
                srec::Record::S8(a) => {
                    entry = Some(u32::from(a));
                    continue;
                }
                srec::Record::S9(a) => {
                    entry = Some(u32::from(a));
                    continue;
                }
                srec::Record::S0(_) | srec::Record::S5(_) | srec::Record::S6(_) => continue,
            };
            check_fits(u64::from(addr), data.len()).map_err(|e| e.at_line(line_no))?;
            if !data.is_empty() {
                chunks.push(Chunk {
                    line: line_no,
                    addr,
                    data,
                });
            }
        }
        build(chunks, entry)
    }

    /// Parses an ELF file (32- or 64-bit, little- or big-endian).
    ///
    /// Loads the first `p_filesz` bytes of every `PT_LOAD` segment with a
    /// non-zero file size at its physical address `p_paddr`; the entry point
    /// is `e_entry`. See the module documentation for why.
    pub fn from_elf(data: &[u8]) -> Result<Image, ImageError> {
        match object::FileKind::parse(data) {
            Ok(object::FileKind::Elf32) => {
                parse_elf::<object::elf::FileHeader32<object::Endianness>>(data)
            }
            Ok(object::FileKind::Elf64) => {
                parse_elf::<object::elf::FileHeader64<object::Endianness>>(data)
            }
            _ => Err(ImageError::Elf {
                problem: if data.starts_with(b"\x7fELF") {
                    "unsupported ELF class (neither 32- nor 64-bit)".to_string()
                } else {
                    "missing the \\x7fELF signature".to_string()
                },
            }),
        }
    }

    /// Loads a firmware file.
    ///
    /// `format` overrides detection by [`ImageFormat::detect`]. A file whose
    /// format cannot be detected is read as raw binary when `base` is given,
    /// and is [`ImageError::UnknownFormat`] otherwise. Raw binary needs
    /// `base` ([`ImageError::NeedAddress`]); every other format carries its
    /// own addresses, so a `base` is [`ImageError::AddressNotAllowed`].
    /// Parse errors are wrapped in [`ImageError::InFile`]; a file without
    /// any data is [`ImageError::Empty`].
    pub fn load(
        path: &Path,
        format: Option<ImageFormat>,
        base: Option<u32>,
    ) -> Result<Image, ImageError> {
        let content = std::fs::read(path).map_err(|error| ImageError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let format = match format.or_else(|| ImageFormat::detect(path, &content)) {
            Some(format) => format,
            None if base.is_some() => ImageFormat::Bin,
            None => {
                return Err(ImageError::UnknownFormat {
                    path: path.to_path_buf(),
                })
            }
        };
        let empty = || ImageError::Empty {
            path: Some(path.to_path_buf()),
        };
        let in_file = |error: ImageError| ImageError::InFile {
            path: path.to_path_buf(),
            error: Box::new(error),
        };
        if format == ImageFormat::Bin {
            let Some(base) = base else {
                return Err(ImageError::NeedAddress {
                    path: path.to_path_buf(),
                });
            };
            if content.is_empty() {
                return Err(empty());
            }
            return Image::from_bin(&content, base).map_err(in_file);
        }
        if base.is_some() {
            return Err(ImageError::AddressNotAllowed {
                format,
                path: path.to_path_buf(),
            });
        }
        let image = match format {
            ImageFormat::IntelHex => Image::from_ihex(&String::from_utf8_lossy(&content)),
            ImageFormat::SRecord => Image::from_srec(&String::from_utf8_lossy(&content)),
            ImageFormat::Elf | ImageFormat::Bin => Image::from_elf(&content),
        }
        .map_err(in_file)?;
        if image.is_empty() {
            return Err(empty());
        }
        Ok(image)
    }

    /// The entry point given by the file, if any: ELF `e_entry`, Intel HEX
    /// record 03/05, or S-record S7/S8/S9.
    pub fn entry(&self) -> Option<u32> {
        self.entry
    }

    /// The image as Intel HEX text, written with the `ihex` crate.
    ///
    /// Emits an extended linear address record (04) whenever the upper 16
    /// address bits change, data records of at most 16 bytes that never
    /// cross a 64 KiB boundary, a start linear address record (05) if the
    /// image has an entry point, and the end-of-file record. The result
    /// parses back with [`Image::from_ihex`] to an equal image.
    pub fn to_ihex(&self) -> Result<String, ImageError> {
        let mut records = Vec::new();
        let mut upper: Option<u16> = None;
        for (&addr, data) in &self.segments {
            let mut pos = 0usize;
            while pos < data.len() {
                // Below 2^32, as every segment fits in the address space.
                let at = u64::from(addr) + pos as u64;
                let hi = (at >> 16) as u16;
                let lo = (at & 0xFFFF) as u16;
                let room = 0x1_0000 - usize::from(lo);
                let n = IHEX_RECORD_LEN.min(room).min(data.len() - pos);
                if upper != Some(hi) {
                    records.push(ihex::Record::ExtendedLinearAddress(hi));
                    upper = Some(hi);
                }
                records.push(ihex::Record::Data {
                    offset: lo,
                    value: data[pos..pos + n].to_vec(),
                });
                pos += n;
            }
        }
        if let Some(entry) = self.entry {
            records.push(ihex::Record::StartLinearAddress(entry));
        }
        records.push(ihex::Record::EndOfFile);
        ihex::create_object_file_representation(&records).map_err(|e| ImageError::HexWrite {
            problem: e.to_string(),
        })
    }

    /// The bytes of `[start, start + len)`, with gaps filled with `fill`.
    pub fn to_dense(&self, start: u32, len: u32, fill: u8) -> Vec<u8> {
        let mut out = vec![fill; len as usize];
        for (addr, piece) in self.slice(start, len) {
            let off = (addr - start) as usize;
            out[off..off + piece.len()].copy_from_slice(piece);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes `content` to a temporary file with the given name.
    fn temp_file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).expect("test setup");
        file.write_all(content).expect("test setup");
        (dir, path)
    }

    fn segs(image: &Image) -> Vec<(u32, Vec<u8>)> {
        image.segments().map(|(a, d)| (a, d.to_vec())).collect()
    }

    // ---- raw binary and load() ----

    #[test]
    fn bin_loads_at_given_address() {
        let (_dir, path) = temp_file("fw.bin", &[1, 2, 3, 4]);
        let image = Image::load(&path, None, Some(0x0800_0000)).expect("test setup");
        assert_eq!(segs(&image), vec![(0x0800_0000, vec![1, 2, 3, 4])]);
        assert_eq!(image.entry(), None);
        assert_eq!(image.start(), Some(0x0800_0000));
        assert_eq!(image.end(), Some(0x0800_0004));
    }

    #[test]
    fn empty_bin_is_an_error() {
        assert!(matches!(
            Image::from_bin(&[], 0x0800_0000),
            Err(ImageError::Empty { path: None })
        ));
        let (_dir, path) = temp_file("empty.bin", &[]);
        let err = Image::load(&path, None, Some(0x0800_0000)).unwrap_err();
        assert!(matches!(&err, ImageError::Empty { path: Some(p) } if *p == path));
        assert!(
            err.to_string().contains("empty.bin contains no data"),
            "{err}"
        );
    }

    #[test]
    fn bin_without_address_needs_one() {
        let (_dir, path) = temp_file("fw.bin", &[1, 2, 3]);
        let err = Image::load(&path, None, None).unwrap_err();
        assert!(matches!(err, ImageError::NeedAddress { .. }), "{err:?}");
        assert!(err.to_string().contains("pass --address"), "{err}");
        // An explicit format works for any extension.
        let (_dir2, other) = temp_file("fw.dat", &[1, 2, 3]);
        let err = Image::load(&other, Some(ImageFormat::Bin), None).unwrap_err();
        assert!(matches!(err, ImageError::NeedAddress { .. }), "{err:?}");
        let image = Image::load(&other, Some(ImageFormat::Bin), Some(0x100)).expect("test setup");
        assert_eq!(segs(&image), vec![(0x100, vec![1, 2, 3])]);
    }

    #[test]
    fn address_not_allowed_for_hex() {
        let (_dir, path) = temp_file("image.hex", b":0100000055AA\n:00000001FF\n");
        let err = Image::load(&path, None, Some(0x0800_0000)).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::AddressNotAllowed {
                    format: ImageFormat::IntelHex,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("--address is only for raw .bin files;"),
            "{msg}"
        );
        assert!(
            msg.contains("image.hex is Intel HEX and carries its own addresses"),
            "{msg}"
        );
        // Without the address it loads.
        let image = Image::load(&path, None, None).expect("test setup");
        assert_eq!(segs(&image), vec![(0, vec![0x55])]);
    }

    #[test]
    fn unknown_format_and_fallback_to_bin() {
        let (_dir, path) = temp_file("fw.dat", &[0xFF, 0x00, 0x12]);
        let err = Image::load(&path, None, None).unwrap_err();
        assert!(matches!(err, ImageError::UnknownFormat { .. }), "{err:?}");
        let image = Image::load(&path, None, Some(0x2000)).expect("test setup");
        assert_eq!(segs(&image), vec![(0x2000, vec![0xFF, 0x00, 0x12])]);
    }

    #[test]
    fn missing_file_names_path() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("nope.hex");
        let err = Image::load(&path, None, None).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.hex"), "{err}");
    }

    #[test]
    fn hex_without_data_is_empty() {
        let (_dir, path) = temp_file("blank.hex", b":00000001FF\n");
        let err = Image::load(&path, None, None).unwrap_err();
        assert!(
            matches!(err, ImageError::Empty { path: Some(_) }),
            "{err:?}"
        );
    }

    // ---- Intel HEX ----

    const LINEAR_HEX: &str = "\
:020000040800F2
:10000000000102030405060708090A0B0C0D0E0F78
:04001000AABBCCDDDE
:020000040801F1
:08F000000102030405060708E4
:04000005080001C529
:00000001FF
";

    #[test]
    fn ihex_extended_linear_is_sparse() {
        let image = Image::from_ihex(LINEAR_HEX).expect("test setup");
        let mut first: Vec<u8> = (0..16).collect();
        first.extend([0xAA, 0xBB, 0xCC, 0xDD]);
        assert_eq!(
            segs(&image),
            vec![
                (0x0800_0000, first),
                (0x0801_F000, vec![1, 2, 3, 4, 5, 6, 7, 8])
            ]
        );
        assert_eq!(image.segment_count(), 2);
        assert_eq!(image.total_len(), 28);
        assert_eq!(image.get(0x0800_0014), None, "gap must not be filled");
        assert_eq!(image.get(0x0801_EFFF), None);
        assert_eq!(image.entry(), Some(0x0800_01C5));
        assert_eq!(image.end(), Some(0x0801_F008));
    }

    #[test]
    fn ihex_crlf_blank_lines_and_data_after_eof() {
        let text = LINEAR_HEX.replace('\n', "\r\n\r\n") + ":garbage after EOF\n";
        let image = Image::from_ihex(&text).expect("test setup");
        assert_eq!(image, Image::from_ihex(LINEAR_HEX).expect("test setup"));
    }

    #[test]
    fn ihex_extended_segment_address() {
        let text = "\
:020000021200EA
:04001000DEADBEEFB4
:0400000312000010D7
:00000001FF
";
        let image = Image::from_ihex(text).expect("test setup");
        // 0x1200 * 16 + 0x0010
        assert_eq!(segs(&image), vec![(0x12010, vec![0xDE, 0xAD, 0xBE, 0xEF])]);
        assert_eq!(image.entry(), Some(0x12010));
    }

    #[test]
    fn ihex_bad_checksum_names_line() {
        let text = LINEAR_HEX.replace(":04001000AABBCCDDDE", ":04001000AABBCCDDDF");
        let err = Image::from_ihex(&text).unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(
            matches!(
                err.root_cause(),
                ImageError::Checksum {
                    record: 0xDF,
                    computed: 0xDE
                }
            ),
            "{err:?}"
        );
        let (_dir, path) = temp_file("image.hex", text.as_bytes());
        let err = Image::load(&path, None, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.ends_with("image.hex line 3: checksum mismatch (record says 0xDF, computed 0xDE)"),
            "{msg}"
        );
    }

    #[test]
    fn ihex_truncated_record() {
        let text = LINEAR_HEX.replace(":08F000000102030405060708E4", ":08F0000001020304");
        let err = Image::from_ihex(&text).unwrap_err();
        assert_eq!(err.line(), Some(5));
        let msg = err.to_string();
        assert!(msg.starts_with("line 5: truncated record"), "{msg}");
    }

    #[test]
    fn ihex_other_syntax_errors() {
        let cases = [
            ("1000000000\n:00000001FF\n", "starting with ':'"),
            (":0100000G55A9\n:00000001FF\n", "invalid character 'G'"),
            (
                ":0100000055AA00\n:00000001FF\n",
                "longer than its byte count",
            ),
            (":00000006FA\n:00000001FF\n", "unsupported record type 0x06"),
        ];
        for (text, expected) in cases {
            let err = Image::from_ihex(text).unwrap_err();
            assert_eq!(err.line(), Some(1), "{text}");
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
        let err = Image::from_ihex(":0100000055AA\n").unwrap_err();
        assert!(matches!(err, ImageError::MissingEndOfFile), "{err:?}");
    }

    #[test]
    fn ihex_overlapping_records_name_line() {
        let text = ":0400000001020304F2\n:020002000506F1\n:00000001FF\n";
        let err = Image::from_ihex(text).unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert!(
            matches!(err.root_cause(), ImageError::Overlap { start: 2, end: 4 }),
            "{err:?}"
        );
    }

    #[test]
    fn ihex_round_trip_across_64k_boundary() {
        let mut image = Image::new();
        let big: Vec<u8> = (0..100u32).map(|i| (i * 7) as u8).collect();
        image.add(0x0800_FFD0, &big).expect("test setup"); // spans 0x0801_0000
        image.add(0x0802_0005, &[9, 8, 7]).expect("test setup");
        image.add(0xFFFF_FFFE, &[1, 2]).expect("test setup");
        image.entry = Some(0x0800_FFD1);
        let text = image.to_ihex().expect("test setup");
        assert!(text.contains(":020000040801F1"), "{text}");
        assert!(text.ends_with(":00000001FF\n"), "{text}");
        // No data record crosses the 64 KiB boundary.
        for line in text.lines() {
            assert!(line.len() <= 1 + 2 * (5 + 16), "{line}");
        }
        let back = Image::from_ihex(&text).expect("test setup");
        assert_eq!(back, image);
        assert_eq!(back.segment_count(), 3);
    }

    #[test]
    fn one_mebibyte_loads_quickly() {
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i ^ (i >> 8)) as u8).collect();
        let image = Image::from_bin(&data, 0x0800_0000).expect("test setup");
        let text = image.to_ihex().expect("test setup");
        let started = std::time::Instant::now();
        let back = Image::from_ihex(&text).expect("test setup");
        assert_eq!(back, image);
        // Records in reverse order (each 64 KiB block after its extended
        // address record): still one segment, and no quadratic merging.
        let eof = ":00000001FF";
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        for line in text.lines().filter(|l| *l != eof) {
            if line.starts_with(":02000004") {
                blocks.push(vec![line]);
            } else {
                blocks.last_mut().expect("test setup").push(line);
            }
        }
        let mut reversed = String::new();
        for block in blocks.iter().rev() {
            reversed.push_str(block[0]);
            reversed.push('\n');
            for line in block[1..].iter().rev() {
                reversed.push_str(line);
                reversed.push('\n');
            }
        }
        reversed.push_str(eof);
        let back = Image::from_ihex(&reversed).expect("test setup");
        assert_eq!(back, image);
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }

    // ---- S-records ----

    const SREC: &str = "\
S008000068656C6C6FE3
S31508000000000102030405060708090A0B0C0D0E0F6A
S30708000010AABB7B
S3090801000001020304E3
S5030003F9
S705080001C52C
";

    #[test]
    fn srec_s3_records() {
        let image = Image::from_srec(SREC).expect("test setup");
        let mut first: Vec<u8> = (0..16).collect();
        first.extend([0xAA, 0xBB]);
        assert_eq!(
            segs(&image),
            vec![(0x0800_0000, first), (0x0801_0000, vec![1, 2, 3, 4])]
        );
        assert_eq!(image.entry(), Some(0x0800_01C5));
    }

    #[test]
    fn srec_s1_and_s2_records() {
        let text = "S106100011223383\nS104100344A4\nS9031000EC\n";
        let image = Image::from_srec(text).expect("test setup");
        assert_eq!(segs(&image), vec![(0x1000, vec![0x11, 0x22, 0x33, 0x44])]);
        assert_eq!(image.entry(), Some(0x1000));
        let image = Image::from_srec("S2051234560955\nS8041234565F\n").expect("test setup");
        assert_eq!(segs(&image), vec![(0x12_3456, vec![9])]);
        assert_eq!(image.entry(), Some(0x12_3456));
    }

    #[test]
    fn srec_non_utf8_header_is_ignored() {
        // S0 with bytes 0xFF 0xFE as header text; "load" goes through lossy
        // UTF-8 only for invalid bytes in the file, here the hex text is ASCII.
        let image = Image::from_srec("S0050000FFFEFD\nS104100344A4\n").expect("test setup");
        assert_eq!(segs(&image), vec![(0x1003, vec![0x44])]);
    }

    #[test]
    fn srec_bad_checksum_names_line() {
        let text = SREC.replace("S30708000010AABB7B", "S30708000010AABB7C");
        let err = Image::from_srec(&text).unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(
            matches!(
                err.root_cause(),
                ImageError::Checksum {
                    record: 0x7C,
                    computed: 0x7B
                }
            ),
            "{err:?}"
        );
        let (_dir, path) = temp_file("fw.s37", text.as_bytes());
        let msg = Image::load(&path, None, None).unwrap_err().to_string();
        assert!(
            msg.ends_with("fw.s37 line 3: checksum mismatch (record says 0x7C, computed 0x7B)"),
            "{msg}"
        );
    }

    #[test]
    fn srec_syntax_errors() {
        let cases = [
            ("X1061000112233\n", "starting with 'S'"),
            ("SX061000112233\n", "record type digit"),
            ("S4061000112233\n", "S4 is reserved"),
            ("S10610001122\n", "truncated record"),
            ("S1061000112233830000\n", "longer than its byte count"),
            ("S10210ED\n", "byte count 0x02 is wrong for an S1 record"),
            ("S100\n", "byte count is zero"),
            ("S1é6100011223383\n", "invalid character"),
        ];
        for (text, expected) in cases {
            let err = Image::from_srec(text).unwrap_err();
            assert_eq!(err.line(), Some(1), "{text}");
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    // ---- ELF ----

    struct Phdr<'a> {
        p_type: u32,
        vaddr: u64,
        paddr: u64,
        data: &'a [u8],
        memsz: u64,
    }

    /// Builds a minimal ELF executable: header, program headers, then data.
    fn build_elf(is64: bool, big: bool, entry: u64, phdrs: &[Phdr]) -> Vec<u8> {
        let mut out = Vec::new();
        let u16b = |out: &mut Vec<u8>, v: u16| {
            out.extend(if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        let u32b = |out: &mut Vec<u8>, v: u32| {
            out.extend(if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        let word = |out: &mut Vec<u8>, v: u64| {
            if is64 {
                out.extend(if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                })
            } else {
                let v = v as u32;
                out.extend(if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                })
            }
        };
        let (ehsize, phentsize) = if is64 { (64u64, 56u64) } else { (52, 32) };
        out.extend(b"\x7fELF");
        out.push(if is64 { 2 } else { 1 });
        out.push(if big { 2 } else { 1 });
        out.push(1); // EI_VERSION
        out.extend([0; 9]);
        u16b(&mut out, 2); // ET_EXEC
        u16b(&mut out, 40); // EM_ARM
        u32b(&mut out, 1);
        word(&mut out, entry);
        word(&mut out, ehsize); // e_phoff
        word(&mut out, 0); // e_shoff
        u32b(&mut out, 0); // e_flags
        u16b(&mut out, ehsize as u16);
        u16b(&mut out, phentsize as u16);
        u16b(&mut out, phdrs.len() as u16);
        u16b(&mut out, 0); // e_shentsize
        u16b(&mut out, 0); // e_shnum
        u16b(&mut out, 0); // e_shstrndx
        assert_eq!(out.len() as u64, ehsize);
        let mut offset = ehsize + phentsize * phdrs.len() as u64;
        for ph in phdrs {
            let filesz = ph.data.len() as u64;
            u32b(&mut out, ph.p_type);
            if is64 {
                u32b(&mut out, 6); // p_flags
            }
            word(&mut out, offset);
            word(&mut out, ph.vaddr);
            word(&mut out, ph.paddr);
            word(&mut out, filesz);
            word(&mut out, ph.memsz);
            if !is64 {
                u32b(&mut out, 6); // p_flags
            }
            word(&mut out, 4); // p_align
            offset += filesz;
        }
        for ph in phdrs {
            out.extend(ph.data);
        }
        out
    }

    fn sample_phdrs<'a>(text: &'a [u8], data: &'a [u8]) -> Vec<Phdr<'a>> {
        vec![
            // Code, run where it is stored.
            Phdr {
                p_type: 1,
                vaddr: 0x0800_0000,
                paddr: 0x0800_0000,
                data: text,
                memsz: text.len() as u64,
            },
            // PT_NOTE: not loaded.
            Phdr {
                p_type: 4,
                vaddr: 0,
                paddr: 0x0900_0000,
                data: &[0xEE; 4],
                memsz: 4,
            },
            // .data: runs at 0x2000_0000, stored at 0x0800_1000.
            Phdr {
                p_type: 1,
                vaddr: 0x2000_0000,
                paddr: 0x0800_1000,
                data,
                memsz: data.len() as u64,
            },
            // .bss: no file bytes.
            Phdr {
                p_type: 1,
                vaddr: 0x2000_0008,
                paddr: 0x0800_1008,
                data: &[],
                memsz: 0x100,
            },
        ]
    }

    #[test]
    fn elf32_little_endian_uses_physical_addresses() {
        let data = [1, 2, 3, 4, 5, 6, 7, 8];
        // The two program headers the task calls for: .data and .bss.
        let phdrs = vec![
            Phdr {
                p_type: 1,
                vaddr: 0x2000_0000,
                paddr: 0x0800_1000,
                data: &data,
                memsz: 8,
            },
            Phdr {
                p_type: 1,
                vaddr: 0x2000_0008,
                paddr: 0x0800_1008,
                data: &[],
                memsz: 0x100,
            },
        ];
        let elf = build_elf(false, false, 0x0800_0101, &phdrs);
        let image = Image::from_elf(&elf).expect("test setup");
        assert_eq!(segs(&image), vec![(0x0800_1000, data.to_vec())]);
        assert_eq!(image.entry(), Some(0x0800_0101));
        assert_eq!(image.get(0x2000_0000), None);
        assert_eq!(image.get(0x0800_1008), None, "bss must not be loaded");

        let (_dir, path) = temp_file("firmware", &elf);
        assert_eq!(Image::load(&path, None, None).expect("test setup"), image);
    }

    #[test]
    fn elf_all_classes_and_endiannesses() {
        let text: Vec<u8> = (0..32).collect();
        let data = [0xA5; 8];
        for is64 in [false, true] {
            for big in [false, true] {
                let elf = build_elf(is64, big, 0x0800_0009, &sample_phdrs(&text, &data));
                let image = Image::from_elf(&elf).expect("test setup");
                assert_eq!(
                    segs(&image),
                    vec![(0x0800_0000, text.clone()), (0x0800_1000, data.to_vec())],
                    "is64={is64} big={big}"
                );
                assert_eq!(image.entry(), Some(0x0800_0009));
            }
        }
    }

    #[test]
    fn elf_errors() {
        let err = Image::from_elf(b"\x7fELF").unwrap_err();
        assert!(matches!(err, ImageError::Elf { .. }), "{err:?}");
        let err = Image::from_elf(b"not an elf at all").unwrap_err();
        assert!(matches!(err, ImageError::Elf { .. }), "{err:?}");
        // Segment data beyond the end of the file.
        let data = [1u8; 8];
        let mut elf = build_elf(false, false, 0, &sample_phdrs(&[0; 4], &data));
        elf.truncate(elf.len() - 4);
        let err = Image::from_elf(&elf).unwrap_err();
        assert!(
            err.to_string().contains("beyond the end of the file"),
            "{err}"
        );
        // 64-bit address that does not fit in 32 bits.
        let phdrs = [Phdr {
            p_type: 1,
            vaddr: 0,
            paddr: 0x1_0000_0000,
            data: &data,
            memsz: 8,
        }];
        let err = Image::from_elf(&build_elf(true, false, 0, &phdrs)).unwrap_err();
        assert!(matches!(err, ImageError::AddressOverflow { .. }), "{err:?}");
    }

    // ---- the map itself ----

    #[test]
    fn overlap_is_an_error_at_both_ends() {
        let mut image = Image::new();
        image.add(0x100, &[0; 0x10]).expect("test setup");
        let before = image.clone();
        // Partial overlap at the start of the existing segment.
        let err = image.add(0xF8, &[1; 0x10]).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Overlap {
                    start: 0x100,
                    end: 0x108
                }
            ),
            "{err:?}"
        );
        // Partial overlap at the end.
        let err = image.add(0x10C, &[1; 8]).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Overlap {
                    start: 0x10C,
                    end: 0x110
                }
            ),
            "{err:?}"
        );
        // Inside, covering, and a single identical byte.
        assert!(image.add(0x104, &[1; 2]).is_err());
        assert!(image.add(0xF0, &[1; 0x40]).is_err());
        assert!(image.add(0x10F, &[0]).is_err());
        assert_eq!(image, before, "a failed add changes nothing");
        let msg = image
            .add(0x0800_0100, &[0; 0x10])
            .and_then(|()| image.add(0x0800_00F0, &[0; 0x20]));
        assert_eq!(
            msg.unwrap_err().to_string(),
            "overlapping data at 0x08000100..0x08000110: two segments of the image write the same bytes"
        );
    }

    #[test]
    fn adjacent_data_merges() {
        let mut image = Image::new();
        image.add(0x10, &[2, 2]).expect("test setup");
        image.add(0x20, &[4]).expect("test setup");
        assert_eq!(image.segment_count(), 2);
        image.add(0x0E, &[1, 1]).expect("test setup"); // before
        image.add(0x12, &[3; 14]).expect("test setup"); // bridges both
        image.add(0x21, &[5]).expect("test setup"); // after
        image.add(0x30, &[]).expect("test setup"); // no-op
        let mut expected = vec![1, 1, 2, 2];
        expected.extend([3; 14]);
        expected.extend([4, 5]);
        assert_eq!(segs(&image), vec![(0x0E, expected)]);
        assert_eq!(image.total_len(), 20);
        assert_eq!(image.get(0x21), Some(5));
        assert_eq!(image.get(0x22), None);
        assert_eq!(image.get(0x0D), None);
    }

    #[test]
    fn add_past_end_of_address_space_fails() {
        let mut image = Image::new();
        image.add(0xFFFF_FFFF, &[1]).expect("test setup");
        assert_eq!(image.end(), Some(0x1_0000_0000));
        let err = image.add(0xFFFF_FFF0, &[0; 0x20]).unwrap_err();
        assert!(matches!(err, ImageError::AddressOverflow { .. }), "{err:?}");
        assert!(err.to_string().contains("0xFFFFFFF0"), "{err}");
        assert!(Image::from_bin(&[0; 2], 0xFFFF_FFFF).is_err());
    }

    #[test]
    fn slice_across_segments() {
        let mut image = Image::new();
        image.add(0x100, &[1, 2, 3, 4]).expect("test setup");
        image.add(0x108, &[5, 6, 7, 8]).expect("test setup");
        image.add(0x200, &[9]).expect("test setup");
        assert_eq!(
            image.slice(0x102, 0x8),
            vec![(0x102, &[3u8, 4][..]), (0x108, &[5u8, 6][..])]
        );
        assert_eq!(image.slice(0x104, 4), Vec::<(u32, &[u8])>::new());
        assert_eq!(image.slice(0, 0x1000).len(), 3);
        assert_eq!(image.slice(0x100, 0), Vec::<(u32, &[u8])>::new());
        assert_eq!(image.slice(0x200, 1), vec![(0x200, &[9u8][..])]);
        assert_eq!(
            image.slice(0xFFFF_FFF0, 0xFFFF_FFFF),
            Vec::<(u32, &[u8])>::new()
        );
    }

    #[test]
    fn to_dense_fills_gaps() {
        let mut image = Image::new();
        image.add(0x100, &[1, 2]).expect("test setup");
        image.add(0x104, &[3]).expect("test setup");
        assert_eq!(
            image.to_dense(0xFF, 8, 0xFF),
            vec![0xFF, 1, 2, 0xFF, 0xFF, 3, 0xFF, 0xFF]
        );
        assert_eq!(image.to_dense(0x101, 2, 0), vec![2, 0]);
    }

    #[test]
    fn relocate_moves_data_and_entry() {
        let mut image = Image::from_ihex(LINEAR_HEX).expect("test setup");
        let moved = image.relocate(0x4000).expect("test setup");
        assert_eq!(moved.start(), Some(0x0800_4000));
        assert_eq!(moved.segment_count(), 2);
        assert_eq!(moved.entry(), Some(0x0800_41C5));
        assert_eq!(moved.relocate(-0x4000).expect("test setup"), image);
        let down = image.relocate(-0x0800_0000).expect("test setup");
        assert_eq!(down.start(), Some(0));
        assert!(matches!(
            image.relocate(-0x0800_0001),
            Err(ImageError::AddressOverflow { start: -1, .. })
        ));
        assert!(image.relocate(0xF800_0000).is_err());
        assert!(image.relocate(i64::MAX).is_err());
        assert!(image.relocate(i64::MIN).is_err());
        image.entry = None;
        assert_eq!(image.relocate(0).expect("test setup"), image);
    }

    #[test]
    fn detect_by_extension() {
        let cases = [
            ("a.bin", ImageFormat::Bin),
            ("a.IMG", ImageFormat::Bin),
            ("a.raw", ImageFormat::Bin),
            ("a.hex", ImageFormat::IntelHex),
            ("a.ihex", ImageFormat::IntelHex),
            ("a.ihx", ImageFormat::IntelHex),
            ("a.s19", ImageFormat::SRecord),
            ("a.s28", ImageFormat::SRecord),
            ("a.S37", ImageFormat::SRecord),
            ("a.srec", ImageFormat::SRecord),
            ("a.mot", ImageFormat::SRecord),
            ("a.sx", ImageFormat::SRecord),
            ("a.elf", ImageFormat::Elf),
            ("a.axf", ImageFormat::Elf),
            ("a.out", ImageFormat::Elf),
        ];
        for (name, format) in cases {
            // The extension wins over contradicting content.
            assert_eq!(
                ImageFormat::detect(Path::new(name), b"\x7fELF:S1"),
                Some(format),
                "{name}"
            );
            assert_eq!(
                ImageFormat::detect(Path::new(name), b":00"),
                Some(format),
                "{name}"
            );
        }
    }

    #[test]
    fn detect_by_content() {
        let p = Path::new("firmware");
        assert_eq!(
            ImageFormat::detect(p, b"\x7fELF\x01"),
            Some(ImageFormat::Elf)
        );
        assert_eq!(
            ImageFormat::detect(p, b"\r\n  :1000"),
            Some(ImageFormat::IntelHex)
        );
        assert_eq!(
            ImageFormat::detect(p, b"\xEF\xBB\xBF:1000"),
            Some(ImageFormat::IntelHex)
        );
        assert_eq!(
            ImageFormat::detect(p, b"\nS00600"),
            Some(ImageFormat::SRecord)
        );
        assert_eq!(ImageFormat::detect(p, b"Something"), None);
        assert_eq!(ImageFormat::detect(p, b"S"), None);
        assert_eq!(ImageFormat::detect(p, b"\x00\x10\x00\x20"), None);
        assert_eq!(ImageFormat::detect(p, b""), None);
        assert_eq!(
            ImageFormat::detect(Path::new("x.txt"), b":00"),
            Some(ImageFormat::IntelHex)
        );
    }
}
