//! The driver shared by `rand` and `fill`: modify one page at a time at a paced rate, each
//! guarded by the per-page checksum table (verify before modifying, update after), and
//! verify the whole region every `SWEEP_SECONDS`.

use core::fmt::Write;

use super::{checksum, Pacer, Region, Reporter, Rng};
use crate::cmdline::Config;
use crate::layout::PAGE_SIZE;
use crate::outln;
use crate::serial::Line;
use crate::sys::{idle_forever, ticks, wait_for_interrupt};

/// Seconds between full-region checksum sweeps.
pub const SWEEP_SECONDS: u64 = 5;

/// What a checked workload does to pages.
pub trait PageWriter {
    fn name(&self) -> &'static str;
    /// The next page to modify.
    fn pick(&mut self, rng: &mut Rng) -> u64;
    /// Modifies page `index`.
    fn modify(&mut self, page: &mut [u8; PAGE_SIZE as usize], index: u64, rng: &mut Rng);
    /// Extra `key=value` fields for progress lines (each preceded by a space).
    fn fields(&self, _line: &mut Line) {}
}

/// Reports a checksum mismatch and stops the workload.
pub fn fail(workload: &str, index: u64, expected: u32, got: u32) -> ! {
    outln!("CHECK FAIL workload={workload} page={index} expected=0x{expected:08x} got=0x{got:08x}");
    idle_forever();
}

/// Verifies every page against the table.
pub fn sweep(workload: &str, region: &Region) {
    for i in 0..region.pages {
        // SAFETY: i < pages; no other reference to the page or its slot is live.
        let (page, slot) = unsafe { (region.page(i), region.checksum_slot(i)) };
        let got = checksum(page);
        if got != *slot {
            fail(workload, i, *slot, got);
        }
    }
}

/// Prints a `PROGRESS` line followed by `CHECK PASS`.
pub fn report<W: PageWriter>(writer: &W, pages: u64, sweeps: u64) {
    let mut line = Line::new();
    let _ = write!(
        line,
        "PROGRESS workload={} ticks={}",
        writer.name(),
        ticks()
    );
    writer.fields(&mut line);
    let _ = write!(line, " pages={pages} sweeps={sweeps}");
    line.emit();
    outln!(
        "CHECK PASS workload={} pages={pages} sweeps={sweeps}",
        writer.name()
    );
}

/// Runs the paced modify loop forever (the checksum table must already be valid).
pub fn run<W: PageWriter>(config: &Config, region: &Region, writer: &mut W, rng: &mut Rng) -> ! {
    let mut reporter = Reporter::new(config);
    let mut pacer = Pacer::new(config.rate, config.hz);
    let sweep_ticks = SWEEP_SECONDS * config.hz;
    let mut next_sweep = ticks() + sweep_ticks;
    let mut sweeps = 0;
    loop {
        if pacer.ready() {
            let i = writer.pick(rng);
            // SAFETY: pick returns an index below pages; no other reference is live.
            let (page, slot) = unsafe { (region.page(i), region.checksum_slot(i)) };
            let got = checksum(page);
            if got != *slot {
                fail(writer.name(), i, *slot, got);
            }
            writer.modify(page, i, rng);
            *slot = checksum(page);
            pacer.done += 1;
        } else {
            wait_for_interrupt();
        }
        if ticks() >= next_sweep {
            sweep(writer.name(), region);
            sweeps += 1;
            next_sweep = ticks() + sweep_ticks;
        }
        if reporter.due() {
            report(writer, pacer.done, sweeps);
        }
    }
}
