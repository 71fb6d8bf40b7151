//! Page batch encoding for live migration: raw, zstd and XOR-delta, with per-page crc32.
//!
//! The source groups the pages of a pass into batches and encodes each batch with a
//! [`BatchEncoder`]; the destination applies each batch to its memory with a
//! [`BatchDecoder`] (or the one-shot [`decode_batch`]). The batch is self-describing: the
//! requested [`Encoding`] is in its header, and every page carries the [`PageKind`] actually
//! used for it and the crc32 of its full content, which the destination verifies after
//! reconstructing the page.
//!
//! # Encodings
//!
//! * [`Encoding::Raw`]: the body is stored uncompressed (fast LAN, CPU-bound links).
//! * [`Encoding::Zstd`]: the whole body is one zstd frame (better ratio than per-page
//!   compression: the window spans the batch).
//! * [`Encoding::Delta`]: each page that the source-side [`SentPageCache`] holds is XORed
//!   with that cached copy (= what the destination holds); the XOR is written as
//!   zero-run/literal pairs, zero runs being the unchanged bytes and literals carrying the
//!   *new* bytes of the changed stretches (see "Delta literals" below). Pages without a
//!   cached copy, or whose delta is longer than [`DELTA_LIMIT`], go raw; then the whole
//!   body is one zstd frame.
//!
//! In every mode an all-zero page is sent as a [`PageKind::Zero`] marker (no payload), and,
//! when [`EncoderConfig::dedup`] is on, a page whose exact content the destination already
//! holds at some page index (per the sent-page cache) is sent as a [`PageKind::Dedup`]
//! reference to that index. Every page sent is recorded in the cache whatever the mode, so
//! switching to `Delta` in a later pass finds the right bases.
//!
//! # Wire format (version 1, all integers little-endian)
//!
//! ```text
//! header (HEADER_LEN = 20 bytes):
//!   0  magic        b"NCPB"
//!   4  version      u8 = 1
//!   5  encoding     u8 (Encoding::wire)
//!   6  flags        u8 = 0  (reserved, must be 0)
//!   7  reserved     u8 = 0
//!   8  page_count   u32      <= MAX_BATCH_PAGES
//!  12  raw_body_len u32      length of the body once decompressed, <= max_body_len(page_count)
//!  16  body_len     u32      bytes that follow the header (exactly; compressed for zstd/delta)
//! body (raw_body_len bytes, or one zstd frame decompressing to raw_body_len bytes):
//!   page_count entries, in application order:
//!     page_index u64, kind u8 (PageKind::wire), crc32 u32 of the full reconstructed page,
//!     then by kind:  Zero:  nothing
//!                    Raw:   PAGE_SIZE bytes
//!                    Delta: pairs (zero_run: varint, literal_len: varint, literal bytes)
//!                           covering exactly PAGE_SIZE bytes: zero_run bytes keep the
//!                           destination's current content, literal bytes replace it;
//!                           the stream is at most PAGE_SIZE bytes long
//!                    Dedup: src_index u64 — copy the destination's current page src_index
//! ```
//!
//! Varints are unsigned LEB128, at most 5 bytes, value < 2^32. A pair `(0, 0)` is invalid.
//!
//! # Delta literals
//!
//! The runs come from the XOR with the destination's copy (a zero XOR byte is an unchanged
//! byte; unchanged stretches shorter than 8 bytes stay inside the literal). The literals
//! carry the new bytes rather than the XOR bytes: the XOR of two unrelated texts is close
//! to noise, while the new bytes compress like the rest of the batch. Measured with zstd level 1 over 256
//! pages in which a contiguous fraction was rewritten (`measure_delta_threshold`), bytes per
//! page on the wire:
//!
//! ```text
//!                 text pages (raw: 1390 B/page)    structured pages (raw: 2032 B/page)
//! rewritten       XOR literals   new-byte literals  XOR literals   new-byte literals
//!    5%              173              84               150              112
//!   25%              839             367               729              532
//!   50%             1660             713              1462             1064
//!   90%             2970            1267              2619             1902
//!  100%             3281            1397              2907             2108
//! ```
//!
//! For the common case of a few words changed (counters, pointers) both forms are the same
//! size. With new-byte literals a delta stays smaller than raw content up to ~90% rewritten,
//! hence [`DELTA_LIMIT`] of 7/8 of a page.
//!
//! # Ordering contract
//!
//! Entries are applied in order, and `Delta`/`Dedup` entries refer to the destination's
//! state produced by *all earlier batches of the same encoder*. So the batches of one
//! [`BatchEncoder`] must be applied in the order they were produced, each exactly once.
//! Encoders of different shards (see [`shard_of`]) own disjoint pages and never refer to
//! each other's pages, so their streams may be interleaved arbitrarily.
//!
//! # Decoder robustness
//!
//! The decoder input is untrusted. Decoding never panics, allocates at most
//! `max_body_len(MAX_BATCH_PAGES)` (≈ 16 MiB) for the decompressed body (a zstd frame that
//! decompresses to more than the header declares is rejected, so a "zstd bomb" costs at
//! most that), and validates the whole batch structure (lengths, kinds, varints, delta
//! extents, page indices via [`PageStore::contains`]) before writing anything. Pages are then
//! reconstructed one at a time in a scratch buffer and written only if their crc32 matches:
//! a page whose crc fails is never modified, and only pages named by an entry are written.
//! If decoding fails part-way through the apply phase, the entries before the failing one
//! have been applied (each of them verified); the migration must be aborted in any case.
//!
//! # Parallel encoding
//!
//! Pages are partitioned by [`shard_of`] (granules of [`SHARD_GRANULE_PAGES`] contiguous
//! pages, round-robin over the shards). Each encoder thread owns one `BatchEncoder` built
//! from [`EncoderConfig::sharded`], which owns its own cache slice: there is no lock or
//! shared state on the hot path. Dedup only finds duplicates inside a shard. The threads
//! are run by [`super::encoder_pool::EncoderPool`]; `cargo bench --bench encoder_threads`
//! measures how throughput scales with them.
//!
//! # Measured throughput (`cargo test --release -- --ignored --nocapture measure_throughput`)
//!
//! Test data: a 64 MiB guest image of 16384 pages (35% zero, 30% text/log lines, 25%
//! structured: pointers, small integers, zeros; 10% random), all sent in pass 1 (zero
//! pages as markers), then a dirty pass over 4096 pages (70% with 1–6 words changed, 20%
//! rewritten, 5% zeroed, 5% copies of another page). Batches of 256 pages, dedup on, cache
//! 256 MiB. MB/s is page data (4096 B per page) per CPU second of the encoding or decoding
//! thread, best of two runs on a 2-core host that was busy with other builds (expect ±30%);
//! ratio is page bytes / wire bytes.
//!
//! ```text
//!                        pass 1 (16384 pages)          pass 2 (4096 dirty pages)
//! mode                 ratio  enc MB/s  dec MB/s    ratio  enc MB/s  dec MB/s  cache hits
//! raw, cache disabled  1.52x    7100      7100      1.08x    5600      5400        -
//! raw                  1.52x    1900      6300      1.12x    1900      4900        -
//! zstd level -1        2.64x     390      1370      2.59x     390      1210        -
//! zstd level 1         2.73x     340       960      2.67x     320       850        -
//! zstd level 3         3.02x     230      1090      2.93x     225      1000        -
//! delta level 1        2.73x     360      1000      8.14x     650      1980       65%
//! delta level 3        3.02x     245      1180      8.76x     540      2280       65%
//! ```
//!
//! Raw's 1.52x in pass 1 is the zero markers. Keeping the sent-page cache costs raw mode
//! about 4x in CPU (page copies into fresh cache memory), still ~15 Gbit/s; disable it
//! (`cache_bytes: 0`) only if the migration will never switch to `Delta`. The 35% of delta
//! lookups that miss are dirty pages that were zero in pass 1 (zero pages are not cached:
//! the destination's copy is known, and a mostly-zero page costs a few bytes raw). Per class, zstd level 1 / 3 over batches of one kind: text 2.91x / 3.21x
//! at ~220 / ~175 MB/s, structured 2.01x / 2.18x at ~265 / ~160 MB/s, random 1.00x at
//! 1400–2200 MB/s (zstd gives up quickly on incompressible input).
//!
//! [`SentPageCache`]: super::page_cache::SentPageCache

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::page_cache::SentPageCache;
pub use novacron_vmm_api::stats::{
    BatchStats, CodecStats, Encoding, KindCounts, ModeStats, PageKind,
};

/// Size of a guest page as transferred by migration.
pub const PAGE_SIZE: usize = 4096;

/// Magic bytes at the start of every encoded batch ("NovaCron Page Batch").
pub const BATCH_MAGIC: [u8; 4] = *b"NCPB";

/// Version of the batch format produced and accepted by this module.
pub const BATCH_VERSION: u8 = 1;

/// Length of the fixed batch header.
pub const HEADER_LEN: usize = 20;

/// Length of the per-page entry header (page index, kind, crc32).
pub const ENTRY_HEADER_LEN: usize = 13;

/// Maximum number of pages in one batch (16 MiB of page data).
pub const MAX_BATCH_PAGES: usize = 4096;

/// The encoder uses a delta only if its zero-run/literal form is at most this many bytes;
/// otherwise the page goes raw (inside the same zstd frame). A fully rewritten page costs
/// 1–4% more as a delta than raw; at 90% rewritten the delta is still 6–9% smaller.
pub const DELTA_LIMIT: usize = 7 * PAGE_SIZE / 8;

/// Unchanged stretches shorter than this stay inside the literal: a new pair costs at least
/// two varint bytes and splits zstd's matches. Pass-2 ratio on the test data at level 1 for
/// 1/2/4/8/16: 8.05/8.07/8.08/8.14/8.13x, so 8 (one machine word).
const MIN_ZERO_RUN: usize = 8;

/// Default zstd level. On the test data (module documentation) level 3 sends 7–10% fewer
/// bytes than level 1 for ~1.4x the encoder CPU (decoding costs the same). Level 1 is the
/// default because encoding shares the host's cores with the running guest; on a link
/// slower than ~300 Mbit/s level 3 costs under 20% of a core and is worth it
/// ([`BatchEncoder::set_zstd_level`]).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Contiguous pages per shard granule: [`shard_of`] keeps runs of this many pages on one
/// shard so that batches keep the locality that helps compression.
pub const SHARD_GRANULE_PAGES: u64 = 64;

/// Upper bound of the decompressed body of a batch of `pages` pages.
pub const fn max_body_len(pages: usize) -> usize {
    pages * (ENTRY_HEADER_LEN + PAGE_SIZE)
}

/// Upper bound of the encoded size of a batch of `pages` pages, whatever the encoding
/// (for sizing protocol frame limits).
pub fn max_encoded_len(pages: usize) -> usize {
    HEADER_LEN + zstd::zstd_safe::compress_bound(max_body_len(pages))
}

/// The shard (0..shards) that owns `page_index` when encoding with `shards` threads.
pub fn shard_of(page_index: u64, shards: u32) -> u32 {
    if shards <= 1 {
        0
    } else {
        ((page_index / SHARD_GRANULE_PAGES) % u64::from(shards)) as u32
    }
}

/// Errors of encoding and decoding page batches.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The batch to encode, or the batch header, has more than [`MAX_BATCH_PAGES`] pages.
    #[error("batch of {0} pages exceeds the maximum of {MAX_BATCH_PAGES}")]
    TooManyPages(usize),
    /// A page handed to a sharded encoder belongs to another shard.
    #[error(
        "page {page} belongs to shard {owner}, not to this encoder's shard {shard} of {count}"
    )]
    WrongShard {
        /// The page index.
        page: u64,
        /// The shard that owns the page.
        owner: u32,
        /// This encoder's shard.
        shard: u32,
        /// Number of shards.
        count: u32,
    },
    /// Invalid encoder configuration.
    #[error("invalid encoder configuration: {0}")]
    Config(&'static str),
    /// zstd failed to compress (or to create a context); the encoder is poisoned.
    #[error("zstd compression failed: {0}")]
    Compress(#[source] std::io::Error),
    /// A previous encode failed after updating the sent-page cache: the cache no longer
    /// matches the destination. Call [`BatchEncoder::reset`] and resend all pages.
    #[error("encoder poisoned by an earlier failure; reset it and resend all pages")]
    Poisoned,
    /// The batch ends before the header or the body says it should.
    #[error("truncated batch: {0}")]
    Truncated(&'static str),
    /// The batch does not start with [`BATCH_MAGIC`].
    #[error("not a page batch (bad magic)")]
    BadMagic,
    /// Unknown batch format version.
    #[error("unsupported batch format version {0}")]
    UnsupportedVersion(u8),
    /// Unknown encoding byte in the header.
    #[error("unknown batch encoding {0}")]
    UnknownEncoding(u8),
    /// Unknown page kind byte in an entry.
    #[error("unknown page kind {kind} for page {page}")]
    UnknownPageKind {
        /// The page index of the entry.
        page: u64,
        /// The kind byte.
        kind: u8,
    },
    /// Structurally invalid batch (reserved bits set, lengths inconsistent, trailing bytes).
    #[error("malformed batch: {0}")]
    Malformed(&'static str),
    /// The header declares a body larger than any valid batch of that many pages.
    #[error("declared body of {declared} bytes exceeds the limit of {limit} for {pages} pages")]
    BodyTooLarge {
        /// Declared decompressed body length.
        declared: usize,
        /// Limit for the page count.
        limit: usize,
        /// Page count from the header.
        pages: usize,
    },
    /// zstd rejected the body (corrupt frame, or more output than declared).
    #[error("zstd decompression failed: {0}")]
    Decompress(#[source] std::io::Error),
    /// The body decompressed to a different length than the header declares.
    #[error("body decompressed to {actual} bytes, header declares {declared}")]
    BodyLengthMismatch {
        /// Declared length.
        declared: usize,
        /// Actual length.
        actual: usize,
    },
    /// A varint in a delta is truncated or does not fit in 32 bits.
    #[error("bad varint in the delta of page {page}")]
    BadVarint {
        /// The page index of the entry.
        page: u64,
    },
    /// A delta stream is inconsistent.
    #[error("invalid delta for page {page}: {reason}")]
    BadDelta {
        /// The page index of the entry.
        page: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A page index (target or dedup source) is not in the destination's memory.
    #[error("page index {0} is not in destination memory")]
    PageOutOfRange(u64),
    /// The page store failed to read or write a page it claimed to contain.
    #[error("destination page {0} could not be accessed")]
    PageAccess(u64),
    /// A reconstructed page does not have the crc32 the source computed.
    #[error("crc32 mismatch for page {page}: expected {expected:#010x}, got {actual:#010x}")]
    CrcMismatch {
        /// The page index.
        page: u64,
        /// crc32 from the batch.
        expected: u32,
        /// crc32 of the reconstructed page.
        actual: u32,
    },
}

/// Which slice of the page space an encoder owns (see [`shard_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// This shard, `0..count`.
    pub index: u32,
    /// Number of shards (≥ 1).
    pub count: u32,
}

impl ShardSpec {
    /// The unsharded configuration: one encoder owns all pages.
    pub const SINGLE: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// True if this shard owns `page_index`.
    pub fn owns(&self, page_index: u64) -> bool {
        shard_of(page_index, self.count) == self.index
    }
}

impl Default for ShardSpec {
    fn default() -> Self {
        ShardSpec::SINGLE
    }
}

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
            cache: SentPageCache::new(config.cache_bytes),
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

    /// Tells the encoder that the destination's copy of `page_index` changed without going
    /// through this encoder (e.g. a zero page the caller elided after it had been sent with
    /// content). Not needed for pages sent through the encoder.
    pub fn forget_page(&mut self, page_index: u64) {
        self.cache.forget(page_index);
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
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let body_len;
        if encoding == Encoding::Raw {
            self.encode_body(encoding, pages, out, &mut stats);
            body_len = out.len() - HEADER_LEN;
            stats.body_bytes = body_len as u64;
        } else {
            let mut body = std::mem::take(&mut self.body);
            body.clear();
            self.encode_body(encoding, pages, &mut body, &mut stats);
            stats.body_bytes = body.len() as u64;
            out.reserve(zstd::zstd_safe::compress_bound(body.len()));
            let mut cursor = std::io::Cursor::new(&mut *out);
            cursor.set_position(HEADER_LEN as u64);
            let res = self.compressor.compress_to_buffer(&body[..], &mut cursor);
            self.body = body;
            match res {
                Ok(n) => body_len = n,
                Err(e) => {
                    self.poisoned = true;
                    return Err(CodecError::Compress(e));
                }
            }
            if out.len() != HEADER_LEN + body_len {
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

/// Destination memory as seen by the decoder.
///
/// This is a copy-in/copy-out interface rather than one handing out `&mut [u8; 4096]`:
/// guest memory (vm-memory's `GuestMemoryMmap`) is volatile memory mapped into the guest, and
/// safe access to it is by copies (`Bytes::read_slice`/`write_slice`); and the decoder
/// reconstructs each page in a scratch buffer anyway, so that a page failing its crc check
/// is never modified. The extra 4 KiB copy costs far less than decompression.
/// [`GuestMemoryPages`] implements it for vm-memory; slices and vectors of pages implement
/// it for tests and tools.
pub trait PageStore {
    /// True if page `index` exists and can be read and written.
    fn contains(&self, index: u64) -> bool;
    /// Copies page `index` into `buf`; false if it cannot be read.
    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool;
    /// Overwrites page `index` with `data`; false if it cannot be written.
    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool;
}

impl PageStore for [[u8; PAGE_SIZE]] {
    fn contains(&self, index: u64) -> bool {
        usize::try_from(index).is_ok_and(|i| i < self.len())
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        match usize::try_from(index).ok().and_then(|i| self.get(i)) {
            Some(p) => {
                buf.copy_from_slice(p);
                true
            }
            None => false,
        }
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        match usize::try_from(index).ok().and_then(|i| self.get_mut(i)) {
            Some(p) => {
                p.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

impl PageStore for Vec<[u8; PAGE_SIZE]> {
    fn contains(&self, index: u64) -> bool {
        PageStore::contains(self.as_slice(), index)
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self.as_slice().read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        self.as_mut_slice().write_page(index, data)
    }
}

/// [`PageStore`] over vm-memory guest memory: page `i` is guest-physical address
/// `i × PAGE_SIZE`; pages in holes between regions are out of range.
#[derive(Debug)]
pub struct GuestMemoryPages<'a, M: ?Sized>(pub &'a M);

impl<M: vm_memory::GuestMemory + ?Sized> GuestMemoryPages<'_, M> {
    fn addr(index: u64) -> Option<vm_memory::GuestAddress> {
        index
            .checked_mul(PAGE_SIZE as u64)
            .map(vm_memory::GuestAddress)
    }
}

impl<M: vm_memory::GuestMemory + ?Sized> PageStore for GuestMemoryPages<'_, M> {
    fn contains(&self, index: u64) -> bool {
        Self::addr(index).is_some_and(|a| {
            vm_memory::GuestMemory::check_range(
                self.0,
                a,
                PAGE_SIZE,
                vm_memory::Permissions::ReadWrite,
            )
        })
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        Self::addr(index).is_some_and(|a| vm_memory::Bytes::read_slice(self.0, buf, a).is_ok())
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        Self::addr(index).is_some_and(|a| vm_memory::Bytes::write_slice(self.0, data, a).is_ok())
    }
}

/// A validated entry: where its payload is in the body.
#[derive(Clone, Copy, Debug)]
enum Op {
    Zero,
    Raw { offset: usize },
    Delta { start: usize, end: usize },
    Dedup { src: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    index: u64,
    crc: u32,
    op: Op,
}

/// Parsed batch header.
#[derive(Clone, Copy, Debug)]
struct Header {
    encoding: Encoding,
    pages: usize,
    raw_body_len: usize,
}

/// Destination-side batch decoder; reuses its zstd context and buffers across batches.
pub struct BatchDecoder {
    dctx: zstd::bulk::Decompressor<'static>,
    body: Vec<u8>,
    entries: Vec<Entry>,
    scratch: Box<[u8; PAGE_SIZE]>,
    zero_crc: u32,
    totals: CodecStats,
}

impl fmt::Debug for BatchDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchDecoder")
            .field("totals", &self.totals)
            .finish()
    }
}

static ZERO_PAGE: [u8; PAGE_SIZE] = [0u8; PAGE_SIZE];

impl BatchDecoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self, CodecError> {
        Ok(BatchDecoder {
            dctx: zstd::bulk::Decompressor::new().map_err(CodecError::Decompress)?,
            body: Vec::new(),
            entries: Vec::new(),
            scratch: Box::new([0u8; PAGE_SIZE]),
            zero_crc: crc32fast::hash(&ZERO_PAGE),
            totals: CodecStats::default(),
        })
    }

    /// Cumulative statistics of the batches decoded successfully.
    pub fn totals(&self) -> &CodecStats {
        &self.totals
    }

    /// Validates `bytes` as one batch and applies it to `memory`. See the module
    /// documentation for the guarantees on untrusted input.
    pub fn decode<S: PageStore + ?Sized>(
        &mut self,
        bytes: &[u8],
        memory: &mut S,
    ) -> Result<BatchStats, CodecError> {
        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        let header = parse_header(bytes)?;
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        let BatchDecoder {
            dctx,
            body: body_buf,
            entries,
            scratch,
            zero_crc,
            totals,
        } = self;

        let body: &[u8] = if header.encoding == Encoding::Raw {
            if payload.len() != header.raw_body_len {
                return Err(CodecError::Malformed(
                    "raw batch body length differs from declared length",
                ));
            }
            payload
        } else {
            body_buf.clear();
            // Capacity is what bounds zstd's output: at least the declared length, and never
            // more than the largest declared length seen, itself <= max_body_len(MAX).
            if body_buf.capacity() < header.raw_body_len {
                body_buf.reserve_exact(header.raw_body_len);
            }
            let n = dctx
                .decompress_to_buffer(payload, body_buf)
                .map_err(CodecError::Decompress)?;
            if n != header.raw_body_len || body_buf.len() != n {
                return Err(CodecError::BodyLengthMismatch {
                    declared: header.raw_body_len,
                    actual: n,
                });
            }
            &body_buf[..]
        };

        parse_entries(body, header.pages, &*memory, entries)?;

        let mut kinds = KindCounts::default();
        for e in entries.iter() {
            let page: &[u8; PAGE_SIZE] = match e.op {
                Op::Zero => &ZERO_PAGE,
                Op::Raw { offset } => body
                    .get(offset..offset + PAGE_SIZE)
                    .and_then(|s| <&[u8; PAGE_SIZE]>::try_from(s).ok())
                    .ok_or(CodecError::Truncated("raw page"))?,
                Op::Delta { start, end } => {
                    if !memory.read_page(e.index, scratch) {
                        return Err(CodecError::PageAccess(e.index));
                    }
                    let stream = body.get(start..end).ok_or(CodecError::Truncated("delta"))?;
                    walk_delta(stream, e.index, |offset, literal| {
                        scratch[offset..offset + literal.len()].copy_from_slice(literal);
                    })?;
                    scratch
                }
                Op::Dedup { src } => {
                    if !memory.read_page(src, scratch) {
                        return Err(CodecError::PageAccess(src));
                    }
                    scratch
                }
            };
            let actual = match e.op {
                Op::Zero => *zero_crc,
                _ => crc32fast::hash(page),
            };
            if actual != e.crc {
                return Err(CodecError::CrcMismatch {
                    page: e.index,
                    expected: e.crc,
                    actual,
                });
            }
            if !memory.write_page(e.index, page) {
                return Err(CodecError::PageAccess(e.index));
            }
            kinds.bump(match e.op {
                Op::Zero => PageKind::Zero,
                Op::Raw { .. } => PageKind::Raw,
                Op::Delta { .. } => PageKind::Delta,
                Op::Dedup { .. } => PageKind::Dedup,
            });
        }

        let stats = BatchStats {
            encoding: header.encoding,
            pages: header.pages as u64,
            kinds,
            raw_bytes: (header.pages * PAGE_SIZE) as u64,
            body_bytes: header.raw_body_len as u64,
            encoded_bytes: bytes.len() as u64,
            cpu_ns: thread_cpu_ns().saturating_sub(cpu0),
            wall_ns: t0.elapsed().as_nanos() as u64,
            ..BatchStats::default()
        };
        totals.add_batch(&stats);
        Ok(stats)
    }
}

/// Decodes one batch into `memory` with a fresh [`BatchDecoder`]. Prefer keeping a
/// `BatchDecoder` for a whole migration, which reuses its zstd context and buffers.
pub fn decode_batch<S: PageStore + ?Sized>(
    bytes: &[u8],
    memory: &mut S,
) -> Result<BatchStats, CodecError> {
    BatchDecoder::new()?.decode(bytes, memory)
}

fn parse_header(bytes: &[u8]) -> Result<Header, CodecError> {
    let h = bytes
        .get(..HEADER_LEN)
        .ok_or(CodecError::Truncated("header"))?;
    if h[0..4] != BATCH_MAGIC {
        return Err(CodecError::BadMagic);
    }
    if h[4] != BATCH_VERSION {
        return Err(CodecError::UnsupportedVersion(h[4]));
    }
    let encoding = Encoding::from_wire(h[5]).ok_or(CodecError::UnknownEncoding(h[5]))?;
    if h[6] != 0 || h[7] != 0 {
        return Err(CodecError::Malformed("reserved header bytes are not zero"));
    }
    let pages = le_u32(&h[8..12]) as usize;
    let raw_body_len = le_u32(&h[12..16]) as usize;
    let body_len = le_u32(&h[16..20]) as usize;
    if pages > MAX_BATCH_PAGES {
        return Err(CodecError::TooManyPages(pages));
    }
    let limit = max_body_len(pages);
    if raw_body_len > limit {
        return Err(CodecError::BodyTooLarge {
            declared: raw_body_len,
            limit,
            pages,
        });
    }
    if raw_body_len < pages * ENTRY_HEADER_LEN {
        return Err(CodecError::Malformed(
            "declared body too short for its pages",
        ));
    }
    let payload = bytes.len() - HEADER_LEN;
    if payload < body_len {
        return Err(CodecError::Truncated("body"));
    }
    if payload > body_len {
        return Err(CodecError::Malformed("trailing bytes after batch body"));
    }
    Ok(Header {
        encoding,
        pages,
        raw_body_len,
    })
}

/// Phase 1: validates every entry and collects them; touches no page.
fn parse_entries<S: PageStore + ?Sized>(
    body: &[u8],
    pages: usize,
    memory: &S,
    entries: &mut Vec<Entry>,
) -> Result<(), CodecError> {
    entries.clear();
    entries.reserve(pages);
    let mut pos = 0usize;
    for _ in 0..pages {
        let h = body
            .get(pos..pos + ENTRY_HEADER_LEN)
            .ok_or(CodecError::Truncated("page entry"))?;
        let index = le_u64(&h[0..8]);
        let kind_byte = h[8];
        let crc = le_u32(&h[9..13]);
        pos += ENTRY_HEADER_LEN;
        if !memory.contains(index) {
            return Err(CodecError::PageOutOfRange(index));
        }
        let kind = PageKind::from_wire(kind_byte).ok_or(CodecError::UnknownPageKind {
            page: index,
            kind: kind_byte,
        })?;
        let op = match kind {
            PageKind::Zero => Op::Zero,
            PageKind::Raw => {
                if body.len() - pos < PAGE_SIZE {
                    return Err(CodecError::Truncated("raw page"));
                }
                pos += PAGE_SIZE;
                Op::Raw {
                    offset: pos - PAGE_SIZE,
                }
            }
            PageKind::Delta => {
                let start = pos;
                let window = &body[start..body.len().min(start + PAGE_SIZE)];
                let used = walk_delta(window, index, |_, _| {})?;
                pos += used;
                Op::Delta { start, end: pos }
            }
            PageKind::Dedup => {
                let s = body
                    .get(pos..pos + 8)
                    .ok_or(CodecError::Truncated("dedup reference"))?;
                let src = le_u64(s);
                pos += 8;
                if !memory.contains(src) {
                    return Err(CodecError::PageOutOfRange(src));
                }
                Op::Dedup { src }
            }
        };
        entries.push(Entry { index, crc, op });
    }
    if pos != body.len() {
        return Err(CodecError::Malformed("trailing bytes in batch body"));
    }
    Ok(())
}

/// Walks a delta stream at the start of `stream`, calling `f(offset, literal)` for each
/// literal (offset + literal.len() <= PAGE_SIZE is guaranteed). Returns the stream length.
fn walk_delta(
    stream: &[u8],
    page: u64,
    mut f: impl FnMut(usize, &[u8]),
) -> Result<usize, CodecError> {
    let mut pos = 0usize;
    let mut covered = 0usize;
    while covered < PAGE_SIZE {
        let zeros = get_varint(stream, &mut pos).ok_or(CodecError::BadVarint { page })? as usize;
        let lit = get_varint(stream, &mut pos).ok_or(CodecError::BadVarint { page })? as usize;
        if zeros == 0 && lit == 0 {
            return Err(CodecError::BadDelta {
                page,
                reason: "empty zero-run/literal pair",
            });
        }
        // Both are < 2^32 and covered <= PAGE_SIZE: no overflow on 64-bit usize; checked
        // anyway for 32-bit targets.
        let end = covered
            .checked_add(zeros)
            .and_then(|c| c.checked_add(lit))
            .filter(|&e| e <= PAGE_SIZE)
            .ok_or(CodecError::BadDelta {
                page,
                reason: "runs extend past the end of the page",
            })?;
        let literal = stream.get(pos..pos + lit).ok_or(CodecError::BadDelta {
            page,
            reason: "literal truncated",
        })?;
        f(covered + zeros, literal);
        pos += lit;
        covered = end;
    }
    Ok(pos)
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u32> {
    let mut value = 0u32;
    for i in 0..5 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if i == 4 && b > 0x0F {
            return None;
        }
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_entry(out: &mut Vec<u8>, index: u64, kind: PageKind, crc: u32) {
    out.extend_from_slice(&index.to_le_bytes());
    out.push(kind.wire());
    out.extend_from_slice(&crc.to_le_bytes());
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn is_zero_page(p: &[u8; PAGE_SIZE]) -> bool {
    p.chunks_exact(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

fn xor_pages(out: &mut [u8; PAGE_SIZE], a: &[u8; PAGE_SIZE], b: &[u8; PAGE_SIZE]) {
    for ((o, x), y) in out.iter_mut().zip(a.iter()).zip(b.iter()) {
        *o = x ^ y;
    }
}

/// Index of the first non-zero byte of `x` at or after `pos`, or `PAGE_SIZE`.
fn skip_zeros(x: &[u8; PAGE_SIZE], mut pos: usize) -> usize {
    while pos < PAGE_SIZE && pos & 7 != 0 {
        if x[pos] != 0 {
            return pos;
        }
        pos += 1;
    }
    while pos + 8 <= PAGE_SIZE {
        let w = le_u64(&x[pos..pos + 8]);
        if w != 0 {
            return pos + (w.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    PAGE_SIZE
}

/// End of the literal starting at the non-zero byte `pos`: the start of the first run of at
/// least `MIN_ZERO_RUN` zero bytes, or of the trailing zeros, or `PAGE_SIZE`.
fn literal_end(x: &[u8; PAGE_SIZE], mut pos: usize) -> usize {
    loop {
        while pos < PAGE_SIZE && x[pos] != 0 {
            pos += 1;
        }
        if pos == PAGE_SIZE {
            return PAGE_SIZE;
        }
        let zero_start = pos;
        while pos < PAGE_SIZE && x[pos] == 0 && pos - zero_start < MIN_ZERO_RUN {
            pos += 1;
        }
        if pos - zero_start >= MIN_ZERO_RUN || pos == PAGE_SIZE {
            return zero_start;
        }
    }
}

/// Appends the delta of `new` against a base to `out`, given `x = new ^ base`: zero runs of
/// `x`, and literals taken from `new`. Returns false as soon as it exceeds `limit` bytes
/// (the caller truncates `out`).
fn encode_delta(
    x: &[u8; PAGE_SIZE],
    new: &[u8; PAGE_SIZE],
    out: &mut Vec<u8>,
    limit: usize,
) -> bool {
    let start = out.len();
    let mut pos = 0usize;
    while pos < PAGE_SIZE {
        let run_start = pos;
        pos = skip_zeros(x, pos);
        let zeros = (pos - run_start) as u32;
        if pos == PAGE_SIZE {
            put_varint(out, zeros);
            put_varint(out, 0);
            break;
        }
        let lit_start = pos;
        pos = literal_end(x, pos);
        put_varint(out, zeros);
        put_varint(out, (pos - lit_start) as u32);
        out.extend_from_slice(&new[lit_start..pos]);
        if out.len() - start > limit {
            return false;
        }
    }
    out.len() - start <= limit
}

/// CPU time consumed by the calling thread, in nanoseconds (0 if unavailable).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, a valid, exclusively borrowed timespec
    // that outlives the call; CLOCK_THREAD_CPUTIME_ID needs no other resource.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64* PRNG: deterministic test data without extra dependencies.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let v = self.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }

    type Page = [u8; PAGE_SIZE];
    type PageMaker = fn(&mut Rng) -> Page;

    const SYLLABLES: [&str; 24] = [
        "ka", "ro", "ve", "lin", "tor", "mis", "pa", "den", "sul", "ox", "ri", "an", "cel", "ba",
        "qu", "est", "io", "nar", "pe", "th", "un", "gra", "mo", "sy",
    ];
    const LEVELS: [&str; 4] = ["INFO", "WARN", "DEBUG", "ERROR"];

    fn word(rng: &mut Rng) -> String {
        // Zipf-like: small vocabulary indices are much more frequent.
        let n = 400u64;
        let idx = rng.below(n) * rng.below(n) / n;
        let mut w = String::new();
        let mut x = idx.wrapping_mul(2654435761) + 7;
        for _ in 0..(1 + idx % 3) {
            w.push_str(SYLLABLES[(x % SYLLABLES.len() as u64) as usize]);
            x /= SYLLABLES.len() as u64;
            x = x.wrapping_mul(31) + 3;
        }
        w
    }

    /// Log lines and prose: compresses about 3-4x with zstd, like page-cache text.
    fn text_page(rng: &mut Rng) -> Page {
        let mut s = String::new();
        while s.len() < PAGE_SIZE {
            if rng.below(2) == 0 {
                s.push_str(&format!(
                    "2025-03-{:02} {:02}:{:02}:{:02}.{:03} {} worker[{}]: ",
                    1 + rng.below(28),
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(1000),
                    LEVELS[rng.below(4) as usize],
                    rng.below(64)
                ));
            }
            for _ in 0..(3 + rng.below(12)) {
                s.push_str(&word(rng));
                s.push(' ');
            }
            if rng.below(3) == 0 {
                s.push_str(&format!("{} ", rng.below(100_000)));
            }
            s.push('\n');
        }
        let mut p = [0u8; PAGE_SIZE];
        p.copy_from_slice(&s.as_bytes()[..PAGE_SIZE]);
        p
    }

    /// Heap-like page: zeros, small integers, kernel-style pointers, some random words.
    fn struct_page(rng: &mut Rng) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        let base = 0xffff_8880_0000_0000u64 | (rng.below(16) << 32);
        for slot in p.chunks_exact_mut(8) {
            let v = match rng.below(100) {
                0..=29 => 0,
                30..=54 => rng.below(1000),
                55..=84 => base | (rng.below(1 << 24) << 3),
                _ => rng.next(),
            };
            slot.copy_from_slice(&v.to_le_bytes());
        }
        p
    }

    fn random_page(rng: &mut Rng) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        rng.fill(&mut p);
        p
    }

    /// A few bytes changed: counters incremented, a pointer replaced, a byte written.
    fn tweak(p: &mut Page, rng: &mut Rng) {
        for _ in 0..(1 + rng.below(6)) {
            let off = (rng.below((PAGE_SIZE / 8) as u64) * 8) as usize;
            let mut v = le_u64(&p[off..off + 8]);
            match rng.below(3) {
                0 => v = v.wrapping_add(1 + rng.below(3)),
                1 => v = 0xffff_8880_0000_0000 | (rng.below(1 << 30) << 3),
                _ => v ^= 1 << rng.below(64),
            }
            p[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn new_content(rng: &mut Rng) -> Page {
        match rng.below(10) {
            0..=3 => text_page(rng),
            4..=7 => struct_page(rng),
            _ => random_page(rng),
        }
    }

    /// 35% zero, 30% text, 25% structured, 10% random.
    fn guest_image(rng: &mut Rng, pages: usize) -> Vec<Page> {
        (0..pages)
            .map(|_| match rng.below(100) {
                0..=34 => [0u8; PAGE_SIZE],
                35..=64 => text_page(rng),
                65..=89 => struct_page(rng),
                _ => random_page(rng),
            })
            .collect()
    }

    /// Dirties `count` distinct pages: 70% tweaked, 20% rewritten, 5% zeroed, 5% copies of
    /// another page. Returns the sorted dirty indices.
    fn dirty_pass(rng: &mut Rng, mem: &mut [Page], count: usize) -> Vec<u64> {
        let n = mem.len() as u64;
        let mut dirty = std::collections::BTreeSet::new();
        while dirty.len() < count.min(mem.len()) {
            dirty.insert(rng.below(n));
        }
        for &i in &dirty {
            let i = i as usize;
            match rng.below(100) {
                0..=69 => tweak(&mut mem[i], rng),
                70..=89 => mem[i] = new_content(rng),
                90..=94 => mem[i] = [0u8; PAGE_SIZE],
                _ => {
                    let j = rng.below(n) as usize;
                    mem[i] = mem[j];
                }
            }
        }
        dirty.into_iter().collect()
    }

    fn encoder(encoding_cache: usize, dedup: bool) -> BatchEncoder {
        BatchEncoder::new(EncoderConfig {
            cache_bytes: encoding_cache,
            dedup,
            ..EncoderConfig::default()
        })
        .unwrap()
    }

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
    fn stale_base_is_detected_and_page_left_untouched() {
        let mut rng = Rng::new(17);
        let mut page = text_page(&mut rng);
        let mut enc = encoder(1 << 20, false);
        let mut dest = vec![[0u8; PAGE_SIZE]; 4];
        let b = enc.encode(Encoding::Delta, &[(1, &page)]).unwrap();
        decode_batch(&b.bytes, &mut dest).unwrap();
        // Destination page changed behind the encoder's back.
        dest[1][100] ^= 0x40;
        let before = dest.clone();
        tweak(&mut page, &mut rng);
        let b = enc.encode(Encoding::Delta, &[(1, &page)]).unwrap();
        let err = decode_batch(&b.bytes, &mut dest).unwrap_err();
        assert!(
            matches!(err, CodecError::CrcMismatch { page: 1, .. }),
            "{err}"
        );
        assert!(dest == before);
        // Dedup against a changed source page is caught the same way.
        let mut enc = encoder(1 << 20, true);
        let mut dest = vec![[0u8; PAGE_SIZE]; 4];
        let b = enc.encode(Encoding::Raw, &[(0, &page)]).unwrap();
        decode_batch(&b.bytes, &mut dest).unwrap();
        dest[0][0] ^= 1;
        let b = enc.encode(Encoding::Raw, &[(2, &page)]).unwrap();
        assert_eq!(b.stats.kinds.dedup, 1);
        assert!(matches!(
            decode_batch(&b.bytes, &mut dest),
            Err(CodecError::CrcMismatch { page: 2, .. })
        ));
        assert_eq!(dest[2], [0u8; PAGE_SIZE]);
    }

    #[test]
    fn corrupted_raw_payload_fails_crc_and_leaves_page_untouched() {
        let mut rng = Rng::new(19);
        let a = text_page(&mut rng);
        let mut enc = encoder(0, false);
        let mut b = enc.encode(Encoding::Raw, &[(3, &a)]).unwrap().bytes;
        b[HEADER_LEN + ENTRY_HEADER_LEN + 77] ^= 0xFF;
        let mut dest = vec![[9u8; PAGE_SIZE]; 4];
        assert!(matches!(
            decode_batch(&b, &mut dest),
            Err(CodecError::CrcMismatch { page: 3, .. })
        ));
        assert!(dest.iter().all(|p| p == &[9u8; PAGE_SIZE]));
        // A zero marker with a wrong crc is rejected too.
        let z = [0u8; PAGE_SIZE];
        let mut b = enc.encode(Encoding::Raw, &[(1, &z)]).unwrap().bytes;
        b[HEADER_LEN + 9] ^= 1;
        assert!(matches!(
            decode_batch(&b, &mut dest),
            Err(CodecError::CrcMismatch { page: 1, .. })
        ));
        assert!(dest.iter().all(|p| p == &[9u8; PAGE_SIZE]));
    }

    /// Builds a batch by hand from an uncompressed body.
    fn raw_batch(pages: u32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&BATCH_MAGIC);
        b.extend_from_slice(&[BATCH_VERSION, Encoding::Raw.wire(), 0, 0]);
        b.extend_from_slice(&pages.to_le_bytes());
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    fn delta_body(index: u64, crc: u32, stream: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        put_entry(&mut body, index, PageKind::Delta, crc);
        body.extend_from_slice(stream);
        body
    }

    #[test]
    fn header_errors() {
        let mut dest = vec![[0u8; PAGE_SIZE]; 4];
        let mut enc = encoder(0, false);
        let page = [1u8; PAGE_SIZE];
        let good = enc.encode(Encoding::Zstd, &[(1, &page)]).unwrap().bytes;
        decode_batch(&good, &mut dest).unwrap();
        let check = |bytes: &[u8], dest: &mut Vec<Page>| decode_batch(bytes, dest).unwrap_err();

        assert!(matches!(
            check(&good[..10], &mut dest),
            CodecError::Truncated(_)
        ));
        assert!(matches!(
            check(&good[..good.len() - 1], &mut dest),
            CodecError::Truncated(_)
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(check(&long, &mut dest), CodecError::Malformed(_)));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(check(&b, &mut dest), CodecError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert!(matches!(
            check(&b, &mut dest),
            CodecError::UnsupportedVersion(2)
        ));
        let mut b = good.clone();
        b[5] = 7;
        assert!(matches!(
            check(&b, &mut dest),
            CodecError::UnknownEncoding(7)
        ));
        let mut b = good.clone();
        b[6] = 1;
        assert!(matches!(check(&b, &mut dest), CodecError::Malformed(_)));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&(MAX_BATCH_PAGES as u32 + 1).to_le_bytes());
        assert!(matches!(check(&b, &mut dest), CodecError::TooManyPages(_)));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            check(&b, &mut dest),
            CodecError::BodyTooLarge { .. }
        ));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&(ENTRY_HEADER_LEN as u32 + 100).to_le_bytes());
        assert!(matches!(
            check(&b, &mut dest),
            CodecError::Decompress(_) | CodecError::BodyLengthMismatch { .. }
        ));
        // Declared page count larger than the entries present.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(check(&b, &mut dest), CodecError::Truncated(_)));
        // Fewer pages than entries: trailing body bytes.
        let zero = [0u8; PAGE_SIZE];
        let mut b = enc
            .encode(Encoding::Raw, &[(1, &zero), (2, &zero)])
            .unwrap()
            .bytes;
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(check(&b, &mut dest), CodecError::Malformed(_)));
        // ... and a body larger than any batch of that many pages.
        let raw = enc
            .encode(Encoding::Raw, &[(1, &page), (2, &page)])
            .unwrap()
            .bytes;
        let mut b = raw.clone();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            check(&b, &mut dest),
            CodecError::BodyTooLarge { .. }
        ));
        let mut b = raw.clone();
        b[HEADER_LEN + 8] = 9;
        assert!(matches!(
            check(&b, &mut dest),
            CodecError::UnknownPageKind { page: 1, kind: 9 }
        ));
        // Nothing was written by any of the failures.
        assert_eq!(dest[2], [0u8; PAGE_SIZE]);
    }

    #[test]
    fn zstd_bomb_is_rejected_without_large_allocation() {
        // 64 MiB of zeros compresses to a few KiB; the header claims one page.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        assert!(bomb.len() < 64 << 10);
        let mut b = Vec::new();
        b.extend_from_slice(&BATCH_MAGIC);
        b.extend_from_slice(&[BATCH_VERSION, Encoding::Zstd.wire(), 0, 0]);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&((ENTRY_HEADER_LEN + PAGE_SIZE) as u32).to_le_bytes());
        b.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
        b.extend_from_slice(&bomb);
        let mut dest = vec![[0u8; PAGE_SIZE]; 2];
        let mut dec = BatchDecoder::new().unwrap();
        let err = dec.decode(&b, &mut dest).unwrap_err();
        assert!(matches!(err, CodecError::Decompress(_)), "{err}");
        assert!(dec.body.capacity() <= max_body_len(MAX_BATCH_PAGES));
        // Maximum declared size: still bounded by max_body_len(MAX_BATCH_PAGES).
        b[8..12].copy_from_slice(&(MAX_BATCH_PAGES as u32).to_le_bytes());
        b[12..16].copy_from_slice(&(max_body_len(MAX_BATCH_PAGES) as u32).to_le_bytes());
        let err = dec.decode(&b, &mut dest).unwrap_err();
        assert!(matches!(err, CodecError::Decompress(_)), "{err}");
        assert!(dec.body.capacity() <= max_body_len(MAX_BATCH_PAGES) + 64);
        assert!(dest.iter().all(|p| p == &[0u8; PAGE_SIZE]));
    }

    #[test]
    fn bad_delta_streams_are_rejected() {
        let mut dest = vec![[0u8; PAGE_SIZE]; 4];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("overlong varint", vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            ("varint overflow", vec![0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x00]),
            ("truncated varint", vec![0x80]),
            ("empty pair", vec![0x00, 0x00]),
            ("past end", vec![0x80, 0x20, 0x01, 0xAA]),
            ("zero run past end", vec![0x81, 0x20, 0x00]),
            ("short", vec![0x10, 0x01, 0xAA]),
            ("literal truncated", vec![0x00, 0x05, 0xAA]),
        ];
        for (name, stream) in cases {
            let b = raw_batch(1, &delta_body(1, 0, &stream));
            let err = decode_batch(&b, &mut dest).unwrap_err();
            assert!(
                matches!(
                    err,
                    CodecError::BadVarint { page: 1 } | CodecError::BadDelta { page: 1, .. }
                ),
                "{name}: {err}"
            );
        }
        // Stream longer than a page (many 1-byte literals) is rejected even if it covers
        // the page exactly, and a valid stream with trailing bytes is trailing garbage.
        let mut long = Vec::new();
        for _ in 0..PAGE_SIZE / 2 {
            long.extend_from_slice(&[0x01, 0x01, 0x07]);
        }
        assert!(decode_batch(&raw_batch(1, &delta_body(1, 0, &long)), &mut dest).is_err());
        let mut trailing = vec![0x80, 0x20, 0x00];
        trailing.push(0);
        assert!(matches!(
            decode_batch(&raw_batch(1, &delta_body(1, 0, &trailing)), &mut dest),
            Err(CodecError::Malformed(_))
        ));
        // A valid identity delta with the right crc works.
        let ok = raw_batch(
            1,
            &delta_body(1, crc32fast::hash(&[0u8; PAGE_SIZE]), &[0x80, 0x20, 0x00]),
        );
        decode_batch(&ok, &mut dest).unwrap();
        assert!(dest.iter().all(|p| p == &[0u8; PAGE_SIZE]));
    }

    #[test]
    fn out_of_range_pages_are_rejected_before_any_write() {
        let mut enc = encoder(1 << 20, true);
        let page = [3u8; PAGE_SIZE];
        let mut dest = vec![[0u8; PAGE_SIZE]; 4];
        let b = enc
            .encode(Encoding::Raw, &[(1, &page), (1 << 40, &page)])
            .unwrap();
        assert!(matches!(
            decode_batch(&b.bytes, &mut dest),
            Err(CodecError::PageOutOfRange(x)) if x == 1 << 40
        ));
        assert_eq!(
            dest[1], [0u8; PAGE_SIZE],
            "first page written before validation"
        );
        // Dedup reference whose source is out of range.
        let mut body = Vec::new();
        put_entry(&mut body, 2, PageKind::Dedup, 0);
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_batch(&raw_batch(1, &body), &mut dest),
            Err(CodecError::PageOutOfRange(u64::MAX))
        ));
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
        assert!(max_encoded_len(MAX_BATCH_PAGES) >= HEADER_LEN + max_body_len(MAX_BATCH_PAGES));
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

    #[test]
    fn guest_memory_pages_store() {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let ps = PAGE_SIZE as u64;
        // Two regions with a hole between pages 16 and 32.
        let gm = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 16 * PAGE_SIZE),
            (GuestAddress(32 * ps), 16 * PAGE_SIZE),
        ])
        .unwrap();
        let mut store = GuestMemoryPages(&gm);
        assert!(store.contains(0) && store.contains(15) && store.contains(47));
        assert!(!store.contains(16) && !store.contains(48) && !store.contains(u64::MAX));
        let mut rng = Rng::new(31);
        let mut src: Vec<Page> = vec![[0u8; PAGE_SIZE]; 48];
        for i in [1usize, 15, 32, 40] {
            src[i] = new_content(&mut rng);
        }
        src[41] = src[40];
        let mut enc = encoder(1 << 20, true);
        let idx = [1u64, 15, 32, 40, 41];
        let pages: Vec<(u64, &Page)> = idx.iter().map(|&i| (i, &src[i as usize])).collect();
        let b = enc.encode(Encoding::Zstd, &pages).unwrap();
        decode_batch(&b.bytes, &mut store).unwrap();
        tweak(&mut src[32], &mut rng);
        let b = enc.encode(Encoding::Delta, &[(32, &src[32])]).unwrap();
        assert_eq!(b.stats.kinds.delta, 1);
        decode_batch(&b.bytes, &mut store).unwrap();
        let mut buf = [0u8; PAGE_SIZE];
        for &i in &idx {
            assert!(store.read_page(i, &mut buf));
            assert_eq!(buf, src[i as usize], "page {i}");
        }
        let hole = [0u8; PAGE_SIZE];
        let mut enc = encoder(0, false);
        let b = enc.encode(Encoding::Raw, &[(20, &hole)]).unwrap();
        assert!(matches!(
            decode_batch(&b.bytes, &mut store),
            Err(CodecError::PageOutOfRange(20))
        ));
    }

    // ---- fuzzing -------------------------------------------------------------------------

    /// Pages that a batch names as write targets, found by an independent, lenient walk of
    /// the (decompressed) body. The decoder must never write any other page.
    fn named_pages(bytes: &[u8]) -> std::collections::BTreeSet<u64> {
        let mut named = std::collections::BTreeSet::new();
        if bytes.len() < HEADER_LEN {
            return named;
        }
        let pages = le_u32(&bytes[8..12]).min(MAX_BATCH_PAGES as u32);
        let body = if bytes[5] == 0 {
            bytes[HEADER_LEN..].to_vec()
        } else {
            zstd::bulk::decompress(&bytes[HEADER_LEN..], max_body_len(MAX_BATCH_PAGES))
                .unwrap_or_default()
        };
        let mut pos = 0usize;
        for _ in 0..pages {
            if body.len() < pos + ENTRY_HEADER_LEN {
                break;
            }
            named.insert(le_u64(&body[pos..]));
            let kind = body[pos + 8];
            pos += ENTRY_HEADER_LEN;
            match kind {
                0 => {}
                1 => pos += PAGE_SIZE,
                3 => pos += 8,
                2 => {
                    let mut covered = 0u64;
                    while covered < PAGE_SIZE as u64 {
                        let (Some(z), Some(l)) =
                            (get_varint(&body, &mut pos), get_varint(&body, &mut pos))
                        else {
                            return named;
                        };
                        if z == 0 && l == 0 {
                            return named;
                        }
                        covered += u64::from(z) + u64::from(l);
                        pos += l as usize;
                    }
                }
                _ => break,
            }
        }
        named
    }

    /// A page store that records every write.
    struct Tracking {
        pages: Vec<Page>,
        writes: Vec<u64>,
    }

    impl PageStore for Tracking {
        fn contains(&self, index: u64) -> bool {
            PageStore::contains(&self.pages, index)
        }
        fn read_page(&self, index: u64, buf: &mut Page) -> bool {
            self.pages.read_page(index, buf)
        }
        fn write_page(&mut self, index: u64, data: &Page) -> bool {
            self.writes.push(index);
            self.pages.write_page(index, data)
        }
    }

    fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
        match rng.below(6) {
            0..=2 => {
                for _ in 0..(1 + rng.below(4)) {
                    if !bytes.is_empty() {
                        let i = rng.below(bytes.len() as u64) as usize;
                        bytes[i] ^= 1 << rng.below(8);
                    }
                }
            }
            3 => {
                let n = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.truncate(n);
            }
            4 => {
                for _ in 0..(1 + rng.below(32)) {
                    bytes.push(rng.next() as u8);
                }
            }
            _ => {
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len() as u64) as usize;
                    let n = (rng.below(16) as usize).min(bytes.len() - i);
                    for b in &mut bytes[i..i + n] {
                        *b = rng.next() as u8;
                    }
                }
            }
        }
    }

    /// Re-wraps a mutated body in a valid-looking header so mutations reach the entry and
    /// delta parsers behind zstd.
    fn rewrap(rng: &mut Rng, batch: &[u8], body: &[u8]) -> Vec<u8> {
        let encoding = batch[5];
        let payload = if encoding == 0 {
            body.to_vec()
        } else {
            zstd::bulk::compress(body, 1).unwrap()
        };
        let mut b = batch[..HEADER_LEN].to_vec();
        let mut raw_len = body.len() as u32;
        if rng.below(8) == 0 {
            raw_len = raw_len.wrapping_add(rng.below(64) as u32).wrapping_sub(32);
        }
        b[12..16].copy_from_slice(&raw_len.to_le_bytes());
        b[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&payload);
        b
    }

    #[test]
    fn fuzz_decoder_never_panics_or_writes_unnamed_pages() {
        let mut rng = Rng::new(0xF022);
        let mut mem = guest_image(&mut rng, 32);
        let mut dest_init = mem.clone();
        let mut dec = BatchDecoder::new().unwrap();
        let mut ok = 0u32;
        let mut errs = std::collections::BTreeMap::<String, u32>::new();
        let cases = 6000;
        for case in 0..cases {
            // A fresh valid batch every few cases, from an encoder whose destination is
            // `dest_init` (so deltas and dedups are valid before mutation).
            let encoding = Encoding::ALL[(case % 3) as usize];
            let mut enc = encoder(1 << 20, case % 2 == 0);
            let all: Vec<(u64, &Page)> = (0..mem.len() as u64)
                .map(|i| (i, &mem[i as usize]))
                .collect();
            enc.encode(Encoding::Raw, &all).unwrap();
            let snapshot = mem.clone();
            let count = 1 + rng.below(6) as usize;
            let dirty = dirty_pass(&mut rng, &mut mem, count);
            let pages: Vec<(u64, &Page)> = dirty.iter().map(|&i| (i, &mem[i as usize])).collect();
            let valid = enc.encode(encoding, &pages).unwrap().bytes;
            dest_init.clone_from(&snapshot);

            let mut batch = valid.clone();
            match rng.below(4) {
                0 | 1 => mutate(&mut rng, &mut batch),
                2 => {
                    // Mutate the decompressed body and re-wrap it.
                    let mut body = if encoding == Encoding::Raw {
                        valid[HEADER_LEN..].to_vec()
                    } else {
                        zstd::bulk::decompress(&valid[HEADER_LEN..], 1 << 24).unwrap()
                    };
                    mutate(&mut rng, &mut body);
                    batch = rewrap(&mut rng, &valid, &body);
                }
                _ => {
                    // Random body behind a valid header prefix.
                    let mut body = vec![0u8; rng.below(200) as usize];
                    rng.fill(&mut body);
                    // Sprinkle plausible entry headers.
                    if body.len() >= ENTRY_HEADER_LEN {
                        body[0..8].copy_from_slice(&rng.below(40).to_le_bytes());
                        body[8] = rng.below(5) as u8;
                    }
                    batch = rewrap(&mut rng, &valid, &body);
                    batch[8..12].copy_from_slice(&(1 + rng.below(3) as u32).to_le_bytes());
                }
            }

            let named = named_pages(&batch);
            let mut store = Tracking {
                pages: dest_init.clone(),
                writes: Vec::new(),
            };
            match dec.decode(&batch, &mut store) {
                Ok(_) => ok += 1,
                Err(e) => {
                    let dbg = format!("{e:?}");
                    let key = dbg.split([' ', '(', '{']).next().unwrap_or("").to_string();
                    *errs.entry(key).or_default() += 1;
                }
            }
            for w in &store.writes {
                assert!(named.contains(w), "case {case}: wrote unnamed page {w}");
            }
            for (i, (after, before)) in store.pages.iter().zip(&dest_init).enumerate() {
                if after != before {
                    assert!(named.contains(&(i as u64)), "case {case}: page {i} changed");
                }
            }
        }
        // The unmutated batches decode; sanity-check the fuzzer reaches deep errors.
        println!("fuzz: {ok} ok of {cases}; errors: {errs:?}");
        assert!(ok > 0);
        for deep in [
            "CrcMismatch",
            "BadDelta",
            "BadVarint",
            "PageOutOfRange",
            "Decompress",
        ] {
            assert!(errs.contains_key(deep), "fuzzer never reached {deep}");
        }
    }

    #[test]
    fn fuzz_pure_random_input() {
        let mut rng = Rng::new(77);
        let mut dest = vec![[0u8; PAGE_SIZE]; 8];
        let mut dec = BatchDecoder::new().unwrap();
        for _ in 0..5000 {
            let mut b = vec![0u8; rng.below(300) as usize];
            rng.fill(&mut b);
            if rng.below(2) == 0 && b.len() >= 8 {
                b[0..4].copy_from_slice(&BATCH_MAGIC);
                b[4] = BATCH_VERSION;
                b[5] = rng.below(3) as u8;
                b[6] = 0;
                b[7] = 0;
            }
            assert!(dec.decode(&b, &mut dest).is_err());
        }
        assert!(dest.iter().all(|p| p == &[0u8; PAGE_SIZE]));
    }

    // ---- measurement ---------------------------------------------------------------------

    fn mbps(bytes: u64, ns: u64) -> f64 {
        if ns == 0 {
            0.0
        } else {
            bytes as f64 / 1e6 / (ns as f64 / 1e9)
        }
    }

    /// Throughput and ratio on the test data; numbers go in the module documentation.
    /// Run with `cargo test --release -- --ignored --nocapture measure`.
    #[test]
    #[ignore]
    fn measure_throughput() {
        let batch = 256;
        println!("batch = {batch} pages; MB/s of page data per CPU second; ratio = page bytes / wire bytes");
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
    /// Run like `measure_throughput`.
    #[test]
    #[ignore]
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
}
