//! The switchover decision of precopy, as a pure function of measured rates: estimate how
//! long the final (paused) pass would take, switch over once it fits the downtime target,
//! throttle the guest harder while rounds make no progress (auto-converge), give up at the
//! timeout.

use std::time::Duration;

use crate::PAGE_SIZE;

/// What the last round measured, the decision's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// Units dirty now: what the final pass would send.
    pub dirty: u64,
    /// Units per second the sender read, encoded and wrote in the last pass (`None` before
    /// any pass sent a unit).
    pub sender_units_per_s: Option<f64>,
    /// Wire bytes per unit sent in the last pass.
    pub wire_per_unit: f64,
    /// The link's measured rate (bytes/s), if known.
    pub link_bytes_per_s: Option<f64>,
    /// Time since the migration started.
    pub elapsed: Duration,
}

impl Measured {
    /// Estimated duration of the final pass (ms): as long as the sender needs for the dirty
    /// units, or the link for their bytes, whichever is longer (the link's propagation delay
    /// is not downtime a target can buy down, and is not counted). Without a measured
    /// sender rate, 1 GB/s is assumed.
    pub fn final_pass_ms(&self) -> f64 {
        let n = self.dirty as f64;
        let sender_ms = match self.sender_units_per_s {
            Some(r) if r > 0.0 => n / r * 1e3,
            _ => n * PAGE_SIZE as f64 / 1e9 * 1e3,
        };
        let link_ms = self
            .link_bytes_per_s
            .map(|l| n * self.wire_per_unit / l * 1e3)
            .unwrap_or(0.0);
        sender_ms.max(link_ms)
    }
}

/// What to do after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pause the guest and send the final pass.
    Switchover,
    /// Send another dirty round, with the guest throttled to this share (percent; 0 when
    /// auto-converge is off).
    Continue {
        /// Throttle for the next round.
        throttle_pct: u32,
    },
    /// The timeout passed without convergence (and auto-converge is off).
    GiveUp,
}

/// Throttle share auto-converge starts at, and adds per round without progress.
const THROTTLE_START: u32 = 20;
const THROTTLE_STEP: u32 = 10;
/// The highest throttle: at it, auto-converge forces the switchover after the timeout.
pub const THROTTLE_MAX: u32 = 99;
/// Dirty rounds after which auto-converge throttles even while rounds still shrink.
const FREE_ROUNDS: u32 = 4;

/// The decision's state across rounds.
#[derive(Clone, Debug)]
pub struct Convergence {
    downtime_ms: f64,
    timeout: Duration,
    auto_converge: bool,
    best: u64,
    throttle: u32,
    round: u32,
}

impl Convergence {
    /// A decision for a downtime target, a timeout and auto-converge on or off.
    pub fn new(downtime_ms: u64, timeout: Duration, auto_converge: bool) -> Self {
        Convergence {
            downtime_ms: downtime_ms as f64,
            timeout,
            auto_converge,
            best: u64::MAX,
            throttle: 0,
            round: 0,
        }
    }

    /// The throttle share decided so far (percent).
    pub fn throttle_pct(&self) -> u32 {
        self.throttle
    }

    /// Decides after a round, given what it measured.
    pub fn decide(&mut self, m: &Measured) -> Decision {
        self.round += 1;
        if m.final_pass_ms() <= self.downtime_ms || m.dirty == 0 {
            return Decision::Switchover;
        }
        if m.elapsed > self.timeout {
            if !self.auto_converge {
                return Decision::GiveUp;
            }
            if self.throttle >= THROTTLE_MAX {
                return Decision::Switchover;
            }
        }
        let progress = m.dirty < self.best;
        self.best = self.best.min(m.dirty);
        if self.auto_converge && (!progress || self.round > FREE_ROUNDS) {
            self.throttle = if self.throttle == 0 {
                THROTTLE_START
            } else {
                (self.throttle + THROTTLE_STEP).min(THROTTLE_MAX)
            };
        }
        Decision::Continue {
            throttle_pct: self.throttle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(dirty: u64, elapsed_s: u64) -> Measured {
        Measured {
            dirty,
            sender_units_per_s: Some(100_000.0),
            wire_per_unit: 4096.0,
            link_bytes_per_s: Some(100e6),
            elapsed: Duration::from_secs(elapsed_s),
        }
    }

    #[test]
    fn estimate_is_the_slower_of_sender_and_link() {
        // 10 000 units: 100 ms at the sender, 409.6 ms on a 100 MB/s link.
        let m = measured(10_000, 0);
        assert!((m.final_pass_ms() - 409.6).abs() < 1e-6);
        let fast_link = Measured {
            link_bytes_per_s: Some(10e9),
            ..m
        };
        assert!((fast_link.final_pass_ms() - 100.0).abs() < 1e-6);
        let unmeasured = Measured {
            sender_units_per_s: None,
            link_bytes_per_s: None,
            ..m
        };
        assert!((unmeasured.final_pass_ms() - 10_000.0 * 4096.0 / 1e6).abs() < 1e-6);
    }

    #[test]
    fn switches_over_when_the_final_pass_fits_or_nothing_is_dirty() {
        let mut c = Convergence::new(300, Duration::from_secs(60), false);
        assert_eq!(
            c.decide(&measured(10_000, 0)),
            Decision::Continue { throttle_pct: 0 }
        );
        assert_eq!(c.decide(&measured(5_000, 1)), Decision::Switchover);
        let mut c = Convergence::new(0, Duration::from_secs(60), false);
        assert_eq!(c.decide(&measured(0, 0)), Decision::Switchover);
    }

    #[test]
    fn gives_up_at_the_timeout_without_auto_converge() {
        let mut c = Convergence::new(10, Duration::from_secs(5), false);
        assert_eq!(
            c.decide(&measured(50_000, 4)),
            Decision::Continue { throttle_pct: 0 }
        );
        assert_eq!(c.decide(&measured(50_000, 6)), Decision::GiveUp);
    }

    #[test]
    fn auto_converge_throttles_stalled_rounds_then_forces_the_switchover() {
        let mut c = Convergence::new(10, Duration::from_secs(5), true);
        // Progress in the first rounds: no throttle.
        assert_eq!(
            c.decide(&measured(50_000, 0)),
            Decision::Continue { throttle_pct: 0 }
        );
        assert_eq!(
            c.decide(&measured(40_000, 0)),
            Decision::Continue { throttle_pct: 0 }
        );
        // No progress: 20%, then 10 more per round.
        assert_eq!(
            c.decide(&measured(45_000, 1)),
            Decision::Continue { throttle_pct: 20 }
        );
        assert_eq!(
            c.decide(&measured(45_000, 1)),
            Decision::Continue { throttle_pct: 30 }
        );
        // After the free rounds even progress is throttled.
        assert_eq!(
            c.decide(&measured(30_000, 2)),
            Decision::Continue { throttle_pct: 40 }
        );
        // Past the timeout the throttle keeps rising to its maximum, then switches over.
        let mut last = Decision::GiveUp;
        for _ in 0..10 {
            last = c.decide(&measured(30_000, 10));
            if last == Decision::Switchover {
                break;
            }
        }
        assert_eq!(c.throttle_pct(), THROTTLE_MAX);
        assert_eq!(last, Decision::Switchover);
    }
}
