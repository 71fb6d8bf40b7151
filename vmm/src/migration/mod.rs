//! Live migration, the VMM's side: the engine (`novacron_migration`: wire format, codecs,
//! encoder threads, switchover decision, precopy and receive loops) driven over this
//! machine (`glue`: guest memory as unit source and sink, the hooks for pause, state and
//! start; `guest_pages`: vm-memory as a page store), the source's connection (`source`),
//! the destination's listener (`destination`), and the address syntax (`options`).

pub mod destination;
pub mod glue;
pub mod guest_pages;
pub mod options;
pub mod source;

use novacron_migration::session::SessionError;
use thiserror::Error;

/// Errors of a migration, on either side.
#[derive(Debug, Error)]
pub enum MigrationError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// Could not reach the destination.
    #[error("cannot connect to destination {addr}: {source}")]
    Connect {
        /// Address.
        addr: String,
        /// Error.
        source: std::io::Error,
    },
    /// The destination did not prove it is this migration's peer (or is not TLS at all).
    #[error("refusing destination {addr}: {source}; the guest keeps running here")]
    Tls {
        /// Address.
        addr: String,
        /// The handshake's failure.
        source: novacron_migration::transport::TransportError,
    },
    /// Could not listen for an incoming migration.
    #[error("cannot listen for incoming migration on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Error.
        source: std::io::Error,
    },
    /// No migration arrived before the accept deadline.
    #[error("no incoming migration arrived on {addr} within {secs} s (--incoming-timeout); {strays} other connection(s) were refused")]
    NoIncoming {
        /// Address listened on.
        addr: String,
        /// The deadline.
        secs: u64,
        /// Connections refused as not the awaited migration.
        strays: u32,
    },
    /// A disk to copy cannot be read, written, or is not a blank target.
    #[error(transparent)]
    Disk(#[from] novacron_migration::disk::DiskError),
    /// The migration session failed (stream, codecs, refusal, timeout, verification, state).
    #[error(transparent)]
    Session(#[from] SessionError),
}
