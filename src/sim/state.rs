//! Saving and loading a simulated chip's non-volatile memory, so that separate commands see one
//! chip and tests can check what a client really wrote.
//!
//! Format: the line `stm32boot-sim-state 1`, one line of JSON describing the regions, then the
//! regions' raw bytes back to back. The header also records what the chip was running (and the
//! bank it booted, and the baud rate a synced bootloader locked onto), so a bootloader left synced
//! by one command is still synced for the next, as on a powered board. Written to a temporary
//! file and renamed into place. Loading runs the option loader, as powering the chip would.

use super::chip::Chip;
use super::target::{Mode, Target};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

const MAGIC: &str = "stm32boot-sim-state 1";

#[derive(Serialize, Deserialize)]
struct Header {
    pid: u16,
    part: String,
    flash: usize,
    option_bytes: Vec<usize>,
    otp: usize,
    erase_counts: Vec<u32>,
    /// What the chip was running when saved; absent means it starts from a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running: Option<Running>,
    /// The baud rate a synced bootloader's auto-baud locked onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    autobaud: Option<u32>,
}

/// What a powered chip was running, so that the next command finds it as the last one left it
/// (a bootloader stays synced until something resets the chip).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Running {
    Bootloader,
    BootloaderSynced,
    Application {
        entry: u32,
        /// The bank a reset booted it from (absent: started by Go).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bank: Option<u8>,
    },
    Lockup,
}

/// What a saved chip was running when its state was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// What it was running.
    pub mode: Mode,
    /// The bank its application was booted from, if a reset booted it.
    pub booted_bank: Option<u8>,
    /// The baud rate its synced bootloader had locked onto, if known.
    pub autobaud: Option<u32>,
}

/// Save flash, option bytes, OTP and erase counters.
pub fn save(chip: &Chip, path: &Path) -> Result<()> {
    save_running(chip, None, None, path)
}

/// Save the chip and what it is running (a chip without power is saved as one that will boot).
pub fn save_target(target: &Target, path: &Path) -> Result<()> {
    let running = match target.mode() {
        Mode::BootloaderUnsynced => Some(Running::Bootloader),
        Mode::Bootloader => Some(Running::BootloaderSynced),
        Mode::Application { entry } => Some(Running::Application {
            entry,
            bank: target.booted_bank(),
        }),
        Mode::Lockup => Some(Running::Lockup),
        Mode::Off => None,
    };
    save_running(target.chip(), running, target.autobaud(), path)
}

fn save_running(
    chip: &Chip,
    running: Option<Running>,
    autobaud: Option<u32>,
    path: &Path,
) -> Result<()> {
    let header = Header {
        pid: chip.device().pid,
        part: chip.device().name.clone(),
        flash: chip.flash.len(),
        option_bytes: chip.option_bytes.iter().map(Vec::len).collect(),
        otp: chip.otp.len(),
        erase_counts: chip.erase_counts.clone(),
        running,
        autobaud,
    };
    let json = serde_json::to_string(&header)
        .map_err(|e| Error::Device(format!("encoding sim state: {e}")))?;
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} sim state {}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(ctx("creating"), e))?;
    let mut write = |bytes: &[u8]| f.write_all(bytes).map_err(|e| Error::io(ctx("writing"), e));
    write(MAGIC.as_bytes())?;
    write(b"\n")?;
    write(json.as_bytes())?;
    write(b"\n")?;
    write(&chip.flash)?;
    for ob in &chip.option_bytes {
        write(ob)?;
    }
    write(&chip.otp)?;
    f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(ctx("replacing"), e))
}

/// Load what [`save`] wrote into a chip of the same part and run its option loader; returns what
/// the chip was running, if that was saved.
pub fn load(chip: &mut Chip, path: &Path) -> Result<Option<Resumed>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading sim state {}", path.display()), e))?;
    let bad = |why: &str| {
        Error::Device(format!(
            "sim state {} is unusable: {why}; delete it to start from a blank chip",
            path.display()
        ))
    };
    let mut lines = bytes.splitn(3, |&b| b == b'\n');
    if lines.next() != Some(MAGIC.as_bytes()) {
        return Err(bad("it does not start with the stm32boot state header"));
    }
    let header: Header = serde_json::from_slice(lines.next().unwrap_or_default())
        .map_err(|e| bad(&format!("header: {e}")))?;
    let body = lines.next().unwrap_or_default();
    if header.pid != chip.device().pid
        || header.flash != chip.flash.len()
        || header.option_bytes != chip.option_bytes.iter().map(Vec::len).collect::<Vec<_>>()
        || header.otp != chip.otp.len()
    {
        return Err(bad(&format!(
            "it holds a {} (PID 0x{:03X}, {} bytes of flash), not this {} with {} bytes",
            header.part,
            header.pid,
            header.flash,
            chip.device().name,
            chip.flash.len()
        )));
    }
    let total = header.flash + header.option_bytes.iter().sum::<usize>() + header.otp;
    if body.len() != total {
        return Err(bad(&format!(
            "{} bytes of memory, expected {total}",
            body.len()
        )));
    }
    let (flash, mut rest) = body.split_at(header.flash);
    chip.flash.copy_from_slice(flash);
    for ob in chip.option_bytes.iter_mut() {
        let (a, b) = rest.split_at(ob.len());
        ob.copy_from_slice(a);
        rest = b;
    }
    chip.otp.copy_from_slice(rest);
    chip.load_options();
    if header.erase_counts.len() == chip.erase_counts.len() {
        chip.erase_counts = header.erase_counts;
    }
    let autobaud = header.autobaud;
    Ok(header.running.map(|r| match r {
        Running::Bootloader => resumed(Mode::BootloaderUnsynced, None, None),
        Running::BootloaderSynced => resumed(Mode::Bootloader, None, autobaud),
        Running::Application { entry, bank } => resumed(Mode::Application { entry }, bank, None),
        Running::Lockup => resumed(Mode::Lockup, None, None),
    }))
}

fn resumed(mode: Mode, booted_bank: Option<u8>, autobaud: Option<u32>) -> Resumed {
    Resumed {
        mode,
        booted_bank,
        autobaud,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;
    use crate::sim::chip::Area;

    #[test]
    fn round_trip_and_mismatch() {
        let t = DeviceTable::builtin().expect("test setup");
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("chip.sim");
        let mut c = Chip::new(t.by_part("stm32f411").expect("test setup").clone(), [0; 12]);
        c.write(Area::Flash, 0x0800_1000, &[1, 2, 3, 4]);
        c.erase_pages(&[3]);
        save(&c, &path).expect("test setup");
        let mut d = Chip::new(t.by_part("stm32f411").expect("test setup").clone(), [0; 12]);
        load(&mut d, &path).expect("test setup");
        assert_eq!(
            d.read(0x0800_1000, 4).expect("test setup"),
            vec![1, 2, 3, 4]
        );
        assert_eq!(d.erase_counts()[3], 1);
        let mut l4 = Chip::new(t.by_part("stm32l476").expect("test setup").clone(), [0; 12]);
        let e = load(&mut l4, &path).unwrap_err().to_string();
        assert!(e.contains("not this"), "{e}");
    }

    #[test]
    fn running_bank_and_baud_survive_and_options_load() {
        let t = DeviceTable::builtin().expect("test setup");
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("chip.sim");
        let device = t.by_part("stm32l476").expect("test setup").clone();
        let mut target = Target::new(Chip::new(device.clone(), [0; 12]));
        let mut vectors = 0x2000_4000u32.to_le_bytes().to_vec();
        vectors.extend_from_slice(&0x0800_0101u32.to_le_bytes());
        let chip = target.chip_mut();
        chip.write(Area::Flash, 0x0808_0000, &vectors);
        let mut ob = chip.peek(0x1FFF_7800, 40).expect("test setup");
        ob[2] |= 0x10; // BFB2
        ob[6] &= !0x10;
        // RDP BB without its complement: OPTR loads as all ones (level 1, BFB2 = 1).
        ob[0] = 0xBB;
        chip.write(Area::OptionBytes(0), 0x1FFF_7800, &ob);
        target.set_boot0_pin(false);
        target.reset();
        assert_eq!(target.booted_bank(), Some(2));
        save_target(&target, &path).expect("test setup");
        let mut chip = Chip::new(device.clone(), [0; 12]);
        let saved = load(&mut chip, &path).expect("test setup");
        assert_eq!(chip.rdp_level(), 1, "the option loader ran at load");
        assert_eq!(
            saved,
            Some(Resumed {
                mode: Mode::Application { entry: 0x0800_0100 },
                booted_bank: Some(2),
                autobaud: None,
            })
        );
        // A synced bootloader keeps the rate its auto-baud measured.
        let mut target = Target::new(Chip::new(device.clone(), [0; 12]));
        target.lock_autobaud(57_600);
        target.feed(0x7F, &mut Vec::new());
        save_target(&target, &path).expect("test setup");
        let mut chip = Chip::new(device, [0; 12]);
        let saved = load(&mut chip, &path).expect("test setup");
        assert_eq!(
            saved.map(|s| (s.mode, s.autobaud)),
            Some((Mode::Bootloader, Some(57_600)))
        );
    }
}
