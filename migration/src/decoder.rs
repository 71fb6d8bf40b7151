//! The destination-side batch decoder: validates an untrusted batch whole, then applies it
//! page by page, each page checked against its crc32 before it is written.

use std::fmt;
use std::time::Instant;

use crate::batch::{
    le_u32, le_u64, parse_header, Encoding, PageKind, BATCH_HEADER_LEN, ENTRY_HEADER_LEN,
};
use crate::delta::walk_delta;
use crate::error::CodecError;
use crate::stats::{thread_cpu_ns, BatchStats, CodecStats, KindCounts};
use crate::store::PageStore;
use crate::PAGE_SIZE;

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
        let payload = bytes.get(BATCH_HEADER_LEN..).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{max_body_len, put_entry, BATCH_MAGIC, BATCH_VERSION, MAX_BATCH_PAGES};
    use crate::delta::get_varint;
    use crate::testdata::*;

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
        b[BATCH_HEADER_LEN + ENTRY_HEADER_LEN + 77] ^= 0xFF;
        let mut dest = vec![[9u8; PAGE_SIZE]; 4];
        assert!(matches!(
            decode_batch(&b, &mut dest),
            Err(CodecError::CrcMismatch { page: 3, .. })
        ));
        assert!(dest.iter().all(|p| p == &[9u8; PAGE_SIZE]));
        // A zero marker with a wrong crc is rejected too.
        let z = [0u8; PAGE_SIZE];
        let mut b = enc.encode(Encoding::Raw, &[(1, &z)]).unwrap().bytes;
        b[BATCH_HEADER_LEN + 9] ^= 1;
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
        b[BATCH_HEADER_LEN + 8] = 9;
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

    /// Pages that a batch names as write targets, found by an independent, lenient walk of
    /// the (decompressed) body. The decoder must never write any other page.
    fn named_pages(bytes: &[u8]) -> std::collections::BTreeSet<u64> {
        let mut named = std::collections::BTreeSet::new();
        if bytes.len() < BATCH_HEADER_LEN {
            return named;
        }
        let pages = le_u32(&bytes[8..12]).min(MAX_BATCH_PAGES as u32);
        let body = if bytes[5] == 0 {
            bytes[BATCH_HEADER_LEN..].to_vec()
        } else {
            zstd::bulk::decompress(&bytes[BATCH_HEADER_LEN..], max_body_len(MAX_BATCH_PAGES))
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
                    bytes.push(rng.next_u64() as u8);
                }
            }
            _ => {
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len() as u64) as usize;
                    let n = (rng.below(16) as usize).min(bytes.len() - i);
                    for b in &mut bytes[i..i + n] {
                        *b = rng.next_u64() as u8;
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
        let mut b = batch[..BATCH_HEADER_LEN].to_vec();
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
                        valid[BATCH_HEADER_LEN..].to_vec()
                    } else {
                        zstd::bulk::decompress(&valid[BATCH_HEADER_LEN..], 1 << 24).unwrap()
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
}
