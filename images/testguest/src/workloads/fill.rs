//! `fill`: populate the region with realistic, compressible content, then rewrite a hot set
//! (the first `hot` MiB) at `rate` pages per second by changing small fields, as a database
//! would. Guarded by the checksum table like `rand`.
//!
//! Page kinds, chosen per page by a hash of (seed, index): 10 % random bytes, 15 % zero,
//! 35 % English-like text, 40 % database-style record pages (a 64-byte header and 63
//! records of 64 bytes holding small integers, timestamps and a name).

use core::fmt::Write;

use super::paged::{self, PageWriter};
use super::words::{fill_text, WORDS};
use super::{checksum, mix, Region, Reporter, Rng};
use crate::cmdline::Config;
use crate::layout::PAGE_SIZE;
use crate::serial::Line;
use crate::sys::ticks;

const PAGE: usize = PAGE_SIZE as usize;
const HEADER: usize = 64;
const RECORD: usize = 64;
const RECORDS: usize = (PAGE - HEADER) / RECORD;
const EPOCH: u64 = 1_700_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Random,
    Zero,
    Text,
    Records,
}

fn kind(seed: u64, index: u64) -> Kind {
    match mix(seed, index) % 100 {
        0..=9 => Kind::Random,
        10..=24 => Kind::Zero,
        25..=59 => Kind::Text,
        _ => Kind::Records,
    }
}

fn put(page: &mut [u8; PAGE], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn write_record(page: &mut [u8; PAGE], index: u64, slot: usize, rng: &mut Rng) {
    let at = HEADER + slot * RECORD;
    let id = index * RECORDS as u64 + slot as u64 + 1;
    let created = EPOCH + id * 7;
    let mut name = [0u8; 16];
    let word = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
    name[..word.len()].copy_from_slice(word);
    put(page, at, &id.to_le_bytes());
    put(page, at + 8, &(rng.below(5000) as u32).to_le_bytes()); // customer
    put(page, at + 12, &(1 + rng.below(100) as u16).to_le_bytes()); // quantity
    page[at + 14] = rng.below(5) as u8; // status
    page[at + 15] = rng.below(4) as u8; // flags
    put(
        page,
        at + 16,
        &(100 + rng.below(100_000) as u32).to_le_bytes(),
    ); // price (cents)
    put(page, at + 20, &(rng.below(50) as u16).to_le_bytes()); // region
    put(page, at + 22, &[0, 0]);
    put(page, at + 24, &created.to_le_bytes());
    put(page, at + 32, &created.to_le_bytes()); // updated
    put(page, at + 40, &name);
    put(page, at + 56, &1u32.to_le_bytes()); // version
    put(page, at + 60, &[0; 4]);
}

fn populate(page: &mut [u8; PAGE], index: u64, kind: Kind, rng: &mut Rng) {
    match kind {
        Kind::Zero => page.fill(0),
        Kind::Random => {
            for chunk in page.chunks_exact_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
        Kind::Text => fill_text(page, rng),
        Kind::Records => {
            page[..HEADER].fill(0);
            put(page, 0, b"NCRPAGE1");
            put(page, 8, &index.to_le_bytes());
            put(page, 16, &(RECORDS as u32).to_le_bytes());
            for slot in 0..RECORDS {
                write_record(page, index, slot, rng);
            }
        }
    }
}

/// An update of a record: new quantity, status, price, `updated` timestamp and version.
fn update_record(page: &mut [u8; PAGE], slot: usize, rng: &mut Rng) {
    let at = HEADER + slot * RECORD;
    put(page, at + 12, &(1 + rng.below(100) as u16).to_le_bytes());
    page[at + 14] = rng.below(5) as u8;
    put(
        page,
        at + 16,
        &(100 + rng.below(100_000) as u32).to_le_bytes(),
    );
    put(page, at + 32, &(EPOCH + 1_000_000 + ticks()).to_le_bytes());
    let version = u32::from_le_bytes([page[at + 56], page[at + 57], page[at + 58], page[at + 59]]);
    put(page, at + 56, &version.wrapping_add(1).to_le_bytes());
}

struct FillWriter {
    seed: u64,
    hot_pages: u64,
    populated: u64,
}

impl PageWriter for FillWriter {
    fn name(&self) -> &'static str {
        "fill"
    }

    fn pick(&mut self, rng: &mut Rng) -> u64 {
        rng.below(self.hot_pages)
    }

    fn modify(&mut self, page: &mut [u8; PAGE], index: u64, rng: &mut Rng) {
        let span = 16 + rng.below(33) as usize;
        let at = rng.below((PAGE - span) as u64) as usize;
        match kind(self.seed, index) {
            Kind::Records => {
                for _ in 0..1 + rng.below(3) {
                    update_record(page, rng.below(RECORDS as u64) as usize, rng);
                }
            }
            // A zero page gains one record.
            Kind::Zero => write_record(page, index, rng.below(RECORDS as u64) as usize, rng),
            Kind::Text => fill_text(&mut page[at..at + span], rng),
            Kind::Random => {
                for b in &mut page[at..at + span] {
                    *b = rng.next() as u8;
                }
            }
        }
    }

    fn fields(&self, line: &mut Line) {
        let _ = write!(line, " populated={}", self.populated);
    }
}

pub fn run(config: &Config) -> ! {
    let region = Region::new(config);
    let mut writer = FillWriter {
        seed: config.seed,
        hot_pages: (config.hot * (1 << 20) / PAGE_SIZE).min(region.pages),
        populated: 0,
    };
    let mut reporter = Reporter::new(config);
    for i in 0..region.pages {
        let mut page_rng = Rng::new(mix(config.seed ^ 0x5eed, i));
        // SAFETY: i < pages; no other reference to the page or its slot is live.
        let (page, slot) = unsafe { (region.page(i), region.checksum_slot(i)) };
        populate(page, i, kind(config.seed, i), &mut page_rng);
        *slot = checksum(page);
        writer.populated = i + 1;
        if reporter.due() {
            paged::report(&writer, 0, 0);
        }
    }
    let mut rng = Rng::new(config.seed);
    paged::run(config, &region, &mut writer, &mut rng)
}
