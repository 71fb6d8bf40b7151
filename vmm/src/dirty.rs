//! Dirty-page tracking over guest-physical page frame numbers: KVM's dirty log (guest writes)
//! merged with the `vm-memory` `AtomicBitmap` (writes the VMM made), plus the "ever touched"
//! view from the host mapping's residency, so memory the guest never touched is never
//! scanned or sent. Snapshots, diff snapshots and every migration round read this view.

pub use crate::kvm::vm::REARM_WORDS;
use crate::kvm::vm::{merge_bits, VmError};
use crate::layout::PAGE_SIZE;
use crate::machine::Machine;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// A bitmap over guest page frame numbers (bit `n` = page at GPA `n * 4096`).
#[derive(Debug, Clone, Default)]
pub struct PageBitmap {
    /// The words.
    pub words: Vec<u64>,
}

impl PageBitmap {
    /// A cleared bitmap covering `pages` page frames.
    pub fn new(pages: u64) -> Self {
        PageBitmap {
            words: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Sets page `n`.
    pub fn set(&mut self, n: u64) {
        if let Some(w) = self.words.get_mut((n / 64) as usize) {
            *w |= 1 << (n % 64);
        }
    }

    /// Whether page `n` is set.
    pub fn get(&self, n: u64) -> bool {
        self.words
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// Iterates over the set page numbers in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }

    /// ORs `other` into `self`.
    pub fn union(&mut self, other: &PageBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

/// Number of page frames spanned by the machine's RAM (including any hole).
pub fn frame_count(m: &Machine) -> u64 {
    m.mem().last_addr().0 / PAGE_SIZE + 1
}

/// Pages of RAM the host has populated (the guest, the loader or a device wrote or read
/// them); every other page is still the zero page the mapping started with.
pub fn touched_pages(m: &Machine) -> PageBitmap {
    let mut bm = PageBitmap::new(frame_count(m));
    for r in m.mem().iter() {
        let size = r.len() as usize;
        let pages = size / PAGE_SIZE as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is exactly one live mapping owned by guest memory, page aligned,
        // and `vec` has one byte per page as mincore requires.
        let rc = unsafe { libc::mincore(r.as_ptr() as *mut libc::c_void, size, vec.as_mut_ptr()) };
        let first = r.start_addr().0 / PAGE_SIZE;
        if rc != 0 {
            // Residency unknown: treat the whole region as touched.
            (0..pages as u64).for_each(|p| bm.set(first + p));
            continue;
        }
        for (i, v) in vec.iter().enumerate() {
            if v & 1 != 0 {
                bm.set(first + i as u64);
            }
        }
    }
    bm
}

/// ORs into `out` the pages written since the logs were last read (KVM's log, which must be
/// enabled, and the vm-memory bitmap), clearing both.
pub fn collect(m: &Machine, out: &mut PageBitmap) -> Result<(), VmError> {
    collect_with(m, out, true)
}

/// Like [`collect`]; with `rearm_now` false and KVM's manual-protect mode on, the pages stay
/// writable in KVM until [`rearm`] is called for them (just before they are read).
fn collect_with(m: &Machine, out: &mut PageBitmap, rearm_now: bool) -> Result<(), VmError> {
    m.vm().collect_dirty_log(&mut out.words, rearm_now)?;
    for r in m.mem().iter() {
        let vmm_writes = std::ops::Deref::deref(r).bitmap().get_and_reset();
        merge_bits(&mut out.words, r.start_addr().0 / PAGE_SIZE, &vmm_writes);
    }
    Ok(())
}

/// Re-protects in KVM the pages of `words`, a window of `bits` starting at bitmap word
/// `word_index` (manual-protect mode; a no-op otherwise). Call right before reading them.
pub fn rearm(m: &Machine, word_index: usize, words: &[u64]) -> Result<(), VmError> {
    m.vm().rearm_dirty_log(word_index, words)
}

/// Tracks pages written since the last collection.
pub struct DirtyTracker<'a> {
    m: &'a Machine,
}

impl<'a> DirtyTracker<'a> {
    /// Turns KVM dirty logging on and clears both logs; writes from now on are tracked.
    pub fn start(m: &'a Machine) -> Result<Self, VmError> {
        m.vm().set_dirty_logging(true)?;
        let mut t = DirtyTracker { m };
        let mut discard = PageBitmap::new(frame_count(m));
        t.collect_into(&mut discard)?;
        Ok(t)
    }

    /// ORs the pages written since the previous call into `out` and clears the logs.
    pub fn collect_into(&mut self, out: &mut PageBitmap) -> Result<(), VmError> {
        collect(self.m, out)
    }

    /// Like [`DirtyTracker::collect_into`], but in manual-protect mode leaves the pages
    /// writable until [`rearm`] is called for them: the sender re-protects each window just
    /// before reading it.
    pub fn collect_deferred(&mut self, out: &mut PageBitmap) -> Result<(), VmError> {
        collect_with(self.m, out, false)
    }

    /// Turns KVM dirty logging off.
    pub fn stop(self) -> Result<(), VmError> {
        self.m.vm().set_dirty_logging(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_ops() {
        let mut b = PageBitmap::new(200);
        b.set(0);
        b.set(63);
        b.set(64);
        b.set(199);
        b.set(5000);
        assert_eq!(b.count(), 4);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 63, 64, 199]);
        assert!(b.get(64) && !b.get(65));
        let mut c = PageBitmap::new(200);
        c.set(1);
        c.union(&b);
        assert_eq!(c.count(), 5);
        c.clear();
        assert_eq!(c.count(), 0);
    }
}
