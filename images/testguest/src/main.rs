//! NovaCron test guest: a freestanding x86_64 kernel. See `images/README.md` for the command
//! line, the serial protocol and the memory layout.
//!
//! Ring 0 (`entry.rs`, assembly only) loads the compile-time tables (`tables.rs`) and drops
//! to ring 3, where everything else runs at native speed: boot information and command-line
//! parsing, serial output, the LAPIC timer setup, and the workloads.
#![no_std]
#![no_main]

mod acpi;
mod bootinfo;
mod cmdline;
mod devworkloads;
mod entry;
mod layout;
mod mem;
mod serial;
mod smp;
mod sys;
mod tables;
mod virtio;
mod virtio_blk;
mod virtio_net;
mod workloads;

use core::fmt::Write;

use bootinfo::BootInfo;
use cmdline::Workload;
use layout::REGION_BASE;
use serial::Line;
use workloads::Region;

/// Protocol version printed in the banner.
const PROTOCOL_VERSION: u32 = 1;

/// Ring-3 entry point, called by `ring3_entry` with the entry kind (`entry::ENTRY_*`) and the
/// physical address of the loader's boot information.
extern "C" fn guest_main(entry: u64, info: u64) -> ! {
    serial::init();
    let boot = BootInfo::parse(entry, info);
    outln!("NOVACRON-TESTGUEST {PROTOCOL_VERSION} entry={}", boot.entry);

    let mut line = Line::new();
    line.push_bytes(b"CMDLINE ");
    let shown = boot.cmdline.trim_ascii();
    let mut cmd = [0u8; 200];
    let n = shown.len().min(cmd.len());
    for (dst, &src) in cmd.iter_mut().zip(shown) {
        *dst = if src.is_ascii_graphic() || src == b' ' {
            src
        } else {
            b'?'
        };
    }
    line.push_bytes(&cmd[..n]);
    line.emit();
    outln!(
        "MEM ram_mib={} e820={}",
        boot.ram_bytes() >> 20,
        boot.memmap_len
    );

    let parsed = cmdline::parse(boot.cmdline);
    let hz = parsed.as_ref().map_or(100, |c| c.hz);
    sys::start_timer(hz);

    if let Some(error) = boot.error {
        outln!("ERROR {error}");
        sys::idle_forever();
    }
    // Device and SMP workloads (devworkloads.rs) return here only if not selected.
    devworkloads::dispatch(boot.cmdline, &boot);
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            e.print();
            sys::idle_forever();
        }
    };
    if config.workload.uses_region() {
        let end = REGION_BASE + Region::footprint(config.mib);
        if end > layout::MAPPED_LIMIT || !boot.is_ram(REGION_BASE, end) {
            outln!(
                "ERROR region of {} MiB at {REGION_BASE:#x} (plus checksum table, up to {end:#x}) is not in RAM",
                config.mib
            );
            sys::idle_forever();
        }
    }

    outln!(
        "READY workload={} mib={} hz={}",
        config.workload.name(),
        config.mib,
        config.hz
    );
    match config.workload {
        Workload::Idle => workloads::idle(&config),
        Workload::Ab => workloads::ab::run(&config),
        Workload::Rand => workloads::rand::run(&config),
        Workload::Fill => workloads::fill::run(&config),
        Workload::Counter => workloads::counter::run(&config, &boot),
        Workload::Hot => workloads::hot::run(&config, &boot),
        Workload::Reset => {
            outln!("DONE workload=reset action=i8042-reset");
            sys::outb(0x64, 0xfe);
            sys::wait_until(sys::ticks() + hz);
            outln!("ERROR i8042 reset was ignored");
            sys::idle_forever();
        }
        Workload::TripleFault => {
            outln!("DONE workload=triplefault action=triple-fault");
            sys::triple_fault();
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = Line::new();
    let _ = write!(line, "ERROR panic: {}", info.message());
    if let Some(location) = info.location() {
        let _ = write!(line, " at {}:{}", location.file(), location.line());
    }
    line.emit();
    // Panics only happen in ring 3 (ring 0 is assembly), where halting needs the syscall.
    sys::idle_forever();
}

/// Referenced by the precompiled `core` (built with unwinding); never called with
/// `panic=abort`.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
