//! Guest RAM: a `vm-memory` mapping with an `AtomicBitmap`, so writes the VMM makes (device
//! emulation, restore, incoming migration) are tracked alongside the guest writes KVM logs.

use crate::layout;
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// The guest memory type used throughout the VMM.
pub type GuestMem = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Errors creating or addressing guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The host refused the mapping (usually not enough address space or memory).
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        /// Size requested.
        mib: u64,
        /// Underlying error.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `mem_size` bytes of anonymous guest RAM laid out per [`layout::ram_ranges`].
pub fn create(mem_size: u64) -> Result<GuestMem, MemoryError> {
    GuestMem::from_ranges(&layout::ram_ranges(mem_size)).map_err(|source| MemoryError::Map {
        mib: mem_size >> 20,
        source,
    })
}

/// One RAM region as the dirty tracker and migration see it.
#[derive(Debug, Clone, Copy)]
pub struct RegionInfo {
    /// KVM memory slot number.
    pub slot: u32,
    /// Guest physical start.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the mapping.
    pub host_addr: u64,
    /// Index of the region's first page in the VM-wide page numbering.
    pub first_page: u64,
}

/// Regions of `mem`, with slots numbered in order and a VM-wide page numbering (page `n` of
/// the VM is the `n`th 4 KiB page of RAM, counting regions in order).
pub fn regions(mem: &GuestMem) -> Vec<RegionInfo> {
    let mut first_page = 0;
    mem.iter()
        .enumerate()
        .map(|(slot, r)| {
            let size = r.len();
            let info = RegionInfo {
                slot: slot as u32,
                guest_addr: r.start_addr().0,
                size,
                host_addr: r.as_ptr() as u64,
                first_page,
            };
            first_page += size / layout::PAGE_SIZE;
            info
        })
        .collect()
}

/// Total number of 4 KiB pages of RAM.
pub fn page_count(mem: &GuestMem) -> u64 {
    mem.iter().map(|r| r.len() / layout::PAGE_SIZE).sum()
}

/// Returns true if the 4 KiB `page` is all zero.
pub fn is_zero_page(page: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: reinterpreting initialised bytes as u64 is valid for any bit pattern; align_to
        // only hands out the correctly aligned middle part.
        unsafe { page.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && post.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_numbering_spans_regions() {
        let mem = create(4 << 30).expect("map 4 GiB (lazily)");
        let regs = regions(&mem);
        assert_eq!(regs.len(), 2);
        let low_pages = layout::MMIO_GAP_START / layout::PAGE_SIZE;
        assert_eq!(regs[1].first_page, low_pages);
        assert_eq!(regs[1].guest_addr, layout::MMIO_GAP_END);
        assert_eq!(page_count(&mem), (4u64 << 30) / layout::PAGE_SIZE);
    }

    #[test]
    fn zero_page_detection() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero_page(&p));
        p[4095] = 1;
        assert!(!is_zero_page(&p));
    }
}
