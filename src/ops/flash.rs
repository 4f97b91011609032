//! Executing plans on a connected chip: erase, write, verify, read, checksum, go.

use crate::device::Page;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::ops::connect::Connection;
use crate::ops::journal::{ChipKey, Journal, PageEntry};
use crate::ops::plan::{erase_steps, EraseStep, FlashPlan, PageCheck, PlanOptions};
use crate::ops::progress::{Note, Progress, Stage};
use crate::protocol::crc::{stm32_crc, DEFAULT_INIT, DEFAULT_POLYNOMIAL};
use crate::protocol::{Command, EraseRequest, MAX_BLOCK};
use std::time::Duration;

/// How content was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMethod {
    /// Get Checksum (0xA1) on the chip, compared with the CRC of the image.
    Crc,
    /// Reading everything back.
    ReadBack,
}

/// What a write did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriteReport {
    /// Pages erased.
    pub pages_erased: usize,
    /// Erase commands sent.
    pub erase_commands: usize,
    /// Write Memory commands sent.
    pub blocks_written: usize,
    /// Blocks skipped because they hold only the erased value.
    pub blocks_skipped: usize,
    /// Bytes sent in Write Memory commands.
    pub bytes_written: u64,
    /// Verification, if done.
    pub verified: Option<VerifyMethod>,
    /// Pages the image covered only in part whose other bytes were kept.
    pub pages_preserved: usize,
    /// Pages left alone because they already held their content
    /// ([`WriteOptions::skip_matching_pages`]).
    pub pages_unchanged: usize,
    /// Pages written without an erase because they were already blank
    /// ([`WriteOptions::skip_matching_pages`]).
    pub pages_already_blank: usize,
    /// Erased-value blocks in pages this run erased that the read-back verify left to the
    /// erase's ACK (see [`WriteOptions::verify_erased_blocks`]).
    pub blocks_covered_by_erase: usize,
    /// Partly covered pages whose target bytes were still erased: written without an erase,
    /// the rest of the page untouched.
    pub pages_written_into_blank: usize,
}

/// Options for [`write_image`].
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Verify after writing.
    pub verify: bool,
    /// Planning options.
    pub plan: PlanOptions,
    /// Keep the bytes of partly covered pages that the image does not supply (read, merge,
    /// erase, write the whole page). Without it, those bytes are erased.
    pub preserve: bool,
    /// Where to journal pages before they are erased, so that a cut-off run can be finished
    /// (`None`: no journal).
    pub journal: Option<std::path::PathBuf>,
    /// Address ranges (start, length) the write must not erase or change.
    pub protect: Vec<(u32, u32)>,
    /// Write even where the plan touches a protected range.
    pub force: bool,
    /// Before erasing, compare every page of the plan with the image (Get Checksum where the
    /// bootloader has it, else reading back): a page that already holds its content is neither
    /// erased nor written, and a blank page is written without an erase. For resuming a write
    /// that was cut off, and for updates that change a few pages of a large image.
    pub skip_matching_pages: bool,
    /// When verifying by reading back (no Get Checksum), also read the 256-byte blocks that
    /// hold only the erased value and lie in pages this run erased. Without it, those blocks
    /// are taken as verified by the erase's ACK: they were neither written nor left out of the
    /// erase, so reading them back checks only the erase.
    pub verify_erased_blocks: bool,
}

impl WriteOptions {
    /// The safe defaults for this connection: verify, keep what the image does not cover, and
    /// journal pages under the user's state directory.
    pub fn for_connection(conn: &Connection) -> WriteOptions {
        WriteOptions {
            verify: true,
            plan: plan_options(conn),
            preserve: true,
            journal: crate::ops::journal::default_dir(),
            protect: Vec::new(),
            force: false,
            skip_matching_pages: false,
            verify_erased_blocks: false,
        }
    }
}

/// Planning options for this chip: the device's limits, and at most 255 pages per command where
/// the bootloader only has the legacy Erase (0x43).
pub fn plan_options(conn: &Connection) -> PlanOptions {
    let mut opts = PlanOptions::for_device(&conn.device);
    if !conn.bootloader.supports(Command::ExtendedErase) {
        opts.max_pages_per_erase = opts
            .max_pages_per_erase
            .min(crate::protocol::MAX_LEGACY_ERASE_PAGES);
    }
    opts
}

/// The plan [`write_image`] would carry out on this connection.
pub fn plan_write(conn: &Connection, image: &Image, options: &PlanOptions) -> Result<FlashPlan> {
    FlashPlan::new(&conn.device, image, options)
}

/// Refuse a plan that erases a page holding a protected range, unless forced. Checked before
/// anything is sent.
pub fn check_protected(plan: &FlashPlan, options: &WriteOptions) -> Result<()> {
    if options.force {
        return Ok(());
    }
    for &(start, len) in &options.protect {
        let end = u64::from(start) + u64::from(len);
        if let Some(page) = plan
            .pages
            .iter()
            .find(|p| u64::from(p.address) < end && p.end() > u64::from(start))
        {
            return Err(Error::InvalidRequest(format!(
                "the write would erase page {} (0x{:08X}, {} bytes), which holds the protected \
                 range 0x{start:08X}+{len}; leave that range out of the image, or pass --force",
                page.index, page.address, page.size
            )));
        }
    }
    Ok(())
}

/// Erase the pages the image touches, write it, and verify it if asked.
///
/// With `preserve`, a page the image covers only in part is read first, merged with the image,
/// journalled (original and target content) and written whole, so no byte outside the image
/// changes; the journal entry goes once the write is verified (or written, without verify).
/// A journal left by a run that did not finish is completed first.
///
/// If the verify finds a difference and the session repeats failed exchanges, the write runs
/// once more over the pages that do not hold their target yet (a block that a frame with two
/// flipped bits, or a resync's filler, garbled): those pages are erased and written again,
/// their kept bytes read anew. A difference that stays (a write-protected page) is reported.
pub fn write_image(
    conn: &mut Connection,
    image: &Image,
    options: &WriteOptions,
    progress: &mut dyn Progress,
) -> Result<WriteReport> {
    match write_image_once(conn, image, options, progress) {
        Err(Error::Verify { address, detail }) if conn.session.attempts() > 1 => {
            progress.note(Note::Warning(format!(
                "verify failed at 0x{address:08X} ({detail}): writing the pages that differ again"
            )));
            let again = WriteOptions {
                skip_matching_pages: true,
                verify: true,
                ..options.clone()
            };
            write_image_once(conn, image, &again, progress)
        }
        other => other,
    }
}

fn write_image_once(
    conn: &mut Connection,
    image: &Image,
    options: &WriteOptions,
    progress: &mut dyn Progress,
) -> Result<WriteReport> {
    let plan = plan_write(conn, image, &options.plan)?;
    check_protected(&plan, options)?;
    let mut journal = match &options.journal {
        Some(dir) => {
            let mut j = open_journal(conn, dir)?;
            if !j.pending().is_empty() {
                progress.note(Note::Warning(format!(
                    "an earlier write to this chip did not finish ({} page(s) in {}): finishing it first",
                    j.pending().len(),
                    j.path().display()
                )));
                recover(conn, &mut j, RecoverMode::Finish, progress)?;
            }
            Some(j)
        }
        None => None,
    };
    // A partly covered page whose target bytes are still erased needs no erase at all: the
    // image is written into the blank bytes and the rest of the page is never touched.
    let mut plan = plan;
    let mut written_into_blank = 0;
    if !plan.partial_pages.is_empty() && !plan.erase.is_empty() && !conn.read_protected {
        let blank = blank_targets(conn, image, &plan.partial_pages)?;
        if !blank.is_empty() {
            written_into_blank = blank.len();
            let mut trimmed = plan.without_done_pages(&conn.device, &blank, &options.plan);
            trimmed
                .partial_pages
                .retain(|p| !blank.iter().any(|(b, _)| b.address == p.address));
            plan = trimmed;
        }
    }
    let preserved = plan.partial_pages.len();
    let kept_pages: Vec<Page> = if options.preserve {
        plan.partial_pages.clone()
    } else {
        Vec::new()
    };
    let (image, plan) = if options.preserve && !plan.partial_pages.is_empty() {
        if journal.is_none() {
            progress.note(Note::Warning(
                "no journal: if power or the link fails between erase and write, the kept bytes \
                 of partly written pages are lost"
                    .into(),
            ));
        }
        let (merged, entries) = merge_partial_pages(conn, image, &plan.partial_pages, progress)?;
        if let Some(j) = journal.as_mut() {
            j.record(entries)?;
        }
        let plan = plan_write(conn, &merged, &options.plan)?;
        (std::borrow::Cow::Owned(merged), plan)
    } else {
        for page in &plan.partial_pages {
            progress.note(Note::Warning(format!(
                "page {} (0x{:08X}, {} bytes) is only partly covered by the image: the rest of it \
                 is erased (--no-preserve)",
                page.index, page.address, page.size
            )));
        }
        (std::borrow::Cow::Borrowed(image), plan)
    };
    let (plan, checks) = if options.skip_matching_pages {
        let checks = check_pages(conn, &image, &plan, progress)?;
        let trimmed = plan.without_done_pages(&conn.device, &checks, &options.plan);
        (trimmed, checks)
    } else {
        (plan, Vec::new())
    };
    let mut report = execute(conn, &image, &plan, options, progress)?;
    if !options.verify && !kept_pages.is_empty() {
        // Bytes the user did not supply were rewritten: check them even without --verify (a
        // frame with two flipped bits passes the bootloader's checksum).
        let mut kept = Image::new();
        for page in &kept_pages {
            for (addr, data) in image.slice(page.address, page.size) {
                kept.add(addr, data).map_err(Error::Image)?;
            }
        }
        verify_image(conn, &kept, progress)?;
    }
    report.pages_written_into_blank = written_into_blank;
    if options.preserve {
        report.pages_preserved = preserved;
    }
    report.pages_unchanged = checks.iter().filter(|(_, c)| *c == PageCheck::Done).count();
    report.pages_already_blank = checks
        .iter()
        .filter(|(_, c)| *c == PageCheck::Blank)
        .count();
    if let Some(j) = journal.as_mut() {
        j.clear()?;
    }
    Ok(report)
}

fn execute(
    conn: &mut Connection,
    image: &Image,
    plan: &FlashPlan,
    options: &WriteOptions,
    progress: &mut dyn Progress,
) -> Result<WriteReport> {
    let mut report = WriteReport {
        blocks_skipped: plan.skipped_blocks,
        ..WriteReport::default()
    };
    report.pages_erased = run_erase(conn, &plan.erase, progress)?;
    report.erase_commands = plan.erase.len();
    let total = plan.bytes_to_write();
    progress.start(Stage::Write, total);
    let mut done = 0u64;
    for block in &plan.blocks {
        conn.session
            .write_memory_reliably(block.address, &block.data)
            .map_err(|e| at(e, block.address))?;
        done += block.data.len() as u64;
        report.blocks_written += 1;
        progress.update(Stage::Write, done);
    }
    progress.finish(Stage::Write);
    report.bytes_written = total;
    if options.verify {
        let read_back = !conn.bootloader.supports(Command::GetChecksum);
        let (to_verify, covered) = if read_back && !options.verify_erased_blocks {
            without_erased_blocks(conn, image, plan)?
        } else {
            (std::borrow::Cow::Borrowed(image), 0)
        };
        report.blocks_covered_by_erase = covered;
        report.verified = Some(if to_verify.is_empty() {
            VerifyMethod::ReadBack
        } else {
            verify_image(conn, &to_verify, progress)?
        });
    }
    Ok(report)
}

/// `image` without the 256-byte blocks that hold only the erased value and lie wholly in pages
/// that `plan` erased (and so did not write): what a read-back verify still has to read. Also
/// returns how many blocks were left out.
fn without_erased_blocks<'a>(
    conn: &Connection,
    image: &'a Image,
    plan: &FlashPlan,
) -> Result<(std::borrow::Cow<'a, Image>, usize)> {
    let erased_value = conn.device.rules.erased;
    let erased: Vec<(u64, u64)> = plan
        .erase
        .iter()
        .flat_map(|st| st.pages(&conn.device).iter())
        .map(|p| {
            (
                u64::from(p.address),
                u64::from(p.address) + u64::from(p.size),
            )
        })
        .collect();
    let in_erased_page = |start: u64, end: u64| erased.iter().any(|&(a, b)| a <= start && end <= b);
    let mut out = Image::new();
    let mut covered = 0;
    for (addr, data) in image.segments() {
        let mut offset = 0usize;
        while offset < data.len() {
            // Chunks end on 256-byte bounds, like the blocks the plan writes.
            let at = addr as u64 + offset as u64;
            let len = (MAX_BLOCK as u64 - at % MAX_BLOCK as u64).min((data.len() - offset) as u64);
            let chunk = &data[offset..offset + len as usize];
            if chunk.iter().all(|&b| b == erased_value) && in_erased_page(at, at + len) {
                covered += 1;
            } else {
                out.add(at as u32, chunk)?;
            }
            offset += len as usize;
        }
    }
    Ok((std::borrow::Cow::Owned(out), covered))
}

/// What each flash page of `plan` holds now, compared with what writing `image` leaves in it
/// (the image over the page, the erased value where it has no data): Get Checksum where the
/// bootloader offers it, else reading the page back. Changes nothing.
pub fn check_pages(
    conn: &mut Connection,
    image: &Image,
    plan: &FlashPlan,
    progress: &mut dyn Progress,
) -> Result<Vec<(Page, PageCheck)>> {
    let erased = conn.device.rules.erased;
    let use_crc = conn.bootloader.supports(Command::GetChecksum);
    let total: u64 = plan.pages.iter().map(|p| u64::from(p.size)).sum();
    progress.start(Stage::Check, total);
    let mut out = Vec::with_capacity(plan.pages.len());
    let mut done = 0u64;
    for page in &plan.pages {
        let want = image.to_dense(page.address, page.size, erased);
        let blank = vec![erased; page.size as usize];
        let check = if use_crc {
            let crc = conn.session.get_checksum(
                page.address,
                page.size / 4,
                DEFAULT_POLYNOMIAL,
                DEFAULT_INIT,
            )?;
            if crc == stm32_crc(&want) {
                PageCheck::Done
            } else if crc == stm32_crc(&blank) {
                PageCheck::Blank
            } else {
                PageCheck::Other
            }
        } else {
            let mut now = vec![0u8; page.size as usize];
            for (i, chunk) in now.chunks_mut(MAX_BLOCK).enumerate() {
                conn.session
                    .read_memory(page.address + (i * MAX_BLOCK) as u32, chunk)?;
                progress.update(Stage::Check, done + ((i * MAX_BLOCK) + chunk.len()) as u64);
            }
            if now == want {
                PageCheck::Done
            } else if now == blank {
                PageCheck::Blank
            } else {
                PageCheck::Other
            }
        };
        done += u64::from(page.size);
        progress.update(Stage::Check, done);
        out.push((*page, check));
    }
    progress.finish(Stage::Check);
    Ok(out)
}

/// The pages a plan erases or writes, by index, sorted: what must not be write-protected.
pub fn pages_touched(device: &crate::device::Device, plan: &FlashPlan) -> Vec<u16> {
    let mut pages: Vec<u16> = plan
        .erase
        .iter()
        .flat_map(|st| st.pages(device).iter().map(|p| p.index))
        .collect();
    pages.extend(
        plan.blocks
            .iter()
            .filter_map(|b| device.page_at(b.address).map(|p| p.index)),
    );
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// What to erase, as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseTarget {
    /// The whole flash.
    All,
    /// One bank (1 or 2), with the Extended Erase bank codes.
    Bank(u8),
    /// Pages by number.
    Pages(Vec<u16>),
    /// An address range (start, length).
    Range(u32, u32),
}

/// The pages an [`EraseTarget`] erases and the commands that do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasePlan {
    /// Every page erased.
    pub pages: Vec<Page>,
    /// The erase commands (empty for a bank erase, which [`erase_bank`] sends).
    pub steps: Vec<EraseStep>,
    /// The bank, for a bank erase.
    pub bank: Option<u8>,
    /// For a range off page bounds grown with `expand`: what it grew to.
    pub grown: Option<String>,
}

/// Plan an erase on `conn`'s chip. A range must start and end on page bounds unless `expand`
/// (then [`ErasePlan::grown`] says what it covers). Changes nothing.
pub fn plan_erase(conn: &Connection, target: &EraseTarget, expand: bool) -> Result<ErasePlan> {
    let device = &conn.device;
    let opts = plan_options(conn);
    let invalid = Error::InvalidRequest;
    let mut grown = None;
    let (pages, steps, bank): (Vec<Page>, Vec<EraseStep>, Option<u8>) = match target {
        EraseTarget::All => (
            device.pages.clone(),
            erase_steps(device, &device.pages, &opts),
            None,
        ),
        EraseTarget::Bank(bank) => {
            if *bank == 0 || *bank > device.banks {
                return Err(invalid(format!(
                    "the {} has {} bank(s); there is no bank {bank}",
                    device.name, device.banks
                )));
            }
            let p: Vec<Page> = device
                .pages
                .iter()
                .filter(|p| p.bank == *bank)
                .copied()
                .collect();
            (p, Vec::new(), Some(*bank))
        }
        EraseTarget::Pages(indices) => {
            let mut p = Vec::with_capacity(indices.len());
            for &i in indices {
                let page = device.page_by_index(i).ok_or_else(|| {
                    invalid(format!(
                        "the {} has no page {i}: its pages are numbered {}..{}",
                        device.name,
                        device.pages.first().map(|p| p.index).unwrap_or(0),
                        device.pages.last().map(|p| p.index).unwrap_or(0)
                    ))
                })?;
                if !p.contains(page) {
                    p.push(*page);
                }
            }
            let s = erase_steps(device, &p, &opts);
            (p, s, None)
        }
        EraseTarget::Range(addr, len) => {
            let (addr, len) = (*addr, *len);
            let end = u64::from(addr) + u64::from(len);
            if !device.in_flash(addr, u64::from(len)) {
                return Err(invalid(format!(
                    "--range 0x{addr:08X}:{len} is not inside the flash (0x{:08X}-0x{:08X})",
                    device.flash.start, device.flash.end
                )));
            }
            let p = device.pages_overlapping(addr, end).to_vec();
            let (first, last) = match (p.first(), p.last()) {
                (Some(f), Some(l)) => (*f, *l),
                _ => return Err(invalid("--range covers no page".into())),
            };
            if first.address != addr || last.end() != end {
                let text = format!(
                    "0x{:08X}:0x{:X} (pages {}..{})",
                    first.address,
                    last.end() - u64::from(first.address),
                    first.index,
                    last.index
                );
                if !expand {
                    return Err(invalid(format!(
                        "--range 0x{addr:08X}:0x{len:X} is not on page bounds; erasing whole pages would cover {text}: pass --expand to do that"
                    )));
                }
                grown = Some(text);
            }
            let s = erase_steps(device, &p, &opts);
            (p, s, None)
        }
    };
    Ok(ErasePlan {
        pages,
        steps,
        bank,
        grown,
    })
}

/// Carry out an [`ErasePlan`]; returns how many pages were erased.
pub fn run_erase_plan(
    conn: &mut Connection,
    plan: &ErasePlan,
    progress: &mut dyn Progress,
) -> Result<usize> {
    match plan.bank {
        Some(bank) => erase_bank(conn, bank, progress),
        None => run_erase(conn, &plan.steps, progress),
    }
}

/// The journal of the connected chip, keyed by its unique ID.
pub fn open_journal(conn: &mut Connection, dir: &std::path::Path) -> Result<Journal> {
    let uid = conn.unique_id()?;
    let key = ChipKey::new(uid, conn.device.pid, &conn.device.name);
    Journal::open(dir, key)
}

/// The partly covered pages whose bytes under the image (widened to the programming unit) still
/// hold the erased value on the chip, as [`PageCheck::Blank`]: the image can be programmed into
/// them without an erase. Reads only those bytes, and stops at the first that is not erased.
fn blank_targets(
    conn: &mut Connection,
    image: &Image,
    pages: &[Page],
) -> Result<Vec<(Page, PageCheck)>> {
    let unit = conn
        .device
        .rules
        .write_align
        .max(conn.device.rules.program_unit)
        .max(1);
    let erased = conn.device.rules.erased;
    let mut out = Vec::new();
    'pages: for page in pages {
        for (addr, data) in image.slice(page.address, page.size) {
            let start = (addr / unit * unit).max(page.address);
            let end = (u64::from(addr) + data.len() as u64)
                .div_ceil(u64::from(unit))
                .saturating_mul(u64::from(unit))
                .min(page.end());
            // Block by block, stopping at the first byte that is not erased: over old content
            // this costs one read.
            let mut at = u64::from(start);
            let mut buf = [0u8; MAX_BLOCK];
            while at < end {
                let n = (end - at).min(MAX_BLOCK as u64) as usize;
                conn.session.read_memory(at as u32, &mut buf[..n])?;
                if buf[..n].iter().any(|&b| b != erased) {
                    continue 'pages;
                }
                at += n as u64;
            }
        }
        out.push((*page, PageCheck::Blank));
    }
    Ok(out)
}

/// Read the partly covered pages and lay the image over them: the merged image covers those
/// pages whole. Returns it with the journal entries (original and target of each page).
fn merge_partial_pages(
    conn: &mut Connection,
    image: &Image,
    pages: &[Page],
    progress: &mut dyn Progress,
) -> Result<(Image, Vec<PageEntry>)> {
    if conn.read_protected {
        return Err(Error::InvalidRequest(format!(
            "the image covers page {} (0x{:08X}) only in part, and the chip is read-protected, so \
             the rest of the page cannot be kept: pass --no-preserve to erase it",
            pages[0].index, pages[0].address
        )));
    }
    let mut merged = Image::new();
    let mut entries = Vec::with_capacity(pages.len());
    for page in pages {
        // The kept bytes are written back: a byte corrupted on the way in would be lost.
        let original = read_memory_stable(conn, page.address, page.size, progress)?;
        let mut target = original.clone();
        for (addr, data) in image.slice(page.address, page.size) {
            let off = (addr - page.address) as usize;
            target[off..off + data.len()].copy_from_slice(data);
        }
        entries.push(PageEntry::new(page.address, &original, &target));
        merged.add(page.address, &target).map_err(Error::Image)?;
    }
    for (addr, data) in image.segments() {
        let mut pos = addr;
        let end = u64::from(addr) + data.len() as u64;
        while u64::from(pos) < end {
            let inside = pages
                .iter()
                .find(|p| p.address <= pos && p.end() > u64::from(pos));
            let next = match inside {
                Some(p) => p.end().min(end),
                None => {
                    let next_page = pages
                        .iter()
                        .filter(|p| p.address > pos)
                        .map(|p| u64::from(p.address))
                        .min()
                        .unwrap_or(end);
                    let stop = next_page.min(end);
                    let from = (pos - addr) as usize;
                    let to = (stop - u64::from(addr)) as usize;
                    merged.add(pos, &data[from..to]).map_err(Error::Image)?;
                    stop
                }
            };
            pos = match u32::try_from(next) {
                Ok(p) => p,
                Err(_) => break,
            };
        }
    }
    Ok((merged, entries))
}

/// What `recover` does with a journalled page that does not hold its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverMode {
    /// Write the content the interrupted write meant to leave (kept bytes plus new data).
    Finish,
    /// Put back what the page held before the interrupted write.
    Restore,
}

/// What `recover` found and did, per page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveredPage {
    /// Page address.
    pub address: u32,
    /// Page size.
    pub size: usize,
    /// Whether the page already held what it should (nothing written).
    pub already_done: bool,
}

/// Bring every page of the journal to its target (or back to its original) and clear it.
pub fn recover(
    conn: &mut Connection,
    journal: &mut Journal,
    mode: RecoverMode,
    progress: &mut dyn Progress,
) -> Result<Vec<RecoveredPage>> {
    let mut out = Vec::new();
    let entries = journal.pending().to_vec();
    for entry in &entries {
        let want = match mode {
            RecoverMode::Finish => entry.target()?,
            RecoverMode::Restore => entry.original()?,
        };
        let page = conn
            .device
            .page_at(entry.address)
            .copied()
            .filter(|p| p.address == entry.address && p.size as usize == want.len())
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the journal names a {}-byte page at 0x{:08X}, which the {} does not have \
                     (is this the right chip, and the same bank mode?)",
                    want.len(),
                    entry.address,
                    conn.device.name
                ))
            })?;
        let now = read_memory(conn, page.address, page.size, progress)?;
        if now == want {
            out.push(RecoveredPage {
                address: page.address,
                size: want.len(),
                already_done: true,
            });
            continue;
        }
        let image = Image::from_bin(&want, page.address).map_err(Error::Image)?;
        let mut plan = plan_write(conn, &image, &plan_options(conn))?;
        if now.iter().all(|&b| b == conn.device.rules.erased) {
            // Erased by the cut-off run and not written yet: no need to erase it again.
            plan.erase.clear();
        }
        let options = WriteOptions {
            verify: true,
            verify_erased_blocks: true,
            ..WriteOptions::for_connection(conn)
        };
        execute(conn, &image, &plan, &options, progress)?;
        out.push(RecoveredPage {
            address: page.address,
            size: want.len(),
            already_done: false,
        });
    }
    journal.clear()?;
    Ok(out)
}

fn at(e: Error, address: u32) -> Error {
    if !matches!(e, Error::Nack { .. }) {
        return e;
    }
    e.map_hint(|hint| {
        Some(format!(
            "at 0x{address:08X}{}",
            hint.map(|h| format!(": {h}")).unwrap_or_default()
        ))
    })
}

/// Run erase steps; returns how many pages were erased.
pub fn run_erase(
    conn: &mut Connection,
    steps: &[EraseStep],
    progress: &mut dyn Progress,
) -> Result<usize> {
    if steps.is_empty() {
        return Ok(0);
    }
    let total: usize = steps.iter().map(|s| s.page_count(&conn.device)).sum();
    progress.start(Stage::Erase, total as u64);
    let mut done = 0;
    for step in steps {
        let (request, timeout) = match step {
            EraseStep::Mass => {
                let (_, max) = conn.device.rules.mass_erase_ms;
                let t =
                    Duration::from_millis(u64::from(max)).max(conn.session.timeouts().mass_erase);
                (EraseRequest::Mass, t)
            }
            EraseStep::Pages(pages) => (
                EraseRequest::Pages(pages.iter().map(|p| p.index).collect()),
                erase_timeout(conn, pages),
            ),
        };
        conn.session.erase(&request, timeout)?;
        done += step.page_count(&conn.device);
        progress.update(Stage::Erase, done as u64);
    }
    progress.finish(Stage::Erase);
    Ok(done)
}

fn erase_timeout(conn: &Connection, pages: &[Page]) -> Duration {
    conn.device.erase_time_max(pages) + Duration::from_secs(1)
}

/// Erase a whole bank (1 or 2) with the Extended Erase bank codes.
pub fn erase_bank(conn: &mut Connection, bank: u8, progress: &mut dyn Progress) -> Result<usize> {
    if bank == 0 || bank > conn.device.banks {
        return Err(Error::InvalidRequest(format!(
            "the {} has {} bank(s); there is no bank {bank}",
            conn.device.name, conn.device.banks
        )));
    }
    if !conn.bootloader.supports(Command::ExtendedErase) {
        return Err(Error::Unsupported {
            command: Command::ExtendedErase,
            listed: conn.bootloader.command_names(),
        });
    }
    let pages: Vec<Page> = conn
        .device
        .pages
        .iter()
        .filter(|p| p.bank == bank)
        .copied()
        .collect();
    progress.start(Stage::Erase, pages.len() as u64);
    let request = if bank == 1 {
        EraseRequest::Bank1
    } else {
        EraseRequest::Bank2
    };
    let timeout = erase_timeout(conn, &pages).max(conn.session.timeouts().mass_erase);
    conn.session.erase(&request, timeout)?;
    progress.update(Stage::Erase, pages.len() as u64);
    progress.finish(Stage::Erase);
    Ok(pages.len())
}

/// Check that the chip holds the image: by Get Checksum where the bootloader offers it (the
/// unaligned edges of segments are read back), otherwise by reading everything back.
pub fn verify_image(
    conn: &mut Connection,
    image: &Image,
    progress: &mut dyn Progress,
) -> Result<VerifyMethod> {
    let use_crc = conn.bootloader.supports(Command::GetChecksum);
    if !use_crc {
        progress.note(Note::Info(
            "this bootloader has no Get Checksum (0xA1): verifying by reading back".into(),
        ));
    }
    progress.start(Stage::Verify, image.total_len());
    let mut done = 0u64;
    for (addr, data) in image.segments() {
        if use_crc {
            let first_word = addr.div_ceil(4) * 4;
            let end = u64::from(addr) + data.len() as u64;
            let last_word = (end / 4 * 4) as u32;
            if last_word > first_word {
                let lead = (first_word - addr) as usize;
                let body = &data[lead..lead + (last_word - first_word) as usize];
                let words = (body.len() / 4) as u32;
                let crc = conn.session.get_checksum(
                    first_word,
                    words,
                    DEFAULT_POLYNOMIAL,
                    DEFAULT_INIT,
                )?;
                if crc != stm32_crc(body) {
                    // Find where: read the range back.
                    read_compare(conn, first_word, body, &mut |_| {})?;
                    return Err(Error::Verify {
                        address: first_word,
                        detail: format!(
                            "CRC 0x{crc:08X} on the chip, 0x{:08X} expected over {} bytes",
                            stm32_crc(body),
                            body.len()
                        ),
                    });
                }
                read_compare(conn, addr, &data[..lead], &mut |_| {})?;
                read_compare(conn, last_word, &data[lead + body.len()..], &mut |_| {})?;
            } else {
                read_compare(conn, addr, data, &mut |_| {})?;
            }
            done += data.len() as u64;
            progress.update(Stage::Verify, done);
        } else {
            let base = done;
            read_compare(conn, addr, data, &mut |n| {
                progress.update(Stage::Verify, base + n)
            })?;
            done += data.len() as u64;
        }
    }
    progress.finish(Stage::Verify);
    Ok(if use_crc {
        VerifyMethod::Crc
    } else {
        VerifyMethod::ReadBack
    })
}

fn read_compare(
    conn: &mut Connection,
    addr: u32,
    expected: &[u8],
    on_progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut buf = [0u8; MAX_BLOCK];
    for (i, chunk) in expected.chunks(MAX_BLOCK).enumerate() {
        let a = addr + (i * MAX_BLOCK) as u32;
        let got = &mut buf[..chunk.len()];
        conn.session.read_memory(a, got)?;
        // A difference may be a byte corrupted on the line: read again before believing it
        // (noise never turns wrong content into exactly the expected bytes).
        for _ in 1..conn.session.attempts() {
            if got == chunk {
                break;
            }
            conn.session.read_memory(a, got)?;
        }
        if let Some(k) = got.iter().zip(chunk).position(|(g, e)| g != e) {
            return Err(Error::Verify {
                address: a + k as u32,
                detail: format!(
                    "the chip holds 0x{:02X}, the image 0x{:02X}{}",
                    got[k],
                    chunk[k],
                    verify_hint(conn, a + k as u32)
                ),
            });
        }
        on_progress(((i * MAX_BLOCK) + chunk.len()) as u64);
    }
    Ok(())
}

fn verify_hint(conn: &Connection, addr: u32) -> String {
    match conn.device.page_at(addr) {
        Some(p) => format!(
            " (page {} at 0x{:08X}: a write-protected page, or memory that was not erased first, \
             keeps its old content)",
            p.index, p.address
        ),
        None => String::new(),
    }
}

/// Read `len` bytes from `addr`.
pub fn read_memory(
    conn: &mut Connection,
    addr: u32,
    len: u32,
    progress: &mut dyn Progress,
) -> Result<Vec<u8>> {
    read_blocks(conn, addr, len, progress, false)
}

/// `len` bytes from `addr` in Read Memory blocks, each read once, or (`stable`) until reads
/// agree ([`crate::session::Session::read_memory_stable`]). Checks the range first.
fn read_blocks(
    conn: &mut Connection,
    addr: u32,
    len: u32,
    progress: &mut dyn Progress,
    stable: bool,
) -> Result<Vec<u8>> {
    if len == 0 {
        return Err(Error::InvalidRequest(
            "nothing to read: the length is 0".into(),
        ));
    }
    if u64::from(addr) + u64::from(len) > 1 << 32 {
        return Err(Error::InvalidRequest(format!(
            "0x{addr:08X} + {len} bytes runs past the 4 GiB address space"
        )));
    }
    let mut out = vec![0u8; len as usize];
    progress.start(Stage::Read, u64::from(len));
    for (i, chunk) in out.chunks_mut(MAX_BLOCK).enumerate() {
        let at = addr + (i * MAX_BLOCK) as u32;
        if stable {
            conn.session.read_memory_stable(at, chunk)?;
        } else {
            conn.session.read_memory(at, chunk)?;
        }
        progress.update(Stage::Read, ((i * MAX_BLOCK) + chunk.len()) as u64);
    }
    progress.finish(Stage::Read);
    Ok(out)
}

/// Read `len` bytes from `addr` so that a byte corrupted on the line cannot pass: where the
/// bootloader has Get Checksum and the range is whole words, the read is checked against the
/// chip's CRC of it; otherwise each block is read until two reads in a row agree. For bytes
/// that are written back or decided on.
pub fn read_memory_stable(
    conn: &mut Connection,
    addr: u32,
    len: u32,
    progress: &mut dyn Progress,
) -> Result<Vec<u8>> {
    let by_crc =
        conn.bootloader.supports(Command::GetChecksum) && addr % 4 == 0 && len % 4 == 0 && len > 0;
    if !by_crc {
        return read_blocks(conn, addr, len, progress, true);
    }
    let mut data = read_memory(conn, addr, len, progress)?;
    let crc = conn
        .session
        .get_checksum(addr, len / 4, DEFAULT_POLYNOMIAL, DEFAULT_INIT)?;
    if crc == stm32_crc(&data) {
        return Ok(data);
    }
    // Find the corrupted blocks by their own CRCs and read those again.
    let tries = conn.session.attempts();
    for (i, chunk) in data.chunks_mut(MAX_BLOCK).enumerate() {
        let at = addr + (i * MAX_BLOCK) as u32;
        let words = (chunk.len() / 4) as u32;
        let mut good = false;
        for _ in 0..tries {
            let crc = conn
                .session
                .get_checksum(at, words, DEFAULT_POLYNOMIAL, DEFAULT_INIT)?;
            if crc == stm32_crc(chunk) {
                good = true;
                break;
            }
            conn.session.read_memory(at, chunk)?;
        }
        if !good {
            return Err(Error::Verify {
                address: at,
                detail: format!(
                    "{} bytes read back never matched the chip's CRC of them in {tries} tries: \
                     the link corrupts data (check the cable, the ground and the baud rate)",
                    chunk.len()
                ),
            });
        }
    }
    Ok(data)
}

/// The STM32 CRC of `len` bytes (a multiple of 4) at `addr`: Get Checksum where offered,
/// otherwise a read-back and a software CRC.
pub fn checksum(
    conn: &mut Connection,
    addr: u32,
    len: u32,
    progress: &mut dyn Progress,
) -> Result<(u32, VerifyMethod)> {
    if len == 0 || len % 4 != 0 || addr % 4 != 0 {
        return Err(Error::InvalidRequest(format!(
            "the CRC unit works on whole 32-bit words: the address (0x{addr:08X}) and length \
             ({len}) must be non-zero multiples of 4"
        )));
    }
    if conn.bootloader.supports(Command::GetChecksum) {
        let crc = conn
            .session
            .get_checksum(addr, len / 4, DEFAULT_POLYNOMIAL, DEFAULT_INIT)?;
        Ok((crc, VerifyMethod::Crc))
    } else {
        let data = read_memory(conn, addr, len, progress)?;
        Ok((stm32_crc(&data), VerifyMethod::ReadBack))
    }
}
