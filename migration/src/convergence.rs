//! The switchover decision of precopy, as a pure function of measured figures: a model
//! predicts how long the final (paused) pass would take, the decision switches over once the
//! prediction fits the downtime target, and acts on a plateau (predictions that stopped
//! improving): throttle the guest with auto-converge, else switch over if the best
//! prediction fits, else keep sending until the timeout, which fails with the downtime
//! that was achievable.
//!
//! # The model
//!
//! ```text
//! final pages  = dirty + dirty_rate × collect_s          (written between the dirty-log
//!                                                          collection and the pause)
//! final pass   = max(final pages × sender cost per page,  (read + encode + write, not the
//!                    final pages × wire bytes per page / link rate)   RoundAck wait)
//! downtime     = final pass + fixed_ms                    (state capture/restore and the
//!                                                          verification of the chosen mode)
//! ```
//!
//! The link's propagation delay is not counted: no target can buy it down.
//!
//! # The policy
//!
//! * Switch over as soon as a round's prediction fits the target (or nothing is dirty).
//! * A prediction is an improvement when it is [`IMPROVEMENT`] (5%) below the best so far;
//!   [`PLATEAU_ROUNDS`] (3) rounds without one make a plateau.
//! * At a plateau with `--auto-converge`: throttle the guest up to the share the model asks
//!   for. The final pass scales with the units the guest dirties, which scale with its run
//!   share, so the new run share is the current one times `budget / predicted final pass`
//!   times [`THROTTLE_MARGIN`] (the dirty count saturates at the hot set, which hides how
//!   far off the guest is); at least [`THROTTLE_START`], then at least [`THROTTLE_STEP`]
//!   more per plateau, at most [`THROTTLE_MAX`]. One plateau, not dozens of small steps.
//! * At a plateau without it: predictions that differ by less than 5% are within the
//!   model's noise, so if the best is within 5% of the target, switch over at the next
//!   round within 5% of the best; otherwise keep sending (the best is remembered) until
//!   the timeout, which gives up with the best prediction: the achievable downtime.
//! * Past the timeout with `--auto-converge`: throttle up every round; at the maximum,
//!   switch over whatever the prediction.

use std::time::Duration;

use crate::PAGE_SIZE;

/// What the last round measured, the model's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// Units dirty now: what the final pass would send.
    pub dirty: u64,
    /// Units the guest dirties per second (measured over the last round).
    pub dirty_rate: f64,
    /// Seconds from the dirty-log collection to the pause (the guest keeps writing then).
    pub collect_s: f64,
    /// Seconds of sender work per unit for the current encoding (read + encode + write,
    /// without the wait for the destination's RoundAck); `None` before any pass sent a unit.
    pub sender_s_per_unit: Option<f64>,
    /// Wire bytes per unit sent in the last pass.
    pub wire_per_unit: f64,
    /// The link's measured rate (bytes/s), if known.
    pub link_bytes_per_s: Option<f64>,
    /// The fixed part of the downtime (ms): state capture and restore, verification.
    pub fixed_ms: f64,
    /// Time since the migration started.
    pub elapsed: Duration,
}

impl Measured {
    /// Units the final pass would send.
    pub fn final_units(&self) -> f64 {
        self.dirty as f64 + (self.dirty_rate.max(0.0) * self.collect_s.max(0.0))
    }

    /// Predicted duration of the final pass alone (ms): as long as the sender needs for the
    /// final units, or the link for their bytes, whichever is longer. Without a measured
    /// sender cost, 1 GB/s is assumed.
    pub fn final_pass_ms(&self) -> f64 {
        let n = self.final_units();
        let sender_ms = match self.sender_s_per_unit {
            Some(c) if c > 0.0 => n * c * 1e3,
            _ => n * PAGE_SIZE as f64 / 1e9 * 1e3,
        };
        let link_ms = self
            .link_bytes_per_s
            .filter(|l| *l > 0.0)
            .map(|l| n * self.wire_per_unit / l * 1e3)
            .unwrap_or(0.0);
        sender_ms.max(link_ms)
    }

    /// Predicted downtime (ms): the final pass plus the fixed part.
    pub fn predicted_downtime_ms(&self) -> f64 {
        self.final_pass_ms() + self.fixed_ms
    }
}

/// What to do after a round.
#[derive(Clone, Copy, Debug, PartialEq)]
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
    GiveUp {
        /// The best downtime any round predicted (ms): what was achievable.
        best_ms: f64,
    },
}

/// Throttle share auto-converge starts at (percent).
pub const THROTTLE_START: u32 = 20;
/// Throttle share auto-converge adds per plateau (percent).
pub const THROTTLE_STEP: u32 = 10;
/// The highest throttle: at it, auto-converge forces the switchover after the timeout.
pub const THROTTLE_MAX: u32 = 99;
/// Share of the model's run-share estimate auto-converge aims at (a margin for the dirty
/// count saturating at the hot set).
pub const THROTTLE_MARGIN: f64 = 0.5;
/// A prediction counts as an improvement when it is this much below the best so far.
pub const IMPROVEMENT: f64 = 0.05;
/// Rounds without improvement that make a plateau.
pub const PLATEAU_ROUNDS: u32 = 3;

/// The decision's state across rounds.
#[derive(Clone, Debug)]
pub struct Convergence {
    downtime_ms: f64,
    timeout: Duration,
    auto_converge: bool,
    best_ms: f64,
    stale: u32,
    throttle: u32,
    last_ms: f64,
}

impl Convergence {
    /// A decision for a downtime target, a timeout and auto-converge on or off.
    pub fn new(downtime_ms: u64, timeout: Duration, auto_converge: bool) -> Self {
        Convergence {
            downtime_ms: downtime_ms as f64,
            timeout,
            auto_converge,
            best_ms: f64::INFINITY,
            stale: 0,
            throttle: 0,
            last_ms: f64::NAN,
        }
    }

    /// The throttle share decided so far (percent).
    pub fn throttle_pct(&self) -> u32 {
        self.throttle
    }

    /// The best predicted downtime so far (ms; infinite before the first round).
    pub fn best_ms(&self) -> f64 {
        self.best_ms
    }

    /// The prediction of the last decided round (ms).
    pub fn last_ms(&self) -> f64 {
        self.last_ms
    }

    /// Whether the predictions have stopped improving ([`PLATEAU_ROUNDS`] rounds without
    /// an [`IMPROVEMENT`]).
    pub fn plateaued(&self) -> bool {
        self.stale >= PLATEAU_ROUNDS
    }

    /// Decides after a round, given what it measured.
    pub fn decide(&mut self, m: &Measured) -> Decision {
        let predicted = m.predicted_downtime_ms();
        self.last_ms = predicted;
        if predicted < self.best_ms * (1.0 - IMPROVEMENT) {
            self.stale = 0;
        } else {
            self.stale += 1;
        }
        self.best_ms = self.best_ms.min(predicted);
        if predicted <= self.downtime_ms || m.dirty == 0 {
            return Decision::Switchover;
        }
        let plateau = self.plateaued();
        if !self.auto_converge
            && plateau
            && self.best_ms <= self.downtime_ms * (1.0 + IMPROVEMENT)
            && predicted <= self.best_ms * (1.0 + IMPROVEMENT)
        {
            // The predictions stopped improving with the best within the model's noise
            // band of the target, and this round is back near the best: take it.
            return Decision::Switchover;
        }
        if m.elapsed > self.timeout {
            if !self.auto_converge {
                return Decision::GiveUp {
                    best_ms: self.best_ms,
                };
            }
            if self.throttle >= THROTTLE_MAX {
                return Decision::Switchover;
            }
        }
        if self.auto_converge && (plateau || m.elapsed > self.timeout) {
            self.throttle = self.next_throttle(m);
            // Give the new throttle rounds of its own before judging it.
            self.stale = 0;
            self.best_ms = predicted;
        }
        Decision::Continue {
            throttle_pct: self.throttle,
        }
    }
}

impl Convergence {
    /// The throttle (percent) the model asks for after `m`: the run share that would make
    /// the final pass fit the budget left by the fixed part, with [`THROTTLE_MARGIN`], and
    /// at least one step above the current throttle.
    fn next_throttle(&self, m: &Measured) -> u32 {
        let pass = m.final_pass_ms();
        let budget = self.downtime_ms - m.fixed_ms;
        let run = f64::from(100 - self.throttle.min(100)) / 100.0;
        let wanted_run = if pass > 0.0 && budget > 0.0 {
            run * (budget / pass).min(1.0) * THROTTLE_MARGIN
        } else {
            0.0
        };
        let pct = (100.0 - wanted_run * 100.0).ceil().clamp(0.0, 100.0) as u32;
        let floor = if self.throttle == 0 {
            THROTTLE_START
        } else {
            self.throttle + THROTTLE_STEP
        };
        pct.max(floor).min(THROTTLE_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dirty` units, 10 µs each at the sender, 4 KiB each on a 100 MB/s link, no fixed part.
    fn measured(dirty: u64, elapsed_s: u64) -> Measured {
        Measured {
            dirty,
            dirty_rate: 0.0,
            collect_s: 0.0,
            sender_s_per_unit: Some(1e-5),
            wire_per_unit: 4096.0,
            link_bytes_per_s: Some(100e6),
            fixed_ms: 0.0,
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
            sender_s_per_unit: None,
            link_bytes_per_s: None,
            ..m
        };
        assert!((unmeasured.final_pass_ms() - 10_000.0 * 4096.0 / 1e6).abs() < 1e-6);
    }

    #[test]
    fn prediction_counts_pages_dirtied_before_the_pause_and_the_fixed_part() {
        // 1000 dirty, 50 000 units/s dirtied for 10 ms until the pause: 1500 units; 9 KiB
        // per 1000 units on the wire (deltas), 12.5 MB/s link, 1 µs/unit at the sender.
        let m = Measured {
            dirty: 1000,
            dirty_rate: 50_000.0,
            collect_s: 0.010,
            sender_s_per_unit: Some(1e-6),
            wire_per_unit: 9.2,
            link_bytes_per_s: Some(12.5e6),
            fixed_ms: 0.8,
            elapsed: Duration::ZERO,
        };
        assert!((m.final_units() - 1500.0).abs() < 1e-9);
        // Link: 1500 × 9.2 / 12.5e6 = 1.104 ms; sender 1.5 ms: the sender bounds it.
        assert!((m.final_pass_ms() - 1.5).abs() < 1e-9);
        assert!((m.predicted_downtime_ms() - 2.3).abs() < 1e-9);
        let mut c = Convergence::new(2, Duration::from_secs(60), false);
        assert_eq!(c.decide(&m), Decision::Continue { throttle_pct: 0 });
        let mut c = Convergence::new(3, Duration::from_secs(60), false);
        assert_eq!(c.decide(&m), Decision::Switchover);
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
    fn gives_up_at_the_timeout_with_the_best_prediction() {
        let mut c = Convergence::new(10, Duration::from_secs(5), false);
        assert_eq!(
            c.decide(&measured(20_000, 1)),
            Decision::Continue { throttle_pct: 0 }
        );
        assert_eq!(
            c.decide(&measured(50_000, 4)),
            Decision::Continue { throttle_pct: 0 }
        );
        // 20 000 units × 4096 B / 100 MB/s = 819.2 ms was the best round.
        match c.decide(&measured(50_000, 6)) {
            Decision::GiveUp { best_ms } => assert!((best_ms - 819.2).abs() < 1e-6),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_plateau_is_detected_after_three_rounds_without_five_percent() {
        let mut c = Convergence::new(10, Duration::from_secs(600), false);
        c.decide(&measured(10_000, 0));
        assert!(!c.plateaued());
        // 3% better, 1% worse, equal: not improvements.
        c.decide(&measured(9_700, 0));
        assert!(!c.plateaued());
        c.decide(&measured(9_800, 0));
        assert!(!c.plateaued());
        c.decide(&measured(9_700, 0));
        assert!(c.plateaued(), "three rounds without 5% improvement");
        // A real improvement ends the plateau.
        c.decide(&measured(5_000, 0));
        assert!(!c.plateaued());
    }

    /// A round predicting `ms` (sender-bound: 1 µs per unit, fast link).
    fn predicting(ms: f64, elapsed_s: u64) -> Measured {
        Measured {
            dirty: (ms * 1000.0).round() as u64,
            sender_s_per_unit: Some(1e-6),
            link_bytes_per_s: Some(1e12),
            ..measured(0, elapsed_s)
        }
    }

    #[test]
    fn a_converging_sequence_switches_over_when_it_fits() {
        let mut c = Convergence::new(2, Duration::from_secs(60), false);
        for ms in [400.0, 120.0, 30.0, 8.0] {
            assert_eq!(
                c.decide(&predicting(ms, 1)),
                Decision::Continue { throttle_pct: 0 }
            );
            assert!(!c.plateaued());
        }
        assert_eq!(c.decide(&predicting(1.9, 2)), Decision::Switchover);
        assert!((c.last_ms() - 1.9).abs() < 1e-9);
    }

    #[test]
    fn a_plateau_near_the_target_switches_over_at_a_round_near_the_best() {
        // Target 2 ms; the predictions settle around 2.05-2.2 ms and never fit exactly.
        let mut c = Convergence::new(2, Duration::from_secs(600), false);
        let cont = Decision::Continue { throttle_pct: 0 };
        assert_eq!(c.decide(&predicting(50.0, 1)), cont);
        assert_eq!(c.decide(&predicting(2.05, 1)), cont);
        assert_eq!(c.decide(&predicting(2.2, 1)), cont);
        assert_eq!(c.decide(&predicting(2.12, 1)), cont);
        // Third round without improvement: a plateau, but this round is 7% above the best.
        assert_eq!(c.decide(&predicting(2.2, 1)), cont);
        assert!(c.plateaued());
        // A round back within 5% of the best (2.05 ms) is taken.
        assert_eq!(c.decide(&predicting(2.1, 1)), Decision::Switchover);
        assert!((c.best_ms() - 2.05).abs() < 1e-9);
    }

    #[test]
    fn a_plateau_that_does_not_fit_keeps_sending_then_fails_with_the_best() {
        let mut c = Convergence::new(2, Duration::from_secs(30), false);
        let cont = Decision::Continue { throttle_pct: 0 };
        assert_eq!(c.decide(&predicting(80.0, 1)), cont);
        assert_eq!(c.decide(&predicting(12.0, 2)), cont);
        // A long plateau around 12-13 ms: no throttle, no switchover.
        for i in 0..20 {
            let ms = if i % 2 == 0 { 12.5 } else { 12.9 };
            assert_eq!(c.decide(&predicting(ms, 3 + i)), cont);
        }
        assert!(c.plateaued());
        match c.decide(&predicting(13.0, 31)) {
            Decision::GiveUp { best_ms } => assert!((best_ms - 12.0).abs() < 1e-9),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_round_that_fits_switches_over_at_once() {
        // Target 40 ms: one round predicted 36.9 ms (900 units), the next ones 41 ms.
        let mut c = Convergence::new(40, Duration::from_secs(600), false);
        assert_eq!(
            c.decide(&measured(1_000, 0)),
            Decision::Continue { throttle_pct: 0 }
        );
        assert_eq!(c.decide(&measured(900, 0)), Decision::Switchover);
        // A constant dirty set that fits switches over at once, not after a plateau.
        let mut c = Convergence::new(40, Duration::from_secs(600), false);
        assert_eq!(c.decide(&measured(900, 0)), Decision::Switchover);
    }

    #[test]
    fn auto_converge_throttles_at_a_plateau_then_forces_the_switchover() {
        // 10 µs per unit at the sender, a fast link: the sender's cost decides.
        let at = |dirty: u64, elapsed_s: u64| Measured {
            link_bytes_per_s: Some(10e9),
            ..measured(dirty, elapsed_s)
        };
        let mut c = Convergence::new(10, Duration::from_secs(5), true);
        // Progress: no throttle.
        assert_eq!(
            c.decide(&at(5_000, 0)),
            Decision::Continue { throttle_pct: 0 }
        );
        assert_eq!(
            c.decide(&at(2_000, 0)),
            Decision::Continue { throttle_pct: 0 }
        );
        // Three rounds without progress at 20 ms against 10 ms: the model wants a run share
        // of 1 x 10/20 x 0.5 = 25%, a 75% throttle, at once.
        for _ in 0..2 {
            assert_eq!(
                c.decide(&at(2_000, 1)),
                Decision::Continue { throttle_pct: 0 }
            );
        }
        assert_eq!(
            c.decide(&at(2_000, 1)),
            Decision::Continue { throttle_pct: 75 }
        );
        // 15 ms is an improvement, then three rounds more make the next plateau:
        // 25% x 10/15 x 0.5 = 8.3% run share, a 92% throttle.
        for _ in 0..3 {
            c.decide(&at(1_500, 2));
        }
        assert_eq!(
            c.decide(&at(1_500, 2)),
            Decision::Continue { throttle_pct: 92 }
        );
        // A far-off prediction jumps to the maximum; a near one still steps by 10.
        let mut far = Convergence::new(10, Duration::from_secs(5), true);
        for _ in 0..=PLATEAU_ROUNDS {
            far.decide(&measured(40_000, 1));
        }
        assert_eq!(far.throttle_pct(), THROTTLE_MAX);
        let mut near = Convergence::new(10, Duration::from_secs(5), true);
        for _ in 0..=PLATEAU_ROUNDS {
            near.decide(&at(1_050, 1));
        }
        assert_eq!(near.throttle_pct(), 53);
        // Past the timeout the throttle rises every round to its maximum, then switches over.
        let mut last = Decision::GiveUp { best_ms: 0.0 };
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
