//! Everything that runs in ring 0, in assembly: the two entry points (64-bit Linux boot
//! protocol and PVH), the switch to ring 3, the interrupt stubs and handlers.
//!
//! Ring-0 code is emulated on the CI hosts, so it is kept to a few dozen instructions on the
//! boot path and a handful per interrupt. No handler touches SSE registers, and all of them
//! run on their own stacks (IST1/IST2, or RSP0 for the syscall gate, which is only entered
//! from ring 3), so the red zone of compiled ring-3 code is never clobbered.
//!
//! Boot: load CR4 (PAE, OSFXSR, OSXMMEXCPT), CR3 (static tables), CR0 (PG, PE, MP, ET, NE;
//! EM and TS clear), GDT, TR, IDT, then `iretq` to `ring3_entry` with IF 0. Ring 3 does its
//! port I/O through the TSS I/O bitmap (ports 0-0x3ff), masks the PIC, programs the LAPIC
//! timer through its (user-accessible) MMIO page and then asks for interrupts (syscall 4), so
//! no interrupt can arrive before the guest is set up.
//!
//! Syscall gate `int 0x80` (eax = number): 0 waits for an interrupt (`sti; hlt`), and keeps
//! waiting in ring 0 while the tick count is below rdx (so idle ticks never enter ring 3),
//! 1 resets (i8042 pulse, then triple fault), 2 halts forever with interrupts off,
//! 3 triple-faults, 4 returns with interrupts enabled (sets IF in the saved RFLAGS).

use core::arch::global_asm;

use crate::layout::{KERNEL_STACK_TOP, USER_STACK_TOP};
use crate::tables::{GDTR_ADDR, IDTR_ADDR, PML4_ADDR, TSS_SEL, USER_CS, USER_DS, ZERO_IDTR_ADDR};

/// CR0: PG | NE | ET | MP | PE (EM, TS, WP, CD, NW clear).
const CR0_VALUE: u64 = (1 << 31) | (1 << 5) | (1 << 4) | (1 << 1) | 1;
/// CR4: OSXMMEXCPT | OSFXSR | PAE. Never OSXSAVE (xsave faults in emulated ring 0).
const CR4_VALUE: u64 = (1 << 10) | (1 << 9) | (1 << 5);
/// EFER: LME.
const EFER_VALUE: u64 = 1 << 8;
/// Ring-3 RFLAGS at entry: reserved bit 1 only. IF is clear (ring 3 asks for it with syscall 4
/// once the timer is set up); IOPL is 0 (port access comes from the TSS I/O bitmap, because
/// the CI hosts' ring-0 emulation drops IOPL on `iretq`).
const USER_RFLAGS: u64 = 1 << 1;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Value of `rdi` at `ring3_entry` for the 64-bit Linux boot protocol.
pub const ENTRY_LINUX64: u64 = 0;
/// Value of `rdi` at `ring3_entry` for PVH.
pub const ENTRY_PVH: u64 = 1;

// 64-bit Linux boot protocol entry (the ELF's e_entry): long mode, paging on, interrupts off,
// rsi = boot_params. Joined by the PVH path at `common64`.
global_asm!(
    ".section .text.entry,\"ax\"",
    ".global linux64_start",
    "linux64_start:",
    "mov eax, {cr4}",
    "mov cr4, rax",
    "mov eax, {pml4}",
    "mov cr3, rax",
    "mov eax, {cr0}",
    "mov cr0, rax",
    "lgdt [{gdtr}]",
    "mov edi, {linux64}",
    "common64:",
    "mov eax, {tss}",
    "ltr ax",
    "lidt [{idtr}]",
    "mov esp, {kstack}",
    "push {user_ds}",
    "push {ustack}",
    "push {rflags}",
    "push {user_cs}",
    "lea rax, [rip + ring3_entry]",
    "push rax",
    "iretq",
    "",
    "pvh_start64:",
    "mov esi, ebx",
    "mov edi, {pvh}",
    "jmp common64",
    "",
    // Ring 3 from here on: rdi = entry kind, rsi = boot information (zero page or
    // hvm_start_info). rsp = USER_STACK_TOP is 16-aligned, so the call leaves it as the
    // SysV ABI expects at function entry.
    ".section .text,\"ax\"",
    "ring3_entry:",
    "call {main}",
    "ud2",
    cr4 = const CR4_VALUE,
    pml4 = const PML4_ADDR,
    cr0 = const CR0_VALUE,
    gdtr = const GDTR_ADDR,
    linux64 = const ENTRY_LINUX64,
    pvh = const ENTRY_PVH,
    tss = const TSS_SEL,
    idtr = const IDTR_ADDR,
    kstack = const KERNEL_STACK_TOP,
    user_ds = const USER_DS,
    ustack = const USER_STACK_TOP,
    rflags = const USER_RFLAGS,
    user_cs = const USER_CS,
    main = sym crate::guest_main,
);

// PVH entry: 32-bit protected mode, paging off, ebx = hvm_start_info. Enable long mode with
// the static tables and far-jump into 64-bit code. The ELF note (name "Xen", type 18 =
// XEN_ELFNOTE_PHYS32_ENTRY) tells PVH loaders where this is; its descriptor is 8 bytes like
// Linux's, and 4-byte aligned (QEMU pads the name to the segment's alignment).
global_asm!(
    ".section .text.entry,\"ax\"",
    ".code32",
    ".global pvh_start",
    "pvh_start:",
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
    "lgdt {gdtr}",
    "ljmp ${kernel_cs}, $pvh_start64",
    ".code64",
    "",
    ".section .note.Xen,\"a\",@note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start",
    cr4 = const CR4_VALUE,
    pml4 = const PML4_ADDR,
    efer = const EFER_VALUE,
    cr0 = const CR0_VALUE,
    gdtr = const GDTR_ADDR,
    kernel_cs = const crate::tables::KERNEL_CS,
    options(att_syntax),
);

// The 256 interrupt stubs, 16 bytes apart at VECTORS_ADDR (the IDT is computed from that).
// Exceptions with an error code: 8, 10-14, 17, 21, 29, 30; the others push a zero so the
// fatal handler sees one frame layout: [vector, error, rip, cs, rflags, rsp, ss].
global_asm!(
    ".section .boot.vectors,\"ax\"",
    ".global vector_stubs",
    "vector_stubs:",
    ".set tg_vec, 0",
    ".rept 256",
    ".balign 16, 0xcc",
    ".if tg_vec == 6",
    "jmp invalid_opcode_entry",
    ".elseif tg_vec == {timer}",
    "jmp timer_entry",
    ".elseif tg_vec == {spurious}",
    "iretq",
    ".elseif tg_vec == {syscall}",
    "jmp syscall_entry",
    ".elseif (tg_vec == 8) || (tg_vec == 10) || (tg_vec == 11) || (tg_vec == 12) || (tg_vec == 13) || (tg_vec == 14) || (tg_vec == 17) || (tg_vec == 21) || (tg_vec == 29) || (tg_vec == 30)",
    "push tg_vec",
    "jmp fatal_entry",
    ".else",
    "push 0",
    "push tg_vec",
    "jmp fatal_entry",
    ".endif",
    ".set tg_vec, tg_vec + 1",
    ".endr",
    ".balign 16, 0xcc",
    ".global vector_stubs_end",
    "vector_stubs_end:",
    timer = const crate::tables::TIMER_VECTOR,
    spurious = const crate::tables::SPURIOUS_VECTOR,
    syscall = const crate::tables::SYSCALL_VECTOR,
);

// Handlers.
global_asm!(
    ".section .text,\"ax\"",
    // LAPIC timer (IST1): count the tick, EOI, return.
    "timer_entry:",
    "push rax",
    "inc qword ptr [rip + {ticks}]",
    "mov eax, {lapic_eoi}",
    "mov dword ptr [rax], 0",
    "pop rax",
    "iretq",
    "",
    // #UD (RSP0 when from ring 3): on the CI hosts `int n` in ring 3 raises #UD instead of
    // going through the gate, so a #UD on the syscall instruction is the syscall.
    "invalid_opcode_entry:",
    "push rax",
    "mov rax, [rsp + 8]",
    "cmp word ptr [rax], {syscall_insn}",
    "jne .Lud_fatal",
    "add qword ptr [rsp + 8], 2",
    "pop rax",
    "jmp syscall_entry",
    ".Lud_fatal:",
    "pop rax",
    "push 0",
    "push 6",
    "jmp fatal_entry",
    "",
    // Syscall gate (RSP0, entered from ring 3 only; interrupt gate, so IF = 0 here).
    "syscall_entry:",
    "test eax, eax",
    "jnz .Lsys_not_wait",
    ".Lsys_wait:",
    "sti",
    "hlt",
    "cli",
    "cmp qword ptr [rip + {ticks}], rdx",
    "jb .Lsys_wait",
    "iretq",
    ".Lsys_not_wait:",
    "cmp eax, 4",
    "jne .Lsys_not_enable",
    "or qword ptr [rsp + 16], {rflags_if}",
    "iretq",
    ".Lsys_not_enable:",
    "cmp eax, 2",
    "je .Lsys_halt",
    "cmp eax, 1",
    "jne .Lsys_triple_fault",
    "mov al, 0xfe",
    "out 0x64, al",
    ".Lsys_triple_fault:",
    "lidt [{zero_idtr}]",
    "ud2",
    ".Lsys_halt:",
    "cli",
    "hlt",
    "jmp .Lsys_halt",
    "",
    // Fatal exceptions (IST2): print `FATAL exception=<dec> rip=0x<hex> err=0x<hex>`,
    // then reset through the i8042, then triple-fault if that did not take.
    "fatal_entry:",
    "lea rsi, [rip + .Lstr_fatal]",
    "call tg_puts",
    "mov rax, [rsp]",
    "call tg_putdec",
    "lea rsi, [rip + .Lstr_rip]",
    "call tg_puts",
    "mov rax, [rsp + 16]",
    "call tg_puthex",
    "lea rsi, [rip + .Lstr_err]",
    "call tg_puts",
    "mov rax, [rsp + 8]",
    "call tg_puthex",
    "mov al, 10",
    "call tg_putc",
    "mov al, 0xfe",
    "out 0x64, al",
    "lidt [{zero_idtr}]",
    "ud2",
    ".Lstr_fatal: .asciz \"FATAL exception=\"",
    ".Lstr_rip: .asciz \" rip=0x\"",
    ".Lstr_err: .asciz \" err=0x\"",
    "",
    // al = byte; clobbers dx.
    "tg_putc:",
    "push rax",
    "mov dx, 0x3fd",
    ".Lputc_wait:",
    "in al, dx",
    "test al, 0x20",
    "jz .Lputc_wait",
    "pop rax",
    "mov dx, 0x3f8",
    "out dx, al",
    "ret",
    // rsi = NUL-terminated string; clobbers rax, rdx, rsi.
    "tg_puts:",
    "mov al, [rsi]",
    "test al, al",
    "jz .Lputs_done",
    "call tg_putc",
    "inc rsi",
    "jmp tg_puts",
    ".Lputs_done:",
    "ret",
    // rax = value, 16 hex digits; clobbers rax, rbx, rcx, rdx.
    "tg_puthex:",
    "mov rbx, rax",
    "mov ecx, 16",
    ".Lhex_digit:",
    "rol rbx, 4",
    "mov eax, ebx",
    "and eax, 15",
    "cmp al, 10",
    "jb .Lhex_decimal",
    "add al, 39",
    ".Lhex_decimal:",
    "add al, 48",
    "call tg_putc",
    "dec ecx",
    "jnz .Lhex_digit",
    "ret",
    // rax = value, decimal; clobbers rax, rbx, rcx, rdx.
    "tg_putdec:",
    "xor ecx, ecx",
    "mov ebx, 10",
    ".Ldec_divide:",
    "xor edx, edx",
    "div rbx",
    "push rdx",
    "inc ecx",
    "test rax, rax",
    "jnz .Ldec_divide",
    ".Ldec_print:",
    "pop rax",
    "add al, 48",
    "call tg_putc",
    "dec ecx",
    "jnz .Ldec_print",
    "ret",
    ticks = sym crate::sys::TICKS,
    lapic_eoi = const crate::layout::LAPIC_BASE + 0xb0,
    zero_idtr = const ZERO_IDTR_ADDR,
    rflags_if = const RFLAGS_IF,
    syscall_insn = const 0xcd | ((crate::tables::SYSCALL_VECTOR as u16) << 8),
);
