//! `stm32boot doctor`: a checklist for the link and the chip.

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::Outcome;
use anyhow::{bail, Result};
use clap::Args;

/// Options of `stm32boot doctor`.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Run `stm32boot doctor`.
pub fn run(args: &DoctorArgs, _bars: &mut Bars) -> Result<Outcome> {
    let _ = &args.conn;
    bail!("`stm32boot doctor` is being built")
}
