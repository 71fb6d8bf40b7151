//! Live migration of writable disks between two real VMM processes (issue 12): the stream
//! carries the blocks of every writable, non-shared disk next to guest memory; the
//! destination copies them into its own blank sparse file. The guest's `blkloop` workload
//! writes a seeded pattern and reads it back while the migration runs; host-written data the
//! guest never touches must arrive too, holes must stay holes, and bad targets are refused
//! with the source still running.

use novacron_testsupport::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// A sparse file of `size` bytes holding `data` at `at` (nothing else allocated).
fn sparse_disk(path: &Path, size: u64, at: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("create disk");
    f.set_len(size).expect("size disk");
    if !data.is_empty() {
        f.write_all_at(data, at).expect("write disk");
    }
}

/// Bytes the filesystem allocated for `path`.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat disk").blocks() * 512
}

fn start_source(dir: &Scratch, cmdline: &str, disk: &str) -> Vmm {
    start_source_with(dir, cmdline, disk, "64M")
}

fn start_source_with(dir: &Scratch, cmdline: &str, disk: &str, memory: &str) -> Vmm {
    let g = guest();
    Vmm::start(
        dir,
        "src",
        &[
            "--kernel",
            g.to_str().expect("utf8"),
            "--cmdline",
            cmdline,
            "--memory",
            memory,
            "--disk",
            disk,
        ],
    )
}

/// A destination with `disk` and 64 MiB, waiting on a free port; (VMM, port).
fn start_destination(dir: &Scratch, disk: &str) -> (Vmm, u16) {
    start_destination_with(dir, disk, "64M")
}

fn start_destination_with(dir: &Scratch, disk: &str, memory: &str) -> (Vmm, u16) {
    let port = free_port("127.0.0.1");
    let addr = format!("tcp:127.0.0.1:{port}");
    let mut dst = Vmm::start(
        dir,
        "dst",
        &[
            "--incoming",
            addr.as_str(),
            "--memory",
            memory,
            "--disk",
            disk,
        ],
    );
    let deadline = Instant::now() + T;
    while !dst.err().contains("waiting for incoming migration") {
        assert!(dst.alive(), "destination exited: {}", dst.err());
        assert!(Instant::now() < deadline, "destination never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    (dst, port)
}

fn migrate(src: &Vmm, port: u16, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let to = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--to", to.as_str()];
    args.extend_from_slice(extra);
    let (ok, out, err) = src.client("migrate", &args);
    let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (ok, v, err)
}

fn read_range(path: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open disk");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, at).expect("read disk");
    buf
}

/// The guest rewrites 8 MiB of a 64 MiB disk in a loop while it migrates; 4 MiB the host
/// wrote at 40 MiB travel too. Afterwards the destination's guest keeps reading back what it
/// wrote on the source (later seeds, no failure), the host's data is there, and the copy is
/// still sparse.
fn disk_moves_with_the_guest(verify: &str) {
    let dir = Scratch::new(&format!("diskmig-{verify}"));
    let (src_disk, dst_disk) = (dir.path("src.img"), dir.path("dst.img"));
    let host = noise(4 * MIB as usize, 7);
    sparse_disk(&src_disk, 64 * MIB, 40 * MIB, &host);
    sparse_disk(&dst_disk, 64 * MIB, 0, &[]);
    let mut src = start_source(
        &dir,
        "workload=blkloop sectors=16384 req_sectors=128",
        src_disk.to_str().expect("utf8"),
    );
    let log = src.wait_for("CHECK PASS workload=blkloop", 0, T);
    src.wait_for("CHECK PASS workload=blkloop", log.len(), T);
    let (mut dst, port) = start_destination(&dir, dst_disk.to_str().expect("utf8"));
    let (ok, summary, err) = migrate(&src, port, &["--verify", verify]);
    assert!(ok, "migration failed: {err}\n{}", dst.err());
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["disk_bytes"], 64 * MIB, "{summary}");
    assert_eq!(src.wait_exit(T), Some(0), "{}", src.err());
    let last_src = field_values(&src.log(), "CHECK PASS", "seed")
        .into_iter()
        .max()
        .unwrap_or_else(|| panic!("the source reported no seeds:\n{}", src.log()));
    // Two full passes on the destination: each read back every block it wrote.
    let mut log = dst.wait_for("CHECK PASS workload=blkloop", 0, T);
    for _ in 0..2 {
        log = dst.wait_for("CHECK PASS workload=blkloop", log.len(), T);
    }
    assert!(!log.contains("CHECK FAIL"), "{log}");
    let seeds = field_values(&log, "CHECK PASS", "seed");
    assert!(
        seeds.iter().all(|&s| s >= last_src) && seeds.iter().any(|&s| s > last_src + 1),
        "destination seeds {seeds:?} should continue from the source's {last_src}"
    );
    assert!(
        read_range(&dst_disk, 40 * MIB, host.len()) == host,
        "the host-written data did not arrive"
    );
    let used = allocated(&dst_disk);
    assert!(
        used < 20 * MIB,
        "the copy should stay sparse (8 MiB written by the guest, 4 MiB by the host): {used} bytes allocated"
    );
    // The source's file is untouched by the migration: still its own data.
    assert!(read_range(&src_disk, 40 * MIB, host.len()) == host);
}

#[test]
fn writable_disk_moves_with_the_guest_sampled_verification() {
    disk_moves_with_the_guest("sampled");
}

#[test]
fn writable_disk_moves_with_the_guest_full_verification() {
    disk_moves_with_the_guest("full");
}

/// A guest that wrote its pattern and went idle: after the migration the destination's file
/// holds exactly the source's bytes, and a sparse 1 GiB disk with 6 MiB of data costs about
/// what it holds on the wire.
#[test]
fn idle_guest_disk_arrives_byte_for_byte_and_sparse_disks_cost_what_they_hold() {
    let dir = Scratch::new("diskmig-exact");
    let (src_disk, dst_disk) = (dir.path("src.img"), dir.path("dst.img"));
    let size = 1 << 30;
    let host = noise(2 * MIB as usize, 11);
    sparse_disk(&src_disk, size, 900 * MIB, &host);
    sparse_disk(&dst_disk, size, 0, &[]);
    // 8192 sectors = 4 MiB written by the guest from sector 2048, then idle.
    let mut src = start_source(
        &dir,
        "workload=blk sector=2048 sectors=8192 seed=5",
        src_disk.to_str().expect("utf8"),
    );
    src.wait_for("DONE workload=blk", 0, T);
    let (mut dst, port) = start_destination(&dir, dst_disk.to_str().expect("utf8"));
    let (ok, summary, err) = migrate(&src, port, &["--verify", "full"]);
    assert!(ok, "migration failed: {err}\n{}", dst.err());
    assert_eq!(src.wait_exit(T), Some(0), "{}", src.err());
    assert!(dst.alive(), "{}", dst.err());
    let wire = summary["wire_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        wire < 48 * MIB,
        "a 1 GiB disk holding 6 MiB should not cost {wire} bytes on the wire: {summary}"
    );
    // Compare the whole disks, 64 MiB at a time.
    let mut at = 0;
    while at < size {
        let n = (64 * MIB).min(size - at) as usize;
        assert!(
            read_range(&src_disk, at, n) == read_range(&dst_disk, at, n),
            "the destination's disk differs from the source's in bytes {at}..{}",
            at + n as u64
        );
        at += n as u64;
    }
    let used = allocated(&dst_disk);
    assert!(
        used < 16 * MIB,
        "the copy should stay sparse: {used} bytes allocated"
    );
    let (ok, _, err) = dst.client("shutdown", &[]);
    assert!(ok, "{err}");
}

/// A destination whose disk has another size is refused in the handshake; the source keeps
/// running with its disk.
#[test]
fn destination_disk_of_another_size_is_refused_and_the_source_keeps_running() {
    let dir = Scratch::new("diskmig-size");
    let (src_disk, dst_disk) = (dir.path("src.img"), dir.path("dst.img"));
    sparse_disk(&src_disk, 16 * MIB, 0, &[]);
    sparse_disk(&dst_disk, 32 * MIB, 0, &[]);
    let mut src = start_source(
        &dir,
        "workload=blkloop sectors=2048 req_sectors=64",
        src_disk.to_str().expect("utf8"),
    );
    src.wait_for("CHECK PASS workload=blkloop", 0, T);
    let (mut dst, port) = start_destination(&dir, dst_disk.to_str().expect("utf8"));
    let (ok, _, err) = migrate(&src, port, &[]);
    assert!(!ok, "a migration onto a disk of another size must fail");
    assert!(
        err.contains("copied disks differ") && err.contains("16777216"),
        "the error should name the disk sizes: {err}"
    );
    assert!(src.alive(), "{}", src.err());
    src.assert_still_passing();
    assert!(dst.wait_exit(T).is_some_and(|c| c != 0));
}

/// A destination whose disk already holds data exits at start with a clear error: it would
/// otherwise mix its old blocks with the source's.
#[test]
fn destination_disk_holding_data_is_refused_at_start() {
    let dir = Scratch::new("diskmig-notblank");
    let disk = dir.path("dst.img");
    sparse_disk(&disk, 16 * MIB, 5 * MIB, b"old data");
    let port = free_port("127.0.0.1");
    let addr = format!("tcp:127.0.0.1:{port}");
    let mut dst = Vmm::start(
        &dir,
        "dst",
        &[
            "--incoming",
            addr.as_str(),
            "--memory",
            "64M",
            "--disk",
            disk.to_str().expect("utf8"),
        ],
    );
    assert!(dst.wait_exit(T).is_some_and(|c| c != 0));
    let err = dst.err();
    assert!(
        err.contains("already holds") && err.contains("blank sparse file"),
        "{err}"
    );
    // A zero-filled (allocated but blank) target is fine.
    let zeros = dir.path("zeros.img");
    std::fs::write(&zeros, vec![0u8; 4 * MIB as usize]).expect("zeros");
    let (dst, _) = start_destination(&dir, zeros.to_str().expect("utf8"));
    drop(dst);
}

/// Sampled verification draws only from units that exist: a 4 GiB guest (RAM above the
/// 32-bit MMIO hole) with a disk whose size is not a multiple of 256 KiB (so the unit space
/// has gaps after it) migrates with every sample drawn and checked.
#[test]
fn sampled_verification_skips_the_mmio_hole_and_the_gaps_between_disks() {
    let dir = Scratch::new("diskmig-holes");
    let (src_disk, dst_disk) = (dir.path("src.img"), dir.path("dst.img"));
    let size = 10 * MIB + 4096 + 512;
    let host = noise(64 << 10, 3);
    sparse_disk(&src_disk, size, 9 * MIB, &host);
    sparse_disk(&dst_disk, size, 0, &[]);
    let mut src = start_source_with(
        &dir,
        "workload=ab mib=16",
        src_disk.to_str().expect("utf8"),
        "4G",
    );
    src.wait_for("CHECK PASS", 0, T);
    let (mut dst, port) = start_destination_with(&dir, dst_disk.to_str().expect("utf8"), "4G");
    // Many samples, so a draw from the hole would be all but certain.
    let (ok, summary, err) = migrate(
        &src,
        port,
        &["--verify", "sampled", "--verify-sample-pages", "65536"],
    );
    assert!(ok, "migration failed: {err}\n{}", dst.err());
    assert!(
        summary["verified_pages"].as_u64().unwrap_or(0) >= 65536,
        "{summary}"
    );
    assert_eq!(src.wait_exit(T), Some(0), "{}", src.err());
    let len = dst.log().len();
    dst.wait_for("CHECK PASS", len, T);
    assert!(read_range(&dst_disk, 9 * MIB, host.len()) == host);
}
