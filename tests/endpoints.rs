//! The simulator's network endpoints and fault injection, driven by our own CLI and by a raw
//! socket: raw TCP, RFC 2217 with DTR wired to NRST, the application's banner and the magic
//! string that enters the bootloader, and faults that replay from their seed.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const FLASH: u32 = 0x0800_0000;

/// `stm32boot sim` on a TCP port (`--tcp` or `--rfc2217`); its first line is the URL.
fn net_sim(chip: &SimChip, endpoint: &str, extra: &[&str]) -> SimProcess {
    let sim = SimProcess::start(chip, &[endpoint, "127.0.0.1:0"], extra);
    let url = &sim.first_line;
    assert!(url.contains("://127.0.0.1:"), "sim printed '{url}'");
    sim
}

/// The `host:port` of the sim's URL.
fn addr(sim: &SimProcess) -> &str {
    sim.first_line
        .split_once("://")
        .map(|x| x.1)
        .unwrap_or_default()
}

/// A firmware image whose vector table the simulated chip accepts (SP in RAM, Thumb reset
/// vector in flash), followed by filler.
fn firmware(len: usize) -> Vec<u8> {
    let mut fw = pattern(len, 5);
    fw[..4].copy_from_slice(&0x2001_0000u32.to_le_bytes());
    fw[4..8].copy_from_slice(&0x0800_0101u32.to_le_bytes());
    fw
}

#[test]
fn raw_tcp_endpoint_takes_a_verified_write() {
    let chip = SimChip::new("stm32f411");
    let sim = net_sim(&chip, "--tcp", &[]);
    assert!(sim.first_line.starts_with("tcp://"));
    let image = pattern(20_000, 3);
    let file = chip.file("fw.bin");
    std::fs::write(&file, &image).expect("image");
    ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &sim.first_line,
    ]);
    sim.stop();
    assert_eq!(chip.peek(FLASH, image.len()), image);
}

#[test]
fn rfc2217_dtr_holds_the_chip_in_reset() {
    let chip = SimChip::new("stm32l476");
    let sim = net_sim(&chip, "--rfc2217", &[]);
    // DTR asserted pulls NRST low (DTR → NRST, active low, the default wiring): nothing answers.
    let err = fails(&["info", "--port", &sim.first_line, "--dtr", "high"], 3);
    assert!(err.contains("no answer"), "{err}");
    // The connection's end released the lines; the chip boots its ROM (RTS released: BOOT0
    // high) and answers.
    let out = ok(&["info", "--port", &sim.first_line]);
    assert!(out.contains("STM32L47x"), "{out}");
    // With NRST wired to nothing, DTR does nothing.
    drop(sim);
    let sim = net_sim(&chip, "--rfc2217", &["--nrst", "none"]);
    ok(&["info", "--port", &sim.first_line, "--dtr", "high"]);
}

/// Read from `s` until `want` has arrived (or fail after a generous deadline).
fn read_until(s: &mut TcpStream, want: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("socket timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = s.read(&mut buf).expect("bytes before the deadline");
        assert!(n > 0, "connection closed; got {got:02X?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn the_application_prints_a_banner_and_its_magic_string_enters_the_bootloader() {
    let chip = SimChip::new("stm32f411");
    let file = chip.file("fw.bin");
    std::fs::write(&file, firmware(4096)).expect("image");
    // The chip runs the firmware when the simulator starts.
    ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--go",
        "--port",
        &chip.port(),
    ]);
    let sim = net_sim(&chip, "--tcp", &["--app-enter-bootloader", "UPDATE-NOW"]);
    let mut s = TcpStream::connect(addr(&sim)).expect("connect");
    // The magic string makes the firmware jump to the ROM, which syncs on 0x7F.
    s.write_all(b"UPDATE-NOW").expect("send");
    s.write_all(&[0x7F]).expect("send");
    assert_eq!(read_until(&mut s, &[0x79]), [0x79]);
    // Go to the start of flash: ACK, ACK, and the firmware's banner.
    s.write_all(&[0x21, 0xDE, 0x08, 0x00, 0x00, 0x00, 0x08])
        .expect("send");
    let got = read_until(&mut s, b"\r\n");
    assert_eq!(&got[..2], &[0x79, 0x79]);
    let text = String::from_utf8_lossy(&got[2..]);
    assert!(
        text.contains("application running from 0x08000000"),
        "{text}"
    );
    // And again: the firmware listens for the magic string after every start.
    s.write_all(b"xxUPDATE-NOW").expect("send");
    s.write_all(&[0x7F]).expect("send");
    assert_eq!(read_until(&mut s, &[0x79]), [0x79]);
}

#[test]
fn nack_at_the_nth_command_fails_the_write_with_the_command_named() {
    // Connect (4 commands), the unique ID (1), the check that the image's 4 KiB of the sector
    // are still blank (16 reads; so no erase), then the writes: command 26 is the fifth Write
    // Memory.
    let chip = SimChip::with_options("stm32f411", "nack_at=26");
    let file = chip.file("fw.bin");
    std::fs::write(&file, pattern(4096, 1)).expect("image");
    let err = fails(
        &[
            "write",
            path_str(&file),
            "-a",
            "0x08000000",
            "--port",
            &chip.port(),
        ],
        5,
    );
    assert!(err.contains("NACK") || err.contains("refused"), "{err}");
    assert!(err.contains("Write Memory (0x31)"), "{err}");
}

#[test]
fn power_loss_mid_write_leaves_a_half_programmed_block_and_the_chip_comes_back() {
    let chip = SimChip::with_options("stm32l476", "power_loss_at=write:3@0.5");
    let image = pattern(2048, 8);
    let file = chip.file("fw.bin");
    std::fs::write(&file, &image).expect("image");
    fails(
        &[
            "write",
            path_str(&file),
            "-a",
            "0x08000000",
            "--port",
            &chip.port(),
        ],
        5,
    );
    // Blocks 1 and 2 are written, block 3 half (in whole double words), block 4 not at all.
    let flash = chip.peek(FLASH, 1024);
    assert_eq!(&flash[..512], &image[..512]);
    assert_eq!(&flash[512..640], &image[512..640]);
    assert!(flash[640..].iter().all(|&b| b == 0xFF));
    // Power is back for the next command (the fault fires once per simulator run, and the
    // state file holds no pending fault): a retry with the same options rewrites everything.
    let retry = SimChip {
        dir: chip.dir,
        part: chip.part.clone(),
        options: String::new(),
    };
    ok(&[
        "write",
        path_str(&file),
        "-a",
        "0x08000000",
        "--verify",
        "--port",
        &retry.port(),
    ]);
    assert_eq!(retry.peek(FLASH, image.len()), image);
}

#[test]
fn link_faults_replay_from_their_seed() {
    let attempt = |seed: u32| {
        let chip = SimChip::with_options("stm32f411", &format!("seed={seed}&corrupt=0.004"));
        let file = chip.file("fw.bin");
        std::fs::write(&file, pattern(8192, 2)).expect("image");
        let out = run(&[
            "write",
            path_str(&file),
            "-a",
            "0x08000000",
            "--verify",
            "--json",
            "--port",
            &chip.port(),
        ]);
        let flash = chip.peek(FLASH, 8192);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            flash,
        )
    };
    let a = attempt(42);
    let b = attempt(42);
    assert_eq!(a, b, "the same seed gives the same run");
    let others: Vec<_> = (43..46).map(attempt).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "other seeds give other faults"
    );
}
