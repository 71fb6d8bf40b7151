//! Serving: the controller's gRPC server with its services, standard gRPC health checking
//! (`grpc.health.v1`) and server reflection, plus the reconcile loop and the join endpoint,
//! until SIGINT or SIGTERM. With TLS every connection is mutual TLS; the user-facing services
//! (VM, host, storage, identity) then authenticate every call with [`Authenticate`] (users'
//! session and API tokens), and the agents' `Registry` admits host certificates only.

use std::net::SocketAddr;
use std::sync::Arc;

use novacron_proto::controller::host_service_server::HostServiceServer;
use novacron_proto::controller::iam_service_server::IamServiceServer;
use novacron_proto::controller::registry_server::RegistryServer;
use novacron_proto::controller::storage_service_server::StorageServiceServer;
use novacron_proto::controller::vm_service_server::VmServiceServer;

use novacron_proto::controller::join_server::JoinServer;
use novacron_security::{tls, Allow, RequirePeer, TlsMaterial};

use crate::api::{HostApi, RegistryApi, VmApi};
use crate::controller::{Config, Controller, ControllerError};
use crate::iam::authn::{Authenticate, IamMode};
use crate::iam::service::IamApi;
use crate::join::JoinApi;
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
    /// The TLS material is not usable.
    #[error("tls: {0}")]
    Tls(String),
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

/// How the controller serves: its TLS material (none only in development mode, with a
/// warning), how users authenticate, and the join endpoint.
pub struct Serving {
    /// The controller's certificate, key and the CA every client must chain to.
    pub tls: Option<TlsMaterial>,
    /// Users' authentication.
    pub iam: IamMode,
    /// The join endpoint's listener and CA (server-only TLS; needs `tls`).
    pub join: Option<(tokio::net::TcpListener, JoinApi)>,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Opens the controller and serves on `listen` (and joins on `join_listen`) until a shutdown
/// signal. `cfg.tls` none is development mode: plain HTTP/2 and no certificate checks.
pub async fn serve(
    cfg: Config,
    listen: SocketAddr,
    join_listen: Option<SocketAddr>,
    iam: IamMode,
) -> Result<(), ServerError> {
    let tls = cfg.tls.clone();
    let ca = match &tls {
        Some(_) => crate::certs::load_ca(&crate::certs::pki_dir(&cfg.data_dir))
            .map_err(|e| ServerError::Tls(e.to_string()))?,
        None => None,
    };
    let data_dir = cfg.data_dir.clone();
    let ctl = Controller::open(cfg)?;
    let listener = bind(listen).await?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: listen,
        source,
    })?;
    let join = match (join_listen, ca) {
        (Some(addr), Some(ca)) => {
            let l = bind(addr).await?;
            tracing::info!("join endpoint on {:?}", l.local_addr().ok());
            Some((
                l,
                JoinApi {
                    ca: Arc::new(ca),
                    tokens: crate::certs::join_tokens(&crate::certs::pki_dir(&data_dir)),
                },
            ))
        }
        (Some(_), None) if tls.is_some() => {
            tracing::info!("no CA key in the pki directory: the join endpoint is off");
            None
        }
        _ => None,
    };
    let serving = Serving { tls, iam, join };
    serve_with(ctl, listener, serving, shutdown_signal()).await?;
    tracing::info!("controller on {local} stopped");
    Ok(())
}

/// Serves an opened controller on a bound listener until `shutdown` resolves.
pub async fn serve_with(
    ctl: Arc<Controller>,
    listener: tokio::net::TcpListener,
    serving: Serving,
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

    let (mut builder, agents) = match &serving.tls {
        Some(m) => (
            tonic::transport::Server::builder().tls_config(tls::mutual_server(m))?,
            RequirePeer::new(Allow::Hosts),
        ),
        None => {
            tracing::warn!(
                "DEVELOPMENT MODE: no TLS and no client certificates; anyone who can reach \
                 this port can drive the controller and impersonate agents"
            );
            (tonic::transport::Server::builder(), RequirePeer::insecure())
        }
    };
    let (join_stop, join_task) = match (serving.join, &serving.tls) {
        (Some((l, api)), Some(m)) => {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tonic::transport::Server::builder()
                .tls_config(tls::server_only(m))?
                .add_service(JoinServer::new(api))
                .serve_with_incoming_shutdown(novacron_proto::serving::incoming(l), async {
                    let _ = stopped.await;
                });
            (Some(stop), Some(tokio::spawn(server)))
        }
        _ => (None, None),
    };

    let reconciler = tokio::spawn(reconcile::run(Arc::clone(&ctl)));
    if serving.iam == IamMode::InsecureDev {
        tracing::warn!(
            "--insecure-dev: calls without a token act as an admin; never run this in production"
        );
    }
    let users = Authenticate::new(Arc::clone(ctl.iam()), serving.iam);
    tracing::info!("controller listening on {:?}", listener.local_addr().ok());
    let res = builder
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
            Authenticate::optional(Arc::clone(ctl.iam()), serving.iam),
        ))
        .add_service(RegistryServer::with_interceptor(
            RegistryApi(Arc::clone(&ctl)),
            agents,
        ))
        .serve_with_incoming_shutdown(novacron_proto::serving::incoming(listener), shutdown)
        .await;
    reconciler.abort();
    if let Some(stop) = join_stop {
        let _ = stop.send(());
    }
    if let Some(t) = join_task {
        let _ = t.await;
    }
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

    /// The VM service refuses calls without a user's token or with one that is not a user's,
    /// and answers an admin's session token.
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
        let serving = Serving {
            tls: None,
            iam: IamMode::Enforce,
            join: None,
        };
        let server = tokio::spawn(serve_with(ctl, listener, serving, async {
            let _ = stopped.await;
        }));
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
        // Agents authenticate with their host certificates (tests/mgmt_tls.rs); without
        // TLS (this development server) the registry takes everyone.
        let hb = pb::HeartbeatRequest {
            name: "h".into(),
            ..Default::default()
        };
        let mut agent = RegistryClient::new(ch);
        assert!(agent.heartbeat(hb).await.unwrap().into_inner().reregister);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
