//! Command-line parsing: whitespace-separated `key=value` words. Unknown keys (and words
//! without `=`) are ignored, so loader- or user-added Linux-style keys are harmless.

use core::fmt::{self, Write};

use crate::serial::Line;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Idle,
    Ab,
    Rand,
    Fill,
    Hot,
    Reset,
    TripleFault,
    Counter,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::Ab => "ab",
            Workload::Rand => "rand",
            Workload::Fill => "fill",
            Workload::Hot => "hot",
            Workload::Reset => "reset",
            Workload::TripleFault => "triplefault",
            Workload::Counter => "counter",
        }
    }

    /// Whether the workload uses the memory region.
    pub fn uses_region(self) -> bool {
        matches!(self, Workload::Ab | Workload::Rand | Workload::Fill)
    }
}

pub struct Config {
    pub workload: Workload,
    /// Region size in MiB.
    pub mib: u64,
    pub hz: u64,
    pub report_ms: u64,
    pub passes: u64,
    pub rate: u64,
    pub bytes: u64,
    /// Hot-set size in MiB (fill, hot).
    pub hot: u64,
    pub seed: u64,
}

impl Config {
    /// Ticks between progress reports (0: no reports).
    pub fn report_ticks(&self) -> u64 {
        if self.report_ms == 0 {
            0
        } else {
            (self.report_ms.saturating_mul(self.hz) / 1000).max(1)
        }
    }
}

/// A malformed value: `key` and the offending text.
pub struct ParseError {
    pub key: &'static str,
    pub value: &'static [u8],
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad value for {}: ", self.key)?;
        for &b in self.value.iter().take(64) {
            f.write_char(if b.is_ascii_graphic() { b as char } else { '?' })?;
        }
        write!(f, " ({})", self.reason)
    }
}

impl ParseError {
    pub fn print(&self) {
        let mut line = Line::new();
        let _ = write!(line, "ERROR {self}");
        line.emit();
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

const KEYS: [&str; 9] = [
    "workload",
    "mib",
    "hz",
    "report_ms",
    "passes",
    "rate",
    "bytes",
    "hot",
    "seed",
];

/// The `hot` key's default: 128 MiB for `hot`, else a quarter of the region.
fn hot_default(workload: Workload, mib: u64) -> u64 {
    if workload == Workload::Hot {
        128
    } else {
        (mib / 4).max(1)
    }
}

/// Parses the command line. Later occurrences of a key override earlier ones.
pub fn parse(cmdline: &'static [u8]) -> Result<Config, ParseError> {
    let mut workload = Workload::Idle;
    let mut values: [Option<u64>; KEYS.len()] = [None; KEYS.len()];
    let mut raw: [&'static [u8]; KEYS.len()] = [b""; KEYS.len()];
    for word in cmdline.split(|b| b.is_ascii_whitespace()) {
        let Some(eq) = word.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&word[..eq], &word[eq + 1..]);
        let Some(index) = KEYS.iter().position(|k| k.as_bytes() == key) else {
            continue;
        };
        raw[index] = value;
        let err = |reason| ParseError {
            key: KEYS[index],
            value,
            reason,
        };
        if index == 0 {
            workload = match value {
                b"idle" => Workload::Idle,
                b"ab" => Workload::Ab,
                b"rand" => Workload::Rand,
                b"fill" => Workload::Fill,
                b"hot" => Workload::Hot,
                b"reset" => Workload::Reset,
                b"triplefault" => Workload::TripleFault,
                b"counter" => Workload::Counter,
                _ => return Err(err("unknown workload")),
            };
        } else {
            values[index] = Some(parse_u64(value).ok_or_else(|| err("not a number"))?);
        }
    }
    let index = |key: &str| KEYS.iter().position(|k| *k == key).unwrap_or(0);
    let get = |key: &str, default: u64| values[index(key)].unwrap_or(default);
    let range_err = |key: &'static str, reason| ParseError {
        key,
        value: raw[index(key)],
        reason,
    };
    let default_mib = if workload.uses_region() { 64 } else { 0 };
    let config = Config {
        workload,
        mib: get("mib", default_mib),
        hz: get("hz", 100),
        report_ms: get("report_ms", 200),
        passes: get("passes", 0),
        rate: get("rate", 0),
        bytes: get("bytes", 8),
        hot: 0,
        seed: get("seed", 1),
    };
    let config = Config {
        hot: get("hot", hot_default(workload, config.mib)),
        ..config
    };
    if !(1..=10_000).contains(&config.hz) {
        return Err(range_err("hz", "must be 1..10000"));
    }
    if workload.uses_region() && !(1..=4092).contains(&config.mib) {
        return Err(range_err("mib", "must be 1..4092"));
    }
    if !(1..=4096).contains(&config.bytes) {
        return Err(range_err("bytes", "must be 1..4096"));
    }
    if workload == Workload::Fill && !(1..=config.mib).contains(&config.hot) {
        return Err(range_err("hot", "must be 1..mib"));
    }
    Ok(config)
}
