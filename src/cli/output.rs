//! What the CLI shows: indicatif progress bars on a terminal, notes on stderr, results as text
//! or one JSON object.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use stm32boot::ops::{Note, Progress, Stage};

/// Renders library progress.
pub struct Bars {
    bar: Option<ProgressBar>,
    enabled: bool,
    quiet: bool,
    trace: bool,
    /// Report progress to a gang parent: the size of the current stage and the last percent
    /// reported.
    gang: Option<(u64, Option<u64>)>,
    /// Notes, kept for the JSON result.
    pub notes: Vec<Note>,
}

impl Bars {
    /// Bars on stderr when it is a terminal and output is for a person.
    pub fn new(json: bool, quiet: bool) -> Bars {
        Bars {
            bar: None,
            enabled: !json && !quiet && std::io::stderr().is_terminal(),
            quiet: quiet || json,
            trace: false,
            gang: None,
            notes: Vec::new(),
        }
    }

    /// Trace the link's traffic on stderr (`--trace`): links are opened wrapped in a
    /// [`stm32boot::transport::trace::TraceLink`], and progress bars stay off, as redrawing
    /// them would garble the trace.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
        if on {
            self.enabled = false;
        }
    }

    /// Whether links are traced.
    pub fn trace(&self) -> bool {
        self.trace
    }

    /// In a gang child (see `super::gang`): report progress to the parent as JSON lines on
    /// stderr, `{"gang":{"stage":"writing","done":N,"total":M}}`, at the start and end of each
    /// stage and at most once per percent.
    pub fn report_to_gang(&mut self) {
        self.gang = Some((0, None));
    }

    /// Report `done` of the current stage to the gang parent, if this is a gang child and the
    /// percent changed (or `force`).
    fn gang_report(&mut self, stage: Stage, done: u64, force: bool) {
        let Some((total, last)) = &mut self.gang else {
            return;
        };
        let percent = done.saturating_mul(100) / (*total).max(1);
        if !force && *last == Some(percent) {
            return;
        }
        *last = Some(percent);
        let line = serde_json::json!({ "gang": { "stage": stage.label(), "done": done, "total": *total } });
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

impl Progress for Bars {
    fn start(&mut self, stage: Stage, total: u64) {
        if let Some(gang) = &mut self.gang {
            *gang = (total, None);
            self.gang_report(stage, 0, true);
        }
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = if stage == Stage::Erase {
            "{msg:>10} [{bar:30}] {pos}/{len} pages"
        } else {
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(stage.label());
        self.bar = Some(bar);
    }

    fn update(&mut self, stage: Stage, done: u64) {
        self.gang_report(stage, done, false);
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    fn finish(&mut self, stage: Stage) {
        if let Some((total, _)) = self.gang {
            self.gang_report(stage, total, true);
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn note(&mut self, note: Note) {
        if !self.quiet {
            if let Some(b) = &self.bar {
                b.suspend(|| print_note(&note));
            } else {
                print_note(&note);
            }
        }
        self.notes.push(note);
    }
}

fn print_note(note: &Note) {
    match note {
        Note::Warning(m) => eprintln!("warning: {m}"),
        Note::Info(m) => eprintln!("{m}"),
    }
}

/// Format a byte count as KiB/MiB.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}
