//! The gRPC services: `VmService`, `HostService` and `Registry` from controller.proto, thin
//! adapters from protobuf requests to [`Controller`] operations and from
//! [`ControllerError`](crate::controller::ControllerError) to gRPC status codes.

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

#[tonic::async_trait]
impl VmService for VmApi {
    async fn create_vm(&self, r: Request<pb::CreateVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(self.0.create_vm(r.into_inner()).await?))
    }

    async fn get_vm(&self, r: Request<pb::GetVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(self.0.get_vm(&r.into_inner().vm)?))
    }

    async fn list_vms(
        &self,
        r: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        Ok(Response::new(self.0.list_vms(&r.into_inner())?))
    }

    async fn start_vm(&self, r: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(self.0.start_vm(r.into_inner()).await?))
    }

    async fn stop_vm(&self, r: Request<pb::StopVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(self.0.stop_vm(r.into_inner()).await?))
    }

    async fn reboot_vm(&self, r: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(self.0.reboot_vm(r.into_inner()).await?))
    }

    async fn delete_vm(
        &self,
        r: Request<pb::VmActionRequest>,
    ) -> Result<Response<pb::DeleteVmResponse>, Status> {
        Ok(Response::new(self.0.delete_vm(r.into_inner()).await?))
    }

    async fn migrate_vm(
        &self,
        r: Request<pb::MigrateVmRequest>,
    ) -> Result<Response<pb::MigrateVmResponse>, Status> {
        Ok(Response::new(self.0.migrate_vm(r.into_inner()).await?))
    }

    async fn cancel_migration(
        &self,
        r: Request<pb::CancelMigrationRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(
            self.0.cancel_migration(r.into_inner()).await?,
        ))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        r: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = r.into_inner();
        let filter = EventFilter {
            vm: req.vm.clone(),
            host: req.host.clone(),
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
                if filter.matches(&ev) && tx.send(Ok(ev)).await.is_err() {
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
                        if filter.matches(&ev) && tx.send(Ok(ev)).await.is_err() {
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

#[tonic::async_trait]
impl HostService for HostApi {
    async fn list_hosts(
        &self,
        r: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(self.0.list_hosts(&r.into_inner())?))
    }

    async fn get_host(
        &self,
        r: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        Ok(Response::new(self.0.get_host(&r.into_inner().host)?))
    }

    async fn cordon_host(
        &self,
        r: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        Ok(Response::new(
            self.0.set_cordon(r.into_inner(), true).await?,
        ))
    }

    async fn uncordon_host(
        &self,
        r: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        Ok(Response::new(
            self.0.set_cordon(r.into_inner(), false).await?,
        ))
    }

    async fn drain_host(
        &self,
        r: Request<pb::DrainHostRequest>,
    ) -> Result<Response<pb::DrainHostResponse>, Status> {
        Ok(Response::new(self.0.drain_host(r.into_inner()).await?))
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
