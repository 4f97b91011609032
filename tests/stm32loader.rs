//! A third-party client against the simulator's RFC 2217 endpoint: stm32loader 0.7.1 (PyPI),
//! run through `tests/clients/stm32loader_url.py` so that it can open an `rfc2217://` URL
//! (it only knows `serial.Serial`, peers.md §2.2). Over RFC 2217 its DTR/RTS reset sequence
//! reaches the simulated NRST and BOOT0 pins (default wiring: DTR → NRST, RTS → BOOT0, both
//! active low, links.md §9.5), so these tests exercise the whole path: the chip starts in its
//! application, stm32loader's sequence brings it into the ROM bootloader, and at exit resets it
//! into flash again.
//!
//! Each test runs `stm32boot sim PART --rfc2217 127.0.0.1:0 --state FILE` in a fresh temporary
//! directory, stops it with SIGTERM so that it saves the state file (memory and what the chip
//! runs), and checks the chip from that file. Parts: stm32f411 (`-f F4`) and stm32l476 (`-f L4`,
//! dual bank). stm32loader's `-e` alone is a global mass erase (Extended Erase `44 FF FF 00`) on
//! both; its page erase (`-e -a -l`) assumes 1 KB pages on F4 and L4, which neither part has, so
//! it is not used. Timing is the simulator's default (fast); stm32loader keeps its own sleeps.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use stm32boot::device::{Device, DeviceTable};
use stm32boot::sim::{Mode, SimSpec};

const FLASH: u32 = 0x0800_0000;
/// The wrapper that lets stm32loader open a pyserial URL.
const WRAPPER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/stm32loader_url.py"
);
/// Generous: a run takes about two seconds, most of it stm32loader's own reset sleeps.
const CLIENT_LIMIT: Duration = Duration::from_secs(180);

/// `python3`, able to import stm32loader 0.7.1 and pyserial; otherwise a failure saying what to
/// install (never a silent pass).
fn python() -> PathBuf {
    let install = "stm32loader 0.7.1 from PyPI: python3 -m pip install stm32loader==0.7.1 \
                   pyserial (CI's .ci/run installs it)";
    let python = require_tool("python3", &format!("Python 3 and {install}"));
    let probe = "import importlib.metadata as m, serial, stm32loader.main, stm32loader.uart; \
                 print(m.version('stm32loader'))";
    let out = Command::new(&python)
        .args(["-c", probe])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 cannot import stm32loader: install {install}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version, "0.7.1",
        "these tests are written against stm32loader 0.7.1: install {install}"
    );
    python
}

/// `stm32boot sim PART --rfc2217 127.0.0.1:0 --state FILE [FLAGS]` for a [`SimChip`]; its first
/// line is the `rfc2217://` URL.
fn rfc2217_sim(chip: &SimChip, flags: &[&str]) -> SimProcess {
    let sim = SimProcess::start(chip, &["--rfc2217", "127.0.0.1:0"], flags);
    if !sim.first_line.starts_with("rfc2217://127.0.0.1:") {
        panic!(
            "the sim should print its rfc2217:// URL first; its log:\n{}",
            sim.log()
        );
    }
    sim
}

/// Run the wrapped stm32loader with `-p URL -f FAMILY ARGS` in the chip's directory.
fn stm32loader(chip: &SimChip, sim: &SimProcess, family: &str, args: &[&str]) -> Output {
    let python = python();
    let mut all = vec![WRAPPER, "-p", &sim.first_line, "-f", family];
    all.extend(args);
    run_with_limit(&python, &all, chip.dir.path(), CLIENT_LIMIT)
        .expect("stm32loader finishes within the limit")
}

fn describe(out: &Output, sim: &SimProcess) -> String {
    format!(
        "({})\nstdout: {}\nstderr: {}\nsim log: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sim.log()
    )
}

/// Run stm32loader and require exit 0; returns its stderr (where it reports).
fn stm32loader_ok(chip: &SimChip, sim: &SimProcess, family: &str, args: &[&str]) -> String {
    let out = stm32loader(chip, sim, family, args);
    assert!(
        out.status.success(),
        "stm32loader -f {family} {args:?} on {} failed {}",
        chip.part,
        describe(&out, sim)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn device(part: &str) -> Device {
    let table = DeviceTable::builtin().expect("device table");
    table.by_part(part).expect("part in the table").clone()
}

/// What the chip in the state file runs (the state records it; see src/sim/state.rs).
fn running(chip: &SimChip) -> Mode {
    let port = chip.port();
    let spec = SimSpec::parse(port.trim_start_matches("sim:")).expect("spec");
    let table = DeviceTable::builtin().expect("device table");
    spec.build(table).expect("state loads").mode()
}

/// A firmware image for `part` that the chip boots: a vector table with the initial stack
/// pointer at the top of RAM and a Thumb reset vector at `FLASH + entry_offset`, then
/// pseudo-random bytes. The reset vector tells one image from another in [`Mode::Application`].
fn app_image(part: &str, len: usize, seed: u32, entry_offset: u32) -> Vec<u8> {
    let d = device(part);
    let mut image = pattern(len, seed);
    let sp = d.ram.end.wrapping_add(1);
    image[..4].copy_from_slice(&sp.to_le_bytes());
    image[4..8].copy_from_slice(&(FLASH + entry_offset + 1).to_le_bytes());
    image
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("writing a test file");
}

/// Prepare the state with our own CLI: `marker` half-way into flash (bank 2 on dual-bank
/// parts), then `app` at the start of flash, started with Go. The chip then runs its
/// application from 0x08000000 (Go's address, not the reset vector).
fn prepare_running_app(chip: &SimChip, app: &[u8], marker: &[u8]) -> u32 {
    let d = device(&chip.part);
    let marker_at = FLASH + u32::try_from(d.flash.len() / 2).expect("flash size");
    let (app_bin, marker_bin) = (chip.file("app0.bin"), chip.file("marker.bin"));
    write_file(&app_bin, app);
    write_file(&marker_bin, marker);
    let port = chip.port();
    let at = format!("0x{marker_at:08X}");
    ok(&[
        "write",
        path_str(&marker_bin),
        "--address",
        &at,
        "--port",
        &port,
    ]);
    let app_path = path_str(&app_bin);
    ok(&[
        "write",
        app_path,
        "--address",
        "0x08000000",
        "--verify",
        "--go",
        "--port",
        &port,
    ]);
    assert_eq!(
        running(chip),
        Mode::Application { entry: FLASH },
        "the prepared chip should run its application"
    );
    marker_at
}

/// The chip runs the application, and our own CLI says so: it cannot sync (exit 3).
fn assert_runs_application(chip: &SimChip, entry: u32) {
    assert_eq!(
        running(chip),
        Mode::Application { entry },
        "after stm32loader's exit reset (BOOT0 low) the chip should run the image in flash"
    );
    let err = fails(&["info", "--port", &chip.port()], 3);
    assert!(err.contains("running its application"), "{err}");
}

/// (a) and (d): the chip starts in its application; only stm32loader's DTR/RTS sequence
/// (BOOT0 high, NRST pulsed) can bring it into the bootloader, where it answers Get ID; at exit
/// stm32loader resets it with BOOT0 low and the application boots from its reset vector.
fn reset_sequence_enters_the_bootloader(part: &str, family: &str, pid: &str) {
    python();
    let chip = SimChip::new(part);
    let app = app_image(part, 2048, 11, 0x1C0);
    let marker = pattern(1024, 12);
    let marker_at = prepare_running_app(&chip, &app, &marker);
    let before = chip.peek(FLASH, app.len());

    let sim = rfc2217_sim(&chip, &[]);
    let report = stm32loader_ok(&chip, &sim, family, &[]);
    assert!(
        report.contains(&format!("Chip id: {pid}")),
        "stm32loader should read the PID from the bootloader:\n{report}"
    );
    sim.stop();

    // Out of reset from its vector table (0x080001C0), not from Go's 0x08000000: a real reset.
    assert_runs_application(&chip, FLASH + 0x1C0);
    assert_eq!(chip.peek(FLASH, app.len()), before, "flash untouched");
    assert_eq!(
        chip.peek(marker_at, marker.len()),
        marker,
        "flash untouched"
    );
}

#[test]
fn f4_reset_sequence_brings_the_application_into_the_bootloader_and_back() {
    reset_sequence_enters_the_bootloader("stm32f411", "F4", "0x431");
}

#[test]
fn l4_reset_sequence_brings_the_application_into_the_bootloader_and_back() {
    reset_sequence_enters_the_bootloader("stm32l476", "L4", "0x415");
}

/// (b), (c) and (d): from a running application, `-e -w -v` mass-erases (the marker in the
/// second half of flash goes too), writes and verifies a 5000-byte image (not a multiple of
/// stm32loader's 256-byte blocks; a multiple of 8 for L4's double words); `-r` reads it back;
/// at exit the new image boots from its own reset vector.
fn erase_write_verify_read(part: &str, family: &str) {
    python();
    let chip = SimChip::new(part);
    let marker = pattern(4096, 21);
    let marker_at = prepare_running_app(&chip, &app_image(part, 1024, 20, 0x100), &marker);
    let image = app_image(part, 5000, 22, 0x200);
    let bin = chip.file("firmware.bin");
    write_file(&bin, &image);

    let sim = rfc2217_sim(&chip, &[]);
    let report = stm32loader_ok(
        &chip,
        &sim,
        family,
        &["-e", "-w", "-v", "-n", path_str(&bin)],
    );
    assert!(report.contains("Verification OK"), "{report}");
    let back = chip.file("back.bin");
    let len = image.len().to_string();
    let args = ["-r", "-a", "0x08000000", "-l", &len, "-n", path_str(&back)];
    stm32loader_ok(&chip, &sim, family, &args);
    assert_eq!(
        std::fs::read(&back).expect("stm32loader wrote the read-back file"),
        image,
        "stm32loader -r reads back what it wrote"
    );
    sim.stop();

    let d = device(part);
    let flash = chip.peek(FLASH, usize::try_from(d.flash.len()).expect("flash size"));
    assert_eq!(&flash[..image.len()], &image[..], "the image is in flash");
    let stray = flash[image.len()..].iter().position(|&b| b != 0xFF);
    assert_eq!(
        stray.map(|i| FLASH as usize + image.len() + i),
        None,
        "the mass erase left nothing else (the marker was at 0x{marker_at:08X})"
    );
    assert_runs_application(&chip, FLASH + 0x200);
}

#[test]
fn f4_erase_write_verify_and_read_back() {
    erase_write_verify_read("stm32f411", "F4");
}

#[test]
fn l4_erase_write_verify_and_read_back() {
    erase_write_verify_read("stm32l476", "L4");
}

/// (e): with BOOT0 wired active high on the simulator (`--invert-boot0`), stm32loader's default
/// sequence resets the chip with BOOT0 low: the application boots, so it cannot sync, and its
/// exit reset ("from flash") drives BOOT0 high and leaves the ROM running. Told `-B` (BOOT0
/// active low), stm32loader drives the line the other way: it syncs, writes, and its exit reset
/// boots the new image.
#[test]
fn f4_inverted_boot0_fails_by_default_and_works_with_boot0_active_low() {
    python();
    let (part, family) = ("stm32f411", "F4");
    let chip = SimChip::new(part);
    prepare_running_app(&chip, &app_image(part, 1024, 30, 0x100), &pattern(256, 31));

    let sim = rfc2217_sim(&chip, &["--invert-boot0"]);
    let out = stm32loader(&chip, &sim, family, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stm32loader's default polarity should not reach the bootloader {}",
        describe(&out, &sim)
    );
    assert!(stderr.contains("Can't init into bootloader"), "{stderr}");
    sim.stop();
    assert_eq!(
        running(&chip),
        Mode::BootloaderUnsynced,
        "with BOOT0 inverted, stm32loader's reset 'into flash' starts the ROM"
    );

    let image = app_image(part, 3000, 32, 0x300);
    let bin = chip.file("firmware.bin");
    write_file(&bin, &image);
    let sim = rfc2217_sim(&chip, &["--invert-boot0"]);
    let args = ["-B", "-e", "-w", "-v", "-n", path_str(&bin)];
    let report = stm32loader_ok(&chip, &sim, family, &args);
    assert!(
        report.contains("Chip id: 0x431") && report.contains("Verification OK"),
        "{report}"
    );
    sim.stop();
    assert_eq!(chip.peek(FLASH, image.len()), image);
    assert_runs_application(&chip, FLASH + 0x300);
}
