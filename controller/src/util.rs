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

/// A one-line digest of a VMM migration summary (JSON): total time, downtime, rounds, bytes
/// on the wire. Anything unparsable is returned as is.
pub fn short_summary(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_string();
    };
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let mut parts = Vec::new();
    if let Some(t) = num("total_ms") {
        parts.push(format!("total {t:.1} ms"));
    }
    if let Some(d) = num("downtime_ms") {
        parts.push(format!("downtime {d:.1} ms"));
    }
    if let Some(r) = num("rounds") {
        parts.push(format!("{r} rounds"));
    }
    if let Some(b) = num("wire_bytes").or_else(|| num("bytes")) {
        parts.push(format!("{:.1} MiB on the wire", b / 1048576.0));
    }
    if parts.is_empty() {
        json.to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod summary_tests {
    #[test]
    fn digest() {
        let s = super::short_summary(
            r#"{"total_ms":105.9,"downtime_ms":15.96,"rounds":4,"wire_bytes":42860386}"#,
        );
        assert_eq!(
            s,
            "total 105.9 ms, downtime 16.0 ms, 4 rounds, 40.9 MiB on the wire"
        );
        assert_eq!(super::short_summary("x"), "x");
    }
}
