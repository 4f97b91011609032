//! Device facts as data: the built-in table (`devices.toml`, embedded at build time) and user
//! device files in the same schema.
//!
//! A [`Device`] answers every per-part question the operations and the simulator ask: memory
//! windows, the page/sector map (from run-length sector lists, per bank), the flash rules of the
//! family (erased value, programming unit, re-programming rule, alignment), option-byte and OTP
//! windows, and the bootloader's version and command list.

pub mod options;
mod schema;

use crate::error::{Error, Result};
use std::sync::OnceLock;
use std::time::Duration;

pub use schema::{BootloaderSpec, Reprogram};

/// An inclusive address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddrRange {
    /// First address.
    pub start: u32,
    /// Last address (inclusive).
    pub end: u32,
}

impl AddrRange {
    /// A range from its first address and size in bytes (size ≥ 1).
    pub fn from_len(start: u32, len: u32) -> AddrRange {
        AddrRange {
            start,
            end: start.wrapping_add(len.saturating_sub(1)),
        }
    }
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.end) - u64::from(self.start) + 1
    }
    /// Whether the range is empty (never, for a well-formed range).
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u32) -> bool {
        addr >= self.start && addr <= self.end
    }
    /// Whether `[addr, addr+len)` lies wholly inside.
    pub fn contains_span(&self, addr: u32, len: u64) -> bool {
        len > 0 && self.contains(addr) && u64::from(addr) + len - 1 <= u64::from(self.end)
    }
}

/// One erase unit: a page, or a sector on F2/F4/F7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Page {
    /// The number the erase commands use (global across banks).
    pub index: u16,
    /// First address.
    pub address: u32,
    /// Size in bytes.
    pub size: u32,
    /// Bank, from 1.
    pub bank: u8,
}

impl Page {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        u64::from(self.address) + u64::from(self.size)
    }
}

/// OTP area and its lock bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Otp {
    /// The whole OTP window, lock bytes included.
    pub range: AddrRange,
    /// Block size for lock purposes (F2/F4/F7), if the family locks by block.
    pub block_size: Option<u32>,
    /// First lock byte, if the family has lock bytes.
    pub lock_start: Option<u32>,
}

/// Behaviour a part needs beyond the plain protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quirk {
    /// Needs OBL_LAUNCH to leave the bootloader (F030xC/F09x).
    OblLaunch,
    /// Needs the PEMPTY bit toggled to leave the bootloader (L45x/46x).
    Pempty,
    /// Sends an extra ACK after init (L412/422 V13.1).
    ExtraAck,
    /// Sends two NACKs for commands refused under RDP.
    DoubleNack,
    /// Drops an invalid Read/Write address silently instead of NACKing it (before V3.1).
    SilentBadAddress,
}

/// The flash rules of a part (from its family, with per-part overrides).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlashRules {
    /// Value of an erased byte (0xFF, or 0x00 on L0/L1).
    pub erased: u8,
    /// Smallest unit the flash programs, in bytes.
    pub program_unit: u32,
    /// What programming does to memory that is not erased.
    pub reprogram: Reprogram,
    /// Address alignment a Write Memory needs.
    pub write_align: u32,
    /// Address of the RDP byte in the option bytes.
    pub rdp_address: Option<u32>,
    /// RDP value meaning "no protection" (0xAA, or 0xA5 on F1).
    pub rdp_unprotected: u8,
    /// Distance in bytes from an option value to its complement (F1: 1, F4: 2, L4: 4).
    pub ob_complement_offset: Option<u32>,
    /// Erase time by unit size: (size, typical ms, maximum ms).
    pub erase_ms: Vec<(u32, u32, u32)>,
    /// Programming time per byte in µs: (typical, maximum).
    pub program_us_per_byte: (u32, u32),
    /// Mass erase time in ms: (typical, maximum).
    pub mass_erase_ms: (u32, u32),
    /// The bootloader's start-up delay after reset, in µs (AN2606 Table 227; estimates where
    /// the table has no figure).
    pub startup_us: u32,
    /// Option bits that take over from the BOOT0 pin (G0 nBOOT_SEL, G4/L4+ nSWBOOT0).
    pub boot_select: Option<BootSelect>,
    /// An empty flash boots the ROM bootloader whatever BOOT0 says (G0; L45x/46x PEMPTY;
    /// F04x/F09x).
    pub empty_check: bool,
}

/// Option bits that replace the BOOT0 pin: when `select` matches, BOOT0 is the inverse of the
/// `nboot0` bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSelect {
    /// The bit that makes the option bit the boot source (nBOOT_SEL = 1, nSWBOOT0 = 0).
    pub select: OptionBit,
    /// The nBOOT0 bit (`set` is ignored): BOOT0 = 0 when it is set.
    pub nboot0: OptionBit,
}

/// Everything known about one part.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Device {
    /// Product ID.
    pub pid: u16,
    /// Display name.
    pub name: String,
    /// Lower-case part names it answers to (`stm32f411`).
    pub parts: Vec<String>,
    /// Family (F0, F4, L4, ...).
    pub family: String,
    /// Flash window.
    pub flash: AddrRange,
    /// Address of the flash-size register (u16, KiB), where the size varies within the PID.
    pub flash_size_register: Option<u32>,
    /// Erase units of the whole flash, in address order.
    pub pages: Vec<Page>,
    /// Number of banks.
    pub banks: u8,
    /// RAM window.
    pub ram: AddrRange,
    /// First RAM address the bootloader lets the host use.
    pub bootloader_ram_end: u32,
    /// System memory (read-only).
    pub system_memory: AddrRange,
    /// Option-byte windows.
    pub option_bytes: Vec<AddrRange>,
    /// OTP area.
    pub otp: Option<Otp>,
    /// Address of the 96-bit unique device ID.
    pub uid: Option<u32>,
    /// Bootloader version, ID byte and command list.
    pub bootloader: BootloaderSpec,
    /// Flash rules.
    pub rules: FlashRules,
    /// Most pages one erase command may name.
    pub max_erase_pages: usize,
    /// Whether the part accepts a mass erase.
    pub mass_erase: bool,
    /// Special behaviour.
    pub quirks: Vec<Quirk>,
    /// Factory option-byte contents (address, bytes).
    pub ob_default: Vec<(u32, Vec<u8>)>,
    /// Option-byte layout: named fields and where they sit, if the table describes the family.
    pub ob_layout: Option<options::ObLayout>,
    /// Sector sizes per bank, run-length (last repeats), kept to re-derive the map.
    #[serde(skip)]
    pub(crate) sector_pattern: Vec<u32>,
    /// First page number of bank 2 if not contiguous.
    #[serde(skip)]
    pub(crate) bank2_first_page: Option<u16>,
    /// Banks of the table's base layout.
    #[serde(skip)]
    pub(crate) base_banks: u8,
    /// Layouts that depend on the flash size or an option bit.
    #[serde(skip)]
    pub(crate) layouts: Vec<LayoutRule>,
}

/// A layout that applies at one flash size, or when an option bit has a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRule {
    /// Flash size this rule is for (any if `None`).
    pub flash_size: Option<u32>,
    /// Banks.
    pub banks: Option<u8>,
    /// Sector sizes per bank (last repeats).
    pub sectors: Option<Vec<u32>>,
    /// Number of bank 2's first page, where numbering skips.
    pub bank2_first_page: Option<u16>,
    /// The option bit that selects this layout.
    pub when: Option<OptionBit>,
}

/// One bit of an option byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionBit {
    /// Address of the option byte.
    pub address: u32,
    /// Bit mask within the byte.
    pub mask: u8,
    /// Whether the rule applies when the bit is set (true) or clear.
    #[serde(default = "default_true")]
    pub set: bool,
}

fn default_true() -> bool {
    true
}

fn ob_byte_in(blocks: &[(u32, Vec<u8>)], addr: u32) -> Option<u8> {
    blocks.iter().find_map(|(start, bytes)| {
        let off = addr.checked_sub(*start)? as usize;
        bytes.get(off).copied()
    })
}

impl Device {
    /// The factory option bytes as an image of the part's windows (bytes the table does not
    /// give read as `FF`).
    pub fn factory_option_bytes(&self) -> options::ObImage {
        options::ObImage::new(
            self.option_bytes
                .iter()
                .map(|w| {
                    let mut bytes = vec![0xFFu8; w.len() as usize];
                    for (addr, b) in &self.ob_default {
                        if w.contains(*addr) {
                            let off = (addr - w.start) as usize;
                            let n = b.len().min(bytes.len() - off);
                            bytes[off..off + n].copy_from_slice(&b[..n]);
                        }
                    }
                    (w.start, bytes)
                })
                .collect(),
        )
    }

    /// The flash size in bytes.
    pub fn flash_size(&self) -> u32 {
        self.flash.len() as u32
    }

    /// Pages that overlap `[start, end)`, in order.
    pub fn pages_overlapping(&self, start: u32, end: u64) -> &[Page] {
        let first = self.pages.partition_point(|p| p.end() <= u64::from(start));
        let last = self.pages.partition_point(|p| u64::from(p.address) < end);
        if first >= last {
            &[]
        } else {
            &self.pages[first..last]
        }
    }

    /// The page holding `addr`.
    pub fn page_at(&self, addr: u32) -> Option<&Page> {
        self.pages_overlapping(addr, u64::from(addr) + 1).first()
    }

    /// The page with erase number `index`.
    pub fn page_by_index(&self, index: u16) -> Option<&Page> {
        self.pages.iter().find(|p| p.index == index)
    }

    /// A copy with another flash size (read from the chip's flash-size register, or
    /// `--flash-size`). The page map is re-derived; option-dependent layouts take the factory
    /// option bytes.
    pub fn with_flash_size(&self, size: u32) -> Result<Device> {
        let defaults = self.ob_default.clone();
        self.with_layout(size, &|addr| ob_byte_in(&defaults, addr))
    }

    /// A copy for this flash size and these option bytes: the first layout rule whose size and
    /// option bit match decides banks, sector list and bank-2 numbering (F42x DB1M, G4 DBANK).
    /// `option_byte` returns the option byte at an address, or `None` if it is unknown.
    pub fn with_layout(
        &self,
        size: u32,
        option_byte: &dyn Fn(u32) -> Option<u8>,
    ) -> Result<Device> {
        let mut d = self.clone();
        let rule = self.layouts.iter().find(|r| {
            r.flash_size.is_none_or(|s| s == size)
                && r.when.is_none_or(|w| {
                    option_byte(w.address).is_some_and(|b| (b & w.mask != 0) == w.set)
                })
        });
        let pattern = rule
            .and_then(|r| r.sectors.clone())
            .unwrap_or_else(|| self.sector_pattern.clone());
        let banks = rule.and_then(|r| r.banks).unwrap_or(self.base_banks);
        let first2 = rule.map_or(self.bank2_first_page, |r| r.bank2_first_page);
        d.flash = AddrRange::from_len(self.flash.start, size);
        d.pages = schema::layout(self.flash.start, size, banks, &pattern, first2)
            .map_err(|e| Error::Device(format!("{}: {e}", self.name)))?;
        d.banks = banks;
        Ok(d)
    }

    /// Option-byte addresses whose bits choose the layout for this flash size.
    pub fn layout_option_addresses(&self, size: u32) -> Vec<u32> {
        self.layouts
            .iter()
            .filter(|r| r.flash_size.is_none_or(|s| s == size))
            .filter_map(|r| r.when.map(|w| w.address))
            .collect()
    }

    /// The profile used for a PID the table does not know: flash at `flash_base` of
    /// `flash_size` bytes as one erase unit (so erasing means a mass erase), no usable RAM,
    /// 32-byte alignment, erased value 0xFF, and the bootloader's own command list.
    pub fn generic(
        pid: u16,
        flash_base: u32,
        flash_size: u32,
        version: u8,
        commands: Vec<u8>,
    ) -> Device {
        let flash = AddrRange::from_len(flash_base, flash_size);
        Device {
            pid,
            name: "unknown part".into(),
            parts: Vec::new(),
            family: "unknown".into(),
            flash,
            flash_size_register: None,
            pages: vec![Page {
                index: 0,
                address: flash_base,
                size: flash_size,
                bank: 1,
            }],
            banks: 1,
            ram: AddrRange {
                start: 0x2000_0000,
                end: 0x2000_0000,
            },
            bootloader_ram_end: 0x2000_0001,
            system_memory: AddrRange {
                start: 0x1FFF_0000,
                end: 0x1FFF_0000,
            },
            option_bytes: Vec::new(),
            otp: None,
            uid: None,
            bootloader: BootloaderSpec {
                version,
                id: None,
                commands,
                id_address: None,
            },
            rules: FlashRules {
                erased: 0xFF,
                program_unit: 32,
                reprogram: Reprogram::UnitBlank,
                write_align: 32,
                rdp_address: None,
                rdp_unprotected: 0xAA,
                ob_complement_offset: None,
                erase_ms: Vec::new(),
                program_us_per_byte: (10, 100),
                mass_erase_ms: (1000, 35_000),
                startup_us: 5_000,
                boot_select: None,
                empty_check: false,
            },
            max_erase_pages: 1,
            mass_erase: true,
            quirks: Vec::new(),
            ob_default: Vec::new(),
            ob_layout: None,
            sector_pattern: vec![flash_size.max(1)],
            bank2_first_page: None,
            base_banks: 1,
            layouts: Vec::new(),
        }
    }

    /// Start address of each bank.
    pub fn bank_start(&self, bank: u8) -> Option<u32> {
        self.pages
            .iter()
            .find(|p| p.bank == bank)
            .map(|p| p.address)
    }

    /// Worst-case time to erase these pages, from the family's datasheet figures (5 s per page
    /// where the table has no figure).
    pub fn erase_time_max(&self, pages: &[Page]) -> Duration {
        pages
            .iter()
            .map(|p| match self.erase_ms(p.size) {
                Some((_, max)) => Duration::from_millis(u64::from(max)),
                None => Duration::from_secs(5),
            })
            .sum()
    }

    /// Erase time of one unit of `size` bytes: (typical, maximum) in ms.
    pub fn erase_ms(&self, size: u32) -> Option<(u32, u32)> {
        self.rules
            .erase_ms
            .iter()
            .find(|(s, _, _)| *s == size)
            .map(|&(_, t, m)| (t, m))
    }

    /// Whether a byte range is inside the main flash.
    pub fn in_flash(&self, addr: u32, len: u64) -> bool {
        self.flash.contains_span(addr, len)
    }

    /// Whether the host may use this RAM range (above the bootloader's own RAM).
    pub fn in_usable_ram(&self, addr: u32, len: u64) -> bool {
        self.ram.contains_span(addr, len) && addr >= self.bootloader_ram_end
    }

    /// Whether `query` names this part (case-insensitive; `stm32f411re` matches `stm32f411`).
    pub fn matches(&self, query: &str) -> bool {
        let q = query.to_ascii_lowercase();
        self.parts
            .iter()
            .any(|p| q == *p || (q.starts_with(p.as_str()) && q.len() - p.len() <= 4))
    }
}

/// A set of devices.
#[derive(Debug, Clone, Default)]
pub struct DeviceTable {
    devices: Vec<Device>,
}

static BUILTIN: OnceLock<std::result::Result<DeviceTable, String>> = OnceLock::new();

impl DeviceTable {
    /// The table compiled into the crate.
    pub fn builtin() -> Result<&'static DeviceTable> {
        BUILTIN
            .get_or_init(|| {
                DeviceTable::from_toml(include_str!("devices.toml"), "built-in device table")
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Device(e.clone()))
    }

    /// Parse a table (built-in or `--device-file`). Errors name `origin` and the problem.
    pub fn from_toml(text: &str, origin: &str) -> Result<DeviceTable> {
        schema::parse(text, origin).map(|devices| DeviceTable { devices })
    }

    /// Read a device file.
    pub fn from_file(path: &std::path::Path) -> Result<DeviceTable> {
        // A device file that cannot be read is bad input (exit code 2), like a missing image.
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Device(format!(
                "cannot read the device file {}: {e}",
                path.display()
            ))
        })?;
        DeviceTable::from_toml(&text, &path.display().to_string())
    }

    /// All devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The first device with this PID.
    pub fn by_pid(&self, pid: u16) -> Option<&Device> {
        self.devices.iter().find(|d| d.pid == pid)
    }

    /// The device a part name (`stm32f411`) refers to: an exact part name first, otherwise the
    /// longest part name the query starts with.
    pub fn by_part(&self, name: &str) -> Option<&Device> {
        let q = name.to_ascii_lowercase();
        if let Some(d) = self.devices.iter().find(|d| d.parts.contains(&q)) {
            return Some(d);
        }
        self.devices
            .iter()
            .filter(|d| d.matches(&q))
            .max_by_key(|d| {
                d.parts
                    .iter()
                    .filter(|p| q.starts_with(p.as_str()))
                    .map(|p| p.len())
                    .max()
                    .unwrap_or(0)
            })
    }

    /// A table where `overrides` come first, then this table's devices.
    pub fn with_overrides(&self, overrides: DeviceTable) -> DeviceTable {
        let mut devices = overrides.devices;
        devices.extend(self.devices.iter().cloned());
        DeviceTable { devices }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static DeviceTable {
        DeviceTable::builtin().expect("built-in table parses")
    }

    #[test]
    fn f411_sector_map_matches_reference() {
        let d = table().by_pid(0x431).expect("test setup");
        let starts: Vec<u32> = d.pages.iter().map(|p| p.address).collect();
        assert_eq!(
            starts,
            vec![
                0x0800_0000,
                0x0800_4000,
                0x0800_8000,
                0x0800_C000,
                0x0801_0000,
                0x0802_0000,
                0x0804_0000,
                0x0806_0000
            ]
        );
        assert_eq!(d.pages.last().expect("test setup").end(), 0x0808_0000);
        assert_eq!(
            d.pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn l476_has_two_banks_of_256_pages() {
        let d = table().by_part("stm32l476rg").expect("test setup");
        assert_eq!(d.pages.len(), 512);
        assert_eq!(d.bank_start(2), Some(0x0808_0000));
        let p = d.page_at(0x0808_0000).expect("test setup");
        assert_eq!((p.index, p.bank, p.size), (256, 2, 2048));
    }

    #[test]
    fn smaller_flash_rederives_the_map() {
        let d = table()
            .by_pid(0x431)
            .expect("test setup")
            .with_flash_size(256 * 1024)
            .expect("test setup");
        assert_eq!(d.pages.len(), 6);
        let l4 = table()
            .by_pid(0x415)
            .expect("test setup")
            .with_flash_size(512 * 1024)
            .expect("test setup");
        assert_eq!(l4.pages.len(), 256);
        assert_eq!(l4.bank_start(2), Some(0x0804_0000));
    }

    #[test]
    fn pages_overlapping_is_exact() {
        let d = table().by_pid(0x431).expect("test setup");
        let idx = |s: u32, e: u64| {
            d.pages_overlapping(s, e)
                .iter()
                .map(|p| p.index)
                .collect::<Vec<_>>()
        };
        assert_eq!(idx(0x0800_0000, 0x0800_0001), vec![0]);
        assert_eq!(idx(0x0800_3FFF, 0x0800_4001), vec![0, 1]);
        assert_eq!(idx(0x0801_FFFF, 0x0802_0000), vec![4]);
        assert!(idx(0x0808_0000, 0x0808_0010).is_empty());
    }

    #[test]
    fn part_names_match_with_suffix_only() {
        let t = table();
        assert!(t.by_part("STM32F411RE").is_some());
        assert!(t.by_part("stm32f4").is_none());
        assert!(t.by_part("stm32f411xxxxxxxx").is_none());
    }
}
