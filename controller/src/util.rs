//! Small helpers shared by the controller's modules: clocks and name validation.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `s` is a valid VM or host name: 1-63 characters of `a-z A-Z 0-9 - _ .`, starting
/// with a letter or digit.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::valid_name("web-1.prod_a"));
        assert!(!super::valid_name(""));
        assert!(!super::valid_name("-x"));
        assert!(!super::valid_name("a b"));
        assert!(!super::valid_name(&"a".repeat(64)));
    }
}

/// A one-line digest of a VMM migration summary: total time, downtime, rounds, bytes on the
/// wire.
pub fn short_summary(s: &novacron_proto::agent::MigrationSummary) -> String {
    format!(
        "total {:.1} ms, downtime {:.1} ms, {} rounds, {:.1} MiB on the wire",
        s.total_ms,
        s.downtime_ms,
        s.rounds,
        s.wire_bytes as f64 / 1048576.0
    )
}

#[cfg(test)]
mod summary_tests {
    #[test]
    fn digest() {
        let s = super::short_summary(&novacron_proto::agent::MigrationSummary {
            total_ms: 105.9,
            downtime_ms: 15.96,
            rounds: 4,
            wire_bytes: 42860386,
            ..Default::default()
        });
        assert_eq!(
            s,
            "total 105.9 ms, downtime 16.0 ms, 4 rounds, 40.9 MiB on the wire"
        );
    }
}
