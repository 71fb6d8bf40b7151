//! `ab`: increment the first byte of every page of the region, in order, forever (QEMU's
//! migration-test pattern). Before each increment the byte must equal the pass's expected
//! value; from outside, pages `[0, i)` hold `v + 1` and pages `[i, n)` hold `v` (mod 256).

use core::ptr::{read_volatile, write_volatile};

use super::{Region, Reporter};
use crate::cmdline::Config;
use crate::outln;
use crate::sys::{idle_forever, ticks};

pub fn run(config: &Config) -> ! {
    let region = Region::new(config);
    let n = region.pages;
    // Start from a known state: the region's contents are whatever the loader left.
    for i in 0..n {
        // SAFETY: the region was checked to be RAM; nothing else references it.
        unsafe { write_volatile(region.page_addr(i) as *mut u8, 0) };
    }
    let mut reporter = Reporter::new(config);
    let mut value: u8 = 0;
    let mut passes: u64 = 0;
    loop {
        let next = value.wrapping_add(1);
        for i in 0..n {
            let byte = region.page_addr(i) as *mut u8;
            // SAFETY: as above; volatile so every pass really reads and writes memory.
            let got = unsafe { read_volatile(byte) };
            if got != value {
                outln!("CHECK FAIL workload=ab page={i} expected={value} got={got}");
                idle_forever();
            }
            // SAFETY: as above.
            unsafe { write_volatile(byte, next) };
        }
        value = next;
        passes += 1;
        let finished = config.passes != 0 && passes >= config.passes;
        if reporter.due() || finished {
            outln!(
                "PROGRESS workload=ab ticks={} passes={passes} pages={n}",
                ticks()
            );
            outln!("CHECK PASS workload=ab passes={passes}");
        }
        if finished {
            outln!(
                "DONE workload=ab ticks={} passes={passes} pages={n}",
                ticks()
            );
            idle_forever();
        }
    }
}
