//! Live migration, the VMM's side: the engine (`novacron_migration`: wire format, codecs,
//! encoder threads, switchover decision) driven over this machine's guest memory
//! (`guest_pages`), the source's precopy (`source`), the destination (`destination`), and
//! the address syntax (`options`).

pub mod destination;
pub mod guest_pages;
pub mod options;
pub mod source;

use novacron_migration::{encoder_pool, protocol, CodecError};

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
    /// Could not listen for an incoming migration.
    #[error("cannot listen for incoming migration on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Error.
        source: std::io::Error,
    },
    /// Stream error.
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    /// The destination refused the guest.
    #[error("destination refused the migration: {0}")]
    Refused(String),
    /// The peer aborted.
    #[error("peer aborted the migration: {0}")]
    Aborted(String),
    /// Page batch encoding or decoding failed.
    #[error("page batch: {0}")]
    Codec(#[from] CodecError),
    /// The encoder threads failed.
    #[error(transparent)]
    Encoder(#[from] encoder_pool::PoolError),
    /// State capture or restore failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// KVM (dirty log) failed.
    #[error(transparent)]
    Vm(#[from] crate::kvm::vm::VmError),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Precopy did not converge within the timeout.
    #[error("migration did not converge within {secs} s ({rounds} rounds, {wire_mib:.1} MiB sent, {dirty} pages still dirty: the guest dirties memory faster than the link carries it); try --compression auto, --auto-converge, a larger --downtime-ms or a faster link")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// Rounds sent.
        rounds: usize,
        /// MiB put on the wire.
        wire_mib: f64,
        /// Pages dirty when the migration gave up.
        dirty: u64,
    },
    /// Final memory differs between source and destination.
    #[error("verification failed: {0}")]
    Verify(String),
    /// The connection failed.
    #[error("migration connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// Starting the guest on the destination failed.
    #[error("cannot start the guest: {0}")]
    Start(String),
}
