//! `stm32boot run JOB.toml`: a job file's steps on one chip (see [`stm32boot::ops::job`] and
//! [`stm32boot::ops::job_run`]).
//!
//! Text output: one line per step on stdout as it finishes (or is skipped), notes on stderr.
//! `--json`: JSON Lines on stdout, one [`Event`] per line and nothing else; the last line is
//! `job_finished` or `error`. (The global `--json` result object is not printed: this command
//! exits by itself once the stream is complete.) `--dry-run` prints every step's plan, with
//! every page each erase and write would erase.

use super::args::{AfterArg, ConnectArgs, EnterBytes, Level, ParityArg};
use super::output::{human_size, Bars};
use super::run::{finish, open, pages_text, write_plan_text, Outcome};
use super::settings;
use anyhow::{anyhow, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use stm32boot::device::{Device, DeviceTable};
use stm32boot::link::Parity;
use stm32boot::ops::coeffs::slot_name;
use stm32boot::ops::job::{Action, After, Job, JobConnect, Step};
use stm32boot::ops::job_run::{self, Event, JobFailure, JobSink, RunOptions, StepPlan};
use stm32boot::ops::{journal, Note, Progress, Stage};

/// Options of `stm32boot run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The job file (TOML): an optional [connect] table with the connection options, and
    /// [[step]] tables run in order (see the README's "Job files").
    pub job: PathBuf,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Print the plan of every step (with every page each erase and write will erase) and
    /// change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Ignore the saved progress of this job on this chip and run every step.
    #[arg(long)]
    pub restart: bool,
    /// State directory: job progress goes to DIR/jobs and the page journal to DIR/journal
    /// (default: $STM32BOOT_STATE_DIR, else the user's state directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Run `stm32boot run`. With `json`, the events are streamed and the process exits here.
pub fn run(args: &RunArgs, json: bool, quiet: bool, bars: &mut Bars) -> Result<Outcome> {
    let mut sink = Sink {
        json,
        quiet,
        steps: 0,
        bar: None,
        finished: None,
        bars,
    };
    let result = execute(args, &mut sink);
    if json {
        let code = match &result {
            Ok(()) => {
                if let Some(done) = sink.finished.take() {
                    sink.print(&done);
                }
                0
            }
            Err((step, err)) => {
                let event = error_event(*step, err);
                let code = match &event {
                    Event::Error { exit_code, .. } => *exit_code,
                    _ => 1,
                };
                sink.print(&event);
                code
            }
        };
        let _ = std::io::stdout().flush();
        // The stream is complete: main's result object would not be an event line.
        std::process::exit(i32::from(code));
    }
    sink.end_bar();
    match result {
        Ok(()) => {
            let text = match sink.finished.take() {
                Some(Event::JobFinished {
                    steps,
                    skipped,
                    dry_run,
                    ..
                }) => {
                    let skipped = if skipped > 0 {
                        format!(", {skipped} skipped (finished by an earlier run)")
                    } else {
                        String::new()
                    };
                    if dry_run {
                        format!("plan of {steps} step(s){skipped}\n(dry run: nothing was changed)")
                    } else {
                        format!("job done: {steps} step(s){skipped}")
                    }
                }
                _ => "job done".into(),
            };
            Ok(Outcome {
                text,
                json: json!({}),
            })
        }
        Err((_, err)) => Err(err),
    }
}

/// The error event for a failure: the library's code and exit code where it is one of its
/// errors.
fn error_event(step: Option<usize>, err: &anyhow::Error) -> Event {
    match err.downcast_ref::<stm32boot::Error>() {
        Some(e) => match Event::error(step, e) {
            Event::Error {
                code,
                exit_code,
                findings,
                ..
            } => Event::Error {
                step,
                code,
                message: format!("{err:#}"),
                exit_code,
                findings,
            },
            other => other,
        },
        None => Event::Error {
            step,
            code: "error".into(),
            message: format!("{err:#}"),
            exit_code: 1,
            findings: Vec::new(),
        },
    }
}

type Failed = (Option<usize>, anyhow::Error);

/// Load and check the job, connect, run it and leave the chip; the connection is closed (and a
/// simulated chip saved) before this returns.
fn execute(args: &RunArgs, sink: &mut Sink) -> std::result::Result<(), Failed> {
    let outside = |e: anyhow::Error| (None, e);
    let mut job = Job::load(&args.job).map_err(|e| outside(e.into()))?;
    let origin = format!("job file {}", args.job.display());
    let conn_args = with_job_connect(&args.conn, &job.connect, &origin);
    let table = {
        let builtin = DeviceTable::builtin().map_err(|e| outside(e.into()))?;
        match &conn_args.device_file {
            Some(p) => {
                builtin.with_overrides(DeviceTable::from_file(p).map_err(|e| outside(e.into()))?)
            }
            None => builtin.clone(),
        }
    };
    job.check_option_names(&table)
        .map_err(|e| outside(e.into()))?;
    // Ranges stm32boot.toml protects hold for write steps as they do for `write`.
    let protected = settings::protected_ranges().map_err(outside)?;
    for step in &mut job.steps {
        if let Action::Write(w) = &mut step.action {
            w.protect.extend(protected.iter().copied());
        }
    }
    let root = args.state_dir.clone().or_else(journal::state_root);
    let options = RunOptions {
        dry_run: args.dry_run,
        state_dir: root.clone(),
        restart: args.restart,
        journal: match &args.state_dir {
            Some(dir) => Some(dir.join("journal")),
            None => std::env::var_os("STM32BOOT_JOURNAL")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(journal::default_dir),
        },
    };
    let mut conn = open(&conn_args, sink.bars).map_err(outside)?;
    // Notes from connecting (a chosen adapter, a DTR/RTS warning) become events too.
    for note in std::mem::take(&mut sink.bars.notes) {
        if sink.json {
            sink.event(match note {
                Note::Warning(message) => Event::Warning {
                    step: None,
                    message,
                },
                Note::Info(message) => Event::Info {
                    step: None,
                    message,
                },
            });
        }
    }
    match job_run::run_job(&mut conn, &job, &options, sink) {
        Ok(_) => {
            sink.end_bar();
            finish(conn).map_err(outside)?;
            Ok(())
        }
        Err(JobFailure { step, error }) => {
            drop(conn);
            let err = anyhow!(error);
            let err = match step.and_then(|n| job.steps.get(n - 1)) {
                Some(s) => err.context(format!("step {} ({})", s.number, s.label())),
                None => err,
            };
            Err((step, err))
        }
    }
}

/// The connection options: the command line and the environment first, then the job file's
/// `[connect]` table (which ranks above stm32boot.toml), then the defaults.
fn with_job_connect(cli: &ConnectArgs, job: &JobConnect, origin: &str) -> ConnectArgs {
    let mut out = cli.clone();
    // One of the options stm32boot.toml can also set: the job's value unless the command line
    // or the environment gave one, and then the configuration must not replace it.
    let take = |id: &'static str| {
        let take = !settings::given(id);
        if take {
            settings::keep(id, origin.to_string());
        }
        take
    };
    let parity = |p: Parity| match p {
        Parity::Even => ParityArg::Even,
        Parity::None => ParityArg::None,
        Parity::Odd => ParityArg::Odd,
    };
    if let Some(v) = &job.port {
        if take("port") {
            out.port = vec![v.clone()];
        }
    }
    if let Some(v) = job.baud {
        if take("baud") {
            out.baud = v;
        }
    }
    if let Some(v) = job.parity {
        if take("parity") {
            out.parity = parity(v);
        }
    }
    if let Some(v) = &job.before {
        if take("before") {
            out.before = Some(v.clone());
        }
    }
    if let Some(v) = job.after {
        if take("after") {
            out.after = match v {
                After::None => AfterArg::None,
                After::Go => AfterArg::Go,
                After::Reset => AfterArg::Reset,
            };
        }
    }
    if let Some(v) = job.invert_reset {
        if take("invert_reset") {
            out.invert_reset = v;
        }
    }
    if let Some(v) = job.invert_boot0 {
        if take("invert_boot0") {
            out.invert_boot0 = v;
        }
    }
    if let Some(v) = job.timeout_scale {
        if take("timeout_scale") {
            out.timeout_scale = v;
        }
    }
    if let Some(v) = &job.device_file {
        if take("device_file") {
            out.device_file = Some(v.clone());
        }
    }
    // Options without a configuration key: the command line's when it gave one.
    let level = |high: bool| if high { Level::High } else { Level::Low };
    out.flash_size = out.flash_size.or(job.flash_size);
    out.dtr = out.dtr.or(job.dtr.map(level));
    out.rts = out.rts.or(job.rts.map(level));
    if out.enter.is_none() {
        out.enter = job.enter.clone().map(EnterBytes);
    }
    out.enter_parity = out.enter_parity.or(job.enter_parity.map(parity));
    if let Some(w) = job.enter_wait {
        if out.enter_wait == std::time::Duration::from_millis(500) {
            out.enter_wait = w;
        }
    }
    out.no_pipeline |= job.no_pipeline.unwrap_or(false);
    out
}

/// Shows a job's events: JSON Lines, or lines for people with progress bars.
struct Sink<'a> {
    json: bool,
    quiet: bool,
    steps: usize,
    /// The progress bar's step and phase.
    bar: Option<(usize, Stage)>,
    /// `job_finished`, held back until the chip has been left as `--after` says.
    finished: Option<Event>,
    bars: &'a mut Bars,
}

impl Sink<'_> {
    fn print(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }

    fn line(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        self.end_bar();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }

    fn end_bar(&mut self) {
        if let Some((_, stage)) = self.bar.take() {
            self.bars.finish(stage);
        }
    }

    fn prefix(&self, step: usize) -> String {
        format!("[{step}/{}]", self.steps)
    }
}

impl JobSink for Sink<'_> {
    fn event(&mut self, event: Event) {
        if let Event::JobStarted { steps, .. } = &event {
            self.steps = *steps;
        }
        if matches!(event, Event::JobFinished { .. }) {
            self.finished = Some(event);
            return;
        }
        if self.json {
            self.print(&event);
            return;
        }
        match event {
            Event::JobStarted {
                resumed: true,
                state,
                ..
            } => self.bars.note(Note::Info(format!(
                "resuming this job on this chip: finished steps are skipped ({})",
                state.unwrap_or_default()
            ))),
            Event::Progress {
                step,
                phase,
                done,
                total,
            } => {
                if self.bar != Some((step, phase)) {
                    self.end_bar();
                    self.bars.start(phase, total);
                    self.bar = Some((step, phase));
                }
                self.bars.update(phase, done);
            }
            Event::Warning { message, .. } => self.bars.note(Note::Warning(message)),
            Event::Info { message, .. } => self.bars.note(Note::Info(message)),
            Event::StepFinished { step, summary, .. } => {
                let text = format!("{} {summary}", self.prefix(step));
                self.line(&text);
            }
            Event::StepSkipped {
                step,
                kind,
                summary,
                ..
            } => {
                let text = format!(
                    "{} {kind}: skipped, finished by an earlier run{}",
                    self.prefix(step),
                    summary.map(|s| format!(" ({s})")).unwrap_or_default()
                );
                self.line(&text);
            }
            _ => {}
        }
    }

    fn planned(&mut self, step: &Step, device: &Device, plan: &StepPlan) {
        if self.json {
            let plan = job_run::plan_summary(device, plan);
            self.print(&Event::StepPlanned {
                step: step.number,
                name: step.name.clone(),
                kind: step.kind().into(),
                plan,
            });
            return;
        }
        let body = match plan {
            StepPlan::Erase(p) => format!(
                "would erase {} page(s) of the {}:\n{}",
                p.pages.len(),
                device.name,
                pages_text(&p.pages)
            ),
            StepPlan::Write {
                plan,
                preserve,
                skip_matching,
            } => {
                let file = match &step.action {
                    Action::Write(w) => w.file.display().to_string(),
                    _ => String::new(),
                };
                let mut t = write_plan_text(&file, device, plan, *preserve);
                if *skip_matching {
                    t.push_str("\npages that already hold their content are left out when it runs");
                }
                t
            }
            StepPlan::Coeffs(p) => {
                let mut t = format!(
                    "would write sequence {} to slot {} at 0x{:08X} ({} bytes, CRC 0x{:08X})",
                    p.sequence,
                    slot_name(p.slot),
                    p.address,
                    p.block.len(),
                    p.crc
                );
                for page in &p.flash.pages {
                    let how = if p.flash.partial_pages.contains(page) {
                        "read, erased and written back whole with the block laid over it"
                    } else {
                        "erased and written"
                    };
                    t.push_str(&format!(
                        "\n  page {:>4} at 0x{:08X} ({}): {how}",
                        page.index,
                        page.address,
                        human_size(u64::from(page.size))
                    ));
                }
                t
            }
            StepPlan::OptionBytes(p) => format!(
                "would change the option bytes:\n{}",
                super::ob::plan_text(p).trim_end()
            ),
            StepPlan::Otp { write, lock } => {
                let mut parts = Vec::new();
                match (write, &step.action) {
                    (Some(w), _) => parts.push(super::otp::plan_text(w)),
                    (None, Action::Otp(o)) if o.write.is_some() => {
                        parts.push("the OTP already holds the data: nothing to write".into())
                    }
                    _ => {}
                }
                match (lock, &step.action) {
                    (Some(l), _) => parts.push(super::otp::lock_plan_text(l)),
                    (None, Action::Otp(o)) if o.lock.is_some() => {
                        parts.push("the block is already locked".into())
                    }
                    _ => {}
                }
                parts.join("\n")
            }
            StepPlan::Verify { bytes } => format!("would compare {bytes} bytes with the chip"),
            StepPlan::Go { address } => {
                format!("would start the application at 0x{address:08X}")
            }
        };
        let text = format!("{} {}: {body}", self.prefix(step.number), step.label());
        self.line(&text);
    }
}
