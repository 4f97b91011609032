//! The simulated target: a chip with its family's flash rules and a ROM bootloader that speaks
//! AN3155 from the device's side.
//!
//! It shares only the frame definitions ([`crate::protocol`]) with the client. It is reachable
//! in-process (`--port sim:PART`, see [`crate::transport::sim`]) and over a pseudo-terminal
//! (`stm32boot sim PART --pty`, see [`pty`]).

pub mod chip;
pub mod pty;
pub mod state;
pub mod target;

pub use chip::Chip;
pub use target::{Mode, Target};

use crate::device::{Device, DeviceTable};
use crate::error::{Error, Result};
use crate::protocol::Command;
use std::path::PathBuf;

/// How to build a simulated chip: the part and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSpec {
    /// Part name as given (`stm32f411`).
    pub part: String,
    /// Load memory from this file at start and save it on close.
    pub state: Option<PathBuf>,
    /// Override of the protocol version (`version=0x33`); from 3.3 Get Checksum is listed.
    pub version: Option<u8>,
    /// Flash size override (`flash=256K`).
    pub flash_size: Option<u32>,
    /// Unique ID seed (`uid=...`): the same seed gives the same 96-bit ID.
    pub uid_seed: Option<String>,
    /// Report this PID instead of the part's (`pid=0x4FF`), to rehearse unknown parts.
    pub pid: Option<u16>,
}

impl SimSpec {
    /// Parse `PART[?key=value&...]` (what follows `sim:` in a port).
    pub fn parse(spec: &str) -> Result<SimSpec> {
        let (part, query) = match spec.split_once('?') {
            Some((p, q)) => (p, q),
            None => (spec, ""),
        };
        if part.is_empty() {
            return Err(Error::InvalidRequest(
                "sim: needs a part name, e.g. sim:stm32f411 (see `stm32boot devices`)".into(),
            ));
        }
        let mut out = SimSpec {
            part: part.to_string(),
            state: None,
            version: None,
            flash_size: None,
            uid_seed: None,
            pid: None,
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::InvalidRequest(format!("sim option '{kv}' needs a value (key=value)"))
            })?;
            match k {
                "state" => out.state = Some(PathBuf::from(v)),
                "version" => {
                    out.version = Some(crate::units::parse_small::<u8>(v).ok().ok_or_else(|| {
                        Error::InvalidRequest(format!(
                        "sim option version={v}: give a protocol version byte such as 0x31 or 0x33"
                    ))
                    })?)
                }
                "flash" => {
                    out.flash_size = Some(crate::units::parse_size(v).map_err(Error::InvalidRequest)?)
                }
                "uid" => out.uid_seed = Some(v.to_string()),
                "pid" => {
                    let pid = crate::units::parse_small::<u16>(v).ok().ok_or_else(|| {
                        Error::InvalidRequest(format!("sim option pid={v}: give a PID such as 0x4FF"))
                    })?;
                    out.pid = Some(pid);
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "unknown sim option '{other}': valid options are state, version, flash, uid, pid"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// The device this spec names, from `table`.
    pub fn device(&self, table: &DeviceTable) -> Result<Device> {
        let d = table.by_part(&self.part).ok_or_else(|| {
            Error::Device(format!(
                "no part named '{}' in the device table; `stm32boot devices` lists them",
                self.part
            ))
        })?;
        match self.flash_size {
            Some(size) => d.with_flash_size(size),
            None => Ok(d.clone()),
        }
    }

    /// Build the target, loading state if a state file exists.
    pub fn build(&self, table: &DeviceTable) -> Result<Target> {
        let device = self.device(table)?;
        let uid = uid_from_seed(self.uid_seed.as_deref().unwrap_or(&device.name));
        let mut chip = Chip::new(device, uid);
        if let Some(path) = &self.state {
            if path.exists() {
                state::load(&mut chip, path)?;
            }
        }
        let mut target = Target::new(chip);
        if let Some(v) = self.version {
            let mut cmds = target.chip().device().bootloader.commands.clone();
            let a1 = Command::GetChecksum.code();
            if v >= 0x33 && !cmds.contains(&a1) {
                cmds.push(a1);
            }
            if v < 0x33 {
                cmds.retain(|&c| c != a1);
            }
            target.set_bootloader(v, cmds);
        }
        if let Some(pid) = self.pid {
            target.set_pid(pid);
        }
        Ok(target)
    }
}

/// A deterministic 96-bit unique ID from a seed (FNV-1a stretched over 12 bytes).
pub fn uid_from_seed(seed: &str) -> [u8; 12] {
    let mut out = [0u8; 12];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, chunk) in out.chunks_mut(4).enumerate() {
        for b in seed.bytes().chain([i as u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        chunk.copy_from_slice(&(h as u32).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_options() {
        let s = SimSpec::parse("stm32f411?state=/tmp/x.sim&version=0x33&flash=256K")
            .expect("test setup");
        assert_eq!(s.part, "stm32f411");
        assert_eq!(s.state, Some(PathBuf::from("/tmp/x.sim")));
        assert_eq!(s.version, Some(0x33));
        assert_eq!(s.flash_size, Some(256 * 1024));
        let e = SimSpec::parse("stm32f411?colour=red")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour") && e.contains("state, version"), "{e}");
        assert!(SimSpec::parse("?state=x").is_err());
    }

    #[test]
    fn version_override_lists_get_checksum() {
        let t = DeviceTable::builtin().expect("test setup");
        let target = SimSpec::parse("stm32f411?version=0x33")
            .expect("test setup")
            .build(t)
            .expect("test setup");
        assert_eq!(target.chip().device().pid, 0x431);
        let s = SimSpec::parse("stm32nothing").expect("test setup");
        assert!(s.build(t).is_err());
    }
}
