//! Benchmark: the page codecs on synthetic guest pages (`novacron_migration::testdata`):
//! ratio and encode/decode MB/s per CPU second for every encoding and zstd level over a
//! first pass and a dirty pass, per page class, and where a delta stops paying off against
//! raw content (the figures behind `DELTA_LIMIT` and the literal form). Prints tables.
//!
//! Run: `cargo bench --bench page_codecs`.

use novacron_migration::delta::{encode_delta, xor_pages};
use novacron_migration::shard::ShardSpec;
use novacron_migration::stats::CodecStats;
use novacron_migration::testdata::*;
use novacron_migration::{BatchDecoder, BatchEncoder, EncoderConfig, Encoding, PAGE_SIZE};

/// Sends `indices` of `mem` in batches of `batch` pages and applies them to `dest`.
/// Returns (encoder stats, decoder stats) for this send.
fn send(
    enc: &mut BatchEncoder,
    dec: &mut BatchDecoder,
    encoding: Encoding,
    mem: &[Page],
    indices: &[u64],
    dest: &mut Vec<Page>,
    batch: usize,
) -> (CodecStats, CodecStats) {
    let mut es = CodecStats::default();
    let mut ds = CodecStats::default();
    for chunk in indices.chunks(batch) {
        let pages: Vec<(u64, &Page)> = chunk.iter().map(|&i| (i, &mem[i as usize])).collect();
        let b = enc.encode(encoding, &pages).unwrap();
        es.add_batch(&b.stats);
        let s = dec.decode(&b.bytes, dest).unwrap();
        assert_eq!(s.kinds, b.stats.kinds);
        ds.add_batch(&s);
    }
    (es, ds)
}

fn main() {
    measure_throughput();
    println!();
    measure_delta_threshold();
}

fn mbps(bytes: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        bytes as f64 / 1e6 / (ns as f64 / 1e9)
    }
}

/// Throughput and ratio on the test data (the figures in the engine's documentation).
fn measure_throughput() {
    let batch = 256;
    println!(
        "batch = {batch} pages; MB/s of page data per CPU second; ratio = page bytes / wire bytes"
    );
    println!(
        "{:<22} {:>7} {:>9} {:>9} | {:>7} {:>9} {:>9} {:>6}",
        "mode", "p1 ratio", "p1 enc", "p1 dec", "p2 ratio", "p2 enc", "p2 dec", "hit%"
    );
    let configs: Vec<(&str, Encoding, i32, usize)> = vec![
        ("raw (no cache)", Encoding::Raw, 1, 0),
        ("raw", Encoding::Raw, 1, 256 << 20),
        ("zstd level -1", Encoding::Zstd, -1, 256 << 20),
        ("zstd level 1", Encoding::Zstd, 1, 256 << 20),
        ("zstd level 3", Encoding::Zstd, 3, 256 << 20),
        ("delta level 1", Encoding::Delta, 1, 256 << 20),
        ("delta level 3", Encoding::Delta, 3, 256 << 20),
    ];
    for (name, encoding, level, cache) in configs {
        let mut rng = Rng::new(2025);
        let mut mem = guest_image(&mut rng, 16384);
        let mut dest = vec![[0u8; PAGE_SIZE]; mem.len()];
        let mut enc = BatchEncoder::new(EncoderConfig {
            cache_bytes: cache,
            zstd_level: level,
            dedup: true,
            shard: ShardSpec::SINGLE,
        })
        .unwrap();
        let mut dec = BatchDecoder::new().unwrap();
        // Pass 1: all pages, as if the caller did not elide zeros (shows zero markers).
        let all: Vec<u64> = (0..mem.len() as u64).collect();
        let (e1, d1) = send(&mut enc, &mut dec, encoding, &mem, &all, &mut dest, batch);
        let dirty = dirty_pass(&mut rng, &mut mem, 4096);
        let (e2, d2) = send(&mut enc, &mut dec, encoding, &mem, &dirty, &mut dest, batch);
        assert!(dest == mem);
        let (t1, t2) = (e1.total(), e2.total());
        println!(
            "{:<22} {:>7.2}x {:>9.0} {:>9.0} | {:>7.2}x {:>9.0} {:>9.0} {:>6.1}",
            name,
            t1.ratio(),
            mbps(t1.raw_bytes, e1.cpu_ns),
            mbps(t1.raw_bytes, d1.cpu_ns),
            t2.ratio(),
            mbps(t2.raw_bytes, e2.cpu_ns),
            mbps(t2.raw_bytes, d2.cpu_ns),
            100.0 * e2.cache_hit_rate().unwrap_or(0.0),
        );
        println!("    pass2 kinds: {:?}", e2.kinds);
    }
    // Per page class, zstd over whole batches of one class.
    println!(
        "{:<10} {:>8} {:>9} {:>8} {:>9}",
        "class", "z1 ratio", "z1 enc", "z3 ratio", "z3 enc"
    );
    let makers: [(&str, PageMaker); 3] = [
        ("text", text_page),
        ("struct", struct_page),
        ("random", random_page),
    ];
    for (name, make) in makers {
        let mut rng = Rng::new(5);
        let mem: Vec<Page> = (0..4096).map(|_| make(&mut rng)).collect();
        let all: Vec<u64> = (0..mem.len() as u64).collect();
        let mut row = format!("{name:<10}");
        for level in [1, 3] {
            let mut enc = BatchEncoder::new(EncoderConfig {
                cache_bytes: 0,
                zstd_level: level,
                dedup: false,
                shard: ShardSpec::SINGLE,
            })
            .unwrap();
            let mut dec = BatchDecoder::new().unwrap();
            let mut dest = vec![[0u8; PAGE_SIZE]; mem.len()];
            let (e, _) = send(
                &mut enc,
                &mut dec,
                Encoding::Zstd,
                &mem,
                &all,
                &mut dest,
                batch,
            );
            row.push_str(&format!(
                " {:>7.2}x {:>9.0}",
                e.total().ratio(),
                mbps(e.total().raw_bytes, e.cpu_ns)
            ));
        }
        println!("{row}");
    }
}

/// Where deltas stop paying off against raw content in the same zstd frame, with XOR
/// literals and with new-byte literals; used to pick the literal form and `DELTA_LIMIT`.
fn measure_delta_threshold() {
    println!(
        "{:<8} {:>6} {:>10} {:>10} {:>10} {:>10}  (bytes/page after zstd -1)",
        "class", "frac", "delta len", "raw", "xor lits", "new lits"
    );
    let makers: [(&str, PageMaker); 2] = [("text", text_page), ("struct", struct_page)];
    for (name, make) in makers {
        for frac in [0.05, 0.1, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] {
            let mut rng = Rng::new(3);
            let mut raw = Vec::new();
            let mut delta = Vec::new();
            let mut lens = 0usize;
            let mut xor_lits = Vec::new();
            for _ in 0..256 {
                let old = make(&mut rng);
                let fresh = make(&mut rng);
                let n = (PAGE_SIZE as f64 * frac) as usize;
                let start = rng.below((PAGE_SIZE - n + 1) as u64) as usize;
                let mut new = old;
                new[start..start + n].copy_from_slice(&fresh[start..start + n]);
                raw.extend_from_slice(&new);
                let mut x = [0u8; PAGE_SIZE];
                xor_pages(&mut x, &new, &old);
                let before = delta.len();
                encode_delta(&x, &new, &mut delta, usize::MAX);
                lens += delta.len() - before;
                encode_delta(&x, &x, &mut xor_lits, usize::MAX);
            }
            let zr = zstd::bulk::compress(&raw, 1).unwrap().len();
            let zd = zstd::bulk::compress(&delta, 1).unwrap().len();
            let zx = zstd::bulk::compress(&xor_lits, 1).unwrap().len();
            println!(
                "{name:<8} {frac:>6.2} {:>10} {:>10} {:>10} {:>10}",
                lens / 256,
                zr / 256,
                zx / 256,
                zd / 256
            );
        }
    }
}
