//! `stm32boot relay` in front of the simulator's pseudo-terminal, and our clients through it
//! (`relay://`, `relay-listen://`). Every refusal is checked at the chip: the simulator's exit
//! report counts the bytes that reached it (`bytes_to_device`), which must stay 0.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use stm32boot::relay::auth::{self, Direction, Key, LineReader, RelayLine, Response};

const FLASH: u32 = 0x0800_0000;
const KEY: &str = "7f3a9c1e5b2d8f4061a7c3e9b5d1f2a8c4e6b0d9f3a7c5e1";
const LONG: Duration = Duration::from_secs(120);

/// The simulator on a pseudo-terminal, run with `--json` so that its exit report says how many
/// bytes reached the chip.
struct Sim {
    child: Option<Child>,
    chip: SimChip,
    tty: PathBuf,
}

impl Sim {
    fn start() -> Sim {
        let chip = SimChip::new("stm32f411");
        let tty = chip.file("tty");
        let child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(["--json", "sim", "stm32f411", "--pty", "--link"])
            .arg(&tty)
            .arg("--state")
            .arg(chip.state())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(chip.file("sim.out")).expect("test setup"))
            .stderr(std::fs::File::create(chip.file("sim.err")).expect("test setup"))
            .spawn()
            .expect("the sim starts");
        let deadline = Instant::now() + LONG;
        while !tty.exists() {
            assert!(
                Instant::now() < deadline,
                "the sim did not create {}: {}",
                tty.display(),
                std::fs::read_to_string(chip.file("sim.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sim {
            child: Some(child),
            chip,
            tty,
        }
    }

    fn dir(&self) -> &Path {
        self.chip.dir.path()
    }

    /// Stop with SIGTERM; the bytes that reached the chip, from the exit report.
    fn stop(mut self) -> (u64, SimChip) {
        let mut child = self.child.take().expect("test setup");
        sigterm(&child);
        let status = wait_for(&mut child, LONG).expect("the sim stops");
        assert!(status.success(), "sim exited with {status}");
        let out = std::fs::read_to_string(self.chip.file("sim.out")).expect("test setup");
        let report: serde_json::Value =
            serde_json::from_str(out.lines().last().expect("a report")).expect("JSON report");
        let bytes = report["bytes_to_device"].as_u64().expect("bytes_to_device");
        let chip = std::mem::replace(&mut self.chip, SimChip::new("stm32f411"));
        (bytes, chip)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// `stm32boot relay` in front of a simulator, its log (at -vv) in a file.
struct Relay {
    child: Option<Child>,
    /// The first line it printed: `relay://127.0.0.1:PORT` (or `relay-listen://…`).
    url: String,
    log: PathBuf,
}

impl Relay {
    fn start(sim: &Sim, key_file: &Path, extra: &[&str]) -> Relay {
        Relay::start_with(sim, key_file, &["--listen", "127.0.0.1:0"], extra)
    }

    fn start_with(sim: &Sim, key_file: &Path, endpoint: &[&str], extra: &[&str]) -> Relay {
        let log = sim.dir().join(format!("relay-{}.log", rand_suffix()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(["relay", "-vv", "--port"])
            .arg(&sim.tty)
            .arg("--key-file")
            .arg(key_file)
            .args(endpoint)
            .args(extra)
            .env_remove("STM32BOOT_RELAY_KEY")
            .env_remove("STM32BOOT_RELAY_KEY_FILE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("test setup"))
            .spawn()
            .expect("the relay starts");
        let stdout = child.stdout.take().expect("test setup");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let url = rx.recv_timeout(LONG).unwrap_or_default().trim().to_string();
        let relay = Relay {
            child: Some(child),
            url,
            log,
        };
        assert!(
            relay.url.starts_with("relay"),
            "the relay should print its URL first; its log:\n{}",
            relay.log()
        );
        relay
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> &str {
        self.url.split_once("://").expect("a URL").1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `text` (a condition, not a duration; the limit only stops a
    /// broken test).
    fn wait_log(&self, text: &str, count: usize) {
        let deadline = Instant::now() + LONG;
        while self.log().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "the relay never logged {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop with SIGTERM and require a clean exit; returns the log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("test setup");
        sigterm(&child);
        let status = wait_for(&mut child, LONG).expect("the relay stops");
        assert!(
            status.success(),
            "relay exited with {status}:\n{}",
            self.log()
        );
        self.log()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn write_key(dir: &Path, name: &str, key: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{key}\n")).expect("test setup");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("test setup");
    path
}

/// Run a client with `key_file` in STM32BOOT_RELAY_KEY_FILE (or no key at all).
fn client(args: &[&str], key_file: Option<&Path>) -> Output {
    let state = tempfile::tempdir().expect("test setup");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stm32boot"));
    cmd.args(args)
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .env_remove("STM32BOOT_JOURNAL")
        .env_remove("STM32BOOT_RELAY_KEY")
        .env_remove("STM32BOOT_RELAY_KEY_FILE")
        .env("STM32BOOT_STATE_DIR", state.path());
    if let Some(k) = key_file {
        cmd.env("STM32BOOT_RELAY_KEY_FILE", k);
    }
    cmd.output().expect("the client runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn expect_exit(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    stderr(out)
}

/// Read one handshake line from a raw connection.
fn read_relay_line(s: &mut TcpStream) -> Option<RelayLine> {
    let mut reader = LineReader::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) => {}
            _ => return None,
        }
        if let Some(line) = reader.push(byte[0]).expect("a relay line") {
            return Some(RelayLine::parse(&line).expect("a relay line"));
        }
    }
}

fn raw_connect(relay: &Relay) -> TcpStream {
    let s = TcpStream::connect(relay.addr()).expect("test setup");
    s.set_read_timeout(Some(LONG)).expect("test setup");
    s
}

/// Authenticate on a raw connection as a client holding `key`; returns the answer line sent.
fn authenticate(s: &mut TcpStream, key: &Key) -> String {
    let Some(RelayLine::Challenge(relay_nonce)) = read_relay_line(s) else {
        panic!("no challenge");
    };
    let client_nonce = auth::fresh_nonce().expect("test setup");
    let answer = Response::new(key, Direction::ToRelay, &relay_nonce, client_nonce).encode();
    s.write_all(answer.as_bytes()).expect("test setup");
    match read_relay_line(s) {
        Some(RelayLine::Ok(tag)) => {
            assert!(
                key.verify_relay(Direction::ToRelay, &relay_nonce, &client_nonce, &tag),
                "the relay's proof"
            );
        }
        other => panic!("not accepted: {other:?}"),
    }
    answer
}

fn test_key() -> Key {
    Key::from_bytes(KEY.as_bytes(), "the test").expect("test setup")
}

fn eof_after(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    rest
}

fn info_args(url: &str) -> Vec<String> {
    ["info", "--port", url, "--parity", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run_info(url: &str, key_file: Option<&Path>) -> Output {
    let args = info_args(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    client(&args, key_file)
}

#[test]
fn a_verified_write_through_the_relay_reaches_the_chip() {
    let sim = Sim::start();
    let key = write_key(sim.dir(), "key", KEY, 0o600);
    let relay = Relay::start(&sim, &key, &[]);
    let image = pattern(6000, 7);
    let file = sim.dir().join("fw.bin");
    std::fs::write(&file, &image).expect("test setup");
    let out = client(
        &[
            "write",
            path_str(&file),
            "-a",
            "0x08000000",
            "--verify",
            "--port",
            &relay.url,
            "--parity",
            "none",
        ],
        Some(&key),
    );
    expect_exit(&out, 0);
    let info = run_info(&relay.url, Some(&key));
    expect_exit(&info, 0);
    assert!(String::from_utf8_lossy(&info.stdout).contains("STM32F411"));
    // Parity on a pseudo-terminal: the relay reports the parity in effect (none), and the
    // client says what to do.
    let even = client(&["info", "--port", &relay.url], Some(&key));
    let text = expect_exit(&even, 3);
    assert!(text.contains("--parity none"), "{text}");
    let log = relay.stop();
    assert!(log.contains("authenticated"), "{log}");
    let (bytes, chip) = sim.stop();
    assert!(bytes > 6000, "{bytes} bytes reached the chip");
    assert_eq!(chip.peek(FLASH, image.len()), image);
}

#[test]
fn no_key_and_a_wrong_key_are_refused_and_nothing_reaches_the_chip() {
    let sim = Sim::start();
    let key = write_key(sim.dir(), "key", KEY, 0o600);
    let wrong = write_key(sim.dir(), "wrong", "this-is-not-the-relay-key-0123", 0o600);
    let relay = Relay::start(&sim, &key, &[]);

    let none = run_info(&relay.url, None);
    let text = expect_exit(&none, 3);
    assert!(text.contains("no relay key configured"), "{text}");
    assert!(text.contains("STM32BOOT_RELAY_KEY_FILE"), "{text}");

    let bad = run_info(&relay.url, Some(&wrong));
    let text = expect_exit(&bad, 3);
    assert!(text.contains("the relay refused the key"), "{text}");
    relay.wait_log("authentication failed", 1);
    let log = relay.stop();
    assert!(log.contains("127.0.0.1:"), "the peer is logged: {log}");
    assert!(log.contains("wrong proof"), "{log}");
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn a_replayed_answer_is_refused_and_nothing_reaches_the_chip() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let relay = Relay::start(&sim, &key_file, &[]);
    let key = test_key();

    // A valid exchange, recorded; the session ends without sending anything.
    let mut first = raw_connect(&relay);
    let recorded = authenticate(&mut first, &key);
    first.shutdown(Shutdown::Write).expect("test setup");
    eof_after(&mut first);
    relay.wait_log("closed the session", 1);

    // The same answer on a new connection, with AN3155 bytes right behind it.
    let mut replay = raw_connect(&relay);
    let Some(RelayLine::Challenge(_)) = read_relay_line(&mut replay) else {
        panic!("no challenge");
    };
    replay.write_all(recorded.as_bytes()).expect("test setup");
    let _ = replay.write_all(&[0x7F, 0x00, 0xFF]);
    assert_eq!(read_relay_line(&mut replay), Some(RelayLine::Denied));
    eof_after(&mut replay);
    relay.wait_log("authentication failed", 1);
    let log = relay.stop();
    assert!(log.contains("wrong proof"), "{log}");
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn a_second_client_is_told_busy_and_nothing_of_it_reaches_the_chip() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let relay = Relay::start(&sim, &key_file, &[]);

    let mut first = raw_connect(&relay);
    authenticate(&mut first, &test_key());
    relay.wait_log("authenticated; serving", 1);

    // A raw second connection gets BUSY instead of a challenge; our client says so.
    let mut second = raw_connect(&relay);
    second.write_all(&[0x7F]).expect("test setup");
    assert_eq!(read_relay_line(&mut second), Some(RelayLine::Busy));
    eof_after(&mut second);
    let busy = run_info(&relay.url, Some(&key_file));
    let text = expect_exit(&busy, 3);
    assert!(text.contains("busy with another client"), "{text}");

    first.shutdown(Shutdown::Write).expect("test setup");
    eof_after(&mut first);
    relay.stop();
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn garbage_and_an3155_before_authentication_are_refused() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let relay = Relay::start(&sim, &key_file, &[]);

    // AN3155 sync and a Get, without reading the challenge: refused at the first byte.
    let mut raw = raw_connect(&relay);
    raw.write_all(&[0x7F, 0x00, 0xFF]).expect("test setup");
    assert!(matches!(
        read_relay_line(&mut raw),
        Some(RelayLine::Challenge(_))
    ));
    assert_eq!(read_relay_line(&mut raw), Some(RelayLine::Denied));
    eof_after(&mut raw);
    relay.wait_log("authentication failed", 1);

    // Clients that skip the handshake: a raw byte pipe and RFC 2217. Whether they meet a
    // challenge they cannot answer or the backoff, they fail.
    for url in [
        format!("tcp://{}", relay.addr()),
        format!("rfc2217://{}", relay.addr()),
    ] {
        let out = run_info(&url, Some(&key_file));
        assert!(!out.status.success(), "{url} got through: {}", stderr(&out));
    }
    let log = relay.stop();
    assert!(log.contains("byte 0x7F"), "{log}");
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn after_a_failure_the_peer_is_refused_without_a_challenge() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let wrong = write_key(sim.dir(), "wrong", "this-is-not-the-relay-key-0123", 0o600);
    // A backoff far longer than the test: the refusal does not depend on timing.
    let relay = Relay::start(&sim, &key_file, &["--auth-backoff", "1h"]);
    let bad = run_info(&relay.url, Some(&wrong));
    expect_exit(&bad, 3);
    relay.wait_log("authentication failed", 1);

    let mut again = raw_connect(&relay);
    assert_eq!(read_relay_line(&mut again), Some(RelayLine::RetryLater));
    eof_after(&mut again);
    // Even with the right key, for now.
    let right = run_info(&relay.url, Some(&key_file));
    let text = expect_exit(&right, 3);
    assert!(text.contains("refuses this address for now"), "{text}");
    let log = relay.stop();
    assert!(
        log.contains("further attempts from 127.0.0.1 are refused"),
        "{log}"
    );
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn the_key_never_appears_in_the_logs() {
    let sim = Sim::start();
    // Readable by others: the relay warns, without showing the key.
    let key_file = write_key(sim.dir(), "key", KEY, 0o644);
    let wrong_key = "ffffeeeeddddccccbbbbaaaa99998888";
    let wrong = write_key(sim.dir(), "wrong", wrong_key, 0o600);
    let relay = Relay::start(&sim, &key_file, &[]);
    let good = client(
        &["-vv", "info", "--port", &relay.url, "--parity", "none"],
        Some(&key_file),
    );
    let good_log = expect_exit(&good, 0);
    relay.wait_log("closed the session", 1);
    let bad = client(
        &["-vv", "info", "--port", &relay.url, "--parity", "none"],
        Some(&wrong),
    );
    let bad_log = expect_exit(&bad, 3);
    relay.wait_log("authentication failed", 1);
    let log = relay.stop();
    assert!(log.contains("can be read by other users"), "{log}");
    let key_hex = stm32boot::relay::auth::hex(KEY.as_bytes());
    for (name, text) in [
        ("relay", &log),
        ("client", &good_log),
        ("bad client", &bad_log),
    ] {
        for secret in [KEY, &key_hex[..32], wrong_key] {
            assert!(
                !text.contains(secret),
                "the {name} log shows a key:\n{text}"
            );
        }
        assert!(
            !text.contains("RESPONSE"),
            "the {name} log shows a proof:\n{text}"
        );
    }
    sim.stop();
}

#[test]
fn the_port_is_locked_against_other_local_programs() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let relay = Relay::start(&sim, &key_file, &[]);

    // Our own serial transport (serialport: TIOCEXCL and flock).
    let out = client(
        &["info", "--port", path_str(&sim.tty), "--parity", "none"],
        None,
    );
    let text = expect_exit(&out, 3);
    let lower = text.to_lowercase();
    assert!(lower.contains("lock") || lower.contains("busy"), "{text}");
    // Any program using serialport.
    assert!(serialport::new(path_str(&sim.tty), 115_200).open().is_err());
    // A second relay says what is wrong.
    let second = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args([
            "relay",
            "--port",
            path_str(&sim.tty),
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .expect("test setup");
    let text = expect_exit(&second, 3);
    assert!(text.contains("another program has the port open"), "{text}");

    // Still served through the relay.
    let info = run_info(&relay.url, Some(&key_file));
    expect_exit(&info, 0);
    relay.stop();
    sim.stop();
}

#[test]
fn a_relay_dials_out_to_a_waiting_client() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("test setup");
        l.local_addr().expect("test setup").port()
    };
    let image = pattern(3000, 3);
    let file = sim.dir().join("fw.bin");
    std::fs::write(&file, &image).expect("test setup");
    let url = format!("relay-listen://127.0.0.1:{port}?wait=2m");
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args(["write", path_str(&file), "-a", "0x08000000", "--verify"])
        .args(["--port", &url, "--parity", "none"])
        .env_remove("STM32BOOT_RELAY_KEY")
        .env("STM32BOOT_RELAY_KEY_FILE", &key_file)
        .env("STM32BOOT_STATE_DIR", sim.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(sim.dir().join("client.err")).expect("test setup"))
        .spawn()
        .expect("test setup");
    // The relay dials until the client listens; --once makes it exit after the session.
    let target = format!("127.0.0.1:{port}");
    let mut relay = Relay::start_with(&sim, &key_file, &["--connect", &target], &["--once"]);
    assert_eq!(relay.url, format!("relay-listen://{target}"));
    let status = wait_for(&mut waiting, LONG).expect("the client finishes");
    let client_err = std::fs::read_to_string(sim.dir().join("client.err")).unwrap_or_default();
    assert!(status.success(), "{client_err}\nrelay:\n{}", relay.log());
    let mut child = relay.child.take().expect("test setup");
    let exited = wait_for(&mut child, LONG).expect("the relay exits after one session");
    assert!(exited.success(), "{}", relay.log());
    let (bytes, chip) = sim.stop();
    assert!(bytes > 3000);
    assert_eq!(chip.peek(FLASH, image.len()), image);
}

/// `stm32boot sim-modem --profile PROFILE --pty --link DIR/modem` (copied from tests/modem.rs),
/// its stderr in DIR/modem.log. Dropping it sends SIGTERM and waits.
struct ModemSim {
    child: Option<Child>,
    link: PathBuf,
    log: PathBuf,
}

impl ModemSim {
    fn start(dir: &Path, profile: &str) -> ModemSim {
        let link = dir.join("modem");
        let log = dir.join("modem.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(["sim-modem", "--profile", profile, "--pty", "--link"])
            .arg(&link)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("test setup"))
            .spawn()
            .expect("the modem starts");
        let stdout = child.stdout.take().expect("test setup");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let first = rx.recv_timeout(LONG).unwrap_or_default();
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

    /// Wait until the log contains `text` (a condition; the limit only stops a broken test).
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + LONG;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the modem never logged {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ModemSim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(&child);
            wait_for(&mut child, LONG);
        }
    }
}

#[test]
fn a_relay_dials_out_through_a_modem_to_a_waiting_client() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let modem = ModemSim::start(sim.dir(), "telit");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("test setup");
        l.local_addr().expect("test setup").port()
    };
    let image = pattern(3000, 5);
    let file = sim.dir().join("fw.bin");
    std::fs::write(&file, &image).expect("test setup");
    let url = format!("relay-listen://127.0.0.1:{port}?wait=2m");
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args(["write", path_str(&file), "-a", "0x08000000", "--verify"])
        .args(["--port", &url, "--parity", "none"])
        .env_remove("STM32BOOT_RELAY_KEY")
        .env("STM32BOOT_RELAY_KEY_FILE", &key_file)
        .env("STM32BOOT_STATE_DIR", sim.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(sim.dir().join("client.err")).expect("test setup"))
        .spawn()
        .expect("test setup");
    // The relay dials through the modem until the client listens; --once: one session.
    let target = format!(
        "modem:{}?profile=telit&apn=internet&host=127.0.0.1&port={port}",
        modem.link.display()
    );
    let mut relay = Relay::start_with(&sim, &key_file, &["--connect", &target], &["--once"]);
    assert_eq!(relay.url, format!("relay-listen://127.0.0.1:{port}"));
    let status = wait_for(&mut waiting, LONG).expect("the client finishes");
    let client_err = std::fs::read_to_string(sim.dir().join("client.err")).unwrap_or_default();
    assert!(
        status.success(),
        "{client_err}\nrelay:\n{}\nmodem:\n{}",
        relay.log(),
        modem.log()
    );
    let mut child = relay.child.take().expect("test setup");
    let exited = wait_for(&mut child, LONG).expect("the relay exits after one session");
    assert!(exited.success(), "{}", relay.log());
    let log = relay.log();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{port} via modem:{} authenticated; serving",
            modem.link.display()
        )),
        "{log}"
    );
    // The modem dialled the client and was hung up before the relay exited.
    modem.wait_log(&format!("AT command: AT#SD=1,0,{port},\"127.0.0.1\",0,0,0"));
    modem.wait_log("AT command: AT#SH=1");
    assert!(log.contains("hung up"), "{log}");
    drop(modem);
    let (bytes, chip) = sim.stop();
    assert!(bytes > 3000, "{bytes} bytes reached the chip");
    assert_eq!(chip.peek(FLASH, image.len()), image);
}

#[test]
fn a_malformed_modem_target_is_refused_before_anything_opens() {
    let dir = tempfile::tempdir().expect("test setup");
    let key_file = write_key(dir.path(), "key", KEY, 0o600);
    // The shared port does not exist, so opening it first would fail differently (exit 3).
    let missing_port = dir.path().join("no-such-tty");
    let modem_path = dir.path().join("no-such-modem");
    for (target, says) in [
        (
            format!(
                "modem:{}?profile=telit&host=127.0.0.1&port=7000",
                modem_path.display()
            ),
            "apn=",
        ),
        (
            format!(
                "modem:{}?profile=telit&apn=internet&host=127.0.0.1&port=7000&speed=9600",
                modem_path.display()
            ),
            "speed",
        ),
        (
            format!(
                "modem:{}?profile=hayes&number=T5551234",
                modem_path.display()
            ),
            "number=",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(["relay", "--port", path_str(&missing_port), "--once"])
            .arg("--key-file")
            .arg(&key_file)
            .args(["--connect", &target])
            .env_remove("STM32BOOT_RELAY_KEY")
            .env_remove("STM32BOOT_RELAY_KEY_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("test setup");
        let text = expect_exit(&out, 2);
        assert!(
            text.contains("--connect") && text.contains(says),
            "{target}: {text}"
        );
        assert!(
            out.stdout.is_empty(),
            "{target}: the relay announced itself: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_wrong_key_through_a_modem_is_refused_and_the_modem_hangs_up() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let modem = ModemSim::start(sim.dir(), "telit");
    let listener = TcpListener::bind("127.0.0.1:0").expect("test setup");
    let port = listener.local_addr().expect("test setup").port();
    let target = format!(
        "modem:{}?profile=telit&apn=internet&host=127.0.0.1&port={port}",
        modem.link.display()
    );
    // A backoff far longer than the test: the relay does not dial again meanwhile.
    let relay = Relay::start_with(
        &sim,
        &key_file,
        &["--connect", &target],
        &["--auth-backoff", "1h"],
    );
    let (mut s, _) = listener.accept().expect("the relay dials in");
    s.set_read_timeout(Some(LONG)).expect("test setup");
    let Some(RelayLine::Challenge(relay_nonce)) = read_relay_line(&mut s) else {
        panic!("no challenge");
    };
    let wrong = Key::from_bytes(b"this-is-not-the-relay-key-0123", "the test").expect("test setup");
    let nonce = auth::fresh_nonce().expect("test setup");
    let answer = Response::new(&wrong, Direction::FromRelay, &relay_nonce, nonce).encode();
    s.write_all(answer.as_bytes()).expect("test setup");
    // AN3155 bytes right behind the answer: they must not reach the chip.
    let _ = s.write_all(&[0x7F, 0x00, 0xFF]);
    assert_eq!(read_relay_line(&mut s), Some(RelayLine::Denied));
    // The relay leaves data mode itself (the connection is still up) and hangs up.
    modem.wait_log("escape: +++");
    modem.wait_log("AT command: AT#SH=1");
    eof_after(&mut s);
    relay.wait_log("hung up", 1);
    let log = relay.stop();
    assert!(log.contains("authentication failed"), "{log}");
    drop(modem);
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}
