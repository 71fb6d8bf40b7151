//! The real-data benchmark path end to end, cheaply: the VMM loads the data initrd
//! (`scripts/data-initrd.sh`, ~400 MiB of installed Debian files) with `--initrd`, the test
//! guest's `hot` workload finds it in the boot parameters and rewrites a hot set inside it
//! (16 MiB here, so that the migration converges whatever the engine's tuning; the
//! benchmark `data_migration` uses 128 MiB) while verifying all of it, a loopback migration succeeds, and the destination carries on
//! with the same data: its hot-set check passes and it completes a full checksum sweep of
//! the initrd after the switchover. Skipped (with the reason) only when the initrd cannot
//! be built because its packages cannot be fetched.

use std::time::{Duration, Instant};

use novacron_testsupport::bench::{data_initrd, DataInitrdError, MigrationSummary};
use novacron_testsupport::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn hot_workload_on_data_initrd_migrates_and_verifies() {
    let initrd = match data_initrd() {
        Ok(p) => p,
        Err(DataInitrdError::Unavailable(why)) => {
            eprintln!("SKIPPED hot_workload: the data initrd cannot be built here: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 300 << 20,
        "{} is only {size} bytes",
        initrd.display()
    );

    let dir = Scratch::new("hot");
    let g = guest();
    let mut src = Vmm::start(
        &dir,
        "src",
        &[
            "--kernel",
            g.to_str().expect("utf8 path"),
            "--initrd",
            initrd.to_str().expect("utf8 path"),
            "--cmdline",
            "workload=hot hot=16",
            "--memory",
            "512M",
        ],
    );
    let log = src.wait_for("CHECK PASS workload=hot", 0, T);
    // The guest found the whole initrd where the VMM put it, and the hot set inside it.
    let pages = field_values(&log, "HOT", "pages");
    let hot = field_values(&log, "HOT", "hot_pages");
    assert_eq!(
        pages,
        vec![size / 4096],
        "initrd pages seen by the guest:\n{log}"
    );
    assert_eq!(hot, vec![16 << 8], "hot-set pages:\n{log}");
    // It rewrites the hot set over and over.
    let log = src.wait_for("CHECK PASS", log.len(), T);
    let passes = field_values(&log, "PROGRESS", "passes");
    assert!(
        passes.last().is_some_and(|&p| p >= 2),
        "the hot set is not being rewritten:\n{log}"
    );

    let port = free_port("127.0.0.1");
    let mut dst = incoming(&dir, "dst", port, "512M");
    let to = format!("tcp:127.0.0.1:{port}");
    let (ok, out, err) = src.client(
        "migrate",
        &[
            "--to",
            &to,
            "--compression",
            "auto",
            "--downtime-ms",
            "500",
            "--auto-converge",
            "--verify",
            "full",
            "--timeout",
            "25",
        ],
    );
    assert!(ok, "migration failed: {err}");
    let summary: MigrationSummary =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary {out:?}: {e}"));
    assert!(summary.ok && summary.verified, "{out}");
    // Full verification checks every non-zero page's crc (the rest are checked to be zero);
    // the initrd's pages are nearly all non-zero.
    assert!(
        summary.verified_pages >= size / 4096 * 9 / 10,
        "verified {} non-zero pages, far fewer than the initrd's {}: {out}",
        summary.verified_pages,
        size / 4096
    );
    assert_eq!(src.wait_exit(T), Some(0), "source: {}", src.err());

    // After the switchover: the destination must complete a whole sweep of the data that
    // started after it resumed (the source may have been one sweep past its last report).
    let sweeps_before = field_values(&src.log(), "PROGRESS", "sweeps")
        .into_iter()
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + T;
    let mut from = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no full sweep after the switchover:\n{}",
            dst.log()
        );
        let log = dst.wait_for("CHECK PASS workload=hot", from, T);
        assert!(!log.contains("CHECK FAIL"), "{log}");
        assert!(
            !log.contains("READY"),
            "the destination booted again:\n{log}"
        );
        let sweeps = field_values(&log, "PROGRESS", "sweeps");
        if sweeps.last().is_some_and(|&s| s >= sweeps_before + 2) {
            break;
        }
        from = log.len();
    }
}
