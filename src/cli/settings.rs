//! Where the connection settings come from, and which port to open.
//!
//! Each connection option is taken, key by key, from the first of: the command line, its
//! environment variable (`STM32BOOT_PORT`, …), the local `stm32boot.toml`, the user's
//! `stm32boot.toml` (see [`stm32boot::config`]), the built-in default. clap says which options
//! came from the command line or the environment ([`install`] records it from the parsed
//! matches); [`apply`] fills in the rest from the configuration when a command connects, so a
//! broken configuration file only stops commands that talk to a chip.
//!
//! With no port anywhere, the only USB serial adapter present is used (and named on stderr);
//! `usb:VID:PID[:SERIAL]` picks an adapter by its IDs ([`port_spec`]).

use super::args::{AfterArg, Cli, ConnectArgs, ParityArg};
use super::output::Bars;
use anyhow::{anyhow, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use stm32boot::config::{self, After, Config, ConfigError, Search, Sourced};
use stm32boot::device::{Device, DeviceTable};
use stm32boot::link::Parity;
use stm32boot::ops::{Note, Progress};
use stm32boot::transport::{serial, usb, PortSpec};
use tracing::debug;

/// Which configuration files to read.
#[derive(Debug, Clone)]
enum Files {
    /// The local file and the user file.
    Search,
    /// This file only (`--config`, `STM32BOOT_CONFIG`).
    Explicit(PathBuf),
    /// None (`--no-config`).
    Off,
}

/// What the command line said about the settings.
#[derive(Debug)]
struct Invocation {
    files: Files,
    /// Connection options (every [`ConnectArgs`] id) given on the command line or through
    /// their environment variable.
    given: Vec<(String, ValueSource)>,
}

static INVOCATION: OnceLock<Invocation> = OnceLock::new();
static LOADED: OnceLock<Result<Config, ConfigError>> = OnceLock::new();

/// Record which connection options the command line or the environment gave (at any level of
/// the subcommand chain: `protect --port P readout on` gives it one level up from the leaf),
/// and which configuration files to read. Call once, before running the command; without it,
/// [`apply`] reads no configuration.
pub fn install(matches: &ArgMatches, cli: &Cli) {
    use clap::Args as _;
    let ids: Vec<String> = ConnectArgs::augment_args(clap::Command::new("connect"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let mut given = Vec::new();
    let mut level = Some(matches);
    while let Some(m) = level {
        for id in &ids {
            // try_contains_id first: value_source panics on an id the level does not define.
            if matches!(m.try_contains_id(id), Ok(true)) {
                if let Some(src @ (ValueSource::CommandLine | ValueSource::EnvVariable)) =
                    m.value_source(id)
                {
                    given.push((id.clone(), src));
                }
            }
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    let files = match (&cli.config, cli.no_config) {
        (_, true) => Files::Off,
        (Some(path), false) => Files::Explicit(path.clone()),
        (None, false) => Files::Search,
    };
    let _ = INVOCATION.set(Invocation { files, given });
}

/// Options set by the caller from elsewhere (a job file), with where they came from.
static KEPT: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// The port chosen by gang mode ([`use_port`]), which replaces the command line's.
static CHOSEN_PORT: OnceLock<String> = OnceLock::new();

/// Open `port` instead of the ports the command line names (a gang child's own port, or the
/// only match of `--ports GLOB`): it ranks above everything, like a command-line port. `origin`
/// is shown with `-v`. The first call wins.
pub fn use_port(port: String, origin: impl Into<String>) {
    if CHOSEN_PORT.set(port).is_ok() {
        keep("port", origin);
    }
}

fn kept(id: &str) -> Option<String> {
    KEPT.lock()
        .ok()
        .and_then(|k| k.iter().find(|(i, _)| *i == id).map(|(_, o)| o.clone()))
}

/// Whether the command line or the environment gave the connection option `id` (its clap id,
/// e.g. `port`): a job file's `[connect]` table should fill in only the others.
pub fn given(id: &str) -> bool {
    INVOCATION
        .get()
        .is_some_and(|inv| inv.given.iter().any(|(g, _)| *g == id))
}

/// Keep the connection option `id` as the caller set it (a job file's `[connect]` value, which
/// ranks below the command line and above stm32boot.toml): [`apply`] will not replace it with
/// the configuration's. `origin` is shown with `-v`.
pub fn keep(id: &'static str, origin: impl Into<String>) {
    if let Ok(mut k) = KEPT.lock() {
        k.push((id, origin.into()));
    }
}

fn env_name(id: &str) -> &'static str {
    match id {
        "port" => "STM32BOOT_PORT",
        "baud" => "STM32BOOT_BAUD",
        "before" => "STM32BOOT_BEFORE",
        "after" => "STM32BOOT_AFTER",
        _ => "its environment variable",
    }
}

/// The configuration files in effect, read once.
fn loaded(inv: &Invocation) -> Result<&'static Config> {
    LOADED
        .get_or_init(|| {
            let explicit = match &inv.files {
                Files::Off => {
                    debug!("configuration files: none read (--no-config)");
                    return Ok(Config::default());
                }
                Files::Explicit(p) => Some(p.clone()),
                Files::Search => None,
            };
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            let search = Search::from_env(cwd, explicit);
            let config = Config::load(&search)?;
            if search.explicit.is_none() {
                debug!(
                    "configuration files: {} (looked for {} in {} and its parents, and {})",
                    config.describe_files(),
                    config::FILE_NAME,
                    search.cwd.display(),
                    search
                        .user_file()
                        .map(|f| f.display().to_string())
                        .unwrap_or_else(|| "no user configuration directory".into())
                );
            } else {
                debug!("configuration file: {}", config.describe_files());
            }
            Ok(config)
        })
        .as_ref()
        .map_err(|e| anyhow!(stm32boot::Error::from(e.clone())))
}

/// The connection options with the configuration applied, and what else it asks of a
/// connection.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The options to use.
    pub args: ConnectArgs,
    /// The part this station expects, if the configuration names one.
    pub device: Option<Sourced<String>>,
    /// The configuration files read, for messages.
    pub files: String,
}

/// Fill in the options that neither the command line nor the environment gave from the
/// configuration files, and log (at debug level, `-v`) where each setting came from.
pub fn apply(args: &ConnectArgs) -> Result<Applied> {
    let Some(inv) = INVOCATION.get() else {
        return Ok(Applied {
            args: args.clone(),
            device: None,
            files: "no configuration read".into(),
        });
    };
    let config = loaded(inv)?;
    let s = &config.settings;
    let mut origins: Vec<(&str, String)> = Vec::new();
    // The configuration's value of `id`, unless the command line or the environment gave one.
    let mut from_file = |id: &'static str, setting: Option<String>| -> bool {
        let given = inv
            .given
            .iter()
            .find(|(g, _)| *g == id)
            .map(|(_, src)| *src)
            // Gang mode's choice replaces the command line's ports.
            .filter(|_| !(id == "port" && CHOSEN_PORT.get().is_some()));
        let (origin, use_it) = match (given, kept(id), setting) {
            (Some(ValueSource::CommandLine), _, _) => ("command line".to_string(), false),
            (Some(_), _, _) => (env_name(id).to_string(), false),
            (None, Some(kept), _) => (kept, false),
            (None, None, Some(origin)) => (origin, true),
            (None, None, None) => ("default".to_string(), false),
        };
        origins.push((id, origin));
        use_it
    };
    fn origin<T>(s: &Option<Sourced<T>>) -> Option<String> {
        s.as_ref().map(Sourced::origin)
    }
    let mut out = args.clone();
    if let Some(port) = CHOSEN_PORT.get() {
        out.port = vec![port.clone()];
    }
    if let (true, Some(v)) = (from_file("port", origin(&s.port)), &s.port) {
        out.port = vec![v.value.clone()];
    }
    if let (true, Some(v)) = (from_file("baud", origin(&s.baud)), &s.baud) {
        out.baud = v.value;
    }
    if let (true, Some(v)) = (from_file("parity", origin(&s.parity)), &s.parity) {
        out.parity = match v.value {
            Parity::Even => ParityArg::Even,
            Parity::None => ParityArg::None,
            Parity::Odd => ParityArg::Odd,
        };
    }
    if let (true, Some(v)) = (from_file("before", origin(&s.before)), &s.before) {
        out.before = Some(v.value.clone());
    }
    if let (true, Some(v)) = (from_file("after", origin(&s.after)), &s.after) {
        out.after = match v.value {
            After::None => AfterArg::None,
            After::Go => AfterArg::Go,
            After::Reset => AfterArg::Reset,
        };
    }
    if let (true, Some(v)) = (
        from_file("invert_reset", origin(&s.invert_reset)),
        &s.invert_reset,
    ) {
        out.invert_reset = v.value;
    }
    if let (true, Some(v)) = (
        from_file("invert_boot0", origin(&s.invert_boot0)),
        &s.invert_boot0,
    ) {
        out.invert_boot0 = v.value;
    }
    if let (true, Some(v)) = (
        from_file("timeout_scale", origin(&s.timeout_scale)),
        &s.timeout_scale,
    ) {
        out.timeout_scale = v.value;
    }
    if let (true, Some(v)) = (
        from_file("device_file", origin(&s.device_file)),
        &s.device_file,
    ) {
        out.device_file = Some(v.value.clone());
    }
    let shown = |v: Option<String>| v.unwrap_or_else(|| "(none)".into());
    let value = |id: &str| match id {
        "port" => shown(Some(out.port.join(", ")).filter(|p| !p.is_empty())),
        "baud" => out.baud.to_string(),
        "parity" => format!("{:?}", out.parity).to_lowercase(),
        "before" => shown(out.before.clone()),
        "after" => format!("{:?}", out.after).to_lowercase(),
        "invert_reset" => out.invert_reset.to_string(),
        "invert_boot0" => out.invert_boot0.to_string(),
        "timeout_scale" => out.timeout_scale.to_string(),
        _ => shown(out.device_file.as_ref().map(|p| p.display().to_string())),
    };
    for (id, origin) in &origins {
        debug!("setting {id} = {} (from {origin})", value(id));
    }
    if let Some(d) = &s.device {
        debug!("setting device = {:?} (from {})", d.value, d.origin());
    }
    if let Some(p) = &s.protect {
        debug!(
            "setting protect = {} (from {}; added to --protect)",
            ranges_text(&p.value),
            p.origin()
        );
    }
    Ok(Applied {
        args: out,
        device: s.device.clone(),
        files: match inv.files {
            Files::Off => "none (--no-config)".into(),
            _ => config.describe_files(),
        },
    })
}

fn ranges_text(ranges: &[(u32, u32)]) -> String {
    ranges
        .iter()
        .map(|(a, l)| format!("0x{a:08X}:0x{l:X}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ranges the configuration protects from `write` (added to `--protect`).
pub fn protected_ranges() -> Result<Vec<(u32, u32)>> {
    let Some(inv) = INVOCATION.get() else {
        return Ok(Vec::new());
    };
    Ok(loaded(inv)?
        .settings
        .protect
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_default())
}

fn invalid(message: String) -> anyhow::Error {
    anyhow!(stm32boot::Error::InvalidRequest(message))
}

/// The port to open: the one given (a `usb:` port resolved to the matching adapter's path), or
/// with none given the only USB serial adapter present; names the adapter it chose on stderr.
pub fn port_spec(applied: &Applied, bars: &mut Bars) -> Result<PortSpec> {
    if let [_, _, ..] = applied.args.port.as_slice() {
        // Gang mode (src/cli/gang.rs) runs one process per port; nothing else opens several.
        return Err(invalid(format!(
            "{} ports given, but this command opens one (gang mode runs a command on several)",
            applied.args.port.len()
        )));
    }
    if let Some(port) = applied.args.port.first() {
        return match PortSpec::parse(port)? {
            PortSpec::Usb(filter) => {
                let adapter = usb::resolve(&filter)?;
                bars.note(Note::Info(format!(
                    "using {} ({}) for {filter}",
                    adapter.path,
                    usb::describe(&adapter)
                )));
                Ok(PortSpec::Serial(adapter.path))
            }
            spec => Ok(spec),
        };
    }
    let how = format!(
        "pass --port /dev/ttyUSB0 (or --port usb:VID:PID[:SERIAL], or --port sim:stm32f411 for \
         the simulated target), set STM32BOOT_PORT, or put port = \"…\" in {} (configuration \
         read: {})",
        config::FILE_NAME,
        applied.files
    );
    let ports = serial::list_ports().map_err(|e| {
        invalid(format!(
            "no port given, and listing serial ports failed ({e}): {how}"
        ))
    })?;
    match usb::pick(&ports, None) {
        usb::Pick::One(adapter) => {
            bars.note(Note::Info(format!(
                "using {} ({}), the only USB serial adapter",
                adapter.path,
                usb::describe(adapter)
            )));
            debug!(
                "setting port = {} (the only USB serial adapter)",
                adapter.path
            );
            Ok(PortSpec::Serial(adapter.path.clone()))
        }
        usb::Pick::None(_) => Err(invalid(format!(
            "no port given and no USB serial adapter found: {how}; `stm32boot ports` lists \
             serial ports"
        ))),
        usb::Pick::Several(adapters) => Err(invalid(format!(
            "no port given and {} USB serial adapters found:{}\nchoose one: {how}",
            adapters.len(),
            usb::candidates(&adapters)
        ))),
    }
}

/// Before the port opens: the part the configuration expects must be one the device table
/// knows (a typo would otherwise refuse every chip).
pub fn check_known_device(table: &DeviceTable, applied: &Applied) -> Result<()> {
    let Some(expected) = &applied.device else {
        return Ok(());
    };
    if table
        .devices()
        .iter()
        .any(|d| config::device_matches(d, &expected.value))
    {
        return Ok(());
    }
    Err(invalid(format!(
        "{}: device = \"{}\" names no part in the device table; `stm32boot devices` lists them \
         (a name such as STM32F411xC/xE or STM32L47x, a part such as stm32f411, or a PID such \
         as 0x431)",
        expected.origin(),
        expected.value
    )))
}

/// After the chip answered, before anything is written: it must be the part the configuration
/// expects.
pub fn check_device(device: &Device, applied: &Applied) -> Result<()> {
    let Some(expected) = &applied.device else {
        return Ok(());
    };
    if config::device_matches(device, &expected.value) {
        debug!(
            "the chip is a {}, as {} expects",
            device.name,
            expected.origin()
        );
        return Ok(());
    }
    Err(invalid(format!(
        "the chip is a {} (PID 0x{:03X}), but {} expects device = \"{}\": refusing to go on \
         (wrong chip on this station, or wrong configuration file)",
        device.name,
        device.pid,
        expected.origin(),
        expected.value
    )))
}
