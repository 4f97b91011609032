//! `stm32boot coeffs`: coefficient blocks (pack offline, C header, write to and read from the
//! chip). Layouts, values and tables are read and checked before the port opens, so bad input
//! sends nothing to the chip (exit code 2).

use super::args::{parse_u32, ConnectArgs};
use super::output::{human_size, Bars};
use super::run::{finish, open, Outcome};
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use stm32boot::ops::coeffs::{
    self, block, header, slot_name, Layout, ReadReport, SlotState, Table, TableKey, Values,
};
use stm32boot::ops::flash::{self, WriteOptions};
use stm32boot::ops::{Note, Progress};

/// Options of `stm32boot coeffs`.
#[derive(Args, Debug, Clone)]
pub struct CoeffsArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: CoeffsCmd,
}

/// Which slot of an A/B layout.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotArg {
    /// Slot A (the layout's `address`).
    A,
    /// Slot B (`address_b`, or `address + slot_size`).
    B,
}

/// `coeffs` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum CoeffsCmd {
    /// Pack a block offline: .hex writes Intel HEX at the slot's address, anything else the raw
    /// block.
    Pack {
        /// Layout file (TOML).
        layout: PathBuf,
        /// Values: .toml, .json, or .csv (a header of field names and one row).
        values: PathBuf,
        /// Output file (.bin or .hex).
        #[arg(long, short)]
        output: PathBuf,
        /// Sequence number for the header.
        #[arg(long, default_value_t = 1, value_parser = parse_u32)]
        sequence: u32,
        /// Slot whose address the .hex output uses (A/B layouts).
        #[arg(long, value_enum, default_value_t = SlotArg::A)]
        slot: SlotArg,
    },
    /// Generate a C header for the firmware: the struct, address(es), size, magic, version and
    /// CRC parameters, with a CRC check and the A/B choice as inline functions.
    Header {
        /// Layout file (TOML).
        layout: PathBuf,
        /// Write the header to this file instead of printing it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a block to the chip (A/B layouts: to the inactive slot, with the next sequence
    /// number), keeping the rest of its page.
    Write(CoeffsWriteArgs),
    /// Read the block from the chip and print its values (a table, or --json).
    Read {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Layout file (TOML).
        layout: PathBuf,
    },
}

/// Options of `stm32boot coeffs write`.
#[derive(Args, Debug, Clone)]
pub struct CoeffsWriteArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Layout file (TOML).
    pub layout: PathBuf,
    /// Values: .toml, .json, or .csv (a header of field names and one row).
    #[arg(required_unless_present = "table", conflicts_with = "table")]
    pub values: Option<PathBuf>,
    /// A CSV table with one row per unit; --key picks the row for this chip.
    #[arg(long, value_name = "CSV", requires = "key")]
    pub table: Option<PathBuf>,
    /// `uid`: the row whose uid column holds the chip's unique ID (24 hex digits, as `info`
    /// prints it); any other column name: the row whose column holds --serial.
    #[arg(long, value_name = "uid|COLUMN", requires = "table")]
    pub key: Option<String>,
    /// The value to look up in the --key column (a serial number).
    #[arg(long, value_name = "VALUE", requires = "key")]
    pub serial: Option<String>,
    /// Say which slot and sequence would be written, and which pages, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Journal directory for pages saved before an erase (default: the user's state directory,
    /// or $STM32BOOT_STATE_DIR/journal).
    #[arg(long, value_name = "DIR", env = "STM32BOOT_JOURNAL")]
    pub journal: Option<PathBuf>,
    /// Do not journal pages before erasing them.
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,
}

/// Run a `coeffs` subcommand.
pub fn run(args: &CoeffsArgs, bars: &mut Bars) -> Result<Outcome> {
    match &args.cmd {
        CoeffsCmd::Pack {
            layout,
            values,
            output,
            sequence,
            slot,
        } => pack(layout, values, output, *sequence, *slot),
        CoeffsCmd::Header { layout, output } => c_header(layout, output.as_deref()),
        CoeffsCmd::Write(w) => write(w, bars),
        CoeffsCmd::Read { conn, layout } => read(conn, layout, bars),
    }
}

fn invalid(msg: String) -> anyhow::Error {
    anyhow!(stm32boot::Error::InvalidRequest(msg))
}

fn pack(
    layout_path: &Path,
    values_path: &Path,
    output: &Path,
    sequence: u32,
    slot: SlotArg,
) -> Result<Outcome> {
    let layout = Layout::load(layout_path)?;
    let values = Values::load(&layout, values_path)?;
    let index = match slot {
        SlotArg::A => 0,
        SlotArg::B if layout.is_ab() => 1,
        SlotArg::B => {
            return Err(invalid(format!(
                "layout {} has one slot: there is no slot B",
                layout.origin
            )))
        }
    };
    let address = layout.slots[index];
    let data = block::pack(&layout, &values, sequence)?;
    let crc = crc_of(&layout, &data);
    super::run::write_data_file(output, address, &data)?;
    let hex = super::run::is_hex(output);
    Ok(Outcome {
        text: format!(
            "packed {} (layout version {}, {} bytes, sequence {sequence}, CRC 0x{crc:08X}) for \
             slot {} at 0x{address:08X} into {}",
            layout.name,
            layout.version,
            data.len(),
            slot_name(index),
            output.display()
        ),
        json: json!({
            "layout": layout.name, "version": layout.version, "bytes": data.len(),
            "sequence": sequence, "crc": format!("0x{crc:08X}"), "slot": slot_name(index),
            "address": format!("0x{address:08X}"), "file": output,
            "format": if hex { "ihex" } else { "bin" },
        }),
    })
}

fn crc_of(layout: &Layout, data: &[u8]) -> u32 {
    let at = layout.crc_offset as usize;
    data.get(at..at + 4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .unwrap_or(0)
}

fn c_header(layout_path: &Path, output: Option<&Path>) -> Result<Outcome> {
    let layout = Layout::load(layout_path)?;
    let text = header::c_header(&layout);
    match output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            Ok(Outcome {
                text: format!(
                    "wrote the C header for {} ({}_t, {} bytes) to {}",
                    layout.name,
                    layout.name,
                    layout.size(),
                    path.display()
                ),
                json: json!({ "layout": layout.name, "file": path, "size": layout.size() }),
            })
        }
        None => Ok(Outcome {
            text: text.trim_end().to_string(),
            json: json!({ "layout": layout.name, "header": text }),
        }),
    }
}

/// Where the values of a write come from, all checked before the port opens.
enum Source {
    File(PathBuf, Values),
    Uid(Table),
    Row(Table, usize),
}

fn load_source(w: &CoeffsWriteArgs, layout: &Layout) -> Result<Source> {
    if let Some(path) = &w.values {
        return Ok(Source::File(path.clone(), Values::load(layout, path)?));
    }
    let (Some(path), Some(key)) = (&w.table, &w.key) else {
        return Err(invalid(
            "give a values file, or --table CSV with --key uid|COLUMN".into(),
        ));
    };
    let key = TableKey::parse(key);
    match (&key, &w.serial) {
        (TableKey::Uid, Some(_)) => {
            return Err(invalid(
                "--key uid takes the chip's unique ID; --serial is for --key COLUMN".into(),
            ))
        }
        (TableKey::Column(c), None) => {
            return Err(invalid(format!(
                "--key {c} needs --serial VALUE: the value to look up in column '{c}'"
            )))
        }
        _ => {}
    }
    let table = Table::load(layout, path, key)?;
    match &w.serial {
        Some(serial) => {
            let row = table.find(serial)?;
            let index = table.rows.iter().position(|r| r == row).unwrap_or(0);
            Ok(Source::Row(table, index))
        }
        None => Ok(Source::Uid(table)),
    }
}

fn write(w: &CoeffsWriteArgs, bars: &mut Bars) -> Result<Outcome> {
    let layout = Layout::load(&w.layout)?;
    let source = load_source(w, &layout)?;
    let mut conn = open(&w.conn, bars)?;
    let (values, from) = match &source {
        Source::File(path, values) => (values.clone(), path.display().to_string()),
        Source::Row(table, i) => {
            let row = &table.rows[*i];
            (
                row.values.clone(),
                format!(
                    "line {} of {} ({} {})",
                    row.line,
                    table.origin,
                    table.key.column(),
                    row.key
                ),
            )
        }
        Source::Uid(table) => {
            let uid = conn.unique_id()?.ok_or_else(|| {
                invalid(format!(
                    "the unique ID of this {} cannot be read (the part has none, or read \
                     protection hides it): use --key COLUMN --serial VALUE",
                    conn.device.name
                ))
            })?;
            let row = table.find_uid(&uid)?;
            (
                row.values.clone(),
                format!("line {} of {} (uid {})", row.line, table.origin, row.key),
            )
        }
    };
    let mut options = WriteOptions::for_connection(&conn);
    options.journal = if w.no_journal {
        None
    } else {
        w.journal.clone().or(options.journal)
    };
    if w.dry_run {
        let plan = coeffs::plan_write(&mut conn, &layout, &values, bars)?;
        if let Some(dir) = &options.journal {
            let journal = flash::open_journal(&mut conn, dir)?;
            if !journal.pending().is_empty() {
                bars.note(Note::Warning(format!(
                    "an earlier write to this chip did not finish ({} page(s) in {}): a real run \
                     finishes it first, which may change the slot chosen",
                    journal.pending().len(),
                    journal.path().display()
                )));
            }
        }
        let device = conn.device.clone();
        finish(conn)?;
        let mut text = format!(
            "plan for {} on the {}: write sequence {} to slot {} at 0x{:08X} ({} bytes, CRC \
             0x{:08X}), values from {from}\n{}",
            layout.name,
            device.name,
            plan.sequence,
            slot_name(plan.slot),
            plan.address,
            plan.block.len(),
            plan.crc,
            slots_text(&plan.before)
        );
        for p in &plan.flash.partial_pages {
            text.push_str(&format!(
                "\npage {} (0x{:08X}, {}) is only partly covered: it is read first, journalled, \
                 erased and written back whole with the block laid over it",
                p.index,
                p.address,
                human_size(u64::from(p.size))
            ));
        }
        text.push_str("\n(dry run: nothing was changed)");
        return Ok(Outcome {
            text,
            json: json!({
                "dry_run": true, "layout": layout.name, "slot": slot_name(plan.slot),
                "address": format!("0x{:08X}", plan.address), "sequence": plan.sequence,
                "crc": format!("0x{:08X}", plan.crc), "bytes": plan.block.len(), "source": from,
                "slots": slots_json(&plan.before),
                "pages": plan.flash.partial_pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            }),
        });
    }
    let done = coeffs::write_block(&mut conn, &layout, &values, &options, bars)?;
    finish(conn)?;
    let plan = &done.plan;
    let verified = match done.report.verified {
        Some(flash::VerifyMethod::Crc) => ", verified by CRC (Get Checksum)",
        Some(flash::VerifyMethod::ReadBack) => ", verified by reading back",
        None => "",
    };
    let mut text = format!(
        "wrote {} (layout version {}, {} bytes, sequence {}, CRC 0x{:08X}) to slot {} at \
         0x{:08X}, values from {from}\n{} page(s) erased{verified}",
        layout.name,
        layout.version,
        plan.block.len(),
        plan.sequence,
        plan.crc,
        slot_name(plan.slot),
        plan.address,
        done.report.pages_erased,
    );
    if layout.is_ab() {
        let other = 1 - plan.slot;
        text.push_str(&format!(
            "\nslot {} at 0x{:08X} left as it was: {}",
            slot_name(other),
            layout.slots[other],
            plan.before.slots[other].state.describe(plan.before.erased)
        ));
    }
    Ok(Outcome {
        text,
        json: json!({
            "layout": layout.name, "version": layout.version, "slot": slot_name(plan.slot),
            "address": format!("0x{:08X}", plan.address), "sequence": plan.sequence,
            "crc": format!("0x{:08X}", plan.crc), "bytes": plan.block.len(), "source": from,
            "before": slots_json(&plan.before), "report": done.report,
            "finished_pages": done.finished_pages,
        }),
    })
}

fn slots_text(report: &ReadReport) -> String {
    report.slot_lines().join("\n")
}

fn slots_json(report: &ReadReport) -> Value {
    Value::Array(
        report
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = json!({
                    "slot": slot_name(i),
                    "address": format!("0x{:08X}", s.address),
                    "state": s.state.code(),
                    "active": report.active == Some(i),
                    "detail": s.state.describe(report.erased),
                });
                let seq = match &s.state {
                    SlotState::Valid { sequence, .. }
                    | SlotState::CrcMismatch { sequence, .. }
                    | SlotState::OtherLayout { sequence, .. } => Some(*sequence),
                    _ => None,
                };
                if let (Some(seq), Some(obj)) = (seq, v.as_object_mut()) {
                    obj.insert("sequence".into(), json!(seq));
                }
                v
            })
            .collect(),
    )
}

fn read(conn_args: &ConnectArgs, layout_path: &Path, bars: &mut Bars) -> Result<Outcome> {
    let layout = Layout::load(layout_path)?;
    let mut conn = open(conn_args, bars)?;
    let report = coeffs::read_slots(&mut conn, &layout, bars)?;
    finish(conn)?;
    let Some((index, sequence, values)) = report.active_block() else {
        return Err(anyhow!(stm32boot::Error::Verify {
            address: layout.slots[0],
            detail: report.why_none(&layout),
        }));
    };
    for (i, s) in report.slots.iter().enumerate() {
        if i != index
            && matches!(
                s.state,
                SlotState::CrcMismatch { .. } | SlotState::OtherLayout { .. }
            )
        {
            bars.note(Note::Warning(format!(
                "slot {} at 0x{:08X}: {}; the next write goes there",
                slot_name(i),
                s.address,
                s.state.describe(report.erased)
            )));
        }
    }
    let address = report.slots[index].address;
    let crc = match &report.slots[index].state {
        SlotState::Valid { crc, .. } => *crc,
        _ => 0,
    };
    let rows: Vec<(String, String, String)> = layout
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), f.type_label(), values.display(&layout, i)))
        .collect();
    let wn = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
    let wt = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    let mut text = format!(
        "{} (layout version {}) in slot {} at 0x{address:08X}: sequence {sequence}, CRC \
         0x{crc:08X} ok\n  {:<wn$}  {:<wt$}  value",
        layout.name,
        layout.version,
        slot_name(index),
        "field",
        "type"
    );
    for (n, t, v) in &rows {
        text.push_str(&format!("\n  {n:<wn$}  {t:<wt$}  {v}"));
    }
    for (i, s) in report.slots.iter().enumerate() {
        if i != index {
            text.push_str(&format!(
                "\nslot {} at 0x{:08X}: {}",
                slot_name(i),
                s.address,
                s.state.describe(report.erased)
            ));
        }
    }
    Ok(Outcome {
        text,
        json: json!({
            "layout": layout.name, "version": layout.version, "slot": slot_name(index),
            "address": format!("0x{address:08X}"), "sequence": sequence,
            "crc": format!("0x{crc:08X}"), "values": values.to_json(&layout),
            "slots": slots_json(&report),
        }),
    })
}
