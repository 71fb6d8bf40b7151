//! The guest's physical memory layout. Every address here is fixed: the linker script
//! (`testguest/linker.ld`) places the sections at the same addresses and asserts it, which is
//! what lets `tables.rs` compute page tables, GDT, TSS and IDT as compile-time constants.
//!
//! ```text
//! 0x100000  BOOT_TABLES   page tables (PML4, PDPT, 4 PDs), IDT, GDT, TSS, descriptor pointers
//! 0x108000  VECTORS       256 interrupt stubs of 16 bytes each (IDT entry v -> VECTORS + 16 v)
//! 0x109000  STATUS        tick counter (u64), readable by ring 3 and from outside the guest
//! ...       .text .rodata .data .bss (must end below STACKS_BASE)
//! 0x3e0000  stacks        fatal IST, timer IST, ring-0 (RSP0), ring-3 stack; not in the ELF
//! 0x400000  REGION_BASE   workload region (`mib` MiB), then the per-page checksum table
//! ```

/// Physical (= virtual, identity mapped) address of `tables::BOOT_TABLES`.
pub const BOOT_TABLES_ADDR: u64 = 0x10_0000;
/// Address of the 256 interrupt entry stubs; stub `v` starts at `VECTORS_ADDR + 16 * v`.
pub const VECTORS_ADDR: u64 = 0x10_8000;
/// Size of one interrupt entry stub.
pub const VECTOR_STUB_SIZE: u64 = 16;
/// Address of the 64-bit timer tick counter (`sys::TICKS`; asserted by the linker script).
#[allow(dead_code)]
pub const TICKS_ADDR: u64 = 0x10_9000;

/// Lowest address used by the stacks; the loaded image must end below it (asserted by the
/// linker script).
#[allow(dead_code)]
pub const STACKS_BASE: u64 = 0x3e_0000;
/// IST2: exceptions (fatal handler), 16 KiB.
pub const FATAL_STACK_TOP: u64 = 0x3e_4000;
/// IST1: timer and spurious interrupts, 16 KiB.
pub const TIMER_STACK_TOP: u64 = 0x3e_8000;
/// RSP0: the syscall gate (entered from ring 3 only) and the boot-time `iretq` frame, 32 KiB.
pub const KERNEL_STACK_TOP: u64 = 0x3f_0000;
/// Ring-3 stack, 64 KiB.
pub const USER_STACK_TOP: u64 = 0x40_0000;

/// Start of the workload region.
pub const REGION_BASE: u64 = 0x40_0000;
/// Guest page size used by the workloads.
pub const PAGE_SIZE: u64 = 4096;
/// The identity map covers the first 4 GiB; nothing above it is reachable.
pub const MAPPED_LIMIT: u64 = 1 << 32;

/// The local APIC's MMIO base (xAPIC mode).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
