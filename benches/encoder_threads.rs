//! Benchmark: page encoding throughput of the migration encoder pool inline (0: in the
//! sender's thread) and with 1, 2 and 4 threads,
//! for raw, zstd and delta, on 64 MiB of realistic guest pages (text, database records,
//! random, zero), first pass then a dirty pass with small edits. Prints page MB/s (wall
//! clock, median of 3) and the wire ratio, so it shows where several encoder threads help
//! (`--compression auto` runs one per core, at most 4).
//!
//! Run: `cargo bench --bench encoder_threads`.

mod support;

use novacron_migration::encoder_pool::{Choice, Encoded, EncoderPool, PoolError};
use novacron_migration::{EncoderConfig, Encoding, PAGE_SIZE};
use std::time::Instant;

const PAGES: u64 = 16384;
const WORDS: [&str; 16] = [
    "the", "order", "customer", "shipped", "invoice", "pending", "region", "north", "payment",
    "account", "total", "status", "error", "request", "session", "update",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn make_page(index: u64, rng: &mut Rng) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    match index % 20 {
        0..=2 => {} // zero
        3..=4 => {
            for c in p.chunks_exact_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
        5..=11 => {
            let mut at = 0;
            while at < PAGE_SIZE {
                let w = WORDS[(rng.next() % 16) as usize].as_bytes();
                let n = w.len().min(PAGE_SIZE - at);
                p[at..at + n].copy_from_slice(&w[..n]);
                at += n;
                if at < PAGE_SIZE {
                    p[at] = b' ';
                    at += 1;
                }
            }
        }
        _ => {
            for (slot, rec) in p.chunks_exact_mut(64).enumerate() {
                let id = index * 64 + slot as u64;
                rec[..8].copy_from_slice(&id.to_le_bytes());
                rec[8..12].copy_from_slice(&((rng.next() % 5000) as u32).to_le_bytes());
                rec[16..24].copy_from_slice(&(1_700_000_000 + id * 7).to_le_bytes());
                let w = WORDS[(id % 16) as usize].as_bytes();
                rec[40..40 + w.len()].copy_from_slice(w);
            }
        }
    }
    p
}

/// Encodes `pages` with `pool`; returns (seconds, wire bytes).
fn pass(pool: &mut EncoderPool, pages: &[(u64, [u8; PAGE_SIZE])], choice: Choice) -> (f64, u64) {
    let mut wire = 0u64;
    let t = Instant::now();
    let mut sink = |e: Encoded<'_>| -> Result<(), PoolError> {
        wire += e.frame.len() as u64;
        Ok(())
    };
    for (pfn, data) in pages {
        let shard = pool.shard_of(*pfn);
        *pool.slot(shard) = *data;
        if pool.keep(shard, *pfn) {
            pool.submit(shard, choice, &mut sink).expect("submit");
            pool.poll(&mut sink).expect("poll");
        }
    }
    pool.drain(choice, &mut sink).expect("drain");
    (t.elapsed().as_secs_f64(), wire)
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let first: Vec<(u64, [u8; PAGE_SIZE])> =
        (0..PAGES).map(|i| (i, make_page(i, &mut rng))).collect();
    // Dirty pass: every 4th page, a few fields changed.
    let dirty: Vec<(u64, [u8; PAGE_SIZE])> = first
        .iter()
        .filter(|(i, _)| i % 4 == 1)
        .map(|(i, p)| {
            let mut p = *p;
            for k in 0..4 {
                let at = (rng.next() % (PAGE_SIZE as u64 - 8)) as usize;
                p[at..at + 8].copy_from_slice(&(k + rng.next() % 100).to_le_bytes());
            }
            (*i, p)
        })
        .collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "Encoder pool: {} MiB first pass + {} MiB dirty pass (4 small edits per page), {cores} cores, batches of 1024 pages, median of 3",
        PAGES * 4 / 1024,
        dirty.len() * 4 / 1024
    );
    println!(
        "{:<7} {:>7} {:>14} {:>9} {:>14} {:>9}",
        "enc", "threads", "pass1 MB/s", "ratio", "dirty MB/s", "ratio"
    );
    for encoding in [Encoding::Raw, Encoding::Zstd, Encoding::Delta] {
        let mut base = None;
        for threads in [0u32, 1, 2, 4] {
            let mut r1 = Vec::new();
            let mut r2 = Vec::new();
            let (mut w1, mut w2) = (0, 0);
            for _ in 0..3 {
                let cfg = EncoderConfig {
                    cache_bytes: if encoding == Encoding::Delta {
                        128 << 20
                    } else {
                        0
                    },
                    ..EncoderConfig::default()
                };
                let mut pool = EncoderPool::new(cfg, threads, 1024).expect("pool");
                let choice = Choice { encoding, level: 1 };
                let (t1, b1) = pass(&mut pool, &first, choice);
                let (t2, b2) = pass(&mut pool, &dirty, choice);
                r1.push(first.len() as f64 * PAGE_SIZE as f64 / t1 / 1e6);
                r2.push(dirty.len() as f64 * PAGE_SIZE as f64 / t2 / 1e6);
                (w1, w2) = (b1, b2);
            }
            let (m1, m2) = (support::median(&r1), support::median(&r2));
            let base1 = *base.get_or_insert(m1);
            println!(
                "{:<7} {:>7} {:>8.0} ({:.2}x) {:>8.2}x {:>14.0} {:>8.2}x",
                encoding.name(),
                threads,
                m1,
                m1 / base1,
                (first.len() * PAGE_SIZE) as f64 / w1 as f64,
                m2,
                (dirty.len() * PAGE_SIZE) as f64 / w2 as f64,
            );
        }
    }
}
