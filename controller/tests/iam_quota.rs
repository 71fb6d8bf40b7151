//! Project quotas under concurrency: creates racing for the last slots of a quota (VMs,
//! vCPUs, memory) through the real API never exceed it; exactly the slots left succeed, the
//! rest answer RESOURCE_EXHAUSTED naming the quota. The agent (a stub) answers each create
//! after a delay, so every create of a round is in flight at once.

// Test code: a failed step panics with its error.
#![allow(clippy::unwrap_used)]

mod iam_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iam_support::{fixture, session, set_host_address, start, stub_agent, StubAgent};
use novacron_controller::iam::authn::IamMode;
use novacron_proto::controller as pb;
use tonic::Code;

const MIB: u64 = 1 << 20;

/// Runs `n` concurrent creates of `vcpus`/`mib` VMs in alpha as the operator; returns how
/// many succeeded and the messages of the refused ones.
async fn race(
    srv: &iam_support::Running,
    token: &str,
    tag: &str,
    n: usize,
    vcpus: i32,
    mib: i64,
) -> (usize, Vec<String>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut c = srv.clients(Some(token));
            let barrier = Arc::clone(&barrier);
            let name = format!("{tag}-{i}");
            tokio::spawn(async move {
                barrier.wait().await;
                c.vm.create_vm(pb::CreateVmRequest {
                    project: "alpha".into(),
                    stopped: true,
                    spec: Some(pb::VmSpec {
                        name,
                        vcpus,
                        memory_mib: mib,
                        kernel: "/k".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                refused.push(s.message().to_string());
            }
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_exceed_a_quota() {
    let fx = fixture("quota");
    let created = Arc::new(AtomicUsize::new(0));
    let agent = stub_agent(StubAgent {
        delay: Duration::from_millis(150),
        created: Arc::clone(&created),
    })
    .await;
    set_host_address(&fx.dir, &agent.to_string());
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let admin = session(&fx.dir, "root", 0, 600);
    let oscar = session(&fx.dir, "oscar", 0, 600);
    let mut a = srv.clients(Some(&admin));
    let set = |q: pb::Quota| pb::SetQuotaRequest {
        project: "alpha".into(),
        quota: Some(q),
        ..Default::default()
    };

    // alpha holds 2 VMs (1 vCPU, 64 MiB each): 3 VM slots left, 12 creates race for them.
    a.iam
        .set_quota(set(pb::Quota {
            max_vms: 5,
            ..Default::default()
        }))
        .await
        .unwrap();
    let (ok, refused) = race(&srv, &oscar, "vms", 12, 1, 64).await;
    assert_eq!(ok, 3);
    assert_eq!(refused.len(), 9);
    assert!(
        refused
            .iter()
            .all(|m| m.contains("max_vms") && m.contains("alpha")),
        "{refused:?}"
    );
    assert_eq!(created.load(Ordering::SeqCst), 3);
    let q = a
        .iam
        .get_quota(pb::GetQuotaRequest {
            project: "alpha".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let u = q.usage.unwrap();
    assert_eq!((u.vms, u.vcpus, u.memory_bytes), (5, 5, 5 * 64 * MIB));

    // A clone counts against its source's project too.
    let s = srv
        .clients(Some(&oscar))
        .storage
        .clone_vm(pb::CloneVmRequest {
            source: "a-vm".into(),
            name: "a-clone".into(),
            stopped: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("max_vms"), "{s:?}");

    // vCPUs: 5 in use, 3 more allowed; 2-vCPU creates: exactly one fits.
    a.iam
        .set_quota(set(pb::Quota {
            max_vcpus: 8,
            ..Default::default()
        }))
        .await
        .unwrap();
    let (ok, refused) = race(&srv, &oscar, "cpus", 8, 2, 64).await;
    assert_eq!((ok, refused.len()), (1, 7));
    assert!(
        refused.iter().all(|m| m.contains("max_vcpus")),
        "{refused:?}"
    );

    // Memory: 6 VMs x 64 MiB in use, room for two 128 MiB VMs.
    a.iam
        .set_quota(set(pb::Quota {
            max_memory_bytes: (6 * 64 + 256) * MIB,
            ..Default::default()
        }))
        .await
        .unwrap();
    let (ok, refused) = race(&srv, &oscar, "mem", 8, 1, 128).await;
    assert_eq!((ok, refused.len()), (2, 6));
    assert!(
        refused.iter().all(|m| m.contains("max_memory_bytes")),
        "{refused:?}"
    );

    // Another project is not limited by alpha's quota.
    let bob = session(&fx.dir, "bob", 0, 600);
    let mut b = srv.clients(Some(&bob));
    b.vm.create_vm(pb::CreateVmRequest {
        project: "beta".into(),
        stopped: true,
        spec: Some(pb::VmSpec {
            name: "b-more".into(),
            vcpus: 16,
            memory_mib: 1024,
            kernel: "/k".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    // The operator deletes a VM it created: the slot is free again.
    let mut o = srv.clients(Some(&oscar));
    a.iam
        .set_quota(set(pb::Quota {
            max_vms: 8,
            ..Default::default()
        }))
        .await
        .unwrap();
    let vms =
        o.vm.list_vms(pb::ListVmsRequest {
            project: "alpha".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vms.total, 8);
    let mine = vms
        .vms
        .iter()
        .find(|v| v.created_by == "oscar" && v.name.starts_with("vms-"))
        .unwrap();
    let del = pb::VmActionRequest {
        request_id: "del-1".into(),
        vm: mine.name.clone(),
    };
    let first = o.vm.delete_vm(del.clone()).await.unwrap().into_inner();
    // A retry gets the first answer although the VM is gone; the same id from another
    // user is another request (ids are the caller's own).
    assert_eq!(
        o.vm.delete_vm(del.clone()).await.unwrap().into_inner(),
        first
    );
    let s = srv
        .clients(Some(&session(&fx.dir, "alice", 0, 600)))
        .vm
        .delete_vm(del)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let (ok, _) = race(&srv, &oscar, "again", 3, 1, 64).await;
    assert_eq!(ok, 1);
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}
