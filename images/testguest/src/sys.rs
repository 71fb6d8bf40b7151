//! Ring-3 access to the machine: port I/O (allowed by the TSS I/O bitmap), the tick counter, the LAPIC
//! timer (its MMIO page is mapped user-accessible), and the syscall gate.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::LAPIC_BASE;
use crate::tables::{SPURIOUS_VECTOR, SYSCALL_VECTOR, TIMER_VECTOR};

/// Timer ticks since the timer was started; incremented by the ring-0 timer handler. Lives at
/// the fixed address `layout::TICKS_ADDR` so it can also be read from outside the guest.
#[no_mangle]
#[link_section = ".boot.status"]
pub static TICKS: AtomicU64 = AtomicU64::new(0);

/// Current tick count.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; the TSS I/O bitmap allows ports below 0x400
    // in ring 3.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

fn lapic_write(register: u64, value: u32) {
    // SAFETY: the LAPIC MMIO page is identity-mapped, user-accessible and uncached; the
    // register offsets used are valid xAPIC registers.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + register) as *mut u32, value) }
}

/// Masks the legacy PIC, starts the LAPIC timer (periodic, `hz` per second, assuming the
/// 1 GHz APIC bus of KVM) and enables interrupts.
pub fn start_timer(hz: u64) {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic_write(0xf0, 0x100 | SPURIOUS_VECTOR as u32); // software enable
    lapic_write(0x3e0, 0xb); // divide by 1
    lapic_write(0x320, (1 << 17) | TIMER_VECTOR as u32); // periodic
    lapic_write(0x380, (1_000_000_000 / hz).clamp(1, u32::MAX as u64) as u32);
    // SAFETY: syscall 4 sets IF in the frame it returns through; the IDT and handlers are in
    // place, so interrupts may arrive from then on.
    unsafe { asm!("int {v}", v = const SYSCALL_VECTOR, in("eax") 4u32, options(nostack)) }
}

/// Halts the vCPU until an interrupt arrives and the tick count is at least `target`
/// (syscall 0).
fn wait(target: u64) {
    // SAFETY: the syscall gate switches to the ring-0 stack, so the red zone is untouched;
    // syscall 0 returns with all registers preserved.
    unsafe {
        asm!("int {v}", v = const SYSCALL_VECTOR, in("eax") 0u32, in("rdx") target, options(nostack))
    }
}

/// Halts the vCPU until the next interrupt.
pub fn wait_for_interrupt() {
    wait(0);
}

/// Waits until the tick counter reaches `target`.
pub fn wait_until(target: u64) {
    if ticks() < target {
        wait(target);
    }
}

/// Triple-faults the vCPU (syscall 3).
pub fn triple_fault() -> ! {
    // SAFETY: syscall 3 does not return.
    unsafe { asm!("int {v}", v = const SYSCALL_VECTOR, in("eax") 3u32, options(nostack, noreturn)) }
}

/// Idles forever, taking timer ticks (in ring 0: the wait never ends).
pub fn idle_forever() -> ! {
    loop {
        wait(u64::MAX);
    }
}
