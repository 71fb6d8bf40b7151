//! The VMM's migration summary (`novacron_vmm_api::migration::MigrationSummary`) as the
//! agent API's `MigrationSummary` message.

use novacron_proto::agent as apb;
use novacron_vmm_api::migration::{MigrationSummary, RoundSummary};
use novacron_vmm_api::stats::{CodecStats, Encoding, KindCounts, ModeStats};

fn encoding(e: Encoding) -> apb::PageEncoding {
    match e {
        Encoding::Raw => apb::PageEncoding::Raw,
        Encoding::Zstd => apb::PageEncoding::Zstd,
        Encoding::Delta => apb::PageEncoding::Delta,
    }
}

fn kinds(k: &KindCounts) -> apb::PageKindCounts {
    apb::PageKindCounts {
        zero: k.zero,
        raw: k.raw,
        delta: k.delta,
        dedup: k.dedup,
    }
}

fn mode(m: &ModeStats) -> apb::EncodingStats {
    apb::EncodingStats {
        batches: m.batches,
        pages: m.pages,
        raw_bytes: m.raw_bytes,
        encoded_bytes: m.encoded_bytes,
        cpu_ns: m.cpu_ns,
    }
}

fn codec(c: &CodecStats) -> apb::CodecStats {
    apb::CodecStats {
        raw: Some(mode(&c.raw)),
        zstd: Some(mode(&c.zstd)),
        delta: Some(mode(&c.delta)),
        kinds: Some(kinds(&c.kinds)),
        cache_hits: c.cache_hits,
        cache_misses: c.cache_misses,
        cache_evictions: c.cache_evictions,
        cpu_ns: c.cpu_ns,
        wall_ns: c.wall_ns,
    }
}

fn round(r: &RoundSummary) -> apb::MigrationRound {
    apb::MigrationRound {
        round: r.round,
        encoding: encoding(r.encoding) as i32,
        pages_by_encoding: r
            .pages_by_encoding
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        pages: r.pages,
        zero_pages: r.zero_pages,
        bytes: r.bytes,
        ms: r.ms,
        dirty_pages: r.dirty_pages,
        dirty_rate: r.dirty_rate,
        throttle_pct: r.throttle_pct,
    }
}

/// The proto message of a VMM migration summary, field for field.
pub fn to_proto(s: &MigrationSummary) -> apb::MigrationSummary {
    apb::MigrationSummary {
        ok: s.ok,
        total_ms: s.total_ms,
        downtime_ms: s.downtime_ms,
        dest_downtime_ms: s.dest_downtime_ms,
        rounds: s.rounds,
        round_details: s.round_details.iter().map(round).collect(),
        zero_pages: s.zero_pages,
        wire_bytes: s.wire_bytes,
        memory_bytes: s.memory_bytes,
        throttle_pct: s.throttle_pct,
        verified: s.verified,
        codec: Some(codec(&s.codec)),
        bytes_saved: s.bytes_saved.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        cache_hit_rate: s.cache_hit_rate,
        encoder_cpu_ms: s.encoder_cpu_ms,
        verify_mode: s.verify_mode.name().to_string(),
        verify_ms: s.verify_ms,
        predicted_downtime_ms: s.predicted_downtime_ms,
        disk_bytes: s.disk_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_vmm_api::migration::VerifyMode;

    #[test]
    fn every_field_is_carried() {
        let mut s = MigrationSummary {
            ok: true,
            total_ms: 105.9,
            downtime_ms: 15.96,
            dest_downtime_ms: 3.5,
            rounds: 2,
            zero_pages: 11,
            wire_bytes: 42_860_386,
            memory_bytes: 256 << 20,
            throttle_pct: 20,
            verified: true,
            cache_hit_rate: Some(0.75),
            encoder_cpu_ms: 8.25,
            verify_mode: VerifyMode::Sampled,
            verify_ms: 1.25,
            predicted_downtime_ms: 2.5,
            disk_bytes: 8 << 20,
            ..Default::default()
        };
        s.bytes_saved.insert("zstd".into(), -12);
        s.codec.zstd.batches = 3;
        s.codec.kinds.dedup = 4;
        s.codec.cache_evictions = 5;
        s.codec.wall_ns = 6;
        let mut r = RoundSummary {
            round: 1,
            encoding: Encoding::Delta,
            pages: 100,
            zero_pages: 7,
            bytes: 4096,
            ms: 1.5,
            dirty_pages: 90,
            dirty_rate: 1234.5,
            throttle_pct: 10,
            ..Default::default()
        };
        r.pages_by_encoding.insert("delta".into(), 93);
        s.round_details = vec![RoundSummary::default(), r];
        let p = to_proto(&s);
        assert!(p.ok && p.verified);
        assert_eq!(
            (
                p.total_ms,
                p.downtime_ms,
                p.dest_downtime_ms,
                p.encoder_cpu_ms
            ),
            (105.9, 15.96, 3.5, 8.25)
        );
        assert_eq!(
            (
                p.rounds,
                p.zero_pages,
                p.wire_bytes,
                p.memory_bytes,
                p.throttle_pct
            ),
            (2, 11, 42_860_386, 256 << 20, 20)
        );
        assert_eq!(p.cache_hit_rate, Some(0.75));
        assert_eq!(
            (p.verify_mode.as_str(), p.verify_ms, p.predicted_downtime_ms),
            ("sampled", 1.25, 2.5)
        );
        assert_eq!(p.disk_bytes, 8 << 20);
        assert_eq!(p.bytes_saved.get("zstd"), Some(&-12));
        let c = p.codec.unwrap();
        assert_eq!(c.zstd.unwrap().batches, 3);
        assert_eq!(c.kinds.unwrap().dedup, 4);
        assert_eq!((c.cache_evictions, c.wall_ns), (5, 6));
        assert_eq!(p.round_details.len(), 2);
        let r = &p.round_details[1];
        assert_eq!(r.encoding, apb::PageEncoding::Delta as i32);
        assert_eq!(
            (
                r.round,
                r.pages,
                r.zero_pages,
                r.bytes,
                r.dirty_pages,
                r.throttle_pct
            ),
            (1, 100, 7, 4096, 90, 10)
        );
        assert_eq!((r.ms, r.dirty_rate), (1.5, 1234.5));
        assert_eq!(r.pages_by_encoding.get("delta"), Some(&93));
    }
}
