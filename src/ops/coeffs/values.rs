//! Values for a layout's fields, from TOML, JSON or CSV, each checked against its field's type.
//!
//! - **TOML / JSON:** one key per field (`gain = 1.5`, `"offsets": [1, -2, 3, 4]`). Integers may
//!   also be strings in decimal, `0x` hex, `0b` binary or `0o` octal with `_` separators
//!   (`"0xFFFF_FFFF_FFFF_FFFF"`: TOML integers stop at 2^63 - 1). Floats accept integers. Arrays
//!   need exactly `count` elements. A byte string is a text string (its UTF-8 bytes) or an array
//!   of byte values, at most `len` bytes, zero-padded to `len`.
//! - **CSV:** a header row of field names and one row of values (a table of many rows serves
//!   `coeffs write --table`, see [`Table`]). An array is one cell with its elements separated by
//!   `;` (`1;-2;3;4`); a byte string is the cell's text. Cells are trimmed; lines starting with
//!   `#` are comments.
//!
//! Every field needs a value and every key must name a field. Errors name the file, the line
//! where known, the field, the element and the value.

use super::layout::{ElemType, Field, Layout};
use crate::error::{Error, Result};
use crate::units::line_of;
use std::collections::BTreeMap;
use std::path::Path;

/// One element of a field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// u8 to u64.
    Unsigned(u64),
    /// i8 to i64.
    Signed(i64),
    /// f32 (already rounded to single precision) or f64.
    Float(f64),
    /// A byte string, padded to its field's length.
    Bytes(Vec<u8>),
}

/// A value for every field of a layout, in layout order, already range-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    fields: Vec<Vec<Scalar>>,
}

impl Values {
    /// Values in layout order (one element per field, or `count` for arrays). The caller
    /// guarantees they fit; [`Values::check`] says whether they do.
    pub fn from_elements(fields: Vec<Vec<Scalar>>) -> Values {
        Values { fields }
    }

    /// The elements of the field at `index` (layout order).
    pub fn field(&self, index: usize) -> &[Scalar] {
        self.fields.get(index).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Check that these values fit `layout` (counts, types, ranges).
    pub fn check(&self, layout: &Layout) -> Result<()> {
        if self.fields.len() != layout.fields.len() {
            return Err(Error::InvalidRequest(format!(
                "{} values for the {} fields of layout {}",
                self.fields.len(),
                layout.fields.len(),
                layout.origin
            )));
        }
        for (field, elems) in layout.fields.iter().zip(&self.fields) {
            if elems.len() != field.elements() as usize {
                return Err(Error::InvalidRequest(format!(
                    "field '{}' has {} elements, the layout says {}",
                    field.name,
                    elems.len(),
                    field.elements()
                )));
            }
            for (i, e) in elems.iter().enumerate() {
                let raw = match e {
                    Scalar::Unsigned(v) => Raw::Int(i128::from(*v)),
                    Scalar::Signed(v) => Raw::Int(i128::from(*v)),
                    Scalar::Float(v) => Raw::Float(*v),
                    Scalar::Bytes(b) => Raw::Array(b.iter().map(|&x| Raw::Int(x.into())).collect()),
                };
                let at = Where::new("values", None, field, field.count.map(|_| i));
                let back = convert_elem(field.elem, &raw, &at)?;
                if back != *e {
                    return Err(at.err(format!("{e:?} does not fit {}", field.elem.name())));
                }
            }
        }
        Ok(())
    }

    /// Read values for `layout` from a file: `.toml`, `.json` or `.csv` (one row).
    pub fn load(layout: &Layout, path: &Path) -> Result<Values> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading values {}", path.display()), e))?;
        let origin = path.display().to_string();
        match extension(path).as_deref() {
            Some("toml") => Values::from_toml(layout, &text, &origin),
            Some("json") => Values::from_json(layout, &text, &origin),
            Some("csv") => Values::from_csv(layout, &text, &origin),
            _ => Err(Error::InvalidRequest(format!(
                "values {origin}: give a .toml, .json or .csv file (the extension says which)"
            ))),
        }
    }

    /// Values from a TOML document with one key per field.
    pub fn from_toml(layout: &Layout, text: &str, origin: &str) -> Result<Values> {
        let doc: BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| {
                let at = e
                    .span()
                    .map(|s| format!(", line {}", line_of(text, s.start)))
                    .unwrap_or_default();
                Error::InvalidRequest(format!("values {origin}{at}: {}", e.message().trim_end()))
            })?;
        let entries = doc
            .into_iter()
            .map(|(k, v)| {
                let line = line_of(text, v.span().start);
                (k, (Some(line), raw_from_toml(v.into_inner())))
            })
            .collect();
        collect(layout, entries, origin)
    }

    /// Values from a JSON object with one key per field.
    pub fn from_json(layout: &Layout, text: &str, origin: &str) -> Result<Values> {
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::InvalidRequest(format!("values {origin}, line {}: {e}", e.line()))
        })?;
        let serde_json::Value::Object(map) = doc else {
            return Err(Error::InvalidRequest(format!(
                "values {origin}: expected a JSON object with one key per field"
            )));
        };
        let entries = map
            .into_iter()
            .map(|(k, v)| (k, (None, raw_from_json(v))))
            .collect();
        collect(layout, entries, origin)
    }

    /// Values from a CSV file: a header of field names and exactly one row.
    pub fn from_csv(layout: &Layout, text: &str, origin: &str) -> Result<Values> {
        let (header, rows) = read_csv(text, origin)?;
        if rows.len() != 1 {
            return Err(Error::InvalidRequest(format!(
                "values {origin}: expected one row of values under the header, found {} (for a \
                 table with a row per unit, use coeffs write --table FILE --key ...)",
                rows.len()
            )));
        }
        let (line, cells) = &rows[0];
        row_values(layout, &header, cells, *line, origin, None)
    }

    /// The values as a JSON object (field name to number, string or array).
    pub fn to_json(&self, layout: &Layout) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (field, elems) in layout.fields.iter().zip(&self.fields) {
            let one = |s: &Scalar| scalar_json(s, field.elem);
            let v = match field.count {
                None => elems.first().map(one).unwrap_or(serde_json::Value::Null),
                Some(_) => serde_json::Value::Array(elems.iter().map(one).collect()),
            };
            map.insert(field.name.clone(), v);
        }
        serde_json::Value::Object(map)
    }

    /// The value of the field at `index` as a person reads it: `1.5`, `[1, -2, 3]`, `"SN-01"`.
    pub fn display(&self, layout: &Layout, index: usize) -> String {
        let elems = self.field(index);
        let one = |s: &Scalar| match s {
            Scalar::Unsigned(v) => v.to_string(),
            Scalar::Signed(v) => v.to_string(),
            Scalar::Float(v) => float_text(*v, layout.fields.get(index).map(|f| f.elem)),
            Scalar::Bytes(b) => match bytes_text(b) {
                Some(t) => format!("{t:?}"),
                None => format!(
                    "0x{}",
                    b.iter().map(|x| format!("{x:02X}")).collect::<String>()
                ),
            },
        };
        match layout.fields.get(index).and_then(|f| f.count) {
            Some(_) => format!("[{}]", elems.iter().map(one).collect::<Vec<_>>().join(", ")),
            None => elems.first().map(one).unwrap_or_default(),
        }
    }
}

/// A byte string as text when it is printable UTF-8 followed only by zero padding.
fn bytes_text(b: &[u8]) -> Option<&str> {
    let end = b.iter().rposition(|&x| x != 0).map(|p| p + 1).unwrap_or(0);
    let s = std::str::from_utf8(&b[..end]).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

fn float_text(v: f64, elem: Option<ElemType>) -> String {
    if elem == Some(ElemType::F32) {
        // The shortest text that reads back as the same f32.
        format!("{:?}", v as f32)
    } else {
        format!("{v:?}")
    }
}

fn scalar_json(s: &Scalar, elem: ElemType) -> serde_json::Value {
    match s {
        Scalar::Unsigned(v) => serde_json::Value::from(*v),
        Scalar::Signed(v) => serde_json::Value::from(*v),
        Scalar::Float(v) => {
            // f32 values print with their shortest f32 text (1.1, not 1.100000023841858).
            let v = if elem == ElemType::F32 {
                float_text(*v, Some(elem)).parse().unwrap_or(*v)
            } else {
                *v
            };
            serde_json::Number::from_f64(v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null)
        }
        Scalar::Bytes(b) => match bytes_text(b) {
            Some(t) => serde_json::Value::String(t.to_string()),
            None => serde_json::Value::Array(b.iter().map(|&x| x.into()).collect()),
        },
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// An input value before it is checked against a type.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<Raw>),
    Other(&'static str),
}

fn raw_from_toml(v: toml::Value) -> Raw {
    match v {
        toml::Value::Integer(i) => Raw::Int(i.into()),
        toml::Value::Float(f) => Raw::Float(f),
        toml::Value::String(s) => Raw::Str(s),
        toml::Value::Array(a) => Raw::Array(a.into_iter().map(raw_from_toml).collect()),
        toml::Value::Boolean(_) => Raw::Other("a boolean"),
        toml::Value::Datetime(_) => Raw::Other("a date"),
        toml::Value::Table(_) => Raw::Other("a table"),
    }
}

fn raw_from_json(v: serde_json::Value) -> Raw {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Raw::Int(u.into())
            } else if let Some(i) = n.as_i64() {
                Raw::Int(i.into())
            } else {
                Raw::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Raw::Str(s),
        serde_json::Value::Array(a) => Raw::Array(a.into_iter().map(raw_from_json).collect()),
        serde_json::Value::Bool(_) => Raw::Other("a boolean"),
        serde_json::Value::Null => Raw::Other("null"),
        serde_json::Value::Object(_) => Raw::Other("an object"),
    }
}

/// Where a value came from, for messages.
struct Where<'a> {
    what: &'a str,
    line: Option<u64>,
    field: &'a str,
    index: Option<usize>,
}

impl<'a> Where<'a> {
    fn new(what: &'a str, line: Option<u64>, field: &'a Field, index: Option<usize>) -> Self {
        Where {
            what,
            line,
            field: &field.name,
            index,
        }
    }

    fn err(&self, msg: String) -> Error {
        let line = self.line.map(|l| format!(", line {l}")).unwrap_or_default();
        let index = self.index.map(|i| format!("[{i}]")).unwrap_or_default();
        Error::InvalidRequest(format!(
            "{}{line}: field '{}'{index}: {msg}",
            self.what, self.field
        ))
    }
}

fn describe(raw: &Raw) -> String {
    match raw {
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) => format!("{f:?}"),
        Raw::Str(s) => format!("{s:?}"),
        Raw::Array(_) => "an array".into(),
        Raw::Other(what) => (*what).into(),
    }
}

/// Parse an integer written as text: optional sign, `0x`/`0b`/`0o` prefix, `_` separators.
fn parse_int(s: &str) -> Option<i128> {
    let t = s.trim().replace('_', "");
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(h) = lower.strip_prefix("0x") {
        (16, h)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b)
    } else if let Some(o) = lower.strip_prefix("0o") {
        (8, o)
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let v = i128::from_str_radix(digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

fn convert_elem(elem: ElemType, raw: &Raw, at: &Where) -> Result<Scalar> {
    match elem {
        ElemType::Bytes(len) => {
            let bytes = match raw {
                Raw::Str(s) => s.as_bytes().to_vec(),
                Raw::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| match x {
                        Raw::Int(v) => u8::try_from(*v)
                            .map_err(|_| at.err(format!("byte {i} is {v}, outside 0 to 255"))),
                        other => Err(at.err(format!(
                            "byte {i} is {}, not a number from 0 to 255",
                            describe(other)
                        ))),
                    })
                    .collect::<Result<Vec<u8>>>()?,
                other => {
                    return Err(at.err(format!(
                        "expected a string or an array of byte values for bytes[{len}], got {}",
                        describe(other)
                    )))
                }
            };
            if bytes.len() > len as usize {
                return Err(at.err(format!(
                    "{} is {} bytes long; the field holds {len}",
                    describe(raw),
                    bytes.len()
                )));
            }
            let mut padded = bytes;
            padded.resize(len as usize, 0);
            Ok(Scalar::Bytes(padded))
        }
        ElemType::F32 | ElemType::F64 => {
            let v = match raw {
                Raw::Int(i) => *i as f64,
                Raw::Float(f) => *f,
                Raw::Str(s) => s.trim().parse::<f64>().map_err(|_| {
                    at.err(format!(
                        "{} is not a number ({})",
                        describe(raw),
                        elem.name()
                    ))
                })?,
                other => {
                    return Err(at.err(format!(
                        "expected a number for {}, got {}",
                        elem.name(),
                        describe(other)
                    )))
                }
            };
            if !v.is_finite() {
                return Err(at.err(format!(
                    "{} is not a finite number ({} fields hold finite values only)",
                    describe(raw),
                    elem.name()
                )));
            }
            if elem == ElemType::F32 {
                if v.abs() > f64::from(f32::MAX) {
                    return Err(at.err(format!(
                        "{} is out of range for f32 (magnitude at most {:e})",
                        describe(raw),
                        f32::MAX
                    )));
                }
                Ok(Scalar::Float(f64::from(v as f32)))
            } else {
                Ok(Scalar::Float(v))
            }
        }
        int => {
            let (lo, hi) = int.int_range().unwrap_or((0, 0));
            let v = match raw {
                Raw::Int(i) => *i,
                Raw::Str(s) => parse_int(s).ok_or_else(|| {
                    at.err(format!(
                        "{} is not an integer (decimal, or 0x/0b/0o-prefixed)",
                        describe(raw)
                    ))
                })?,
                other => {
                    return Err(at.err(format!(
                        "expected an integer for {}, got {}",
                        int.name(),
                        describe(other)
                    )))
                }
            };
            if v < lo || v > hi {
                return Err(at.err(format!(
                    "{v} is out of range for {} ({lo} to {hi})",
                    int.name()
                )));
            }
            Ok(if lo < 0 {
                Scalar::Signed(v as i64)
            } else {
                Scalar::Unsigned(v as u64)
            })
        }
    }
}

fn convert_field(field: &Field, raw: &Raw, what: &str, line: Option<u64>) -> Result<Vec<Scalar>> {
    match field.count {
        None => {
            let at = Where::new(what, line, field, None);
            Ok(vec![convert_elem(field.elem, raw, &at)?])
        }
        Some(n) => {
            let at = Where::new(what, line, field, None);
            let Raw::Array(items) = raw else {
                return Err(at.err(format!(
                    "expected an array of {n} {} values, got {}",
                    field.elem.name(),
                    describe(raw)
                )));
            };
            if items.len() != n as usize {
                return Err(at.err(format!(
                    "expected {n} elements ({}), got {}",
                    field.type_label(),
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, x)| convert_elem(field.elem, x, &Where::new(what, line, field, Some(i))))
                .collect()
        }
    }
}

/// Match keyed raw values to the layout's fields: all present, none unknown.
fn collect(
    layout: &Layout,
    mut entries: BTreeMap<String, (Option<usize>, Raw)>,
    origin: &str,
) -> Result<Values> {
    let what = format!("values {origin}");
    if let Some(unknown) = entries.keys().find(|k| layout.field(k).is_none()) {
        let line = entries
            .get(unknown)
            .and_then(|(l, _)| *l)
            .map(|l| format!(", line {l}"))
            .unwrap_or_default();
        return Err(Error::InvalidRequest(format!(
            "{what}{line}: '{unknown}' is not a field of layout {} (its fields: {})",
            layout.origin,
            field_names(layout)
        )));
    }
    let missing: Vec<&str> = layout
        .fields
        .iter()
        .filter(|f| !entries.contains_key(&f.name))
        .map(|f| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "{what}: no value for {} (every field of layout {} needs one)",
            missing.join(", "),
            layout.origin
        )));
    }
    let mut out = Vec::with_capacity(layout.fields.len());
    for field in &layout.fields {
        let (line, raw) = entries
            .remove(&field.name)
            .unwrap_or((None, Raw::Other("nothing")));
        out.push(convert_field(field, &raw, &what, line.map(|l| l as u64))?);
    }
    Ok(Values { fields: out })
}

fn field_names(layout: &Layout) -> String {
    layout
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

type CsvRows = Vec<(u64, Vec<String>)>;

fn read_csv(text: &str, origin: &str) -> Result<(Vec<String>, CsvRows)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let csv_err = |e: csv::Error| {
        let line = e
            .position()
            .map(|p| format!(", line {}", p.line()))
            .unwrap_or_default();
        Error::InvalidRequest(format!("CSV {origin}{line}: {e}"))
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(str::to_string)
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(Error::InvalidRequest(format!(
            "CSV {origin}: the first line must name the columns (the fields)"
        )));
    }
    for (i, h) in header.iter().enumerate() {
        if header[..i].contains(h) {
            return Err(Error::InvalidRequest(format!(
                "CSV {origin}, line 1: column '{h}' appears twice"
            )));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        rows.push((line, record.iter().map(str::to_string).collect()));
    }
    Ok((header, rows))
}

/// One CSV row's values. `key` names a column that is allowed besides the fields (as is `uid`
/// in a table).
fn row_values(
    layout: &Layout,
    header: &[String],
    cells: &[String],
    line: u64,
    origin: &str,
    key: Option<&str>,
) -> Result<Values> {
    let what = format!("CSV {origin}");
    // A table may also carry the `uid` column when it is keyed by another one.
    let allowed = |h: &str| Some(h) == key || (key.is_some() && h == "uid");
    if let Some(unknown) = header
        .iter()
        .find(|h| layout.field(h).is_none() && !allowed(h))
    {
        return Err(Error::InvalidRequest(format!(
            "{what}, line 1: column '{unknown}' is not a field of layout {} (its fields: {}{})",
            layout.origin,
            field_names(layout),
            key.map(|k| format!("; key column: {k}"))
                .unwrap_or_default()
        )));
    }
    let missing: Vec<&str> = layout
        .fields
        .iter()
        .filter(|f| !header.contains(&f.name))
        .map(|f| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "{what}, line 1: no column for {} (every field of layout {} needs one)",
            missing.join(", "),
            layout.origin
        )));
    }
    let mut out = Vec::with_capacity(layout.fields.len());
    for field in &layout.fields {
        let col = header.iter().position(|h| *h == field.name).unwrap_or(0);
        let cell = cells.get(col).map(String::as_str).unwrap_or("");
        if cell.is_empty() {
            return Err(Where::new(&what, Some(line), field, None).err("the cell is empty".into()));
        }
        let raw = match field.count {
            Some(_) => Raw::Array(
                cell.split(';')
                    .map(|s| Raw::Str(s.trim().to_string()))
                    .collect(),
            ),
            None => Raw::Str(cell.to_string()),
        };
        out.push(convert_field(field, &raw, &what, Some(line))?);
    }
    Ok(Values { fields: out })
}

/// How `coeffs write --table` picks the row for the connected chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKey {
    /// The `uid` column: the chip's 96-bit unique device ID as 24 hex digits, bytes in memory
    /// order as `stm32boot info` prints it (case, spaces, `-` and `:` ignored).
    Uid,
    /// A column matched against a value given on the command line (a serial number).
    Column(String),
}

impl TableKey {
    /// `uid` or a column name.
    pub fn parse(s: &str) -> TableKey {
        if s.eq_ignore_ascii_case("uid") {
            TableKey::Uid
        } else {
            TableKey::Column(s.to_string())
        }
    }

    /// The column that holds the key.
    pub fn column(&self) -> &str {
        match self {
            TableKey::Uid => "uid",
            TableKey::Column(c) => c,
        }
    }
}

/// One unit's row of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line in the CSV file.
    pub line: u64,
    /// The key cell (for `uid`, normalised to 24 upper-case hex digits).
    pub key: String,
    /// The row's values, checked.
    pub values: Values,
}

/// A CSV table with one row per unit, every row checked when it is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The file, for messages.
    pub origin: String,
    /// How rows are picked.
    pub key: TableKey,
    /// The rows.
    pub rows: Vec<Row>,
}

/// A unique ID as 24 upper-case hex digits (bytes in memory order).
pub fn uid_hex(uid: &[u8; 12]) -> String {
    uid.iter().map(|b| format!("{b:02X}")).collect()
}

fn normalise_uid(cell: &str) -> Option<String> {
    let t = cell.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let s: String = t
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | ':' | '_'))
        .collect::<String>()
        .to_ascii_uppercase();
    (s.len() == 24 && s.chars().all(|c| c.is_ascii_hexdigit())).then_some(s)
}

impl Table {
    /// Read a CSV table and check every row against `layout`.
    pub fn load(layout: &Layout, path: &Path, key: TableKey) -> Result<Table> {
        if extension(path).as_deref() != Some("csv") {
            return Err(Error::InvalidRequest(format!(
                "table {}: give a .csv file with a header row of field names and a '{}' column",
                path.display(),
                key.column()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading table {}", path.display()), e))?;
        Table::from_csv(layout, &text, &path.display().to_string(), key)
    }

    /// Parse a CSV table and check every row.
    pub fn from_csv(layout: &Layout, text: &str, origin: &str, key: TableKey) -> Result<Table> {
        let (header, rows) = read_csv(text, origin)?;
        let col = header
            .iter()
            .position(|h| h == key.column())
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "table {origin}: no '{}' column to pick rows by (columns: {})",
                    key.column(),
                    header.join(", ")
                ))
            })?;
        if rows.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "table {origin}: no rows under the header"
            )));
        }
        let mut out: Vec<Row> = Vec::with_capacity(rows.len());
        for (line, cells) in &rows {
            let cell = cells.get(col).map(String::as_str).unwrap_or("");
            let k = match key {
                TableKey::Uid => normalise_uid(cell).ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "table {origin}, line {line}: uid '{cell}' is not a 96-bit unique ID \
                         (24 hex digits, as `stm32boot info` prints it)"
                    ))
                })?,
                TableKey::Column(_) if cell.is_empty() => {
                    return Err(Error::InvalidRequest(format!(
                        "table {origin}, line {line}: the '{}' cell is empty",
                        key.column()
                    )))
                }
                TableKey::Column(_) => cell.to_string(),
            };
            if let Some(prev) = out.iter().find(|r| r.key == k) {
                return Err(Error::InvalidRequest(format!(
                    "table {origin}: lines {} and {line} both have {} {k}",
                    prev.line,
                    key.column()
                )));
            }
            let values = row_values(layout, &header, cells, *line, origin, Some(key.column()))?;
            out.push(Row {
                line: *line,
                key: k,
                values,
            });
        }
        Ok(Table {
            origin: origin.to_string(),
            key,
            rows: out,
        })
    }

    /// The row for a chip with this unique ID.
    pub fn find_uid(&self, uid: &[u8; 12]) -> Result<&Row> {
        let hex = uid_hex(uid);
        self.rows.iter().find(|r| r.key == hex).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "table {}: no row has uid {hex} (the connected chip); nothing was written",
                self.origin
            ))
        })
    }

    /// The row whose key column holds `value`.
    pub fn find(&self, value: &str) -> Result<&Row> {
        let v = value.trim();
        self.rows.iter().find(|r| r.key == v).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "table {}: no row has {} '{v}'; nothing was written",
                self.origin,
                self.key.column()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::coeffs::testdata::{every_type_layout, EVERY_TYPE_VALUES};

    fn small_layout() -> Layout {
        Layout::from_toml(
            r#"
name = "cal"
version = 1
address = 0x08000000
[[field]]
name = "gain"
type = "f32"
[[field]]
name = "offsets"
type = "i16"
count = 3
[[field]]
name = "serial"
type = "bytes"
len = 8
"#,
            "cal.toml",
        )
        .expect("test setup")
    }

    #[test]
    fn toml_json_and_csv_give_the_same_values() {
        let l = small_layout();
        let t = Values::from_toml(
            &l,
            "gain = 1.25\noffsets = [1, -2, 3]\nserial = \"SN-7\"\n",
            "v.toml",
        )
        .expect("test setup");
        let j = Values::from_json(
            &l,
            r#"{"gain": 1.25, "offsets": [1, -2, "0x3"], "serial": [83, 78, 45, 55]}"#,
            "v.json",
        )
        .expect("test setup");
        let c = Values::from_csv(&l, "gain,offsets,serial\n1.25, 1;-2;3 ,SN-7\n", "v.csv")
            .expect("test setup");
        assert_eq!(t, j);
        assert_eq!(t, c);
        assert_eq!(t.field(2), [Scalar::Bytes(b"SN-7\0\0\0\0".to_vec())]);
        assert_eq!(
            t.field(1),
            [Scalar::Signed(1), Scalar::Signed(-2), Scalar::Signed(3)]
        );
        assert_eq!(t.display(&l, 1), "[1, -2, 3]");
        assert_eq!(t.display(&l, 2), "\"SN-7\"");
        let json = t.to_json(&l);
        assert_eq!(json["serial"], "SN-7");
        assert_eq!(json["gain"], 1.25);
        // The JSON output reads back as values.
        let again = Values::from_json(&l, &json.to_string(), "again.json").expect("test setup");
        assert_eq!(again, t);
    }

    #[test]
    fn every_type_reads_and_f32_is_rounded_once() {
        let l = every_type_layout();
        let v = Values::from_toml(&l, EVERY_TYPE_VALUES, "v.toml").expect("test setup");
        v.check(&l).expect("values fit");
        assert_eq!(v.field(3), [Scalar::Unsigned(u64::MAX)]);
        assert_eq!(v.field(7), [Scalar::Signed(i64::MIN)]);
        assert_eq!(v.field(8), [Scalar::Float(f64::from(0.1f32))]);
        assert_eq!(v.display(&l, 8), "0.1");
        assert_eq!(v.to_json(&l)["a_f32"], 0.1);
    }

    /// Every integer type refuses one past each end and takes both ends.
    #[test]
    fn every_type_is_range_checked() {
        let l = every_type_layout();
        let base: toml::Table = toml::from_str(EVERY_TYPE_VALUES).expect("test setup");
        let cases: &[(&str, &str, &str)] = &[
            ("a_u8", "256", "256 is out of range for u8 (0 to 255)"),
            ("a_u8", "-1", "-1 is out of range for u8"),
            ("a_u16", "65536", "out of range for u16 (0 to 65535)"),
            ("a_u32", "4294967296", "out of range for u32"),
            (
                "a_u64",
                "\"0x1_0000_0000_0000_0000\"",
                "out of range for u64",
            ),
            ("a_u64", "-1", "out of range for u64"),
            ("a_i8", "128", "128 is out of range for i8 (-128 to 127)"),
            ("a_i8", "-129", "out of range for i8"),
            ("a_i16", "-32769", "out of range for i16"),
            ("a_i32", "2147483648", "out of range for i32"),
            ("a_i64", "\"9223372036854775808\"", "out of range for i64"),
            ("a_f32", "1e39", "out of range for f32"),
            ("a_f32", "nan", "not a finite number"),
            ("a_f64", "inf", "not a finite number"),
            ("a_f64", "\"fast\"", "is not a number"),
            ("a_u8", "1.5", "expected an integer for u8, got 1.5"),
            ("a_u8", "\"ten\"", "\"ten\" is not an integer"),
            ("a_i16", "true", "got a boolean"),
            ("label", "\"toolong\"", "is 7 bytes long; the field holds 5"),
            ("label", "[1, 256]", "byte 1 is 256"),
            ("arr_i16", "[1, 2]", "expected 3 elements (i16[3]), got 2"),
            ("arr_i16", "5", "expected an array of 3 i16 values"),
            ("names", "[\"abcd\", \"x\"]", "field 'names'[0]"),
        ];
        for (field, value, want) in cases {
            let mut doc = base.clone();
            doc.remove(*field);
            let text = format!(
                "{}{field} = {value}\n",
                toml::to_string(&doc).expect("test setup")
            );
            let e = Values::from_toml(&l, &text, "v.toml")
                .expect_err(&format!("{field} = {value} should be refused"))
                .to_string();
            assert!(e.contains(want), "{field} = {value}: {e}");
            assert!(e.contains(&format!("field '{field}'")), "{e}");
            assert!(e.contains("v.toml, line "), "{e}");
        }
        // Both ends of every integer type are accepted.
        let ends: &[(&str, &str, &str)] = &[
            ("a_u8", "0", "255"),
            ("a_u16", "0", "65535"),
            ("a_u32", "0", "4294967295"),
            ("a_u64", "0", "\"18446744073709551615\""),
            ("a_i8", "-128", "127"),
            ("a_i16", "-32768", "32767"),
            ("a_i32", "-2147483648", "2147483647"),
            ("a_i64", "-9223372036854775808", "9223372036854775807"),
            ("a_f32", "-3.4028234663852886e38", "3.4028234663852886e38"),
        ];
        for (field, lo, hi) in ends {
            for v in [lo, hi] {
                let mut doc = base.clone();
                doc.remove(*field);
                let text = format!(
                    "{}{field} = {v}\n",
                    toml::to_string(&doc).expect("test setup")
                );
                Values::from_toml(&l, &text, "v.toml")
                    .unwrap_or_else(|e| panic!("{field} = {v} should be accepted: {e}"));
            }
        }
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let l = small_layout();
        let e = Values::from_toml(&l, "gain = 1.0\n", "v.toml")
            .expect_err("missing")
            .to_string();
        assert!(e.contains("no value for offsets, serial"), "{e}");
        let e = Values::from_toml(&l, "gian = 1.0\n", "v.toml")
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("line 1")
                && e.contains("'gian' is not a field")
                && e.contains("gain, offsets, serial"),
            "{e}"
        );
        let e = Values::from_toml(&l, "gain = \n", "v.toml")
            .expect_err("syntax")
            .to_string();
        assert!(e.contains("v.toml, line 1"), "{e}");
        let e = Values::from_json(&l, "[1]", "v.json")
            .expect_err("array")
            .to_string();
        assert!(e.contains("JSON object"), "{e}");
        let e = Values::from_json(&l, "{\"gain\": ", "v.json")
            .expect_err("syntax")
            .to_string();
        assert!(e.contains("v.json, line 1"), "{e}");
        let e = Values::from_csv(&l, "gain,offsets,serial\n1,1;2;3,a\n2,1;2;3,b\n", "v.csv")
            .expect_err("two rows")
            .to_string();
        assert!(
            e.contains("expected one row") && e.contains("--table"),
            "{e}"
        );
        let e = Values::from_csv(&l, "gain,offsets\n1,1;2;3\n", "v.csv")
            .expect_err("missing column")
            .to_string();
        assert!(e.contains("no column for serial"), "{e}");
        let e = Values::from_csv(&l, "gain,offsets,serial\n1,1;2;x,a\n", "v.csv")
            .expect_err("bad element")
            .to_string();
        assert!(
            e.contains("v.csv, line 2") && e.contains("field 'offsets'[2]") && e.contains("\"x\""),
            "{e}"
        );
        let e = Values::from_csv(&l, "gain,offsets,serial\n,1;2;3,a\n", "v.csv")
            .expect_err("empty")
            .to_string();
        assert!(e.contains("field 'gain': the cell is empty"), "{e}");
    }

    #[test]
    fn tables_pick_rows_by_uid_or_column_and_check_every_row() {
        let l = small_layout();
        let uid_a = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xAB];
        let text = "# per-unit calibration\nuid,serial,gain,offsets\n\
                    0102030405060708090A0BAB,A-1,1.5,1;2;3\n\
                    01-02-03-04-05-06-07-08-09-0a-0b-cc,A-2,2.5,4;5;6\n";
        let t = Table::from_csv(&l, text, "t.csv", TableKey::Uid).expect("test setup");
        assert_eq!(t.rows.len(), 2);
        let row = t.find_uid(&uid_a).expect("row for uid a");
        assert_eq!(row.line, 3);
        assert_eq!(row.values.field(0), [Scalar::Float(1.5)]);
        let e = t.find_uid(&[0; 12]).expect_err("no row").to_string();
        assert!(e.contains("no row has uid 000000000000000000000000"), "{e}");
        let t = Table::from_csv(&l, text, "t.csv", TableKey::parse("serial")).expect("test setup");
        assert_eq!(
            t.find("A-2").expect("row").values.field(1)[0],
            Scalar::Signed(4)
        );
        assert!(t.find("A-3").is_err());
        // A bad row anywhere refuses the whole table.
        let bad = format!("{text}0102030405060708090A0B0D,A-3,1.0,1;2;99999\n");
        let e = Table::from_csv(&l, &bad, "t.csv", TableKey::Uid)
            .expect_err("bad row")
            .to_string();
        assert!(
            e.contains("t.csv, line 5") && e.contains("99999 is out of range for i16"),
            "{e}"
        );
        let dup = format!("{text}0102030405060708090a0bab,A-9,1.0,1;2;3\n");
        let e = Table::from_csv(&l, &dup, "t.csv", TableKey::Uid)
            .expect_err("dup")
            .to_string();
        assert!(e.contains("lines 3 and 5"), "{e}");
        let e = Table::from_csv(
            &l,
            "uid,serial,gain,offsets\n123,A,1,1;2;3\n",
            "t.csv",
            TableKey::Uid,
        )
        .expect_err("short uid")
        .to_string();
        assert!(e.contains("line 2") && e.contains("24 hex digits"), "{e}");
        let e = Table::from_csv(&l, text, "t.csv", TableKey::parse("lot"))
            .expect_err("no column")
            .to_string();
        assert!(e.contains("no 'lot' column"), "{e}");
        let extra =
            "uid,serial,gain,offsets,operator\n0102030405060708090A0BAB,A-1,1.5,1;2;3,bob\n";
        let e = Table::from_csv(&l, extra, "t.csv", TableKey::Uid)
            .expect_err("extra column")
            .to_string();
        assert!(e.contains("column 'operator' is not a field"), "{e}");
    }

    #[test]
    fn integers_parse_in_every_radix() {
        assert_eq!(parse_int("0x7F"), Some(127));
        assert_eq!(parse_int("-0b101"), Some(-5));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("1_000"), Some(1000));
        assert_eq!(parse_int("+4"), Some(4));
        assert_eq!(parse_int("0x"), None);
        assert_eq!(parse_int("--4"), None);
        assert_eq!(parse_int("1.5"), None);
    }
}
