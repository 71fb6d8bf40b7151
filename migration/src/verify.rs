//! Verification helpers both ends share: which units a verification mode lists (the
//! sampled set: every unit of the final pass plus a uniform random sample of the other
//! populated units, seeded at random per migration), the `(unit, crc32)` records of a set
//! of units computed on several threads, and the probability that sampled verification
//! catches a given number of units the destination got wrong.
//!
//! # What each mode catches
//!
//! * `off`: nothing beyond the batches' own crc32 (corruption in transit).
//! * `sampled`: any wrong unit of the final pass; a wrong unit outside it (a write the
//!   dirty log missed in an earlier round, a unit the source skipped) with probability
//!   [`sampled_catch_probability`]: for `k` wrong units among the `P` units outside the
//!   final pass and a sample of `s`, `1 - C(P-k, s) / C(P, s)` (about `1 - (1 - s/P)^k`).
//!   Both ends compute [`sampled_digests`] over their own units (the source's final pass as
//!   sent, the destination's as received; the sample from the seed the source sends), so
//!   only 32 bytes cross the link while the guest is paused. A mismatch says which of the
//!   two sets differs, not which unit.
//! * `full`: every difference (every non-zero unit listed, every other one checked zero).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::unit::UnitSet;
use crate::{is_zero_page, PAGE_SIZE};

/// Fewest units worth a thread of their own (a thread costs tens of µs to start, a unit
/// about half a µs to read and crc).
const MIN_UNITS_PER_THREAD: usize = 512;
/// Most threads [`crc_records`] uses.
pub const MAX_VERIFY_THREADS: usize = 8;

/// A small deterministic generator (splitmix64): the sample only needs to be unpredictable
/// to the guest, not cryptographic.
#[derive(Clone, Debug)]
pub struct SampleRng(u64);

impl SampleRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SampleRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`; Lemire's multiply-shift, bias < 2^-32 for the
    /// sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A fresh random seed for one migration's sample (the process's hash keys, the time and
/// the process id, mixed).
pub fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// The units sampled verification lists: every unit of `final_pass`, plus `sample` units
/// drawn uniformly without replacement from the units of `populated` outside the final
/// pass (all of them if there are fewer). Robert Floyd's algorithm picks `sample` distinct
/// ranks among the candidates, and one walk over the bitmap words (popcounts) maps ranks
/// to units: O(words + sample log sample), about 50 µs for 1 GiB of guest and the default
/// sample, so it can run just before the pause.
pub fn sampled_set(final_pass: &UnitSet, populated: &UnitSet, sample: u64, seed: u64) -> UnitSet {
    let len = populated.len().max(final_pass.len());
    let mut out = UnitSet::new(len);
    let fp = final_pass.words();
    let candidates = |i: usize, w: u64| w & !fp.get(i).copied().unwrap_or(0);
    for (o, w) in out.words_mut().iter_mut().zip(fp) {
        *o |= w;
    }
    let total: u64 = populated
        .words()
        .iter()
        .enumerate()
        .map(|(i, &w)| u64::from(candidates(i, w).count_ones()))
        .sum();
    if sample >= total {
        for (i, (o, &w)) in out
            .words_mut()
            .iter_mut()
            .zip(populated.words())
            .enumerate()
        {
            *o |= candidates(i, w);
        }
        return out;
    }
    // Floyd: for j in total-s..total, pick t in 0..=j; take t, or j if t is taken.
    let mut rng = SampleRng::new(seed);
    let mut chosen = std::collections::HashSet::with_capacity(sample as usize);
    for j in total - sample..total {
        let t = rng.below(j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut ranks: Vec<u64> = chosen.into_iter().collect();
    ranks.sort_unstable();
    // Map ranks (positions among the candidates, ascending) to units.
    let mut next = ranks.iter().copied().peekable();
    let mut before = 0u64; // candidates in the words already walked
    for (i, &w) in populated.words().iter().enumerate() {
        let mut c = candidates(i, w);
        let here = u64::from(c.count_ones());
        let mut rank = before;
        while let Some(&r) = next.peek() {
            if r >= before + here {
                break;
            }
            // Drop the candidates below rank r in this word, then take the lowest.
            while rank < r {
                c &= c - 1;
                rank += 1;
            }
            out.set(i as u64 * 64 + u64::from(c.trailing_zeros()));
            next.next();
        }
        before += here;
        if next.peek().is_none() {
            break;
        }
    }
    out
}

/// Threads to compute records on: one per host core, at most [`MAX_VERIFY_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_VERIFY_THREADS)
}

/// The `(unit, crc32)` records of `units` (ascending), read with `read` on up to `threads`
/// threads (contiguous shares, so the output keeps the input's order). With `skip_zero`,
/// all-zero units are left out (full mode: the destination checks every unlisted unit is
/// zero). The first read error stops the computation.
pub fn crc_records<E, R>(
    units: &[u64],
    threads: usize,
    skip_zero: bool,
    read: &R,
) -> Result<Vec<(u64, u32)>, E>
where
    E: Send,
    R: Fn(u64, &mut [u8; PAGE_SIZE]) -> Result<(), E> + Sync,
{
    let share = |part: &[u64]| -> Result<Vec<(u64, u32)>, E> {
        let mut buf = [0u8; PAGE_SIZE];
        let mut out = Vec::with_capacity(part.len());
        for &n in part {
            read(n, &mut buf)?;
            if skip_zero && is_zero_page(&buf) {
                continue;
            }
            out.push((n, crc32fast::hash(&buf)));
        }
        Ok(out)
    };
    let threads = threads
        .clamp(1, MAX_VERIFY_THREADS)
        .min(units.len().div_ceil(MIN_UNITS_PER_THREAD).max(1));
    if threads == 1 {
        return share(units);
    }
    let chunk = units.len().div_ceil(threads);
    let parts: Vec<Result<Vec<(u64, u32)>, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = units
            .chunks(chunk)
            .map(|part| s.spawn(move || share(part)))
            .collect();
        handles
            .into_iter()
            // A panicking reader is a bug, not bad input: re-raise it here.
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::with_capacity(units.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// A digest of `(unit, crc32)` records: the crc32 of their little-endian bytes in order.
pub fn digest(records: &[(u64, u32)]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (n, crc) in records {
        h.update(&n.to_le_bytes());
        h.update(&crc.to_le_bytes());
    }
    h.finalize()
}

/// What [`sampled_digests`] found over one end's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledDigests {
    /// Units of the final pass.
    pub final_units: u64,
    /// Units of the sample (outside the final pass).
    pub sample_units: u64,
    /// Digest of the final pass's records.
    pub final_digest: u32,
    /// Digest of the sample's records.
    pub sample_digest: u32,
}

/// Sampled verification over one end's units: the digest of the `final_pass` units and
/// the digest of `sample` units drawn with `seed` uniformly from the `addressable` units
/// outside the final pass (every existing unit counts as a candidate, whatever it holds,
/// so both ends of compatible machines draw the same sample), records computed with
/// `read` on `threads` threads.
pub fn sampled_digests<E, R>(
    final_pass: &UnitSet,
    addressable: &UnitSet,
    sample: u64,
    seed: u64,
    threads: usize,
    read: &R,
) -> Result<SampledDigests, E>
where
    E: Send,
    R: Fn(u64, &mut [u8; PAGE_SIZE]) -> Result<(), E> + Sync,
{
    let count = addressable.len();
    let final_units: Vec<u64> = final_pass.iter().filter(|&n| n < count).collect();
    let sample_units = sample_units(final_pass, addressable, sample, seed);
    let final_records = crc_records(&final_units, threads, false, read)?;
    let sample_records = crc_records(&sample_units, threads, false, read)?;
    Ok(SampledDigests {
        final_units: final_units.len() as u64,
        sample_units: sample_units.len() as u64,
        final_digest: digest(&final_records),
        sample_digest: digest(&sample_records),
    })
}

/// The units sampled verification checks besides the final pass: `sample` units drawn with
/// `seed` uniformly from the `addressable` units outside `final_pass`, ascending.
pub fn sample_units(
    final_pass: &UnitSet,
    addressable: &UnitSet,
    sample: u64,
    seed: u64,
) -> Vec<u64> {
    sampled_set(final_pass, addressable, sample, seed)
        .iter()
        .filter(|&n| n < addressable.len() && !final_pass.get(n))
        .collect()
}

/// The final pass's records as both ends compute them while the pass is sent or applied:
/// sorted by unit, the last record of a unit written twice kept. Returns the units and
/// their digest ([`digest`] of the sorted records).
pub fn final_pass_digest(records: &mut Vec<(u64, u32)>) -> (u64, u32) {
    // Stable: of equal units the later write stays last, and dedup keeps the first of a
    // run, so reverse first.
    records.reverse();
    records.sort_by_key(|r| r.0);
    records.dedup_by_key(|r| r.0);
    (records.len() as u64, digest(records))
}

/// The probability that a uniform sample of `sample` units out of `populated` contains at
/// least one of `missed` wrong units: `1 - C(P-k, s) / C(P, s)`, computed as the product
/// `prod_{i<m} (1 - t / (P - i))` over the shorter of the two forms (`m = min(k, s)`,
/// `t = max(k, s)`) in log space, so it neither overflows nor loses precision for large `P`.
pub fn sampled_catch_probability(populated: u64, sample: u64, missed: u64) -> f64 {
    let p = populated;
    let k = missed.min(p);
    let s = sample.min(p);
    if k == 0 || s == 0 {
        return 0.0;
    }
    if k + s > p {
        // Every sample of s must meet one of the k (pigeonhole).
        return 1.0;
    }
    // C(P-k, s)/C(P, s) = prod_{i<s} (P-k-i)/(P-i) = prod_{i<k} (P-s-i)/(P-i).
    let (m, t) = if k <= s { (k, s) } else { (s, k) };
    let mut log_miss = 0.0f64;
    for i in 0..m {
        log_miss += (-(t as f64) / (p - i) as f64).ln_1p();
    }
    -log_miss.exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(len: u64, units: impl IntoIterator<Item = u64>) -> UnitSet {
        let mut s = UnitSet::new(len);
        for n in units {
            s.set(n);
        }
        s
    }

    /// Exact value from binomials for small arguments.
    fn exact(p: u64, s: u64, k: u64) -> f64 {
        fn choose(n: u64, r: u64) -> f64 {
            if r > n {
                return 0.0;
            }
            (0..r).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        1.0 - choose(p - k, s) / choose(p, s)
    }

    #[test]
    fn catch_probability_matches_the_binomials_and_the_limits() {
        for (p, s, k) in [
            (10, 3, 1),
            (10, 3, 2),
            (100, 10, 5),
            (50, 49, 1),
            (60, 7, 20),
        ] {
            let got = sampled_catch_probability(p, s, k);
            assert!((got - exact(p, s, k)).abs() < 1e-12, "{p} {s} {k}: {got}");
        }
        assert_eq!(sampled_catch_probability(100, 0, 5), 0.0);
        assert_eq!(sampled_catch_probability(100, 10, 0), 0.0);
        assert_eq!(sampled_catch_probability(100, 100, 1), 1.0);
        assert_eq!(sampled_catch_probability(100, 96, 5), 1.0);
        assert_eq!(sampled_catch_probability(0, 10, 1), 0.0);
        // One missed unit: exactly s/P.
        assert!((sampled_catch_probability(131_072, 1024, 1) - 1024.0 / 131_072.0).abs() < 1e-12);
        // Large P: close to 1 - (1 - s/P)^k, finite, in [0, 1].
        let big = sampled_catch_probability(1 << 28, 1024, 1 << 16);
        let approx = 1.0 - (1.0 - 1024.0 / (1u64 << 28) as f64).powi(1 << 16);
        assert!((big - approx).abs() < 1e-4, "{big} vs {approx}");
        assert!((0.0..=1.0).contains(&big));
        // Monotone in the number missed.
        let mut last = 0.0;
        for k in 1..50 {
            let v = sampled_catch_probability(10_000, 300, k);
            assert!(v > last);
            last = v;
        }
    }

    #[test]
    fn the_sample_covers_the_final_pass_and_the_asked_number_of_others() {
        let populated = set_of(10_000, (0..10_000).filter(|n| n % 3 != 0));
        let final_pass = set_of(10_000, [1, 2, 4, 9_998]);
        let candidates = populated.count() - 4;
        let s = sampled_set(&final_pass, &populated, 500, 7);
        assert_eq!(s.count(), 4 + 500);
        assert!(final_pass.iter().all(|n| s.get(n)));
        assert!(s.iter().all(|n| populated.get(n) || final_pass.get(n)));
        // Another seed, another sample; the same seed, the same sample.
        let t = sampled_set(&final_pass, &populated, 500, 8);
        assert!(s.words() != t.words());
        assert!(s.words() == sampled_set(&final_pass, &populated, 500, 7).words());
        // A sample at least as large as the candidates takes them all.
        let all = sampled_set(&final_pass, &populated, candidates + 10, 1);
        assert_eq!(all.count(), candidates + 4);
    }

    #[test]
    fn a_guest_sized_sample_is_exact() {
        // 1 GiB of units, all populated, a final pass of every 7th unit.
        let n = 262_144u64;
        let populated = set_of(n, 0..n);
        let final_pass = set_of(n, (0..n).step_by(7));
        let s = sampled_set(&final_pass, &populated, 1024, 42);
        assert_eq!(s.count(), final_pass.count() + 1024);
        let others = s.iter().filter(|u| !final_pass.get(*u)).count();
        assert_eq!(others, 1024);
        // The last candidate can be drawn: a sample of all but one misses exactly one.
        let candidates = n - final_pass.count();
        let almost = sampled_set(&final_pass, &populated, candidates - 1, 3);
        assert_eq!(almost.count(), n - 1);
    }

    #[test]
    fn the_sample_is_uniform() {
        // 40 candidates, samples of 10: every unit is picked with probability 1/4.
        let populated = set_of(40, 0..40);
        let none = UnitSet::new(40);
        let mut hits = [0u32; 40];
        let runs = 4000;
        for seed in 0..runs {
            for n in sampled_set(&none, &populated, 10, seed).iter() {
                hits[n as usize] += 1;
            }
        }
        for (n, h) in hits.iter().enumerate() {
            let rate = f64::from(*h) / runs as f64;
            assert!((rate - 0.25).abs() < 0.04, "unit {n}: {rate}");
        }
    }

    #[test]
    fn sampled_catch_rate_over_seeds_matches_the_formula() {
        let p = 2000u64;
        let populated = set_of(p, 0..p);
        let none = UnitSet::new(p);
        let missed = [17u64, 400, 1999];
        let s = 300;
        let runs = 3000u64;
        let caught = (0..runs)
            .filter(|&seed| {
                let set = sampled_set(&none, &populated, s, seed ^ 0xABCD);
                missed.iter().any(|&m| set.get(m))
            })
            .count() as f64;
        let want = sampled_catch_probability(p, s, missed.len() as u64);
        let rate = caught / runs as f64;
        // 3000 runs: standard error ~0.0085 around ~0.39.
        assert!((rate - want).abs() < 0.035, "rate {rate}, formula {want}");
    }

    #[test]
    fn sampled_digests_agree_on_equal_units_and_tell_which_set_differs() {
        let count = 10_000u64;
        let page = |n: u64, stale: Option<u64>| {
            let mut b = [0u8; PAGE_SIZE];
            let v = if Some(n) == stale { n + 1 } else { n };
            b[..8].copy_from_slice(&v.to_le_bytes());
            b
        };
        let final_pass = set_of(count, [5, 77, 9_000]);
        let mut all = UnitSet::new(count);
        all.fill_range(0, count);
        let at = |stale: Option<u64>, seed: u64| {
            sampled_digests(
                &final_pass,
                &all,
                count,
                seed,
                2,
                &|n, b: &mut [u8; PAGE_SIZE]| {
                    *b = page(n, stale);
                    Ok::<(), String>(())
                },
            )
            .expect("digests")
        };
        let src = at(None, 9);
        assert_eq!(src.final_units, 3);
        assert_eq!(src.sample_units, count - 3);
        assert_eq!(src, at(None, 9));
        // A stale unit in the final pass changes that digest only; outside it, the sample's.
        let f = at(Some(77), 9);
        assert!(f.final_digest != src.final_digest && f.sample_digest == src.sample_digest);
        let o = at(Some(4_000), 9);
        assert!(o.final_digest == src.final_digest && o.sample_digest != src.sample_digest);
        // Another seed draws another sample (of 100 here).
        let small = |seed| {
            sampled_digests(
                &final_pass,
                &all,
                100,
                seed,
                1,
                &|n, b: &mut [u8; PAGE_SIZE]| {
                    *b = page(n, None);
                    Ok::<(), String>(())
                },
            )
            .expect("digests")
        };
        assert_eq!(small(1).sample_units, 100);
        assert!(small(1).sample_digest != small(2).sample_digest);
        // Units that do not exist (a memory hole, the gap between disks) are never drawn,
        // so a reader that cannot read them is never asked to.
        let mut holes = UnitSet::new(count);
        holes.fill_range(0, 3_000);
        holes.fill_range(6_000, count);
        let d = sampled_digests(
            &final_pass,
            &holes,
            count,
            3,
            2,
            &|n, b: &mut [u8; PAGE_SIZE]| {
                if (3_000..6_000).contains(&n) {
                    return Err(format!("unit {n} is in the hole"));
                }
                *b = page(n, None);
                Ok(())
            },
        )
        .expect("the hole is never read");
        assert_eq!(d.sample_units, count - 3_000 - 3);
    }

    #[test]
    fn records_are_the_same_on_one_or_many_threads() {
        let units: Vec<u64> = (0..20_000).collect();
        let read = |n: u64, buf: &mut [u8; PAGE_SIZE]| -> Result<(), String> {
            buf.fill(0);
            if !n.is_multiple_of(5) {
                buf[..8].copy_from_slice(&n.to_le_bytes());
            }
            Ok(())
        };
        let one = crc_records(&units, 1, false, &read).expect("records");
        let many = crc_records(&units, 4, false, &read).expect("records");
        assert_eq!(one.len(), 20_000);
        assert_eq!(one, many);
        let nonzero = crc_records(&units, 4, true, &read).expect("records");
        assert_eq!(nonzero.len(), 16_000);
        assert!(nonzero.iter().all(|(n, _)| !n.is_multiple_of(5)));
        let failing = |n: u64, _: &mut [u8; PAGE_SIZE]| -> Result<(), String> {
            if n == 15_000 {
                Err(format!("unit {n} unreadable"))
            } else {
                Ok(())
            }
        };
        assert_eq!(
            crc_records(&units, 4, false, &failing),
            Err("unit 15000 unreadable".to_string())
        );
    }
}
