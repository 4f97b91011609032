//! `stm32boot otp`: the one-time-programmable area. `show` reads it; `write` and `lock` read it
//! too, check the request against it, and send nothing unless every check passes and
//! `--confirm-otp` is given (`--dry-run` prints the plan instead). Data files and `--hex` are
//! checked before the port opens.

use super::args::{parse_u32, ConnectArgs};
use super::output::Bars;
use super::run::{finish, open, Outcome};
use anyhow::{anyhow, Result};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use stm32boot::ops::otp::{
    self, Fill, LockState, OtpBlock, OtpLayout, OtpLockPlan, OtpScheme, OtpState,
    OtpTarget as Target, OtpWritePlan,
};
use stm32boot::ops::Progress;

/// Options of `stm32boot otp`.
#[derive(Args, Debug, Clone)]
pub struct OtpArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: OtpCmd,
}

/// `otp` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum OtpCmd {
    /// Show the OTP area: blocks (or double words), what each holds, lock bytes, free space.
    Show {
        #[command(flatten)]
        conn: ConnectArgs,
        /// List every block (or double word) with its bytes, instead of runs of alike ones.
        #[arg(long)]
        blocks: bool,
    },
    /// Write bytes once into blank OTP. Checked against the chip's OTP first (range,
    /// alignment, blank bytes, lock) and read back after; needs --confirm-otp.
    Write(OtpWriteArgs),
    /// Lock a block for ever (F2/F4/F7 lock bytes); needs --confirm-otp.
    Lock {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Block number (0-15).
        #[arg(value_parser = parse_u32)]
        block: u32,
        /// Confirm that the lock cannot be undone.
        #[arg(long)]
        confirm_otp: bool,
        /// Print what would be written and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Options of `stm32boot otp write`.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("target").args(["block", "address"])))]
#[command(group(ArgGroup::new("source").required(true).args(["file", "hex"])))]
pub struct OtpWriteArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Data file: .hex, .srec or .elf (which carry their address), or raw bytes (.bin or any
    /// other name) written at --block or --address.
    pub file: Option<PathBuf>,
    /// The bytes as hex digits instead of a file, e.g. "DE AD BE EF".
    #[arg(long, value_name = "BYTES")]
    pub hex: Option<String>,
    /// Write into this block (F2/F4/F7, 0-15; the data must stay inside it), or from this
    /// double word on (L4/G0/G4/WB/WL, 0-127).
    #[arg(long, value_parser = parse_u32)]
    pub block: Option<u32>,
    /// Offset into --block, in bytes.
    #[arg(long, requires = "block", value_parser = parse_u32)]
    pub offset: Option<u32>,
    /// Write at this address.
    #[arg(long, value_parser = parse_u32)]
    pub address: Option<u32>,
    /// Confirm that the write cannot be undone.
    #[arg(long)]
    pub confirm_otp: bool,
    /// Print the plan (addresses, bytes, blocks and their state) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Run an `otp` subcommand.
pub fn run(args: &OtpArgs, bars: &mut Bars) -> Result<Outcome> {
    match &args.cmd {
        OtpCmd::Show { conn, blocks } => show(conn, *blocks, bars),
        OtpCmd::Write(w) => write(w, bars),
        OtpCmd::Lock {
            conn,
            block,
            confirm_otp,
            dry_run,
        } => lock(conn, *block as usize, *confirm_otp, *dry_run, bars),
    }
}

fn invalid(msg: String) -> anyhow::Error {
    anyhow!(stm32boot::Error::InvalidRequest(msg))
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn addr(a: u32) -> String {
    format!("0x{a:08X}")
}

/// The bytes of `data` in rows of 16, each indented by `indent` and led by its address.
fn dump(start: u32, data: &[u8], indent: &str) -> Vec<String> {
    data.chunks(16)
        .enumerate()
        .map(|(i, row)| format!("{indent}{}  {}", addr(start + 16 * i as u32), hex(row)))
        .collect()
}

fn fill_code(fill: Fill) -> &'static str {
    match fill {
        Fill::Blank => "blank",
        Fill::PartlyUsed => "partly-used",
        Fill::Used => "used",
    }
}

fn block_json(state: &OtpState, b: &OtpBlock) -> Value {
    json!({
        "index": b.index,
        "address": addr(b.address),
        "size": b.size,
        "state": fill_code(b.fill),
        "used_bytes": b.used_bytes,
        "lock": b.lock.code(),
        "locked": b.lock == LockState::Locked,
        "lock_byte": state.layout.lock_address(b.index).map(|_| {
            state.locks.get(b.index).map(|v| format!("{v:02X}"))
        }),
        "writable": b.writable(),
        "data": hex(state.bytes(b.address, b.size as usize)).replace(' ', ""),
    })
}

fn layout_json(layout: &OtpLayout) -> Value {
    json!({
        "scheme": match layout.scheme {
            OtpScheme::LockBytes => "lock-bytes",
            OtpScheme::WriteOnce => "write-once",
        },
        "unit": layout.unit_name(),
        "unit_size": layout.unit_size,
        "count": layout.count,
        "address": addr(layout.data.start),
        "end": addr(layout.data.end),
        "size": layout.data.len(),
        "address_align": layout.address_align,
        "length_align": layout.length_align,
    })
}

fn state_json(state: &OtpState) -> Value {
    let layout = &state.layout;
    let (free_blocks, free_bytes) = state.free();
    let mut v = layout_json(layout);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "lock_bytes".into(),
            match layout.locks {
                Some(l) => json!({
                    "address": addr(l.start),
                    "end": addr(l.end),
                    "values": state.locks.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>(),
                }),
                None => Value::Null,
            },
        );
        obj.insert(
            "blocks".into(),
            Value::Array(
                state
                    .blocks()
                    .iter()
                    .map(|b| block_json(state, b))
                    .collect(),
            ),
        );
        obj.insert(
            "ranges".into(),
            Value::Array(
                state
                    .runs()
                    .iter()
                    .map(|r| {
                        json!({
                            "first": r.first, "last": r.last, "address": addr(r.block.address),
                            "state": fill_code(r.block.fill), "lock": r.block.lock.code(),
                        })
                    })
                    .collect(),
            ),
        );
        obj.insert(
            "free".into(),
            json!({ "blocks": free_blocks, "bytes": free_bytes }),
        );
    }
    v
}

fn state_text(state: &OtpState, every: bool) -> String {
    let layout = &state.layout;
    let unit = layout.unit_name();
    let mut lines = vec![format!("OTP of the {}: {}", layout.part, layout.describe())];
    let head = if layout.scheme == OtpScheme::LockBytes {
        "block"
    } else {
        "index"
    };
    lines.push(format!("  {head:<7}  {:<10}  state", "address"));
    if every {
        for b in state.blocks() {
            lines.push(format!(
                "  {:<7}  {}  {}",
                b.index,
                addr(b.address),
                b.describe()
            ));
            if b.fill != Fill::Blank {
                lines.extend(dump(
                    b.address,
                    state.bytes(b.address, b.size as usize),
                    "           ",
                ));
            }
        }
    } else {
        for r in state.runs() {
            let which = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            lines.push(format!(
                "  {which:<7}  {}  {}",
                addr(r.block.address),
                r.block.describe()
            ));
        }
    }
    if let Some(l) = layout.locks {
        lines.push(format!(
            "lock bytes at {}: {}",
            addr(l.start),
            hex(&state.locks)
        ));
    }
    let (free_blocks, free_bytes) = state.free();
    let mut free = format!(
        "free: {free_blocks} blank {unit}{} ({} bytes)",
        if free_blocks == 1 { "" } else { "s" },
        u64::from(layout.unit_size) * free_blocks as u64
    );
    let partial = free_bytes - u64::from(layout.unit_size) * free_blocks as u64;
    if partial > 0 {
        free.push_str(&format!(
            ", and {partial} blank bytes in partly used unlocked blocks"
        ));
    }
    lines.push(free);
    if !every {
        lines.push("(--blocks lists every one with its bytes)".into());
    }
    lines.join("\n")
}

fn show(conn_args: &ConnectArgs, every: bool, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(conn_args, bars)?;
    let state = otp::read_state(&mut conn, bars)?;
    let device = conn.device.clone();
    finish(conn)?;
    Ok(Outcome {
        text: state_text(&state, every),
        json: json!({ "part": device.name, "family": device.family, "otp": state_json(&state) }),
    })
}

/// Load the data and where it goes, before the port opens.
fn load_data(w: &OtpWriteArgs) -> Result<(Vec<u8>, Option<Target>, String)> {
    let given = match (w.block, w.address) {
        (Some(b), _) => Some(Target::Block(b as usize, w.offset.unwrap_or(0))),
        (None, Some(a)) => Some(Target::Address(a)),
        (None, None) => None,
    };
    let d = otp::load_data(w.hex.as_deref(), w.file.as_deref(), given)?;
    Ok((d.data, d.target, d.from))
}

pub(super) fn plan_text(plan: &OtpWritePlan) -> String {
    let unit = plan.layout.unit_name();
    let mut lines = vec![format!(
        "{} bytes at {}-{} of the {} OTP:",
        plan.data.len(),
        addr(plan.address),
        addr((plan.end() - 1) as u32),
        plan.layout.part
    )];
    lines.extend(dump(plan.address, &plan.data, "  "));
    for b in &plan.before {
        lines.push(format!(
            "{unit} {} at {} before: {}",
            b.index,
            addr(b.address),
            b.describe()
        ));
    }
    lines.join("\n")
}

fn plan_json(plan: &OtpWritePlan, state: &OtpState) -> Value {
    json!({
        "address": addr(plan.address),
        "end": addr((plan.end() - 1) as u32),
        "length": plan.data.len(),
        "data": hex(&plan.data).replace(' ', ""),
        "unit": plan.layout.unit_name(),
        "blocks": plan.before.iter().map(|b| b.index).collect::<Vec<_>>(),
        "before": plan.before.iter().map(|b| block_json(state, b)).collect::<Vec<_>>(),
    })
}

fn write(w: &OtpWriteArgs, bars: &mut Bars) -> Result<Outcome> {
    let (data, target, from) = load_data(w)?;
    let mut conn = open(&w.conn, bars)?;
    let state = otp::read_state(&mut conn, bars)?;
    let address = match target {
        Some(Target::Address(a)) => a,
        Some(Target::Block(b, off)) => state.layout.address_in_block(b, off, data.len())?,
        None => {
            return Err(invalid(
                "say where the data goes: --block N [--offset O] or --address A".into(),
            ))
        }
    };
    let plan = otp::plan_write(&conn.device, &state, address, &data)?;
    for n in &plan.notes {
        bars.note(n.clone());
    }
    let text = plan_text(&plan);
    if w.dry_run {
        finish(conn)?;
        return Ok(Outcome {
            text: format!("plan, data from {from}:\n{text}\n(dry run: nothing was written)"),
            json: json!({ "dry_run": true, "source": from, "plan": plan_json(&plan, &state) }),
        });
    }
    if !w.confirm_otp {
        finish(conn)?;
        return Err(invalid(format!(
            "OTP cannot be erased: a write can never be undone. This would write {text}\nCheck \
             it, then add --confirm-otp to write (or --dry-run to only print the plan)"
        )));
    }
    let report = otp::write(&mut conn, &plan, bars)?;
    finish(conn)?;
    let unit = plan.layout.unit_name();
    let blocks: Vec<String> = report.blocks.iter().map(|b| b.to_string()).collect();
    Ok(Outcome {
        text: format!(
            "wrote {} bytes at {} ({unit}{} {}) of the {} OTP from {from}, verified by reading \
             back",
            report.length,
            addr(report.address),
            if blocks.len() == 1 { "" } else { "s" },
            blocks.join(", "),
            plan.layout.part
        ),
        json: json!({
            "dry_run": false, "source": from, "plan": plan_json(&plan, &state),
            "report": {
                "address": addr(report.address), "length": report.length,
                "blocks": report.blocks, "commands": report.commands, "verified": report.verified,
            },
        }),
    })
}

pub(super) fn lock_plan_text(plan: &OtpLockPlan) -> String {
    format!(
        "lock block {} at {} of the {} OTP ({} now): write 00 to its lock byte {} (the {} bytes \
         {} at {})",
        plan.block.index,
        addr(plan.block.address),
        plan.layout.part,
        plan.block.describe(),
        addr(plan.lock_address),
        plan.bytes.len(),
        hex(&plan.bytes),
        addr(plan.write_address)
    )
}

fn lock_json(plan: &OtpLockPlan, state: &OtpState) -> Value {
    json!({
        "block": plan.block.index,
        "lock_address": addr(plan.lock_address),
        "write_address": addr(plan.write_address),
        "bytes": hex(&plan.bytes).replace(' ', ""),
        "before": block_json(state, &plan.block),
    })
}

fn lock(
    conn_args: &ConnectArgs,
    block: usize,
    confirm: bool,
    dry_run: bool,
    bars: &mut Bars,
) -> Result<Outcome> {
    let mut conn = open(conn_args, bars)?;
    let state = otp::read_state(&mut conn, bars)?;
    let plan = otp::plan_lock(&conn.device, &state, block)?;
    if plan.already_locked {
        finish(conn)?;
        return Ok(Outcome {
            text: format!(
                "block {block} of the {} OTP is already locked (lock byte {} reads 00): nothing \
                 was written",
                plan.layout.part,
                addr(plan.lock_address)
            ),
            json: json!({
                "dry_run": dry_run, "already_locked": true, "written": false,
                "plan": lock_json(&plan, &state),
            }),
        });
    }
    for n in &plan.notes {
        bars.note(n.clone());
    }
    let text = lock_plan_text(&plan);
    if dry_run {
        finish(conn)?;
        return Ok(Outcome {
            text: format!("plan: {text}\n(dry run: nothing was written)"),
            json: json!({
                "dry_run": true, "already_locked": false, "written": false,
                "plan": lock_json(&plan, &state),
            }),
        });
    }
    if !confirm {
        finish(conn)?;
        return Err(invalid(format!(
            "a lock can never be undone: block {block} could never be written again. This would \
             {text}\nAdd --confirm-otp to lock it (or --dry-run to only print the plan)"
        )));
    }
    let report = otp::lock_block(&mut conn, &plan, bars)?;
    finish(conn)?;
    Ok(Outcome {
        text: format!(
            "locked block {block} of the {} OTP: lock byte {} reads 00",
            plan.layout.part,
            addr(report.lock_address)
        ),
        json: json!({
            "dry_run": false, "already_locked": false, "written": report.written,
            "verified": report.verified, "plan": lock_json(&plan, &state),
        }),
    })
}
