//! Guest physical memory layout for x86_64: where the boot structures, the kernel, the MMIO
//! hole and the device windows live, and the e820 map that describes RAM to the guest.

use vm_memory::GuestAddress;

/// Guest page size used for dirty tracking and migration.
pub const PAGE_SIZE: u64 = novacron_migration::PAGE_SIZE as u64;
/// Boot GDT (null, code64, data, tss) written by the VMM for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT for the 64-bit entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT and one PD mapping the first 1 GiB with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity map.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (bytes, including the terminating NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// ACPI tables (RSDP in the BIOS read-only area where guests search for it).
pub const RSDP_START: u64 = 0xe0000;
/// The 32-bit MMIO hole: RAM below 4 GiB ends here.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Window for virtio-mmio devices (inside the MMIO hole).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) for real-mode emulation, at the top of the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page for real-mode emulation.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// First GSI available to devices (0-15 are the legacy ISA interrupts).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
/// e820 reserved type.
pub const E820_RESERVED: u32 = 2;

/// Guest RAM ranges `(start, size)` for `mem_size` bytes of RAM: below the MMIO hole, and the
/// remainder above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if mem_size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (mem_size - low) as usize));
    }
    ranges
}

/// The e820 map `(addr, size, type)` describing `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0x10_0000 - EBDA_START, E820_RESERVED),
    ];
    if low > HIMEM_START {
        map.push((HIMEM_START, low - HIMEM_START, E820_RAM));
    }
    if mem_size > low {
        map.push((MMIO_GAP_END, mem_size - low, E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range_and_three_e820_entries() {
        let r = ram_ranges(128 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
        let e = e820_map(128 << 20);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2], (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 as u64 + r[1].1 as u64, 4 << 30);
        let e = e820_map(4 << 30);
        assert_eq!(e.last().map(|x| x.0), Some(MMIO_GAP_END));
    }
}
