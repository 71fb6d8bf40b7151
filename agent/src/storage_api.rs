//! The agent's storage service (`novacron.agent.v1.AgentStorage`, `proto/agent_storage.proto`):
//! adapters from protobuf requests to the [`Manager`]'s snapshot, restore, clone, export and
//! import operations. Errors map to status codes as in [`crate::api`].

use std::sync::Arc;

use novacron_proto::agent as apb;
use novacron_proto::agent::agent_storage_server::AgentStorage;
use tonic::{Request, Response, Status};

use crate::manager::Manager;

/// The storage service.
#[derive(Debug, Clone)]
pub struct StorageApi {
    /// VMs.
    pub manager: Arc<Manager>,
}

#[tonic::async_trait]
impl AgentStorage for StorageApi {
    async fn take_snapshot(
        &self,
        r: Request<apb::TakeSnapshotRequest>,
    ) -> Result<Response<apb::SnapshotInfo>, Status> {
        let r = r.into_inner();
        // Its own task: a caller that goes away must not leave a half-written snapshot.
        let m = Arc::clone(&self.manager);
        let task = tokio::spawn(async move { m.take_snapshot(&r.vm_id, &r.name).await });
        match task.await {
            Ok(res) => Ok(Response::new(res?)),
            Err(e) => Err(Status::internal(format!("snapshot task failed: {e}"))),
        }
    }

    async fn list_snapshots(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::ListSnapshotsResponse>, Status> {
        let snapshots = self.manager.list_snapshots(&r.into_inner().vm_id)?;
        Ok(Response::new(apb::ListSnapshotsResponse { snapshots }))
    }

    async fn delete_snapshot(
        &self,
        r: Request<apb::SnapshotRequest>,
    ) -> Result<Response<apb::DeleteSnapshotResponse>, Status> {
        let r = r.into_inner();
        let existed = self.manager.delete_snapshot(&r.vm_id, &r.name).await?;
        Ok(Response::new(apb::DeleteSnapshotResponse { existed }))
    }

    async fn restore_snapshot(
        &self,
        r: Request<apb::RestoreSnapshotRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        let r = r.into_inner();
        let m = Arc::clone(&self.manager);
        let task =
            tokio::spawn(async move { m.restore_snapshot(&r.vm_id, &r.name, r.paused).await });
        match task.await {
            Ok(res) => Ok(Response::new(res?)),
            Err(e) => Err(Status::internal(format!("restore task failed: {e}"))),
        }
    }

    async fn clone_vm(
        &self,
        r: Request<apb::CloneVmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        let r = r.into_inner();
        let c = r
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        Ok(Response::new(
            self.manager
                .clone_vm(&r.source_vm_id, &r.snapshot, c, r.start)
                .await?,
        ))
    }

    async fn export_snapshot(
        &self,
        r: Request<apb::ExportSnapshotRequest>,
    ) -> Result<Response<apb::BackupInfo>, Status> {
        let r = r.into_inner();
        // Its own task: a caller that goes away must not leave a half-written backup.
        let m = Arc::clone(&self.manager);
        let task = tokio::spawn(async move { m.export_snapshot(&r.vm_id, &r.name, &r.path).await });
        match task.await {
            Ok(res) => Ok(Response::new(res?)),
            Err(e) => Err(Status::internal(format!("export task failed: {e}"))),
        }
    }

    async fn import_snapshot(
        &self,
        r: Request<apb::ImportSnapshotRequest>,
    ) -> Result<Response<apb::ImportSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = Arc::clone(&self.manager);
        let task = tokio::spawn(async move {
            m.import_snapshot(&r.vm_id, &r.vm_name, &r.path, &r.snapshot)
                .await
        });
        match task.await {
            Ok(res) => Ok(Response::new(res?)),
            Err(e) => Err(Status::internal(format!("import task failed: {e}"))),
        }
    }
}
