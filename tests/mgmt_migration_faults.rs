//! Migration fault tests through the real controller, agents and `novacron-vmm` processes
//! booting the in-repo test guest: whatever fails, exactly one copy of the guest runs
//! afterwards (both agents are asked, and the VMM processes counted) and its self-check keeps
//! passing.
//!
//! Faults: the source agent's answer dropped after the destination committed; the source
//! agent killed mid-migration (and restarted: it re-adopts the VMM); the controller killed
//! mid-migration and restarted; the destination VMM killed before commit; stray connections
//! (a port scan, junk, a Hello with another migration id) reaching the destination before the
//! real stream; a destination that never gets a connection (its accept deadline ends it); a
//! migration cancelled through `novactl vm migrate --cancel`; and the source in doubt (final
//! frame sent, no confirmation): the destination's Confirm eaten by a relay (real VMMs), and
//! with the fake VMM both ways (the destination runs / died before confirming).
//! The agent's test-only switch `NOVACRON_AGENT_TEST_FAULT` places the management faults.
//!
//! What the cases need from the VMM: strays need the destination's accept loop
//! (`--migration-id`), the no-connection case `run --incoming-timeout`, the cancel case the
//! `cancel` command, the Confirm-lost case the sender's in-doubt state; the agent and
//! controller kills rely on a source VMM that exits after the confirmation even though
//! nobody reads its `migrate` reply.

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

use novacron_testsupport::mgmt::run_scenario as run;

/// The environment that sets the agent's test faults (none when `fault` is empty).
fn fault_env(fault: &str) -> Vec<(&str, &str)> {
    if fault.is_empty() {
        Vec::new()
    } else {
        vec![(FAULT, fault)]
    }
}

/// A cluster with node-a (the source, agent faults `src_fault`) and node-b (the destination,
/// `dst_fault`), and one VM on node-a whose guest passed its first self-check.
async fn setup(tag: &str, src_fault: &str, dst_fault: &str, cmdline: &str) -> (Cluster, pb::Vm) {
    setup_with(tag, Vmm::Real, src_fault, dst_fault, cmdline).await
}

/// [`setup`] with either VMM.
async fn setup_with(
    tag: &str,
    vmm: Vmm,
    src_fault: &str,
    dst_fault: &str,
    cmdline: &str,
) -> (Cluster, pb::Vm) {
    let mut cl = Cluster::new(tag, vmm, &["--placement", "spread"]);
    cl.cmdline = cmdline.to_string();
    cl.start_controller();
    let mem = ["--capacity-memory", "512M"];
    cl.start_agent_env("node-a", "127.0.0.2", &mem, &fault_env(src_fault));
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
    cl.start_agent_env("node-b", "127.0.0.3", &mem, &fault_env(dst_fault));
    cl.wait_ready_hosts(2).await;
    wait_console(&console(&vm), "CHECK PASS", 1, guest_timeout(vmm)).await;
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
        (s.state, s.vmm_state.as_str()),
        (apb::VmState::Running as i32, "running"),
        "{host} reports {s:?}"
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
        let (cl, vm) = setup("fdrop", "drop-migrate-reply", "", "workload=ab mib=16").await;
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
        let (cl, vm) = setup("fdstkill", "", "", SLOW_GUEST).await;
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
    run(Duration::from_secs(120), async {
        // The source sends nowhere, and only after the destination's 3 s accept deadline.
        let (cl, vm) = setup(
            "fnoconn",
            "migrate-unreachable,delay-migrate:8000",
            "incoming-timeout:3",
            "workload=ab mib=16",
        )
        .await;
        let task = migrate_bg(&cl, &vm, 0).await;
        wait_agent_state(&cl, "node-b", &vm.id, apb::VmState::Incoming).await;
        // The destination VMM gives up by itself, before anyone aborts it.
        let gone = wait_for(
            "the destination VMM to end at its accept deadline",
            Duration::from_secs(20),
            || async { held(&cl, "node-b", &vm.id).await.filter(|s| s.pid == 0) },
        )
        .await;
        assert!(
            !task.is_finished(),
            "the migration ended before the deadline"
        );
        eprintln!("destination after its deadline: {gone:?}");
        let e = task
            .await
            .expect("task")
            .expect_err("a migration whose destination never got a connection must fail");
        assert!(matches!(e.code(), Code::Aborted | Code::Unavailable), "{e}");
        exactly_one_copy(&cl, &vm, "node-a").await;
    });
}

#[test]
fn cancel_through_novactl() {
    run(Duration::from_secs(120), async {
        let (cl, vm) = setup("fcancel", "", "", SLOW_GUEST).await;
        let task = migrate_bg(&cl, &vm, SLOW_BANDWIDTH).await;
        wait_agent_state(&cl, "node-a", &vm.id, apb::VmState::Migrating).await;
        let (ok, out, err) = cl.novactl(&["vm", "migrate", &vm.name, "--cancel"]);
        assert!(ok, "novactl vm migrate --cancel failed: {out} {err}");
        let e = task
            .await
            .expect("task")
            .expect_err("a cancelled migration must fail");
        assert_eq!(e.code(), Code::Aborted, "{e}");
        exactly_one_copy(&cl, &vm, "node-a").await;
        // Nothing left to cancel.
        let (ok, _, err) = cl.novactl(&["vm", "migrate", &vm.name, "--cancel"]);
        assert!(!ok && err.contains("not migrating"), "{err}");
    });
}

/// Connects to the destination's migration address like a stray source would: a port scan
/// (connect, close), junk where a Hello belongs, and a well-formed Hello of another
/// migration id.
async fn stray_connections(addr: &str) {
    use novacron_migration::protocol::{FrameType, FrameWriter, Hello, PROTOCOL_VERSION};
    use std::io::Write;
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let connect = || std::net::TcpStream::connect(&addr).expect("connect to the destination");
        drop(connect());
        let mut junk = connect();
        let _ = junk.write_all(&[0x5a; 96]);
        drop(junk);
        let mut w = FrameWriter::new(connect());
        let hello = Hello {
            version: PROTOCOL_VERSION,
            memory: 64 << 20,
            vcpus: 1,
            cpuid: Vec::new(),
            disks: 0,
            nets: 0,
            encodings: vec!["raw".into()],
            migration_id: "not-the-awaited-migration".into(),
            verify: Default::default(),
            copied_disks: Vec::new(),
        };
        let _ = w.json(FrameType::Hello, &hello).and_then(|_| w.flush());
        // Give the destination a moment to read it and refuse it before closing.
        std::thread::sleep(Duration::from_millis(300));
    })
    .await
    .expect("stray connections");
}

#[test]
fn stray_connections_before_the_real_stream() {
    run(Duration::from_secs(90), async {
        // The source waits 3 s before sending: the strays get there first.
        let (cl, vm) = setup("fstray", "delay-migrate:3000", "", "workload=ab mib=16").await;
        let task = migrate_bg(&cl, &vm, 0).await;
        let dst = wait_agent_state(&cl, "node-b", &vm.id, apb::VmState::Incoming).await;
        let peer = dst.migration.map(|m| m.peer).unwrap_or_default();
        let addr = peer
            .strip_prefix("tls:")
            .unwrap_or_else(|| panic!("destination address {peer:?}"));
        stray_connections(addr).await;
        // The destination is still waiting for its real peer.
        let dst = held(&cl, "node-b", &vm.id)
            .await
            .expect("node-b dropped the incoming VM after stray connections");
        assert!(
            dst.state == apb::VmState::Incoming as i32 && dst.pid > 0,
            "destination after stray connections: {dst:?}"
        );
        let r = task.await.expect("task").expect(
            "the real migration succeeds after stray connections (the destination VMM keeps waiting for its migration id)",
        );
        assert_eq!(r.target_host, "node-b");
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}

#[test]
fn source_agent_killed_mid_migration() {
    run(Duration::from_secs(120), async {
        let (mut cl, vm) = setup("fsrckill", "", "", SLOW_GUEST).await;
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
        let (mut cl, vm) = setup("fctlkill", "", "", SLOW_GUEST).await;
        let task = migrate_bg(&cl, &vm, SLOW_BANDWIDTH).await;
        wait_agent_state(&cl, "node-a", &vm.id, apb::VmState::Migrating).await;
        cl.kill("controller");
        let _ = task.await;
        cl.start_controller();
        // The restarted controller finds the VM Migrating and settles it from both agents.
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}

// The in-doubt source (final state sent, no confirmation) through the real controller and
// agents, with the fake VMM: the engine that produces it for the real VMM is another branch's.

#[test]
fn in_doubt_source_whose_destination_runs_is_dropped() {
    run(Duration::from_secs(60), async {
        // The destination runs the guest; the source never sees its answer.
        let (cl, vm) = setup_with("findoubt-run", Vmm::Fake, "", "", "lose_confirm=1").await;
        let r = migrate_bg(&cl, &vm, 0).await.await.expect("task");
        let r = r.expect("an in-doubt migration whose destination runs is settled as done");
        assert_eq!(r.target_host, "node-b");
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}

#[test]
fn in_doubt_source_whose_destination_died_resumes() {
    run(Duration::from_secs(60), async {
        // The destination dies after the state arrived, before it confirms.
        let (cl, vm) = setup_with("findoubt-die", Vmm::Fake, "", "", "die_before_confirm=1").await;
        let e = migrate_bg(&cl, &vm, 0)
            .await
            .await
            .expect("task")
            .expect_err("a migration whose destination died before confirming fails");
        assert_eq!(e.code(), Code::Aborted, "{e}");
        exactly_one_copy(&cl, &vm, "node-a").await;
    });
}

/// A relay between the source VMM and the destination that forwards every TLS record except
/// the destination's Confirm: the stream is encrypted, so the Confirm is recognised as the
/// destination's last record, the one its end of the connection closes right after (the
/// destination drops the stream once it has confirmed; after any other reply it waits for
/// the source). It then closes the source's side, so the destination has committed and the
/// source never learns it (the source is then in doubt).
struct ConfirmEater {
    port: u16,
    target: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl ConfirmEater {
    fn start() -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").expect("relay listen");
        let port = l.local_addr().expect("relay addr").port();
        let target = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let t = std::sync::Arc::clone(&target);
        std::thread::spawn(move || {
            let Ok((src, _)) = l.accept() else { return };
            let addr = loop {
                if let Some(a) = t.lock().expect("relay target").clone() {
                    break a;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let Ok(dst) = TcpStream::connect(&addr) else {
                return;
            };
            let (mut s_in, mut d_out) = (
                src.try_clone().expect("clone"),
                dst.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut d_out);
                let _ = d_out.shutdown(Shutdown::Write);
            });
            let (mut d_in, mut s_out) = (dst, src);
            // TLS records: type (1), version (2), length (2), then the record.
            let mut head = [0u8; 5];
            let mut app_records = 0u32;
            while d_in.read_exact(&mut head).is_ok() {
                let len = u16::from_be_bytes([head[3], head[4]]) as usize;
                let mut record = vec![0u8; len];
                if d_in.read_exact(&mut record).is_err() {
                    break;
                }
                // Application data (23) after the handshake: is it the last record?
                if head[0] == 23 {
                    app_records += 1;
                    let _ = d_in.set_read_timeout(Some(Duration::from_millis(50)));
                    let closed = matches!(d_in.peek(&mut [0u8; 1]), Ok(0));
                    let _ = d_in.set_read_timeout(None);
                    if closed && app_records > 1 {
                        eprintln!("relay: Confirm eaten");
                        let _ = s_out.shutdown(Shutdown::Both);
                        return;
                    }
                }
                if s_out
                    .write_all(&head)
                    .and_then(|_| s_out.write_all(&record))
                    .is_err()
                {
                    break;
                }
            }
            let _ = s_out.shutdown(Shutdown::Both);
        });
        ConfirmEater { port, target }
    }
}

#[test]
fn confirm_lost_source_in_doubt_destination_runs() {
    run(Duration::from_secs(90), async {
        let relay = ConfirmEater::start();
        let fault = format!("migrate-via:{}", relay.port);
        let (cl, vm) = setup("fconfirm", &fault, "", "workload=ab mib=16").await;
        let task = migrate_bg(&cl, &vm, 0).await;
        let dst = wait_agent_state(&cl, "node-b", &vm.id, apb::VmState::Incoming).await;
        let peer = dst.migration.map(|m| m.peer).unwrap_or_default();
        let addr = peer
            .strip_prefix("tls:")
            .unwrap_or_else(|| panic!("destination address {peer:?}"));
        *relay.target.lock().expect("relay target") = Some(addr.to_string());
        let r = task
            .await
            .expect("task")
            .expect("a migration whose Confirm was lost is settled from both agents as committed");
        assert_eq!(r.target_host, "node-b");
        exactly_one_copy(&cl, &vm, "node-b").await;
    });
}
