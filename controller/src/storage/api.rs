//! The `StorageService` of `proto/storage.proto`: thin adapters from requests to the
//! controller's snapshot, clone, template and backup operations. Each call first applies
//! the policy to the project of its VM (snapshots, clones and templates are their VM's);
//! mutating calls are audited, refused ones too.

use std::sync::Arc;

use novacron_proto::controller as pb;
use novacron_proto::controller::storage_service_server::StorageService;
use tonic::{Request, Response, Status};

use crate::api::{client_rid, replay, split, vm_for};
use crate::controller::Controller;
use crate::iam::audit::Call;
use crate::iam::authn::principal;
use crate::iam::{check, project_of, Action, Object, Principal};

/// The storage service.
#[derive(Debug, Clone)]
pub struct StorageApi(pub Arc<Controller>);

type R<T> = Result<Response<T>, Status>;

impl StorageApi {
    fn finish<T>(&self, call: Call, r: Result<T, Status>) -> R<T> {
        call.finish(self.0.iam().store(), r).map(Response::new)
    }

    fn call(&self, p: &Principal, method: &str, rid: &str, object: &str) -> Call {
        Call::new(p, method, client_rid(p, rid), object)
    }
}

fn snap_object(vm: &str, snap: &str) -> String {
    format!("{vm}/{snap}")
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn create_snapshot(&self, r: Request<pb::CreateSnapshotRequest>) -> R<pb::Snapshot> {
        let (p, mut req) = split(r)?;
        let object = snap_object(&req.vm, &req.snapshot);
        let mut call = self.call(
            &p,
            "StorageService/CreateSnapshot",
            &req.request_id,
            &object,
        );
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "CreateSnapshot")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.create_snapshot(req, &p.user).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn get_snapshot(&self, r: Request<pb::SnapshotRef>) -> R<pb::Snapshot> {
        let p = principal(&r)?;
        let mut req = r.into_inner();
        let vm = vm_for(&self.0, &p, &req.vm, Action::Read, None)?;
        req.vm = vm.id.clone();
        let mut snap = self.0.get_snapshot(&req)?;
        snap.project = project_of(&vm).to_string();
        Ok(Response::new(snap))
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        let p = principal(&r)?;
        let mut req = r.into_inner();
        if !req.vm.is_empty() {
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Read, None)?.id;
        }
        if !req.project.is_empty() {
            self.0.iam().check_project(&p, Action::Read, &req.project)?;
        }
        Ok(Response::new(
            self.0.list_snapshots_in(&req, &|proj: &str| p.sees(proj))?,
        ))
    }

    async fn delete_snapshot(
        &self,
        r: Request<pb::SnapshotActionRequest>,
    ) -> R<pb::DeleteSnapshotResponse> {
        let (p, mut req) = split(r)?;
        let object = snap_object(&req.vm, &req.snapshot);
        let mut call = self.call(
            &p,
            "StorageService/DeleteSnapshot",
            &req.request_id,
            &object,
        );
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "DeleteSnapshot")? {
                return Ok(r);
            }
            let vm = vm_for(&self.0, &p, &req.vm, Action::Read, Some(&mut call))?;
            let snap = self.0.snapshot_record(&vm, &req.snapshot)?;
            // Operators delete only the snapshots they took.
            check(
                &p,
                Action::Delete,
                Some(Object {
                    project: project_of(&vm),
                    created_by: &snap.created_by,
                }),
                || format!("vm {} not found", req.vm),
            )?;
            req.vm = vm.id;
            Ok(self.0.delete_snapshot(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn restore_snapshot(&self, r: Request<pb::RestoreSnapshotRequest>) -> R<pb::Vm> {
        let (p, mut req) = split(r)?;
        let object = snap_object(&req.vm, &req.snapshot);
        let mut call = self.call(
            &p,
            "StorageService/RestoreSnapshot",
            &req.request_id,
            &object,
        );
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "RestoreSnapshot")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.restore_snapshot(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn clone_vm(&self, r: Request<pb::CloneVmRequest>) -> R<pb::Vm> {
        let (p, mut req) = split(r)?;
        let mut call = self.call(&p, "StorageService/CloneVm", &req.request_id, &req.name);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "CloneVm")? {
                return Ok(r);
            }
            req.source = vm_for(&self.0, &p, &req.source, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.clone_vm(req, &p.user).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn set_template(&self, r: Request<pb::SetTemplateRequest>) -> R<pb::Template> {
        let (p, mut req) = split(r)?;
        let object = snap_object(&req.vm, &req.snapshot);
        let mut call = self.call(&p, "StorageService/SetTemplate", &req.request_id, &object);
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "SetTemplate")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Operate, Some(&mut call))?.id;
            Ok(self.0.set_template(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn list_templates(
        &self,
        r: Request<pb::ListTemplatesRequest>,
    ) -> R<pb::ListTemplatesResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        if !req.project.is_empty() {
            self.0.iam().check_project(&p, Action::Read, &req.project)?;
        }
        Ok(Response::new(
            self.0.list_templates_in(&req, &|proj: &str| p.sees(proj))?,
        ))
    }

    async fn export_snapshot(
        &self,
        r: Request<pb::ExportSnapshotRequest>,
    ) -> R<pb::ExportSnapshotResponse> {
        let (p, mut req) = split(r)?;
        let object = snap_object(&req.vm, &req.snapshot);
        let mut call = self.call(
            &p,
            "StorageService/ExportSnapshot",
            &req.request_id,
            &object,
        );
        let res = async {
            if let Some(r) = replay(&self.0, &req.request_id, "ExportSnapshot")? {
                return Ok(r);
            }
            req.vm = vm_for(&self.0, &p, &req.vm, Action::Manage, Some(&mut call))?.id;
            Ok(self.0.export_snapshot(req).await?)
        }
        .await;
        self.finish(call, res)
    }

    async fn import_snapshot(
        &self,
        r: Request<pb::ImportSnapshotRequest>,
    ) -> R<pb::ImportSnapshotResponse> {
        let (p, mut req) = split(r)?;
        let project = if req.project.is_empty() {
            p.default_project()
        } else {
            req.project.clone()
        };
        let mut call = self.call(
            &p,
            "StorageService/ImportSnapshot",
            &req.request_id,
            &req.name,
        );
        call.project(&project);
        let res = async {
            // Any file on a host: admins only.
            self.0.iam().check_project(&p, Action::Admin, &project)?;
            req.project = project.clone();
            Ok(self.0.import_snapshot(req, &p.user).await?)
        }
        .await;
        self.finish(call, res)
    }
}
