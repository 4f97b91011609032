//! `stm32boot bank`: dual-bank status and swap.

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::Outcome;
use anyhow::{bail, Result};
use clap::Args;

/// Options of `stm32boot bank`.
#[derive(Args, Debug, Clone)]
pub struct BankArgs {
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Run `stm32boot bank`.
pub fn run(args: &BankArgs, _bars: &mut Bars) -> Result<Outcome> {
    let _ = &args.conn;
    bail!("`stm32boot bank` is being built")
}
