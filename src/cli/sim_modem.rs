//! `stm32boot sim-modem`: a simulated AT modem on a pseudo-terminal, to rehearse `modem:` ports
//! against the simulator (`stm32boot sim PART --tcp 127.0.0.1:0`) or any TCP relay.

use super::output::Bars;
use super::run::Outcome;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stm32boot::ops::{Note, Progress};
use stm32boot::sim::modem::{ModemPty, SimModem, SimModemConfig};
use stm32boot::transport::modem::Profile;

/// Options of `stm32boot sim-modem`.
#[derive(Args, Debug, Clone)]
pub struct SimModemArgs {
    /// AT dialect to speak: telit, simcom, ublox, quectel or hayes.
    #[arg(long, value_parser = parse_profile)]
    pub profile: Profile,
    /// Serve on a pseudo-terminal and print its path (the only endpoint, so implied; 8N1, no
    /// modem lines).
    #[arg(long)]
    pub pty: bool,
    /// Also create this symlink to the pseudo-terminal, for a stable path.
    #[arg(long)]
    pub link: Option<PathBuf>,
    /// Escape guard time at start (S12; AT S12 changes it except on simcom, whose guard is
    /// fixed).
    #[arg(long, default_value = "1s", value_parser = parse_guard)]
    pub guard: Duration,
    /// Cut the connection after this many bytes towards the chip and report NO CARRIER (CLOSED
    /// on simcom), as when the network drops a call. Once per run.
    #[arg(long, value_name = "BYTES")]
    pub cut_after: Option<u64>,
    /// Answer every dial with a failure (NO CARRIER, CONNECT FAIL or ERROR, as the dialect
    /// does), without connecting.
    #[arg(long)]
    pub fail_dial: bool,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    s.parse()
}

fn parse_guard(s: &str) -> Result<Duration, String> {
    let d = stm32boot::units::parse_duration(s)?;
    if d < Duration::from_millis(20) || d > Duration::from_millis(5100) {
        return Err(format!(
            "'{s}': the guard time must be from 20ms to 5.1s (S12 counts 1/50 s)"
        ));
    }
    Ok(d)
}

/// Run `stm32boot sim-modem` until Ctrl-C or SIGTERM.
pub fn run(args: &SimModemArgs, bars: &mut Bars) -> Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the signal handler")?;
    }
    let mut cfg = SimModemConfig::new(args.profile);
    cfg.guard = args.guard;
    cfg.cut_after = args.cut_after;
    cfg.fail_dial = args.fail_dial;
    let mut modem = SimModem::new(cfg);
    let mut pty = ModemPty::open(args.link.as_deref())?;
    // The path goes to stdout at once so that scripts can read it; the rest to stderr.
    announce(
        &args
            .link
            .as_deref()
            .unwrap_or(pty.path())
            .display()
            .to_string(),
    );
    bars.note(Note::Info(format!(
        "simulated {} modem on {} (8N1 pseudo-terminal, {:?} guard time); stop with Ctrl-C",
        args.profile,
        pty.path().display(),
        modem.guard()
    )));
    pty.serve(&mut modem, &stop, &mut |line| {
        bars.note(Note::Info(format!("modem: {line}")))
    })?;
    let (to_chip, to_host) = modem.totals();
    Ok(Outcome {
        text: String::new(),
        json: json!({
            "stopped": true,
            "profile": args.profile.name(),
            "bytes_to_chip": to_chip,
            "bytes_to_host": to_host,
        }),
    })
}

/// Print the endpoint's path as the first line of stdout, at once.
fn announce(address: &str) {
    use std::io::Write as _;
    println!("{address}");
    std::io::stdout().flush().ok();
}
