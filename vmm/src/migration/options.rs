//! Where a migration goes: the `tcp:HOST:PORT` address syntax. The options and the summary
//! themselves are contracts shared with the agent: `novacron_vmm_api::migration`.

use super::MigrationError;
pub use novacron_vmm_api::migration::{
    Compression, MigrateOptions, MigrationSummary, RoundSummary, MAX_ENCODER_THREADS,
};
use std::net::{SocketAddr, ToSocketAddrs};

/// Resolves `tcp:HOST:PORT`.
pub fn parse_tcp(s: &str) -> Result<SocketAddr, MigrationError> {
    let rest = s.strip_prefix("tcp:").ok_or_else(|| {
        MigrationError::Options(format!("invalid address '{s}': expected tcp:HOST:PORT"))
    })?;
    rest.to_socket_addrs()
        .map_err(|e| MigrationError::Options(format!("invalid address '{s}': {e}")))?
        .next()
        .ok_or_else(|| MigrationError::Options(format!("address '{s}' resolves to nothing")))
}

/// The host's available memory (`MemAvailable` of /proc/meminfo) in bytes; 0 if unknown.
pub fn host_available_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// Slowest bandwidth cap accepted (bytes/s), as in the options contract: below it even a
/// small guest's first pass takes hours.
pub const MIN_BANDWIDTH: u64 = 64 << 10;

/// Checks `opts` against a guest of `guest_bytes` and this host before a migration starts,
/// so bad options are answered at once and never pause the guest.
///
/// The contract is `MigrateOptions::validate(guest_bytes, host_available_bytes)` (owned by
/// the migration options in `novacron_vmm_api::migration`); until that lands on this
/// branch this is the subset the VMM needs: no bandwidth of 0 or below [`MIN_BANDWIDTH`], a delta cache that fits in
/// half the host's available memory, sane encoder threads, a non-zero timeout.
pub fn validate(opts: &MigrateOptions, guest_bytes: u64) -> Result<(), MigrationError> {
    let bad = |m: String| Err(MigrationError::Options(m));
    parse_tcp(&opts.to)?;
    if opts.bandwidth == Some(0) {
        return bad(
            "bandwidth 0 would never send anything: give a rate (e.g. 100mbit) or leave it unset for no limit"
                .into(),
        );
    }
    if let Some(b) = opts.bandwidth.filter(|&b| b < MIN_BANDWIDTH) {
        return bad(format!(
            "bandwidth {b} bytes/s is below the minimum of {MIN_BANDWIDTH} bytes/s (512 kbit/s): a migration that slow cannot finish"
        ));
    }
    if opts.timeout_s == 0 {
        return bad("timeout_s 0 is out of range: give at least 1 s".into());
    }
    let available = host_available_bytes();
    if opts.cache_bytes > 0 && available > 0 && opts.cache_bytes > available / 2 {
        return bad(format!(
            "cache size {} bytes is more than half of the host's available memory ({available} bytes available, at most {} allowed): use a smaller --cache-size",
            opts.cache_bytes,
            available / 2
        ));
    }
    if opts.cache_bytes > guest_bytes.saturating_mul(4) {
        return bad(format!(
            "cache size {} bytes is more than 4 x the guest's {guest_bytes} bytes of RAM: a larger cache cannot hold more pages",
            opts.cache_bytes
        ));
    }
    opts.encoder_threads()
        .map(|_| ())
        .map_err(|e| MigrationError::Options(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn opts() -> MigrateOptions {
        MigrateOptions {
            to: "tcp:127.0.0.1:4444".into(),
            ..MigrateOptions::default()
        }
    }

    fn refusal(o: MigrateOptions) -> String {
        validate(&o, GIB).unwrap_err().to_string()
    }

    #[test]
    fn sane_options_pass() {
        validate(&opts(), GIB).unwrap();
        let o = MigrateOptions {
            bandwidth: Some(100 << 20),
            cache_bytes: 64 << 20,
            ..opts()
        };
        validate(&o, GIB).unwrap();
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        let bw = |b| MigrateOptions {
            bandwidth: Some(b),
            ..opts()
        };
        assert!(refusal(bw(0)).contains("bandwidth 0"));
        assert!(refusal(bw(1000)).contains("below the minimum"));
        let cache = MigrateOptions {
            cache_bytes: 64 * GIB,
            ..opts()
        };
        assert!(refusal(cache).contains("cache size"));
        let timeout = MigrateOptions {
            timeout_s: 0,
            ..opts()
        };
        assert!(refusal(timeout).contains("timeout_s 0"));
        let threads = MigrateOptions {
            encoder_threads: 1000,
            ..opts()
        };
        assert!(refusal(threads).contains("too many"));
        let addr = MigrateOptions {
            to: "udp:x".into(),
            ..opts()
        };
        assert!(refusal(addr).contains("expected tcp:HOST:PORT"));
    }

    #[test]
    fn host_memory_is_read() {
        assert!(host_available_bytes() > 0, "/proc/meminfo has MemAvailable");
    }
}
