//! A simulated part of every family: `info`, a verified write and a page-exact erase, with the
//! family's own erased value, programming unit, page map and bootloader (0x43 or 0x44, with or
//! without Get Checksum).

mod common;

use common::*;
use stm32boot::device::DeviceTable;

/// One part per family, as `sim:` names them.
const PARTS: &[(&str, &str)] = &[
    ("F0", "stm32f072"),
    ("F1", "stm32f103xb"),
    ("F2", "stm32f207"),
    ("F3", "stm32f303xc"),
    ("F4", "stm32f411"),
    ("F7", "stm32f746"),
    ("G0", "stm32g071"),
    ("G4", "stm32g474"),
    ("H5", "stm32h563"),
    ("H7", "stm32h743"),
    ("L0", "stm32l072"),
    ("L1", "stm32l152xe"),
    ("L4", "stm32l476"),
    ("L5", "stm32l552"),
    ("U5", "stm32u575"),
    ("WB", "stm32wb55"),
    ("WL", "stm32wle5"),
    ("C0", "stm32c031"),
];

#[test]
fn every_family_identifies_writes_verifies_and_erases_page_exactly() {
    let table = DeviceTable::builtin().expect("table");
    for (family, part) in PARTS {
        let device = table
            .by_part(part)
            .unwrap_or_else(|| panic!("{part} is in the table"));
        assert_eq!(&device.family, family, "{part}");
        let sim = SimChip::new(part);
        let port = sim.port();
        let info = ok(&["info", "--port", &port]);
        assert!(
            info.contains(&format!("PID 0x{:03X}", device.pid)),
            "{part}: {info}"
        );

        // An image over the first two pages plus a small piece in a later page.
        let p0 = device.pages[0];
        let later = device.pages[device.pages.len() / 2];
        let first_len = (p0.size as usize + 100).min(64 * 1024);
        let bin = sim.file("a.bin");
        std::fs::write(&bin, pattern(first_len, 1)).expect("write file");
        ok(&[
            "write",
            path_str(&bin),
            "-a",
            &format!("0x{:08X}", p0.address),
            "--verify",
            "--port",
            &port,
        ]);
        let piece = sim.file("b.bin");
        std::fs::write(&piece, pattern(64, 2)).expect("write file");
        ok(&[
            "write",
            path_str(&piece),
            "-a",
            &format!("0x{:08X}", later.address),
            "--verify",
            "--port",
            &port,
        ]);
        assert_eq!(
            sim.peek(p0.address, first_len),
            pattern(first_len, 1),
            "{part}"
        );
        assert_eq!(sim.peek(later.address, 64), pattern(64, 2), "{part}");

        // Page-exact erase of page 0 only.
        let before = sim.chip().erase_counts().to_vec();
        ok(&["erase", "--pages", &p0.index.to_string(), "--port", &port]);
        let after = sim.chip().erase_counts().to_vec();
        let changed: Vec<usize> = (0..after.len())
            .filter(|&i| after[i] != before[i])
            .collect();
        assert_eq!(changed, vec![0], "{part}: only page 0 is erased");
        let erased = device.rules.erased;
        assert_eq!(
            sim.peek(p0.address, p0.size as usize),
            vec![erased; p0.size as usize],
            "{part}"
        );
        assert_eq!(
            sim.peek(later.address, 64),
            pattern(64, 2),
            "{part}: the later page is intact"
        );
    }
}
