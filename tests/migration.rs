//! Live migration between two real VMM processes over loopback TCP, with the test guest's
//! self-checking workloads, plus the fault cases: the destination dies, a byte is corrupted
//! in transit, the destination is incompatible. In every failure the source keeps running.

use novacron_testsupport::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn migrate(src: &Vmm, port: u16, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let to = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--to", to.as_str()];
    args.extend_from_slice(extra);
    let (ok, out, err) = src.client("migrate", &args);
    let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (ok, v, err)
}

/// Asserts the source guest is still alive and making progress after a failed migration.
fn source_keeps_running(src: &mut Vmm) {
    assert!(src.alive(), "source VMM died: {}", src.err());
    let (ok, out, err) = src.client("info", &[]);
    assert!(ok, "info: {err}");
    assert!(out.contains("\"running\""), "source not running: {out}");
    src.assert_still_passing();
}

#[test]
fn ab_guest_migrates_and_keeps_passing() {
    let dir = Scratch::new("mig-ab");
    let (mut src, mut dst, port) = migration_pair(&dir, "workload=ab mib=64", "256M", "256M");
    let (ok, summary, err) = migrate(&src, port, &["--verify"]);
    assert!(ok, "migration failed: {err}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        summary["verified"], true,
        "destination memory was not verified page by page"
    );
    let checked = summary["verified_pages"].as_u64().unwrap_or(0);
    let pages = summary["memory_bytes"].as_u64().unwrap_or(0) / 4096;
    assert!(
        checked > 0 && checked <= pages,
        "destination checked {checked} of {pages} pages: {summary}"
    );
    assert!(summary["rounds"].as_u64().unwrap_or(0) >= 2, "{summary}");
    assert!(
        summary["wire_bytes"].as_u64().unwrap_or(0) > 64 << 20,
        "{summary}"
    );
    assert_eq!(
        src.wait_exit(T),
        Some(0),
        "source should exit 0 after handing over: {}",
        src.err()
    );
    let src_ticks = last_ticks(&src.log());
    // The destination continues the same guest: its tick counter carries on from the source's.
    let log = dst.wait_for("CHECK PASS", 0, T);
    let log = dst.wait_for("PROGRESS", log.len(), T);
    assert!(!log.contains("CHECK FAIL"), "{log}");
    assert!(
        !log.contains("READY"),
        "destination must not boot the guest again:\n{log}"
    );
    assert!(
        last_ticks(&log) > src_ticks,
        "ticks did not advance past the source's {src_ticks}:\n{log}"
    );
    let (_, out, _) = dst.client("info", &[]);
    assert!(out.contains("\"running\""), "{out}");
}

#[test]
fn rand_and_fill_guests_migrate() {
    for (name, cmdline) in [
        ("rand", "workload=rand mib=32 rate=5000 bytes=64"),
        ("fill", "workload=fill mib=48 hot=8 rate=5000"),
    ] {
        let dir = Scratch::new(&format!("mig-{name}"));
        let (src, mut dst, port) = migration_pair(&dir, cmdline, "128M", "128M");
        let (ok, summary, err) = migrate(
            &src,
            port,
            &["--verify", "--compression", "zstd", "--downtime-ms", "30"],
        );
        assert!(ok, "{name}: migration failed: {err}");
        assert_eq!(summary["verified"], true, "{name}: {summary}");
        let checked = summary["verified_pages"].as_u64().unwrap_or(0);
        let pages = summary["memory_bytes"].as_u64().unwrap_or(0) / 4096;
        assert!(
            checked > 0 && checked <= pages,
            "{name}: destination checked {checked} of {pages} pages: {summary}"
        );
        let log = dst.wait_for("CHECK PASS", 0, T);
        let log = dst.wait_for("CHECK PASS", log.len(), T);
        assert!(!log.contains("CHECK FAIL"), "{name}: {log}");
    }
}

#[test]
fn incompatible_destination_is_refused_before_memory_moves() {
    let dir = Scratch::new("mig-incompat");
    let (mut src, mut dst, port) = migration_pair(&dir, "workload=ab mib=16", "128M", "256M");
    let (ok, _, err) = migrate(&src, port, &[]);
    assert!(!ok, "migration to a 256M destination should fail");
    assert!(err.contains("memory size differs"), "error: {err}");
    // Status 1 within T: a failed incoming migration (vmm/API.md), not success, not a hang.
    assert_eq!(
        dst.wait_exit(T),
        Some(1),
        "destination must fail its incoming migration: {}",
        dst.err()
    );
    source_keeps_running(&mut src);
}

#[test]
fn destination_killed_mid_transfer_leaves_source_running() {
    let dir = Scratch::new("mig-kill");
    let (mut src, mut dst, port) = migration_pair(&dir, "workload=ab mib=128", "256M", "256M");
    let sock = src.sock.clone();
    // Through a counting relay, so the kill provably lands after pages have moved.
    let (relay_port, forwarded) = relay(port, None);
    // A slow stream (20 MB/s, 128 MiB of guest memory: several seconds) so the kill lands
    // mid-transfer.
    let h = std::thread::spawn(move || {
        std::process::Command::new(vmm())
            .args(["migrate", "--api-socket"])
            .arg(&sock)
            .args([
                "--to",
                &format!("tcp:127.0.0.1:{relay_port}"),
                "--bandwidth",
                "20MB",
            ])
            .output()
            .expect("migrate")
    });
    // The transfer has started: well past the handshake, 1024 pages and more have reached
    // the destination, and the migration is still running.
    const STARTED: u64 = 4 << 20;
    let deadline = Instant::now() + T;
    while forwarded.load(Ordering::SeqCst) < STARTED {
        assert!(
            Instant::now() < deadline,
            "the transfer never started: {} bytes reached the destination",
            forwarded.load(Ordering::SeqCst)
        );
        assert!(!h.is_finished(), "migrate ended before the kill");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!h.is_finished(), "migrate ended before the kill");
    let _ = dst.child.kill();
    let out = h.join().expect("join");
    assert!(
        !out.status.success(),
        "migration should fail when the destination dies"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still running here"), "{err}");
    source_keeps_running(&mut src);
}

/// A one-connection TCP relay in front of 127.0.0.1:`to`: returns its port and the count of
/// bytes it has forwarded to `to` so far; with `flip_at`, byte `flip_at` of the forward stream
/// has bit 5 flipped.
fn relay(to: u16, flip_at: Option<u64>) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = l.local_addr().expect("addr").port();
    let forwarded = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&forwarded);
    std::thread::spawn(move || {
        let Ok((mut a, _)) = l.accept() else { return };
        let Ok(mut b) = TcpStream::connect(("127.0.0.1", to)) else {
            return;
        };
        let (mut a2, mut b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
        });
        let mut buf = vec![0u8; 65536];
        let mut pos = 0u64;
        loop {
            let n = match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(offset) = flip_at.filter(|&o| o >= pos && o < pos + n as u64) {
                buf[(offset - pos) as usize] ^= 0x20;
            }
            pos += n as u64;
            if b.write_all(&buf[..n]).is_err() {
                break;
            }
            count.store(pos, Ordering::SeqCst);
        }
        let _ = b.shutdown(std::net::Shutdown::Both);
    });
    (port, forwarded)
}

#[test]
fn corrupted_byte_in_transit_is_caught_and_source_keeps_running() {
    let dir = Scratch::new("mig-corrupt");
    let (mut src, mut dst, port) = migration_pair(&dir, "workload=ab mib=32", "128M", "128M");
    // Past the handshake, inside the first page batch.
    let (relay, _) = relay(port, Some(100_000));
    let (ok, _, err) = migrate(&src, relay, &[]);
    assert!(!ok, "a corrupted stream must not migrate");
    // The source learns of it as an abort or a dropped connection; either way it keeps running.
    assert!(err.contains("still running here"), "error: {err}");
    let code = dst.wait_exit(T);
    assert_eq!(
        code,
        Some(1),
        "destination must fail the corrupted incoming migration (status 1), not resume it: {}",
        dst.err()
    );
    assert!(
        dst.err().contains("crc32"),
        "destination should name the crc failure: {}",
        dst.err()
    );
    source_keeps_running(&mut src);
}

#[test]
fn guest_doing_disk_io_keeps_its_disk_consistent_across_migration() {
    let dir = Scratch::new("mig-blk");
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 8 << 20]).expect("disk image");
    // Both ends reach the same file: shared, so the stream does not copy it.
    let d = format!("{},shared", disk.to_str().expect("utf8"));
    let d = d.as_str();
    let g = guest();
    let mut src = Vmm::start(
        &dir,
        "src",
        &[
            "--kernel",
            g.to_str().expect("utf8"),
            "--cmdline",
            "workload=blkloop sectors=2048 req_sectors=64",
            "--memory",
            "64M",
            "--disk",
            d,
        ],
    );
    let log = src.wait_for("CHECK PASS workload=blkloop", 0, T);
    src.wait_for("CHECK PASS workload=blkloop", log.len(), T);
    let port = free_port("127.0.0.1");
    let addr = format!("tcp:127.0.0.1:{port}");
    let mut dst = Vmm::start(
        &dir,
        "dst",
        &["--incoming", addr.as_str(), "--memory", "64M", "--disk", d],
    );
    let (ok, summary, err) = migrate(&src, port, &["--verify"]);
    assert!(ok, "migration failed: {err}");
    assert_eq!(summary["verified"], true, "{summary}");
    let checked = summary["verified_pages"].as_u64().unwrap_or(0);
    let pages = summary["memory_bytes"].as_u64().unwrap_or(0) / 4096;
    assert!(
        checked > 0 && checked <= pages,
        "destination checked {checked} of {pages} pages: {summary}"
    );
    assert_eq!(src.wait_exit(T), Some(0), "{}", src.err());
    let src_seeds = field_values(&src.log(), "CHECK PASS", "seed");
    let last_src = src_seeds
        .iter()
        .copied()
        .max()
        .unwrap_or_else(|| panic!("the source reported no seeds:\n{}", src.log()));
    // The destination carries on the same loop: later seeds, every pass verified from disk.
    let mut log = dst.wait_for("CHECK PASS workload=blkloop", 0, T);
    for _ in 0..2 {
        log = dst.wait_for("CHECK PASS workload=blkloop", log.len(), T);
    }
    assert!(!log.contains("CHECK FAIL"), "{log}");
    let dst_seeds = field_values(&log, "CHECK PASS", "seed");
    assert!(
        dst_seeds.iter().all(|&s| s >= last_src) && dst_seeds.iter().any(|&s| s > last_src + 1),
        "destination seeds {dst_seeds:?} should continue from the source's {last_src}"
    );
}
