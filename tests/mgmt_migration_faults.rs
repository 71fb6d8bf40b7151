//! Migration fault tests through the real controller, agents and `novacron-vmm` processes
//! booting the in-repo test guest: whatever fails, exactly one copy of the guest runs
//! afterwards (both agents are asked, and the VMM processes counted) and its self-check keeps
//! passing.
//!
//! Faults: the source agent's answer dropped after the destination committed; the source
//! agent killed mid-migration (and restarted: it re-adopts the VMM); the controller killed
//! mid-migration and restarted; the destination VMM killed before commit; a stray stream
//! reaching the destination before the real one; a destination that never gets a connection.
//! The agent's test-only switch `NOVACRON_AGENT_TEST_FAULT` places the management faults.

use std::path::PathBuf;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::*;
use tonic::Code;

const FAULT: &str = "NOVACRON_AGENT_TEST_FAULT";
/// A self-checking guest whose region holds real text (so a bandwidth cap makes the first
/// pass take seconds) and whose dirty rate is bounded (so the migration converges).
const SLOW_GUEST: &str = "workload=fill mib=16 rate=100";
/// 4 MiB/s: the first pass of SLOW_GUEST takes about four seconds.
const SLOW_BANDWIDTH: u64 = 4 << 20;

fn run<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if tokio::time::timeout(limit, f).await.is_err() {
            panic!("scenario exceeded {limit:?}");
        }
    });
}

/// A cluster with node-a (source, with `fault` set) and node-b, and one VM `name` on node-a
/// whose guest passed its first self-check.
async fn setup(tag: &str, fault: &str, cmdline: &str) -> (Cluster, pb::Vm) {
    let mut cl = Cluster::new(tag, Vmm::Real, &["--placement", "spread"]);
    cl.cmdline = cmdline.to_string();
    cl.start_controller();
    let env: Vec<(&str, &str)> = if fault.is_empty() {
        Vec::new()
    } else {
        vec![(FAULT, fault)]
    };
    cl.start_agent_env("node-a", "127.0.0.2", &["--capacity-memory", "512M"], &env);
    cl.wait_ready_hosts(1).await;
    let mut c = cl.vms().await;
    let vm = c
        .create_vm(pb::CreateVmRequest {
            spec: Some(cl.spec("f", 64)),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(vm.host, "node-a");
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(2).await;
    wait_console(&console(&vm), "CHECK PASS", 1, guest_timeout(Vmm::Real)).await;
    (cl, vm)
}

/// What an agent holds of a VM: its status, or None when it does not know it.
async fn held(cl: &Cluster, agent: &str, vm_id: &str) -> Option<apb::VmStatus> {
    let mut a = cl.agent(agent).await;
    match a
        .get_vm(apb::VmRequest {
            request_id: String::new(),
            vm_id: vm_id.to_string(),
        })
        .await
    {
        Ok(s) => Some(s.into_inner()),
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("agent {agent}: {s}"),
    }
}

/// Waits until the controller records the VM Running on `host`, then asserts that exactly one
/// copy runs: `host`'s agent reports it running, the other agent does not know it, one VMM
/// process of the cluster is alive (the one `host` reports), and the guest's self-check keeps
/// passing on that copy's console.
async fn exactly_one_copy(cl: &Cluster, vm: &pb::Vm, host: &str) {
    let c = cl.vms().await;
    let m = wait_for(
        &format!("vm {} Running on {host}", vm.name),
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let name = vm.name.clone();
            async move {
                let v = c
                    .get_vm(pb::GetVmRequest { vm: name })
                    .await
                    .ok()?
                    .into_inner();
                (v.host == host && v.phase == pb::VmPhase::Running as i32).then_some(v)
            }
        },
    )
    .await
    .migration
    .unwrap_or_default();
    eprintln!(
        "{}: migration {} phase {} error {:?}, {} ms",
        vm.name,
        m.id,
        m.phase,
        m.error,
        m.ended_at_ms - m.started_at_ms
    );
    let other = if host == "node-a" { "node-b" } else { "node-a" };
    wait_for(
        &format!("{other} to drop its copy of {}", vm.name),
        Duration::from_secs(30),
        || async { held(cl, other, &vm.id).await.is_none().then_some(()) },
    )
    .await;
    let s = held(cl, host, &vm.id)
        .await
        .unwrap_or_else(|| panic!("{host} does not hold {}", vm.name));
    assert_eq!(
        s.state,
        apb::VmState::Running as i32,
        "{host} reports {:?}",
        s
    );
    let pids = cl.vmm_pids();
    assert_eq!(
        pids,
        vec![s.pid],
        "VMM processes alive: {pids:?}, {host} reports {}",
        s.pid
    );
    let log = PathBuf::from(&s.console_log);
    let before = count_lines(&log, "CHECK PASS");
    wait_console(&log, "CHECK PASS", before + 2, Duration::from_secs(30)).await;
    assert_eq!(
        count_lines(&log, "CHECK FAIL"),
        0,
        "self-check failed on {host}"
    );
}

/// Starts a migration of `vm` to node-b in the background.
async fn migrate_bg(
    cl: &Cluster,
    vm: &pb::Vm,
    bandwidth: u64,
) -> tokio::task::JoinHandle<Result<pb::MigrateVmResponse, tonic::Status>> {
    let mut c = cl.vms().await;
    let name = vm.name.clone();
    tokio::spawn(async move {
        c.migrate_vm(pb::MigrateVmRequest {
            vm: name,
            target_host: "node-b".into(),
            options: Some(apb::MigrateOptions {
                bandwidth,
                timeout_s: 120,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
    })
}

/// Waits until `agent` reports the VM in `state`.
async fn wait_agent_state(
    cl: &Cluster,
    agent: &str,
    vm_id: &str,
    state: apb::VmState,
) -> apb::VmStatus {
    wait_for(
        &format!("{agent} to report {vm_id} {state:?}"),
        Duration::from_secs(30),
        || async {
            held(cl, agent, vm_id)
                .await
                .filter(|s| s.state == state as i32)
        },
    )
    .await
}

#[test]
fn reply_dropped_after_commit() {
    run(Duration::from_secs(90), async {
        let (cl, vm) = setup("fdrop", "drop-migrate-reply", "workload=ab mib=16").await;
        let r = migrate_bg(&cl, &vm, 0).await.await.expect("task");
        // The destination committed: the controller settles on it from both agents.
        let r = r.expect("a committed migration whose answer was lost is settled as done");
        assert_eq!(r.target_host, "node-b");
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}

#[test]
fn destination_vmm_killed_before_commit() {
    run(Duration::from_secs(90), async {
        let (cl, vm) = setup("fdstkill", "", SLOW_GUEST).await;
        let task = migrate_bg(&cl, &vm, SLOW_BANDWIDTH).await;
        wait_agent_state(&cl, "node-a", &vm.id, apb::VmState::Migrating).await;
        let dst = wait_agent_state(&cl, "node-b", &vm.id, apb::VmState::Incoming).await;
        assert!(dst.pid > 0);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(dst.pid, libc::SIGKILL);
        }
        let r = task.await.expect("task");
        assert!(
            r.is_err(),
            "migration succeeded without its destination: {r:?}"
        );
        exactly_one_copy(&cl, &vm, "node-a").await;
    });
}

#[test]
fn destination_never_gets_a_connection() {
    run(Duration::from_secs(90), async {
        let (cl, vm) = setup("fnoconn", "migrate-unreachable", "workload=ab mib=16").await;
        let r = migrate_bg(&cl, &vm, 0).await.await.expect("task");
        let e = r.expect_err("a migration to nowhere must fail");
        assert!(matches!(e.code(), Code::Aborted | Code::Unavailable), "{e}");
        exactly_one_copy(&cl, &vm, "node-a").await;
    });
}

#[test]
fn stray_stream_before_the_real_one() {
    run(Duration::from_secs(90), async {
        // The source waits 3 s before sending: a stray connection gets there first.
        let (cl, vm) = setup("fstray", "delay-migrate:3000", "workload=ab mib=16").await;
        let task = migrate_bg(&cl, &vm, 0).await;
        let dst = wait_agent_state(&cl, "node-b", &vm.id, apb::VmState::Incoming).await;
        let addr = dst
            .migration
            .as_ref()
            .map(|m| m.peer.clone())
            .unwrap_or_default();
        let addr = addr
            .strip_prefix("tcp:")
            .expect("destination address")
            .to_string();
        {
            use tokio::io::AsyncWriteExt;
            // A port scan: connect and close.
            drop(
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect"),
            );
            // Garbage where a Hello belongs.
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let _ = s.write_all(&[0x5a; 96]).await;
            let _ = s.shutdown().await;
        }
        let r = task.await.expect("task");
        let r = r.expect(
            "the real migration succeeds after stray connections (the destination VMM must keep waiting for its peer)",
        );
        assert_eq!(r.target_host, "node-b");
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}

#[test]
fn source_agent_killed_mid_migration() {
    run(Duration::from_secs(120), async {
        let (mut cl, vm) = setup("fsrckill", "", SLOW_GUEST).await;
        let task = migrate_bg(&cl, &vm, SLOW_BANDWIDTH).await;
        wait_agent_state(&cl, "node-a", &vm.id, apb::VmState::Migrating).await;
        cl.kill("node-a");
        tokio::time::sleep(Duration::from_millis(500)).await;
        cl.start_agent("node-a", "127.0.0.2", &[]);
        // The VMM kept migrating; the controller settles from both agents.
        let _ = task.await.expect("task");
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}

#[test]
fn controller_killed_mid_migration() {
    run(Duration::from_secs(120), async {
        let (mut cl, vm) = setup("fctlkill", "", SLOW_GUEST).await;
        let task = migrate_bg(&cl, &vm, SLOW_BANDWIDTH).await;
        wait_agent_state(&cl, "node-a", &vm.id, apb::VmState::Migrating).await;
        cl.kill("controller");
        let _ = task.await;
        cl.start_controller();
        // The restarted controller finds the VM Migrating and settles it from both agents.
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}
