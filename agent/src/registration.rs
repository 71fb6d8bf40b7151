//! Registration with the controller: the agent registers its host (inventory and current VM
//! statuses) and then heartbeats with every VM's status. It registers again when the
//! controller asks (after losing track of it) and keeps retrying while the controller is
//! unreachable.

use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::auth::AttachToken;
use novacron_proto::controller as cpb;
use novacron_proto::controller::registry_client::RegistryClient;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::manager::Manager;

/// Errors of registration.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The controller address is not a valid URI.
    #[error("bad controller address {addr}: {reason}")]
    BadAddress {
        /// Address.
        addr: String,
        /// Parser message.
        reason: String,
    },
    /// The token cannot be sent as a header.
    #[error(transparent)]
    Auth(#[from] novacron_proto::auth::AuthError),
}

type Client = RegistryClient<InterceptedService<Channel, AttachToken>>;

/// Connects lazily to the controller at `addr`.
pub fn client(addr: &str, token: Option<&str>) -> Result<Client, RegistrationError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let ch = Endpoint::from_shared(uri)
        .map_err(|e| RegistrationError::BadAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(RegistryClient::with_interceptor(
        ch,
        AttachToken::new(token)?,
    ))
}

/// Registers and heartbeats forever.
pub async fn run(
    mut client: Client,
    host: apb::HostInfo,
    manager: Arc<Manager>,
    default_interval: Duration,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let req = cpb::RegisterHostRequest {
            host: Some(host.clone()),
            vms: manager.list(),
        };
        let interval = match client.register_host(req).await {
            Ok(r) => {
                let ms = r.into_inner().heartbeat_interval_ms;
                tracing::info!(name = %host.name, "registered with the controller");
                backoff = Duration::from_millis(200);
                if ms == 0 {
                    default_interval
                } else {
                    Duration::from_millis(ms as u64)
                }
            }
            Err(s) => {
                tracing::warn!("registering with the controller: {}", s.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let req = cpb::HeartbeatRequest {
                name: host.name.clone(),
                agent_id: host.agent_id.clone(),
                vms: manager.list(),
            };
            match client.heartbeat(req).await {
                Ok(r) if r.get_ref().reregister => {
                    tracing::info!("controller asks to register again");
                    break;
                }
                Ok(_) => {}
                Err(s) => tracing::warn!("heartbeat: {}", s.message()),
            }
        }
    }
}
