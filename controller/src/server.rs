//! Serving: the controller's gRPC server with its services, standard gRPC health
//! checking (`grpc.health.v1`) and server reflection, plus the reconcile loop, until SIGINT or
//! SIGTERM. The user-facing services (VM, host, storage, identity) authenticate every call
//! with [`Authenticate`] (users' session and API tokens); the agents' `Registry` keeps its
//! shared bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use novacron_proto::auth::BearerAuth;
use novacron_proto::controller::host_service_server::HostServiceServer;
use novacron_proto::controller::iam_service_server::IamServiceServer;
use novacron_proto::controller::registry_server::RegistryServer;
use novacron_proto::controller::storage_service_server::StorageServiceServer;
use novacron_proto::controller::vm_service_server::VmServiceServer;

use crate::api::{HostApi, RegistryApi, VmApi};
use crate::controller::{Config, Controller, ControllerError};
use crate::iam::authn::{Authenticate, IamMode};
use crate::iam::service::IamApi;
use crate::reconcile;
use crate::storage::api::StorageApi;

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

/// Opens the controller and serves on `listen` until a shutdown signal. `token` is the
/// agents' registry token; users authenticate per `iam`.
pub async fn serve(
    cfg: Config,
    listen: SocketAddr,
    token: Option<String>,
    iam: IamMode,
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
    serve_with(ctl, listener, token, iam, shutdown_signal()).await?;
    tracing::info!("controller on {local} stopped");
    Ok(())
}

/// Serves an opened controller on a bound listener until `shutdown` resolves. `token`
/// protects the agents' `Registry`; the user-facing services authenticate per `iam`.
pub async fn serve_with(
    ctl: Arc<Controller>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    iam: IamMode,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<VmServiceServer<VmApi>>().await;
    health.set_serving::<HostServiceServer<HostApi>>().await;
    health.set_serving::<RegistryServer<RegistryApi>>().await;
    health
        .set_serving::<StorageServiceServer<StorageApi>>()
        .await;
    health.set_serving::<IamServiceServer<IamApi>>().await;
    let reflection = novacron_proto::serving::reflection_service()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let reconciler = tokio::spawn(reconcile::run(Arc::clone(&ctl)));
    let auth = BearerAuth::new(token);
    if iam == IamMode::InsecureDev {
        tracing::warn!(
            "--insecure-dev: calls without a token act as an admin; never run this in production"
        );
    }
    let users = Authenticate::new(Arc::clone(ctl.iam()), iam);
    tracing::info!("controller listening on {:?}", listener.local_addr().ok());
    let res = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(VmServiceServer::with_interceptor(
            VmApi(Arc::clone(&ctl)),
            users.clone(),
        ))
        .add_service(HostServiceServer::with_interceptor(
            HostApi(Arc::clone(&ctl)),
            users.clone(),
        ))
        .add_service(StorageServiceServer::with_interceptor(
            StorageApi(Arc::clone(&ctl)),
            users,
        ))
        .add_service(IamServiceServer::with_interceptor(
            IamApi(Arc::clone(&ctl)),
            Authenticate::optional(Arc::clone(ctl.iam()), iam),
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

#[cfg(test)]
mod tests {
    use novacron_proto::auth::AttachToken;
    use novacron_proto::controller as pb;
    use novacron_proto::controller::registry_client::RegistryClient;
    use novacron_proto::controller::vm_service_client::VmServiceClient;
    use tonic::transport::Channel;

    use super::*;

    /// The registry refuses agents without the shared token; the VM service refuses calls
    /// without a user's token (that token is not a user's), and answers an admin's session
    /// token.
    #[tokio::test]
    async fn served_services_require_the_token() {
        let dir = std::env::temp_dir().join(format!("novacron-auth-{}", uuid::Uuid::new_v4()));
        let cfg = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        let ctl = Controller::open(cfg).unwrap();
        crate::iam::bootstrap_admin(ctl.iam().store(), "root", "password1", false).unwrap();
        let now = crate::util::now_ms() as u64 / 1000;
        let (session, _) = ctl.iam().signing_key().issue("root", now, 60).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            ctl,
            listener,
            Some("s3cret".into()),
            IamMode::Enforce,
            async {
                let _ = stopped.await;
            },
        ));
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let vms = |token: Option<&str>| {
            VmServiceClient::with_interceptor(ch.clone(), AttachToken::new(token).unwrap())
        };
        let list = pb::ListVmsRequest::default();
        assert_eq!(
            vms(Some(&session))
                .list_vms(list.clone())
                .await
                .unwrap()
                .into_inner()
                .total,
            0
        );
        for (token, message) in [(None, "missing"), (Some("s3cret"), "invalid")] {
            let s = vms(token).list_vms(list.clone()).await.unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{token:?}");
            assert!(
                s.message().starts_with(message),
                "{token:?}: {}",
                s.message()
            );
        }
        let hb = pb::HeartbeatRequest {
            name: "h".into(),
            ..Default::default()
        };
        let mut anon =
            RegistryClient::with_interceptor(ch.clone(), AttachToken::new(None).unwrap());
        let s = anon.heartbeat(hb.clone()).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let mut agent =
            RegistryClient::with_interceptor(ch, AttachToken::new(Some("s3cret")).unwrap());
        assert!(agent.heartbeat(hb).await.unwrap().into_inner().reregister);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
