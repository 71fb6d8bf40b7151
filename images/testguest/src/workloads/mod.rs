//! The workloads, all running in ring 3, and what they share: the memory region, the
//! per-page checksum table, the random generator, progress reporting and rate pacing.

pub mod ab;
pub mod counter;
pub mod fill;
pub mod hot;
pub mod paged;
pub mod rand;
pub mod words;

use crate::cmdline::Config;
use crate::layout::{PAGE_SIZE, REGION_BASE};
use crate::sys::{idle_forever, ticks};

/// The workload region: `pages` pages from `REGION_BASE`, then a `u32` checksum per page.
pub struct Region {
    pub pages: u64,
}

impl Region {
    pub fn new(config: &Config) -> Region {
        Region {
            pages: config.mib * (1 << 20) / PAGE_SIZE,
        }
    }

    /// Bytes of memory used, region plus checksum table.
    pub fn footprint(mib: u64) -> u64 {
        let pages = mib * (1 << 20) / PAGE_SIZE;
        mib * (1 << 20) + pages * 4
    }

    pub fn page_addr(&self, index: u64) -> u64 {
        REGION_BASE + index * PAGE_SIZE
    }

    /// The page `index` as a byte array.
    ///
    /// # Safety
    /// `index < pages`, the region was checked to be RAM, and the caller holds no other
    /// reference to the same page.
    pub unsafe fn page(&self, index: u64) -> &'static mut [u8; PAGE_SIZE as usize] {
        debug_assert!(index < self.pages);
        // SAFETY: per this function's contract.
        unsafe { &mut *(self.page_addr(index) as *mut [u8; PAGE_SIZE as usize]) }
    }

    /// The checksum table entry of page `index`.
    ///
    /// # Safety
    /// As for `page`.
    pub unsafe fn checksum_slot(&self, index: u64) -> &'static mut u32 {
        let table = REGION_BASE + self.pages * PAGE_SIZE;
        // SAFETY: per this function's contract; the table follows the region and was
        // included in the RAM check.
        unsafe { &mut *((table + index * 4) as *mut u32) }
    }
}

/// Page checksum: four interleaved FNV-style 64-bit lanes over the page's words, folded to
/// 32 bits through a final mixer.
pub fn checksum(page: &[u8; PAGE_SIZE as usize]) -> u32 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: [u64; 4] = [
        0xcbf2_9ce4_8422_2325,
        0x8422_2325_cbf2_9ce4,
        0x9e37_79b9_7f4a_7c15,
        0x2545_f491_4f6c_dd1d,
    ];
    for chunk in page.chunks_exact(32) {
        for (k, lane) in h.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&chunk[k * 8..k * 8 + 8]);
            *lane = ((*lane ^ u64::from_le_bytes(w)).wrapping_mul(PRIME)).rotate_left(29);
        }
    }
    let mut x = h[0] ^ h[1].rotate_left(16) ^ h[2].rotate_left(32) ^ h[3].rotate_left(48);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    x as u32
}

/// splitmix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// Stateless hash of a value (for per-page decisions that must be recomputable).
pub fn mix(seed: u64, value: u64) -> u64 {
    Rng::new(seed ^ value.wrapping_mul(0xd6e8_feb8_6659_fd93)).next()
}

/// Decides when a progress report is due.
pub struct Reporter {
    interval: u64,
    next: u64,
}

impl Reporter {
    pub fn new(config: &Config) -> Reporter {
        let interval = config.report_ticks();
        Reporter {
            interval,
            next: ticks() + interval,
        }
    }

    /// True (at most once per interval) when a report is due.
    pub fn due(&mut self) -> bool {
        if self.interval == 0 {
            return false;
        }
        let now = ticks();
        if now < self.next {
            return false;
        }
        // Keep the cadence; skip intervals that were missed entirely.
        self.next += self.interval * ((now - self.next) / self.interval + 1);
        true
    }

    /// The tick at which the next report is due (`u64::MAX` if never).
    pub fn next_tick(&self) -> u64 {
        if self.interval == 0 {
            u64::MAX
        } else {
            self.next
        }
    }
}

/// Paces work to `rate` units per second of ticks (0: unpaced).
pub struct Pacer {
    rate: u64,
    hz: u64,
    start: u64,
    pub done: u64,
}

impl Pacer {
    pub fn new(rate: u64, hz: u64) -> Pacer {
        Pacer {
            rate,
            hz,
            start: ticks(),
            done: 0,
        }
    }

    /// Whether another unit may be done now.
    pub fn ready(&self) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = ticks() - self.start;
        let due = (self.rate as u128 * elapsed as u128 / self.hz as u128) as u64;
        self.done < due
    }
}

/// `idle`: halt between ticks, report every interval.
pub fn idle(config: &Config) -> ! {
    let mut reporter = Reporter::new(config);
    if config.report_ticks() == 0 {
        idle_forever();
    }
    loop {
        crate::sys::wait_until(reporter.next_tick());
        if reporter.due() {
            crate::outln!("PROGRESS workload=idle ticks={}", ticks());
        }
    }
}
