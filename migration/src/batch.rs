//! The wire format of one page batch: header, entries, limits, and the helpers that read
//! and write them.
//!
//! # Wire format (version 1, all integers little-endian)
//!
//! ```text
//! header (BATCH_HEADER_LEN = 20 bytes):
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

use crate::error::CodecError;
use crate::PAGE_SIZE;
pub use novacron_vmm_api::stats::{Encoding, PageKind};

/// Magic bytes at the start of every encoded batch ("NovaCron Page Batch").
pub const BATCH_MAGIC: [u8; 4] = *b"NCPB";

/// Version of the batch format produced and accepted by this module.
pub const BATCH_VERSION: u8 = 1;

/// Length of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 20;

/// Length of the per-page entry header (page index, kind, crc32).
pub const ENTRY_HEADER_LEN: usize = 13;

/// Maximum number of pages in one batch (16 MiB of page data).
pub const MAX_BATCH_PAGES: usize = 4096;

/// Upper bound of the decompressed body of a batch of `pages` pages.
pub const fn max_body_len(pages: usize) -> usize {
    pages * (ENTRY_HEADER_LEN + PAGE_SIZE)
}

/// Upper bound of a whole encoded batch (header and body, compressed or not): the largest
/// body plus zstd's worst-case expansion of it (`compress_bound` is n + n/256 + a little).
pub const MAX_BATCH_LEN: usize =
    BATCH_HEADER_LEN + max_body_len(MAX_BATCH_PAGES) + max_body_len(MAX_BATCH_PAGES) / 128 + 4096;

/// Parsed batch header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) encoding: Encoding,
    pub(crate) pages: usize,
    pub(crate) raw_body_len: usize,
}

pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header, CodecError> {
    let h = bytes
        .get(..BATCH_HEADER_LEN)
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
    let payload = bytes.len() - BATCH_HEADER_LEN;
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

pub(crate) fn put_entry(out: &mut Vec<u8>, index: u64, kind: PageKind, crc: u32) {
    out.extend_from_slice(&index.to_le_bytes());
    out.push(kind.wire());
    out.extend_from_slice(&crc.to_le_bytes());
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_bound_covers_zstd_expansion() {
        let bound =
            BATCH_HEADER_LEN + zstd::zstd_safe::compress_bound(max_body_len(MAX_BATCH_PAGES));
        assert!(bound <= MAX_BATCH_LEN);
        const { assert!(MAX_BATCH_LEN <= crate::protocol::MAX_PAYLOAD) };
    }
}
