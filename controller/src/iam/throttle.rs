//! Login throttling: a user name with repeated failed logins must wait before the next
//! attempt is even checked, so a password (or a TOTP code: a million values) cannot be
//! guessed at the speed of argon2.
//!
//! The first [`FREE_FAILURES`] failures cost nothing; from then on each failure doubles the
//! wait, from one second up to [`MAX_WAIT`]. A success clears the record. A refused attempt
//! (still waiting) is not checked and does not lengthen the wait, so a locked-out user who
//! waits as told gets in; an attacker gets at most one guess per wait. The records are in
//! memory: a restart forgets them, which costs an attacker a restart of the controller.
//! Bounded to [`MAX_TRACKED`] names (the oldest record goes first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before the first wait.
pub const FREE_FAILURES: u32 = 5;

/// The longest wait between attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// How many user names are tracked at once.
pub const MAX_TRACKED: usize = 10_000;

/// A record is forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    not_before: Instant,
}

/// Failed-login records by user name.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, Failures>>,
}

/// The wait after `count` consecutive failures.
fn wait_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
}

impl LoginThrottle {
    /// How long `user` must still wait before an attempt is checked (`None`: go ahead).
    pub fn refused_for(&self, user: &str, now: Instant) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.get(user)?;
        (f.not_before > now).then(|| f.not_before - now)
    }

    /// Records a failed attempt of `user`.
    pub fn failed(&self, user: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(user) {
            map.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        }
        if map.len() >= MAX_TRACKED && !map.contains_key(user) {
            let oldest = map
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let f = map.entry(user.to_string()).or_insert(Failures {
            count: 0,
            last: now,
            not_before: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.not_before = now + wait_after(f.count);
    }

    /// Clears `user`'s failures after a successful login.
    pub fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_start_after_the_free_failures_and_double() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed("alice", now);
            assert_eq!(t.refused_for("alice", now), None);
        }
        t.failed("alice", now);
        assert_eq!(t.refused_for("alice", now), Some(Duration::from_secs(1)));
        assert_eq!(t.refused_for("alice", now + Duration::from_secs(1)), None);
        t.failed("alice", now + Duration::from_secs(1));
        assert_eq!(
            t.refused_for("alice", now + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        // Other names are not affected; success clears the record.
        assert_eq!(t.refused_for("bob", now), None);
        t.succeeded("alice");
        assert_eq!(t.refused_for("alice", now + Duration::from_secs(1)), None);
    }

    #[test]
    fn the_wait_is_capped_and_the_table_bounded() {
        assert_eq!(wait_after(FREE_FAILURES + 40), MAX_WAIT);
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..MAX_TRACKED + 10 {
            t.failed(&format!("u{i}"), now + Duration::from_millis(i as u64));
        }
        let n = t.failures.lock().unwrap().len();
        assert_eq!(n, MAX_TRACKED);
        // When the table is full, records an hour past their last failure are dropped.
        t.failed("late", now + FORGET_AFTER + Duration::from_secs(60));
        assert_eq!(t.failures.lock().unwrap().len(), 1);
    }
}
