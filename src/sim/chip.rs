//! The simulated chip's memories and the flash rules of its family.
//!
//! Failures are silent as on real silicon: a program operation the flash controller would reject
//! leaves memory unchanged (or ANDed, on F2/F4/F7) and the ROM still ACKs. Counters record what
//! happened so tests can check what a client really did. Option bytes, protection and the boot
//! decision are in [`super::options`].

use crate::device::options::ObImage;
use crate::device::{AddrRange, Device, Reprogram};

/// Where an address lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Main flash.
    Flash,
    /// RAM the host may use.
    Ram,
    /// RAM the bootloader keeps for itself.
    BootloaderRam,
    /// System memory (read-only).
    SystemMemory,
    /// Option-byte window `n`.
    OptionBytes(usize),
    /// OTP area.
    Otp,
    /// Unique ID and flash-size registers.
    DeviceInfo,
    /// The F2/F4/F7 virtual register at 0xFFFF0000 that selects the supply range.
    VoltageRange,
}

/// Address of the F2/F4/F7 virtual supply-range register.
pub const VOLTAGE_RANGE_REGISTER: u32 = 0xFFFF_0000;

/// Memory and flash-controller state of one simulated chip.
#[derive(Debug, Clone)]
pub struct Chip {
    pub(super) device: Device,
    pub(crate) flash: Vec<u8>,
    pub(crate) ram: Vec<u8>,
    pub(crate) sysmem: Vec<u8>,
    pub(crate) option_bytes: Vec<Vec<u8>>,
    pub(crate) otp: Vec<u8>,
    info_start: u32,
    pub(crate) info: Vec<u8>,
    voltage_range: u8,
    /// A misaligned program operation failed; all later ones fail until reset (AN2606).
    program_locked: bool,
    pub(crate) erase_counts: Vec<u32>,
    pub(crate) program_ops: u64,
    pub(crate) failed_program_ops: u64,
    /// The option values the option loader took at the last reset.
    pub(super) loaded: ObImage,
    /// A value/complement mismatch locked the chip (G0).
    pub(super) options_locked: bool,
}

impl Chip {
    /// A factory-fresh chip: erased flash and OTP, default option bytes, loaded.
    pub fn new(device: Device, uid: [u8; 12]) -> Chip {
        let erased = device.rules.erased;
        let flash = vec![erased; device.flash.len() as usize];
        let ram = vec![0u8; device.ram.len() as usize];
        let mut sysmem = vec![0u8; device.system_memory.len() as usize];
        if let Some(id) = device.bootloader.id {
            let at = device
                .bootloader
                .id_address
                .unwrap_or(device.system_memory.end.wrapping_sub(1));
            if device.system_memory.contains(at) {
                sysmem[(at - device.system_memory.start) as usize] = id;
            }
        }
        let option_bytes: Vec<Vec<u8>> = device
            .factory_option_bytes()
            .windows
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect();
        let otp = device
            .otp
            .map(|o| vec![0xFF; o.range.len() as usize])
            .unwrap_or_default();
        // Device-info window: the UID (12 bytes) and the flash-size register (2 bytes).
        let mut points: Vec<(u32, Vec<u8>)> = Vec::new();
        if let Some(u) = device.uid {
            points.push((u, uid.to_vec()));
        }
        if let Some(r) = device.flash_size_register {
            let kib = (device.flash.len() / 1024) as u16;
            points.push((r, kib.to_le_bytes().to_vec()));
        }
        let info_start = points.iter().map(|(a, _)| *a & !3).min().unwrap_or(0);
        let info_end = points
            .iter()
            .map(|(a, b)| (*a as usize + b.len() + 3) & !3)
            .max()
            .unwrap_or(info_start as usize);
        let mut info = vec![0xFFu8; info_end.saturating_sub(info_start as usize)];
        for (a, b) in points {
            let off = (a - info_start) as usize;
            info[off..off + b.len()].copy_from_slice(&b);
        }
        let erase_counts = vec![0; device.pages.len()];
        let mut chip = Chip {
            device,
            flash,
            ram,
            sysmem,
            option_bytes,
            otp,
            info_start,
            info,
            voltage_range: 0,
            program_locked: false,
            erase_counts,
            program_ops: 0,
            failed_program_ops: 0,
            loaded: ObImage::new(Vec::new()),
            options_locked: false,
        };
        chip.load_options();
        chip
    }

    /// The part this chip is.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Which area `[addr, addr+len)` lies in, if wholly inside one.
    pub fn area(&self, addr: u32, len: u64) -> Option<Area> {
        let d = &self.device;
        if d.flash.contains_span(addr, len) {
            return Some(Area::Flash);
        }
        if d.ram.contains_span(addr, len) {
            return Some(if addr < d.bootloader_ram_end {
                Area::BootloaderRam
            } else {
                Area::Ram
            });
        }
        // The unique-ID and flash-size registers sit inside system memory on some families.
        if !self.info.is_empty()
            && AddrRange::from_len(self.info_start, self.info.len() as u32).contains_span(addr, len)
        {
            return Some(Area::DeviceInfo);
        }
        if d.system_memory.contains_span(addr, len) {
            return Some(Area::SystemMemory);
        }
        for (i, w) in d.option_bytes.iter().enumerate() {
            if w.contains_span(addr, len) {
                return Some(Area::OptionBytes(i));
            }
        }
        if let Some(o) = d.otp {
            if o.range.contains_span(addr, len) {
                return Some(Area::Otp);
            }
        }
        if self.has_voltage_register()
            && addr >= VOLTAGE_RANGE_REGISTER
            && len <= 4
            && u64::from(addr) + len <= u64::from(VOLTAGE_RANGE_REGISTER) + 4
        {
            return Some(Area::VoltageRange);
        }
        None
    }

    fn has_voltage_register(&self) -> bool {
        matches!(self.device.family.as_str(), "F2" | "F4" | "F7")
    }

    /// Read memory as the bootloader does; `None` where it would NACK.
    pub fn read(&self, addr: u32, len: usize) -> Option<Vec<u8>> {
        let area = self.area(addr, len as u64)?;
        if area == Area::BootloaderRam {
            return None;
        }
        Some(self.peek_area(area, addr, len))
    }

    /// Read any mapped memory, bootloader rules aside (for tests and state inspection).
    pub fn peek(&self, addr: u32, len: usize) -> Option<Vec<u8>> {
        let area = self.area(addr, len as u64)?;
        Some(self.peek_area(area, addr, len))
    }

    fn peek_area(&self, area: Area, addr: u32, len: usize) -> Vec<u8> {
        let d = &self.device;
        let slice =
            |v: &[u8], base: u32| v[(addr - base) as usize..(addr - base) as usize + len].to_vec();
        match area {
            Area::Flash => slice(&self.flash, d.flash.start),
            Area::Ram | Area::BootloaderRam => slice(&self.ram, d.ram.start),
            Area::SystemMemory => slice(&self.sysmem, d.system_memory.start),
            Area::OptionBytes(i) => slice(&self.option_bytes[i], d.option_bytes[i].start),
            Area::Otp => slice(&self.otp, d.otp.map(|o| o.range.start).unwrap_or(0)),
            Area::DeviceInfo => slice(&self.info, self.info_start),
            Area::VoltageRange => {
                let reg = [self.voltage_range, 0xFF, 0xFF, 0xFF];
                reg[(addr - VOLTAGE_RANGE_REGISTER) as usize..][..len].to_vec()
            }
        }
    }

    /// Whether the bootloader accepts a Write Memory at `addr` of `len` bytes (address phase
    /// and range). Alignment is not checked here: misaligned flash writes are ACKed and fail.
    pub fn write_target(&self, addr: u32, len: u64) -> Option<Area> {
        match self.area(addr, len)? {
            Area::Flash => Some(Area::Flash),
            Area::Ram => Some(Area::Ram),
            Area::OptionBytes(i) if addr == self.device.option_bytes[i].start => {
                Some(Area::OptionBytes(i))
            }
            Area::Otp => Some(Area::Otp),
            Area::VoltageRange => Some(Area::VoltageRange),
            _ => None,
        }
    }

    /// Whether the ROM accepts this data for the area (the F2/F4/F7 supply-range register takes
    /// a value 0-4 in its first byte and 0xFF in the three others; anything else is NACKed).
    pub fn accepts(&self, area: Area, addr: u32, data: &[u8]) -> bool {
        if area != Area::VoltageRange {
            return true;
        }
        let off = (addr - VOLTAGE_RANGE_REGISTER) as usize;
        data.iter()
            .enumerate()
            .all(|(i, &b)| if off + i == 0 { b <= 4 } else { b == 0xFF })
    }

    /// Perform a Write Memory whose address and checksum were accepted. Returns whether the
    /// device resets afterwards (option-byte writes).
    pub fn write(&mut self, area: Area, addr: u32, data: &[u8]) -> bool {
        match area {
            Area::Flash => {
                self.program_flash(addr, data);
                false
            }
            Area::Ram => {
                let off = (addr - self.device.ram.start) as usize;
                self.ram[off..off + data.len()].copy_from_slice(data);
                false
            }
            Area::OptionBytes(i) => {
                let off = (addr - self.device.option_bytes[i].start) as usize;
                self.write_option_bytes(i, off, data);
                true
            }
            Area::Otp => {
                self.program_otp(addr, data);
                false
            }
            Area::VoltageRange => {
                let off = (addr - VOLTAGE_RANGE_REGISTER) as usize;
                for (i, b) in data.iter().enumerate() {
                    if off + i == 0 && *b <= 4 {
                        self.voltage_range = *b;
                    }
                }
                false
            }
            _ => false,
        }
    }

    /// Program main flash with the family's unit and re-programming rule. The tail is padded
    /// with the erased value up to the programming unit, as the ROM does.
    fn program_flash(&mut self, addr: u32, data: &[u8]) {
        let rules = self.device.rules.clone();
        self.program_ops += 1;
        if addr % rules.write_align != 0 {
            self.program_locked = true;
        }
        if self.program_locked {
            self.failed_program_ops += 1;
            return;
        }
        let unit = rules.program_unit as usize;
        let base = self.device.flash.start;
        let start = (addr - base) as usize;
        let mut padded = data.to_vec();
        let aligned_start = start / unit * unit;
        let lead = start - aligned_start;
        let mut buf = vec![rules.erased; lead];
        buf.append(&mut padded);
        while buf.len() % unit != 0 {
            buf.push(rules.erased);
        }
        let mut failed = false;
        // Protection is per page: look it up once per page, not per programming unit.
        let mut page_protection: Option<(u32, bool)> = None;
        for (k, chunk) in buf.chunks(unit).enumerate() {
            let off = aligned_start + k * unit;
            if off + unit > self.flash.len() {
                failed = true;
                break;
            }
            let addr = base + off as u32;
            let page = self.device.page_at(addr).map_or(addr, |p| p.address);
            let page_protected = match page_protection {
                Some((p, protected)) if p == page => protected,
                _ => {
                    let protected = self.is_write_protected(addr);
                    page_protection = Some((page, protected));
                    protected
                }
            };
            if page_protected {
                failed = true;
                continue;
            }
            let target = &mut self.flash[off..off + unit];
            // Bytes the write does not cover (lead padding) keep their value.
            let covered = |i: usize| {
                let abs = off + i;
                abs >= start && abs < start + data.len()
            };
            match rules.reprogram {
                Reprogram::AndBits => {
                    for (i, b) in chunk.iter().enumerate() {
                        if covered(i) {
                            target[i] &= *b;
                        }
                    }
                }
                Reprogram::UnitBlankOrZero | Reprogram::UnitBlank | Reprogram::WordZero => {
                    let blank = target.iter().all(|&b| b == rules.erased);
                    let zero_write = chunk.iter().all(|&b| b == 0);
                    let ok = blank || (rules.reprogram == Reprogram::UnitBlankOrZero && zero_write);
                    if ok {
                        for (i, b) in chunk.iter().enumerate() {
                            target[i] = if covered(i) { *b } else { rules.erased };
                        }
                    } else {
                        failed = true;
                    }
                }
            }
        }
        if failed {
            self.failed_program_ops += 1;
        }
    }

    fn program_otp(&mut self, addr: u32, data: &[u8]) {
        let Some(otp) = self.device.otp else { return };
        let off = (addr - otp.range.start) as usize;
        let locked = |chip: &Chip, abs: usize| -> bool {
            match (otp.block_size, otp.lock_start) {
                (Some(bs), Some(ls)) => {
                    let lock_off = (ls - otp.range.start) as usize;
                    if abs >= lock_off {
                        return false;
                    }
                    let block = abs / bs as usize;
                    chip.otp.get(lock_off + block).is_some_and(|&l| l == 0x00)
                }
                _ => false,
            }
        };
        match self.device.rules.reprogram {
            Reprogram::AndBits => {
                for (i, b) in data.iter().enumerate() {
                    if !locked(self, off + i) {
                        self.otp[off + i] &= *b;
                    }
                }
            }
            _ => {
                // Double words, programmed once: any 0 bit in the target makes it unwritable.
                let unit = 8usize;
                let first = off / unit * unit;
                let last = (off + data.len()).div_ceil(unit) * unit;
                for dw in (first..last.min(self.otp.len())).step_by(unit) {
                    if self.otp[dw..dw + unit].iter().any(|&b| b != 0xFF) {
                        continue;
                    }
                    for i in dw..dw + unit {
                        if i >= off && i < off + data.len() {
                            self.otp[i] = data[i - off];
                        }
                    }
                }
            }
        }
    }

    /// Erase the pages with these numbers. Protected pages stay as they are. Returns false if a
    /// number is not a page of this part (the ROM NACKs the request before erasing anything).
    pub fn erase_pages(&mut self, indices: &[u16]) -> bool {
        let mut positions = Vec::with_capacity(indices.len());
        for &i in indices {
            match self.device.pages.iter().position(|p| p.index == i) {
                Some(pos) => positions.push(pos),
                None => return false,
            }
        }
        for pos in positions {
            self.erase_page_at(pos);
        }
        true
    }

    fn erase_page_at(&mut self, pos: usize) {
        let page = self.device.pages[pos];
        if self.is_write_protected(page.address) {
            return;
        }
        let off = (page.address - self.device.flash.start) as usize;
        let erased = self.device.rules.erased;
        self.flash[off..off + page.size as usize].fill(erased);
        self.erase_counts[pos] += 1;
    }

    /// Mass erase (`bank` None) or erase one bank. Write-protected pages survive.
    pub fn erase_bank(&mut self, bank: Option<u8>) -> bool {
        if let Some(b) = bank {
            if b > self.device.banks {
                return false;
            }
        }
        for pos in 0..self.device.pages.len() {
            if bank.is_none_or(|b| self.device.pages[pos].bank == b) {
                self.erase_page_at(pos);
            }
        }
        true
    }

    /// Readout-unprotect's erase: the whole flash, write protection notwithstanding.
    pub fn erase_all_unconditionally(&mut self) {
        let erased = self.device.rules.erased;
        self.flash.fill(erased);
        for c in &mut self.erase_counts {
            *c += 1;
        }
    }

    /// Erase the first `fraction` of page number `index`, as an erase cut short by a power loss
    /// leaves it (the rest keeps its old bytes). Returns false if there is no such page.
    pub fn erase_page_partially(&mut self, index: u16, fraction: f64) -> bool {
        let Some(pos) = self.device.pages.iter().position(|p| p.index == index) else {
            return false;
        };
        let page = self.device.pages[pos];
        if self.is_write_protected(page.address) {
            return true;
        }
        let off = (page.address - self.device.flash.start) as usize;
        let n =
            ((f64::from(page.size) * fraction.clamp(0.0, 1.0)) as usize).min(page.size as usize);
        let erased = self.device.rules.erased;
        self.flash[off..off + n].fill(erased);
        true
    }

    /// Whether the first word of flash (bank 1) is erased.
    pub fn flash_is_empty(&self) -> bool {
        let e = self.device.rules.erased;
        self.flash.iter().take(4).all(|&b| b == e)
    }

    /// The application's initial stack pointer and reset vector (Thumb bit cleared), if the
    /// first two words of flash look like a vector table (stack pointer inside RAM, Thumb reset
    /// vector in flash).
    pub fn app_vectors(&self) -> Option<(u32, u32)> {
        let (sp, pc) = self.vectors_at(self.device.flash.start)?;
        let pc_ok = pc & 1 == 1 && self.device.flash.contains(pc & !1);
        (self.stack_in_ram(sp) && pc_ok).then_some((sp, pc & !1))
    }

    /// The first two words of flash at `addr`: initial stack pointer and reset vector.
    pub(super) fn vectors_at(&self, addr: u32) -> Option<(u32, u32)> {
        let b = self.peek(addr, 8)?;
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some((word(0), word(4)))
    }

    /// Whether an initial stack pointer lies in RAM (it may point one past its end).
    pub(super) fn stack_in_ram(&self, sp: u32) -> bool {
        let ram = &self.device.ram;
        sp > ram.start && sp <= ram.end.saturating_add(1)
    }

    /// Power lost and restored: RAM content is gone, and the flash controller is reset.
    pub fn power_cycle(&mut self) {
        self.ram.fill(0);
        self.reset();
    }

    /// How often each page was erased, in page order.
    pub fn erase_counts(&self) -> &[u32] {
        &self.erase_counts
    }

    /// Write Memory operations on flash, and how many of them the flash controller rejected.
    pub fn program_stats(&self) -> (u64, u64) {
        (self.program_ops, self.failed_program_ops)
    }

    /// A reset: the flash controller's sticky error clears and the option loader runs.
    pub fn reset(&mut self) {
        self.program_locked = false;
        self.voltage_range = 0;
        self.load_options();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;

    fn chip(part: &str) -> Chip {
        let d = DeviceTable::builtin()
            .expect("test setup")
            .by_part(part)
            .expect("test setup")
            .clone();
        Chip::new(d, [1; 12])
    }

    #[test]
    fn f4_programming_ands_bits() {
        let mut c = chip("stm32f411");
        c.write(Area::Flash, 0x0800_0000, &[0xF0, 0xFF, 0xFF, 0xFF]);
        c.write(Area::Flash, 0x0800_0000, &[0x3C, 0xFF, 0xFF, 0xFF]);
        assert_eq!(c.read(0x0800_0000, 1).expect("test setup"), vec![0x30]);
    }

    #[test]
    fn l4_double_word_cannot_be_reprogrammed() {
        let mut c = chip("stm32l476");
        c.write(Area::Flash, 0x0800_0000, &[1, 2, 3, 4, 5, 6, 7, 8]);
        c.write(Area::Flash, 0x0800_0000, &[0, 0, 0, 0, 5, 6, 7, 8]);
        assert_eq!(
            c.read(0x0800_0000, 8).expect("test setup"),
            vec![1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(c.program_stats(), (2, 1));
        // Writing all zeros is allowed.
        c.write(Area::Flash, 0x0800_0000, &[0; 8]);
        assert_eq!(c.read(0x0800_0000, 8).expect("test setup"), vec![0; 8]);
    }

    #[test]
    fn l4_half_double_word_write_pads_and_blocks_the_rest() {
        let mut c = chip("stm32l476");
        c.write(Area::Flash, 0x0800_0010, &[1, 2, 3, 4]);
        assert_eq!(
            c.read(0x0800_0010, 8).expect("test setup"),
            vec![1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        c.write(Area::Flash, 0x0800_0014, &[9, 9, 9, 9]);
        assert_eq!(
            c.read(0x0800_0014, 4).expect("test setup"),
            vec![0xFF; 4],
            "the double word was already programmed"
        );
    }

    #[test]
    fn misaligned_write_locks_programming_until_reset() {
        let mut c = chip("stm32l476");
        c.write(Area::Flash, 0x0800_0004, &[1; 8]);
        c.write(Area::Flash, 0x0800_0100, &[2; 8]);
        assert_eq!(c.read(0x0800_0100, 8).expect("test setup"), vec![0xFF; 8]);
        c.reset();
        c.write(Area::Flash, 0x0800_0100, &[2; 8]);
        assert_eq!(c.read(0x0800_0100, 8).expect("test setup"), vec![2; 8]);
    }

    #[test]
    fn f4_write_protect_blocks_erase_and_unprotect_restores() {
        let mut c = chip("stm32f411");
        c.write(Area::Flash, 0x0800_4000, &[0; 4]);
        c.write_protect(&[1]);
        assert!(!c.is_write_protected(0x0800_4000), "loads at the reset");
        c.reset();
        assert!(c.is_write_protected(0x0800_4000));
        assert!(!c.is_write_protected(0x0800_0000));
        c.erase_pages(&[1]);
        assert_eq!(c.read(0x0800_4000, 4).expect("test setup"), vec![0; 4]);
        c.write_unprotect();
        c.reset();
        c.erase_pages(&[1]);
        assert_eq!(c.read(0x0800_4000, 4).expect("test setup"), vec![0xFF; 4]);
        assert_eq!(
            c.read(0x1FFF_C008, 4).expect("test setup"),
            vec![0xFF, 0x0F, 0x00, 0xF0]
        );
    }

    #[test]
    fn l4_areas_protect_pages_per_bank() {
        let mut c = chip("stm32l476");
        c.write_protect(&[2, 3, 0xFF, 0x00, 0, 0]);
        c.reset();
        assert!(c.is_write_protected(0x0800_1000));
        assert!(c.is_write_protected(0x0800_1800));
        assert!(!c.is_write_protected(0x0800_2000));
        assert!(
            c.is_write_protected(0x0808_0000),
            "WRP2A covers bank 2 page 0"
        );
        c.write_unprotect();
        c.reset();
        assert!(!c.is_write_protected(0x0800_1000));
    }

    #[test]
    fn rdp_levels_and_unprotect_mass_erase() {
        let mut c = chip("stm32f411");
        assert_eq!(c.rdp_level(), 0);
        c.write(Area::Flash, 0x0800_0000, &[0x12; 4]);
        c.set_rdp_level1();
        c.reset();
        assert_eq!(c.rdp_level(), 1);
        assert_eq!(
            c.read(0x1FFF_C000, 4).expect("test setup"),
            vec![0xEC, 0xBB, 0x13, 0x44]
        );
        c.readout_unprotect();
        c.reset();
        assert_eq!(c.rdp_level(), 0);
        assert_eq!(c.read(0x0800_0000, 4).expect("test setup"), vec![0xFF; 4]);
    }

    #[test]
    fn areas_and_windows() {
        let c = chip("stm32f411");
        assert_eq!(c.area(0x2000_0000, 4), Some(Area::BootloaderRam));
        assert_eq!(c.area(0x2000_3000, 4), Some(Area::Ram));
        assert!(c.read(0x2000_0000, 4).is_none());
        assert_eq!(
            c.write_target(0x1FFF_C004, 4),
            None,
            "option bytes are written from their base"
        );
        assert_eq!(
            c.write_target(0x1FFF_0000, 4),
            None,
            "system memory is read-only"
        );
        assert_eq!(
            c.read(0x1FFF_7A22, 2).expect("test setup"),
            vec![0x00, 0x02],
            "512 KiB"
        );
        assert_eq!(
            c.read(0x1FFF_76DE, 1).expect("test setup"),
            vec![0xD0],
            "bootloader ID byte"
        );
        assert!(
            c.read(0x0807_FFFF, 2).is_none(),
            "a read may not run off the end of flash"
        );
    }

    #[test]
    fn f1_half_word_programs_only_when_erased_or_to_zero() {
        let mut c = chip("stm32f103xb");
        c.write(Area::Flash, 0x0800_0000, &[0x34, 0x12, 0xFF, 0xFF]);
        c.write(Area::Flash, 0x0800_0000, &[0x00, 0x12, 0x78, 0x56]);
        assert_eq!(
            c.read(0x0800_0000, 4).expect("test setup"),
            vec![0x34, 0x12, 0x78, 0x56],
            "the programmed half-word keeps its value, the erased one takes the new one"
        );
        c.write(Area::Flash, 0x0800_0000, &[0x00, 0x00, 0x78, 0x56]);
        assert_eq!(
            c.read(0x0800_0000, 2).expect("test setup"),
            vec![0, 0],
            "0x0000 is allowed"
        );
    }

    #[test]
    fn l0_erases_to_zero_and_programs_only_zero_words() {
        let mut c = chip("stm32l072");
        assert_eq!(c.read(0x0800_0000, 4).expect("test setup"), vec![0; 4]);
        c.write(Area::Flash, 0x0800_0000, &[1, 2, 3, 4, 5, 6, 7, 8]);
        c.write(Area::Flash, 0x0800_0000, &[9, 9, 9, 9]);
        assert_eq!(
            c.read(0x0800_0000, 8).expect("test setup"),
            vec![1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert!(c.erase_pages(&[0]));
        assert_eq!(c.read(0x0800_0000, 128).expect("test setup"), vec![0; 128]);
        assert!(!c.device().mass_erase, "L0 takes no mass erase");
    }

    #[test]
    fn h7_and_u5_flash_words_are_written_once() {
        for (part, unit) in [("stm32h743", 32usize), ("stm32u575", 16)] {
            let mut c = chip(part);
            assert_eq!(c.device().rules.program_unit as usize, unit, "{part}");
            c.write(Area::Flash, 0x0800_0000, &vec![0x11; unit]);
            c.write(Area::Flash, 0x0800_0000, &vec![0x00; unit]);
            assert_eq!(
                c.read(0x0800_0000, unit).expect("test setup"),
                vec![0x11; unit],
                "{part}: not even zeros"
            );
            // A write of half a flash word pads the rest, which then cannot be written.
            c.write(Area::Flash, 0x0800_0100, &vec![0x22; unit / 2]);
            c.write(
                Area::Flash,
                0x0800_0100 + unit as u32 / 2,
                &vec![0x33; unit / 2],
            );
            assert_eq!(
                c.read(0x0800_0100 + unit as u32 / 2, 4)
                    .expect("test setup"),
                vec![0xFF; 4],
                "{part}"
            );
        }
    }

    #[test]
    fn uid_and_flash_size_are_readable_where_they_sit_inside_system_memory() {
        let c = chip("stm32f103xb");
        let d = c.device().clone();
        let uid = c
            .read(d.uid.expect("F1 has a UID"), 12)
            .expect("test setup");
        assert_ne!(uid, vec![0; 12]);
        let size = c
            .read(d.flash_size_register.expect("F1 size register"), 2)
            .expect("test setup");
        assert_eq!(
            u16::from_le_bytes([size[0], size[1]]) as u64 * 1024,
            d.flash.len()
        );
    }

    #[test]
    fn f4_otp_blocks_and_until_their_lock_byte_is_zero() {
        let mut c = chip("stm32f411");
        let (otp, locks) = (0x1FFF_7800, 0x1FFF_7A00);
        c.write(Area::Otp, otp, &[0xF0, 0x0F, 0xFF, 0xFF]);
        c.write(Area::Otp, otp, &[0x3C, 0xFF, 0x00, 0xFF]);
        assert_eq!(
            c.peek(otp, 4).expect("test setup"),
            vec![0x30, 0x0F, 0x00, 0xFF]
        );
        // Lock block 1 (its lock byte to 00): writes there change nothing, block 2 still ANDs.
        c.write(Area::Otp, locks, &[0xFF, 0x00, 0xFF, 0xFF]);
        c.write(Area::Otp, otp + 32, &[0x00; 4]);
        assert_eq!(c.peek(otp + 32, 4).expect("test setup"), vec![0xFF; 4]);
        c.write(Area::Otp, otp + 64, &[0x12; 4]);
        assert_eq!(c.peek(otp + 64, 4).expect("test setup"), vec![0x12; 4]);
        // Mass erase and readout unprotect leave OTP alone.
        c.erase_bank(None);
        c.readout_unprotect();
        assert_eq!(c.peek(otp + 64, 4).expect("test setup"), vec![0x12; 4]);
    }

    #[test]
    fn double_word_otp_is_written_once() {
        for part in ["stm32l476", "stm32g071", "stm32g474"] {
            let mut c = chip(part);
            let otp = 0x1FFF_7000;
            c.write(Area::Otp, otp, &[1, 2, 3, 4, 5, 6, 7, 8]);
            c.write(Area::Otp, otp, &[0; 8]);
            assert_eq!(
                c.peek(otp, 8).expect("test setup"),
                vec![1, 2, 3, 4, 5, 6, 7, 8],
                "{part}: not even zeros"
            );
            // Half a double word pads the rest, which can no longer be written.
            c.write(Area::Otp, otp + 8, &[9; 4]);
            c.write(Area::Otp, otp + 12, &[7; 4]);
            assert_eq!(
                c.peek(otp + 8, 8).expect("test setup"),
                vec![9, 9, 9, 9, 0xFF, 0xFF, 0xFF, 0xFF],
                "{part}"
            );
        }
    }
}
