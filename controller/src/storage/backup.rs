//! Backups: a snapshot exported as one compressed file on its host, and a backup file
//! imported as a new, stopped VM (by this controller or another one) whose snapshot it
//! becomes. The agent of the host does the work (`AgentStorage.ExportSnapshot` and
//! `ImportSnapshot`); the new VM's spec is rebuilt from the configuration the backup carries.

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use prost::Message;

use super::snapshots::check_idle;
use super::{check_snapshot_name, snap_key, storage_err, STORAGE_CALL_TIMEOUT};
use crate::agent_client::request;
use crate::controller::{validate_spec, Controller, ControllerError, Origin, Result};
use crate::state::{new_vm, Needs};
use crate::store::Op;

fn check_path(p: &str) -> Result<()> {
    if p.is_empty() || !p.starts_with('/') {
        return Err(ControllerError::InvalidArgument(format!(
            "the backup file must be an absolute path on the host, not {p:?}"
        )));
    }
    Ok(())
}

/// The spec of a VM imported on `host` from an agent configuration (the inverse of
/// `state::agent_config`: every disk, the image disk included, becomes a `DiskSpec`), pinned to
/// that host (its disks are there).
pub(crate) fn spec_from_config(c: &apb::VmConfig, host: &str) -> pb::VmSpec {
    pb::VmSpec {
        name: c.name.clone(),
        vcpus: i32::try_from(c.vcpus).unwrap_or(i32::MAX),
        memory_mib: i64::try_from(c.memory_mib).unwrap_or(i64::MAX),
        kernel: c.kernel.clone(),
        initrd: c.initrd.clone(),
        image: String::new(),
        cmdline: c.cmdline.clone(),
        disks: c
            .disks
            .iter()
            .map(|d| pb::DiskSpec {
                image: d.image.clone(),
                size_mib: i64::try_from(d.size_mib).unwrap_or(i64::MAX),
                readonly: d.readonly,
                clone: d.clone,
                shared: d.shared,
            })
            .collect(),
        networks: c
            .nics
            .iter()
            .map(|n| pb::NetworkSpec {
                bridge: n.bridge.clone(),
                mac: n.mac.clone(),
            })
            .collect(),
        labels: c.labels.clone(),
        placement: Some(pb::Placement {
            host: host.to_string(),
            ..Default::default()
        }),
        restart_policy: 0,
    }
}

impl Controller {
    /// Writes a snapshot as a backup file on its host.
    pub async fn export_snapshot(
        &self,
        req: pb::ExportSnapshotRequest,
    ) -> Result<pb::ExportSnapshotResponse> {
        check_snapshot_name(&req.snapshot)?;
        check_path(&req.path)?;
        self.idempotent(&req.request_id, "ExportSnapshot", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = self.state().find_vm(&id)?.clone();
            check_idle(&vm)?;
            let snap = self.snapshot_record(&vm, &req.snapshot)?;
            if vm.host != snap.host {
                return Err(ControllerError::FailedPrecondition(format!(
                    "snapshot {} of vm {} is on host {}, which the vm has left: its files went \
                     with the vm's old directory",
                    snap.name, vm.name, snap.host
                )));
            }
            let mut c = self.storage_client(&snap.host)?;
            let r = apb::ExportSnapshotRequest {
                request_id: String::new(),
                vm_id: id.clone(),
                name: snap.name.clone(),
                path: req.path.clone(),
            };
            let backup = c
                .export_snapshot(request(r, STORAGE_CALL_TIMEOUT))
                .await
                .map_err(storage_err(&snap.host))?
                .into_inner();
            self.events.emit_with(
                &[],
                "SnapshotExported",
                Some((&vm.name, &id)),
                &snap.host,
                format!(
                    "snapshot {} exported to {} ({} bytes of data, {} bytes compressed)",
                    snap.name, backup.path, backup.data_bytes, backup.backup_bytes
                ),
            )?;
            Ok((
                pb::ExportSnapshotResponse {
                    vm: vm.name.clone(),
                    snapshot: snap.name,
                    host: snap.host,
                    backup: Some(backup),
                },
                id.clone(),
            ))
        })
        .await
    }

    /// Creates a stopped VM on a host from a backup file there (see the module
    /// documentation), in `req.project` (within its quota), for user `by`.
    pub async fn import_snapshot(
        &self,
        req: pb::ImportSnapshotRequest,
        by: &str,
    ) -> Result<pb::ImportSnapshotResponse> {
        if !req.snapshot.is_empty() {
            check_snapshot_name(&req.snapshot)?;
        }
        check_path(&req.path)?;
        if req.host.is_empty() {
            return Err(ControllerError::InvalidArgument(
                "the host holding the backup file is required".into(),
            ));
        }
        self.idempotent(&req.request_id, "ImportSnapshot", async {
            if self.state().names.contains_key(&req.name) {
                return Err(ControllerError::AlreadyExists(format!(
                    "vm {} already exists",
                    req.name
                )));
            }
            self.state().host(&req.host)?;
            let id = uuid::Uuid::new_v4().to_string();
            let _guard = self.lock_key(&id).await;
            let mut c = self.storage_client(&req.host)?;
            let r = apb::ImportSnapshotRequest {
                request_id: String::new(),
                vm_id: id.clone(),
                vm_name: req.name.clone(),
                path: req.path.clone(),
                snapshot: req.snapshot.clone(),
            };
            let resp = c
                .import_snapshot(request(r, STORAGE_CALL_TIMEOUT))
                .await
                .map_err(storage_err(&req.host))?
                .into_inner();
            let origin = Origin {
                project: crate::iam::requested_project(&req.project).to_string(),
                created_by: by.to_string(),
            };
            let res = self.record_import(&req, &id, resp, &origin);
            if res.is_err() {
                let _ = self.agent_delete(&req.host, &id).await;
            }
            res.map(|r| (r, id.clone()))
        })
        .await
    }

    /// Stores the VM and snapshot an agent imported (one transaction with the event).
    fn record_import(
        &self,
        req: &pb::ImportSnapshotRequest,
        id: &str,
        resp: apb::ImportSnapshotResponse,
        origin: &Origin,
    ) -> Result<pb::ImportSnapshotResponse> {
        let info = resp.snapshot.unwrap_or_default();
        let config = info.config.clone().unwrap_or_default();
        let spec = spec_from_config(&config, &req.host);
        validate_spec(&spec)?;
        let host = req.host.clone();
        let mut st = self.state();
        if st.names.contains_key(&spec.name) {
            return Err(ControllerError::AlreadyExists(format!(
                "vm {} already exists",
                spec.name
            )));
        }
        self.check_quota(&st, &origin.project, &spec)?;
        let needs = Needs::of(&spec);
        st.sched.claim(&host, &needs.request(id, &[]))?;
        let mut vm = new_vm(
            id,
            spec.clone(),
            &host,
            pb::DesiredState::Stopped,
            pb::VmPhase::Stopped,
        );
        origin.stamp(&mut vm);
        if let Some(s) = resp.status {
            Self::apply_status(&mut vm, s);
        }
        let snap = pb::Snapshot {
            name: info.name.clone(),
            vm: vm.name.clone(),
            vm_id: id.to_string(),
            host: host.clone(),
            created_at_ms: info.created_at_ms,
            template: false,
            spec: Some(spec),
            paused_ms: info.paused_ms,
            memory_bytes: info.memory_bytes,
            disks: info.disks,
            project: origin.project.clone(),
            created_by: origin.created_by.clone(),
        };
        let backup = resp.backup.unwrap_or_default();
        let key = snap_key(id, &snap.name);
        let msg = format!(
            "imported from {} on {host} with snapshot {} ({} bytes of data)",
            backup.path, snap.name, backup.data_bytes
        );
        if let Err(e) = self.events.emit_with(
            &[Op::PutVm(&vm), Op::PutRecord(&key, snap.encode_to_vec())],
            "SnapshotImported",
            Some((&vm.name, id)),
            &host,
            msg,
        ) {
            st.sched.release(&host, id);
            return Err(e.into());
        }
        st.names.insert(vm.name.clone(), id.to_string());
        st.vms.insert(id.to_string(), vm.clone());
        st.refresh_host_counts();
        Ok(pb::ImportSnapshotResponse {
            vm: Some(vm),
            snapshot: Some(snap),
            backup: Some(backup),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::agent_config;

    #[test]
    fn an_imported_spec_gives_back_the_agent_config() {
        let c = apb::VmConfig {
            id: "new".into(),
            name: "copy".into(),
            vcpus: 2,
            memory_mib: 64,
            kernel: "/k".into(),
            cmdline: "workload=counter".into(),
            disks: vec![
                apb::Disk {
                    image: "/img".into(),
                    clone: true,
                    ..Default::default()
                },
                apb::Disk {
                    size_mib: 8,
                    ..Default::default()
                },
            ],
            nics: vec![apb::Nic {
                bridge: "br0".into(),
                mac: "52:54:00:01:02:03".into(),
            }],
            ..Default::default()
        };
        let spec = spec_from_config(&c, "h2");
        assert!(validate_spec(&spec).is_ok());
        assert_eq!(spec.placement.as_ref().map(|p| p.host.as_str()), Some("h2"));
        let vm = pb::Vm {
            id: "new".into(),
            name: "copy".into(),
            spec: Some(spec),
            ..Default::default()
        };
        assert_eq!(agent_config(&vm), c);
    }
}
