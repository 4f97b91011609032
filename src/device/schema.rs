//! The TOML schema of device tables and how entries become [`Device`]s.

use super::{AddrRange, BootSelect, Device, FlashRules, LayoutRule, OptionBit, Otp, Page, Quirk};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// What programming does to memory that is not in the erased state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reprogram {
    /// Bits can only go from 1 to 0: the result is old AND new (F2/F4/F7).
    AndBits,
    /// A unit may be programmed only if it is erased, or to all zeros (F0/F1/F3 half-words;
    /// L4/G0/G4/WB/WL double words).
    UnitBlankOrZero,
    /// A unit may be programmed only if it is erased (H7, U5, L5 flash words).
    UnitBlank,
    /// A word may be programmed only if it is zero (erased) on L0/L1, where erased is 0x00.
    WordZero,
}

/// The bootloader a part carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderSpec {
    /// Protocol version byte (0x31 = V3.1).
    pub version: u8,
    /// Bootloader ID byte at the end of system memory, if the part has one.
    #[serde(default)]
    pub id: Option<u8>,
    /// Command codes in the order Get lists them.
    pub commands: Vec<u8>,
    /// Where the ID byte sits, if not at the last system-memory address minus 1.
    #[serde(default)]
    pub id_address: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    family: BTreeMap<String, FamilyEntry>,
    #[serde(default)]
    device: Vec<DeviceEntry>,
    #[serde(default)]
    ob_layout: BTreeMap<String, super::options::LayoutEntry>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct FamilyEntry {
    erased: Option<u8>,
    program_unit: Option<u32>,
    reprogram: Option<Reprogram>,
    write_align: Option<u32>,
    rdp_address: Option<u32>,
    rdp_unprotected: Option<u8>,
    ob_complement_offset: Option<u32>,
    #[serde(default)]
    erase_ms: BTreeMap<String, (u32, u32)>,
    program_us_per_byte: Option<(u32, u32)>,
    mass_erase_ms: Option<(u32, u32)>,
    startup_us: Option<u32>,
    boot_select: Option<BootSelect>,
    empty_check: Option<bool>,
    ob_layout: Option<String>,
    #[serde(default)]
    ob_default: Vec<ObDefault>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct ObDefault {
    address: u32,
    bytes: String,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutEntry {
    flash_size: Option<Size>,
    banks: Option<u8>,
    sectors: Option<Vec<Size>>,
    bank2_first_page: Option<u16>,
    when: Option<OptionBit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OtpEntry {
    start: u32,
    end: u32,
    block_size: Option<u32>,
    lock_start: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    pid: u16,
    name: String,
    #[serde(default)]
    parts: Vec<String>,
    family: String,
    #[serde(default = "default_flash_base")]
    flash_base: u32,
    flash_size: Size,
    flash_size_register: Option<u32>,
    sectors: Vec<Size>,
    #[serde(default = "one")]
    banks: u8,
    bank2_first_page: Option<u16>,
    #[serde(default)]
    layouts: Vec<LayoutEntry>,
    ram: AddrRange,
    bootloader_ram_end: u32,
    system_memory: AddrRange,
    #[serde(default)]
    option_bytes: Vec<AddrRange>,
    otp: Option<OtpEntry>,
    uid: Option<u32>,
    bootloader: BootloaderSpec,
    #[serde(default = "default_max_erase")]
    max_erase_pages: usize,
    #[serde(default = "yes")]
    mass_erase: bool,
    #[serde(default)]
    quirks: Vec<Quirk>,
    #[serde(flatten)]
    rules: FamilyEntry,
}

fn default_flash_base() -> u32 {
    0x0800_0000
}
fn one() -> u8 {
    1
}
fn yes() -> bool {
    true
}
fn default_max_erase() -> usize {
    511
}

fn parse_size(s: &Size, what: &str) -> std::result::Result<u32, String> {
    match s {
        Size::Bytes(b) => {
            u32::try_from(*b).map_err(|_| format!("{what}: {b} does not fit in 32 bits"))
        }
        Size::Text(t) => crate::units::parse_size(t).map_err(|e| format!("{what}: {e}")),
    }
}

fn parse_hex_bytes(text: &str, what: &str) -> std::result::Result<Vec<u8>, String> {
    text.split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).map_err(|_| format!("{what}: '{t}' is not a hex byte")))
        .collect()
}

/// Derive the erase-unit map: `pattern` sizes from the start of each bank, the last repeating.
pub(super) fn layout(
    base: u32,
    size: u32,
    banks: u8,
    pattern: &[u32],
    bank2_first_page: Option<u16>,
) -> std::result::Result<Vec<Page>, String> {
    if pattern.is_empty() || pattern.contains(&0) {
        return Err("the sector list is empty or holds a zero size".into());
    }
    if banks == 0 || banks > 2 {
        return Err(format!("{banks} banks: only 1 or 2 are supported"));
    }
    if size % u32::from(banks) != 0 {
        return Err(format!(
            "flash size {size} does not split into {banks} equal banks"
        ));
    }
    let bank_size = size / u32::from(banks);
    let mut pages = Vec::new();
    let mut index: u32 = 0;
    for bank in 1..=banks {
        if bank == 2 {
            if let Some(first) = bank2_first_page {
                index = u32::from(first);
            }
        }
        let bank_start = u64::from(base) + u64::from(bank - 1) * u64::from(bank_size);
        let bank_end = bank_start + u64::from(bank_size);
        let mut addr = bank_start;
        let mut i = 0;
        while addr < bank_end {
            let unit = pattern[i.min(pattern.len() - 1)];
            i += 1;
            if addr + u64::from(unit) > bank_end {
                return Err(format!(
                    "a {unit}-byte sector at 0x{addr:08X} runs past the end of bank {bank} (0x{bank_end:08X})"
                ));
            }
            let idx = u16::try_from(index).map_err(|_| "more than 65535 pages".to_string())?;
            pages.push(Page {
                index: idx,
                address: addr as u32,
                size: unit,
                bank,
            });
            index += 1;
            addr += u64::from(unit);
        }
    }
    Ok(pages)
}

pub(super) fn parse(text: &str, origin: &str) -> Result<Vec<Device>> {
    let file: TableFile =
        toml::from_str(text).map_err(|e| Error::Device(format!("{origin}: {e}")))?;
    let (builtin_families, builtin_layouts) = if origin == "built-in device table" {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        // A user file may name a family or an option-byte layout of the built-in table without
        // repeating it.
        toml::from_str::<TableFile>(include_str!("devices.toml"))
            .map(|t| (t.family, t.ob_layout))
            .unwrap_or_default()
    };
    let mut layouts = builtin_layouts;
    layouts.extend(file.ob_layout);
    let mut out = Vec::with_capacity(file.device.len());
    for entry in file.device {
        let family = file
            .family
            .get(&entry.family)
            .or_else(|| builtin_families.get(&entry.family))
            .cloned()
            .unwrap_or_default();
        let dev =
            build(entry, &family, &layouts).map_err(|e| Error::Device(format!("{origin}: {e}")))?;
        out.push(dev);
    }
    Ok(out)
}

fn build(
    e: DeviceEntry,
    fam: &FamilyEntry,
    ob_layouts: &BTreeMap<String, super::options::LayoutEntry>,
) -> std::result::Result<Device, String> {
    let who = format!("device {} (PID 0x{:03X})", e.name, e.pid);
    let r = &e.rules;
    macro_rules! rule {
        ($field:ident) => {
            r.$field.or(fam.$field).ok_or_else(|| {
                format!(
                    "{who}: `{}` is set neither on the device nor on family {}",
                    stringify!($field),
                    e.family
                )
            })
        };
    }
    let mut erase_ms = Vec::new();
    for (k, v) in fam.erase_ms.iter().chain(r.erase_ms.iter()) {
        let size = parse_size(&Size::Text(k.clone()), &format!("{who}: erase_ms"))?;
        erase_ms.retain(|(s, _, _): &(u32, u32, u32)| *s != size);
        erase_ms.push((size, v.0, v.1));
    }
    let rules = FlashRules {
        erased: rule!(erased)?,
        program_unit: rule!(program_unit)?,
        reprogram: rule!(reprogram)?,
        write_align: rule!(write_align)?,
        rdp_address: r.rdp_address.or(fam.rdp_address),
        rdp_unprotected: r.rdp_unprotected.or(fam.rdp_unprotected).unwrap_or(0xAA),
        ob_complement_offset: r.ob_complement_offset.or(fam.ob_complement_offset),
        erase_ms,
        program_us_per_byte: r
            .program_us_per_byte
            .or(fam.program_us_per_byte)
            .unwrap_or((10, 100)),
        mass_erase_ms: r
            .mass_erase_ms
            .or(fam.mass_erase_ms)
            .unwrap_or((1000, 35000)),
        startup_us: r.startup_us.or(fam.startup_us).unwrap_or(5_000),
        boot_select: r.boot_select.or(fam.boot_select),
        empty_check: r.empty_check.or(fam.empty_check).unwrap_or(false)
            || e.quirks
                .iter()
                .any(|q| matches!(q, Quirk::Pempty | Quirk::OblLaunch)),
    };
    if !rules.program_unit.is_power_of_two() || !rules.write_align.is_power_of_two() {
        return Err(format!(
            "{who}: program_unit and write_align must be powers of two"
        ));
    }
    let size = parse_size(&e.flash_size, &format!("{who}: flash_size"))?;
    let pattern = e
        .sectors
        .iter()
        .map(|s| parse_size(s, &format!("{who}: sectors")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut layouts = Vec::new();
    for l in &e.layouts {
        layouts.push(LayoutRule {
            flash_size: l
                .flash_size
                .as_ref()
                .map(|s| parse_size(s, &format!("{who}: layouts.flash_size")))
                .transpose()?,
            banks: l.banks,
            sectors: l
                .sectors
                .as_ref()
                .map(|v| {
                    v.iter()
                        .map(|s| parse_size(s, &format!("{who}: layouts.sectors")))
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .transpose()?,
            bank2_first_page: l.bank2_first_page,
            when: l.when,
        });
    }
    let pages = layout(e.flash_base, size, e.banks, &pattern, e.bank2_first_page)
        .map_err(|m| format!("{who}: {m}"))?;
    let mut ob_default = Vec::new();
    let from_family = r.ob_default.is_empty();
    let ob_src = if from_family {
        &fam.ob_default
    } else {
        &r.ob_default
    };
    for ob in ob_src {
        let bytes = parse_hex_bytes(&ob.bytes, &format!("{who}: ob_default"))?;
        let fits = e
            .option_bytes
            .iter()
            .any(|w| w.contains_span(ob.address, bytes.len() as u64));
        if !fits && from_family {
            // A family default for windows this part does not have.
            continue;
        }
        if !fits {
            return Err(format!(
                "{who}: ob_default at 0x{:08X} ({} bytes) is not inside an option-byte window",
                ob.address,
                bytes.len()
            ));
        }
        ob_default.push((ob.address, bytes));
    }
    for w in [&e.ram, &e.system_memory]
        .into_iter()
        .chain(e.option_bytes.iter())
    {
        if w.end < w.start {
            return Err(format!(
                "{who}: range 0x{:08X}-0x{:08X} ends before it starts",
                w.start, w.end
            ));
        }
    }
    // A part without option-byte windows has no layout, unless it asks for one by name.
    if r.ob_layout.is_some() && e.option_bytes.is_empty() {
        return Err(format!("{who}: ob_layout needs an option-byte window"));
    }
    let ob_layout = r
        .ob_layout
        .as_ref()
        .or(fam.ob_layout.as_ref())
        .filter(|_| !e.option_bytes.is_empty())
        .map(|name| super::options::resolve(name, ob_layouts))
        .transpose()
        .map_err(|m| format!("{who}: {m}"))?;
    let parts = if e.parts.is_empty() {
        vec![e.name.to_ascii_lowercase()]
    } else {
        e.parts.iter().map(|p| p.to_ascii_lowercase()).collect()
    };
    Ok(Device {
        pid: e.pid,
        name: e.name,
        parts,
        family: e.family,
        flash: AddrRange::from_len(e.flash_base, size),
        flash_size_register: e.flash_size_register,
        pages,
        banks: e.banks,
        ram: e.ram,
        bootloader_ram_end: e.bootloader_ram_end,
        system_memory: e.system_memory,
        option_bytes: e.option_bytes,
        otp: e.otp.map(|o| Otp {
            range: AddrRange {
                start: o.start,
                end: o.end,
            },
            block_size: o.block_size,
            lock_start: o.lock_start,
        }),
        uid: e.uid,
        bootloader: e.bootloader,
        rules,
        max_erase_pages: e.max_erase_pages.max(1),
        mass_erase: e.mass_erase,
        quirks: e.quirks,
        ob_default,
        ob_layout,
        sector_pattern: pattern,
        bank2_first_page: e.bank2_first_page,
        base_banks: e.banks,
        layouts,
    })
    .and_then(|d| {
        // Apply the layout rules for the table's own size and the factory option bytes.
        let size = d.flash_size();
        d.with_flash_size(size).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size(&Size::Text("16K".into()), "x"), Ok(16384));
        assert_eq!(parse_size(&Size::Text("1M".into()), "x"), Ok(1 << 20));
        assert_eq!(parse_size(&Size::Bytes(128), "x"), Ok(128));
        assert!(parse_size(&Size::Text("lots".into()), "x").is_err());
    }

    #[test]
    fn layout_rejects_a_pattern_that_overruns_the_bank() {
        assert!(layout(0x0800_0000, 0x1_0000, 1, &[0x3000], None).is_err());
    }

    #[test]
    fn user_file_with_unknown_key_is_refused_with_its_name() {
        let text = "[[device]]\npid = 0x999\nname = \"X\"\nfamily = \"F4\"\nflash_size = \"64K\"\nsectors = [\"16K\"]\nram = { start = 0x20000000, end = 0x20001FFF }\nbootloader_ram_end = 0x20000800\nsystem_memory = { start = 0x1FFF0000, end = 0x1FFF0FFF }\nbootloader = { version = 0x31, commands = [0] }\ncolour = \"red\"\n";
        let err = parse(text, "part.toml").unwrap_err().to_string();
        assert!(err.contains("part.toml") && err.contains("colour"), "{err}");
        let ok = text.replace("colour = \"red\"\n", "");
        let devs = parse(&ok, "part.toml").expect("test setup");
        assert_eq!(
            devs[0].rules.reprogram,
            Reprogram::AndBits,
            "family rules come from the built-in F4"
        );
        assert_eq!(devs[0].pages.len(), 4);
    }
}
