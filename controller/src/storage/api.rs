//! The `StorageService` of `proto/storage.proto`: thin adapters from requests to the
//! controller's snapshot, clone, template and backup operations.

use std::sync::Arc;

use novacron_proto::controller as pb;
use novacron_proto::controller::storage_service_server::StorageService;
use tonic::{Request, Response, Status};

use crate::controller::Controller;

/// The storage service.
#[derive(Debug, Clone)]
pub struct StorageApi(pub Arc<Controller>);

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn create_snapshot(
        &self,
        r: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        Ok(Response::new(self.0.create_snapshot(r.into_inner()).await?))
    }

    async fn get_snapshot(
        &self,
        r: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        Ok(Response::new(self.0.get_snapshot(&r.into_inner())?))
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(self.0.list_snapshots(&r.into_inner())?))
    }

    async fn delete_snapshot(
        &self,
        r: Request<pb::SnapshotActionRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        Ok(Response::new(self.0.delete_snapshot(r.into_inner()).await?))
    }

    async fn restore_snapshot(
        &self,
        r: Request<pb::RestoreSnapshotRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(
            self.0.restore_snapshot(r.into_inner()).await?,
        ))
    }

    async fn clone_vm(&self, r: Request<pb::CloneVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(self.0.clone_vm(r.into_inner()).await?))
    }

    async fn set_template(
        &self,
        r: Request<pb::SetTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        Ok(Response::new(self.0.set_template(r.into_inner()).await?))
    }

    async fn list_templates(
        &self,
        _r: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        Ok(Response::new(self.0.list_templates()?))
    }

    async fn export_snapshot(
        &self,
        r: Request<pb::ExportSnapshotRequest>,
    ) -> Result<Response<pb::ExportSnapshotResponse>, Status> {
        Ok(Response::new(self.0.export_snapshot(r.into_inner()).await?))
    }

    async fn import_snapshot(
        &self,
        r: Request<pb::ImportSnapshotRequest>,
    ) -> Result<Response<pb::ImportSnapshotResponse>, Status> {
        Ok(Response::new(self.0.import_snapshot(r.into_inner()).await?))
    }
}
