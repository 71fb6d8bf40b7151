//! Where a migration goes: the `tls:HOST:PORT` (mutual TLS with the migration's one-time
//! credential: what the agent always uses) and `tcp:HOST:PORT` (plain, for debugging at the
//! VMM's command line) address syntax. The options and the summary themselves are contracts
//! shared with the agent: `novacron_vmm_api::migration`.

use super::MigrationError;
use novacron_migration::transport::TlsContext;
pub use novacron_vmm_api::migration::{
    mem_available_bytes, Compression, MigrateOptions, MigrationSummary, MigrationTls, RoundSummary,
    MAX_ENCODER_THREADS,
};
use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed migration address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The socket address.
    pub addr: SocketAddr,
    /// `tls:` (true) or `tcp:`.
    pub tls: bool,
}

/// Resolves `tls:HOST:PORT` or `tcp:HOST:PORT`.
pub fn parse_addr(s: &str) -> Result<Address, MigrationError> {
    let (tls, rest) = match (s.strip_prefix("tls:"), s.strip_prefix("tcp:")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => {
            return Err(MigrationError::Options(format!(
                "invalid address '{s}': expected tls:HOST:PORT (or tcp:HOST:PORT for a plain debugging stream)"
            )))
        }
    };
    let addr = rest
        .to_socket_addrs()
        .map_err(|e| MigrationError::Options(format!("invalid address '{s}': {e}")))?
        .next()
        .ok_or_else(|| MigrationError::Options(format!("address '{s}' resolves to nothing")))?;
    Ok(Address { addr, tls })
}

/// The TLS configuration an address asks for: `tls:` needs the credential, `tcp:` refuses
/// one (a credential with a plain stream is surely a mistake). `server` is the
/// destination's side.
pub fn tls_context(
    addr: &str,
    a: &Address,
    tls: Option<&MigrationTls>,
    server: bool,
) -> Result<Option<TlsContext>, MigrationError> {
    match (a.tls, tls) {
        (true, Some(c)) => {
            let ctx = if server {
                TlsContext::server(c)
            } else {
                TlsContext::client(c)
            };
            ctx.map(Some).map_err(|e| MigrationError::Options(e.to_string()))
        }
        (true, None) => Err(MigrationError::Options(format!(
            "'{addr}' is a TLS address but no migration credential was given (--migration-tls-ca, --migration-tls-cert, --migration-tls-key, or `tls` in the migrate request)"
        ))),
        (false, Some(_)) => Err(MigrationError::Options(format!(
            "a migration credential was given for the plain address '{addr}': use tls:HOST:PORT"
        ))),
        (false, None) => Ok(None),
    }
}

/// Checks `opts` against a guest of `guest_bytes` and this host's available memory before a
/// migration starts ([`MigrateOptions::validate`] plus the address and its credential), so
/// bad options are answered at once and never pause the guest.
pub fn validate(opts: &MigrateOptions, guest_bytes: u64) -> Result<(), MigrationError> {
    let a = parse_addr(&opts.to)?;
    tls_context(&opts.to, &a, opts.tls.as_ref(), false)?;
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
        assert!(refusal(addr).contains("expected tls:HOST:PORT"));
        let no_credential = MigrateOptions {
            to: "tls:127.0.0.1:4444".into(),
            ..opts()
        };
        assert!(refusal(no_credential).contains("no migration credential"));
        let bad_credential = MigrateOptions {
            to: "tls:127.0.0.1:4444".into(),
            tls: Some(MigrationTls {
                ca_pem: "junk".into(),
                cert_pem: "junk".into(),
                key_pem: "junk".into(),
            }),
            ..opts()
        };
        assert!(refusal(bad_credential).contains("not valid PEM"));
    }

    #[test]
    fn host_memory_is_read() {
        assert!(
            mem_available_bytes().is_ok_and(|b| b > 0),
            "/proc/meminfo has MemAvailable"
        );
    }
}
