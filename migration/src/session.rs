//! What both ends of a migration session share: the session's errors and the hooks'
//! error type.

use crate::encoder_pool::PoolError;
use crate::error::CodecError;
use crate::protocol::ProtocolError;
use crate::unit::{SourceId, UnitError};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A handle that stops an outgoing migration from another thread (the VMM's `cancel`
/// command, or `shutdown` during a migration). The sender checks it between batches; a
/// cancelled migration ends with [`SessionError::Cancelled`] and the guest resumes here,
/// unless the destination has already committed.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A handle not yet cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Asks the migration to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the destination expects of the stream it accepts.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The migration id the Hello must carry (`None`: any, for `--incoming` started by
    /// hand without `--migration-id`).
    pub migration_id: Option<String>,
    /// Longest wait for any one read from the source before the destination gives up.
    pub read_timeout: Duration,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            migration_id: None,
            read_timeout: Duration::from_secs(30),
        }
    }
}

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
    /// A connection to a waiting destination that is not the awaited migration: it closed
    /// or timed out before a Hello, sent something that is not a Hello, or carries another
    /// migration id. The destination refuses it and keeps waiting for its real peer.
    #[error("stray connection refused: {0}")]
    Stray(String),
    /// The migration was cancelled before the destination committed.
    #[error("migration cancelled; the guest keeps running on the source")]
    Cancelled,
    /// The source sent Complete but got no Confirm: the destination may or may not be
    /// running the guest. The source must stay paused until someone who can ask the
    /// destination decides (the agent and controller); resuming here could leave two
    /// running copies.
    #[error("no confirmation from the destination after the final frame ({0}): the destination may be running the guest; the source stays paused")]
    InDoubt(String),
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
