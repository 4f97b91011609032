//! Dual-bank parts: the bank mode, which bank boots, whether each bank holds a plausible vector
//! table, and placing an image linked for bank 1 into bank 2.
//!
//! On the dual-bank parts the table describes (F42x BFB2, L0 cat. 5 BFB2, L4 BFB2, G4 BFB2,
//! G0B1 nSWAP_BANK), the chip booting "bank 2" maps bank 2 at the flash base: an image linked
//! for 0x08000000 runs unchanged from bank 2. So a vector table is plausible in a bank when the
//! initial stack pointer lies in RAM and the reset vector is a Thumb address inside that bank,
//! either at its own address or at the flash base where the bank is aliased when it boots.

use crate::device::options::{ObImage, ObLayout};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::ops::connect::Connection;
use crate::ops::option_bytes;

/// What the first two words of a bank say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BankVectors {
    /// Bank number, from 1.
    pub bank: u8,
    /// First address of the bank.
    pub address: u32,
    /// Size of the bank in bytes.
    pub size: u32,
    /// Initial stack pointer (word 0).
    pub stack: u32,
    /// Reset vector (word 1).
    pub reset: u32,
    /// Whether they look like a vector table.
    pub plausible: bool,
}

impl BankVectors {
    /// Judge the first two words of bank `bank`.
    pub fn judge(device: &Device, bank: u8, stack: u32, reset: u32) -> Option<BankVectors> {
        let (address, size) = bank_span(device, bank)?;
        let ram = &device.ram;
        let sp_ok = stack > ram.start && stack <= ram.end.saturating_add(1) && stack % 4 == 0;
        let pc = reset & !1;
        let inside = |base: u32| pc >= base && u64::from(pc) < u64::from(base) + u64::from(size);
        let pc_ok = reset & 1 == 1 && (inside(address) || inside(device.flash.start));
        Some(BankVectors {
            bank,
            address,
            size,
            stack,
            reset,
            plausible: sp_ok && pc_ok,
        })
    }

    /// In words, as a predicate ("is empty (erased)", "holds an image (...)").
    pub fn describe(&self, erased: u8) -> String {
        let erased_word = u32::from_le_bytes([erased; 4]);
        if self.stack == erased_word && self.reset == erased_word {
            "is empty (erased)".into()
        } else if self.plausible {
            format!(
                "holds an image (stack 0x{:08X}, reset vector 0x{:08X})",
                self.stack, self.reset
            )
        } else {
            format!(
                "has no plausible vector table (first words 0x{:08X} 0x{:08X})",
                self.stack, self.reset
            )
        }
    }
}

/// First address and size of a bank.
pub fn bank_span(device: &Device, bank: u8) -> Option<(u32, u32)> {
    let pages: Vec<_> = device.pages.iter().filter(|p| p.bank == bank).collect();
    let first = pages.first()?;
    let size: u32 = pages.iter().map(|p| p.size).sum();
    Some((first.address, size))
}

/// Everything `bank status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BankStatus {
    /// Banks in the current page map.
    pub banks: u8,
    /// Bank-mode fields and their values (DUALBANK, DB1M, DBANK, DUAL_BANK).
    pub mode_fields: Vec<(String, u64, String)>,
    /// The boot-bank option and its value, if the part has one.
    pub boot_option: Option<(String, u64)>,
    /// Whether that option asks for bank 2.
    pub bank2_selected: bool,
    /// Each bank's vector table.
    pub vectors: Vec<BankVectors>,
    /// The bank the chip runs after a reset with BOOT0 low, if any holds an image.
    pub boots: Option<u8>,
}

/// The option that selects bank 2, or an error saying the part has none.
pub fn swap_option(device: &Device) -> Result<(&ObLayout, String, u64)> {
    let layout = option_bytes::layout(device)?;
    match (&layout.boot_bank2, device.banks) {
        (Some(b), 2) => Ok((layout, b.field.clone(), b.value)),
        (Some(b), _) => Err(Error::InvalidRequest(format!(
            "{} runs as a single bank now (see the bank-mode option bits), so {} has no effect",
            device.name, b.field
        ))),
        (None, _) => Err(Error::InvalidRequest(format!(
            "{} has no dual-bank boot option: it always boots from 0x{:08X}",
            device.name, device.flash.start
        ))),
    }
}

/// Work out the bank status from the option bytes and the first words of each bank.
pub fn status(device: &Device, image: &ObImage, words: &[(u32, u32)]) -> Result<BankStatus> {
    let layout = option_bytes::layout(device)?;
    let mode_fields = ["DUALBANK", "DB1M", "DBANK", "DUAL_BANK"]
        .iter()
        .filter_map(|n| {
            let f = layout.field(n).filter(|f| !f.read_only)?;
            let v = layout.value(f, image)?;
            Some((
                f.name.clone(),
                v,
                layout.meaning(f, v, device.rules.rdp_unprotected),
            ))
        })
        .collect();
    let boot_option = layout
        .boot_bank2
        .as_ref()
        .and_then(|b| Some((b.field.clone(), layout.value_of(&b.field, image)?)));
    let bank2_selected = match (&layout.boot_bank2, &boot_option) {
        (Some(b), Some((_, v))) => *v == b.value && device.banks == 2,
        _ => false,
    };
    let vectors: Vec<BankVectors> = words
        .iter()
        .enumerate()
        .filter_map(|(i, (sp, pc))| BankVectors::judge(device, i as u8 + 1, *sp, *pc))
        .collect();
    let plausible = |b: u8| vectors.iter().any(|v| v.bank == b && v.plausible);
    let boots = if bank2_selected && plausible(2) {
        Some(2)
    } else if plausible(1) {
        Some(1)
    } else {
        None
    };
    Ok(BankStatus {
        banks: device.banks,
        mode_fields,
        boot_option,
        bank2_selected,
        vectors,
        boots,
    })
}

/// Read the option bytes and each bank's first two words.
pub fn read_status(conn: &mut Connection) -> Result<BankStatus> {
    let image = option_bytes::read(conn)?;
    let mut words = Vec::new();
    for bank in 1..=conn.device.banks {
        let Some((addr, _)) = bank_span(&conn.device, bank) else {
            continue;
        };
        let mut b = [0u8; 8];
        conn.session.read_memory_stable(addr, &mut b)?;
        words.push((
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        ));
    }
    status(&conn.device, &image, &words)
}

/// An image linked for bank 1 moved into bank `bank` (its bytes land at the same offsets inside
/// that bank). Refuses images that reach outside bank 1.
pub fn relocate_to_bank(device: &Device, image: &Image, bank: u8) -> Result<Image> {
    if bank == 1 {
        return Ok(image.clone());
    }
    let (b1, size1) = bank_span(device, 1)
        .ok_or_else(|| Error::InvalidRequest(format!("{} has no bank 1", device.name)))?;
    let (target, _) = bank_span(device, bank).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "{} has {} bank{} in its current mode: there is no bank {bank}",
            device.name,
            device.banks,
            if device.banks == 1 { "" } else { "s" }
        ))
    })?;
    let end1 = u64::from(b1) + u64::from(size1);
    for (addr, data) in image.segments() {
        let end = u64::from(addr) + data.len() as u64;
        if addr < b1 || end > end1 {
            return Err(Error::InvalidRequest(format!(
                "--bank {bank} places an image linked for bank 1 (0x{b1:08X}-0x{:08X}) into \
                 bank {bank}, but this image has data at 0x{addr:08X}-0x{:08X}",
                end1 - 1,
                end - 1
            )));
        }
    }
    image
        .relocate(i64::from(target) - i64::from(b1))
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;

    fn device(part: &str) -> Device {
        DeviceTable::builtin()
            .expect("test setup")
            .by_part(part)
            .expect("test setup")
            .clone()
    }

    #[test]
    fn vector_tables_are_judged_per_bank_with_the_alias() {
        let d = device("stm32l476");
        let v = BankVectors::judge(&d, 2, 0x2001_8000, 0x0800_0101).expect("test setup");
        assert!(v.plausible, "linked for bank 1, aliased when bank 2 boots");
        assert_eq!(v.address, 0x0808_0000);
        let v = BankVectors::judge(&d, 2, 0x2001_8000, 0x0808_0101).expect("test setup");
        assert!(v.plausible, "linked for its own address");
        assert!(
            !BankVectors::judge(&d, 2, 0x2001_8000, 0x0800_0100)
                .expect("test setup")
                .plausible
        );
        assert!(
            !BankVectors::judge(&d, 1, 0xFFFF_FFFF, 0xFFFF_FFFF)
                .expect("test setup")
                .plausible
        );
        assert_eq!(
            BankVectors::judge(&d, 1, 0xFFFF_FFFF, 0xFFFF_FFFF)
                .expect("test setup")
                .describe(0xFF),
            "is empty (erased)"
        );
    }

    #[test]
    fn relocation_moves_bank_1_images_and_refuses_others() {
        let d = device("stm32l072");
        let img = Image::from_bin(&[1, 2, 3, 4], 0x0800_0000).expect("test setup");
        let moved = relocate_to_bank(&d, &img, 2).expect("test setup");
        assert_eq!(moved.start(), Some(0x0801_8000), "L072: two banks of 96 KB");
        let far = Image::from_bin(&[1, 2, 3, 4], 0x0801_8000).expect("test setup");
        let e = relocate_to_bank(&d, &far, 2).unwrap_err().to_string();
        assert!(e.contains("linked for bank 1"), "{e}");
        let single = device("stm32f411");
        assert!(relocate_to_bank(&single, &img, 2).is_err());
    }

    #[test]
    fn status_picks_the_booting_bank() {
        let d = device("stm32l476");
        let l = d.ob_layout.clone().expect("test setup");
        let mut img = d.factory_option_bytes();
        let app = (0x2001_8000, 0x0800_0101);
        let blank = (0xFFFF_FFFF, 0xFFFF_FFFF);
        let s = status(&d, &img, &[app, app]).expect("test setup");
        assert_eq!((s.bank2_selected, s.boots), (false, Some(1)));
        l.set(&mut img, "BFB2", 1).expect("test setup");
        let s = status(&d, &img, &[app, app]).expect("test setup");
        assert_eq!((s.bank2_selected, s.boots), (true, Some(2)));
        let s = status(&d, &img, &[app, blank]).expect("test setup");
        assert_eq!(s.boots, Some(1), "bank 2 empty: falls back to bank 1");
        assert_eq!(s.mode_fields[0].0, "DUALBANK");
    }
}
