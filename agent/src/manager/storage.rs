//! Snapshots, restores and clones of the agent's VMs. A snapshot is the directory
//! `<vm-dir>/snapshots/<name>/`: what the VMM's `snapshot` command writes (memory, device
//! state, and `disk-N.img` for every writable disk, captured while the guest is paused) plus
//! `snapshot.pb`, the agent's record (`SnapshotInfo`, with the VM's configuration at that
//! point). It is written under a hidden `.<name>.partial` name and renamed when complete, so
//! a listed snapshot is always whole. A restore starts `novacron-vmm run --restore DIR` with
//! the VM's disks (the VMM writes the captured images back into them first); a clone is a new
//! VM directory whose writable disks are reflinked (or copied) from the source's disks or from
//! a snapshot's images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_vmm_api::protocol::{Request, SnapshotReply};
use prost::Message;

use crate::disks;
use crate::supervise::{self, now_ms, Launch};
use crate::vmm_client;

use super::files::DiskPlan;
use super::{io_err, same_machine, Manager, ManagerError, Meta, Role, VmData, VmHandle};

/// Name of the directory of a VM's snapshots inside its directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The agent's record inside a snapshot directory.
pub(super) const RECORD: &str = "snapshot.pb";
/// How long the VMM may take to write a snapshot (memory and disks).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `n` can name a snapshot (it becomes a directory name).
pub fn valid_snapshot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

pub(super) fn check_name(n: &str) -> Result<(), ManagerError> {
    if valid_snapshot_name(n) {
        Ok(())
    } else {
        Err(ManagerError::InvalidArgument(format!(
            "invalid snapshot name {n:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

/// The file the VMM writes disk `index` of a snapshot to.
pub(super) fn snapshot_disk(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("disk-{index}.img"))
}

/// The agent's record of a snapshot directory (`None`: no complete snapshot there).
pub(super) fn read_record(dir: &Path) -> Result<Option<apb::SnapshotInfo>, ManagerError> {
    let p = dir.join(RECORD);
    match std::fs::read(&p) {
        Ok(b) => apb::SnapshotInfo::decode(b.as_slice())
            .map(Some)
            .map_err(|e| ManagerError::Io {
                path: p.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// Size and allocated bytes of a file.
fn disk_usage(p: &Path) -> Result<(u64, u64), ManagerError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(io_err(p))?;
    Ok((m.len(), m.blocks() * 512))
}

impl Manager {
    fn snapshot_dir(&self, vm_id: &str, name: &str) -> PathBuf {
        self.vm_dir(vm_id).join(SNAPSHOTS_DIR).join(name)
    }

    /// Takes a snapshot of a running VM (see the module documentation). A retry with the
    /// name of a complete snapshot answers with it.
    pub async fn take_snapshot(
        &self,
        id: &str,
        name: &str,
    ) -> Result<apb::SnapshotInfo, ManagerError> {
        check_name(name)?;
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let dir = self.snapshot_dir(id, name);
        if let Some(info) = read_record(&dir)? {
            return Ok(info);
        }
        let (socket, config, live) = {
            let mut d = h.data();
            d.refresh();
            let live = d.pid > 0 && matches!(d.state, apb::VmState::Running | apb::VmState::Paused);
            (d.meta.socket.clone(), d.config.clone(), live)
        };
        if !live {
            return Err(ManagerError::FailedPrecondition(format!(
                "vm {} is not running: a snapshot captures a running guest (clone a stopped \
                 VM's disks instead)",
                config.name
            )));
        }
        let parent = self.vm_dir(id).join(SNAPSHOTS_DIR);
        let tmp = parent.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let res = self.capture(&socket, &config, name, &tmp, &dir).await;
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        res
    }

    async fn capture(
        &self,
        socket: &Path,
        config: &apb::VmConfig,
        name: &str,
        tmp: &Path,
        dir: &Path,
    ) -> Result<apb::SnapshotInfo, ManagerError> {
        let req = Request::Snapshot {
            to: tmp.to_path_buf(),
            diff: false,
        };
        let reply: SnapshotReply = vmm_client::call(socket, &req, SNAPSHOT_TIMEOUT).await?;
        let mut disks = Vec::new();
        for (index, d) in config.disks.iter().enumerate() {
            if d.readonly {
                continue;
            }
            let f = snapshot_disk(tmp, index);
            if !f.is_file() {
                return Err(ManagerError::FailedPrecondition(format!(
                    "the vmm wrote no image of disk {index} into the snapshot ({} missing): it \
                     must capture writable disks (`snapshot` in vmm/API.md)",
                    f.display()
                )));
            }
            let (size, allocated) = disk_usage(&f)?;
            disks.push(apb::SnapshotDisk {
                index: index as u32,
                size,
                allocated,
            });
        }
        let info = apb::SnapshotInfo {
            vm_id: config.id.clone(),
            name: name.to_string(),
            created_at_ms: now_ms(),
            config: Some(config.clone()),
            paused_ms: reply.paused_ms,
            memory_pages: reply.pages,
            memory_bytes: reply.bytes,
            disks,
            path: dir.display().to_string(),
        };
        supervise::write_atomic(&tmp.join(RECORD), &info.encode_to_vec())?;
        std::fs::rename(tmp, dir).map_err(io_err(dir))?;
        tracing::info!(vm = %config.name, snapshot = %name, paused_ms = reply.paused_ms, "snapshot taken");
        Ok(info)
    }

    /// The complete snapshots of a VM, ordered by name.
    pub fn list_snapshots(&self, id: &str) -> Result<Vec<apb::SnapshotInfo>, ManagerError> {
        self.handle(id)?;
        let parent = self.vm_dir(id).join(SNAPSHOTS_DIR);
        let rd = match std::fs::read_dir(&parent) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&parent)(e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(n) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_snapshot_name(&n) {
                continue;
            }
            if let Some(info) = read_record(&e.path())? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a snapshot; returns whether it existed.
    pub async fn delete_snapshot(&self, id: &str, name: &str) -> Result<bool, ManagerError> {
        check_name(name)?;
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let dir = self.snapshot_dir(id, name);
        if !dir.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        tracing::info!(id = %id, snapshot = %name, "snapshot deleted");
        Ok(true)
    }

    /// Puts a VM back at a snapshot: kills its VMM if it runs and starts one that restores
    /// disks, memory and devices from the snapshot (paused if asked).
    pub async fn restore_snapshot(
        &self,
        id: &str,
        name: &str,
        paused: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        check_name(name)?;
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let dir = self.snapshot_dir(id, name);
        let info = read_record(&dir)?
            .ok_or_else(|| ManagerError::NotFound(format!("{id} has no snapshot {name}; vm")))?;
        let (config, role) = {
            let d = h.data();
            (d.config.clone(), d.meta.role)
        };
        if role == Role::Incoming {
            return Err(ManagerError::FailedPrecondition(format!(
                "vm {} is an unfinished incoming migration",
                config.name
            )));
        }
        let then = info.config.unwrap_or_default();
        if then.vcpus != config.vcpus
            || then.memory_mib != config.memory_mib
            || then.disks.len() != config.disks.len()
        {
            return Err(ManagerError::FailedPrecondition(format!(
                "snapshot {name} was taken with {} vCPUs, {} MiB and {} disks; vm {} now has {}, \
                 {} MiB and {}",
                then.vcpus,
                then.memory_mib,
                then.disks.len(),
                config.name,
                config.vcpus,
                config.memory_mib,
                config.disks.len()
            )));
        }
        self.stop_locked(&h, Duration::ZERO, true).await?;
        let (vm_dir, socket) = {
            let d = h.data();
            (d.dir.clone(), d.meta.socket.clone())
        };
        let mut m = self.machine_options(&config, &socket, None, "", None)?;
        let boot_argv = m.args();
        m.kernel = None;
        m.initrd = None;
        m.cmdline.clear();
        m.restore = Some(dir);
        m.paused = paused;
        let launch = Launch {
            vmm: self.cfg.vmm_binary.clone(),
            argv: m.args(),
            boot_argv,
            cgroup: None,
        };
        self.launch(&h, &vm_dir, &socket, &launch).await?;
        let st = self.wait_api(&h, &vm_dir, &socket).await?;
        tracing::info!(vm = %config.name, snapshot = %name, paused, "restored");
        Ok(st)
    }

    /// Creates the VM `c` from the disks of `source` (stopped) or of its snapshot `snapshot`
    /// (see the module documentation); idempotent for the same id and machine.
    pub async fn clone_vm(
        &self,
        source: &str,
        snapshot: &str,
        c: apb::VmConfig,
        start: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        self.validate(&c, true)?;
        if !snapshot.is_empty() {
            check_name(snapshot)?;
        }
        let h = {
            let _g = self.create.lock().await;
            let existing = self.map().get(&c.id).cloned();
            if let Some(h) = existing {
                if !same_machine(&h.data().config, &c) {
                    return Err(ManagerError::AlreadyExists(format!(
                        "vm {} exists here with a different configuration",
                        c.id
                    )));
                }
                h
            } else {
                let src = self.handle(source)?;
                let files = self.clone_sources(&src, snapshot)?;
                if files.len() != c.disks.len() {
                    return Err(ManagerError::InvalidArgument(format!(
                        "the clone has {} disks, its source {}",
                        c.disks.len(),
                        files.len()
                    )));
                }
                let dir = self.vm_dir(&c.id);
                let res = self.clone_into(&c, &dir, &files);
                if let Err(e) = res {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
                let meta = Meta {
                    socket: self.socket_path(&c.id),
                    role: Role::Normal,
                    created_at_ms: now_ms(),
                    ..Default::default()
                };
                if let Err(e) = self.materialise(&c, &meta, DiskPlan::Fresh) {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
                let h = VmHandle::new(VmData::created(c.clone(), dir, meta));
                self.map().insert(c.id.clone(), std::sync::Arc::clone(&h));
                tracing::info!(vm = %c.name, id = %c.id, source = %source, snapshot = %snapshot, "cloned");
                h
            }
        };
        if start {
            self.start(&c.id).await
        } else {
            let mut d = h.data();
            d.refresh();
            Ok(d.status())
        }
    }

    /// Per disk of the source: the file a clone copies (`None` for a read-only disk, which
    /// the clone uses in place like its source).
    fn clone_sources(
        &self,
        src: &VmHandle,
        snapshot: &str,
    ) -> Result<Vec<Option<PathBuf>>, ManagerError> {
        let mut d = src.data();
        d.refresh();
        let (dir, config) = if snapshot.is_empty() {
            if d.running() {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is running: stop it, or clone one of its snapshots",
                    d.config.name
                )));
            }
            (None, d.config.clone())
        } else {
            let sdir = d.dir.join(SNAPSHOTS_DIR).join(snapshot);
            let info = read_record(&sdir)?.ok_or_else(|| {
                ManagerError::NotFound(format!("{} has no snapshot {snapshot}; vm", d.config.id))
            })?;
            (Some(sdir), info.config.unwrap_or_default())
        };
        let mut out = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            out.push((!disk.readonly).then(|| match &dir {
                Some(s) => snapshot_disk(s, i),
                None => d.dir.join(format!("disk{i}.img")),
            }));
        }
        Ok(out)
    }

    /// Reflinks (or copies) each writable source disk into the new VM's directory.
    fn clone_into(
        &self,
        c: &apb::VmConfig,
        dir: &Path,
        files: &[Option<PathBuf>],
    ) -> Result<(), ManagerError> {
        super::files::private_dir(dir)?;
        for (i, f) in files.iter().enumerate() {
            let Some(src) = f else { continue };
            if !src.is_file() {
                return Err(ManagerError::FailedPrecondition(format!(
                    "disk {i} of the source ({}) does not exist: was the source ever started?",
                    src.display()
                )));
            }
            let dst = dir.join(format!("disk{i}.img"));
            let tmp = dst.with_extension("partial");
            disks::clone_or_copy(src, &tmp, true).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        }
        let _ = c;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_snapshot_name;

    #[test]
    fn snapshot_names() {
        for ok in ["s1", "before-upgrade", "a.b_c"] {
            assert!(valid_snapshot_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", &"x".repeat(65), "sp ace"] {
            assert!(!valid_snapshot_name(bad), "{bad}");
        }
    }
}
