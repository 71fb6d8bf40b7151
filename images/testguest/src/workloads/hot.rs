//! `hot`: a guest whose memory is real data with a hot set rewritten as fast as it can. The
//! data is the initrd the loader placed in memory (`scripts/data-initrd.sh`: installed
//! Debian files); the hot set is its first `hot` MiB. Pass after pass, the first byte of
//! every hot page is checked and incremented (`ab`'s pattern, on top of real data), and
//! between passes `SWEEP_PAGES` pages of the whole initrd are checked against a checksum
//! table, so the data itself is verified end to end every few seconds.
//!
//! Setup: the first byte of every hot page is set to 0 and a checksum of every whole initrd
//! page (with that byte counted as 0) goes into a table at `REGION_BASE`, below the initrd.

use core::ptr::{read_volatile, write_volatile};

use super::{checksum, Reporter};
use crate::bootinfo::BootInfo;
use crate::cmdline::Config;
use crate::layout::{PAGE_SIZE, REGION_BASE};
use crate::outln;
use crate::sys::{idle_forever, ticks};

const PAGE: usize = PAGE_SIZE as usize;
/// Initrd pages checked between two passes over the hot set (a full sweep of a 400 MiB
/// initrd takes about 1600 passes).
const SWEEP_PAGES: u64 = 64;

/// The initrd as pages, the hot set at its start, and the checksum table.
struct Data {
    base: u64,
    pages: u64,
    hot_pages: u64,
}

impl Data {
    fn page_addr(&self, index: u64) -> u64 {
        self.base + index * PAGE_SIZE
    }

    fn slot(&self, index: u64) -> *mut u32 {
        (REGION_BASE + index * 4) as *mut u32
    }

    /// Checksum of page `index`, its first byte counted as 0 if it is a hot page.
    fn page_checksum(&self, index: u64) -> u32 {
        let mut copy = [0u8; PAGE];
        // SAFETY: index < pages; the initrd was checked to be RAM below 4 GiB, and only this
        // workload (single-threaded) writes it.
        let page = unsafe { &*(self.page_addr(index) as *const [u8; PAGE]) };
        copy.copy_from_slice(page);
        if index < self.hot_pages {
            copy[0] = 0;
        }
        checksum(&copy)
    }

    /// Checks page `index` against the table; stops the workload on a mismatch.
    fn verify(&self, index: u64) {
        // SAFETY: index < pages; the table was checked to be RAM, below the initrd.
        let expected = unsafe { read_volatile(self.slot(index)) };
        let got = self.page_checksum(index);
        if got != expected {
            outln!("CHECK FAIL workload=hot page={index} expected=0x{expected:08x} got=0x{got:08x}");
            idle_forever();
        }
    }
}

/// Finds the initrd and checks that the hot set and the table fit; `None` after printing
/// the reason.
fn locate(config: &Config, boot: &BootInfo) -> Option<Data> {
    let Some((base, size)) = boot.initrd else {
        outln!("ERROR hot: no initrd (start the VMM with --initrd, see scripts/data-initrd.sh)");
        return None;
    };
    let pages = size / PAGE_SIZE;
    let hot_pages = config.hot.saturating_mul(1 << 20) / PAGE_SIZE;
    let table_end = REGION_BASE + pages * 4;
    let end = base.saturating_add(pages * PAGE_SIZE);
    if base % PAGE_SIZE != 0 || !boot.is_ram(base, end) || end > crate::layout::MAPPED_LIMIT {
        outln!("ERROR hot: initrd at {base:#x} ({size} bytes) is not page-aligned RAM below 4 GiB");
        return None;
    }
    if hot_pages == 0 || hot_pages > pages {
        outln!(
            "ERROR hot: hot set of {} MiB does not fit the initrd ({} MiB)",
            config.hot,
            size >> 20
        );
        return None;
    }
    if table_end > base || !boot.is_ram(REGION_BASE, table_end) {
        outln!("ERROR hot: checksum table {REGION_BASE:#x}..{table_end:#x} overlaps the initrd at {base:#x} or is not RAM");
        return None;
    }
    Some(Data {
        base,
        pages,
        hot_pages,
    })
}

pub fn run(config: &Config, boot: &BootInfo) -> ! {
    let Some(data) = locate(config, boot) else {
        idle_forever();
    };
    outln!(
        "HOT initrd={:#x} pages={} hot_pages={}",
        data.base,
        data.pages,
        data.hot_pages
    );
    for i in 0..data.hot_pages {
        // SAFETY: i < hot_pages <= pages: an initrd page, checked to be RAM.
        unsafe { write_volatile(data.page_addr(i) as *mut u8, 0) };
    }
    for i in 0..data.pages {
        let sum = data.page_checksum(i);
        // SAFETY: i < pages; the table was checked to be RAM, below the initrd.
        unsafe { write_volatile(data.slot(i), sum) };
    }
    let mut reporter = Reporter::new(config);
    let mut value: u8 = 0;
    let mut passes: u64 = 0;
    let mut sweeps: u64 = 0;
    let mut next_check: u64 = 0;
    loop {
        let next = value.wrapping_add(1);
        for i in 0..data.hot_pages {
            let byte = data.page_addr(i) as *mut u8;
            // SAFETY: i < hot_pages: an initrd page, checked to be RAM; volatile so every
            // pass really reads and writes memory.
            let got = unsafe { read_volatile(byte) };
            if got != value {
                outln!("CHECK FAIL workload=hot page={i} expected={value} got={got}");
                idle_forever();
            }
            // SAFETY: as above.
            unsafe { write_volatile(byte, next) };
        }
        value = next;
        passes += 1;
        for _ in 0..SWEEP_PAGES {
            data.verify(next_check);
            next_check += 1;
            if next_check == data.pages {
                next_check = 0;
                sweeps += 1;
            }
        }
        if reporter.due() {
            outln!(
                "PROGRESS workload=hot ticks={} passes={passes} pages={} sweeps={sweeps}",
                ticks(),
                data.hot_pages
            );
            outln!("CHECK PASS workload=hot passes={passes} sweeps={sweeps}");
        }
    }
}
