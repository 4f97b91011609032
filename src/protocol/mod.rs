//! AN3155 frames: command codes, checksums and the byte layout of every phase.
//!
//! This layer is pure: it builds and parses byte sequences and never touches I/O. The client
//! session and the simulated target both use these types, so a frame is defined exactly once.

pub mod crc;
pub mod frame;

pub use frame::*;
