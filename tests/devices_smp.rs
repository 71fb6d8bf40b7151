//! Several vCPUs: with `--vcpus 4` the test guest finds four CPUs in the MADT, starts the three
//! APs with INIT/SIPI, and every CPU runs the `ab` pattern on its own slice of memory and
//! reports it passed.

use novacron_testsupport::{Scratch, Vmm};
use std::time::Duration;

#[test]
fn four_vcpus_each_run_the_workload() {
    let dir = Scratch::new("smp");
    let g = novacron_testsupport::guest();
    let g = g.to_str().expect("utf8");
    let mut vm = Vmm::start(
        &dir,
        "smp",
        &[
            "--kernel",
            g,
            "--cmdline",
            "workload=smp mib=32 passes=10",
            "--vcpus",
            "4",
            "--memory",
            "128M",
        ],
    );
    let log = vm.wait_for("CHECK PASS workload=smp", 0, Duration::from_secs(60));
    assert!(log.contains("SMP cpus=4 madt_cpus=4 bsp_apic=0"), "{log}");
    assert!(log.contains("SMP started=3 of 3"), "{log}");
    assert!(
        log.contains("CHECK PASS workload=smp cpus=4 passes=10"),
        "{log}"
    );
    for cpu in 0..4 {
        let line = format!("SMP cpu={cpu} apic={cpu} pages=2048 passes=10 ok=1");
        assert!(log.contains(&line), "missing '{line}':\n{log}");
    }
    let (ok, out, _) = vm.client("info", &[]);
    assert!(ok && out.contains("\"vcpus\": 4"), "{out}");
}
