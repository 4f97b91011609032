//! Executing plans on a connected chip: erase, write, verify, read, checksum, go.

use crate::device::Page;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::ops::connect::Connection;
use crate::ops::plan::{EraseStep, FlashPlan, PlanOptions};
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
}

/// Options for [`write_image`].
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Verify after writing.
    pub verify: bool,
    /// Planning options.
    pub plan: PlanOptions,
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

/// Erase the pages the image touches, write it, and verify it if asked.
pub fn write_image(
    conn: &mut Connection,
    image: &Image,
    options: &WriteOptions,
    progress: &mut dyn Progress,
) -> Result<WriteReport> {
    let plan = plan_write(conn, image, &options.plan)?;
    for page in &plan.partial_pages {
        progress.note(Note::Info(format!(
            "page {} (0x{:08X}, {} KiB) is only partly covered by the image: the rest of it is erased",
            page.index,
            page.address,
            page.size / 1024
        )));
    }
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
            .write_memory(block.address, &block.data)
            .map_err(|e| at(e, block.address))?;
        done += block.data.len() as u64;
        report.blocks_written += 1;
        progress.update(Stage::Write, done);
    }
    progress.finish(Stage::Write);
    report.bytes_written = total;
    if options.verify {
        report.verified = Some(verify_image(conn, image, progress)?);
    }
    Ok(report)
}

fn at(e: Error, address: u32) -> Error {
    match e {
        Error::Nack {
            command,
            phase,
            hint,
        } => Error::Nack {
            command,
            phase,
            hint: Some(format!(
                "at 0x{address:08X}{}",
                hint.map(|h| format!(": {h}")).unwrap_or_default()
            )),
        },
        other => other,
    }
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
        conn.session
            .read_memory(addr + (i * MAX_BLOCK) as u32, chunk)?;
        progress.update(Stage::Read, ((i * MAX_BLOCK) + chunk.len()) as u64);
    }
    progress.finish(Stage::Read);
    Ok(out)
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
