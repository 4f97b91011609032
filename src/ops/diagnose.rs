//! Why did it fail? After a write, erase, verify or read fails, or a command is NACKed, read
//! the chip's protection and bank settings and say in plain words what stands in the way and
//! how to fix it.
//!
//! The ROM bootloader reports almost nothing: a write to protected flash is ACKed and silently
//! dropped, an erase of a protected sector is ACKed and does nothing, and under read protection
//! every Read/Write is NACKed. The settings that explain these live in the option bytes, which
//! this module reads (when reads are allowed) and interprets.

use crate::device::Device;
use crate::error::{Error, Finding, Phase, Result};
use crate::ops::bank;
use crate::ops::connect::Connection;
use crate::ops::option_bytes::{self, page_runs, write_protected_pages};

/// The operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Writing flash.
    Write,
    /// Erasing pages (or the whole flash, with no range).
    Erase,
    /// Comparing flash with an image.
    Verify,
    /// Reading memory.
    Read,
}

/// What failed and where.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// The operation.
    pub op: Operation,
    /// The address range involved `[start, end)`, if known (none: the whole flash).
    pub range: Option<(u32, u64)>,
    /// Whether the write went to bank 1 addresses on purpose (`--bank 1` / no `--bank`).
    pub bank_given: bool,
}

/// The findings for `failure`, read from the chip. Reading errors are swallowed: a diagnosis
/// must never hide the original failure.
pub fn explain(conn: &mut Connection, failure: &Failure) -> Vec<Finding> {
    explain_inner(conn, failure).unwrap_or_default()
}

/// Attach [`explain`]'s findings to `err`.
pub fn diagnosed(conn: &mut Connection, failure: &Failure, err: Error) -> Error {
    let findings = explain(conn, failure);
    err.with_findings(findings)
}

/// Whether a failure is worth reading the chip's settings for: refusals and mismatches, not
/// a dead link.
pub fn worth_diagnosing(err: &Error) -> bool {
    matches!(err.root(), Error::Verify { .. } | Error::Nack { .. })
}

/// Refuse, before anything is erased or written, an operation on pages the option bytes
/// write-protect: the ROM would acknowledge it and leave the flash as it was.
pub fn check_writable(conn: &mut Connection, pages: &[u16], op: Operation) -> Result<()> {
    let Some(layout) = conn.device.ob_layout.clone() else {
        return Ok(());
    };
    if conn.read_protected || pages.is_empty() {
        return Ok(());
    }
    let image = option_bytes::read(conn)?;
    let protected = write_protected_pages(&conn.device, &layout, &image);
    let hit: Vec<u16> = pages
        .iter()
        .copied()
        .filter(|p| protected.contains(p))
        .collect();
    if hit.is_empty() {
        return Ok(());
    }
    let all = pages.len() == conn.device.pages.len();
    let failure = Failure {
        op,
        range: (!all).then(|| {
            let first = conn.device.page_by_index(pages[0]);
            let last = conn.device.page_by_index(pages[pages.len() - 1]);
            (
                first.map_or(conn.device.flash.start, |p| p.address),
                last.map_or(0, |p| p.end()),
            )
        }),
        bank_given: true,
    };
    let verb = match op {
        Operation::Erase => "erase",
        _ => "write",
    };
    Err(Error::Refused(format!(
        "nothing was changed: the {verb} needs page(s) {} and the option bytes write-protect {}",
        page_runs(pages),
        page_runs(&hit)
    ))
    .with_findings(vec![Finding {
        problem: protected_text(&conn.device, &hit, &failure, false),
        fix: "run `stm32boot protect write off` (the chip resets), then try again".into(),
    }]))
}

fn read_protection() -> Finding {
    Finding {
        problem: "read protection is active: the bootloader refuses every read and write, so \
                  reading the flash is impossible"
            .into(),
        fix: "run `stm32boot protect readout off --confirm-mass-erase`, which removes it and \
              ERASES the whole flash"
            .into(),
    }
}

fn explain_inner(conn: &mut Connection, failure: &Failure) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    if conn.read_protected {
        out.push(read_protection());
        return Ok(out);
    }
    let mut probe = [0u8; 4];
    match conn
        .session
        .read_memory(conn.device.flash.start, &mut probe)
    {
        Ok(()) => {}
        Err(Error::Nack {
            phase: Phase::Command,
            ..
        }) => {
            out.push(read_protection());
            return Ok(out);
        }
        Err(e) => return Err(e),
    }
    let device = conn.device.clone();
    let Some(layout) = device.ob_layout.as_ref() else {
        return Ok(out);
    };
    let image = option_bytes::read(conn)?;
    let protected = write_protected_pages(&device, layout, &image);
    let touched: Vec<u16> = match failure.range {
        Some((s, e)) => device
            .pages_overlapping(s, e)
            .iter()
            .map(|p| p.index)
            .collect(),
        None => device.pages.iter().map(|p| p.index).collect(),
    };
    let hit: Vec<u16> = touched
        .iter()
        .copied()
        .filter(|p| protected.contains(p))
        .collect();
    if !hit.is_empty()
        && matches!(
            failure.op,
            Operation::Write | Operation::Erase | Operation::Verify
        )
    {
        out.push(Finding {
            problem: protected_text(&device, &hit, failure, true),
            fix: "run `stm32boot protect write off` (the chip resets), then write again".into(),
        });
    }
    if let Some(swap) = &layout.boot_bank2 {
        let selected = layout.value_of(&swap.field, &image) == Some(swap.value);
        let in_bank1 = failure
            .range
            .is_some_and(|(s, _)| device.page_at(s).is_some_and(|p| p.bank == 1));
        if selected && device.banks == 2 && in_bank1 && !failure.bank_given {
            let (b2, _) = bank::bank_span(&device, 2).unwrap_or((0, 0));
            out.push(Finding {
                problem: format!(
                    "bank 2 is selected ({}={}) but the image is linked for 0x{:08X} and went \
                     to bank 1: after a reset the chip runs bank 2 (0x{b2:08X})",
                    swap.field, swap.value, device.flash.start
                ),
                fix: "write it with `--bank 2`, or boot bank 1 with `stm32boot bank swap`".into(),
            });
        }
    }
    Ok(out)
}

/// "sector 3 (0x...) is write-protected", and with `after` what that did to the operation.
fn protected_text(device: &Device, hit: &[u16], failure: &Failure, after: bool) -> String {
    let unit = if device.family.starts_with('F') && device.pages.iter().any(|p| p.size >= 16384) {
        "sector"
    } else {
        "page"
    };
    let first = device.page_by_index(hit[0]);
    let span = match (first, hit.len()) {
        (Some(p), 1) => format!(" (0x{:08X}-0x{:08X})", p.address, p.end().saturating_sub(1)),
        _ => String::new(),
    };
    let what = if hit.len() == 1 {
        format!("{unit} {}{span} is", hit[0])
    } else {
        format!("{unit}s {} are", page_runs(hit))
    };
    match (failure.op, after) {
        (Operation::Erase, _) if failure.range.is_none() => format!(
            "{what} write-protected, and a mass erase is refused while any {unit} is protected"
        ),
        (_, false) => format!("{what} write-protected"),
        (Operation::Erase, true) => format!("{what} write-protected: the erase left it unchanged"),
        (_, true) => format!(
            "{what} write-protected: the bootloader acknowledged the write but the flash kept \
             its old content"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;

    #[test]
    fn protected_text_names_sectors_and_pages() {
        let table = DeviceTable::builtin().expect("test setup");
        let f4 = table.by_part("stm32f411").expect("test setup");
        let f = Failure {
            op: Operation::Verify,
            range: Some((0x0800_C000, 0x0800_C100)),
            bank_given: false,
        };
        let t = protected_text(f4, &[3], &f, true);
        assert!(
            t.starts_with("sector 3 (0x0800C000-0x0800FFFF) is write-protected"),
            "{t}"
        );
        let l4 = table.by_part("stm32l476").expect("test setup");
        let t = protected_text(
            l4,
            &[0, 1, 2],
            &Failure {
                op: Operation::Erase,
                range: None,
                bank_given: false,
            },
            true,
        );
        assert!(
            t.starts_with("pages 0-2 are write-protected, and a mass erase"),
            "{t}"
        );
    }
}
