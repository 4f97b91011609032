//! Helpers shared by the integration tests: run the binary, inspect a simulated chip's state.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use stm32boot::device::DeviceTable;
use stm32boot::sim::{Chip, SimSpec};

/// Run `stm32boot` with `args`; environment variables that would change defaults are cleared.
/// The page journal goes to a fresh directory per call unless the test passes `--journal`.
///
/// Failed exchanges are not repeated (`STM32BOOT_RETRIES=0`): the tests that inject a fault
/// here check what happens when it stands (the journal, `recover`, the error named). How
/// retries absorb faults is tested in tests/soak.rs and tests/retries.rs.
pub fn run(args: &[&str]) -> Output {
    let state = tempfile::tempdir().expect("temp dir");
    Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args(args)
        .env("STM32BOOT_RETRIES", "0")
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .env_remove("STM32BOOT_JOURNAL")
        .env("STM32BOOT_STATE_DIR", state.path())
        // No user stm32boot.toml of the person running the tests.
        .env("XDG_CONFIG_HOME", state.path())
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

    /// Put old content into the chip's flash directly (as an earlier firmware would have left
    /// it), so that a write has to erase.
    #[allow(dead_code)]
    pub fn fill(&self, addr: u32, data: &[u8]) {
        let mut chip = self.chip();
        chip.write(stm32boot::sim::chip::Area::Flash, addr, data);
        stm32boot::sim::state::save(&chip, &self.state()).expect("state saves");
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

/// The path of the external program `name`, or a test failure saying how to install it: tests
/// that need a third-party client fail rather than pass silently when it is missing.
pub fn require_tool(name: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH: install {install} (CI's .ci/run installs it)")
        })
}

/// Wait for `child` up to `limit`; kill it and return None if it is still running then.
pub fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("child status") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Run `program` with `args`, its output going through files in `dir` (so a chatty program
/// cannot block on a full pipe); None if it runs longer than `limit`.
pub fn run_with_limit(
    program: &Path,
    args: &[&str],
    dir: &Path,
    limit: Duration,
) -> Option<Output> {
    let (out, err) = (dir.join("client.stdout"), dir.join("client.stderr"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("the program starts");
    let status = wait_for(&mut child, limit)?;
    Some(Output {
        status,
        stdout: std::fs::read(&out).expect("stdout file"),
        stderr: std::fs::read(&err).expect("stderr file"),
    })
}

/// `stm32boot sim PART ENDPOINT_ARGS --state FILE EXTRA` for a [`SimChip`], its stderr logged to
/// `chip.file("sim.log")`. Dropping it sends SIGTERM and waits, so that the state file is saved
/// even when a test fails; [`SimProcess::stop`] does the same and also requires a clean exit.
pub struct SimProcess {
    child: Option<Child>,
    /// The first line the sim printed on stdout (trimmed; empty if none came within 60 s).
    pub first_line: String,
    log: PathBuf,
}

impl SimProcess {
    pub fn start(chip: &SimChip, endpoint_args: &[&str], extra: &[&str]) -> SimProcess {
        let log = chip.file("sim.log");
        let state = chip.state();
        let mut args = vec!["sim", chip.part.as_str()];
        args.extend(endpoint_args);
        args.extend(["--state", path_str(&state)]);
        args.extend(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("sim log"))
            .spawn()
            .expect("the sim starts");
        // Read the first line in a thread, so that a sim that never prints cannot hang the test;
        // the thread then keeps draining stdout so that the sim never writes to a closed pipe.
        let stdout = child.stdout.take().expect("sim stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        SimProcess {
            child: Some(child),
            first_line: line.trim().to_string(),
            log,
        }
    }

    /// What the sim wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (a minute at most, then SIGKILL). None if it had to be killed or was
    /// already stopped.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        wait_for(&mut child, Duration::from_secs(60))
    }

    /// Stop with SIGTERM and require a clean exit: the state file is saved.
    pub fn stop(mut self) {
        let status = self.terminate();
        let status = status.expect("the sim stops within 60 s of SIGTERM");
        assert!(
            status.success(),
            "sim exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A [`SimProcess`] serving a [`SimChip`] (its part, options and state file) on a pseudo-terminal
/// linked at `chip.file("tty")`.
pub struct PtySim {
    sim: SimProcess,
    /// The stable link to the pseudo-terminal: what clients open.
    pub link: PathBuf,
}

impl PtySim {
    pub fn start(chip: &SimChip) -> PtySim {
        let link = chip.file("tty");
        let mut flags = Vec::new();
        for kv in chip.options.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("version", v)) => flags.extend(["--bootloader-version", v]),
                Some(("flash", v)) => flags.extend(["--flash-size", v]),
                _ => panic!("sim option {kv} has no `stm32boot sim` flag"),
            }
        }
        let sim = SimProcess::start(chip, &["--pty", "--link", path_str(&link)], &flags);
        assert_eq!(
            sim.first_line,
            path_str(&link),
            "the sim should print its link first; its log:\n{}",
            sim.log()
        );
        PtySim { sim, link }
    }

    /// What the sim wrote to stderr so far.
    pub fn log(&self) -> String {
        self.sim.log()
    }

    /// Stop with SIGTERM and require a clean exit: the state file is saved.
    pub fn stop(self) {
        self.sim.stop();
    }
}

/// Run `stm32boot` with `args` in the working directory `dir`, with the variables `run` clears
/// cleared (and `STM32BOOT_CONFIG`), the user configuration directory pointed at an empty
/// temporary directory, and then `env` set (which may set `XDG_CONFIG_HOME` to another one).
pub fn run_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let state = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stm32boot"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .env_remove("STM32BOOT_JOURNAL")
        .env_remove("STM32BOOT_BEFORE")
        .env_remove("STM32BOOT_AFTER")
        .env_remove("STM32BOOT_CONFIG")
        .env("STM32BOOT_STATE_DIR", state.path())
        .env("XDG_CONFIG_HOME", state.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}
