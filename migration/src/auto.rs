//! `--compression auto`: chooses each batch's encoding from what the migration measures.
//!
//! Two inputs, both measured while migrating:
//!
//! * **Link rate** `L` (wire bytes/s), from [`super::link::LinkMeter`]: the link's
//!   capacity even when the encoders are the bottleneck.
//! * **Per encoding** `e`: the ratio `R(e)` (page bytes per wire byte) and the rate of one
//!   encoder thread `E(e)` (page bytes per second of wall time, so competition with the
//!   vCPUs for cores shows), as moving averages over finished batches.
//!
//! With `n` encoder threads, encoding `e` can move `min(L x R(e), n x E(e))` page bytes per
//! second: the link or the encoders saturate first. The selector picks the encoding with the
//! larger figure between raw and delta, counting delta 25% faster than predicted (within
//! that margin, sending fewer bytes wins) and with 10% hysteresis. (Zstd without the delta
//! step is never better than delta: a delta batch whose pages miss the cache *is* a zstd
//! batch, at the same cost.)
//! When delta wins with the encoders idle most of the time (link-bound with 3x headroom), it
//! uses zstd level 3, which sends 7-10% fewer bytes for ~1.4x the CPU.
//!
//! Until a figure is measured a prior stands in (raw: ratio 1, 2 GB/s per thread; delta:
//! ratio 2.5, 300 MB/s per thread; both from the measurements in [`crate`]), and
//! until the link is measured (or given a prior, see [`super::link`]) it counts as slow, so
//! a migration starts compressed. While raw is chosen, every [`EXPLORE_EVERY`]th batch is
//! encoded as delta anyway, so that delta's figures follow the guest's data (a guest whose
//! pages compress 1000x, such as `ab`, is cheaper to send as delta even over loopback).

use crate::batch::Encoding;
use crate::encoder::DEFAULT_ZSTD_LEVEL;
use crate::encoder_pool::Choice;
use crate::stats::BatchStats;

/// Weight of a new batch in the per-encoding moving averages.
const ALPHA: f64 = 0.2;
/// A challenger must beat the current choice by this factor (no flapping on noise).
const HYSTERESIS: f64 = 1.1;
/// Delta counts as this much faster than predicted: within 20% of raw's speed, the encoding
/// that puts fewer bytes on a shared link wins (delta's ratio is at least 1).
const SAVINGS_BIAS: f64 = 1.25;
/// Encoder headroom (capacity / what the link takes) above which delta uses zstd level 3.
const HIGH_LEVEL_HEADROOM: f64 = 3.0;
/// The higher zstd level.
const HIGH_LEVEL: i32 = 3;
/// While raw is chosen, one batch in this many is encoded as delta to keep its figures fresh.
pub const EXPLORE_EVERY: u64 = 16;

/// Measured (or prior) figures of one encoding.
#[derive(Clone, Copy, Debug)]
struct Figures {
    /// Page bytes per wire byte.
    ratio: f64,
    /// Page bytes per second of one encoder thread.
    rate: f64,
    measured: bool,
}

impl Figures {
    fn update(&mut self, ratio: f64, rate: f64) {
        if self.measured {
            self.ratio += ALPHA * (ratio - self.ratio);
            self.rate += ALPHA * (rate - self.rate);
        } else {
            *self = Figures {
                ratio,
                rate,
                measured: true,
            };
        }
    }
}

/// Chooses encodings for `--compression auto` (see the module documentation).
#[derive(Clone, Debug)]
pub struct AutoSelector {
    threads: f64,
    raw: Figures,
    delta: Figures,
    current: Encoding,
    batches: u64,
}

impl AutoSelector {
    /// A selector for `threads` encoder threads.
    pub fn new(threads: usize) -> Self {
        AutoSelector {
            threads: threads.max(1) as f64,
            raw: Figures {
                ratio: 1.0,
                rate: 2.0e9,
                measured: false,
            },
            delta: Figures {
                ratio: 2.5,
                rate: 300e6,
                measured: false,
            },
            current: Encoding::Delta,
            batches: 0,
        }
    }

    /// Accounts a finished batch.
    pub fn observe_batch(&mut self, stats: &BatchStats) {
        if stats.encoded_bytes == 0 || stats.raw_bytes == 0 {
            return;
        }
        let ratio = stats.raw_bytes as f64 / stats.encoded_bytes as f64;
        let rate = stats.raw_bytes as f64 / (stats.wall_ns.max(1) as f64 / 1e9);
        match stats.encoding {
            Encoding::Raw => self.raw.update(ratio, rate),
            // Zstd batches only come from a fixed `--compression zstd`; nothing to learn.
            Encoding::Zstd => {}
            Encoding::Delta => self.delta.update(ratio, rate),
        }
    }

    /// Page bytes per second that encoding `e` is expected to move over a link of
    /// `link` wire bytes/s (`None`: not measured yet).
    pub fn predicted(&self, e: Encoding, link: Option<f64>) -> f64 {
        let f = match e {
            Encoding::Raw => &self.raw,
            Encoding::Zstd | Encoding::Delta => &self.delta,
        };
        let encoders = self.threads * f.rate;
        match link {
            Some(l) => (l * f.ratio).min(encoders),
            // Unknown link: assume it is the bottleneck (a WAN until shown otherwise).
            None => f.ratio,
        }
    }

    /// The encoding (and zstd level) for the next batch over a link of `link` bytes/s.
    pub fn choose(&mut self, link: Option<f64>) -> Choice {
        let (raw, delta) = (
            self.predicted(Encoding::Raw, link),
            self.predicted(Encoding::Delta, link),
        );
        self.current = match self.current {
            Encoding::Raw if delta * SAVINGS_BIAS > raw * HYSTERESIS => Encoding::Delta,
            Encoding::Delta | Encoding::Zstd if raw > delta * SAVINGS_BIAS * HYSTERESIS => {
                Encoding::Raw
            }
            e => e,
        };
        self.batches += 1;
        let encoding =
            if self.current == Encoding::Raw && self.batches.is_multiple_of(EXPLORE_EVERY) {
                Encoding::Delta
            } else {
                self.current
            };
        let level = match (encoding, link) {
            (Encoding::Delta, Some(l))
                if self.threads * self.delta.rate > HIGH_LEVEL_HEADROOM * l * self.delta.ratio =>
            {
                HIGH_LEVEL
            }
            _ => DEFAULT_ZSTD_LEVEL,
        };
        Choice { encoding, level }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkMeter;
    use std::time::Duration;

    fn batch(encoding: Encoding, raw: u64, wire: u64, wall_ms: u64) -> BatchStats {
        BatchStats {
            encoding,
            raw_bytes: raw,
            encoded_bytes: wire,
            wall_ns: wall_ms * 1_000_000,
            ..BatchStats::default()
        }
    }

    fn link(bytes: u64, ms: u64) -> Option<f64> {
        let mut m = LinkMeter::new(None);
        m.observe(bytes, Duration::from_millis(ms));
        m.rate()
    }

    #[test]
    fn starts_compressed_on_an_unknown_link() {
        let mut a = AutoSelector::new(2);
        assert_eq!(a.choose(None).encoding, Encoding::Delta);
    }

    #[test]
    fn fast_link_turns_to_raw_and_slow_link_stays_delta() {
        // Loopback-like: 64 MiB written in 20 ms (3.3 GB/s); delta encodes 300 MB/s/thread.
        let mut fast = AutoSelector::new(2);
        fast.observe_batch(&batch(Encoding::Delta, 4 << 20, 1 << 20, 14));
        assert_eq!(fast.choose(link(64 << 20, 20)).encoding, Encoding::Raw);

        // 100 Mbit/s: 8 MiB in 0.67 s.
        let mut slow = AutoSelector::new(2);
        slow.observe_batch(&batch(Encoding::Delta, 4 << 20, 1 << 20, 14));
        let c = slow.choose(link(8 << 20, 671));
        assert_eq!(c.encoding, Encoding::Delta);
        // 2 x 300 MB/s of encoders against 12.5 MB/s x 4: plenty of headroom for level 3.
        assert_eq!(c.level, HIGH_LEVEL);
    }

    #[test]
    fn slow_encoders_lose_to_raw_on_a_medium_link() {
        // 1 GB/s link, delta measured at only 100 MB/s per thread with ratio 3:
        // delta moves 200 MB/s of pages, raw 1 GB/s.
        let l = link(64 << 20, 67);
        let mut a = AutoSelector::new(2);
        a.observe_batch(&batch(Encoding::Delta, 4 << 20, (4 << 20) / 3, 42));
        assert_eq!(a.choose(l).encoding, Encoding::Raw);
        // More encoder threads tip it back: 16 x 100 MB/s = 1.6 GB/s > 1 GB/s x 1.1.
        let mut b = AutoSelector::new(16);
        b.observe_batch(&batch(Encoding::Delta, 4 << 20, (4 << 20) / 3, 42));
        assert_eq!(b.choose(l).encoding, Encoding::Delta);
    }

    #[test]
    fn raw_periodically_explores_delta_and_switches_when_it_pays() {
        // Loopback-class link; delta's prior (300 MB/s per thread) loses to raw.
        let l = link(64 << 20, 50);
        let mut a = AutoSelector::new(2);
        let picks: Vec<Encoding> = (0..EXPLORE_EVERY).map(|_| a.choose(l).encoding).collect();
        assert_eq!(picks.iter().filter(|e| **e == Encoding::Delta).count(), 1);
        assert_eq!(picks.last(), Some(&Encoding::Delta), "{picks:?}");
        // The explored batch shows a page-data rate of 2 GB/s per thread at ratio 500.
        a.observe_batch(&batch(Encoding::Delta, 4 << 20, (4 << 20) / 500, 2));
        assert_eq!(a.choose(l).encoding, Encoding::Delta);
    }

    #[test]
    fn hysteresis_keeps_the_current_choice_on_a_near_tie() {
        // Link 1 GB/s; delta (ratio 1.05) encodes 400 MB/s per thread on 2 threads, so it
        // moves 800 MB/s against raw's 1 GB/s: inside the margins, whichever runs stays.
        let l = link(64 << 20, 67);
        let mut a = AutoSelector::new(2);
        a.observe_batch(&batch(Encoding::Delta, 4_000_000, 3_809_524, 10));
        a.observe_batch(&batch(Encoding::Raw, 1000, 1000, 0));
        a.current = Encoding::Delta;
        assert_eq!(a.choose(l).encoding, Encoding::Delta);
        a.current = Encoding::Raw;
        assert_eq!(a.choose(l).encoding, Encoding::Raw);
        // Delta at half raw's speed loses even when it runs.
        a.observe_batch(&batch(Encoding::Delta, 4_000_000, 3_809_524, 40));
        a.observe_batch(&batch(Encoding::Delta, 4_000_000, 3_809_524, 40));
        a.observe_batch(&batch(Encoding::Delta, 4_000_000, 3_809_524, 40));
        a.current = Encoding::Delta;
        assert_eq!(a.choose(l).encoding, Encoding::Raw);
    }
}
