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

/// A snapshot captures the writable disk with the memory: the guest wrote its pattern, the
/// disk is then overwritten behind its back, and restoring brings the disk back to the
/// snapshot point (byte for byte), while a read-only disk is neither captured nor touched.
#[test]
fn snapshot_captures_the_writable_disk_and_restore_puts_it_back() {
    use std::os::unix::fs::FileExt;
    let dir = Scratch::new("snap-disk");
    let disk = dir.path("disk.img");
    let ro = dir.path("ro.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(32 << 20))
        .expect("disk");
    std::fs::write(&ro, vec![0x11u8; 1 << 20]).expect("ro disk");
    let g = guest();
    let (d, r) = (
        disk.to_str().expect("utf8").to_string(),
        format!("{},ro", ro.display()),
    );
    let mut v = Vmm::start(
        &dir,
        "src",
        &[
            "--kernel",
            g.to_str().expect("utf8"),
            "--cmdline",
            "workload=blk sector=4096 sectors=4096 seed=9",
            "--memory",
            "64M",
            "--disk",
            &d,
            "--disk",
            &r,
        ],
    );
    v.wait_for("DONE workload=blk", 0, T);
    let at_snapshot = std::fs::read(&disk).expect("read disk");
    let snap = dir.path("snap");
    let (ok, out, err) = v.client("snapshot", &["--to", snap.to_str().expect("utf8")]);
    assert!(ok, "snapshot: {err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let disks = info["disks"].as_array().cloned().unwrap_or_default();
    assert_eq!(disks.len(), 1, "only the writable disk is captured: {info}");
    assert_eq!(disks[0]["index"], 0, "{info}");
    assert_eq!(disks[0]["size"], 32 << 20, "{info}");
    let captured = snap.join("disk-0.img");
    assert!(std::fs::read(&captured).expect("captured disk") == at_snapshot);
    let used = std::fs::metadata(&captured)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(u64::MAX);
    assert!(used < 8 << 20, "the capture should be sparse: {used} bytes");
    let (ok, _, _) = v.client("shutdown", &[]);
    assert!(ok);
    assert_eq!(v.wait_exit(T), Some(0));
    // Later writes: the pattern region and a region the guest never wrote.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open disk");
    f.write_all_at(&[0xee; 1 << 20], 4096 * 512)
        .expect("overwrite");
    f.write_all_at(&[0xdd; 4096], 20 << 20)
        .expect("write elsewhere");
    drop(f);
    let snap_s = snap.to_str().expect("utf8");
    let restore_args = [
        "--restore",
        snap_s,
        "--memory",
        "64M",
        "--disk",
        &d,
        "--disk",
        &r,
    ];
    let mut restored = Vmm::start(&dir, "restored", &restore_args);
    // The idle guest prints nothing after restore: wait for the API to answer.
    let deadline = std::time::Instant::now() + T;
    let (ok, out, err) = loop {
        let r = restored.client("info", &[]);
        if r.0 || std::time::Instant::now() > deadline || !restored.alive() {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ok, "info: {err}\n{}", restored.err());
    assert!(out.contains("running"), "{out}");
    assert!(
        std::fs::read(&disk).expect("read disk") == at_snapshot,
        "the disk is not back at the snapshot point"
    );
    assert!(std::fs::read(&ro).expect("ro") == vec![0x11u8; 1 << 20]);
    let (ok, _, _) = restored.client("shutdown", &[]);
    assert!(ok);
    assert_eq!(restored.wait_exit(T), Some(0));

    // Onto a disk of another size: refused, naming the sizes.
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("resize");
    let mut wrong = Vmm::start(&dir, "wrong", &restore_args);
    assert!(wrong.wait_exit(T).is_some_and(|c| c != 0));
    assert!(
        wrong.err().contains("cannot be restored onto these disks"),
        "{}",
        wrong.err()
    );
}
