//! The built-in device table checked against the team's reference (`devices.md`, `an3155.md`):
//! every PID is present, page maps fill the flash, sector lists and layouts match §3, memory
//! windows match §2/§4/§7/§8, bootloader versions match §9/§10 and quirks match §11.

use stm32boot::device::{Device, DeviceTable, Quirk, Reprogram};

/// devices.md §4: the 65 entries of the stm32flash table.
const STM32FLASH_PIDS: [u16; 65] = [
    0x440, 0x444, 0x442, 0x445, 0x448, // F0
    0x412, 0x410, 0x414, 0x420, 0x428, 0x418, 0x430, // F1
    0x411, // F2
    0x432, 0x422, 0x439, 0x438, 0x446, // F3
    0x413, 0x419, 0x423, 0x433, 0x458, 0x431, 0x441, 0x421, 0x434, 0x463, // F4
    0x452, 0x449, 0x451, // F7
    0x466, 0x460, 0x467, 0x456, // G0
    0x468, 0x469, 0x479, // G4
    0x483, 0x450, 0x480, // H7
    0x457, 0x425, 0x417, 0x447, // L0
    0x416, 0x429, 0x427, 0x436, 0x437, // L1
    0x464, 0x435, 0x462, 0x415, 0x461, 0x470, 0x471, // L4
    0x472, // L5
    0x494, 0x495, // WB
    0x497, // WL
    0x482, // U5
    0x641, 0x9A8, 0x9B0, // medium-density PL, STM32W
];

/// devices.md §5: AN2606 PIDs missing from stm32flash.
const AN2606_ONLY_PIDS: [u16; 23] = [
    0x443, 0x453, 0x44C, 0x493, 0x44D, // C0
    0x44E, 0x44F, 0x45A, // C5
    0x474, 0x484, 0x478, 0x47A, // H5
    0x485, // H7R/S
    0x459, 0x489, // U0
    0x454, 0x42A, // U3
    0x455, 0x481, 0x476, // U5
    0x4B2, 0x492, 0x4B0, // WBA
];

/// One part per family, as the simulator (`sim:NAME`) and the per-family tests name them.
const CANONICAL: &[(&str, &str, u16)] = &[
    ("F0", "stm32f072", 0x448),
    ("F1", "stm32f103xb", 0x410),
    ("F2", "stm32f207", 0x411),
    ("F3", "stm32f303xc", 0x422),
    ("F4", "stm32f411", 0x431),
    ("F7", "stm32f746", 0x449),
    ("G0", "stm32g071", 0x460),
    ("G4", "stm32g474", 0x469),
    ("H5", "stm32h563", 0x484),
    ("H7", "stm32h743", 0x450),
    ("L0", "stm32l072", 0x447),
    ("L1", "stm32l152xe", 0x437),
    ("L4", "stm32l476", 0x415),
    ("L5", "stm32l552", 0x472),
    ("U5", "stm32u575", 0x482),
    ("WB", "stm32wb55", 0x495),
    ("WL", "stm32wle5", 0x497),
    ("C0", "stm32c031", 0x453),
    ("U0", "stm32u083", 0x489),
    ("U3", "stm32u385", 0x454),
    ("WBA", "stm32wba55", 0x492),
    ("C5", "stm32c5-44e", 0x44E),
    ("W", "stm32w108xb", 0x9A8),
];

const V22_COMMANDS: [u8; 11] = [
    0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x63, 0x73, 0x82, 0x92,
];
const V3X_COMMANDS: [u8; 11] = [
    0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92,
];

fn table() -> &'static DeviceTable {
    DeviceTable::builtin().expect("the built-in table parses")
}

fn pid(pid: u16) -> &'static Device {
    table()
        .by_pid(pid)
        .unwrap_or_else(|| panic!("PID 0x{pid:03X} is in the table"))
}

fn part(name: &str) -> &'static Device {
    table()
        .by_part(name)
        .unwrap_or_else(|| panic!("part {name} is in the table"))
}

fn starts(d: &Device) -> Vec<u32> {
    d.pages.iter().map(|p| p.address).collect()
}

fn sizes_k(d: &Device) -> Vec<u32> {
    d.pages.iter().map(|p| p.size / 1024).collect()
}

fn indices(d: &Device) -> Vec<u16> {
    d.pages.iter().map(|p| p.index).collect()
}

fn ob_default_byte(d: &Device, addr: u32) -> Option<u8> {
    d.ob_default.iter().find_map(|(start, bytes)| {
        let off = addr.checked_sub(*start)? as usize;
        bytes.get(off).copied()
    })
}

fn window(start: u32, end: u32) -> stm32boot::device::AddrRange {
    stm32boot::device::AddrRange { start, end }
}

#[test]
fn every_reference_pid_is_present_once_with_a_name_and_a_part() {
    let t = table();
    for p in STM32FLASH_PIDS.iter().chain(AN2606_ONLY_PIDS.iter()) {
        let count = t.devices().iter().filter(|d| d.pid == *p).count();
        assert_eq!(count, 1, "PID 0x{p:03X} appears once");
        let d = pid(*p);
        assert!(!d.name.trim().is_empty(), "PID 0x{p:03X} has a name");
        assert!(!d.parts.is_empty(), "PID 0x{p:03X} has part names");
    }
    assert!(t.devices().len() >= 87, "{} entries", t.devices().len());
    let mut all: Vec<u16> = t.devices().iter().map(|d| d.pid).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), t.devices().len(), "no PID is listed twice");
}

#[test]
fn every_part_name_finds_its_own_entry() {
    for d in table().devices() {
        for p in &d.parts {
            assert_eq!(p, &p.to_ascii_lowercase(), "{p} is lower case");
            let found = part(p);
            assert_eq!(
                found.pid, d.pid,
                "part {p} of PID 0x{:03X} finds PID 0x{:03X}",
                d.pid, found.pid
            );
        }
    }
}

#[test]
fn canonical_sim_names_and_well_known_parts_resolve() {
    for (family, name, p) in CANONICAL {
        let d = part(name);
        assert_eq!((d.family.as_str(), d.pid), (*family, *p), "{name}");
    }
    for (name, p) in [
        ("stm32f407", 0x413),
        ("stm32f407vgt6", 0x413),
        ("stm32f405rg", 0x413),
        ("stm32f429zi", 0x419),
        ("stm32f411re", 0x431),
        ("stm32l476rg", 0x415),
        ("stm32f103xbt6", 0x410),
        ("stm32f030xc", 0x442),
        ("stm32f030x8", 0x440),
        ("stm32l151xb", 0x416),
        ("stm32l151xb-a", 0x429),
    ] {
        assert_eq!(part(name).pid, p, "{name}");
    }
    // Every family in the table has a canonical part.
    for d in table().devices() {
        assert!(
            CANONICAL.iter().any(|(f, _, _)| *f == d.family),
            "family {} of PID 0x{:03X} has a canonical part",
            d.family,
            d.pid
        );
    }
}

#[test]
fn every_page_map_fills_the_flash_in_equal_banks() {
    for d in table().devices() {
        let who = format!("PID 0x{:03X}", d.pid);
        assert!(!d.pages.is_empty(), "{who}");
        assert_eq!(d.pages[0].address, d.flash.start, "{who}: first page");
        for w in d.pages.windows(2) {
            assert_eq!(
                u64::from(w[1].address),
                w[0].end(),
                "{who}: pages are contiguous"
            );
        }
        let last = d.pages.last().expect("pages");
        assert_eq!(
            last.end(),
            u64::from(d.flash.end) + 1,
            "{who}: last page ends the flash"
        );
        assert!(d.banks == 1 || d.banks == 2, "{who}");
        if d.banks == 2 {
            assert_eq!(
                d.bank_start(2),
                Some(d.flash.start + d.flash_size() / 2),
                "{who}: bank 2 starts half-way"
            );
        } else {
            assert_eq!(d.bank_start(2), None, "{who}");
        }
        // Re-deriving the map at the table's own size gives the same map.
        let again = d.with_flash_size(d.flash_size()).expect("re-derive");
        assert_eq!(again.pages, d.pages, "{who}");
        // Every erase unit has a timing figure.
        for p in &d.pages {
            assert!(
                d.erase_ms(p.size).is_some(),
                "{who}: erase time for {} B",
                p.size
            );
        }
        assert!(d.max_erase_pages >= 1 && d.max_erase_pages <= 511, "{who}");
    }
}

#[test]
fn memory_windows_are_sane() {
    for d in table().devices() {
        let who = format!("PID 0x{:03X}", d.pid);
        assert_eq!(d.ram.start, 0x2000_0000, "{who}");
        assert!(d.ram.end > d.ram.start, "{who}");
        assert!(
            d.bootloader_ram_end > d.ram.start,
            "{who}: the bootloader keeps some RAM"
        );
        assert!(d.bootloader_ram_end <= d.ram.end + 1, "{who}");
        assert!(!d.system_memory.is_empty(), "{who}");
        for w in &d.option_bytes {
            assert!(!w.is_empty(), "{who}");
            assert!(
                !d.flash.contains(w.start),
                "{who}: option bytes outside flash"
            );
        }
        if let Some(rdp) = d.rules.rdp_address {
            assert!(
                d.option_bytes.iter().any(|w| w.contains(rdp)),
                "{who}: the RDP byte lies in an option-byte window"
            );
            // Factory option bytes leave the part unprotected, complement included.
            assert_eq!(
                ob_default_byte(d, rdp),
                Some(d.rules.rdp_unprotected),
                "{who}"
            );
            let c = d.rules.ob_complement_offset.expect("complement offset");
            assert_eq!(
                ob_default_byte(d, rdp + c),
                Some(!d.rules.rdp_unprotected),
                "{who}"
            );
        } else {
            assert!(
                d.option_bytes.is_empty(),
                "{who}: no RDP byte, no OB window"
            );
        }
    }
}

#[test]
fn f4_single_bank_sector_lists_follow_section_3() {
    let f405 = part("stm32f405");
    let mut expected = vec![
        0x0800_0000,
        0x0800_4000,
        0x0800_8000,
        0x0800_C000,
        0x0801_0000,
    ];
    expected.extend((0..7).map(|n| 0x0802_0000 + n * 0x2_0000));
    assert_eq!(starts(f405), expected);
    assert_eq!(indices(f405), (0..12).collect::<Vec<_>>());
    assert_eq!(f405.pages[11].end(), 0x0810_0000);
    assert_eq!(pid(0x423).pages.len(), 6, "F401xB/C: sectors 0-5");
    assert_eq!(pid(0x433).pages.len(), 8, "F401xD/E: sectors 0-7");
    assert_eq!(pid(0x431).pages.len(), 8, "F411: sectors 0-7");
    assert_eq!(pid(0x411).pages.len(), 12, "F2: sectors 0-11");
    assert_eq!(sizes_k(pid(0x411))[..6], [16, 16, 16, 16, 64, 128]);
}

#[test]
fn f42x_2mb_has_two_banks_of_twelve_sectors() {
    for p in [0x419, 0x434] {
        let d = pid(p);
        assert_eq!(d.flash_size(), 2 << 20);
        assert_eq!(d.pages.len(), 24);
        assert_eq!(d.banks, 2);
        let s8 = d.page_by_index(8).expect("sector 8");
        assert_eq!((s8.address, s8.size, s8.bank), (0x0808_0000, 128 * 1024, 1));
        let s12 = d.page_by_index(12).expect("sector 12");
        assert_eq!(
            (s12.address, s12.size, s12.bank),
            (0x0810_0000, 16 * 1024, 2)
        );
        assert_eq!(indices(d), (0..24).collect::<Vec<_>>());
        assert_eq!(d.flash_size_register, Some(0x1FFF_7A22));
    }
}

#[test]
fn f42x_1mb_follows_db1m() {
    let d = pid(0x419);
    // Factory option bytes: DB1M = 0, one bank of sectors 0-11.
    let single = d.with_flash_size(1 << 20).expect("1 MB");
    assert_eq!(single.banks, 1);
    assert_eq!(single.pages.len(), 12);
    assert_eq!(indices(&single), (0..12).collect::<Vec<_>>());
    assert_eq!(single.pages[11].end(), 0x0810_0000);
    // DB1M = 1 (bit 6 of byte 0x1FFFC009): two 512 KB banks, bank 2 numbered 12-19.
    let reader = |a: u32| (a == 0x1FFF_C009).then_some(0x40u8);
    let dual = d.with_layout(1 << 20, &reader).expect("DB1M");
    assert_eq!(dual.banks, 2);
    assert_eq!(dual.bank_start(2), Some(0x0808_0000));
    let bank2: Vec<u16> = dual
        .pages
        .iter()
        .filter(|p| p.bank == 2)
        .map(|p| p.index)
        .collect();
    assert_eq!(bank2, (12..20).collect::<Vec<_>>());
    let bank1: Vec<u16> = dual
        .pages
        .iter()
        .filter(|p| p.bank == 1)
        .map(|p| p.index)
        .collect();
    assert_eq!(bank1, (0..8).collect::<Vec<_>>());
    assert_eq!(dual.page_by_index(12).expect("12").address, 0x0808_0000);
    assert!(dual.page_by_index(8).is_none(), "numbers 8-11 are skipped");
    assert_eq!(d.layout_option_addresses(1 << 20), vec![0x1FFF_C009]);
    // 512 KB: sectors 0-7.
    assert_eq!(d.with_flash_size(512 * 1024).expect("512K").pages.len(), 8);
    // The factory DB1M bit is clear.
    assert_eq!(ob_default_byte(d, 0x1FFF_C009).map(|b| b & 0x40), Some(0));
}

#[test]
fn f7_sector_lists_follow_section_3() {
    assert_eq!(
        sizes_k(pid(0x449)),
        vec![32, 32, 32, 32, 128, 256, 256, 256]
    );
    assert_eq!(
        sizes_k(pid(0x451)),
        vec![32, 32, 32, 32, 128, 256, 256, 256, 256, 256, 256, 256]
    );
    assert_eq!(pid(0x451).banks, 1);
    assert_eq!(sizes_k(pid(0x452)), vec![16, 16, 16, 16, 64, 128, 128, 128]);
    assert_eq!(pid(0x449).pages[5].address, 0x0804_0000);
}

#[test]
fn g4_dbank_selects_the_map() {
    let d = pid(0x469);
    assert_eq!(d.banks, 2);
    assert_eq!(d.pages.len(), 256);
    assert!(d.pages.iter().all(|p| p.size == 2048));
    assert_eq!(d.bank_start(2), Some(0x0804_0000));
    assert_eq!(d.page_at(0x0804_0000).expect("page").index, 128);
    // Factory OPTR 0xFFEFF8AA has DBANK (bit 22 = bit 6 of byte 0x1FFF7802) set.
    assert_eq!(ob_default_byte(d, 0x1FFF_7802), Some(0xEF));
    // DBANK = 0: one bank of 4 KB pages.
    let reader = |a: u32| (a == 0x1FFF_7802).then_some(0xAFu8);
    let single = d.with_layout(512 * 1024, &reader).expect("DBANK = 0");
    assert_eq!(single.banks, 1);
    assert_eq!(single.pages.len(), 128);
    assert!(single.pages.iter().all(|p| p.size == 4096));
    // DBANK = 1 read from the chip: the dual-bank map again.
    let reader = |a: u32| (a == 0x1FFF_7802).then_some(0xEFu8);
    assert_eq!(
        d.with_layout(512 * 1024, &reader).expect("DBANK = 1").pages,
        d.pages
    );
    assert_eq!(d.layout_option_addresses(512 * 1024), vec![0x1FFF_7802]);
}

#[test]
fn other_dual_bank_parts() {
    let h743 = pid(0x450);
    assert_eq!(
        (h743.pages.len(), h743.bank_start(2)),
        (16, Some(0x0810_0000))
    );
    assert!(h743.pages.iter().all(|p| p.size == 128 * 1024));
    let u575 = pid(0x482);
    assert_eq!(
        (u575.pages.len(), u575.bank_start(2)),
        (256, Some(0x0810_0000))
    );
    let l072 = pid(0x447);
    assert_eq!(l072.bank_start(2), Some(0x0801_8000));
    assert_eq!(pid(0x430).bank_start(2), Some(0x0808_0000), "F1 XL");
    assert_eq!(pid(0x436).banks, 2, "L1 D");
    assert_eq!(pid(0x437).banks, 2, "L1 E");
    assert_eq!(pid(0x415).bank_start(2), Some(0x0808_0000), "L476");
}

#[test]
fn l0_and_l1_erase_to_zero_and_never_mass_erase() {
    let l0 = pid(0x447);
    assert_eq!(l0.pages[0].size, 128);
    assert_eq!(l0.pages.len(), 192 * 1024 / 128);
    assert_eq!(l0.rules.erased, 0x00);
    assert_eq!(l0.rules.reprogram, Reprogram::WordZero);
    assert_eq!(l0.rules.program_unit, 4);
    assert!(l0.otp.is_none(), "L072: no OTP");
    assert_eq!(l0.erase_ms(128), Some((3, 4)));
    for d in table().devices() {
        if d.family == "L0" || d.family == "L1" {
            assert!(!d.mass_erase, "PID 0x{:03X}", d.pid);
            assert_eq!(d.rules.erased, 0x00, "PID 0x{:03X}", d.pid);
            assert_eq!(d.rules.rdp_address, Some(0x1FF8_0000));
            assert_eq!(d.rules.ob_complement_offset, Some(2));
            assert_eq!(d.option_bytes, vec![window(0x1FF8_0000, 0x1FF8_001F)]);
            assert!(d.max_erase_pages <= 511);
        } else {
            assert!(d.mass_erase, "PID 0x{:03X}", d.pid);
            assert_eq!(d.rules.erased, 0xFF, "PID 0x{:03X}", d.pid);
        }
    }
    assert_eq!(pid(0x437).pages[0].size, 256);
    // Level 0 pattern xx55xxAA at 1FF80000.
    assert_eq!(
        l0.ob_default
            .iter()
            .find(|(a, _)| *a == 0x1FF8_0000)
            .map(|(_, b)| b[..4].to_vec()),
        Some(vec![0xAA, 0x00, 0x55, 0xFF])
    );
}

#[test]
fn programming_rules_per_family() {
    let expect = |family: &str, unit: u32, reprogram: Reprogram, align: u32| {
        let mut seen = false;
        for d in table().devices().iter().filter(|d| d.family == family) {
            if matches!(d.pid, 0x480 | 0x485) {
                continue; // H7A3/B3 and H7R/S: 128-bit words, checked below
            }
            seen = true;
            let r = &d.rules;
            assert_eq!(
                (r.program_unit, r.reprogram, r.write_align),
                (unit, reprogram, align),
                "{family} PID 0x{:03X}",
                d.pid
            );
        }
        assert!(seen, "{family} has parts");
    };
    expect("F0", 2, Reprogram::UnitBlankOrZero, 4);
    expect("F1", 2, Reprogram::UnitBlankOrZero, 4);
    expect("F3", 2, Reprogram::UnitBlankOrZero, 4);
    expect("F2", 1, Reprogram::AndBits, 4);
    expect("F4", 1, Reprogram::AndBits, 4);
    expect("F7", 1, Reprogram::AndBits, 8);
    expect("L0", 4, Reprogram::WordZero, 8);
    expect("L1", 4, Reprogram::WordZero, 8);
    expect("L4", 8, Reprogram::UnitBlankOrZero, 8);
    expect("G0", 8, Reprogram::UnitBlankOrZero, 8);
    expect("G4", 8, Reprogram::UnitBlankOrZero, 8);
    expect("WB", 8, Reprogram::UnitBlankOrZero, 8);
    expect("WL", 8, Reprogram::UnitBlankOrZero, 8);
    expect("C0", 8, Reprogram::UnitBlankOrZero, 8);
    expect("U0", 8, Reprogram::UnitBlankOrZero, 8);
    expect("L5", 8, Reprogram::UnitBlank, 16);
    expect("U5", 16, Reprogram::UnitBlank, 16);
    expect("H5", 16, Reprogram::UnitBlank, 16);
    expect("H7", 32, Reprogram::UnitBlank, 8);
    expect("WBA", 16, Reprogram::UnitBlank, 16);
    expect("C5", 16, Reprogram::UnitBlank, 16);
    expect("U3", 8, Reprogram::UnitBlank, 8);
    let h7a3 = &pid(0x480).rules;
    assert_eq!((h7a3.program_unit, h7a3.write_align), (16, 8));
    let h7rs = &pid(0x485).rules;
    assert_eq!((h7rs.program_unit, h7rs.write_align), (16, 16));
    assert_eq!(pid(0x410).rules.rdp_unprotected, 0xA5, "F1 RDP");
    assert_eq!(pid(0x448).rules.rdp_unprotected, 0xAA, "F0 RDP");
}

#[test]
fn option_bytes_otp_and_uid_per_family() {
    let f1ob = vec![window(0x1FFF_F800, 0x1FFF_F80F)];
    for p in [
        0x440, 0x444, 0x442, 0x445, 0x448, 0x432, 0x422, 0x439, 0x438, 0x446,
    ] {
        let d = pid(p);
        assert_eq!(d.option_bytes, f1ob, "F0/F3 0x{p:03X}");
        assert_eq!(d.uid, Some(0x1FFF_F7AC), "F0/F3 0x{p:03X}");
        assert_eq!(d.rules.rdp_address, Some(0x1FFF_F800));
        assert!(d.otp.is_none());
    }
    for p in [0x412, 0x410, 0x414, 0x420, 0x428, 0x418, 0x430, 0x641] {
        let d = pid(p);
        assert_eq!(d.option_bytes, f1ob, "F1 0x{p:03X}");
        assert_eq!(d.uid, Some(0x1FFF_F7E8), "F1 0x{p:03X}");
        assert_eq!(d.flash_size_register, Some(0x1FFF_F7E0), "F1 0x{p:03X}");
    }
    assert_eq!(
        pid(0x448).ob_default,
        vec![(
            0x1FFF_F800,
            vec![
                0xAA, 0x55, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00,
                0xFF, 0x00
            ]
        )]
    );
    assert_eq!(pid(0x410).ob_default[0].1[..2], [0xA5, 0x5A]);
    // F2/F4: one 16-byte block, two on F42x/F469; the F2/F4 OTP with its lock bytes.
    for p in [
        0x411, 0x413, 0x419, 0x423, 0x433, 0x458, 0x431, 0x441, 0x421, 0x434, 0x463,
    ] {
        let d = pid(p);
        assert_eq!(
            d.option_bytes[0],
            window(0x1FFF_C000, 0x1FFF_C00F),
            "0x{p:03X}"
        );
        let otp = d.otp.expect("F2/F4 OTP");
        assert_eq!(otp.range, window(0x1FFF_7800, 0x1FFF_7A0F), "0x{p:03X}");
        assert_eq!(
            (otp.block_size, otp.lock_start),
            (Some(32), Some(0x1FFF_7A00))
        );
        assert_eq!(d.uid, Some(0x1FFF_7A10));
        assert_eq!(d.flash_size_register, Some(0x1FFF_7A22));
        // Write protection: the nWRP mask of the option-byte layout.
        assert!(
            d.ob_layout
                .as_ref()
                .is_some_and(|l| l.field("nWRP").is_some()),
            "0x{p:03X}"
        );
        assert_eq!(d.rules.rdp_address, Some(0x1FFF_C001));
        let two = matches!(p, 0x419 | 0x434);
        assert_eq!(d.option_bytes.len(), if two { 2 } else { 1 }, "0x{p:03X}");
    }
    assert_eq!(pid(0x419).option_bytes[1], window(0x1FFE_C000, 0x1FFE_C00F));
    assert_eq!(
        pid(0x419).ob_default.len(),
        2,
        "both blocks have factory values"
    );
    // F7.
    for p in [0x452, 0x449, 0x451] {
        let d = pid(p);
        assert_eq!(d.option_bytes, vec![window(0x1FFF_0000, 0x1FFF_001F)]);
        let otp = d.otp.expect("F7 OTP");
        assert_eq!(otp.range, window(0x1FF0_F000, 0x1FF0_F40F));
        assert_eq!(
            (otp.block_size, otp.lock_start),
            (Some(64), Some(0x1FF0_F400))
        );
        assert_eq!(d.uid, Some(0x1FF0_F420));
        assert_eq!(d.system_memory, window(0x1FF0_0000, 0x1FF0_EDBF));
        assert_eq!(d.rules.rdp_address, Some(0x1FFF_0001));
    }
    // L0/L1 device info.
    for p in [0x457, 0x425, 0x417, 0x447] {
        assert_eq!(pid(p).uid, Some(0x1FF8_0050));
        assert_eq!(pid(p).flash_size_register, Some(0x1FF8_007C));
    }
    for p in [0x416, 0x429] {
        assert_eq!(pid(p).uid, Some(0x1FF8_0050));
    }
    for p in [0x427, 0x436, 0x437] {
        assert_eq!(pid(p).uid, Some(0x1FF8_00D0));
    }
    // L4, G0, G4, WB, WL: OTP 1FFF7000-1FFF73FF and UID 1FFF7590.
    for d in table().devices() {
        if ["L4", "G0", "G4", "WB", "WL"].contains(&d.family.as_str()) {
            let who = format!("PID 0x{:03X}", d.pid);
            assert_eq!(
                d.otp.map(|o| o.range),
                Some(window(0x1FFF_7000, 0x1FFF_73FF)),
                "{who}"
            );
            assert_eq!(d.uid, Some(0x1FFF_7590), "{who}");
            assert_eq!(d.flash_size_register, Some(0x1FFF_75E0), "{who}");
            assert!(
                d.ob_layout
                    .as_ref()
                    .is_some_and(|l| l.areas.iter().any(|a| a.write_protect)),
                "{who}: write-protection areas"
            );
            assert_eq!(d.rules.ob_complement_offset, Some(4), "{who}");
            assert_eq!(d.rules.rdp_address, Some(d.option_bytes[0].start), "{who}");
        }
    }
    assert_eq!(pid(0x415).option_bytes[0].start, 0x1FFF_7800);
    assert_eq!(pid(0x415).option_bytes[1].start, 0x1FFF_F800);
    assert_eq!(pid(0x461).option_bytes.len(), 2);
    for p in [0x466, 0x460, 0x467, 0x456] {
        assert_eq!(
            pid(p).option_bytes,
            vec![window(0x1FFF_7800, 0x1FFF_787F)],
            "G0 0x{p:03X}"
        );
    }
    assert_eq!(
        pid(0x469).option_bytes,
        vec![
            window(0x1FFF_7800, 0x1FFF_782F),
            window(0x1FFF_F800, 0x1FFF_F82F)
        ]
    );
    assert_eq!(
        pid(0x495).option_bytes,
        vec![window(0x1FFF_8000, 0x1FFF_807F)]
    );
    assert_eq!(pid(0x495).rules.rdp_address, Some(0x1FFF_8000));
    assert_eq!(
        pid(0x494).option_bytes,
        vec![window(0x1FFF_7800, 0x1FFF_787F)]
    );
    // G4 production value 0xFFEFF8AA, WRP areas empty (start FF, end 00).
    let g4 = pid(0x469);
    assert_eq!(
        g4.ob_default[0].1[..8],
        [0xAA, 0xF8, 0xEF, 0xFF, 0x55, 0x07, 0x10, 0x00]
    );
    for off in [0x18, 0x20] {
        assert_eq!(ob_default_byte(g4, 0x1FFF_7800 + off), Some(0xFF));
        assert_eq!(ob_default_byte(g4, 0x1FFF_7800 + off + 2), Some(0x00));
    }
    // H7, L5, U5, H5: option bytes not memory-mapped.
    for p in [0x450, 0x483, 0x480, 0x472, 0x482, 0x484] {
        let d = pid(p);
        assert!(d.option_bytes.is_empty(), "0x{p:03X}");
        assert_eq!(d.rules.rdp_address, None, "0x{p:03X}");
        assert!(
            d.ob_layout.is_none(),
            "0x{p:03X}: no write-protection model"
        );
    }
    assert_eq!(pid(0x450).uid, Some(0x1FF1_E800));
    assert_eq!(pid(0x450).flash_size_register, Some(0x1FF1_E880));
    assert_eq!(pid(0x472).uid, Some(0x0BFA_0590));
    assert_eq!(pid(0x482).uid, Some(0x0BFA_0700));
    assert_eq!(
        pid(0x482).otp.map(|o| o.range),
        Some(window(0x0BFA_0000, 0x0BFA_01FF))
    );
    assert_eq!(pid(0x484).uid, Some(0x08FF_F800));
    assert_eq!(pid(0x453).uid, Some(0x1FFF_7550));
    assert_eq!(pid(0x489).uid, Some(0x1FFF_6E50));
}

#[test]
fn stm32flash_errors_are_corrected() {
    assert_eq!(pid(0x483).flash.start, 0x0800_0000, "H72x flash start");
    assert_eq!(
        pid(0x497).option_bytes,
        vec![window(0x1FFF_7800, 0x1FFF_7FFF)],
        "WL OB end"
    );
    // F42x 2 MB: sector 8 is 128 KB, not the f4db list's 16 KB.
    assert_eq!(pid(0x419).page_by_index(8).expect("8").size, 128 * 1024);
    // L412: AN2606's bootloader RAM, not stm32flash's.
    assert_eq!(pid(0x464).bootloader_ram_end, 0x2000_2100);
}

#[test]
fn bootloader_ram_follows_sections_4_and_6() {
    let cases: &[(u16, u32, u32)] = &[
        (0x410, 0x2000_0200, 0x2000_4FFF),
        (0x412, 0x2000_0200, 0x2000_27FF),
        (0x430, 0x2000_0800, 0x2001_7FFF),
        (0x440, 0x2000_0800, 0x2000_1FFF),
        (0x448, 0x2000_1800, 0x2000_3FFF),
        (0x411, 0x2000_2000, 0x2001_FFFF),
        (0x413, 0x2000_3000, 0x2001_FFFF),
        (0x419, 0x2000_3000, 0x2002_FFFF),
        (0x449, 0x2000_4000, 0x2004_FFFF),
        (0x460, 0x2000_2700, 0x2000_8FFF),
        (0x469, 0x2000_4000, 0x2001_7FFF),
        (0x450, 0x2000_4100, 0x2001_FFFF),
        (0x415, 0x2000_3100, 0x2001_7FFF),
        (0x470, 0x2000_3200, 0x2009_FFFF),
        (0x494, 0x2000_5000, 0x2003_FFFF),
        (0x482, 0x2000_4000, 0x200B_FFFF),
    ];
    for &(p, first, last) in cases {
        let d = pid(p);
        assert_eq!(
            (d.bootloader_ram_end, d.ram.end),
            (first, last),
            "PID 0x{p:03X}"
        );
        assert!(d.in_usable_ram(first, 4) && !d.in_usable_ram(first - 4, 4));
    }
    // F04x/F070x6 and L01x/02x: AN2606 gives the host no RAM.
    for p in [0x445, 0x457] {
        let d = pid(p);
        assert_eq!(d.bootloader_ram_end, d.ram.end + 1, "PID 0x{p:03X}");
        assert!(!d.in_usable_ram(d.ram.start, 1) && !d.in_usable_ram(d.ram.end, 1));
    }
    // L072/073: AN2606's V11.x reservation.
    assert_eq!(pid(0x447).bootloader_ram_end, 0x2000_1400);
}

#[test]
fn bootloader_versions_and_commands_follow_section_9() {
    let version = |v: u8| -> Vec<u16> {
        let mut p: Vec<u16> = table()
            .devices()
            .iter()
            .filter(|d| d.bootloader.version == v)
            .map(|d| d.pid)
            .collect();
        p.sort_unstable();
        p
    };
    let sorted = |mut v: Vec<u16>| {
        v.sort_unstable();
        v
    };
    assert_eq!(
        version(0x22),
        sorted(vec![
            0x410, 0x412, 0x414, 0x420, 0x428, 0x418, 0x641, 0x9A8, 0x9B0
        ])
    );
    assert_eq!(version(0x30), sorted(vec![0x430, 0x411, 0x416]));
    assert_eq!(version(0x32), sorted(vec![0x495, 0x494]));
    assert_eq!(
        version(0x40),
        sorted(vec![
            0x474, 0x484, 0x478, 0x47A, 0x485, 0x454, 0x42A, 0x4B2, 0x492, 0x4B0, 0x44E, 0x44F,
            0x45A, 0x44D
        ])
    );
    for d in table().devices() {
        let c = &d.bootloader.commands;
        let who = format!("PID 0x{:03X}", d.pid);
        assert!(
            c.contains(&0x43) != c.contains(&0x44),
            "{who}: exactly one of Erase 0x43 and Extended Erase 0x44"
        );
        assert_eq!(c[..3], [0x00, 0x01, 0x02], "{who}");
        match d.bootloader.version {
            0x22 => {
                assert_eq!(c, &V22_COMMANDS.to_vec(), "{who}");
                assert!(d.max_erase_pages <= 255, "{who}: one-byte page count");
            }
            0x30..=0x32 => assert_eq!(c, &V3X_COMMANDS.to_vec(), "{who}"),
            0x40 => {
                for code in [0x44, 0x50, 0x51, 0xA1] {
                    assert!(c.contains(&code), "{who}: 0x{code:02X}");
                }
            }
            v => panic!("{who}: unexpected version 0x{v:02X}"),
        }
        // Get Checksum only from V3.3 on.
        assert_eq!(c.contains(&0xA1), d.bootloader.version >= 0x33, "{who}");
    }
    let f103 = part("stm32f103xb");
    assert_eq!(f103.bootloader.version, 0x22);
    assert!(f103.bootloader.commands.contains(&0x43) && !f103.bootloader.commands.contains(&0x44));
    assert_eq!(f103.bootloader.id, None, "F1 MD has no ID byte");
    let f2 = part("stm32f207");
    assert_eq!(
        (f2.bootloader.version, f2.bootloader.id),
        (0x30, Some(0x20))
    );
    assert!(f2.bootloader.commands.contains(&0x44));
    let h5 = part("stm32h563");
    assert_eq!(h5.bootloader.version, 0x40);
    assert!(h5.bootloader.commands.contains(&0x50));
    assert_eq!(
        h5.bootloader.commands.len(),
        0x0A,
        "AN3155's H5 example: N = 0x0A"
    );
    assert_eq!(pid(0x431).bootloader.id, Some(0xD0));
    assert_eq!(pid(0x431).bootloader.id_address, Some(0x1FFF_76DE));
    assert_eq!(pid(0x413).bootloader.id, Some(0x91));
    assert_eq!(pid(0x419).bootloader.id, Some(0x91));
    assert_eq!(pid(0x415).bootloader.id, Some(0x92));
    // The ID byte lies in system memory (at its end minus 1 unless placed explicitly).
    for d in table()
        .devices()
        .iter()
        .filter(|d| d.bootloader.id.is_some())
    {
        let at = d.bootloader.id_address.unwrap_or(d.system_memory.end - 1);
        assert!(d.system_memory.contains(at), "PID 0x{:03X}", d.pid);
    }
}

#[test]
fn quirks_follow_section_11() {
    let with = |q: Quirk| -> Vec<u16> {
        let mut p: Vec<u16> = table()
            .devices()
            .iter()
            .filter(|d| d.quirks.contains(&q))
            .map(|d| d.pid)
            .collect();
        p.sort_unstable();
        p
    };
    assert_eq!(with(Quirk::OblLaunch), vec![0x442]);
    assert_eq!(with(Quirk::Pempty), vec![0x462]);
    assert_eq!(with(Quirk::ExtraAck), vec![0x464]);
    assert_eq!(with(Quirk::DoubleNack), vec![0x413, 0x427]);
    assert!(
        with(Quirk::SilentBadAddress).is_empty(),
        "no pre-V3.1 bootloader in the table"
    );
}

#[test]
fn flash_sizes_and_size_registers() {
    let cases: &[(u16, u32)] = &[
        (0x440, 64),
        (0x442, 256),
        (0x414, 512),
        (0x430, 1024),
        (0x413, 1024),
        (0x463, 1536),
        (0x451, 2048),
        (0x467, 512),
        (0x447, 192),
        (0x436, 384),
        (0x494, 320),
        (0x482, 2048),
        (0x9B0, 256),
    ];
    for &(p, kib) in cases {
        assert_eq!(pid(p).flash_size(), kib * 1024, "PID 0x{p:03X}");
        assert_eq!(pid(p).flash.start, 0x0800_0000, "PID 0x{p:03X}");
    }
    // Parts whose size varies within the PID publish it in a register.
    for p in [
        0x423, 0x413, 0x419, 0x415, 0x466, 0x469, 0x437, 0x447, 0x410, 0x422, 0x449,
    ] {
        assert!(pid(p).flash_size_register.is_some(), "PID 0x{p:03X}");
    }
    // A smaller F1 XL (768 KB) cannot split into equal banks: one bank, same page numbers.
    let xl = pid(0x430).with_flash_size(768 * 1024).expect("768K");
    assert_eq!((xl.banks, xl.pages.len()), (1, 384));
}
