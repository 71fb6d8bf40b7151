//! The agent's gRPC service (`novacron.agent.v1.Agent`): adapters from protobuf requests to
//! [`Manager`] operations and from [`ManagerError`] to gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::agent::agent_peer_server::AgentPeer;
use novacron_proto::agent::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::manager::{ExportStream, Manager, ManagerError};

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Self {
        let msg = e.to_string();
        match e {
            ManagerError::InvalidArgument(_)
            | ManagerError::Disk(crate::disks::DiskError::Confined(_)) => {
                Status::invalid_argument(msg)
            }
            ManagerError::NotFound(_) => Status::not_found(msg),
            ManagerError::AlreadyExists(_) => Status::already_exists(msg),
            ManagerError::FailedPrecondition(_)
            | ManagerError::Disk(_)
            | ManagerError::Cgroup { .. } => Status::failed_precondition(msg),
            ManagerError::Unavailable(_) | ManagerError::Vmm(_) => Status::unavailable(msg),
            ManagerError::Aborted(_) | ManagerError::Copy { .. } => Status::aborted(msg),
            ManagerError::Net(_) | ManagerError::Supervise(_) | ManagerError::Io { .. } => {
                Status::internal(msg)
            }
        }
    }
}

/// Host inventory the API reports.
#[derive(Debug, Clone, Default)]
pub struct HostInventory {
    /// What `GetHostInfo` answers.
    pub info: apb::HostInfo,
}

/// The agent service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// VMs.
    pub manager: Arc<Manager>,
    /// Inventory.
    pub host: Arc<HostInventory>,
}

const MAX_PAGE: usize = 1000;

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn get_host_info(
        &self,
        _r: Request<apb::GetHostInfoRequest>,
    ) -> Result<Response<apb::HostInfo>, Status> {
        Ok(Response::new(self.host.info.clone()))
    }

    async fn create_vm(
        &self,
        r: Request<apb::CreateVmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        let r = r.into_inner();
        let c = r
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let Some(src) = r.copy_disks_from else {
            return Ok(Response::new(self.manager.create(c, r.start).await?));
        };
        // Its own task: a caller that goes away must not cut a disk copy short half-way
        // (the copy cleans up after itself whatever happens).
        let manager = Arc::clone(&self.manager);
        let task = tokio::spawn(async move {
            let id = c.id.clone();
            let st = manager.create_copied(c, &src).await?;
            if r.start {
                manager.start(&id).await
            } else {
                Ok(st)
            }
        });
        match task.await {
            Ok(res) => Ok(Response::new(res?)),
            Err(e) => Err(Status::internal(format!("create task failed: {e}"))),
        }
    }

    async fn start_vm(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Ok(Response::new(
            self.manager.start(&r.into_inner().vm_id).await?,
        ))
    }

    async fn stop_vm(
        &self,
        r: Request<apb::StopVmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        let r = r.into_inner();
        let t = (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms as u64));
        Ok(Response::new(
            self.manager.stop(&r.vm_id, t, r.force).await?,
        ))
    }

    async fn reboot_vm(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Ok(Response::new(
            self.manager.reboot(&r.into_inner().vm_id).await?,
        ))
    }

    async fn delete_vm(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::DeleteVmResponse>, Status> {
        let id = r.into_inner().vm_id;
        let existed = self.manager.delete(&id).await?;
        Ok(Response::new(apb::DeleteVmResponse { vm_id: id, existed }))
    }

    async fn get_vm(&self, r: Request<apb::VmRequest>) -> Result<Response<apb::VmStatus>, Status> {
        Ok(Response::new(
            self.manager.get(&r.into_inner().vm_id).await?,
        ))
    }

    async fn list_vms(
        &self,
        r: Request<apb::ListVmsRequest>,
    ) -> Result<Response<apb::ListVmsResponse>, Status> {
        let r = r.into_inner();
        let size = if r.page_size == 0 {
            MAX_PAGE
        } else {
            (r.page_size as usize).min(MAX_PAGE)
        };
        let all = self.manager.list();
        let mut vms: Vec<apb::VmStatus> = all
            .into_iter()
            .filter(|v| r.page_token.is_empty() || v.vm_id > r.page_token)
            .take(size + 1)
            .collect();
        let next = if vms.len() > size {
            vms.truncate(size);
            vms.last().map(|v| v.vm_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(apb::ListVmsResponse {
            vms,
            next_page_token: next,
        }))
    }

    async fn prepare_incoming(
        &self,
        r: Request<apb::PrepareIncomingRequest>,
    ) -> Result<Response<apb::PrepareIncomingResponse>, Status> {
        let r = r.into_inner();
        let c = r
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let (address, status) = self
            .manager
            .prepare_incoming(
                c,
                &r.migration_id,
                r.incoming_timeout_s,
                &r.disk_sizes,
                r.tls.as_ref(),
            )
            .await?;
        Ok(Response::new(apb::PrepareIncomingResponse {
            address,
            status: Some(status),
        }))
    }

    async fn abort_incoming(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Ok(Response::new(
            self.manager.abort_incoming(&r.into_inner().vm_id).await?,
        ))
    }

    async fn migrate_out(
        &self,
        r: Request<apb::MigrateOutRequest>,
    ) -> Result<Response<apb::MigrateOutResponse>, Status> {
        let r = r.into_inner();
        let o = r.options.unwrap_or_default();
        // Runs in its own task: a caller that goes away (controller killed, connection lost)
        // must not cut the agent's side of the migration short.
        let manager = Arc::clone(&self.manager);
        let task = tokio::spawn(async move {
            manager
                .migrate_out(&r.vm_id, &r.to, &o, &r.migration_id, r.tls.as_ref())
                .await
        });
        match task.await {
            Ok(res) => Ok(Response::new(res?)),
            Err(e) => Err(Status::internal(format!("migrate task failed: {e}"))),
        }
    }

    async fn cancel_migration(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Ok(Response::new(
            self.manager.cancel_migration(&r.into_inner().vm_id).await?,
        ))
    }

    async fn settle_in_doubt(
        &self,
        r: Request<apb::SettleInDoubtRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        let r = r.into_inner();
        Ok(Response::new(
            self.manager
                .settle_in_doubt(&r.vm_id, r.destination_runs)
                .await?,
        ))
    }
}

/// The service peer agents call (`novacron.agent.v1.AgentPeer`): disk export for cold moves.
#[derive(Debug, Clone)]
pub struct PeerApi {
    /// VMs.
    pub manager: Arc<Manager>,
}

#[tonic::async_trait]
impl AgentPeer for PeerApi {
    type ExportDiskStream = ExportStream;

    async fn export_disk(
        &self,
        r: Request<apb::ExportDiskRequest>,
    ) -> Result<Response<Self::ExportDiskStream>, Status> {
        let r = r.into_inner();
        Ok(Response::new(
            self.manager.export_disk(&r.vm_id, r.index).await?,
        ))
    }
}
