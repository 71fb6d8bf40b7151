//! The source-side batch encoder: sent-page cache, zstd context, delta and dedup.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::batch::{
    put_entry, Encoding, PageKind, BATCH_HEADER_LEN, BATCH_MAGIC, BATCH_VERSION, ENTRY_HEADER_LEN,
    MAX_BATCH_PAGES,
};
use crate::delta::{encode_delta, xor_pages, DELTA_LIMIT};
use crate::error::CodecError;
use crate::page_cache::SentPageCache;
use crate::shard::{shard_of, ShardSpec};
use crate::stats::{thread_cpu_ns, BatchStats, CodecStats};
use crate::{is_zero_page, PAGE_SIZE};

/// Default zstd level. On the test data (module documentation) level 3 sends 7–10% fewer
/// bytes than level 1 for ~1.4x the encoder CPU (decoding costs the same). Level 1 is the
/// default because encoding shares the host's cores with the running guest; on a link
/// slower than ~300 Mbit/s level 3 costs under 20% of a core and is worth it
/// ([`BatchEncoder::set_zstd_level`]).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Configuration of a [`BatchEncoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Byte budget of the sent-page cache (page copies plus metadata). 0 disables the
    /// cache, and with it delta and dedup.
    pub cache_bytes: usize,
    /// zstd level for `Zstd` and `Delta` batches.
    pub zstd_level: i32,
    /// Send pages whose content the destination already holds as references.
    pub dedup: bool,
    /// The pages this encoder owns.
    pub shard: ShardSpec,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            cache_bytes: 256 << 20,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            dedup: true,
            shard: ShardSpec::SINGLE,
        }
    }
}

impl EncoderConfig {
    /// `count` configurations, one per encoder thread, that split this configuration's
    /// cache budget evenly; route each page to encoder `shard_of(page, count)`.
    pub fn sharded(&self, count: u32) -> Vec<EncoderConfig> {
        let count = count.max(1);
        (0..count)
            .map(|index| EncoderConfig {
                cache_bytes: self.cache_bytes / count as usize,
                shard: ShardSpec { index, count },
                ..*self
            })
            .collect()
    }
}

/// An encoded batch and its statistics.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    /// The batch, ready to send.
    pub bytes: Vec<u8>,
    /// Its statistics.
    pub stats: BatchStats,
}

/// Source-side batch encoder. Owns the sent-page cache of its shard and a zstd context;
/// `Send`, so one can be moved to each encoder thread.
///
/// Every page passed to [`BatchEncoder::encode`] is assumed to reach the destination in
/// order (see the module's ordering contract). If a batch is lost, the encoder no longer
/// matches the destination: [`BatchEncoder::reset`] it before sending to a new destination.
pub struct BatchEncoder {
    config: EncoderConfig,
    cache: SentPageCache,
    compressor: zstd::bulk::Compressor<'static>,
    body: Vec<u8>,
    xor: Box<[u8; PAGE_SIZE]>,
    totals: CodecStats,
    poisoned: bool,
}

impl fmt::Debug for BatchEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchEncoder")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl BatchEncoder {
    /// Creates an encoder with an empty cache.
    pub fn new(config: EncoderConfig) -> Result<Self, CodecError> {
        if config.shard.count == 0 || config.shard.index >= config.shard.count {
            return Err(CodecError::Config("shard index must be < shard count"));
        }
        let compressor =
            zstd::bulk::Compressor::new(config.zstd_level).map_err(CodecError::Compress)?;
        Ok(BatchEncoder {
            config,
            cache: SentPageCache::try_new(config.cache_bytes).map_err(|_| {
                CodecError::Config(
                    "cannot reserve memory for the sent-page cache: use a smaller --cache-size",
                )
            })?,
            compressor,
            body: Vec::new(),
            xor: Box::new([0u8; PAGE_SIZE]),
            totals: CodecStats::default(),
            poisoned: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The sent-page cache (for its size and counters).
    pub fn cache(&self) -> &SentPageCache {
        &self.cache
    }

    /// Protects the cached copies of `pages` (re-dirtied pages, known from the dirty log
    /// before they are sent again): see [`SentPageCache::protect_page`].
    pub fn protect_pages(&mut self, pages: &[u64]) {
        for &p in pages {
            self.cache.protect_page(p);
        }
    }

    /// Cumulative statistics of all batches encoded since creation or reset.
    pub fn totals(&self) -> &CodecStats {
        &self.totals
    }

    /// Changes the zstd level for the following batches (e.g. when the measured link
    /// bandwidth changes). Negative levels are zstd's fast modes.
    pub fn set_zstd_level(&mut self, level: i32) -> Result<(), CodecError> {
        self.compressor
            .set_compression_level(level)
            .map_err(CodecError::Compress)?;
        self.config.zstd_level = level;
        Ok(())
    }

    /// Forgets everything sent (new destination, or after an error) and clears the
    /// poisoned state and the totals.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.totals = CodecStats::default();
        self.poisoned = false;
    }

    /// Encodes `pages` (applied at the destination in this order) as one batch.
    pub fn encode(
        &mut self,
        encoding: Encoding,
        pages: &[(u64, &[u8; PAGE_SIZE])],
    ) -> Result<EncodedBatch, CodecError> {
        let mut bytes = Vec::new();
        let stats = self.encode_into(encoding, pages, &mut bytes)?;
        Ok(EncodedBatch { bytes, stats })
    }

    /// Like [`BatchEncoder::encode`], into a caller-provided buffer (cleared first) so that
    /// its allocation can be reused across batches.
    ///
    /// Errors before any page is processed (too many pages, wrong shard, poisoned encoder)
    /// leave the encoder unchanged. A compression error poisons it.
    pub fn encode_into(
        &mut self,
        encoding: Encoding,
        pages: &[(u64, &[u8; PAGE_SIZE])],
        out: &mut Vec<u8>,
    ) -> Result<BatchStats, CodecError> {
        if self.poisoned {
            return Err(CodecError::Poisoned);
        }
        if pages.len() > MAX_BATCH_PAGES {
            return Err(CodecError::TooManyPages(pages.len()));
        }
        let shard = self.config.shard;
        if shard.count > 1 {
            if let Some(&(page, _)) = pages.iter().find(|(p, _)| !shard.owns(*p)) {
                return Err(CodecError::WrongShard {
                    page,
                    owner: shard_of(page, shard.count),
                    shard: shard.index,
                    count: shard.count,
                });
            }
        }

        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        let evictions0 = self.cache.counters().evictions;
        let mut stats = BatchStats {
            encoding,
            pages: pages.len() as u64,
            raw_bytes: (pages.len() * PAGE_SIZE) as u64,
            ..BatchStats::default()
        };

        out.clear();
        out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
        let body_len;
        if encoding == Encoding::Raw {
            self.encode_body(encoding, pages, out, &mut stats);
            body_len = out.len() - BATCH_HEADER_LEN;
            stats.body_bytes = body_len as u64;
        } else {
            let mut body = std::mem::take(&mut self.body);
            body.clear();
            self.encode_body(encoding, pages, &mut body, &mut stats);
            stats.body_bytes = body.len() as u64;
            out.reserve(zstd::zstd_safe::compress_bound(body.len()));
            let mut cursor = std::io::Cursor::new(&mut *out);
            cursor.set_position(BATCH_HEADER_LEN as u64);
            let res = self.compressor.compress_to_buffer(&body[..], &mut cursor);
            self.body = body;
            match res {
                Ok(n) => body_len = n,
                Err(e) => {
                    self.poisoned = true;
                    return Err(CodecError::Compress(e));
                }
            }
            if out.len() != BATCH_HEADER_LEN + body_len {
                self.poisoned = true;
                return Err(CodecError::Compress(std::io::Error::other(
                    "compressed length mismatch",
                )));
            }
        }

        // All three fit in u32: pages <= MAX_BATCH_PAGES, body <= compress_bound(~16 MiB).
        out[0..4].copy_from_slice(&BATCH_MAGIC);
        out[4] = BATCH_VERSION;
        out[5] = encoding.wire();
        out[6] = 0;
        out[7] = 0;
        out[8..12].copy_from_slice(&(pages.len() as u32).to_le_bytes());
        out[12..16].copy_from_slice(&(stats.body_bytes as u32).to_le_bytes());
        out[16..20].copy_from_slice(&(body_len as u32).to_le_bytes());

        stats.encoded_bytes = out.len() as u64;
        stats.cache_evictions = self.cache.counters().evictions - evictions0;
        stats.wall_ns = t0.elapsed().as_nanos() as u64;
        stats.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        self.totals.add_batch(&stats);
        Ok(stats)
    }

    /// Appends the entries of `pages` to `buf`, updating the cache as pages are "sent".
    fn encode_body(
        &mut self,
        encoding: Encoding,
        pages: &[(u64, &[u8; PAGE_SIZE])],
        buf: &mut Vec<u8>,
        stats: &mut BatchStats,
    ) {
        let BatchEncoder {
            config, cache, xor, ..
        } = self;
        buf.reserve(pages.len() * (ENTRY_HEADER_LEN + PAGE_SIZE));
        for &(index, data) in pages {
            let crc = crc32fast::hash(data);
            let kind = if is_zero_page(data) {
                put_entry(buf, index, PageKind::Zero, crc);
                cache.forget(index);
                PageKind::Zero
            } else if let Some(src) = config
                .dedup
                .then(|| cache.find_identical(crc, data))
                .flatten()
            {
                put_entry(buf, index, PageKind::Dedup, crc);
                buf.extend_from_slice(&src.to_le_bytes());
                cache.record_sent(index, crc, data);
                PageKind::Dedup
            } else {
                let mut kind = PageKind::Raw;
                if encoding == Encoding::Delta {
                    if let Some(base) = cache.get(index) {
                        stats.cache_hits += 1;
                        let start = buf.len();
                        put_entry(buf, index, PageKind::Delta, crc);
                        xor_pages(xor, data, base);
                        if encode_delta(xor, data, buf, DELTA_LIMIT) {
                            kind = PageKind::Delta;
                        } else {
                            buf.truncate(start);
                        }
                    } else {
                        stats.cache_misses += 1;
                    }
                }
                if kind == PageKind::Raw {
                    put_entry(buf, index, PageKind::Raw, crc);
                    buf.extend_from_slice(data);
                }
                cache.record_sent(index, crc, data);
                kind
            };
            stats.kinds.bump(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::max_body_len;
    use crate::decoder::BatchDecoder;
    use crate::stats::KindCounts;
    use crate::testdata::*;

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

    fn nonzero(mem: &[Page]) -> Vec<u64> {
        (0..mem.len() as u64)
            .filter(|&i| !is_zero_page(&mem[i as usize]))
            .collect()
    }

    #[test]
    fn encoder_and_decoder_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<BatchEncoder>();
        assert_send::<BatchDecoder>();
    }

    #[test]
    fn encoding_names_and_wire_values() {
        for e in Encoding::ALL {
            assert_eq!(Encoding::from_wire(e.wire()), Some(e));
            assert_eq!(e.name().parse::<Encoding>().unwrap(), e);
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{e}\""));
        }
        assert!(Encoding::from_wire(3).is_none());
        assert!("lz4".parse::<Encoding>().is_err());
        for k in [
            PageKind::Zero,
            PageKind::Raw,
            PageKind::Delta,
            PageKind::Dedup,
        ] {
            assert_eq!(PageKind::from_wire(k.wire()), Some(k));
        }
    }

    #[test]
    fn round_trip_every_encoding_over_several_passes() {
        for encoding in Encoding::ALL {
            for dedup in [false, true] {
                let mut rng = Rng::new(42);
                let mut mem = guest_image(&mut rng, 1024);
                let mut dest = vec![[0u8; PAGE_SIZE]; mem.len()];
                let mut enc = encoder(8 << 20, dedup);
                let mut dec = BatchDecoder::new().unwrap();
                // Pass 1: the caller elides zero pages (fresh destination is zeroed).
                send(
                    &mut enc,
                    &mut dec,
                    encoding,
                    &mem,
                    &nonzero(&mem),
                    &mut dest,
                    256,
                );
                assert!(dest == mem, "{encoding} dedup={dedup}: pass 1 differs");
                let mut totals = CodecStats::default();
                for pass in 0..3 {
                    let dirty = dirty_pass(&mut rng, &mut mem, 300);
                    let (es, _) = send(&mut enc, &mut dec, encoding, &mem, &dirty, &mut dest, 128);
                    assert!(dest == mem, "{encoding} dedup={dedup}: pass {pass} differs");
                    totals.merge(&es);
                }
                assert!(totals.kinds.zero > 0);
                assert_eq!(totals.kinds.delta > 0, encoding == Encoding::Delta);
                assert_eq!(totals.kinds.dedup > 0, dedup);
                if encoding == Encoding::Delta {
                    assert!(totals.cache_hit_rate().unwrap() > 0.5, "{totals:?}");
                }
                let m = totals.mode(encoding);
                match encoding {
                    Encoding::Raw if !dedup => assert!(m.ratio() < 1.1),
                    Encoding::Raw => {}
                    Encoding::Zstd => assert!(m.ratio() > 1.3, "{m:?}"),
                    Encoding::Delta => assert!(m.ratio() > 4.0, "{m:?}"),
                }
                assert_eq!(dec.totals().kinds, enc.totals().kinds);
            }
        }
    }

    #[test]
    fn single_pages_of_every_class() {
        let mut rng = Rng::new(7);
        let classes: Vec<(&str, Page)> = vec![
            ("zero", [0u8; PAGE_SIZE]),
            ("text", text_page(&mut rng)),
            ("struct", struct_page(&mut rng)),
            ("random", random_page(&mut rng)),
            ("ones", [0xFFu8; PAGE_SIZE]),
        ];
        for encoding in Encoding::ALL {
            for (name, page) in &classes {
                let mut enc = encoder(1 << 20, true);
                let mut dest = vec![[0x55u8; PAGE_SIZE]; 4];
                let b = enc.encode(encoding, &[(2, page)]).unwrap();
                decode_batch(&b.bytes, &mut dest).unwrap();
                assert_eq!(&dest[2], page, "{encoding} {name}");
                assert_eq!(dest[1], [0x55u8; PAGE_SIZE]);
                let expect = if *name == "zero" {
                    PageKind::Zero
                } else {
                    PageKind::Raw
                };
                let mut k = KindCounts::default();
                k.bump(expect);
                assert_eq!(b.stats.kinds, k, "{encoding} {name}");
            }
        }
    }

    #[test]
    fn delta_of_a_few_changed_bytes_is_tiny() {
        let mut rng = Rng::new(9);
        for make in [text_page, struct_page, random_page] {
            let mut page = make(&mut rng);
            let mut enc = encoder(1 << 20, false);
            let mut dest = vec![[0u8; PAGE_SIZE]; 8];
            let b = enc.encode(Encoding::Delta, &[(3, &page)]).unwrap();
            decode_batch(&b.bytes, &mut dest).unwrap();
            tweak(&mut page, &mut rng);
            let b = enc.encode(Encoding::Delta, &[(3, &page)]).unwrap();
            assert_eq!(b.stats.kinds.delta, 1);
            assert_eq!(b.stats.cache_hits, 1);
            assert!(
                b.bytes.len() < 120,
                "delta batch of {} bytes",
                b.bytes.len()
            );
            decode_batch(&b.bytes, &mut dest).unwrap();
            assert_eq!(dest[3], page);
            // Unchanged page re-sent (dirty but same content): a 3-byte delta.
            let b = enc.encode(Encoding::Delta, &[(3, &page)]).unwrap();
            assert_eq!(b.stats.kinds.delta, 1);
            decode_batch(&b.bytes, &mut dest).unwrap();
            assert_eq!(dest[3], page);
        }
    }

    #[test]
    fn rewritten_page_falls_back_to_raw_inside_delta_batch() {
        let mut rng = Rng::new(11);
        let mut enc = encoder(1 << 20, false);
        let mut dest = vec![[0u8; PAGE_SIZE]; 8];
        let a = random_page(&mut rng);
        let b = random_page(&mut rng);
        let mut c = text_page(&mut rng);
        let batch = enc.encode(Encoding::Delta, &[(1, &a), (2, &c)]).unwrap();
        assert_eq!(batch.stats.cache_misses, 2);
        decode_batch(&batch.bytes, &mut dest).unwrap();
        tweak(&mut c, &mut rng);
        let batch = enc.encode(Encoding::Delta, &[(1, &b), (2, &c)]).unwrap();
        assert_eq!(batch.stats.kinds.raw, 1);
        assert_eq!(batch.stats.kinds.delta, 1);
        assert_eq!(batch.stats.cache_hits, 2);
        decode_batch(&batch.bytes, &mut dest).unwrap();
        assert_eq!(dest[1], b);
        assert_eq!(dest[2], c);
    }

    #[test]
    fn dedup_sends_references_to_identical_content() {
        let mut rng = Rng::new(13);
        let a = text_page(&mut rng);
        let other = struct_page(&mut rng);
        for encoding in Encoding::ALL {
            let mut enc = encoder(1 << 20, true);
            let mut dest = vec![[0u8; PAGE_SIZE]; 16];
            let b = enc.encode(encoding, &[(5, &a), (6, &a)]).unwrap();
            assert_eq!(b.stats.kinds.dedup, 1, "intra-batch duplicate");
            decode_batch(&b.bytes, &mut dest).unwrap();
            let b = enc.encode(encoding, &[(9, &a)]).unwrap();
            assert_eq!(b.stats.kinds.dedup, 1);
            assert!(b.bytes.len() < 64);
            decode_batch(&b.bytes, &mut dest).unwrap();
            assert_eq!(dest[9], a);
            // Overwrite 5, 6 and 9: `a` is no longer at the destination, no reference to it.
            let b = enc
                .encode(encoding, &[(5, &other), (6, &other), (9, &other)])
                .unwrap();
            decode_batch(&b.bytes, &mut dest).unwrap();
            let b = enc.encode(encoding, &[(10, &a)]).unwrap();
            assert_eq!(b.stats.kinds.dedup, 0, "{encoding}");
            decode_batch(&b.bytes, &mut dest).unwrap();
            assert_eq!(dest[10], a);
            assert_eq!(dest[5], other);
        }
        let mut enc = encoder(1 << 20, false);
        let b = enc.encode(Encoding::Zstd, &[(5, &a), (6, &a)]).unwrap();
        assert_eq!(b.stats.kinds.dedup, 0);
    }

    #[test]
    fn encoder_limits_and_empty_batches() {
        let mut enc = encoder(1 << 20, true);
        let page = [1u8; PAGE_SIZE];
        let too_many: Vec<(u64, &Page)> = (0..MAX_BATCH_PAGES as u64 + 1)
            .map(|i| (i, &page))
            .collect();
        assert!(matches!(
            enc.encode(Encoding::Raw, &too_many),
            Err(CodecError::TooManyPages(_))
        ));
        assert!(
            enc.cache().is_empty(),
            "rejected batch must not touch the cache"
        );
        let mut dest = vec![[0u8; PAGE_SIZE]; 1];
        for e in Encoding::ALL {
            let b = enc.encode(e, &[]).unwrap();
            let s = decode_batch(&b.bytes, &mut dest).unwrap();
            assert_eq!(s.pages, 0);
        }
        // The largest encoded batch, whatever the encoding, fits in one protocol frame.
        let max_encoded =
            BATCH_HEADER_LEN + zstd::zstd_safe::compress_bound(max_body_len(MAX_BATCH_PAGES));
        assert!(max_encoded >= BATCH_HEADER_LEN + max_body_len(MAX_BATCH_PAGES));
        assert!(max_encoded <= crate::protocol::MAX_PAYLOAD);
        assert!(BatchEncoder::new(EncoderConfig {
            shard: ShardSpec { index: 2, count: 2 },
            ..EncoderConfig::default()
        })
        .is_err());
    }

    #[test]
    fn sharded_encoders_interleave_freely() {
        let mut rng = Rng::new(23);
        let mut mem = guest_image(&mut rng, 2048);
        let mut dest = vec![[0u8; PAGE_SIZE]; mem.len()];
        let base = EncoderConfig {
            cache_bytes: 8 << 20,
            ..EncoderConfig::default()
        };
        let configs = base.sharded(2);
        assert_eq!(configs[1].cache_bytes, 4 << 20);
        let mut encs: Vec<BatchEncoder> = configs
            .into_iter()
            .map(|c| BatchEncoder::new(c).unwrap())
            .collect();
        let mut dec = BatchDecoder::new().unwrap();
        let page = [1u8; PAGE_SIZE];
        let foreign = (0..).find(|&p| shard_of(p, 2) == 1).unwrap();
        assert!(matches!(
            encs[0].encode(Encoding::Raw, &[(foreign, &page)]),
            Err(CodecError::WrongShard { owner: 1, .. })
        ));
        let mut all = nonzero(&mem);
        for pass in 0..4 {
            let mut per_shard: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
            for &i in &all {
                per_shard[shard_of(i, 2) as usize].push(i);
            }
            // Encode each shard's batches in order, then interleave them round-robin.
            let mut streams: Vec<Vec<Vec<u8>>> = Vec::new();
            for (s, idx) in per_shard.iter().enumerate() {
                let mut out = Vec::new();
                for chunk in idx.chunks(100) {
                    let pages: Vec<(u64, &Page)> =
                        chunk.iter().map(|&i| (i, &mem[i as usize])).collect();
                    out.push(encs[s].encode(Encoding::Delta, &pages).unwrap().bytes);
                }
                streams.push(out);
            }
            let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
            for k in 0..longest {
                for s in [1usize, 0] {
                    if let Some(b) = streams[s].get(k) {
                        dec.decode(b, &mut dest).unwrap();
                    }
                }
            }
            assert!(dest == mem, "pass {pass}");
            all = dirty_pass(&mut rng, &mut mem, 400);
        }
        let mut totals = CodecStats::default();
        for e in &encs {
            totals.merge(e.totals());
        }
        assert!(totals.kinds.delta > 0);
        assert_eq!(totals.kinds, dec.totals().kinds);
    }

    #[test]
    fn stats_serialize_and_merge() {
        let mut rng = Rng::new(29);
        let mut mem = guest_image(&mut rng, 256);
        let mut dest = vec![[0u8; PAGE_SIZE]; mem.len()];
        let mut enc = encoder(1 << 20, true);
        let mut dec = BatchDecoder::new().unwrap();
        send(
            &mut enc,
            &mut dec,
            Encoding::Zstd,
            &mem,
            &nonzero(&mem),
            &mut dest,
            64,
        );
        let dirty = dirty_pass(&mut rng, &mut mem, 64);
        send(
            &mut enc,
            &mut dec,
            Encoding::Delta,
            &mem,
            &dirty,
            &mut dest,
            64,
        );
        let t = *enc.totals();
        assert!(t.zstd.batches > 0 && t.delta.batches > 0);
        assert!(t.bytes_saved() > 0);
        assert!(t.cpu_ns > 0);
        assert!(t.cache_hit_rate().is_some());
        assert_eq!(CodecStats::default().cache_hit_rate(), None);
        let json = serde_json::to_string(&t).unwrap();
        let back: CodecStats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let mut m = t;
        m.merge(&t);
        assert_eq!(m.total().pages, 2 * t.total().pages);
        enc.set_zstd_level(3).unwrap();
        assert_eq!(enc.config().zstd_level, 3);
        let b = enc.encode(Encoding::Zstd, &[(0, &mem[0])]).unwrap();
        decode_batch(&b.bytes, &mut dest).unwrap();
        enc.reset();
        assert!(enc.cache().is_empty());
        assert_eq!(enc.totals().total().pages, 0);
    }
}
