//! Source-side cache of the page contents the migration destination already holds.
//!
//! The XOR delta encoding ([`crate::Encoding::Delta`]) needs, for every page it
//! re-sends, the exact bytes that the destination currently has for that page: the content
//! this source sent last. [`SentPageCache`] keeps those copies within a fixed byte budget and
//! also serves as the index for content dedup ("the destination already holds these exact
//! bytes at page `j`").
//!
//! # Eviction policy: segmented (probationary / protected), CLOCK in each
//!
//! A cached copy only pays off when the page is sent *again*, i.e. when the guest re-dirties
//! it during pre-copy. The access pattern of a migration is:
//!
//! * pass 1 streams every non-zero page once: a huge one-time scan, often larger than the
//!   cache;
//! * each later pass re-sends the working set: the same hot pages again and again.
//!
//! Plain LRU is flushed by the pass-1 scan and by any large cold burst. This cache keeps two
//! segments (segmented LRU / 2Q, each approximated by CLOCK):
//!
//! * **probationary**: a page recorded for the first time (pass 1, or a page first written
//!   during the migration). When room is needed, probationary pages go first, oldest first.
//! * **protected**: a page recorded a second time, whether its copy is still cached or was
//!   evicted meanwhile (a bitmap of the pages ever recorded remembers them, 1 bit per page
//!   index): a re-dirtied page, the hot set. Protected pages are evicted only when no
//!   probationary page is left; among them, CLOCK with the reference bit set on every
//!   re-send.
//! * The protected segment holds at most [`PROTECTED_SHARE`] of the slots; beyond it, the
//!   protected page the demotion hand finds unreferenced becomes probationary again, so a
//!   quarter of the slots always admits new pages cheaply.
//!
//! So a first pass larger than the cache costs the hot pages it evicted one miss (their
//! first re-send), after which no amount of one-time traffic evicts them; and a re-dirtied
//! page still cached when it is re-sent is protected at once. To avoid even that miss, the
//! sender looks at the dirty log during a first pass larger than the cache (every quarter
//! of the cache's capacity) and protects the pages already sent that the guest re-dirtied
//! ([`SentPageCache::protect_page`]): they are still cached at that point, so the hot set
//! survives the first pass and its first re-send is a delta.

//! # Memory bound
//!
//! Page copies live in one slab that is reserved once (virtual memory only; it becomes
//! resident as pages are inserted) and never grows past `capacity` slots; the two hash maps
//! are pre-sized for `capacity` entries so they never rehash. The budget per slot is
//! `PAGE_SIZE + SLOT_OVERHEAD_BYTES` and covers the slot metadata and both map entries, so
//! [`SentPageCache::footprint_bytes`] never exceeds the byte budget given to
//! [`SentPageCache::new`].
//!
//! # Sharding
//!
//! The cache has no interior locking. Parallel encoders each own one cache for a disjoint
//! set of page indices (see [`crate::shard::shard_of`]), so nothing is shared on the hot
//! path and a page's history lives in exactly one cache.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::PAGE_SIZE;

/// Per-slot overhead counted against the byte budget, on top of the page copy itself:
/// slot metadata (16 B), the page-index map entry and the dedup map entry with their control
/// bytes at the maps' load factor (≈ 30 B), rounded up generously. (The bitmap of pages
/// ever recorded, 1 bit per page index, is not counted: 32 KiB per GiB of guest.)
pub const SLOT_OVERHEAD_BYTES: usize = 64;

/// Share of the slots the protected segment may hold (numerator over 4): 3/4.
pub const PROTECTED_SHARE: usize = 3;

/// Fast hasher for the cache's integer keys (page indices, crc32 values).
///
/// Keys are produced locally by the encoder (never by the peer), so HashDoS resistance is
/// not needed; the splitmix64 finaliser gives good bits for hashbrown's bucket and tag.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.0 = u64::from(i);
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Metadata of one cache slot; the page copy is at the same index in `SentPageCache::data`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    page: u64,
    crc: u32,
    live: bool,
    referenced: bool,
    /// In the protected segment (re-dirtied), else probationary.
    protected: bool,
}

/// Counters of cache maintenance (lookups and hit rates are counted by the encoder, which
/// knows which lookups were delta-base lookups).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounters {
    /// Pages inserted into a free or evicted slot.
    pub insertions: u64,
    /// Cached pages whose copy was replaced by newly sent content (re-dirtied pages).
    pub updates: u64,
    /// Pages evicted by the clock hand to make room.
    pub evictions: u64,
    /// Pages dropped with [`SentPageCache::forget`] (e.g. sent as zero pages).
    pub forgets: u64,
}

/// The memory of a sent-page cache could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot reserve {bytes} bytes for the sent-page cache: use a smaller --cache-size")]
pub struct CacheAllocError {
    /// The budget asked for.
    pub bytes: usize,
}

/// Byte-bounded cache of the content last sent for each page, with CLOCK eviction and a
/// content index for dedup. See the module documentation for the policy and the bound.
pub struct SentPageCache {
    max_bytes: usize,
    capacity: usize,
    /// Page copies; `data.len() <= capacity`, reserved up front so it never reallocates.
    data: Vec<[u8; PAGE_SIZE]>,
    slots: Vec<Slot>,
    /// page index -> slot
    index: IntMap<u64, u32>,
    /// crc32 of content -> a slot holding content with that crc (verified by memcmp on use).
    by_crc: IntMap<u32, u32>,
    free: Vec<u32>,
    /// The eviction hand.
    hand: usize,
    /// The demotion hand (protected segment full).
    demote_hand: usize,
    live: usize,
    /// Live protected slots.
    protected: usize,
    /// Most protected slots.
    max_protected: usize,
    /// Bit `p` set: page `p` was recorded before (grows on demand).
    seen: Vec<u64>,
    counters: CacheCounters,
}

impl std::fmt::Debug for SentPageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentPageCache")
            .field("max_bytes", &self.max_bytes)
            .field("capacity", &self.capacity)
            .field("len", &self.live)
            .field("counters", &self.counters)
            .finish()
    }
}

impl SentPageCache {
    /// Creates a cache that never accounts for more than `max_bytes` (page copies plus
    /// metadata). `max_bytes` smaller than one slot gives a disabled cache that stores nothing.
    ///
    /// # Panics
    ///
    /// If the memory cannot be reserved (tests and benchmarks); the engine uses
    /// [`SentPageCache::try_new`].
    pub fn new(max_bytes: usize) -> Self {
        Self::try_new(max_bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`SentPageCache::new`], but a failed reservation is an error, not an abort (an
    /// oversized `--cache-size` must not take the source VMM and its guest down).
    pub fn try_new(max_bytes: usize) -> Result<Self, CacheAllocError> {
        // Slot indices are u32; 2^32 slots would be 16 TiB of cache.
        let capacity = (max_bytes / (PAGE_SIZE + SLOT_OVERHEAD_BYTES)).min(u32::MAX as usize);
        let fail = |_| CacheAllocError { bytes: max_bytes };
        let mut data = Vec::new();
        data.try_reserve_exact(capacity).map_err(fail)?;
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).map_err(fail)?;
        let mut index = IntMap::default();
        index.try_reserve(capacity).map_err(fail)?;
        let mut by_crc = IntMap::default();
        by_crc.try_reserve(capacity).map_err(fail)?;
        Ok(SentPageCache {
            max_bytes,
            capacity,
            data,
            slots,
            index,
            by_crc,
            free: Vec::new(),
            hand: 0,
            demote_hand: 0,
            live: 0,
            protected: 0,
            max_protected: (capacity * PROTECTED_SHARE / 4).max(1),
            seen: Vec::new(),
            counters: CacheCounters::default(),
        })
    }

    /// The byte budget given to [`SentPageCache::new`].
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Maximum number of pages the cache holds.
    pub fn capacity_pages(&self) -> usize {
        self.capacity
    }

    /// Number of pages currently cached.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True if no page is cached.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes accounted to the slots in use (`slots × (PAGE_SIZE + SLOT_OVERHEAD_BYTES)`);
    /// always `<= max_bytes()`.
    pub fn footprint_bytes(&self) -> usize {
        self.data.len() * (PAGE_SIZE + SLOT_OVERHEAD_BYTES)
    }

    /// Maintenance counters since creation or the last [`SentPageCache::clear`].
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// The content last sent for `page`, if cached. Does not touch the reference bit: only
    /// re-sending a page ([`SentPageCache::record_sent`]) marks it as worth keeping.
    pub fn get(&self, page: u64) -> Option<&[u8; PAGE_SIZE]> {
        let &slot = self.index.get(&page)?;
        self.data.get(slot as usize)
    }

    /// True if a copy of `page` is cached.
    pub fn contains(&self, page: u64) -> bool {
        self.index.contains_key(&page)
    }

    /// A page index whose cached (= destination-held) content is byte-for-byte equal to
    /// `content`, whose crc32 is `crc`. May return the index of the page being sent itself.
    pub fn find_identical(&self, crc: u32, content: &[u8; PAGE_SIZE]) -> Option<u64> {
        let &slot = self.by_crc.get(&crc)?;
        let meta = self.slots.get(slot as usize)?;
        let data = self.data.get(slot as usize)?;
        (meta.live && meta.crc == crc && data == content).then_some(meta.page)
    }

    /// Records that `content` (crc32 `crc`) was sent for `page`, so the destination now
    /// holds it. A page already cached is overwritten in place, marked referenced and
    /// protected; a new page takes a free slot or evicts one, and enters the protected
    /// segment if it was recorded before (re-dirtied), else the probationary one. No-op on a
    /// disabled cache.
    pub fn record_sent(&mut self, page: u64, crc: u32, content: &[u8; PAGE_SIZE]) {
        if self.capacity == 0 {
            return;
        }
        let resent = self.mark_seen(page);
        if let Some(&slot) = self.index.get(&page) {
            let s = slot as usize;
            let old_crc = self.slots[s].crc;
            if self.by_crc.get(&old_crc) == Some(&slot) {
                self.by_crc.remove(&old_crc);
            }
            self.data[s] = *content;
            self.slots[s].crc = crc;
            self.slots[s].referenced = true;
            self.by_crc.insert(crc, slot);
            self.counters.updates += 1;
            self.protect(slot);
            return;
        }
        let slot = self.allocate_slot();
        let s = slot as usize;
        let meta = Slot {
            page,
            crc,
            live: true,
            referenced: resent,
            protected: false,
        };
        if s == self.data.len() {
            self.data.push(*content);
            self.slots.push(meta);
        } else {
            self.data[s] = *content;
            self.slots[s] = meta;
        }
        self.index.insert(page, slot);
        self.by_crc.insert(crc, slot);
        self.live += 1;
        self.counters.insertions += 1;
        if resent {
            self.protect(slot);
        }
    }

    /// Moves the cached copy of `page`, if any, into the protected segment: the caller
    /// knows it was re-dirtied (the dirty log says so) before it is sent again. No-op for a
    /// page not cached.
    pub fn protect_page(&mut self, page: u64) {
        if let Some(&slot) = self.index.get(&page) {
            self.slots[slot as usize].referenced = true;
            self.protect(slot);
        }
    }

    /// True if `page` is protected (re-dirtied) in the cache.
    pub fn is_protected(&self, page: u64) -> bool {
        self.index
            .get(&page)
            .and_then(|&s| self.slots.get(s as usize))
            .is_some_and(|m| m.protected)
    }

    /// Marks `page` as recorded; returns whether it was recorded before. If the bitmap
    /// cannot grow (no memory), the page counts as new: only the policy suffers.
    fn mark_seen(&mut self, page: u64) -> bool {
        let Ok(word) = usize::try_from(page / 64) else {
            return false;
        };
        if word >= self.seen.len() {
            let want = (word + 1).max(self.seen.len() * 2);
            if self.seen.try_reserve(want - self.seen.len()).is_err() {
                return false;
            }
            self.seen.resize(want, 0);
        }
        let bit = 1u64 << (page % 64);
        let before = self.seen[word] & bit != 0;
        self.seen[word] |= bit;
        before
    }

    /// Moves `slot` into the protected segment, demoting another protected page first if
    /// the segment is full.
    fn protect(&mut self, slot: u32) {
        let s = slot as usize;
        if self.slots[s].protected {
            return;
        }
        if self.protected >= self.max_protected {
            self.demote_one(s);
        }
        self.slots[s].protected = true;
        self.protected += 1;
    }

    /// Demotes one protected page (not `keep`) to probationary: the first the demotion hand
    /// finds unreferenced, clearing the bits it passes over.
    fn demote_one(&mut self, keep: usize) {
        let n = self.slots.len();
        // Terminates within two turns: a live protected slot other than `keep` exists
        // (protected >= max_protected >= 1 and `keep` is not protected).
        for _ in 0..2 * n + 1 {
            let s = self.demote_hand;
            self.demote_hand = (self.demote_hand + 1) % n;
            let meta = &mut self.slots[s];
            if s == keep || !meta.live || !meta.protected {
                continue;
            }
            if meta.referenced {
                meta.referenced = false;
                continue;
            }
            meta.protected = false;
            self.protected -= 1;
            return;
        }
    }

    /// Drops the cached copy of `page`: the destination no longer holds what was cached
    /// (it was sent as a zero page, or the caller sent it by other means).
    pub fn forget(&mut self, page: u64) {
        if let Some(slot) = self.index.remove(&page) {
            self.release(slot);
            self.free.push(slot);
            self.counters.forgets += 1;
        }
    }

    /// Empties the cache (keeps the reserved memory). Counters are reset too.
    pub fn clear(&mut self) {
        self.data.clear();
        self.slots.clear();
        self.index.clear();
        self.by_crc.clear();
        self.free.clear();
        self.hand = 0;
        self.demote_hand = 0;
        self.live = 0;
        self.protected = 0;
        self.seen.clear();
        self.counters = CacheCounters::default();
    }

    /// Marks `slot` dead and unlinks it from the content index (not from `index`).
    fn release(&mut self, slot: u32) {
        let s = slot as usize;
        let crc = self.slots[s].crc;
        if self.by_crc.get(&crc) == Some(&slot) {
            self.by_crc.remove(&crc);
        }
        if self.slots[s].protected {
            self.protected -= 1;
        }
        self.slots[s].live = false;
        self.slots[s].referenced = false;
        self.slots[s].protected = false;
        self.live -= 1;
    }

    /// Returns a slot to fill: a free one, a never-used one, or a victim: the first
    /// probationary page the hand finds while there are any (at least a quarter of the
    /// slots once full), else a protected one by CLOCK.
    fn allocate_slot(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.data.len() < self.capacity {
            return self.data.len() as u32;
        }
        // All slots are live (free list empty): sweep. With probationary pages, one turn
        // finds one; without, CLOCK terminates within two turns because every referenced
        // slot passed over loses its bit.
        let n = self.slots.len();
        let probationary = self.live > self.protected;
        loop {
            let s = self.hand;
            self.hand = (self.hand + 1) % n;
            let meta = &mut self.slots[s];
            if !meta.live {
                return s as u32;
            }
            if meta.protected {
                if probationary {
                    continue;
                }
                if meta.referenced {
                    meta.referenced = false;
                    continue;
                }
            }
            let page = meta.page;
            self.index.remove(&page);
            self.release(s as u32);
            self.counters.evictions += 1;
            return s as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u64) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for chunk in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        p
    }

    fn crc(p: &[u8; PAGE_SIZE]) -> u32 {
        crc32fast::hash(p)
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut c = SentPageCache::new(100);
        assert_eq!(c.capacity_pages(), 0);
        let p = page(1);
        c.record_sent(1, crc(&p), &p);
        assert!(c.get(1).is_none());
        assert!(c.is_empty());
        assert_eq!(c.footprint_bytes(), 0);
    }

    #[test]
    fn eviction_keeps_within_bound() {
        let budget = 64 * 1024 + 123;
        let mut c = SentPageCache::new(budget);
        let cap = c.capacity_pages();
        assert_eq!(cap, budget / (PAGE_SIZE + SLOT_OVERHEAD_BYTES));
        for i in 0..10_000u64 {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
            assert!(c.len() <= cap);
            assert!(c.footprint_bytes() <= budget);
        }
        assert_eq!(c.len(), cap);
        assert_eq!(c.counters().evictions, 10_000 - cap as u64);
        // The most recent `cap` pages are the ones cached (FIFO among unreferenced pages),
        // with their exact content.
        for i in (10_000 - cap as u64)..10_000 {
            assert_eq!(c.get(i), Some(&page(i)), "page {i}");
        }
        // The internal maps never grew past the pre-sized capacity (no rehash).
        assert!(c.index.len() <= cap && c.by_crc.len() <= cap);
        assert!(c.data.capacity() == cap);
    }

    #[test]
    fn re_dirtied_pages_survive_a_cold_scan() {
        let mut c = SentPageCache::new(16 * (PAGE_SIZE + SLOT_OVERHEAD_BYTES));
        assert_eq!(c.capacity_pages(), 16);
        // Pass 1: pages 0..16 fill the cache. Pages 0..4 are re-sent (hot).
        for i in 0..16u64 {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
        }
        for i in 0..4u64 {
            let p = page(i + 1000);
            c.record_sent(i, crc(&p), &p);
        }
        // A cold burst of 12 new pages evicts the 12 unreferenced ones, not the hot ones.
        for i in 100..112u64 {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
        }
        for i in 0..4u64 {
            assert_eq!(c.get(i), Some(&page(i + 1000)), "hot page {i} evicted");
        }
        for i in 4..16u64 {
            assert!(c.get(i).is_none(), "cold page {i} kept");
        }
        // Protected, they survive any amount of first-time traffic.
        for i in 200..264u64 {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
        }
        for i in 0..4u64 {
            assert_eq!(c.get(i), Some(&page(i + 1000)), "hot page {i} evicted");
            assert!(c.is_protected(i));
        }
        assert_eq!(c.len(), 16);
    }

    #[test]
    fn after_a_first_pass_larger_than_the_cache_the_re_dirtied_set_still_hits() {
        let cap = 64u64;
        let mut c = SentPageCache::new(cap as usize * (PAGE_SIZE + SLOT_OVERHEAD_BYTES));
        // Pass 1: 4x the cache; the hot set (every 10th of the first 200 pages) is evicted
        // by the rest of the pass, as in any policy.
        for i in 0..4 * cap {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
        }
        let hot: Vec<u64> = (0..200).step_by(10).collect();
        assert!(hot.iter().all(|&h| !c.contains(h)));
        // Round 1: the hot set is re-sent (misses, recorded as re-dirtied), and so are
        // 3x the cache of pages first written during the migration.
        for &h in &hot {
            let p = page(h + 7);
            c.record_sent(h, crc(&p), &p);
        }
        for i in 10_000..10_000 + 3 * cap {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
        }
        // Round 2: every hot page hits, with the content of round 1.
        for &h in &hot {
            assert_eq!(c.get(h), Some(&page(h + 7)), "hot page {h} evicted");
        }
        // And a page recorded once, still cached and re-sent, is protected at once.
        let last = 10_000 + 3 * cap - 1;
        assert!(c.contains(last) && !c.is_protected(last));
        let p = page(last + 1);
        c.record_sent(last, crc(&p), &p);
        assert!(c.is_protected(last));
    }

    #[test]
    fn the_protected_segment_keeps_room_for_new_pages() {
        let cap = 16usize;
        let mut c = SentPageCache::new(cap * (PAGE_SIZE + SLOT_OVERHEAD_BYTES));
        // Every page re-sent: all want protection, at most 3/4 get it.
        for round in 0..3u64 {
            for i in 0..cap as u64 {
                let p = page(i + round * 100);
                c.record_sent(i, crc(&p), &p);
            }
        }
        assert!(c.protected <= cap * PROTECTED_SHARE / 4);
        assert_eq!(c.protected, cap * PROTECTED_SHARE / 4);
        // New pages still get in.
        for i in 500..600u64 {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
            assert!(c.contains(i));
            assert!(c.len() <= cap);
        }
    }

    #[test]
    fn dedup_index_follows_overwrites_and_evictions() {
        let mut c = SentPageCache::new(4 * (PAGE_SIZE + SLOT_OVERHEAD_BYTES));
        let a = page(1);
        let b = page(2);
        c.record_sent(10, crc(&a), &a);
        assert_eq!(c.find_identical(crc(&a), &a), Some(10));
        assert_eq!(c.find_identical(crc(&b), &b), None);
        // Page 10 overwritten: its old content is no longer at the destination.
        c.record_sent(10, crc(&b), &b);
        assert_eq!(c.find_identical(crc(&a), &a), None);
        assert_eq!(c.find_identical(crc(&b), &b), Some(10));
        // Forgotten page: gone from the content index too.
        c.forget(10);
        assert_eq!(c.find_identical(crc(&b), &b), None);
        assert!(c.is_empty());
        // Same crc, different content (forced): memcmp rejects it.
        let mut fake = b;
        fake[0] ^= 1;
        c.record_sent(11, crc(&b), &fake);
        assert_eq!(c.find_identical(crc(&b), &b), None);
        // Eviction removes the content mapping.
        for i in 0..8u64 {
            let p = page(100 + i);
            c.record_sent(100 + i, crc(&p), &p);
        }
        assert_eq!(c.find_identical(crc(&page(100)), &page(100)), None);
        assert_eq!(c.find_identical(crc(&page(107)), &page(107)), Some(107));
    }

    #[test]
    fn free_slots_are_reused_before_evicting() {
        let mut c = SentPageCache::new(4 * (PAGE_SIZE + SLOT_OVERHEAD_BYTES));
        for i in 0..4u64 {
            let p = page(i);
            c.record_sent(i, crc(&p), &p);
        }
        c.forget(2);
        let p = page(9);
        c.record_sent(9, crc(&p), &p);
        assert_eq!(c.counters().evictions, 0);
        for i in [0u64, 1, 3, 9] {
            assert!(c.contains(i));
        }
        c.clear();
        assert!(c.is_empty() && c.get(0).is_none());
    }
}
