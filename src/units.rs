//! Numbers as users and device files write them: decimal or `0x` hex with `_` separators, and
//! sizes with a `K` or `M` suffix.

/// Parse a 32-bit number: decimal or 0x-prefixed hex, `_` allowed.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let t = s.trim().replace('_', "");
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => t.parse::<u32>(),
    };
    r.map_err(|_| format!("'{s}' is not a 32-bit number (use decimal or 0x-prefixed hex)"))
}

/// Parse a number that must fit in `T` (u8, u16).
pub fn parse_small<T: TryFrom<u32>>(s: &str) -> Result<T, String> {
    let v = parse_u32(s)?;
    T::try_from(v).map_err(|_| format!("'{s}' is too large here"))
}

/// Parse a size: a number with an optional `K` (KiB) or `M` (MiB) suffix.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1024u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let v = u64::from(
        parse_u32(num).map_err(|_| format!("'{s}' is not a size (e.g. 4096, 0x1000, 16K, 1M)"))?,
    ) * mult;
    u32::try_from(v).map_err(|_| format!("'{s}' is larger than 4 GiB"))
}

/// Parse an address range `ADDR:LEN` (e.g. `0x08004000:16K`); the length must not be 0 and the
/// range must fit in the 32-bit address space.
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, l) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not ADDR:LEN (e.g. 0x08004000:16K)"))?;
    let addr = parse_u32(a)?;
    let len = parse_size(l)?;
    if len == 0 {
        return Err(format!("'{s}': the length is 0"));
    }
    if u64::from(addr) + u64::from(len) > 1 << 32 {
        return Err(format!("'{s}' runs past the end of the address space"));
    }
    Ok((addr, len))
}

/// The 1-based line of a byte offset in `text` (for errors in TOML files, whose parser gives
/// byte spans).
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Bytes from text with C-style escapes: `\r`, `\n`, `\t`, `\0`, `\\` and `\xNN`.
pub fn parse_escaped(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let v = u8::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 2)
                    .ok_or_else(|| format!("'\\x{hex}' in '{s}' needs two hex digits"))?;
                out.push(v);
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape '\\{other}' in '{s}': use \\r, \\n, \\t, \\0, \\\\ or \\xNN"
                ))
            }
            None => return Err(format!("'{s}' ends with a lone backslash")),
        }
    }
    if out.is_empty() {
        return Err("an empty string".into());
    }
    Ok(out)
}

/// Parse a duration such as `150ms`, `1s`, `20ms` or `2m` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration (e.g. 150ms, 1s, 2m): {e}"))
}

/// Parse a rate between 0 and 1 (`0.001`, or a percentage such as `0.1%`).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("'{s}' is not a rate (e.g. 0.001 or 0.1%)"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("'{s}' is not between 0 and 1"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_strings() {
        assert_eq!(parse_escaped("BOOT\\r\\n"), Ok(b"BOOT\r\n".to_vec()));
        assert_eq!(parse_escaped("a\\x7Fb\\\\"), Ok(b"a\x7Fb\\".to_vec()));
        assert!(parse_escaped("\\x7").is_err());
        assert!(parse_escaped("\\q")
            .expect_err("bad escape")
            .contains("unknown escape"));
        assert!(parse_escaped("x\\").is_err());
        assert!(parse_escaped("").is_err());
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(parse_u32("0x0800_0000"), Ok(0x0800_0000));
        assert_eq!(parse_u32("4096"), Ok(4096));
        assert!(parse_u32("0x1_0000_0000").is_err());
        assert_eq!(parse_size("16K"), Ok(16384));
        assert_eq!(parse_size("0x10k"), Ok(16 * 1024));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("4096M").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_small::<u8>("0x33"), Ok(0x33));
        assert!(parse_small::<u8>("0x133").is_err());
        assert_eq!(
            parse_duration("150ms"),
            Ok(std::time::Duration::from_millis(150))
        );
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_range("0x08004000:16K"), Ok((0x0800_4000, 16384)));
        assert!(parse_range("0x08004000").is_err());
        assert!(parse_range("0xFFFFFF00:1K").is_err());
        assert!(parse_range("0x0:0").is_err());
        assert_eq!(parse_rate("0.5%"), Ok(0.005));
        assert!(parse_rate("2").is_err());
    }
}
