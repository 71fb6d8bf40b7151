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
//! 6      2    pass, little endian: on a Pages frame the precopy pass the batch belongs to
//!             (the number of RoundEnd frames written before it, modulo 2^16; the final
//!             pass is the one after the last RoundEnd); 0 on every other frame
//! 8      4    payload length, little endian (at most the frame type's limit,
//!             FrameType::max_payload, itself at most MAX_PAYLOAD)
//! 12     4    sequence number, little endian: 0 for the first frame in each direction,
//!             then one more per frame (a swapped, dropped or replayed frame is refused)
//! 16     4    crc32 of the payload
//! 20     4    crc32 of header bytes 0..20 (a corrupted length is caught before it is used)
//! ```
//!
//! [`FrameWriter`] numbers the frames it writes and tags each Pages frame with its pass;
//! [`FrameReader`] refuses any frame whose number is not the next one. The pass tag lets
//! the destination refuse a batch that arrives in another pass than the one it was sent
//! in (`receiver.rs` enforces the conversation below step by step).
//!
//! # Limits
//!
//! Every size a peer sends is bounded before anything is allocated for it: the payload of
//! each frame type ([`FrameType::max_payload`], checked from the header), the fields of a
//! Hello ([`Hello::validate`]: CPUID entries, encodings, devices, the migration id), the
//! number of Verify records per frame ([`MAX_VERIFY_RECORDS`]), and the VM state
//! ([`MAX_STATE`]; its contents are decoded and bounded by the VMM).
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
//! S->D State      the VM state envelope (the VMM's `state.rs`), one zstd frame (it crosses
//!                 the link while the guest is paused: ~24 KiB raw, a few KiB packed)
//! S->D Verify     as Hello::verify announced: `full`, repeated: (u64 page frame number,
//!                 u32 crc32) records of every page the source holds non-zero (pages not
//!                 listed must be zero); `sampled`, once: a [`SampledVerify`] (seed and two
//!                 digests, 32 bytes); `off`: none
//! S->D Complete   empty: resume now
//! D->S Confirm    JSON Confirm: ok (destination running) or the reason it refused, and
//!                 how many Verify records the destination checked
//! either Abort    JSON Abort {reason}: the sender gives up; the source resumes its guest
//! ```
//!
//! The source exits only after a positive Confirm; before that, any failure leaves the
//! source guest running. The destination never resumes a guest it did not fully receive.

use crate::batch::MAX_BATCH_LEN;
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
/// Largest payload of any frame (the VM state's limit; a page batch is at most ~17 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Largest JSON handshake (Hello, HelloAck) payload.
pub const MAX_HELLO: usize = 1 << 20;
/// Largest payload of the small JSON frames (RoundEnd, RoundAck, Confirm, Abort).
pub const MAX_CONTROL: usize = 64 << 10;
/// Largest VM state envelope.
pub const MAX_STATE: usize = MAX_PAYLOAD;
/// Most Verify records in one frame (the source splits longer lists).
pub const MAX_VERIFY_RECORDS: usize = 1 << 20;
/// Most CPUID entries a Hello may carry (KVM's own limit on a vCPU's table is 256).
pub const MAX_CPUID_ENTRIES: usize = 512;
/// Most encoding names a Hello or HelloAck may list.
pub const MAX_ENCODINGS: usize = 16;
/// Longest encoding name.
pub const MAX_ENCODING_NAME: usize = 32;
/// Longest migration id.
pub const MAX_MIGRATION_ID: usize = 128;
/// Most disks or network interfaces a Hello may announce.
pub const MAX_DEVICES: usize = 64;

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
    /// The largest payload a frame of this type may carry; a header announcing more is
    /// refused before the payload is read.
    pub const fn max_payload(self) -> usize {
        use FrameType::*;
        match self {
            Hello | HelloAck => MAX_HELLO,
            Pages => MAX_BATCH_LEN,
            RoundEnd | RoundAck | Confirm | Abort => MAX_CONTROL,
            Switchover | Complete => 0,
            State => MAX_STATE,
            Verify => MAX_VERIFY_RECORDS * VERIFY_RECORD,
        }
    }

    /// The frame type of wire byte `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
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
    /// A frame's payload exceeds the limit of its type.
    #[error("{kind:?} frame of {len} bytes exceeds the {limit}-byte limit of its type")]
    KindTooLarge {
        /// Frame type.
        kind: FrameType,
        /// Announced payload length.
        len: usize,
        /// The limit of the type.
        limit: usize,
    },
    /// A frame that carries no pass has a non-zero pass field.
    #[error("{kind:?} frame carries pass {pass}, but only Pages frames have a pass")]
    StrayPass {
        /// Frame type.
        kind: FrameType,
        /// The pass field.
        pass: u16,
    },
    /// A frame arrived at a step of the conversation where it has no place.
    #[error("{got:?} frame out of place {step}: expected {want}")]
    OutOfStep {
        /// What came.
        got: FrameType,
        /// Where the conversation was.
        step: &'static str,
        /// What may come there.
        want: &'static str,
    },
    /// A page batch tagged with another pass than the one in progress.
    #[error(
        "page batch of pass {got} arrived during pass {want} (moved or replayed from another pass)"
    )]
    WrongPass {
        /// The batch's pass tag.
        got: u16,
        /// The pass in progress (modulo 2^16).
        want: u16,
    },
    /// A RoundEnd with another round number than the round in progress.
    #[error("RoundEnd of round {got} during round {want}")]
    WrongRound {
        /// The RoundEnd's number.
        got: u32,
        /// The round in progress.
        want: u32,
    },
    /// A Hello field is out of bounds.
    #[error("Hello refused: {0}")]
    BadHello(String),
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
    /// The precopy pass of a Pages frame (0 on other frames).
    pub pass: u16,
    /// Its sequence number.
    pub seq: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame as it goes on the wire: header (with this frame's pass and number, and
    /// freshly computed crcs) and payload. Test tools rewrite recorded streams with it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        let h = encode_header_pass(self.kind, self.source, self.pass, self.seq, &self.payload)?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&h);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

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
    /// RoundEnd frames written so far: the pass of the next Pages frame.
    pass: u16,
}

impl<W: Write> FrameWriter<W> {
    /// A writer whose first frame is number 0.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            seq: 0,
            pass: 0,
        }
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
        let pass = if kind == FrameType::Pages {
            self.pass
        } else {
            0
        };
        let h = encode_header_pass(kind, source, pass, self.seq, payload)?;
        self.inner.write_all(&h)?;
        self.inner.write_all(payload)?;
        self.seq = self.seq.wrapping_add(1);
        if kind == FrameType::RoundEnd {
            self.pass = self.pass.wrapping_add(1);
        }
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

/// The header of frame number `seq` carrying `payload` (pass 0: any frame but Pages).
pub fn encode_header(
    kind: FrameType,
    source: SourceId,
    seq: u32,
    payload: &[u8],
) -> Result<[u8; HEADER_LEN], ProtocolError> {
    encode_header_pass(kind, source, 0, seq, payload)
}

/// The header of frame number `seq` carrying `payload` in precopy pass `pass` (Pages).
pub fn encode_header_pass(
    kind: FrameType,
    source: SourceId,
    pass: u16,
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
    h[6..8].copy_from_slice(&pass.to_le_bytes());
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

/// Reads one frame, checking magic, size (against its type's limit, before allocating),
/// crc and pass field (not its number: see [`FrameReader`]).
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
    let limit = kind.max_payload();
    if len > limit {
        return Err(ProtocolError::KindTooLarge { kind, len, limit });
    }
    let pass = u16::from_le_bytes([h[6], h[7]]);
    if pass != 0 && kind != FrameType::Pages {
        return Err(ProtocolError::StrayPass { kind, pass });
    }
    let mut payload = vec![0u8; len];
    read_exact_or_closed(r, &mut payload)?;
    if crc32fast::hash(&payload) != word(16) {
        return Err(ProtocolError::BadCrc { kind });
    }
    Ok(Frame {
        kind,
        source: h[5],
        pass,
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
    /// Sizes in bytes of the disks whose blocks the stream carries (writable, not shared),
    /// in the order of the VM's disks; their units follow guest memory's (see
    /// [`crate::disk::Joined`]). The destination refuses a different list.
    #[serde(default)]
    pub copied_disks: Vec<u64>,
}

impl Hello {
    /// Checks every field against the protocol's bounds (before the VMM compares the Hello
    /// with its machine): a peer cannot make the destination hold or walk more than these.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |m: String| Err(ProtocolError::BadHello(m));
        if self.cpuid.len() > MAX_CPUID_ENTRIES {
            return bad(format!(
                "{} CPUID entries, at most {MAX_CPUID_ENTRIES} allowed",
                self.cpuid.len()
            ));
        }
        if self.encodings.len() > MAX_ENCODINGS {
            return bad(format!(
                "{} encodings listed, at most {MAX_ENCODINGS} allowed",
                self.encodings.len()
            ));
        }
        if let Some(e) = self.encodings.iter().find(|e| e.len() > MAX_ENCODING_NAME) {
            return bad(format!(
                "encoding name of {} bytes, at most {MAX_ENCODING_NAME} allowed",
                e.len()
            ));
        }
        if self.vcpus == 0 {
            return bad("no vCPUs".into());
        }
        if self.memory == 0 || !self.memory.is_multiple_of(crate::PAGE_SIZE as u64) {
            return bad(format!(
                "memory size {} is not a positive multiple of the {}-byte page",
                self.memory,
                crate::PAGE_SIZE
            ));
        }
        if self.disks > MAX_DEVICES || self.nets > MAX_DEVICES {
            return bad(format!(
                "{} disks and {} nets announced, at most {MAX_DEVICES} of each allowed",
                self.disks, self.nets
            ));
        }
        if self.copied_disks.len() > self.disks {
            return bad(format!(
                "{} copied disks announced for {} disks",
                self.copied_disks.len(),
                self.disks
            ));
        }
        check_migration_id(&self.migration_id).map_err(ProtocolError::BadHello)
    }
}

/// Checks a migration id: at most [`MAX_MIGRATION_ID`] bytes of printable ASCII (the
/// management plane's ids are UUIDs or names). The reason if not.
pub fn check_migration_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_MIGRATION_ID {
        return Err(format!(
            "migration id of {} bytes, at most {MAX_MIGRATION_ID} allowed",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "migration id {id:?} holds characters other than printable ASCII"
        ));
    }
    Ok(())
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
    /// Time the destination spent checking the Verify records (ms; 0 without them).
    #[serde(default)]
    pub verify_ms: f64,
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

/// Size of the one Verify payload of `sampled` verification.
pub const SAMPLED_VERIFY_LEN: usize = 32;

/// The Verify payload of `sampled` verification: instead of a record per unit (12 bytes
/// each, more than a delta-encoded final-pass unit costs on the wire), the seed of the
/// sample and two digests the destination recomputes over its own units: the final pass
/// (the units it received after Switchover) and the sample (`sample` units drawn with
/// `seed` uniformly from all units outside the final pass; `verify::sampled_digests`).
///
/// ```text
/// offset size field
/// 0      8    seed
/// 8      8    sample: units asked for outside the final pass
/// 16     8    final_units: units of the final pass the source sent
/// 24     4    digest of the final pass's (unit, crc32) records
/// 28     4    digest of the sample's records
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledVerify {
    /// The sample's seed, drawn by the source after the final pass.
    pub seed: u64,
    /// Units asked for outside the final pass.
    pub sample: u64,
    /// Units of the final pass the source sent.
    pub final_units: u64,
    /// Digest of the final pass's records.
    pub final_digest: u32,
    /// Digest of the sample's records.
    pub sample_digest: u32,
}

impl SampledVerify {
    /// The wire form.
    pub fn encode(&self) -> [u8; SAMPLED_VERIFY_LEN] {
        let mut out = [0u8; SAMPLED_VERIFY_LEN];
        out[..8].copy_from_slice(&self.seed.to_le_bytes());
        out[8..16].copy_from_slice(&self.sample.to_le_bytes());
        out[16..24].copy_from_slice(&self.final_units.to_le_bytes());
        out[24..28].copy_from_slice(&self.final_digest.to_le_bytes());
        out[28..].copy_from_slice(&self.sample_digest.to_le_bytes());
        out
    }

    /// Parses the wire form.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let b: &[u8; SAMPLED_VERIFY_LEN] = payload
            .try_into()
            .map_err(|_| ProtocolError::BadVerify(payload.len()))?;
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(w)
        };
        Ok(SampledVerify {
            seed: u64_at(0),
            sample: u64_at(8),
            final_units: u64_at(16),
            final_digest: u32_at(24),
            sample_digest: u32_at(28),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_verify_round_trips_and_refuses_other_sizes() {
        let v = SampledVerify {
            seed: 0x0123_4567_89ab_cdef,
            sample: 1024,
            final_units: 77,
            final_digest: 0xdead_beef,
            sample_digest: 7,
        };
        assert_eq!(SampledVerify::decode(&v.encode()).unwrap(), v);
        assert!(SampledVerify::decode(&v.encode()[..31]).is_err());
        assert!(SampledVerify::decode(&[0u8; 33]).is_err());
    }

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
    fn pages_frames_carry_their_pass_and_other_frames_none() {
        let mut w = FrameWriter::new(Vec::new());
        w.frame(FrameType::Pages, b"round 0").expect("write");
        w.json(FrameType::RoundEnd, &RoundEnd { round: 0 })
            .expect("write");
        w.frame(FrameType::Pages, b"round 1").expect("write");
        w.frame(FrameType::Switchover, &[]).expect("write");
        let bytes = w.get_ref().clone();
        let mut r = FrameReader::new(&bytes[..]);
        let passes: Vec<(FrameType, u16)> = (0..4)
            .map(|_| r.read().map(|f| (f.kind, f.pass)).expect("read"))
            .collect();
        assert_eq!(
            passes,
            [
                (FrameType::Pages, 0),
                (FrameType::RoundEnd, 0),
                (FrameType::Pages, 1),
                (FrameType::Switchover, 0)
            ]
        );
        // A pass on a frame that has none is refused, even with a valid header crc.
        let f = Frame {
            kind: FrameType::State,
            source: 0,
            pass: 3,
            seq: 0,
            payload: b"state".to_vec(),
        };
        let bytes = f.to_bytes().expect("encode");
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ProtocolError::StrayPass { pass: 3, .. })
        ));
    }

    #[test]
    fn each_frame_type_has_its_own_payload_limit() {
        for (kind, len) in [
            (FrameType::Hello, MAX_HELLO + 1),
            (FrameType::Complete, 1),
            (FrameType::Switchover, 1),
            (FrameType::Abort, MAX_CONTROL + 1),
            (FrameType::Verify, MAX_VERIFY_RECORDS * VERIFY_RECORD + 1),
            (FrameType::Pages, MAX_BATCH_LEN + 1),
        ] {
            let mut h = [0u8; HEADER_LEN];
            h[..4].copy_from_slice(&MAGIC);
            h[4] = kind as u8;
            h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            let c = crc32fast::hash(&h[..20]);
            h[20..24].copy_from_slice(&c.to_le_bytes());
            assert!(
                matches!(
                    read_frame(&mut &h[..]),
                    Err(ProtocolError::KindTooLarge { kind: k, .. }) if k == kind
                ),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn hello_bounds() {
        let ok = Hello {
            version: PROTOCOL_VERSION,
            memory: 1 << 30,
            vcpus: 2,
            cpuid: vec![(1, 0, [0; 4]); MAX_CPUID_ENTRIES],
            disks: 1,
            nets: 1,
            encodings: vec!["raw".into(), "delta".into()],
            migration_id: "9b2c-4f".into(),
            verify: VerifyMode::Sampled,
            copied_disks: vec![1 << 30],
        };
        ok.validate().expect("in bounds");
        let bad = [
            Hello {
                cpuid: vec![(1, 0, [0; 4]); MAX_CPUID_ENTRIES + 1],
                ..ok.clone()
            },
            Hello {
                vcpus: 0,
                ..ok.clone()
            },
            Hello {
                memory: 4097,
                ..ok.clone()
            },
            Hello {
                nets: MAX_DEVICES + 1,
                ..ok.clone()
            },
            Hello {
                encodings: vec!["x".repeat(MAX_ENCODING_NAME + 1)],
                ..ok.clone()
            },
            Hello {
                migration_id: "a".repeat(MAX_MIGRATION_ID + 1),
                ..ok.clone()
            },
            Hello {
                migration_id: "two words".into(),
                ..ok.clone()
            },
            Hello {
                copied_disks: vec![1, 2],
                ..ok.clone()
            },
        ];
        for h in bad {
            assert!(
                matches!(h.validate(), Err(ProtocolError::BadHello(_))),
                "{h:?}"
            );
        }
    }

    #[test]
    fn verify_records() {
        let r = vec![(1u64, 2u32), (u64::MAX, 7)];
        assert_eq!(decode_verify(&encode_verify(&r)).expect("decode"), r);
        assert!(decode_verify(&[0u8; 13]).is_err());
    }
}
