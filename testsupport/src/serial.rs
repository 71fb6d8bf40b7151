//! Reading the test guest's serial output: `key=<n>` fields of its report lines.

/// All values of `key=<n>` in the log's lines starting with `prefix`.
pub fn field_values(log: &str, prefix: &str, key: &str) -> Vec<u64> {
    let pat = format!("{key}=");
    log.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(pat.as_str()))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// The highest tick count reported so far.
pub fn last_ticks(log: &str) -> u64 {
    field_values(log, "PROGRESS", "ticks")
        .into_iter()
        .max()
        .unwrap_or(0)
}
