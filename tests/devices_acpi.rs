//! The VMM's ACPI tables, checked with a real ACPI tool and by guests:
//!
//! - every table (RSDP, XSDT, FADT, MADT, DSDT) disassembles with `iasl -d` (Debian's
//!   `acpica-tools`) without errors, and the disassembly shows what the VMM meant: the
//!   hardware-reduced FADT, one local APIC per vCPU, the IOAPIC, the IRQ 0 override, a
//!   `LNRO0005` device per virtio-mmio window with its memory range and interrupt;
//! - the test guest finds them in guest memory, counts the CPUs of the MADT, and powers the
//!   machine off (exit status 0) or resets it (status 10) through the FADT's registers.

use novacron_testsupport::{Scratch, Vmm};
use novacron_vmm::acpi;
use novacron_vmm::devices::virtio::manager::DeviceInfo;
use std::process::Command;
use std::time::Duration;

fn devices() -> Vec<DeviceInfo> {
    vec![
        DeviceInfo {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
            device_type: 2,
        },
        DeviceInfo {
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
            device_type: 1,
        },
    ]
}

/// Runs `iasl -d` on `file` and returns the disassembly, failing on any error.
fn disassemble(dir: &Scratch, name: &str, bytes: &[u8]) -> String {
    let dat = dir.path(&format!("{name}.dat"));
    std::fs::write(&dat, bytes).expect("write table");
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&dat)
        .current_dir(&dir.0)
        .output()
        .expect("run iasl (apt-get install acpica-tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl -d {name} failed:\n{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("Error") && !l.contains("0 Errors")),
        "iasl -d {name} reported errors:\n{text}"
    );
    std::fs::read_to_string(dir.path(&format!("{name}.dsl"))).expect("iasl wrote a .dsl file")
}

#[test]
fn iasl_disassembles_every_table() {
    let dir = Scratch::new("acpi-iasl");
    let tables = acpi::tables(4, &devices());
    let find = |sig: &str| {
        tables
            .iter()
            .find(|(s, _)| s == sig)
            .map(|(_, b)| b.clone())
            .expect("table present")
    };

    let dsdt = disassemble(&dir, "dsdt", &find("DSDT"));
    assert_eq!(dsdt.matches("\"LNRO0005\"").count(), 2, "{dsdt}");
    assert!(
        dsdt.contains("0xD0001000"),
        "virtio window missing:\n{dsdt}"
    );
    assert!(
        dsdt.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive"),
        "{dsdt}"
    );
    assert!(dsdt.contains("\"ACPI0007\""), "{dsdt}");
    assert!(dsdt.contains("EisaId (\"PNP0501\")"), "{dsdt}");
    assert!(dsdt.contains("_S5_"), "{dsdt}");

    let madt = disassemble(&dir, "apic", &find("APIC"));
    assert_eq!(
        madt.matches("Subtable Type : 00 [Processor Local APIC]")
            .count(),
        4,
        "{madt}"
    );
    assert!(madt.contains("[I/O APIC]"), "{madt}");
    assert!(madt.contains("Address : FEC00000"), "{madt}");
    assert!(madt.contains("[Interrupt Source Override]"), "{madt}");
    assert!(madt.contains("[Local APIC NMI]"), "{madt}");

    let fadt = disassemble(&dir, "facp", &find("FACP"));
    assert!(fadt.contains("Hardware Reduced (V5) : 1"), "{fadt}");
    assert!(fadt.contains("Reset Register Supported (V2) : 1"), "{fadt}");

    let xsdt = disassemble(&dir, "xsdt", &find("XSDT"));
    assert!(xsdt.contains("ACPI Table Address   1"), "{xsdt}");

    // iasl does not take a bare RSDP; check it as ACPICA would: both checksums, revision 2,
    // 36 bytes.
    let rsdp = find("RSDP");
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp.len(), 36);
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(
        rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "RSDP checksum"
    );
    assert_eq!(
        rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "RSDP extended checksum"
    );

    // ACPICA's AML interpreter loads the DSDT into a namespace and evaluates its objects.
    let out = Command::new("acpiexec")
        .args([
            "-b",
            "namespace; evaluate \\_SB_.V001._CRS; evaluate \\_S5_",
        ])
        .arg(dir.path("dsdt.dat"))
        .current_dir(&dir.0)
        .output()
        .expect("run acpiexec (acpica-tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "acpiexec failed:\n{text}");
    assert!(
        text.contains("Evaluation of \\_SB_.V001._CRS returned"),
        "{text}"
    );
    assert!(
        text.contains("[Integer] = 0000000000000005"),
        "_S5_ must hold 5:\n{text}"
    );
    assert!(
        !text.contains("AE_"),
        "ACPICA reported an exception:\n{text}"
    );
}

fn guest_args(g: &str, cmdline: &str, vcpus: &str) -> Vec<String> {
    [
        "--kernel",
        g,
        "--cmdline",
        cmdline,
        "--vcpus",
        vcpus,
        "--memory",
        "64M",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn guest_reads_the_tables_and_powers_off_through_acpi() {
    let dir = Scratch::new("acpi-off");
    let g = novacron_testsupport::guest();
    let mut args = guest_args(
        g.to_str().expect("utf8"),
        "workload=acpi action=poweroff",
        "3",
    );
    // Two disks: the DSDT must list both virtio-mmio windows the guest finds by probing.
    for name in ["a.img", "b.img"] {
        let disk = dir.path(name);
        std::fs::write(&disk, vec![0u8; 64 << 10]).expect("disk image");
        args.extend(["--disk".to_string(), disk.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::start(&dir, "off", &refs);
    let code = vm.wait_exit(Duration::from_secs(20));
    let log = vm.log();
    assert!(
        log.contains("CHECK PASS workload=acpi cpus=3 virtio=2"),
        "{log}\n{}",
        vm.err()
    );
    assert_eq!(
        code,
        Some(0),
        "ACPI S5 must power off (status 0)\n{log}\n{}",
        vm.err()
    );
}

#[test]
fn guest_resets_through_the_acpi_reset_register() {
    let dir = Scratch::new("acpi-reset");
    let g = novacron_testsupport::guest();
    let args = guest_args(g.to_str().expect("utf8"), "workload=acpi action=reset", "1");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::start(&dir, "reset", &refs);
    let code = vm.wait_exit(Duration::from_secs(20));
    let log = vm.log();
    assert!(log.contains("DONE workload=acpi action=reset"), "{log}");
    assert_eq!(
        code,
        Some(10),
        "ACPI reset must end with status 10\n{log}\n{}",
        vm.err()
    );
}
