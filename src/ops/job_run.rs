//! Carrying out a [`Job`] on a connected chip, step by step, reporting [`Event`]s to a
//! [`JobSink`] (the library never prints), and saving its progress so that a run cut off by a
//! link or power loss can be resumed.
//!
//! **Checks first.** Before the first step runs, every step that will run is checked against
//! the connected part (pages exist, images fit its flash, layouts fit its page map, option
//! names exist on it, OTP blocks exist): a job that cannot finish sends nothing that changes
//! the chip.
//!
//! **Saved progress.** With a state directory, a file per job and chip
//! (`jobs/HASH-UID.json`, keyed by [`Job::hash`] and the chip's unique ID) records each step as
//! started and then finished, with its result, written durably before the next step begins.
//! A later run of the same job on the same chip skips finished steps ([`Event::StepSkipped`]);
//! a write step that was started but not finished runs with
//! [`WriteOptions::skip_matching_pages`], so pages that already hold their content are neither
//! erased nor written again, and the page journal finishes a partly covered page that the cut
//! left half-done. A coefficient step that was started leaves alone a block that already
//! holds its values, and OTP steps leave bytes that already hold their data and blocks that
//! are already locked. The file goes when the job finishes. Parts without a unique ID keep no
//! state (another chip of the same type would inherit it).

use crate::device::Device;
use crate::error::{Error, Finding, Result};
use crate::image::Image;
use crate::ops::coeffs::{self, check_device, slot_name, Layout, Values};
use crate::ops::connect::Connection;
use crate::ops::diagnose::{self, Failure, Operation};
use crate::ops::flash::{self, ErasePlan, VerifyMethod, WriteOptions};
use crate::ops::job::{Action, CoeffsSource, CoeffsStep, Job, OtpStep, Step, WriteStep};
use crate::ops::journal::{write_durably, ChipKey};
use crate::ops::option_bytes::{self, Confirmation, ObPlan, SetOptions};
use crate::ops::otp::{self, OtpLayout, OtpLockPlan, OtpTarget, OtpWritePlan};
use crate::ops::plan::FlashPlan;
use crate::ops::progress::{Note, Progress, Stage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// How to run a job.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Plan every step and change nothing ([`JobSink::planned`] receives the plans).
    pub dry_run: bool,
    /// Where to save progress (a `jobs` directory is made in it); `None`: no resume.
    pub state_dir: Option<PathBuf>,
    /// Ignore saved progress (and remove it): run every step.
    pub restart: bool,
    /// The page journal directory for write and coefficient steps (`None`: no journal).
    pub journal: Option<PathBuf>,
}

/// What happens during a job, in order; with `--json`, one JSON object per line
/// (`{"event": "step_started", …}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The chip is connected and the job begins.
    JobStarted {
        /// The job file.
        job: String,
        /// The job's name.
        name: Option<String>,
        /// How many steps it has.
        steps: usize,
        /// The connected part.
        part: String,
        /// Its unique ID in hex, if it has one.
        uid: Option<String>,
        /// Nothing will be changed.
        dry_run: bool,
        /// Saved progress was found: finished steps will be skipped.
        resumed: bool,
        /// The state file, if progress is saved.
        state: Option<String>,
    },
    /// A step begins.
    StepStarted {
        /// Step number, from 1.
        step: usize,
        /// Its name, if given.
        name: Option<String>,
        /// Its kind.
        #[serde(rename = "do")]
        kind: String,
        /// A short description.
        label: String,
        /// The step was started by an earlier run that was cut off.
        resumed: bool,
    },
    /// Progress of the running step: at most one event per percent of each phase, and one at
    /// its end.
    Progress {
        /// Step number.
        step: usize,
        /// read, erase, write, verify or check.
        phase: Stage,
        /// Done so far (bytes; pages for erase).
        done: u64,
        /// Total.
        total: u64,
    },
    /// Worth a warning.
    Warning {
        /// The step, if during one.
        step: Option<usize>,
        /// What.
        message: String,
    },
    /// Plain information.
    Info {
        /// The step, if during one.
        step: Option<usize>,
        /// What.
        message: String,
    },
    /// A step is done.
    StepFinished {
        /// Step number.
        step: usize,
        /// Its name, if given.
        name: Option<String>,
        /// Its kind.
        #[serde(rename = "do")]
        kind: String,
        /// One line for people.
        summary: String,
        /// What it did (depends on the kind).
        result: Value,
    },
    /// A step finished by an earlier run of this job on this chip.
    StepSkipped {
        /// Step number.
        step: usize,
        /// Its name, if given.
        name: Option<String>,
        /// Its kind.
        #[serde(rename = "do")]
        kind: String,
        /// Why.
        reason: String,
        /// What it did then.
        summary: Option<String>,
        /// Its result then.
        result: Option<Value>,
    },
    /// A dry run's plan of a step.
    StepPlanned {
        /// Step number.
        step: usize,
        /// Its name, if given.
        name: Option<String>,
        /// Its kind.
        #[serde(rename = "do")]
        kind: String,
        /// What the step would do.
        plan: Value,
    },
    /// The job failed; always the last event of a failed job.
    Error {
        /// The step, if during one.
        step: Option<usize>,
        /// [`Error::code`]: a stable code for scripts.
        code: String,
        /// What went wrong.
        message: String,
        /// The process exit code ([`Error::exit_code`]).
        exit_code: u8,
        /// What the chip's settings say about it.
        findings: Vec<Finding>,
    },
    /// The job is done; always the last event of a successful job.
    JobFinished {
        /// Always true (a failed job ends with [`Event::Error`]).
        ok: bool,
        /// Steps in the job.
        steps: usize,
        /// Steps skipped because an earlier run had finished them.
        skipped: usize,
        /// Nothing was changed.
        dry_run: bool,
    },
}

impl Event {
    /// The error event for a failure (at `step`, if during one).
    pub fn error(step: Option<usize>, error: &Error) -> Event {
        let findings = match error {
            Error::Diagnosed { findings, .. } => findings.clone(),
            _ => Vec::new(),
        };
        Event::Error {
            step,
            code: error.code().to_string(),
            message: error.to_string(),
            exit_code: error.exit_code(),
            findings,
        }
    }
}

/// What a dry run found each step would do.
#[derive(Debug, Clone)]
pub enum StepPlan {
    /// The pages an erase step erases.
    Erase(Box<ErasePlan>),
    /// A write step's flash plan.
    Write {
        /// The plan.
        plan: FlashPlan,
        /// Whether partly covered pages are kept.
        preserve: bool,
        /// Whether pages that already hold their content will be left out at run time.
        skip_matching: bool,
    },
    /// Where a coefficient block goes.
    Coeffs(Box<coeffs::WritePlan>),
    /// Option byte changes.
    OptionBytes(Box<ObPlan>),
    /// An OTP write (none if the bytes already hold the data) and lock (none if already
    /// locked).
    Otp {
        /// The write.
        write: Option<Box<OtpWritePlan>>,
        /// The lock.
        lock: Option<Box<OtpLockPlan>>,
    },
    /// Bytes a verify step compares.
    Verify {
        /// Bytes.
        bytes: u64,
    },
    /// Where a go step starts the application.
    Go {
        /// Vector table address.
        address: u32,
    },
}

/// Receives a job's events.
pub trait JobSink {
    /// An event, in order.
    fn event(&mut self, event: Event);
    /// A dry run's plan of a step, for rendering; by default reported as
    /// [`Event::StepPlanned`] with a summary of the plan.
    fn planned(&mut self, step: &Step, device: &Device, plan: &StepPlan) {
        let plan = plan_summary(device, plan);
        self.event(Event::StepPlanned {
            step: step.number,
            name: step.name.clone(),
            kind: step.kind().into(),
            plan,
        });
    }
}

/// A plan as JSON: the pages erased (by index), bytes written, and the kind's details.
pub fn plan_summary(device: &Device, plan: &StepPlan) -> Value {
    match plan {
        StepPlan::Erase(p) => json!({
            "pages": p.pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            "bank": p.bank,
        }),
        StepPlan::Write {
            plan,
            preserve,
            skip_matching,
        } => json!({
            "pages_to_erase": plan.erase.iter().flat_map(|s| s.pages(device).iter().map(|p| p.index)).collect::<Vec<_>>(),
            "partial_pages": plan.partial_pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            "blocks": plan.blocks.len(),
            "bytes": plan.bytes_to_write(),
            "skipped_blocks": plan.skipped_blocks,
            "preserve": preserve,
            "skip_matching_pages": skip_matching,
        }),
        StepPlan::Coeffs(p) => json!({
            "slot": slot_name(p.slot),
            "address": format!("0x{:08X}", p.address),
            "sequence": p.sequence,
            "bytes": p.block.len(),
            "pages_to_erase": p.flash.pages.iter().map(|p| p.index).collect::<Vec<_>>(),
        }),
        StepPlan::OptionBytes(p) => json!({
            "changes": p.changes,
            "writes": p.writes,
        }),
        StepPlan::Otp { write, lock } => json!({
            "write": write.as_ref().map(|w| json!({ "address": format!("0x{:08X}", w.address), "length": w.data.len() })),
            "lock": lock.as_ref().map(|l| l.block.index),
        }),
        StepPlan::Verify { bytes } => json!({ "bytes": bytes }),
        StepPlan::Go { address } => json!({ "address": format!("0x{address:08X}") }),
    }
}

/// How a job run ended badly: the step (if during one) and the error.
#[derive(Debug)]
pub struct JobFailure {
    /// The step, if during one.
    pub step: Option<usize>,
    /// What went wrong.
    pub error: Error,
}

impl From<Error> for JobFailure {
    fn from(error: Error) -> Self {
        JobFailure { step: None, error }
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// Steps in the job.
    pub steps: usize,
    /// Steps skipped because an earlier run had finished them.
    pub skipped: usize,
}

/// One step's record in the state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct StepRecord {
    step: usize,
    #[serde(rename = "do")]
    kind: String,
    finished: bool,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    result: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    job: String,
    hash: String,
    chip: ChipKey,
    steps: Vec<StepRecord>,
}

const STATE_VERSION: u32 = 1;

/// The saved progress of one job on one chip.
#[derive(Debug)]
pub struct JobState {
    path: PathBuf,
    file: StateFile,
}

impl JobState {
    /// Open the progress of `job` on `chip` under `dir` (`dir/jobs/HASH-UID.json`); empty if
    /// there is none.
    pub fn open(dir: &Path, job: &Job, chip: ChipKey) -> Result<JobState> {
        let name = format!(
            "{}-{}",
            &job.hash[..16.min(job.hash.len())],
            chip.file_name()
        );
        let path = dir.join("jobs").join(name);
        let fresh = StateFile {
            version: STATE_VERSION,
            job: job.path.display().to_string(),
            hash: job.hash.clone(),
            chip: chip.clone(),
            steps: Vec::new(),
        };
        let file = if path.exists() {
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::io(format!("reading the job state {}", path.display()), e))?;
            let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidRequest(format!(
                    "the job state {} is damaged ({e}): remove it, or run with --restart",
                    path.display()
                ))
            })?;
            if file.version != STATE_VERSION || file.hash != job.hash || file.chip != chip {
                fresh
            } else {
                file
            }
        } else {
            fresh
        };
        Ok(JobState { path, file })
    }

    /// Where it is saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether any step was started before.
    pub fn has_progress(&self) -> bool {
        !self.file.steps.is_empty()
    }

    fn record(&self, step: usize) -> Option<&StepRecord> {
        self.file.steps.iter().find(|r| r.step == step)
    }

    /// Whether `step` was finished by an earlier run.
    pub fn finished(&self, step: usize) -> bool {
        self.record(step).is_some_and(|r| r.finished)
    }

    /// Whether `step` was started, and not finished, by an earlier run.
    pub fn interrupted(&self, step: usize) -> bool {
        self.record(step).is_some_and(|r| !r.finished)
    }

    fn set(&mut self, record: StepRecord) -> Result<()> {
        self.file.steps.retain(|r| r.step != record.step);
        self.file.steps.push(record);
        self.file.steps.sort_by_key(|r| r.step);
        self.save()
    }

    fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                format!("creating the job state directory {}", dir.display()),
                e,
            )
        })?;
        let json = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| Error::InvalidRequest(format!("encoding the job state: {e}")))?;
        write_durably(&self.path, &json, "the job state")
    }

    /// Forget all progress (the file is removed).
    pub fn clear(&mut self) -> Result<()> {
        self.file.steps.clear();
        if self.path.exists() {
            std::fs::remove_file(&self.path).map_err(|e| {
                Error::io(format!("removing the job state {}", self.path.display()), e)
            })?;
        }
        Ok(())
    }
}

/// Reports a step's progress as rate-limited [`Event::Progress`] and its notes as warnings.
struct StepProgress<'a> {
    sink: &'a mut dyn JobSink,
    step: usize,
    total: u64,
    last: Option<u64>,
}

impl<'a> StepProgress<'a> {
    fn new(sink: &'a mut dyn JobSink, step: usize) -> Self {
        StepProgress {
            sink,
            step,
            total: 0,
            last: None,
        }
    }

    fn emit(&mut self, stage: Stage, done: u64) {
        self.last = Some(done);
        self.sink.event(Event::Progress {
            step: self.step,
            phase: stage,
            done,
            total: self.total,
        });
    }

    fn percent(&self, done: u64) -> u64 {
        (done.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(100)
    }
}

impl Progress for StepProgress<'_> {
    fn start(&mut self, stage: Stage, total: u64) {
        self.total = total;
        self.emit(stage, 0);
    }

    fn update(&mut self, stage: Stage, done: u64) {
        let due = match self.last {
            Some(last) => self.percent(done) > self.percent(last) || done >= self.total,
            None => true,
        };
        if due && self.last != Some(done) {
            self.emit(stage, done);
        }
    }

    fn finish(&mut self, stage: Stage) {
        if self.last != Some(self.total) {
            self.emit(stage, self.total);
        }
        self.last = None;
    }

    fn note(&mut self, note: Note) {
        let step = Some(self.step);
        self.sink.event(match note {
            Note::Warning(message) => Event::Warning { step, message },
            Note::Info(message) => Event::Info { step, message },
        });
    }
}

/// Run `job` on `conn`: check every step against the part, then carry out (or, with
/// `dry_run`, plan) each one, skipping those an earlier run finished. Events go to `sink`; the
/// caller reports a failure (see [`Event::error`]) and leaves the chip ([`Connection::finish`]).
pub fn run_job(
    conn: &mut Connection,
    job: &Job,
    options: &RunOptions,
    sink: &mut dyn JobSink,
) -> std::result::Result<JobSummary, JobFailure> {
    let uid = conn.unique_id()?;
    let mut state = match (&options.state_dir, uid) {
        (Some(dir), Some(uid)) => {
            let key = ChipKey::new(Some(uid), conn.device.pid, &conn.device.name);
            let mut s = JobState::open(dir, job, key)?;
            if options.restart && !options.dry_run {
                s.clear()?;
            }
            Some(s)
        }
        (Some(_), None) => {
            sink.event(Event::Warning {
                step: None,
                message: format!(
                    "the unique ID of this {} cannot be read (the part has none, or read \
                     protection hides it): progress is not saved, so a run that is cut off \
                     starts over",
                    conn.device.name
                ),
            });
            None
        }
        (None, _) => None,
    };
    if options.restart && options.dry_run {
        if let Some(s) = &mut state {
            s.file.steps.clear();
        }
    }
    let resumed = state.as_ref().is_some_and(JobState::has_progress);
    sink.event(Event::JobStarted {
        job: job.path.display().to_string(),
        name: job.name.clone(),
        steps: job.steps.len(),
        part: conn.device.name.clone(),
        uid: uid.map(|u| u.iter().map(|b| format!("{b:02X}")).collect()),
        dry_run: options.dry_run,
        resumed,
        state: state.as_ref().map(|s| s.path().display().to_string()),
    });
    let done = |n: usize| state.as_ref().is_some_and(|s| s.finished(n));
    for step in job.steps.iter().filter(|s| !done(s.number)) {
        preflight(conn, step).map_err(|error| JobFailure {
            step: Some(step.number),
            error,
        })?;
    }
    let mut skipped = 0;
    for step in &job.steps {
        let fail = |error: Error| JobFailure {
            step: Some(step.number),
            error,
        };
        if let Some(rec) = state
            .as_ref()
            .and_then(|s| s.record(step.number))
            .filter(|r| r.finished)
        {
            skipped += 1;
            sink.event(Event::StepSkipped {
                step: step.number,
                name: step.name.clone(),
                kind: step.kind().into(),
                reason: "finished by an earlier run of this job on this chip".into(),
                summary: rec.summary.clone(),
                result: rec.result.clone(),
            });
            continue;
        }
        let interrupted = state.as_ref().is_some_and(|s| s.interrupted(step.number));
        if options.dry_run {
            let plan = {
                let mut p = StepProgress::new(sink, step.number);
                plan_step(conn, step, interrupted, &mut p).map_err(fail)?
            };
            let device = conn.device.clone();
            sink.planned(step, &device, &plan);
            continue;
        }
        if let Some(s) = &mut state {
            s.set(StepRecord {
                step: step.number,
                kind: step.kind().into(),
                finished: false,
                summary: None,
                result: None,
            })
            .map_err(fail)?;
        }
        sink.event(Event::StepStarted {
            step: step.number,
            name: step.name.clone(),
            kind: step.kind().into(),
            label: step.label(),
            resumed: interrupted,
        });
        let (summary, result) = {
            let mut p = StepProgress::new(sink, step.number);
            run_step(conn, step, options, interrupted, &mut p).map_err(fail)?
        };
        if let Some(s) = &mut state {
            s.set(StepRecord {
                step: step.number,
                kind: step.kind().into(),
                finished: true,
                summary: Some(summary.clone()),
                result: Some(result.clone()),
            })
            .map_err(fail)?;
        }
        sink.event(Event::StepFinished {
            step: step.number,
            name: step.name.clone(),
            kind: step.kind().into(),
            summary,
            result,
        });
    }
    if !options.dry_run {
        if let Some(s) = &mut state {
            s.clear()?;
        }
    }
    sink.event(Event::JobFinished {
        ok: true,
        steps: job.steps.len(),
        skipped,
        dry_run: options.dry_run,
    });
    Ok(JobSummary {
        steps: job.steps.len(),
        skipped,
    })
}

/// The image a write step writes on this part (moved into another bank if asked).
fn write_image_for(conn: &Connection, w: &WriteStep) -> Result<Image> {
    match w.bank {
        Some(b) => crate::ops::bank::relocate_to_bank(&conn.device, &w.image, b),
        None => Ok(w.image.clone()),
    }
}

fn write_options(conn: &Connection, w: &WriteStep, journal: Option<PathBuf>) -> WriteOptions {
    let mut options = WriteOptions::for_connection(conn);
    options.verify = w.verify;
    options.plan.erase = !w.no_erase;
    options.plan.skip_erased_blocks = !w.no_skip;
    options.preserve = !w.no_preserve && !w.no_erase;
    options.protect = w.protect.clone();
    options.force = w.force;
    options.journal = journal;
    options.skip_matching_pages = w.skip_unchanged;
    options
}

/// Check a step against the connected part, sending nothing that changes it.
fn preflight(conn: &Connection, step: &Step) -> Result<()> {
    let device = &conn.device;
    match &step.action {
        Action::Erase { target, expand } => {
            flash::plan_erase(conn, target, *expand)?;
        }
        Action::Write(w) => {
            let image = write_image_for(conn, w)?;
            let options = write_options(conn, w, None);
            let plan = flash::plan_write(conn, &image, &options.plan)?;
            flash::check_protected(&plan, &options)?;
        }
        Action::Coeffs(c) => {
            check_device(&c.layout, device)?;
            if let CoeffsSource::Values { values, .. } = &c.source {
                values.check(&c.layout)?;
            }
        }
        Action::OptionBytes { set, .. } => {
            let layout = option_bytes::layout(device)?;
            if let Some((name, _)) = set.iter().find(|(n, _)| layout.field(n).is_none()) {
                return Err(Error::InvalidRequest(format!(
                    "{} has no option called {name}; `stm32boot ob show` lists its options",
                    device.name
                )));
            }
        }
        Action::Otp(o) => {
            let layout = OtpLayout::for_device(device)?;
            if let Some(w) = &o.write {
                otp_address(&layout, w.target, w.data.len())?;
            }
            if let Some(b) = o.lock {
                if b >= layout.count {
                    return Err(Error::InvalidRequest(format!(
                        "the OTP of the {} has blocks 0-{}: there is no block {b}",
                        device.name,
                        layout.count.saturating_sub(1)
                    )));
                }
            }
        }
        Action::Verify { .. } | Action::Go { .. } => {}
    }
    Ok(())
}

fn otp_address(layout: &OtpLayout, target: Option<OtpTarget>, len: usize) -> Result<u32> {
    match target {
        Some(OtpTarget::Address(a)) => Ok(a),
        Some(OtpTarget::Block(b, off)) => layout.address_in_block(b, off, len),
        None => Err(Error::InvalidRequest(
            "say where the OTP data goes: block = N or address = A".into(),
        )),
    }
}

/// Whether the OTP already holds `data` at `address` (a resumed step wrote it).
fn otp_holds(state: &otp::OtpState, address: u32, data: &[u8]) -> bool {
    state.layout.data.contains_span(address, data.len() as u64)
        && state.bytes(address, data.len()) == data
}

/// The values a coefficient step writes on this chip.
fn coeff_values(conn: &mut Connection, c: &CoeffsStep) -> Result<(Values, String)> {
    Ok(match &c.source {
        CoeffsSource::Values { file, values } => (values.clone(), file.display().to_string()),
        CoeffsSource::Row { table, index } => {
            let row = &table.rows[*index];
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
        CoeffsSource::Uid(table) => {
            let uid = conn.unique_id()?.ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the unique ID of this {} cannot be read (the part has none, or read \
                     protection hides it): use key = COLUMN with serial = VALUE",
                    conn.device.name
                ))
            })?;
            let row = table.find_uid(&uid)?;
            (
                row.values.clone(),
                format!("line {} of {} (uid {})", row.line, table.origin, row.key),
            )
        }
    })
}

/// What a dry run shows for a step (reads the chip, changes nothing).
fn plan_step(
    conn: &mut Connection,
    step: &Step,
    interrupted: bool,
    progress: &mut dyn Progress,
) -> Result<StepPlan> {
    Ok(match &step.action {
        Action::Erase { target, expand } => {
            let plan = flash::plan_erase(conn, target, *expand)?;
            if let Some(g) = &plan.grown {
                progress.note(Note::Warning(format!("range grown to whole pages: {g}")));
            }
            StepPlan::Erase(Box::new(plan))
        }
        Action::Write(w) => {
            let image = write_image_for(conn, w)?;
            let options = write_options(conn, w, None);
            let plan = flash::plan_write(conn, &image, &options.plan)?;
            StepPlan::Write {
                plan,
                preserve: options.preserve,
                skip_matching: w.skip_unchanged || interrupted,
            }
        }
        Action::Coeffs(c) => {
            let (values, _) = coeff_values(conn, c)?;
            StepPlan::Coeffs(Box::new(coeffs::plan_write(
                conn, &c.layout, &values, progress,
            )?))
        }
        Action::OptionBytes {
            set,
            allow_permanent_lock,
        } => {
            let before = option_bytes::read(conn)?;
            let plan = option_bytes::plan_set(
                &conn.device,
                &before,
                set,
                SetOptions {
                    allow_permanent_lock: *allow_permanent_lock,
                },
            )?;
            for w in &plan.warnings {
                progress.note(Note::Warning(w.clone()));
            }
            StepPlan::OptionBytes(Box::new(plan))
        }
        Action::Otp(o) => {
            let (write, lock) = plan_otp(conn, o, progress)?;
            StepPlan::Otp {
                write: write.map(Box::new),
                lock: lock.map(Box::new),
            }
        }
        Action::Verify { image, .. } => StepPlan::Verify {
            bytes: image.total_len(),
        },
        Action::Go { address } => StepPlan::Go {
            address: address.unwrap_or(conn.device.flash.start),
        },
    })
}

/// The OTP write (none if the bytes already hold the data) and lock (none if already locked).
fn plan_otp(
    conn: &mut Connection,
    o: &OtpStep,
    progress: &mut dyn Progress,
) -> Result<(Option<OtpWritePlan>, Option<OtpLockPlan>)> {
    let state = otp::read_state(conn, progress)?;
    let write = match &o.write {
        Some(w) => {
            let address = otp_address(&state.layout, w.target, w.data.len())?;
            if otp_holds(&state, address, &w.data) {
                None
            } else {
                let plan = otp::plan_write(&conn.device, &state, address, &w.data)?;
                for n in &plan.notes {
                    progress.note(n.clone());
                }
                Some(plan)
            }
        }
        None => None,
    };
    let lock = match o.lock {
        Some(b) => {
            let plan = otp::plan_lock(&conn.device, &state, b)?;
            (!plan.already_locked).then_some(plan)
        }
        None => None,
    };
    Ok((write, lock))
}

fn verified_text(v: Option<VerifyMethod>) -> &'static str {
    match v {
        Some(VerifyMethod::Crc) => ", verified by CRC (Get Checksum)",
        Some(VerifyMethod::ReadBack) => ", verified by reading back",
        None => "",
    }
}

/// Carry out one step; returns a line for people and the result as JSON.
fn run_step(
    conn: &mut Connection,
    step: &Step,
    options: &RunOptions,
    interrupted: bool,
    progress: &mut dyn Progress,
) -> Result<(String, Value)> {
    match &step.action {
        Action::Erase { target, expand } => {
            let plan = flash::plan_erase(conn, target, *expand)?;
            if let Some(g) = &plan.grown {
                progress.note(Note::Warning(format!("range grown to whole pages: {g}")));
            }
            let indices: Vec<u16> = plan.pages.iter().map(|p| p.index).collect();
            diagnose::check_writable(conn, &indices, Operation::Erase)?;
            let erased = match flash::run_erase_plan(conn, &plan, progress) {
                Ok(n) => n,
                Err(e) if diagnose::worth_diagnosing(&e) => {
                    let failure = Failure {
                        op: Operation::Erase,
                        range: None,
                        bank_given: true,
                    };
                    return Err(diagnose::diagnosed(conn, &failure, e));
                }
                Err(e) => return Err(e),
            };
            Ok((
                format!(
                    "erased {erased} page(s) ({})",
                    option_bytes::page_runs(&indices)
                ),
                json!({ "pages_erased": erased, "pages": indices }),
            ))
        }
        Action::Write(w) => {
            let image = write_image_for(conn, w)?;
            let mut wo = write_options(conn, w, options.journal.clone());
            if interrupted && !wo.skip_matching_pages {
                wo.skip_matching_pages = true;
                progress.note(Note::Info(
                    "resuming a write that was cut off: pages that already hold their content \
                     are left alone"
                        .into(),
                ));
            }
            let plan = flash::plan_write(conn, &image, &wo.plan)?;
            flash::check_protected(&plan, &wo)?;
            let pages = flash::pages_touched(&conn.device, &plan);
            diagnose::check_writable(conn, &pages, Operation::Write)?;
            let report = match flash::write_image(conn, &image, &wo, progress) {
                Ok(r) => r,
                Err(e) if diagnose::worth_diagnosing(&e) => {
                    let failure = Failure {
                        op: Operation::Write,
                        range: image.start().zip(image.end()),
                        bank_given: w.bank.is_some(),
                    };
                    return Err(diagnose::diagnosed(conn, &failure, e));
                }
                Err(e) => return Err(e),
            };
            let mut extra = String::new();
            if report.pages_preserved > 0 {
                extra.push_str(&format!(
                    ", {} partly covered page(s) kept",
                    report.pages_preserved
                ));
            }
            if report.pages_unchanged > 0 {
                extra.push_str(&format!(
                    ", {} page(s) already held their content",
                    report.pages_unchanged
                ));
            }
            let file = w.file.display().to_string();
            Ok((
                format!(
                    "wrote {} bytes of {file} in {} blocks ({} page(s) erased{extra}){}",
                    image.total_len(),
                    report.blocks_written,
                    report.pages_erased,
                    verified_text(report.verified)
                ),
                json!({ "file": file, "bytes": image.total_len(), "report": report }),
            ))
        }
        Action::Coeffs(c) => run_coeffs(conn, c, options, interrupted, progress),
        Action::OptionBytes {
            set,
            allow_permanent_lock,
        } => {
            let before = option_bytes::read(conn)?;
            let plan = option_bytes::plan_set(
                &conn.device,
                &before,
                set,
                SetOptions {
                    allow_permanent_lock: *allow_permanent_lock,
                },
            )?;
            for w in &plan.warnings {
                progress.note(Note::Warning(w.clone()));
            }
            let report = option_bytes::apply(conn, &plan, progress)?;
            let changes: Vec<String> = plan
                .changes
                .iter()
                .map(|c| format!("{} {} -> {}", c.name, c.before, c.after))
                .collect();
            let how = match report.confirmed {
                Confirmation::ReadBack => "the chip reset, was re-synced and reads them back",
                Confirmation::ReadProtected => "read protection is now active",
                Confirmation::NotReachable => "the chip now boots its flash (not re-synced)",
                Confirmation::Unchanged => "nothing needed writing",
            };
            Ok((
                if changes.is_empty() {
                    format!("option bytes already as asked: {how}")
                } else {
                    format!("option bytes {}: {how}", changes.join(", "))
                },
                json!({ "changes": plan.changes, "windows_written": report.windows_written, "confirmed": report.confirmed }),
            ))
        }
        Action::Otp(o) => {
            let (write, lock) = plan_otp(conn, o, progress)?;
            let mut parts = Vec::new();
            let mut result = json!({});
            if let Some(plan) = &write {
                let report = otp::write(conn, plan, progress)?;
                parts.push(format!(
                    "wrote {} OTP bytes at 0x{:08X}, verified by reading back",
                    report.length, report.address
                ));
                result["write"] = json!(report);
            } else if let Some(w) = &o.write {
                parts.push(format!(
                    "the OTP already holds the {} bytes of {}",
                    w.data.len(),
                    w.from
                ));
                result["write"] = json!({ "already_written": true });
            }
            if let Some(plan) = &lock {
                let report = otp::lock_block(conn, plan, progress)?;
                parts.push(format!("locked OTP block {}", report.block));
                result["lock"] = json!({ "block": report.block, "written": report.written, "verified": report.verified });
            } else if let Some(b) = o.lock {
                parts.push(format!("OTP block {b} was already locked"));
                result["lock"] = json!({ "block": b, "already_locked": true });
            }
            Ok((parts.join("; "), result))
        }
        Action::Verify { file, image } => {
            let method = match flash::verify_image(conn, image, progress) {
                Ok(m) => m,
                Err(e) if diagnose::worth_diagnosing(&e) => {
                    let failure = Failure {
                        op: Operation::Verify,
                        range: image.start().zip(image.end()),
                        bank_given: false,
                    };
                    return Err(diagnose::diagnosed(conn, &failure, e));
                }
                Err(e) => return Err(e),
            };
            Ok((
                format!(
                    "{} matches the chip ({} bytes, by {})",
                    file.display(),
                    image.total_len(),
                    match method {
                        VerifyMethod::Crc => "CRC",
                        VerifyMethod::ReadBack => "reading back",
                    }
                ),
                json!({ "file": file, "bytes": image.total_len(), "method": method }),
            ))
        }
        Action::Go { address } => {
            let addr = address.unwrap_or(conn.device.flash.start);
            conn.session.go(addr)?;
            Ok((
                format!("started the application at 0x{addr:08X}"),
                json!({ "address": addr }),
            ))
        }
    }
}

fn run_coeffs(
    conn: &mut Connection,
    c: &CoeffsStep,
    options: &RunOptions,
    interrupted: bool,
    progress: &mut dyn Progress,
) -> Result<(String, Value)> {
    let (values, from) = coeff_values(conn, c)?;
    let layout: &Layout = &c.layout;
    if interrupted {
        // The cut-off run may have written the block already: then it is active.
        if let Some(dir) = &options.journal {
            let mut journal = flash::open_journal(conn, dir)?;
            if !journal.pending().is_empty() {
                flash::recover(conn, &mut journal, flash::RecoverMode::Finish, progress)?;
            }
        }
        let report = coeffs::read_slots(conn, layout, progress)?;
        if let Some((slot, sequence, held)) = report.active_block() {
            if *held == values {
                return Ok((
                    format!(
                        "{} already holds these values (slot {}, sequence {sequence})",
                        layout.name,
                        slot_name(slot)
                    ),
                    json!({ "layout": layout.name, "slot": slot_name(slot), "sequence": sequence, "already_written": true, "source": from }),
                ));
            }
        }
    }
    let mut wo = WriteOptions::for_connection(conn);
    wo.journal = options.journal.clone();
    let done = coeffs::write_block(conn, layout, &values, &wo, progress)?;
    let plan = &done.plan;
    Ok((
        format!(
            "wrote {} (sequence {}, CRC 0x{:08X}) to slot {} at 0x{:08X}, values from {from}{}",
            layout.name,
            plan.sequence,
            plan.crc,
            slot_name(plan.slot),
            plan.address,
            verified_text(done.report.verified)
        ),
        json!({
            "layout": layout.name, "slot": slot_name(plan.slot),
            "address": format!("0x{:08X}", plan.address), "sequence": plan.sequence,
            "crc": format!("0x{:08X}", plan.crc), "source": from, "report": done.report,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Log(Vec<Event>);

    impl JobSink for Log {
        fn event(&mut self, event: Event) {
            self.0.push(event);
        }
    }

    #[test]
    fn progress_is_rate_limited_to_one_event_per_percent() {
        let mut log = Log(Vec::new());
        {
            let mut p = StepProgress::new(&mut log, 2);
            p.start(Stage::Write, 100_000);
            for done in (0..=100_000).step_by(256) {
                p.update(Stage::Write, done);
            }
            p.update(Stage::Write, 100_000);
            p.finish(Stage::Write);
            p.note(Note::Warning("careful".into()));
        }
        let progress: Vec<u64> = log
            .0
            .iter()
            .filter_map(|e| match e {
                Event::Progress { done, step: 2, .. } => Some(*done),
                _ => None,
            })
            .collect();
        assert_eq!(progress.first(), Some(&0));
        assert_eq!(progress.last(), Some(&100_000));
        assert!(progress.len() <= 102, "{}", progress.len());
        assert!(progress.windows(2).all(|w| w[0] < w[1]));
        assert!(matches!(
            log.0.last(),
            Some(Event::Warning { step: Some(2), .. })
        ));
    }

    #[test]
    fn events_serialize_with_their_names() {
        let e = Event::StepStarted {
            step: 1,
            name: None,
            kind: "write".into(),
            label: "write fw.hex".into(),
            resumed: false,
        };
        let v = serde_json::to_value(&e).expect("test setup");
        assert_eq!(v["event"], "step_started");
        assert_eq!(v["do"], "write");
        let e = Event::error(Some(3), &Error::InvalidRequest("bad".into()));
        let v = serde_json::to_value(&e).expect("test setup");
        assert_eq!(v["event"], "error");
        assert_eq!(v["code"], "invalid-request");
        assert_eq!(v["exit_code"], 2);
        let v = serde_json::to_value(Event::Progress {
            step: 1,
            phase: Stage::Check,
            done: 1,
            total: 2,
        })
        .expect("test setup");
        assert_eq!(v["phase"], "check");
    }

    #[test]
    fn state_is_per_job_and_chip_and_a_changed_job_starts_afresh() {
        let dir = tempfile::tempdir().expect("test setup");
        let fw = dir.path().join("fw.bin");
        std::fs::write(&fw, [1u8; 64]).expect("test setup");
        let path = dir.path().join("job.toml");
        let text = "[[step]]\ndo = \"write\"\nfile = \"fw.bin\"\naddress = 0x08000000\n";
        let job = Job::from_toml(text, &path).expect("test setup");
        let chip = ChipKey::new(Some([7; 12]), 0x431, "STM32F411");
        let mut s = JobState::open(dir.path(), &job, chip.clone()).expect("test setup");
        assert!(!s.has_progress());
        s.set(StepRecord {
            step: 1,
            kind: "write".into(),
            finished: false,
            summary: None,
            result: None,
        })
        .expect("test setup");
        let again = JobState::open(dir.path(), &job, chip.clone()).expect("test setup");
        assert!(again.interrupted(1) && !again.finished(1));
        let other_chip = ChipKey::new(Some([8; 12]), 0x431, "STM32F411");
        assert!(!JobState::open(dir.path(), &job, other_chip)
            .expect("test setup")
            .has_progress());
        let changed = Job::from_toml(&format!("{text}verify = true\n"), &path).expect("test setup");
        assert!(!JobState::open(dir.path(), &changed, chip.clone())
            .expect("test setup")
            .has_progress());
        s.clear().expect("test setup");
        assert!(!JobState::open(dir.path(), &job, chip)
            .expect("test setup")
            .has_progress());
    }
}
