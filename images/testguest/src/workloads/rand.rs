//! `rand`: at `rate` pages per second, pick a random page and write `bytes` random bytes at
//! random offsets, guarded by the checksum table.

use super::paged::{self, PageWriter};
use super::{checksum, Region, Rng};
use crate::cmdline::Config;
use crate::layout::PAGE_SIZE;

struct RandWriter {
    pages: u64,
    bytes: u64,
}

impl PageWriter for RandWriter {
    fn name(&self) -> &'static str {
        "rand"
    }

    fn pick(&mut self, rng: &mut Rng) -> u64 {
        rng.below(self.pages)
    }

    fn modify(&mut self, page: &mut [u8; PAGE_SIZE as usize], _index: u64, rng: &mut Rng) {
        for _ in 0..self.bytes {
            let r = rng.next();
            page[(r % PAGE_SIZE) as usize] = (r >> 56) as u8;
        }
    }
}

pub fn run(config: &Config) -> ! {
    let region = Region::new(config);
    // The region keeps whatever it holds; the table records that as the starting state.
    for i in 0..region.pages {
        // SAFETY: i < pages; no other reference to the page or its slot is live.
        unsafe { *region.checksum_slot(i) = checksum(region.page(i)) };
    }
    let mut writer = RandWriter {
        pages: region.pages,
        bytes: config.bytes,
    };
    let mut rng = Rng::new(config.seed);
    paged::run(config, &region, &mut writer, &mut rng)
}
