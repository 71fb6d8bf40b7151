//! Page tables, GDT, TSS and IDT, computed entirely at compile time.
//!
//! Ring-0 code is emulated (about a thousand times slower) on the CI hosts, so nothing here is
//! built at run time: `BOOT_TABLES` is a constant placed by the linker at `BOOT_TABLES_ADDR`,
//! and because every address it refers to (itself, the interrupt stubs, the stacks) is fixed,
//! all entries are plain constants. Boot code only loads CR3, GDTR, TR and IDTR.

use core::mem::offset_of;

use crate::layout::{
    BOOT_TABLES_ADDR, FATAL_STACK_TOP, KERNEL_STACK_TOP, LAPIC_BASE, TIMER_STACK_TOP, VECTORS_ADDR,
    VECTOR_STUB_SIZE,
};

/// Kernel 64-bit code segment selector.
pub const KERNEL_CS: u64 = 0x08;
/// User data segment selector (RPL 3).
pub const USER_DS: u64 = 0x18 | 3;
/// User 64-bit code segment selector (RPL 3).
pub const USER_CS: u64 = 0x20 | 3;
/// TSS selector.
pub const TSS_SEL: u64 = 0x28;

/// #UD; also the syscall path on hosts where `int n` in ring 3 raises #UD (see entry.rs).
pub const INVALID_OPCODE: u8 = 6;
/// LAPIC timer interrupt vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// Syscall gate vector (DPL 3).
pub const SYSCALL_VECTOR: u8 = 0x80;
/// LAPIC spurious interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// All boot-time descriptor structures, in one page-aligned block at `BOOT_TABLES_ADDR`.
#[repr(C, align(4096))]
pub struct BootTables {
    pml4: [u64; 512],
    pdpt: [u64; 512],
    pd: [[u64; 512]; 4],
    idt: [[u64; 2]; 256],
    gdt: [u64; 8],
    tss: [u32; 26],
    /// I/O permission bitmap (follows the TSS): ports 0-0x3ff allowed, then the 0xff end byte.
    iomap: [u8; IOMAP_BYTES + 1],
    gdtr: [u16; 5],
    idtr: [u16; 5],
    zero_idtr: [u16; 5],
}

const fn addr_of_field(offset: usize) -> u64 {
    BOOT_TABLES_ADDR + offset as u64
}

/// Physical address of the PML4 (the value loaded into CR3).
pub const PML4_ADDR: u64 = addr_of_field(offset_of!(BootTables, pml4));
const PDPT_ADDR: u64 = addr_of_field(offset_of!(BootTables, pdpt));
const PD_ADDR: u64 = addr_of_field(offset_of!(BootTables, pd));
const IDT_ADDR: u64 = addr_of_field(offset_of!(BootTables, idt));
const GDT_ADDR: u64 = addr_of_field(offset_of!(BootTables, gdt));
const TSS_ADDR: u64 = addr_of_field(offset_of!(BootTables, tss));
/// Address of the GDT pseudo-descriptor (operand of `lgdt`).
pub const GDTR_ADDR: u64 = addr_of_field(offset_of!(BootTables, gdtr));
/// Address of the IDT pseudo-descriptor (operand of `lidt`).
pub const IDTR_ADDR: u64 = addr_of_field(offset_of!(BootTables, idtr));
/// Address of a zero-limit IDT pseudo-descriptor (loading it makes any exception a triple fault).
pub const ZERO_IDTR_ADDR: u64 = addr_of_field(offset_of!(BootTables, zero_idtr));

// Page table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
/// Accessed and (for 2 MiB pages) dirty are preset so the CPU never writes the tables.
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const TABLE: u64 = PRESENT | WRITABLE | USER | ACCESSED;
const HUGE_PAGE: u64 = PRESENT | WRITABLE | USER | ACCESSED | DIRTY | HUGE;

/// Ports 0..0x400 (PIC, i8042, COM1, ...) are open to ring 3 through the I/O bitmap.
const IOMAP_BYTES: usize = 0x400 / 8;
const TSS_LIMIT: u64 = 104 + IOMAP_BYTES as u64 + 1 - 1;

const fn pseudo_descriptor(limit: u64, base: u64) -> [u16; 5] {
    [
        limit as u16,
        base as u16,
        (base >> 16) as u16,
        (base >> 32) as u16,
        (base >> 48) as u16,
    ]
}

const fn interrupt_gate(vector: usize) -> [u64; 2] {
    let handler = VECTORS_ADDR + VECTOR_STUB_SIZE * vector as u64;
    // The syscall gate is callable from ring 3 and runs on RSP0 (it halts with interrupts on,
    // so it must not share a stack with the timer); so does #UD, which may carry syscalls. Timer and spurious interrupts use IST1,
    // everything else (exceptions, stray vectors: all fatal) IST2.
    let (dpl, ist) = match vector as u8 {
        SYSCALL_VECTOR => (3, 0),
        INVALID_OPCODE => (0, 0),
        TIMER_VECTOR | SPURIOUS_VECTOR => (0, 1),
        _ => (0, 2),
    };
    let type_attr: u64 = 0x8e | (dpl << 5); // present, 64-bit interrupt gate
    let low = (handler & 0xffff)
        | (KERNEL_CS << 16)
        | (ist << 32)
        | (type_attr << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

const fn build() -> BootTables {
    let mut t = BootTables {
        pml4: [0; 512],
        pdpt: [0; 512],
        pd: [[0; 512]; 4],
        idt: [[0; 2]; 256],
        gdt: [0; 8],
        tss: [0; 26],
        iomap: [0; IOMAP_BYTES + 1],
        gdtr: [0; 5],
        idtr: [0; 5],
        zero_idtr: [0; 5],
    };

    // Identity map of the first 4 GiB with 2 MiB pages, user-accessible and writable.
    t.pml4[0] = PDPT_ADDR | TABLE;
    let mut i = 0;
    while i < 4 {
        t.pdpt[i] = (PD_ADDR + 4096 * i as u64) | TABLE;
        let mut j = 0;
        while j < 512 {
            let addr = ((i * 512 + j) as u64) << 21;
            let mut entry = addr | HUGE_PAGE;
            if addr == LAPIC_BASE & !((1 << 21) - 1) {
                entry |= CACHE_DISABLE | WRITE_THROUGH;
            }
            t.pd[i][j] = entry;
            j += 1;
        }
        i += 1;
    }

    let mut v = 0;
    while v < 256 {
        t.idt[v] = interrupt_gate(v);
        v += 1;
    }

    // GDT: null, kernel code, kernel data, user data, user code, TSS (two slots).
    t.gdt[1] = 0x00af_9b00_0000_ffff;
    t.gdt[2] = 0x00cf_9300_0000_ffff;
    t.gdt[3] = 0x00cf_f300_0000_ffff;
    t.gdt[4] = 0x00af_fb00_0000_ffff;
    t.gdt[5] = TSS_LIMIT
        | ((TSS_ADDR & 0xff_ffff) << 16)
        | (0x89 << 40) // present, available 64-bit TSS
        | (((TSS_ADDR >> 24) & 0xff) << 56);
    t.gdt[6] = TSS_ADDR >> 32;

    // TSS: u32 words; rsp0 at byte 4, ist1 at byte 36, ist2 at byte 44; the I/O map base
    // (byte 102) points at `iomap`, right after the TSS.
    t.tss[1] = KERNEL_STACK_TOP as u32;
    t.tss[2] = (KERNEL_STACK_TOP >> 32) as u32;
    t.tss[9] = TIMER_STACK_TOP as u32;
    t.tss[10] = (TIMER_STACK_TOP >> 32) as u32;
    t.tss[11] = FATAL_STACK_TOP as u32;
    t.tss[12] = (FATAL_STACK_TOP >> 32) as u32;
    t.tss[25] = 104 << 16;
    t.iomap[IOMAP_BYTES] = 0xff;

    t.gdtr = pseudo_descriptor(8 * 8 - 1, GDT_ADDR);
    t.idtr = pseudo_descriptor(256 * 16 - 1, IDT_ADDR);
    t
}

/// The boot tables. Never read by Rust code: the CPU reads them after `entry.rs` loads CR3,
/// GDTR, TR and IDTR with the constant addresses above. The only write is the CPU's own: `ltr`
/// marks the TSS descriptor busy (accessed/dirty bits are preset, so page walks write nothing).
#[used]
#[no_mangle]
#[link_section = ".boot.tables"]
pub static BOOT_TABLES: BootTables = build();
