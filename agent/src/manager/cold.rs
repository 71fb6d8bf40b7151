//! Cold migration on this host: exporting the disks of a VM that is not running (source),
//! and creating a VM whose disks are pulled from a peer agent (destination). The copy itself
//! (sparse extents, zstd, crc32) is [`crate::disk_copy`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::agent::agent_peer_client::AgentPeerClient;
use tokio::sync::mpsc;
use tonic::Status;

use crate::disk_copy::{self, CopyError};
use crate::disks;
use crate::supervise::now_ms;

use super::files::DiskPlan;
use super::{io_err, same_machine, Manager, ManagerError, Meta, Role, VmData, VmHandle};

/// How long the destination waits for the next message of a disk stream.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the source agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The messages of one exported disk.
pub type ExportStream =
    tokio_stream::wrappers::ReceiverStream<Result<apb::DiskExportMessage, Status>>;

impl Manager {
    /// Cold migration source: streams disk `index` of a VM that is not running. The VM's
    /// operation lock is held until the stream ends, so it cannot be started meanwhile.
    pub async fn export_disk(&self, id: &str, index: u32) -> Result<ExportStream, ManagerError> {
        let h = self.handle(id)?;
        let guard = Arc::clone(&h.op).lock_owned().await;
        let path = {
            let mut d = h.data();
            d.refresh();
            if d.running() {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is running: its disks are copied only while it is stopped",
                    d.config.name
                )));
            }
            let i = index as usize;
            let Some(disk) = d.config.disks.get(i) else {
                return Err(ManagerError::InvalidArgument(format!(
                    "vm {} has no disk {index} ({} disks)",
                    d.config.name,
                    d.config.disks.len()
                )));
            };
            if !disks::moves(disk) {
                return Err(ManagerError::FailedPrecondition(format!(
                    "disk {index} of vm {} is {} and used in place: it is never copied",
                    d.config.name,
                    if disk.shared { "shared" } else { "read-only" }
                )));
            }
            disks::path_of(&d.dir, &self.images_dir(), i, disk)?
        };
        let (tx, rx) = mpsc::channel(disk_copy::QUEUE);
        let vm = id.to_string();
        tokio::task::spawn_blocking(move || {
            let _op = guard;
            match disk_copy::export(&path, &tx) {
                Ok(t) => tracing::info!(
                    vm,
                    index,
                    chunks = t.chunks,
                    bytes = t.data_bytes,
                    "disk exported"
                ),
                Err(CopyError::Cancelled) => {
                    tracing::warn!(vm, index, "disk export: the receiver went away")
                }
                Err(e) => {
                    tracing::warn!(vm, index, "disk export: {e}");
                    let _ = tx.blocking_send(Err(e.into()));
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Cold migration destination: creates VM `c` (not started) with the disks that move
    /// pulled from `src`. They are received into a staging directory first; the VM exists
    /// here only once every disk arrived complete and verified. Idempotent like a create.
    pub async fn create_copied(
        &self,
        c: apb::VmConfig,
        src: &apb::DiskSource,
    ) -> Result<apb::VmStatus, ManagerError> {
        self.validate(&c, true)?;
        if let Some(st) = self.existing(&c)? {
            return Ok(st);
        }
        let staging = self.cfg.data_dir.join("staging").join(format!(
            "{}-{}",
            c.id,
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let res = self.create_from_staging(&c, src, &staging).await;
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!("removing {}: {e}", staging.display());
        }
        res
    }

    /// The status of VM `c` when it exists here with the same machine; ALREADY_EXISTS when
    /// its id is used by another.
    fn existing(&self, c: &apb::VmConfig) -> Result<Option<apb::VmStatus>, ManagerError> {
        let Some(h) = self.map().get(&c.id).cloned() else {
            return Ok(None);
        };
        let mut d = h.data();
        if !same_machine(&d.config, c) {
            return Err(ManagerError::AlreadyExists(format!(
                "vm {} exists here with a different configuration",
                c.id
            )));
        }
        d.refresh();
        Ok(Some(d.status()))
    }

    async fn create_from_staging(
        &self,
        c: &apb::VmConfig,
        src: &apb::DiskSource,
        staging: &std::path::Path,
    ) -> Result<apb::VmStatus, ManagerError> {
        let copy_err = |index: usize| {
            let vm = c.name.clone();
            move |source: CopyError| ManagerError::Copy { vm, index, source }
        };
        let mut staged: Vec<(usize, PathBuf)> = Vec::new();
        for (index, d) in c.disks.iter().enumerate() {
            if !disks::moves(d) {
                continue;
            }
            let file = staging.join(format!("disk{index}.img"));
            let r = self.pull_disk(src, index, &file).await;
            let r = r.map_err(copy_err(index))?;
            tracing::info!(
                vm = %c.name,
                index,
                size = r.size_bytes,
                bytes = r.trailer.data_bytes,
                chunks = r.trailer.chunks,
                "disk received and verified"
            );
            staged.push((index, file));
        }
        let _g = self.create.lock().await;
        if let Some(st) = self.existing(c)? {
            return Ok(st);
        }
        let meta = Meta {
            socket: self.socket_path(&c.id),
            role: Role::Normal,
            created_at_ms: now_ms(),
            ..Default::default()
        };
        if let Err(e) = self.materialise(c, &meta, DiskPlan::Staged(&staged)) {
            let _ = std::fs::remove_dir_all(self.vm_dir(&c.id));
            return Err(e);
        }
        let mut data = VmData::created(c.clone(), self.vm_dir(&c.id), meta);
        data.refresh();
        let status = data.status();
        self.map().insert(c.id.clone(), VmHandle::new(data));
        tracing::info!(vm = %c.name, id = %c.id, from = %src.agent_address, "created from the source's disks");
        Ok(status)
    }

    /// Pulls disk `index` of the source's VM into the new file `dst`.
    async fn pull_disk(
        &self,
        src: &apb::DiskSource,
        index: usize,
        dst: &std::path::Path,
    ) -> Result<disk_copy::Imported, CopyError> {
        let peer = |message: String| CopyError::Peer {
            addr: src.agent_address.clone(),
            message,
        };
        let scheme = if self.cfg.peer_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = format!("{scheme}://{}", src.agent_address);
        let mut ep = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| peer(format!("bad address: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.cfg.peer_tls {
            // The source must hold the certificate of the host the controller named.
            ep = ep
                .tls_config(novacron_security::tls::mutual_client(tls, &src.host_name))
                .map_err(|e| peer(format!("tls: {e}")))?;
        }
        let ch = ep.connect().await.map_err(|e| peer(e.to_string()))?;
        let mut client = AgentPeerClient::new(ch);
        let req = apb::ExportDiskRequest {
            vm_id: src.vm_id.clone(),
            index: index as u32,
        };
        let mut stream = client
            .export_disk(req)
            .await
            .map_err(|s| peer(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        disk_copy::import(&mut stream, dst, IDLE_TIMEOUT).await
    }
}
