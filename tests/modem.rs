//! `modem:` ports against `stm32boot sim-modem` (a simulated AT modem on a pseudo-terminal)
//! dialling the simulator's raw TCP endpoint (`stm32boot sim PART --tcp`): each dialect's
//! sequence end to end, a connection dropped mid-write, and `+++` inside the payload.
//!
//! Parity: the TCP endpoint runs the chip's UART at 8E1 and the TCP hop carries plain bytes, so
//! the client's `--parity` (default even) is only recorded, as with `tcp://` ports.

mod common;

use common::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const FLASH: u32 = 0x0800_0000;

/// Generous: a run takes a few seconds (most of it the guard times of the hang-up).
const LIMIT: Duration = Duration::from_secs(300);

/// `stm32boot sim-modem --pty --link DIR/NAME`, its stderr logged to DIR/NAME.log. Dropping it
/// sends SIGTERM and waits.
struct ModemSim {
    child: Option<Child>,
    link: PathBuf,
    log: PathBuf,
}

impl ModemSim {
    fn start(dir: &Path, name: &str, profile: &str, extra: &[&str]) -> ModemSim {
        let link = dir.join(name);
        let log = dir.join(format!("{name}.log"));
        let mut args = vec![
            "sim-modem",
            "--profile",
            profile,
            "--pty",
            "--link",
            path_str(&link),
        ];
        args.extend(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("modem log"))
            .spawn()
            .expect("the modem starts");
        let stdout = child.stdout.take().expect("modem stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let modem = ModemSim {
            child: Some(child),
            link,
            log,
        };
        assert_eq!(
            first.trim(),
            path_str(&modem.link),
            "the modem should print its link first; its log:\n{}",
            modem.log()
        );
        modem
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `modem:` port that dials the simulator `sim` through this modem.
    fn port(&self, profile: &str, sim: &SimProcess, extra: &str) -> String {
        let addr = sim
            .first_line
            .strip_prefix("tcp://")
            .expect("a tcp:// endpoint");
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let apn = if profile == "hayes" {
            ""
        } else {
            "&apn=internet"
        };
        format!(
            "modem:{}?profile={profile}{apn}&host={host}&port={port}{extra}",
            self.link.display()
        )
    }
}

impl Drop for ModemSim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            wait_for(&mut child, Duration::from_secs(60));
        }
    }
}

/// `stm32boot sim PART --tcp 127.0.0.1:0` for `chip`.
fn tcp_sim(chip: &SimChip) -> SimProcess {
    let sim = SimProcess::start(chip, &["--tcp", "127.0.0.1:0"], &[]);
    assert!(
        sim.first_line.starts_with("tcp://127.0.0.1:"),
        "sim printed '{}': {}",
        sim.first_line,
        sim.log()
    );
    sim
}

/// Run `stm32boot` (environment as `common::run`, the journal in the chip's directory), killed
/// after [`LIMIT`]: a hang fails the test instead of stalling it.
fn stm(chip: &SimChip, args: &[&str]) -> Output {
    let state = chip.file("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let (out, err) = (chip.file("run.stdout"), chip.file("run.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args(args)
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .env_remove("STM32BOOT_JOURNAL")
        .env("STM32BOOT_STATE_DIR", &state)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("the binary runs");
    let status = wait_for(&mut child, LIMIT)
        .unwrap_or_else(|| panic!("stm32boot {args:?} still ran after {LIMIT:?}"));
    Output {
        status,
        stdout: std::fs::read(&out).expect("stdout file"),
        stderr: std::fs::read(&err).expect("stderr file"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_args<'a>(file: &'a Path, port: &'a str) -> Vec<&'a str> {
    vec![
        "write",
        path_str(file),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        port,
    ]
}

/// A verified write through a `profile` modem; the modem's log must show `dialect`.
fn verified_write_through(profile: &str, dialect: &[&str]) {
    let chip = SimChip::new("stm32f411");
    let sim = tcp_sim(&chip);
    let modem = ModemSim::start(chip.dir.path(), "modem", profile, &[]);
    let image = pattern(20_000, 3);
    let file = chip.file("fw.bin");
    std::fs::write(&file, &image).expect("image");
    let port = modem.port(profile, &sim, "");
    let out = stm(&chip, &write_args(&file, &port));
    assert!(
        out.status.success(),
        "{profile}: write failed ({:?}):\n{}\nmodem:\n{}\nsim:\n{}",
        out.status.code(),
        text(&out.stderr),
        modem.log(),
        sim.log()
    );
    let log = modem.log();
    for cmd in dialect {
        assert!(
            log.contains(cmd),
            "{profile}: no {cmd} in the modem's log:\n{log}"
        );
    }
    assert!(log.contains("hung up"), "{profile}: no hang-up:\n{log}");
    drop(modem);
    sim.stop();
    assert_eq!(chip.peek(FLASH, image.len()), image, "{profile}");
}

#[test]
fn telit_modem_takes_a_verified_write() {
    verified_write_through(
        "telit",
        &[
            "AT command: ATE0",
            "AT command: AT+CGDCONT=1,\"IP\",\"internet\"",
            "AT command: AT#SGACT=1,1",
            "AT command: AT#SCFG=1,1,300,0,600,256",
            "AT command: AT#SKIPESC=1",
            "AT command: AT#SD=1,0,",
            "escape: +++",
            "AT command: AT#SH=1",
        ],
    );
}

#[test]
fn simcom_modem_takes_a_verified_write() {
    verified_write_through(
        "simcom",
        &[
            "AT command: AT+CIPSHUT",
            "AT command: AT+CIPMODE=1",
            "AT command: AT+CIPCCFG=5,2,1,1",
            "AT command: AT+CSTT=\"internet\"",
            "AT command: AT+CIICR",
            "AT command: AT+CIFSR",
            "AT command: AT+CIPSTART=\"TCP\",\"127.0.0.1\",",
            "escape: +++",
            "AT command: AT+CIPCLOSE",
        ],
    );
}

#[test]
fn ublox_modem_takes_a_verified_write() {
    verified_write_through(
        "ublox",
        &[
            "AT command: AT+CGACT=1,1",
            "AT command: AT+USOCR=6",
            "AT command: AT+USOCO=0,\"127.0.0.1\",",
            "AT command: AT+UDCONF=5,0,100",
            "AT command: AT+USODL=0",
            "AT command: AT+USOCL=0",
        ],
    );
}

#[test]
fn quectel_modem_takes_a_verified_write() {
    verified_write_through(
        "quectel",
        &[
            "AT command: AT+QICSGP=1,1,\"internet\",\"\",\"\",1",
            "AT command: AT+QIACT=1",
            "AT command: AT+QICFG=\"transwaittm\",0",
            "AT command: AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",",
            "AT command: AT+QICLOSE=0",
        ],
    );
}

#[test]
fn hayes_modem_takes_a_verified_write() {
    verified_write_through("hayes", &["AT command: ATDT127.0.0.1:", "AT command: ATH"]);
}

#[test]
fn a_connection_dropped_mid_write_fails_cleanly_and_a_fresh_run_finishes() {
    for (profile, report) in [("telit", "NO CARRIER"), ("simcom", "CLOSED")] {
        let chip = SimChip::new("stm32f411");
        let image = pattern(20_000, 4);
        let file = chip.file("fw.bin");
        std::fs::write(&file, &image).expect("image");
        let sim = tcp_sim(&chip);
        // The cut falls inside the Write Memory frames.
        let modem = ModemSim::start(chip.dir.path(), "modem", profile, &["--cut-after", "6000"]);
        let port = modem.port(profile, &sim, "");
        let out = stm(&chip, &write_args(&file, &port));
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{profile}: expected a link failure:\n{err}\nmodem:\n{}",
            modem.log()
        );
        assert!(
            err.contains(&format!("the modem reported {report}")) && err.contains("dropped"),
            "{profile}: {err}"
        );
        assert!(modem.log().contains("--cut-after"), "{profile}");
        drop(modem);
        // The ROM was cut mid-frame and waits for the rest of it until it is reset (links.md
        // §6.3): restart the simulator, as a power cycle would, from its saved state.
        sim.stop();
        let sim = tcp_sim(&chip);
        let modem = ModemSim::start(chip.dir.path(), "modem2", profile, &[]);
        let port = modem.port(profile, &sim, "");
        let out = stm(&chip, &write_args(&file, &port));
        assert!(
            out.status.success(),
            "{profile}: the second run failed:\n{}\nmodem:\n{}",
            text(&out.stderr),
            modem.log()
        );
        drop(modem);
        sim.stop();
        assert_eq!(chip.peek(FLASH, image.len()), image, "{profile}");
    }
}

/// An image full of `2B 2B 2B` runs: at block starts and ends, alone, four in a row.
fn plus_heavy_image(len: usize) -> Vec<u8> {
    let mut image = pattern(len, 9);
    for block in image.chunks_mut(256) {
        block[..3].copy_from_slice(b"+++");
        let n = block.len();
        block[n - 3..].copy_from_slice(b"+++");
        for i in (16..n - 16).step_by(29) {
            block[i..i + 3].copy_from_slice(b"+++");
        }
        block[100..104].copy_from_slice(b"++++");
    }
    image
}

#[test]
fn plus_plus_plus_in_the_image_goes_through_with_a_short_guard_time() {
    for profile in ["telit", "simcom"] {
        let chip = SimChip::new("stm32f411");
        let sim = tcp_sim(&chip);
        let modem = ModemSim::start(chip.dir.path(), "modem", profile, &["--guard", "200ms"]);
        let image = plus_heavy_image(16 * 1024);
        let file = chip.file("fw.bin");
        std::fs::write(&file, &image).expect("image");
        let port = modem.port(profile, &sim, "&guard=200ms");
        let out = stm(&chip, &write_args(&file, &port));
        assert!(
            out.status.success(),
            "{profile}: write failed:\n{}\nmodem:\n{}",
            text(&out.stderr),
            modem.log()
        );
        let log = modem.log();
        // The only escape is the client's own, at the end.
        assert_eq!(log.matches("escape: +++").count(), 1, "{profile}:\n{log}");
        if profile == "telit" {
            assert!(log.contains("AT command: ATS12=10"), "{log}");
        }
        drop(modem);
        sim.stop();
        assert_eq!(chip.peek(FLASH, image.len()), image, "{profile}");
    }
}

#[test]
fn a_failed_dial_names_the_command_the_answer_and_a_fix() {
    let chip = SimChip::new("stm32f411");
    let modem = ModemSim::start(chip.dir.path(), "modem", "telit", &["--fail-dial"]);
    let port = format!(
        "modem:{}?profile=telit&apn=internet&host=127.0.0.1&port=9",
        modem.link.display()
    );
    let out = stm(&chip, &["info", "--port", &port]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for want in ["AT#SD=1,0,9,\"127.0.0.1\",0,0,0", "NO CARRIER", "host="] {
        assert!(err.contains(want), "no {want} in: {err}");
    }
}

#[test]
fn modem_port_mistakes_are_explained() {
    let err = fails(
        &["info", "--port", "modem:/dev/null?apn=x&host=h&port=1"],
        2,
    );
    assert!(err.contains("profile=") && err.contains("quectel"), "{err}");
    let err = fails(
        &[
            "info",
            "--port",
            "modem:/dev/null?profile=telit&apn=x&host=h&port=1&speed=9600",
        ],
        2,
    );
    assert!(err.contains("speed") && err.contains("baud"), "{err}");
}
