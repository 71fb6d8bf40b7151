//! Workloads that exercise the VMM's devices and CPUs, selected with `workload=`:
//!
//! | workload | what it does |
//! |---|---|
//! | `blk` | writes a seeded pattern to `sectors` sectors of disk `disk` (from `sector`), flushes, reads back, verifies |
//! | `blkro` | expects a read-only disk: a write must fail with `VIRTIO_BLK_S_IOERR`, a read must succeed |
//! | `blkread` | reads `sectors` sectors and verifies the pattern of `seed` (written by the host) |
//! | `blkloop` | like `blk`, forever, with the seed advancing each pass (disk I/O during migration) |
//! | `blkhot` | a hot region of `sectors` sectors from `sector`: each 4 KiB block read, one byte bumped, written back, forever; every visit checks the byte the last one wrote (disk data that must survive migration, rewritten the way databases do) |
//! | `blkbench` | sequential writes then reads of `mib` MiB in `bs`-byte requests, `qd` in flight |
//! | `net` | sends `frames` frames, then echoes `rx` frames sent by the host |
//! | `netbench` | `dir=tx`: sends `frames` frames of `size` bytes; `dir=rx`: counts frames received |
//! | `smp` | brings up every CPU of the MADT (or `cpus`), runs the `ab` pattern on a slice each |
//! | `acpi` | parses the ACPI tables, reports CPUs and devices, then `action=poweroff|reset|none` |
//!
//! Every workload prints `READY workload=<name>` first and a `CHECK PASS`/`CHECK FAIL` verdict;
//! the lines are documented in `images/README.md`. Memory for rings and buffers comes from the
//! workload region at `layout::REGION_BASE`.

use crate::bootinfo::BootInfo;
use crate::layout::REGION_BASE;
use crate::{outln, sys};

/// The value of `key=` on the command line (the last one wins).
pub fn arg(cmdline: &'static [u8], key: &str) -> Option<&'static [u8]> {
    let mut found = None;
    for word in cmdline.split(|b| b.is_ascii_whitespace()) {
        if let Some(eq) = word.iter().position(|&b| b == b'=') {
            if &word[..eq] == key.as_bytes() {
                found = Some(&word[eq + 1..]);
            }
        }
    }
    found
}

/// A number (decimal or 0x hex) from `key=`, or `default`.
pub fn num(cmdline: &'static [u8], key: &str, default: u64) -> u64 {
    let Some(v) = arg(cmdline, key) else {
        return default;
    };
    let (digits, radix) = match v {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (v, 10),
    };
    let mut n: u64 = 0;
    for &b in digits {
        let Some(d) = (b as char).to_digit(radix) else {
            return default;
        };
        n = n.wrapping_mul(radix as u64).wrapping_add(d as u64);
    }
    if digits.is_empty() {
        default
    } else {
        n
    }
}

/// The 64-bit word of the test pattern at byte `offset` (a multiple of 8) of a disk:
/// splitmix64 of `seed * golden + offset`. The host tests compute the same function.
pub fn pattern_word(seed: u64, offset: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(offset);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks that `[REGION_BASE, REGION_BASE + bytes)` is RAM; prints an error and idles if not.
pub fn region(boot: &BootInfo, bytes: u64) -> crate::virtio::Alloc {
    let end = REGION_BASE + bytes;
    if !boot.is_ram(REGION_BASE, end) {
        outln!("ERROR workload needs RAM from {REGION_BASE:#x} to {end:#x}: give the guest more memory");
        sys::idle_forever();
    }
    crate::virtio::Alloc::new(REGION_BASE, end)
}

/// Prints an error line and idles.
pub fn fail(workload: &str, what: &str) -> ! {
    outln!("CHECK FAIL workload={workload} error={what}");
    sys::idle_forever();
}

/// Runs the workload named on the command line if it is one of these; returns otherwise.
pub fn dispatch(cmdline: &'static [u8], boot: &BootInfo) {
    let Some(w) = arg(cmdline, "workload") else {
        return;
    };
    let name = match w {
        b"blk" => "blk",
        b"blkro" => "blkro",
        b"blkread" => "blkread",
        b"blkbench" => "blkbench",
        b"blkloop" => "blkloop",
        b"blkhot" => "blkhot",
        b"net" => "net",
        b"netbench" => "netbench",
        b"smp" => "smp",
        b"acpi" => "acpi",
        _ => return,
    };
    let hz = num(cmdline, "hz", 100);
    if hz != 100 && (1..=10_000).contains(&hz) {
        sys::start_timer(hz);
    }
    outln!("READY workload={name} hz={hz}");
    match name {
        "blk" | "blkro" | "blkread" | "blkbench" | "blkloop" | "blkhot" => {
            crate::virtio_blk::run(name, cmdline, boot)
        }
        "net" | "netbench" => crate::virtio_net::run(name, cmdline, boot),
        "smp" => crate::smp::run(cmdline, boot),
        _ => crate::acpi::run(cmdline),
    }
}
