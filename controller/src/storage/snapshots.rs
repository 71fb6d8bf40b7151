//! Snapshots: take (crash-consistent: the VMM pauses the guest while it writes memory,
//! devices and disks), get, list, delete and restore.

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use prost::Message;

use super::{check_snapshot_name, snap_key, storage_err, STORAGE_CALL_TIMEOUT};
use crate::agent_client::{request, CALL_TIMEOUT};
use crate::controller::{Controller, ControllerError, Result, DEFAULT_PAGE, MAX_PAGE};
use crate::store::Op;

/// A VM that is migrating or being deleted cannot take part in a storage operation.
pub(super) fn check_idle(vm: &pb::Vm) -> Result<()> {
    let busy = match pb::VmPhase::try_from(vm.phase) {
        Ok(pb::VmPhase::Migrating) => Some("migrating"),
        Ok(pb::VmPhase::Deleting) => Some("being deleted"),
        _ => None,
    };
    match busy {
        Some(what) => Err(ControllerError::FailedPrecondition(format!(
            "vm {} is {what}",
            vm.name
        ))),
        None => Ok(()),
    }
}

impl Controller {
    /// Takes a snapshot of a running VM on its host, for user `by`.
    pub async fn create_snapshot(
        &self,
        req: pb::CreateSnapshotRequest,
        by: &str,
    ) -> Result<pb::Snapshot> {
        check_snapshot_name(&req.snapshot)?;
        self.idempotent(&req.request_id, "CreateSnapshot", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = self.state().find_vm(&id)?.clone();
            check_idle(&vm)?;
            if vm.phase != pb::VmPhase::Running as i32 || vm.host.is_empty() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "vm {} is not running: a snapshot captures a running guest (clone a \
                     stopped VM instead)",
                    vm.name
                )));
            }
            let key = snap_key(&id, &req.snapshot);
            if self.store.record(&key)?.is_some() {
                return Err(ControllerError::AlreadyExists(format!(
                    "vm {} already has a snapshot {}",
                    vm.name, req.snapshot
                )));
            }
            let mut c = self.storage_client(&vm.host)?;
            let r = apb::TakeSnapshotRequest {
                request_id: String::new(),
                vm_id: id.clone(),
                name: req.snapshot.clone(),
            };
            let info = c
                .take_snapshot(request(r, STORAGE_CALL_TIMEOUT))
                .await
                .map_err(storage_err(&vm.host))?
                .into_inner();
            let snap = pb::Snapshot {
                name: req.snapshot.clone(),
                vm: vm.name.clone(),
                vm_id: id.clone(),
                host: vm.host.clone(),
                created_at_ms: info.created_at_ms,
                template: false,
                spec: vm.spec.clone(),
                paused_ms: info.paused_ms,
                memory_bytes: info.memory_bytes,
                disks: info.disks,
                project: crate::iam::project_of(&vm).to_string(),
                created_by: by.to_string(),
            };
            let msg = format!(
                "snapshot {}: guest paused {:.1} ms, {} bytes of memory, {} disks",
                snap.name,
                snap.paused_ms,
                snap.memory_bytes,
                snap.disks.len()
            );
            self.events.emit_with(
                &[Op::PutRecord(&key, snap.encode_to_vec())],
                "SnapshotCreated",
                Some((&vm.name, &id)),
                &vm.host,
                msg,
            )?;
            Ok((snap, id.clone()))
        })
        .await
    }

    /// One snapshot.
    pub fn get_snapshot(&self, r: &pb::SnapshotRef) -> Result<pb::Snapshot> {
        let vm = self.state().find_vm(&r.vm)?.clone();
        self.snapshot_record(&vm, &r.snapshot)
    }

    /// A page of snapshots ordered by VM name, then snapshot name (token: `VM/SNAPSHOT` of
    /// the last one returned).
    pub fn list_snapshots(
        &self,
        req: &pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        self.list_snapshots_in(req, &|_| true)
    }

    /// A page of the snapshots whose VM's project `visible` accepts (and is `req.project`
    /// when given), as [`Controller::list_snapshots`].
    pub fn list_snapshots_in(
        &self,
        req: &pb::ListSnapshotsRequest,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<pb::ListSnapshotsResponse> {
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let vm_id = if req.vm.is_empty() {
            None
        } else {
            Some(self.state().vm_id(&req.vm)?)
        };
        let mut all = self.snapshot_records(vm_id.as_deref())?;
        {
            let st = self.state();
            all.retain_mut(|s| {
                if let Some(vm) = st.vms.get(&s.vm_id) {
                    s.project = crate::iam::project_of(vm).to_string();
                } else if s.project.is_empty() {
                    s.project = crate::iam::DEFAULT_PROJECT.to_string();
                }
                visible(&s.project) && (req.project.is_empty() || s.project == req.project)
            });
        }
        all.sort_by(|a, b| (&a.vm, &a.name).cmp(&(&b.vm, &b.name)));
        let total = all.len() as u32;
        let mut snapshots: Vec<pb::Snapshot> = all
            .into_iter()
            .filter(|s| {
                req.page_token.is_empty() || format!("{}/{}", s.vm, s.name) > req.page_token
            })
            .take(size + 1)
            .collect();
        let next = if snapshots.len() > size {
            snapshots.truncate(size);
            snapshots
                .last()
                .map(|s| format!("{}/{}", s.vm, s.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListSnapshotsResponse {
            snapshots,
            next_page_token: next,
            total,
        })
    }

    /// Deletes a snapshot: its files on the host, then its record.
    pub async fn delete_snapshot(
        &self,
        req: pb::SnapshotActionRequest,
    ) -> Result<pb::DeleteSnapshotResponse> {
        check_snapshot_name(&req.snapshot)?;
        self.idempotent(&req.request_id, "DeleteSnapshot", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = self.state().find_vm(&id)?.clone();
            let snap = self.snapshot_record(&vm, &req.snapshot)?;
            let mut c = self.storage_client(&snap.host)?;
            let r = apb::SnapshotRequest {
                request_id: String::new(),
                vm_id: id.clone(),
                name: snap.name.clone(),
            };
            match c.delete_snapshot(request(r, CALL_TIMEOUT)).await {
                Ok(_) => {}
                // The VM is gone from that host (moved away): so are its files.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(storage_err(&snap.host)(s)),
            }
            let key = snap_key(&id, &snap.name);
            self.events.emit_with(
                &[Op::DeleteRecord(&key)],
                "SnapshotDeleted",
                Some((&vm.name, &id)),
                &snap.host,
                format!("snapshot {} deleted", snap.name),
            )?;
            Ok((
                pb::DeleteSnapshotResponse {
                    vm: vm.name.clone(),
                    snapshot: snap.name,
                },
                id.clone(),
            ))
        })
        .await
    }

    /// Puts a VM back at a snapshot point (memory, devices and disks) and resumes it (or
    /// leaves it paused there).
    pub async fn restore_snapshot(&self, req: pb::RestoreSnapshotRequest) -> Result<pb::Vm> {
        check_snapshot_name(&req.snapshot)?;
        self.idempotent(&req.request_id, "RestoreSnapshot", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = self.state().find_vm(&id)?.clone();
            check_idle(&vm)?;
            let snap = self.snapshot_record(&vm, &req.snapshot)?;
            if vm.host != snap.host {
                return Err(ControllerError::FailedPrecondition(format!(
                    "snapshot {} of vm {} is on host {}, the vm is on {}: restore needs the vm \
                     on the snapshot's host",
                    snap.name,
                    vm.name,
                    snap.host,
                    if vm.host.is_empty() { "none" } else { &vm.host }
                )));
            }
            let mut c = self.storage_client(&vm.host)?;
            let r = apb::RestoreSnapshotRequest {
                request_id: String::new(),
                vm_id: id.clone(),
                name: snap.name.clone(),
                paused: req.paused,
            };
            let status = c
                .restore_snapshot(request(r, STORAGE_CALL_TIMEOUT))
                .await
                .map_err(storage_err(&vm.host))?
                .into_inner();
            let vm = {
                let mut st = self.state();
                let mut cur = st.find_vm(&id)?.clone();
                Self::apply_status(&mut cur, status);
                cur.desired = pb::DesiredState::Running as i32;
                cur.message.clear();
                let msg = format!(
                    "restored snapshot {}{}",
                    snap.name,
                    if req.paused { " (paused)" } else { "" }
                );
                self.save_vm_event(&mut st, cur, "SnapshotRestored", msg)?
            };
            Ok((vm, id.clone()))
        })
        .await
    }
}
