//! The ROM bootloader's side of AN3155, byte by byte.
//!
//! Input is fed one byte at a time, as the ROM reads its one-byte receive register; replies are
//! appended to an output buffer. The parser is strict like the silicon: a wrong complement or
//! checksum is NACKed, unknown or unlisted commands are NACKed, and after a NACK the next byte
//! starts a new command.

use super::chip::{Area, Chip};
use super::options::FlashBoot;
use super::state::Resumed;
use crate::device::Quirk;
use crate::protocol::{checksum, crc::stm32_crc_with, Command, ACK, NACK, SYNC};
use std::time::Duration;

/// What the simulated chip is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The ROM bootloader, waiting for 0x7F.
    BootloaderUnsynced,
    /// The ROM bootloader, synced and taking commands.
    Bootloader,
    /// The application (booted from flash, or after Go). It ignores AN3155 traffic; a magic
    /// string, if configured, makes it jump to the bootloader.
    Application {
        /// Where it started.
        entry: u32,
    },
    /// Booted from a flash with no valid vector table: the core locked up and ignores the UART.
    Lockup,
    /// No power.
    Off,
}

/// Flash or option-byte work a command caused, at the datasheet's typical and maximum figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Duration at typical figures.
    pub typical: Duration,
    /// Duration at maximum figures.
    pub max: Duration,
}

impl Work {
    fn add(&mut self, typical: Duration, max: Duration) {
        self.typical += typical;
        self.max += max;
    }

    /// Whether there is no work.
    pub fn is_zero(&self) -> bool {
        self.max.is_zero() && self.typical.is_zero()
    }
}

/// Which operation an injected fault fires at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A Write Memory into flash.
    Write,
    /// Any erase (page, bank, mass, and readout unprotect's mass erase).
    Erase,
}

/// What happens at the chosen operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A system reset (NRST or a watchdog): RAM survives; the chip boots as its pins say.
    Reset,
    /// Power lost: nothing answers until power returns, and RAM is lost.
    PowerLoss,
}

/// A fault at the `nth` operation of a kind (counted from 1 since the simulator started): the
/// operation is cut off after `fraction` of it (a block half programmed, some pages erased and
/// the current one partly), no reply is sent, and then `kind` happens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpFault {
    /// The kind of operation.
    pub op: FaultOp,
    /// Which one, from 1.
    pub nth: u64,
    /// How much of it completes, 0.0 to 1.0.
    pub fraction: f64,
    /// Reset or power loss.
    pub kind: FaultKind,
}

/// What happened inside the chip while it handled one byte, for the timing model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// Flash work done.
    pub work: Work,
    /// The reply was sent before the work (readout unprotect, option-byte writes).
    pub reply_first: bool,
    /// The chip (re)started: the ROM or application needs its start-up time before it listens.
    pub restarted: bool,
    /// An injected fault fired.
    pub fault: Option<FaultKind>,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    ReadAddr,
    ReadCount { addr: u32 },
    GoAddr,
    WriteAddr,
    WriteLen { addr: u32, area: Area },
    WriteData { addr: u32, area: Area },
    EraseCount,
    EraseGlobal,
    ErasePages,
    ExtCount,
    ExtSpecial { code: u16 },
    ExtPages,
    WpCount,
    WpCodes,
    CkAddr,
    CkSize { addr: u32 },
    CkPoly { addr: u32, words: u32 },
    CkInit { addr: u32, words: u32, poly: u32 },
    SpecialOp { extended: bool },
    SpecialLen { op: u16, extended: bool, packet: u8 },
    SpecialData { op: u16, extended: bool, packet: u8 },
}

#[derive(Debug)]
enum Rx {
    Command,
    Complement(u8),
    Field { step: Step, need: usize },
}

/// A simulated chip running its ROM bootloader.
pub struct Target {
    chip: Chip,
    mode: Mode,
    rx: Rx,
    buf: Vec<u8>,
    version: u8,
    commands: Vec<u8>,
    special_ops: Vec<u16>,
    pending_reset: bool,
    extra_ack_pending: bool,
    effects: Effects,
    commands_seen: u64,
    pid: u16,
    boot0_pin: bool,
    app_magic: Option<Vec<u8>>,
    app_seen: Vec<u8>,
    /// Bytes of the application console's current line.
    app_line: usize,
    boot_output: Vec<u8>,
    op_fault: Option<OpFault>,
    writes_seen: u64,
    erases_seen: u64,
    nack_at: Option<u64>,
    nack_count: u64,
    resumed: bool,
    booted_bank: Option<u8>,
    autobaud: Option<u32>,
}

impl Target {
    /// A chip that has just been reset into its bootloader.
    pub fn new(chip: Chip) -> Target {
        let spec = chip.device().bootloader.clone();
        let pid = chip.device().pid;
        Target {
            chip,
            mode: Mode::BootloaderUnsynced,
            rx: Rx::Command,
            buf: Vec::with_capacity(300),
            version: spec.version,
            commands: spec.commands,
            special_ops: Vec::new(),
            pending_reset: false,
            extra_ack_pending: false,
            effects: Effects::default(),
            commands_seen: 0,
            pid,
            boot0_pin: true,
            app_magic: None,
            app_line: 0,
            app_seen: Vec::new(),
            boot_output: Vec::new(),
            op_fault: None,
            writes_seen: 0,
            erases_seen: 0,
            nack_at: None,
            nack_count: 1,
            resumed: false,
            booted_bank: None,
            autobaud: None,
        }
    }

    /// Continue as saved, as a chip that stayed powered since the state was saved: what it was
    /// running, the bank it booted and the baud rate its bootloader had locked onto.
    pub fn resume(&mut self, saved: Resumed) {
        self.mode = saved.mode;
        self.booted_bank = match saved.mode {
            Mode::Application { .. } => saved.booted_bank,
            _ => None,
        };
        self.autobaud = match saved.mode {
            Mode::Bootloader => saved.autobaud,
            _ => None,
        };
        self.resumed = true;
    }

    /// The bank the running application was booted from by the last reset (1 or 2); `None`
    /// when the chip runs its bootloader or an application that Go started.
    pub fn booted_bank(&self) -> Option<u8> {
        self.booted_bank
    }

    /// The baud rate the bootloader's auto-baud measured on the first 0x7F since it started, if
    /// the wire knows the host's rate.
    pub fn autobaud(&self) -> Option<u32> {
        self.autobaud
    }

    /// Record the rate the auto-baud measured (the wire calls this when 0x7F reaches an unsynced
    /// bootloader).
    pub fn lock_autobaud(&mut self, baud: u32) {
        self.autobaud = Some(baud);
    }

    /// Whether the chip continues a saved run rather than starting from power-on.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// A string that makes the application jump to the bootloader, as field firmware does for
    /// remote updates.
    pub fn set_app_magic(&mut self, magic: Option<Vec<u8>>) {
        self.app_magic = magic.filter(|m| !m.is_empty());
    }

    /// Arm a fault at an operation.
    pub fn set_op_fault(&mut self, fault: Option<OpFault>) {
        self.op_fault = fault;
    }

    /// NACK the `n`th command (counted from 1 since the simulator started) and the `count - 1`
    /// commands after it: a burst of refusals, once.
    pub fn set_nack_at(&mut self, n: Option<u64>, count: u64) {
        self.nack_at = n;
        self.nack_count = count.max(1);
    }

    /// The level of the BOOT0 pin, sampled at the next reset.
    pub fn set_boot0_pin(&mut self, high: bool) {
        self.boot0_pin = high;
    }

    /// Override the protocol version and command list (`?version=0x33` adds Get Checksum).
    pub fn set_bootloader(&mut self, version: u8, commands: Vec<u8>) {
        self.version = version;
        self.commands = commands;
    }

    /// Report `pid` in Get ID instead of the part's own.
    pub fn set_pid(&mut self, pid: u16) {
        self.pid = pid;
    }

    /// Special (0x50/0x51) opcodes this bootloader implements.
    pub fn set_special_ops(&mut self, ops: Vec<u16>) {
        self.special_ops = ops;
    }

    /// The chip.
    pub fn chip(&self) -> &Chip {
        &self.chip
    }

    /// The chip, for tests that arrange memory directly.
    pub fn chip_mut(&mut self) -> &mut Chip {
        &mut self.chip
    }

    /// What the chip is running.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Commands the bootloader has started since power-on.
    pub fn commands_seen(&self) -> u64 {
        self.commands_seen
    }

    /// What the bytes fed since the last call did (for timing models).
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    /// Bytes the chip sends by itself after starting (the application's banner).
    pub fn take_boot_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.boot_output)
    }

    /// System reset: the chip boots the ROM bootloader (unsynced) or the application, as the
    /// BOOT0 pin and the part's boot option bits say.
    pub fn reset(&mut self) {
        self.chip.reset();
        self.rx = Rx::Command;
        self.buf.clear();
        self.pending_reset = false;
        self.extra_ack_pending = false;
        self.app_seen.clear();
        self.boot_output.clear();
        self.effects.restarted = true;
        self.booted_bank = None;
        self.autobaud = None;
        if self.chip.boots_system_memory(self.boot0_pin) {
            self.mode = Mode::BootloaderUnsynced;
            return;
        }
        match self.chip.flash_boot() {
            Some(boot) => self.boot_app(boot),
            None => self.mode = Mode::Lockup,
        }
    }

    /// Power removed.
    pub fn power_off(&mut self) {
        self.mode = Mode::Off;
        self.rx = Rx::Command;
        self.buf.clear();
        self.boot_output.clear();
        self.booted_bank = None;
        self.autobaud = None;
    }

    /// Power restored: RAM is lost, then the chip boots as after a reset.
    pub fn power_on(&mut self) {
        self.chip.power_cycle();
        self.reset();
    }

    fn start_app(&mut self, entry: u32) {
        self.mode = Mode::Application { entry };
        self.boot_output = format!(
            "{} application running from 0x{entry:08X}\r\n",
            self.chip.device().name
        )
        .into_bytes();
    }

    /// The application a reset booted from flash; the banner names bank 2 when it ran from
    /// there.
    fn boot_app(&mut self, boot: FlashBoot) {
        self.start_app(boot.entry);
        self.booted_bank = Some(boot.bank);
        if boot.bank == 2 {
            self.boot_output = format!(
                "{} application running from bank 2 (0x{:08X}), entry 0x{:08X}\r\n",
                self.chip.device().name,
                boot.base,
                boot.entry
            )
            .into_bytes();
        }
    }

    /// The application's console: it jumps to the ROM on its magic string and answers any
    /// other line with an error, as field firmware with a command console does.
    fn app_byte(&mut self, byte: u8, out: &mut Vec<u8>) {
        let Some(magic) = &self.app_magic else {
            return;
        };
        self.app_seen.push(byte);
        if self.app_seen.len() > magic.len() {
            let cut = self.app_seen.len() - magic.len();
            self.app_seen.drain(..cut);
        }
        if self.app_seen == *magic {
            // The firmware jumps to the ROM, which starts unsynced (and, at level 2, answers
            // only Get, Get Version and Get ID).
            self.app_seen.clear();
            self.app_line = 0;
            self.booted_bank = None;
            self.autobaud = None;
            self.mode = Mode::BootloaderUnsynced;
            self.rx = Rx::Command;
            self.effects.restarted = true;
        } else if matches!(byte, b'\r' | b'\n') {
            if self.app_line > 0 {
                out.extend_from_slice(b"ERROR unknown command\r\n");
            }
            self.app_line = 0;
        } else {
            self.app_line += 1;
        }
    }

    /// Count an operation and, if a fault is armed for it, return how much of it completes.
    fn fault_for(&mut self, op: FaultOp) -> Option<f64> {
        let n = match op {
            FaultOp::Write => {
                self.writes_seen += 1;
                self.writes_seen
            }
            FaultOp::Erase => {
                self.erases_seen += 1;
                self.erases_seen
            }
        };
        let f = self.op_fault?;
        if f.op != op || f.nth != n {
            return None;
        }
        Some(f.fraction)
    }

    /// The armed fault fires now: the current operation was cut short and nothing is sent.
    fn fire_fault(&mut self) {
        let Some(f) = self.op_fault.take() else {
            return;
        };
        self.effects.fault = Some(f.kind);
        match f.kind {
            FaultKind::Reset => self.reset(),
            FaultKind::PowerLoss => self.power_off(),
        }
    }

    fn has(&self, code: u8) -> bool {
        self.commands.contains(&code)
    }

    fn quirk(&self, q: Quirk) -> bool {
        self.chip.device().quirks.contains(&q)
    }

    /// Feed one received byte; replies go to `out`.
    pub fn feed(&mut self, byte: u8, out: &mut Vec<u8>) {
        match self.mode {
            Mode::Application { .. } => self.app_byte(byte, out),
            Mode::Lockup | Mode::Off => {}
            Mode::BootloaderUnsynced => {
                if byte == SYNC {
                    self.mode = Mode::Bootloader;
                    self.rx = Rx::Command;
                    out.push(ACK);
                    if self.quirk(Quirk::ExtraAck) {
                        self.extra_ack_pending = true;
                    }
                }
                // Anything else before 0x7F upsets auto-baud on real parts; here it is ignored.
            }
            Mode::Bootloader => self.feed_synced(byte, out),
        }
        if self.pending_reset {
            self.reset();
        }
    }

    fn feed_synced(&mut self, byte: u8, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.rx, Rx::Command) {
            Rx::Command => self.rx = Rx::Complement(byte),
            Rx::Complement(cmd) => {
                if byte != !cmd {
                    out.push(NACK);
                    return;
                }
                self.commands_seen += 1;
                if let Some(first) = self.nack_at {
                    if self.commands_seen >= first {
                        if self.commands_seen + 1 >= first + self.nack_count {
                            self.nack_at = None;
                        }
                        out.push(NACK);
                        return;
                    }
                }
                self.start_command(cmd, out);
            }
            Rx::Field { step, need } => {
                self.buf.push(byte);
                if self.buf.len() < need {
                    self.rx = Rx::Field { step, need };
                    return;
                }
                let field = std::mem::take(&mut self.buf);
                self.field_done(step, &field, out);
            }
        }
    }

    fn expect(&mut self, step: Step, need: usize) {
        self.buf.clear();
        self.rx = Rx::Field { step, need };
    }

    /// Whether read protection refuses `cmd`: level 1 leaves Get, Get Version, Get ID and
    /// Readout Unprotect; level 2 only the first three.
    fn refused_by_rdp(&self, cmd: u8) -> bool {
        let command = Command::from_code(cmd);
        match self.chip.rdp_level() {
            0 => false,
            1 => !command.is_some_and(Command::allowed_under_rdp),
            _ => !matches!(
                command,
                Some(Command::Get | Command::GetVersion | Command::GetId)
            ),
        }
    }

    fn start_command(&mut self, cmd: u8, out: &mut Vec<u8>) {
        if !self.has(cmd) {
            out.push(NACK);
            return;
        }
        if self.refused_by_rdp(cmd) {
            out.push(NACK);
            if self.quirk(Quirk::DoubleNack) {
                out.push(NACK);
            }
            return;
        }
        if std::mem::take(&mut self.extra_ack_pending) {
            out.push(ACK);
        }
        out.push(ACK);
        match cmd {
            0x00 => {
                out.push(self.commands.len() as u8);
                out.push(self.version);
                out.extend_from_slice(&self.commands);
                out.push(ACK);
            }
            0x01 => out.extend_from_slice(&[self.version, 0x00, 0x00, ACK]),
            0x02 => {
                let pid = self.pid.to_be_bytes();
                out.extend_from_slice(&[0x01, pid[0], pid[1], ACK]);
            }
            0x11 => self.expect(Step::ReadAddr, 5),
            0x21 => self.expect(Step::GoAddr, 5),
            0x31 => self.expect(Step::WriteAddr, 5),
            0x43 => self.expect(Step::EraseCount, 1),
            0x44 => self.expect(Step::ExtCount, 2),
            0x63 => self.expect(Step::WpCount, 1),
            0x73 => {
                self.chip.write_unprotect();
                self.option_work();
                out.push(ACK);
                self.pending_reset = true;
            }
            0x82 => {
                self.chip.set_rdp_level1();
                self.option_work();
                out.push(ACK);
                self.pending_reset = true;
            }
            0x92 => {
                // Both ACKs go out before the erase starts (OpenBootloader).
                out.push(ACK);
                self.effects.reply_first = true;
                let (typ, max) = self.chip.device().rules.mass_erase_ms;
                self.effects.work.add(ms(typ), ms(max));
                if let Some(fraction) = self.fault_for(FaultOp::Erase) {
                    self.cut_mass_erase(None, fraction);
                    self.fire_fault();
                    return;
                }
                self.chip.readout_unprotect();
                self.pending_reset = true;
            }
            0xA1 => self.expect(Step::CkAddr, 5),
            0x50 => self.expect(Step::SpecialOp { extended: false }, 3),
            0x51 => self.expect(Step::SpecialOp { extended: true }, 3),
            _ => {}
        }
    }

    fn addr_field(field: &[u8]) -> Option<u32> {
        crate::protocol::parse_u32_field(field)
    }

    fn bad_address(&mut self, out: &mut Vec<u8>) {
        if self.quirk(Quirk::SilentBadAddress) {
            return;
        }
        out.push(NACK);
    }

    fn field_done(&mut self, step: Step, f: &[u8], out: &mut Vec<u8>) {
        match step {
            Step::ReadAddr => match Self::addr_field(f) {
                Some(addr) if self.chip.read(addr, 1).is_some() => {
                    out.push(ACK);
                    self.expect(Step::ReadCount { addr }, 2);
                }
                Some(_) => self.bad_address(out),
                None => out.push(NACK),
            },
            Step::ReadCount { addr } => {
                if f[1] != !f[0] {
                    out.push(NACK);
                    return;
                }
                match self.chip.read(addr, usize::from(f[0]) + 1) {
                    Some(data) => {
                        out.push(ACK);
                        out.extend_from_slice(&data);
                    }
                    None => out.push(NACK),
                }
            }
            Step::GoAddr => match Self::addr_field(f) {
                Some(addr) if matches!(self.chip.area(addr, 8), Some(Area::Flash | Area::Ram)) => {
                    out.push(ACK);
                    let flash_base = self.chip.device().flash.start;
                    if addr == flash_base && self.chip.app_vectors().is_some() {
                        self.start_app(addr);
                        // The firmware starts and, after its own start-up, prints its banner.
                        self.effects.restarted = true;
                    } else {
                        self.mode = Mode::Application { entry: addr };
                    }
                }
                Some(_) => self.bad_address(out),
                None => out.push(NACK),
            },
            Step::WriteAddr => match Self::addr_field(f) {
                Some(addr) => match self.chip.write_target(addr, 1) {
                    Some(area) => {
                        out.push(ACK);
                        self.expect(Step::WriteLen { addr, area }, 1);
                    }
                    None => self.bad_address(out),
                },
                None => out.push(NACK),
            },
            Step::WriteLen { addr, area } => {
                let n = usize::from(f[0]) + 1;
                self.buf.push(f[0]);
                self.rx = Rx::Field {
                    step: Step::WriteData { addr, area },
                    need: n + 2,
                };
            }
            Step::WriteData { addr, area } => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                let data = &f[1..f.len() - 1];
                if self.chip.write_target(addr, data.len() as u64) != Some(area)
                    || !self.chip.accepts(area, addr, data)
                {
                    out.push(NACK);
                    return;
                }
                if area == Area::Flash {
                    let (typ, max) = self.chip.device().rules.program_us_per_byte;
                    let n = data.len() as u64;
                    self.effects.work.add(
                        Duration::from_micros(u64::from(typ) * n),
                        Duration::from_micros(u64::from(max) * n),
                    );
                    if let Some(fraction) = self.fault_for(FaultOp::Write) {
                        let unit = self.chip.device().rules.program_unit as usize;
                        let done = (data.len() as f64 * fraction.clamp(0.0, 1.0)) as usize;
                        let done = done / unit * unit;
                        if done > 0 {
                            self.chip.write(area, addr, &data[..done]);
                        }
                        self.fire_fault();
                        return;
                    }
                }
                let resets = self.chip.write(area, addr, data);
                if resets {
                    self.option_work();
                    self.pending_reset = true;
                }
                out.push(ACK);
            }
            Step::EraseCount => {
                if f[0] == 0xFF {
                    self.expect(Step::EraseGlobal, 1);
                } else {
                    let n = usize::from(f[0]) + 1;
                    self.buf.push(f[0]);
                    self.rx = Rx::Field {
                        step: Step::ErasePages,
                        need: n + 2,
                    };
                }
            }
            Step::EraseGlobal => {
                if f[0] == 0x00 {
                    self.mass_erase(None, out);
                } else {
                    // AN3155: FF followed by anything but 00 erases nothing but is ACKed.
                    out.push(ACK);
                }
            }
            Step::ErasePages => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                let pages: Vec<u16> = f[1..f.len() - 1].iter().map(|&p| u16::from(p)).collect();
                self.erase_pages(&pages, out);
            }
            Step::ExtCount => {
                let n = u16::from_be_bytes([f[0], f[1]]);
                if n >= 0xFFF0 {
                    self.buf.extend_from_slice(f);
                    self.rx = Rx::Field {
                        step: Step::ExtSpecial { code: n },
                        need: 3,
                    };
                } else {
                    self.buf.extend_from_slice(f);
                    self.rx = Rx::Field {
                        step: Step::ExtPages,
                        need: 2 + 2 * (usize::from(n) + 1) + 1,
                    };
                }
            }
            Step::ExtSpecial { code } => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                match code {
                    0xFFFF => self.mass_erase(None, out),
                    0xFFFE => self.mass_erase(Some(1), out),
                    0xFFFD => self.mass_erase(Some(2), out),
                    _ => out.push(NACK),
                }
            }
            Step::ExtPages => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                let pages: Vec<u16> = f[2..f.len() - 1]
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect();
                self.erase_pages(&pages, out);
            }
            Step::WpCount => {
                let n = usize::from(f[0]) + 1;
                self.buf.push(f[0]);
                self.rx = Rx::Field {
                    step: Step::WpCodes,
                    need: n + 2,
                };
            }
            Step::WpCodes => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                self.chip.write_protect(&f[1..f.len() - 1]);
                self.option_work();
                out.push(ACK);
                self.pending_reset = true;
            }
            Step::CkAddr => match Self::addr_field(f) {
                Some(addr) if self.chip.read(addr, 4).is_some() => {
                    out.push(ACK);
                    self.expect(Step::CkSize { addr }, 5);
                }
                _ => out.push(NACK),
            },
            Step::CkSize { addr } => match Self::addr_field(f) {
                Some(words) if words > 0 && self.chip.read(addr, words as usize * 4).is_some() => {
                    out.push(ACK);
                    self.expect(Step::CkPoly { addr, words }, 5);
                }
                _ => out.push(NACK),
            },
            Step::CkPoly { addr, words } => match Self::addr_field(f) {
                Some(poly) => {
                    out.push(ACK);
                    self.expect(Step::CkInit { addr, words, poly }, 5);
                }
                None => out.push(NACK),
            },
            Step::CkInit { addr, words, poly } => match Self::addr_field(f) {
                Some(init) => {
                    out.push(ACK);
                    let data = self.chip.read(addr, words as usize * 4).unwrap_or_default();
                    let crc = stm32_crc_with(&data, poly, init).to_be_bytes();
                    out.push(ACK);
                    out.extend_from_slice(&crc);
                    out.push(checksum(&crc));
                }
                None => out.push(NACK),
            },
            Step::SpecialOp { extended } => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                let op = u16::from_be_bytes([f[0], f[1]]);
                if !self.special_ops.contains(&op) {
                    out.push(NACK);
                    return;
                }
                out.push(ACK);
                self.expect(
                    Step::SpecialLen {
                        op,
                        extended,
                        packet: 1,
                    },
                    2,
                );
            }
            Step::SpecialLen {
                op,
                extended,
                packet,
            } => {
                let len = usize::from(u16::from_be_bytes([f[0], f[1]]));
                let limit = if packet == 1 { 128 } else { 1024 };
                if len > limit {
                    out.push(NACK);
                    return;
                }
                self.buf.extend_from_slice(f);
                self.rx = Rx::Field {
                    step: Step::SpecialData {
                        op,
                        extended,
                        packet,
                    },
                    need: 2 + len + 1,
                };
            }
            Step::SpecialData {
                op,
                extended,
                packet,
            } => {
                if checksum(f) != 0 {
                    out.push(NACK);
                    return;
                }
                out.push(ACK);
                if extended && packet == 1 {
                    self.expect(
                        Step::SpecialLen {
                            op,
                            extended,
                            packet: 2,
                        },
                        2,
                    );
                    return;
                }
                // Listed opcodes without a handler return empty packets (as OpenBootloader).
                if extended {
                    out.extend_from_slice(&[0x00, 0x00, ACK]);
                } else {
                    out.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, ACK]);
                }
            }
        }
    }

    fn erase_pages(&mut self, pages: &[u16], out: &mut Vec<u8>) {
        let d = self.chip.device();
        if pages.iter().any(|p| d.page_by_index(*p).is_none()) {
            out.push(NACK);
            return;
        }
        for p in pages {
            if let Some(page) = d.page_by_index(*p) {
                let (typ, max) = d.erase_ms(page.size).unwrap_or((0, 0));
                self.effects.work.add(ms(typ), ms(max));
            }
        }
        if let Some(fraction) = self.fault_for(FaultOp::Erase) {
            let total = pages.len() as f64 * fraction.clamp(0.0, 1.0);
            let whole = total as usize;
            self.chip.erase_pages(&pages[..whole.min(pages.len())]);
            if let Some(&current) = pages.get(whole) {
                self.chip
                    .erase_page_partially(current, total - whole as f64);
            }
            self.fire_fault();
            return;
        }
        self.chip.erase_pages(pages);
        out.push(ACK);
    }

    fn mass_erase(&mut self, bank: Option<u8>, out: &mut Vec<u8>) {
        let bank_ok = bank.is_none_or(|b| b <= self.chip.device().banks);
        if !self.chip.device().mass_erase || !bank_ok {
            out.push(NACK);
            return;
        }
        let (typ, max) = self.chip.device().rules.mass_erase_ms;
        self.effects.work.add(ms(typ), ms(max));
        if let Some(fraction) = self.fault_for(FaultOp::Erase) {
            self.cut_mass_erase(bank, fraction);
            self.fire_fault();
            return;
        }
        self.chip.erase_bank(bank);
        out.push(ACK);
    }

    /// A mass or bank erase cut short: the first `fraction` of the pages are erased.
    fn cut_mass_erase(&mut self, bank: Option<u8>, fraction: f64) {
        let pages: Vec<u16> = self
            .chip
            .device()
            .pages
            .iter()
            .filter(|p| bank.is_none_or(|b| p.bank == b))
            .map(|p| p.index)
            .collect();
        let total = pages.len() as f64 * fraction.clamp(0.0, 1.0);
        let whole = (total as usize).min(pages.len());
        self.chip.erase_pages(&pages[..whole]);
        if let Some(&current) = pages.get(whole) {
            self.chip
                .erase_page_partially(current, total - whole as f64);
        }
    }

    /// Option-byte programming: the reply goes first, then the work, then a reset.
    fn option_work(&mut self) {
        self.effects.reply_first = true;
        self.effects.work.add(ms(20), ms(50));
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceTable;
    use crate::sim::SimSpec;

    fn target(spec: &str) -> Target {
        SimSpec::parse(spec)
            .expect("test setup")
            .build(DeviceTable::builtin().expect("test setup"))
            .expect("test setup")
    }

    fn hex(bytes: &[u8]) -> String {
        let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        format!("[{}]", parts.join(" "))
    }

    fn send(t: &mut Target, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            t.feed(b, &mut out);
        }
        out
    }

    /// Feed each host phase and check the device's exact answer to it.
    fn talk(t: &mut Target, steps: &[(&[u8], &[u8])]) {
        for (i, (host, device)) in steps.iter().enumerate() {
            let got = send(t, host);
            assert_eq!(
                hex(&got),
                hex(device),
                "step {i}: after host sent {}",
                hex(host)
            );
        }
    }

    fn synced(spec: &str) -> Target {
        let mut t = target(spec);
        talk(&mut t, &[(&[0x7F], &[0x79])]);
        t
    }

    const GET_F411: [u8; 15] = [
        0x79, 0x0B, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92, 0x79,
    ];
    const GET_ID_F411: [u8; 5] = [0x79, 0x01, 0x04, 0x31, 0x79];

    #[test]
    fn first_7f_is_acked_and_earlier_bytes_ignored() {
        let mut t = target("stm32f411");
        assert_eq!(t.mode(), Mode::BootloaderUnsynced);
        talk(
            &mut t,
            &[(&[0x00, 0xFF, 0x02, 0xFD], &[]), (&[0x7F], &[0x79])],
        );
        assert_eq!(t.mode(), Mode::Bootloader);
    }

    #[test]
    fn pair_7f_7f_after_sync_is_nacked() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x7F], &[]),
                (&[0x7F], &[0x1F]),
                (&[0x00, 0xFF], &GET_F411),
            ],
        );
        assert_eq!(t.mode(), Mode::Bootloader);
    }

    #[test]
    fn wrong_complement_is_nacked() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x00, 0xFE], &[0x1F]),
                (&[0x11, 0x11], &[0x1F]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
    }

    #[test]
    fn unknown_opcodes_are_nacked() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x32, 0xCD], &[0x1F]),
                (&[0x03, 0xFC], &[0x1F]),
                (&[0x50, 0xAF], &[0x1F]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
    }

    #[test]
    fn get_checksum_only_when_listed() {
        let mut t = synced("stm32f411");
        talk(&mut t, &[(&[0xA1, 0x5E], &[0x1F])]);
        let mut t = synced("stm32f411?version=0x33");
        talk(
            &mut t,
            &[
                (
                    &[0x00, 0xFF],
                    &[
                        0x79, 0x0C, 0x33, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73,
                        0x82, 0x92, 0xA1, 0x79,
                    ],
                ),
                (&[0x01, 0xFE], &[0x79, 0x33, 0x00, 0x00, 0x79]),
                (&[0xA1, 0x5E], &[0x79]),
            ],
        );
    }

    #[test]
    fn get_get_version_get_id() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x00, 0xFF], &GET_F411),
                (&[0x01, 0xFE], &[0x79, 0x31, 0x00, 0x00, 0x79]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
        let mut t = synced("stm32l476");
        talk(&mut t, &[(&[0x02, 0xFD], &[0x79, 0x01, 0x04, 0x15, 0x79])]);
    }

    #[test]
    fn read_memory_address_checks() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                // Bad address checksum.
                (&[0x11, 0xEE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x09], &[0x1F]),
                // The bootloader's own RAM.
                (&[0x11, 0xEE], &[0x79]),
                (&[0x20, 0x00, 0x00, 0x00, 0x20], &[0x1F]),
                // User RAM above it is readable.
                (&[0x11, 0xEE], &[0x79]),
                (&[0x20, 0x00, 0x30, 0x00, 0x10], &[0x79]),
                (&[0x00, 0xFF], &[0x79, 0x00]),
                // Past the end of flash: accepted address, refused count.
                (&[0x11, 0xEE], &[0x79]),
                (&[0x08, 0x07, 0xFF, 0xFF, 0x0F], &[0x79]),
                (&[0x01, 0xFE], &[0x1F]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
    }

    #[test]
    fn read_memory_returns_n_plus_1_bytes_and_no_trailing_ack() {
        let mut t = synced("stm32f411");
        t.chip_mut()
            .write(Area::Flash, 0x0800_0000, &[0x01, 0x02, 0x03, 0x04]);
        talk(
            &mut t,
            &[
                (&[0x11, 0xEE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x03, 0xFC], &[0x79, 0x01, 0x02, 0x03, 0x04]),
                // Count whose complement is wrong.
                (&[0x11, 0xEE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x03, 0xFD], &[0x1F]),
            ],
        );
        talk(
            &mut t,
            &[
                (&[0x11, 0xEE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
            ],
        );
        let mut want = vec![0x79, 0x01, 0x02, 0x03, 0x04];
        want.resize(1 + 256, 0xFF);
        assert_eq!(hex(&send(&mut t, &[0xFF, 0x00])), hex(&want));
    }

    #[test]
    fn write_memory_has_no_ack_after_n() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&[0x08, 0x00, 0x01, 0x00, 0x09], &[0x79]),
                (&[0x03], &[]),
                (&[0xDE, 0xAD, 0xBE, 0xEF], &[]),
                (&[0x21], &[0x79]),
            ],
        );
        assert_eq!(
            t.chip().peek(0x0800_0100, 4).expect("test setup"),
            vec![0xDE, 0xAD, 0xBE, 0xEF]
        );
        assert_eq!(t.chip().program_stats(), (1, 0));
    }

    #[test]
    fn write_memory_bad_checksum_writes_nothing() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&[0x08, 0x00, 0x01, 0x00, 0x09], &[0x79]),
                (&[0x03, 0xDE, 0xAD, 0xBE, 0xEF, 0x22], &[0x1F]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
        assert_eq!(
            t.chip().peek(0x0800_0100, 4).expect("test setup"),
            vec![0xFF; 4]
        );
        assert_eq!(t.chip().program_stats(), (0, 0));
    }

    #[test]
    fn write_memory_refused_addresses() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                // System memory is read-only.
                (&[0x31, 0xCE], &[0x79]),
                (&[0x1F, 0xFF, 0x00, 0x00, 0xE0], &[0x1F]),
                // The bootloader's RAM.
                (&[0x31, 0xCE], &[0x79]),
                (&[0x20, 0x00, 0x00, 0x00, 0x20], &[0x1F]),
                // Option bytes other than from their base.
                (&[0x31, 0xCE], &[0x79]),
                (&[0x1F, 0xFF, 0xC0, 0x08, 0x28], &[0x1F]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
        assert_eq!(t.mode(), Mode::Bootloader);
    }

    #[test]
    fn voltage_range_register_write_and_read() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&[0xFF, 0xFF, 0x00, 0x00, 0x00], &[0x79]),
                (&[0x03, 0x03, 0xFF, 0xFF, 0xFF, 0xFF], &[0x79]),
                (&[0x11, 0xEE], &[0x79]),
                (&[0xFF, 0xFF, 0x00, 0x00, 0x00], &[0x79]),
                (&[0x03, 0xFC], &[0x79, 0x03, 0xFF, 0xFF, 0xFF]),
            ],
        );
    }

    #[test]
    fn voltage_range_register_rejects_non_ff_upper_bytes() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&[0xFF, 0xFF, 0x00, 0x00, 0x00], &[0x79]),
                (&[0x03, 0x03, 0x00, 0xFF, 0xFF, 0x00], &[0x1F]),
            ],
        );
    }

    #[test]
    fn option_byte_write_resets_the_device() {
        let mut t = synced("stm32f411");
        // Factory option bytes with nWRP0 cleared: sector 0 write-protected.
        let ob = [
            0xEC, 0xAA, 0x13, 0x55, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x0F, 0x01, 0xF0, 0xFF, 0xFF,
            0xFF, 0xFF,
        ];
        let mut frame = vec![0x0F];
        frame.extend_from_slice(&ob);
        frame.push(0x0F);
        talk(
            &mut t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&[0x1F, 0xFF, 0xC0, 0x00, 0x20], &[0x79]),
                (&frame, &[0x79]),
            ],
        );
        assert_eq!(t.mode(), Mode::BootloaderUnsynced);
        assert_eq!(
            t.chip().peek(0x1FFF_C000, 16).expect("test setup"),
            ob.to_vec()
        );
        assert!(t.chip().is_write_protected(0x0800_0000));
        assert!(!t.chip().is_write_protected(0x0800_4000));
        talk(&mut t, &[(&[0x02, 0xFD], &[]), (&[0x7F], &[0x79])]);
    }

    #[test]
    fn extended_erase_pages() {
        let mut t = synced("stm32f411");
        for addr in [0x0800_0000, 0x0800_4000, 0x0800_8000, 0x0800_C000] {
            t.chip_mut().write(Area::Flash, addr, &[0; 4]);
        }
        talk(
            &mut t,
            &[
                (&[0x44, 0xBB], &[0x79]),
                (
                    &[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x01],
                    &[0x79],
                ),
            ],
        );
        assert_eq!(t.chip().erase_counts(), &[1, 1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(
            t.chip().peek(0x0800_8000, 4).expect("test setup"),
            vec![0xFF; 4]
        );
        assert_eq!(
            t.chip().peek(0x0800_C000, 4).expect("test setup"),
            vec![0x00; 4]
        );
    }

    #[test]
    fn extended_erase_bad_checksum_or_page_erases_nothing() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x44, 0xBB], &[0x79]),
                (&[0x00, 0x00, 0x00, 0x00, 0x01], &[0x1F]),
                // Page 8 does not exist on a 512 KiB F411 (sectors 0-7).
                (&[0x44, 0xBB], &[0x79]),
                (&[0x00, 0x01, 0x00, 0x00, 0x00, 0x08, 0x09], &[0x1F]),
            ],
        );
        assert_eq!(t.chip().erase_counts(), &[0; 8]);
    }

    #[test]
    fn extended_erase_mass_and_bank1() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x44, 0xBB], &[0x79]),
                (&[0xFF, 0xFF, 0x00], &[0x79]),
                (&[0x44, 0xBB], &[0x79]),
                (&[0xFF, 0xFE, 0x01], &[0x79]),
            ],
        );
        assert_eq!(t.chip().erase_counts(), &[2; 8]);
    }

    #[test]
    fn extended_erase_bank2_on_dual_bank_l476() {
        let mut t = synced("stm32l476");
        t.chip_mut().write(Area::Flash, 0x0800_0000, &[0; 8]);
        t.chip_mut().write(Area::Flash, 0x0808_0000, &[0; 8]);
        talk(
            &mut t,
            &[(&[0x44, 0xBB], &[0x79]), (&[0xFF, 0xFD, 0x02], &[0x79])],
        );
        let counts = t.chip().erase_counts();
        assert_eq!(counts.len(), 512);
        assert!(counts[..256].iter().all(|&c| c == 0));
        assert!(counts[256..].iter().all(|&c| c == 1));
        assert_eq!(
            t.chip().peek(0x0800_0000, 8).expect("test setup"),
            vec![0; 8]
        );
        assert_eq!(
            t.chip().peek(0x0808_0000, 8).expect("test setup"),
            vec![0xFF; 8]
        );
        // Global numbering: page 256 is the first page of bank 2.
        talk(
            &mut t,
            &[
                (&[0x44, 0xBB], &[0x79]),
                (&[0x00, 0x00, 0x01, 0x00, 0x01], &[0x79]),
            ],
        );
        assert_eq!(t.chip().erase_counts()[256], 2);
        assert_eq!(t.chip().erase_counts()[0], 0);
    }

    #[test]
    fn fresh_l476_has_no_write_protection() {
        let mut t = synced("stm32l476");
        assert!(!t.chip().is_write_protected(0x0807_F800), "page 255");
        assert!(!t.chip().is_write_protected(0x080F_F800), "page 511");
        t.chip_mut().write(Area::Flash, 0x080F_F800, &[0; 8]);
        assert_eq!(
            t.chip().peek(0x080F_F800, 8).expect("test setup"),
            vec![0; 8]
        );
        talk(
            &mut t,
            &[(&[0x44, 0xBB], &[0x79]), (&[0xFF, 0xFF, 0x00], &[0x79])],
        );
        assert_eq!(t.chip().erase_counts(), &[1; 512]);
        assert_eq!(
            t.chip().peek(0x080F_F800, 8).expect("test setup"),
            vec![0xFF; 8]
        );
    }

    #[test]
    fn extended_erase_reserved_codes_are_nacked() {
        let mut t = synced("stm32f411");
        for lo in 0xF0..=0xFCu8 {
            talk(
                &mut t,
                &[(&[0x44, 0xBB], &[0x79]), (&[0xFF, lo, 0xFF ^ lo], &[0x1F])],
            );
        }
        assert_eq!(t.chip().erase_counts(), &[0; 8]);
        talk(&mut t, &[(&[0x02, 0xFD], &GET_ID_F411)]);
    }

    #[test]
    fn legacy_erase_is_not_listed_on_f411() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[(&[0x43, 0xBC], &[0x1F]), (&[0x02, 0xFD], &GET_ID_F411)],
        );
    }

    #[test]
    fn legacy_erase_when_listed() {
        let mut t = synced("stm32f411");
        t.set_bootloader(
            0x22,
            vec![
                0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x63, 0x73, 0x82, 0x92,
            ],
        );
        talk(
            &mut t,
            &[
                (&[0x44, 0xBB], &[0x1F]),
                (&[0x43, 0xBC], &[0x79]),
                (&[0x02, 0x00, 0x01, 0x02, 0x01], &[0x79]),
            ],
        );
        assert_eq!(t.chip().erase_counts(), &[1, 1, 1, 0, 0, 0, 0, 0]);
        // FF followed by anything but 00 erases nothing, yet is ACKed.
        talk(
            &mut t,
            &[(&[0x43, 0xBC], &[0x79]), (&[0xFF, 0x01], &[0x79])],
        );
        assert_eq!(t.chip().erase_counts(), &[1, 1, 1, 0, 0, 0, 0, 0]);
        talk(
            &mut t,
            &[(&[0x43, 0xBC], &[0x79]), (&[0xFF, 0x00], &[0x79])],
        );
        assert_eq!(t.chip().erase_counts(), &[2, 2, 2, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn get_checksum_of_0x12345678() {
        let mut t = synced("stm32l476?version=0x33");
        talk(
            &mut t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x03, 0x78, 0x56, 0x34, 0x12, 0x0B], &[0x79]),
                (&[0xA1, 0x5E], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x00, 0x00, 0x00, 0x01, 0x01], &[0x79]),
                (&[0x04, 0xC1, 0x1D, 0xB7, 0x6F], &[0x79]),
                (
                    &[0xFF, 0xFF, 0xFF, 0xFF, 0x00],
                    &[0x79, 0x79, 0xDF, 0x8A, 0x8A, 0x2B, 0xF4],
                ),
            ],
        );
    }

    #[test]
    fn get_checksum_of_erased_flash_and_bad_sizes() {
        let mut t = synced("stm32l476?version=0x33");
        talk(
            &mut t,
            &[
                // 256 erased words: D000A3E2.
                (&[0xA1, 0x5E], &[0x79]),
                (&[0x08, 0x00, 0x10, 0x00, 0x18], &[0x79]),
                (&[0x00, 0x00, 0x01, 0x00, 0x01], &[0x79]),
                (&[0x04, 0xC1, 0x1D, 0xB7, 0x6F], &[0x79]),
                (
                    &[0xFF, 0xFF, 0xFF, 0xFF, 0x00],
                    &[0x79, 0x79, 0xD0, 0x00, 0xA3, 0xE2, 0x91],
                ),
                // Size 0.
                (&[0xA1, 0x5E], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x00, 0x00, 0x00, 0x00, 0x00], &[0x1F]),
                // One word past the end of the 1 MiB flash.
                (&[0xA1, 0x5E], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x00, 0x04, 0x00, 0x01, 0x05], &[0x1F]),
                (&[0x02, 0xFD], &[0x79, 0x01, 0x04, 0x15, 0x79]),
            ],
        );
    }

    #[test]
    fn readout_protect_then_unprotect() {
        let mut t = synced("stm32f411");
        t.chip_mut()
            .write(Area::Flash, 0x0800_0000, &[0x12, 0x34, 0x56, 0x78]);
        talk(&mut t, &[(&[0x82, 0x7D], &[0x79, 0x79])]);
        assert_eq!(t.mode(), Mode::BootloaderUnsynced);
        assert_eq!(t.chip().rdp_level(), 1);
        talk(&mut t, &[(&[0x7F], &[0x79])]);
        for cmd in [0x11u8, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82] {
            talk(&mut t, &[(&[cmd, !cmd], &[0x1F])]);
        }
        talk(
            &mut t,
            &[
                (&[0x00, 0xFF], &GET_F411),
                (&[0x01, 0xFE], &[0x79, 0x31, 0x00, 0x00, 0x79]),
                (&[0x02, 0xFD], &GET_ID_F411),
            ],
        );
        assert_eq!(
            t.chip().peek(0x0800_0000, 4).expect("test setup"),
            vec![0x12, 0x34, 0x56, 0x78]
        );
        talk(&mut t, &[(&[0x92, 0x6D], &[0x79, 0x79])]);
        assert_eq!(t.mode(), Mode::BootloaderUnsynced);
        assert_eq!(t.chip().rdp_level(), 0);
        let size = t.chip().device().flash.len() as usize;
        assert!(t
            .chip()
            .peek(0x0800_0000, size)
            .expect("test setup")
            .iter()
            .all(|&b| b == 0xFF));
        talk(
            &mut t,
            &[
                (&[0x7F], &[0x79]),
                (&[0x11, 0xEE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
                (&[0x03, 0xFC], &[0x79, 0xFF, 0xFF, 0xFF, 0xFF]),
            ],
        );
    }

    #[test]
    fn write_protect_and_unprotect_reset_the_device() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x63, 0x9C], &[0x79]),
                (&[0x01, 0x00, 0x01, 0x00], &[0x79]),
            ],
        );
        assert_eq!(t.mode(), Mode::BootloaderUnsynced);
        assert_eq!(
            t.chip().peek(0x1FFF_C008, 4).expect("test setup"),
            vec![0xFC, 0x0F, 0x03, 0xF0]
        );
        assert!(t.chip().is_write_protected(0x0800_0000));
        assert!(t.chip().is_write_protected(0x0800_4000));
        assert!(!t.chip().is_write_protected(0x0800_8000));
        talk(
            &mut t,
            &[(&[0x7F], &[0x79]), (&[0x73, 0x8C], &[0x79, 0x79])],
        );
        assert_eq!(t.mode(), Mode::BootloaderUnsynced);
        assert!(!t.chip().is_write_protected(0x0800_0000));
        talk(&mut t, &[(&[0x7F], &[0x79])]);
    }

    #[test]
    fn go_to_flash_leaves_the_bootloader() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x21, 0xDE], &[0x79]),
                (&[0x08, 0x00, 0x00, 0x00, 0x08], &[0x79]),
            ],
        );
        assert_eq!(t.mode(), Mode::Application { entry: 0x0800_0000 });
        talk(
            &mut t,
            &[(&[0x7F], &[]), (&[0x00, 0xFF], &[]), (&[0x7F, 0x7F], &[])],
        );
        assert_eq!(t.mode(), Mode::Application { entry: 0x0800_0000 });
    }

    #[test]
    fn go_refuses_option_bytes_system_memory_and_bootloader_ram() {
        let mut t = synced("stm32f411");
        talk(
            &mut t,
            &[
                (&[0x21, 0xDE], &[0x79]),
                (&[0x1F, 0xFF, 0xC0, 0x00, 0x20], &[0x1F]),
                (&[0x21, 0xDE], &[0x79]),
                (&[0x1F, 0xFF, 0x00, 0x00, 0xE0], &[0x1F]),
                (&[0x21, 0xDE], &[0x79]),
                (&[0x20, 0x00, 0x00, 0x00, 0x20], &[0x1F]),
            ],
        );
        assert_eq!(t.mode(), Mode::Bootloader);
        talk(
            &mut t,
            &[
                (&[0x21, 0xDE], &[0x79]),
                (&[0x20, 0x00, 0x40, 0x00, 0x60], &[0x79]),
            ],
        );
        assert_eq!(t.mode(), Mode::Application { entry: 0x2000_4000 });
    }

    #[test]
    fn special_and_extended_special_when_listed() {
        let mut t = synced("stm32f411");
        let mut codes = t.chip().device().bootloader.commands.clone();
        codes.extend([0x50, 0x51]);
        t.set_bootloader(0x31, codes);
        t.set_special_ops(vec![0x0082]);
        talk(
            &mut t,
            &[
                (&[0x50, 0xAF], &[0x79]),
                (&[0x12, 0x34, 0x26], &[0x1F]),
                (&[0x50, 0xAF], &[0x79]),
                (&[0x00, 0x82, 0x82], &[0x79]),
                (
                    &[0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF, 0x26],
                    &[0x79, 0x00, 0x00, 0x00, 0x00, 0x79],
                ),
                (&[0x51, 0xAE], &[0x79]),
                (&[0x00, 0x82, 0x82], &[0x79]),
                (&[0x00, 0x01, 0x11, 0x10], &[0x79]),
                (&[0x00, 0x02, 0x22, 0x33, 0x13], &[0x79, 0x00, 0x00, 0x79]),
            ],
        );
    }

    /// A Write Memory data phase: N - 1, the data, the checksum.
    fn data_frame(data: &[u8]) -> Vec<u8> {
        let mut f = vec![(data.len() - 1) as u8];
        f.extend_from_slice(data);
        f.push(checksum(&f));
        f
    }

    /// Write the option-byte window at `base` through the bootloader; the chip resets.
    fn write_options(t: &mut Target, base: u32, bytes: &[u8]) {
        let addr = crate::protocol::u32_field(base);
        talk(
            t,
            &[
                (&[0x31, 0xCE], &[0x79]),
                (&addr, &[0x79]),
                (&data_frame(bytes), &[0x79]),
            ],
        );
    }

    /// A vector table: stack at 0x20004000, reset handler `entry` (Thumb).
    fn vectors(entry: u32) -> Vec<u8> {
        let mut v = 0x2000_4000u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(entry | 1).to_le_bytes());
        v
    }

    #[test]
    fn level_2_boots_flash_and_the_rom_answers_only_get_version_and_id() {
        let mut t = synced("stm32l476");
        let mut ob = t.chip().peek(0x1FFF_7800, 40).expect("test setup");
        ob[0] = 0xCC;
        ob[4] = 0x33;
        write_options(&mut t, 0x1FFF_7800, &ob);
        // BOOT0 is high, yet level 2 boots the (blank) flash: the core locks up.
        assert_eq!(t.mode(), Mode::Lockup);
        assert_eq!(t.chip().rdp_level(), 2);
        talk(&mut t, &[(&[0x7F], &[])]);
        // Firmware that jumps to the ROM on a magic string.
        t.chip_mut()
            .write(Area::Flash, 0x0800_0000, &vectors(0x0800_0100));
        t.set_app_magic(Some(b"BOOT".to_vec()));
        t.reset();
        assert_eq!(t.mode(), Mode::Application { entry: 0x0800_0100 });
        talk(&mut t, &[(b"HELP\r", b"ERROR unknown command\r\n")]);
        talk(&mut t, &[(b"BOOT", &[]), (&[0x7F], &[0x79])]);
        talk(
            &mut t,
            &[
                (&[0x01, 0xFE], &[0x79, 0x31, 0x00, 0x00, 0x79]),
                (&[0x02, 0xFD], &[0x79, 0x01, 0x04, 0x15, 0x79]),
            ],
        );
        for cmd in [0x11u8, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92] {
            talk(&mut t, &[(&[cmd, !cmd], &[0x1F])]);
        }
        assert_eq!(t.mode(), Mode::Bootloader);
    }

    #[test]
    fn level_1_still_takes_readout_unprotect() {
        let mut t = synced("stm32f103xb");
        // RDP A5 with a broken complement loads as FF: level 1.
        let mut ob = t.chip().peek(0x1FFF_F800, 16).expect("test setup");
        ob[1] = 0x00;
        write_options(&mut t, 0x1FFF_F800, &ob);
        assert_eq!(t.chip().rdp_level(), 1);
        talk(
            &mut t,
            &[
                (&[0x7F], &[0x79]),
                (&[0x11, 0xEE], &[0x1F]),
                (&[0x92, 0x6D], &[0x79, 0x79]),
            ],
        );
        assert_eq!(t.chip().rdp_level(), 0);
    }

    #[test]
    fn bank_2_boot_is_announced_and_recorded() {
        let mut t = synced("stm32l072");
        // An image linked for the flash base in bank 2 (0x08018000), bank 1 blank.
        t.chip_mut()
            .write(Area::Flash, 0x0801_8000, &vectors(0x0800_0200));
        let mut ob = t.chip().peek(0x1FF8_0000, 32).expect("test setup");
        ob[4] |= 0x80; // BFB2
        ob[6] &= !0x80;
        write_options(&mut t, 0x1FF8_0000, &ob);
        assert_eq!(t.mode(), Mode::BootloaderUnsynced, "BOOT0 is high");
        t.set_boot0_pin(false);
        t.reset();
        assert_eq!(t.mode(), Mode::Application { entry: 0x0800_0200 });
        assert_eq!(t.booted_bank(), Some(2));
        let banner = String::from_utf8(t.take_boot_output()).expect("test setup");
        assert_eq!(
            banner,
            "STM32L07x/L08x application running from bank 2 (0x08018000), entry 0x08000200\r\n"
        );
        // Go starts an application without a boot.
        t.set_boot0_pin(true);
        t.reset();
        talk(
            &mut t,
            &[
                (&[0x7F], &[0x79]),
                (&[0x21, 0xDE], &[0x79]),
                (&[0x08, 0x01, 0x80, 0x00, 0x89], &[0x79]),
            ],
        );
        assert_eq!(t.booted_bank(), None);
    }
}
