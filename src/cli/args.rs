//! Command-line definition (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Program STM32 microcontrollers through the ROM USART bootloader (AN3155).
#[derive(Parser, Debug)]
#[command(
    name = "stm32boot",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("STM32BOOT_GIT_REV"), ")"),
    about,
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,

    /// Print one machine-readable JSON result on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing but errors (and the result for commands that print one).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// More detail on stderr (-v: debug, -vv: trace).
    #[arg(long, short, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print every byte sent and received, with a timestamp, and line events (DTR, RTS, break,
    /// baud rate and parity, purges) on stderr. Progress bars are off while tracing.
    #[arg(long, global = true)]
    pub trace: bool,

    /// Read the connection settings from this file only, instead of stm32boot.toml in the
    /// working directory (or a parent) and in the user's config directory.
    #[arg(long, global = true, value_name = "FILE", env = "STM32BOOT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Read no configuration file (not even --config or STM32BOOT_CONFIG).
    #[arg(long, global = true)]
    pub no_config: bool,
}

/// Options for reaching the chip.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Port: /dev/ttyUSB0, COM3, tcp://HOST:PORT, rfc2217://HOST:PORT or sim:PART[?state=FILE].
    /// Repeat it to run the command on every port in parallel (gang mode).
    #[arg(long, short, env = "STM32BOOT_PORT", action = clap::ArgAction::Append)]
    pub port: Vec<String>,

    /// Run the command on every serial port whose path matches this pattern (e.g.
    /// '/dev/ttyUSB*'), in parallel, with --port's ports (gang mode).
    #[arg(long, value_name = "GLOB")]
    pub ports: Option<String>,

    /// Baud rate (the bootloader detects 1200-115200 reliably).
    #[arg(long, short, env = "STM32BOOT_BAUD", default_value_t = 115_200, value_parser = parse_baud)]
    pub baud: u32,

    /// Parity: even (8E1, what the bootloader needs), or none for pseudo-terminals and links
    /// that carry no parity.
    #[arg(long, value_enum, default_value_t = ParityArg::Even)]
    pub parity: ParityArg,

    /// Multiply every timeout by this factor (slow adapters, remote links).
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    pub timeout_scale: f64,

    /// Extra device descriptions (TOML, same schema as the built-in table).
    #[arg(long)]
    pub device_file: Option<PathBuf>,

    /// Flash size to assume instead of the one the chip reports (e.g. 256K, 1M).
    #[arg(long, value_parser = parse_size)]
    pub flash_size: Option<u32>,

    /// Drive DTR to this level after opening the port (a failure is only a warning).
    #[arg(long, value_enum)]
    pub dtr: Option<Level>,

    /// Drive RTS to this level after opening the port (a failure is only a warning).
    #[arg(long, value_enum)]
    pub rts: Option<Level>,

    /// Reset into the bootloader through DTR/RTS first: a preset (dtr-reset-rts-boot0,
    /// rts-reset-dtr-boot0, none) or stm32flash's -i syntax ('-rts,-dtr,dtr:rts,-dtr,dtr';
    /// only the part before ':' runs here).
    #[arg(
        long,
        value_name = "SEQUENCE",
        env = "STM32BOOT_BEFORE",
        allow_hyphen_values = true
    )]
    pub before: Option<String>,

    /// How to leave the chip after a successful job: none (stay in the bootloader; resume
    /// with --before no-sync), go (start the application), or reset (the exit part of the
    /// --before sequence: a reset with BOOT0 low).
    #[arg(long, value_enum, default_value_t = AfterArg::None, env = "STM32BOOT_AFTER")]
    pub after: AfterArg,

    /// The reset line of a --before preset is active high.
    #[arg(long)]
    pub invert_reset: bool,

    /// The BOOT0 line of a --before preset is active high.
    #[arg(long)]
    pub invert_boot0: bool,

    /// Send this command to the running application first, which makes it jump to its
    /// bootloader (escapes: \r \n \t \0 \\ \xNN), e.g. 'BOOT\r'.
    #[arg(long, value_name = "STRING", value_parser = parse_escaped)]
    pub enter: Option<EnterBytes>,

    /// How long the application may take to jump after --enter, before the first 0x7F.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub enter_wait: std::time::Duration,

    /// Parity of the application's console for --enter, when it is not the bootloader's.
    #[arg(long, value_enum, requires = "enter")]
    pub enter_parity: Option<ParityArg>,

    /// Wait for every ACK before sending the next phase of a command (stop-and-wait), even
    /// where sending a command's phases together is safe.
    #[arg(long)]
    pub no_pipeline: bool,

    /// How many times a failed read, erase, checksum or flash write is repeated after a NACK,
    /// a timeout or a garbled reply (the bootloader is resynced in between). 0: the first
    /// error stands.
    #[arg(long, env = "STM32BOOT_RETRIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,
}

/// `--after` choices.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterArg {
    /// Stay in the bootloader.
    None,
    /// Start the application (Go to the start of flash).
    Go,
    /// Run the exit part of the --before sequence (reset with BOOT0 low).
    Reset,
}

/// The bytes of `--enter` (a newtype, so that clap does not take `Vec<u8>` as a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnterBytes(pub Vec<u8>);

fn parse_escaped(s: &str) -> Result<EnterBytes, String> {
    stm32boot::units::parse_escaped(s).map(EnterBytes)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    stm32boot::units::parse_duration(s)
}

/// Parity choices.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParityArg {
    /// 8E1.
    Even,
    /// 8N1.
    None,
    /// 8O1.
    Odd,
}

/// A modem-control line level.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Asserted.
    High,
    /// Deasserted.
    Low,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Identify the chip: PID, name, bootloader, commands, flash map, protection, unique ID.
    Info {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Read memory to a file (.hex writes Intel HEX, anything else raw binary).
    Read {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Start address.
        #[arg(value_parser = parse_u32)]
        address: u32,
        /// Number of bytes (e.g. 4096, 0x1000, 16K).
        #[arg(value_parser = parse_size)]
        length: u32,
        /// Output file.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Write an image (.bin, .hex, .srec, .elf), erasing only the pages it touches and keeping
    /// the bytes of those pages that the image does not cover.
    Write(WriteArgs),
    /// Finish (or with --restore, undo) a write that power or link loss cut off, from the
    /// journal of this chip.
    Recover {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Journal directory (as given to `write --journal`).
        #[arg(long, value_name = "DIR", env = "STM32BOOT_JOURNAL")]
        journal: Option<PathBuf>,
        /// Put the pages back as they were before the write, instead of finishing it.
        #[arg(long)]
        restore: bool,
    },
    /// Erase the whole flash, a bank, pages, or an address range.
    Erase {
        #[command(flatten)]
        conn: ConnectArgs,
        #[command(flatten)]
        what: EraseWhat,
        /// Grow a --range that is not on page bounds to whole pages (says what it grows to).
        #[arg(long)]
        expand: bool,
        /// Print the pages that would be erased and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that the chip holds an image.
    Verify {
        #[command(flatten)]
        conn: ConnectArgs,
        #[command(flatten)]
        image: ImageArgs,
    },
    /// STM32 CRC-32 of a memory range (Get Checksum, or read-back where not offered).
    Checksum {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Start address (multiple of 4).
        #[arg(value_parser = parse_u32)]
        address: u32,
        /// Length in bytes (multiple of 4).
        #[arg(value_parser = parse_size)]
        length: u32,
    },
    /// Start the application whose vector table is at ADDR (default: start of flash).
    Go {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Vector table address.
        #[arg(value_parser = parse_u32)]
        address: Option<u32>,
    },
    /// Read and write protection.
    Protect {
        #[command(flatten)]
        conn: ConnectArgs,
        #[command(subcommand)]
        what: ProtectCmd,
    },
    /// List serial ports, with USB vendor and product IDs.
    Ports,
    /// List the device table (filter by name, family or PID).
    Devices {
        /// Text to look for in the name, family or part names, or a PID such as 0x431.
        filter: Option<String>,
    },
    /// Share a local serial port with remote stm32boot clients that prove a pre-shared key (RFC 2217, DTR/RTS, sequences replayed locally).
    Relay(super::relay::RelayArgs),
    /// Run a simulated target that other programs can open.
    Sim(SimArgs),
    /// Run a simulated AT modem (Telit, SIMCom, …) on a pseudo-terminal, to rehearse modem: ports against the simulator.
    SimModem(super::sim_modem::SimModemArgs),
    /// Coefficient blocks: pack, C header, write to and read from the chip.
    Coeffs(super::coeffs::CoeffsArgs),
    /// Option bytes by name: show them decoded, or change named fields.
    Ob(super::ob::ObArgs),
    /// Dual-bank parts: which bank boots, whether each holds an image, and swapping them.
    Bank(super::bank::BankArgs),
    /// The one-time-programmable area: show blocks, write once, lock.
    Otp(super::otp::OtpArgs),
    /// Check the link and the chip: baud and parity, echo, BOOT0, protection, bank mode.
    Doctor(super::doctor::DoctorArgs),
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish, powershell).
    Completions(super::docs::CompletionsArgs),
    /// Print the manual page on stdout, or write one per subcommand into a directory.
    Man(super::docs::ManArgs),
    /// Run a job file: ordered steps (erase, write, coeffs, ob, otp, verify, go); a run cut off
    /// by a link or power loss is resumed where it stopped.
    Run(super::job::RunArgs),
}

/// Where an image comes from.
#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// Image file.
    pub file: PathBuf,
    /// Load address for raw .bin files.
    #[arg(long, short, value_parser = parse_u32)]
    pub address: Option<u32>,
}

/// Options of `stm32boot write`.
#[derive(Args, Debug, Clone)]
pub struct WriteArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Verify after writing (Get Checksum where offered, else read-back).
    #[arg(long)]
    pub verify: bool,
    /// Start the application afterwards.
    #[arg(long)]
    pub go: bool,
    /// Do not erase first (the target pages must already be erased).
    #[arg(long)]
    pub no_erase: bool,
    /// When verifying by reading back, also read the erased-value blocks of pages this write
    /// erased (by default the erase's ACK covers them).
    #[arg(long)]
    pub verify_erased: bool,
    /// Write blocks that hold only the erased value too.
    #[arg(long)]
    pub no_skip: bool,
    /// Print the plan (pages to read, erase and write) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Erase partly covered pages whole: the bytes the image does not supply are LOST.
    #[arg(long)]
    pub no_preserve: bool,
    /// Refuse to erase a page that holds this range (ADDR:LEN, e.g. 0x0801F800:2K; repeatable).
    #[arg(long, value_name = "ADDR:LEN", value_parser = parse_range)]
    pub protect: Vec<(u32, u32)>,
    /// Write even where the plan erases a protected range.
    #[arg(long)]
    pub force: bool,
    /// Journal directory for pages saved before an erase (default: the user's state directory,
    /// or $STM32BOOT_STATE_DIR/journal).
    #[arg(long, value_name = "DIR", env = "STM32BOOT_JOURNAL")]
    pub journal: Option<PathBuf>,
    /// Do not journal pages before erasing them.
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,
    /// Place an image linked for bank 1 into this bank of a dual-bank part (its bytes land at
    /// the same offsets inside the bank); `bank swap` then boots it.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub bank: Option<u8>,
    /// Compare each page with the image first (Get Checksum, else read-back): pages that
    /// already hold their content are neither erased nor written, blank ones are not erased.
    #[arg(long)]
    pub skip_unchanged: bool,
}

/// What to erase (exactly one).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct EraseWhat {
    /// The whole flash (mass erase, or every page on parts without one).
    #[arg(long)]
    pub all: bool,
    /// One bank (1 or 2).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub bank: Option<u8>,
    /// Pages by number, A..B inclusive (or a single page N).
    #[arg(long)]
    pub pages: Option<String>,
    /// An address range ADDR:LEN, which must start and end on page bounds unless --expand.
    #[arg(long, value_name = "ADDR:LEN", value_parser = parse_range)]
    pub range: Option<(u32, u32)>,
}

/// Protection subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ProtectCmd {
    /// Readout protection: `on` sets RDP level 1; `off` goes back to level 0, which MASS-ERASES
    /// the flash.
    Readout {
        /// on or off.
        #[arg(value_enum)]
        state: OnOff,
        /// Needed for `off`: confirms that the whole flash will be erased.
        #[arg(long)]
        confirm_mass_erase: bool,
    },
    /// Write protection: `on PAGES` (page or sector numbers as `info` lists them; the tool
    /// turns them into the family's Write Protect codes) or `off` for all.
    Write {
        /// on or off.
        #[arg(value_enum)]
        state: OnOff,
        /// Page or sector numbers for `on` (e.g. 0,1,2 or 0..3).
        sectors: Option<String>,
    },
}

/// on / off.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    /// Enable.
    On,
    /// Disable.
    Off,
}

/// Options of `stm32boot sim`.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("endpoint").required(true).args(["pty", "tcp", "rfc2217", "dial"])))]
pub struct SimArgs {
    /// Part to simulate, with options as after `--port sim:` (e.g. stm32f411, or
    /// 'stm32l476?timing=typical&seed=7'); `stm32boot devices` lists the parts.
    pub part: String,
    /// Serve on a pseudo-terminal (8N1: a pty has no parity and no modem lines) and print its
    /// path.
    #[arg(long)]
    pub pty: bool,
    /// With --pty: also create this symlink to the pseudo-terminal, for a stable path.
    #[arg(long, requires = "pty")]
    pub link: Option<PathBuf>,
    /// Serve raw TCP on this address (e.g. 127.0.0.1:7001; port 0 picks one), one client at a
    /// time, at --baud 8E1.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Serve RFC 2217 on this address (e.g. 127.0.0.1:7000): clients set baud rate and parity,
    /// purge, and drive DTR/RTS, which reach NRST and BOOT0.
    #[arg(long, value_name = "ADDR")]
    pub rfc2217: Option<String>,
    /// Dial out to this address (raw TCP), as a field device behind a modem does, and dial
    /// again whenever the connection ends; stm32boot waits for it with --port listen://ADDR.
    #[arg(long, value_name = "HOST:PORT")]
    pub dial: Option<String>,
    /// Line rate of the chip's UART behind a TCP endpoint (RFC 2217 clients may change it).
    #[arg(long, default_value_t = 115_200, value_parser = parse_baud)]
    pub baud: u32,
    /// Timing model: fast (nothing takes time), typical or max (wire rate and datasheet flash
    /// and start-up times).
    #[arg(long, value_parser = ["fast", "typical", "max"])]
    pub timing: Option<String>,
    /// In application mode, this string makes the firmware jump to the bootloader (as field
    /// firmware does for remote updates).
    #[arg(long, value_name = "STRING")]
    pub app_enter_bootloader: Option<String>,
    /// Which control line drives NRST (asserted = held in reset unless --invert-nrst).
    #[arg(long, value_parser = ["dtr", "rts", "none"])]
    pub nrst: Option<String>,
    /// What drives BOOT0: a control line (asserted = low unless --invert-boot0) or a fixed level.
    #[arg(long, value_parser = ["rts", "dtr", "high", "low"])]
    pub boot0: Option<String>,
    /// The NRST line is active high (asserted releases reset).
    #[arg(long)]
    pub invert_nrst: bool,
    /// The BOOT0 line is active high (asserted drives BOOT0 high).
    #[arg(long)]
    pub invert_boot0: bool,
    /// Load memory from this file at start and save it on exit.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Protocol version byte to report (0x33 and up list Get Checksum).
    #[arg(long, value_parser = parse_u8)]
    pub bootloader_version: Option<u8>,
    /// Flash size of the simulated part (e.g. 256K).
    #[arg(long, value_parser = parse_size)]
    pub flash_size: Option<u32>,
    /// Extra device descriptions (TOML).
    #[arg(long)]
    pub device_file: Option<PathBuf>,
}

pub use stm32boot::units::{parse_range, parse_size, parse_u32};

fn parse_u8(s: &str) -> Result<u8, String> {
    stm32boot::units::parse_small(s)
}

fn parse_baud(s: &str) -> Result<u32, String> {
    let v = parse_u32(s)?;
    if !(300..=4_000_000).contains(&v) {
        return Err(format!("{v} baud is out of range (300 to 4000000)"));
    }
    Ok(v)
}

fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.01..=1000.0).contains(&v) {
        return Err(format!("timeout scale {v} is out of range (0.01 to 1000)"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn baud_and_timeout_scale_ranges() {
        assert!(parse_baud("50").is_err());
        assert!(parse_scale("0").is_err());
    }
}
