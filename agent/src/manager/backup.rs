//! Backups of snapshots: a snapshot directory exported as one compressed file, and a backup
//! file imported as a new, stopped VM whose snapshot it becomes. The file format is the
//! VMM's (`novacron-vmm snapshot-export|snapshot-import`, `vmm/src/backup.rs`); the agent runs
//! those commands and reads what they print. Because `snapshot.pb` (the VM's configuration
//! when the snapshot was taken) is a file of the snapshot directory, it travels in the backup
//! and the import rebuilds the VM from it: same machine and disks, a new id, name and MACs.

use std::path::{Path, PathBuf};

use novacron_proto::agent as apb;
use prost::Message;

use crate::disks;
use crate::supervise::{self, now_ms};

use super::files::DiskPlan;
use super::storage::{check_name, read_record, snapshot_disk, RECORD};
use super::{io_err, valid_id, Manager, ManagerError, Meta, Role, VmData, VmHandle};

/// Directory under `<data-dir>` where a backup is unpacked before it becomes a VM's snapshot.
const IMPORTS_DIR: &str = "imports";

/// What `novacron-vmm snapshot-export|snapshot-import` print on stdout (one JSON object).
#[derive(Debug, serde::Deserialize)]
struct Moved {
    files: u64,
    data_bytes: u64,
    backup_bytes: u64,
}

fn absolute(path: &str, what: &str) -> Result<PathBuf, ManagerError> {
    let p = PathBuf::from(path);
    if path.is_empty() || !p.is_absolute() {
        return Err(ManagerError::InvalidArgument(format!(
            "the {what} must be an absolute path on the host, not {path:?}"
        )));
    }
    Ok(p)
}

impl Manager {
    /// Runs `novacron-vmm VERB --from FROM --to TO` and reads what it moved.
    async fn vmm_backup(
        &self,
        verb: &str,
        from: &Path,
        to: &Path,
        backup: &Path,
    ) -> Result<apb::BackupInfo, ManagerError> {
        let out = tokio::process::Command::new(&self.cfg.vmm_binary)
            .arg(verb)
            .arg("--from")
            .arg(from)
            .arg("--to")
            .arg(to)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(io_err(&self.cfg.vmm_binary))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(ManagerError::FailedPrecondition(format!(
                "novacron-vmm {verb} failed ({}): {line}",
                out.status
            )));
        }
        let m: Moved = serde_json::from_slice(&out.stdout).map_err(|e| {
            ManagerError::FailedPrecondition(format!(
                "novacron-vmm {verb} printed no summary ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })?;
        Ok(apb::BackupInfo {
            path: backup.display().to_string(),
            files: m.files,
            data_bytes: m.data_bytes,
            backup_bytes: m.backup_bytes,
        })
    }

    /// Writes snapshot `name` of VM `id` as the backup file `path` (absolute, new).
    pub async fn export_snapshot(
        &self,
        id: &str,
        name: &str,
        path: &str,
    ) -> Result<apb::BackupInfo, ManagerError> {
        check_name(name)?;
        let to = absolute(path, "backup file")?;
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let dir = self.vm_dir(id).join(super::SNAPSHOTS_DIR).join(name);
        if read_record(&dir)?.is_none() {
            return Err(ManagerError::NotFound(format!(
                "{id} has no snapshot {name}; vm"
            )));
        }
        if to.symlink_metadata().is_ok() {
            return Err(ManagerError::AlreadyExists(format!(
                "{} exists: a backup is written to a new file",
                to.display()
            )));
        }
        let info = self.vmm_backup("snapshot-export", &dir, &to, &to).await?;
        tracing::info!(id = %id, snapshot = %name, to = %to.display(), bytes = info.backup_bytes, "snapshot exported");
        Ok(info)
    }

    /// Creates the stopped VM `vm_id` named `vm_name` from the backup file `path`, whose
    /// snapshot it gets as `snapshot` (empty: the exported name). Idempotent for the id.
    pub async fn import_snapshot(
        &self,
        vm_id: &str,
        vm_name: &str,
        path: &str,
        snapshot: &str,
    ) -> Result<apb::ImportSnapshotResponse, ManagerError> {
        if !valid_id(vm_id) {
            return Err(ManagerError::InvalidArgument(format!(
                "invalid vm id {vm_id:?}"
            )));
        }
        if !snapshot.is_empty() {
            check_name(snapshot)?;
        }
        let from = absolute(path, "backup file")?;
        let _g = self.create.lock().await;
        let existing = self.map().get(vm_id).cloned();
        if let Some(h) = existing {
            return self.imported(&h, snapshot, &from);
        }
        if !from.is_file() {
            return Err(ManagerError::NotFound(format!(
                "{}: no such backup file; vm",
                from.display()
            )));
        }
        let staging = self.cfg.data_dir.join(IMPORTS_DIR).join(vm_id);
        let _ = std::fs::remove_dir_all(&staging);
        let res = self
            .import_staged(vm_id, vm_name, &from, snapshot, &staging)
            .await;
        let _ = std::fs::remove_dir_all(&staging);
        if res.is_err() {
            let _ = std::fs::remove_dir_all(self.vm_dir(vm_id));
        }
        res
    }

    /// The answer to a retried import: the VM and its imported snapshot.
    fn imported(
        &self,
        h: &VmHandle,
        snapshot: &str,
        from: &Path,
    ) -> Result<apb::ImportSnapshotResponse, ManagerError> {
        let (id, status) = {
            let mut d = h.data();
            d.refresh();
            (d.config.id.clone(), d.status())
        };
        let snaps = self.list_snapshots(&id)?;
        let snap = snaps
            .into_iter()
            .find(|s| snapshot.is_empty() || s.name == snapshot)
            .ok_or_else(|| {
                ManagerError::AlreadyExists(format!(
                    "vm {id} exists here without the imported snapshot"
                ))
            })?;
        Ok(apb::ImportSnapshotResponse {
            status: Some(status),
            snapshot: Some(snap),
            backup: Some(apb::BackupInfo {
                path: from.display().to_string(),
                ..Default::default()
            }),
        })
    }

    async fn import_staged(
        &self,
        vm_id: &str,
        vm_name: &str,
        from: &Path,
        snapshot: &str,
        staging: &Path,
    ) -> Result<apb::ImportSnapshotResponse, ManagerError> {
        let backup = self
            .vmm_backup("snapshot-import", from, staging, from)
            .await?;
        let mut info = read_record(staging)?.ok_or_else(|| {
            ManagerError::FailedPrecondition(format!(
                "{} holds no {RECORD}: it was not exported by a NovaCron agent",
                from.display()
            ))
        })?;
        let mut c = info.config.clone().unwrap_or_default();
        c.id = vm_id.to_string();
        c.name = vm_name.to_string();
        for (i, n) in c.nics.iter_mut().enumerate() {
            n.mac = novacron_proto::mac::for_vm(vm_id, i);
        }
        self.validate(&c, false)?;
        let name = if snapshot.is_empty() {
            info.name.clone()
        } else {
            snapshot.to_string()
        };
        check_name(&name)?;
        let dir = self.vm_dir(vm_id);
        super::files::private_dir(&dir)?;
        for (i, d) in c.disks.iter().enumerate() {
            if d.readonly {
                if let Err(e) = disks::image(&self.images_dir(), i, &d.image) {
                    return Err(ManagerError::FailedPrecondition(format!(
                        "read-only disk {i} of the backup's vm: {e}; put the image there first"
                    )));
                }
                continue;
            }
            if d.shared {
                return Err(ManagerError::FailedPrecondition(format!(
                    "disk {i} of the backup's vm is a writable shared disk ({}): an import would \
                     write another VM's disk; import is for VMs whose writable disks are their own",
                    d.image
                )));
            }
            let src = snapshot_disk(staging, i);
            if !src.is_file() {
                return Err(ManagerError::FailedPrecondition(format!(
                    "the backup has no image of disk {i} ({} missing)",
                    src.display()
                )));
            }
            let dst = dir.join(format!("disk{i}.img"));
            let tmp = dst.with_extension("partial");
            disks::clone_or_copy(&src, &tmp, true).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        }
        let snaps = dir.join(super::SNAPSHOTS_DIR);
        std::fs::create_dir_all(&snaps).map_err(io_err(&snaps))?;
        let sdir = snaps.join(&name);
        info.vm_id = vm_id.to_string();
        info.name = name.clone();
        info.config = Some(c.clone());
        info.path = sdir.display().to_string();
        supervise::write_atomic(&staging.join(RECORD), &info.encode_to_vec())?;
        std::fs::rename(staging, &sdir).map_err(io_err(&sdir))?;
        let meta = Meta {
            socket: self.socket_path(vm_id),
            role: Role::Normal,
            created_at_ms: now_ms(),
            ..Default::default()
        };
        self.materialise(&c, &meta, DiskPlan::Fresh)?;
        let h = VmHandle::new(VmData::created(c.clone(), dir, meta));
        let status = {
            let mut d = h.data();
            d.refresh();
            d.status()
        };
        self.map().insert(vm_id.to_string(), h);
        tracing::info!(vm = %vm_name, id = %vm_id, snapshot = %name, from = %from.display(), "backup imported");
        Ok(apb::ImportSnapshotResponse {
            status: Some(status),
            snapshot: Some(info),
            backup: Some(backup),
        })
    }
}
