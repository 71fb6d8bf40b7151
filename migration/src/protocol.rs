//! The migration wire format, all in one place.
//!
//! A migration is one TCP connection from the source VMM to the destination VMM carrying
//! frames. Every frame is a 24-byte header followed by its payload:
//!
//! ```text
//! offset size field
//! 0      4    magic "NCMG"
//! 4      1    frame type (FrameType)
//! 5      1    source: the unit source (`unit::SourceId`) a Pages or Verify frame is about
//!             (0 = guest memory; 0 on every other frame)
//! 6      2    reserved (0)
//! 8      4    payload length, little endian (at most MAX_PAYLOAD)
//! 12     4    sequence number, little endian: 0 for the first frame in each direction,
//!             then one more per frame (a swapped, dropped or replayed frame is refused)
//! 16     4    crc32 of the payload
//! 20     4    crc32 of header bytes 0..20 (a corrupted length is caught before it is used)
//! ```
//!
//! [`FrameWriter`] numbers the frames it writes and [`FrameReader`] refuses any frame whose
//! number is not the next one.
//!
//! Conversation (S = source, D = destination):
//!
//! ```text
//! S->D Hello      JSON Hello: protocol version, memory size, vCPUs, CPUID features, devices,
//!                 encodings the source can use
//! D->S HelloAck   JSON HelloAck: accepted or refused (with the reason) and the encodings
//!                 the destination decodes; no memory moves before an accept
//! S->D Pages      one page batch (format in `batch.rs`) of one source, any number of times
//! S->D RoundEnd   JSON RoundEnd {round}: end of one precopy pass
//! D->S RoundAck   JSON RoundEnd {round}: everything before it was applied (the source times
//!                 its rounds by this, so socket buffers do not inflate the measured rate)
//! S->D Switchover empty: the source has paused its vCPUs (destination downtime starts)
//! S->D Pages      the final pass
//! S->D State      the VM state envelope (the VMM's `state.rs`)
//! S->D Verify     optional, repeated: (u64 page frame number, u32 crc32) records of every
//!                 page the source holds non-zero; pages not listed must be zero
//! S->D Complete   empty: resume now
//! D->S Confirm    JSON Confirm: ok (destination running) or the reason it refused, and
//!                 how many Verify records the destination checked
//! either Abort    JSON Abort {reason}: the sender gives up; the source resumes its guest
//! ```
//!
//! The source exits only after a positive Confirm; before that, any failure leaves the
//! source guest running. The destination never resumes a guest it did not fully receive.

use crate::unit::SourceId;
pub use novacron_vmm_api::migration::VerifyMode;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use thiserror::Error;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 2;
/// Frame magic.
pub const MAGIC: [u8; 4] = *b"NCMG";
/// Header size.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted (a page batch is at most ~16 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Source's handshake.
    Hello = 1,
    /// Destination's answer to Hello.
    HelloAck = 2,
    /// A page batch.
    Pages = 3,
    /// End of a precopy round.
    RoundEnd = 4,
    /// The source has paused.
    Switchover = 5,
    /// VM state.
    State = 6,
    /// Per-page checksums of the final memory.
    Verify = 7,
    /// Resume now.
    Complete = 8,
    /// Destination's final answer.
    Confirm = 9,
    /// Give up.
    Abort = 10,
    /// Destination applied a round.
    RoundAck = 11,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<Self> {
        use FrameType::*;
        Some(match v {
            1 => Hello,
            2 => HelloAck,
            3 => Pages,
            4 => RoundEnd,
            5 => Switchover,
            6 => State,
            7 => Verify,
            8 => Complete,
            9 => Confirm,
            10 => Abort,
            11 => RoundAck,
            _ => return None,
        })
    }
}

/// Errors on the migration stream.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The connection failed.
    #[error("migration connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the migration connection")]
    Closed,
    /// Bad magic: the peer is not a NovaCron VMM (or the stream is out of sync).
    #[error("bad frame magic {0:02x?}: the peer is not a NovaCron migration stream")]
    BadMagic([u8; 4]),
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Oversized frame.
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// A frame header failed its checksum.
    #[error("frame header failed its crc32 check (corrupted in transit)")]
    BadHeaderCrc,
    /// A frame failed its checksum.
    #[error("frame {kind:?} failed its crc32 check (corrupted in transit)")]
    BadCrc {
        /// Frame type.
        kind: FrameType,
    },
    /// A frame arrived where another was expected.
    #[error("unexpected {got:?} frame while waiting for {want}")]
    Unexpected {
        /// What came.
        got: FrameType,
        /// What was expected.
        want: &'static str,
    },
    /// A JSON payload did not parse.
    #[error("malformed {kind:?} payload: {source}")]
    Json {
        /// Frame type.
        kind: FrameType,
        /// Parser error.
        source: serde_json::Error,
    },
    /// A frame carries another sequence number than the next one.
    #[error(
        "frame {kind:?} numbered {got} where frame {want} was due (reordered, dropped or replayed)"
    )]
    OutOfOrder {
        /// Frame type.
        kind: FrameType,
        /// Its number.
        got: u32,
        /// The number due.
        want: u32,
    },
    /// A Verify payload is not a whole number of records.
    #[error("malformed Verify payload of {0} bytes")]
    BadVerify(usize),
}

/// One received frame.
#[derive(Debug)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// The unit source it is about (Pages, Verify; 0 otherwise).
    pub source: SourceId,
    /// Its sequence number.
    pub seq: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Parses the payload as JSON.
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.payload).map_err(|source| ProtocolError::Json {
            kind: self.kind,
            source,
        })
    }
}

/// Writes numbered frames to one direction of a migration stream.
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    inner: W,
    seq: u32,
}

impl<W: Write> FrameWriter<W> {
    /// A writer whose first frame is number 0.
    pub fn new(inner: W) -> Self {
        FrameWriter { inner, seq: 0 }
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying writer, mutably (to flush it, or pace it).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The number the next frame gets.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Writes one frame that concerns no unit source.
    pub fn frame(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), ProtocolError> {
        self.source_frame(kind, 0, payload)
    }

    /// Writes one frame about the units of `source` (Pages, Verify).
    pub fn source_frame(
        &mut self,
        kind: FrameType,
        source: SourceId,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        let h = encode_header(kind, source, self.seq, payload)?;
        self.inner.write_all(&h)?;
        self.inner.write_all(payload)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Writes a frame with a JSON payload.
    pub fn json<T: Serialize>(&mut self, kind: FrameType, v: &T) -> Result<(), ProtocolError> {
        let body = serde_json::to_vec(v).map_err(|source| ProtocolError::Json { kind, source })?;
        self.frame(kind, &body)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> Result<(), ProtocolError> {
        self.inner.flush()?;
        Ok(())
    }
}

/// The header of frame number `seq` carrying `payload`.
pub fn encode_header(
    kind: FrameType,
    source: SourceId,
    seq: u32,
    payload: &[u8],
) -> Result<[u8; HEADER_LEN], ProtocolError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = kind as u8;
    h[5] = source;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let hcrc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&hcrc.to_le_bytes());
    Ok(h)
}

/// Reads the numbered frames of one direction of a migration stream.
#[derive(Debug)]
pub struct FrameReader<R: Read> {
    inner: R,
    seq: u32,
}

impl<R: Read> FrameReader<R> {
    /// A reader that expects frame number 0 first.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, seq: 0 }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the next frame, checking magic, size, crc and number.
    pub fn read(&mut self) -> Result<Frame, ProtocolError> {
        let f = read_frame(&mut self.inner)?;
        if f.seq != self.seq {
            return Err(ProtocolError::OutOfOrder {
                kind: f.kind,
                got: f.seq,
                want: self.seq,
            });
        }
        self.seq = self.seq.wrapping_add(1);
        Ok(f)
    }
}

fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ProtocolError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            ProtocolError::Io(e)
        }
    })
}

/// Reads one frame, checking magic, size and crc (not its number: see [`FrameReader`]).
pub fn read_frame<R: Read>(r: &mut R) -> Result<Frame, ProtocolError> {
    let mut h = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut h)?;
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if crc32fast::hash(&h[..20]) != word(20) {
        return Err(ProtocolError::BadHeaderCrc);
    }
    let kind = FrameType::from_u8(h[4]).ok_or(ProtocolError::UnknownType(h[4]))?;
    let len = word(8) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    read_exact_or_closed(r, &mut payload)?;
    if crc32fast::hash(&payload) != word(16) {
        return Err(ProtocolError::BadCrc { kind });
    }
    Ok(Frame {
        kind,
        source: h[5],
        seq: word(12),
        payload,
    })
}

/// The source's handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version.
    pub version: u32,
    /// Guest RAM bytes.
    pub memory: u64,
    /// vCPU count.
    pub vcpus: u8,
    /// CPUID feature words the guest may use: (leaf, index, [eax, ebx, ecx, edx]).
    pub cpuid: Vec<(u32, u32, [u32; 4])>,
    /// Number of virtio-blk disks.
    pub disks: usize,
    /// Number of virtio-net interfaces.
    pub nets: usize,
    /// Page encodings the source may use.
    pub encodings: Vec<String>,
    /// The migration this stream belongs to: the destination refuses any other id than
    /// the one it was started with.
    #[serde(default)]
    pub migration_id: String,
    /// How the final memory will be verified: the destination requires the Verify frames
    /// this mode implies before Complete.
    #[serde(default)]
    pub verify: VerifyMode,
}

/// The destination's answer to Hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloAck {
    /// Whether the destination accepts.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub error: String,
    /// Encodings the destination decodes.
    #[serde(default)]
    pub encodings: Vec<String>,
}

/// End of a precopy round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundEnd {
    /// Round number (0 = full pass).
    pub round: u32,
}

/// The destination's final answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirm {
    /// Whether the destination is running the guest.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub error: String,
    /// Destination-side downtime: Switchover received to vCPUs running (ms).
    #[serde(default)]
    pub downtime_ms: f64,
    /// Pages the destination checked against the source's Verify records; `None` if the
    /// source sent none (no verification asked).
    #[serde(default)]
    pub verified_pages: Option<u64>,
}

/// Giving up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Abort {
    /// Why.
    pub reason: String,
}

/// Size of one Verify record.
pub const VERIFY_RECORD: usize = 12;

/// Encodes Verify records.
pub fn encode_verify(records: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * VERIFY_RECORD);
    for (pfn, crc) in records {
        out.extend_from_slice(&pfn.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

/// Decodes Verify records.
pub fn decode_verify(payload: &[u8]) -> Result<Vec<(u64, u32)>, ProtocolError> {
    if !payload.len().is_multiple_of(VERIFY_RECORD) {
        return Err(ProtocolError::BadVerify(payload.len()));
    }
    Ok(payload
        .chunks_exact(VERIFY_RECORD)
        .map(|c| {
            let mut pfn = [0u8; 8];
            pfn.copy_from_slice(&c[..8]);
            let mut crc = [0u8; 4];
            crc.copy_from_slice(&c[8..]);
            (u64::from_le_bytes(pfn), u32::from_le_bytes(crc))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_corruption() {
        let mut w = FrameWriter::new(Vec::new());
        w.frame(FrameType::Pages, b"hello pages").expect("write");
        let one = w.get_ref().clone();
        let f = read_frame(&mut &one[..]).expect("read");
        assert_eq!(f.kind, FrameType::Pages);
        assert_eq!(f.payload, b"hello pages");
        assert_eq!((f.source, f.seq), (0, 0));
        w.source_frame(FrameType::Pages, 3, b"disk units")
            .expect("write");
        let both = w.get_ref().clone();
        let mut r = FrameReader::new(&both[..]);
        r.read().expect("first");
        let f = r.read().expect("second");
        assert_eq!((f.kind, f.source, f.seq), (FrameType::Pages, 3, 1));
        assert_eq!(f.payload, b"disk units");
        for i in 4..one.len() {
            let mut bad = one.clone();
            bad[i] ^= 0x40;
            assert!(
                read_frame(&mut &bad[..]).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        let mut bad = one.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::BadMagic(_))
        ));
        assert!(matches!(
            read_frame(&mut &one[..10]),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn frames_out_of_order_are_refused() {
        let mut w = FrameWriter::new(Vec::new());
        w.frame(FrameType::Pages, b"first").expect("write");
        let first_len = w.get_ref().len();
        w.frame(FrameType::Pages, b"second").expect("write");
        let bytes = w.get_ref().clone();
        let mut swapped = bytes[first_len..].to_vec();
        swapped.extend_from_slice(&bytes[..first_len]);
        let mut r = FrameReader::new(&swapped[..]);
        assert!(matches!(
            r.read(),
            Err(ProtocolError::OutOfOrder {
                got: 1,
                want: 0,
                ..
            })
        ));
        let mut dup = bytes[..first_len].to_vec();
        dup.extend_from_slice(&bytes[..first_len]);
        let mut r = FrameReader::new(&dup[..]);
        r.read().expect("first");
        assert!(matches!(
            r.read(),
            Err(ProtocolError::OutOfOrder {
                got: 0,
                want: 1,
                ..
            })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = FrameType::Pages as u8;
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let c = crc32fast::hash(&h[..20]);
        h[20..24].copy_from_slice(&c.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &h[..]),
            Err(ProtocolError::TooLarge(_))
        ));
    }

    #[test]
    fn verify_records() {
        let r = vec![(1u64, 2u32), (u64::MAX, 7)];
        assert_eq!(decode_verify(&encode_verify(&r)).expect("decode"), r);
        assert!(decode_verify(&[0u8; 13]).is_err());
    }
}
