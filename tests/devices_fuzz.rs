//! Fuzz-style robustness test of the virtio devices (no KVM needed): a virtio-blk and a
//! virtio-net transport over a small guest memory of two 64 KiB regions with a hole between
//! them, each region surrounded by `PROT_NONE` guard pages. A seeded random driver then:
//!
//! - writes random values (random widths, offsets, sometimes plausible, often not) to the
//!   MMIO registers and reads them back,
//! - walks the devices to DRIVER_OK with random queue sizes and ring addresses (in RAM, in the
//!   hole, past the end, misaligned),
//! - fills the descriptor tables and rings with random descriptor chains (random addresses,
//!   lengths up to 4 GiB, random NEXT/WRITE/INDIRECT flags and indices, loops),
//! - feeds random frames into the network backend, and processes every queue.
//!
//! It passes if nothing panics and no access strays outside guest RAM (a stray host access
//! would hit a guard page and kill the test with SIGSEGV), the disk image keeps its size, and
//! only bytes inside the guest regions ever change.

use novacron_vmm::devices::virtio::block::Block;
use novacron_vmm::devices::virtio::mmio::{reg, MmioTransport};
use novacron_vmm::devices::virtio::net::Net;
use novacron_vmm::devices::virtio::tap::Tap;
use novacron_vmm::devices::BusDevice;
use novacron_vmm::memory::GuestMem;
use std::fs::File;
use std::os::fd::FromRawFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MmapRegion};

const REGION: usize = 64 << 10;
const GUARD: usize = 64 << 10;
/// Guest-physical bases of the two regions (a 64 KiB hole between them).
const BASES: [u64; 2] = [0, 0x2_0000];

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Guest memory whose regions are fenced by inaccessible pages.
struct GuardedMemory {
    base: *mut libc::c_void,
    total: usize,
    mem: GuestMem,
}

impl GuardedMemory {
    fn new() -> GuardedMemory {
        // guard | region 0 | guard | region 1 | guard
        let total = 3 * GUARD + 2 * REGION;
        // SAFETY: an anonymous PROT_NONE reservation; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        let mut regions = Vec::new();
        for (i, gpa) in BASES.iter().enumerate() {
            let off = GUARD + i * (REGION + GUARD);
            // SAFETY: inside the reservation made above.
            let host = unsafe { (base as *mut u8).add(off) };
            // SAFETY: host..host+REGION lies inside our reservation.
            let rc =
                unsafe { libc::mprotect(host.cast(), REGION, libc::PROT_READ | libc::PROT_WRITE) };
            assert_eq!(rc, 0, "mprotect");
            // SAFETY: the range is mapped read-write and outlives the region (unmapped in Drop
            // after `mem` is gone); build_raw does not take ownership.
            let r = unsafe {
                MmapRegion::<AtomicBitmap>::build_raw(
                    host,
                    REGION,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            }
            .expect("region");
            regions.push(GuestRegionMmap::new(r, GuestAddress(*gpa)).expect("guest region"));
        }
        let mem = GuestMem::from_regions(regions).expect("guest memory");
        GuardedMemory { base, total, mem }
    }
}

impl GuardedMemory {
    /// Host address of byte `off` of the reservation.
    fn at(&self, off: usize) -> *mut u8 {
        assert!(off < self.total);
        // SAFETY: `off` is inside the reservation (checked above).
        unsafe { (self.base as *mut u8).add(off) }
    }

    /// A copy of both guest regions, region 0 first.
    fn regions(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * REGION);
        for i in 0..BASES.len() {
            let host = self.at(GUARD + i * (REGION + GUARD));
            // SAFETY: the region is mapped read-write for REGION bytes while `self` lives;
            // the devices are not running concurrently.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(host, REGION) });
        }
        out
    }

    /// Whether every guard page still holds its initial zeroes: each is made readable for
    /// the check, then inaccessible again.
    fn guards_untouched(&self) -> bool {
        (0..3).all(|i| {
            let host = self.at(i * (REGION + GUARD));
            // SAFETY: a guard inside our reservation, made readable for the duration.
            let rc = unsafe { libc::mprotect(host.cast(), GUARD, libc::PROT_READ) };
            assert_eq!(rc, 0, "mprotect guard readable");
            // SAFETY: the guard is now mapped readable for GUARD bytes.
            let zero = unsafe { std::slice::from_raw_parts(host, GUARD) }
                .iter()
                .all(|&b| b == 0);
            // SAFETY: as above, back to inaccessible.
            let rc = unsafe { libc::mprotect(host.cast(), GUARD, libc::PROT_NONE) };
            assert_eq!(rc, 0, "mprotect guard back to PROT_NONE");
            zero
        })
    }
}

impl Drop for GuardedMemory {
    fn drop(&mut self) {
        // SAFETY: the reservation made in new(); every user of it is gone by now (devices are
        // dropped before this struct in the test).
        unsafe { libc::munmap(self.base, self.total) };
    }
}

/// A random guest-physical address: mostly inside RAM, sometimes in the hole, past the end,
/// straddling a boundary or absurd.
fn gpa(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => rng.next(),
        1 => 0x1_0000 - rng.below(64),
        2 => 0x1_0000 + rng.below(0x1_0000),
        3 => 0x3_0000 - rng.below(64),
        4 => u64::MAX - rng.below(4096),
        n => BASES[(n % 2) as usize] + rng.below(REGION as u64),
    }
}

fn write_reg(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives a transport towards DRIVER_OK with random but plausible queue setups.
fn random_init(t: &mut MmioTransport, rng: &mut Rng, nq: u32) {
    write_reg(t, reg::STATUS, 0);
    write_reg(t, reg::STATUS, 3);
    write_reg(t, reg::DRIVER_FEATURES_SEL, 1);
    write_reg(
        t,
        reg::DRIVER_FEATURES,
        if rng.chance(90) { 1 } else { rng.next() as u32 },
    );
    write_reg(t, reg::DRIVER_FEATURES_SEL, 0);
    write_reg(t, reg::DRIVER_FEATURES, rng.next() as u32 & 0x0001_0264);
    write_reg(t, reg::STATUS, 0xb);
    for q in 0..nq + u32::from(rng.chance(5)) {
        write_reg(t, reg::QUEUE_SEL, q);
        let size = if rng.chance(85) {
            1u32 << rng.below(9)
        } else {
            rng.next() as u32
        };
        write_reg(t, reg::QUEUE_NUM, size);
        // Mostly a layout that fits in RAM (so the data path runs), else random addresses.
        let n = u64::from(size.min(256));
        let fits = BASES[rng.below(2) as usize] + (rng.below(REGION as u64 - 0x2000) & !0xf);
        let avail = fits + 16 * n;
        let good = [fits, avail, (avail + 6 + 2 * n + 3) & !3];
        for (i, (lo, hi)) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH),
            (reg::QUEUE_AVAIL_LOW, reg::QUEUE_AVAIL_HIGH),
            (reg::QUEUE_USED_LOW, reg::QUEUE_USED_HIGH),
        ]
        .into_iter()
        .enumerate()
        {
            let mut a = if rng.chance(75) { good[i] } else { gpa(rng) };
            if rng.chance(80) {
                a &= !0xf;
            }
            write_reg(t, lo, a as u32);
            write_reg(t, hi, (a >> 32) as u32);
        }
        write_reg(t, reg::QUEUE_READY, u32::from(rng.chance(90)));
    }
    write_reg(t, reg::STATUS, 0xf);
}

/// Scribbles random descriptors and ring entries where the queues point.
fn random_rings(t: &mut MmioTransport, mem: &GuestMem, rng: &mut Rng, nq: u32) {
    for q in 0..nq {
        write_reg(t, reg::QUEUE_SEL, q);
        let mut read = |off| {
            let mut b = [0u8; 4];
            t.read(off, &mut b);
            u32::from_le_bytes(b) as u64
        };
        let desc = read(reg::QUEUE_DESC_LOW) | (read(reg::QUEUE_DESC_HIGH) << 32);
        let avail = read(reg::QUEUE_AVAIL_LOW) | (read(reg::QUEUE_AVAIL_HIGH) << 32);
        for i in 0..rng.below(64) {
            let flags = rng.below(8) as u16;
            let len = match rng.below(6) {
                0 => rng.next() as u32,
                1 => 0,
                2 => 1,
                _ => rng.below(9000) as u32,
            };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&gpa(rng).to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(rng.below(300) as u16).to_le_bytes());
            let _ = mem.write_slice(&d, GuestAddress(desc.wrapping_add(16 * (i % 256))));
        }
        // A request header in RAM, so some chains are well-formed enough to reach the disk.
        let hdr = BASES[rng.below(2) as usize] + rng.below(REGION as u64 - 16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&[0u32, 1, 4, 8, 99][rng.below(5) as usize].to_le_bytes());
        let sector = if rng.chance(70) {
            rng.below(80)
        } else {
            rng.next()
        };
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        let _ = mem.write_slice(&h, GuestAddress(hdr));
        for i in 0..rng.below(8) {
            let _ = mem.write_obj(
                rng.below(300) as u16,
                GuestAddress(avail.wrapping_add(4 + 2 * i)),
            );
        }
        let limit = if rng.chance(90) { 8 } else { 70000 };
        let bump = rng.below(limit) as u16;
        if let Ok(idx) = mem.read_obj::<u16>(GuestAddress(avail.wrapping_add(2))) {
            let _ = mem.write_obj(idx.wrapping_add(bump), GuestAddress(avail.wrapping_add(2)));
        }
    }
}

/// Random register traffic, including odd widths, offsets and the config space.
fn random_mmio(t: &mut MmioTransport, rng: &mut Rng) {
    for _ in 0..rng.below(16) {
        let off = if rng.chance(80) {
            rng.below(0x100) & !3
        } else {
            rng.below(0x1000)
        };
        let width = [1usize, 2, 4, 8][rng.below(4) as usize];
        let v = rng.next().to_le_bytes();
        if rng.chance(50) {
            t.write(off, &v[..width]);
        } else {
            let mut b = [0u8; 8];
            t.read(off, &mut b[..width]);
        }
    }
}

#[test]
fn random_registers_and_descriptor_chains_never_escape_guest_memory() {
    let guarded = GuardedMemory::new();
    let mem = &guarded.mem;
    let disk_path = std::env::temp_dir().join(format!("novacron-fuzz-{}.img", std::process::id()));
    std::fs::write(&disk_path, vec![0u8; 64 * 512]).expect("disk");
    let blk = Block::open(&disk_path, false).expect("block device");
    let mut fds = [0i32; 2];
    // SAFETY: socketpair fills two fds on success (checked).
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: fresh descriptors owned by these Files from now on.
    let (dev_end, peer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let net = Net::new(Tap::from_file(dev_end, "fuzz0"), [0x52, 0x54, 0, 1, 2, 3]);
    let mut transports = [
        (
            MmioTransport::new(Box::new(blk), mem.clone()).expect("blk transport"),
            1u32,
        ),
        (
            MmioTransport::new(Box::new(net), mem.clone()).expect("net transport"),
            2u32,
        ),
    ];

    let mut rng = Rng(0x6e6f_7661_6372_6f6e);
    let mut processed = 0u64;
    let mut activated = 0u64;
    let mut restores = 0u64;
    for round in 0..20_000 {
        let (t, nq) = &mut transports[round % 2];
        if rng.chance(30) {
            random_init(t, &mut rng, *nq);
            if t.is_activated() {
                activated += 1;
            }
        }
        random_mmio(t, &mut rng);
        random_rings(t, mem, &mut rng, *nq);
        if *nq == 2 && rng.chance(50) {
            let n = rng.below(3000);
            let frame: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            // SAFETY: frame is valid for its length; a full socket just drops it.
            unsafe {
                libc::send(
                    fds[1],
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            t.process_backend();
        }
        for q in 0..*nq + 1 {
            if t.process_queue(q as usize) {
                processed += 1;
            }
        }
        if rng.chance(1) {
            // Everything also survives a save/restore round trip.
            // Restoring a transport's own save succeeds, gives back the same state and
            // leaves guest memory as it was.
            let st = t.save();
            let before = guarded.regions();
            t.restore(&st)
                .unwrap_or_else(|e| panic!("round {round}: restore of its own save: {e}"));
            assert_eq!(t.save(), st, "round {round}: restore changed the state");
            assert!(
                guarded.regions() == before,
                "round {round}: restore wrote to guest memory"
            );
            restores += 1;
        }
    }
    // The random driver must actually have reached the data path.
    assert!(activated > 500, "only {activated} activations");
    assert!(processed > 500, "only {processed} queue runs used buffers");
    assert!(restores > 50, "only {restores} save/restore round trips");
    eprintln!(
        "fuzz: {activated} activations, {processed} queue runs used buffers, {restores} restores"
    );
    drop(transports);
    drop(peer);
    let len = std::fs::metadata(&disk_path).expect("disk").len();
    assert_eq!(len, 64 * 512, "the disk image must not grow");
    let _ = std::fs::remove_file(&disk_path);
    // Only bytes inside the guest regions changed: the guards around them are pristine.
    assert!(
        guarded.guards_untouched(),
        "a byte outside the guest regions changed"
    );
    drop(guarded);
}
