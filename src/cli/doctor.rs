//! `stm32boot doctor`: a checklist for a link and a chip that will not cooperate (baud and
//! parity, echo, an application running instead of the bootloader, read and write protection,
//! bank mode, boot option bits).

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::{finish, open_link, Outcome};
use anyhow::{anyhow, Result};
use clap::Args;
use serde_json::json;
use stm32boot::ops::doctor::{self, Status};
use stm32boot::session::Timeouts;

/// Options of `stm32boot doctor`.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Baud rates to try when the chip does not answer at --baud (each with even and no parity).
    #[arg(long, value_delimiter = ',', default_values_t = [115_200u32, 57_600, 38_400, 19_200, 9_600])]
    bauds: Vec<u32>,
}

/// Run `stm32boot doctor`.
pub fn run(args: &DoctorArgs, bars: &mut Bars) -> Result<Outcome> {
    let (link, table) = open_link(&args.conn, bars)?;
    let link_name = link.describe();
    let report = doctor::run(
        link,
        &table,
        Timeouts::scaled(args.conn.timeout_scale),
        &args.bauds,
        bars,
    )?;
    let mut text = format!("link: {link_name}\n");
    for c in &report.checks {
        let tag = match c.status {
            Status::Ok => " ok ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Info => "info",
        };
        text.push_str(&format!("[{tag}] {}: {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            text.push_str(&format!("       fix: {fix}\n"));
        }
    }
    let json = json!({ "link": link_name, "checks": report.checks });
    match report.connection {
        Some(conn) => {
            finish(conn)?;
            Ok(Outcome {
                text: text.trim_end().to_string(),
                json,
            })
        }
        None => {
            // The bootloader could not be reached: say what was found, with the exit code of a
            // failed connection.
            Err(anyhow!(stm32boot::Error::NoSync {
                link: link_name,
                attempts: report.probes,
                stray_bytes: 0,
                hint: format!("doctor's findings:\n{}", text.trim_end()),
            }))
        }
    }
}
