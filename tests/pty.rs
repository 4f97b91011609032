//! The simulated target on a pseudo-terminal, driven by our own serial transport.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Sim {
    child: Child,
    path: String,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .arg("sim")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("path line");
        Sim {
            child,
            path: line.trim().to_string(),
        }
    }

    /// Stop with SIGTERM and wait, so that the state is saved.
    fn stop(mut self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = self.child.wait().expect("exit");
        assert!(status.success(), "sim exited with {status}");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serial_transport_drives_the_pty_endpoint_and_state_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("chip.sim");
    let link = dir.path().join("ttySIM");
    let sim = Sim::start(&[
        "stm32f411",
        "--pty",
        "--state",
        path_str(&state),
        "--link",
        path_str(&link),
    ]);
    assert_eq!(sim.path, path_str(&link));
    let port = sim.path.clone();
    let info = ok(&["info", "--port", &port, "--parity", "none"]);
    assert!(
        info.contains("STM32F411") && info.contains("PID 0x431"),
        "{info}"
    );
    let bin = dir.path().join("fw.bin");
    std::fs::write(&bin, pattern(3000, 42)).unwrap();
    // DTR/RTS cannot be driven on a pty: a warning, not an error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args([
            "write",
            path_str(&bin),
            "-a",
            "0x08000000",
            "--verify",
            "--port",
            &port,
            "--parity",
            "none",
            "--dtr",
            "low",
            "--rts",
            "low",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: DTR left as it was"), "{stderr}");
    ok(&[
        "verify",
        path_str(&bin),
        "-a",
        "0x08000000",
        "--port",
        &port,
        "--parity",
        "none",
    ]);
    sim.stop();
    assert!(!link.exists(), "the stable link is removed on exit");
    let spec =
        stm32boot::sim::SimSpec::parse(&format!("stm32f411?state={}", state.display())).unwrap();
    let target = spec
        .build(stm32boot::device::DeviceTable::builtin().unwrap())
        .unwrap();
    assert_eq!(
        target.chip().peek(0x0800_0000, 3000).unwrap(),
        pattern(3000, 42)
    );
}
