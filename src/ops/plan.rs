//! Flash planning: which pages to erase and which blocks to write, from an image and the
//! device's page map. Pure: no I/O, tested with exact layouts.

use crate::device::{Device, Page};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::protocol::MAX_BLOCK;

/// Choices that change a plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Erase the pages the image touches before writing (off: write into already-erased flash).
    pub erase: bool,
    /// Skip blocks that hold only the erased value, in pages this plan erases.
    pub skip_erased_blocks: bool,
    /// Most pages one erase command may name (511, or 255 with the legacy Erase command).
    pub max_pages_per_erase: usize,
    /// Whether a mass erase may replace a page list that covers the whole flash.
    pub allow_mass_erase: bool,
}

impl PlanOptions {
    /// Defaults for a device.
    pub fn for_device(device: &Device) -> PlanOptions {
        PlanOptions {
            erase: true,
            skip_erased_blocks: true,
            max_pages_per_erase: device.max_erase_pages,
            allow_mass_erase: device.mass_erase,
        }
    }
}

/// One erase command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EraseStep {
    /// These pages, in one command.
    Pages(Vec<Page>),
    /// The whole flash.
    Mass,
}

impl EraseStep {
    /// How many pages the step erases on `device`.
    pub fn page_count(&self, device: &Device) -> usize {
        self.pages(device).len()
    }

    /// The pages the step erases on `device`.
    pub fn pages<'a>(&'a self, device: &'a Device) -> &'a [Page] {
        match self {
            EraseStep::Pages(p) => p,
            EraseStep::Mass => &device.pages,
        }
    }
}

/// One Write Memory command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBlock {
    /// Address (aligned to the device's write alignment and programming unit in flash).
    pub address: u32,
    /// 1 to 256 bytes.
    pub data: Vec<u8>,
}

/// What a write will do.
#[derive(Debug, Clone, Default)]
pub struct FlashPlan {
    /// Erase commands, in order.
    pub erase: Vec<EraseStep>,
    /// Write commands, in address order.
    pub blocks: Vec<WriteBlock>,
    /// Blocks left out because they hold only the erased value.
    pub skipped_blocks: usize,
    /// Erased pages that hold bytes the image does not supply (their old content is lost).
    pub partial_pages: Vec<Page>,
    /// Pages touched by the image, in order.
    pub pages: Vec<Page>,
}

impl FlashPlan {
    /// Plan writing `image` to `device`. Every segment must lie wholly in flash or wholly in the
    /// RAM the bootloader lets the host use.
    pub fn new(device: &Device, image: &Image, options: &PlanOptions) -> Result<FlashPlan> {
        if image.is_empty() {
            return Err(Error::InvalidRequest("the image holds no data".into()));
        }
        let mut flash_image = Image::new();
        let mut ram_segments = Vec::new();
        for (addr, data) in image.segments() {
            let len = data.len() as u64;
            if device.in_flash(addr, len) {
                flash_image.add(addr, data)?;
            } else if device.in_usable_ram(addr, len) {
                ram_segments.push((addr, data));
            } else {
                return Err(Error::InvalidRequest(place_error(device, addr, len)));
            }
        }
        let mut plan = FlashPlan::default();
        // Pages touched, and which of them the image covers only in part.
        for (addr, data) in flash_image.segments() {
            for page in device.pages_overlapping(addr, u64::from(addr) + data.len() as u64) {
                if plan.pages.last() != Some(page) {
                    plan.pages.push(*page);
                }
            }
        }
        if options.erase {
            for page in &plan.pages {
                let covered: usize = flash_image
                    .slice(page.address, page.size)
                    .iter()
                    .map(|(_, d)| d.len())
                    .sum();
                if covered < page.size as usize {
                    plan.partial_pages.push(*page);
                }
            }
            plan.erase = erase_steps(device, &plan.pages, options);
        }
        let unit = device
            .rules
            .program_unit
            .max(device.rules.write_align)
            .max(4);
        let erased = device.rules.erased;
        for window in windows(&flash_image) {
            for (start, data) in flash_blocks(&flash_image, window, unit, erased) {
                if options.erase && options.skip_erased_blocks && data.iter().all(|&b| b == erased)
                {
                    plan.skipped_blocks += 1;
                    continue;
                }
                plan.blocks.push(WriteBlock {
                    address: start,
                    data,
                });
            }
        }
        for (addr, data) in ram_segments {
            for (i, chunk) in data.chunks(MAX_BLOCK).enumerate() {
                let mut d = chunk.to_vec();
                while d.len() % 4 != 0 {
                    d.push(0xFF);
                }
                plan.blocks.push(WriteBlock {
                    address: addr + (i * MAX_BLOCK) as u32,
                    data: d,
                });
            }
        }
        Ok(plan)
    }

    /// Bytes the plan sends in Write Memory commands.
    pub fn bytes_to_write(&self) -> u64 {
        self.blocks.iter().map(|b| b.data.len() as u64).sum()
    }

    /// Pages the plan erases.
    pub fn pages_to_erase(&self, device: &Device) -> usize {
        self.erase.iter().map(|s| s.page_count(device)).sum()
    }
}

/// What a page of a plan already holds on the chip, as checked before a resumed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageCheck {
    /// Exactly what the write would leave in it: neither erased nor written again.
    Done,
    /// Only the erased value: written, but not erased again.
    Blank,
    /// Anything else: erased (if the plan erases) and written.
    Other,
}

impl FlashPlan {
    /// The plan without the work that `checks` shows is already done: pages that hold their
    /// target content are neither erased nor written, and pages that are blank are written but
    /// not erased. A page missing from `checks` counts as [`PageCheck::Other`]. Blocks in RAM
    /// stay; a block that spans a done page and another page (pages smaller than a block) keeps
    /// only its part outside the done page. Pure: the checks come from the chip.
    pub fn without_done_pages(
        &self,
        device: &Device,
        checks: &[(Page, PageCheck)],
        options: &PlanOptions,
    ) -> FlashPlan {
        let check = |p: &Page| {
            checks
                .iter()
                .find(|(q, _)| q.address == p.address)
                .map_or(PageCheck::Other, |(_, c)| *c)
        };
        let done: Vec<Page> = self
            .pages
            .iter()
            .filter(|p| check(p) == PageCheck::Done)
            .copied()
            .collect();
        let in_done = |addr: u32| {
            done.iter()
                .any(|p| p.address <= addr && p.end() > u64::from(addr))
        };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let end = b.address as u64 + b.data.len() as u64;
            let touches_done = done
                .iter()
                .any(|p| u64::from(p.address) < end && p.end() > u64::from(b.address));
            if !touches_done {
                blocks.push(b.clone());
                continue;
            }
            // Keep the runs of the block that lie outside done pages.
            let mut run_start: Option<u32> = None;
            for (i, _) in b.data.iter().enumerate() {
                let addr = b.address + i as u32;
                match (in_done(addr), run_start) {
                    (false, None) => run_start = Some(addr),
                    (true, Some(s)) => {
                        let from = (s - b.address) as usize;
                        blocks.push(WriteBlock {
                            address: s,
                            data: b.data[from..i].to_vec(),
                        });
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run_start {
                let from = (s - b.address) as usize;
                blocks.push(WriteBlock {
                    address: s,
                    data: b.data[from..].to_vec(),
                });
            }
        }
        let pages: Vec<Page> = self
            .pages
            .iter()
            .filter(|p| check(p) != PageCheck::Done)
            .copied()
            .collect();
        let erase = if self.erase.is_empty() {
            Vec::new()
        } else {
            let to_erase: Vec<Page> = pages
                .iter()
                .filter(|p| check(p) == PageCheck::Other)
                .copied()
                .collect();
            if to_erase.len() == self.pages.len() {
                self.erase.clone()
            } else {
                erase_steps(device, &to_erase, options)
            }
        };
        FlashPlan {
            erase,
            blocks,
            skipped_blocks: self.skipped_blocks,
            partial_pages: self
                .partial_pages
                .iter()
                .filter(|p| check(p) != PageCheck::Done)
                .copied()
                .collect(),
            pages,
        }
    }
}

/// Split a page list into commands of at most `max` pages, or one mass erase where the list is
/// the whole flash and the part allows it.
pub fn erase_steps(device: &Device, pages: &[Page], options: &PlanOptions) -> Vec<EraseStep> {
    if pages.is_empty() {
        return Vec::new();
    }
    if options.allow_mass_erase && pages.len() == device.pages.len() {
        return vec![EraseStep::Mass];
    }
    pages
        .chunks(options.max_pages_per_erase.max(1))
        .map(|c| EraseStep::Pages(c.to_vec()))
        .collect()
}

/// 256-byte-aligned windows that hold image data.
fn windows(image: &Image) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for (addr, data) in image.segments() {
        let first = addr / MAX_BLOCK as u32;
        let last = (u64::from(addr) + data.len() as u64 - 1) / MAX_BLOCK as u64;
        for w in u64::from(first)..=last {
            let w = (w * MAX_BLOCK as u64) as u32;
            if out.last() != Some(&w) {
                out.push(w);
            }
        }
    }
    out
}

/// The write commands for one 256-byte window: runs of image data widened to whole programming
/// units (filled with the erased value), merged where they touch.
fn flash_blocks(image: &Image, window: u32, unit: u32, erased: u8) -> Vec<(u32, Vec<u8>)> {
    let pieces = image.slice(window, MAX_BLOCK as u32);
    let mut spans: Vec<(u32, u32)> = Vec::new();
    for (addr, data) in &pieces {
        let start = addr / unit * unit;
        let end = (addr + data.len() as u32).div_ceil(unit) * unit;
        match spans.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => spans.push((start, end)),
        }
    }
    spans
        .into_iter()
        .map(|(start, end)| {
            let mut buf = vec![erased; (end - start) as usize];
            for (addr, data) in &pieces {
                if *addr >= start && *addr < end {
                    let off = (addr - start) as usize;
                    buf[off..off + data.len()].copy_from_slice(data);
                }
            }
            (start, buf)
        })
        .collect()
}

fn place_error(device: &Device, addr: u32, len: u64) -> String {
    let end = u64::from(addr) + len - 1;
    let what = if device.system_memory.contains(addr) {
        "is in system memory, which is read-only".to_string()
    } else if device.option_bytes.iter().any(|w| w.contains(addr)) {
        "is in the option bytes; `write` programs flash and RAM only".to_string()
    } else if device.otp.is_some_and(|o| o.range.contains(addr)) {
        "is in the OTP area; `write` programs flash and RAM only".to_string()
    } else if device.ram.contains(addr) && addr < device.bootloader_ram_end {
        format!(
            "is in RAM the bootloader keeps for itself (below 0x{:08X})",
            device.bootloader_ram_end
        )
    } else if device.flash.contains(addr) {
        format!(
            "runs past the end of flash (0x{:08X}-0x{:08X}, {} KiB)",
            device.flash.start,
            device.flash.end,
            device.flash_size() / 1024
        )
    } else {
        format!(
            "is outside the flash (0x{:08X}-0x{:08X}) and the usable RAM (0x{:08X}-0x{:08X}) of the {}",
            device.flash.start, device.flash.end, device.bootloader_ram_end, device.ram.end, device.name
        )
    };
    format!(
        "image data at 0x{addr:08X}-0x{end:08X} {what}; check the image's addresses (or --address for .bin files)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;

    fn dev(part: &str) -> Device {
        DeviceTable::builtin()
            .expect("test setup")
            .by_part(part)
            .expect("test setup")
            .clone()
    }

    fn plan(d: &Device, img: &Image) -> FlashPlan {
        FlashPlan::new(d, img, &PlanOptions::for_device(d)).expect("test setup")
    }

    #[test]
    fn f4_image_touching_two_sectors_erases_exactly_those() {
        let d = dev("stm32f411");
        let img = Image::from_bin(&vec![0x5A; 0x5000], 0x0800_0000).expect("test setup");
        let p = plan(&d, &img);
        let idx: Vec<u16> = p.pages.iter().map(|p| p.index).collect();
        assert_eq!(idx, vec![0, 1]);
        assert_eq!(p.erase, vec![EraseStep::Pages(p.pages.clone())]);
        assert_eq!(p.blocks.len(), 0x50);
        assert!(p
            .blocks
            .iter()
            .all(|b| b.data.len() == 256 && b.address % 256 == 0));
        assert_eq!(
            p.partial_pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn sparse_image_leaves_gap_pages_alone() {
        let d = dev("stm32l476");
        let mut img = Image::new();
        img.add(0x0800_0000, &[1; 16]).expect("test setup");
        img.add(0x0801_F000, &[2; 64]).expect("test setup");
        let p = plan(&d, &img);
        assert_eq!(
            p.pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![0, 62]
        );
        assert_eq!(p.blocks.len(), 2);
        assert_eq!(p.blocks[1].address, 0x0801_F000);
        assert_eq!(p.blocks[1].data.len(), 64);
    }

    #[test]
    fn unaligned_tail_is_padded_to_the_programming_unit() {
        let d = dev("stm32l476");
        let img = Image::from_bin(&[0xAB; 13], 0x0800_0103).expect("test setup");
        let p = plan(&d, &img);
        assert_eq!(p.blocks.len(), 1);
        let b = &p.blocks[0];
        assert_eq!(b.address, 0x0800_0100);
        assert_eq!(b.data.len(), 16);
        assert_eq!(&b.data[..3], &[0xFF; 3]);
        assert_eq!(&b.data[3..], &[0xAB; 13]);
    }

    #[test]
    fn erased_blocks_are_skipped_only_in_erased_pages() {
        let d = dev("stm32f411");
        let mut data = vec![0xFF; 1024];
        data[600] = 0;
        let img = Image::from_bin(&data, 0x0800_0000).expect("test setup");
        let p = plan(&d, &img);
        assert_eq!(p.skipped_blocks, 3);
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(p.blocks[0].address, 0x0800_0200);
        let no_erase = PlanOptions {
            erase: false,
            ..PlanOptions::for_device(&d)
        };
        let p2 = FlashPlan::new(&d, &img, &no_erase).expect("test setup");
        assert_eq!(p2.blocks.len(), 4);
        assert!(p2.erase.is_empty());
    }

    #[test]
    fn two_runs_in_one_window_merge_when_their_units_touch() {
        let d = dev("stm32l476");
        let mut img = Image::new();
        img.add(0x0800_0000, &[1; 3]).expect("test setup");
        img.add(0x0800_0005, &[2; 3]).expect("test setup");
        img.add(0x0800_0080, &[3; 8]).expect("test setup");
        let p = plan(&d, &img);
        assert_eq!(p.blocks.len(), 2);
        assert_eq!(p.blocks[0].data, vec![1, 1, 1, 0xFF, 0xFF, 2, 2, 2]);
        assert_eq!(p.blocks[1].address, 0x0800_0080);
    }

    #[test]
    fn long_page_lists_are_split_and_full_flash_uses_mass_erase() {
        let d = dev("stm32l476");
        let img = Image::from_bin(&vec![0; 600 * 2048 / 2], 0x0800_0000).expect("test setup");
        let p = plan(&d, &img);
        assert_eq!(p.erase.len(), 1);
        let whole = Image::from_bin(&vec![0; 1024 * 1024], 0x0800_0000).expect("test setup");
        assert_eq!(plan(&d, &whole).erase, vec![EraseStep::Mass]);
        let mut opts = PlanOptions::for_device(&d);
        opts.allow_mass_erase = false;
        opts.max_pages_per_erase = 200;
        let p = FlashPlan::new(&d, &whole, &opts).expect("test setup");
        assert_eq!(p.erase.len(), 3);
        assert_eq!(p.erase.iter().map(|s| s.page_count(&d)).sum::<usize>(), 512);
    }

    #[test]
    fn done_pages_are_left_out_and_blank_pages_are_written_without_an_erase() {
        let d = dev("stm32l476");
        // Five 2 KiB pages, and a little in RAM.
        let mut img = Image::from_bin(&vec![0x5A; 5 * 2048], 0x0800_0000).expect("test setup");
        img.add(0x2000_4000, &[1; 8]).expect("test setup");
        let p = plan(&d, &img);
        let page = |i: u16| *d.page_by_index(i).expect("test setup");
        let checks = [
            (page(0), PageCheck::Done),
            (page(1), PageCheck::Blank),
            (page(2), PageCheck::Other),
            (page(3), PageCheck::Done),
            // page 4: not checked, so treated as Other
        ];
        let opts = PlanOptions::for_device(&d);
        let q = p.without_done_pages(&d, &checks, &opts);
        let erased: Vec<u16> = q
            .erase
            .iter()
            .flat_map(|s| s.pages(&d).iter().map(|p| p.index))
            .collect();
        assert_eq!(erased, vec![2, 4]);
        assert_eq!(
            q.pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        let in_page = |b: &WriteBlock, i: u16| d.page_at(b.address) == Some(&page(i));
        for i in [0, 3] {
            assert!(!q.blocks.iter().any(|b| in_page(b, i)), "page {i}");
        }
        for i in [1, 2, 4] {
            assert_eq!(
                q.blocks.iter().filter(|b| in_page(b, i)).count(),
                8,
                "page {i}"
            );
        }
        assert!(
            q.blocks.iter().any(|b| b.address == 0x2000_4000),
            "RAM stays"
        );
        assert_eq!(q.bytes_to_write(), 3 * 2048 + 8);
        // Nothing done: the plan is unchanged.
        let same = p.without_done_pages(&d, &[], &opts);
        assert_eq!(same.erase, p.erase);
        assert_eq!(same.blocks, p.blocks);
        // Everything done: only RAM is left.
        let all: Vec<(Page, PageCheck)> = p.pages.iter().map(|p| (*p, PageCheck::Done)).collect();
        let none = p.without_done_pages(&d, &all, &opts);
        assert!(none.erase.is_empty() && none.pages.is_empty());
        assert_eq!(none.blocks.len(), 1);
    }

    #[test]
    fn a_block_over_a_done_page_and_another_keeps_only_the_other_part() {
        // L0: 128-byte pages, so one 256-byte block spans two pages.
        let d = dev("stm32l072");
        let img = Image::from_bin(&[0x11; 256], 0x0800_0000).expect("test setup");
        let p = plan(&d, &img);
        assert_eq!(p.blocks.len(), 1);
        let first = *d.page_by_index(0).expect("test setup");
        let q = p.without_done_pages(
            &d,
            &[(first, PageCheck::Done)],
            &PlanOptions::for_device(&d),
        );
        assert_eq!(q.blocks.len(), 1);
        assert_eq!(q.blocks[0].address, 0x0800_0080);
        assert_eq!(q.blocks[0].data.len(), 128);
        assert_eq!(q.erase.len(), 1);
        assert_eq!(q.erase[0].pages(&d)[0].index, 1);
    }

    #[test]
    fn images_outside_flash_are_refused_with_the_reason() {
        let d = dev("stm32f411");
        let cases = [
            (0x1FFF_0000u32, "system memory"),
            (0x1FFF_C000, "option bytes"),
            (0x1FFF_7800, "OTP"),
            (0x2000_0000, "bootloader keeps"),
            (0x0807_FFF0, "past the end of flash"),
            (0x6000_0000, "outside the flash"),
        ];
        for (addr, why) in cases {
            let img = Image::from_bin(&[0; 32], addr).expect("test setup");
            let e = FlashPlan::new(&d, &img, &PlanOptions::for_device(&d))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{addr:08X}: {e}");
        }
        let ram = Image::from_bin(&[1; 6], 0x2000_4000).expect("test setup");
        let p = plan(&d, &ram);
        assert!(p.erase.is_empty());
        assert_eq!(p.blocks[0].data, vec![1, 1, 1, 1, 1, 1, 0xFF, 0xFF]);
    }
}
