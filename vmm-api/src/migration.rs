//! Migration as users ask for it (`migrate` options, from the CLI, the control API and the
//! agent) and as it reports back (the summary `migrate` answers with).

use crate::stats::{CodecStats, Encoding};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An option of `migrate` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

/// How pages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Raw pages (zero pages still elided).
    #[default]
    None,
    /// zstd over batches.
    Zstd,
    /// XOR delta against what the destination holds, then zstd.
    Delta,
    /// Chosen per round from measured bandwidth and encoder throughput.
    Auto,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "raw" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            "delta" | "xbzrle" => Ok(Compression::Delta),
            "auto" => Ok(Compression::Auto),
            other => Err(format!(
                "unknown compression '{other}': expected none, zstd, delta or auto"
            )),
        }
    }
}

impl Compression {
    /// The fixed encoding, if not auto.
    pub fn fixed(self) -> Option<Encoding> {
        match self {
            Compression::None => Some(Encoding::Raw),
            Compression::Zstd => Some(Encoding::Zstd),
            Compression::Delta => Some(Encoding::Delta),
            Compression::Auto => None,
        }
    }
}

/// How the destination checks the final memory against the source's before it resumes.
///
/// * `off`: only the per-page crc32 of every batch (catches corruption in transit, not a
///   page the source never sent).
/// * `sampled` (the management plane's default): crc32 of every page of the final pass
///   plus a random sample of the others ([`MigrateOptions::verify_sample_pages`]), computed
///   on several threads while the guest is paused: bounded downtime; catches a page missed
///   by dirty tracking with the probability the sample covers it.
/// * `full`: crc32 of every non-zero page and a zero check of every other one: catches any
///   difference, at the cost of a pass over all of guest memory while paused (tests and
///   debugging).
///
/// Accepts `true` (= full) and `false` (= off) for compatibility with older callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// No verification beyond the batches' checksums.
    #[default]
    Off,
    /// The final pass and a sample of the rest.
    Sampled,
    /// Every page.
    Full,
}

impl VerifyMode {
    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            VerifyMode::Off => "off",
            VerifyMode::Sampled => "sampled",
            VerifyMode::Full => "full",
        }
    }
}

impl std::str::FromStr for VerifyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "none" | "false" => Ok(VerifyMode::Off),
            "sampled" => Ok(VerifyMode::Sampled),
            "full" | "true" => Ok(VerifyMode::Full),
            other => Err(format!(
                "unknown verification mode '{other}': expected off, sampled or full"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for VerifyMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Bool(bool),
            Name(String),
        }
        match Wire::deserialize(d)? {
            Wire::Bool(true) => Ok(VerifyMode::Full),
            Wire::Bool(false) => Ok(VerifyMode::Off),
            Wire::Name(n) => n.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Options of one outgoing migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateOptions {
    /// Destination, `tcp:HOST:PORT`.
    pub to: String,
    /// Downtime target: switch over once the final pass is estimated to take less.
    #[serde(default = "default_downtime")]
    pub downtime_ms: u64,
    /// Bandwidth cap in bytes per second.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// Give up (or, with auto-converge, keep throttling) after this many seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Throttle the vCPUs step by step when precopy does not converge.
    #[serde(default)]
    pub auto_converge: bool,
    /// Page compression.
    #[serde(default)]
    pub compression: Compression,
    /// How the final memory is checked before the destination resumes.
    #[serde(default)]
    pub verify: VerifyMode,
    /// Pages outside the final pass that `sampled` verification checks (0 = automatic).
    #[serde(default)]
    pub verify_sample_pages: u64,
    /// The migration id the destination was started with (`--migration-id`); empty for
    /// a destination started without one.
    #[serde(default)]
    pub migration_id: String,
    /// Test only: leave out of this round its lowest-numbered non-zero page, and keep that
    /// page out of every later round and the final pass, so the destination holds a stale
    /// copy and tests can show which verification mode catches it. Never set it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_skip_page_round: Option<u32>,
    /// Bytes of sent-page cache for delta encoding (0 = automatic).
    #[serde(default)]
    pub cache_bytes: u64,
    /// Encoder threads (0 = automatic, see [`MigrateOptions::encoder_threads`]).
    #[serde(default)]
    pub encoder_threads: u32,
    /// The source's half of the migration's one-time credential; required by a `tls:`
    /// destination, refused with `tcp:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MigrationTls>,
}

/// One VMM's half of a migration's one-time credential (PEM text): the migration's own CA
/// certificate, this VMM's certificate signed by it, and this VMM's private key. The
/// destination accepts only a client whose certificate chains to `ca_pem`; the source
/// accepts only a server that does. The controller issues one per migration
/// (`novacron_controller::migration_tls`); `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationTls {
    /// The migration's CA certificate (PEM).
    pub ca_pem: String,
    /// This VMM's certificate, signed by that CA (PEM).
    pub cert_pem: String,
    /// This VMM's private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for MigrationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Where a VMM reads its half of a migration credential from (`--migration-tls-ca`,
/// `--migration-tls-cert`, `--migration-tls-key`): PEM files, the key readable by its
/// owner only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The migration's CA certificate.
    pub ca: std::path::PathBuf,
    /// This VMM's certificate.
    pub cert: std::path::PathBuf,
    /// This VMM's private key.
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Reads the three files.
    pub fn read(&self) -> Result<MigrationTls, OptionsError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| {
                OptionsError(format!(
                    "cannot read the migration TLS {what} {}: {e}",
                    p.display()
                ))
            })
        };
        Ok(MigrationTls {
            ca_pem: read("CA certificate", &self.ca)?,
            cert_pem: read("certificate", &self.cert)?,
            key_pem: read("key", &self.key)?,
        })
    }
}

fn default_downtime() -> u64 {
    2
}

fn default_timeout() -> u64 {
    300
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            to: String::new(),
            downtime_ms: default_downtime(),
            bandwidth: None,
            timeout_s: default_timeout(),
            auto_converge: false,
            compression: Compression::None,
            verify: VerifyMode::Off,
            verify_sample_pages: 0,
            migration_id: String::new(),
            test_skip_page_round: None,
            cache_bytes: 0,
            encoder_threads: 0,
            tls: None,
        }
    }
}

/// Most encoder threads a migration may ask for.
pub const MAX_ENCODER_THREADS: u32 = 64;

impl MigrateOptions {
    /// The number of encoder threads to run: `encoder_threads`, or with 0 none at all for
    /// `--compression none` (0: raw batches are encoded in the sender's thread; they are
    /// bound by the page copies, and hand-offs to other threads cost more than they save,
    /// `cargo bench --bench encoder_threads`) and otherwise one per host core up to 4
    /// (compression scales with cores; beyond 4 a migration stream rarely has the link to
    /// feed).
    pub fn encoder_threads(&self) -> Result<u32, OptionsError> {
        match self.encoder_threads {
            0 if self.compression == Compression::None => Ok(0),
            0 => Ok(std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .clamp(1, 4)),
            n if n > MAX_ENCODER_THREADS => Err(OptionsError(format!(
                "encoder_threads {n} is too many: at most {MAX_ENCODER_THREADS}"
            ))),
            n => Ok(n),
        }
    }
}

/// Slowest `--bandwidth` accepted (bytes/s): 1 kbit/s. Anything slower is surely a typo
/// (a unit missing); slow links above it are accepted, and the timeout, enforced inside
/// rounds and inside the pacer's waits, bounds how long they may take.
pub const MIN_BANDWIDTH: u64 = 125;
/// Pages `sampled` verification checks besides the final pass when
/// [`MigrateOptions::verify_sample_pages`] is 0.
pub const DEFAULT_VERIFY_SAMPLE_PAGES: u64 = 1024;
/// Largest downtime target (ms).
pub const MAX_DOWNTIME_MS: u64 = 60_000;
/// Largest timeout (s): one day.
pub const MAX_TIMEOUT_S: u64 = 86_400;
/// Most pages `sampled` verification may be asked to check besides the final pass.
pub const MAX_VERIFY_SAMPLE_PAGES: u64 = 1 << 26;

impl MigrateOptions {
    /// Checks the options against the guest (`guest_bytes` of RAM) and the host
    /// (`host_available_bytes` of available memory, e.g. [`mem_available_bytes`]; 0 =
    /// unknown, not checked) before anything is sent, so a bad option never pauses the
    /// guest: bandwidth 0 or below [`MIN_BANDWIDTH`] (1 kbit/s), a downtime above
    /// [`MAX_DOWNTIME_MS`] ms (0 is accepted: switch over only when nothing is dirty), a
    /// timeout outside 1..=[`MAX_TIMEOUT_S`] s, a delta cache larger than 4 × guest RAM or
    /// half the host's available memory, a verification sample above
    /// [`MAX_VERIFY_SAMPLE_PAGES`], too many encoder threads.
    pub fn validate(
        &self,
        guest_bytes: u64,
        host_available_bytes: u64,
    ) -> Result<(), OptionsError> {
        match self.bandwidth {
            Some(0) => {
                return Err(OptionsError(
                    "bandwidth 0 would never send anything: give a rate (e.g. 100mbit) or leave it unset for no limit".into(),
                ))
            }
            Some(b) if b < MIN_BANDWIDTH => {
                return Err(OptionsError(format!(
                    "bandwidth {b} bytes/s is below the minimum of {MIN_BANDWIDTH} bytes/s (1 kbit/s): check the unit (e.g. 100mbit)"
                )))
            }
            _ => {}
        }
        if self.downtime_ms > MAX_DOWNTIME_MS {
            return Err(OptionsError(format!(
                "downtime_ms {} is out of range: expected 0..={MAX_DOWNTIME_MS}",
                self.downtime_ms
            )));
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(OptionsError(format!(
                "timeout_s {} is out of range: expected 1..={MAX_TIMEOUT_S}",
                self.timeout_s
            )));
        }
        if self.cache_bytes > 0 {
            let per_guest = guest_bytes.saturating_mul(4);
            if self.cache_bytes > per_guest {
                return Err(OptionsError(format!(
                    "cache size {} bytes is more than 4 x the guest's {guest_bytes} bytes of RAM ({per_guest} bytes): a larger cache cannot hold more pages",
                    self.cache_bytes
                )));
            }
            if host_available_bytes > 0 && self.cache_bytes > host_available_bytes / 2 {
                return Err(OptionsError(format!(
                    "cache size {} bytes is more than half of the host's available memory ({host_available_bytes} bytes available, at most {} allowed): use a smaller --cache-size",
                    self.cache_bytes,
                    host_available_bytes / 2
                )));
            }
        }
        if self.verify_sample_pages > MAX_VERIFY_SAMPLE_PAGES {
            return Err(OptionsError(format!(
                "verify_sample_pages {} is too many: at most {MAX_VERIFY_SAMPLE_PAGES} (use verify full to check every page)",
                self.verify_sample_pages
            )));
        }
        self.encoder_threads().map(|_| ())
    }

    /// Pages `sampled` verification checks besides the final pass: `verify_sample_pages`,
    /// or [`DEFAULT_VERIFY_SAMPLE_PAGES`] for 0.
    pub fn verify_sample(&self) -> u64 {
        match self.verify_sample_pages {
            0 => DEFAULT_VERIFY_SAMPLE_PAGES,
            n => n,
        }
    }
}

/// The host's available memory (`MemAvailable` of `/proc/meminfo`, bytes), for
/// [`MigrateOptions::validate`].
pub fn mem_available_bytes() -> Result<u64, OptionsError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| OptionsError(format!("cannot read /proc/meminfo: {e}")))?;
    parse_mem_available(&text)
        .ok_or_else(|| OptionsError("/proc/meminfo has no MemAvailable line".into()))
}

/// The `MemAvailable` line of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// One precopy round in the summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundSummary {
    /// Round number (0 = full pass; the last one is the final pass with vCPUs paused).
    pub round: u32,
    /// Encoding that carried most of the round's pages.
    pub encoding: Encoding,
    /// Pages per encoding (`auto` may switch encodings inside a round).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pages_by_encoding: std::collections::BTreeMap<String, u64>,
    /// Pages sent (including zero markers).
    pub pages: u64,
    /// Zero pages among them (or elided in round 0).
    pub zero_pages: u64,
    /// Bytes put on the wire.
    pub bytes: u64,
    /// Duration (ms).
    pub ms: f64,
    /// Pages found dirty when the round started.
    pub dirty_pages: u64,
    /// Dirty rate measured over the previous round (pages/s).
    pub dirty_rate: f64,
    /// vCPU throttle in effect (percent of time paused).
    pub throttle_pct: u32,
    /// Downtime the final pass would have taken had it followed this round (ms; 0 for the
    /// final pass itself).
    #[serde(default)]
    pub predicted_downtime_ms: f64,
}

/// What `migrate` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrationSummary {
    /// Success.
    pub ok: bool,
    /// Total time from start to destination confirmation (ms).
    pub total_ms: f64,
    /// Source-side downtime: vCPUs paused to destination confirmation (ms).
    pub downtime_ms: f64,
    /// Destination-side downtime: switchover received to vCPUs running (ms).
    pub dest_downtime_ms: f64,
    /// Number of rounds, final pass included.
    pub rounds: u32,
    /// Per-round details.
    pub round_details: Vec<RoundSummary>,
    /// Pages elided or sent as zero markers.
    pub zero_pages: u64,
    /// Total bytes on the wire (frames included).
    pub wire_bytes: u64,
    /// Guest RAM bytes.
    pub memory_bytes: u64,
    /// Bytes of the disks the stream copied (writable, not shared; their sizes, holes
    /// included): their blocks are in the unit and wire figures.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Highest throttle applied (percent).
    pub throttle_pct: u32,
    /// Whether the destination verified the final memory page by page.
    pub verified: bool,
    /// The verification mode used.
    #[serde(default)]
    pub verify_mode: VerifyMode,
    /// Time the source took to compute the verification records while the guest was
    /// paused (ms, on several threads; part of the downtime; the destination's check is in
    /// `dest_downtime_ms`).
    #[serde(default)]
    pub verify_ms: f64,
    /// The final pass's downtime as the convergence model predicted it when the switchover
    /// was decided (ms; compare with `downtime_ms` and `dest_downtime_ms`).
    #[serde(default)]
    pub predicted_downtime_ms: f64,
    /// Non-zero pages whose crc32 the destination checked against the source's (0 without
    /// verification); every other page was checked to be zero.
    #[serde(default)]
    pub verified_pages: u64,
    /// Encoder statistics: bytes saved per encoding, cache hit rate, CPU time.
    pub codec: CodecStats,
    /// Bytes saved per encoding (raw page bytes minus encoded bytes).
    pub bytes_saved: std::collections::BTreeMap<String, i64>,
    /// Delta cache hit rate (0..1), if delta was used.
    pub cache_hit_rate: Option<f64>,
    /// Encoder CPU time (ms).
    pub encoder_cpu_ms: f64,
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn opts() -> MigrateOptions {
        MigrateOptions {
            to: "tcp:127.0.0.1:1".into(),
            ..MigrateOptions::default()
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn defaults_pass() {
        assert_eq!(opts().validate(GIB, 8 * GIB), Ok(()));
        assert_eq!(opts().validate(GIB, 0), Ok(()));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_numbers() {
        let e = |o: MigrateOptions| o.validate(GIB, 8 * GIB).unwrap_err().0;
        assert!(e(MigrateOptions {
            bandwidth: Some(0),
            ..opts()
        })
        .contains("bandwidth 0"));
        assert!(e(MigrateOptions {
            bandwidth: Some(100),
            ..opts()
        })
        .contains("below the minimum"));
        // 8 kbit/s is slow but accepted: the timeout bounds it.
        assert_eq!(
            MigrateOptions {
                bandwidth: Some(1000),
                ..opts()
            }
            .validate(GIB, 0),
            Ok(())
        );
        assert_eq!(
            MigrateOptions {
                bandwidth: Some(MIN_BANDWIDTH),
                ..opts()
            }
            .validate(GIB, 0),
            Ok(())
        );
        assert_eq!(
            MigrateOptions {
                downtime_ms: 0,
                ..opts()
            }
            .validate(GIB, 0),
            Ok(())
        );
        assert!(e(MigrateOptions {
            downtime_ms: 60_001,
            ..opts()
        })
        .contains("0..=60000"));
        assert!(e(MigrateOptions {
            timeout_s: 0,
            ..opts()
        })
        .contains("timeout_s 0"));
        assert!(e(MigrateOptions {
            timeout_s: 86_401,
            ..opts()
        })
        .contains("timeout_s"));
        assert!(e(MigrateOptions {
            verify_sample_pages: u64::MAX,
            ..opts()
        })
        .contains("verify_sample_pages"));
        assert!(e(MigrateOptions {
            encoder_threads: 65,
            ..opts()
        })
        .contains("too many"));
    }

    #[test]
    fn a_cache_larger_than_the_host_can_give_is_refused() {
        // `--compression delta --cache-size 64G` on a 23 GiB host with a 32 GiB guest.
        let o = MigrateOptions {
            compression: Compression::Delta,
            cache_bytes: 64 * GIB,
            ..opts()
        };
        let e = o.validate(32 * GIB, 23 * GIB).unwrap_err().0;
        assert!(e.contains("half of the host's available memory"), "{e}");
        assert!(e.contains(&(64 * GIB).to_string()), "{e}");
        // Larger than 4 x the guest.
        let e = o.validate(GIB, 1 << 40).unwrap_err().0;
        assert!(e.contains("4 x the guest"), "{e}");
        // Unknown host memory: only the guest bound applies.
        assert_eq!(o.validate(32 * GIB, 0), Ok(()));
    }

    #[test]
    fn mem_available_is_parsed_in_bytes() {
        let text = "MemTotal:       32768000 kB\nMemFree:  100 kB\nMemAvailable:   24117248 kB\n";
        assert_eq!(parse_mem_available(text), Some(24_117_248 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
        // The real file of this host parses.
        assert!(mem_available_bytes().is_ok_and(|b| b > 0));
    }

    #[test]
    fn the_sample_size_defaults_to_1024() {
        assert_eq!(opts().verify_sample(), DEFAULT_VERIFY_SAMPLE_PAGES);
        let o = MigrateOptions {
            verify_sample_pages: 7,
            ..opts()
        };
        assert_eq!(o.verify_sample(), 7);
    }
}
