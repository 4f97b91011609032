//! `stm32boot ob`: option bytes by name. `show` decodes them per family; `set NAME=VALUE ...`
//! checks names and values before the port opens where it can, reads the option bytes, changes
//! only the named fields, writes a block with correct complements, waits for the reset,
//! re-syncs and confirms every field.

use super::args::ConnectArgs;
use super::output::Bars;
use super::run::{finish, open, Outcome};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use stm32boot::device::options::{ObImage, ObLayout};
use stm32boot::device::Device;
use stm32boot::ops::option_bytes::{
    self, page_runs, write_protected_pages, Confirmation, ObPlan, SetOptions,
};
use stm32boot::ops::{Connection, Note, Progress};

/// Options of `stm32boot ob`.
#[derive(Args, Debug, Clone)]
pub struct ObArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: ObCmd,
}

/// `ob` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ObCmd {
    /// Read the option bytes and show every field decoded for the part's family.
    Show {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Also show the raw registers, their complements and the window bytes.
        #[arg(long)]
        raw: bool,
    },
    /// Change named fields (e.g. `ob set BFB2=1 nRST_STOP=0`); the chip resets and is re-synced,
    /// and every field is read back.
    Set {
        #[command(flatten)]
        conn: ConnectArgs,
        /// NAME=VALUE pairs: numbers (12, 0x0C, 0b1100), on/off for one-bit fields, RDP=0|1|2.
        #[arg(required = true, value_name = "NAME=VALUE")]
        assignments: Vec<String>,
        /// Print the fields before and after and the bytes to write, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow settings that can never be undone (RDP level 2, BOOT_LOCK).
        #[arg(long)]
        allow_permanent_lock: bool,
    },
}

/// Run `stm32boot ob`.
pub fn run(args: &ObArgs, bars: &mut Bars) -> Result<Outcome> {
    match &args.cmd {
        ObCmd::Show { conn, raw } => show(conn, *raw, bars),
        ObCmd::Set {
            conn,
            assignments,
            dry_run,
            allow_permanent_lock,
        } => set(conn, assignments, *dry_run, *allow_permanent_lock, bars),
    }
}

fn invalid(msg: String) -> anyhow::Error {
    anyhow!(stm32boot::Error::InvalidRequest(msg))
}

fn parse_assignments(list: &[String]) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| invalid(format!("'{a}' is not NAME=VALUE (e.g. BFB2=1)")))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn raw_json(image: &ObImage) -> Value {
    json!(image
        .windows
        .iter()
        .map(|(a, b)| json!({ "address": a, "bytes": hex(b) }))
        .collect::<Vec<_>>())
}

fn raw_text(image: &ObImage) -> String {
    let mut t = String::new();
    for (base, bytes) in &image.windows {
        for (i, chunk) in bytes.chunks(16).enumerate() {
            t.push_str(&format!(
                "  0x{:08X}  {}\n",
                base + 16 * i as u32,
                hex(chunk)
            ));
        }
    }
    t
}

/// The decoded fields, write protection and notes, as text and JSON.
pub(super) fn describe(
    device: &Device,
    layout: &ObLayout,
    image: &ObImage,
    raw: bool,
) -> (String, Value) {
    let fields = layout.decode(image, device.rules.rdp_unprotected);
    let width = fields.iter().map(|f| f.name.len()).max().unwrap_or(8);
    let mut text = format!(
        "option bytes of {} (layout {}):\n",
        device.name, layout.name
    );
    for f in &fields {
        let value = if f.value > 9 {
            format!("0x{:X}", f.value)
        } else {
            f.value.to_string()
        };
        text.push_str(&format!(
            "  {:width$}  {:>6}  {}  ({})\n",
            f.name, value, f.meaning, f.doc
        ));
    }
    let protected = write_protected_pages(device, layout, image);
    let wrp = if protected.is_empty() {
        "none".to_string()
    } else {
        format!("page(s) {}", page_runs(&protected))
    };
    text.push_str(&format!("write protection: {wrp}\n"));
    let registers = layout.registers_in(image);
    let bad: Vec<&str> = registers
        .iter()
        .filter(|r| r.complement_ok == Some(false))
        .map(|r| r.name.as_str())
        .collect();
    if !bad.is_empty() {
        text.push_str(&format!(
            "warning: value and complement disagree in {}: the option loader {}\n",
            bad.join(", "),
            match layout.mismatch {
                stm32boot::device::options::Mismatch::Ones => "loads them as all ones",
                stm32boot::device::options::Mismatch::Lock =>
                    "treats this as a secure configuration that may lock the chip",
            }
        ));
    }
    for n in &layout.notes {
        text.push_str(&format!("note: {n}\n"));
    }
    if raw {
        text.push_str("registers:\n");
        for r in &registers {
            let comp = match (r.complement, r.complement_ok) {
                (Some(c), Some(true)) => format!("  complement 0x{c:X} ok"),
                (Some(c), _) => format!("  complement 0x{c:X} MISMATCH"),
                _ => String::new(),
            };
            text.push_str(&format!(
                "  {:12} 0x{:08X} = 0x{:X}{comp}\n",
                r.name, r.address, r.value
            ));
        }
        text.push_str("bytes:\n");
        text.push_str(&raw_text(image));
    }
    let json = json!({
        "device": device.name,
        "layout": layout.name,
        "fields": fields,
        "write_protected_pages": protected,
        "registers": registers,
        "complement_mismatch": bad,
        "notes": layout.notes,
        "raw": raw_json(image),
    });
    (text.trim_end().to_string(), json)
}

fn show(args: &ConnectArgs, raw: bool, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(args, bars)?;
    let image = option_bytes::read(&mut conn)?;
    let device = conn.device.clone();
    finish(conn)?;
    match &device.ob_layout {
        Some(layout) => {
            let (text, json) = describe(&device, layout, &image, raw);
            Ok(Outcome { text, json })
        }
        None => {
            let why = option_bytes::layout(&device)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            Ok(Outcome {
                text: format!(
                    "{why}\nraw option bytes of {}:\n{}",
                    device.name,
                    raw_text(&image).trim_end()
                ),
                json: json!({ "device": device.name, "decoded": false, "raw": raw_json(&image) }),
            })
        }
    }
}

pub(super) fn plan_text(plan: &ObPlan) -> String {
    let mut t = String::new();
    for c in &plan.changes {
        t.push_str(&format!(
            "  {}: {} ({}) -> {} ({})\n",
            c.name, c.before, c.before_meaning, c.after, c.after_meaning
        ));
    }
    if plan.changes.is_empty() {
        t.push_str("  nothing changes: every field already has that value\n");
    }
    for &(i, start, len) in &plan.writes {
        t.push_str(&format!(
            "  write {len} bytes at 0x{start:08X}: {}\n",
            hex(&plan.after.windows[i].1[..len as usize])
        ));
    }
    t
}

/// Plan and apply `NAME=VALUE` changes on an open connection; shared with `bank swap`.
pub(super) fn apply_changes(
    conn: &mut Connection,
    assignments: &[(String, String)],
    dry_run: bool,
    allow_permanent_lock: bool,
    bars: &mut Bars,
) -> Result<(String, Value)> {
    let before = option_bytes::read(conn)?;
    let plan = option_bytes::plan_set(
        &conn.device,
        &before,
        assignments,
        SetOptions {
            allow_permanent_lock,
        },
    )?;
    for w in &plan.warnings {
        bars.note(Note::Warning(w.clone()));
    }
    let mut text = format!("{}:\n{}", conn.device.name, plan_text(&plan));
    let changes = json!(plan.changes);
    if dry_run {
        text.push_str("(dry run: nothing was changed)");
        return Ok((
            text,
            json!({ "dry_run": true, "changes": changes, "writes": plan.writes }),
        ));
    }
    let report = option_bytes::apply(conn, &plan, bars)?;
    text.push_str(match report.confirmed {
        Confirmation::ReadBack => {
            "the chip reset, was re-synced, and every field reads back as written"
        }
        Confirmation::ReadProtected => {
            "the chip reset and was re-synced; read protection is active, as asked (reads are refused)"
        }
        Confirmation::NotReachable => {
            "written; the chip reset into its application (the boot bits select flash), so it was not re-synced"
        }
        Confirmation::Unchanged => "nothing written",
    });
    Ok((
        text,
        json!({ "changes": changes, "windows_written": report.windows_written, "confirmed": report.confirmed }),
    ))
}

fn set(
    args: &ConnectArgs,
    assignments: &[String],
    dry_run: bool,
    allow_permanent_lock: bool,
    bars: &mut Bars,
) -> Result<Outcome> {
    let pairs = parse_assignments(assignments)?;
    let mut conn = open(args, bars)?;
    let (text, json) = apply_changes(&mut conn, &pairs, dry_run, allow_permanent_lock, bars)?;
    finish(conn)?;
    Ok(Outcome { text, json })
}
