//! ACPI tables for the guest, built with the `acpi_tables` crate and written into guest memory
//! at `layout::RSDP_START` (the BIOS area where guests scan for the RSDP):
//!
//! - RSDP (revision 2) pointing at the XSDT;
//! - XSDT listing the FADT and the MADT;
//! - FADT, hardware-reduced (no PM1/GPE blocks, no SCI), with the sleep control/status and
//!   reset registers of the [`pm`] device and the DSDT address;
//! - DSDT: one `ACPI0007` processor object per vCPU, the COM1 serial port (`PNP0501`), each
//!   virtio-mmio device (`LNRO0005`: its 4 KiB register window and its edge-triggered,
//!   active-high interrupt), and `_S5_` for power-off;
//! - MADT: one local APIC per vCPU (APIC ID = vCPU index), the IOAPIC (GSIs 0-23), the
//!   ISA IRQ 0 to GSI 2 override (KVM's PIT routing) and LINT1 as NMI on every CPU.
//!
//! Guests that find devices only through ACPI (for example Debian's cloud kernel, whose
//! virtio-mmio driver has no command-line device support and which has no MP-table parser)
//! discover the CPUs and devices from these tables.

pub mod pm;

use crate::devices::virtio::manager::DeviceInfo;
use crate::layout::{IOAPIC_START, LAPIC_START, RSDP_START, SERIAL_IRQ};
use crate::memory::GuestMem;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"NOVACR";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"NOVACRON";
/// OEM revision.
pub const OEM_REVISION: u32 = 1;
/// End of the area the tables may use (the BIOS area ends at 1 MiB).
const TABLES_END: u64 = 0x10_0000;
/// IOAPIC ID in the MADT.
const IOAPIC_ID: u8 = 0;
/// The sleep type `_S5_` hands to the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Errors writing the tables.
#[derive(Debug, Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables ({0} bytes) do not fit in the BIOS area")]
    TooBig(u64),
    /// Guest memory refused the write.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Where the tables were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiLayout {
    /// RSDP.
    pub rsdp: u64,
    /// XSDT.
    pub xsdt: u64,
    /// FADT.
    pub fadt: u64,
    /// DSDT.
    pub dsdt: u64,
    /// MADT.
    pub madt: u64,
    /// First byte after the tables.
    pub end: u64,
}

/// Pre-serialized AML, to mix dynamically built objects into the crate's builders.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn bytes(obj: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    obj.to_aml_bytes(&mut v);
    v
}

/// The DSDT: processors, COM1, virtio-mmio devices, `_S5_`.
pub fn dsdt(vcpus: u8, devices: &[DeviceInfo]) -> Vec<u8> {
    let mut children: Vec<Raw> = Vec::new();
    for cpu in 0..vcpus {
        let uid = u32::from(cpu);
        let path = format!("C{cpu:03X}");
        children.push(Raw(bytes(&aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0007"),
                &aml::Name::new("_UID".into(), &uid),
            ],
        ))));
    }
    let com1_io = aml::IO::new(0x3f8, 0x3f8, 0, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    children.push(Raw(bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u32),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
            ),
        ],
    ))));
    for (i, d) in devices.iter().enumerate() {
        let path = format!("V{i:03X}");
        let window = aml::Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.irq);
        let uid = i as u32;
        children.push(Raw(bytes(&aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![&window, &irq]),
                ),
            ],
        ))));
    }
    let refs: Vec<&dyn Aml> = children.iter().map(|c| c as &dyn Aml).collect();
    let sb = aml::Scope::new("\\_SB_".into(), refs);
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    );
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = bytes(&sb);
    s5.to_aml_bytes(&mut body);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// The MADT: local APICs, IOAPIC, the IRQ 0 override, LINT1 NMI.
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, LAPIC_START as u32);
    // Flags: PCAT_COMPAT (the 8259s exist; the guest masks them).
    madt.write_u32(40, 1);
    let mut body = Vec::new();
    for cpu in 0..vcpus {
        // Processor local APIC: uid, APIC id, flags = enabled.
        body.extend_from_slice(&[0, 8, cpu, cpu]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // IOAPIC: id, reserved, address, GSI base.
    body.extend_from_slice(&[1, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override: ISA bus 0, IRQ 0 -> GSI 2, flags conforming.
    body.extend_from_slice(&[2, 10, 0, 0]);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    // Local APIC NMI: all processors (0xff), flags conforming, LINT1.
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    madt.append_slice(&body);
    madt.as_slice().to_vec()
}

/// The FADT (hardware-reduced) pointing at the DSDT.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let reg = |addr: u64| {
        GAS::new(
            AddressSpace::SystemMemory,
            8,
            0,
            AccessSize::ByteAccess,
            addr,
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    b.reset_reg = reg(pm::PM_START + pm::RESET_OFFSET);
    b.reset_value = pm::RESET_VALUE;
    b.sleep_control_reg = reg(pm::PM_START + pm::SLEEP_CONTROL_OFFSET);
    b.sleep_status_reg = reg(pm::PM_START + pm::SLEEP_STATUS_OFFSET);
    // IA-PC boot architecture: 8042 present, no VGA, no MSI, no ASPM control.
    b.iapc_boot_arch = ((1u16 << 1) | (1 << 2) | (1 << 3) | (1 << 4)).into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"NOVACRON").into();
    bytes(&b.finalize())
}

fn align(v: u64) -> u64 {
    (v + 15) & !15
}

/// Builds every table for `vcpus` CPUs and `devices`, and writes them into `mem`.
pub fn write_tables(
    mem: &GuestMem,
    vcpus: u8,
    devices: &[DeviceInfo],
) -> Result<AcpiLayout, AcpiError> {
    let rsdp_addr = RSDP_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let dsdt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt = dsdt(vcpus, devices);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);
    let madt = madt(vcpus);
    let end = madt_addr + madt.len() as u64;
    if end > TABLES_END {
        return Err(AcpiError::TooBig(end - rsdp_addr));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&bytes(&rsdp), GuestAddress(rsdp_addr))?;
    mem.write_slice(&bytes(&xsdt), GuestAddress(xsdt_addr))?;
    mem.write_slice(&fadt, GuestAddress(fadt_addr))?;
    mem.write_slice(&dsdt, GuestAddress(dsdt_addr))?;
    mem.write_slice(&madt, GuestAddress(madt_addr))?;
    Ok(AcpiLayout {
        rsdp: rsdp_addr,
        xsdt: xsdt_addr,
        fadt: fadt_addr,
        dsdt: dsdt_addr,
        madt: madt_addr,
        end,
    })
}

/// Each table as `(signature, bytes)` (for tests and tools such as `iasl -d`).
pub fn tables(vcpus: u8, devices: &[DeviceInfo]) -> Vec<(String, Vec<u8>)> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(0);
    xsdt.add_entry(0);
    vec![
        ("DSDT".into(), dsdt(vcpus, devices)),
        ("APIC".into(), madt(vcpus)),
        ("FACP".into(), fadt(0)),
        ("XSDT".into(), bytes(&xsdt)),
        ("RSDP".into(), bytes(&Rsdp::new(OEM_ID, 0))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn devs() -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
            device_type: 2,
        }]
    }

    #[test]
    fn tables_checksum_and_lengths() {
        for (sig, t) in tables(4, &devs()) {
            assert_eq!(sum(&t), 0, "{sig} checksum");
            if sig != "RSDP" {
                assert_eq!(&t[..4], sig.as_bytes());
                let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
                assert_eq!(len, t.len(), "{sig} length");
            }
        }
        let m = madt(4);
        // 44-byte header, 4 LAPICs, IOAPIC, override, NMI.
        assert_eq!(m.len(), 44 + 4 * 8 + 12 + 10 + 6);
    }

    #[test]
    fn dsdt_names_the_devices() {
        let d = dsdt(2, &devs());
        let has = |s: &[u8]| d.windows(s.len()).any(|w| w == s);
        assert!(has(b"LNRO0005"));
        assert!(has(b"ACPI0007"));
        assert!(has(b"_S5_"));
        assert!(has(b"V000"));
        assert!(has(b"C001"));
    }

    #[test]
    fn written_tables_fit_below_1m() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("mem");
        let l = write_tables(&mem, 254, &devs()).expect("write");
        assert!(l.end <= TABLES_END);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(RSDP_START))
            .expect("read");
        assert_eq!(&sig, b"RSD PTR ");
    }
}
