//! Job files: an ordered list of steps (erase, write images, coefficient blocks, option bytes,
//! OTP, verify, go) for factory stations and update servers, run by `stm32boot run JOB.toml`
//! (see [`crate::ops::job_run`] for carrying one out).
//!
//! ```toml
//! name = "sensor board"          # optional, for logs
//!
//! [connect]                      # optional: the connection options of the command line
//! port = "sim:stm32l476"         # (the command line overrides them)
//! baud = 115200
//!
//! [[step]]
//! do = "erase"
//! pages = "1..2"                 # or range = "0x08004000:16K", all = true, bank = 2
//!
//! [[step]]
//! name = "firmware"              # optional, for logs and events
//! do = "write"
//! file = "fw.hex"                # relative to the job file
//! verify = true
//!
//! [[step]]
//! do = "go"
//! ```
//!
//! The keys of each step are the options of the single command it stands for (`write`,
//! `erase`, `coeffs write`, `ob set`, `otp write`/`otp lock`, `verify`, `go`), in snake_case
//! and with the same defaults. Everything that can be checked without the chip is checked by
//! [`Job::load`]: unknown keys (with the file and line), keys that do not belong to the step's
//! kind, numbers, ranges, that every file exists and parses (images, layouts, values, tables,
//! OTP data), that OTP steps carry `confirm_otp = true`, and that `go` comes last. Pure: reads
//! files, never the chip.

pub use crate::config::After;
use crate::device::DeviceTable;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::link::Parity;
use crate::ops::coeffs::{Layout, Table, TableKey, Values};
use crate::ops::flash::EraseTarget;
use crate::ops::otp::{self, OtpData, OtpTarget};
use crate::units::line_of;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A job file, loaded and checked.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file it came from.
    pub path: PathBuf,
    /// Its `name`, if given.
    pub name: Option<String>,
    /// The `[connect]` table.
    pub connect: JobConnect,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// SHA-256 (hex) of the job file and of every file it names: the key of its saved progress,
    /// so that a changed job (or a changed image) starts afresh.
    pub hash: String,
}

/// The `[connect]` table: the connection options of the command line (`--port`, `--baud`, …),
/// each optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobConnect {
    /// `port`.
    pub port: Option<String>,
    /// `baud`.
    pub baud: Option<u32>,
    /// `parity`: even, none or odd.
    pub parity: Option<Parity>,
    /// `timeout_scale`.
    pub timeout_scale: Option<f64>,
    /// `device_file`, relative to the job file.
    pub device_file: Option<PathBuf>,
    /// `flash_size` (e.g. "256K").
    pub flash_size: Option<u32>,
    /// `dtr`: true (high) or false (low).
    pub dtr: Option<bool>,
    /// `rts`: true (high) or false (low).
    pub rts: Option<bool>,
    /// `before`: a preset or an stm32flash sequence.
    pub before: Option<String>,
    /// `after`.
    pub after: Option<After>,
    /// `invert_reset`.
    pub invert_reset: Option<bool>,
    /// `invert_boot0`.
    pub invert_boot0: Option<bool>,
    /// `enter`, with its escapes decoded.
    pub enter: Option<Vec<u8>>,
    /// `enter_wait` (e.g. "500ms").
    pub enter_wait: Option<Duration>,
    /// `enter_parity`.
    pub enter_parity: Option<Parity>,
    /// `no_pipeline`.
    pub no_pipeline: Option<bool>,
}

/// One step of a job.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its number, from 1.
    pub number: usize,
    /// Its `name`, if given.
    pub name: Option<String>,
    /// The line of its `do` key in the job file.
    pub line: usize,
    /// What it does.
    pub action: Action,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// `do = "erase"`.
    Erase {
        /// What to erase.
        target: EraseTarget,
        /// Grow a range off page bounds to whole pages.
        expand: bool,
    },
    /// `do = "write"`.
    Write(Box<WriteStep>),
    /// `do = "coeffs"`: write a coefficient block.
    Coeffs(Box<CoeffsStep>),
    /// `do = "ob"`: change option bytes by name.
    OptionBytes {
        /// NAME=VALUE pairs, in file order.
        set: Vec<(String, String)>,
        /// Allow RDP level 2 and BOOT_LOCK.
        allow_permanent_lock: bool,
    },
    /// `do = "otp"`: write once, and/or lock a block.
    Otp(Box<OtpStep>),
    /// `do = "verify"`.
    Verify {
        /// The image file, as resolved.
        file: PathBuf,
        /// The image.
        image: Box<Image>,
    },
    /// `do = "go"`: start the application.
    Go {
        /// Vector table address (default: start of flash).
        address: Option<u32>,
    },
}

/// A `write` step: the options of `stm32boot write`.
#[derive(Debug, Clone)]
pub struct WriteStep {
    /// The image file, as resolved.
    pub file: PathBuf,
    /// The image.
    pub image: Image,
    /// `verify`.
    pub verify: bool,
    /// `no_erase`.
    pub no_erase: bool,
    /// `no_skip`.
    pub no_skip: bool,
    /// `no_preserve`.
    pub no_preserve: bool,
    /// `protect`: ranges the write must not erase.
    pub protect: Vec<(u32, u32)>,
    /// `force`.
    pub force: bool,
    /// `bank`: place an image linked for bank 1 into this bank.
    pub bank: Option<u8>,
    /// `skip_unchanged`: leave pages that already hold their content alone (always on when a
    /// cut-off write step is resumed).
    pub skip_unchanged: bool,
}

/// A `coeffs` step: the options of `stm32boot coeffs write`.
#[derive(Debug, Clone)]
pub struct CoeffsStep {
    /// The layout file, as resolved.
    pub layout_file: PathBuf,
    /// The layout.
    pub layout: Layout,
    /// Where the values come from.
    pub source: CoeffsSource,
}

/// Where a coefficient step's values come from.
#[derive(Debug, Clone)]
pub enum CoeffsSource {
    /// `values = FILE`.
    Values {
        /// The file, as resolved.
        file: PathBuf,
        /// Its values.
        values: Values,
    },
    /// `table = CSV`, `key = "uid"`: the row of the connected chip's unique ID.
    Uid(Table),
    /// `table = CSV`, `key = COLUMN`, `serial = VALUE`: that row.
    Row {
        /// The table.
        table: Table,
        /// The row's index.
        index: usize,
    },
}

/// An `otp` step: a write (`hex` or `file`, placed by `block`/`offset` or `address`), a lock
/// (`lock = N`), or both, write first.
#[derive(Debug, Clone)]
pub struct OtpStep {
    /// The data to write.
    pub write: Option<OtpData>,
    /// The block to lock.
    pub lock: Option<usize>,
}

impl Step {
    /// The step kind as the job file names it (`write`, `erase`, …).
    pub fn kind(&self) -> &'static str {
        self.action.kind()
    }

    /// A short description: the name if given, else the kind and its main argument.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let file = |p: &Path| {
            p.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match &self.action {
            Action::Erase { target, .. } => match target {
                EraseTarget::All => "erase all".into(),
                EraseTarget::Bank(b) => format!("erase bank {b}"),
                EraseTarget::Pages(p) => format!("erase pages {}", page_list(p)),
                EraseTarget::Range(a, l) => format!("erase 0x{a:08X}:0x{l:X}"),
            },
            Action::Write(w) => format!("write {}", file(&w.file)),
            Action::Coeffs(c) => format!("coeffs {}", c.layout.name),
            Action::OptionBytes { set, .. } => format!(
                "ob {}",
                set.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Action::Otp(o) => match (&o.write, o.lock) {
                (Some(_), Some(b)) => format!("otp write, lock {b}"),
                (Some(_), None) => "otp write".into(),
                (None, Some(b)) => format!("otp lock {b}"),
                (None, None) => "otp".into(),
            },
            Action::Verify { file: f, .. } => format!("verify {}", file(f)),
            Action::Go { address } => match address {
                Some(a) => format!("go 0x{a:08X}"),
                None => "go".into(),
            },
        }
    }
}

impl Action {
    /// The step kind as the job file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Erase { .. } => "erase",
            Action::Write(_) => "write",
            Action::Coeffs(_) => "coeffs",
            Action::OptionBytes { .. } => "ob",
            Action::Otp(_) => "otp",
            Action::Verify { .. } => "verify",
            Action::Go { .. } => "go",
        }
    }
}

/// Pages as runs: `0-3, 7`.
fn page_list(pages: &[u16]) -> String {
    crate::ops::option_bytes::page_runs(pages)
}

/// The step kinds and the keys each takes (besides `do` and `name`).
const KINDS: &[(&str, &[&str])] = &[
    ("erase", &["pages", "range", "all", "bank", "expand"]),
    (
        "write",
        &[
            "file",
            "address",
            "verify",
            "no_erase",
            "no_skip",
            "no_preserve",
            "protect",
            "force",
            "bank",
            "skip_unchanged",
        ],
    ),
    ("coeffs", &["layout", "values", "table", "key", "serial"]),
    ("ob", &["set", "allow_permanent_lock"]),
    (
        "otp",
        &[
            "hex",
            "file",
            "block",
            "offset",
            "address",
            "lock",
            "confirm_otp",
        ],
    ),
    ("verify", &["file", "address"]),
    ("go", &["address"]),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    connect: Option<RawConnect>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    port: Option<Spanned<String>>,
    baud: Option<Spanned<toml::Value>>,
    parity: Option<Spanned<String>>,
    timeout_scale: Option<Spanned<f64>>,
    device_file: Option<Spanned<String>>,
    flash_size: Option<Spanned<toml::Value>>,
    dtr: Option<Spanned<toml::Value>>,
    rts: Option<Spanned<toml::Value>>,
    before: Option<Spanned<String>>,
    after: Option<Spanned<String>>,
    invert_reset: Option<bool>,
    invert_boot0: Option<bool>,
    enter: Option<Spanned<String>>,
    enter_wait: Option<Spanned<String>>,
    enter_parity: Option<Spanned<String>>,
    no_pipeline: Option<bool>,
}

/// Every key any step takes; which ones a kind takes is in [`KINDS`]. (One flat struct rather
/// than an internally tagged enum: through serde's tagged enums, toml loses the line of the
/// offending key, and a key of the wrong kind gets a clearer message this way.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(rename = "do")]
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    address: Option<Spanned<toml::Value>>,
    verify: Option<Spanned<bool>>,
    no_erase: Option<Spanned<bool>>,
    no_skip: Option<Spanned<bool>>,
    no_preserve: Option<Spanned<bool>>,
    protect: Option<Spanned<toml::Value>>,
    force: Option<Spanned<bool>>,
    bank: Option<Spanned<toml::Value>>,
    skip_unchanged: Option<Spanned<bool>>,
    pages: Option<Spanned<toml::Value>>,
    range: Option<Spanned<String>>,
    all: Option<Spanned<bool>>,
    expand: Option<Spanned<bool>>,
    layout: Option<Spanned<String>>,
    values: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    serial: Option<Spanned<toml::Value>>,
    // A plain table: toml cannot give spans for dotted keys (`set.BFB2 = 1`).
    set: Option<toml::Table>,
    allow_permanent_lock: Option<Spanned<bool>>,
    hex: Option<Spanned<String>>,
    block: Option<Spanned<toml::Value>>,
    offset: Option<Spanned<toml::Value>>,
    lock: Option<Spanned<toml::Value>>,
    confirm_otp: Option<Spanned<bool>>,
}

fn sp<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(|s| s.span())
}

impl RawStep {
    /// The keys present (besides `do` and `name`), with the span of their values where toml
    /// keeps it.
    fn present(&self) -> Vec<(&'static str, Option<Range<usize>>)> {
        let all = [
            ("file", sp(&self.file)),
            ("address", sp(&self.address)),
            ("verify", sp(&self.verify)),
            ("no_erase", sp(&self.no_erase)),
            ("no_skip", sp(&self.no_skip)),
            ("no_preserve", sp(&self.no_preserve)),
            ("protect", sp(&self.protect)),
            ("force", sp(&self.force)),
            ("bank", sp(&self.bank)),
            ("skip_unchanged", sp(&self.skip_unchanged)),
            ("pages", sp(&self.pages)),
            ("range", sp(&self.range)),
            ("all", sp(&self.all)),
            ("expand", sp(&self.expand)),
            ("layout", sp(&self.layout)),
            ("values", sp(&self.values)),
            ("table", sp(&self.table)),
            ("key", sp(&self.key)),
            ("serial", sp(&self.serial)),
            ("allow_permanent_lock", sp(&self.allow_permanent_lock)),
            ("hex", sp(&self.hex)),
            ("block", sp(&self.block)),
            ("offset", sp(&self.offset)),
            ("lock", sp(&self.lock)),
            ("confirm_otp", sp(&self.confirm_otp)),
        ];
        let mut out: Vec<(&'static str, Option<Range<usize>>)> = all
            .into_iter()
            .filter_map(|(k, s)| s.map(|s| (k, Some(s))))
            .collect();
        if self.set.is_some() {
            out.push(("set", None));
        }
        out
    }
}

/// Builds errors that name the job file, the line and the step.
struct Ctx<'a> {
    origin: String,
    text: &'a str,
    base: PathBuf,
    hasher: Sha256,
}

impl Ctx<'_> {
    fn at(&self, span: Option<Range<usize>>, msg: impl std::fmt::Display) -> Error {
        match span {
            Some(s) => Error::InvalidRequest(format!(
                "{}:{}: {msg}",
                self.origin,
                line_of(self.text, s.start)
            )),
            None => Error::InvalidRequest(format!("{}: {msg}", self.origin)),
        }
    }

    /// A path from the job file, relative to its directory; its content goes into the hash.
    fn file(&mut self, p: &Spanned<String>, what: &str) -> Result<PathBuf> {
        let path = tidy(&self.base.join(p.get_ref()));
        let bytes = std::fs::read(&path)
            .map_err(|e| self.at(Some(p.span()), format!("{what} {}: {e}", path.display())))?;
        // The content only: the job text names the file already, and the path as resolved
        // depends on the directory the job is run from.
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(&bytes);
        Ok(path)
    }
}

/// `a/b/../c` as `a/c` (lexically, for messages; `..` at the start stays).
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The message for a TOML error: an unknown key inside a step names the keys of that step's
/// kind (serde would list the keys of every kind).
fn parse_error(text: &str, span: Option<Range<usize>>, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'))
        .map(|(key, _)| key);
    let kind = span.and_then(|s| {
        // The step the key is in: from the last `[[step]]` header before it to the next one.
        let start = text[..s.start.min(text.len())].rfind("[[step]]")?;
        let end = text[start + 8..]
            .find("[[step]]")
            .map_or(text.len(), |e| start + 8 + e);
        text[start..end].lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "do").then(|| v.trim().trim_matches('"').to_string())
        })
    });
    match (unknown, kind) {
        (Some(key), Some(kind)) => match KINDS.iter().find(|(k, _)| *k == kind) {
            Some((_, keys)) => format!(
                "unknown key `{key}` in a {kind} step; {kind} steps take: name, {}",
                keys.join(", ")
            ),
            None => message.to_string(),
        },
        _ => format!("{message} (see `stm32boot run --help` and the README's \"Job files\")"),
    }
}

/// An image for a step: a .bin needs `address`, other formats carry their own.
fn load_image(path: &Path, address: Option<u32>) -> std::result::Result<Image, String> {
    use crate::image::ImageError;
    Image::load(path, None, address).map_err(|e| match e {
        ImageError::NeedAddress { path } => format!(
            "{}: a .bin file has no address: add address = 0x08000000 (its load address)",
            path.display()
        ),
        ImageError::AddressNotAllowed { format, path } => format!(
            "address is only for raw .bin files; {} is {format} and carries its own addresses",
            path.display()
        ),
        other => other.to_string(),
    })
}

/// A number as TOML gives it: an integer, or a string in decimal or 0x hex (sizes may end in K
/// or M).
fn to_number(v: &toml::Value, size: bool) -> std::result::Result<u32, String> {
    match v {
        toml::Value::Integer(i) => {
            u32::try_from(*i).map_err(|_| format!("{i} is out of range (0 to 0xFFFFFFFF)"))
        }
        toml::Value::String(s) if size => crate::units::parse_size(s),
        toml::Value::String(s) => crate::units::parse_u32(s),
        other => Err(format!(
            "expected a number, found {} {other}",
            other.type_str()
        )),
    }
}

fn parity(s: &str) -> std::result::Result<Parity, String> {
    match s.to_ascii_lowercase().as_str() {
        "even" => Ok(Parity::Even),
        "none" => Ok(Parity::None),
        "odd" => Ok(Parity::Odd),
        _ => Err(format!("parity '{s}': use even, none or odd")),
    }
}

fn level(v: &toml::Value) -> std::result::Result<bool, String> {
    match v {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::String(s) if s.eq_ignore_ascii_case("high") => Ok(true),
        toml::Value::String(s) if s.eq_ignore_ascii_case("low") => Ok(false),
        other => Err(format!("expected \"high\" or \"low\", found {other}")),
    }
}

/// Page numbers: `"1..2"`, `"0,3,5..7"`, an integer, or an array of integers.
pub fn parse_pages(v: &toml::Value) -> std::result::Result<Vec<u16>, String> {
    let one = |n: i64| u16::try_from(n).map_err(|_| format!("page {n} is out of range"));
    let mut out = Vec::new();
    match v {
        toml::Value::Integer(n) => out.push(one(*n)?),
        toml::Value::Array(items) => {
            for item in items {
                match item {
                    toml::Value::Integer(n) => out.push(one(*n)?),
                    other => return Err(format!("expected page numbers, found {other}")),
                }
            }
        }
        toml::Value::String(s) => {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let parse = |t: &str| -> std::result::Result<u16, String> {
                    let n = crate::units::parse_u32(t.trim())?;
                    u16::try_from(n).map_err(|_| format!("page {n} is out of range"))
                };
                match part.split_once("..") {
                    Some((a, b)) => {
                        let (a, b) = (parse(a)?, parse(b.trim_start_matches('='))?);
                        if a > b {
                            return Err(format!("page range {part} runs backwards"));
                        }
                        out.extend(a..=b);
                    }
                    None => out.push(parse(part)?),
                }
            }
        }
        other => return Err(format!("expected pages such as \"1..2\", found {other}")),
    }
    if out.is_empty() {
        return Err("no pages named".into());
    }
    Ok(out)
}

impl Job {
    /// Read and check a job file: everything that can be checked without the chip (see the
    /// module documentation). Errors name the file and line, and are
    /// [`Error::InvalidRequest`] (exit code 2).
    pub fn load(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidRequest(format!("job file {}: {e}", path.display())))?;
        Job::from_toml(&text, path)
    }

    /// Parse and check a job from its text; `path` names it in messages, and files are
    /// relative to its directory.
    pub fn from_toml(text: &str, path: &Path) -> Result<Job> {
        let mut cx = Ctx {
            origin: path.display().to_string(),
            text,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            hasher: Sha256::new(),
        };
        cx.hasher.update(text.as_bytes());
        cx.hasher.update([0]);
        let raw: RawJob = toml::from_str(text).map_err(|e| {
            cx.at(
                e.span(),
                parse_error(text, e.span(), e.message().trim_end()),
            )
        })?;
        let connect = match &raw.connect {
            Some(c) => connect(&mut cx, c)?,
            None => JobConnect::default(),
        };
        if raw.step.is_empty() {
            return Err(cx.at(
                None,
                "the job has no steps: add [[step]] tables (do = \"write\", \"erase\", \"coeffs\", \"ob\", \"otp\", \"verify\" or \"go\")",
            ));
        }
        let mut steps = Vec::with_capacity(raw.step.len());
        for (i, s) in raw.step.iter().enumerate() {
            steps.push(step(&mut cx, i + 1, s)?);
        }
        if let Some(go) = steps.iter().find(|s| matches!(s.action, Action::Go { .. })) {
            if go.number != steps.len() {
                return Err(Error::InvalidRequest(format!(
                    "{}:{}: step {} (go): `go` starts the application and leaves the \
                     bootloader, so it must be the last step",
                    cx.origin, go.line, go.number
                )));
            }
        }
        let hash = cx
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Job {
            path: path.to_path_buf(),
            name: raw.name,
            connect,
            steps,
            hash,
        })
    }

    /// Check the option names of `ob` steps against the device table: each must be an option
    /// of at least one family (the connected part's own check comes once it is known).
    pub fn check_option_names(&self, table: &DeviceTable) -> Result<()> {
        for s in &self.steps {
            let Action::OptionBytes { set, .. } = &s.action else {
                continue;
            };
            for (name, _) in set {
                let known = table
                    .devices()
                    .iter()
                    .filter_map(|d| d.ob_layout.as_ref())
                    .any(|l| l.field(name).is_some());
                if !known {
                    return Err(Error::InvalidRequest(format!(
                        "{}:{}: step {} (ob): no STM32 family has an option called {name} \
                         (`stm32boot ob show` lists the connected part's)",
                        self.path.display(),
                        s.line,
                        s.number
                    )));
                }
            }
        }
        Ok(())
    }
}

fn connect(cx: &mut Ctx, c: &RawConnect) -> Result<JobConnect> {
    let mut out = JobConnect {
        port: c.port.as_ref().map(|p| p.get_ref().clone()),
        invert_reset: c.invert_reset,
        invert_boot0: c.invert_boot0,
        no_pipeline: c.no_pipeline,
        before: c.before.as_ref().map(|b| b.get_ref().clone()),
        ..JobConnect::default()
    };
    let bad = |cx: &Ctx, s: Range<usize>, key: &str, e: String| {
        cx.at(Some(s), format!("[connect] {key}: {e}"))
    };
    if let Some(b) = &c.baud {
        let v = to_number(b.get_ref(), false).map_err(|e| bad(cx, b.span(), "baud", e))?;
        if !(300..=4_000_000).contains(&v) {
            return Err(bad(
                cx,
                b.span(),
                "baud",
                format!("{v} baud is out of range (300 to 4000000)"),
            ));
        }
        out.baud = Some(v);
    }
    if let Some(p) = &c.parity {
        out.parity = Some(parity(p.get_ref()).map_err(|e| bad(cx, p.span(), "parity", e))?);
    }
    if let Some(p) = &c.enter_parity {
        out.enter_parity =
            Some(parity(p.get_ref()).map_err(|e| bad(cx, p.span(), "enter_parity", e))?);
    }
    if let Some(t) = &c.timeout_scale {
        let v = *t.get_ref();
        if !(0.01..=1000.0).contains(&v) {
            return Err(bad(
                cx,
                t.span(),
                "timeout_scale",
                format!("{v} is out of range (0.01 to 1000)"),
            ));
        }
        out.timeout_scale = Some(v);
    }
    if let Some(d) = &c.device_file {
        out.device_file = Some(cx.file(d, "[connect] device_file")?);
    }
    if let Some(f) = &c.flash_size {
        out.flash_size =
            Some(to_number(f.get_ref(), true).map_err(|e| bad(cx, f.span(), "flash_size", e))?);
    }
    if let Some(l) = &c.dtr {
        out.dtr = Some(level(l.get_ref()).map_err(|e| bad(cx, l.span(), "dtr", e))?);
    }
    if let Some(l) = &c.rts {
        out.rts = Some(level(l.get_ref()).map_err(|e| bad(cx, l.span(), "rts", e))?);
    }
    if let Some(a) = &c.after {
        out.after = Some(match a.get_ref().to_ascii_lowercase().as_str() {
            "none" => After::None,
            "go" => After::Go,
            "reset" => After::Reset,
            other => {
                return Err(bad(
                    cx,
                    a.span(),
                    "after",
                    format!("'{other}': use none, go or reset"),
                ))
            }
        });
    }
    if let Some(e) = &c.enter {
        out.enter = Some(
            crate::units::parse_escaped(e.get_ref()).map_err(|m| bad(cx, e.span(), "enter", m))?,
        );
    }
    if let Some(w) = &c.enter_wait {
        out.enter_wait = Some(
            crate::units::parse_duration(w.get_ref())
                .map_err(|m| bad(cx, w.span(), "enter_wait", m))?,
        );
    }
    if let Some(b) = &c.before {
        if !b.get_ref().trim().eq_ignore_ascii_case("no-sync") {
            crate::sequence::Sequence::parse(
                b.get_ref(),
                out.invert_reset.unwrap_or(false),
                out.invert_boot0.unwrap_or(false),
            )
            .map_err(|e| bad(cx, b.span(), "before", e.to_string()))?;
        }
    }
    Ok(out)
}

fn step(cx: &mut Ctx, number: usize, s: &Spanned<RawStep>) -> Result<Step> {
    let r = s.get_ref();
    let kind = r.kind.get_ref().as_str();
    let line = line_of(cx.text, r.kind.span().start);
    let name = r.name.as_ref().map(|n| n.get_ref().clone());
    let Some((_, allowed)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(cx.at(
            Some(r.kind.span()),
            format!(
                "step {number}: unknown step kind do = \"{kind}\"; the kinds are {}",
                kinds.join(", ")
            ),
        ));
    };
    for (key, span) in r.present() {
        if !allowed.contains(&key) {
            return Err(cx.at(
                span.or(Some(s.span())),
                format!(
                    "step {number} ({kind}): `{key}` is not an option of {kind} steps, which take: name, {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let here = |cx: &Ctx, span: Range<usize>, msg: String| {
        cx.at(Some(span), format!("step {number} ({kind}): {msg}"))
    };
    let flag = |v: &Option<Spanned<bool>>| v.as_ref().is_some_and(|b| *b.get_ref());
    let num = |cx: &Ctx, v: &Spanned<toml::Value>, key: &str| {
        to_number(v.get_ref(), false).map_err(|e| here(cx, v.span(), format!("{key}: {e}")))
    };
    let address = match &r.address {
        Some(a) => Some(num(cx, a, "address")?),
        None => None,
    };
    let action = match kind {
        "erase" => {
            let given = [
                r.pages.is_some(),
                r.range.is_some(),
                flag(&r.all),
                r.bank.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(here(
                    cx,
                    r.kind.span(),
                    "say what to erase with exactly one of pages = \"A..B\", range = \"ADDR:LEN\", all = true or bank = N".into(),
                ));
            }
            let target = if let Some(p) = &r.pages {
                EraseTarget::Pages(
                    parse_pages(p.get_ref())
                        .map_err(|e| here(cx, p.span(), format!("pages: {e}")))?,
                )
            } else if let Some(rg) = &r.range {
                let (a, l) = crate::units::parse_range(rg.get_ref())
                    .map_err(|e| here(cx, rg.span(), format!("range: {e}")))?;
                EraseTarget::Range(a, l)
            } else if let Some(b) = &r.bank {
                EraseTarget::Bank(bank(cx, b, &here)?)
            } else {
                EraseTarget::All
            };
            Action::Erase {
                target,
                expand: flag(&r.expand),
            }
        }
        "write" => {
            let file = required(cx, &r.file, "file", number, r)?;
            let path = cx.file(file, &format!("step {number} ({kind}): image"))?;
            let image = load_image(&path, address).map_err(|e| here(cx, file.span(), e))?;
            let mut protect = Vec::new();
            if let Some(p) = &r.protect {
                let items: Vec<&toml::Value> = match p.get_ref() {
                    toml::Value::Array(a) => a.iter().collect(),
                    one => vec![one],
                };
                for item in items {
                    let range = match item {
                        toml::Value::String(t) => crate::units::parse_range(t),
                        other => Err(format!("expected \"ADDR:LEN\" strings, found {other}")),
                    };
                    protect.push(range.map_err(|e| here(cx, p.span(), format!("protect: {e}")))?);
                }
            }
            let bank = match &r.bank {
                Some(b) => Some(bank(cx, b, &here)?),
                None => None,
            };
            Action::Write(Box::new(WriteStep {
                file: path,
                image,
                verify: flag(&r.verify),
                no_erase: flag(&r.no_erase),
                no_skip: flag(&r.no_skip),
                no_preserve: flag(&r.no_preserve),
                protect,
                force: flag(&r.force),
                bank,
                skip_unchanged: flag(&r.skip_unchanged),
            }))
        }
        "verify" => {
            let file = required(cx, &r.file, "file", number, r)?;
            let path = cx.file(file, &format!("step {number} ({kind}): image"))?;
            let image = load_image(&path, address).map_err(|e| here(cx, file.span(), e))?;
            Action::Verify {
                file: path,
                image: Box::new(image),
            }
        }
        "coeffs" => {
            let l = required(cx, &r.layout, "layout", number, r)?;
            let layout_file = cx.file(l, &format!("step {number} ({kind}): layout"))?;
            let layout =
                Layout::load(&layout_file).map_err(|e| here(cx, l.span(), e.to_string()))?;
            let source = match (&r.values, &r.table) {
                (Some(v), None) => {
                    if let Some(k) = &r.key {
                        return Err(here(
                            cx,
                            k.span(),
                            "key is for table = CSV, not values".into(),
                        ));
                    }
                    let file = cx.file(v, &format!("step {number} ({kind}): values"))?;
                    let values = Values::load(&layout, &file)
                        .map_err(|e| here(cx, v.span(), e.to_string()))?;
                    CoeffsSource::Values { file, values }
                }
                (None, Some(t)) => {
                    let Some(k) = &r.key else {
                        return Err(here(
                            cx,
                            t.span(),
                            "table = CSV needs key = \"uid\" or key = COLUMN (with serial = VALUE)"
                                .into(),
                        ));
                    };
                    let key = TableKey::parse(k.get_ref());
                    let serial = match &r.serial {
                        Some(v) => Some(match v.get_ref() {
                            toml::Value::String(s) => s.clone(),
                            toml::Value::Integer(i) => i.to_string(),
                            other => {
                                return Err(here(
                                    cx,
                                    v.span(),
                                    format!("serial: expected text, found {other}"),
                                ))
                            }
                        }),
                        None => None,
                    };
                    match (&key, &serial) {
                        (TableKey::Uid, Some(_)) => {
                            return Err(here(cx, k.span(), "key = \"uid\" takes the chip's unique ID; serial is for key = COLUMN".into()))
                        }
                        (TableKey::Column(c), None) => {
                            return Err(here(cx, k.span(), format!("key = \"{c}\" needs serial = VALUE: the value to look up in column '{c}'")))
                        }
                        _ => {}
                    }
                    let file = cx.file(t, &format!("step {number} ({kind}): table"))?;
                    let table = Table::load(&layout, &file, key)
                        .map_err(|e| here(cx, t.span(), e.to_string()))?;
                    match serial {
                        Some(value) => {
                            let row = table
                                .find(&value)
                                .map_err(|e| here(cx, t.span(), e.to_string()))?;
                            let index = table.rows.iter().position(|r| r == row).unwrap_or(0);
                            CoeffsSource::Row { table, index }
                        }
                        None => CoeffsSource::Uid(table),
                    }
                }
                (Some(v), Some(_)) => {
                    return Err(here(
                        cx,
                        v.span(),
                        "give values = FILE or table = CSV, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(here(
                        cx,
                        r.kind.span(),
                        "give values = FILE, or table = CSV with key = \"uid\" | COLUMN".into(),
                    ))
                }
            };
            Action::Coeffs(Box::new(CoeffsStep {
                layout_file,
                layout,
                source,
            }))
        }
        "ob" => {
            let Some(table) = &r.set else {
                return Err(here(
                    cx,
                    r.kind.span(),
                    "an ob step needs set = { NAME = VALUE, … }, e.g. set = { BFB2 = 1 }".into(),
                ));
            };
            if table.is_empty() {
                return Err(here(cx, s.span(), "set names no option".into()));
            }
            let mut set = Vec::new();
            for (k, v) in table {
                let value = match v {
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => if *b { "1" } else { "0" }.to_string(),
                    toml::Value::String(t) => t.clone(),
                    other => {
                        return Err(here(
                            cx,
                            s.span(),
                            format!(
                                "set.{k}: expected a number, on/off or true/false, found {other}"
                            ),
                        ))
                    }
                };
                set.push((k.clone(), value));
            }
            Action::OptionBytes {
                set,
                allow_permanent_lock: flag(&r.allow_permanent_lock),
            }
        }
        "otp" => {
            if !flag(&r.confirm_otp) {
                return Err(here(
                    cx,
                    r.confirm_otp.as_ref().map_or(r.kind.span(), |c| c.span()),
                    "OTP cannot be erased: a write or lock can never be undone. Check the step, then add confirm_otp = true".into(),
                ));
            }
            let given = match (&r.block, &r.address) {
                (Some(b), _) => {
                    let offset = match &r.offset {
                        Some(o) => num(cx, o, "offset")?,
                        None => 0,
                    };
                    Some(OtpTarget::Block(num(cx, b, "block")? as usize, offset))
                }
                (None, Some(_)) => address.map(OtpTarget::Address),
                (None, None) => None,
            };
            if r.offset.is_some() && r.block.is_none() {
                return Err(here(
                    cx,
                    r.kind.span(),
                    "offset is an offset into block = N".into(),
                ));
            }
            let write = match (&r.hex, &r.file) {
                (Some(h), None) => Some(
                    otp::load_data(Some(h.get_ref()), None, given)
                        .map_err(|e| here(cx, h.span(), e.to_string()))?,
                ),
                (None, Some(f)) => {
                    let path = cx.file(f, &format!("step {number} ({kind}): OTP data"))?;
                    Some(
                        otp::load_data(None, Some(&path), given)
                            .map_err(|e| here(cx, f.span(), e.to_string()))?,
                    )
                }
                (Some(h), Some(_)) => {
                    return Err(here(
                        cx,
                        h.span(),
                        "give hex = \"BYTES\" or file = FILE, not both".into(),
                    ))
                }
                (None, None) => {
                    if given.is_some() {
                        return Err(here(cx, r.kind.span(), "block/address say where data goes: give hex = \"BYTES\" or file = FILE".into()));
                    }
                    None
                }
            };
            if let Some(w) = &write {
                if w.target.is_none() {
                    return Err(here(
                        cx,
                        r.kind.span(),
                        "say where the data goes: block = N [offset = O] or address = A".into(),
                    ));
                }
            }
            let lock = match &r.lock {
                Some(l) => Some(num(cx, l, "lock")? as usize),
                None => None,
            };
            if write.is_none() && lock.is_none() {
                return Err(here(cx, r.kind.span(), "an otp step writes (hex = \"BYTES\" or file = FILE, with block = N or address = A) and/or locks (lock = N)".into()));
            }
            Action::Otp(Box::new(OtpStep { write, lock }))
        }
        _ => Action::Go { address },
    };
    Ok(Step {
        number,
        name,
        line,
        action,
    })
}

fn bank(
    cx: &Ctx,
    b: &Spanned<toml::Value>,
    here: &dyn Fn(&Ctx, Range<usize>, String) -> Error,
) -> Result<u8> {
    match b.get_ref() {
        toml::Value::Integer(n @ 1..=2) => Ok(*n as u8),
        other => Err(here(
            cx,
            b.span(),
            format!("bank: expected 1 or 2, found {other}"),
        )),
    }
}

/// A key the step kind needs; the error points at the step's `do`.
fn required<'a, T>(
    cx: &Ctx,
    v: &'a Option<Spanned<T>>,
    key: &str,
    number: usize,
    r: &RawStep,
) -> Result<&'a Spanned<T>> {
    v.as_ref().ok_or_else(|| {
        let kind = r.kind.get_ref();
        cx.at(
            Some(r.kind.span()),
            format!("step {number} ({kind}): a {kind} step needs {key} = …"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            let d = Dir(tempfile::tempdir().expect("test setup"));
            std::fs::write(d.0.path().join("fw.bin"), [0x5A; 1000]).expect("test setup");
            d
        }

        fn load(&self, text: &str) -> Result<Job> {
            let path = self.0.path().join("job.toml");
            std::fs::write(&path, text).expect("test setup");
            Job::load(&path)
        }

        fn err(&self, text: &str) -> String {
            self.load(text).expect_err("should be refused").to_string()
        }
    }

    #[test]
    fn a_job_parses_with_its_steps_and_connect_table() {
        let d = Dir::new();
        let job = d
            .load(
                r#"
name = "board"
[connect]
port = "sim:stm32f411"
baud = "57600"
parity = "even"
after = "go"
flash_size = "256K"
dtr = "high"

[[step]]
do = "erase"
pages = "3..4"

[[step]]
name = "firmware"
do = "write"
file = "fw.bin"
address = 0x08000000
verify = true
protect = ["0x0807F800:2K"]

[[step]]
do = "ob"
set = { nRST_STOP = 0, BFB2 = true }

[[step]]
do = "otp"
hex = "DE AD BE EF"
block = 0
lock = 0
confirm_otp = true

[[step]]
do = "verify"
file = "fw.bin"
address = "0x08000000"

[[step]]
do = "go"
"#,
            )
            .expect("test setup");
        assert_eq!(job.name.as_deref(), Some("board"));
        assert_eq!(job.connect.port.as_deref(), Some("sim:stm32f411"));
        assert_eq!(job.connect.baud, Some(57600));
        assert_eq!(job.connect.after, Some(After::Go));
        assert_eq!(job.connect.flash_size, Some(256 * 1024));
        assert_eq!(job.connect.dtr, Some(true));
        let kinds: Vec<&str> = job.steps.iter().map(Step::kind).collect();
        assert_eq!(kinds, ["erase", "write", "ob", "otp", "verify", "go"]);
        assert!(
            matches!(&job.steps[0].action, Action::Erase { target: EraseTarget::Pages(p), .. } if p == &[3, 4])
        );
        assert_eq!(job.steps[1].label(), "firmware");
        assert_eq!(job.steps[1].line, 17);
        let Action::Write(w) = &job.steps[1].action else {
            panic!("a write step")
        };
        assert!(w.verify && !w.no_erase);
        assert_eq!(w.image.start(), Some(0x0800_0000));
        assert_eq!(w.protect, vec![(0x0807_F800, 2048)]);
        let Action::OptionBytes { set, .. } = &job.steps[2].action else {
            panic!("an ob step")
        };
        assert!(set.contains(&("BFB2".to_string(), "1".to_string())));
        assert_eq!(job.steps[3].label(), "otp write, lock 0");
        assert_eq!(job.hash.len(), 64);
        job.check_option_names(DeviceTable::builtin().expect("test setup"))
            .expect("known names");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let d = Dir::new();
        let e = d.err(
            "[[step]]\ndo = \"write\"\nfile = \"fw.bin\"\naddress = 0x08000000\nverfy = true\n",
        );
        assert!(e.contains("job.toml:5:") && e.contains("verfy"), "{e}");
        let e = d.err("[[step]]\ndo = \"wipe\"\n");
        assert!(
            e.contains("job.toml:2:") && e.contains("unknown step kind"),
            "{e}"
        );
        let e = d.err("[[step]]\ndo = \"erase\"\nall = true\nverify = true\n");
        assert!(
            e.contains("job.toml:4:") && e.contains("not an option of erase steps"),
            "{e}"
        );
        let e = d.err("[[step]]\ndo = \"write\"\nfile = \"missing.hex\"\n");
        assert!(
            e.contains("job.toml:3:") && e.contains("missing.hex"),
            "{e}"
        );
        let e = d.err("[[step]]\ndo = \"write\"\nfile = \"fw.bin\"\n");
        assert!(e.contains("job.toml:3:") && e.contains("address"), "{e}");
        let e = d.err("[[step]]\ndo = \"otp\"\nhex = \"00\"\nblock = 0\n");
        assert!(
            e.contains("job.toml:2:") && e.contains("confirm_otp"),
            "{e}"
        );
        let e = d.err("[[step]]\ndo = \"erase\"\npages = \"4..2\"\n");
        assert!(e.contains("job.toml:3:") && e.contains("backwards"), "{e}");
        let e = d.err("[[step]]\ndo = \"erase\"\npages = \"1\"\nall = true\n");
        assert!(e.contains("exactly one"), "{e}");
        let e = d.err("[[step]]\ndo = \"go\"\n[[step]]\ndo = \"erase\"\nall = true\n");
        assert!(e.contains("job.toml:2:") && e.contains("last step"), "{e}");
        let e = d.err("[connect]\nbaud = 12\n[[step]]\ndo = \"go\"\n");
        assert!(
            e.contains("job.toml:2:") && e.contains("out of range"),
            "{e}"
        );
        let e = d.err("stepp = 1\n");
        assert!(e.contains("job.toml:1:") && e.contains("stepp"), "{e}");
        let e = d.err("name = \"x\"\n");
        assert!(e.contains("no steps"), "{e}");
        let job = d
            .load("[[step]]\ndo = \"ob\"\nset.NO_SUCH_OPTION = 1\n")
            .expect("test setup");
        let e = job
            .check_option_names(DeviceTable::builtin().expect("test setup"))
            .expect_err("unknown name")
            .to_string();
        assert!(
            e.contains("job.toml:2:") && e.contains("NO_SUCH_OPTION"),
            "{e}"
        );
    }

    #[test]
    fn the_hash_covers_the_job_and_the_files_it_names() {
        let d = Dir::new();
        let text = "[[step]]\ndo = \"write\"\nfile = \"fw.bin\"\naddress = 0x08000000\n";
        let a = d.load(text).expect("test setup").hash;
        assert_eq!(a, d.load(text).expect("test setup").hash);
        // However the job file is named.
        std::fs::create_dir(d.0.path().join("sub")).expect("test setup");
        let other = d.0.path().join("sub").join("..").join("job.toml");
        assert_eq!(a, Job::from_toml(text, &other).expect("test setup").hash);
        let b = d
            .load(&format!("{text}verify = true\n"))
            .expect("test setup")
            .hash;
        assert_ne!(a, b);
        std::fs::write(d.0.path().join("fw.bin"), [0xA5; 1000]).expect("test setup");
        assert_ne!(a, d.load(text).expect("test setup").hash);
    }

    #[test]
    fn page_lists() {
        let p = |s: &str| parse_pages(&toml::Value::String(s.into()));
        assert_eq!(p("1..3"), Ok(vec![1, 2, 3]));
        assert_eq!(p("0, 5..=6"), Ok(vec![0, 5, 6]));
        assert_eq!(parse_pages(&toml::Value::Integer(7)), Ok(vec![7]));
        assert!(p("x").is_err());
        assert!(p("").is_err());
        assert!(parse_pages(&toml::Value::Integer(70000)).is_err());
    }
}
