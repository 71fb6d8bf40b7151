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
