//! The simulated chip's option bytes: the option loader and what the loaded values do.
//!
//! The chip keeps two copies. The *stored* option bytes are the flash cells that Read Memory
//! returns and Write Memory, Write Protect and Readout Protect change. The *loaded* values are
//! what the option loader took from them at the last reset: read protection, write protection,
//! the boot source and the bank swap follow those, so a change takes effect only after the
//! reset that the ROM performs after every option-byte command (an3155.md §6).
//!
//! Where a bit sits comes from the part's option-byte layout in the device table
//! ([`crate::device::options::ObLayout`]); what the chip does with it is decided here:
//!
//! - **Complements.** Where the flash controller writes complements itself (F2/F4/F7, G0) it
//!   ignores what the host sent in their place. Elsewhere the host's bytes are stored as
//!   written, and at load a value whose complement does not match loads as all ones (F0/F1: read
//!   protection) or, on G0, puts the chip in a locked configuration that behaves as level 2.
//! - **Read protection** level 2 (or that lock) answers only Get, Get Version and Get ID, never
//!   boots system memory and freezes the option bytes.
//! - **Write protection**, per sector or 4 KB unit (masks) or per page range of a bank (areas),
//!   makes erase and program of the covered pages fail silently.
//! - **Dual-bank boot**: with the swap option at its bank-2 value, a reset boots bank 2 if it
//!   holds a plausible vector table, else bank 1.

use super::chip::Chip;
use crate::device::options::{
    rdp_level, Complements, FieldKind, Mismatch, ObField, ObImage, ObLayout,
};
use crate::device::{OptionBit, Page};

/// Value written to an area's start page to empty it (OpenBootloader's Write Unprotect writes
/// start 7F, end 00: an area is empty when its start lies past its end; an3155.md §5.9).
const EMPTY_AREA_START: u64 = 0x7F;

/// What a reset that boots main flash runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashBoot {
    /// The bank whose vector table was taken (1 or 2).
    pub bank: u8,
    /// Where that vector table sits (the bank's physical start).
    pub base: u32,
    /// The reset vector, Thumb bit cleared, as the core fetches it (an image in bank 2 linked
    /// for the flash base runs at its linked address: the banks swap).
    pub entry: u32,
}

impl Chip {
    /// The stored option bytes, one entry per option-byte window.
    pub fn stored_options(&self) -> ObImage {
        ObImage::new(
            self.device()
                .option_bytes
                .iter()
                .zip(&self.option_bytes)
                .map(|(w, bytes)| (w.start, bytes.clone()))
                .collect(),
        )
    }

    /// The option values the option loader took at the last reset or power-on.
    pub fn loaded_options(&self) -> &ObImage {
        &self.loaded
    }

    /// Whether a value/complement mismatch left the chip in its locked configuration (G0's
    /// "secure configuration"): it then behaves as read protection level 2.
    pub fn options_locked(&self) -> bool {
        self.options_locked
    }

    /// Run the option loader on the stored option bytes. Parts whose bank mode is an option
    /// (F42x DB1M, G4 DBANK) take the page map the loaded values select.
    pub(crate) fn load_options(&mut self) {
        let stored = self.stored_options();
        let (loaded, locked) = match &self.device().ob_layout {
            Some(layout) => load_image(layout, &stored),
            None => (stored, false),
        };
        self.loaded = loaded;
        self.options_locked = locked;
        self.follow_bank_mode();
    }

    fn follow_bank_mode(&mut self) {
        if self.device().layouts.iter().all(|r| r.when.is_none()) {
            return;
        }
        let size = self.device().flash_size();
        let loaded = &self.loaded;
        let Ok(device) = self.device().with_layout(size, &|addr| loaded.at(addr)) else {
            return;
        };
        if device.pages != self.device().pages {
            self.erase_counts = vec![0; device.pages.len()];
        }
        self.device = device;
    }

    /// A Write Memory into option-byte window `window` at offset `off`. Where the flash
    /// controller computes complements, those the host sent are replaced. Nothing changes once
    /// the options are frozen (read protection level 2).
    pub(crate) fn write_option_bytes(&mut self, window: usize, off: usize, data: &[u8]) {
        if self.options_frozen() {
            return;
        }
        let Some(stored) = self
            .option_bytes
            .get_mut(window)
            .and_then(|w| w.get_mut(off..off + data.len()))
        else {
            return;
        };
        stored.copy_from_slice(data);
        let layout = self.device().ob_layout.as_ref();
        if !layout.is_some_and(|l| l.complements == Complements::Chip) {
            return;
        }
        let mut image = self.stored_options();
        if let Some(layout) = layout {
            layout.fix_complements(&mut image);
        }
        self.store_window(&image, window);
    }

    fn store_window(&mut self, image: &ObImage, window: usize) {
        if let (Some(dst), Some((_, src))) =
            (self.option_bytes.get_mut(window), image.windows.get(window))
        {
            dst.copy_from_slice(src);
        }
    }

    fn store_options(&mut self, image: &ObImage) {
        for window in 0..self.option_bytes.len() {
            self.store_window(image, window);
        }
    }

    /// Whether the option bytes can no longer change (level 2, or G0's locked configuration).
    pub fn options_frozen(&self) -> bool {
        self.rdp_level() == 2
    }

    // ---- Read protection --------------------------------------------------------------------

    /// Readout protection level as loaded: 0, 1 or 2.
    pub fn rdp_level(&self) -> u8 {
        if self.options_locked {
            return 2;
        }
        let rules = &self.device().rules;
        match rules.rdp_address.and_then(|a| self.loaded.at(a)) {
            Some(v) => rdp_level(v, rules.rdp_unprotected),
            None => 0,
        }
    }

    fn set_ob_pair(&mut self, addr: u32, value: u8) {
        let complement = self.device().rules.ob_complement_offset;
        self.set_ob_byte(addr, value);
        if let Some(c) = complement {
            self.set_ob_byte(addr + c, !value);
        }
    }

    fn set_ob_byte(&mut self, addr: u32, value: u8) {
        let windows = &self.device().option_bytes;
        if let Some(i) = windows.iter().position(|w| w.contains(addr)) {
            let off = (addr - windows[i].start) as usize;
            self.option_bytes[i][off] = value;
        }
    }

    /// Readout Protect: store RDP level 1 (`BB`) with its complement; it loads at the reset.
    pub fn set_rdp_level1(&mut self) {
        if self.options_frozen() {
            return;
        }
        if let Some(addr) = self.device().rules.rdp_address {
            self.set_ob_pair(addr, 0xBB);
        }
    }

    /// Readout Unprotect: erase all flash and store level 0 (nothing at level 2).
    pub fn readout_unprotect(&mut self) {
        if self.options_frozen() {
            return;
        }
        self.erase_all_unconditionally();
        if let Some(addr) = self.device().rules.rdp_address {
            let v = self.device().rules.rdp_unprotected;
            self.set_ob_pair(addr, v);
        }
    }

    // ---- Boot ---------------------------------------------------------------------------------

    /// Whether a reset boots the ROM bootloader rather than the flash: the BOOT0 pin, unless the
    /// family's option bits take over (G0 nBOOT_SEL, G4/L4+ nSWBOOT0), and the empty check of
    /// families that boot the ROM when the flash they would boot is blank. Level 2 and a boot
    /// lock (G0/G4 BOOT_LOCK) always boot the flash. All from the loaded option values.
    pub fn boots_system_memory(&self, boot0_pin: bool) -> bool {
        if self.rdp_level() == 2 || self.loaded_field("BOOT_LOCK") == Some(1) {
            return false;
        }
        let rules = &self.device().rules;
        let bit = |b: OptionBit| self.loaded.at(b.address).map(|v| v & b.mask != 0);
        let boot0 = match rules.boot_select {
            Some(sel) if bit(sel.select) == Some(sel.select.set) => {
                bit(sel.nboot0).map(|n| !n).unwrap_or(boot0_pin)
            }
            _ => boot0_pin,
        };
        boot0 || (rules.empty_check && self.boot_bank_empty())
    }

    /// Whether the first word the core would fetch is erased (what the empty check reads: bank
    /// 2's when the options swap the banks).
    fn boot_bank_empty(&self) -> bool {
        if !self.boots_bank2() {
            return self.flash_is_empty();
        }
        let erased = self.device().rules.erased;
        self.bank2_start()
            .and_then(|b2| self.peek(b2, 4))
            .is_some_and(|w| w.iter().all(|&b| b == erased))
    }

    fn loaded_field(&self, name: &str) -> Option<u64> {
        self.device()
            .ob_layout
            .as_ref()?
            .value_of(name, &self.loaded)
    }

    /// Where bank 2 starts: from the page map, or, for a part the table maps as one bank whose
    /// option bytes describe a second one (write-protection areas of bank 2) and whose bank
    /// mode is not an option, the middle of the flash (G0B1: two equal banks).
    pub fn bank2_start(&self) -> Option<u32> {
        let d = self.device();
        if d.banks >= 2 {
            return d.bank_start(2);
        }
        let layout = d.ob_layout.as_ref()?;
        let second_in_options = layout.areas.iter().any(|a| a.bank == 2);
        (second_in_options && d.layouts.is_empty()).then(|| d.flash.start + d.flash_size() / 2)
    }

    /// The bank a page belongs to and the number of that bank's first page.
    fn bank_of(&self, page: &Page) -> (u8, u16) {
        let first = |addr: u32| self.device().page_at(addr).map_or(0, |p| p.index);
        match self.bank2_start() {
            Some(b2) if page.address >= b2 => (2, first(b2)),
            _ => (1, first(self.device().flash.start)),
        }
    }

    /// Whether the loaded options ask a dual-bank part to boot bank 2.
    pub fn boots_bank2(&self) -> bool {
        let Some(swap) = self
            .device()
            .ob_layout
            .as_ref()
            .and_then(|l| l.boot_bank2.as_ref())
        else {
            return false;
        };
        self.bank2_start().is_some() && self.loaded_field(&swap.field) == Some(swap.value)
    }

    /// What a reset that boots the flash runs: bank 2 when the options ask for it and it holds a
    /// plausible vector table, else bank 1 if it does; `None` means the core locks up.
    pub fn flash_boot(&self) -> Option<FlashBoot> {
        if self.boots_bank2() {
            if let Some(boot) = self.bank2_image() {
                return Some(boot);
            }
        }
        let base = self.device().flash.start;
        self.app_vectors().map(|(_, entry)| FlashBoot {
            bank: 1,
            base,
            entry,
        })
    }

    /// Bank 2's vector table, if plausible: the stack pointer inside RAM and an odd reset vector
    /// inside bank 2, either at its physical address or as aliased at the flash base.
    fn bank2_image(&self) -> Option<FlashBoot> {
        let base = self.bank2_start()?;
        let (sp, pc) = self.vectors_at(base)?;
        let flash = self.device().flash;
        let bank_len = flash.end - base + 1;
        let target = pc & !1;
        let physical = target >= base && target <= flash.end;
        let aliased = target >= flash.start && target - flash.start < bank_len;
        (self.stack_in_ram(sp) && pc & 1 == 1 && (physical || aliased)).then_some(FlashBoot {
            bank: 2,
            base,
            entry: target,
        })
    }

    // ---- Write protection ---------------------------------------------------------------------

    /// Whether the page holding `addr` is write-protected by the loaded option bytes.
    pub fn is_write_protected(&self, addr: u32) -> bool {
        let d = self.device();
        let (Some(layout), Some(page)) = (d.ob_layout.as_ref(), d.page_at(addr)) else {
            return false;
        };
        let masks = layout
            .fields
            .iter()
            .filter(|f| f.kind == FieldKind::WrpMask)
            .any(|f| self.mask_protects(layout, f, page));
        masks || self.areas_protect(layout, page)
    }

    fn mask_protects(&self, layout: &ObLayout, f: &ObField, page: &Page) -> bool {
        let Some(value) = layout.value(f, &self.loaded) else {
            return false;
        };
        self.mask_bits(f, page)
            .any(|bit| (value >> bit) & 1 == u64::from(f.protected_when))
    }

    /// The bits of mask `f` that cover `page`: one per sector number, or one per `unit` bytes.
    fn mask_bits<'a>(&self, f: &'a ObField, page: &Page) -> impl Iterator<Item = u32> + 'a {
        let (first, last) = match f.unit {
            Some(unit) if unit > 0 => {
                let off = page.address - self.device().flash.start;
                (off / unit, (off + page.size.max(1) - 1) / unit)
            }
            _ => (u32::from(page.index), u32::from(page.index)),
        };
        (first..=last).filter_map(move |n| mask_bit(f, n))
    }

    fn areas_protect(&self, layout: &ObLayout, page: &Page) -> bool {
        let (bank, first) = self.bank_of(page);
        let rel = u64::from(page.index.saturating_sub(first));
        layout
            .areas
            .iter()
            .filter(|a| a.write_protect && a.bank == bank)
            .any(|a| {
                let start = layout.value_of(&a.start, &self.loaded);
                let end = layout.value_of(&a.end, &self.loaded);
                matches!((start, end), (Some(s), Some(e)) if s <= rel && rel <= e)
            })
    }

    /// Write Protect with the family's codes, replacing the previous set (an3155.md §5.9):
    /// sector numbers (F2/F4/F7) or 4 KB unit numbers (F0/F1/F3, L0/L1) for mask families,
    /// (start, end) page pairs in the order WRP1A, WRP1B, WRP2A, WRP2B for area families. Codes
    /// are not validated: those that name nothing are ignored.
    pub fn write_protect(&mut self, codes: &[u8]) {
        if self.options_frozen() {
            return;
        }
        let Some(layout) = self.device().ob_layout.clone() else {
            return;
        };
        let mut image = self.stored_options();
        clear_protection(&layout, &mut image);
        if layout.areas.iter().any(|a| a.write_protect) {
            protect_areas(&layout, &mut image, codes);
        } else {
            protect_mask_bits(&layout, &mut image, codes);
        }
        self.store_options(&image);
    }

    /// Write Unprotect: clear all write protection.
    pub fn write_unprotect(&mut self) {
        self.write_protect(&[]);
    }
}

/// The option loader: the loaded image and whether a mismatch locked the chip.
fn load_image(layout: &ObLayout, stored: &ObImage) -> (ObImage, bool) {
    let mut loaded = stored.clone();
    let bad: Vec<_> = layout
        .registers_in(stored)
        .into_iter()
        .filter(|r| r.complement_ok == Some(false))
        .filter_map(|r| layout.register(&r.name))
        .collect();
    match layout.mismatch {
        Mismatch::Lock => (loaded, !bad.is_empty()),
        Mismatch::Ones => {
            for reg in bad {
                if let Some((_, bytes)) = loaded.windows.get_mut(reg.window) {
                    for &o in &reg.bytes {
                        if let Some(b) = bytes.get_mut(o as usize) {
                            *b = 0xFF;
                        }
                    }
                }
            }
            (loaded, false)
        }
    }
}

fn width(f: &ObField) -> u32 {
    u32::from(f.hi - f.lo) + 1
}

fn all_ones(f: &ObField) -> u64 {
    let w = width(f);
    if w >= 64 {
        u64::MAX
    } else {
        (1u64 << w) - 1
    }
}

/// The bit of mask `f` that covers sector or unit number `n`.
fn mask_bit(f: &ObField, n: u32) -> Option<u32> {
    let rel = n.checked_sub(f.first)?;
    let w = width(f);
    if rel < w {
        Some(rel)
    } else if f.last_covers_rest {
        Some(w - 1)
    } else {
        None
    }
}

/// Every mask bit unprotected and every area empty.
fn clear_protection(layout: &ObLayout, image: &mut ObImage) {
    for f in layout
        .fields
        .iter()
        .filter(|f| f.kind == FieldKind::WrpMask)
    {
        let open = if f.protected_when == 0 {
            all_ones(f)
        } else {
            0
        };
        set_field(layout, image, &f.name, open);
    }
    for a in layout.areas.iter().filter(|a| a.write_protect) {
        let start = layout
            .field(&a.start)
            .map_or(EMPTY_AREA_START, |f| EMPTY_AREA_START.min(all_ones(f)));
        set_field(layout, image, &a.start, start);
        set_field(layout, image, &a.end, 0);
    }
}

fn protect_mask_bits(layout: &ObLayout, image: &mut ObImage, codes: &[u8]) {
    for &code in codes {
        for f in layout
            .fields
            .iter()
            .filter(|f| f.kind == FieldKind::WrpMask)
        {
            let (Some(bit), Some(value)) = (mask_bit(f, u32::from(code)), layout.value(f, image))
            else {
                continue;
            };
            let value = if f.protected_when == 0 {
                value & !(1u64 << bit)
            } else {
                value | (1u64 << bit)
            };
            set_field(layout, image, &f.name, value);
        }
    }
}

fn protect_areas(layout: &ObLayout, image: &mut ObImage, codes: &[u8]) {
    let mut areas: Vec<_> = layout.areas.iter().filter(|a| a.write_protect).collect();
    areas.sort_by(|a, b| (a.bank, &a.name).cmp(&(b.bank, &b.name)));
    for (area, pair) in areas.into_iter().zip(codes.chunks_exact(2)) {
        for (name, code) in [(&area.start, pair[0]), (&area.end, pair[1])] {
            let max = layout.field(name).map_or(0xFF, all_ones);
            set_field(layout, image, name, u64::from(code) & max);
        }
    }
}

/// Change a field the chip itself writes (value and complement). A field the part's windows
/// do not hold is left alone, as the ROM leaves registers the part lacks.
fn set_field(layout: &ObLayout, image: &mut ObImage, name: &str, value: u64) {
    // The only failures are a field outside this part's windows or a value that does not fit,
    // and the callers mask values to the field's width.
    let _ = layout.set(image, name, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;
    use crate::sim::chip::Area;

    fn chip(part: &str) -> Chip {
        let d = DeviceTable::builtin()
            .expect("test setup")
            .by_part(part)
            .expect("test setup")
            .clone();
        Chip::new(d, [1; 12])
    }

    /// A valid vector table: stack at the top of a small RAM, reset handler at `entry`.
    fn vectors(entry: u32) -> Vec<u8> {
        let mut v = 0x2000_4000u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(entry | 1).to_le_bytes());
        v
    }

    #[test]
    fn every_layout_loads_its_factory_options_unprotected() {
        let table = DeviceTable::builtin().expect("test setup");
        for d in table.devices().iter().filter(|d| d.ob_layout.is_some()) {
            let c = Chip::new(d.clone(), [0; 12]);
            assert!(!c.options_locked(), "{}", d.name);
            assert_eq!(c.rdp_level(), 0, "{}", d.name);
            assert_eq!(c.loaded_options(), &c.stored_options(), "{}", d.name);
            let protected = d.pages.iter().filter(|p| c.is_write_protected(p.address));
            assert_eq!(protected.count(), 0, "{}", d.name);
        }
    }

    #[test]
    fn option_changes_take_effect_at_the_reset() {
        let mut c = chip("stm32f411");
        c.set_rdp_level1();
        assert_eq!(c.rdp_level(), 0, "stored, not loaded yet");
        assert_eq!(c.peek(0x1FFF_C001, 1).expect("test setup"), vec![0xBB]);
        c.reset();
        assert_eq!(c.rdp_level(), 1);
    }

    #[test]
    fn f1_broken_rdp_pair_loads_as_ff_and_protects() {
        let mut c = chip("stm32f103xb");
        // RDP A5 (level 0) with a wrong complement.
        c.write(Area::OptionBytes(0), 0x1FFF_F800, &[0xA5, 0x00, 0xFF, 0x00]);
        assert_eq!(
            c.peek(0x1FFF_F800, 2).expect("test setup"),
            vec![0xA5, 0x00]
        );
        c.reset();
        assert_eq!(c.loaded_options().at(0x1FFF_F800), Some(0xFF));
        assert_eq!(c.rdp_level(), 1);
    }

    #[test]
    fn chip_computed_complements_ignore_the_host() {
        let mut c = chip("stm32f411");
        // USER EC, RDP AA, then garbage where the complements go.
        c.write(Area::OptionBytes(0), 0x1FFF_C000, &[0xEC, 0xAA, 0x00, 0x00]);
        assert_eq!(
            c.peek(0x1FFF_C000, 4).expect("test setup"),
            vec![0xEC, 0xAA, 0x13, 0x55]
        );
        c.reset();
        assert_eq!(c.rdp_level(), 0);
    }

    #[test]
    fn g0_mismatch_locks_as_level_2() {
        let mut c = chip("stm32g071");
        // Only a state file can hold a bad pair on G0: break one byte of OPTR's complement.
        c.option_bytes[0][4] ^= 0x01;
        c.load_options();
        assert!(c.options_locked());
        assert_eq!(c.rdp_level(), 2);
        assert!(!c.boots_system_memory(true));
        c.set_rdp_level1();
        c.write_protect(&[0, 3]);
        assert_eq!(
            c.peek(0x1FFF_7818, 4).expect("test setup"),
            vec![0xFF, 0xFF, 0x00, 0xFF]
        );
    }

    #[test]
    fn level_2_boots_flash_and_freezes_the_options() {
        let mut c = chip("stm32l476");
        let mut optr = c.peek(0x1FFF_7800, 8).expect("test setup");
        optr[0] = 0xCC;
        optr[4] = 0x33;
        c.write(Area::OptionBytes(0), 0x1FFF_7800, &optr);
        c.reset();
        assert_eq!(c.rdp_level(), 2);
        assert!(!c.boots_system_memory(true));
        let before = c.stored_options();
        c.write(
            Area::OptionBytes(0),
            0x1FFF_7800,
            &[0xAA, 0xF8, 0xEF, 0xFF, 0x55, 0x07, 0x10, 0x00],
        );
        c.readout_unprotect();
        c.write_protect(&[0, 1]);
        assert_eq!(c.stored_options(), before);
    }

    #[test]
    fn masks_protect_sectors_and_units() {
        // F429: sectors 12 and up in nWRP2 (window 1).
        let mut c = chip("stm32f429");
        c.write_protect(&[1, 13]);
        c.reset();
        assert!(c.is_write_protected(0x0800_4000), "sector 1");
        assert!(c.is_write_protected(0x0810_4000), "sector 13");
        assert!(!c.is_write_protected(0x0810_0000), "sector 12");
        assert_eq!(
            c.peek(0x1FFE_C008, 4).expect("test setup"),
            vec![0xFD, 0x0F, 0x02, 0xF0]
        );
        // F103 medium density: 4 KB units, 0 = protected; bit 31 covers the rest.
        let mut c = chip("stm32f103xb");
        c.write_protect(&[1, 40]);
        c.reset();
        assert!(!c.is_write_protected(0x0800_0C00));
        assert!(c.is_write_protected(0x0800_1000) && c.is_write_protected(0x0800_1C00));
        assert!(
            c.is_write_protected(0x0801_F000),
            "unit 31 via the last bit"
        );
        assert_eq!(
            c.peek(0x1FFF_F808, 2).expect("test setup"),
            vec![0xFD, 0x02]
        );
        // L072: 1 = protected.
        let mut c = chip("stm32l072");
        c.write_protect(&[2]);
        c.reset();
        assert!(c.is_write_protected(0x0800_2000));
        assert!(!c.is_write_protected(0x0800_3000));
        assert_eq!(
            c.peek(0x1FF8_0008, 4).expect("test setup"),
            vec![0x04, 0x00, 0xFB, 0xFF]
        );
        c.write_unprotect();
        c.reset();
        assert!(!c.is_write_protected(0x0800_2000));
    }

    #[test]
    fn areas_protect_pages_of_their_bank() {
        let mut c = chip("stm32g474");
        c.write_protect(&[2, 3, 0xFF, 0x00, 0, 0]);
        c.reset();
        assert!(c.is_write_protected(0x0800_1000) && c.is_write_protected(0x0800_1800));
        assert!(!c.is_write_protected(0x0800_2000));
        assert!(c.is_write_protected(0x0804_0000), "WRP2A: bank 2 page 0");
        assert!(!c.is_write_protected(0x0804_0800));
        // Write Unprotect leaves start 7F, end 00.
        c.write_unprotect();
        assert_eq!(
            c.peek(0x1FFF_7818, 4).expect("test setup"),
            vec![0x7F, 0xFF, 0x00, 0xFF]
        );
        c.reset();
        assert!(!c.is_write_protected(0x0800_1000));
        // G0B1: the table maps one bank; WRP2A covers the second half.
        let mut c = chip("stm32g0b1");
        c.write_protect(&[0xFF, 0, 0xFF, 0, 1, 1]);
        c.reset();
        assert!(c.is_write_protected(0x0804_0800));
        assert!(!c.is_write_protected(0x0800_0800));
    }

    #[test]
    fn bank_swap_boots_bank_2_when_it_holds_an_image() {
        let mut c = chip("stm32l476");
        c.write(Area::Flash, 0x0800_0000, &vectors(0x0800_0100));
        let mut img = c.stored_options();
        let layout = c.device().ob_layout.clone().expect("test setup");
        layout.set(&mut img, "BFB2", 1).expect("test setup");
        c.write(Area::OptionBytes(0), 0x1FFF_7800, &img.windows[0].1);
        c.reset();
        assert!(c.boots_bank2());
        // Bank 2 blank: bank 1.
        assert_eq!(c.flash_boot().map(|b| b.bank), Some(1));
        // An image linked for the flash base, placed in bank 2.
        c.write(Area::Flash, 0x0808_0000, &vectors(0x0800_0200));
        assert_eq!(
            c.flash_boot(),
            Some(FlashBoot {
                bank: 2,
                base: 0x0808_0000,
                entry: 0x0800_0200
            })
        );
    }

    #[test]
    fn boot_lock_and_the_empty_check_of_the_swapped_bank() {
        // G4 BOOT_LOCK: always the flash, whatever BOOT0 says.
        let mut c = chip("stm32g474");
        assert!(c.boots_system_memory(true));
        let layout = c.device().ob_layout.clone().expect("test setup");
        let mut img = c.stored_options();
        layout.set(&mut img, "BOOT_LOCK", 1).expect("test setup");
        c.write(Area::OptionBytes(0), 0x1FFF_7800, &img.windows[0].1);
        c.reset();
        assert!(!c.boots_system_memory(true));
        // G0B1 swapped: the empty check reads bank 2, which the core would boot.
        let mut c = chip("stm32g0b1");
        assert!(c.boots_system_memory(false), "blank flash boots the ROM");
        c.write(Area::Flash, 0x0804_0000, &vectors(0x0800_0100));
        assert!(c.boots_system_memory(false), "bank 1 is still blank");
        let layout = c.device().ob_layout.clone().expect("test setup");
        let mut img = c.stored_options();
        layout.set(&mut img, "nSWAP_BANK", 0).expect("test setup");
        c.write(Area::OptionBytes(0), 0x1FFF_7800, &img.windows[0].1);
        c.reset();
        assert!(!c.boots_system_memory(false));
        assert_eq!(c.flash_boot().map(|b| b.bank), Some(2));
    }

    #[test]
    fn a_bank_mode_option_changes_the_page_map() {
        let mut c = chip("stm32g474");
        assert_eq!((c.device().banks, c.device().pages.len()), (2, 256));
        let mut img = c.stored_options();
        let layout = c.device().ob_layout.clone().expect("test setup");
        layout.set(&mut img, "DBANK", 0).expect("test setup");
        c.write(Area::OptionBytes(0), 0x1FFF_7800, &img.windows[0].1);
        c.reset();
        assert_eq!((c.device().banks, c.device().pages.len()), (1, 128));
        assert_eq!(c.erase_counts().len(), 128);
        assert_eq!(c.bank2_start(), None);
    }
}
