//! Option bytes by name: read a part's option-byte windows, plan a change of named fields (value
//! ranges checked, complements rewritten, irreversible settings refused unless allowed), write
//! the changed windows, wait for the reset that follows, re-sync and confirm every field.

use crate::device::options::{rdp_level, write_span, FieldKind, ObImage, ObLayout, SetError};
use crate::device::Device;
use crate::error::{Error, Phase, Result};
use crate::ops::connect::Connection;
use crate::ops::progress::{Note, Progress};
use crate::protocol::MAX_BLOCK;

/// The layout of a connected part, or an error saying this family is not decoded yet.
pub fn layout(device: &Device) -> Result<&ObLayout> {
    device.ob_layout.as_ref().ok_or_else(|| {
        Error::Device(if device.option_bytes.is_empty() {
            format!(
                "{} keeps its option bytes in registers the bootloader does not map: they \
                 cannot be read or written over the USART bootloader",
                device.name
            )
        } else {
            format!(
                "option bytes of family {} ({}) are not decoded yet; `stm32boot ob show --raw` \
                 prints the raw bytes",
                device.family, device.name
            )
        })
    })
}

/// What to say when read protection stops us.
pub fn read_protection_error() -> Error {
    Error::Refused(
        "read protection is active: the bootloader refuses to read or write the option bytes \
         (and the flash) until `stm32boot protect readout off --confirm-mass-erase`, which \
         erases the flash"
            .into(),
    )
}

/// Read every option-byte window of the part.
pub fn read(conn: &mut Connection) -> Result<ObImage> {
    if conn.read_protected {
        return Err(read_protection_error());
    }
    let windows = conn.device.option_bytes.clone();
    if windows.is_empty() {
        return Err(Error::Device(format!(
            "{} has no option-byte window the bootloader can read",
            conn.device.name
        )));
    }
    let mut out = Vec::new();
    for w in windows {
        let mut bytes = vec![0u8; w.len() as usize];
        let mut off = 0usize;
        while off < bytes.len() {
            let n = (bytes.len() - off).min(MAX_BLOCK);
            match conn
                .session
                .read_memory_stable(w.start + off as u32, &mut bytes[off..off + n])
            {
                Ok(()) => {}
                Err(Error::Nack {
                    phase: Phase::Command,
                    ..
                }) => return Err(read_protection_error()),
                Err(e) => return Err(e),
            }
            off += n;
        }
        out.push((w.start, bytes));
    }
    Ok(ObImage::new(out))
}

/// One `NAME=VALUE` change, parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldChange {
    /// Field name as the layout spells it.
    pub name: String,
    /// Value before.
    pub before: u64,
    /// Value after.
    pub after: u64,
    /// Meaning before.
    pub before_meaning: String,
    /// Meaning after.
    pub after_meaning: String,
}

/// What `ob set` will do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObPlan {
    /// The option bytes as read.
    pub before: ObImage,
    /// The option bytes to write.
    pub after: ObImage,
    /// Fields that change.
    pub changes: Vec<FieldChange>,
    /// Windows to write (index, first address, length).
    pub writes: Vec<(usize, u32, u32)>,
    /// The read-protection level after the change.
    pub rdp_after: u8,
    /// Whether the chip will boot its flash rather than the bootloader after the reset (boot
    /// bits changed), so that it cannot be re-synced to confirm.
    pub boots_flash_after: bool,
    /// Warnings to show before going ahead.
    pub warnings: Vec<String>,
}

/// Options for [`plan_set`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SetOptions {
    /// Allow RDP level 2 and boot locks, which cannot be undone.
    pub allow_permanent_lock: bool,
}

fn valid_values(layout: &ObLayout, name: &str, rdp_unprotected: u8) -> String {
    let Some(f) = layout.field(name) else {
        return String::new();
    };
    match f.kind {
        FieldKind::Rdp => {
            if rdp_unprotected == 0xAA {
                "0 (no protection), 1 (flash unreadable), 2 (permanent lock), or a raw byte such as 0xBB".into()
            } else {
                "0 (no protection), 1 (flash unreadable), or a raw byte".into()
            }
        }
        FieldKind::Flag => {
            let v0 = f
                .values
                .get(&0)
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            let v1 = f
                .values
                .get(&1)
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            format!("0{v0} or 1{v1}")
        }
        FieldKind::Choice => f
            .values
            .iter()
            .map(|(k, v)| format!("{k} ({v})"))
            .collect::<Vec<_>>()
            .join(", "),
        FieldKind::Number | FieldKind::WrpMask => {
            let width = u32::from(f.hi - f.lo) + 1;
            let max = if width >= 64 {
                u64::MAX
            } else {
                (1u64 << width) - 1
            };
            format!("0 to {max} (0x{max:X})")
        }
    }
}

/// Parse a value for field `name`: numbers (decimal, 0x hex, 0b binary), on/off/true/false for
/// flags, RDP levels 0-2.
fn parse_value(layout: &ObLayout, name: &str, text: &str, rdp_unprotected: u8) -> Result<u64> {
    let f = layout
        .field(name)
        .ok_or_else(|| Error::InvalidRequest(format!("unknown option {name}")))?;
    let t = text.trim().to_ascii_lowercase();
    let number = || -> Option<u64> {
        if let Some(h) = t.strip_prefix("0x") {
            u64::from_str_radix(h, 16).ok()
        } else if let Some(b) = t.strip_prefix("0b") {
            u64::from_str_radix(b, 2).ok()
        } else {
            t.parse().ok()
        }
    };
    let bad = || {
        Error::InvalidRequest(format!(
            "{}={text}: valid values are {}",
            f.name,
            valid_values(layout, &f.name, rdp_unprotected)
        ))
    };
    let v = match (f.kind, t.as_str()) {
        (FieldKind::Flag, "on" | "true" | "yes") => 1,
        (FieldKind::Flag, "off" | "false" | "no") => 0,
        (FieldKind::Rdp, _) => match number().ok_or_else(bad)? {
            0 => u64::from(rdp_unprotected),
            1 => 0xBB,
            2 if rdp_unprotected == 0xAA => 0xCC,
            n if n > 2 && n <= 0xFF => n,
            _ => return Err(bad()),
        },
        _ => number().ok_or_else(bad)?,
    };
    if f.kind == FieldKind::Choice && !f.values.contains_key(&v) {
        return Err(bad());
    }
    Ok(v)
}

/// Plan `NAME=VALUE` changes against the option bytes as read. Nothing is sent to the chip.
pub fn plan_set(
    device: &Device,
    before: &ObImage,
    assignments: &[(String, String)],
    options: SetOptions,
) -> Result<ObPlan> {
    let layout = layout(device)?;
    let unprotected = device.rules.rdp_unprotected;
    if assignments.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "name at least one option to change, e.g. nRST_STOP=0; valid names: {}",
            layout.settable_names(before).join(", ")
        )));
    }
    let mut after = before.clone();
    let mut changes: Vec<FieldChange> = Vec::new();
    for (name, text) in assignments {
        let field = layout.field(name).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "{} has no option called {name}; valid names: {}",
                device.name,
                layout.settable_names(before).join(", ")
            ))
        })?;
        let value = parse_value(layout, name, text, unprotected)?;
        layout.set(&mut after, name, value).map_err(|e| match e {
            SetError::BadValue(_) => Error::InvalidRequest(format!(
                "{}={text}: valid values are {}",
                field.name,
                valid_values(layout, &field.name, unprotected)
            )),
            other => Error::InvalidRequest(format!("{}: {other}", field.name)),
        })?;
        let old = layout.value(field, before).unwrap_or(0);
        changes.retain(|c| c.name != field.name);
        if old != value {
            changes.push(FieldChange {
                name: field.name.clone(),
                before: old,
                after: value,
                before_meaning: layout.meaning(field, old, unprotected),
                after_meaning: layout.meaning(field, value, unprotected),
            });
        }
    }
    layout.fix_complements(&mut after);
    let mut warnings = Vec::new();
    let rdp_before = layout
        .value_of("RDP", before)
        .map(|v| rdp_level(v as u8, unprotected))
        .unwrap_or(0);
    let rdp_after = layout
        .value_of("RDP", &after)
        .map(|v| rdp_level(v as u8, unprotected))
        .unwrap_or(0);
    if rdp_after == 2 && rdp_before != 2 && !options.allow_permanent_lock {
        return Err(Error::InvalidRequest(
            "RDP level 2 locks the chip for good: no debug, no bootloader, the option bytes can \
             never change again. Pass --allow-permanent-lock if that is really what you want"
                .into(),
        ));
    }
    let boot_lock = layout.value_of("BOOT_LOCK", &after).unwrap_or(0) == 1
        && layout.value_of("BOOT_LOCK", before).unwrap_or(0) == 0;
    if boot_lock && !options.allow_permanent_lock {
        return Err(Error::InvalidRequest(
            "BOOT_LOCK=1 makes the chip always boot its flash: the bootloader can no longer be \
             reached to undo it. Pass --allow-permanent-lock if that is really what you want"
                .into(),
        ));
    }
    if rdp_after == 1 && rdp_before == 0 {
        warnings.push(
            "read protection level 1: after the reset the flash can no longer be read or written \
             over the bootloader; `stm32boot protect readout off --confirm-mass-erase` undoes it \
             and erases the whole flash"
                .into(),
        );
    }
    if rdp_before == 1 && rdp_after == 0 {
        return Err(Error::InvalidRequest(
            "leaving read protection goes through Readout Unprotect, which mass-erases the flash: \
             run `stm32boot protect readout off --confirm-mass-erase`"
                .into(),
        ));
    }
    // Level 2 disables booting the system memory: the chip runs its flash from the reset on.
    let boots_flash_after = boots_flash(device, &after) || rdp_after == 2;
    if boots_flash_after && !boots_flash(device, before) && rdp_after != 2 {
        warnings.push(
            "the boot bits now select the main flash: after the reset the chip runs its \
             application instead of the bootloader, so the result cannot be read back (the \
             BOOT0 pin has no say while the option bit decides)"
                .into(),
        );
    }
    let mut writes = Vec::new();
    for (i, w) in device.option_bytes.iter().enumerate() {
        let len = write_span(layout, i, *w);
        let changed = before.windows[i].1[..len as usize] != after.windows[i].1[..len as usize];
        if changed {
            writes.push((i, w.start, len));
        }
    }
    Ok(ObPlan {
        before: before.clone(),
        after,
        changes,
        writes,
        rdp_after,
        boots_flash_after,
        warnings,
    })
}

/// What decides where the chip boots, on parts whose option bits can take over from the
/// BOOT0 pin (G0 nBOOT_SEL, G4/L4+ nSWBOOT0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootSource {
    /// The BOOT0 pin.
    Pin,
    /// The option bits, and they select the main flash.
    OptionFlash,
    /// The option bits, and they select the bootloader.
    OptionBootloader,
}

/// Where the boot source comes from, if the part's option bits can decide it.
pub fn boot_source(device: &Device, image: &ObImage) -> Option<BootSource> {
    let sel = device.rules.boot_select?;
    let bit = |addr: u32, mask: u8| image.at(addr).map(|b| b & mask != 0);
    Some(
        if bit(sel.select.address, sel.select.mask) != Some(sel.select.set) {
            BootSource::Pin
        } else if bit(sel.nboot0.address, sel.nboot0.mask) == Some(true) {
            BootSource::OptionFlash
        } else {
            BootSource::OptionBootloader
        },
    )
}

/// Whether the option bits alone make the chip boot flash, so that BOOT0 cannot bring up the
/// bootloader.
fn boots_flash(device: &Device, image: &ObImage) -> bool {
    boot_source(device, image) == Some(BootSource::OptionFlash)
}

/// What [`apply`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObReport {
    /// Windows written.
    pub windows_written: usize,
    /// How the result was confirmed.
    pub confirmed: Confirmation,
}

/// How the written option bytes were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confirmation {
    /// Read back: every field as planned.
    ReadBack,
    /// Read protection is now active (reads NACKed), as planned.
    ReadProtected,
    /// The chip boots its flash now, as planned: it was not re-synced.
    NotReachable,
    /// Nothing needed writing.
    Unchanged,
}

/// Write the planned windows, wait for each reset, re-sync and confirm.
pub fn apply(
    conn: &mut Connection,
    plan: &ObPlan,
    progress: &mut dyn Progress,
) -> Result<ObReport> {
    if plan.writes.is_empty() {
        return Ok(ObReport {
            windows_written: 0,
            confirmed: Confirmation::Unchanged,
        });
    }
    let last = plan.writes.len() - 1;
    for (n, &(i, start, len)) in plan.writes.iter().enumerate() {
        let data = &plan.after.windows[i].1[..len as usize];
        progress.note(Note::Info(format!(
            "writing {len} option bytes at 0x{start:08X}; the chip resets afterwards"
        )));
        conn.session.write_memory(start, data)?;
        let t = conn.session.timeouts().clone();
        let resynced = conn.session.after_reset(t.reset_settle, t.resync);
        // The boot bits (or level 2) may send the chip to its application: then there is no
        // bootloader to confirm with. (It may still come back: an empty flash boots the ROM.)
        if n == last && plan.boots_flash_after && matches!(resynced, Err(Error::NoSync { .. })) {
            return Ok(ObReport {
                windows_written: plan.writes.len(),
                confirmed: Confirmation::NotReachable,
            });
        }
        resynced.map_err(|e| match e {
            Error::NoSync { .. } => Error::Device(format!(
                "the option bytes at 0x{start:08X} were written and the chip reset, but it \
                     did not come back into the bootloader ({e}); {}",
                if plan.boots_flash_after {
                    "the boot option bits select the main flash, so it runs its application"
                } else {
                    "check BOOT0 and the boot option bits"
                }
            )),
            other => other,
        })?;
        conn.refresh()?;
    }
    if plan.rdp_after >= 1 {
        let mut probe = [0u8; 1];
        return match conn
            .session
            .read_memory(conn.device.flash.start, &mut probe)
        {
            Err(Error::Nack {
                phase: Phase::Command,
                ..
            }) => {
                conn.read_protected = true;
                Ok(ObReport {
                    windows_written: plan.writes.len(),
                    confirmed: Confirmation::ReadProtected,
                })
            }
            Ok(()) => Err(Error::Verify {
                address: conn.device.option_bytes[0].start,
                detail: "read protection was written but reads still succeed: the option bytes \
                         did not load"
                    .into(),
            }),
            Err(e) => Err(e),
        };
    }
    conn.reload_layout(progress)?;
    let now = read(conn)?;
    confirm(&conn.device, plan, &now)?;
    Ok(ObReport {
        windows_written: plan.writes.len(),
        confirmed: Confirmation::ReadBack,
    })
}

/// Compare the option bytes read after the write with the plan: every field must hold its
/// planned value.
pub fn confirm(device: &Device, plan: &ObPlan, now: &ObImage) -> Result<()> {
    let layout = layout(device)?;
    for f in &layout.fields {
        let (Some(want), Some(got)) = (layout.value(f, &plan.after), layout.value(f, now)) else {
            continue;
        };
        if want != got {
            let reg = layout.register(&f.register);
            let address = reg
                .map(|r| device.option_bytes[r.window].start + r.bytes[0])
                .unwrap_or(0);
            return Err(Error::Verify {
                address,
                detail: format!(
                    "option {} reads {got} (0x{got:X}) after the write, not {want} (0x{want:X}): \
                     the chip refused it or did not load it",
                    f.name
                ),
            });
        }
    }
    Ok(())
}

/// Pages the option bytes write-protect, in page order: per-sector or per-unit masks (unless
/// SPRMOD/WPRMOD turn them into PCROP bits) and start/end areas.
pub fn write_protected_pages(device: &Device, layout: &ObLayout, image: &ObImage) -> Vec<u16> {
    let pcrop_mode = ["SPRMOD", "WPRMOD"]
        .iter()
        .any(|n| layout.value_of(n, image) == Some(1));
    let mut out: Vec<u16> = Vec::new();
    for f in layout
        .fields
        .iter()
        .filter(|f| f.kind == FieldKind::WrpMask)
    {
        if pcrop_mode {
            break;
        }
        let Some(v) = layout.value(f, image) else {
            continue;
        };
        let width = u32::from(f.hi - f.lo) + 1;
        for bit in 0..width {
            if (v >> bit) & 1 != u64::from(f.protected_when) {
                continue;
            }
            match f.unit {
                Some(unit) => {
                    let start = u64::from(device.flash.start) + u64::from(bit) * u64::from(unit);
                    let end = if f.last_covers_rest && bit == width - 1 {
                        u64::from(device.flash.end) + 1
                    } else {
                        start + u64::from(unit)
                    };
                    if start > u64::from(device.flash.end) {
                        continue;
                    }
                    out.extend(
                        device
                            .pages_overlapping(start as u32, end)
                            .iter()
                            .map(|p| p.index),
                    );
                }
                None => {
                    if let Ok(idx) = u16::try_from(f.first + bit) {
                        if device.page_by_index(idx).is_some() {
                            out.push(idx);
                        }
                    }
                }
            }
        }
    }
    for a in layout.areas.iter().filter(|a| a.write_protect) {
        let (Some(s), Some(e)) = (
            layout.value_of(&a.start, image),
            layout.value_of(&a.end, image),
        ) else {
            continue;
        };
        if s > e {
            continue;
        }
        let bank: Vec<u16> = device
            .pages
            .iter()
            .filter(|p| p.bank == a.bank)
            .map(|p| p.index)
            .collect();
        out.extend(
            bank.iter()
                .enumerate()
                .filter(|(rel, _)| (*rel as u64) >= s && (*rel as u64) <= e)
                .map(|(_, idx)| *idx),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Contiguous runs of page numbers, as text ("0-3, 7").
pub fn page_runs(pages: &[u16]) -> String {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((_, end)) if p == end.wrapping_add(1) => *end = p,
            _ => runs.push((p, p)),
        }
    }
    runs.iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Write Protect (0x63) codes that protect `pages` (erase-unit numbers), in the family's
/// encoding (an3155.md §5.9): sector numbers (F2/F4/F7), 4 KB unit numbers (F0/F1/F3, L0/L1),
/// or (start, end) page pairs per area in the order WRP1A, WRP1B, WRP2A, WRP2B. Also returns
/// every page the codes protect (a 4 KB unit can cover more pages than asked for).
pub fn write_protect_codes(device: &Device, pages: &[u16]) -> Result<(Vec<u8>, Vec<u16>)> {
    let layout = layout(device)?;
    let mut wanted: Vec<u16> = pages.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    for p in &wanted {
        if device.page_by_index(*p).is_none() {
            return Err(Error::InvalidRequest(format!(
                "{} has no page {p}: its pages are numbered {}..{}",
                device.name,
                device.pages.first().map(|p| p.index).unwrap_or(0),
                device.pages.last().map(|p| p.index).unwrap_or(0)
            )));
        }
    }
    if wanted.is_empty() {
        return Err(Error::InvalidRequest(
            "name the pages or sectors to protect, e.g. 0,1 or 0..3".into(),
        ));
    }
    if !layout.areas.is_empty() {
        return area_codes(device, layout, &wanted);
    }
    let masks: Vec<_> = layout
        .fields
        .iter()
        .filter(|f| f.kind == FieldKind::WrpMask)
        .collect();
    if masks.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "write protection of {} is not described in the device table",
            device.name
        )));
    }
    let mut codes: Vec<u8> = Vec::new();
    for p in &wanted {
        let page = device.page_by_index(*p).copied();
        let Some(page) = page else { continue };
        let code = masks.iter().find_map(|f| {
            let width = u32::from(f.hi - f.lo) + 1;
            let bit = match f.unit {
                Some(unit) => {
                    let b = (page.address - device.flash.start) / unit;
                    if f.last_covers_rest {
                        Some(b.min(width - 1))
                    } else {
                        (b < width).then_some(b)
                    }
                }
                None => u32::from(page.index)
                    .checked_sub(f.first)
                    .filter(|b| *b < width),
            }?;
            u8::try_from(bit + f.first).ok()
        });
        match code {
            Some(c) => codes.push(c),
            None => {
                return Err(Error::InvalidRequest(format!(
                    "page {p} of {} has no write-protection bit",
                    device.name
                )))
            }
        }
    }
    codes.sort_unstable();
    codes.dedup();
    // Which pages those codes protect, through the same decoding `ob show` uses.
    let mut image = ObImage::new(
        device
            .option_bytes
            .iter()
            .map(|w| (w.start, vec![0u8; w.len() as usize]))
            .collect(),
    );
    for f in &masks {
        let width = u32::from(f.hi - f.lo) + 1;
        let mut v: u64 = 0;
        for bit in 0..width {
            let on = codes.contains(&((bit + f.first) as u8));
            if on == (f.protected_when == 1) {
                v |= 1 << bit;
            }
        }
        // Setting a mask field cannot fail: the image holds every window.
        let _ = layout.set(&mut image, &f.name, v);
    }
    let covered = write_protected_pages(device, layout, &image);
    Ok((codes, covered))
}

fn area_codes(device: &Device, layout: &ObLayout, wanted: &[u16]) -> Result<(Vec<u8>, Vec<u16>)> {
    let mut codes: Vec<u8> = Vec::new();
    let mut used = 0usize;
    for bank in 1..=device.banks.max(1) {
        let in_bank: Vec<(usize, u16)> = device
            .pages
            .iter()
            .filter(|p| p.bank == bank)
            .enumerate()
            .map(|(rel, p)| (rel, p.index))
            .collect();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (rel, idx) in &in_bank {
            if !wanted.contains(idx) {
                continue;
            }
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == *rel => *end = *rel,
                _ => runs.push((*rel, *rel)),
            }
        }
        let areas: Vec<_> = layout.areas.iter().filter(|a| a.bank == bank).collect();
        if runs.len() > areas.len() {
            return Err(Error::InvalidRequest(format!(
                "bank {bank} of {} has {} write-protection area(s) but the pages form {}                  separate runs: protect at most {} contiguous run(s) per bank",
                device.name,
                areas.len(),
                runs.len(),
                areas.len()
            )));
        }
        for (n, _) in areas.iter().enumerate() {
            let pair = match runs.get(n) {
                Some((s, e)) => {
                    let s = u8::try_from(*s).map_err(|_| too_far(device))?;
                    let e = u8::try_from(*e).map_err(|_| too_far(device))?;
                    [s, e]
                }
                None => [0x7F, 0x00],
            };
            codes.extend_from_slice(&pair);
            if runs.get(n).is_some() {
                used = codes.len();
            }
        }
    }
    codes.truncate(used);
    let covered = wanted.to_vec();
    Ok((codes, covered))
}

fn too_far(device: &Device) -> Error {
    Error::InvalidRequest(format!(
        "{}: a page past the 256th of its bank cannot be named in a Write Protect code",
        device.name
    ))
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

    fn factory(d: &Device) -> ObImage {
        d.factory_option_bytes()
    }

    fn set(d: &Device, pairs: &[(&str, &str)], allow: bool) -> Result<ObPlan> {
        let a: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan_set(
            d,
            &factory(d),
            &a,
            SetOptions {
                allow_permanent_lock: allow,
            },
        )
    }

    #[test]
    fn plan_changes_only_named_fields_and_lists_before_after() {
        let d = device("stm32l476");
        let p = set(&d, &[("bfb2", "1"), ("nRST_STOP", "off")], false).expect("test setup");
        assert_eq!(p.changes.len(), 2);
        assert_eq!(p.changes[0].name, "BFB2");
        assert_eq!((p.changes[0].before, p.changes[0].after), (0, 1));
        assert_eq!(
            p.writes,
            vec![(0, 0x1FFF_7800, 0x28)],
            "bank-2 window untouched"
        );
        let l = layout(&d).expect("test setup");
        assert_eq!(l.value_of("RDP", &p.after), Some(0xAA));
        assert_eq!(l.value_of("nRST_STOP", &p.after), Some(0));
    }

    #[test]
    fn unknown_names_and_bad_values_list_the_valid_ones() {
        let d = device("stm32f411");
        let e = set(&d, &[("BFB2", "1")], false).unwrap_err().to_string();
        assert!(
            e.contains("no option called BFB2") && e.contains("nRST_STOP"),
            "{e}"
        );
        let e = set(&d, &[("BOR_LEV", "7")], false).unwrap_err().to_string();
        assert!(e.contains("3 (off"), "{e}");
        let e = set(&d, &[("nRST_STOP", "maybe")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 (resets the chip) or 1 (no reset)"), "{e}");
        assert!(set(&d, &[], false).is_err());
    }

    #[test]
    fn rdp_level_2_and_boot_lock_need_the_permanent_flag() {
        let d = device("stm32f411");
        let e = set(&d, &[("RDP", "2")], false).unwrap_err().to_string();
        assert!(e.contains("--allow-permanent-lock"), "{e}");
        let p = set(&d, &[("RDP", "2")], true).expect("test setup");
        assert_eq!(p.rdp_after, 2);
        let p = set(&d, &[("RDP", "1")], false).expect("test setup");
        assert_eq!(p.rdp_after, 1);
        assert!(p.warnings[0].contains("protect readout off"));
        let g0 = device("stm32g071");
        assert!(set(&g0, &[("BOOT_LOCK", "1")], false).is_err());
        let f1 = device("stm32f103xb");
        assert!(
            set(&f1, &[("RDP", "2")], true).is_err(),
            "F1 has no level 2"
        );
    }

    #[test]
    fn boot_bits_that_select_flash_are_flagged() {
        let g4 = device("stm32g474");
        let p = set(&g4, &[("nSWBOOT0", "0")], false).expect("test setup");
        assert!(p.boots_flash_after, "nSWBOOT0=0 with nBOOT0=1 boots flash");
        assert!(p.warnings[0].contains("cannot be read back"));
        let p = set(&g4, &[("nSWBOOT0", "0"), ("nBOOT0", "0")], false).expect("test setup");
        assert!(!p.boots_flash_after);
    }

    #[test]
    fn protected_pages_from_masks_and_areas() {
        let d = device("stm32f411");
        let l = layout(&d).expect("test setup");
        let mut img = factory(&d);
        l.set(&mut img, "nWRP", 0xFF6).expect("test setup");
        assert_eq!(write_protected_pages(&d, l, &img), vec![0, 3]);
        l.set(&mut img, "SPRMOD", 1).expect("test setup");
        assert!(write_protected_pages(&d, l, &img).is_empty(), "PCROP mode");
        let d = device("stm32l476");
        let l = layout(&d).expect("test setup");
        let mut img = factory(&d);
        l.set(&mut img, "WRP2A_STRT", 2).expect("test setup");
        l.set(&mut img, "WRP2A_END", 3).expect("test setup");
        let first2 = d
            .pages
            .iter()
            .find(|p| p.bank == 2)
            .expect("test setup")
            .index;
        assert_eq!(
            write_protected_pages(&d, l, &img),
            vec![first2 + 2, first2 + 3]
        );
        assert_eq!(page_runs(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
    }

    #[test]
    fn write_protect_codes_follow_each_family() {
        let (codes, covered) =
            write_protect_codes(&device("stm32f411"), &[1, 0]).expect("test setup");
        assert_eq!((codes, covered), (vec![0, 1], vec![0, 1]));
        // F103 medium density: 1 KB pages, one code per 4 KB covers four pages.
        let (codes, covered) =
            write_protect_codes(&device("stm32f103xb"), &[5]).expect("test setup");
        assert_eq!((codes, covered), (vec![1], vec![4, 5, 6, 7]));
        let l4 = device("stm32l476");
        let first2 = l4
            .pages
            .iter()
            .find(|p| p.bank == 2)
            .expect("test setup")
            .index;
        let (codes, _) = write_protect_codes(&l4, &[0, 1, 5, first2 + 3]).expect("test setup");
        assert_eq!(codes, vec![0, 1, 5, 5, 3, 3]);
        let (codes, _) = write_protect_codes(&l4, &[first2]).expect("test setup");
        assert_eq!(
            codes,
            vec![0x7F, 0, 0x7F, 0, 0, 0],
            "bank 1 areas sent empty"
        );
        assert!(
            write_protect_codes(&l4, &[0, 2, 4]).is_err(),
            "three runs in one bank"
        );
        assert!(write_protect_codes(&device("stm32f411"), &[99]).is_err());
        let f429 = device("stm32f429");
        let (codes, _) = write_protect_codes(&f429, &[12, 13]).expect("test setup");
        assert_eq!(codes, vec![12, 13]);
    }
}
