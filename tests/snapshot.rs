//! Snapshot to disk and restore in a new VMM process, full and diff, with the `ab` workload's
//! self-check passing after restore and its tick counter carrying on.

use novacron_testsupport::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn full_and_diff_snapshots_restore_a_running_ab_guest() {
    let dir = Scratch::new("snap");
    let mut v = Vmm::boot_guest(&dir, "src", "workload=ab mib=64", "256M");
    v.wait_for("CHECK PASS", 0, T);
    let full = dir.path("full");
    let diff = dir.path("diff");
    let (ok, out, err) = v.client("snapshot", &["--to", full.to_str().expect("utf8")]);
    assert!(ok, "snapshot: {err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(info["kind"], "full");
    // Sparse: only the ~16k touched pages are written, not 256 MiB.
    let pages = info["pages"].as_u64().unwrap_or(0);
    assert!(pages > 16_000 && pages < 20_000, "{info}");
    // The guest keeps running after a snapshot.
    let len = v.log().len();
    v.wait_for("CHECK PASS", len, T);
    let (ok, out, err) = v.client(
        "snapshot",
        &["--to", diff.to_str().expect("utf8"), "--diff"],
    );
    assert!(ok, "diff snapshot: {err}");
    let dinfo: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(dinfo["kind"], "diff");
    let snap_ticks = last_ticks(&v.log());
    let (ok, _, _) = v.client("shutdown", &[]);
    assert!(ok);
    assert_eq!(v.wait_exit(T), Some(0));
    let blocks = std::fs::metadata(full.join("memory.bin"))
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(u64::MAX);
    assert!(
        blocks < 100 << 20,
        "memory.bin should be sparse, uses {blocks} bytes"
    );

    for (name, snap) in [("full", &full), ("diff", &diff)] {
        let mut r = Vmm::start(
            &dir,
            &format!("restore-{name}"),
            &["--restore", snap.to_str().expect("utf8")],
        );
        let log = r.wait_for("CHECK PASS", 0, T);
        let log = r.wait_for("PROGRESS", log.len(), T);
        assert!(
            !log.contains("READY"),
            "{name}: restore must not reboot:\n{log}"
        );
        assert!(!log.contains("CHECK FAIL"), "{name}: {log}");
        if name == "diff" {
            assert!(
                last_ticks(&log) > snap_ticks,
                "{name}: ticks should continue past {snap_ticks}:\n{log}"
            );
        }
    }
}

#[test]
fn diff_snapshot_without_base_and_corrupt_state_are_refused() {
    let dir = Scratch::new("snapbad");
    let mut v = Vmm::boot_guest(&dir, "src", "workload=idle", "64M");
    v.wait_for("READY", 0, T);
    let d = dir.path("d");
    let (ok, _, err) = v.client("snapshot", &["--to", d.to_str().expect("utf8"), "--diff"]);
    assert!(!ok && err.contains("take a full snapshot first"), "{err}");
    let (ok, _, err) = v.client("snapshot", &["--to", d.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    // Corrupt the state: the restore must refuse with a checksum error.
    let sp = d.join("state.bin");
    let mut raw = std::fs::read(&sp).expect("state");
    let last = raw.len() - 10;
    raw[last] ^= 0x55;
    std::fs::write(&sp, raw).expect("write");
    let out = std::process::Command::new(vmm())
        .args(["run", "--serial", "none", "--restore"])
        .arg(&d)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "{err}");
}
