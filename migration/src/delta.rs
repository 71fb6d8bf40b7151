//! The XOR-delta codec of one page: zero runs of the XOR with the destination's copy,
//! literals carrying the new bytes (see the crate documentation, "Delta literals").

use crate::batch::le_u64;
use crate::error::CodecError;
use crate::PAGE_SIZE;

/// The encoder uses a delta only if its zero-run/literal form is at most this many bytes;
/// otherwise the page goes raw (inside the same zstd frame). A fully rewritten page costs
/// 1–4% more as a delta than raw; at 90% rewritten the delta is still 6–9% smaller.
pub const DELTA_LIMIT: usize = 7 * PAGE_SIZE / 8;

/// Unchanged stretches shorter than this stay inside the literal: a new pair costs at least
/// two varint bytes and splits zstd's matches. Pass-2 ratio on the test data at level 1 for
/// 1/2/4/8/16: 8.05/8.07/8.08/8.14/8.13x, so 8 (one machine word).
const MIN_ZERO_RUN: usize = 8;

/// Walks a delta stream at the start of `stream`, calling `f(offset, literal)` for each
/// literal (offset + literal.len() <= PAGE_SIZE is guaranteed). Returns the stream length.
pub(crate) fn walk_delta(
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

pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u32> {
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

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes `a ^ b` into `out`.
pub fn xor_pages(out: &mut [u8; PAGE_SIZE], a: &[u8; PAGE_SIZE], b: &[u8; PAGE_SIZE]) {
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
pub fn encode_delta(
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
