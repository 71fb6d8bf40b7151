//! Serving: the agent's gRPC server (Agent service, gRPC health checking, server reflection),
//! the VM monitor loop and registration with the controller, until SIGINT or SIGTERM. VMs keep
//! running when the agent stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::agent::agent_server::AgentServer;
use novacron_proto::agent::agent_storage_server::AgentStorageServer;

use novacron_proto::agent::agent_peer_server::AgentPeerServer;
use novacron_security::{tls, Allow, RequirePeer, TlsMaterial};

use crate::api::{AgentApi, HostInventory, PeerApi};
use crate::cgroup::{self, HostCgroups};
use crate::host::{self, HostError};
use crate::manager::{Manager, ManagerConfig, ManagerError};
use crate::registration::{self, RegistrationError};
use crate::storage_api::StorageApi;

/// Errors of serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The VM manager could not start.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// Host inventory.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Controller address.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// Serving failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Bad settings.
    #[error("{0}")]
    Config(String),
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Host name registered with the controller.
    pub name: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Address the controller and peers use (default: `listen`).
    pub advertise: Option<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Controller address (none: standalone).
    pub controller: Option<String>,
    /// `novacron-vmm` executable.
    pub vmm_binary: PathBuf,
    /// Host labels.
    pub labels: HashMap<String, String>,
    /// Allocatable vCPUs (default: online CPUs).
    pub capacity_vcpus: Option<u32>,
    /// Allocatable memory in MiB (default: total memory).
    pub capacity_memory_mib: Option<u64>,
    /// Graceful-stop timeout.
    pub stop_timeout: Duration,
    /// VMM start timeout.
    pub start_timeout: Duration,
    /// Heartbeat period when the controller gives none.
    pub heartbeat_interval: Duration,
    /// This host's TLS material (its certificate, key, and the CA); none only in development
    /// mode (`--insecure-dev`).
    pub tls: Option<TlsMaterial>,
    /// Run VMs in per-VM cgroups (false: `--no-cgroups`).
    pub cgroups: bool,
    /// CPU overcommit of the VMs' CPU quotas (`--cpu-overcommit`).
    pub cpu_overcommit: f64,
}

pub use novacron_proto::serving::shutdown_signal;

/// Runs the agent until a shutdown signal.
pub async fn serve(cfg: AgentConfig) -> Result<(), ServerError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        ServerError::Config(format!("cannot create {}: {e}", cfg.data_dir.display()))
    })?;
    let advertise = match &cfg.advertise {
        Some(a) => a.clone(),
        None if cfg.listen.ip().is_unspecified() => {
            return Err(ServerError::Config(
                "--listen on an unspecified address needs --advertise HOST:PORT".into(),
            ))
        }
        None => cfg.listen.to_string(),
    };
    let migration_host = advertise
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| ServerError::Config(format!("advertise address {advertise} has no port")))?;
    let agent_id = host::agent_id(&cfg.data_dir)?;
    let cpu_overcommit = cgroup::check_overcommit(cfg.cpu_overcommit)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let agent_exe = std::env::current_exe()
        .map_err(|e| ServerError::Config(format!("cannot locate own executable: {e}")))?;
    if !cfg.vmm_binary.is_file() {
        tracing::warn!(
            "vmm binary {} not found; VMs will fail to start",
            cfg.vmm_binary.display()
        );
    }
    let cgroups = if cfg.cgroups {
        HostCgroups::detect(&agent_id, cpu_overcommit)
    } else {
        HostCgroups::disabled()
    };
    if let Some(why) = cgroups.unavailable() {
        tracing::error!("cgroups unavailable: {why}; every VM start will fail");
    } else {
        tracing::info!("{}", cgroups.describe());
    }
    let manager = Manager::new(ManagerConfig {
        data_dir: cfg.data_dir.clone(),
        vmm_binary: cfg.vmm_binary.clone(),
        agent_exe,
        migration_host,
        stop_timeout: cfg.stop_timeout,
        start_timeout: cfg.start_timeout,
        agent_tag: agent_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(4)
            .collect(),
        peer_tls: cfg.tls.clone(),
        cgroups,
    })?;
    let adopted = manager.adopt().await?;
    tracing::info!("{adopted} vms found in {}", cfg.data_dir.display());

    let cpus = host::cpus();
    let memory = host::memory_mib();
    let info = apb::HostInfo {
        name: cfg.name.clone(),
        address: advertise.clone(),
        agent_id,
        cpus,
        memory_mib: memory,
        capacity: Some(apb::Resources {
            vcpus: cfg.capacity_vcpus.unwrap_or(cpus),
            memory_mib: cfg.capacity_memory_mib.unwrap_or(memory),
        }),
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;

    let monitor = {
        let m = Arc::clone(&manager);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                m.monitor_tick().await;
            }
        })
    };
    let registrar = match &cfg.controller {
        Some(addr) => {
            let client = registration::client(addr, cfg.tls.as_ref())?;
            Some(tokio::spawn(registration::run(
                client,
                info.clone(),
                Arc::clone(&manager),
                cfg.heartbeat_interval,
            )))
        }
        None => None,
    };

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentApi>>().await;
    health.set_serving::<AgentStorageServer<StorageApi>>().await;
    health.set_serving::<AgentPeerServer<PeerApi>>().await;
    let reflection = novacron_proto::serving::reflection_service()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let api = AgentApi {
        manager: Arc::clone(&manager),
        host: Arc::new(HostInventory { info }),
    };
    tracing::info!(name = %cfg.name, listen = %cfg.listen, advertise = %advertise, "agent serving");
    // With TLS the handshake already requires a certificate of the CA; the services then
    // admit only the controller, and peer agents only for disk exports.
    let (mut builder, controller_only, peers) = match &cfg.tls {
        Some(m) => (
            tonic::transport::Server::builder().tls_config(tls::mutual_server(m))?,
            RequirePeer::new(Allow::Controller),
            RequirePeer::new(Allow::ControllerOrHosts),
        ),
        None => {
            tracing::warn!(
                "DEVELOPMENT MODE: no TLS; anyone who can reach this port can drive this \
                 agent's VMs"
            );
            (
                tonic::transport::Server::builder(),
                RequirePeer::insecure(),
                RequirePeer::insecure(),
            )
        }
    };
    let res = builder
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(AgentServer::with_interceptor(api, controller_only))
        .add_service(AgentStorageServer::with_interceptor(
            StorageApi {
                manager: Arc::clone(&manager),
            },
            controller_only,
        ))
        .add_service(AgentPeerServer::with_interceptor(
            PeerApi {
                manager: Arc::clone(&manager),
            },
            peers,
        ))
        .serve_with_incoming_shutdown(
            novacron_proto::serving::incoming(listener),
            shutdown_signal(),
        )
        .await;
    monitor.abort();
    if let Some(r) = registrar {
        r.abort();
    }
    res?;
    tracing::info!("agent stopped; its VMs keep running");
    Ok(())
}
