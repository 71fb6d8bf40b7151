//! Synthetic guest pages for tests and benchmarks (feature `testdata`): text, structured
//! and random pages, a guest image mixing them, and dirty passes over it.

use crate::batch::le_u64;
use crate::decoder::BatchDecoder;
use crate::encoder::{BatchEncoder, EncoderConfig};
use crate::error::CodecError;
use crate::stats::BatchStats;
use crate::store::PageStore;
use crate::unit::{MemoryUnits, UnitError, UnitSet, UnitSource, GUEST_MEMORY};
use crate::PAGE_SIZE;

/// xorshift64* PRNG: deterministic test data without extra dependencies.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next pseudo-random word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One page of content.
pub type Page = [u8; PAGE_SIZE];
/// A generator of one class of page.
pub type PageMaker = fn(&mut Rng) -> Page;

const SYLLABLES: [&str; 24] = [
    "ka", "ro", "ve", "lin", "tor", "mis", "pa", "den", "sul", "ox", "ri", "an", "cel", "ba", "qu",
    "est", "io", "nar", "pe", "th", "un", "gra", "mo", "sy",
];
const LEVELS: [&str; 4] = ["INFO", "WARN", "DEBUG", "ERROR"];

fn word(rng: &mut Rng) -> String {
    // Zipf-like: small vocabulary indices are much more frequent.
    let n = 400u64;
    let idx = rng.below(n) * rng.below(n) / n;
    let mut w = String::new();
    let mut x = idx.wrapping_mul(2654435761) + 7;
    for _ in 0..(1 + idx % 3) {
        w.push_str(SYLLABLES[(x % SYLLABLES.len() as u64) as usize]);
        x /= SYLLABLES.len() as u64;
        x = x.wrapping_mul(31) + 3;
    }
    w
}

/// Log lines and prose: compresses about 3-4x with zstd, like page-cache text.
pub fn text_page(rng: &mut Rng) -> Page {
    let mut s = String::new();
    while s.len() < PAGE_SIZE {
        if rng.below(2) == 0 {
            s.push_str(&format!(
                "2025-03-{:02} {:02}:{:02}:{:02}.{:03} {} worker[{}]: ",
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(1000),
                LEVELS[rng.below(4) as usize],
                rng.below(64)
            ));
        }
        for _ in 0..(3 + rng.below(12)) {
            s.push_str(&word(rng));
            s.push(' ');
        }
        if rng.below(3) == 0 {
            s.push_str(&format!("{} ", rng.below(100_000)));
        }
        s.push('\n');
    }
    let mut p = [0u8; PAGE_SIZE];
    p.copy_from_slice(&s.as_bytes()[..PAGE_SIZE]);
    p
}

/// Heap-like page: zeros, small integers, kernel-style pointers, some random words.
pub fn struct_page(rng: &mut Rng) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let base = 0xffff_8880_0000_0000u64 | (rng.below(16) << 32);
    for slot in p.chunks_exact_mut(8) {
        let v = match rng.below(100) {
            0..=29 => 0,
            30..=54 => rng.below(1000),
            55..=84 => base | (rng.below(1 << 24) << 3),
            _ => rng.next_u64(),
        };
        slot.copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// Incompressible content.
pub fn random_page(rng: &mut Rng) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    rng.fill(&mut p);
    p
}

/// A few bytes changed: counters incremented, a pointer replaced, a byte written.
pub fn tweak(p: &mut Page, rng: &mut Rng) {
    for _ in 0..(1 + rng.below(6)) {
        let off = (rng.below((PAGE_SIZE / 8) as u64) * 8) as usize;
        let mut v = le_u64(&p[off..off + 8]);
        match rng.below(3) {
            0 => v = v.wrapping_add(1 + rng.below(3)),
            1 => v = 0xffff_8880_0000_0000 | (rng.below(1 << 30) << 3),
            _ => v ^= 1 << rng.below(64),
        }
        p[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// New content for a rewritten page: 40% text, 40% structured, 20% random.
pub fn new_content(rng: &mut Rng) -> Page {
    match rng.below(10) {
        0..=3 => text_page(rng),
        4..=7 => struct_page(rng),
        _ => random_page(rng),
    }
}

/// 35% zero, 30% text, 25% structured, 10% random.
pub fn guest_image(rng: &mut Rng, pages: usize) -> Vec<Page> {
    (0..pages)
        .map(|_| match rng.below(100) {
            0..=34 => [0u8; PAGE_SIZE],
            35..=64 => text_page(rng),
            65..=89 => struct_page(rng),
            _ => random_page(rng),
        })
        .collect()
}

/// Dirties `count` distinct pages: 70% tweaked, 20% rewritten, 5% zeroed, 5% copies of
/// another page. Returns the sorted dirty indices.
pub fn dirty_pass(rng: &mut Rng, mem: &mut [Page], count: usize) -> Vec<u64> {
    let n = mem.len() as u64;
    let mut dirty = std::collections::BTreeSet::new();
    while dirty.len() < count.min(mem.len()) {
        dirty.insert(rng.below(n));
    }
    for &i in &dirty {
        let i = i as usize;
        match rng.below(100) {
            0..=69 => tweak(&mut mem[i], rng),
            70..=89 => mem[i] = new_content(rng),
            90..=94 => mem[i] = [0u8; PAGE_SIZE],
            _ => {
                let j = rng.below(n) as usize;
                mem[i] = mem[j];
            }
        }
    }
    dirty.into_iter().collect()
}

/// A single-shard encoder with a cache of `encoding_cache` bytes.
pub fn encoder(encoding_cache: usize, dedup: bool) -> BatchEncoder {
    BatchEncoder::new(EncoderConfig {
        cache_bytes: encoding_cache,
        dedup,
        ..EncoderConfig::default()
    })
    .expect("a single-shard configuration is valid")
}

/// Decodes one batch with a fresh decoder (the tests' one-shot decode).
pub fn decode_batch<S: PageStore + ?Sized>(
    bytes: &[u8],
    memory: &mut S,
) -> Result<BatchStats, CodecError> {
    BatchDecoder::new()?.decode(bytes, memory)
}

/// Guest memory for engine tests whose simulated guest rewrites units while each round is
/// in flight: `schedule[r]` units during dirty round `r` (0 once the schedule ends), then
/// `final_units` more just before the pause. `shadow` is what the guest holds.
pub struct ScheduledGuest {
    /// The units as the sender reads them.
    pub memory: MemoryUnits,
    /// The guest's own copy of its units.
    pub shadow: Vec<Page>,
    rng: Rng,
    schedule: Vec<usize>,
    rounds: usize,
    final_units: usize,
}

impl ScheduledGuest {
    /// `units` units of a [`guest_image`] drawn with `seed`.
    pub fn new(seed: u64, units: u64, schedule: Vec<usize>, final_units: usize) -> Self {
        let mut rng = Rng::new(seed);
        let shadow = guest_image(&mut rng, units as usize);
        let mut memory = MemoryUnits::new(GUEST_MEMORY, units);
        for (i, p) in shadow.iter().enumerate() {
            memory.store(i as u64, p);
        }
        ScheduledGuest {
            memory,
            shadow,
            rng,
            schedule,
            rounds: 0,
            final_units,
        }
    }

    /// The guest runs: `count` units change (tweaked, rewritten, zeroed or copied).
    pub fn run(&mut self, count: usize) {
        for n in dirty_pass(&mut self.rng, &mut self.shadow, count) {
            self.memory.store(n, &self.shadow[n as usize]);
        }
    }
}

impl UnitSource for ScheduledGuest {
    fn id(&self) -> u8 {
        GUEST_MEMORY
    }
    fn count(&self) -> u64 {
        self.memory.units().len() as u64
    }
    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError> {
        UnitSource::populated(&mut self.memory, set)
    }
    fn track(&mut self) -> Result<(), UnitError> {
        self.memory.track()
    }
    fn dirty(&mut self, set: &mut UnitSet, final_pass: bool) -> Result<(), UnitError> {
        let count = if final_pass {
            self.final_units
        } else {
            let c = self.schedule.get(self.rounds).copied().unwrap_or(0);
            self.rounds += 1;
            c
        };
        self.run(count);
        self.memory.dirty(set, final_pass)
    }
    fn prepare(&mut self, words: &[u64], word: usize) -> Result<usize, UnitError> {
        self.memory.prepare(words, word)
    }
    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        self.memory.read(n, buf)
    }
}

/// A loopback TCP relay to `dest` that records what its one client sends: connect the
/// source to the returned address; the thread ends when the source closes its side (or the
/// destination stops reading) and yields the recorded source-to-destination bytes. The
/// destination's replies go back unrecorded.
pub fn recording_relay(
    dest: std::net::SocketAddr,
) -> std::io::Result<(
    std::net::SocketAddr,
    std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
)> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let relay = std::thread::spawn(move || {
        let (mut from_src, _) = listener.accept()?;
        let mut to_dst = TcpStream::connect(dest)?;
        let (mut back_dst, mut back_src) = (to_dst.try_clone()?, from_src.try_clone()?);
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_dst, &mut back_src);
            let _ = back_src.shutdown(Shutdown::Write);
        });
        let mut recorded = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match from_src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recorded.extend_from_slice(&buf[..n]);
                    if to_dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_dst.shutdown(Shutdown::Write);
        let _ = back.join();
        Ok(recorded)
    });
    Ok((addr, relay))
}
