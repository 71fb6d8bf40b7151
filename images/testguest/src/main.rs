//! Placeholder test guest: prints a line on COM1 and halts. Replaced by the real guest.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

global_asm!(
    ".section .text.entry,\"ax\"",
    ".global _start",
    "_start:",
    "lea rsp, [rip + STACK_TOP]",
    "call guest_main",
    "2: hlt",
    "jmp 2b",
    ".section .bss",
    ".align 16",
    "STACK: .skip 16384",
    "STACK_TOP:",
);

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O to the serial port of the VM we run in.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v) }
}

#[no_mangle]
extern "C" fn guest_main() {
    for b in b"READY hello\n" {
        outb(0x3f8, *b);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
