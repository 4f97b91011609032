//! Helpers shared by the integration tests: run the binary, inspect a simulated chip's state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use stm32boot::device::DeviceTable;
use stm32boot::sim::{Chip, SimSpec};

/// Run `stm32boot` with `args`; environment variables that would change defaults are cleared.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args(args)
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .output()
        .expect("the binary runs")
}

/// Run and require success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "stm32boot {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and require failure with `code`; returns stderr.
pub fn fails(args: &[&str], code: i32) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stm32boot {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A simulated chip whose state lives in a temporary directory.
pub struct SimChip {
    pub dir: tempfile::TempDir,
    pub part: String,
    pub options: String,
}

impl SimChip {
    pub fn new(part: &str) -> SimChip {
        SimChip::with_options(part, "")
    }

    /// Extra sim options, e.g. "version=0x33".
    pub fn with_options(part: &str, options: &str) -> SimChip {
        SimChip {
            dir: tempfile::tempdir().expect("temp dir"),
            part: part.to_string(),
            options: options.to_string(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("chip.sim")
    }

    pub fn port(&self) -> String {
        let mut p = format!("sim:{}?state={}", self.part, self.state().display());
        if !self.options.is_empty() {
            p.push('&');
            p.push_str(&self.options);
        }
        p
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The chip as the state file holds it now (a blank chip if nothing was saved yet).
    pub fn chip(&self) -> Chip {
        let port = self.port();
        let spec = SimSpec::parse(port.trim_start_matches("sim:")).expect("spec");
        let target = spec
            .build(DeviceTable::builtin().expect("table"))
            .expect("state loads");
        target.chip().clone()
    }

    /// Bytes of the chip's memory.
    pub fn peek(&self, addr: u32, len: usize) -> Vec<u8> {
        self.chip().peek(addr, len).expect("mapped")
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
