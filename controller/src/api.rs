//! The gRPC services: `VmService`, `HostService` and `Registry` from controller.proto, thin
//! adapters from protobuf requests to [`Controller`] operations and from
//! [`ControllerError`](crate::controller::ControllerError) to gRPC status codes. Each user
//! call first takes its caller ([`principal`]) and applies the policy ([`crate::iam`]) to the
//! object's project before doing anything; mutating calls are audited, refused ones too.

use std::pin::Pin;
use std::sync::Arc;

use novacron_proto::controller as pb;
use novacron_proto::controller::host_service_server::HostService;
use novacron_proto::controller::registry_server::Registry;
use novacron_proto::controller::vm_service_server::VmService;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::controller::Controller;
use crate::events::{EventError, EventFilter};
use crate::iam::audit::Call;
use crate::iam::authn::principal;
use crate::iam::{check, project_of, Action, Object, Principal};

/// Errors of the API layer itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Reading the event backlog failed.
    #[error(transparent)]
    Events(#[from] EventError),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Events(EventError::Lagged(n)) => {
                Status::aborted(format!("watcher lagged by {n} events"))
            }
            ApiError::Events(e) => Status::internal(e.to_string()),
        }
    }
}

/// The VM service.
#[derive(Debug, Clone)]
pub struct VmApi(pub Arc<Controller>);

/// The host service.
#[derive(Debug, Clone)]
pub struct HostApi(pub Arc<Controller>);

/// The agents' registry.
#[derive(Debug, Clone)]
pub struct RegistryApi(pub Arc<Controller>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Who calls, checked: the caller's principal and the request, its request id scoped to the
/// caller (a retry by someone else never gets another caller's stored answer).
pub(crate) fn split<T: HasRequestId>(r: Request<T>) -> Result<(Principal, T), Status> {
    let p = principal(&r)?;
    let mut req = r.into_inner();
    let rid = req.request_id_mut();
    if rid.len() > 128 {
        return Err(Status::invalid_argument(
            "request_id is longer than 128 bytes",
        ));
    }
    if !rid.is_empty() {
        *rid = format!("{}/{rid}", p.user);
    }
    Ok((p, req))
}

/// Requests that carry a client request id.
pub(crate) trait HasRequestId {
    /// The request id.
    fn request_id_mut(&mut self) -> &mut String;
}

macro_rules! has_request_id {
    ($($t:ty),* $(,)?) => {
        $(impl HasRequestId for $t {
            fn request_id_mut(&mut self) -> &mut String {
                &mut self.request_id
            }
        })*
    };
}

has_request_id!(
    pb::CreateVmRequest,
    pb::VmActionRequest,
    pb::StopVmRequest,
    pb::MigrateVmRequest,
    pb::HostActionRequest,
    pb::DrainHostRequest,
    pb::CreateSnapshotRequest,
    pb::SnapshotActionRequest,
    pb::RestoreSnapshotRequest,
    pb::CloneVmRequest,
    pb::SetTemplateRequest,
    pb::ExportSnapshotRequest,
    pb::ImportSnapshotRequest,
);

/// The request id as the client sent it (without the caller's prefix), for audit records.
pub(crate) fn client_rid<'a>(p: &Principal, rid: &'a str) -> &'a str {
    rid.strip_prefix(p.user.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(rid)
}

/// The stored answer of a retried request (its id is the caller's own, see [`split`]): a
/// retry gets it even when the object is gone (a retried delete), without a new policy
/// decision about an object that may no longer exist.
pub(crate) fn replay<R: prost::Message + Default>(
    ctl: &Controller,
    request_id: &str,
    method: &str,
) -> Result<Option<R>, Status> {
    if request_id.is_empty() {
        return Ok(None);
    }
    Ok(ctl.stored_answer(request_id, method)?)
}

/// The VM `key` names, if the caller may do `action` to it: NOT_FOUND (the message of a
/// missing VM) when it cannot see the VM's project, PERMISSION_DENIED when its role does
/// not allow the action. Records the project in `call`.
pub(crate) fn vm_for(
    ctl: &Controller,
    p: &Principal,
    key: &str,
    action: Action,
    call: Option<&mut Call>,
) -> Result<pb::Vm, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("vm name or id is required"));
    }
    let not_found = || format!("vm {key} not found");
    let vm = ctl
        .state()
        .find_vm(key)
        .cloned()
        .map_err(|_| Status::not_found(not_found()))?;
    let project = project_of(&vm);
    // Recorded even when the caller cannot see it: the project's owners read who probed.
    if let Some(c) = call {
        c.project(project);
    }
    check(
        p,
        action,
        Some(Object {
            project,
            created_by: &vm.created_by,
        }),
        not_found,
    )?;
    Ok(vm)
}

impl VmApi {
    fn finish<T>(&self, call: Call, r: Result<T, Status>) -> Result<Response<T>, Status> {
        call.finish(self.0.iam().store(), r).map(Response::new)
    }

    fn call(&self, p: &Principal, method: &str, rid: &str, object: &str) -> Call {
        Call::new(p, method, client_rid(p, rid), object)
    }
}

#[tonic::async_trait]
impl VmService for VmApi {
    async fn create_vm(&self, r: Request<pb::CreateVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let (p, mut req) = split(r)?;
        let name = req
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let project = if req.project.is_empty() {
            p.default_project()
        } else {
            req.project.clone()
        };
        let mut call = self.call(&p, "VmService/CreateVm", &req.request_id, &name);
        call.project(&project);
        let res = async {
            self.0.iam().check_project(&p, Action::Operate, &project)?;
            req.project = project.clone();
            Ok(self.0.create_vm(req, &p.user).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn get_vm(&self, r: Request<pb::GetVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let p = principal(&r)?;
        let req = r.into_inner();
        Ok(Response::new(vm_for(
            &self.0,
            &p,
            &req.vm,
            Action::Read,
            None,
        )?))
    }

    async fn list_vms(
        &self,
        r: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        let p = principal(&r)?;
        let req = r.into_inner();
        if !req.project.is_empty() {
            self.0.iam().check_project(&p, Action::Read, &req.project)?;
        }
        Ok(Response::new(
            self.0.list_vms_in(&req, &|proj: &str| p.sees(proj))?,
        ))
    }

    async fn start_vm(&self, r: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        let (p, mut req) = split(r)?;
        let mut call = self.call(&p, "VmService/StartVm", &req.request_id, &req.vm);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "StartVm")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.start_vm(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn stop_vm(&self, r: Request<pb::StopVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let (p, mut req) = split(r)?;
        let mut call = self.call(&p, "VmService/StopVm", &req.request_id, &req.vm);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "StopVm")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.stop_vm(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn reboot_vm(&self, r: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        let (p, mut req) = split(r)?;
        let mut call = self.call(&p, "VmService/RebootVm", &req.request_id, &req.vm);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "RebootVm")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.reboot_vm(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn delete_vm(
        &self,
        r: Request<pb::VmActionRequest>,
    ) -> Result<Response<pb::DeleteVmResponse>, Status> {
        let (p, mut req) = split(r)?;
        let mut call = self.call(&p, "VmService/DeleteVm", &req.request_id, &req.vm);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "DeleteVm")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Delete, Some(&mut call))?.id;
            Ok(self.0.delete_vm(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn migrate_vm(
        &self,
        r: Request<pb::MigrateVmRequest>,
    ) -> Result<Response<pb::MigrateVmResponse>, Status> {
        let (p, mut req) = split(r)?;
        let mut call = self.call(&p, "VmService/MigrateVm", &req.request_id, &req.vm);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "MigrateVm")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.migrate_vm(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn cancel_migration(
        &self,
        r: Request<pb::CancelMigrationRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let p = principal(&r)?;
        let mut req = r.into_inner();
        let mut call = self.call(&p, "VmService/CancelMigration", "", &req.vm);
        let res = async {
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.cancel_migration(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        r: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let filter = EventFilter {
            vm: req.vm.clone(),
            host: req.host.clone(),
        };
        // Admins see every event; others the events of their projects' VMs (host events
        // have no project).
        let filter = move |ev: &pb::Event| {
            filter.matches(ev) && (p.is_admin() || (!ev.project.is_empty() && p.sees(&ev.project)))
        };
        let (backlog, mut rx) = self
            .0
            .events()
            .watch(req.since_seq, req.replay)
            .map_err(ApiError::from)?;
        let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::Event, Status>>(256);
        tokio::spawn(async move {
            let mut last = req.since_seq;
            for ev in backlog {
                last = last.max(ev.seq);
                if filter(&ev) && tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if ev.seq <= last {
                            continue;
                        }
                        last = ev.seq;
                        if filter(&ev) && tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(ApiError::Events(EventError::Lagged(n)).into()))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

impl HostApi {
    fn admin<T>(&self, r: &Request<T>) -> Result<Principal, Status> {
        let p = principal(r)?;
        check(&p, Action::Admin, None, String::new)?;
        Ok(p)
    }

    async fn audited<T, F>(
        &self,
        p: Principal,
        method: &str,
        rid: &str,
        host: &str,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: std::future::Future<Output = Result<T, Status>>,
    {
        let call = Call::new(&p, method, client_rid(&p, rid), host);
        let res = match check(&p, Action::Admin, None, String::new) {
            Ok(()) => f.await,
            Err(s) => Err(s),
        };
        call.finish(self.0.iam().store(), res).map(Response::new)
    }
}

#[tonic::async_trait]
impl HostService for HostApi {
    async fn list_hosts(
        &self,
        r: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.admin(&r)?;
        Ok(Response::new(self.0.list_hosts(&r.into_inner())?))
    }

    async fn get_host(
        &self,
        r: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        self.admin(&r)?;
        Ok(Response::new(self.0.get_host(&r.into_inner().host)?))
    }

    async fn cordon_host(
        &self,
        r: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let (p, req) = split(r)?;
        let (rid, host) = (req.request_id.clone(), req.host.clone());
        self.audited(p, "HostService/CordonHost", &rid, &host, async {
            Ok(self.0.set_cordon(req, true).await?)
        })
        .await
    }

    async fn uncordon_host(
        &self,
        r: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let (p, req) = split(r)?;
        let (rid, host) = (req.request_id.clone(), req.host.clone());
        self.audited(p, "HostService/UncordonHost", &rid, &host, async {
            Ok(self.0.set_cordon(req, false).await?)
        })
        .await
    }

    async fn drain_host(
        &self,
        r: Request<pb::DrainHostRequest>,
    ) -> Result<Response<pb::DrainHostResponse>, Status> {
        let (p, req) = split(r)?;
        let (rid, host) = (req.request_id.clone(), req.host.clone());
        self.audited(p, "HostService/DrainHost", &rid, &host, async {
            Ok(self.0.drain_host(req).await?)
        })
        .await
    }
}

#[tonic::async_trait]
impl Registry for RegistryApi {
    async fn register_host(
        &self,
        r: Request<pb::RegisterHostRequest>,
    ) -> Result<Response<pb::RegisterHostResponse>, Status> {
        let name = r.get_ref().host.as_ref().map(|h| h.name.as_str());
        caller_is_host(&r, name.unwrap_or_default())?;
        Ok(Response::new(self.0.register_host(r.into_inner())?))
    }

    async fn heartbeat(
        &self,
        r: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        caller_is_host(&r, &r.get_ref().name)?;
        Ok(Response::new(self.0.heartbeat(r.into_inner())?))
    }
}

/// An agent speaks only for the host its certificate names (with TLS; development mode has
/// no certificates).
fn caller_is_host<T>(r: &Request<T>, name: &str) -> Result<(), Status> {
    match novacron_security::peer::caller(r) {
        None => Ok(()),
        Some(novacron_security::Identity::Host(h)) if h == name => Ok(()),
        Some(id) => Err(Status::permission_denied(format!(
            "{id} may not report for host {name:?}"
        ))),
    }
}
