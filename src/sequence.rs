//! Reset and boot-entry sequences on the modem-control lines, as data.
//!
//! Factory stations and USB-serial adapters wire DTR and RTS to NRST and BOOT0 (links.md §9).
//! A sequence is a list of [`LineStep`]s that a [`crate::link::Link`] runs (a relay replays it
//! next to the port). Sequences come from named presets for the common wirings, or from
//! stm32flash's `-i` syntax so that station scripts carry over: `-rts,-dtr,dtr:rts,-dtr,dtr`
//! (entry, then exit after `:`; a token is `rts`, `dtr` or `brk`, high when bare and low with a
//! leading `-`; `,` waits 100 ms, `&` does not). "High" is the modem-control bit set, which a
//! TTL adapter drives to 0 V: the same as "asserted" in [`LineStep`].
//!
//! Everything here is parsed before a port is opened, so a typo never half-resets a board. It
//! is pure (no I/O) and written by hand: the syntax is stm32flash's own and a few lines long.

use crate::error::{Error, Result};
use crate::link::LineStep;
use std::time::Duration;

/// How long a reset pulse is held, and the pause a `,` makes in stm32flash's syntax.
pub const PULSE: Duration = Duration::from_millis(100);

/// The ROM's start-up after NRST is released, before the first 0x7F.
pub const STARTUP: Duration = Duration::from_millis(100);

/// Named wirings of DTR and RTS to NRST and BOOT0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// DTR drives NRST and RTS drives BOOT0, active low at TTL level (asserted DTR holds the
    /// chip in reset; asserted RTS pulls BOOT0 low): stm32loader's wiring.
    DtrResetRtsBoot0,
    /// RTS drives NRST and DTR drives BOOT0.
    RtsResetDtrBoot0,
    /// Leave the lines alone.
    None,
}

/// The names [`Preset::parse`] takes, for messages.
pub const PRESETS: &str = "dtr-reset-rts-boot0, rts-reset-dtr-boot0, none";

impl Preset {
    /// A preset by name, or `None` if `name` is not one.
    pub fn parse(name: &str) -> Option<Preset> {
        match name.to_ascii_lowercase().as_str() {
            "dtr-reset-rts-boot0" => Some(Preset::DtrResetRtsBoot0),
            "rts-reset-dtr-boot0" => Some(Preset::RtsResetDtrBoot0),
            "none" => Some(Preset::None),
            _ => None,
        }
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::DtrResetRtsBoot0 => "dtr-reset-rts-boot0",
            Preset::RtsResetDtrBoot0 => "rts-reset-dtr-boot0",
            Preset::None => "none",
        }
    }

    /// The steps that reset the chip with BOOT0 high (into the ROM bootloader) when
    /// `bootloader`, or low (into the application). `invert_reset` / `invert_boot0` are for
    /// boards or adapters where the line is active high.
    pub fn steps(self, bootloader: bool, invert_reset: bool, invert_boot0: bool) -> Vec<LineStep> {
        type Drive = fn(bool) -> LineStep;
        let (reset, boot0): (Drive, Drive) = match self {
            Preset::DtrResetRtsBoot0 => (LineStep::Dtr, LineStep::Rts),
            Preset::RtsResetDtrBoot0 => (LineStep::Rts, LineStep::Dtr),
            Preset::None => return Vec::new(),
        };
        // Asserted (active low) holds NRST low; asserted pulls BOOT0 low.
        let hold = !invert_reset;
        let boot0_line = bootloader == invert_boot0;
        vec![
            reset(hold),
            boot0(boot0_line),
            LineStep::Wait(PULSE),
            reset(!hold),
            LineStep::Wait(STARTUP),
        ]
    }
}

/// A sequence given as text: a preset name, or stm32flash's `entry[:exit]` syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Steps that put the chip into its bootloader.
    pub entry: Vec<LineStep>,
    /// Steps that leave it (stm32flash's part after `:`), if any were given.
    pub exit: Option<Vec<LineStep>>,
}

impl Sequence {
    /// Parse `text`: a preset name (with the polarity flags), or stm32flash syntax.
    pub fn parse(text: &str, invert_reset: bool, invert_boot0: bool) -> Result<Sequence> {
        if let Some(p) = Preset::parse(text.trim()) {
            return Ok(Sequence {
                entry: p.steps(true, invert_reset, invert_boot0),
                exit: match p {
                    Preset::None => None,
                    _ => Some(p.steps(false, invert_reset, invert_boot0)),
                },
            });
        }
        let (entry, exit) = match text.split_once(':') {
            Some((e, x)) => (e, Some(x)),
            None => (text, None),
        };
        if exit.is_some_and(|x| x.contains(':')) {
            return Err(bad(text, "more than one ':' (the form is ENTRY[:EXIT])"));
        }
        Ok(Sequence {
            entry: parse_steps(text, entry)?,
            exit: exit.map(|x| parse_steps(text, x)).transpose()?,
        })
    }
}

fn bad(text: &str, why: &str) -> Error {
    Error::InvalidRequest(format!(
        "sequence '{text}': {why}; give a preset ({PRESETS}) or stm32flash's -i syntax, e.g. \
         '-rts,-dtr,dtr:rts,-dtr,dtr' (rts/dtr/brk, '-' for low, ',' waits 100 ms, '&' does not)"
    ))
}

/// One side of stm32flash's syntax: tokens joined by `,` (100 ms pause) or `&` (none).
fn parse_steps(text: &str, part: &str) -> Result<Vec<LineStep>> {
    let part = part.trim();
    if part.is_empty() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    let mut token = String::new();
    let mut chars = part.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' || c == '&' {
            steps.push(signal(text, &token)?);
            token.clear();
            if chars.peek().is_none() {
                return Err(bad(
                    text,
                    &format!("'{c}' at the end with no signal after it"),
                ));
            }
            if c == ',' {
                steps.push(LineStep::Wait(PULSE));
            }
        } else if !c.is_whitespace() {
            token.push(c);
        }
    }
    steps.push(signal(text, &token)?);
    Ok(steps)
}

fn signal(text: &str, token: &str) -> Result<LineStep> {
    let (high, name) = match token.strip_prefix('-') {
        Some(rest) => (false, rest),
        None => (true, token),
    };
    match name.to_ascii_lowercase().as_str() {
        "rts" => Ok(LineStep::Rts(high)),
        "dtr" => Ok(LineStep::Dtr(high)),
        "brk" => Ok(LineStep::Break(high)),
        "" => Err(bad(text, "an empty signal")),
        n if n.chars().all(|c| c.is_ascii_digit()) => Err(bad(
            text,
            &format!(
                "GPIO {n}: stm32boot drives only the port's own lines (rts, dtr, brk); drive \
                 board GPIOs from the station script"
            ),
        )),
        n => Err(bad(text, &format!("unknown signal '{n}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LineStep::*;

    #[test]
    fn stm32flash_man_page_example() {
        let s = Sequence::parse("-rts,-dtr,dtr:rts,-dtr,dtr", false, false).expect("test setup");
        assert_eq!(
            s.entry,
            vec![Rts(false), Wait(PULSE), Dtr(false), Wait(PULSE), Dtr(true)]
        );
        assert_eq!(
            s.exit,
            Some(vec![
                Rts(true),
                Wait(PULSE),
                Dtr(false),
                Wait(PULSE),
                Dtr(true)
            ])
        );
    }

    #[test]
    fn ampersand_joins_without_a_pause_and_break_is_a_signal() {
        let s = Sequence::parse("rts&-dtr,brk&-brk", false, false).expect("test setup");
        assert_eq!(
            s.entry,
            vec![
                Rts(true),
                Dtr(false),
                Wait(PULSE),
                Break(true),
                Break(false)
            ]
        );
        assert_eq!(s.exit, None);
        let s = Sequence::parse("DTR:", false, false).expect("test setup");
        assert_eq!((s.entry, s.exit), (vec![Dtr(true)], Some(vec![])));
    }

    #[test]
    fn presets_pulse_reset_with_boot0_set_and_honour_inversion() {
        let s = Sequence::parse("dtr-reset-rts-boot0", false, false).expect("test setup");
        // Reset held (DTR asserted), BOOT0 high (RTS released), pulse, release.
        assert_eq!(
            s.entry,
            vec![
                Dtr(true),
                Rts(false),
                Wait(PULSE),
                Dtr(false),
                Wait(STARTUP)
            ]
        );
        // Leaving: BOOT0 low (RTS asserted) through the reset.
        assert_eq!(
            s.exit,
            Some(vec![
                Dtr(true),
                Rts(true),
                Wait(PULSE),
                Dtr(false),
                Wait(STARTUP)
            ])
        );
        let s = Sequence::parse("rts-reset-dtr-boot0", true, true).expect("test setup");
        assert_eq!(
            s.entry,
            vec![Rts(false), Dtr(true), Wait(PULSE), Rts(true), Wait(STARTUP)]
        );
        let none = Sequence::parse("none", false, false).expect("test setup");
        assert_eq!((none.entry, none.exit), (vec![], None));
    }

    #[test]
    fn bad_sequences_say_what_is_wrong() {
        let err = |t: &str| match Sequence::parse(t, false, false) {
            Ok(s) => panic!("{t} parsed as {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err("rts,,dtr").contains("empty signal"));
        assert!(err("rts,").contains("at the end"));
        assert!(err("cts").contains("unknown signal 'cts'"));
        assert!(err("4,-5,-3,3:-4,-3,3").contains("GPIO 4"));
        assert!(err("rts:dtr:rts").contains("more than one ':'"));
        assert!(err("dtr-reset").contains("dtr-reset-rts-boot0"));
    }
}
