//! Migration across a slow link: the test guest's `ab`, `rand` and `fill` workloads migrate
//! through the userspace WAN relay (bandwidth cap + delay) with every page encoding and pass
//! their self-checks on the destination; a byte flipped in transit is caught and the source
//! keeps running.

use novacron_testsupport::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn relay(to: u16, extra: &[&str]) -> RelayProcess {
    RelayProcess::to_local_port(to, extra)
}

fn migrate_through_relay(workload: &str, encoding: &str) -> serde_json::Value {
    migrate_through_relay_with(workload, encoding, &[])
}

fn migrate_through_relay_with(workload: &str, encoding: &str, extra: &[&str]) -> serde_json::Value {
    let tag = format!(
        "wan-{}-{encoding}",
        workload.split_whitespace().next().unwrap_or("w")
    );
    let dir = Scratch::new(&tag);
    let (mut src, mut dst, port) = migration_pair(&dir, workload, "64M", "64M");
    let r = relay(port, &["--rate", "24mbit", "--rtt-ms", "20"]);
    let to = format!("tcp:127.0.0.1:{}", r.port());
    let mut args = vec![
        "--to",
        &to,
        "--compression",
        encoding,
        "--verify",
        "--downtime-ms",
        "3000",
        "--timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = src.client("migrate", &args);
    assert!(ok, "{tag}: migration failed: {err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("summary JSON");
    assert_eq!(summary["verified"], true, "{tag}: {summary}");
    let checked = summary["verified_pages"].as_u64().unwrap_or(0);
    let pages = summary["memory_bytes"].as_u64().unwrap_or(0) / 4096;
    assert!(
        checked > 0 && checked <= pages,
        "{tag}: destination checked {checked} of {pages} pages: {summary}"
    );
    let log = dst.wait_for("CHECK PASS", 0, T);
    let log = dst.wait_for("CHECK PASS", log.len(), T);
    assert!(!log.contains("CHECK FAIL"), "{tag}: {log}");
    assert_eq!(
        src.wait_exit(T),
        Some(0),
        "{tag}: source should hand over: {}",
        src.err()
    );
    summary
}

const WORKLOADS: [&str; 3] = [
    "workload=ab mib=4",
    "workload=rand mib=4 rate=500 bytes=32",
    "workload=fill mib=4 hot=1 rate=500",
];

#[test]
fn every_workload_migrates_with_none_and_zstd() {
    for w in WORKLOADS {
        for e in ["none", "zstd"] {
            migrate_through_relay(w, e);
        }
    }
}

#[test]
fn every_workload_migrates_with_delta_and_auto() {
    for w in WORKLOADS {
        for e in ["delta", "auto"] {
            let s = migrate_through_relay(w, e);
            if e == "delta" {
                assert!(
                    s["codec"]["delta"]["batches"].as_u64().unwrap_or(0) > 0,
                    "{s}"
                );
            }
        }
    }
}

#[test]
fn four_encoder_threads_deliver_every_page_and_auto_compresses_a_slow_link() {
    // Four shards, each with its own cache slice, their batches interleaved on the wire:
    // `--verify` checks every page's crc32 at the destination before it resumes.
    let s = migrate_through_relay_with(
        "workload=fill mib=16 hot=4 rate=2000",
        "auto",
        &["--encoder-threads", "4"],
    );
    let delta_pages = s["codec"]["kinds"]["delta"].as_u64().unwrap_or(0);
    assert!(delta_pages > 0, "rewritten pages should go as deltas: {s}");
    // 24 Mbit/s is far below what the encoders can fill: auto must compress every round.
    let rounds = s["round_details"].as_array().expect("rounds");
    assert!(!rounds.is_empty(), "the summary lists no rounds: {s}");
    for r in rounds {
        let by = &r["pages_by_encoding"];
        let raw = by["raw"].as_u64().unwrap_or(0);
        let delta = by["delta"].as_u64().unwrap_or(0);
        assert!(delta >= raw, "auto sent raw pages over 24 Mbit/s: {r}");
    }
}

#[test]
fn delta_sends_far_fewer_bytes_than_none_for_ab() {
    let none = migrate_through_relay("workload=ab mib=4", "none");
    let delta = migrate_through_relay("workload=ab mib=4", "delta");
    let (n, d) = (
        none["wire_bytes"].as_f64().unwrap_or(0.0),
        delta["wire_bytes"].as_f64().unwrap_or(f64::MAX),
    );
    assert!(d * 3.0 < n, "delta {d} bytes vs none {n} bytes");
}

#[test]
fn corrupted_delta_stream_is_caught_and_source_keeps_running() {
    let dir = Scratch::new("wan-corrupt");
    let (mut src, mut dst, port) =
        migration_pair(&dir, "workload=fill mib=8 hot=2 rate=500", "64M", "64M");
    let r = relay(
        port,
        &[
            "--rate",
            "24mbit",
            "--rtt-ms",
            "20",
            "--flip-byte-at",
            "300000",
        ],
    );
    let to = format!("tcp:127.0.0.1:{}", r.port());
    let (ok, _, err) = src.client("migrate", &["--to", &to, "--compression", "delta"]);
    assert!(!ok, "corrupted stream must not migrate");
    assert!(err.contains("still running here"), "{err}");
    // Status 1: a failed incoming migration (vmm/API.md), within T.
    assert_eq!(dst.wait_exit(T), Some(1), "{}", dst.err());
    assert!(dst.err().contains("crc32"), "{}", dst.err());
    src.assert_still_passing();
}

#[test]
fn non_converging_migration_says_what_it_sent_and_leaves_the_dirty_rate() {
    let dir = Scratch::new("wan-timeout");
    let (mut src, _dst, port) = migration_pair(&dir, "workload=ab mib=2", "64M", "64M");
    // 2 MiB of raw pages take ~2 s at 8 Mbit/s, while ab rewrites them all continuously:
    // the timeout (enforced inside rounds) ends the first dirty round, after round 0 has
    // measured the dirty rate.
    let r = relay(port, &["--rate", "8mbit", "--rtt-ms", "20"]);
    let to = format!("tcp:127.0.0.1:{}", r.port());
    let t0 = std::time::Instant::now();
    let (ok, _, err) = src.client("migrate", &["--to", &to, "--timeout", "4"]);
    assert!(!ok, "ab over 8 Mbit/s with raw pages must not converge");
    assert!(
        err.contains("did not converge within 4 s")
            && err.contains("MiB sent")
            && err.contains("achievable downtime"),
        "{err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "the timeout is enforced inside rounds: answered after {:?}",
        t0.elapsed()
    );
    assert!(src.alive());
    let (ok, out, err) = src.client("info", &[]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("info JSON");
    assert_eq!(info["state"], "running", "{info}");
    assert!(
        info["dirty_pages_per_sec"].as_u64().unwrap_or(0) > 0,
        "the rounds measured a dirty rate: {info}"
    );
    src.assert_still_passing();
}
