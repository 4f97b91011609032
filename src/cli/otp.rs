//! `stm32boot otp`: the one-time-programmable area.

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::Outcome;
use anyhow::{bail, Result};
use clap::Args;

/// Options of `stm32boot otp`.
#[derive(Args, Debug, Clone)]
pub struct OtpArgs {
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Run `stm32boot otp`.
pub fn run(args: &OtpArgs, _bars: &mut Bars) -> Result<Outcome> {
    let _ = &args.conn;
    bail!("`stm32boot otp` is being built")
}
