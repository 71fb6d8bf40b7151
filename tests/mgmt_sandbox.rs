//! The VMM's sandbox through the whole stack, with real parts: a `novacron-controller`, a
//! `novacron-agent` making real cgroups, and the test build's VMM (`novacron-vmm-testhooks`,
//! which obeys `test-hook` requests on its API socket) booting the test guest. Every thread of
//! an agent-started VMM is filtered; a VMM that makes a forbidden system call dies by
//! `SIGSYS` and the agent reports why; a VMM that grows past its memory limit is killed by
//! its cgroup and reported so. In both cases a second VM on the same host keeps running.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use novacron_proto::controller::vm_service_client::VmServiceClient;
use novacron_testsupport::mgmt::run_scenario as run;
use novacron_testsupport::mgmt::*;
use novacron_testsupport::process::thread_sandboxes;

/// Sends one `test-hook` request to the VM's VMM; returns the answer ("" if it died).
fn hook(vm: &pb::Vm, body: &str) -> String {
    let sock = vm_dir(vm).join("api.sock");
    let mut s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    writeln!(s, r#"{{"cmd":"test-hook",{body}}}"#).unwrap();
    let mut out = String::new();
    let _ = BufReader::new(s).read_line(&mut out);
    out
}

async fn create(c: &mut VmServiceClient<Authed>, mut spec: pb::VmSpec) -> pb::Vm {
    let name = spec.name.clone();
    spec.restart_policy = pb::RestartPolicy::Never as i32;
    let vm = create_running(c, spec).await;
    wait_console(&console(&vm), "CHECK PASS", 1, guest_timeout(Vmm::Real)).await;
    get(c, &name).await
}

/// Waits until `name` is reported crashed; returns the message.
async fn crashed(c: &VmServiceClient<Authed>, name: &str) -> String {
    wait_for(
        &format!("{name} reported crashed"),
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            let name = name.to_string();
            async move {
                let vm = get(&mut c, &name).await;
                (agent_state(&vm) == apb::VmState::Crashed)
                    .then(|| vm.status.map(|s| s.message).unwrap_or_default())
            }
        },
    )
    .await
}

/// The bystander still runs the same VMM and its guest still passes its self-check.
async fn still_running(vm: &pb::Vm, pid: i32) {
    assert!(alive(pid), "the other VM's VMM {pid} died");
    let log = console(vm);
    let n = count_lines(&log, "CHECK PASS");
    wait_console(&log, "CHECK PASS", n + 1, Duration::from_secs(60)).await;
}

const GUEST: &str = "workload=rand mib=8 rate=2000 bytes=64";

/// A controller and one agent running the test-hooks VMM.
async fn cluster(tag: &str) -> Cluster {
    let mut cl = Cluster::new(tag, Vmm::Real, &[]);
    cl.cmdline = GUEST.into();
    cl.use_testhooks_vmm();
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "1G"]);
    cl.wait_ready_hosts(1).await;
    cl
}

#[test]
fn agent_started_vmms_are_filtered_and_a_seccomp_kill_is_reported() {
    run(Duration::from_secs(180), async {
        let cl = cluster("sandbox-seccomp").await;
        let mut c = cl.vms().await;
        let victim = create(&mut c, cl.spec("victim", 64)).await;
        let other = create(&mut c, cl.spec("other", 64)).await;
        let (vpid, opid) = (running_pid(&victim), running_pid(&other));

        for pid in [vpid, opid] {
            let ts = thread_sandboxes(pid as u32);
            assert!(ts.len() >= 3, "{ts:?}");
            for t in &ts {
                assert_eq!(
                    t.seccomp, "2",
                    "vmm {pid} thread {} unfiltered: {ts:?}",
                    t.name
                );
                assert_eq!(t.no_new_privs, "1", "vmm {pid} thread {}: {ts:?}", t.name);
            }
        }

        let r = hook(&victim, r#""hook":"forbidden-syscall""#);
        assert!(r.is_empty(), "the VMM answered instead of dying: {r}");
        let msg = crashed(&c, "victim").await;
        assert!(msg.contains("seccomp filter"), "crash reason: {msg}");
        let vm = get(&mut c, "victim").await;
        assert_eq!(
            vm.status.as_ref().map(|s| s.exit_signal),
            Some(libc::SIGSYS),
            "{vm:?}"
        );
        still_running(&other, opid).await;
    });
}

#[test]
fn a_vmm_that_outgrows_its_memory_limit_is_stopped_by_its_cgroup_alone() {
    run(Duration::from_secs(180), async {
        let cl = cluster("sandbox-oom").await;
        let mut c = cl.vms().await;
        let hog = create(&mut c, cl.spec("hog", 64)).await;
        let other = create(&mut c, cl.spec("other", 64)).await;
        let opid = running_pid(&other);
        let limit = hog
            .status
            .as_ref()
            .and_then(|s| s.metrics)
            .map(|m| m.cgroup_memory_limit_bytes)
            .unwrap_or(0);

        // 64 MiB of guest RAM: the limit is ~120 MiB. The VMM now takes 512 MiB more.
        let r = hook(&hog, r#""hook":"grow-memory","mib":512"#);
        assert!(
            r.is_empty(),
            "the VMM answered instead of being killed: {r}"
        );
        let msg = crashed(&c, "hog").await;
        assert!(
            msg.contains("OOM killer") && msg.contains("memory limit"),
            "crash reason: {msg} (limit {limit})"
        );
        still_running(&other, opid).await;
    });
}
