//! What both ends of a migration session share: the session's errors and the hooks'
//! error type.

use crate::encoder_pool::PoolError;
use crate::error::CodecError;
use crate::protocol::ProtocolError;
use crate::unit::{SourceId, UnitError};

/// An error of a hook the VMM supplies (state capture or restore, starting the guest).
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of a migration session, on either side.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// Stream error.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
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
    Encoder(#[from] PoolError),
    /// Reading units or tracking their writes failed.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// A frame names a unit source this end does not have.
    #[error("frame for unit source {got}, but this destination receives source {have} only")]
    UnknownSource {
        /// The frame's source.
        got: SourceId,
        /// The sink's source.
        have: SourceId,
    },
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
    /// Capturing the VM state on the source failed.
    #[error("cannot capture the VM state: {0}")]
    Capture(#[source] HookError),
    /// Restoring the VM state on the destination failed.
    #[error("cannot restore the VM state: {0}")]
    Restore(#[source] HookError),
    /// Starting the guest on the destination failed.
    #[error("cannot start the guest: {0}")]
    Start(#[source] HookError),
}
