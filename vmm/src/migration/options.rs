//! Where a migration goes: the `tcp:HOST:PORT` address syntax. The options and the summary
//! themselves are contracts shared with the agent: `novacron_vmm_api::migration`.

use super::MigrationError;
pub use novacron_vmm_api::migration::{
    mem_available_bytes, Compression, MigrateOptions, MigrationSummary, RoundSummary,
    MAX_ENCODER_THREADS,
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

/// Checks `opts` against a guest of `guest_bytes` and this host's available memory before a
/// migration starts ([`MigrateOptions::validate`] plus the address), so bad options are
/// answered at once and never pause the guest.
pub fn validate(opts: &MigrateOptions, guest_bytes: u64) -> Result<(), MigrationError> {
    parse_tcp(&opts.to)?;
    // An unreadable /proc/meminfo only skips the host-memory check (0 = unknown); the
    // engine's own allocation of the cache is fallible as well.
    let available = mem_available_bytes().unwrap_or(0);
    opts.validate(guest_bytes, available)
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
        assert!(refusal(bw(100)).contains("below the minimum"));
        let cache = MigrateOptions {
            cache_bytes: 64 * GIB,
            ..opts()
        };
        assert!(refusal(cache).contains("cache size"));
        let timeout = MigrateOptions {
            timeout_s: 0,
            ..opts()
        };
        assert!(refusal(timeout).contains("timeout_s 0 is out of range"));
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
        assert!(
            mem_available_bytes().is_ok_and(|b| b > 0),
            "/proc/meminfo has MemAvailable"
        );
    }
}
