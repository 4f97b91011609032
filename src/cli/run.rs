//! The commands: each connects (where it needs a chip), calls the library, and returns what to
//! show as text and as JSON.

use super::args::{
    AfterArg, Cli, Cmd, ConnectArgs, EraseWhat, ImageArgs, Level, OnOff, ParityArg, ProtectCmd,
    SimArgs, WriteArgs,
};
use super::output::{human_size, Bars};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stm32boot::device::{Device, DeviceTable, Page};
use stm32boot::image::Image;
use stm32boot::link::{LineSettings, Parity};
use stm32boot::ops::connect::{EnterCommand, Leave};
use stm32boot::ops::diagnose::{self, Failure, Operation};
use stm32boot::ops::flash::{self, EraseTarget, WriteOptions};
use stm32boot::ops::option_bytes;
use stm32boot::ops::plan::EraseStep;
use stm32boot::ops::{connect, ConnectOptions, Connection, Note, Progress};
use stm32boot::sequence::Sequence;
use stm32boot::session::{Session, Timeouts};
use stm32boot::sim::endpoint::{NetEndpoint, NetKind, RealClock};
use stm32boot::sim::{pty::PtyEndpoint, ControlLine, PinDrive, SimSpec, Wire};
use stm32boot::transport::trace::{TraceEvent, TraceLink};
use stm32boot::transport::{serial, PortSpec};

/// What a command produced.
pub struct Outcome {
    /// For people.
    pub text: String,
    /// For scripts.
    pub json: Value,
}

/// Run the parsed command line.
pub fn run(cli: &Cli, bars: &mut Bars) -> Result<Outcome> {
    bars.set_trace(cli.trace);
    match &cli.command {
        Cmd::Info { conn } => info(conn, bars),
        Cmd::Read {
            conn,
            address,
            length,
            output,
        } => read(conn, *address, *length, output, bars),
        Cmd::Write(args) => write(args, bars),
        Cmd::Recover {
            conn,
            journal,
            restore,
        } => recover(conn, journal.as_deref(), *restore, bars),
        Cmd::Erase {
            conn,
            what,
            expand,
            dry_run,
        } => erase(conn, what, *expand, *dry_run, bars),
        Cmd::Verify { conn, image } => verify(conn, image, bars),
        Cmd::Checksum {
            conn,
            address,
            length,
        } => checksum(conn, *address, *length, bars),
        Cmd::Go { conn, address } => go(conn, *address, bars),
        Cmd::Protect { conn, what } => protect(conn, what, bars),
        Cmd::Ports => ports(),
        Cmd::Devices { filter } => devices(filter.as_deref()),
        Cmd::Relay(a) => super::relay::run(a, bars),
        Cmd::Sim(args) => sim(args, bars),
        Cmd::SimModem(a) => super::sim_modem::run(a, bars),
        Cmd::Coeffs(a) => super::coeffs::run(a, bars),
        Cmd::Ob(a) => super::ob::run(a, bars),
        Cmd::Bank(a) => super::bank::run(a, bars),
        Cmd::Otp(a) => super::otp::run(a, bars),
        Cmd::Doctor(a) => super::doctor::run(a, bars),
        Cmd::Completions(a) => super::docs::completions(a),
        Cmd::Man(a) => super::docs::man(a),
        Cmd::Run(a) => super::job::run(a, cli.json, cli.quiet, bars),
    }
}

fn table(device_file: Option<&Path>) -> Result<DeviceTable> {
    let builtin = DeviceTable::builtin()?;
    Ok(match device_file {
        Some(path) => builtin.with_overrides(DeviceTable::from_file(path)?),
        None => builtin.clone(),
    })
}

pub(super) fn open(args: &ConnectArgs, bars: &mut Bars) -> Result<Connection> {
    // Options the command line and the environment left out come from stm32boot.toml.
    let applied = super::settings::apply(args)?;
    let args = &applied.args;
    // Everything the user typed is checked before the port opens.
    let no_sync = args
        .before
        .as_deref()
        .is_some_and(|b| b.trim().eq_ignore_ascii_case("no-sync"));
    let sequence = match &args.before {
        Some(text) if !no_sync => {
            Some(Sequence::parse(text, args.invert_reset, args.invert_boot0)?)
        }
        _ => None,
    };
    let leave = match args.after {
        AfterArg::None => Leave::Stay,
        AfterArg::Go => Leave::Go(None),
        AfterArg::Reset => match sequence.as_ref().and_then(|s| s.exit.clone()) {
            Some(steps) if !steps.is_empty() => Leave::Reset(steps),
            _ => bail!(stm32boot::Error::InvalidRequest(
                "--after reset needs to know the wiring: give --before a preset \
                 (dtr-reset-rts-boot0, rts-reset-dtr-boot0) or an stm32flash sequence with an \
                 exit part after ':' (e.g. '-rts,-dtr,dtr:rts,-dtr,dtr')"
                    .into()
            )),
        },
    };
    let entry = sequence.map(|s| s.entry).unwrap_or_default();
    let (link, table) = link_for(&applied, bars)?;
    let enter = args.enter.as_ref().map(|bytes| EnterCommand {
        bytes: bytes.0.clone(),
        wait: args.enter_wait,
        line: args.enter_parity.map(|p| LineSettings {
            baud: args.baud,
            parity: parity(p),
        }),
    });
    let mut session = Session::new(link, Timeouts::scaled(args.timeout_scale));
    session.set_pipelining(!args.no_pipeline);
    session.set_attempts(args.retries + 1);
    let options = ConnectOptions {
        flash_size: args.flash_size,
        entry,
        enter,
        no_sync,
        leave,
    };
    let mut conn = connect(session, &table, &options, bars)?;
    // Gang mode's summary names each board's chip (nothing is sent outside gang mode).
    super::gang::note_uid(&mut conn);
    // The part the configuration expects, before anything is written.
    super::settings::check_device(&conn.device, &applied)?;
    Ok(conn)
}

/// Open the port with the line settings and DTR/RTS levels asked for, without talking to the
/// bootloader; also returns the device table to use.
pub(super) fn open_link(
    args: &ConnectArgs,
    bars: &mut Bars,
) -> Result<(Box<dyn stm32boot::link::Link>, DeviceTable)> {
    link_for(&super::settings::apply(args)?, bars)
}

/// [`open_link`] with the configuration already applied.
fn link_for(
    applied: &super::settings::Applied,
    bars: &mut Bars,
) -> Result<(Box<dyn stm32boot::link::Link>, DeviceTable)> {
    let args = &applied.args;
    let spec = super::settings::port_spec(applied, bars)?;
    let table = table(args.device_file.as_deref())?;
    super::settings::check_known_device(&table, applied)?;
    if let PortSpec::Listen { addr, wait } = &spec {
        bars.note(Note::Info(format!(
            "waiting up to {} for a device to dial in on {addr}",
            humantime::format_duration(*wait)
        )));
    }
    let line = LineSettings {
        baud: args.baud,
        parity: parity(args.parity),
    };
    let mut link = spec.open(line, &table)?;
    if bars.trace() {
        // Wrapped once open: a relay's key handshake and a modem's AT dialogue are done by now
        // and never reach the trace.
        link = Box::new(TraceLink::new(link, Box::new(print_trace)));
    }
    if let Some(level) = args.dtr {
        if let Err(e) = link.set_dtr(level == Level::High) {
            bars.note(Note::Warning(format!("DTR left as it was: {e}")));
        }
    }
    if let Some(level) = args.rts {
        if let Err(e) = link.set_rts(level == Level::High) {
            bars.note(Note::Warning(format!("RTS left as it was: {e}")));
        }
    }
    Ok((link, table))
}

/// `--trace`: one event on stderr, bypassing the progress bars (which are off while tracing).
fn print_trace(event: &TraceEvent) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{event}");
}

fn parity(p: ParityArg) -> Parity {
    match p {
        ParityArg::Even => Parity::Even,
        ParityArg::None => Parity::None,
        ParityArg::Odd => Parity::Odd,
    }
}

fn load_image(args: &ImageArgs) -> Result<Image> {
    Image::load(&args.file, None, args.address).map_err(|e| anyhow!(stm32boot::Error::from(e)))
}

fn page_map_summary(device: &Device) -> String {
    let mut runs: Vec<(usize, u32)> = Vec::new();
    for p in &device.pages {
        match runs.last_mut() {
            Some((n, size)) if *size == p.size => *n += 1,
            _ => runs.push((1, p.size)),
        }
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|(n, s)| format!("{n} x {}", human_size(u64::from(*s))))
        .collect();
    format!(
        "{} ({} erase units, {} bank{})",
        runs.join(", "),
        device.pages.len(),
        device.banks,
        if device.banks > 1 { "s" } else { "" }
    )
}

/// After a successful job: leave the chip as `--after` says, and close the link.
pub(super) fn finish(conn: Connection) -> Result<()> {
    conn.finish()?;
    Ok(())
}

fn info(args: &ConnectArgs, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(args, bars)?;
    let uid = conn.unique_id()?;
    let d = conn.device.clone();
    let b = conn.bootloader.clone();
    let rdp = if conn.read_protected {
        "active (level 1 or 2): flash cannot be read"
    } else {
        "inactive (level 0)"
    };
    let uid_hex = uid.map(|u| u.iter().map(|x| format!("{x:02X}")).collect::<String>());
    finish(conn)?;
    let text = format!(
        "device:      {} (PID 0x{:03X}, family {})\n\
         bootloader:  protocol {}\n\
         commands:    {}\n\
         flash:       {} at 0x{:08X}: {}\n\
         RAM:         0x{:08X}-0x{:08X} (bootloader uses below 0x{:08X})\n\
         protection:  readout {}\n\
         unique ID:   {}",
        d.name,
        d.pid,
        d.family,
        b.version,
        b.command_names(),
        human_size(d.flash.len()),
        d.flash.start,
        page_map_summary(&d),
        d.ram.start,
        d.ram.end,
        d.bootloader_ram_end,
        rdp,
        uid_hex.clone().unwrap_or_else(|| "not available".into()),
    );
    let json = json!({
        "pid": format!("0x{:03X}", d.pid),
        "name": d.name,
        "family": d.family,
        "bootloader": { "version": b.version.to_string(), "commands": b.commands.iter().map(|c| format!("0x{c:02X}")).collect::<Vec<_>>(), "extra_ack": b.extra_ack },
        "flash": { "start": format!("0x{:08X}", d.flash.start), "size": d.flash.len(), "banks": d.banks, "pages": d.pages.len(), "map": page_map_summary(&d) },
        "read_protected": rdp.starts_with("active"),
        "unique_id": uid_hex,
    });
    Ok(Outcome { text, json })
}

/// Whether an output file name asks for Intel HEX.
pub(super) fn is_hex(output: &Path) -> bool {
    output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("hex"))
}

/// Write `data` (which sits at `address`) to `output`: Intel HEX for a `.hex` name, raw binary
/// otherwise.
pub(super) fn write_data_file(output: &Path, address: u32, data: &[u8]) -> Result<()> {
    let hex = is_hex(output);
    let bytes = if hex {
        Image::from_bin(data, address)
            .and_then(|i| i.to_ihex())
            .map_err(stm32boot::Error::from)?
            .into_bytes()
    } else {
        data.to_vec()
    };
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))
}

/// A read (or checksum) that starts in flash must end there: the bootloader would NACK the
/// block past the end only after the first blocks went through, with a message that names
/// neither the range nor the flash. Refused before anything is read (exit code 2).
fn check_within_flash(device: &Device, what: &str, address: u32, length: u32) -> Result<()> {
    let flash = device.flash;
    let end = u64::from(address) + u64::from(length);
    if length > 0 && flash.contains(address) && end > u64::from(flash.end) + 1 {
        bail!(stm32boot::Error::InvalidRequest(format!(
            "{what} 0x{address:08X}+{length} (to 0x{:08X}) runs past the end of flash: the {} \
             has {} of flash at 0x{:08X}-0x{:08X}; ask for at most {} bytes from 0x{address:08X}",
            end - 1,
            device.name,
            human_size(flash.len()),
            flash.start,
            flash.end,
            u64::from(flash.end) + 1 - u64::from(address),
        )));
    }
    Ok(())
}

fn read(
    args: &ConnectArgs,
    address: u32,
    length: u32,
    output: &Path,
    bars: &mut Bars,
) -> Result<Outcome> {
    let hex = is_hex(output);
    let mut conn = open(args, bars)?;
    check_within_flash(&conn.device, "read", address, length)?;
    let data = match flash::read_memory(&mut conn, address, length, bars) {
        Ok(d) => d,
        Err(e) if diagnose::worth_diagnosing(&e) => {
            let failure = Failure {
                op: Operation::Read,
                range: Some((address, u64::from(address) + u64::from(length))),
                bank_given: true,
            };
            return Err(diagnose::diagnosed(&mut conn, &failure, e).into());
        }
        Err(e) => return Err(e.into()),
    };
    finish(conn)?;
    write_data_file(output, address, &data)?;
    Ok(Outcome {
        text: format!(
            "read {length} bytes from 0x{address:08X} into {}",
            output.display()
        ),
        json: json!({ "address": address, "length": length, "file": output, "format": if hex { "ihex" } else { "bin" } }),
    })
}

fn plan_json(device: &Device, plan: &stm32boot::ops::FlashPlan) -> Value {
    let erase: Vec<Value> = plan
        .erase
        .iter()
        .map(|s| match s {
            EraseStep::Mass => json!({ "mass": true }),
            EraseStep::Pages(p) => {
                json!({ "pages": p.iter().map(|p| p.index).collect::<Vec<_>>() })
            }
        })
        .collect();
    json!({
        "erase": erase,
        "pages_to_erase": plan.pages_to_erase(device),
        "partial_pages": plan.partial_pages.iter().map(|p| p.index).collect::<Vec<_>>(),
        "blocks": plan.blocks.len(),
        "bytes": plan.bytes_to_write(),
        "skipped_blocks": plan.skipped_blocks,
    })
}

/// A write's plan for people: the erase commands with every page they erase, the Write Memory
/// commands, and what happens to partly covered pages (shared by `write --dry-run` and
/// `run --dry-run`).
pub(super) fn write_plan_text(
    file: &str,
    device: &Device,
    plan: &stm32boot::ops::FlashPlan,
    preserve: bool,
) -> String {
    let erased: Vec<Page> = plan
        .erase
        .iter()
        .flat_map(|s| s.pages(device).iter().copied())
        .collect();
    let mut text = format!(
        "plan for {file} on {}: {} erase command(s), {} page(s):\n{}\nthen {} Write Memory commands ({} bytes), {} all-erased block(s) skipped",
        device.name,
        plan.erase.len(),
        erased.len(),
        pages_text(&erased),
        plan.blocks.len(),
        plan.bytes_to_write(),
        plan.skipped_blocks
    );
    for p in &plan.partial_pages {
        if preserve {
            text.push_str(&format!("\npage {} (0x{:08X}) is only partly covered: it is read first, journalled, and written back whole with the image laid over it", p.index, p.address));
        } else {
            text.push_str(&format!("\nwarning: page {} is only partly covered by the image; the rest of it would be erased (--no-preserve)", p.index));
        }
    }
    text
}

/// One line per page: number, address and size.
pub(super) fn pages_text(pages: &[Page]) -> String {
    pages
        .iter()
        .map(|p| {
            format!(
                "  page {:>4} at 0x{:08X} ({})",
                p.index,
                p.address,
                human_size(u64::from(p.size))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[allow(clippy::too_many_arguments)]
fn write(w: &WriteArgs, bars: &mut Bars) -> Result<Outcome> {
    let (image_args, dry_run, go) = (&w.image, w.dry_run, w.go);
    let image = load_image(image_args)?;
    let mut conn = open(&w.conn, bars)?;
    let image = match w.bank {
        Some(b) => stm32boot::ops::bank::relocate_to_bank(&conn.device, &image, b)?,
        None => image,
    };
    let mut options = WriteOptions::for_connection(&conn);
    options.verify = w.verify;
    options.verify_erased_blocks = w.verify_erased;
    options.plan.erase = !w.no_erase;
    options.plan.skip_erased_blocks = !w.no_skip;
    options.preserve = !w.no_preserve && !w.no_erase;
    options.protect = w.protect.clone();
    // Ranges stm32boot.toml protects hold as well as --protect ones.
    options.protect.extend(super::settings::protected_ranges()?);
    options.force = w.force;
    options.skip_matching_pages = w.skip_unchanged;
    options.journal = if w.no_journal {
        None
    } else {
        w.journal.clone().or(options.journal)
    };
    let plan = flash::plan_write(&conn, &image, &options.plan)?;
    flash::check_protected(&plan, &options)?;
    let file = image_args.file.display().to_string();
    if dry_run {
        let device = conn.device.clone();
        finish(conn)?;
        let mut text = write_plan_text(&file, &device, &plan, options.preserve);
        text.push_str("\n(dry run: nothing was changed)");
        return Ok(Outcome {
            text,
            json: json!({ "dry_run": true, "file": file, "plan": plan_json(&device, &plan), "preserve": options.preserve }),
        });
    }
    let pages = flash::pages_touched(&conn.device, &plan);
    diagnose::check_writable(&mut conn, &pages, Operation::Write)?;
    warn_unselected_bank(&mut conn, &image, w.bank, bars);
    let report = match flash::write_image(&mut conn, &image, &options, bars) {
        Ok(r) => r,
        Err(e) if diagnose::worth_diagnosing(&e) => {
            let failure = Failure {
                op: Operation::Write,
                range: image.start().zip(image.end()),
                bank_given: w.bank.is_some(),
            };
            return Err(diagnose::diagnosed(&mut conn, &failure, e).into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut go_addr = None;
    if go {
        let addr = image.start().unwrap_or(conn.device.flash.start);
        conn.session.go(addr)?;
        go_addr = Some(addr);
    }
    let (link_text, link_json) = link_report(&conn, image.total_len());
    finish(conn)?;
    let verified = match report.verified {
        Some(flash::VerifyMethod::Crc) => ", verified by CRC (Get Checksum)".to_string(),
        Some(flash::VerifyMethod::ReadBack) if report.blocks_covered_by_erase > 0 => format!(
            ", verified by reading back ({} erased block(s) covered by the erase)",
            report.blocks_covered_by_erase
        ),
        Some(flash::VerifyMethod::ReadBack) => ", verified by reading back".to_string(),
        None => String::new(),
    };
    let mut kept = if report.pages_preserved > 0 {
        format!(", {} partly covered page(s) kept", report.pages_preserved)
    } else {
        String::new()
    };
    if report.pages_unchanged > 0 {
        kept.push_str(&format!(
            ", {} page(s) already held their content",
            report.pages_unchanged
        ));
    }
    if report.pages_written_into_blank > 0 {
        kept.push_str(&format!(
            ", {} partly covered page(s) written into erased bytes without an erase",
            report.pages_written_into_blank
        ));
    }
    let mut text = format!(
        "wrote {} bytes of {file} in {} blocks ({} page(s) erased{kept}, {} all-erased block(s) skipped){verified}",
        image.total_len(),
        report.blocks_written,
        report.pages_erased,
        report.blocks_skipped,
    );
    if let Some(a) = go_addr {
        text.push_str(&format!("\nstarted the application at 0x{a:08X}"));
    }
    if let Some(line) = link_text {
        text.push('\n');
        text.push_str(&line);
    }
    Ok(Outcome {
        text,
        json: json!({ "file": file, "bytes": image.total_len(), "report": report, "go": go_addr, "link": link_json }),
    })
}

/// The round trips a job cost: a line for slow links (round trip of 20 ms or more), and the
/// figures for `--json` always.
fn link_report(conn: &Connection, bytes: u64) -> (Option<String>, serde_json::Value) {
    let trips = conn.session.round_trips();
    let rtt = conn.session.round_trip_time();
    let per_kib = if bytes == 0 {
        0.0
    } else {
        trips as f64 * 1024.0 / bytes as f64
    };
    let json = json!({
        "round_trips": trips,
        "round_trips_per_kib": (per_kib * 100.0).round() / 100.0,
        "round_trip_ms": rtt.map(|d| d.as_secs_f64() * 1000.0),
        "pipelining": conn.session.pipelining(),
    });
    let text = rtt.filter(|d| *d >= Duration::from_millis(20)).map(|d| {
        format!(
            "link: round trip {} ms; {trips} round trips ({per_kib:.2} per KiB){}",
            d.as_millis(),
            if conn.session.pipelining() {
                ""
            } else {
                ", stop-and-wait"
            }
        )
    });
    (text, json)
}

/// Warn when an image for bank 1 goes to a dual-bank part that boots bank 2.
fn warn_unselected_bank(conn: &mut Connection, image: &Image, bank: Option<u8>, bars: &mut Bars) {
    if bank.is_some() || conn.device.banks != 2 || conn.read_protected {
        return;
    }
    let range = image.start().zip(image.end());
    let failure = Failure {
        op: Operation::Write,
        range,
        bank_given: false,
    };
    for f in diagnose::explain(conn, &failure)
        .into_iter()
        .filter(|f| f.problem.starts_with("bank 2 is selected"))
    {
        bars.note(Note::Warning(format!("{}; {}", f.problem, f.fix)));
    }
}

fn recover(
    args: &ConnectArgs,
    journal: Option<&Path>,
    restore: bool,
    bars: &mut Bars,
) -> Result<Outcome> {
    let dir = journal
        .map(Path::to_path_buf)
        .or_else(stm32boot::ops::journal::default_dir)
        .ok_or_else(|| anyhow!("no journal directory: pass --journal DIR"))?;
    let mut conn = open(args, bars)?;
    let mut j = flash::open_journal(&mut conn, &dir)?;
    let path = j.path().display().to_string();
    if j.pending().is_empty() {
        finish(conn)?;
        return Ok(Outcome {
            text: format!("nothing to recover: no unfinished write in {path}"),
            json: json!({ "journal": path, "pages": [] }),
        });
    }
    let mode = if restore {
        flash::RecoverMode::Restore
    } else {
        flash::RecoverMode::Finish
    };
    let pages = flash::recover(&mut conn, &mut j, mode, bars)?;
    finish(conn)?;
    let verb = if restore { "restored" } else { "finished" };
    let lines: Vec<String> = pages
        .iter()
        .map(|p| {
            let what = if p.already_done {
                "already complete"
            } else {
                verb
            };
            format!("page at 0x{:08X} ({} bytes): {what}", p.address, p.size)
        })
        .collect();
    Ok(Outcome {
        text: format!("{}\njournal {path} cleared", lines.join("\n")),
        json: json!({ "journal": path, "mode": verb, "pages": pages }),
    })
}

fn parse_page_range(s: &str) -> Result<(u16, u16)> {
    let parse = |t: &str| -> Result<u16> {
        let v =
            super::args::parse_u32(t).map_err(|e| anyhow!(stm32boot::Error::InvalidRequest(e)))?;
        u16::try_from(v).map_err(|_| {
            anyhow!(stm32boot::Error::InvalidRequest(format!(
                "page {v} is out of range"
            )))
        })
    };
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (parse(a)?, parse(b.trim_start_matches('='))?),
        None => {
            let p = parse(s)?;
            (p, p)
        }
    };
    if a > b {
        bail!(stm32boot::Error::InvalidRequest(format!(
            "page range {s} runs backwards"
        )));
    }
    Ok((a, b))
}

fn erase(
    args: &ConnectArgs,
    what: &EraseWhat,
    expand: bool,
    dry_run: bool,
    bars: &mut Bars,
) -> Result<Outcome> {
    // Parse what can be parsed before the port opens.
    let pages_arg = what.pages.as_deref().map(parse_page_range).transpose()?;
    let range_arg = what.range;
    let target = if what.all {
        EraseTarget::All
    } else if let Some(bank) = what.bank {
        EraseTarget::Bank(bank)
    } else if let Some((a, b)) = pages_arg {
        EraseTarget::Pages((a..=b).collect())
    } else if let Some((addr, len)) = range_arg {
        EraseTarget::Range(addr, len)
    } else {
        return Err(anyhow!(stm32boot::Error::InvalidRequest(
            "say what to erase: --all, --bank N, --pages A..B or --range ADDR:LEN".into(),
        )));
    };
    let mut conn = open(args, bars)?;
    let device = conn.device.clone();
    let plan = flash::plan_erase(&conn, &target, expand)?;
    if let Some(grown) = &plan.grown {
        bars.note(Note::Warning(format!(
            "--range grown to whole pages: {grown}"
        )));
    }
    let pages = plan.pages.clone();
    if dry_run {
        finish(conn)?;
        return Ok(Outcome {
            text: format!(
                "would erase {} page(s) of the {}:\n{}\n(dry run: nothing was changed)",
                pages.len(),
                device.name,
                pages_text(&pages)
            ),
            json: json!({ "dry_run": true, "pages": pages.iter().map(|p| p.index).collect::<Vec<_>>() }),
        });
    }
    let indices: Vec<u16> = pages.iter().map(|p| p.index).collect();
    diagnose::check_writable(&mut conn, &indices, Operation::Erase)?;
    let erased = match flash::run_erase_plan(&mut conn, &plan, bars) {
        Ok(n) => n,
        Err(e) if diagnose::worth_diagnosing(&e) => {
            let failure = Failure {
                op: Operation::Erase,
                range: None,
                bank_given: true,
            };
            return Err(diagnose::diagnosed(&mut conn, &failure, e).into());
        }
        Err(e) => return Err(e.into()),
    };
    finish(conn)?;
    Ok(Outcome {
        text: format!("erased {erased} page(s) of the {}", device.name),
        json: json!({ "pages_erased": erased, "pages": pages.iter().map(|p| p.index).collect::<Vec<_>>() }),
    })
}

fn verify(args: &ConnectArgs, image_args: &ImageArgs, bars: &mut Bars) -> Result<Outcome> {
    let image = load_image(image_args)?;
    let mut conn = open(args, bars)?;
    let method = match flash::verify_image(&mut conn, &image, bars) {
        Ok(m) => m,
        Err(e) if diagnose::worth_diagnosing(&e) => {
            let failure = Failure {
                op: Operation::Verify,
                range: image.start().zip(image.end()),
                bank_given: false,
            };
            return Err(diagnose::diagnosed(&mut conn, &failure, e).into());
        }
        Err(e) => return Err(e.into()),
    };
    finish(conn)?;
    Ok(Outcome {
        text: format!(
            "{} matches the chip ({} bytes, by {})",
            image_args.file.display(),
            image.total_len(),
            if method == flash::VerifyMethod::Crc {
                "CRC"
            } else {
                "reading back"
            }
        ),
        json: json!({ "file": image_args.file, "bytes": image.total_len(), "method": method }),
    })
}

fn checksum(args: &ConnectArgs, address: u32, length: u32, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(args, bars)?;
    check_within_flash(&conn.device, "checksum", address, length)?;
    let (crc, method) = flash::checksum(&mut conn, address, length, bars)?;
    finish(conn)?;
    Ok(Outcome {
        text: format!(
            "0x{crc:08X}  STM32 CRC-32 of {length} bytes at 0x{address:08X} ({})",
            if method == flash::VerifyMethod::Crc {
                "Get Checksum"
            } else {
                "read back, computed here"
            }
        ),
        json: json!({ "address": address, "length": length, "crc": format!("0x{crc:08X}"), "method": method }),
    })
}

fn go(args: &ConnectArgs, address: Option<u32>, bars: &mut Bars) -> Result<Outcome> {
    let mut conn = open(args, bars)?;
    let addr = address.unwrap_or(conn.device.flash.start);
    conn.session.go(addr)?;
    finish(conn)?;
    Ok(Outcome {
        text: format!("started the application at 0x{addr:08X}"),
        json: json!({ "address": addr }),
    })
}

fn parse_pages(s: &str) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (a, b) = parse_page_range(part.trim())?;
        out.extend(a..=b);
    }
    if out.is_empty() {
        bail!(stm32boot::Error::InvalidRequest(
            "name the pages or sectors to protect, e.g. 0,1 or 0..3".into()
        ));
    }
    Ok(out)
}

fn protect(args: &ConnectArgs, what: &ProtectCmd, bars: &mut Bars) -> Result<Outcome> {
    let invalid = |m: &str| anyhow!(stm32boot::Error::InvalidRequest(m.to_string()));
    let pages = match what {
        ProtectCmd::Readout { state: OnOff::Off, confirm_mass_erase: false } => {
            return Err(invalid(
                "turning readout protection off MASS-ERASES the whole flash: pass --confirm-mass-erase to go ahead",
            ))
        }
        ProtectCmd::Write { state: OnOff::On, sectors } => {
            Some(parse_pages(sectors.as_deref().ok_or_else(|| invalid("protect write on needs the pages or sectors, e.g. 0,1"))?)?)
        }
        ProtectCmd::Write { state: OnOff::Off, sectors: Some(_) } => {
            return Err(invalid("protect write off clears all write protection and takes no sectors"))
        }
        _ => None,
    };
    let mut conn = open(args, bars)?;
    let text = match what {
        ProtectCmd::Readout {
            state: OnOff::On, ..
        } => {
            conn.session.readout_protect()?;
            conn.read_protected = true;
            bars.note(Note::Warning(
                "read protection is now active: the flash cannot be read or written over the bootloader until `stm32boot protect readout off --confirm-mass-erase`, which erases it".into(),
            ));
            "readout protection set to level 1; the chip was reset and re-synced".to_string()
        }
        ProtectCmd::Readout {
            state: OnOff::Off, ..
        } => {
            bars.note(Note::Info(format!(
                "Readout Unprotect: the chip mass-erases its flash (up to {} s) and resets",
                conn.session
                    .timeouts()
                    .apply(conn.session.timeouts().readout_unprotect)
                    .as_secs()
            )));
            conn.session.readout_unprotect()?;
            conn.read_protected = false;
            conn.reload_layout(bars)?;
            "readout protection removed (level 0): the flash was mass-erased; the chip was reset and re-synced".to_string()
        }
        ProtectCmd::Write {
            state: OnOff::On, ..
        } => {
            let pages = pages.unwrap_or_default();
            let (codes, covered) = option_bytes::write_protect_codes(&conn.device, &pages)?;
            if covered.len() > pages.len() {
                bars.note(Note::Warning(format!(
                    "write protection of {} works in larger units: pages {} will be protected",
                    conn.device.name,
                    option_bytes::page_runs(&covered)
                )));
            }
            conn.session.write_protect(&codes)?;
            let now = option_bytes::read(&mut conn)?;
            let layout = option_bytes::layout(&conn.device)?;
            let protected = option_bytes::write_protected_pages(&conn.device, layout, &now);
            let missing: Vec<u16> = pages
                .iter()
                .copied()
                .filter(|p| !protected.contains(p))
                .collect();
            if !missing.is_empty() {
                bail!(stm32boot::Error::Verify {
                    address: conn.device.option_bytes[0].start,
                    detail: format!(
                        "after Write Protect the option bytes do not protect page(s) {}",
                        option_bytes::page_runs(&missing)
                    ),
                });
            }
            format!(
                "page(s) {} are now write-protected; the chip was reset and re-synced",
                option_bytes::page_runs(&protected)
            )
        }
        ProtectCmd::Write {
            state: OnOff::Off, ..
        } => {
            conn.session.write_unprotect()?;
            if let Some(layout) = conn.device.ob_layout.clone() {
                let now = option_bytes::read(&mut conn)?;
                let left = option_bytes::write_protected_pages(&conn.device, &layout, &now);
                if !left.is_empty() {
                    bail!(stm32boot::Error::Verify {
                        address: conn.device.option_bytes[0].start,
                        detail: format!(
                            "after Write Unprotect page(s) {} are still protected",
                            option_bytes::page_runs(&left)
                        ),
                    });
                }
            }
            "write protection removed; the chip was reset and re-synced".to_string()
        }
    };
    finish(conn)?;
    Ok(Outcome {
        json: json!({ "result": text }),
        text,
    })
}

fn ports() -> Result<Outcome> {
    let ports = serial::list_ports()?;
    let mut text = String::new();
    for p in &ports {
        let usb = match (p.vid, p.pid) {
            (Some(v), Some(d)) => format!(
                "  USB {v:04X}:{d:04X}{}{}",
                p.serial
                    .as_deref()
                    .map(|s| format!(" serial {s}"))
                    .unwrap_or_default(),
                p.product
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            _ => String::new(),
        };
        text.push_str(&format!("{}{usb}\n", p.path));
    }
    if ports.is_empty() {
        text.push_str(
            "no serial ports found (the simulated target is always there: --port sim:stm32f411)",
        );
    }
    Ok(Outcome {
        text: text.trim_end().to_string(),
        json: json!({ "ports": ports }),
    })
}

fn devices(filter: Option<&str>) -> Result<Outcome> {
    let table = DeviceTable::builtin()?;
    let f = filter.map(str::to_ascii_lowercase);
    let pid_filter = filter
        .and_then(|s| super::args::parse_u32(s).ok())
        .filter(|_| filter.is_some_and(|s| s.starts_with("0x")));
    let list: Vec<&Device> = table
        .devices()
        .iter()
        .filter(|d| match (&f, pid_filter) {
            (_, Some(pid)) => u32::from(d.pid) == pid,
            (Some(f), None) => {
                d.name.to_ascii_lowercase().contains(f.as_str())
                    || d.family.to_ascii_lowercase() == *f
                    || d.parts.iter().any(|p| p.contains(f.as_str()))
            }
            (None, None) => true,
        })
        .collect();
    let mut text = format!(
        "{:<5} {:<22} {:<6} {:>8}  {}\n",
        "PID", "name", "family", "flash", "erase units"
    );
    for d in &list {
        text.push_str(&format!(
            "0x{:03X} {:<22} {:<6} {:>8}  {}\n",
            d.pid,
            d.name,
            d.family,
            human_size(d.flash.len()),
            page_map_summary(d)
        ));
    }
    text.push_str(&format!("{} part(s)", list.len()));
    let json = json!({ "devices": list.iter().map(|d| json!({
        "pid": format!("0x{:03X}", d.pid), "name": d.name, "family": d.family, "parts": d.parts,
        "flash_size": d.flash.len(), "pages": d.pages.len(), "banks": d.banks,
        "bootloader_version": format!("{}", stm32boot::protocol::ProtocolVersion(d.bootloader.version)),
    })).collect::<Vec<_>>() });
    Ok(Outcome { text, json })
}

fn sim(args: &SimArgs, bars: &mut Bars) -> Result<Outcome> {
    let table = table(args.device_file.as_deref())?;
    let spec = sim_spec(args)?;
    let target = spec.build(&table)?;
    let name = target.chip().device().name.clone();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the signal handler")?;
    }
    let clock = RealClock::start();
    let timing = format!("{:?} timing", spec.wire.timing).to_lowercase();
    // The address goes to stdout at once so that scripts can read it; the rest to stderr.
    let mut wire;
    if args.pty {
        let mut endpoint = PtyEndpoint::open(args.link.as_deref())?;
        let line = LineSettings {
            baud: args.baud,
            parity: Parity::None,
        };
        wire = Wire::new(target, spec.wire, line);
        announce(
            &args
                .link
                .as_deref()
                .unwrap_or(endpoint.path())
                .display()
                .to_string(),
        );
        bars.note(Note::Info(format!(
            "simulating a {name} on {} (8N1 on a pseudo-terminal, {timing}); stop with Ctrl-C",
            endpoint.path().display()
        )));
        endpoint.serve(&mut wire, &clock, &stop)?;
    } else if let Some(addr) = &args.dial {
        let line = LineSettings {
            baud: args.baud,
            parity: Parity::Even,
        };
        wire = Wire::new(target, spec.wire, line);
        announce(&format!("dialling tcp://{addr}"));
        bars.note(Note::Info(format!(
            "simulating a {name} that dials out to {addr} ({} baud, {timing}); stop with Ctrl-C",
            args.baud
        )));
        stm32boot::sim::endpoint::dial(addr, &mut wire, &clock, &stop, &mut |event| {
            bars.note(Note::Info(event))
        })?;
    } else {
        let (addr, kind, scheme) = match (&args.tcp, &args.rfc2217) {
            (Some(a), _) => (a, NetKind::Tcp, "tcp"),
            (_, Some(a)) => (a, NetKind::Rfc2217, "rfc2217"),
            _ => bail!("give --pty, --tcp ADDR or --rfc2217 ADDR"),
        };
        let endpoint = NetEndpoint::bind(addr, kind)?;
        let line = LineSettings {
            baud: args.baud,
            parity: Parity::Even,
        };
        wire = Wire::new(target, spec.wire, line);
        let local = endpoint.local_addr()?;
        announce(&format!("{scheme}://{local}"));
        bars.note(Note::Info(format!(
            "simulating a {name} on {scheme}://{local} ({} baud, {timing}); stop with Ctrl-C",
            args.baud
        )));
        endpoint.run(&mut wire, &clock, &stop, &mut |event| {
            bars.note(Note::Info(event))
        })?;
    }
    if let Some(state) = &spec.state {
        stm32boot::sim::state::save_target(wire.target(), state)?;
    }
    let stats = wire.stats();
    Ok(Outcome {
        text: String::new(),
        json: json!({
            "stopped": true,
            "bytes_to_device": stats.to_device,
            "bytes_to_host": stats.to_host,
            "round_trips": stats.round_trips,
            "overruns": stats.overruns,
            "flash_time_ms": stats.flash_time.as_secs_f64() * 1000.0,
            "line": { "baud": wire.line().baud, "bits_per_char": wire.line().parity.bits_per_char() },
        }),
    })
}

/// Print the endpoint's address as the first line of stdout, at once.
fn announce(address: &str) {
    use std::io::Write as _;
    println!("{address}");
    std::io::stdout().flush().ok();
}

/// The simulator spec from the part argument (which may carry `?options`) and the flags, which
/// win over the options.
fn sim_spec(args: &SimArgs) -> Result<SimSpec> {
    let mut spec = SimSpec::parse(&args.part)?;
    if args.state.is_some() {
        spec.state = args.state.clone();
    }
    if args.bootloader_version.is_some() {
        spec.version = args.bootloader_version;
    }
    if args.flash_size.is_some() {
        spec.flash_size = args.flash_size;
    }
    if let Some(t) = &args.timing {
        spec.wire.timing = t.parse().map_err(|e: String| anyhow!(e))?;
    }
    if args.app_enter_bootloader.is_some() {
        spec.app_magic = args.app_enter_bootloader.clone();
    }
    let line = |name: &str| match name {
        "dtr" => ControlLine::Dtr,
        _ => ControlLine::Rts,
    };
    if let Some(n) = &args.nrst {
        spec.wire.wiring.nrst = match n.as_str() {
            "none" => PinDrive::Fixed(true),
            l => PinDrive::Line {
                line: line(l),
                inverted: false,
            },
        };
    }
    if let Some(b) = &args.boot0 {
        spec.wire.wiring.boot0 = match b.as_str() {
            "high" => PinDrive::Fixed(true),
            "low" => PinDrive::Fixed(false),
            l => PinDrive::Line {
                line: line(l),
                inverted: false,
            },
        };
    }
    let invert = |d: PinDrive, on: bool| match d {
        PinDrive::Line { line, inverted } => PinDrive::Line {
            line,
            inverted: inverted || on,
        },
        fixed => fixed,
    };
    spec.wire.wiring.nrst = invert(spec.wire.wiring.nrst, args.invert_nrst);
    spec.wire.wiring.boot0 = invert(spec.wire.wiring.boot0, args.invert_boot0);
    Ok(spec)
}
