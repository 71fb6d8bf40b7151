//! Sizes and rates as users write them: the one parser every NovaCron command line uses.
//!
//! Sizes are binary: `4096` (bytes), `64K`, `128M`, `2G`, `1T`, each optionally followed by
//! `i` and/or `B` (`2GiB`, `64KB`). Rates are bytes per second in the same syntax, optionally
//! ending in `/s`, or bits per second with decimal SI prefixes as `tc` writes them: `500kbit`,
//! `100mbit`, `1.5gbit`. Zero is not a rate.

use thiserror::Error;

/// A size or rate that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    /// Not a size.
    #[error("invalid size '{0}': expected a number of bytes with an optional K, M, G or T suffix (binary units), e.g. 128M or 2GiB")]
    Size(String),
    /// Not a rate.
    #[error("invalid rate '{0}': expected bytes per second (e.g. 10M, 64KiB/s) or bits per second (e.g. 500kbit, 100mbit, 1gbit), greater than zero")]
    Rate(String),
}

/// Parses `128M`, `1G`, `2GiB`, `65536K`, `4096` (bytes) into bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::Size(s.to_string());
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() && t.len() == s.trim().len() => (t, 1),
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parses a rate into bytes per second: `100mbit`, `5Mbit`, `500kbit`, `1.5gbit` (bits,
/// decimal), or `10M`, `64KiB/s`, `4096` (bytes, binary). Zero is refused.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let lower = s.trim().to_ascii_lowercase();
    let bad = || UnitError::Rate(s.to_string());
    for (suffix, bits) in [
        ("gbit", 1_000_000_000f64),
        ("mbit", 1_000_000f64),
        ("kbit", 1000f64),
        ("bit", 1f64),
    ] {
        if let Some(n) = lower.strip_suffix(suffix) {
            let v: f64 = n.trim().parse().map_err(|_| bad())?;
            let bytes = v * bits / 8.0;
            if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
                return Err(bad());
            }
            return Ok(bytes as u64);
        }
    }
    let t = lower.strip_suffix("/s").unwrap_or(&lower);
    match parse_size(t) {
        Ok(0) | Err(_) => Err(bad()),
        Ok(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 1T "), Ok(1 << 40));
        assert_eq!(parse_size("17179869183G"), Ok(17_179_869_183 << 30));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "2Q",
            "M",
            "12b",
            "lots",
            "-5M",
            "99999999999999999999G",
            "99999999999999999G",
            "17179869184G",
            "16777216T",
            "18014398509481984K",
            "18446744073709551616",
            "",
            "1.5G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("5mbit"), Ok(625_000));
        assert_eq!(parse_rate("8Mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("1.5gbit"), Ok(187_500_000));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("8kbit"), Ok(1000));
        assert_eq!(parse_rate("10MB"), Ok(10 << 20));
        assert_eq!(parse_rate("64KiB"), Ok(65_536));
        assert_eq!(parse_rate("64KiB/s"), Ok(65_536));
        assert_eq!(parse_rate("1000"), Ok(1000));
        for bad in [
            "fast",
            "0",
            "0mbit",
            "-1mbit",
            "10mbps",
            "3 furlongs",
            "4bit",
            "nanmbit",
            "infgbit",
            "99999999999999999G",
            "99999999999999999gbit",
            "1e300gbit",
            "18446744073709551616",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_input_and_the_syntax() {
        let e = parse_size("2Q").unwrap_err().to_string();
        assert!(e.contains("'2Q'") && e.contains("128M"), "{e}");
        let e = parse_rate("fast").unwrap_err().to_string();
        assert!(e.contains("'fast'") && e.contains("100mbit"), "{e}");
    }
}
