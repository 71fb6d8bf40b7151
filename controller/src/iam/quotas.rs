//! Project quotas (VMs, vCPUs, memory, disk bytes; 0: unlimited): a pure check of what a
//! project uses plus a new VM against its limits. The controller runs it under its state
//! mutex in the same step as the scheduler's claim, and the VM joins the state before the
//! mutex is released, so concurrent creates can never exceed a quota.

use novacron_proto::controller as pb;

use super::project_of;

const MIB: u64 = 1 << 20;

/// What a VM counts against its project's quota.
pub fn usage_of_spec(spec: &pb::VmSpec) -> pb::Usage {
    let disks: u64 = spec
        .disks
        .iter()
        .filter(|d| !d.readonly && !d.shared)
        .map(|d| d.size_mib.max(0) as u64 * MIB)
        .sum();
    pb::Usage {
        vms: 1,
        vcpus: spec.vcpus.max(0) as u32,
        memory_bytes: spec.memory_mib.max(0) as u64 * MIB,
        disk_bytes: disks,
    }
}

fn add(a: &mut pb::Usage, b: &pb::Usage) {
    a.vms = a.vms.saturating_add(b.vms);
    a.vcpus = a.vcpus.saturating_add(b.vcpus);
    a.memory_bytes = a.memory_bytes.saturating_add(b.memory_bytes);
    a.disk_bytes = a.disk_bytes.saturating_add(b.disk_bytes);
}

/// What the VMs of `project` use.
pub fn usage<'a>(vms: impl IntoIterator<Item = &'a pb::Vm>, project: &str) -> pb::Usage {
    let mut u = pb::Usage::default();
    for vm in vms {
        if project_of(vm) == project {
            add(
                &mut u,
                &usage_of_spec(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default())),
            );
        }
    }
    u
}

/// Checks that `used` plus `spec` fits `quota`; the error names the quota exceeded.
pub fn check(
    project: &str,
    quota: &pb::Quota,
    used: &pb::Usage,
    spec: &pb::VmSpec,
) -> Result<(), String> {
    let mut after = *used;
    add(&mut after, &usage_of_spec(spec));
    let over = |what: &str, max: u64, want: u64, have: u64| {
        Err(format!(
            "quota of project {project} exceeded: {what} would be {want}, the quota is {max} \
             ({have} in use); ask an admin to raise it (`novactl project quota {project}`)"
        ))
    };
    let q = quota;
    if q.max_vms > 0 && after.vms > q.max_vms {
        return over(
            "max_vms",
            q.max_vms.into(),
            after.vms.into(),
            used.vms.into(),
        );
    }
    if q.max_vcpus > 0 && after.vcpus > q.max_vcpus {
        return over(
            "max_vcpus",
            q.max_vcpus.into(),
            after.vcpus.into(),
            used.vcpus.into(),
        );
    }
    if q.max_memory_bytes > 0 && after.memory_bytes > q.max_memory_bytes {
        return over(
            "max_memory_bytes",
            q.max_memory_bytes,
            after.memory_bytes,
            used.memory_bytes,
        );
    }
    if q.max_disk_bytes > 0 && after.disk_bytes > q.max_disk_bytes {
        return over(
            "max_disk_bytes",
            q.max_disk_bytes,
            after.disk_bytes,
            used.disk_bytes,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(project: &str, vcpus: i32, mib: i64) -> pb::Vm {
        pb::Vm {
            project: project.into(),
            spec: Some(pb::VmSpec {
                vcpus,
                memory_mib: mib,
                disks: vec![pb::DiskSpec {
                    size_mib: 10,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn usage_and_limits() {
        let vms = [
            vm("p", 1, 64),
            vm("p", 2, 64),
            vm("q", 8, 1024),
            vm("", 1, 1),
        ];
        let u = usage(&vms, "p");
        assert_eq!((u.vms, u.vcpus, u.memory_bytes), (2, 3, 128 * MIB));
        assert_eq!(u.disk_bytes, 20 * MIB);
        assert_eq!(usage(&vms, "default").vms, 1);
        let spec = vm("p", 1, 64).spec.unwrap();
        let unlimited = pb::Quota::default();
        assert!(check("p", &unlimited, &u, &spec).is_ok());
        let q = |max_vms, max_vcpus, max_memory_bytes, max_disk_bytes| pb::Quota {
            max_vms,
            max_vcpus,
            max_memory_bytes,
            max_disk_bytes,
        };
        assert!(check("p", &q(3, 4, 192 * MIB, 30 * MIB), &u, &spec).is_ok());
        for (quota, name) in [
            (q(2, 0, 0, 0), "max_vms"),
            (q(0, 3, 0, 0), "max_vcpus"),
            (q(0, 0, 191 * MIB, 0), "max_memory_bytes"),
            (q(0, 0, 0, 29 * MIB), "max_disk_bytes"),
        ] {
            let e = check("p", &quota, &u, &spec).unwrap_err();
            assert!(e.contains(name) && e.contains("project p"), "{e}");
        }
    }
}
