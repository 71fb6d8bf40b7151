//! The migration link's measured rate: wire bytes divided by the time the sender spent
//! writing them (blocked on the socket or on the `--bandwidth` pacer), over a sliding window
//! of the last few MiB. Time spent waiting for the encoders or for the destination's
//! acknowledgements is not counted, so this is the link's capacity even when something
//! else is the bottleneck. Used by `auto` to choose encodings and by the precopy loop to
//! estimate how long the final pass will take.
//!
//! Until enough has been written to measure, a prior may stand in: the sender sets one from
//! the handshake's round trip (a sub-millisecond round trip means a LAN or loopback, assumed
//! to carry [`LAN_PRIOR`] until measured).

use std::time::Duration;

/// Wire bytes after which the estimate is trusted.
const WARMUP_BYTES: f64 = 4.0 * 1048576.0;
/// The window halves its weight every this many bytes.
const WINDOW_BYTES: f64 = 16.0 * 1048576.0;
/// Assumed rate of a link whose round trip is under [`LAN_RTT`] (10 Gbit/s), until measured.
pub const LAN_PRIOR: f64 = 1.25e9;
/// Round trips shorter than this count as a LAN or loopback.
pub const LAN_RTT: std::time::Duration = std::time::Duration::from_millis(1);

/// Sliding-window link rate (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct LinkMeter {
    cap: Option<f64>,
    prior: Option<f64>,
    bytes: f64,
    secs: f64,
    total: f64,
}

impl LinkMeter {
    /// A meter for a link capped at `cap` bytes/s (`--bandwidth`), if any.
    pub fn new(cap: Option<u64>) -> Self {
        LinkMeter {
            cap: cap.map(|c| c as f64),
            ..LinkMeter::default()
        }
    }

    /// Uses `rate` (bytes/s) until the link is measured.
    pub fn set_prior(&mut self, rate: Option<f64>) {
        self.prior = rate;
    }

    /// Accounts `bytes` written in `busy` (time blocked writing them; a flush adds time
    /// with no bytes).
    pub fn observe(&mut self, bytes: u64, busy: Duration) {
        self.bytes += bytes as f64;
        self.secs += busy.as_secs_f64();
        self.total += bytes as f64;
        if self.bytes > WINDOW_BYTES {
            self.bytes /= 2.0;
            self.secs /= 2.0;
        }
    }

    /// Wire bytes/s, once enough has been written to measure it (else the prior, else the
    /// cap, if any); never above the cap.
    pub fn rate(&self) -> Option<f64> {
        let measured = (self.total >= WARMUP_BYTES && self.secs > 0.0)
            .then(|| self.bytes / self.secs)
            .or(self.prior);
        match (measured, self.cap) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_warmup_then_tracks_recent_writes() {
        let mut m = LinkMeter::new(None);
        m.observe(1 << 20, Duration::from_millis(100));
        assert_eq!(m.rate(), None, "1 MiB is too little to judge");
        m.observe(4 << 20, Duration::from_millis(400));
        let r = m.rate().expect("rate");
        assert!((r - 10.0 * 1048576.0).abs() < 1.0, "{r}");
        // The link gets 10x faster: after a few windows the estimate follows.
        for _ in 0..20 {
            m.observe(4 << 20, Duration::from_millis(40));
        }
        let r = m.rate().expect("rate");
        assert!(r > 80.0 * 1048576.0, "{r}");
    }

    #[test]
    fn prior_stands_in_until_measured() {
        let mut m = LinkMeter::new(Some(100_000_000));
        m.set_prior(Some(LAN_PRIOR));
        assert_eq!(m.rate(), Some(1e8), "the cap still applies");
        let mut m = LinkMeter::new(None);
        m.set_prior(Some(LAN_PRIOR));
        assert_eq!(m.rate(), Some(LAN_PRIOR));
        m.observe(8 << 20, Duration::from_millis(80));
        let r = m.rate().expect("rate");
        assert!(
            (r - 8.0 * 1048576.0 / 0.08).abs() < 1.0,
            "measured wins: {r}"
        );
    }

    #[test]
    fn cap_bounds_the_estimate() {
        let mut m = LinkMeter::new(Some(1_000_000));
        assert_eq!(m.rate(), Some(1e6));
        m.observe(64 << 20, Duration::from_millis(10));
        assert_eq!(m.rate(), Some(1e6));
    }
}
