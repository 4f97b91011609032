//! Gang mode: one command on several ports at once (`--port A --port B …`, `--ports GLOB`).
//!
//! The parent process starts itself again once per port, in parallel, with the same arguments
//! plus `--json`, and [`CHILD_PORT_ENV`] naming the child's port: that port replaces the
//! command line's ports in the child (see [`super::settings::use_port`]), and a child never fans
//! out again. Separate processes keep the boards apart: one board's failure, hang or crash
//! cannot disturb the others. The child's port travels in the environment rather than in a
//! rewritten command line, as taking `--port`/`--ports` out of an argument list exactly as clap
//! reads it (`-qpX`, `--port=X`, values that start with `-`, `--`) would mean parsing it again.
//!
//! Each child's JSON result (the last line of its stdout; the job event stream of `run --json`)
//! gives its result, error code and chip unique ID ([`note_uid`] adds it to the result of every
//! command that connects, in a child only, so that a single `--port` sends exactly what it sent
//! before). Children report progress as JSON lines on stderr ([`Bars::report_to_gang`]), and
//! `run` jobs through their event stream: the parent shows one indicatif line per port (a
//! spinner, or a bar while a stage reports its size), then a summary table (port, chip UID,
//! result, time), or one JSON object with `--json`.
//!
//! Exit code: 0 when every board succeeded; when some failed, their exit code if they all
//! agree, else [`MIXED_FAILURES`].

use super::args::Cli;
use super::output::Bars;
use anyhow::{anyhow, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stm32boot::ops::Connection;
use tracing::debug;

/// The environment variable that makes a process a gang child, and names its port.
pub const CHILD_PORT_ENV: &str = "STM32BOOT_GANG_PORT";

/// The exit code when boards failed with different exit codes (the summary says which).
pub const MIXED_FAILURES: u8 = 7;

/// Commands that write a file on the host, which every board would overwrite.
const ONE_FILE_COMMANDS: &[&str] = &["read"];

/// Lines of a child's stderr kept for its summary when it leaves no result.
const LOG_LINES: usize = 20;

/// This process is a gang child.
static CHILD: AtomicBool = AtomicBool::new(false);
/// The unique ID of the chip a gang child connected to, in hex.
static UID: OnceLock<String> = OnceLock::new();

/// What to do with the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Run the command here, on one port (or the port the configuration or the only USB adapter
    /// gives).
    Single,
    /// Run the command on each of these ports, in child processes.
    Gang(Vec<String>),
}

/// Decide between one port and gang mode; call after [`super::settings::install`]. In a gang
/// child, the child's port replaces the command line's, and progress goes to the parent. The
/// only match of `--ports GLOB` is used like a `--port`. Errors (exit 2): a pattern that matches
/// nothing or is not one of device paths, and a command that cannot run on several ports.
pub fn prepare(matches: &ArgMatches, bars: &mut Bars) -> Result<Plan> {
    if let Some(port) = std::env::var_os(CHILD_PORT_ENV) {
        let port = port
            .into_string()
            .map_err(|p| invalid(format!("{CHILD_PORT_ENV}={p:?} is not UTF-8")))?;
        debug!("gang child for port {port}");
        CHILD.store(true, Ordering::Relaxed);
        super::settings::use_port(port, "gang mode");
        bars.report_to_gang();
        return Ok(Plan::Single);
    }
    let req = requested(matches);
    let Some(pattern) = &req.glob else {
        return Ok(match req.ports.len() {
            0 | 1 => Plan::Single,
            _ => gang(&req.command, req.ports)?,
        });
    };
    let mut ports = req.ports;
    for port in expand(pattern)? {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    match ports.as_slice() {
        [one] => {
            super::settings::use_port(one.clone(), format!("--ports '{pattern}'"));
            Ok(Plan::Single)
        }
        _ => gang(&req.command, ports),
    }
}

fn gang(command: &[String], ports: Vec<String>) -> Result<Plan> {
    if command
        .first()
        .is_some_and(|c| ONE_FILE_COMMANDS.contains(&c.as_str()))
    {
        return Err(invalid(format!(
            "`{}` writes one file on the host, so it runs on one port at a time, not on {} \
             (gang mode)",
            command.join(" "),
            ports.len()
        )));
    }
    Ok(Plan::Gang(ports))
}

/// The ports the command line names.
struct Requested {
    /// The subcommand chain (`protect readout`).
    command: Vec<String>,
    /// The `--port` values given on the command line; a port from `STM32BOOT_PORT` only when
    /// there is no `--ports`.
    ports: Vec<String>,
    /// `--ports`.
    glob: Option<String>,
}

fn requested(matches: &ArgMatches) -> Requested {
    let mut req = Requested {
        command: Vec::new(),
        ports: Vec::new(),
        glob: None,
    };
    let mut from_env = false;
    let mut level = matches.subcommand();
    while let Some((name, m)) = level {
        req.command.push(name.to_string());
        // `relay --port` is the port it shares, not a connection option.
        if req.command.first().is_some_and(|c| c != "relay") {
            if let Ok(Some(values)) = m.try_get_many::<String>("port") {
                req.ports = values.cloned().collect();
                from_env = m.value_source("port") == Some(ValueSource::EnvVariable);
            }
            if let Ok(Some(glob)) = m.try_get_one::<String>("ports") {
                req.glob = Some(glob.clone());
            }
        }
        level = m.subcommand();
    }
    if from_env && req.glob.is_some() {
        // --ports on the command line outranks STM32BOOT_PORT, as --port does.
        req.ports.clear();
    }
    req
}

/// The serial ports that match `pattern`, in order.
fn expand(pattern: &str) -> Result<Vec<String>> {
    if pattern.starts_with("sim:") || pattern.contains("://") {
        return Err(invalid(format!(
            "--ports '{pattern}': a pattern matches device paths (e.g. '/dev/ttyUSB*'); give \
             simulated and network ports with --port, once per port"
        )));
    }
    let paths = glob::glob(pattern).map_err(|e| invalid(format!("--ports '{pattern}': {e}")))?;
    let mut ports = Vec::new();
    for entry in paths {
        match entry {
            Ok(path) => match path.to_str() {
                Some(p) => ports.push(p.to_string()),
                None => {
                    return Err(invalid(format!(
                        "--ports '{pattern}' matches {}, which is not UTF-8",
                        path.display()
                    )))
                }
            },
            Err(e) => debug!("--ports '{pattern}': {e}"),
        }
    }
    if ports.is_empty() {
        return Err(invalid(format!(
            "--ports '{pattern}' matches no port (are the adapters plugged in? `stm32boot ports` \
             lists serial ports)"
        )));
    }
    Ok(ports)
}

fn invalid(message: String) -> anyhow::Error {
    anyhow!(stm32boot::Error::InvalidRequest(message))
}

/// In a gang child: read the chip's unique ID, for the result (a failure to read it is only
/// logged). Elsewhere nothing is sent.
pub fn note_uid(conn: &mut Connection) {
    if !CHILD.load(Ordering::Relaxed) || UID.get().is_some() {
        return;
    }
    match conn.unique_id() {
        Ok(Some(uid)) => {
            let _ = UID.set(hex(&uid));
        }
        Ok(None) => debug!("this chip's unique ID cannot be read"),
        Err(e) => debug!("unique ID not read: {e}"),
    }
}

/// The unique ID [`note_uid`] read, for the child's JSON result.
pub fn uid() -> Option<&'static str> {
    UID.get().map(String::as_str)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// How one board went.
#[derive(Debug)]
struct Board {
    port: String,
    uid: Option<String>,
    exit_code: u8,
    /// The error code and message of a failure.
    error: Option<(String, String)>,
    elapsed: Duration,
    /// The child's JSON result (its last event, for `run`).
    result: Value,
}

impl Board {
    fn ok(&self) -> bool {
        self.exit_code == 0
    }

    fn json(&self) -> Value {
        json!({
            "port": self.port,
            "uid": self.uid,
            "ok": self.ok(),
            "exit_code": self.exit_code,
            "error": self.error.as_ref().map(|(code, message)| json!({ "code": code, "message": message })),
            "seconds": self.elapsed.as_secs_f64(),
            "result": self.result,
        })
    }

    /// The result column of the summary.
    fn result_text(&self) -> String {
        match &self.error {
            None => "ok".into(),
            Some((code, _)) => format!("FAILED (exit {}, {code})", self.exit_code),
        }
    }
}

/// Run the command on every port in parallel, show progress and the summary; the exit code
/// says whether every board succeeded.
pub fn run(cli: &Cli, ports: &[String]) -> Result<ExitCode> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow!("gang mode: cannot find this program to run it per port: {e}"))?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if !cli.json {
        // First, where a global option is always an option (never after `--`).
        args.insert(0, "--json".into());
    }
    let draw = !cli.json && !cli.quiet && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if draw {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let width = ports.iter().map(|p| shown(p).len()).max().unwrap_or(0);
    let forward = cli.verbose > 0 || cli.trace;
    let lines = !draw && !cli.json && !cli.quiet;
    let boards: Vec<Board> = std::thread::scope(|scope| {
        let handles: Vec<_> = ports
            .iter()
            .map(|port| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_prefix(format!("{:<width$}", shown(port)));
                set_style(&bar, SPINNER);
                bar.set_message("starting");
                if draw {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                let (exe, args) = (&exe, &args);
                scope.spawn(move || {
                    let board = run_board(exe, args, port, &bar, forward);
                    finish_bar(&bar, &board);
                    if lines {
                        bar.suspend(|| eprintln!("{port}: {}", board.result_text()));
                    }
                    board
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(ports)
            .map(|(h, port)| {
                h.join().unwrap_or_else(|_| Board {
                    port: port.clone(),
                    uid: None,
                    exit_code: 1,
                    error: Some((
                        "error".into(),
                        "the thread watching this board panicked".into(),
                    )),
                    elapsed: Duration::ZERO,
                    result: Value::Null,
                })
            })
            .collect()
    });
    let _ = multi.clear();
    let warnings = same_uid_warnings(&boards);
    let failed = boards.iter().filter(|b| !b.ok()).count();
    let code = exit_code(&boards);
    if cli.json {
        let v = json!({
            "ok": failed == 0,
            "boards": boards.iter().map(Board::json).collect::<Vec<_>>(),
            "passed": boards.len() - failed,
            "failed": failed,
            "exit_code": code,
            "warnings": warnings,
        });
        print_out(&v.to_string());
    } else {
        if !cli.quiet {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
        }
        print_out(&summary(&boards));
    }
    Ok(ExitCode::from(code))
}

/// 0, the failed boards' exit code when they agree, else [`MIXED_FAILURES`].
fn exit_code(boards: &[Board]) -> u8 {
    let codes: BTreeSet<u8> = boards
        .iter()
        .filter(|b| !b.ok())
        .map(|b| b.exit_code)
        .collect();
    match codes.len() {
        0 => 0,
        1 => codes.into_iter().next().unwrap_or(1),
        _ => MIXED_FAILURES,
    }
}

/// Two ports that reached chips with the same unique ID: the same chip twice, or simulated chips
/// left with the same `uid=` seed (whose journals and job progress would then collide).
fn same_uid_warnings(boards: &[Board]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in boards.iter().enumerate() {
        let Some(uid) = &a.uid else { continue };
        if let Some(b) = boards[i + 1..].iter().find(|b| b.uid.as_ref() == Some(uid)) {
            out.push(format!(
                "{} and {} report the same unique ID {uid}: the same chip twice?",
                a.port, b.port
            ));
        }
    }
    out
}

/// The table: port, chip UID, result, time; then the failures' messages and a count.
fn summary(boards: &[Board]) -> String {
    let rows: Vec<[String; 4]> = boards
        .iter()
        .map(|b| {
            [
                b.port.clone(),
                b.uid.clone().unwrap_or_else(|| "-".into()),
                b.result_text(),
                format!("{:.1} s", b.elapsed.as_secs_f64()),
            ]
        })
        .collect();
    let head = ["PORT", "CHIP UID", "RESULT", "TIME"].map(String::from);
    let mut widths = head.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 4]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
        .trim_end()
        .to_string()
    };
    let mut out = vec![line(&head)];
    out.extend(rows.iter().map(line));
    let failed: Vec<&Board> = boards.iter().filter(|b| !b.ok()).collect();
    if !failed.is_empty() {
        out.push(String::new());
    }
    for b in &failed {
        if let Some((_, message)) = &b.error {
            out.push(format!("{}: {message}", b.port));
        }
    }
    out.push(format!(
        "{} of {} boards ok, {} failed",
        boards.len() - failed.len(),
        boards.len(),
        failed.len()
    ));
    out.join("\n")
}

fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// The port as a progress line shows it: the end of a long one.
fn shown(port: &str) -> String {
    const MAX: usize = 36;
    let n = port.chars().count();
    if n <= MAX {
        port.to_string()
    } else {
        let tail: String = port.chars().skip(n - (MAX - 1)).collect();
        format!("…{tail}")
    }
}

const SPINNER: &str = "{prefix} {spinner} {msg} ({elapsed})";
const BAR: &str = "{prefix} {msg:>12} [{bar:24}] {percent:>3}% ({elapsed})";
const DONE: &str = "{prefix} {msg} ({elapsed})";

fn set_style(bar: &ProgressBar, template: &str) {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
}

fn finish_bar(bar: &ProgressBar, board: &Board) {
    set_style(bar, DONE);
    bar.finish_with_message(board.result_text());
}

/// Show a stage of known size.
fn show_progress(bar: &ProgressBar, label: String, done: u64, total: u64) {
    if bar.length() != Some(total) || bar.message() != label {
        set_style(bar, BAR);
        bar.set_length(total);
        bar.set_message(label);
    }
    bar.set_position(done);
}

/// What a child printed on stdout.
#[derive(Debug, Default)]
struct Report {
    /// The result object (or the job's last event).
    result: Option<Value>,
    uid: Option<String>,
}

/// Run the command for one port in a child process and wait for it.
fn run_board(exe: &Path, args: &[OsString], port: &str, bar: &ProgressBar, forward: bool) -> Board {
    let start = Instant::now();
    let failed = |message: String| Board {
        port: port.to_string(),
        uid: None,
        exit_code: 1,
        error: Some(("error".into(), message)),
        elapsed: start.elapsed(),
        result: Value::Null,
    };
    let spawned = Command::new(exe)
        .args(args)
        .env(CHILD_PORT_ENV, port)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failed(format!("could not start {}: {e}", exe.display())),
    };
    bar.set_message("running");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (report, log, status) = std::thread::scope(|scope| {
        let out = stdout.map(|s| scope.spawn(move || read_stdout(s, bar)));
        let err = stderr.map(|s| scope.spawn(move || read_stderr(s, bar, port, forward)));
        let status = child.wait();
        let report = out.and_then(|t| t.join().ok()).unwrap_or_default();
        let log = err.and_then(|t| t.join().ok()).unwrap_or_default();
        (report, log, status)
    });
    let elapsed = start.elapsed();
    let status = match status {
        Ok(s) => s,
        Err(e) => return failed(format!("waiting for the child process: {e}")),
    };
    let exit_code = match status.code() {
        Some(c) => u8::try_from(c).unwrap_or(1),
        None => 1,
    };
    let result = report.result.unwrap_or(Value::Null);
    let error = if status.success() {
        None
    } else {
        // A command's result holds `error`; a job's error event holds its fields itself.
        let e = result
            .get("error")
            .filter(|e| e.is_object())
            .unwrap_or(&result);
        let field = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
        Some(match (field("code"), field("message")) {
            (Some(code), Some(message)) => (code, message),
            _ => (
                "error".into(),
                format!(
                    "exited ({status}) without a result{}",
                    log.last()
                        .map(|l| format!("; its last message: {l}"))
                        .unwrap_or_default()
                ),
            ),
        })
    };
    Board {
        port: port.to_string(),
        uid: report.uid.or_else(|| {
            result
                .get("uid")
                .and_then(Value::as_str)
                .map(str::to_string)
        }),
        exit_code,
        error,
        elapsed,
        result,
    }
}

/// Read a child's stdout: its result line, or for `run --json` its event stream (which also
/// shows progress).
fn read_stdout(stdout: impl Read, bar: &ProgressBar) -> Report {
    let mut report = Report::default();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            debug!("gang child output that is not JSON: {line}");
            continue;
        };
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match v.get("event").and_then(Value::as_str) {
            None => report.result = Some(v),
            Some("job_started") => {
                report.uid = v.get("uid").and_then(Value::as_str).map(str::to_string);
                bar.set_message("connected");
            }
            Some("step_started") => {
                set_style(bar, SPINNER);
                bar.set_message(format!("step {}: {}", num("step"), text("label")));
            }
            Some("progress") => show_progress(
                bar,
                format!("step {} {}", num("step"), text("phase")),
                num("done"),
                num("total"),
            ),
            Some("job_finished" | "error") => report.result = Some(v),
            Some(_) => {}
        }
    }
    report
}

/// Read a child's stderr: its progress lines drive the bar; the rest is kept (the last
/// [`LOG_LINES`]) and, with `forward`, shown as it comes, prefixed with the port.
fn read_stderr(stderr: impl Read, bar: &ProgressBar, port: &str, forward: bool) -> Vec<String> {
    let mut log = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(p) = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v.get("gang").cloned())
        {
            let num = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            let stage = p.get("stage").and_then(Value::as_str).unwrap_or("");
            show_progress(bar, stage.to_string(), num("done"), num("total"));
            continue;
        }
        if forward {
            bar.suspend(|| eprintln!("{port}: {line}"));
        }
        log.push(line);
        if log.len() > LOG_LINES {
            log.remove(0);
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(port: &str, exit_code: u8, uid: Option<&str>) -> Board {
        Board {
            port: port.into(),
            uid: uid.map(str::to_string),
            exit_code,
            error: (exit_code != 0).then(|| ("nack".into(), "refused".into())),
            elapsed: Duration::from_millis(1500),
            result: Value::Null,
        }
    }

    #[test]
    fn exit_code_is_the_failures_code_when_they_agree() {
        assert_eq!(exit_code(&[board("a", 0, None), board("b", 0, None)]), 0);
        assert_eq!(exit_code(&[board("a", 5, None), board("b", 0, None)]), 5);
        assert_eq!(exit_code(&[board("a", 5, None), board("b", 5, None)]), 5);
        assert_eq!(
            exit_code(&[board("a", 5, None), board("b", 3, None)]),
            MIXED_FAILURES
        );
    }

    #[test]
    fn summary_lists_every_board_and_the_failures() {
        let text = summary(&[
            board("/dev/ttyUSB0", 0, Some("AB")),
            board("/dev/ttyUSB1", 5, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PORT"), "{text}");
        assert!(lines[1].starts_with("/dev/ttyUSB0  AB"), "{text}");
        assert!(lines[1].contains(" ok "), "{text}");
        assert!(lines[2].contains("FAILED (exit 5, nack)"), "{text}");
        assert!(text.contains("/dev/ttyUSB1: refused"), "{text}");
        assert!(text.ends_with("1 of 2 boards ok, 1 failed"), "{text}");
    }

    #[test]
    fn same_uid_twice_is_warned_about() {
        let w = same_uid_warnings(&[
            board("a", 0, Some("01")),
            board("b", 0, Some("02")),
            board("c", 0, Some("01")),
        ]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("a and c"), "{w:?}");
    }

    #[test]
    fn globs_for_simulated_or_network_ports_and_empty_matches_are_refused() {
        assert!(expand("sim:stm32f411*").is_err());
        assert!(expand("tcp://host:*").is_err());
        assert!(expand("/nonexistent-dir-for-stm32boot/tty*").is_err());
    }

    #[test]
    fn long_ports_are_shown_by_their_end() {
        let p = "sim:stm32f411?state=/tmp/some/long/directory/name/b0.sim";
        let s = shown(p);
        assert_eq!(s.chars().count(), 36);
        assert!(s.ends_with("name/b0.sim"), "{s}");
    }
}
