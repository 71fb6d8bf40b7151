//! Serving: the controller's gRPC server with its three services, standard gRPC health
//! checking (`grpc.health.v1`) and server reflection, plus the reconcile loop, until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use novacron_proto::auth::BearerAuth;
use novacron_proto::controller::host_service_server::HostServiceServer;
use novacron_proto::controller::registry_server::RegistryServer;
use novacron_proto::controller::vm_service_server::VmServiceServer;

use crate::api::{HostApi, RegistryApi, VmApi};
use crate::controller::{Config, Controller, ControllerError};
use crate::reconcile;

/// Errors of serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening the controller failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The listen address could not be bound or serving failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

pub use novacron_proto::serving::shutdown_signal;

/// Opens the controller and serves on `listen` until a shutdown signal.
pub async fn serve(
    cfg: Config,
    listen: SocketAddr,
    token: Option<String>,
) -> Result<(), ServerError> {
    let ctl = Controller::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: listen,
        source,
    })?;
    serve_with(ctl, listener, token, shutdown_signal()).await?;
    tracing::info!("controller on {local} stopped");
    Ok(())
}

/// Serves an opened controller on a bound listener until `shutdown` resolves.
pub async fn serve_with(
    ctl: Arc<Controller>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<VmServiceServer<VmApi>>().await;
    health.set_serving::<HostServiceServer<HostApi>>().await;
    health.set_serving::<RegistryServer<RegistryApi>>().await;
    let reflection = novacron_proto::serving::reflection_service()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let reconciler = tokio::spawn(reconcile::run(Arc::clone(&ctl)));
    let auth = BearerAuth::new(token);
    tracing::info!("controller listening on {:?}", listener.local_addr().ok());
    let res = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(VmServiceServer::with_interceptor(
            VmApi(Arc::clone(&ctl)),
            auth.clone(),
        ))
        .add_service(HostServiceServer::with_interceptor(
            HostApi(Arc::clone(&ctl)),
            auth.clone(),
        ))
        .add_service(RegistryServer::with_interceptor(
            RegistryApi(Arc::clone(&ctl)),
            auth,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    reconciler.abort();
    res?;
    Ok(())
}
