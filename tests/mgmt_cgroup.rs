//! Per-VM cgroups with real parts: a `novacron-controller`, `novacron-agent`s creating real
//! cgroups on this host (v2, or the v1 hierarchies of a hybrid host; run as root), and real
//! `novacron-vmm` processes booting the test guest. The VMM runs in its VM's cgroup (the
//! supervisor does not), the limit files hold the limits of the VM's size, the controller's
//! metrics carry the cgroup's usage, restarts after a guest reset and agent restarts keep
//! the cgroup, deleting the VM removes it, and a CPU quota of 0.2 CPU holds a guest that
//! spins (`workload=ab`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::run_scenario as run;
use novacron_testsupport::mgmt::*;

/// The agent's memory limit of a VM of `mib` MiB: guest RAM + 40 MiB VMM overhead + a
/// margin of RAM/16, at least 16 MiB (`agent/src/cgroup.rs`).
fn memory_limit(mib: u64) -> u64 {
    (mib + 40 + (mib / 16).max(16)) << 20
}

/// A VM's cgroup as its `launch.json` records it.
#[derive(Debug)]
struct Cg {
    v2: bool,
    cpu: PathBuf,
    cpuacct: PathBuf,
    memory: PathBuf,
    pids: PathBuf,
    dirs: Vec<PathBuf>,
}

fn launch_cgroup(vm: &pb::Vm) -> Cg {
    let path = vm_dir(vm).join("launch.json");
    let j: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("launch.json");
    let cg = &j["cgroup"];
    assert!(cg.is_object(), "no cgroup in {}: {j}", path.display());
    let p = |k: &str| PathBuf::from(cg[k].as_str().unwrap_or_else(|| panic!("cgroup.{k}")));
    let mut dirs = Vec::new();
    for d in [p("cpu"), p("cpuacct"), p("memory"), p("pids")]
        .into_iter()
        .chain(cg["io"].as_str().map(PathBuf::from))
    {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    Cg {
        v2: cg["version"] == "v2",
        cpu: p("cpu"),
        cpuacct: p("cpuacct"),
        memory: p("memory"),
        pids: p("pids"),
        dirs,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn procs(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// CPU time the cgroup's tasks used (ns).
fn cpu_usage_ns(cg: &Cg) -> u64 {
    if cg.v2 {
        let s = read(&cg.cpu.join("cpu.stat"));
        let us: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec in cpu.stat");
        us * 1000
    } else {
        read(&cg.cpuacct.join("cpuacct.usage"))
            .parse()
            .expect("cpuacct.usage")
    }
}

/// Asserts that `pid` is in every directory of `cg` and that /proc/PID/cgroup says so.
fn assert_in_cgroup(pid: i32, cg: &Cg) {
    for d in &cg.dirs {
        assert!(
            procs(d).contains(&pid),
            "vmm {pid} not in {}: {:?}",
            d.display(),
            procs(d)
        );
    }
    // /proc/PID/cgroup names the VM's cgroup (relative to each mount) in every hierarchy.
    let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
    let leaf = cg
        .memory
        .strip_prefix(cg.memory.ancestors().nth(3).expect("novacron/<agent>/<vm>"))
        .expect("suffix")
        .display()
        .to_string();
    let wanted: &[&str] = if cg.v2 {
        &[""]
    } else {
        &["cpu", "memory", "pids"]
    };
    for c in wanted {
        let line = own
            .lines()
            .find(|l| {
                let ctrls = l.split(':').nth(1).unwrap_or("");
                if c.is_empty() {
                    ctrls.is_empty()
                } else {
                    ctrls.split(',').any(|x| x == *c)
                }
            })
            .unwrap_or_else(|| panic!("no {c:?} line in /proc/{pid}/cgroup: {own}"));
        assert!(
            line.ends_with(&format!("/{leaf}")),
            "/proc/{pid}/cgroup {line:?} does not end in {leaf}"
        );
    }
}

fn metrics(vm: &pb::Vm) -> novacron_proto::agent::VmMetrics {
    vm.status
        .as_ref()
        .and_then(|s| s.metrics)
        .unwrap_or_default()
}

async fn delete(c: &mut VmServiceClient<Authed>, name: &str) {
    c.delete_vm(pb::VmActionRequest {
        vm: name.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    wait_for(&format!("{name} gone"), Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            c.get_vm(pb::GetVmRequest { vm: name.into() })
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
}

use novacron_proto::controller::vm_service_client::VmServiceClient;

#[test]
fn vmm_runs_in_its_cgroup_with_the_vms_limits() {
    run(Duration::from_secs(180), async {
        let mut cl = Cluster::new("cgroup", Vmm::Real, &[]);
        cl.start_controller();
        cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "512M"]);
        cl.wait_ready_hosts(1).await;
        let mut c = cl.vms().await;

        let vm = create_running(&mut c, cl.spec("cg-1", 64)).await;
        wait_console(&console(&vm), "CHECK PASS", 1, guest_timeout(Vmm::Real)).await;
        let vmm_pid = running_pid(&vm);
        let cg = launch_cgroup(&vm);
        assert_in_cgroup(vmm_pid, &cg);
        // The supervisor stays outside (the OOM killer of the VM's cgroup cannot take it).
        let sup: i32 = read(&vm_dir(&vm).join("supervisor.pid")).parse().unwrap();
        for d in &cg.dirs {
            assert!(!procs(d).contains(&sup), "supervisor in {}", d.display());
        }

        // The limits of a 1-vCPU, 64 MiB VM at overcommit 1.
        let limit = memory_limit(64);
        if cg.v2 {
            assert_eq!(read(&cg.cpu.join("cpu.max")), "100000 100000");
            assert_eq!(read(&cg.memory.join("memory.max")), limit.to_string());
            if cg.memory.join("memory.swap.max").exists() {
                assert_eq!(read(&cg.memory.join("memory.swap.max")), "0");
            }
        } else {
            assert_eq!(read(&cg.cpu.join("cpu.cfs_quota_us")), "100000");
            assert_eq!(read(&cg.cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(
                read(&cg.memory.join("memory.limit_in_bytes")),
                limit.to_string()
            );
            if cg.memory.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(
                    read(&cg.memory.join("memory.memsw.limit_in_bytes")),
                    limit.to_string()
                );
            }
        }
        assert_eq!(read(&cg.pids.join("pids.max")), "68");

        // The controller's metrics carry the cgroup's usage (heartbeats every second): the
        // cgroup is charged for the 16 MiB region the guest touches.
        let m = wait_for("cgroup metrics", Duration::from_secs(20), || {
            let mut c = c.clone();
            async move {
                let m = metrics(&get(&mut c, "cg-1").await);
                (m.cgroup_memory_bytes >= 16 << 20 && m.cgroup_cpu_usage_ms > 0).then_some(m)
            }
        })
        .await;
        assert_eq!(m.cgroup_memory_limit_bytes, limit);
        assert_eq!(m.cgroup_cpu_quota_millicpus, 1000);
        assert!(m.cgroup_pids >= 1, "{m:?}");
        assert_eq!(m.cgroup_oom_kills, 0);
        assert!(m.cgroup_memory_bytes < m.cgroup_memory_limit_bytes, "{m:?}");
        let (ok, out, err) = cl.novactl(&["vm", "get", "cg-1"]);
        assert!(ok, "{err}");
        assert!(out.contains("cgroup: memory "), "{out}");

        // An agent restart re-adopts the VM and reads its cgroup back.
        cl.kill("node-a");
        cl.start_agent("node-a", "127.0.0.2", &[]);
        let m = wait_for(
            "re-adopted with cgroup metrics",
            Duration::from_secs(30),
            || {
                let mut c = c.clone();
                async move {
                    let vm = get(&mut c, "cg-1").await;
                    let adopted = vm.status.as_ref().is_some_and(|s| s.adopted);
                    let m = metrics(&vm);
                    (adopted && pid(&vm) == vmm_pid && m.cgroup_memory_limit_bytes > 0).then_some(m)
                }
            },
        )
        .await;
        assert_eq!(m.cgroup_memory_limit_bytes, limit);

        // A guest that resets itself: every restart of its VMM enters the same cgroup.
        let mut spec = cl.spec("cg-reset", 32);
        spec.cmdline = "workload=reset".into();
        let rs = create_running(&mut c, spec).await;
        let rcg = launch_cgroup(&rs);
        let restarted = wait_for("two resets", Duration::from_secs(60), || {
            let mut c = c.clone();
            async move {
                let v = get(&mut c, "cg-reset").await;
                (v.status.as_ref().map(|s| s.reboots).unwrap_or(0) >= 2).then_some(v)
            }
        })
        .await;
        let sup: i32 = read(&vm_dir(&restarted).join("supervisor.pid"))
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let vmm = loop {
            // The current VMM (its pid file), if it is in the cgroup right now.
            let current: Option<i32> = std::fs::read_to_string(vm_dir(&restarted).join("vmm.pid"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            if let Some(p) = current.filter(|p| procs(&rcg.memory).contains(p)) {
                break p;
            }
            assert!(Instant::now() < deadline, "no restarted vmm in {rcg:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(vmm, running_pid(&rs), "not a restarted vmm");
        for d in &rcg.dirs {
            assert!(!procs(d).contains(&sup), "supervisor in {}", d.display());
        }

        // Deleting removes the cgroup directories.
        delete(&mut c, "cg-1").await;
        delete(&mut c, "cg-reset").await;
        for d in cg.dirs.iter().chain(&rcg.dirs) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    });
}

#[test]
fn cpu_quota_holds_a_spinning_guest() {
    run(Duration::from_secs(150), async {
        let mut cl = Cluster::new("cgcpu", Vmm::Real, &[]);
        cl.start_controller();
        // 1 vCPU at overcommit 5: 0.2 CPU.
        cl.start_agent(
            "node-a",
            "127.0.0.2",
            &["--capacity-memory", "256M", "--cpu-overcommit", "5"],
        );
        cl.wait_ready_hosts(1).await;
        let mut c = cl.vms().await;
        // `ab` increments a byte of every page of its region, forever: it spins in ring 3.
        let vm = create_running(&mut c, cl.spec("spin", 32)).await;
        wait_console(&console(&vm), "CHECK PASS", 1, guest_timeout(Vmm::Real)).await;
        let cg = launch_cgroup(&vm);
        if cg.v2 {
            assert_eq!(read(&cg.cpu.join("cpu.max")), "20000 100000");
        } else {
            assert_eq!(read(&cg.cpu.join("cpu.cfs_quota_us")), "20000");
        }
        let (u0, t0) = (cpu_usage_ns(&cg), Instant::now());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (u1, t1) = (cpu_usage_ns(&cg), Instant::now());
        let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
        assert!(
            share <= 0.25,
            "the vm used {share:.3} CPU under a 0.2 CPU quota"
        );
        // It does spin (else the bound proves nothing).
        assert!(share >= 0.1, "the spinning guest used only {share:.3} CPU");
        let m = metrics(&get(&mut c, "spin").await);
        assert_eq!(m.cgroup_cpu_quota_millicpus, 200, "{m:?}");

        delete(&mut c, "spin").await;
        for d in &cg.dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }

        // A cgroup the kernel refuses fails the start, naming the file and the OS error: in
        // v1 a child's CFS quota may not exceed its parent's, so the agent's directory gets
        // 0.1 CPU and the next VM (0.2 CPU) cannot be limited.
        if !cg.v2 {
            let agent_dir = cg.cpu.parent().expect("agent dir").to_path_buf();
            std::fs::create_dir_all(&agent_dir).unwrap();
            std::fs::write(agent_dir.join("cpu.cfs_quota_us"), "10000").unwrap();
            let r = c
                .create_vm(pb::CreateVmRequest {
                    spec: Some(cl.spec("refused", 32)),
                    ..Default::default()
                })
                .await;
            let msg = match r {
                Err(s) => s.message().to_string(),
                Ok(v) => {
                    let v = v.into_inner();
                    assert_ne!(v.phase, pb::VmPhase::Running as i32, "{v:?}");
                    format!("{} {:?}", v.message, v.status)
                }
            };
            assert!(
                msg.contains("cpu.cfs_quota_us") && msg.contains("Invalid argument"),
                "{msg}"
            );
            // The half-made cgroup is gone.
            let left: Vec<_> = std::fs::read_dir(&agent_dir)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .collect();
            assert!(left.is_empty(), "left in {}: {left:?}", agent_dir.display());
            std::fs::write(agent_dir.join("cpu.cfs_quota_us"), "-1").unwrap();
            let _ = c
                .delete_vm(pb::VmActionRequest {
                    vm: "refused".into(),
                    ..Default::default()
                })
                .await;
        }

        // --no-cgroups: no cgroup, no cgroup metrics, and a warning.
        cl.start_agent("node-b", "127.0.0.3", &["--no-cgroups"]);
        cl.wait_ready_hosts(2).await;
        let mut spec = cl.spec("free", 32);
        spec.placement = Some(pb::Placement {
            host: "node-b".into(),
            ..Default::default()
        });
        let free = create_running(&mut c, spec).await;
        let launch = read(&vm_dir(&free).join("launch.json"));
        let j: serde_json::Value = serde_json::from_str(&launch).unwrap();
        assert!(j["cgroup"].is_null(), "{launch}");
        let pid = running_pid(&free);
        let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
        assert!(!own.contains("/novacron/"), "{own}");
        let m = wait_for("metrics of node-b", Duration::from_secs(20), || {
            let mut c = c.clone();
            async move {
                let m = metrics(&get(&mut c, "free").await);
                (m.rss_bytes > 0).then_some(m)
            }
        })
        .await;
        assert_eq!(
            (
                m.cgroup_memory_limit_bytes,
                m.cgroup_cpu_quota_millicpus,
                m.cgroup_memory_bytes
            ),
            (0, 0, 0)
        );
        let log = read(&cl.root.join("node-b.log"));
        assert!(log.contains("WARNING: --no-cgroups"), "{log}");
        delete(&mut c, "free").await;
    });
}
