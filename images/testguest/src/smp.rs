//! SMP: bringing up the application processors and the `smp` workload.
//!
//! Everything is prepared in ring 3 on the boot CPU: per-AP blocks (a copy of the GDT whose
//! TSS descriptor points at the AP's own TSS copy, with its own ring-0 stacks and I/O bitmap,
//! plus a ring-3 stack), and a real-mode trampoline copied below 1 MiB. The boot CPU then
//! sends INIT and a startup IPI to all other CPUs through its (user-accessible) LAPIC page.
//! Each AP runs about 35 ring-0 instructions: real mode straight to long mode with the shared
//! page tables, reads its APIC ID, loads its GDT and TSS and the shared IDT, and `iretq`s to
//! ring 3, where it runs [`ap_main`] with interrupts off (APs take no timer interrupts).
//!
//! `workload=smp mib=M passes=P [cpus=N]`: the CPUs (all in the MADT, or `cpus`) split the
//! `M` MiB region into slices; each runs the `ab` pattern (check, then increment the first
//! byte of every page of its slice) `P` times and reports `SMP cpu=<i> apic=<id> ...`; the
//! boot CPU prints `CHECK PASS workload=smp cpus=N` once all are done.

use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::bootinfo::BootInfo;
use crate::devworkloads::{fail, num};
use crate::layout::{LAPIC_BASE, PAGE_SIZE, REGION_BASE};
use crate::serial::Line;
use crate::sys;
use crate::tables::{
    GDTR_ADDR, IDTR_ADDR, KERNEL_CS, PML4_ADDR, SYSCALL_VECTOR, TSS_SEL, USER_CS, USER_DS,
};

/// Where the trampoline is copied (SIPI vector 6). Free RAM below 1 MiB: the VMM's boot
/// structures sit at 0x500-0x520 and 0x7000-0xbfff and are no longer used.
const TRAMPOLINE: u64 = 0x6000;
/// Most CPUs handled.
pub const MAX_CPUS: usize = 16;
/// Per-AP block: tables, ring-0 stacks and ring-3 stack.
const BLOCK: u64 = 0x1_0000;
const B_GDT: u64 = 0x000;
const B_GDTR: u64 = 0x040;
const B_KSTACK: u64 = 0x050;
const B_USTACK: u64 = 0x058;
const B_ENTRY: u64 = 0x060;
const B_TSS: u64 = 0x080;
const TSS_BYTES: usize = 104 + 0x80 + 1;
const RSP0_TOP: u64 = 0x3000;
const IST1_TOP: u64 = 0x3800;
const IST2_TOP: u64 = 0x4000;
const USTACK_TOP: u64 = BLOCK;
/// Same control register values as the boot path (`entry.rs`).
const CR0_VALUE: u64 = (1 << 31) | (1 << 5) | (1 << 4) | (1 << 1) | 1;
const CR4_VALUE: u64 = (1 << 10) | (1 << 9) | (1 << 5);
const EFER_VALUE: u64 = 1 << 8;

global_asm!(
    ".section .text.ap_trampoline,\"ax\"",
    ".global ap_tramp_start",
    ".global ap_tramp_end",
    ".global ap_tramp_gdtr",
    ".global ap_tramp_blocks",
    ".code16",
    "ap_tramp_start:",
    "cli",
    "cld",
    "movw %cs, %ax",
    "movw %ax, %ds",
    "lgdtl ap_tramp_gdtr - ap_tramp_start",
    "movl ${cr4}, %eax",
    "movl %eax, %cr4",
    "movl ${pml4}, %eax",
    "movl %eax, %cr3",
    "movl $0xc0000080, %ecx",
    "movl ${efer}, %eax",
    "xorl %edx, %edx",
    "wrmsr",
    "movl ${cr0}, %eax",
    "movl %eax, %cr0",
    "ljmpl ${kcs}, ${tramp} + (ap_tramp_long - ap_tramp_start)",
    ".code64",
    "ap_tramp_long:",
    "movl ${lapic_id}, %eax",
    "movl (%rax), %eax",
    "shrl $24, %eax",
    "movl %eax, %edi",
    "movq {tramp} + (ap_tramp_blocks - ap_tramp_start), %rbx",
    "imulq ${block}, %rax, %rax",
    "addq %rax, %rbx",
    "lgdt {b_gdtr}(%rbx)",
    "movw ${tss}, %ax",
    "ltr %ax",
    "lidt {idtr}",
    "xorl %eax, %eax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movw %ax, %fs",
    "movw %ax, %gs",
    "movq {b_kstack}(%rbx), %rsp",
    "pushq ${user_ds}",
    "pushq {b_ustack}(%rbx)",
    "pushq $2",
    "pushq ${user_cs}",
    "pushq {b_entry}(%rbx)",
    "iretq",
    ".balign 8",
    "ap_tramp_gdtr:",
    ".word 0",
    ".long 0",
    ".balign 8",
    "ap_tramp_blocks:",
    ".quad 0",
    "ap_tramp_end:",
    "",
    ".section .text,\"ax\"",
    ".global ap_ring3_entry",
    "ap_ring3_entry:",
    "call {ap_main}",
    "ud2",
    cr4 = const CR4_VALUE,
    pml4 = const PML4_ADDR,
    efer = const EFER_VALUE,
    cr0 = const CR0_VALUE,
    kcs = const KERNEL_CS,
    tramp = const TRAMPOLINE,
    lapic_id = const LAPIC_BASE + 0x20,
    block = const BLOCK,
    b_gdtr = const B_GDTR,
    tss = const TSS_SEL,
    idtr = const IDTR_ADDR,
    b_kstack = const B_KSTACK,
    user_ds = const USER_DS,
    b_ustack = const B_USTACK,
    user_cs = const USER_CS,
    b_entry = const B_ENTRY,
    ap_main = sym ap_main,
    options(att_syntax),
);

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_tramp_gdtr: u8;
    static ap_tramp_blocks: u8;
    fn ap_ring3_entry();
}

/// Serializes serial output between CPUs.
static OUT_LOCK: AtomicBool = AtomicBool::new(false);
/// APs that reached ring 3.
static STARTED: AtomicU64 = AtomicU64::new(0);
/// CPUs that finished their slice.
static DONE: AtomicU64 = AtomicU64::new(0);
/// CPUs whose slice check failed.
static FAILED: AtomicU64 = AtomicU64::new(0);
/// Set by the boot CPU once every AP is up: start working.
static GO: AtomicBool = AtomicBool::new(false);
/// APIC ID of each CPU index.
static APIC_IDS: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0xff) }; MAX_CPUS];
static NCPUS: AtomicU64 = AtomicU64::new(1);
static PAGES_PER_CPU: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(1);
static WORK_BASE: AtomicU64 = AtomicU64::new(0);

/// Prints one line while holding the output lock.
fn say(args: core::fmt::Arguments) {
    while OUT_LOCK.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    line.emit();
    OUT_LOCK.store(false, Ordering::Release);
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the LAPIC page is identity-mapped, user-accessible and uncached.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: as for lapic_read; ICR writes send IPIs, which is the point.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, v) }
}

/// This CPU's APIC ID.
pub fn apic_id() -> u8 {
    (lapic_read(0x20) >> 24) as u8
}

fn rd64(a: u64) -> u64 {
    // SAFETY: a is inside the boot tables (identity-mapped, readable).
    unsafe { core::ptr::read_unaligned(a as *const u64) }
}

/// Fills AP block `id`: GDT copy with its own TSS, TSS copy with its own stacks.
fn build_block(blocks: u64, id: u8) {
    let b = blocks + id as u64 * BLOCK;
    // SAFETY: the block area was checked to be RAM and belongs to this workload.
    unsafe { core::ptr::write_bytes(b as *mut u8, 0, 0x1000) };
    let gdt_base = rd64(GDTR_ADDR + 2);
    let gdt_limit = rd64(GDTR_ADDR) as u16;
    let entries = ((gdt_limit as u64 + 1) / 8).min(8);
    for i in 0..entries {
        // SAFETY: both the source GDT and the block are mapped; 8 entries fit at B_GDT.
        unsafe {
            core::ptr::write_unaligned((b + B_GDT + 8 * i) as *mut u64, rd64(gdt_base + 8 * i))
        };
    }
    // The TSS descriptor (selector TSS_SEL: entries 5 and 6).
    let slot = TSS_SEL / 8;
    let lo = rd64(gdt_base + 8 * slot);
    let hi = rd64(gdt_base + 8 * (slot + 1));
    let main_tss =
        ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32);
    let tss = b + B_TSS;
    // SAFETY: copies the 233-byte TSS + I/O bitmap into the block (mapped, large enough).
    unsafe { core::ptr::copy_nonoverlapping(main_tss as *const u8, tss as *mut u8, TSS_BYTES) };
    let set = |off: u64, v: u64| {
        // SAFETY: offsets inside the copied TSS / block header.
        unsafe { core::ptr::write_unaligned((b + off) as *mut u64, v) }
    };
    set(B_TSS + 4, b + RSP0_TOP);
    set(B_TSS + 36, b + IST1_TOP);
    set(B_TSS + 44, b + IST2_TOP);
    let new_lo = (lo & !((0xff_ffff << 16) | (0xff << 56) | (0xf << 40)))
        | ((tss & 0xff_ffff) << 16)
        | (((tss >> 24) & 0xff) << 56)
        | (0x9 << 40); // available 64-bit TSS (not busy)
    set(B_GDT + 8 * slot, new_lo);
    set(B_GDT + 8 * (slot + 1), tss >> 32);
    // gdtr: limit (u16) then base (u64).
    // SAFETY: inside the block header.
    unsafe {
        core::ptr::write_unaligned((b + B_GDTR) as *mut u16, (8 * entries - 1) as u16);
        core::ptr::write_unaligned((b + B_GDTR + 2) as *mut u64, b + B_GDT);
    }
    set(B_KSTACK, b + RSP0_TOP);
    set(B_USTACK, b + USTACK_TOP);
    set(B_ENTRY, ap_ring3_entry as *const () as usize as u64);
}

/// Copies the trampoline to `TRAMPOLINE` and points it at the GDT and the AP blocks.
fn install_trampoline(blocks: u64) {
    // Only the addresses of the linker symbols are taken (no read through them).
    let (start, end, gdtr, blk) = (
        core::ptr::addr_of!(ap_tramp_start) as u64,
        core::ptr::addr_of!(ap_tramp_end) as u64,
        core::ptr::addr_of!(ap_tramp_gdtr) as u64,
        core::ptr::addr_of!(ap_tramp_blocks) as u64,
    );
    let len = end - start;
    // SAFETY: copies the trampoline code (in the loaded image) to free low RAM, then patches
    // its data fields (inside the copy).
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len as usize);
        let g = TRAMPOLINE + (gdtr - start);
        core::ptr::write_unaligned(g as *mut u16, rd64(GDTR_ADDR) as u16);
        core::ptr::write_unaligned((g + 2) as *mut u32, rd64(GDTR_ADDR + 2) as u32);
        core::ptr::write_unaligned((TRAMPOLINE + (blk - start)) as *mut u64, blocks);
    }
}

/// Index of APIC ID `id` among the CPUs.
fn index_of(id: u8) -> Option<usize> {
    let n = NCPUS.load(Ordering::Acquire) as usize;
    (0..n.min(MAX_CPUS)).find(|&i| APIC_IDS[i].load(Ordering::Acquire) == id)
}

/// Runs the `ab` pattern on CPU `index`'s slice; returns whether every check passed.
fn work(index: usize) -> bool {
    let pages = PAGES_PER_CPU.load(Ordering::Acquire);
    let base = WORK_BASE.load(Ordering::Acquire) + index as u64 * pages * PAGE_SIZE;
    let passes = PASSES.load(Ordering::Acquire);
    for p in 0..passes {
        for i in 0..pages {
            let a = (base + i * PAGE_SIZE) as *mut u8;
            // SAFETY: the slice lies in the workload region (checked RAM) and belongs to this
            // CPU only.
            let got = unsafe { core::ptr::read_volatile(a) };
            if got != p as u8 {
                say(format_args!(
                    "CHECK FAIL workload=smp cpu={index} page={i} expected={} got={got}",
                    p as u8
                ));
                return false;
            }
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(a, (p + 1) as u8) };
        }
    }
    true
}

/// Ring-3 entry of an AP (from `ap_ring3_entry`), interrupts off.
extern "C" fn ap_main(apic: u64) -> ! {
    STARTED.fetch_add(1, Ordering::AcqRel);
    while !GO.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    match index_of(apic as u8) {
        Some(i) => {
            let ok = work(i);
            if !ok {
                FAILED.fetch_add(1, Ordering::AcqRel);
            }
            say(format_args!(
                "SMP cpu={i} apic={apic} pages={} passes={} ok={}",
                PAGES_PER_CPU.load(Ordering::Acquire),
                PASSES.load(Ordering::Acquire),
                ok as u8
            ));
        }
        None => say(format_args!("SMP unexpected apic={apic}")),
    }
    DONE.fetch_add(1, Ordering::AcqRel);
    halt_forever()
}

/// Halts this CPU with interrupts off (syscall 2).
fn halt_forever() -> ! {
    // SAFETY: syscall 2 does not return; it runs on this CPU's RSP0 stack.
    unsafe { asm!("int {v}", v = const SYSCALL_VECTOR, in("eax") 2u32, options(nostack, noreturn)) }
}

/// Starts every other CPU and waits until `expected` APs reached ring 3 (about 2 s at most).
fn start_aps(expected: u64) -> u64 {
    lapic_write(0x310, 0);
    // INIT, level assert, to all excluding self.
    lapic_write(0x300, 0x000c_4500);
    let t = sys::ticks();
    sys::wait_until(t + 1);
    for _ in 0..2 {
        // STARTUP with the trampoline's page number.
        lapic_write(0x300, 0x000c_4600 | (TRAMPOLINE >> 12) as u32);
        let deadline = sys::ticks() + 100;
        while STARTED.load(Ordering::Acquire) < expected && sys::ticks() < deadline {
            core::hint::spin_loop();
        }
        if STARTED.load(Ordering::Acquire) >= expected {
            break;
        }
    }
    STARTED.load(Ordering::Acquire)
}

/// The `smp` workload.
pub fn run(cmdline: &'static [u8], boot: &BootInfo) -> ! {
    let tables = crate::acpi::find();
    let madt_cpus = tables.as_ref().map_or(0, |t| t.cpus);
    let ncpus = (num(cmdline, "cpus", madt_cpus.max(1) as u64) as usize).clamp(1, MAX_CPUS);
    let mib = num(cmdline, "mib", 16).max(1);
    let passes = num(cmdline, "passes", 20).max(1);
    let me = apic_id();
    let mut ids = [0u8; MAX_CPUS];
    match &tables {
        Some(t) if t.cpus >= ncpus => ids[..ncpus].copy_from_slice(&t.apic_ids[..ncpus]),
        _ => {
            for (i, id) in ids.iter_mut().enumerate().take(ncpus) {
                *id = i as u8;
            }
        }
    }
    // The boot CPU is index 0.
    if let Some(pos) = ids[..ncpus].iter().position(|&x| x == me) {
        ids.swap(0, pos);
    } else {
        ids[0] = me;
    }
    let blocks = REGION_BASE;
    let max_id = ids[..ncpus].iter().copied().max().unwrap_or(0) as u64;
    let work_base = blocks + (max_id + 1) * BLOCK;
    let pages = (mib << 20) / PAGE_SIZE / ncpus as u64;
    let end = work_base + pages * ncpus as u64 * PAGE_SIZE;
    if !boot.is_ram(REGION_BASE, end) {
        fail("smp", "not enough RAM for the region");
    }
    for (i, &id) in ids[..ncpus].iter().enumerate() {
        APIC_IDS[i].store(id, Ordering::Release);
        if id != me {
            build_block(blocks, id);
        }
    }
    NCPUS.store(ncpus as u64, Ordering::Release);
    PAGES_PER_CPU.store(pages, Ordering::Release);
    PASSES.store(passes, Ordering::Release);
    WORK_BASE.store(work_base, Ordering::Release);
    for i in 0..pages * ncpus as u64 {
        // SAFETY: the work area was checked to be RAM.
        unsafe { core::ptr::write_volatile((work_base + i * PAGE_SIZE) as *mut u8, 0) };
    }
    say(format_args!(
        "SMP cpus={ncpus} madt_cpus={madt_cpus} bsp_apic={me} mib={mib} passes={passes}"
    ));
    let aps = ncpus as u64 - 1;
    if aps > 0 {
        install_trampoline(blocks);
        let t0 = sys::ticks();
        let up = start_aps(aps);
        say(format_args!(
            "SMP started={up} of {aps} ticks={}",
            sys::ticks() - t0
        ));
        if up < aps {
            say(format_args!(
                "CHECK FAIL workload=smp started={up} expected={aps}"
            ));
            sys::idle_forever();
        }
    }
    GO.store(true, Ordering::Release);
    let ok = work(0);
    if !ok {
        FAILED.fetch_add(1, Ordering::AcqRel);
    }
    say(format_args!(
        "SMP cpu=0 apic={me} pages={pages} passes={passes} ok={}",
        ok as u8
    ));
    DONE.fetch_add(1, Ordering::AcqRel);
    let deadline = sys::ticks() + 3000;
    while DONE.load(Ordering::Acquire) < ncpus as u64 && sys::ticks() < deadline {
        core::hint::spin_loop();
    }
    let done = DONE.load(Ordering::Acquire);
    let failed = FAILED.load(Ordering::Acquire);
    if done == ncpus as u64 && failed == 0 {
        say(format_args!(
            "CHECK PASS workload=smp cpus={ncpus} passes={passes}"
        ));
    } else {
        say(format_args!(
            "CHECK FAIL workload=smp cpus={ncpus} done={done} failed={failed}"
        ));
    }
    say(format_args!("DONE workload=smp"));
    sys::idle_forever();
}
