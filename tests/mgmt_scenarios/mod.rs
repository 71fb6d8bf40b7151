//! The management-plane end-to-end scenarios, run against real processes by
//! `mgmt_e2e.rs` (real VMM and test guest) and `mgmt_fake_vmm.rs` (the contract stand-in).
//! Each scenario starts its own controller and agents and cleans them up on drop.
use std::collections::BTreeMap;
use std::time::Duration;

use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// A client of the controller's VM service.
type VmClient = novacron_proto::controller::vm_service_client::VmServiceClient<Authed>;

/// A client of the controller's host service.
type HostClient = novacron_proto::controller::host_service_client::HostServiceClient<Authed>;

/// The status code of a create request that must fail (with a message).
async fn create_error(c: &mut VmClient, spec: pb::VmSpec) -> Code {
    code(
        c.create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await,
    )
}

/// Every host's name and allocated resources.
async fn host_allocations(
    h: &mut HostClient,
) -> Vec<(String, Option<novacron_proto::agent::Resources>)> {
    h.list_hosts(pb::ListHostsRequest::default())
        .await
        .expect("hosts")
        .into_inner()
        .hosts
        .into_iter()
        .map(|h| (h.name, h.allocated))
        .collect()
}

/// The events the controller replays to a new watcher: those that arrive until the stream
/// has been quiet for `quiet`.
async fn replayed_events(c: &mut VmClient, quiet: Duration) -> Vec<pb::Event> {
    let mut s = c
        .watch_events(pb::WatchEventsRequest {
            replay: true,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(quiet, s.next()).await {
        events.push(ev.expect("event"));
    }
    events
}

/// The sequence numbers of the replayed events (quiet after 300 ms).
async fn replayed_seqs(c: &mut VmClient) -> Vec<u64> {
    let events = replayed_events(c, Duration::from_millis(300)).await;
    events.into_iter().map(|e| e.seq).collect()
}

/// Runs a scenario on a fresh runtime with a deadline, one scenario at a time.
pub fn run<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    run_scenario(limit, f)
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            assert!(
                !s.message().is_empty(),
                "status {:?} without a message",
                s.code()
            );
            s.code()
        }
    }
}

fn snapshot(vms: &[pb::Vm]) -> BTreeMap<String, (String, String, i32, i32)> {
    vms.iter()
        .map(|v| {
            (
                v.name.clone(),
                (v.id.clone(), v.host.clone(), v.phase, v.desired),
            )
        })
        .collect()
}

async fn create(c: &mut VmClient, spec: pb::VmSpec) -> pb::Vm {
    let name = spec.name.clone();
    c.create_vm(pb::CreateVmRequest {
        request_id: String::new(),
        spec: Some(spec),
        stopped: false,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create {name}: {e}"))
    .into_inner()
}

/// Placement by policy, lifecycle verbs, bad requests (right code, nothing changed),
/// idempotent retries, pagination, events, novactl.
pub async fn placement_lifecycle_and_errors(vmm: Vmm) {
    let mut cl = Cluster::new("life", vmm, &["--placement", "spread"]);
    cl.start_controller();
    cl.start_agent(
        "node-a",
        "127.0.0.2",
        &["--capacity-memory", "256M", "--label", "zone=a"],
    );
    cl.start_agent(
        "node-b",
        "127.0.0.3",
        &["--capacity-memory", "256M", "--label", "zone=b"],
    );
    cl.wait_ready_hosts(2).await;
    let mut c = cl.vms().await;
    let mut h = cl.hosts().await;

    // Spread: four 64 MiB VMs, two per host.
    for i in 0..4 {
        let vm = create(&mut c, cl.spec(&format!("web-{i}"), 64)).await;
        assert_eq!(vm.phase, pb::VmPhase::Running as i32, "{vm:?}");
        assert!(pid(&vm) > 0);
    }
    let vms = list(&mut c).await;
    assert_eq!(vms.len(), 4);
    let on_a = vms.iter().filter(|v| v.host == "node-a").count();
    assert_eq!(
        on_a,
        2,
        "spread placement: {:?}",
        vms.iter().map(|v| (&v.name, &v.host)).collect::<Vec<_>>()
    );
    // A label constraint picks the labelled host.
    let mut spec = cl.spec("zoned", 32);
    spec.placement = Some(pb::Placement {
        host_labels: [("zone".to_string(), "b".to_string())].into(),
        ..Default::default()
    });
    let zoned = create(&mut c, spec).await;
    assert_eq!(zoned.host, "node-b");
    for vm in list(&mut c).await {
        wait_console(&console(&vm), "READY", 1, guest_timeout(vmm)).await;
    }

    // Bad requests: right code, a message, nothing changed.
    let before = snapshot(&list(&mut c).await);
    let hosts_before = host_allocations(&mut h).await;
    assert_eq!(
        code(c.get_vm(pb::GetVmRequest { vm: "nope".into() }).await),
        Code::NotFound
    );
    assert_eq!(
        create_error(&mut c, cl.spec("neg", -64)).await,
        Code::InvalidArgument
    );
    assert_eq!(
        create_error(&mut c, cl.spec("web-0", 64)).await,
        Code::AlreadyExists
    );
    let mut pinned = cl.spec("pinned", 64);
    pinned.placement = Some(pb::Placement {
        host: "nohost".into(),
        ..Default::default()
    });
    assert_eq!(create_error(&mut c, pinned).await, Code::NotFound);
    assert_eq!(
        create_error(&mut c, cl.spec("huge", 4096)).await,
        Code::ResourceExhausted
    );
    assert_eq!(
        create_error(&mut c, cl.spec("bad name!", 64)).await,
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.migrate_vm(pb::MigrateVmRequest {
                vm: "web-0".into(),
                target_host: "nohost".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.stop_vm(pb::StopVmRequest {
                vm: "nope".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.delete_vm(pb::VmActionRequest {
                vm: "nope".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            h.cordon_host(pb::HostActionRequest {
                host: "nohost".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            h.drain_host(pb::DrainHostRequest {
                host: "nohost".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        snapshot(&list(&mut c).await),
        before,
        "a bad request changed the VMs"
    );
    let hosts_after = host_allocations(&mut h).await;
    assert_eq!(
        hosts_after, hosts_before,
        "a bad request changed host allocations"
    );

    // Stop, start, reboot, delete.
    let old = get(&mut c, "web-1").await;
    let stopped = c
        .stop_vm(pb::StopVmRequest {
            vm: "web-1".into(),
            ..Default::default()
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.phase, pb::VmPhase::Stopped as i32);
    assert!(!alive(running_pid(&old)), "vmm still alive after stop");
    // Stopping again is fine; a stopped VM migrates cold (its disks copied) and stays
    // stopped on its new host.
    c.stop_vm(pb::StopVmRequest {
        vm: "web-1".into(),
        ..Default::default()
    })
    .await
    .expect("stop again");
    let moved = c
        .migrate_vm(pb::MigrateVmRequest {
            vm: "web-1".into(),
            ..Default::default()
        })
        .await
        .expect("cold migration of a stopped vm")
        .into_inner();
    assert_ne!(moved.source_host, moved.target_host);
    let after = get(&mut c, "web-1").await;
    assert_eq!(after.host, moved.target_host);
    assert_eq!(after.phase, pb::VmPhase::Stopped as i32);
    let started = c
        .start_vm(pb::VmActionRequest {
            vm: "web-1".into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.phase, pb::VmPhase::Running as i32);
    assert!(alive(running_pid(&started)) && running_pid(&started) != running_pid(&old));
    let before_reboot = get(&mut c, "web-2").await;
    let rebooted = c
        .reboot_vm(pb::VmActionRequest {
            vm: "web-2".into(),
            ..Default::default()
        })
        .await
        .expect("reboot")
        .into_inner();
    assert_eq!(rebooted.phase, pb::VmPhase::Running as i32);
    assert_ne!(running_pid(&rebooted), running_pid(&before_reboot));
    let doomed = get(&mut c, "web-3").await;
    c.delete_vm(pb::VmActionRequest {
        vm: "web-3".into(),
        ..Default::default()
    })
    .await
    .expect("delete");
    assert_eq!(
        code(c.get_vm(pb::GetVmRequest { vm: "web-3".into() }).await),
        Code::NotFound
    );
    assert!(!alive(running_pid(&doomed)));
    assert!(!console(&doomed).exists(), "vm directory left behind");

    // Idempotent retries: the same request id returns the first answer.
    let req = pb::CreateVmRequest {
        request_id: "req-1".into(),
        spec: Some(cl.spec("retry", 32)),
        stopped: false,
        ..Default::default()
    };
    let first = c.create_vm(req.clone()).await.expect("create").into_inner();
    let again = c.create_vm(req).await.expect("retried create").into_inner();
    assert_eq!(first.id, again.id);
    let del = pb::VmActionRequest {
        request_id: "req-2".into(),
        vm: "retry".into(),
    };
    c.delete_vm(del.clone()).await.expect("delete");
    c.delete_vm(del).await.expect("retried delete");

    // Pagination.
    let page = c
        .list_vms(pb::ListVmsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.vms.len(), 2);
    assert!(!page.next_page_token.is_empty());
    assert_eq!(page.total as usize, list(&mut c).await.len());

    // Events.
    let kinds: Vec<String> = replayed_events(&mut c, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        "HostRegistered",
        "VmCreated",
        "VmStopped",
        "VmStarted",
        "VmRebooted",
        "VmDeleted",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }

    // novactl: table and JSON output, error exit status.
    let (ok, out, _) = cl.novactl(&["vm", "list"]);
    assert!(ok && out.contains("web-0") && out.contains("NAME"), "{out}");
    let (ok, out, _) = cl.novactl(&["-o", "json", "host", "list"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["hosts"].as_array().map(|a| a.len()), Some(2));
    let (ok, _, err) = cl.novactl(&["vm", "get", "nope"]);
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");
    let (ok, _, err) = cl.novactl(&["vm", "create", "neg", "--memory", "-64M", "--kernel", "/x"]);
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
}

/// Live migration keeps the workload's self-check passing; a drain moves every VM.
pub async fn migrate_and_drain(vmm: Vmm) {
    let mut cl = Cluster::new("mig", vmm, &["--placement", "spread"]);
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "512M"]);
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(2).await;
    let mut c = cl.vms().await;
    let mut h = cl.hosts().await;
    let mut events = c
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    for i in 0..3 {
        create(&mut c, cl.spec(&format!("m-{i}"), 64)).await;
    }
    for vm in list(&mut c).await {
        wait_console(&console(&vm), "CHECK PASS", 1, guest_timeout(vmm)).await;
    }

    // Migrate m-0 wherever the scheduler says.
    let before = get(&mut c, "m-0").await;
    let r = c
        .migrate_vm(pb::MigrateVmRequest {
            request_id: "mig-1".into(),
            vm: "m-0".into(),
            ..Default::default()
        })
        .await
        .expect("migrate")
        .into_inner();
    assert_eq!(r.source_host, before.host);
    assert_ne!(r.target_host, before.host);
    let after = get(&mut c, "m-0").await;
    assert_eq!(after.host, r.target_host);
    assert_eq!(after.phase, pb::VmPhase::Running as i32);
    assert_eq!(after.id, before.id);
    assert!(!alive(running_pid(&before)), "source vmm still alive");
    let dst_console = console(&after);
    assert_ne!(dst_console, console(&before));
    wait_console(&dst_console, "CHECK PASS", 2, guest_timeout(vmm)).await;
    assert_eq!(
        count_lines(&dst_console, "CHECK FAIL"),
        0,
        "self-check failed after migration"
    );

    // Migrate back by name with novactl.
    let (ok, out, err) = cl.novactl(&["vm", "migrate", "m-0", "--to", &before.host]);
    assert!(ok, "novactl migrate: {out} {err}");
    assert_eq!(get(&mut c, "m-0").await.host, before.host);

    // Drain node-a: everything ends on node-b with its workload intact.
    let on_a: Vec<String> = list(&mut c)
        .await
        .into_iter()
        .filter(|v| v.host == "node-a")
        .map(|v| v.name)
        .collect();
    assert!(!on_a.is_empty());
    let d = h
        .drain_host(pb::DrainHostRequest {
            host: "node-a".into(),
            parallel: 2,
            ..Default::default()
        })
        .await
        .expect("drain")
        .into_inner();
    assert!(d.failed.is_empty(), "drain failures: {:?}", d.failed);
    assert_eq!(d.moved.len(), on_a.len());
    assert!(d.host.as_ref().is_some_and(|h| h.cordoned));
    for vm in list(&mut c).await {
        assert_eq!(vm.host, "node-b", "{} not moved", vm.name);
        assert_eq!(vm.phase, pb::VmPhase::Running as i32);
        let log = console(&vm);
        wait_console(&log, "CHECK PASS", 1, guest_timeout(vmm)).await;
        assert_eq!(count_lines(&log, "CHECK FAIL"), 0);
    }
    // Cordoned: new VMs avoid node-a.
    let extra = create(&mut c, cl.spec("after-drain", 32)).await;
    assert_eq!(extra.host, "node-b");
    h.uncordon_host(pb::HostActionRequest {
        host: "node-a".into(),
        ..Default::default()
    })
    .await
    .expect("uncordon");

    let mut kinds = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        kinds.push(ev.expect("event").kind);
    }
    for k in [
        "MigrationStarted",
        "MigrationCompleted",
        "DrainStarted",
        "DrainCompleted",
        "HostUncordoned",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
}

/// A killed agent's host goes NotReady; the restarted agent re-adopts the running VMs.
pub async fn agent_restart_readopts(vmm: Vmm) {
    let mut cl = Cluster::new(
        "adopt",
        vmm,
        &[
            "--heartbeat-timeout-ms",
            "2000",
            "--eviction-timeout-ms",
            "600000",
        ],
    );
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "512M"]);
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(2).await;
    let mut c = cl.vms().await;
    let h = cl.hosts().await;
    let mut before = Vec::new();
    for i in 0..2 {
        let mut spec = cl.spec(&format!("a-{i}"), 64);
        spec.placement = Some(pb::Placement {
            host: "node-a".into(),
            ..Default::default()
        });
        before.push(create(&mut c, spec).await);
    }
    for vm in &before {
        wait_console(&console(vm), "CHECK PASS", 1, guest_timeout(vmm)).await;
    }

    cl.kill("node-a");
    wait_for("node-a NotReady", Duration::from_secs(15), || {
        let mut h = h.clone();
        async move {
            let host = h
                .get_host(pb::HostActionRequest {
                    host: "node-a".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (host.state == pb::HostState::NotReady as i32).then_some(())
        }
    })
    .await;
    for vm in &before {
        let now = get(&mut c, &vm.name).await;
        assert_eq!(now.phase, pb::VmPhase::Unknown as i32);
        assert!(alive(pid(vm)), "vm {} died with its agent", vm.name);
    }
    // Operations on a NotReady host are refused, and change nothing.
    assert_eq!(
        code(
            c.stop_vm(pb::StopVmRequest {
                vm: "a-0".into(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );

    cl.start_agent("node-a", "127.0.0.2", &[]);
    cl.wait_ready_hosts(2).await;
    for vm in &before {
        let now = wait_phase(&c, &vm.name, pb::VmPhase::Running, Duration::from_secs(15)).await;
        assert_eq!(
            pid(&now),
            pid(vm),
            "vm {} was restarted, not re-adopted",
            vm.name
        );
        assert!(
            now.status.as_ref().is_some_and(|s| s.adopted),
            "not marked adopted"
        );
        assert_eq!(now.restart_count, 0);
        let n = count_lines(&console(vm), "CHECK PASS");
        wait_console(&console(vm), "CHECK PASS", n + 1, guest_timeout(vmm)).await;
    }
    // The re-adopted VMs are under control again.
    let s = c
        .stop_vm(pb::StopVmRequest {
            vm: "a-1".into(),
            ..Default::default()
        })
        .await
        .expect("stop adopted")
        .into_inner();
    assert_eq!(s.phase, pb::VmPhase::Stopped as i32);
    assert!(!alive(running_pid(&before[1])));
}

/// A controller killed with SIGKILL restarts with every VM, host setting and event.
pub async fn controller_restart(vmm: Vmm) {
    let mut cl = Cluster::new("ctlrs", vmm, &[]);
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "512M"]);
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(2).await;
    let mut c = cl.vms().await;
    let mut h = cl.hosts().await;
    for i in 0..3 {
        create(&mut c, cl.spec(&format!("p-{i}"), 64)).await;
    }
    c.stop_vm(pb::StopVmRequest {
        vm: "p-2".into(),
        ..Default::default()
    })
    .await
    .expect("stop");
    h.cordon_host(pb::HostActionRequest {
        host: "node-b".into(),
        ..Default::default()
    })
    .await
    .expect("cordon");
    let vms = list(&mut c).await;
    let before = snapshot(&vms);
    let pids: Vec<i32> = vms.iter().map(pid).collect();
    let events_before = replayed_seqs(&mut c).await;
    assert!(
        !events_before.is_empty(),
        "the controller replayed no events before its restart"
    );

    cl.kill("controller");
    cl.start_controller();
    let mut c = cl.vms().await;
    let mut h = cl.hosts().await;
    cl.wait_ready_hosts(2).await;
    let vms = list(&mut c).await;
    assert_eq!(
        snapshot(&vms),
        before,
        "vms changed across a controller restart"
    );
    assert_eq!(
        vms.iter().map(pid).collect::<Vec<_>>(),
        pids,
        "vm processes changed"
    );
    let b = h
        .get_host(pb::HostActionRequest {
            host: "node-b".into(),
            ..Default::default()
        })
        .await
        .expect("host")
        .into_inner();
    assert!(b.cordoned, "cordon lost");
    let after = replayed_seqs(&mut c).await;
    assert!(
        events_before.iter().all(|e| after.contains(e)),
        "events lost"
    );
    // Still fully operational; the cordon is honoured.
    let vm = create(&mut c, cl.spec("p-new", 32)).await;
    assert_eq!(vm.host, "node-a");
    let started = c
        .start_vm(pb::VmActionRequest {
            vm: "p-2".into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.phase, pb::VmPhase::Running as i32);
    // A retried request id from before the restart still answers the same.
    let req = pb::CreateVmRequest {
        request_id: "dup".into(),
        spec: Some(cl.spec("p-dup", 32)),
        stopped: true,
        ..Default::default()
    };
    let first = c.create_vm(req.clone()).await.expect("create").into_inner();
    cl.kill("controller");
    cl.start_controller();
    let mut c = cl.vms().await;
    let again = c
        .create_vm(req)
        .await
        .expect("retry after restart")
        .into_inner();
    assert_eq!(first.id, again.id);
}

/// Concurrent creates never overbook a host.
pub async fn concurrent_creates(vmm: Vmm, rounds: usize) {
    let mut cl = Cluster::new("conc", vmm, &[]);
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "100M"]);
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "100M"]);
    cl.wait_ready_hosts(2).await;
    let c = cl.vms().await;
    for round in 0..rounds {
        // Two creates pinned to node-a that together exceed it: exactly one lands.
        let mut tasks = Vec::new();
        for i in 0..2 {
            let mut c = c.clone();
            let mut spec = cl.spec(&format!("r{round}-pin-{i}"), 64);
            spec.placement = Some(pb::Placement {
                host: "node-a".into(),
                ..Default::default()
            });
            tasks.push(tokio::spawn(async move {
                c.create_vm(pb::CreateVmRequest {
                    spec: Some(spec),
                    ..Default::default()
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => ok += 1,
                Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: both pinned creates landed on node-a");
        // Four unpinned creates: one per host, never two on one.
        let mut tasks = Vec::new();
        for i in 0..4 {
            let mut c = c.clone();
            let spec = cl.spec(&format!("r{round}-free-{i}"), 64);
            tasks.push(tokio::spawn(async move {
                c.create_vm(pb::CreateVmRequest {
                    spec: Some(spec),
                    ..Default::default()
                })
                .await
            }));
        }
        let mut landed = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok(v) => landed.push(v.into_inner().host),
                Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s}"),
            }
        }
        assert_eq!(
            landed,
            vec!["node-b".to_string()],
            "round {round}: node-a is full, node-b takes one"
        );
        let mut c2 = c.clone();
        for vm in list(&mut c2).await {
            c2.delete_vm(pb::VmActionRequest {
                vm: vm.name,
                ..Default::default()
            })
            .await
            .expect("delete");
        }
    }
}

/// After a host stays NotReady past the eviction timeout, its VMs restart elsewhere per their
/// restart policy; when it comes back its stale copies are removed.
pub async fn eviction(vmm: Vmm) {
    let mut cl = Cluster::new(
        "evict",
        vmm,
        &[
            "--heartbeat-timeout-ms",
            "1500",
            "--eviction-timeout-ms",
            "1500",
        ],
    );
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "512M"]);
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(2).await;
    let mut c = cl.vms().await;
    let mut h = cl.hosts().await;
    h.cordon_host(pb::HostActionRequest {
        host: "node-b".into(),
        ..Default::default()
    })
    .await
    .expect("cordon");
    let mut always = cl.spec("e-always", 64);
    always.restart_policy = pb::RestartPolicy::Always as i32;
    let mut never = cl.spec("e-never", 64);
    never.restart_policy = pb::RestartPolicy::Never as i32;
    let always = create(&mut c, always).await;
    let never = create(&mut c, never).await;
    assert_eq!(
        (always.host.as_str(), never.host.as_str()),
        ("node-a", "node-a")
    );
    h.uncordon_host(pb::HostActionRequest {
        host: "node-b".into(),
        ..Default::default()
    })
    .await
    .expect("uncordon");

    cl.kill("node-a");
    let moved = wait_for(
        "e-always restarted on node-b",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let v = c
                    .get_vm(pb::GetVmRequest {
                        vm: "e-always".into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                (v.host == "node-b" && v.phase == pb::VmPhase::Running as i32).then_some(v)
            }
        },
    )
    .await;
    assert!(moved.restart_count >= 1);
    wait_console(&console(&moved), "READY", 1, guest_timeout(vmm)).await;
    let n = get(&mut c, "e-never").await;
    assert_eq!(
        (n.host.as_str(), n.phase),
        ("node-a", pb::VmPhase::Unknown as i32)
    );

    // node-a returns: its copy of e-always is fenced off, e-never is re-adopted.
    cl.start_agent("node-a", "127.0.0.2", &[]);
    cl.wait_ready_hosts(2).await;
    let back = wait_phase(&c, "e-never", pb::VmPhase::Running, Duration::from_secs(15)).await;
    assert_eq!(running_pid(&back), running_pid(&never));
    wait_for("stale copy removed", Duration::from_secs(15), || async {
        (!alive(running_pid(&always))).then_some(())
    })
    .await;
    assert_eq!(get(&mut c, "e-always").await.host, "node-b");
}
