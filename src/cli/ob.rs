//! `stm32boot ob`: option bytes by name.

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::Outcome;
use anyhow::{bail, Result};
use clap::Args;

/// Options of `stm32boot ob`.
#[derive(Args, Debug, Clone)]
pub struct ObArgs {
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Run `stm32boot ob`.
pub fn run(args: &ObArgs, _bars: &mut Bars) -> Result<Outcome> {
    let _ = &args.conn;
    bail!("`stm32boot ob` is being built")
}
