//! The authorization matrix: every RPC of VmService, HostService, StorageService and
//! IamService × role {admin, owner, operator, viewer, non-member} × object in the caller's
//! project or another one, each against a fresh copy of the fixture store served by a real
//! controller over real gRPC. An allowed call must not be refused by the policy (it may
//! still fail later: no agent answers); a refused call must answer exactly NOT_FOUND or
//! PERMISSION_DENIED and leave every table but the audit log byte-identical. Mutating
//! calls, refused or not, add one audit record; reads add none. The table of rows is
//! checked against the services' descriptors, so an RPC without a row fails the test.

// Test code: a failed step panics with its error.
#![allow(clippy::unwrap_used)]

mod iam_support;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use iam_support::{copy_of, fixture, session, start, Clients, Fixture, PASSWORD};
use novacron_controller::iam::authn::IamMode;
use novacron_proto::controller as pb;
use prost::Message;
use tonic::Code;

/// A role of the matrix, with the fixture user who has it (in project alpha).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    Owner,
    Operator,
    Viewer,
    NonMember,
}

impl Role {
    fn user(self) -> &'static str {
        match self {
            Role::Admin => "root",
            Role::Owner => "alice",
            Role::Operator => "oscar",
            Role::Viewer => "victor",
            Role::NonMember => "nina",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Role::Admin => 4,
            Role::Owner => 3,
            Role::Operator => 2,
            Role::Viewer => 1,
            Role::NonMember => 0,
        }
    }
}

/// The object of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// In alpha, created by alice.
    Own,
    /// In alpha, created by the caller (only the operator's row differs).
    Mine,
    /// In beta.
    Other,
}

/// What a call needs, as the issue states the policy (written here independently of the
/// controller's own table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Any authenticated caller (lists filter what they show).
    Authn,
    /// Viewer or more in the object's project.
    Read,
    /// Operator or more.
    Operate,
    /// Owner, or the operator who created the object.
    Delete,
    /// Owner.
    Manage,
    /// Admin, about a project (NOT_FOUND when the caller cannot see it).
    AdminIn,
    /// Admin, about no project.
    Admin,
    /// The caller itself (target Own/Mine), or an admin for another user (Other).
    SelfOrAdmin,
    /// The caller's own API token (Own/Mine), another user's (Other): admins only, others
    /// NOT_FOUND.
    OwnToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Denied,
    NotFound,
}

fn expect(role: Role, need: Need, target: Target) -> Expect {
    if role == Role::Admin {
        return Expect::Allowed;
    }
    let visible = role != Role::NonMember && target != Target::Other;
    let own = target != Target::Other;
    let rank = |min: u8| {
        if !visible {
            Expect::NotFound
        } else if role.rank() >= min {
            Expect::Allowed
        } else {
            Expect::Denied
        }
    };
    match need {
        Need::Authn => Expect::Allowed,
        Need::Admin => Expect::Denied,
        Need::AdminIn if visible => Expect::Denied,
        Need::AdminIn => Expect::NotFound,
        Need::SelfOrAdmin if own => Expect::Allowed,
        Need::SelfOrAdmin => Expect::Denied,
        Need::OwnToken if own => Expect::Allowed,
        Need::OwnToken => Expect::NotFound,
        Need::Read => rank(1),
        Need::Operate => rank(2),
        Need::Manage => rank(3),
        Need::Delete if visible && role == Role::Operator && target == Target::Mine => {
            Expect::Allowed
        }
        Need::Delete => rank(3),
    }
}

/// What a row's call is about.
struct Ctx {
    c: Clients,
    vm: String,
    project: String,
    /// A member of `project` other than the caller.
    member: String,
    /// The user self-service calls name ("" for the caller).
    user: String,
    /// The API token id a revoke names.
    token_id: String,
    caller: String,
}

type Answer = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// One RPC: its `Service/Method`, what it needs, whether it is audited, and the call.
struct Row {
    method: &'static str,
    need: Need,
    mutating: bool,
    call: fn(Ctx) -> Answer,
}

macro_rules! row {
    ($method:literal, $need:ident, $mutating:literal, |$x:ident| $body:expr) => {
        Row {
            method: $method,
            need: Need::$need,
            mutating: $mutating,
            call: |$x: Ctx| {
                Box::pin(async move {
                    let mut $x = $x;
                    $body.await.map(|_| ())
                })
            },
        }
    };
}

fn spec(name: &str) -> Option<pb::VmSpec> {
    Some(pb::VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: "/k".into(),
        ..Default::default()
    })
}

fn rows() -> Vec<Row> {
    vec![
        // VmService
        row!("VmService/CreateVm", Operate, true, |x| x.c.vm.create_vm(
            pb::CreateVmRequest {
                project: x.project.clone(),
                spec: spec("new-vm"),
                ..Default::default()
            }
        )),
        row!("VmService/GetVm", Read, false, |x| x
            .c
            .vm
            .get_vm(pb::GetVmRequest { vm: x.vm.clone() })),
        row!("VmService/ListVms", Read, false, |x| x.c.vm.list_vms(
            pb::ListVmsRequest {
                project: x.project.clone(),
                ..Default::default()
            }
        )),
        row!("VmService/StartVm", Operate, true, |x| x.c.vm.start_vm(
            pb::VmActionRequest {
                request_id: "r1".into(),
                vm: x.vm.clone(),
            }
        )),
        row!("VmService/StopVm", Operate, true, |x| x.c.vm.stop_vm(
            pb::StopVmRequest {
                vm: x.vm.clone(),
                ..Default::default()
            }
        )),
        row!("VmService/RebootVm", Operate, true, |x| x.c.vm.reboot_vm(
            pb::VmActionRequest {
                request_id: String::new(),
                vm: x.vm.clone(),
            }
        )),
        row!("VmService/DeleteVm", Delete, true, |x| x.c.vm.delete_vm(
            pb::VmActionRequest {
                request_id: String::new(),
                vm: x.vm.clone(),
            }
        )),
        row!("VmService/MigrateVm", Operate, true, |x| x.c.vm.migrate_vm(
            pb::MigrateVmRequest {
                vm: x.vm.clone(),
                ..Default::default()
            }
        )),
        row!("VmService/CancelMigration", Operate, true, |x| x
            .c
            .vm
            .cancel_migration(pb::CancelMigrationRequest {
                vm: x.vm.clone()
            })),
        row!("VmService/WatchEvents", Authn, false, |x| x
            .c
            .vm
            .watch_events(pb::WatchEventsRequest::default())),
        // HostService
        row!("HostService/ListHosts", Admin, false, |x| x
            .c
            .host
            .list_hosts(pb::ListHostsRequest::default())),
        row!("HostService/GetHost", Admin, false, |x| x.c.host.get_host(
            pb::HostActionRequest {
                request_id: String::new(),
                host: "h1".into(),
            }
        )),
        row!("HostService/CordonHost", Admin, true, |x| x
            .c
            .host
            .cordon_host(pb::HostActionRequest {
                request_id: String::new(),
                host: "h1".into(),
            })),
        row!("HostService/UncordonHost", Admin, true, |x| x
            .c
            .host
            .uncordon_host(pb::HostActionRequest {
                request_id: String::new(),
                host: "h1".into(),
            })),
        row!("HostService/DrainHost", Admin, true, |x| x
            .c
            .host
            .drain_host(pb::DrainHostRequest {
                host: "h1".into(),
                ..Default::default()
            })),
        // StorageService
        row!("StorageService/CreateSnapshot", Operate, true, |x| x
            .c
            .storage
            .create_snapshot(pb::CreateSnapshotRequest {
                vm: x.vm.clone(),
                snapshot: "s2".into(),
                ..Default::default()
            })),
        row!("StorageService/GetSnapshot", Read, false, |x| x
            .c
            .storage
            .get_snapshot(pb::SnapshotRef {
                vm: x.vm.clone(),
                snapshot: "s1".into(),
            })),
        row!("StorageService/ListSnapshots", Read, false, |x| x
            .c
            .storage
            .list_snapshots(pb::ListSnapshotsRequest {
                vm: x.vm.clone(),
                ..Default::default()
            })),
        row!("StorageService/DeleteSnapshot", Delete, true, |x| x
            .c
            .storage
            .delete_snapshot(pb::SnapshotActionRequest {
                vm: x.vm.clone(),
                snapshot: "s1".into(),
                ..Default::default()
            })),
        row!("StorageService/RestoreSnapshot", Operate, true, |x| x
            .c
            .storage
            .restore_snapshot(pb::RestoreSnapshotRequest {
                vm: x.vm.clone(),
                snapshot: "s1".into(),
                ..Default::default()
            })),
        row!("StorageService/CloneVm", Operate, true, |x| x
            .c
            .storage
            .clone_vm(pb::CloneVmRequest {
                source: x.vm.clone(),
                name: "clone1".into(),
                stopped: true,
                ..Default::default()
            })),
        row!("StorageService/SetTemplate", Operate, true, |x| x
            .c
            .storage
            .set_template(pb::SetTemplateRequest {
                vm: x.vm.clone(),
                template: true,
                ..Default::default()
            })),
        row!("StorageService/ListTemplates", Read, false, |x| x
            .c
            .storage
            .list_templates(pb::ListTemplatesRequest {
                project: x.project.clone(),
            })),
        row!("StorageService/ExportSnapshot", Manage, true, |x| x
            .c
            .storage
            .export_snapshot(pb::ExportSnapshotRequest {
                vm: x.vm.clone(),
                snapshot: "s1".into(),
                path: "/tmp/novacron-matrix.backup".into(),
                ..Default::default()
            })),
        row!("StorageService/ImportSnapshot", AdminIn, true, |x| x
            .c
            .storage
            .import_snapshot(pb::ImportSnapshotRequest {
                host: "h1".into(),
                path: "/tmp/novacron-matrix.backup".into(),
                name: "imported".into(),
                project: x.project.clone(),
                ..Default::default()
            })),
        // IamService
        row!("IamService/Login", Authn, true, |x| x.c.iam.login(
            pb::LoginRequest {
                user: x.caller.clone(),
                password: PASSWORD.into(),
                totp_code: String::new(),
            }
        )),
        row!("IamService/WhoAmI", Authn, false, |x| x
            .c
            .iam
            .who_am_i(pb::WhoAmIRequest {})),
        row!("IamService/CreateUser", Admin, true, |x| x
            .c
            .iam
            .create_user(pb::CreateUserRequest {
                name: "newuser".into(),
                password: PASSWORD.into(),
                ..Default::default()
            })),
        row!("IamService/ListUsers", Admin, false, |x| x
            .c
            .iam
            .list_users(pb::ListUsersRequest {})),
        row!("IamService/DeleteUser", Admin, true, |x| x
            .c
            .iam
            .delete_user(pb::DeleteUserRequest {
                name: "bob".into(),
                ..Default::default()
            })),
        row!("IamService/EnrollTotp", SelfOrAdmin, true, |x| x
            .c
            .iam
            .enroll_totp(pb::EnrollTotpRequest {
                user: x.user.clone(),
                ..Default::default()
            })),
        row!("IamService/ConfirmTotp", SelfOrAdmin, true, |x| x
            .c
            .iam
            .confirm_totp(pb::ConfirmTotpRequest {
                user: x.user.clone(),
                code: "000000".into(),
                ..Default::default()
            })),
        row!("IamService/CreateProject", Admin, true, |x| x
            .c
            .iam
            .create_project(pb::CreateProjectRequest {
                name: "gamma".into(),
                ..Default::default()
            })),
        row!("IamService/ListProjects", Authn, false, |x| x
            .c
            .iam
            .list_projects(pb::ListProjectsRequest {})),
        row!("IamService/DeleteProject", AdminIn, true, |x| x
            .c
            .iam
            .delete_project(pb::DeleteProjectRequest {
                name: x.project.clone(),
                ..Default::default()
            })),
        row!("IamService/AddMember", Manage, true, |x| x
            .c
            .iam
            .add_member(pb::AddMemberRequest {
                project: x.project.clone(),
                user: "nina".into(),
                role: pb::Role::Viewer as i32,
                ..Default::default()
            })),
        row!("IamService/RemoveMember", Manage, true, |x| x
            .c
            .iam
            .remove_member(pb::RemoveMemberRequest {
                project: x.project.clone(),
                user: x.member.clone(),
                ..Default::default()
            })),
        row!("IamService/ListMembers", Read, false, |x| x
            .c
            .iam
            .list_members(pb::ListMembersRequest {
                project: x.project.clone(),
            })),
        row!("IamService/SetQuota", AdminIn, true, |x| x.c.iam.set_quota(
            pb::SetQuotaRequest {
                project: x.project.clone(),
                quota: Some(pb::Quota {
                    max_vms: 10,
                    ..Default::default()
                }),
                ..Default::default()
            }
        )),
        row!("IamService/GetQuota", Read, false, |x| x.c.iam.get_quota(
            pb::GetQuotaRequest {
                project: x.project.clone(),
            }
        )),
        row!("IamService/CreateApiToken", Read, true, |x| x
            .c
            .iam
            .create_api_token(pb::CreateApiTokenRequest {
                project: x.project.clone(),
                role: pb::Role::Viewer as i32,
                ..Default::default()
            })),
        row!("IamService/ListApiTokens", Authn, false, |x| x
            .c
            .iam
            .list_api_tokens(pb::ListApiTokensRequest::default())),
        row!("IamService/RevokeApiToken", OwnToken, true, |x| x
            .c
            .iam
            .revoke_api_token(pb::RevokeApiTokenRequest {
                id: x.token_id.clone(),
                ..Default::default()
            })),
        row!("IamService/ListAudit", Manage, false, |x| x
            .c
            .iam
            .list_audit(pb::ListAuditRequest {
                project: x.project.clone(),
                ..Default::default()
            })),
    ]
}

/// `Service/Method` of every RPC of the four user-facing services, from the descriptors the
/// server publishes.
fn described_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(novacron_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = BTreeSet::new();
    for f in set.file {
        for s in f.service {
            let name = s.name().to_string();
            if ["VmService", "HostService", "StorageService", "IamService"].contains(&name.as_str())
            {
                for m in s.method {
                    out.insert(format!("{name}/{}", m.name()));
                }
            }
        }
    }
    out
}

#[test]
fn every_rpc_has_a_row() {
    let table = rows();
    let methods: BTreeSet<String> = table.iter().map(|r| r.method.to_string()).collect();
    let described = described_methods();
    assert_eq!(methods.len(), table.len(), "a method has two rows");
    let missing: Vec<_> = described.difference(&methods).collect();
    let extra: Vec<_> = methods.difference(&described).collect();
    assert!(missing.is_empty(), "RPCs without a matrix row: {missing:?}");
    assert!(extra.is_empty(), "rows of no RPC: {extra:?}");
    assert!(described.len() >= 40, "{described:?}");
}

fn ctx(fx: &Fixture, c: Clients, role: Role, target: Target) -> Ctx {
    let caller = role.user().to_string();
    let (vm, project, member) = match target {
        Target::Own => ("a-vm", "alpha", "victor"),
        Target::Mine if role == Role::Operator => ("a-oscar", "alpha", "victor"),
        Target::Mine => ("a-vm", "alpha", "victor"),
        Target::Other => ("b-vm", "beta", "bob"),
    };
    let (user, token_id) = match target {
        Target::Other => ("bob".to_string(), fx.api_tokens["bob"].0.clone()),
        _ => (String::new(), fx.api_tokens[role.user()].0.clone()),
    };
    Ctx {
        c,
        vm: vm.into(),
        project: project.into(),
        member: member.into(),
        user,
        token_id,
        caller,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_role_on_own_and_other_projects() {
    let fx = fixture("matrix");
    let roles = [
        Role::Admin,
        Role::Owner,
        Role::Operator,
        Role::Viewer,
        Role::NonMember,
    ];
    let mut failures = Vec::new();
    let mut counted = (0usize, 0usize);
    for row in rows() {
        for role in roles {
            for target in [Target::Own, Target::Mine, Target::Other] {
                if target == Target::Mine && role != Role::Operator {
                    continue;
                }
                let want = expect(role, row.need, target);
                let dir = copy_of(&fx.dir, "row");
                let srv = start(&dir, IamMode::Enforce).await;
                let token = session(&dir, role.user(), 0, 600);
                let before = srv.dump();
                let audit_before = srv.audit().len();
                let got = (row.call)(ctx(&fx, srv.clients(Some(&token)), role, target)).await;
                let after = srv.dump();
                let audit_after = srv.audit().len();
                srv.stop().await;
                let _ = std::fs::remove_dir_all(&dir);
                let what = format!("{} as {role:?} on {target:?}", row.method);
                let code = got.as_ref().err().map(|s| s.code()).unwrap_or(Code::Ok);
                let msg = got.as_ref().err().map(|s| s.message().to_string());
                match want {
                    Expect::Allowed => {
                        counted.0 += 1;
                        if matches!(
                            code,
                            Code::Unauthenticated | Code::PermissionDenied | Code::NotFound
                        ) {
                            failures.push(format!("{what}: allowed, got {code:?} {msg:?}"));
                        }
                    }
                    Expect::Denied | Expect::NotFound => {
                        counted.1 += 1;
                        let want_code = if want == Expect::Denied {
                            Code::PermissionDenied
                        } else {
                            Code::NotFound
                        };
                        if code != want_code {
                            failures
                                .push(format!("{what}: want {want_code:?}, got {code:?} {msg:?}"));
                        }
                        if before != after {
                            failures.push(format!("{what}: refused, but the store changed"));
                        }
                    }
                }
                let audited = audit_after - audit_before;
                if audited != usize::from(row.mutating) {
                    failures.push(format!(
                        "{what}: {audited} audit records (mutating: {})",
                        row.mutating
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&fx.dir);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Both kinds of answers were exercised in quantity.
    assert!(counted.0 > 100 && counted.1 > 100, "{counted:?}");
}

/// Refused calls name what was refused the same way a missing object does: another
/// project's VM is indistinguishable from no VM.
#[tokio::test]
async fn another_projects_vm_looks_missing() {
    let fx = fixture("lookalike");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let token = session(&fx.dir, "alice", 0, 600);
    let mut c = srv.clients(Some(&token));
    let hidden =
        c.vm.get_vm(pb::GetVmRequest { vm: "b-vm".into() })
            .await
            .unwrap_err();
    let missing =
        c.vm.get_vm(pb::GetVmRequest { vm: "zz".into() })
            .await
            .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(
        hidden.message().replace("b-vm", "X"),
        missing.message().replace("zz", "X")
    );
    // By id as well.
    let by_id =
        c.vm.get_vm(pb::GetVmRequest {
            vm: fx.vm_ids["b-vm"].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound);
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

/// Lists show only the caller's projects; admins see all and may filter.
#[tokio::test]
async fn lists_show_only_visible_projects() {
    let fx = fixture("lists");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let names = |r: pb::ListVmsResponse| {
        let mut v: Vec<String> = r.vms.into_iter().map(|v| v.name).collect();
        v.sort();
        (v, r.total)
    };
    for (user, want) in [
        ("root", vec!["a-oscar", "a-vm", "b-vm"]),
        ("alice", vec!["a-oscar", "a-vm"]),
        ("victor", vec!["a-oscar", "a-vm"]),
        ("bob", vec!["b-vm"]),
        ("nina", vec![]),
    ] {
        let token = session(&fx.dir, user, 0, 600);
        let mut c = srv.clients(Some(&token));
        let got = names(
            c.vm.list_vms(pb::ListVmsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got.0, want, "{user}");
        assert_eq!(got.1 as usize, want.len(), "{user}");
        let snaps = c
            .storage
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(snaps.snapshots.len(), want.len(), "{user}");
        assert!(snaps.snapshots.iter().all(|s| !s.project.is_empty()));
        let projects = c
            .iam
            .list_projects(pb::ListProjectsRequest {})
            .await
            .unwrap()
            .into_inner();
        let n = projects.projects.len();
        assert_eq!(
            n,
            if user == "root" {
                3
            } else {
                usize::from(!want.is_empty())
            },
            "{user}"
        );
    }
    let token = session(&fx.dir, "root", 0, 600);
    let mut admin = srv.clients(Some(&token));
    let beta = admin
        .vm
        .list_vms(pb::ListVmsRequest {
            project: "beta".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(beta).0, ["b-vm"]);
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}
