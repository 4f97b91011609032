//! Configuration files: `stm32boot.toml` holds the connection settings of a station (port, baud,
//! parity, reset wiring, device file), the part it expects and the ranges a write must keep.
//!
//! Where the files are ([`Search`]): `stm32boot.toml` in the working directory or the nearest
//! parent directory that has one (the *local* file), then the *user* file
//! (`$XDG_CONFIG_HOME/stm32boot/stm32boot.toml`, else `~/.config/stm32boot/stm32boot.toml`;
//! `%APPDATA%\stm32boot\stm32boot.toml` on Windows). Both are read, and a key in the local file
//! wins over the same key in the user file ([`Settings::or`]). A file named explicitly
//! ([`Search::explicit`]) is the only one read.
//!
//! This module is pure apart from reading the files: it knows nothing of the command line,
//! which applies [`Settings`] under its own options and environment variables.
//!
//! ```
//! use stm32boot::config::Settings;
//! use std::path::Path;
//!
//! let text = "port = \"sim:stm32f411\"\nbaud = 57600\nprotect = [\"0x0801F800:2K\"]\n";
//! let s = Settings::parse(text, Path::new("/station/stm32boot.toml"))?;
//! assert_eq!(s.port.as_ref().map(|p| p.value.as_str()), Some("sim:stm32f411"));
//! assert_eq!(s.baud.as_ref().map(|b| (b.value, b.line)), Some((57600, 2)));
//! # Ok::<(), stm32boot::config::ConfigError>(())
//! ```

use crate::device::Device;
use crate::link::Parity;
use crate::units::line_of;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The name of a configuration file.
pub const FILE_NAME: &str = "stm32boot.toml";

/// The keys a configuration file may hold, in the order the documentation lists them.
pub const KEYS: [&str; 11] = [
    "port",
    "baud",
    "parity",
    "before",
    "after",
    "invert_reset",
    "invert_boot0",
    "timeout_scale",
    "device_file",
    "device",
    "protect",
];

/// A problem with a configuration file, located by file and (where known) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line, where the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::InvalidRequest(e.to_string())
    }
}

/// A value and the place it was set.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// The file that set it.
    pub file: PathBuf,
    /// The 1-based line of the key in that file.
    pub line: usize,
}

impl<T> Sourced<T> {
    /// `FILE:LINE`, for messages.
    pub fn origin(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// How to leave the chip after a successful job (the `after` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Stay in the bootloader.
    None,
    /// Start the application.
    Go,
    /// The exit part of the `before` sequence.
    Reset,
}

/// The settings of one file, or of several merged; every key is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// `port`: as `--port` takes it.
    pub port: Option<Sourced<String>>,
    /// `baud`: 300 to 4000000.
    pub baud: Option<Sourced<u32>>,
    /// `parity`: even, none or odd.
    pub parity: Option<Sourced<Parity>>,
    /// `before`: a reset sequence (a preset, stm32flash syntax or `no-sync`).
    pub before: Option<Sourced<String>>,
    /// `after`: none, go or reset.
    pub after: Option<Sourced<After>>,
    /// `invert_reset`: the reset line of a preset is active high.
    pub invert_reset: Option<Sourced<bool>>,
    /// `invert_boot0`: the BOOT0 line of a preset is active high.
    pub invert_boot0: Option<Sourced<bool>>,
    /// `timeout_scale`: 0.01 to 1000.
    pub timeout_scale: Option<Sourced<f64>>,
    /// `device_file`: already resolved against the directory of the file that names it.
    pub device_file: Option<Sourced<PathBuf>>,
    /// `device`: the part this station expects (checked with [`device_matches`]).
    pub device: Option<Sourced<String>>,
    /// `protect`: ranges (address, length) a write must not erase.
    pub protect: Option<Sourced<Vec<(u32, u32)>>>,
}

/// Levenshtein distance, for "did you mean" (keys are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

fn unknown_key(key: &str) -> String {
    let normalized = key.replace('-', "_").to_ascii_lowercase();
    // A key the text begins (`prot` for `protect`) first, then the nearest by spelling.
    let close = KEYS
        .iter()
        .map(|k| {
            let prefix = normalized.len() >= 3 && k.starts_with(normalized.as_str());
            (!prefix, distance(&normalized, k), *k)
        })
        .filter(|(not_prefix, d, _)| !not_prefix || *d <= 2)
        .min();
    let hint = close
        .map(|(_, _, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default();
    format!("unknown key '{key}'{hint}; known keys: {}", KEYS.join(", "))
}

/// What one key's value turned into.
enum Parsed {
    Port(String),
    Baud(u32),
    Parity(Parity),
    Before(String),
    After(After),
    InvertReset(bool),
    InvertBoot0(bool),
    TimeoutScale(f64),
    DeviceFile(PathBuf),
    Device(String),
    Protect(Vec<(u32, u32)>),
}

/// Where a bad value is: the line of the value, or of an array element within it.
struct At<'a> {
    text: &'a str,
    span: std::ops::Range<usize>,
}

impl At<'_> {
    fn line(&self) -> usize {
        line_of(self.text, self.span.start)
    }

    /// The line of the string literal `s` inside the value (arrays may span lines).
    fn line_of_element(&self, s: &str) -> usize {
        let inside = self.text.get(self.span.clone()).unwrap_or("");
        inside
            .find(s)
            .map(|o| line_of(self.text, self.span.start + o))
            .unwrap_or_else(|| self.line())
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Check one key's value; errors are (line, message).
fn parse_value(
    key: &str,
    value: &toml::Value,
    at: &At<'_>,
    dir: &Path,
) -> Result<Parsed, (usize, String)> {
    let line = at.line();
    let want = |what: &str| {
        (
            line,
            format!("{key} must be {what}, not {}", type_name(value)),
        )
    };
    let string = || match value {
        toml::Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        toml::Value::String(_) => Err((line, format!("{key} is empty"))),
        _ => Err(want("a string")),
    };
    let boolean = || match value {
        toml::Value::Boolean(b) => Ok(*b),
        _ => Err(want("true or false")),
    };
    let choice = |choices: &[&str]| -> Result<String, (usize, String)> {
        let s = match value {
            toml::Value::String(s) => s.trim().to_ascii_lowercase(),
            _ => return Err(want(&format!("one of {}", choices.join(", ")))),
        };
        if choices.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err((
                line,
                format!("{key} = '{s}' is not one of {}", choices.join(", ")),
            ))
        }
    };
    Ok(match key {
        "port" => Parsed::Port(string()?),
        "baud" => {
            let v = match value {
                toml::Value::Integer(i) => *i,
                _ => return Err(want("an integer (e.g. 115200)")),
            };
            match u32::try_from(v) {
                Ok(b) if (300..=4_000_000).contains(&b) => Parsed::Baud(b),
                _ => return Err((line, format!("baud {v} is out of range (300 to 4000000)"))),
            }
        }
        "parity" => Parsed::Parity(match choice(&["even", "none", "odd"])?.as_str() {
            "even" => Parity::Even,
            "none" => Parity::None,
            _ => Parity::Odd,
        }),
        "before" => {
            let s = string()?;
            if !s.eq_ignore_ascii_case("no-sync") {
                crate::sequence::Sequence::parse(&s, false, false)
                    .map_err(|e| (line, format!("before: {e}")))?;
            }
            Parsed::Before(s)
        }
        "after" => Parsed::After(match choice(&["none", "go", "reset"])?.as_str() {
            "none" => After::None,
            "go" => After::Go,
            _ => After::Reset,
        }),
        "invert_reset" => Parsed::InvertReset(boolean()?),
        "invert_boot0" => Parsed::InvertBoot0(boolean()?),
        "timeout_scale" => {
            let v = match value {
                toml::Value::Float(f) => *f,
                toml::Value::Integer(i) => *i as f64,
                _ => return Err(want("a number (e.g. 2.5)")),
            };
            if !(0.01..=1000.0).contains(&v) {
                return Err((
                    line,
                    format!("timeout_scale {v} is out of range (0.01 to 1000)"),
                ));
            }
            Parsed::TimeoutScale(v)
        }
        "device_file" => Parsed::DeviceFile(dir.join(string()?)),
        "device" => Parsed::Device(string()?),
        "protect" => {
            let items: Vec<&toml::Value> = match value {
                toml::Value::Array(a) => a.iter().collect(),
                toml::Value::String(_) => vec![value],
                _ => {
                    return Err(want(
                        "a list of \"ADDR:LEN\" strings (e.g. [\"0x0801F800:2K\"])",
                    ))
                }
            };
            let mut ranges = Vec::new();
            for item in items {
                let toml::Value::String(s) = item else {
                    return Err((
                        line,
                        format!(
                            "protect: each range is a string \"ADDR:LEN\" (e.g. \"0x0801F800:2K\"), not {}",
                            type_name(item)
                        ),
                    ));
                };
                let range = crate::units::parse_range(s)
                    .map_err(|e| (at.line_of_element(s), format!("protect: {e}")))?;
                ranges.push(range);
            }
            Parsed::Protect(ranges)
        }
        other => return Err((line, unknown_key(other))),
    })
}

impl Settings {
    /// Parse the text of `file` (which is only used to place errors and to resolve a relative
    /// `device_file`).
    pub fn parse(text: &str, file: &Path) -> Result<Settings, ConfigError> {
        let error = |line: Option<usize>, message: String| ConfigError {
            file: file.to_path_buf(),
            line,
            message,
        };
        let doc: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> = toml::from_str(text)
            .map_err(|e| {
                let what: Vec<&str> = e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                let what = if what.is_empty() {
                    "a value is missing or malformed".to_string()
                } else {
                    what.join("; ")
                };
                error(
                    e.span().map(|s| line_of(text, s.start)),
                    format!("not valid TOML: {what}"),
                )
            })?;
        // In file order, so that the first problem reported is the first in the file.
        let mut entries: Vec<_> = doc.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut s = Settings::default();
        for (key, value) in entries {
            let key_line = line_of(text, key.span().start);
            let name = key.get_ref().as_str();
            if !KEYS.contains(&name) {
                return Err(error(Some(key_line), unknown_key(name)));
            }
            let at = At {
                text,
                span: value.span(),
            };
            let parsed = parse_value(name, value.get_ref(), &at, dir)
                .map_err(|(line, message)| error(Some(line), message))?;
            fn src<T>(value: T, file: &Path, line: usize) -> Option<Sourced<T>> {
                Some(Sourced {
                    value,
                    file: file.to_path_buf(),
                    line,
                })
            }
            match parsed {
                Parsed::Port(v) => s.port = src(v, file, key_line),
                Parsed::Baud(v) => s.baud = src(v, file, key_line),
                Parsed::Parity(v) => s.parity = src(v, file, key_line),
                Parsed::Before(v) => s.before = src(v, file, key_line),
                Parsed::After(v) => s.after = src(v, file, key_line),
                Parsed::InvertReset(v) => s.invert_reset = src(v, file, key_line),
                Parsed::InvertBoot0(v) => s.invert_boot0 = src(v, file, key_line),
                Parsed::TimeoutScale(v) => s.timeout_scale = src(v, file, key_line),
                Parsed::DeviceFile(v) => s.device_file = src(v, file, key_line),
                Parsed::Device(v) => s.device = src(v, file, key_line),
                Parsed::Protect(v) => s.protect = src(v, file, key_line),
            }
        }
        Ok(s)
    }

    /// Read and parse `file`.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        Settings::parse(&text, file)
    }

    /// These settings over `lower`: each key comes from `self` where it is set there, else
    /// from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            port: self.port.or(lower.port),
            baud: self.baud.or(lower.baud),
            parity: self.parity.or(lower.parity),
            before: self.before.or(lower.before),
            after: self.after.or(lower.after),
            invert_reset: self.invert_reset.or(lower.invert_reset),
            invert_boot0: self.invert_boot0.or(lower.invert_boot0),
            timeout_scale: self.timeout_scale.or(lower.timeout_scale),
            device_file: self.device_file.or(lower.device_file),
            device: self.device.or(lower.device),
            protect: self.protect.or(lower.protect),
        }
    }
}

/// Whether the connected `device` is the part `expected` names: its display name
/// (`STM32L47x/48x`) or the part before the first `/` (`STM32L47x`), one of its part names
/// with or without a package suffix (`stm32l476`, `STM32L476RG`), or its PID (`0x415`).
/// Case does not matter.
pub fn device_matches(device: &Device, expected: &str) -> bool {
    let q = expected.trim().to_ascii_lowercase();
    let name = device.name.to_ascii_lowercase();
    if q == name || name.split('/').next() == Some(q.as_str()) || device.matches(&q) {
        return true;
    }
    q.starts_with("0x") && crate::units::parse_u32(&q).is_ok_and(|pid| pid == u32::from(device.pid))
}

/// Where to look for configuration files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The directory the local search starts from (normally the working directory).
    pub cwd: PathBuf,
    /// The directory of the user file (`…/stm32boot`), if the environment names one.
    pub user_dir: Option<PathBuf>,
    /// A file to read instead of searching (`STM32BOOT_CONFIG`, `--config`).
    pub explicit: Option<PathBuf>,
}

/// The user configuration directory for stm32boot: `$XDG_CONFIG_HOME/stm32boot` where that is
/// an absolute path, else `$HOME/.config/stm32boot`, else (Windows) `%APPDATA%\stm32boot`.
pub fn user_dir(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
    appdata: Option<OsString>,
) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_config_home)
        .or_else(|| absolute(home).map(|h| h.join(".config")))
        .or_else(|| absolute(appdata))
        .map(|d| d.join("stm32boot"))
}

/// The nearest `stm32boot.toml` in `start` or one of its parent directories.
pub fn find_local(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|f| f.is_file())
}

impl Search {
    /// From the process environment: `cwd`, `XDG_CONFIG_HOME`, `HOME`, `APPDATA`.
    pub fn from_env(cwd: PathBuf, explicit: Option<PathBuf>) -> Search {
        let var = std::env::var_os;
        let appdata = if cfg!(windows) { var("APPDATA") } else { None };
        Search {
            cwd,
            user_dir: user_dir(var("XDG_CONFIG_HOME"), var("HOME"), appdata),
            explicit,
        }
    }

    /// The user file's path (whether or not it exists).
    pub fn user_file(&self) -> Option<PathBuf> {
        self.user_dir.as_ref().map(|d| d.join(FILE_NAME))
    }

    /// The files to read, the one that wins first: the explicit file alone, or the local file
    /// and the user file where they exist.
    pub fn files(&self) -> Vec<PathBuf> {
        if let Some(f) = &self.explicit {
            return vec![self.cwd.join(f)];
        }
        let mut files: Vec<PathBuf> = find_local(&self.cwd).into_iter().collect();
        if let Some(user) = self.user_file().filter(|f| f.is_file()) {
            if !files.contains(&user) {
                files.push(user);
            }
        }
        files
    }
}

/// The configuration in effect: the files read and their settings merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The files read, the one that wins first (empty if there are none).
    pub files: Vec<PathBuf>,
    /// Their settings, merged key by key.
    pub settings: Settings,
}

impl Config {
    /// Read the files `search` finds; an explicit file that cannot be read is an error.
    pub fn load(search: &Search) -> Result<Config, ConfigError> {
        let files = search.files();
        let mut settings = Settings::default();
        // Lowest first, each file over what came before.
        for file in files.iter().rev() {
            settings = Settings::load(file)?.or(settings);
        }
        Ok(Config { files, settings })
    }

    /// The files read, for messages: "a.toml, b.toml" or "no stm32boot.toml found".
    pub fn describe_files(&self) -> String {
        if self.files.is_empty() {
            format!("no {FILE_NAME} found")
        } else {
            self.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).expect("test setup");
        let f = dir.join(FILE_NAME);
        std::fs::write(&f, text).expect("test setup");
        f
    }

    fn parse_err(text: &str) -> ConfigError {
        match Settings::parse(text, Path::new("/st/stm32boot.toml")) {
            Ok(s) => panic!("parsed: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_key_parses() {
        let text = r#"
port = "/dev/ttyUSB0"
baud = 57600
parity = "none"
before = "dtr-reset-rts-boot0"
after = "reset"
invert_reset = true
invert_boot0 = false
timeout_scale = 2
device_file = "parts/extra.toml"
device = "STM32F411"
protect = ["0x0801F800:2K", "0x08000000:0x100"]
"#;
        let s = Settings::parse(text, Path::new("/st/stm32boot.toml")).expect("test setup");
        assert_eq!(s.port.as_ref().map(|p| p.line), Some(2));
        assert_eq!(s.baud.map(|b| b.value), Some(57600));
        assert_eq!(s.parity.map(|p| p.value), Some(Parity::None));
        assert_eq!(s.after.map(|a| a.value), Some(After::Reset));
        assert_eq!(s.invert_reset.map(|v| v.value), Some(true));
        assert_eq!(s.invert_boot0.map(|v| v.value), Some(false));
        assert_eq!(s.timeout_scale.map(|v| v.value), Some(2.0));
        assert_eq!(
            s.protect.map(|p| p.value),
            Some(vec![(0x0801_F800, 2048), (0x0800_0000, 0x100)])
        );
        assert_eq!(
            s.device.map(|d| d.origin()),
            Some("/st/stm32boot.toml:11".into())
        );
    }

    #[test]
    fn relative_device_file_resolves_against_the_file() {
        let s = Settings::parse(
            "device_file = \"parts/extra.toml\"",
            Path::new("/station/a/stm32boot.toml"),
        )
        .expect("test setup");
        assert_eq!(
            s.device_file.map(|d| d.value),
            Some(PathBuf::from("/station/a/parts/extra.toml"))
        );
        let s = Settings::parse(
            "device_file = \"/etc/parts.toml\"",
            Path::new("/station/a/stm32boot.toml"),
        )
        .expect("test setup");
        assert_eq!(
            s.device_file.map(|d| d.value),
            Some(PathBuf::from("/etc/parts.toml"))
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_the_known_keys() {
        let e = parse_err("port = \"sim:stm32f411\"\nbaud = 115200\nprot = [\"0x08000000:1K\"]\n");
        assert_eq!(e.line, Some(3));
        let text = e.to_string();
        assert!(
            text.starts_with("/st/stm32boot.toml:3: unknown key 'prot' (did you mean 'protect'?); known keys: port, baud,"),
            "{text}"
        );
        assert!(parse_err("timeout-scale = 2")
            .to_string()
            .contains("did you mean 'timeout_scale'"));
        let far = parse_err("colour = \"blue\"").to_string();
        assert!(!far.contains("did you mean"), "{far}");
        // A table is a key too.
        assert_eq!(
            parse_err("port = \"x\"\n\n[serial]\nbaud = 1\n").line,
            Some(3)
        );
    }

    #[test]
    fn bad_values_name_file_and_line() {
        let cases = [
            ("port = \"x\"\nbaud = 50\n", 2, "out of range"),
            ("baud = \"fast\"", 1, "baud must be an integer"),
            ("\nparity = \"mark\"", 2, "not one of even, none, odd"),
            ("after = \"later\"", 1, "not one of none, go, reset"),
            ("invert_reset = \"yes\"", 1, "true or false"),
            ("timeout_scale = 0", 1, "out of range"),
            ("before = \"-rts,bogus\"", 1, "sequence"),
            ("port = \"\"", 1, "port is empty"),
            (
                "protect = [\n  \"0x08000000:1K\",\n  \"0x0801F800\",\n]",
                3,
                "ADDR:LEN",
            ),
            ("protect = [1]", 1, "string \"ADDR:LEN\""),
            ("port = \"a\"\nport = \"b\"", 2, "duplicate key"),
            ("baud = ", 1, "not valid TOML: a value is missing"),
            (
                "a = [1,\n",
                2,
                "not valid TOML: invalid array; expected `]`",
            ),
        ];
        for (text, line, what) in cases {
            let e = parse_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("/st/stm32boot.toml:{line}: ")),
                "{msg}"
            );
            assert!(msg.contains(what), "{text}: {msg}");
        }
    }

    #[test]
    fn merge_is_per_key() {
        let local = Settings::parse("port = \"sim:stm32f411\"\n", Path::new("/l/stm32boot.toml"))
            .expect("test setup");
        let user = Settings::parse(
            "port = \"/dev/ttyUSB0\"\nbaud = 57600\n",
            Path::new("/u/stm32boot.toml"),
        )
        .expect("test setup");
        let m = local.or(user);
        assert_eq!(
            m.port
                .as_ref()
                .map(|p| (p.value.as_str(), p.file.as_path())),
            Some(("sim:stm32f411", Path::new("/l/stm32boot.toml")))
        );
        assert_eq!(
            m.baud.as_ref().map(|b| (b.value, b.origin())),
            Some((57600, "/u/stm32boot.toml:2".to_string()))
        );
        assert!(m.parity.is_none());
    }

    #[test]
    fn search_order() {
        let root = tempfile::tempdir().expect("test setup");
        let project = root.path().join("project");
        let deep = project.join("a").join("b");
        std::fs::create_dir_all(&deep).expect("test setup");
        let user_dir = root.path().join("xdg").join("stm32boot");
        let search = Search {
            cwd: deep.clone(),
            user_dir: Some(user_dir.clone()),
            explicit: None,
        };
        // Nothing yet.
        assert!(search.files().is_empty());
        assert_eq!(
            Config::load(&search).expect("test setup"),
            Config::default()
        );
        // The user file alone.
        let user = write(&user_dir, "port = \"/dev/ttyUSB0\"\nbaud = 57600\n");
        assert_eq!(search.files(), vec![user.clone()]);
        // A parent's file comes first, then the user file.
        let parent = write(&project, "port = \"sim:stm32f411\"\n");
        assert_eq!(search.files(), vec![parent.clone(), user.clone()]);
        let c = Config::load(&search).expect("test setup");
        assert_eq!(
            c.settings.port.map(|p| p.value),
            Some("sim:stm32f411".into())
        );
        assert_eq!(c.settings.baud.map(|b| b.file), Some(user.clone()));
        // The nearest file wins over one further up; only one local file is read.
        let nearer = write(&deep, "baud = 9600\n");
        assert_eq!(search.files(), vec![nearer.clone(), user.clone()]);
        let c = Config::load(&search).expect("test setup");
        assert!(c.settings.port.is_some_and(|p| p.file == user));
        assert_eq!(c.settings.baud.map(|b| b.value), Some(9600));
        // An explicit file is the only one read, relative to the working directory.
        let explicit = Search {
            explicit: Some(PathBuf::from("../other.toml")),
            ..search.clone()
        };
        std::fs::write(deep.join("../other.toml"), "parity = \"odd\"\n").expect("test setup");
        let c = Config::load(&explicit).expect("test setup");
        assert_eq!(c.files.len(), 1);
        assert!(c.settings.port.is_none());
        assert_eq!(c.settings.parity.map(|p| p.value), Some(Parity::Odd));
        let missing = Search {
            explicit: Some(root.path().join("nope.toml")),
            ..search
        };
        let e = Config::load(&missing).expect_err("a missing explicit file is an error");
        assert!(e.to_string().contains("nope.toml: cannot read it"), "{e}");
    }

    #[test]
    fn user_directory() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            user_dir(os("/x"), os("/home/u"), None),
            Some(PathBuf::from("/x/stm32boot"))
        );
        assert_eq!(
            user_dir(os("relative"), os("/home/u"), None),
            Some(PathBuf::from("/home/u/.config/stm32boot"))
        );
        assert_eq!(user_dir(None, None, None), None);
    }

    #[test]
    fn expected_device_names() {
        let table = crate::device::DeviceTable::builtin().expect("test setup");
        let f411 = table.by_part("stm32f411").expect("test setup");
        for name in [
            "STM32F411",
            "stm32f411re",
            "STM32F411xC/xE",
            "stm32f411xc",
            "0x431",
        ] {
            assert!(device_matches(f411, name), "{name}");
        }
        for name in ["STM32L47x", "STM32F4", "0x415", "stm32f410"] {
            assert!(!device_matches(f411, name), "{name}");
        }
        let l4 = table.by_part("stm32l476").expect("test setup");
        assert!(device_matches(l4, "STM32L47x"));
        assert!(device_matches(l4, "STM32L476RG"));
    }
}
