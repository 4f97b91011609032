//! The vendor extension that hands a whole reset or boot-entry sequence ([`LineStep`]s) to the
//! relay, which replays it next to the serial port with its own timers and says when it is done.
//! Network latency therefore cannot stretch a reset pulse or shorten the wait before `0x7F`.
//!
//! It rides on RFC 2217's SIGNATURE command, which the `rfc2217` crate passes through in both
//! directions (the first 64 bytes, with the original length): the client sends a client
//! SIGNATURE (`IAC SB 2C 00 … IAC SE`) whose text starts with [`PREFIX`], the relay answers
//! with a server SIGNATURE (`IAC SB 2C 64 … IAC SE`) with the same prefix. Other signatures are
//! left alone, so the extension does not disturb ordinary RFC 2217 peers. The texts are ASCII
//! and never contain `0xFF`.
//!
//! Request, in one or more frames of at most [`FRAME_MAX`] bytes:
//!
//! ```text
//! stm32boot-seq/1 <id> <part>/<parts> <step>,<step>,...
//! ```
//!
//! `<id>` is a decimal number the client picks per sequence; `<part>` counts from 1. Steps:
//! `D1`/`D0` (DTR asserted/released), `R1`/`R0` (RTS), `B1`/`B0` (break on/off), and `W<n>u`,
//! `W<n>m`, `W<n>s` (wait n microseconds, milliseconds, seconds). An empty step list is allowed.
//! The relay runs the sequence when the last part arrives, in order with the data around it:
//! bytes the client sent before the request reach the port first, bytes after it only once the
//! sequence has run.
//!
//! Reply, one frame:
//!
//! ```text
//! stm32boot-seq/1 <id> ok
//! stm32boot-seq/1 <id> failed <step index> <reason>
//! stm32boot-seq/1 <id> rejected <reason>
//! ```
//!
//! Like [`crate::link::Link::run_steps`]'s default, the relay stops at the first step that
//! fails (DTR on a pseudo-terminal, for example). A sequence with more than [`MAX_STEPS`] steps
//! or more than [`MAX_WAIT`] of waiting in all is rejected without running. The relay's timers
//! count whole milliseconds: a shorter wait, or the fraction of one, is rounded up, never down.
//!
//! Example: `R1,D1,W100m,D0,W50m` as request `stm32boot-seq/1 7 1/1 R1,D1,W100m,D0,W50m`,
//! whose frame on the wire is `FF FA 2C 00` + the text + `FF F0`.

use crate::link::LineStep;
use std::time::Duration;

/// The first word of every request and reply.
pub const PREFIX: &str = "stm32boot-seq/1";

/// The most bytes of a SIGNATURE text the `rfc2217` crate keeps.
pub const FRAME_MAX: usize = 64;

/// The most steps one sequence may have.
pub const MAX_STEPS: usize = 256;

/// The most waiting one sequence may ask for, in all.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The client SIGNATURE command of COM-PORT-OPTION.
pub const CLIENT_SIGNATURE: u8 = 0;

/// The server SIGNATURE command of COM-PORT-OPTION (the client's code + 100).
pub const SERVER_SIGNATURE: u8 = 100;

/// One step as its token.
pub fn encode_step(step: &LineStep) -> String {
    let bit = |on: bool| if on { '1' } else { '0' };
    match *step {
        LineStep::Dtr(on) => format!("D{}", bit(on)),
        LineStep::Rts(on) => format!("R{}", bit(on)),
        LineStep::Break(on) => format!("B{}", bit(on)),
        LineStep::Wait(d) => {
            // Whole microseconds, rounded up so that a wait never gets shorter.
            let us = d.as_nanos().div_ceil(1000);
            if us % 1_000_000 == 0 {
                format!("W{}s", us / 1_000_000)
            } else if us % 1000 == 0 {
                format!("W{}m", us / 1000)
            } else {
                format!("W{us}u")
            }
        }
    }
}

/// One token as a step.
pub fn parse_step(token: &str) -> Result<LineStep, String> {
    let level = |v: &str| match v {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(format!("bad step '{token}'")),
    };
    match token.split_at_checked(1) {
        Some(("D", v)) => level(v).map(LineStep::Dtr),
        Some(("R", v)) => level(v).map(LineStep::Rts),
        Some(("B", v)) => level(v).map(LineStep::Break),
        Some(("W", v)) => {
            let (digits, unit) = v
                .split_at_checked(v.len().saturating_sub(1))
                .ok_or_else(|| format!("bad step '{token}'"))?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad step '{token}'"));
            }
            let n: u64 = digits.parse().map_err(|_| format!("bad step '{token}'"))?;
            let d = match unit {
                "u" => Duration::from_micros(n),
                "m" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                _ => return Err(format!("bad step '{token}'")),
            };
            if d > MAX_WAIT {
                return Err(format!(
                    "wait '{token}' is longer than {}s",
                    MAX_WAIT.as_secs()
                ));
            }
            Ok(LineStep::Wait(d))
        }
        _ => Err(format!("bad step '{token}'")),
    }
}

/// Check a sequence against [`MAX_STEPS`] and [`MAX_WAIT`].
pub fn check_limits(steps: &[LineStep]) -> Result<(), String> {
    if steps.len() > MAX_STEPS {
        return Err(format!(
            "{} steps; at most {MAX_STEPS} are allowed",
            steps.len()
        ));
    }
    let total: Duration = steps
        .iter()
        .map(|s| match s {
            LineStep::Wait(d) => *d,
            _ => Duration::ZERO,
        })
        .sum();
    if total > MAX_WAIT {
        return Err(format!(
            "{:.1}s of waits; at most {}s are allowed",
            total.as_secs_f64(),
            MAX_WAIT.as_secs()
        ));
    }
    Ok(())
}

/// The SIGNATURE texts that carry `steps` as sequence `id`, each at most [`FRAME_MAX`] bytes.
pub fn encode_request(id: u32, steps: &[LineStep]) -> Result<Vec<Vec<u8>>, String> {
    check_limits(steps)?;
    // Pack with room for the widest part numbers, then write the real ones.
    let widest = format!("{PREFIX} {id} {MAX_STEPS}/{MAX_STEPS} ").len();
    let room = FRAME_MAX - widest;
    let mut parts: Vec<String> = vec![String::new()];
    for step in steps {
        let token = encode_step(step);
        let last = parts.last_mut().ok_or("no part")?;
        let needed = token.len() + usize::from(!last.is_empty());
        if last.len() + needed <= room {
            if !last.is_empty() {
                last.push(',');
            }
            last.push_str(&token);
        } else {
            parts.push(token);
        }
    }
    let n = parts.len();
    Ok(parts
        .iter()
        .enumerate()
        .map(|(i, tokens)| format!("{PREFIX} {id} {}/{n} {tokens}", i + 1).into_bytes())
        .collect())
}

/// What the relay made of one client SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// Not a sequence request: an ordinary client signature.
    NotOurs,
    /// A part of a request; more are due.
    Partial,
    /// A whole request: run it, then reply.
    Complete {
        /// The request's id.
        id: u32,
        /// Its steps.
        steps: Vec<LineStep>,
    },
    /// A request that cannot be run: reply [`Outcome::Rejected`].
    Rejected {
        /// The request's id (0 if it could not be read).
        id: u32,
        /// Why.
        reason: String,
    },
}

/// Collects the parts of a request on the relay.
#[derive(Debug, Default)]
pub struct Assembler {
    /// The request being collected: its id, the next part expected, the number of parts, the
    /// steps so far.
    pending: Option<(u32, usize, usize, Vec<LineStep>)>,
}

impl Assembler {
    /// Nothing collected yet.
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Take one client SIGNATURE text; `truncated` if the peer sent more than was kept.
    pub fn push(&mut self, text: &[u8], truncated: bool) -> Assembled {
        let prefix = format!("{PREFIX} ");
        let Some(rest) = text.strip_prefix(prefix.as_bytes()) else {
            return Assembled::NotOurs;
        };
        let rejected = |id: u32, reason: &str| Assembled::Rejected {
            id,
            reason: reason.to_string(),
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            self.pending = None;
            return rejected(0, "not ASCII");
        };
        let mut words = rest.splitn(3, ' ');
        let Some(id) = words.next().and_then(|w| w.parse::<u32>().ok()) else {
            self.pending = None;
            return rejected(0, "no request id");
        };
        if truncated {
            self.pending = None;
            return rejected(id, "a frame longer than 64 bytes");
        }
        let numbers = words.next().and_then(|w| {
            let (k, n) = w.split_once('/')?;
            Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
        });
        let Some((part, parts)) = numbers.filter(|&(k, n)| k >= 1 && k <= n && n <= MAX_STEPS)
        else {
            self.pending = None;
            return rejected(id, "bad part numbers");
        };
        let tokens = words.next().unwrap_or("");
        let mut steps = match self.pending.take() {
            None if part == 1 => Vec::new(),
            Some((pid, next, pn, steps)) if pid == id && next == part && pn == parts => steps,
            _ if part == 1 => Vec::new(),
            _ => return rejected(id, "a part out of order"),
        };
        for token in tokens.split(',').filter(|t| !t.is_empty()) {
            match parse_step(token) {
                Ok(step) => steps.push(step),
                Err(reason) => return rejected(id, &reason),
            }
            if steps.len() > MAX_STEPS {
                return rejected(id, &format!("more than {MAX_STEPS} steps"));
            }
        }
        if part < parts {
            self.pending = Some((id, part + 1, parts, steps));
            return Assembled::Partial;
        }
        match check_limits(&steps) {
            Ok(()) => Assembled::Complete { id, steps },
            Err(reason) => rejected(id, &reason),
        }
    }
}

/// How a sequence went on the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step ran.
    Done,
    /// Step `index` (counting from 0) failed; the steps after it did not run.
    Failed {
        /// Which step.
        index: usize,
        /// Why (for example "Not a typewriter" for DTR on a pseudo-terminal).
        reason: String,
    },
    /// The request could not be run at all.
    Rejected(String),
}

/// `reason` as printable ASCII without line ends.
fn clean(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The relay's reply text for sequence `id`, cut to [`FRAME_MAX`] bytes.
pub fn encode_reply(id: u32, outcome: &Outcome) -> Vec<u8> {
    let mut text = match outcome {
        Outcome::Done => format!("{PREFIX} {id} ok"),
        Outcome::Failed { index, reason } => {
            format!("{PREFIX} {id} failed {index} {}", clean(reason))
        }
        Outcome::Rejected(reason) => format!("{PREFIX} {id} rejected {}", clean(reason)),
    };
    text.truncate(FRAME_MAX);
    text.into_bytes()
}

/// Read a server SIGNATURE text as a reply: its id and outcome; `None` if it is not one.
pub fn parse_reply(text: &[u8]) -> Option<(u32, Outcome)> {
    let text = std::str::from_utf8(text).ok()?;
    let rest = text.strip_prefix(PREFIX)?.strip_prefix(' ')?;
    let mut words = rest.splitn(3, ' ');
    let id = words.next()?.parse::<u32>().ok()?;
    let outcome = match (words.next()?, words.next()) {
        ("ok", None) => Outcome::Done,
        ("failed", Some(more)) => {
            let (index, reason) = more.split_once(' ').unwrap_or((more, ""));
            Outcome::Failed {
                index: index.parse().ok()?,
                reason: reason.to_string(),
            }
        }
        ("rejected", reason) => Outcome::Rejected(reason.unwrap_or("").to_string()),
        _ => return None,
    };
    Some((id, outcome))
}

/// A COM-PORT-OPTION subnegotiation frame: `IAC SB 2C <command> <payload, 0xFF doubled> IAC SE`.
pub fn frame(command: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFA, 0x2C, command];
    for &b in payload {
        out.push(b);
        if b == 0xFF {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0xFF, 0xF0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use LineStep::{Break, Dtr, Rts, Wait};

    fn ms(n: u64) -> LineStep {
        Wait(Duration::from_millis(n))
    }

    #[test]
    fn steps_round_trip_through_tokens() {
        for step in [
            Dtr(true),
            Dtr(false),
            Rts(true),
            Rts(false),
            Break(true),
            Break(false),
            ms(100),
            Wait(Duration::from_secs(2)),
            Wait(Duration::from_micros(1500)),
            Wait(Duration::ZERO),
        ] {
            assert_eq!(parse_step(&encode_step(&step)), Ok(step), "{step:?}");
        }
        assert_eq!(encode_step(&ms(100)), "W100m");
        assert_eq!(encode_step(&Wait(Duration::from_secs(1))), "W1s");
        assert_eq!(encode_step(&Wait(Duration::from_micros(250))), "W250u");
        // Sub-microsecond waits round up, never down.
        assert_eq!(encode_step(&Wait(Duration::from_nanos(1))), "W1u");
        for bad in [
            "", "D", "D2", "X1", "W", "Wm", "W-1m", "W10x", "W+5m", "W61s", "D1 ",
        ] {
            assert!(parse_step(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_wire_format() {
        let frames =
            encode_request(7, &[Rts(true), Dtr(true), ms(100), Dtr(false), ms(50)]).expect("ok");
        assert_eq!(
            frames,
            [b"stm32boot-seq/1 7 1/1 R1,D1,W100m,D0,W50m".to_vec()]
        );
        assert_eq!(
            frame(CLIENT_SIGNATURE, &frames[0])[..4],
            [0xFF, 0xFA, 0x2C, 0x00]
        );
        assert_eq!(
            frame(SERVER_SIGNATURE, b"\xFFx"),
            [0xFF, 0xFA, 0x2C, 100, 0xFF, 0xFF, b'x', 0xFF, 0xF0]
        );
        assert_eq!(
            encode_request(3, &[]).expect("ok"),
            [b"stm32boot-seq/1 3 1/1 ".to_vec()]
        );
    }

    #[test]
    fn long_sequences_are_split_and_reassembled() {
        let steps: Vec<LineStep> = (0..40)
            .flat_map(|i| [Dtr(i % 2 == 0), Wait(Duration::from_micros(1234 + i))])
            .collect();
        let frames = encode_request(4_000_000_000, &steps).expect("ok");
        assert!(frames.len() > 1);
        let mut a = Assembler::new();
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= FRAME_MAX, "{}", String::from_utf8_lossy(f));
            let got = a.push(f, false);
            if i + 1 < frames.len() {
                assert_eq!(got, Assembled::Partial);
            } else {
                assert_eq!(
                    got,
                    Assembled::Complete {
                        id: 4_000_000_000,
                        steps: steps.clone()
                    }
                );
            }
        }
    }

    #[test]
    fn bad_requests_are_rejected_or_ignored() {
        let mut a = Assembler::new();
        assert_eq!(a.push(b"ser2net 4.3.11", false), Assembled::NotOurs);
        assert_eq!(a.push(b"stm32boot-seq/1x", false), Assembled::NotOurs);
        for (text, id) in [
            (&b"stm32boot-seq/1 x 1/1 D1"[..], 0),
            (b"stm32boot-seq/1 5 2/1 D1", 5),
            (b"stm32boot-seq/1 5 0/1 D1", 5),
            (b"stm32boot-seq/1 5 1/1 Q1", 5),
            (b"stm32boot-seq/1 5 2/2 D1", 5),
            (b"stm32boot-seq/1 5 1/1 W60s,W1s", 5),
            (b"stm32boot-seq/1 5 1/1 \xFF", 0),
        ] {
            match a.push(text, false) {
                Assembled::Rejected { id: got, .. } => assert_eq!(got, id),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
        assert!(matches!(
            a.push(b"stm32boot-seq/1 6 1/1 D1", true),
            Assembled::Rejected { id: 6, .. }
        ));
        // A new first part replaces an unfinished request.
        assert_eq!(
            a.push(b"stm32boot-seq/1 8 1/2 D1", false),
            Assembled::Partial
        );
        assert_eq!(
            a.push(b"stm32boot-seq/1 9 1/1 D0", false),
            Assembled::Complete {
                id: 9,
                steps: vec![Dtr(false)]
            }
        );
        let too_many = vec![Dtr(true); MAX_STEPS + 1];
        assert!(encode_request(1, &too_many).is_err());
        assert!(encode_request(1, &[Wait(MAX_WAIT), ms(1)]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        for outcome in [
            Outcome::Done,
            Outcome::Failed {
                index: 2,
                reason: "Not a typewriter".into(),
            },
            Outcome::Rejected("a part out of order".into()),
        ] {
            let text = encode_reply(12, &outcome);
            assert!(text.len() <= FRAME_MAX);
            assert_eq!(parse_reply(&text), Some((12, outcome)));
        }
        assert_eq!(encode_reply(1, &Outcome::Done), b"stm32boot-seq/1 1 ok");
        let long = encode_reply(
            1,
            &Outcome::Failed {
                index: 0,
                reason: "x\n".repeat(100),
            },
        );
        assert_eq!(long.len(), FRAME_MAX);
        assert!(!long.contains(&b'\n'));
        assert_eq!(parse_reply(b"rfc2217 0.1.0"), None);
        assert_eq!(parse_reply(b"stm32boot-seq/1 1 maybe"), None);
    }
}
