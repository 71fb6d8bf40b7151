//! virtio-blk on real /dev/kvm with the test guest's polling driver:
//!
//! - the guest writes a seeded pattern to a range of sectors and the host reads the image file
//!   back byte for byte (and sees nothing else changed);
//! - the host writes a pattern into the image and the guest reads it back and verifies it;
//! - a disk given with `,ro` refuses writes with `VIRTIO_BLK_S_IOERR` (reads still work) and
//!   the file is left untouched;
//! - GET_ID reports the image's file name, and a second disk is reachable too.

use novacron_testsupport::{Scratch, Vmm};
use std::time::Duration;

const SECTOR: u64 = 512;
const TIMEOUT: Duration = Duration::from_secs(30);

/// The test guest's pattern (`devworkloads::pattern_word`): splitmix64 of
/// `seed * golden + offset` for the 8-byte word at disk byte `offset`.
fn pattern_word(seed: u64, offset: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(offset);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pattern(seed: u64, from: u64, len: u64) -> Vec<u8> {
    (from..from + len)
        .step_by(8)
        .flat_map(|o| pattern_word(seed, o).to_le_bytes())
        .collect()
}

fn guest_args<'a>(g: &'a str, cmdline: &'a str, disks: &'a [String]) -> Vec<&'a str> {
    let mut a = vec!["--kernel", g, "--cmdline", cmdline, "--memory", "64M"];
    for d in disks {
        a.push("--disk");
        a.push(d);
    }
    a
}

#[test]
fn guest_writes_and_host_reads_back_identical() {
    let dir = Scratch::new("blk-w");
    let disk = dir.path("guest-writes.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).expect("create image");
    let (start, sectors, seed) = (100u64, 3000u64, 0x5eed);
    let g = novacron_testsupport::guest();
    let cmdline =
        format!("workload=blk sector={start} sectors={sectors} seed={seed} req_sectors=200");
    let disks = [disk.display().to_string()];
    let mut vm = Vmm::start(
        &dir,
        "w",
        &guest_args(g.to_str().expect("utf8"), &cmdline, &disks),
    );
    let log = vm.wait_for("CHECK PASS workload=blk", 0, TIMEOUT);
    assert!(
        log.contains("BLK id=guest-writes.img capacity=8192 ro=0"),
        "{log}"
    );
    drop(vm);
    let data = std::fs::read(&disk).expect("read image");
    let (a, b) = (
        (start * SECTOR) as usize,
        ((start + sectors) * SECTOR) as usize,
    );
    assert!(
        data[..a].iter().all(|&x| x == 0),
        "bytes before the range changed"
    );
    assert!(
        data[b..].iter().all(|&x| x == 0),
        "bytes after the range changed"
    );
    let want = pattern(seed, start * SECTOR, sectors * SECTOR);
    if let Some(i) = (0..want.len()).find(|&i| data[a + i] != want[i]) {
        panic!("image differs from the guest's pattern at byte {}", a + i);
    }
}

#[test]
fn host_writes_and_guest_reads_back_identical() {
    let dir = Scratch::new("blk-r");
    let disk = dir.path("host-writes.img");
    let seed = 77;
    std::fs::write(&disk, pattern(seed, 0, 2 << 20)).expect("create image");
    // A second disk first, so the guest's target is disk 1.
    let other = dir.path("other.img");
    std::fs::write(&other, vec![0u8; 1 << 20]).expect("create image");
    let g = novacron_testsupport::guest();
    let cmdline = format!("workload=blkread disk=1 sectors=4096 seed={seed}");
    let disks = [other.display().to_string(), disk.display().to_string()];
    let mut vm = Vmm::start(
        &dir,
        "r",
        &guest_args(g.to_str().expect("utf8"), &cmdline, &disks),
    );
    let log = vm.wait_for("CHECK PASS workload=blkread", 0, TIMEOUT);
    assert!(
        log.contains("BLK id=host-writes.img capacity=4096"),
        "{log}"
    );
}

#[test]
fn read_only_disk_refuses_writes_with_ioerr() {
    let dir = Scratch::new("blk-ro");
    let disk = dir.path("ro.img");
    let before = pattern(3, 0, 1 << 20);
    std::fs::write(&disk, &before).expect("create image");
    let g = novacron_testsupport::guest();
    let disks = [format!("{},ro", disk.display())];
    let mut vm = Vmm::start(
        &dir,
        "ro",
        &guest_args(g.to_str().expect("utf8"), "workload=blkro", &disks),
    );
    // Wait for the whole CHECK line: an earlier line also names the workload.
    let log = vm.wait_for("CHECK ", 0, TIMEOUT);
    // VIRTIO_BLK_S_IOERR is 1.
    assert!(
        log.contains("CHECK PASS workload=blkro write_status=1"),
        "{log}"
    );
    assert!(log.contains("ro=1"), "{log}");
    drop(vm);
    assert!(
        std::fs::read(&disk).expect("read image") == before,
        "read-only image changed"
    );
}
