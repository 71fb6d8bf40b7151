//! Per-key async locks: operations on one VM (or any key) are serialised, and the reconcile
//! loop skips what an operation holds.

use std::sync::Arc;

use super::Controller;

/// The lock of one key.
pub(super) type KeyLock = Arc<tokio::sync::Mutex<()>>;

impl Controller {
    fn key_lock(&self, key: &str) -> KeyLock {
        let mut m = self.locks.lock();
        Arc::clone(m.entry(key.to_string()).or_default())
    }

    /// Serialises operations on one VM (or any key).
    pub(crate) async fn lock_key(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.key_lock(key).lock_owned().await
    }

    /// The lock of `key` if it is free now.
    pub(crate) fn try_lock_key(&self, key: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.key_lock(key).try_lock_owned().ok()
    }

    /// Whether an operation holds `key` now.
    pub(crate) fn is_busy(&self, key: &str) -> bool {
        let m = self.locks.lock();
        m.get(key).is_some_and(|l| l.try_lock().is_err())
    }

    /// Drops unused lock entries.
    pub(crate) fn gc_locks(&self) {
        let mut m = self.locks.lock();
        m.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
    }
}
