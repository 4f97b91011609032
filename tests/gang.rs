//! Gang mode: one command on several ports in parallel (`--port` repeated, `--ports GLOB`), a
//! summary per board, and an exit code that reports failures.

mod common;

use common::*;
use serde_json::Value;

const FLASH: u32 = 0x0800_0000;

/// Eight simulated boards with distinct unique IDs; the last loses power in its third Write
/// Memory (a fault counted in operations, so it does not move when a command is added).
fn eight_boards() -> Vec<SimChip> {
    (0..8)
        .map(|i| {
            let fault = if i == 7 { "&power_loss_at=write:3" } else { "" };
            SimChip::with_options("stm32f411", &format!("uid=board{i}{fault}"))
        })
        .collect()
}

fn write_args<'a>(image: &'a str, ports: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["write", image, "-a", "0x08000000", "--verify"];
    args.extend(extra);
    for p in ports {
        args.extend(["--port", p.as_str()]);
    }
    args
}

/// The summary's row for `port`.
fn row<'a>(summary: &'a str, port: &str) -> &'a str {
    summary
        .lines()
        .find(|l| l.starts_with(&format!("{port} ")))
        .unwrap_or_else(|| panic!("no row for {port}:\n{summary}"))
}

#[test]
fn eight_boards_flash_in_parallel_and_one_failure_does_not_stop_the_others() {
    let boards = eight_boards();
    let image = pattern(4096, 42);
    let file = boards[0].file("fw.bin");
    std::fs::write(&file, &image).expect("image");
    let ports: Vec<String> = boards.iter().map(SimChip::port).collect();
    let out = run(&write_args(path_str(&file), &ports, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The failed board's exit code: it lost power in a Write Memory (no answer: exit 5).
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("PORT "), "{stdout}");
    for (i, port) in ports.iter().enumerate() {
        let r = row(&stdout, port);
        if i == 7 {
            assert!(r.contains("FAILED (exit 5"), "{r}");
        } else {
            assert!(r.contains(" ok "), "{r}");
        }
    }
    assert!(stdout.contains("7 of 8 boards ok, 1 failed"), "{stdout}");
    // The failure's message names the board.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{}: ", ports[7])) && l.contains("Write Memory")),
        "{stdout}"
    );
    // Seven chips hold the image; the eighth was cut off in its third block.
    for (i, chip) in boards.iter().enumerate() {
        let flash = chip.peek(FLASH, image.len());
        if i == 7 {
            assert_ne!(flash, image, "board 7 should not hold the whole image");
        } else {
            assert_eq!(flash, image, "board {i}");
        }
    }
}

#[test]
fn json_summary_lists_every_board_with_its_chip_and_the_failure() {
    let boards = eight_boards();
    let file = boards[0].file("fw.bin");
    std::fs::write(&file, pattern(4096, 7)).expect("image");
    let ports: Vec<String> = boards.iter().map(SimChip::port).collect();
    let out = run(&write_args(path_str(&file), &ports, &["--json"]));
    assert_eq!(out.status.code(), Some(5));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["passed"], 7);
    assert_eq!(v["exit_code"], 5);
    let list = v["boards"].as_array().expect("boards");
    assert_eq!(list.len(), 8);
    let mut uids = std::collections::BTreeSet::new();
    for (i, b) in list.iter().enumerate() {
        assert_eq!(b["port"], ports[i].as_str());
        let uid = b["uid"].as_str().expect("every board's chip answered");
        assert_eq!(uid.len(), 24, "96 bits in hex: {uid}");
        uids.insert(uid.to_string());
        if i == 7 {
            assert_eq!(b["ok"], false);
            assert_eq!(b["exit_code"], 5);
            assert_eq!(b["error"]["code"], "timeout", "{b}");
            assert_eq!(b["result"]["ok"], false);
        } else {
            assert_eq!(b["ok"], true, "{b}");
            assert_eq!(b["error"], Value::Null);
            assert_eq!(b["result"]["bytes"], 4096);
            assert_eq!(b["result"]["report"]["verified"], "read-back");
        }
    }
    assert_eq!(uids.len(), 8, "distinct chips: {uids:?}");
    assert_eq!(v["warnings"], serde_json::json!([]));
}

#[test]
fn boards_failing_differently_exit_7_and_each_reason_is_listed() {
    let good = SimChip::new("stm32f411");
    let refused = SimChip::with_options("stm32f411", "uid=other&nack_at=3");
    let not_a_port = good.file("not-a-tty");
    std::fs::write(&not_a_port, b"").expect("file");
    let ports = [
        good.port(),
        refused.port(),
        path_str(&not_a_port).to_string(),
    ];
    let mut args = vec!["info"];
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{stdout}");
    assert!(row(&stdout, &ports[0]).contains(" ok "), "{stdout}");
    assert!(
        row(&stdout, &ports[1]).contains("FAILED (exit 5, nack)"),
        "{stdout}"
    );
    assert!(
        row(&stdout, &ports[2]).contains("FAILED (exit 3"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 3 boards ok, 2 failed"), "{stdout}");
}

#[test]
fn ports_glob_runs_on_every_matching_path() {
    // Files that are not serial ports: every board fails to open, each listed by its path.
    let dir = tempfile::tempdir().expect("dir");
    for name in ["ttyGANG0", "ttyGANG1", "ttyGANG2", "other"] {
        std::fs::write(dir.path().join(name), b"").expect("file");
    }
    let pattern = format!("{}/ttyGANG*", dir.path().display());
    let out = run(&["info", "--ports", &pattern, "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ports: Vec<&str> = v["boards"]
        .as_array()
        .expect("boards")
        .iter()
        .map(|b| b["port"].as_str().expect("port"))
        .collect();
    let expected: Vec<String> = (0..3)
        .map(|i| format!("{}/ttyGANG{i}", dir.path().display()))
        .collect();
    assert_eq!(ports, expected);
    assert_eq!(v["failed"], 3);
}

#[test]
fn ports_glob_over_pseudo_terminals_reaches_each_simulated_chip() {
    let dir = tempfile::tempdir().expect("dir");
    let chips: Vec<SimChip> = (0..2)
        .map(|i| SimChip::new(&format!("stm32f411?uid=pty{i}")))
        .collect();
    let sims: Vec<SimProcess> = chips
        .iter()
        .enumerate()
        .map(|(i, chip)| {
            let link = dir.path().join(format!("ttySIM{i}"));
            let sim = SimProcess::start(chip, &["--pty", "--link", path_str(&link)], &[]);
            assert_eq!(sim.first_line, path_str(&link), "{}", sim.log());
            sim
        })
        .collect();
    let pattern = format!("{}/ttySIM*", dir.path().display());
    let out = run(&["info", "--ports", &pattern, "--parity", "none", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["ok"], true);
    let boards = v["boards"].as_array().expect("boards");
    assert_eq!(boards.len(), 2);
    for b in boards {
        assert_eq!(b["result"]["name"], "STM32F411xC/xE", "{b}");
        assert_eq!(b["uid"], b["result"]["unique_id"], "{b}");
    }
    assert_ne!(boards[0]["uid"], boards[1]["uid"]);
    // One match is an ordinary single-port run: the command's own output.
    let one = format!("{}/ttySIM1", dir.path().display());
    let text = ok(&["info", "--ports", &one, "--parity", "none"]);
    assert!(text.starts_with("device:"), "{text}");
    drop(sims);
}

#[test]
fn ports_glob_that_matches_nothing_or_names_simulated_ports_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let pattern = format!("{}/ttyNONE*", dir.path().display());
    let err = fails(&["info", "--ports", &pattern], 2);
    assert!(
        err.contains(&pattern) && err.contains("matches no port"),
        "{err}"
    );
    let err = fails(&["info", "--ports", "sim:stm32f411*"], 2);
    assert!(err.contains("--port"), "{err}");
}

#[test]
fn commands_that_cannot_run_on_several_ports_say_so() {
    let (a, b) = (SimChip::new("stm32f411"), SimChip::new("stm32f411"));
    let out = a.file("dump.bin");
    let err = fails(
        &[
            "read",
            "0x08000000",
            "16",
            "-o",
            path_str(&out),
            "--port",
            &a.port(),
            "--port",
            &b.port(),
        ],
        2,
    );
    assert!(err.contains("one port at a time"), "{err}");
    assert!(!out.exists());
    // Commands that do not connect take no --port at all.
    fails(&["devices", "--port", "a", "--port", "b"], 2);
    fails(&["ports", "--port", "a"], 2);
}

#[test]
fn a_single_port_sends_nothing_more_and_reports_no_gang_fields() {
    let chip = SimChip::new("stm32f411");
    let v: Value =
        serde_json::from_str(&ok(&["info", "--json", "--port", &chip.port()])).expect("JSON");
    assert!(v.get("uid").is_none(), "{v}");
    assert!(v.get("boards").is_none(), "{v}");
    assert!(v["unique_id"].is_string(), "{v}");
}
