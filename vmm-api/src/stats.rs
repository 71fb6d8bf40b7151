//! Encoder and decoder statistics a migration reports: the batch encodings and page kinds by
//! name, counts per kind, and per-encoding totals (`MigrationSummary::codec`). The engine
//! produces them; the VMM's API, the agent and benchmarks read them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Batch encoding requested by the migration sender (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Encoding {
    /// Uncompressed body.
    #[default]
    Raw = 0,
    /// One zstd frame over the batch body.
    Zstd = 1,
    /// Delta against the destination's copy (zero runs / new-byte literals), then one zstd
    /// frame over the body.
    Delta = 2,
}

impl Encoding {
    /// All encodings, in wire-value order.
    pub const ALL: [Encoding; 3] = [Encoding::Raw, Encoding::Zstd, Encoding::Delta];

    /// The byte stored in the batch header.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// Parses a header byte.
    pub fn from_wire(value: u8) -> Option<Self> {
        match value {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            2 => Some(Encoding::Delta),
            _ => None,
        }
    }

    /// Lower-case name, as accepted by [`FromStr`] and produced by serde.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
            Encoding::Delta => "delta",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown encoding {s:?} (expected raw, zstd or delta)"))
    }
}

/// How one page is carried in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum PageKind {
    /// All-zero page, no payload.
    Zero = 0,
    /// Full page content.
    Raw = 1,
    /// Zero runs (keep the destination's current bytes) and literals (new bytes).
    Delta = 2,
    /// Copy of the destination's current content of another page.
    Dedup = 3,
}

impl PageKind {
    /// The byte stored in the page entry.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// Parses an entry byte.
    pub fn from_wire(value: u8) -> Option<Self> {
        match value {
            0 => Some(PageKind::Zero),
            1 => Some(PageKind::Raw),
            2 => Some(PageKind::Delta),
            3 => Some(PageKind::Dedup),
            _ => None,
        }
    }
}

/// Page counts per [`PageKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    /// Zero-page markers.
    pub zero: u64,
    /// Raw pages.
    pub raw: u64,
    /// Delta pages.
    pub delta: u64,
    /// Dedup references.
    pub dedup: u64,
}

impl KindCounts {
    /// Total pages.
    pub fn total(&self) -> u64 {
        self.zero + self.raw + self.delta + self.dedup
    }

    pub fn bump(&mut self, kind: PageKind) {
        match kind {
            PageKind::Zero => self.zero += 1,
            PageKind::Raw => self.raw += 1,
            PageKind::Delta => self.delta += 1,
            PageKind::Dedup => self.dedup += 1,
        }
    }

    pub fn add(&mut self, other: &KindCounts) {
        self.zero += other.zero;
        self.raw += other.raw;
        self.delta += other.delta;
        self.dedup += other.dedup;
    }
}

/// Statistics of one encoded or decoded batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Encoding of the batch.
    pub encoding: Encoding,
    /// Pages in the batch.
    pub pages: u64,
    /// Pages per kind.
    pub kinds: KindCounts,
    /// Page bytes represented (pages × page size).
    pub raw_bytes: u64,
    /// Uncompressed body length.
    pub body_bytes: u64,
    /// Bytes of the encoded batch, header included (what goes on the wire).
    pub encoded_bytes: u64,
    /// Delta-base lookups that found the page in the sent-page cache (encoder, `Delta` only).
    pub cache_hits: u64,
    /// Delta-base lookups that did not (encoder, `Delta` only).
    pub cache_misses: u64,
    /// Cache evictions caused by this batch (encoder).
    pub cache_evictions: u64,
    /// CPU time of the calling thread spent on this batch.
    pub cpu_ns: u64,
    /// Wall-clock time spent on this batch.
    pub wall_ns: u64,
}

/// Cumulative statistics of one [`Encoding`] mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeStats {
    /// Batches.
    pub batches: u64,
    /// Pages.
    pub pages: u64,
    /// Page bytes represented.
    pub raw_bytes: u64,
    /// Wire bytes.
    pub encoded_bytes: u64,
    /// CPU time.
    pub cpu_ns: u64,
}

impl ModeStats {
    /// Page bytes minus wire bytes (negative if the encoding cost more than it saved).
    pub fn bytes_saved(&self) -> i64 {
        self.raw_bytes as i64 - self.encoded_bytes as i64
    }

    /// Page bytes per wire byte (0 when nothing was sent).
    pub fn ratio(&self) -> f64 {
        if self.encoded_bytes == 0 {
            0.0
        } else {
            self.raw_bytes as f64 / self.encoded_bytes as f64
        }
    }

    pub fn add(&mut self, other: &ModeStats) {
        self.batches += other.batches;
        self.pages += other.pages;
        self.raw_bytes += other.raw_bytes;
        self.encoded_bytes += other.encoded_bytes;
        self.cpu_ns += other.cpu_ns;
    }
}

/// Cumulative statistics of an encoder or decoder, for the migration summary. Encoders of
/// several shards are combined with [`CodecStats::merge`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecStats {
    /// Batches encoded/decoded as [`Encoding::Raw`].
    pub raw: ModeStats,
    /// Batches encoded/decoded as [`Encoding::Zstd`].
    pub zstd: ModeStats,
    /// Batches encoded/decoded as [`Encoding::Delta`].
    pub delta: ModeStats,
    /// Pages per kind, all modes.
    pub kinds: KindCounts,
    /// Delta-base cache hits.
    pub cache_hits: u64,
    /// Delta-base cache misses.
    pub cache_misses: u64,
    /// Cache evictions.
    pub cache_evictions: u64,
    /// CPU time, all modes.
    pub cpu_ns: u64,
    /// Wall-clock time, all modes.
    pub wall_ns: u64,
}

impl CodecStats {
    /// Accounts one batch.
    pub fn add_batch(&mut self, b: &BatchStats) {
        let m = self.mode_mut(b.encoding);
        m.batches += 1;
        m.pages += b.pages;
        m.raw_bytes += b.raw_bytes;
        m.encoded_bytes += b.encoded_bytes;
        m.cpu_ns += b.cpu_ns;
        self.kinds.add(&b.kinds);
        self.cache_hits += b.cache_hits;
        self.cache_misses += b.cache_misses;
        self.cache_evictions += b.cache_evictions;
        self.cpu_ns += b.cpu_ns;
        self.wall_ns += b.wall_ns;
    }

    /// Adds another set of totals (e.g. another shard's encoder).
    pub fn merge(&mut self, o: &CodecStats) {
        self.raw.add(&o.raw);
        self.zstd.add(&o.zstd);
        self.delta.add(&o.delta);
        self.kinds.add(&o.kinds);
        self.cache_hits += o.cache_hits;
        self.cache_misses += o.cache_misses;
        self.cache_evictions += o.cache_evictions;
        self.cpu_ns += o.cpu_ns;
        self.wall_ns += o.wall_ns;
    }

    /// Totals of one mode.
    pub fn mode(&self, e: Encoding) -> &ModeStats {
        match e {
            Encoding::Raw => &self.raw,
            Encoding::Zstd => &self.zstd,
            Encoding::Delta => &self.delta,
        }
    }

    fn mode_mut(&mut self, e: Encoding) -> &mut ModeStats {
        match e {
            Encoding::Raw => &mut self.raw,
            Encoding::Zstd => &mut self.zstd,
            Encoding::Delta => &mut self.delta,
        }
    }

    /// Totals over all modes.
    pub fn total(&self) -> ModeStats {
        let mut t = self.raw;
        t.add(&self.zstd);
        t.add(&self.delta);
        t
    }

    /// Page bytes minus wire bytes over all modes.
    pub fn bytes_saved(&self) -> i64 {
        self.total().bytes_saved()
    }

    /// Delta-base cache hit rate in 0..=1, or `None` before any lookup.
    pub fn cache_hit_rate(&self) -> Option<f64> {
        let lookups = self.cache_hits + self.cache_misses;
        (lookups > 0).then(|| self.cache_hits as f64 / lookups as f64)
    }
}
