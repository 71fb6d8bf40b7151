//! The audit log and event visibility against a real controller: every mutating call,
//! allowed or refused, is recorded with who, which project, what, the request id and the
//! result; reads are not; `ListAudit` filters by project and time and is for admins and
//! owners; a watch shows each caller only its projects' events.

// Test code: a failed step panics with its error.
#![allow(clippy::unwrap_used)]

mod iam_support;

use std::time::Duration;

use iam_support::{fixture, session, start};
use novacron_controller::iam::authn::IamMode;
use novacron_proto::controller as pb;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn mutating_calls_are_audited_and_listed_by_project_and_time() {
    let fx = fixture("audit");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let token = |u: &str| session(&fx.dir, u, 0, 600);
    let mut alice = srv.clients(Some(&token("alice")));
    let mut victor = srv.clients(Some(&token("victor")));
    let mut nina = srv.clients(Some(&token("nina")));
    let mut root = srv.clients(Some(&token("root")));
    let mut bob_bot = srv.clients(Some(&fx.api_tokens["bob"].1));

    // Allowed, failing later (no agent): recorded with its code.
    let s = alice
        .vm
        .start_vm(pb::VmActionRequest {
            request_id: "rid-1".into(),
            vm: "a-vm".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    // Allowed and done.
    alice
        .storage
        .set_template(pb::SetTemplateRequest {
            request_id: "rid-2".into(),
            vm: "a-vm".into(),
            template: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // Refused by role, and by visibility.
    let s = victor
        .vm
        .stop_vm(pb::StopVmRequest {
            request_id: "rid-3".into(),
            vm: "a-vm".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = nina
        .vm
        .delete_vm(pb::VmActionRequest {
            request_id: "rid-4".into(),
            vm: "b-vm".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    // Through an API token.
    bob_bot
        .storage
        .set_template(pb::SetTemplateRequest {
            request_id: "rid-5".into(),
            vm: "b-vm".into(),
            template: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // Reads are not audited.
    let n = srv.audit().len();
    alice
        .vm
        .get_vm(pb::GetVmRequest { vm: "a-vm".into() })
        .await
        .unwrap();
    assert_eq!(srv.audit().len(), n);

    let all = root
        .iam
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let find = |rid: &str| {
        all.iter()
            .find(|r| r.request_id == rid)
            .unwrap_or_else(|| panic!("{rid} not audited: {all:?}"))
            .clone()
    };
    let r = find("rid-1");
    assert_eq!(
        (
            r.principal.as_str(),
            r.project.as_str(),
            r.method.as_str(),
            r.object.as_str(),
            r.result.as_str()
        ),
        ("alice", "alpha", "VmService/StartVm", "a-vm", "UNAVAILABLE")
    );
    assert!(r.time_ms > 0 && r.seq > 0);
    assert_eq!(find("rid-2").result, "OK");
    assert_eq!(find("rid-2").method, "StorageService/SetTemplate");
    let r = find("rid-3");
    assert_eq!(
        (r.principal.as_str(), r.result.as_str()),
        ("victor", "PERMISSION_DENIED")
    );
    assert!(!r.message.is_empty());
    let r = find("rid-4");
    assert_eq!(
        (r.principal.as_str(), r.project.as_str(), r.result.as_str()),
        ("nina", "beta", "NOT_FOUND")
    );
    let r = find("rid-5");
    assert_eq!(r.principal, format!("bob token:{}", fx.api_tokens["bob"].0));
    assert_eq!(r.project, "beta");

    // By project: admins any, owners their own; viewers and others' owners not.
    let alpha = |c: &mut iam_support::Clients| {
        let mut c = c.clone();
        async move {
            c.iam
                .list_audit(pb::ListAuditRequest {
                    project: "alpha".into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().records)
        }
    };
    let mine = alpha(&mut alice).await.unwrap();
    assert_eq!(mine, alpha(&mut root).await.unwrap());
    assert!(mine.iter().all(|r| r.project == "alpha"));
    let rids: Vec<&str> = mine.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(rids, ["rid-1", "rid-2", "rid-3"]);
    assert_eq!(
        alpha(&mut victor).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(alpha(&mut nina).await.unwrap_err().code(), Code::NotFound);
    let s = alice
        .iam
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);

    // Since a time, and a limit.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = novacron_controller::util::now_ms();
    alice
        .storage
        .set_template(pb::SetTemplateRequest {
            request_id: "rid-6".into(),
            vm: "a-vm".into(),
            template: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let later = root
        .iam
        .list_audit(pb::ListAuditRequest {
            since_ms: since,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].request_id, "rid-6");
    let last2 = root
        .iam
        .list_audit(pb::ListAuditRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(last2.len(), 2);
    assert_eq!(last2[1].request_id, "rid-6");

    // Identity calls are audited too, logins included.
    root.iam
        .create_project(pb::CreateProjectRequest {
            request_id: "rid-7".into(),
            name: "gamma".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = srv
        .clients(None)
        .iam
        .login(pb::LoginRequest {
            user: "victor".into(),
            password: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let log = srv.audit();
    let gamma = log.iter().find(|r| r.request_id == "rid-7").unwrap();
    assert_eq!(
        (
            gamma.method.as_str(),
            gamma.project.as_str(),
            gamma.result.as_str()
        ),
        ("IamService/CreateProject", "gamma", "OK")
    );
    let login = log.last().unwrap();
    assert_eq!(
        (
            login.method.as_str(),
            login.principal.as_str(),
            login.result.as_str()
        ),
        ("IamService/Login", "victor", "UNAUTHENTICATED")
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

async fn events_seen(c: &mut iam_support::Clients) -> Vec<pb::Event> {
    let mut s =
        c.vm.watch_events(pb::WatchEventsRequest {
            replay: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
        out.push(ev.unwrap());
    }
    out
}

#[tokio::test]
async fn watches_show_only_the_callers_projects() {
    let fx = fixture("events");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let token = |u: &str| session(&fx.dir, u, 0, 600);
    for (user, vm) in [("alice", "a-vm"), ("bob", "b-vm")] {
        srv.clients(Some(&token(user)))
            .storage
            .set_template(pb::SetTemplateRequest {
                vm: vm.into(),
                template: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    srv.clients(Some(&token("root")))
        .host
        .cordon_host(pb::HostActionRequest {
            request_id: String::new(),
            host: "h1".into(),
        })
        .await
        .unwrap();
    let projects = |evs: &[pb::Event]| {
        let mut p: Vec<String> = evs.iter().map(|e| e.project.clone()).collect();
        p.sort();
        p
    };
    let admin = events_seen(&mut srv.clients(Some(&token("root")))).await;
    assert_eq!(projects(&admin), ["", "alpha", "beta"], "{admin:?}");
    let alice = events_seen(&mut srv.clients(Some(&token("victor")))).await;
    assert_eq!(projects(&alice), ["alpha"]);
    assert_eq!(alice[0].vm, "a-vm");
    let nina = events_seen(&mut srv.clients(Some(&token("nina")))).await;
    assert!(nina.is_empty(), "{nina:?}");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}
