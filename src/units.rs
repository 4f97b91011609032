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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
