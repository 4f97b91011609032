//! `stm32boot bank`: dual-bank status and swap. `swap` toggles the part's boot-bank option
//! (BFB2, or nSWAP_BANK on G0B1) only when the bank it will boot holds a plausible vector
//! table, unless `--force`.

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::{finish, open, Outcome};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use stm32boot::ops::bank::{self, BankStatus};

/// Options of `stm32boot bank`.
#[derive(Args, Debug, Clone)]
pub struct BankArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: BankCmd,
}

/// `bank` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum BankCmd {
    /// Bank mode, which bank boots, and whether each bank holds an image.
    Status {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Boot the other bank from the next reset (toggles BFB2 or the family's equivalent).
    Swap {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Swap even if the bank to boot holds no plausible vector table.
        #[arg(long)]
        force: bool,
        /// Print the option change and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Run `stm32boot bank`.
pub fn run(args: &BankArgs, bars: &mut Bars) -> Result<Outcome> {
    match &args.cmd {
        BankCmd::Status { conn } => status(conn, bars),
        BankCmd::Swap {
            conn,
            force,
            dry_run,
        } => swap(conn, *force, *dry_run, bars),
    }
}

fn status_text(name: &str, erased: u8, s: &BankStatus) -> String {
    let mut t = format!(
        "{name}: {} bank{}",
        s.banks,
        if s.banks == 1 { "" } else { "s" }
    );
    for (f, v, m) in &s.mode_fields {
        t.push_str(&format!(" ({f}={v}: {m})"));
    }
    t.push('\n');
    if let Some((f, v)) = &s.boot_option {
        t.push_str(&format!(
            "boot option: {f}={v} ({})\n",
            if s.bank2_selected {
                "bank 2 first"
            } else {
                "bank 1"
            }
        ));
    }
    for v in &s.vectors {
        t.push_str(&format!(
            "bank {} at 0x{:08X} {}\n",
            v.bank,
            v.address,
            v.describe(erased)
        ));
    }
    t.push_str(&match s.boots {
        Some(b) => format!("after a reset with BOOT0 low the chip runs bank {b}"),
        None => "after a reset with BOOT0 low there is nothing to run".into(),
    });
    t
}

fn status(args: &ConnectArgs, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(args, bars)?;
    let s = bank::read_status(&mut conn)?;
    let (name, erased) = (conn.device.name.clone(), conn.device.rules.erased);
    finish(conn)?;
    Ok(Outcome {
        text: status_text(&name, erased, &s),
        json: json!({ "device": name, "status": s }),
    })
}

fn swap(args: &ConnectArgs, force: bool, dry_run: bool, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(args, bars)?;
    let (_, field, bank2_value) = bank::swap_option(&conn.device)?;
    let s = bank::read_status(&mut conn)?;
    let (target_bank, new_value) = if s.bank2_selected {
        (1u8, bank2_value ^ 1)
    } else {
        (2u8, bank2_value)
    };
    let target = s.vectors.iter().find(|v| v.bank == target_bank);
    if !force && !target.is_some_and(|v| v.plausible) {
        let what = target
            .map(|v| v.describe(conn.device.rules.erased))
            .unwrap_or_else(|| "missing".into());
        return Err(anyhow!(stm32boot::Error::InvalidRequest(format!(
            "bank {target_bank} {what}: after the swap the chip would have nothing to run; \
             write an image there first (`stm32boot write --bank {target_bank} FILE`) or pass \
             --force"
        ))));
    }
    let pairs = vec![(field.clone(), new_value.to_string())];
    let (mut text, json) = super::ob::apply_changes(&mut conn, &pairs, dry_run, false, bars)?;
    finish(conn)?;
    if !dry_run {
        text.push_str(&format!(
            "\nafter the next reset with BOOT0 low the chip runs bank {target_bank}"
        ));
    }
    Ok(Outcome {
        text,
        json: json!({ "field": field, "value": new_value, "boots": target_bank, "result": json }),
    })
}
