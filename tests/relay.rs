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
        Relay::launch(sim, Some(key_file), endpoint, extra, &[])
    }

    /// `stm32boot relay -vv` on the simulator's port with `env` set on top of a clean
    /// environment (no relay key variables, no RUST_LOG), its key from `key_file` or, without
    /// one, from `env`.
    fn launch(
        sim: &Sim,
        key_file: Option<&Path>,
        endpoint: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        let log = sim.dir().join(format!("relay-{}.log", rand_suffix()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stm32boot"));
        cmd.args(["relay", "-vv", "--port"])
            .arg(&sim.tty)
            .env_remove("STM32BOOT_RELAY_KEY")
            .env_remove("STM32BOOT_RELAY_KEY_FILE")
            .env_remove("RUST_LOG");
        if let Some(k) = key_file {
            cmd.arg("--key-file").arg(k);
        }
        cmd.args(endpoint).args(extra).envs(env.iter().copied());
        let mut child = cmd
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

// ---- the key stays secret, attempts are rate-limited, ports are held exclusively ----------

/// A relay listening on loopback, its key from `key_file` or, without one, from `env`.
fn start_relay_with_env(
    sim: &Sim,
    key_file: Option<&Path>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Relay {
    let relay = Relay::launch(sim, key_file, &["--listen", "127.0.0.1:0"], extra, env);
    assert!(relay.url.starts_with("relay://"), "{}", relay.url);
    relay
}

/// A client with `env` set on top of a clean environment (no relay key variables, no RUST_LOG).
fn client_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let state = tempfile::tempdir().expect("test setup");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stm32boot"));
    cmd.args(args)
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .env_remove("STM32BOOT_JOURNAL")
        .env_remove("STM32BOOT_RELAY_KEY")
        .env_remove("STM32BOOT_RELAY_KEY_FILE")
        .env_remove("RUST_LOG")
        .env("STM32BOOT_STATE_DIR", state.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the client runs")
}

/// Everything a run printed.
fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics if `text` shows any 16-character piece of `secret` (as it is, or hex-encoded), or a
/// handshake answer.
fn assert_no_secret(name: &str, text: &str, secret: &str) {
    let hexed = stm32boot::relay::auth::hex(secret.as_bytes());
    for s in [secret, hexed.as_str()] {
        let chars: Vec<char> = s.chars().collect();
        for piece in chars.windows(16.min(chars.len())) {
            let piece: String = piece.iter().collect();
            assert!(
                !text.contains(&piece),
                "{name} shows a piece of the key ({piece}):\n{text}"
            );
        }
    }
    assert!(!text.contains("RESPONSE"), "{name} shows a proof:\n{text}");
}

#[test]
fn the_key_never_appears_in_traces_or_logs_at_their_most_verbose() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let wrong_key = "0badc0de0badc0de0badc0de0badc0de";
    let wrong = write_key(sim.dir(), "wrong", wrong_key, 0o600);
    // The relay takes its key from the environment here, and logs everything it can.
    let relay = start_relay_with_env(
        &sim,
        None,
        &[],
        &[("STM32BOOT_RELAY_KEY", KEY), ("RUST_LOG", "trace")],
    );
    let image = pattern(1500, 21);
    let file = sim.dir().join("fw.bin");
    std::fs::write(&file, &image).expect("test setup");
    let key_file_text = path_str(&key_file).to_string();
    let wrong_text = path_str(&wrong).to_string();
    let traced = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--trace".to_string(), "-vv".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["--port", relay.url.as_str(), "--parity", "none"].map(String::from));
        all
    };
    // The key from a file, and from the environment; every byte traced, logs at trace level.
    let runs = [
        (
            "client with the key file",
            traced(&["info"]),
            vec![
                ("STM32BOOT_RELAY_KEY_FILE", key_file_text.as_str()),
                ("RUST_LOG", "trace"),
            ],
            0,
        ),
        (
            "client with the key in the environment",
            traced(&["write", path_str(&file), "-a", "0x08000000", "--verify"]),
            vec![("STM32BOOT_RELAY_KEY", KEY), ("RUST_LOG", "trace")],
            0,
        ),
        (
            "client with a wrong key",
            traced(&["info"]),
            vec![
                ("STM32BOOT_RELAY_KEY_FILE", wrong_text.as_str()),
                ("RUST_LOG", "trace"),
            ],
            3,
        ),
    ];
    let mut sessions = 0;
    for (name, args, env, code) in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = client_with_env(&args, env);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(*code), "{name}:\n{text}");
        if *code == 0 {
            // The trace was on: the bytes to the chip are there, the key is not.
            assert!(text.contains("> 7F"), "{name} traced nothing:\n{text}");
            sessions += 1;
            relay.wait_log("closed the session", sessions);
        }
        assert_no_secret(name, &text, KEY);
        assert_no_secret(name, &text, wrong_key);
    }
    relay.wait_log("authentication failed", 1);
    let log = relay.stop();
    assert!(
        log.contains("TRACE"),
        "the relay did not log at trace level"
    );
    assert!(log.contains("authenticated; serving"), "{log}");
    assert_no_secret("the relay's log", &log, KEY);
    assert_no_secret("the relay's log", &log, wrong_key);
    let (_, chip) = sim.stop();
    assert_eq!(chip.peek(FLASH, image.len()), image);
}

#[test]
fn a_malformed_key_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().expect("test setup");
    let short_secret = "kf-s3cret-short";
    let short = write_key(dir.path(), "short.key", short_secret, 0o600);
    let long_secret = "LONG-s3cret-piece-";
    let long = write_key(dir.path(), "long.key", &long_secret.repeat(300), 0o600);
    let env_secret = "env-s3cret";
    let missing = dir.path().join("no-such.key");
    let port = dir.path().join("no-such-tty");
    let loud = [("RUST_LOG", "trace")];
    // Clients: nothing listens on port 1, so the key must be refused before connecting.
    for (key_file, secret, says) in [
        (&short, short_secret, "is 15 bytes long; use at least 16"),
        (&long, long_secret, "bytes long; at most 4096 are accepted"),
        (&missing, "", "reading the relay key file"),
    ] {
        let url = format!("relay://127.0.0.1:1?key_file={}", key_file.display());
        let out = client_with_env(&["-vv", "--trace", "info", "--port", &url], &loud);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(2), "{url}:\n{text}");
        assert!(
            text.contains(says) && text.contains(path_str(key_file)),
            "{url}:\n{text}"
        );
        assert!(text.contains("nothing was connected"), "{url}:\n{text}");
        if !secret.is_empty() {
            assert!(!text.contains(secret), "{url} shows the key:\n{text}");
        }
        // The relay itself refuses the same files before it opens its port.
        let out = client_with_env(
            &[
                "relay",
                "-vv",
                "--port",
                path_str(&port),
                "--key-file",
                path_str(key_file),
            ],
            &loud,
        );
        let text = all_output(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "relay with {key_file:?}:\n{text}"
        );
        assert!(text.contains(says), "relay with {key_file:?}:\n{text}");
        if !secret.is_empty() {
            assert!(!text.contains(secret), "the relay shows the key:\n{text}");
        }
    }
    // A key in the environment that is too short, on both sides.
    let env = [("STM32BOOT_RELAY_KEY", env_secret), ("RUST_LOG", "trace")];
    let out = client_with_env(&["-vv", "info", "--port", "relay://127.0.0.1:1"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("$STM32BOOT_RELAY_KEY is 10 bytes long") && !text.contains(env_secret),
        "{text}"
    );
    let out = client_with_env(&["relay", "-vv", "--port", path_str(&port)], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("is 10 bytes long") && !text.contains(env_secret),
        "{text}"
    );
}

#[test]
fn repeated_wrong_keys_keep_the_peer_refused_even_with_the_right_key() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let wrong = write_key(sim.dir(), "wrong", "this-is-not-the-relay-key-0123", 0o600);
    // A backoff far longer than the test: the refusals do not depend on timing.
    let relay = Relay::start(&sim, &key_file, &["--auth-backoff", "1h"]);
    let image = pattern(256, 22);
    let file = sim.dir().join("fw.bin");
    std::fs::write(&file, &image).expect("test setup");
    let write_args = [
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--port",
        relay.url.as_str(),
        "--parity",
        "none",
    ];
    // Quick wrong-key attempts, one after another: the first is challenged and fails, the
    // others are turned away before a challenge.
    for attempt in 1..=5 {
        let text = expect_exit(&client(&write_args, Some(&wrong)), 3);
        let want = if attempt == 1 {
            "the relay refused the key"
        } else {
            "refuses this address for now"
        };
        assert!(text.contains(want), "attempt {attempt}: {text}");
    }
    // A raw client hammering the port gets no challenge either.
    for _ in 0..5 {
        let mut raw = raw_connect(&relay);
        let _ = raw.write_all(&[0x7F, 0x00, 0xFF]);
        assert_eq!(read_relay_line(&mut raw), Some(RelayLine::RetryLater));
        eof_after(&mut raw);
    }
    // The right key is refused too while the backoff lasts.
    let text = expect_exit(&client(&write_args, Some(&key_file)), 3);
    assert!(text.contains("refuses this address for now"), "{text}");
    let log = relay.stop();
    assert_eq!(
        log.matches("authentication failed").count(),
        1,
        "only the first attempt was challenged:\n{log}"
    );
    assert!(!log.contains("authenticated; serving"), "{log}");
    let (bytes, chip) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
    assert_eq!(chip.peek(FLASH, 256), vec![0xFF; 256]);
}

#[test]
fn a_peer_gets_one_handshake_at_a_time() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    let relay = Relay::start(
        &sim,
        &key_file,
        &["--auth-backoff", "1h", "--handshake-timeout", "10m"],
    );
    // A handshake left open: the same peer cannot start a second one meanwhile.
    let mut first = raw_connect(&relay);
    let Some(RelayLine::Challenge(relay_nonce)) = read_relay_line(&mut first) else {
        panic!("no challenge");
    };
    let mut second = raw_connect(&relay);
    assert_eq!(read_relay_line(&mut second), Some(RelayLine::Busy));
    eof_after(&mut second);
    // The open one fails; after it, the peer is in backoff.
    let wrong = Key::from_bytes(b"this-is-not-the-relay-key-0123", "the test").expect("test setup");
    let nonce = auth::fresh_nonce().expect("test setup");
    let answer = Response::new(&wrong, Direction::ToRelay, &relay_nonce, nonce).encode();
    first.write_all(answer.as_bytes()).expect("test setup");
    let _ = first.write_all(&[0x7F, 0x00, 0xFF]);
    assert_eq!(read_relay_line(&mut first), Some(RelayLine::Denied));
    eof_after(&mut first);
    let mut third = raw_connect(&relay);
    assert_eq!(read_relay_line(&mut third), Some(RelayLine::RetryLater));
    eof_after(&mut third);
    let log = relay.stop();
    assert!(log.contains("another handshake is in progress"), "{log}");
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn each_failure_doubles_the_backoff() {
    let sim = Sim::start();
    let key_file = write_key(sim.dir(), "key", KEY, 0o600);
    // A backoff short enough to wait out; the test waits for conditions, not durations.
    let relay = Relay::start(
        &sim,
        &key_file,
        &["--auth-backoff", "1ms", "--handshake-timeout", "10m"],
    );
    let wrong = Key::from_bytes(b"this-is-not-the-relay-key-0123", "the test").expect("test setup");
    let mut refused_before_a_challenge = 0;
    for failure in 1..=4 {
        // Knock until the backoff is over and a challenge comes.
        let deadline = Instant::now() + LONG;
        let (mut s, relay_nonce) = loop {
            assert!(Instant::now() < deadline, "never challenged again");
            let mut s = raw_connect(&relay);
            match read_relay_line(&mut s) {
                Some(RelayLine::Challenge(n)) => break (s, n),
                Some(RelayLine::RetryLater) => {
                    refused_before_a_challenge += 1;
                    eof_after(&mut s);
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        let nonce = auth::fresh_nonce().expect("test setup");
        let answer = Response::new(&wrong, Direction::ToRelay, &relay_nonce, nonce).encode();
        s.write_all(answer.as_bytes()).expect("test setup");
        assert_eq!(read_relay_line(&mut s), Some(RelayLine::Denied));
        eof_after(&mut s);
        relay.wait_log("authentication failed", failure);
    }
    let log = relay.stop();
    for ms in ["1ms", "2ms", "4ms", "8ms"] {
        assert!(
            log.contains(&format!("further attempts from 127.0.0.1 are refused for {ms}")),
            "no {ms} backoff (refused before a challenge {refused_before_a_challenge} time(s)):\n{log}"
        );
    }
    let (bytes, _) = sim.stop();
    assert_eq!(bytes, 0, "bytes reached the chip");
}

#[test]
fn a_port_held_by_one_run_cannot_be_opened_by_another() {
    let sim = Sim::start();
    // The first run holds the port: it sends the application an entry string and then waits
    // ten minutes for the chip to jump (it is killed long before).
    let first_err = sim.dir().join("first.err");
    let mut first = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
        .args(["--trace", "info", "--port", path_str(&sim.tty)])
        .args(["--parity", "none", "--enter", "X", "--enter-wait", "10m"])
        .env_remove("STM32BOOT_PORT")
        .env("STM32BOOT_STATE_DIR", sim.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&first_err).expect("test setup"))
        .spawn()
        .expect("test setup");
    // The trace shows the entry string once the port is open and locked.
    let deadline = Instant::now() + LONG;
    while !std::fs::read_to_string(&first_err)
        .unwrap_or_default()
        .contains("> 58")
    {
        assert!(
            Instant::now() < deadline,
            "the first run never sent its entry string: {}",
            std::fs::read_to_string(&first_err).unwrap_or_default()
        );
        assert!(
            first.try_wait().expect("test setup").is_none(),
            "the first run ended: {}",
            std::fs::read_to_string(&first_err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second run fails, by the link and by the pseudo-terminal's own name.
    let pts = std::fs::canonicalize(&sim.tty).expect("test setup");
    for path in [sim.tty.clone(), pts.clone()] {
        let out = client(
            &["info", "--port", path_str(&path), "--parity", "none"],
            None,
        );
        let text = expect_exit(&out, 3);
        assert!(
            text.contains(&format!("cannot open {}", path.display()))
                && text.contains("exclusive lock")
                && text.contains("another program has this port open"),
            "{text}"
        );
    }
    assert!(serialport::new(path_str(&pts), 115_200).open().is_err());
    assert!(
        first.try_wait().expect("test setup").is_none(),
        "the first run must still hold the port"
    );
    let _ = first.kill();
    let _ = first.wait();
    // Released with the process that held it.
    let out = client(
        &["info", "--port", path_str(&sim.tty), "--parity", "none"],
        None,
    );
    expect_exit(&out, 0);
    sim.stop();
}
