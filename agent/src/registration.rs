//! Registration with the controller: the agent registers its host (inventory and current VM
//! statuses) and then heartbeats with every VM's status. It registers again when the
//! controller asks (after losing track of it) and keeps retrying while the controller is
//! unreachable.

use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::controller as cpb;
use novacron_proto::controller::registry_client::RegistryClient;
use novacron_security::pki::CONTROLLER_DNS_NAME;
use novacron_security::{tls, TlsMaterial};
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
    /// The TLS settings are not usable.
    #[error("tls settings for the controller: {0}")]
    Tls(String),
}

type Client = RegistryClient<Channel>;

/// Connects lazily to the controller at `addr` (HOST:PORT), with mutual TLS when `tls` is
/// given (the controller must present the controller's certificate; the agent presents its
/// host certificate), plain HTTP/2 in development mode.
pub fn client(addr: &str, tls: Option<&TlsMaterial>) -> Result<Client, RegistrationError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bad = |reason: String| RegistrationError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    if addr.contains("://") {
        return Err(bad(
            "give HOST:PORT (the scheme follows the TLS settings)".into()
        ));
    }
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    if let Some(m) = tls {
        ep = ep
            .tls_config(tls::mutual_client(m, CONTROLLER_DNS_NAME))
            .map_err(|e| RegistrationError::Tls(e.to_string()))?;
    }
    Ok(RegistryClient::new(ep.connect_lazy()))
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
