//! The errors of encoding and decoding page batches.

use crate::batch::MAX_BATCH_PAGES;

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
