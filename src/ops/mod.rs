//! Operations on a connected chip: identification, flash planning, erase, write, verify, read;
//! and job files, which run a list of them ([`job`], [`job_run`]).
//!
//! Planning is pure (see [`plan`]): it turns an image and a device into the exact pages to erase
//! and the blocks to write, and is tested without a chip. Execution reports progress through
//! [`Progress`] and never prints.

pub mod bank;
pub mod coeffs;
pub mod connect;
pub mod diagnose;
pub mod doctor;
pub mod flash;
pub mod job;
pub mod job_run;
pub mod journal;
pub mod option_bytes;
pub mod otp;
pub mod plan;
pub mod progress;

pub use connect::{connect, ConnectOptions, Connection};
pub use plan::{EraseStep, FlashPlan, PlanOptions, WriteBlock};
pub use progress::{NoProgress, Note, NoteLog, Progress, Stage};
