//! Progress and notes, reported through a callback trait so that the library never prints.

/// A long-running stage of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading memory.
    Read,
    /// Erasing pages.
    Erase,
    /// Writing blocks.
    Write,
    /// Verifying.
    Verify,
    /// Comparing pages with an image before writing (to skip the ones that already match).
    Check,
}

impl Stage {
    /// A verb for progress bars.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Read => "reading",
            Stage::Erase => "erasing",
            Stage::Write => "writing",
            Stage::Verify => "verifying",
            Stage::Check => "checking",
        }
    }
}

/// Something the user should know that is not an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum Note {
    /// Worth a warning.
    Warning(String),
    /// Plain information.
    Info(String),
}

/// Receives progress. Every method has an empty default.
pub trait Progress {
    /// A stage begins; `total` is in bytes (or pages, for erase).
    fn start(&mut self, _stage: Stage, _total: u64) {}
    /// `done` of the stage's total is complete.
    fn update(&mut self, _stage: Stage, _done: u64) {}
    /// The stage is over.
    fn finish(&mut self, _stage: Stage) {}
    /// A note for the user.
    fn note(&mut self, _note: Note) {}
}

/// Ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Collects notes (useful in tests and for JSON output).
#[derive(Debug, Default)]
pub struct NoteLog {
    /// Notes in order.
    pub notes: Vec<Note>,
}

impl Progress for NoteLog {
    fn note(&mut self, note: Note) {
        self.notes.push(note);
    }
}
