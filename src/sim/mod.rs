//! The simulated target: a chip with its family's flash rules and a ROM bootloader that speaks
//! AN3155 from the device's side.
//!
//! It shares only the frame definitions ([`crate::protocol`]) with the client. It is reachable
//! in-process (`--port sim:PART`, see [`crate::transport::sim`]) and over a pseudo-terminal
//! (`stm32boot sim PART --pty`, see [`pty`]).
//!
//! The chip keeps its option bytes as stored and as loaded at the last reset ([`options`]): read
//! and write protection, the boot source and dual-bank boot follow the loaded values. Its wire
//! ([`wire`]) can echo like a one-wire adapter (`echo=1`) and, in-process, where the host's
//! baud rate and parity are known, loses what the ROM's auto-baud and 8E1 framing would.

pub mod chip;
pub mod endpoint;
pub mod modem;
pub mod options;
pub mod pty;
pub mod state;
pub mod target;
pub mod wire;

pub use chip::Chip;
pub use options::FlashBoot;
pub use target::{FaultKind, FaultOp, Mode, OpFault, Target};
pub use wire::{ControlLine, LinkFaults, PinDrive, Timing, Wire, WireConfig, Wiring};

use crate::device::{Device, DeviceTable};
use crate::error::{Error, Result};
use crate::link::LineSettings;
use crate::protocol::Command;
use crate::units::{parse_duration, parse_rate};
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
    /// Timing, latency, wiring, link faults and a half-duplex adapter's echo (`echo=1`).
    pub wire: WireConfig,
    /// A reset or power loss at a chosen operation (`reset_at=write:3`, `power_loss_at=erase:1@0.5`).
    pub op_fault: Option<OpFault>,
    /// NACK the Nth command (`nack_at=5`).
    pub nack_at: Option<u64>,
    /// How many commands in a row, from the Nth, are NACKed (`nack_count=4`: a burst).
    pub nack_count: u64,
    /// The application jumps to the bootloader when it receives this (`enter=STRING`).
    pub app_magic: Option<String>,
    /// Whether the in-process link waits in real time (`clock=real`) or runs on a virtual clock
    /// (`clock=virtual`). Real by default when anything takes time.
    pub realtime: Option<bool>,
}

/// Options `sim:` accepts, for error messages.
const OPTIONS: &str = "state, version, flash, uid, pid, timing, latency, send_timer, seed, drop, \
corrupt, cut_after, nack_at, nack_count, reset_at, power_loss_at, power_off, nrst, boot0, nrst_inverted, \
boot0_inverted, enter, clock, echo";

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
        let mut out = SimSpec::new(part);
        let bad =
            |k: &str, v: &str, e: String| Error::InvalidRequest(format!("sim option {k}={v}: {e}"));
        let mut nrst_line: Option<Option<ControlLine>> = None;
        let mut boot0_drive: Option<PinDrive> = None;
        let (mut nrst_inv, mut boot0_inv) = (false, false);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::InvalidRequest(format!("sim option '{kv}' needs a value (key=value)"))
            })?;
            match k {
                "state" => out.state = Some(PathBuf::from(v)),
                "version" => {
                    out.version =
                        Some(crate::units::parse_small::<u8>(v).ok().ok_or_else(|| {
                            Error::InvalidRequest(format!(
                        "sim option version={v}: give a protocol version byte such as 0x31 or 0x33"
                    ))
                        })?)
                }
                "flash" => {
                    out.flash_size =
                        Some(crate::units::parse_size(v).map_err(Error::InvalidRequest)?)
                }
                "uid" => out.uid_seed = Some(v.to_string()),
                "pid" => {
                    let pid = crate::units::parse_small::<u16>(v).ok().ok_or_else(|| {
                        Error::InvalidRequest(format!(
                            "sim option pid={v}: give a PID such as 0x4FF"
                        ))
                    })?;
                    out.pid = Some(pid);
                }
                "timing" => out.wire.timing = v.parse().map_err(|e| bad(k, v, e))?,
                "latency" => out.wire.latency = parse_duration(v).map_err(|e| bad(k, v, e))?,
                "send_timer" => {
                    out.wire.send_timer = parse_duration(v).map_err(|e| bad(k, v, e))?
                }
                "power_off" => out.wire.power_off = parse_duration(v).map_err(|e| bad(k, v, e))?,
                "seed" => {
                    out.wire.faults.seed = v
                        .parse()
                        .map_err(|_| bad(k, v, "give a whole number".into()))?
                }
                "drop" => out.wire.faults.drop = parse_rate(v).map_err(|e| bad(k, v, e))?,
                "corrupt" => out.wire.faults.corrupt = parse_rate(v).map_err(|e| bad(k, v, e))?,
                "cut_after" => {
                    out.wire.faults.cut_after = Some(
                        v.parse()
                            .map_err(|_| bad(k, v, "give a number of bytes".into()))?,
                    )
                }
                "nack_at" => {
                    out.nack_at = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad(k, v, "give a command number from 1".into()))?,
                    )
                }
                "nack_count" => {
                    out.nack_count = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(k, v, "give a number of commands from 1".into()))?
                }
                "reset_at" | "power_loss_at" => {
                    let kind = if k == "reset_at" {
                        FaultKind::Reset
                    } else {
                        FaultKind::PowerLoss
                    };
                    out.op_fault = Some(parse_op_fault(v, kind).map_err(|e| bad(k, v, e))?);
                }
                "nrst" => {
                    nrst_line = Some(match v {
                        "dtr" => Some(ControlLine::Dtr),
                        "rts" => Some(ControlLine::Rts),
                        "none" => None,
                        _ => return Err(bad(k, v, "use dtr, rts or none".into())),
                    })
                }
                "boot0" => {
                    boot0_drive = Some(match v {
                        "dtr" | "rts" => PinDrive::Line {
                            line: if v == "dtr" {
                                ControlLine::Dtr
                            } else {
                                ControlLine::Rts
                            },
                            inverted: false,
                        },
                        "high" => PinDrive::Fixed(true),
                        "low" => PinDrive::Fixed(false),
                        _ => return Err(bad(k, v, "use rts, dtr, high or low".into())),
                    })
                }
                "nrst_inverted" => nrst_inv = parse_bool(v).map_err(|e| bad(k, v, e))?,
                "boot0_inverted" => boot0_inv = parse_bool(v).map_err(|e| bad(k, v, e))?,
                "enter" => out.app_magic = Some(v.to_string()),
                "echo" => out.wire.echo = parse_bool(v).map_err(|e| bad(k, v, e))?,
                "clock" => {
                    out.realtime = Some(match v {
                        "real" => true,
                        "virtual" => false,
                        _ => return Err(bad(k, v, "use real or virtual".into())),
                    })
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "unknown sim option '{other}': valid options are {OPTIONS}"
                    )))
                }
            }
        }
        if let Some(line) = nrst_line {
            out.wire.wiring.nrst = match line {
                Some(line) => PinDrive::Line {
                    line,
                    inverted: false,
                },
                None => PinDrive::Fixed(true),
            };
        }
        if let Some(drive) = boot0_drive {
            out.wire.wiring.boot0 = drive;
        }
        out.wire.wiring.nrst = invert(out.wire.wiring.nrst, nrst_inv);
        out.wire.wiring.boot0 = invert(out.wire.wiring.boot0, boot0_inv);
        Ok(out)
    }

    /// A spec for `part` with every option at its default.
    pub fn new(part: &str) -> SimSpec {
        SimSpec {
            part: part.to_string(),
            state: None,
            version: None,
            flash_size: None,
            uid_seed: None,
            pid: None,
            wire: WireConfig::default(),
            op_fault: None,
            nack_at: None,
            nack_count: 1,
            app_magic: None,
            realtime: None,
        }
    }

    /// Whether an in-process link should wait in real time.
    pub fn realtime(&self) -> bool {
        self.realtime.unwrap_or(
            self.wire.timing != Timing::Fast
                || !self.wire.latency.is_zero()
                || !self.wire.send_timer.is_zero(),
        )
    }

    /// Build the chip and put it on its wire.
    pub fn build_wire(&self, table: &DeviceTable, line: LineSettings) -> Result<Wire> {
        Ok(Wire::new(self.build(table)?, self.wire, line))
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
        let mut running = None;
        if let Some(path) = &self.state {
            if path.exists() {
                running = state::load(&mut chip, path)?;
            }
        }
        let mut target = Target::new(chip);
        if let Some(saved) = running {
            target.resume(saved);
        }
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
        target.set_op_fault(self.op_fault);
        target.set_nack_at(self.nack_at, self.nack_count);
        target.set_app_magic(self.app_magic.as_ref().map(|m| m.as_bytes().to_vec()));
        Ok(target)
    }
}

fn invert(drive: PinDrive, inverted: bool) -> PinDrive {
    match drive {
        PinDrive::Line { line, .. } => PinDrive::Line { line, inverted },
        fixed => fixed,
    }
}

fn parse_bool(v: &str) -> std::result::Result<bool, String> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("use true or false".into()),
    }
}

/// `write:3`, `erase:1@0.5`: the operation, which one (from 1), and how much of it completes.
fn parse_op_fault(v: &str, kind: FaultKind) -> std::result::Result<OpFault, String> {
    let usage = "use OP:N[@FRACTION] with OP write or erase, e.g. write:3 or erase:1@0.5";
    let (head, fraction) = match v.split_once('@') {
        Some((h, f)) => (
            h,
            f.parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| format!("fraction '{f}' must be between 0 and 1"))?,
        ),
        None => (v, 0.5),
    };
    let (op, n) = head.split_once(':').ok_or_else(|| usage.to_string())?;
    let op = match op {
        "write" => FaultOp::Write,
        "erase" => FaultOp::Erase,
        _ => return Err(usage.into()),
    };
    let nth = n
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| usage.to_string())?;
    Ok(OpFault {
        op,
        nth,
        fraction,
        kind,
    })
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
        let s = SimSpec::parse(
            "stm32l476?timing=typical&latency=150ms&send_timer=20ms&seed=3&drop=0.1%&nack_at=4\
             &power_loss_at=erase:2@0.25&nrst=rts&boot0=dtr&boot0_inverted=1&enter=GO",
        )
        .expect("test setup");
        assert_eq!(s.wire.timing, Timing::Typical);
        assert_eq!(s.wire.latency, std::time::Duration::from_millis(150));
        assert_eq!(s.wire.faults.drop, 0.001);
        assert_eq!(
            s.op_fault,
            Some(OpFault {
                op: FaultOp::Erase,
                nth: 2,
                fraction: 0.25,
                kind: FaultKind::PowerLoss
            })
        );
        assert_eq!(
            s.wire.wiring.boot0,
            PinDrive::Line {
                line: ControlLine::Dtr,
                inverted: true
            }
        );
        assert!(s.realtime());
        for bad in [
            "stm32f411?timing=slow",
            "stm32f411?reset_at=read:1",
            "stm32f411?power_loss_at=write:0",
            "stm32f411?drop=3",
            "stm32f411?nrst=gpio4",
        ] {
            assert!(SimSpec::parse(bad).is_err(), "{bad}");
        }
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
