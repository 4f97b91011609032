//! The simulated chip's option bytes, protection, dual-bank boot and line faults, driven through
//! the library (the bootloader protocol byte by byte, and the in-process link) and through the
//! CLI where it has the operation (`write`, `read`, `erase`, `protect`, `info`).
//!
//! What the reference says and these tests check: option values take effect when the option
//! loader runs at the reset after an option-byte command; a value/complement mismatch loads as
//! all ones on F0/F1 (read protection); the F2/F4/F7 flash controller writes complements itself;
//! level 2 boots flash and leaves only Get, Get Version and Get ID; BFB2 (or G0's nSWAP_BANK)
//! boots bank 2 when it holds a vector table, else bank 1; write protection makes erase and
//! program fail silently; a one-wire adapter echoes, a wrong baud rate or parity loses bytes.

mod common;

use common::*;
use std::time::Duration;
use stm32boot::device::DeviceTable;
use stm32boot::link::{LineSettings, Link, LinkError, Parity};
use stm32boot::protocol::{checksum, u32_field};
use stm32boot::sim::chip::Area;
use stm32boot::sim::{state, Mode, SimSpec, Target};
use stm32boot::transport::PortSpec;

const ACK: u8 = 0x79;
const NACK: u8 = 0x1F;

fn table() -> &'static DeviceTable {
    DeviceTable::builtin().expect("built-in table")
}

fn build(spec: &str) -> Target {
    SimSpec::parse(spec)
        .expect("sim spec")
        .build(table())
        .expect("target builds")
}

/// The chip `sim`'s state file holds, as a target (resumed as it was saved).
fn load(sim: &SimChip) -> Target {
    build(sim.port().trim_start_matches("sim:"))
}

fn save(sim: &SimChip, t: &Target) {
    state::save_target(t, &sim.state()).expect("state saves");
}

/// Feed the chip `bytes`; its replies.
fn send(t: &mut Target, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        t.feed(b, &mut out);
    }
    out
}

/// Sync the bootloader, unless a previous command (the CLI) left it synced.
fn sync(t: &mut Target) {
    if t.mode() != Mode::Bootloader {
        assert_eq!(send(t, &[0x7F]), [ACK], "sync");
    }
}

/// Write Memory with every phase ACKed (as the ROM does even when the flash refuses).
fn write_memory(t: &mut Target, addr: u32, data: &[u8]) {
    assert_eq!(send(t, &[0x31, 0xCE]), [ACK]);
    assert_eq!(send(t, &u32_field(addr)), [ACK], "address 0x{addr:08X}");
    let mut frame = vec![(data.len() - 1) as u8];
    frame.extend_from_slice(data);
    frame.push(checksum(&frame));
    assert_eq!(send(t, &frame), [ACK], "data at 0x{addr:08X}");
}

/// Erase one page with the erase command the part lists; the ROM ACKs.
fn erase_page(t: &mut Target, index: u16) {
    if t.chip().device().bootloader.commands.contains(&0x44) {
        let mut frame = vec![0x00, 0x00];
        frame.extend_from_slice(&index.to_be_bytes());
        frame.push(checksum(&frame));
        assert_eq!(send(t, &[0x44, 0xBB]), [ACK]);
        assert_eq!(send(t, &frame), [ACK], "erase page {index}");
    } else {
        let page = u8::try_from(index).expect("legacy erase takes page numbers below 256");
        assert_eq!(send(t, &[0x43, 0xBC]), [ACK]);
        assert_eq!(send(t, &[0x00, page, page]), [ACK], "erase page {page}");
    }
}

/// A vector table with the stack at 0x20004000 and the reset handler at `entry` (Thumb), then
/// `len - 8` pattern bytes: an image linked for wherever `entry` points.
fn app(entry: u32, len: usize) -> Vec<u8> {
    let mut v = 0x2000_4000u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(entry | 1).to_le_bytes());
    v.extend(pattern(len - 8, entry));
    v
}

/// Write `data` at `addr` through the CLI, verified.
fn cli_write(sim: &SimChip, addr: u32, data: &[u8]) {
    let file = sim.file(&format!("{addr:08x}.bin"));
    std::fs::write(&file, data).expect("write file");
    ok(&[
        "write",
        path_str(&file),
        "-a",
        &format!("0x{addr:08X}"),
        "--verify",
        "--port",
        &sim.port(),
    ]);
}

/// The option-byte window `window` with field `name` set to `value` (complements rewritten).
fn options_with(t: &Target, window: usize, name: &str, value: u64) -> (u32, Vec<u8>) {
    let layout = t
        .chip()
        .device()
        .ob_layout
        .clone()
        .expect("part has a layout");
    let mut image = t.chip().stored_options();
    layout.set(&mut image, name, value).expect("field settable");
    image.windows[window].clone()
}

/// Set an option field through a Write Memory to the option bytes: the chip resets and the new
/// value loads.
fn set_option(t: &mut Target, window: usize, name: &str, value: u64) {
    let (base, bytes) = options_with(t, window, name, value);
    sync(t);
    write_memory(t, base, &bytes);
    assert_eq!(t.mode(), Mode::BootloaderUnsynced, "an option write resets");
}

/// Set an option field in the chip's option bytes directly and reset (parts whose option bits
/// keep them out of the bootloader, such as a G0 with nBOOT_SEL set and code in flash).
fn set_option_directly(t: &mut Target, window: usize, name: &str, value: u64) {
    let (base, bytes) = options_with(t, window, name, value);
    t.chip_mut().write(Area::OptionBytes(window), base, &bytes);
    t.reset();
}

/// Reset with BOOT0 low.
fn boot_flash(t: &mut Target) -> String {
    t.set_boot0_pin(false);
    t.reset();
    String::from_utf8(t.take_boot_output()).expect("banner is text")
}

// ---- Complements and the option loader ---------------------------------------------------------

#[test]
fn f1_broken_rdp_pair_comes_up_read_protected_after_the_reset() {
    let sim = SimChip::new("stm32f103xb");
    cli_write(&sim, 0x0800_0000, &pattern(256, 1));
    let mut t = load(&sim);
    sync(&mut t);
    // RDP A5 (no protection) but its complement 00 instead of 5A.
    let mut ob = t.chip().peek(0x1FFF_F800, 16).expect("option bytes");
    ob[1] = 0x00;
    write_memory(&mut t, 0x1FFF_F800, &ob);
    assert_eq!(t.chip().peek(0x1FFF_F800, 2).expect("stored"), [0xA5, 0x00]);
    assert_eq!(t.chip().loaded_options().at(0x1FFF_F800), Some(0xFF));
    assert_eq!(t.chip().rdp_level(), 1);
    sync(&mut t);
    assert_eq!(send(&mut t, &[0x11, 0xEE]), [NACK], "Read Memory refused");
    save(&sim, &t);
    let info = ok(&["info", "--port", &sim.port()]);
    assert!(info.contains("readout active"), "{info}");
    let out = sim.file("r.bin");
    let err = fails(
        &[
            "read",
            "0x08000000",
            "16",
            "-o",
            path_str(&out),
            "--port",
            &sim.port(),
        ],
        5,
    );
    assert!(err.contains("read protection"), "{err}");
    ok(&[
        "protect",
        "--port",
        &sim.port(),
        "readout",
        "off",
        "--confirm-mass-erase",
    ]);
    assert_eq!(sim.chip().rdp_level(), 0);
    assert_eq!(sim.peek(0x0800_0000, 4), [0xFF; 4], "mass-erased");
}

#[test]
fn f4_computes_complements_and_ignores_the_hosts() {
    let mut t = build("stm32f411");
    sync(&mut t);
    // nWRP0 cleared (sector 0 protected), every complement byte sent as 00.
    let ob = [
        0xEC, 0xAA, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x0F, 0x00, 0x00, 0xFF, 0xFF, 0xFF,
        0xFF,
    ];
    write_memory(&mut t, 0x1FFF_C000, &ob);
    assert_eq!(
        t.chip().peek(0x1FFF_C000, 12).expect("stored"),
        [0xEC, 0xAA, 0x13, 0x55, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x0F, 0x01, 0xF0]
    );
    assert_eq!(
        t.chip().rdp_level(),
        0,
        "no mismatch: the chip wrote the pair"
    );
    assert!(t.chip().is_write_protected(0x0800_0000));
    sync(&mut t);
    assert_eq!(send(&mut t, &[0x11, 0xEE]), [ACK]);
    assert_eq!(send(&mut t, &u32_field(0x1FFF_C008)), [ACK]);
    assert_eq!(send(&mut t, &[0x03, 0xFC]), [ACK, 0xFE, 0x0F, 0x01, 0xF0]);
}

#[test]
fn g0_ignores_host_complements_and_a_mismatch_from_a_state_file_locks_it() {
    let sim = SimChip::new("stm32g071");
    let mut t = load(&sim);
    sync(&mut t);
    // A Write Memory whose OPTR complement is wrong: the controller writes its own.
    let factory = t.chip().stored_options();
    let mut bytes = factory.windows[0].1.clone();
    bytes[4] ^= 0x01;
    write_memory(&mut t, 0x1FFF_7800, &bytes);
    assert_eq!(t.chip().stored_options(), factory);
    assert!(!t.chip().options_locked());
    save(&sim, &t);
    // Break the same byte in the state file: the option loader finds the mismatch.
    let mut file = std::fs::read(sim.state()).expect("state file");
    let header_end = file
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("two header lines");
    let flash = t.chip().device().flash.len() as usize;
    file[header_end + flash + 4] ^= 0x01;
    std::fs::write(sim.state(), file).expect("state file");
    let t = load(&sim);
    assert!(t.chip().options_locked());
    assert_eq!(t.chip().rdp_level(), 2, "a locked G0 behaves as level 2");
    assert!(!t.chip().boots_system_memory(true));
}

// ---- Read protection level 2 ---------------------------------------------------------------

#[test]
fn rdp_level_2_boots_flash_and_leaves_only_get_version_and_id() {
    let sim = SimChip::with_options("stm32l476", "enter=UPDATE");
    cli_write(&sim, 0x0800_0000, &app(0x0800_0100, 1024));
    let mut t = load(&sim);
    sync(&mut t);
    let mut ob = t.chip().peek(0x1FFF_7800, 40).expect("option bytes");
    ob[0] = 0xCC;
    ob[4] = 0x33;
    write_memory(&mut t, 0x1FFF_7800, &ob);
    // BOOT0 is high, but level 2 disables boot from system memory.
    assert_eq!(t.mode(), Mode::Application { entry: 0x0800_0100 });
    save(&sim, &t);
    let err = fails(&["info", "--port", &sim.port()], 3);
    assert!(err.contains("application"), "{err}");
    // The firmware jumps to the ROM: a restricted bootloader.
    let mut t = load(&sim);
    assert!(send(&mut t, b"UPDATE").is_empty());
    sync(&mut t);
    assert_eq!(send(&mut t, &[0x01, 0xFE]), [ACK, 0x31, 0x00, 0x00, ACK]);
    assert_eq!(send(&mut t, &[0x02, 0xFD]), [ACK, 0x01, 0x04, 0x15, ACK]);
    assert_eq!(send(&mut t, &[0x00, 0xFF])[..3], [ACK, 0x0B, 0x31]);
    for cmd in [0x11u8, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92] {
        assert_eq!(send(&mut t, &[cmd, !cmd]), [NACK], "0x{cmd:02X}");
    }
    // The option bytes no longer change, whatever the chip is asked.
    let before = t.chip().stored_options();
    t.chip_mut().set_rdp_level1();
    t.chip_mut().readout_unprotect();
    t.chip_mut().write_unprotect();
    assert_eq!(t.chip().stored_options(), before);
    assert_eq!(t.chip().peek(0x0800_0000, 8), Some(app(0x0800_0100, 8)));
}

// ---- Dual-bank boot ----------------------------------------------------------------------------

/// Flash a bank-1 image and a bank-1-linked image in bank 2, set the bank-2 boot option, and
/// check what a reset with BOOT0 low runs; then erase bank 2's first page and check the
/// fallback to bank 1.
fn dual_bank_boot_through_the_cli(part: &str, bank2: u32, bank2_page: u16) {
    let sim = SimChip::new(part);
    cli_write(&sim, 0x0800_0000, &app(0x0800_0200, 1024));
    cli_write(&sim, bank2, &app(0x0800_0100, 1024));
    let mut t = load(&sim);
    let swap = t
        .chip()
        .device()
        .ob_layout
        .as_ref()
        .and_then(|l| l.boot_bank2.clone())
        .expect("dual-bank layout");
    set_option(&mut t, 0, &swap.field, swap.value);
    save(&sim, &t);
    let mut t = load(&sim);
    let banner = boot_flash(&mut t);
    let name = &t.chip().device().name;
    assert_eq!(
        banner,
        format!("{name} application running from bank 2 (0x{bank2:08X}), entry 0x08000100\r\n")
    );
    assert_eq!(t.mode(), Mode::Application { entry: 0x0800_0100 });
    assert_eq!(t.booted_bank(), Some(2));
    // Bank 2 blank at its start: bank 1 boots, with the usual banner.
    ok(&[
        "erase",
        "--pages",
        &bank2_page.to_string(),
        "--port",
        &sim.port(),
    ]);
    let mut t = load(&sim);
    let banner = boot_flash(&mut t);
    assert!(
        banner.contains("application running from 0x08000200"),
        "{part}: {banner}"
    );
    assert_eq!(t.booted_bank(), Some(1));
    // Nothing valid anywhere: lockup.
    ok(&["erase", "--pages", "0", "--port", &sim.port()]);
    let mut t = load(&sim);
    boot_flash(&mut t);
    assert_eq!(t.mode(), Mode::Lockup, "{part}");
}

#[test]
fn l476_bfb2_boots_a_bank_1_image_from_bank_2_and_falls_back() {
    dual_bank_boot_through_the_cli("stm32l476", 0x0808_0000, 256);
}

#[test]
fn l072_bfb2_boots_a_bank_1_image_from_bank_2_and_falls_back() {
    // Two banks of 96 KB; 128-byte pages, erased value 00.
    dual_bank_boot_through_the_cli("stm32l072", 0x0801_8000, 768);
}

#[test]
fn f429_g474_g0b1_and_f1_xl_boot_bank_2_as_their_options_say() {
    for (part, bank2, field, value) in [
        ("stm32f429", 0x0810_0000u32, "BFB2", 1u64),
        ("stm32g474", 0x0804_0000, "BFB2", 1),
        ("stm32g0b1", 0x0804_0000, "nSWAP_BANK", 0),
        ("stm32f103xg", 0x0808_0000, "BFB2", 0),
    ] {
        let mut t = build(part);
        let chip = t.chip_mut();
        chip.write(Area::Flash, 0x0800_0000, &app(0x0800_0200, 64));
        chip.write(Area::Flash, bank2, &app(0x0800_0100, 64));
        // Not yet: the option selects bank 1.
        assert!(
            boot_flash(&mut t).contains("running from 0x08000200"),
            "{part}"
        );
        set_option_directly(&mut t, 0, field, value);
        let banner = boot_flash(&mut t);
        assert!(
            banner.contains(&format!("bank 2 (0x{bank2:08X}), entry 0x08000100")),
            "{part}: {banner}"
        );
        // An image linked for bank 2's own addresses runs there too.
        let mut t2 = build(part);
        t2.chip_mut()
            .write(Area::Flash, bank2, &app(bank2 + 0x100, 64));
        set_option_directly(&mut t2, 0, field, value);
        boot_flash(&mut t2);
        assert_eq!(
            (t2.mode(), t2.booted_bank()),
            (
                Mode::Application {
                    entry: bank2 + 0x100
                },
                Some(2)
            ),
            "{part}"
        );
    }
}

#[test]
fn bank_2_is_not_remapped_for_the_bootloader() {
    let mut t = build("stm32l476");
    t.chip_mut().write(
        Area::Flash,
        0x0808_0000,
        &[0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0],
    );
    set_option(&mut t, 0, "BFB2", 1);
    sync(&mut t);
    assert_eq!(send(&mut t, &[0x11, 0xEE]), [ACK]);
    assert_eq!(send(&mut t, &u32_field(0x0808_0000)), [ACK]);
    assert_eq!(send(&mut t, &[0x03, 0xFC]), [ACK, 0x11, 0x22, 0x33, 0x44]);
}

// ---- Write protection --------------------------------------------------------------------------

/// Protect page `page` (at `addr`) through the CLI, which takes page numbers and sends the
/// family's Write Protect codes; check through the bootloader that erase and program of the
/// page are ACKed and change nothing, and that after `protect write off` they work.
fn write_protection_blocks(part: &str, addr: u32, page: u16) {
    let sim = SimChip::new(part);
    let before = pattern(256, u32::from(page));
    cli_write(&sim, addr, &before);
    ok(&[
        "protect",
        "--port",
        &sim.port(),
        "write",
        "on",
        &page.to_string(),
    ]);
    let mut t = load(&sim);
    assert!(t.chip().is_write_protected(addr), "{part}");
    sync(&mut t);
    erase_page(&mut t, page);
    write_memory(&mut t, addr, &[0u8; 16]);
    assert_eq!(t.chip().peek(addr, 256), Some(before.clone()), "{part}");
    // Through the CLI too: the write does not succeed and the flash keeps its content.
    let bin = sim.file("new.bin");
    std::fs::write(&bin, pattern(256, 99)).expect("write file");
    let out = run(&[
        "write",
        path_str(&bin),
        "-a",
        &format!("0x{addr:08X}"),
        "--verify",
        "--port",
        &sim.port(),
    ]);
    assert!(!out.status.success(), "{part}: the write must not verify");
    assert_eq!(sim.peek(addr, 256), before, "{part}");
    ok(&["protect", "--port", &sim.port(), "write", "off"]);
    let mut t = load(&sim);
    assert!(!t.chip().is_write_protected(addr), "{part}");
    sync(&mut t);
    erase_page(&mut t, page);
    let erased = t.chip().device().rules.erased;
    assert_eq!(t.chip().peek(addr, 4), Some(vec![erased; 4]), "{part}");
}

#[test]
fn f103_wrp_unit_blocks_erase_and_write() {
    // 1 KB pages, one WRP bit per 4 KB: page 5 is in unit 1 (pages 4-7).
    write_protection_blocks("stm32f103xb", 0x0800_1400, 5);
}

#[test]
fn f303_wrp_unit_blocks_erase_and_write() {
    // 2 KB pages: page 3 is in unit 1 (pages 2-3).
    write_protection_blocks("stm32f303xc", 0x0800_1800, 3);
}

#[test]
fn l072_wrp_sector_blocks_erase_and_write() {
    // 128-byte pages, 1 = protected per 4 KB: page 33 is in sector 1 (pages 32-63).
    write_protection_blocks("stm32l072", 0x0800_1080, 33);
}

#[test]
fn f429_wrp_of_sector_13_sits_in_nwrp2() {
    write_protection_blocks("stm32f429", 0x0810_4000, 13);
    let sim = SimChip::new("stm32f429");
    ok(&["protect", "--port", &sim.port(), "write", "on", "12,23"]);
    assert_eq!(
        sim.peek(0x1FFE_C008, 4),
        [0xFE, 0x07, 0x01, 0xF8],
        "nWRP2 bits 0 and 11"
    );
    assert_eq!(sim.peek(0x1FFF_C008, 2), [0xFF, 0x0F], "sectors 0-11 open");
}

#[test]
fn area_families_take_start_end_pairs() {
    // Through the ROM: raw pairs WRP1A 1-2, WRP1B empty, WRP2A bank-2 page 0, on an L476.
    let mut t = build("stm32l476");
    sync(&mut t);
    let codes = [1u8, 2, 0xFF, 0x00, 0, 0];
    let mut frame = vec![(codes.len() - 1) as u8];
    frame.extend_from_slice(&codes);
    frame.push(checksum(&frame));
    assert_eq!(send(&mut t, &[0x63, 0x9C]), [ACK]);
    assert_eq!(send(&mut t, &frame), [ACK]);
    assert_eq!(t.mode(), Mode::BootloaderUnsynced, "Write Protect resets");
    for (addr, protected) in [
        (0x0800_0000u32, false),
        (0x0800_0800, true),
        (0x0800_1000, true),
        (0x0800_1800, false),
        (0x0808_0000, true),
        (0x0808_0800, false),
    ] {
        assert_eq!(t.chip().is_write_protected(addr), protected, "0x{addr:08X}");
    }
    // Through the CLI (page numbers, global across banks) on a G474: the same areas.
    let sim = SimChip::new("stm32g474");
    ok(&["protect", "--port", &sim.port(), "write", "on", "1,2,128"]);
    assert_eq!(
        sim.peek(0x1FFF_7818, 4),
        [0x01, 0xFF, 0x02, 0xFF],
        "WRP1A 1-2"
    );
    let chip = sim.chip();
    for (addr, protected) in [
        (0x0800_0000u32, false),
        (0x0800_0800, true),
        (0x0800_1000, true),
        (0x0800_1800, false),
        (0x0804_0000, true),
        (0x0804_0800, false),
    ] {
        assert_eq!(chip.is_write_protected(addr), protected, "0x{addr:08X}");
    }
    ok(&["protect", "--port", &sim.port(), "write", "off"]);
    assert!(!sim.chip().is_write_protected(0x0800_0800));
    assert_eq!(
        sim.peek(0x1FFF_7818, 4),
        [0x7F, 0xFF, 0x00, 0xFF],
        "start 7F, end 00"
    );
}

// ---- OTP ----------------------------------------------------------------------------------------

#[test]
fn otp_reads_are_refused_under_read_protection() {
    let mut t = build("stm32f411");
    sync(&mut t);
    assert_eq!(send(&mut t, &[0x11, 0xEE]), [ACK]);
    assert_eq!(send(&mut t, &u32_field(0x1FFF_7800)), [ACK]);
    assert_eq!(send(&mut t, &[0x03, 0xFC]), [ACK, 0xFF, 0xFF, 0xFF, 0xFF]);
    assert_eq!(send(&mut t, &[0x82, 0x7D]), [ACK, ACK]);
    sync(&mut t);
    assert_eq!(send(&mut t, &[0x11, 0xEE]), [NACK]);
}

// ---- Line faults -------------------------------------------------------------------------------

/// An in-process link to `spec` at `line`.
fn link(spec: &str, line: LineSettings) -> Box<dyn Link> {
    PortSpec::parse(&format!("sim:{spec}"))
        .expect("port")
        .open(line, table())
        .expect("link opens")
}

/// Send `bytes` and collect what arrives within 100 ms (virtual time).
fn exchange(link: &mut dyn Link, bytes: &[u8]) -> Vec<u8> {
    link.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match link.read(&mut buf, Duration::from_millis(100)) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(LinkError::Timeout(_)) => return got,
            Err(e) => panic!("link failed: {e:?}"),
        }
    }
}

const EVEN: LineSettings = LineSettings {
    baud: 115_200,
    parity: Parity::Even,
};

#[test]
fn a_one_wire_adapter_echoes_every_byte() {
    let mut l = link("stm32f411?echo=1", EVEN);
    assert_eq!(exchange(l.as_mut(), &[0x7F]), [0x7F, ACK]);
    assert_eq!(
        exchange(l.as_mut(), &[0x02, 0xFD]),
        [0x02, 0xFD, ACK, 0x01, 0x04, 0x31, ACK]
    );
    let err = fails(&["info", "--port", "sim:stm32f411?echo=1"], 5);
    assert!(err.contains("echoes"), "{err}");
}

#[test]
fn the_rom_keeps_the_baud_rate_of_its_first_7f() {
    let mut l = link("stm32f411", EVEN);
    assert_eq!(exchange(l.as_mut(), &[0x7F]), [ACK]);
    l.set_line(LineSettings {
        baud: 57_600,
        parity: Parity::Even,
    })
    .expect("set line");
    assert!(exchange(l.as_mut(), &[0x02, 0xFD]).is_empty());
    assert!(exchange(l.as_mut(), &[0x7F]).is_empty(), "no re-sync");
    l.set_line(EVEN).expect("set line");
    // The lone 7F sent at the wrong rate was lost: the next pair is a whole command.
    assert_eq!(
        exchange(l.as_mut(), &[0x02, 0xFD]),
        [ACK, 0x01, 0x04, 0x31, ACK]
    );
    // Any rate the host starts with is the one the ROM measures.
    ok(&["info", "--port", "sim:stm32f411", "--baud", "9600"]);
}

#[test]
fn the_rom_runs_8e1_whatever_the_host_uses() {
    let none = LineSettings {
        baud: 115_200,
        parity: Parity::None,
    };
    let mut l = link("stm32f411", none);
    assert_eq!(exchange(l.as_mut(), &[0x7F]), [ACK], "7F and 79: odd bytes");
    assert!(
        exchange(l.as_mut(), &[0x00, 0xFF]).is_empty(),
        "Get is lost"
    );
    assert_eq!(
        exchange(l.as_mut(), &[0x01, 0xFE]),
        [ACK, 0x31, ACK],
        "Get Version arrives; the 00 bytes of its reply do not"
    );
    let odd = LineSettings {
        baud: 115_200,
        parity: Parity::Odd,
    };
    let mut l = link("stm32f411", odd);
    assert!(exchange(l.as_mut(), &[0x7F]).is_empty());
    fails(&["info", "--port", "sim:stm32f411", "--parity", "none"], 5);
    fails(&["info", "--port", "sim:stm32f411", "--parity", "odd"], 3);
}
