//! A catalogue of bad input: malformed and misplaced images, addresses and ranges the part does
//! not have, option-byte names and values, OTP requests, device, configuration, coefficient and
//! job files, port URLs, entry sequences and line settings.
//!
//! Every case runs the command line against a simulated chip that already holds known content
//! (a pattern in the whole flash, and on parts with OTP a used block, a locked block or a used
//! double word) and checks three things: the exit code (2 for bad input, or the code the README
//! gives for that failure), a message on stderr that says what is wrong and where (file and
//! line, address, field), and that the chip's flash, option bytes, OTP and erase counters are
//! exactly as before. Cases refused before the port opens ([`Stage::BeforeOpen`]) must not even
//! touch the simulator's state file: its bytes and modification time stay the same. A failure
//! names the case; all cases run and every failure is reported together. One more case, a
//! client with the wrong key for a relay in front of the simulator on a pseudo-terminal, has
//! its own test ([`a_wrong_relay_key_changes_nothing`]), since it needs two processes.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use stm32boot::sim::chip::Area;

const F411: &str = "stm32f411";
const L476: &str = "stm32l476";
const G474: &str = "stm32g474";
const F103: &str = "stm32f103xb";

/// The coefficient layout of the examples, as a base for broken ones.
const SENSOR_LAYOUT: &str = include_str!("../examples/coeffs/sensor.toml");
const SENSOR_VALUES: &str = include_str!("../examples/coeffs/values.toml");
const CALIB_TABLE: &str = include_str!("../examples/coeffs/calib.csv");

/// How far a case may get before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Refused while parsing what the user gave: the port is never opened, so the simulator's
    /// state file is not even rewritten (same bytes, same modification time).
    BeforeOpen,
    /// Refused after the chip answered (the check needs the part's memory map or its current
    /// content): the chip's memory must be unchanged.
    Connected,
}

/// One bad input.
struct Case {
    name: &'static str,
    part: &'static str,
    /// Files written into the chip's directory (the working directory of the run) first.
    files: Vec<(&'static str, Vec<u8>)>,
    /// Arguments; `{port}` is replaced by the simulated chip's port and `{state}` by its state
    /// file.
    args: Vec<&'static str>,
    /// Environment variables for the run.
    env: Vec<(&'static str, String)>,
    /// The exit code.
    code: i32,
    /// Substrings that must all be on stderr.
    needles: Vec<&'static str>,
    /// Substrings that must appear neither on stderr nor on stdout (secrets).
    hidden: Vec<&'static str>,
    /// Files that must not exist afterwards (outputs, state files of other ports).
    absent: Vec<&'static str>,
    stage: Stage,
}

fn case(
    name: &'static str,
    part: &'static str,
    args: &[&'static str],
    code: i32,
    needles: &[&'static str],
) -> Case {
    Case {
        name,
        part,
        files: Vec::new(),
        args: args.to_vec(),
        env: Vec::new(),
        code,
        needles: needles.to_vec(),
        hidden: Vec::new(),
        absent: Vec::new(),
        stage: Stage::BeforeOpen,
    }
}

impl Case {
    fn file(mut self, name: &'static str, content: impl Into<Vec<u8>>) -> Case {
        self.files.push((name, content.into()));
        self
    }

    fn env(mut self, key: &'static str, value: impl Into<String>) -> Case {
        self.env.push((key, value.into()));
        self
    }

    fn connects(mut self) -> Case {
        self.stage = Stage::Connected;
        self
    }

    fn hidden(mut self, secret: &'static str) -> Case {
        self.hidden.push(secret);
        self
    }

    fn absent(mut self, file: &'static str) -> Case {
        self.absent.push(file);
        self
    }
}

// ---- file content builders ----------------------------------------------------------------

/// One Intel HEX record with a correct checksum.
fn ihex_record(kind: u8, addr: u16, data: &[u8]) -> String {
    let mut bytes = vec![data.len() as u8, (addr >> 8) as u8, addr as u8, kind];
    bytes.extend_from_slice(data);
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes.push(sum.wrapping_neg());
    let digits: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!(":{digits}\n")
}

const IHEX_EOF: &str = ":00000001FF\n";

/// An Intel HEX file with `data` at `addr`, in 16-byte records (an extended linear address
/// record wherever the upper half of the address changes).
fn ihex_at(addr: u32, data: &[u8]) -> String {
    let mut text = String::new();
    let mut upper = None;
    for (i, chunk) in data.chunks(16).enumerate() {
        let at = addr + 16 * i as u32;
        if upper != Some(at >> 16) {
            upper = Some(at >> 16);
            text.push_str(&ihex_record(4, 0, &((at >> 16) as u16).to_be_bytes()));
        }
        text.push_str(&ihex_record(0, at as u16, chunk));
    }
    text.push_str(IHEX_EOF);
    text
}

/// One S3 record (32-bit address) with a correct checksum.
fn srec_s3(addr: u32, data: &[u8]) -> String {
    let mut body = vec![(4 + data.len() + 1) as u8];
    body.extend_from_slice(&addr.to_be_bytes());
    body.extend_from_slice(data);
    let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    body.push(!sum);
    let digits: String = body.iter().map(|b| format!("{b:02X}")).collect();
    format!("S3{digits}\n")
}

/// A 32-bit little-endian ARM ELF executable with one loadable segment of `data` at `addr`.
fn elf32(addr: u32, data: &[u8]) -> Vec<u8> {
    let mut e = b"\x7fELF".to_vec();
    e.extend_from_slice(&[1, 1, 1, 0]);
    e.extend_from_slice(&[0; 8]);
    let u16s = |e: &mut Vec<u8>, v: &[u16]| v.iter().for_each(|x| e.extend(x.to_le_bytes()));
    let u32s = |e: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| e.extend(x.to_le_bytes()));
    u16s(&mut e, &[2, 40]); // executable, ARM
    u32s(&mut e, &[1, addr, 52, 0, 0x0500_0200]); // version, entry, phoff, shoff, flags
    u16s(&mut e, &[52, 32, 1, 40, 0, 0]); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    let len = data.len() as u32;
    u32s(&mut e, &[1, 84, addr, addr, len, len, 5, 4]); // PT_LOAD at offset 84
    e.extend_from_slice(data);
    e
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test setup: {from:?} not in the text");
    text.replacen(from, to, 1)
}

/// A complete device-file entry (an F4 part under a new PID), with `extra` lines added.
fn device_entry(extra: &str) -> String {
    format!(
        r#"[[device]]
pid = 0x4FF
name = "STM32X999"
parts = ["stm32x999"]
family = "F4"
flash_size = "512K"
sectors = ["16K", "16K", "16K", "16K", "64K", "128K"]
ram = {{ start = 0x20000000, end = 0x2001FFFF }}
bootloader_ram_end = 0x20003000
system_memory = {{ start = 0x1FFF0000, end = 0x1FFF77FF }}
option_bytes = [{{ start = 0x1FFFC000, end = 0x1FFFC00F }}]
bootloader = {{ version = 0x31, commands = [0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92] }}
{extra}"#
    )
}

/// A job file with one step.
fn job(step: &str) -> String {
    format!("name = \"bad\"\n\n[[step]]\n{step}")
}

// ---- the catalogue ----------------------------------------------------------------------------

/// Malformed, truncated and empty images, and files that are not there.
fn image_cases() -> Vec<Case> {
    let w = |file: &'static str| -> Vec<&'static str> { vec!["write", file, "--port", "{port}"] };
    let mut v = vec![
        case(
            "ihex_bad_checksum",
            F411,
            &w("bad.hex"),
            2,
            &[
                "bad.hex line 1",
                "checksum mismatch (record says 0xF0, computed 0xF2)",
            ],
        )
        .file("bad.hex", format!(":0400000001020304F0\n{IHEX_EOF}")),
        case(
            "ihex_unknown_record_type",
            F411,
            &w("bad.hex"),
            2,
            &["bad.hex line 1", "unsupported record type 0x06"],
        )
        .file(
            "bad.hex",
            format!("{}{IHEX_EOF}", ihex_record(6, 0, &[1, 2, 3, 4])),
        ),
        case(
            "ihex_truncated_line",
            F411,
            &w("bad.hex"),
            2,
            &["bad.hex line 1", "truncated record", "needs 18 hex digits"],
        )
        .file("bad.hex", format!(":04000000010203\n{IHEX_EOF}")),
        case(
            "ihex_truncated_in_the_middle",
            F411,
            &w("bad.hex"),
            2,
            &["bad.hex line 3", "truncated record"],
        )
        .file("bad.hex", {
            let good = ihex_at(0x0800_0000, &pattern(32, 1));
            let lines: Vec<&str> = good.lines().collect();
            format!("{}\n{}\n{}\n", lines[0], lines[1], &lines[2][..20])
        }),
        case(
            "ihex_missing_end_of_file",
            F411,
            &w("bad.hex"),
            2,
            &[
                "bad.hex",
                "no end-of-file record (:00000001FF)",
                "truncated",
            ],
        )
        .file(
            "bad.hex",
            ihex_at(0x0800_0000, &pattern(32, 2)).replace(IHEX_EOF, ""),
        ),
        case(
            "ihex_non_hex_characters",
            F411,
            &w("bad.hex"),
            2,
            &["bad.hex line 1", "invalid character 'G'"],
        )
        .file("bad.hex", format!(":04000000010G0304F2\n{IHEX_EOF}")),
        case(
            "ihex_overlapping_records",
            F411,
            &w("bad.hex"),
            2,
            &[
                "bad.hex line 3",
                "overlapping data at 0x08000012..0x08000014",
            ],
        )
        .file(
            "bad.hex",
            format!(
                "{}{}{}{IHEX_EOF}",
                ihex_record(4, 0, &[0x08, 0x00]),
                ihex_record(0, 0x10, &[1, 2, 3, 4]),
                ihex_record(0, 0x12, &[9, 9, 9, 9])
            ),
        ),
        case(
            "ihex_empty_file",
            F411,
            &w("empty.hex"),
            2,
            &["empty.hex", "no end-of-file record"],
        )
        .file("empty.hex", ""),
        case(
            "ihex_without_data",
            F411,
            &w("eof.hex"),
            2,
            &["eof.hex contains no data to program"],
        )
        .file("eof.hex", IHEX_EOF),
        case(
            "srec_bad_checksum",
            F411,
            &w("bad.srec"),
            2,
            &["bad.srec line 1", "checksum mismatch"],
        )
        .file("bad.srec", {
            let good = srec_s3(0x0800_0000, &[1, 2, 3, 4]);
            format!("{}00\n", &good.trim_end()[..good.trim_end().len() - 2])
        }),
        case(
            "srec_truncated",
            F411,
            &w("bad.srec"),
            2,
            &["bad.srec line 1", "truncated record"],
        )
        .file(
            "bad.srec",
            srec_s3(0x0800_0000, &[1, 2, 3, 4])[..10].to_string(),
        ),
        case(
            "srec_reserved_record_type",
            F411,
            &w("bad.srec"),
            2,
            &["bad.srec line 2", "record type S4 is reserved"],
        )
        .file(
            "bad.srec",
            format!(
                "{}S4{}",
                srec_s3(0x0800_0000, &[1, 2, 3, 4]),
                &srec_s3(0x0800_0004, &[5, 6, 7, 8])[2..]
            ),
        ),
        case(
            "srec_non_hex_characters",
            F411,
            &w("bad.srec"),
            2,
            &["bad.srec line 1", "invalid character 'Z'"],
        )
        .file("bad.srec", {
            let good = srec_s3(0x0800_0000, &[1, 2, 3, 4]);
            format!("{}ZZ{}", &good[..6], &good[8..])
        }),
        case(
            "elf_segment_beyond_the_end_of_the_file",
            F411,
            &w("fw.elf"),
            2,
            &[
                "fw.elf: not a usable ELF file",
                "program header 0",
                "beyond the end of the file",
            ],
        )
        .file(
            "fw.elf",
            elf32(0x0800_0000, &pattern(64, 3))[..100].to_vec(),
        ),
        case(
            "elf_truncated_header",
            F411,
            &w("fw.elf"),
            2,
            &["fw.elf: not a usable ELF file", "header"],
        )
        .file("fw.elf", elf32(0x0800_0000, &pattern(64, 3))[..40].to_vec()),
        case(
            "elf_without_signature",
            F411,
            &w("fw.elf"),
            2,
            &[
                "fw.elf: not a usable ELF file",
                "missing the \\x7fELF signature",
            ],
        )
        .file("fw.elf", "this is a text file, not firmware\n"),
        case(
            "bin_empty",
            F411,
            &["write", "empty.bin", "-a", "0x08000000", "--port", "{port}"],
            2,
            &["empty.bin contains no data to program"],
        )
        .file("empty.bin", ""),
        case(
            "image_file_missing",
            F411,
            &w("no-such.hex"),
            2,
            &["cannot read no-such.hex", "No such file or directory"],
        ),
        case(
            "bin_without_address",
            F411,
            &w("fw.bin"),
            2,
            &["fw.bin: a .bin file has no address", "--address 0x08000000"],
        )
        .file("fw.bin", pattern(64, 4)),
        case(
            "address_for_a_hex_file",
            F411,
            &["write", "fw.hex", "-a", "0x08000000", "--port", "{port}"],
            2,
            &[
                "--address is only for raw .bin files",
                "fw.hex is Intel HEX",
            ],
        )
        .file("fw.hex", ihex_at(0x0800_0000, &pattern(32, 5))),
        case(
            "verify_with_a_malformed_image",
            F411,
            &["verify", "bad.hex", "--port", "{port}"],
            2,
            &["bad.hex line 2", "checksum mismatch"],
        )
        .file(
            "bad.hex",
            format!(
                "{}:0400000001020304F0\n{IHEX_EOF}",
                ihex_record(4, 0, &[8, 0])
            ),
        ),
    ];
    // An image whose extension says nothing, without --address.
    v.push(
        case(
            "image_of_unknown_format",
            F411,
            &w("fw.img"),
            2,
            &["fw.img", "has no address", "--address"],
        )
        .file("fw.img", pattern(64, 6)),
    );
    v
}

/// Images in the wrong place, ranges the part does not have, lengths past the end.
fn address_cases() -> Vec<Case> {
    let bin_at = |addr: &'static str| -> Vec<&'static str> {
        vec!["write", "fw.bin", "-a", addr, "--port", "{port}"]
    };
    vec![
        case(
            "image_outside_flash_and_ram",
            F411,
            &bin_at("0x40000000"),
            2,
            &["0x40000000-0x4000003F is outside the flash (0x08000000-0x0807FFFF)"],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "image_in_system_memory",
            F411,
            &bin_at("0x1FFF0000"),
            2,
            &["0x1FFF0000-0x1FFF003F is in system memory, which is read-only"],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "image_in_the_option_bytes",
            F411,
            &bin_at("0x1FFFC000"),
            2,
            &[
                "0x1FFFC000-0x1FFFC03F is in the option bytes",
                "flash and RAM only",
            ],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "image_in_the_otp_area",
            F411,
            &bin_at("0x1FFF7800"),
            2,
            &[
                "0x1FFF7800-0x1FFF783F is in the OTP area",
                "flash and RAM only",
            ],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "image_crossing_the_end_of_flash",
            F411,
            &bin_at("0x0807FFF0"),
            2,
            &["0x0807FFF0-0x0808002F runs past the end of flash (0x08000000-0x0807FFFF"],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "image_in_the_bootloaders_ram",
            F411,
            &bin_at("0x20000100"),
            2,
            &["0x20000100-0x2000013F is in RAM the bootloader keeps for itself"],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "elf_segment_in_system_memory",
            F411,
            &["write", "fw.elf", "--port", "{port}"],
            2,
            &["0x1FFF0000-0x1FFF003F is in system memory"],
        )
        .file("fw.elf", elf32(0x1FFF_0000, &pattern(64, 8)))
        .connects(),
        case(
            "hex_crossing_the_end_of_flash",
            L476,
            &["write", "fw.hex", "--port", "{port}"],
            2,
            &["0x080FFFF0-0x0810000F runs past the end of flash (0x08000000-0x080FFFFF"],
        )
        .file("fw.hex", ihex_at(0x080F_FFF0, &pattern(32, 9)))
        .connects(),
        case(
            "bank_2_of_a_single_bank_part",
            F411,
            &[
                "write",
                "fw.bin",
                "-a",
                "0x08000000",
                "--bank",
                "2",
                "--port",
                "{port}",
            ],
            2,
            &["STM32F411xC/xE has 1 bank", "there is no bank 2"],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "protected_range_without_force",
            F411,
            &[
                "write",
                "fw.bin",
                "-a",
                "0x08000040",
                "--protect",
                "0x08003000:1K",
                "--port",
                "{port}",
            ],
            2,
            &[
                "would erase page 0 (0x08000000, 16384 bytes)",
                "protected range 0x08003000+1024",
                "--force",
            ],
        )
        .file("fw.bin", pattern(64, 7))
        .connects(),
        case(
            "protect_without_a_length",
            F411,
            &[
                "write",
                "fw.bin",
                "-a",
                "0x08000040",
                "--protect",
                "0x08003000",
                "--port",
                "{port}",
            ],
            2,
            &["'0x08003000' is not ADDR:LEN"],
        )
        .file("fw.bin", pattern(64, 7)),
        case(
            "erase_range_off_page_bounds",
            F411,
            &["erase", "--range", "0x08000100:0x100", "--port", "{port}"],
            2,
            &[
                "--range 0x08000100:0x100 is not on page bounds",
                "0x08000000:0x4000",
                "--expand",
            ],
        )
        .connects(),
        case(
            "erase_range_off_page_bounds_on_2k_pages",
            L476,
            &["erase", "--range", "0x08000800:0x100", "--port", "{port}"],
            2,
            &[
                "not on page bounds",
                "0x08000800:0x800 (pages 1..1)",
                "--expand",
            ],
        )
        .connects(),
        case(
            "erase_range_past_the_end_of_flash",
            F411,
            &["erase", "--range", "0x08070000:0x20000", "--port", "{port}"],
            2,
            &["--range 0x08070000:131072 is not inside the flash (0x08000000-0x0807FFFF)"],
        )
        .connects(),
        case(
            "erase_range_in_ram",
            F411,
            &["erase", "--range", "0x20004000:0x4000", "--port", "{port}"],
            2,
            &["--range 0x20004000:16384 is not inside the flash"],
        )
        .connects(),
        case(
            "erase_range_of_zero_bytes",
            F411,
            &["erase", "--range", "0x08000000:0", "--port", "{port}"],
            2,
            &["'0x08000000:0': the length is 0"],
        ),
        case(
            "erase_page_past_the_last",
            F411,
            &["erase", "--pages", "8", "--port", "{port}"],
            2,
            &["STM32F411xC/xE has no page 8", "numbered 0..7"],
        )
        .connects(),
        case(
            "erase_pages_backwards",
            F411,
            &["erase", "--pages", "5..2", "--port", "{port}"],
            2,
            &["page range 5..2 runs backwards"],
        ),
        case(
            "erase_pages_not_a_number",
            F411,
            &["erase", "--pages", "abc", "--port", "{port}"],
            2,
            &["'abc' is not a 32-bit number"],
        ),
        case(
            "erase_bank_2_of_a_single_bank_part",
            F411,
            &["erase", "--bank", "2", "--port", "{port}"],
            2,
            &["STM32F411xC/xE has 1 bank(s); there is no bank 2"],
        )
        .connects(),
        case(
            "read_past_the_end_of_flash",
            F411,
            &[
                "read",
                "0x0807FF00",
                "1K",
                "-o",
                "out.bin",
                "--port",
                "{port}",
            ],
            2,
            &[
                "read 0x0807FF00+1024 (to 0x080802FF) runs past the end of flash",
                "0x08000000-0x0807FFFF",
                "at most 256 bytes",
            ],
        )
        .absent("out.bin")
        .connects(),
        case(
            "read_more_than_the_flash_holds",
            F411,
            &[
                "read",
                "0x08000000",
                "16M",
                "-o",
                "out.hex",
                "--port",
                "{port}",
            ],
            2,
            &["runs past the end of flash", "at most 524288 bytes"],
        )
        .absent("out.hex")
        .connects(),
        case(
            "read_of_zero_bytes",
            F411,
            &[
                "read",
                "0x08000000",
                "0",
                "-o",
                "out.bin",
                "--port",
                "{port}",
            ],
            2,
            &["nothing to read: the length is 0"],
        )
        .absent("out.bin")
        .connects(),
        case(
            "read_past_the_address_space",
            F411,
            &[
                "read",
                "0xFFFFFFF0",
                "0x20",
                "-o",
                "out.bin",
                "--port",
                "{port}",
            ],
            2,
            &["0xFFFFFFF0 + 32 bytes runs past the 4 GiB address space"],
        )
        .absent("out.bin")
        .connects(),
        case(
            "read_length_over_32_bits",
            F411,
            &[
                "read",
                "0x08000000",
                "0x100000000",
                "-o",
                "out.bin",
                "--port",
                "{port}",
            ],
            2,
            &["'0x100000000' is not a size"],
        )
        .absent("out.bin"),
        case(
            "checksum_of_an_unaligned_range",
            F411,
            &["checksum", "0x08000002", "8", "--port", "{port}"],
            2,
            &["address (0x08000002) and length (8) must be non-zero multiples of 4"],
        )
        .connects(),
        case(
            "checksum_past_the_end_of_flash",
            F411,
            &["checksum", "0x0807FF00", "1K", "--port", "{port}"],
            2,
            &["checksum 0x0807FF00+1024 (to 0x080802FF) runs past the end of flash"],
        )
        .connects(),
    ]
}

/// Option bytes, protection and OTP requests that are refused.
fn option_cases() -> Vec<Case> {
    let ob = |a: &'static str| -> Vec<&'static str> { vec!["ob", "set", a, "--port", "{port}"] };
    let otp = |rest: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["otp"];
        v.extend_from_slice(rest);
        v.extend(["--port", "{port}"]);
        v
    };
    vec![
        case(
            "ob_unknown_field",
            F411,
            &ob("BOGUS=1"),
            2,
            &[
                "STM32F411xC/xE has no option called BOGUS",
                "valid names: BOR_LEV",
            ],
        )
        .connects(),
        case(
            "ob_field_of_another_family",
            F411,
            &ob("BFB2=1"),
            2,
            &["no option called BFB2", "nRST_STOP"],
        )
        .connects(),
        case(
            "ob_value_out_of_range",
            F411,
            &ob("BOR_LEV=9"),
            2,
            &["BOR_LEV=9: valid values are 0 (level 3"],
        )
        .connects(),
        case(
            "ob_one_bit_field_out_of_range",
            F411,
            &ob("nRST_STOP=2"),
            2,
            &["nRST_STOP=2: valid values are 0 (resets the chip) or 1 (no reset)"],
        )
        .connects(),
        case(
            "ob_value_not_a_number",
            L476,
            &ob("BOR_LEV=high"),
            2,
            &["BOR_LEV=high: valid values are"],
        )
        .connects(),
        case(
            "ob_not_an_assignment",
            F411,
            &ob("BOR_LEV"),
            2,
            &["'BOR_LEV' is not NAME=VALUE"],
        ),
        case(
            "ob_rdp_level_2_without_its_flag",
            F411,
            &ob("RDP=2"),
            2,
            &[
                "RDP level 2 locks the chip for good",
                "--allow-permanent-lock",
            ],
        )
        .connects(),
        case(
            "ob_boot_lock_without_its_flag",
            G474,
            &ob("BOOT_LOCK=1"),
            2,
            &[
                "BOOT_LOCK=1 makes the chip always boot its flash",
                "--allow-permanent-lock",
            ],
        )
        .connects(),
        case(
            "readout_unprotect_without_its_flag",
            F411,
            &["protect", "--port", "{port}", "readout", "off"],
            2,
            &["MASS-ERASES the whole flash", "--confirm-mass-erase"],
        ),
        case(
            "write_protect_without_pages",
            F411,
            &["protect", "--port", "{port}", "write", "on"],
            2,
            &["protect write on needs the pages or sectors"],
        ),
        case(
            "write_protect_a_page_past_the_last",
            F411,
            &["protect", "--port", "{port}", "write", "on", "99"],
            2,
            &["STM32F411xC/xE has no page 99", "numbered 0..7"],
        )
        .connects(),
        case(
            "write_unprotect_with_pages",
            F411,
            &["protect", "--port", "{port}", "write", "off", "1"],
            2,
            &["protect write off clears all write protection and takes no sectors"],
        ),
        case(
            "write_protect_pages_backwards",
            F411,
            &["protect", "--port", "{port}", "write", "on", "3..1"],
            2,
            &["page range 3..1 runs backwards"],
        ),
        case(
            "otp_write_to_a_used_block",
            F411,
            &otp(&[
                "write",
                "--block",
                "0",
                "--hex",
                "00 00 00 00",
                "--confirm-otp",
            ]),
            2,
            &[
                "0x1FFF7800-0x1FFF7803 is not blank",
                "0x1FFF7800 holds 4F",
                "cannot be erased",
            ],
        )
        .connects(),
        case(
            "otp_write_to_a_locked_block",
            F411,
            &otp(&[
                "write",
                "--block",
                "1",
                "--hex",
                "11 22 33 44",
                "--confirm-otp",
            ]),
            2,
            &["block 1", "is locked", "0x1FFF7A01"],
        )
        .connects(),
        case(
            "otp_write_without_confirmation",
            F411,
            &otp(&["write", "--block", "2", "--hex", "11 22 33 44"]),
            2,
            &[
                "can never be undone",
                "0x1FFF7840-0x1FFF7843",
                "--confirm-otp",
            ],
        )
        .connects(),
        case(
            "otp_lock_without_confirmation",
            F411,
            &otp(&["lock", "2"]),
            2,
            &["a lock can never be undone", "0x1FFF7A02", "--confirm-otp"],
        )
        .connects(),
        case(
            "otp_write_at_an_unaligned_address",
            F411,
            &otp(&[
                "write",
                "--address",
                "0x1FFF7842",
                "--hex",
                "11 22 33 44",
                "--confirm-otp",
            ]),
            2,
            &[
                "0x1FFF7842 is not a multiple of 4",
                "0x1FFF7840 or 0x1FFF7844",
            ],
        )
        .connects(),
        case(
            "otp_write_into_the_lock_bytes",
            F411,
            &otp(&[
                "write",
                "--address",
                "0x1FFF7A04",
                "--hex",
                "00 00 00 00",
                "--confirm-otp",
            ]),
            2,
            &[
                "0x1FFF7A04-0x1FFF7A07 reaches the OTP lock bytes",
                "otp lock",
            ],
        )
        .connects(),
        case(
            "otp_block_past_the_last",
            F411,
            &otp(&[
                "write",
                "--block",
                "16",
                "--hex",
                "11 22 33 44",
                "--confirm-otp",
            ]),
            2,
            &["block 16 does not exist", "blocks 0-15 of 32 bytes"],
        )
        .connects(),
        case(
            "otp_data_not_hex",
            F411,
            &otp(&["write", "--block", "2", "--hex", "01 0G", "--confirm-otp"]),
            2,
            &["--hex: '0G' is not hex"],
        ),
        case(
            "otp_double_word_not_aligned",
            L476,
            &otp(&[
                "write",
                "--address",
                "0x1FFF7044",
                "--hex",
                "01 02 03 04 05 06 07 08",
                "--confirm-otp",
            ]),
            2,
            &[
                "0x1FFF7044 is not a multiple of 8",
                "0x1FFF7040 or 0x1FFF7048",
            ],
        )
        .connects(),
        case(
            "otp_double_word_already_written",
            L476,
            &otp(&[
                "write",
                "--address",
                "0x1FFF7000",
                "--hex",
                "00 00 00 00 00 00 00 00",
                "--confirm-otp",
            ]),
            2,
            &["double word at 0x1FFF7000", "already written"],
        )
        .connects(),
        case(
            "otp_on_a_part_without_otp",
            F103,
            &otp(&[
                "write",
                "--block",
                "0",
                "--hex",
                "11 22 33 44",
                "--confirm-otp",
            ]),
            2,
            &["STM32F10x medium density has no OTP area"],
        )
        .connects(),
    ]
}

/// Device, configuration, coefficient and job files.
fn file_cases() -> Vec<Case> {
    let info_with = |flag: &'static str, file: &'static str| -> Vec<&'static str> {
        vec!["info", flag, file, "--port", "{port}"]
    };
    let coeffs = |layout: &'static str, values: &'static str| -> Vec<&'static str> {
        vec!["coeffs", "write", layout, values, "--port", "{port}"]
    };
    let run_job = vec!["run", "job.toml", "--port", "{port}"];
    vec![
        case(
            "device_file_unknown_key",
            F411,
            &info_with("--device-file", "dev.toml"),
            2,
            &["dev.toml", "unknown field `bogus`"],
        )
        .file("dev.toml", device_entry("bogus = 1\n")),
        case(
            "device_file_wrong_type",
            F411,
            &info_with("--device-file", "dev.toml"),
            2,
            &["dev.toml", "line 2", "invalid type: string \"0x4FF\", expected u16"],
        )
        .file(
            "dev.toml",
            device_entry("").replace("pid = 0x4FF", "pid = \"0x4FF\""),
        ),
        case(
            "device_file_missing_field",
            F411,
            &info_with("--device-file", "dev.toml"),
            2,
            &["dev.toml", "missing field `family`"],
        )
        .file("dev.toml", device_entry("").replace("family = \"F4\"\n", "")),
        case(
            "device_file_not_toml",
            F411,
            &info_with("--device-file", "dev.toml"),
            2,
            &["dev.toml", "TOML parse error at line 1"],
        )
        .file("dev.toml", "this is [not toml\n"),
        case(
            "device_file_missing",
            F411,
            &info_with("--device-file", "no-such.toml"),
            2,
            &["cannot read the device file no-such.toml", "No such file"],
        ),
        case(
            "config_unknown_key",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:2: unknown key 'prot' (did you mean 'protect'?)"],
        )
        .file("c.toml", "baud = 115200\nprot = [\"0x08000000:1K\"]\n"),
        case(
            "config_baud_not_a_number",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:1: baud must be an integer"],
        )
        .file("c.toml", "baud = \"fast\"\n"),
        case(
            "config_unknown_parity",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:1: parity = 'mark' is not one of even, none, odd"],
        )
        .file("c.toml", "parity = \"mark\"\n"),
        case(
            "config_names_no_known_part",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:1: device = \"stm32zzz\" names no part in the device table"],
        )
        .file("c.toml", "device = \"stm32zzz\"\n"),
        case(
            "config_expects_another_part",
            F411,
            &[
                "write",
                "fw.bin",
                "-a",
                "0x08000000",
                "--config",
                "c.toml",
                "--port",
                "{port}",
            ],
            2,
            &[
                "the chip is a STM32F411xC/xE (PID 0x431)",
                "c.toml:1 expects device = \"STM32L47x\"",
                "refusing to go on",
            ],
        )
        .file("c.toml", "device = \"STM32L47x\"\n")
        .file("fw.bin", pattern(64, 10))
        .connects(),
        case(
            "config_bad_entry_sequence",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:1: before: sequence 'dtr,bogus': unknown signal 'bogus'"],
        )
        .file("c.toml", "before = \"dtr,bogus\"\n"),
        case(
            "config_protect_without_a_length",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:1: protect: '0x08000000' is not ADDR:LEN"],
        )
        .file("c.toml", "protect = [\"0x08000000\"]\n"),
        case(
            "config_protected_range_without_force",
            F411,
            &[
                "write",
                "fw.bin",
                "-a",
                "0x08004010",
                "--config",
                "c.toml",
                "--port",
                "{port}",
            ],
            2,
            &["page 1 (0x08004000", "protected range 0x08007800+2048", "--force"],
        )
        .file("c.toml", "protect = [\"0x08007800:2K\"]\n")
        .file("fw.bin", pattern(64, 11))
        .connects(),
        case(
            "config_duplicate_key",
            F411,
            &info_with("--config", "c.toml"),
            2,
            &["c.toml:2: not valid TOML: duplicate key `baud`"],
        )
        .file("c.toml", "baud = 115200\nbaud = 9600\n"),
        case(
            "config_file_missing",
            F411,
            &info_with("--config", "no-such.toml"),
            2,
            &["no-such.toml: cannot read it", "No such file"],
        ),
        case(
            "coeffs_layout_unknown_type",
            L476,
            &coeffs("lay.toml", "values.toml"),
            2,
            &[
                "layout lay.toml, line 12: field 'gain': unknown type \"f33\"",
                "valid types: u8",
            ],
        )
        .file(
            "lay.toml",
            replaced(SENSOR_LAYOUT, "type = \"f32\"", "type = \"f33\""),
        )
        .file("values.toml", SENSOR_VALUES),
        case(
            "coeffs_layout_unaligned_address",
            L476,
            &coeffs("lay.toml", "values.toml"),
            2,
            &["layout lay.toml, line 6: address 0x080FF001 is not a multiple of 8"],
        )
        .file(
            "lay.toml",
            replaced(SENSOR_LAYOUT, "address = 0x080FF000", "address = 0x080FF001"),
        )
        .file("values.toml", SENSOR_VALUES),
        case(
            "coeffs_layout_slots_in_one_page",
            L476,
            &coeffs("lay.toml", "values.toml"),
            2,
            &[
                "layout lay.toml: slots A (0x080FF000) and B (0x080FF100) share page 510",
                "erasing one slot would erase the other",
            ],
        )
        .file(
            "lay.toml",
            replaced(SENSOR_LAYOUT, "address_b = 0x080FF800", "address_b = 0x080FF100"),
        )
        .file("values.toml", SENSOR_VALUES)
        .connects(),
        case(
            "coeffs_layout_outside_flash",
            L476,
            &coeffs("lay.toml", "values.toml"),
            2,
            &["layout lay.toml: slot A at 0x090FF000 (64 bytes) is not inside the flash"],
        )
        .file(
            "lay.toml",
            replaced(SENSOR_LAYOUT, "address = 0x080FF000", "address = 0x090FF000"),
        )
        .file("values.toml", SENSOR_VALUES)
        .connects(),
        case(
            "coeffs_value_out_of_range",
            L476,
            &coeffs("sensor.toml", "v.toml"),
            2,
            &["values v.toml, line 3: field 'offset': 3000000000 is out of range for i32"],
        )
        .file("sensor.toml", SENSOR_LAYOUT)
        .file(
            "v.toml",
            replaced(SENSOR_VALUES, "offset = -412", "offset = 3000000000"),
        ),
        case(
            "coeffs_value_for_no_field",
            L476,
            &coeffs("sensor.toml", "v.toml"),
            2,
            &["values v.toml, line 2: 'gian' is not a field of layout sensor.toml"],
        )
        .file("sensor.toml", SENSOR_LAYOUT)
        .file("v.toml", replaced(SENSOR_VALUES, "gain =", "gian =")),
        case(
            "coeffs_value_missing",
            L476,
            &coeffs("sensor.toml", "v.toml"),
            2,
            &["values v.toml: no value for calibrated_at"],
        )
        .file("sensor.toml", SENSOR_LAYOUT)
        .file(
            "v.toml",
            replaced(SENSOR_VALUES, "calibrated_at = 1718000000\n", ""),
        ),
        case(
            "coeffs_bytes_too_long",
            L476,
            &coeffs("sensor.toml", "v.toml"),
            2,
            &["values v.toml, line 5: field 'serial'", "is 28 bytes long; the field holds 16"],
        )
        .file("sensor.toml", SENSOR_LAYOUT)
        .file(
            "v.toml",
            replaced(SENSOR_VALUES, "PS-2024-0001", "PS-2024-0001-TOO-LONG-FOR-16"),
        ),
        case(
            "coeffs_table_without_this_chip",
            L476,
            &[
                "coeffs",
                "write",
                "sensor.toml",
                "--table",
                "calib.csv",
                "--key",
                "uid",
                "--port",
                "{port}",
            ],
            2,
            &["table calib.csv: no row has uid", "nothing was written"],
        )
        .file("sensor.toml", SENSOR_LAYOUT)
        .file("calib.csv", CALIB_TABLE)
        .connects(),
        case(
            "job_unknown_key",
            L476,
            &run_job,
            2,
            &[
                "job.toml:7: unknown key `verfy` in a write step",
                "write steps take: name, file",
            ],
        )
        .file(
            "job.toml",
            job("do = \"write\"\nfile = \"fw.bin\"\naddress = 0x08000000\nverfy = true\n"),
        )
        .file("fw.bin", pattern(64, 12)),
        case(
            "job_unknown_step_kind",
            L476,
            &run_job,
            2,
            &["job.toml:4: step 1: unknown step kind do = \"flash\""],
        )
        .file("job.toml", job("do = \"flash\"\n")),
        case(
            "job_go_before_the_last_step",
            L476,
            &run_job,
            2,
            &["step 1 (go)", "must be the last step"],
        )
        .file(
            "job.toml",
            job("do = \"go\"\n\n[[step]]\ndo = \"erase\"\nall = true\n"),
        ),
        case(
            "job_otp_without_confirmation",
            L476,
            &run_job,
            2,
            &["job.toml:4: step 1 (otp)", "add confirm_otp = true"],
        )
        .file(
            "job.toml",
            job("do = \"otp\"\nhex = \"01 02 03 04 05 06 07 08\"\naddress = 0x1FFF7008\n"),
        ),
        case(
            "job_image_missing",
            L476,
            &run_job,
            2,
            &["job.toml:5: step 1 (write): image missing.hex", "No such file"],
        )
        .file("job.toml", job("do = \"write\"\nfile = \"missing.hex\"\n")),
        case(
            "job_malformed_image",
            L476,
            &run_job,
            2,
            &["step 1 (write)", "bad.hex line 1", "checksum mismatch"],
        )
        .file("job.toml", job("do = \"write\"\nfile = \"bad.hex\"\n"))
        .file("bad.hex", format!(":0400000001020304F0\n{IHEX_EOF}")),
        case(
            "job_range_without_a_length",
            L476,
            &run_job,
            2,
            &["job.toml:5: step 1 (erase): range: '0x08000000' is not ADDR:LEN"],
        )
        .file("job.toml", job("do = \"erase\"\nrange = \"0x08000000\"\n")),
        case(
            "job_unknown_option_byte",
            L476,
            &run_job,
            2,
            &["step 1 (ob): no STM32 family has an option called BOGUS"],
        )
        .file("job.toml", job("do = \"ob\"\nset = { BOGUS = 1 }\n")),
        case(
            "job_connect_baud_not_a_number",
            L476,
            &run_job,
            2,
            &["job.toml:4: [connect] baud: 'fast' is not a 32-bit number"],
        )
        .file(
            "job.toml",
            "name = \"bad\"\n\n[connect]\nbaud = \"fast\"\n\n[[step]]\ndo = \"erase\"\nall = true\n",
        ),
        case(
            "job_without_steps",
            L476,
            &run_job,
            2,
            &["job.toml: the job has no steps"],
        )
        .file("job.toml", "name = \"empty\"\n"),
        case(
            "job_page_the_part_does_not_have",
            L476,
            &run_job,
            2,
            &["step 1 (erase pages 600)", "has no page 600", "numbered 0..511"],
        )
        .file("job.toml", job("do = \"erase\"\npages = \"600\"\n"))
        .connects(),
    ]
}

/// Port URLs, entry sequences and line settings.
fn port_cases() -> Vec<Case> {
    let info = |port: &'static str| -> Vec<&'static str> { vec!["info", "--port", port] };
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["info", "--port", "{port}"];
        v.extend_from_slice(extra);
        v
    };
    vec![
        case(
            "sim_unknown_part",
            F411,
            &info("sim:stm32zz9?state=new.sim"),
            2,
            &[
                "no part named 'stm32zz9' in the device table",
                "stm32boot devices",
            ],
        )
        .absent("new.sim"),
        case(
            "sim_unknown_query_key",
            F411,
            &info("sim:stm32f411?state={state}&colour=blue"),
            2,
            &[
                "unknown sim option 'colour'",
                "valid options are state, version",
            ],
        ),
        case(
            "sim_query_key_without_value",
            F411,
            &info("sim:stm32f411?state={state}&timing"),
            2,
            &["sim option 'timing' needs a value (key=value)"],
        ),
        case(
            "sim_bad_duration",
            F411,
            &info("sim:stm32f411?state={state}&latency=fast"),
            2,
            &["sim option latency=fast", "'fast' is not a duration"],
        ),
        case(
            "sim_bad_command_number",
            F411,
            &info("sim:stm32f411?state={state}&nack_at=0"),
            2,
            &["sim option nack_at=0", "give a command number from 1"],
        ),
        case(
            "tcp_without_port",
            F411,
            &info("tcp://127.0.0.1"),
            2,
            &["'tcp://127.0.0.1': no port", "tcp://HOST:PORT"],
        ),
        case(
            "tcp_port_out_of_range",
            F411,
            &info("tcp://127.0.0.1:99999"),
            2,
            &["'99999' is not a port number (1 to 65535)"],
        ),
        case(
            "rfc2217_host_with_a_space",
            F411,
            &info("rfc2217://bad host:7000"),
            2,
            &[
                "'rfc2217://bad host:7000': only a host and a port may follow the scheme",
                "rfc2217://HOST:PORT",
            ],
        ),
        case(
            "rfc2217_without_host",
            F411,
            &info("rfc2217://:7000"),
            2,
            &["'rfc2217://:7000': no host"],
        ),
        case(
            "rfc2217_ipv6_without_brackets",
            F411,
            &info("rfc2217://::1:7000"),
            2,
            &["write an IPv6 address in brackets, as [::1]:7000"],
        ),
        case(
            "modem_unknown_profile",
            F411,
            &info("modem:/dev/null?profile=nokia&apn=x&host=127.0.0.1&port=7000"),
            2,
            &[
                "unknown profile 'nokia'",
                "telit, simcom, ublox, quectel or hayes",
            ],
        ),
        case(
            "modem_without_profile",
            F411,
            &info("modem:/dev/null?apn=x&host=127.0.0.1&port=7000"),
            2,
            &["profile= is required"],
        ),
        case(
            "relay_without_host_and_port",
            F411,
            &info("relay://"),
            2,
            &["'relay://': no host and port", "relay://HOST:PORT"],
        ),
        case(
            "relay_port_not_a_number",
            F411,
            &info("relay://gateway:port"),
            2,
            &["'port' is not a port number"],
        ),
        case(
            "relay_unknown_query_key",
            F411,
            &info("relay://127.0.0.1:7000?colour=1"),
            2,
            &["unknown or empty option 'colour' (known: key_file)"],
        ),
        case(
            "relay_with_a_path",
            F411,
            &info("relay://127.0.0.1:7000/ttyUSB0"),
            2,
            &["only a host and a port may follow the scheme"],
        ),
        case(
            "relay_key_in_the_url",
            F411,
            &info("relay://127.0.0.1:7000?key=supersecretvalue123"),
            2,
            &["cannot be part of the port"],
        )
        .hidden("supersecretvalue123"),
        // Nothing listens on port 1: the key is checked before anything is connected.
        case(
            "relay_key_file_missing",
            F411,
            &info("relay://127.0.0.1:1?key_file=no-such.key"),
            2,
            &[
                "relay://127.0.0.1:1: nothing was connected",
                "reading the relay key file no-such.key",
            ],
        ),
        case(
            "relay_key_file_too_short",
            F411,
            &info("relay://127.0.0.1:1?key_file=short.key"),
            2,
            &["the relay key from the file short.key is 12 bytes long; use at least 16"],
        )
        .file("short.key", "s3cr3t-short\n")
        .hidden("s3cr3t-short"),
        case(
            "relay_key_variable_too_short",
            F411,
            &info("relay://127.0.0.1:1"),
            2,
            &["the relay key from $STM32BOOT_RELAY_KEY is 10 bytes long"],
        )
        .env("STM32BOOT_RELAY_KEY", "tiny-s3crt")
        .hidden("tiny-s3crt"),
        case(
            "unsupported_scheme",
            F411,
            &info("gopher://127.0.0.1:7000"),
            2,
            &["'gopher://' ports are not supported", "relay://HOST:PORT"],
        ),
        case(
            "listen_bad_wait",
            F411,
            &info("listen://127.0.0.1:5000?wait=forever"),
            2,
            &["wait=forever", "'forever' is not a duration"],
        ),
        case(
            "usb_vendor_not_hex",
            F411,
            &info("usb:zzzz:6001"),
            2,
            &["vendor ID 'zzzz' is not a hex number", "usb:0403:6001"],
        ),
        case(
            "before_unknown_signal",
            F411,
            &with(&["--before", "dtr,bogus"]),
            2,
            &[
                "sequence 'dtr,bogus': unknown signal 'bogus'",
                "dtr-reset-rts-boot0",
            ],
        ),
        case(
            "before_misspelt_preset",
            F411,
            &with(&["--before", "dtr-reset-rts-boot1"]),
            2,
            &[
                "unknown signal 'dtr-reset-rts-boot1'",
                "give a preset (dtr-reset-rts-boot0",
            ],
        ),
        case(
            "before_from_the_environment",
            F411,
            &with(&[]),
            2,
            &["sequence 'rts,zap': unknown signal 'zap'"],
        )
        .env("STM32BOOT_BEFORE", "rts,zap"),
        case(
            "after_reset_without_wiring",
            F411,
            &with(&["--after", "reset"]),
            2,
            &[
                "--after reset needs to know the wiring",
                "dtr-reset-rts-boot0",
            ],
        ),
        case(
            "after_unknown_value",
            F411,
            &with(&["--after", "sideways"]),
            2,
            &[
                "invalid value 'sideways' for '--after <AFTER>'",
                "none, go, reset",
            ],
        ),
        case(
            "baud_below_range",
            F411,
            &with(&["--baud", "50"]),
            2,
            &["50 baud is out of range (300 to 4000000)"],
        ),
        case(
            "baud_not_a_number",
            F411,
            &with(&["--baud", "fast"]),
            2,
            &["invalid value 'fast' for '--baud <BAUD>'"],
        ),
        case(
            "baud_from_the_environment_out_of_range",
            F411,
            &with(&[]),
            2,
            &[
                "invalid value '9000000' for '--baud <BAUD>'",
                "out of range",
            ],
        )
        .env("STM32BOOT_BAUD", "9000000"),
        case(
            "timeout_scale_zero",
            F411,
            &with(&["--timeout-scale", "0"]),
            2,
            &["timeout scale 0 is out of range (0.01 to 1000)"],
        ),
        case(
            "enter_with_an_unknown_escape",
            F411,
            &with(&["--enter", "BOOT\\q"]),
            2,
            &["unknown escape '\\q' in 'BOOT\\q'", "\\xNN"],
        ),
        case(
            "enter_parity_without_enter",
            F411,
            &with(&["--enter-parity", "none"]),
            2,
            &["--enter <STRING>"],
        ),
    ]
}

fn catalogue() -> Vec<Case> {
    let mut all = image_cases();
    all.extend(address_cases());
    all.extend(option_cases());
    all.extend(file_cases());
    all.extend(port_cases());
    all
}

// ---- running a case ---------------------------------------------------------------------------

/// Everything of the chip a bad input must leave alone: the whole flash, every option-byte
/// window, the OTP area (lock bytes included), and the erase counters.
struct Snapshot {
    regions: Vec<(String, u32, Vec<u8>)>,
    erase_counts: Vec<u32>,
}

fn snapshot(sim: &SimChip) -> Snapshot {
    let chip = sim.chip();
    let d = chip.device().clone();
    let mut regions = Vec::new();
    let mut add = |name: String, start: u32, len: u64| {
        let bytes = chip.peek(start, len as usize).expect("mapped");
        regions.push((name, start, bytes));
    };
    add("flash".into(), d.flash.start, d.flash.len());
    for (i, w) in d.option_bytes.iter().enumerate() {
        add(format!("option bytes {i}"), w.start, w.len());
    }
    if let Some(otp) = d.otp {
        add("OTP".into(), otp.range.start, otp.range.len());
    }
    Snapshot {
        regions,
        erase_counts: chip.erase_counts().to_vec(),
    }
}

/// What differs between two snapshots (empty if nothing).
fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for ((name, start, a), (_, _, b)) in before.regions.iter().zip(&after.regions) {
        if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
            let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
            out.push(format!(
                "{name}: {n} byte(s) changed, the first at 0x{:08X} ({:02X} -> {:02X})",
                *start as usize + i,
                a[i],
                b[i]
            ));
        }
    }
    if before.erase_counts != after.erase_counts {
        out.push(format!(
            "erase counters changed: {:?} -> {:?}",
            before.erase_counts, after.erase_counts
        ));
    }
    out
}

/// Known content: a pattern in the whole flash, and in the OTP a used block 0 and a locked
/// block 1 (F2/F4/F7) or a used first double word (L4, G4, ...).
fn prepare(part: &str) -> SimChip {
    let sim = SimChip::new(part);
    let mut chip = sim.chip();
    let flash = chip.device().flash;
    chip.write(
        Area::Flash,
        flash.start,
        &pattern(flash.len() as usize, 0xBAD),
    );
    if let Some(otp) = chip.device().otp {
        let data = [0x4F, 0x54, 0x50, 0x21, 0x01, 0x02, 0x03, 0x04];
        chip.write(Area::Otp, otp.range.start, &data);
        if let Some(locks) = otp.lock_start {
            chip.write(Area::Otp, locks, &[0xFF, 0x00, 0xFF, 0xFF]);
        }
    }
    stm32boot::sim::state::save(&chip, &sim.state()).expect("state saves");
    sim
}

/// Run `stm32boot` in `dir` with a clean environment plus `env`.
fn run_clean(dir: &Path, env: &[(&'static str, String)], args: &[String]) -> Output {
    let state = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stm32boot"));
    cmd.args(args).current_dir(dir).env("RUST_BACKTRACE", "1");
    for var in [
        "STM32BOOT_PORT",
        "STM32BOOT_BAUD",
        "STM32BOOT_JOURNAL",
        "STM32BOOT_BEFORE",
        "STM32BOOT_AFTER",
        "STM32BOOT_CONFIG",
        "STM32BOOT_RELAY_KEY",
        "STM32BOOT_RELAY_KEY_FILE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("STM32BOOT_STATE_DIR", state.path())
        .env("XDG_CONFIG_HOME", state.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// Run one case; the problems found (empty if it passed).
fn check(c: &Case) -> Vec<String> {
    let sim = prepare(c.part);
    for (name, content) in &c.files {
        std::fs::write(sim.file(name), content).expect("test setup");
    }
    let before = snapshot(&sim);
    let state_bytes = std::fs::read(sim.state()).expect("state file");
    let state_time = std::fs::metadata(sim.state())
        .and_then(|m| m.modified())
        .expect("state file time");
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| {
            a.replace("{port}", &sim.port())
                .replace("{state}", path_str(&sim.state()))
        })
        .collect();
    let out = run_clean(sim.dir.path(), &c.env, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    if out.status.code() != Some(c.code) {
        problems.push(format!(
            "exit code {:?}, expected {}",
            out.status.code(),
            c.code
        ));
    }
    if stderr.contains("panicked") {
        problems.push("it panicked".into());
    }
    for needle in &c.needles {
        if !stderr.contains(needle) {
            problems.push(format!("stderr lacks {needle:?}"));
        }
    }
    for secret in &c.hidden {
        if stderr.contains(secret) || stdout.contains(secret) {
            problems.push(format!("the output shows the secret {secret:?}"));
        }
    }
    for file in &c.absent {
        if sim.file(file).exists() {
            problems.push(format!("{file} was created"));
        }
    }
    problems.extend(differences(&before, &snapshot(&sim)));
    if c.stage == Stage::BeforeOpen {
        let bytes = std::fs::read(sim.state()).expect("state file");
        let time = std::fs::metadata(sim.state())
            .and_then(|m| m.modified())
            .expect("state file time");
        if bytes != state_bytes || time != state_time {
            problems.push(
                "the simulator's state file was rewritten: the port was opened before the \
                 input was refused"
                    .into(),
            );
        }
    }
    if problems.is_empty() {
        return problems;
    }
    vec![format!(
        "case {} (stm32boot {}):\n    {}\n  stdout: {}\n  stderr: {}",
        c.name,
        args.join(" "),
        problems.join("\n    "),
        stdout.trim(),
        stderr.trim()
    )]
}

fn run_cases(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let failures: Vec<String> = cases.iter().flat_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} case(s) failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn catalogue_has_at_least_40_cases() {
    let all = catalogue();
    assert!(all.len() >= 45, "only {} cases", all.len());
    let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "case names must be unique");
    // Most bad input is caught before the port opens.
    let early = all.iter().filter(|c| c.stage == Stage::BeforeOpen).count();
    assert!(early * 2 > all.len(), "{early} of {}", all.len());
}

#[test]
fn malformed_truncated_and_missing_images_are_refused() {
    run_cases(image_cases());
}

#[test]
fn addresses_and_ranges_the_part_does_not_have_are_refused() {
    run_cases(address_cases());
}

#[test]
fn option_byte_protection_and_otp_requests_are_refused() {
    run_cases(option_cases());
}

#[test]
fn bad_device_config_coefficient_and_job_files_are_refused() {
    run_cases(file_cases());
}

#[test]
fn bad_ports_sequences_and_line_settings_are_refused() {
    run_cases(port_cases());
}

/// `stm32boot relay` in front of a pseudo-terminal; killed when dropped.
struct RelayProcess {
    child: std::process::Child,
    url: String,
}

impl RelayProcess {
    fn start(tty: &Path, key_file: &Path) -> RelayProcess {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_stm32boot"))
            .args(["relay", "--port", path_str(tty), "--listen", "127.0.0.1:0"])
            .arg("--key-file")
            .arg(key_file)
            .env_remove("STM32BOOT_RELAY_KEY")
            .env_remove("STM32BOOT_RELAY_KEY_FILE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the relay starts");
        let stdout = child.stdout.take().expect("relay stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let url = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(url.starts_with("relay://"), "the relay printed {url:?}");
        RelayProcess { child, url }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The catalogue's one networked case: a client holding another key than the relay's.
#[test]
fn a_wrong_relay_key_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let sim = prepare(F411);
    let before = snapshot(&sim);
    let key = sim.file("relay.key");
    std::fs::write(&key, "7f3a9c1e5b2d8f4061a7c3e9b5d1f2a8\n").expect("test setup");
    let wrong = sim.file("wrong.key");
    std::fs::write(&wrong, "0123456789abcdef-not-the-key\n").expect("test setup");
    for k in [&key, &wrong] {
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).expect("test setup");
    }
    std::fs::write(sim.file("fw.bin"), pattern(4096, 13)).expect("test setup");
    let pty = PtySim::start(&sim);
    let relay = RelayProcess::start(&pty.link, &key);
    let args: Vec<String> = [
        "write",
        "fw.bin",
        "-a",
        "0x08000000",
        "--verify",
        "--parity",
        "none",
        "--port",
        relay.url.as_str(),
    ]
    .map(String::from)
    .to_vec();
    let out = run_clean(
        sim.dir.path(),
        &[("STM32BOOT_RELAY_KEY_FILE", path_str(&wrong).to_string())],
        &args,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot open {}", relay.url))
            && stderr.contains("the relay refused the key"),
        "{stderr}"
    );
    drop(relay);
    pty.stop();
    let problems = differences(&before, &snapshot(&sim));
    assert!(problems.is_empty(), "{problems:?}");
}
