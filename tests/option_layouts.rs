//! The option-byte layouts of the device table checked against the reference (`devices.md` §7):
//! bit positions of the named fields, factory values decoded, complements, and agreement with
//! the table's other option-byte facts (RDP address, boot-select bits, layout-selecting bits).

use stm32boot::device::options::{rdp_level, Complements, Mismatch, ObImage, ObLayout};
use stm32boot::device::{Device, DeviceTable};

fn part(name: &str) -> &'static Device {
    DeviceTable::builtin()
        .expect("built-in table")
        .by_part(name)
        .unwrap_or_else(|| panic!("{name} is in the table"))
}

fn layout(d: &Device) -> &ObLayout {
    d.ob_layout
        .as_ref()
        .unwrap_or_else(|| panic!("{} has an option-byte layout", d.name))
}

/// The factory option bytes of a part as an image of its windows.
fn factory(d: &Device) -> ObImage {
    d.factory_option_bytes()
}

/// Address and mask of a one-bit field.
fn bit(d: &Device, name: &str) -> (u32, u8) {
    layout(d)
        .bit_location(name, &d.option_bytes)
        .unwrap_or_else(|| panic!("{}: {name} is a one-bit field", d.name))
}

fn value(d: &Device, name: &str) -> u64 {
    layout(d)
        .value_of(name, &factory(d))
        .unwrap_or_else(|| panic!("{}: {name} decodes", d.name))
}

#[test]
fn the_families_the_issue_names_have_layouts() {
    for p in [
        "stm32f030x8",
        "stm32f103xb",
        "stm32f303xc",
        "stm32f205",
        "stm32f411",
        "stm32f746",
        "stm32l072",
        "stm32l152xc",
        "stm32l476",
        "stm32l4r5",
        "stm32g071",
        "stm32g474",
        "stm32wb55",
        "stm32wle5",
    ] {
        let d = part(p);
        assert!(d.ob_layout.is_some(), "{p}");
        // Every field of the layout is in the part's windows.
        let img = factory(d);
        let l = layout(d);
        let missing: Vec<&str> = l
            .fields
            .iter()
            .filter(|f| l.value(f, &img).is_none())
            .map(|f| f.name.as_str())
            .collect();
        assert!(missing.is_empty(), "{p}: {missing:?} outside the windows");
    }
    assert!(
        part("stm32c031").ob_layout.is_none(),
        "C0 is not decoded yet"
    );
}

#[test]
fn f0_f1_byte_pairs_follow_section_7_2() {
    let f0 = part("stm32f030x8");
    // The production word 0x00FF55AA: RDP AA, USER FF.
    assert_eq!(value(f0, "RDP"), 0xAA);
    assert_eq!(bit(f0, "WDG_SW"), (0x1FFF_F802, 0x01));
    assert_eq!(bit(f0, "nBOOT1"), (0x1FFF_F802, 0x10));
    assert_eq!(bit(f0, "RAM_PARITY_CHECK"), (0x1FFF_F802, 0x40));
    let f09 = part("stm32f091");
    assert_eq!(bit(f09, "nBOOT0"), (0x1FFF_F802, 0x08));
    assert_eq!(bit(f09, "BOOT_SEL"), (0x1FFF_F802, 0x80));
    assert!(layout(f0).field("nBOOT0").is_none(), "F030 has no nBOOT0");
    let f1 = part("stm32f103xb");
    assert_eq!(value(f1, "RDP"), 0xA5);
    assert_eq!(rdp_level(0xA5, f1.rules.rdp_unprotected), 0);
    assert_eq!(
        rdp_level(0xCC, f1.rules.rdp_unprotected),
        1,
        "F1 has no level 2"
    );
    let xl = part("stm32f103xg");
    assert_eq!(bit(xl, "BFB2"), (0x1FFF_F802, 0x08));
    for d in [f0, f1] {
        let l = layout(d);
        assert_eq!(l.complements, Complements::Host);
        assert_eq!(l.mismatch, Mismatch::Ones, "a bad pair loads as FF");
        let wrp = l.field("WRP").expect("WRP");
        assert_eq!(
            (wrp.lo, wrp.hi, wrp.unit, wrp.protected_when),
            (0, 31, Some(4096), 0)
        );
        let reg = l.register("WRP").expect("WRP register");
        assert_eq!(reg.bytes, [8, 10, 12, 14]);
        assert_eq!(reg.complement, Some(1));
    }
    assert!(layout(f1).field("WRP").expect("WRP").last_covers_rest);
}

#[test]
fn f2_f4_optcr_follows_section_7_3() {
    let f4 = part("stm32f411");
    // Factory USER EC, RDP AA.
    assert_eq!(value(f4, "RDP"), 0xAA);
    assert_eq!(value(f4, "BOR_LEV"), 3, "11 = off");
    assert_eq!(bit(f4, "WDG_SW"), (0x1FFF_C000, 0x20));
    assert_eq!(bit(f4, "nRST_STOP"), (0x1FFF_C000, 0x40));
    assert_eq!(bit(f4, "nRST_STDBY"), (0x1FFF_C000, 0x80));
    assert_eq!(bit(f4, "SPRMOD"), (0x1FFF_C009, 0x80));
    assert_eq!(value(f4, "nWRP"), 0xFFF);
    assert_eq!(layout(f4).complements, Complements::Chip);
    let f429 = part("stm32f429");
    assert_eq!(bit(f429, "BFB2"), (0x1FFF_C000, 0x10));
    assert_eq!(bit(f429, "DB1M"), (0x1FFF_C009, 0x40));
    let nwrp2 = layout(f429).field("nWRP2").expect("nWRP2");
    assert_eq!((nwrp2.first, nwrp2.hi), (12, 11));
    assert_eq!(
        layout(f429)
            .register("OPTCR1")
            .expect("bank-2 block")
            .window,
        1
    );
    assert_eq!(f429.option_bytes[1].start, 0x1FFE_C000);
    // The layout rule of the 1 MB F42x reads the same DB1M bit.
    let rule_bits = f429.layout_option_addresses(1 << 20);
    assert!(rule_bits.contains(&0x1FFF_C009), "{rule_bits:x?}");
    let f205 = part("stm32f205");
    assert!(layout(f205).field("SPRMOD").is_none());
}

#[test]
fn l0_l1_words_follow_section_7_4() {
    for p in ["stm32l072", "stm32l152xc"] {
        let d = part(p);
        assert_eq!(value(d, "RDP"), 0xAA, "{p}");
        assert_eq!(bit(d, "BFB2"), (0x1FF8_0004, 0x80), "{p}");
        assert_eq!(bit(d, "nBOOT1"), (0x1FF8_0005, 0x80), "{p}");
        assert_eq!(bit(d, "IWDG_SW"), (0x1FF8_0004, 0x10), "{p}");
        assert_eq!(bit(d, "WPRMOD"), (0x1FF8_0001, 0x01), "{p}");
        let l = layout(d);
        assert_eq!(l.register("USER").expect("USER").complement, Some(2));
        let wrp = l.field("WRP").expect("WRP");
        assert_eq!(wrp.protected_when, 1, "1 = protected on L0/L1");
        assert_eq!(
            l.register("WRP").expect("WRP").bytes,
            [8, 9, 12, 13, 16, 17]
        );
    }
    assert_eq!(
        layout(part("stm32l072"))
            .boot_bank2
            .as_ref()
            .map(|b| (b.field.as_str(), b.value)),
        Some(("BFB2", 1))
    );
}

#[test]
fn l4_optr_follows_section_7_5() {
    let l476 = part("stm32l476");
    assert_eq!(value(l476, "RDP"), 0xAA);
    assert_eq!(bit(l476, "BFB2"), (0x1FFF_7802, 0x10), "OPTR bit 20");
    assert_eq!(bit(l476, "DUALBANK"), (0x1FFF_7802, 0x20), "OPTR bit 21");
    assert_eq!(bit(l476, "nBOOT1"), (0x1FFF_7802, 0x80), "OPTR bit 23");
    assert_eq!(bit(l476, "IWDG_SW"), (0x1FFF_7802, 0x01), "OPTR bit 16");
    assert_eq!(value(l476, "BFB2"), 0);
    assert!(
        layout(l476).field("nSWBOOT0").is_none(),
        "L476 has no nSWBOOT0"
    );
    let wrp2a = layout(l476).register("WRP2AR").expect("bank 2 area");
    assert_eq!((wrp2a.window, wrp2a.bytes[0]), (1, 0x18));
    assert_eq!(l476.option_bytes[1].start, 0x1FFF_F800);
    let l496 = part("stm32l496");
    assert_eq!(bit(l496, "nSWBOOT0"), (0x1FFF_7803, 0x04), "OPTR bit 26");
    assert_eq!(bit(l496, "nBOOT0"), (0x1FFF_7803, 0x08), "OPTR bit 27");
    let l4r = part("stm32l4r5");
    assert_eq!(bit(l4r, "DB1M"), (0x1FFF_7802, 0x20), "L4+: DB1M at bit 21");
    assert_eq!(
        bit(l4r, "DBANK"),
        (0x1FFF_7802, 0x40),
        "L4+: DBANK at bit 22"
    );
    // WRP areas: STRT in 7:0, END in 23:16, empty when STRT > END (factory FF / 00).
    let l = layout(l476);
    let s = l.field("WRP1A_STRT").expect("WRP1A_STRT");
    let e = l.field("WRP1A_END").expect("WRP1A_END");
    assert_eq!((s.lo, s.hi, e.lo, e.hi), (0, 7, 16, 23));
    assert!(value(l476, "WRP1A_STRT") > value(l476, "WRP1A_END"));
}

#[test]
fn g0_optr_follows_section_7_6() {
    let g0 = part("stm32g071");
    assert_eq!(value(g0, "RDP"), 0xAA);
    assert_eq!(bit(g0, "nBOOT_SEL"), (0x1FFF_7803, 0x01), "bit 24");
    assert_eq!(bit(g0, "nBOOT1"), (0x1FFF_7803, 0x02), "bit 25");
    assert_eq!(bit(g0, "nBOOT0"), (0x1FFF_7803, 0x04), "bit 26");
    assert_eq!(bit(g0, "BOOT_LOCK"), (0x1FFF_7872, 0x01), "SECR +70 bit 16");
    let l = layout(g0);
    assert_eq!(l.complements, Complements::Chip, "computed on OPTSTRT");
    assert_eq!(
        l.mismatch,
        Mismatch::Lock,
        "a secure configuration that may lock"
    );
    let s = l.field("WRP1A_STRT").expect("WRP1A_STRT");
    assert_eq!((s.lo, s.hi), (0, 6));
    let g0b1 = part("stm32g0b1");
    assert_eq!(bit(g0b1, "nSWAP_BANK"), (0x1FFF_7802, 0x10), "bit 20");
    assert_eq!(bit(g0b1, "DUAL_BANK"), (0x1FFF_7802, 0x20), "bit 21");
    assert_eq!(
        layout(g0b1).register("WRP2AR").expect("WRP2A").bytes[0],
        0x48
    );
}

#[test]
fn g4_optr_follows_section_7_7() {
    let g474 = part("stm32g474");
    // ST production value 0xFFEFF8AA.
    let optr = layout(g474)
        .register_value(layout(g474).register("OPTR").expect("OPTR"), &factory(g474))
        .expect("OPTR");
    assert_eq!(optr, 0xFFEF_F8AA);
    assert_eq!(value(g474, "BFB2"), 0);
    assert_eq!(value(g474, "DBANK"), 1);
    assert_eq!(value(g474, "nSWBOOT0"), 1);
    assert_eq!(bit(g474, "DBANK"), (0x1FFF_7802, 0x40), "bit 22");
    assert_eq!(bit(g474, "nBOOT1"), (0x1FFF_7802, 0x80), "bit 23");
    assert_eq!(bit(g474, "IRH_EN"), (0x1FFF_7803, 0x40), "bit 30");
    assert!(layout(part("stm32g491")).field("PB4_PUPEN").is_some());
    assert!(layout(part("stm32g431")).field("BFB2").is_none());
}

#[test]
fn rdp_fields_sit_where_the_table_says_and_boot_bits_agree() {
    for d in DeviceTable::builtin().expect("table").devices() {
        let Some(l) = &d.ob_layout else { continue };
        let rdp = l.field("RDP").expect("every layout names RDP");
        let reg = l.register(&rdp.register).expect("RDP register");
        let addr = d.option_bytes[reg.window].start + reg.bytes[usize::from(rdp.lo / 8)];
        assert_eq!(Some(addr), d.rules.rdp_address, "{}", d.name);
        if let Some(sel) = d.rules.boot_select {
            for name in ["nSWBOOT0", "nBOOT_SEL"] {
                if let Some(loc) = l.bit_location(name, &d.option_bytes) {
                    assert_eq!(loc, (sel.select.address, sel.select.mask), "{}", d.name);
                }
            }
            if let Some(loc) = l.bit_location("nBOOT0", &d.option_bytes) {
                assert_eq!(loc, (sel.nboot0.address, sel.nboot0.mask), "{}", d.name);
            }
        }
        // Factory values have matching complements where the host writes them.
        if l.complements == Complements::Host {
            let bad: Vec<String> = l
                .registers_in(&factory(d))
                .into_iter()
                .filter(|r| r.complement_ok == Some(false))
                .map(|r| r.name)
                .collect();
            assert!(bad.is_empty(), "{}: factory complements {bad:?}", d.name);
        }
    }
}

#[test]
fn setting_a_field_keeps_reserved_bits_and_rewrites_its_complement() {
    let d = part("stm32l476");
    let l = layout(d);
    let mut img = factory(d);
    l.set(&mut img, "BFB2", 1).expect("BFB2 settable");
    let optr = l.register("OPTR").expect("OPTR");
    assert_eq!(l.register_value(optr, &img), Some(0xFFFF_F8AA));
    assert_eq!(img.at(0x1FFF_7806), Some(0x00), "complement of bits 23:16");
    assert!(l
        .registers_in(&img)
        .iter()
        .all(|r| r.complement_ok != Some(false)));
}
