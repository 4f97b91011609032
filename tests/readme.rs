//! Every example in README.md runs as written: the main command and each `$ stm32boot ...` line
//! of the console blocks, in order, in one scratch directory.

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

fn sh(dir: &Path, line: &str) -> std::process::Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_stm32boot"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("STM32BOOT_PORT")
        .env_remove("STM32BOOT_BAUD")
        .env_remove("STM32BOOT_JOURNAL")
        // Journals stay in the scratch directory, not the user's state directory.
        .env("STM32BOOT_STATE_DIR", dir.join(".state"))
        .output()
        .expect("sh runs")
}

fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::os::unix::fs::symlink(examples, dir.path().join("examples")).expect("link examples");
    dir
}

#[test]
fn main_command_writes_and_verifies_on_the_simulator() {
    let text = readme();
    let line = text
        .lines()
        .find(|l| l.starts_with("cargo run --release -- write"))
        .expect("README has the main command");
    assert!(
        line.contains("sim:stm32f411") && line.contains("--verify"),
        "{line}"
    );
    let cmd = line.replacen("cargo run --release --", "stm32boot", 1);
    let dir = scratch();
    let out = sh(dir.path(), &cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
}

#[test]
fn every_console_example_runs() {
    let text = readme();
    let mut in_console = false;
    let mut lines = Vec::new();
    for l in text.lines() {
        if l.starts_with("```") {
            in_console = l.trim() == "```console";
            continue;
        }
        if in_console {
            if let Some(cmd) = l.strip_prefix("$ ") {
                lines.push(cmd.to_string());
            }
        }
    }
    assert!(lines.len() >= 10, "the tour has its examples: {lines:?}");
    let dir = scratch();
    for cmd in &lines {
        assert!(cmd.starts_with("stm32boot "), "{cmd}");
        let out = sh(dir.path(), cmd);
        assert!(
            out.status.success(),
            "README example failed: {cmd}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.path().join("dump.hex").exists());
}
