//! The threads this crate starts for the VMM that embeds it (encoder workers, background
//! disk writeback), and the hook the VMM sets to run first in each of them: the VMM installs
//! that thread's seccomp filter there.

use std::sync::OnceLock;

/// What a thread started by this crate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// An [`crate::encoder_pool`] worker: encodes page batches in memory.
    Encoder,
    /// The background writeback of [`crate::disk`]: `fdatasync`s the disks being sent.
    DiskWriteback,
}

static START_HOOK: OnceLock<fn(ThreadRole)> = OnceLock::new();

/// Sets the function every thread of this crate runs first. Only the first call takes
/// effect; later ones return `false`.
pub fn set_start_hook(hook: fn(ThreadRole)) -> bool {
    START_HOOK.set(hook).is_ok()
}

/// Runs the start hook, if one is set, on the calling thread.
pub(crate) fn started(role: ThreadRole) {
    if let Some(hook) = START_HOOK.get() {
        hook(role);
    }
}
