//! Reading the ACPI tables the VMM provides (ring 3, through the identity map): the RSDP in
//! the BIOS area, the XSDT, the MADT (CPUs, IOAPICs), the FADT (sleep control and reset
//! registers) and the DSDT (virtio-mmio devices, `_S5_`). Also the `acpi` workload, which
//! reports what it found and can power the machine off or reset it through those registers.

use crate::devworkloads::arg;
use crate::{outln, sys};

/// What the tables describe.
pub struct Tables {
    pub rsdp: u64,
    /// Enabled local APICs and their IDs (the first 64).
    pub cpus: usize,
    pub apic_ids: [u8; 64],
    pub ioapics: usize,
    /// `LNRO0005` devices in the DSDT.
    pub virtio: usize,
    /// SLP_TYPa of `_S5_`.
    pub s5: Option<u8>,
    /// Sleep control register (address space, address).
    pub sleep_control: Option<(u8, u64)>,
    /// Reset register (address space, address) and value.
    pub reset: Option<(u8, u64, u8)>,
}

fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses below 4 GiB, all identity-mapped (RAM, or MMIO holes
    // that read as all-ones).
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn bytes(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: as for rd; the tables are never written after boot.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    bytes(addr, len).iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

/// A table's address if its header is sane (length within 64 KiB, checksum zero).
fn table(addr: u64) -> Option<(u64, [u8; 4], u64)> {
    if addr == 0 || addr >= (1 << 32) - 0x10000 {
        return None;
    }
    let sig: [u8; 4] = rd(addr);
    let len = rd::<u32>(addr + 4) as u64;
    if !(36..=0x10000).contains(&len) || !checksum_ok(addr, len) {
        return None;
    }
    Some((addr, sig, len))
}

fn gas(addr: u64) -> Option<(u8, u64)> {
    let space: u8 = rd(addr);
    let a: u64 = rd(addr + 4);
    (a != 0).then_some((space, a))
}

/// Finds and parses the tables; `None` without a valid RSDP.
pub fn find() -> Option<Tables> {
    let rsdp = (0xe_0000u64..0x10_0000)
        .step_by(16)
        .find(|&a| bytes(a, 8) == b"RSD PTR " && checksum_ok(a, 20))?;
    let mut t = Tables {
        rsdp,
        cpus: 0,
        apic_ids: [0; 64],
        ioapics: 0,
        virtio: 0,
        s5: None,
        sleep_control: None,
        reset: None,
    };
    let revision: u8 = rd(rsdp + 15);
    if revision < 2 {
        return Some(t);
    }
    let (xsdt, sig, len) = table(rd(rsdp + 24))?;
    if &sig != b"XSDT" {
        return Some(t);
    }
    for i in 0..(len - 36) / 8 {
        let Some((addr, sig, len)) = table(rd(xsdt + 36 + 8 * i)) else {
            continue;
        };
        match &sig {
            b"APIC" => {
                let mut p = addr + 44;
                while p + 2 <= addr + len {
                    let (kind, elen): (u8, u8) = (rd(p), rd(p + 1));
                    if elen < 2 {
                        break;
                    }
                    if kind == 0 && rd::<u32>(p + 4) & 1 != 0 {
                        if t.cpus < t.apic_ids.len() {
                            t.apic_ids[t.cpus] = rd(p + 3);
                        }
                        t.cpus += 1;
                    } else if kind == 1 {
                        t.ioapics += 1;
                    }
                    p += elen as u64;
                }
            }
            b"FACP" if len >= 268 => {
                t.sleep_control = gas(addr + 244);
                if let Some((space, a)) = gas(addr + 116) {
                    t.reset = Some((space, a, rd(addr + 128)));
                }
                let x_dsdt: u64 = rd(addr + 140);
                let dsdt = if x_dsdt != 0 {
                    x_dsdt
                } else {
                    rd::<u32>(addr + 40) as u64
                };
                if let Some((d, _, dlen)) = table(dsdt).filter(|x| &x.1 == b"DSDT") {
                    let body = bytes(d, dlen);
                    t.virtio = body.windows(8).filter(|w| w == b"LNRO0005").count();
                    t.s5 = s5(body);
                }
            }
            _ => {}
        }
    }
    Some(t)
}

/// SLP_TYPa from `Name(_S5_, Package(){a, ...})` in AML.
fn s5(aml: &[u8]) -> Option<u8> {
    let i = aml.windows(4).position(|w| w == b"_S5_")? + 4;
    if *aml.get(i)? != 0x12 {
        return None;
    }
    // PkgLength: the top two bits of the lead byte count the extra bytes.
    let extra = (aml.get(i + 1)? >> 6) as usize;
    let elem = i + 2 + extra + 1;
    match *aml.get(elem)? {
        0x0a => aml.get(elem + 1).copied(),
        0x00 => Some(0),
        0x01 => Some(1),
        _ => None,
    }
}

fn write_reg(space: u8, addr: u64, value: u8) {
    match space {
        // SAFETY: the address comes from the FADT and is an MMIO register of the VMM,
        // identity-mapped below 4 GiB.
        0 if addr < (1 << 32) => unsafe { core::ptr::write_volatile(addr as *mut u8, value) },
        1 if addr < 0x400 => sys::outb(addr as u16, value),
        _ => outln!("ERROR cannot reach register space={space} addr={addr:#x}"),
    }
}

/// The `acpi` workload.
pub fn run(cmdline: &'static [u8]) -> ! {
    let Some(t) = find() else {
        outln!("CHECK FAIL workload=acpi error=no-rsdp");
        sys::idle_forever();
    };
    outln!(
        "ACPI rsdp={:#x} cpus={} ioapics={} virtio={} s5={:?} sleep={:?} reset={:?}",
        t.rsdp,
        t.cpus,
        t.ioapics,
        t.virtio,
        t.s5,
        t.sleep_control.map(|x| x.1),
        t.reset.map(|x| x.1)
    );
    let want_cpus = crate::devworkloads::num(cmdline, "cpus", t.cpus as u64) as usize;
    // The DSDT must describe exactly the virtio-mmio windows that answer.
    let probed = crate::virtio::count();
    let ok = t.cpus == want_cpus
        && t.ioapics == 1
        && t.virtio == probed
        && t.s5.is_some()
        && t.sleep_control.is_some();
    if ok {
        outln!(
            "CHECK PASS workload=acpi cpus={} virtio={}",
            t.cpus,
            t.virtio
        );
    } else {
        outln!(
            "CHECK FAIL workload=acpi cpus={} want_cpus={want_cpus} virtio={} probed={probed}",
            t.cpus,
            t.virtio
        );
    }
    match arg(cmdline, "action") {
        Some(b"poweroff") => {
            if let (Some(typ), Some((space, addr))) = (t.s5, t.sleep_control) {
                outln!("DONE workload=acpi action=poweroff");
                write_reg(space, addr, ((typ & 7) << 2) | (1 << 5));
            }
            outln!("ERROR ACPI power-off was ignored");
        }
        Some(b"reset") => {
            if let Some((space, addr, value)) = t.reset {
                outln!("DONE workload=acpi action=reset");
                write_reg(space, addr, value);
            }
            outln!("ERROR ACPI reset was ignored");
        }
        _ => outln!("DONE workload=acpi"),
    }
    sys::idle_forever();
}
