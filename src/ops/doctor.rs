//! `doctor`: a checklist for a link and a chip that will not cooperate. It probes the raw link
//! first (does 0x7F get an answer, at which baud rate and parity, does every byte come back as
//! an echo, is an application talking instead of the bootloader), then identifies the chip and
//! reads the settings that make writes fail: read protection, write protection, bank mode and
//! the boot option bits.

use crate::device::DeviceTable;
use crate::error::{Error, Result};
use crate::link::{LineSettings, Link, LinkError, Parity};
use crate::ops::bank;
use crate::ops::connect::{connect, ConnectOptions, Connection};
use crate::ops::option_bytes::{self, page_runs, write_protected_pages, BootSource};
use crate::ops::progress::Progress;
use crate::protocol::{ACK, NACK, SYNC};
use crate::session::{Session, Timeouts};
use std::time::Duration;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Works, but worth knowing (and often the cause of a failure).
    Warn,
    /// Stops the bootloader from working over this link.
    Fail,
    /// Facts without a verdict.
    Info,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, where something is wrong.
    pub fix: Option<String>,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix,
    }
}

/// What came back for one 0x7F.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// ACK: the bootloader synced.
    Ack,
    /// NACK: the bootloader was already synced.
    Nack,
    /// Readable text: an application is running.
    Text(String),
    /// Bytes that are neither.
    Garbage(Vec<u8>),
    /// Nothing.
    Silence,
}

/// One probe: what came back, and whether our own byte came back first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Our 0x7F came back before anything else.
    pub echo: bool,
    /// The rest.
    pub answer: Answer,
}

/// Classify the bytes that came back after one 0x7F.
pub fn classify(bytes: &[u8]) -> Probe {
    let (echo, rest) = match bytes.first() {
        Some(&SYNC) => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let answer = match rest.first() {
        None => Answer::Silence,
        Some(&ACK) => Answer::Ack,
        Some(&NACK) => Answer::Nack,
        Some(_) => {
            let printable = rest
                .iter()
                .filter(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n' | b'\t'))
                .count();
            if printable * 10 >= rest.len() * 8 && rest.len() >= 4 {
                Answer::Text(String::from_utf8_lossy(rest).trim().to_string())
            } else {
                Answer::Garbage(rest.to_vec())
            }
        }
    };
    Probe { echo, answer }
}

/// Send one 0x7F and collect what comes back within `wait` (and shortly after).
pub fn probe(link: &mut dyn Link, wait: Duration) -> Result<Probe> {
    link.discard_input()?;
    link.write_all(&[SYNC])?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut timeout = wait;
    while got.len() < 256 {
        match link.read(&mut buf, timeout) {
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                timeout = Duration::from_millis(30);
            }
            Err(LinkError::Timeout(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(classify(&got))
}

/// Everything `doctor` found, and the connection if the bootloader answered.
pub struct Report {
    /// The checklist.
    pub checks: Vec<Check>,
    /// Line settings the bootloader answered at.
    pub settings: Option<LineSettings>,
    /// The connection, for callers that go on.
    pub connection: Option<Connection>,
    /// How many 0x7F probes were sent.
    pub probes: u32,
}

fn describe(s: LineSettings) -> String {
    let p = match s.parity {
        Parity::Even => "8E1",
        Parity::None => "8N1",
        Parity::Odd => "8O1",
    };
    format!("{} baud {p}", s.baud)
}

/// Run the checklist over `link`, starting at its current settings and then trying `bauds`
/// with even and no parity.
pub fn run(
    mut link: Box<dyn Link>,
    table: &DeviceTable,
    timeouts: Timeouts,
    bauds: &[u32],
    progress: &mut dyn Progress,
) -> Result<Report> {
    let mut checks = Vec::new();
    let first = link.line();
    let wait = timeouts.apply(timeouts.sync);
    let mut candidates = vec![first];
    for &baud in bauds {
        for parity in [Parity::Even, Parity::None] {
            let s = LineSettings { baud, parity };
            if !candidates.contains(&s) {
                candidates.push(s);
            }
        }
    }
    let mut found = None;
    let mut first_probe = None;
    let mut probes = 0;
    for (i, s) in candidates.iter().enumerate() {
        if i > 0 && link.set_line(*s).is_err() {
            continue;
        }
        // A bootloader that is already synced takes a lone 0x7F as the first byte of a command:
        // a second one completes the pair and draws a NACK (an3155.md §2.3).
        let mut p = probe(link.as_mut(), wait)?;
        probes += 1;
        if p.answer == Answer::Silence {
            p = probe(link.as_mut(), wait)?;
            probes += 1;
        }
        if p.echo {
            checks.push(check(
                "echo",
                Status::Fail,
                "every byte sent comes back: a half-duplex (one-wire) adapter, or RX tied to TX",
                Some(
                    "the bootloader needs separate TX and RX lines: use a full-duplex adapter or \
                     one that suppresses its own echo"
                        .into(),
                ),
            ));
            return Ok(Report {
                checks,
                settings: None,
                connection: None,
                probes,
            });
        }
        if i == 0 {
            first_probe = Some(p.clone());
        }
        if matches!(p.answer, Answer::Ack | Answer::Nack) {
            found = Some((*s, p));
            break;
        }
        if let Answer::Text(t) = &p.answer {
            checks.push(check(
                "bootloader",
                Status::Fail,
                format!("an application is running instead of the bootloader; it says: {t}"),
                Some(
                    "hold BOOT0 high (and check the boot option bits such as nBOOT0/nSWBOOT0 or \
                     nBOOT_SEL) and reset the chip, or have the firmware jump to the bootloader"
                        .into(),
                ),
            ));
            return Ok(Report {
                checks,
                settings: None,
                connection: None,
                probes,
            });
        }
    }
    checks.push(check("echo", Status::Ok, "no echo of sent bytes", None));
    let Some((settings, p)) = found else {
        let detail = match first_probe.map(|p| p.answer) {
            Some(Answer::Garbage(b)) => format!(
                "0x7F got {} unexpected byte(s) ({:02X?}) at {} and no answer at any other \
                 setting tried",
                b.len(),
                &b[..b.len().min(8)],
                describe(first)
            ),
            _ => format!(
                "no answer to 0x7F at {} or at any of {} other settings",
                describe(first),
                candidates.len() - 1
            ),
        };
        checks.push(check(
            "sync",
            Status::Fail,
            detail,
            Some(
                "check wiring (TX to RX, RX to TX, common ground), that BOOT0 is high during \
                 reset, and power; an application may be running silently"
                    .into(),
            ),
        ));
        return Ok(Report {
            checks,
            settings: None,
            connection: None,
            probes,
        });
    };
    let how = match p.answer {
        Answer::Nack => "answered NACK (it was already synced)",
        _ => "answered ACK",
    };
    if settings == first {
        checks.push(check(
            "sync",
            Status::Ok,
            format!("the bootloader {how} at {}", describe(settings)),
            None,
        ));
    } else {
        checks.push(check(
            "sync",
            Status::Warn,
            format!(
                "no answer at {}, but the bootloader {how} at {}",
                describe(first),
                describe(settings)
            ),
            Some(format!(
                "pass --baud {} --parity {}",
                settings.baud,
                match settings.parity {
                    Parity::Even => "even",
                    Parity::None => "none",
                    Parity::Odd => "odd",
                }
            )),
        ));
    }
    let session = Session::new(link, timeouts);
    let mut conn = match connect(session, table, &ConnectOptions::default(), progress) {
        Ok(c) => c,
        Err(e) => {
            let fix = if settings.parity != Parity::Even {
                "the bootloader uses 8E1: set --parity even (links that cannot carry parity \
                 lose the bytes whose parity bit is 0)"
            } else {
                "the link loses or alters bytes: try a lower --baud, a shorter cable, or \
                 --timeout-scale for slow links"
            };
            checks.push(check(
                "identify",
                Status::Fail,
                format!("sync worked but identifying the chip failed: {e}"),
                Some(fix.into()),
            ));
            return Ok(Report {
                checks,
                settings: Some(settings),
                connection: None,
                probes,
            });
        }
    };
    checks.push(check(
        "identify",
        Status::Ok,
        format!(
            "{} (PID 0x{:03X}), bootloader V{}.{}, commands {}",
            conn.device.name,
            conn.bootloader.pid,
            conn.bootloader.version.0 >> 4,
            conn.bootloader.version.0 & 0xF,
            conn.bootloader.command_names()
        ),
        None,
    ));
    chip_checks(&mut conn, &mut checks)?;
    Ok(Report {
        checks,
        settings: Some(settings),
        connection: Some(conn),
        probes,
    })
}

fn chip_checks(conn: &mut Connection, checks: &mut Vec<Check>) -> Result<()> {
    if conn.read_protected {
        checks.push(check(
            "read protection",
            Status::Warn,
            "active: reads, writes and erases are refused",
            Some(
                "`stm32boot protect readout off --confirm-mass-erase` removes it and erases \
                 the whole flash"
                    .into(),
            ),
        ));
        return Ok(());
    }
    checks.push(check("read protection", Status::Ok, "level 0 (none)", None));
    let Some(layout) = conn.device.ob_layout.clone() else {
        checks.push(check(
            "option bytes",
            Status::Info,
            format!(
                "not decoded for family {}: write protection and boot bits not checked",
                conn.device.family
            ),
            None,
        ));
        return Ok(());
    };
    let image = match option_bytes::read(conn) {
        Ok(i) => i,
        Err(e @ (Error::Nack { .. } | Error::InvalidRequest(_))) => {
            checks.push(check("option bytes", Status::Warn, e.to_string(), None));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let bad: Vec<String> = layout
        .registers_in(&image)
        .into_iter()
        .filter(|r| r.complement_ok == Some(false))
        .map(|r| r.name)
        .collect();
    if !bad.is_empty() {
        checks.push(check(
            "option bytes",
            Status::Warn,
            format!("value and complement disagree in {}", bad.join(", ")),
            Some("rewrite them with `stm32boot ob set` (any field) to restore the pairs".into()),
        ));
    }
    let protected = write_protected_pages(&conn.device, &layout, &image);
    checks.push(if protected.is_empty() {
        check("write protection", Status::Ok, "none", None)
    } else {
        check(
            "write protection",
            Status::Warn,
            format!("page(s) {} are write-protected", page_runs(&protected)),
            Some("`stm32boot protect write off` clears it".into()),
        )
    });
    if conn.device.banks == 2 || layout.boot_bank2.is_some() {
        let s = bank::read_status(conn)?;
        let mode: Vec<String> = s
            .mode_fields
            .iter()
            .map(|(f, v, m)| format!("{f}={v} ({m})"))
            .collect();
        let boot = match &s.boot_option {
            Some((f, v)) => format!(
                "; {f}={v}: after a reset with BOOT0 low the chip runs {}",
                s.boots
                    .map(|b| format!("bank {b}"))
                    .unwrap_or_else(|| "nothing (no bank holds an image)".into())
            ),
            None => String::new(),
        };
        checks.push(check(
            "banks",
            Status::Info,
            format!(
                "{} bank(s){}{boot}",
                s.banks,
                if mode.is_empty() {
                    String::new()
                } else {
                    format!(", {}", mode.join(", "))
                }
            ),
            None,
        ));
    }
    if let Some(source) = option_bytes::boot_source(&conn.device, &image) {
        let detail = match source {
            BootSource::Pin => "the BOOT0 pin selects the boot source".to_string(),
            BootSource::OptionFlash => "the boot option bits select the main flash and the \
                BOOT0 pin is ignored: after a reset the chip runs its application (or the \
                bootloader only while the flash is empty)"
                .to_string(),
            BootSource::OptionBootloader => {
                "the boot option bits select the bootloader; the BOOT0 pin is ignored".to_string()
            }
        };
        checks.push(check("boot", Status::Info, detail, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified() {
        assert_eq!(classify(&[ACK]).answer, Answer::Ack);
        assert_eq!(classify(&[NACK]).answer, Answer::Nack);
        let p = classify(&[SYNC, ACK]);
        assert!(p.echo);
        assert_eq!(p.answer, Answer::Ack);
        assert_eq!(classify(&[]).answer, Answer::Silence);
        assert_eq!(
            classify(b"app v1.2 running\r\n").answer,
            Answer::Text("app v1.2 running".into())
        );
        assert_eq!(
            classify(&[0x00, 0xF0]).answer,
            Answer::Garbage(vec![0x00, 0xF0])
        );
    }
}
