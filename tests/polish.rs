//! What users expect of a command-line tool: `--trace`, shell completions, manual pages, and a
//! `--version` that names the build.

mod common;

use common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn trace_dumps_the_bytes_on_stderr_only() {
    let sim = SimChip::new("stm32f411");
    let plain = ok(&["info", "--port", &sim.port()]);
    let traced = run(&["info", "--port", &sim.port(), "--trace"]);
    assert!(traced.status.success(), "{}", stderr(&traced));
    let err = stderr(&traced);
    let lines: Vec<&str> = err.lines().collect();
    // The sync byte and the bootloader's ACK, each on its own line with a timestamp.
    let sync = lines
        .iter()
        .position(|l| l.contains("> 7F "))
        .unwrap_or_else(|| panic!("no '> 7F' line in:\n{err}"));
    assert!(
        lines[sync + 1..].iter().any(|l| l.contains("< 79 ")),
        "no '< 79' after the sync in:\n{err}"
    );
    assert!(
        lines[sync].trim_start().starts_with("0."),
        "{}",
        lines[sync]
    );
    assert!(err.contains("* purge input"), "{err}");
    assert!(err.contains("* close"), "{err}");
    // The result on stdout is the same as without --trace, with no trace in it.
    assert_eq!(stdout(&traced), plain);
    assert!(!stdout(&traced).contains("> 7F"));
}

#[test]
fn trace_is_global_and_shows_line_events() {
    let sim = SimChip::new("stm32f411");
    let out = run(&[
        "--trace",
        "info",
        "--port",
        &sim.port(),
        "--before",
        "dtr-reset-rts-boot0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("* sequence: DTR on"), "{err}");
    assert!(err.contains("> 7F "), "{err}");
}

#[test]
fn without_trace_stderr_is_quiet() {
    let sim = SimChip::new("stm32f411");
    let out = run(&["info", "--port", &sim.port()]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains("> 7F"), "{}", stderr(&out));
}

#[test]
fn bash_completions() {
    let script = ok(&["completions", "bash"]);
    assert!(script.contains("_stm32boot"), "{script}");
    assert!(script.contains("complete"), "{script}");
    assert!(script.contains("--trace"), "{script}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(!ok(&["completions", shell]).is_empty(), "{shell}");
    }
    assert!(
        fails(&["completions", "tcsh"], 2).contains("tcsh"),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_into_a_directory() {
    let dir = tempfile::tempdir().expect("test setup");
    let text = ok(&["man", "--out", path_str(dir.path())]);
    assert!(text.contains("manual pages"), "{text}");
    let main = std::fs::read_to_string(dir.path().join("stm32boot.1")).expect("stm32boot.1");
    assert!(main.contains(".TH"), "{main}");
    assert!(main.contains("trace"), "{main}");
    let write =
        std::fs::read_to_string(dir.path().join("stm32boot-write.1")).expect("stm32boot-write.1");
    // roff escapes the dashes of `--verify`.
    assert!(write.contains(r"\-\-verify"), "{write}");
    assert!(dir.path().join("stm32boot-protect-readout.1").exists());
}

#[test]
fn man_page_on_stdout() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH stm32boot"), "{page}");
    assert!(page.contains("completions"), "{page}");
}

#[test]
fn version_names_the_git_revision() {
    let version = ok(&["--version"]);
    assert!(
        version.starts_with(&format!("stm32boot {} (git ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.trim_end().ends_with(')'), "{version}");
}
