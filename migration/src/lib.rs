//! The NovaCron live-migration engine, free of KVM: the wire format (`protocol`), the page
//! batch format and its codecs (`batch`, `delta`, `encoder`, `decoder`, `store`, `shard`,
//! `stats`, `error`, with the source's sent-page cache `page_cache`), the source's encoder
//! threads (`encoder_pool`), link rate (`link`), the `auto` encoding choice (`auto`) and the
//! switchover decision (`convergence`); and the session itself over a small interface
//! (`unit`: sources and sinks of numbered fixed-size units): the source's precopy
//! (`sender`), the destination's receive loop (`receiver`), their errors (`session`). The
//! VMM supplies guest memory and its dirty tracking as a unit source and sink, and the
//! hooks for pause, state and start.
//!
//! # Page batches
//!
//! The source groups the pages of a pass into batches and encodes each batch with a
//! [`BatchEncoder`]; the destination applies each batch to its memory with a
//! [`BatchDecoder`]. The batch is self-describing: the
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
//!   cached copy, or whose delta is longer than [`DELTA_LIMIT`](delta::DELTA_LIMIT), go raw; then the whole
//!   body is one zstd frame.
//!
//! In every mode an all-zero page is sent as a [`PageKind::Zero`] marker (no payload), and,
//! when [`EncoderConfig::dedup`] is on, a page whose exact content the destination already
//! holds at some page index (per the sent-page cache) is sent as a [`PageKind::Dedup`]
//! reference to that index. Every page sent is recorded in the cache whatever the mode, so
//! switching to `Delta` in a later pass finds the right bases.
//!
//! The wire format of a batch is documented in [`batch`].
//!
//! Varints are unsigned LEB128, at most 5 bytes, value < 2^32. A pair `(0, 0)` is invalid.
//!
//! # Delta literals
//!
//! The runs come from the XOR with the destination's copy (a zero XOR byte is an unchanged
//! byte; unchanged stretches shorter than 8 bytes stay inside the literal). The literals
//! carry the new bytes rather than the XOR bytes: the XOR of two unrelated texts is close
//! to noise, while the new bytes compress like the rest of the batch. Measured with zstd level 1 over 256
//! pages in which a contiguous fraction was rewritten (`cargo bench --bench page_codecs`), bytes per
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
//! hence [`DELTA_LIMIT`](delta::DELTA_LIMIT)(delta::DELTA_LIMIT) of 7/8 of a page.
//!
//! # Ordering contract
//!
//! Entries are applied in order, and `Delta`/`Dedup` entries refer to the destination's
//! state produced by *all earlier batches of the same encoder*. So the batches of one
//! [`BatchEncoder`] must be applied in the order they were produced, each exactly once.
//! Encoders of different shards (see [`shard_of`](shard::shard_of)) own disjoint pages and never refer to
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
//! Pages are partitioned by [`shard_of`](shard::shard_of) (granules of [`SHARD_GRANULE_PAGES`](shard::SHARD_GRANULE_PAGES) contiguous
//! pages, round-robin over the shards). Each encoder thread owns one `BatchEncoder` built
//! from [`EncoderConfig::sharded`], which owns its own cache slice: there is no lock or
//! shared state on the hot path. Dedup only finds duplicates inside a shard. The threads
//! are run by [`encoder_pool::EncoderPool`]; `cargo bench --bench encoder_threads`
//! measures how throughput scales with them.
//!
//! # Measured throughput (`cargo bench --bench page_codecs`)
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
//! [`SentPageCache`]: page_cache::SentPageCache

pub mod auto;
pub mod batch;
pub mod convergence;
pub mod decoder;
pub mod delta;
pub mod disk;
pub mod encoder;
pub mod encoder_pool;
pub mod error;
pub mod link;
pub mod page_cache;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod session;
pub mod shard;
pub mod stats;
pub mod store;
#[cfg(any(test, feature = "testdata"))]
pub mod testdata;
pub mod threads;
pub mod transport;
pub mod unit;
pub mod verify;

pub use batch::{Encoding, PageKind};
pub use decoder::BatchDecoder;
pub use encoder::{BatchEncoder, EncodedBatch, EncoderConfig, DEFAULT_ZSTD_LEVEL};
pub use error::CodecError;
pub use store::PageStore;

/// Size of a unit (a guest page) as transferred by migration.
pub const PAGE_SIZE: usize = 4096;

/// True if the page is all zeros.
pub fn is_zero_page(p: &[u8; PAGE_SIZE]) -> bool {
    p.chunks_exact(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}
