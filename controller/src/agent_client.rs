//! Clients of the agents' gRPC API, one lazily connected channel per agent address, with the
//! per-call deadlines the controller uses (short for queries, long for migrations).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::agent::agent_client::AgentClient;
use novacron_proto::agent::agent_storage_client::AgentStorageClient;
use novacron_security::TlsMaterial;
use tonic::transport::{Channel, Endpoint};

/// Errors reaching an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The agent's address is not a valid URI.
    #[error("bad agent address {addr}: {reason}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Parser message.
        reason: String,
    },
    /// The TLS settings for the agent are not usable.
    #[error("tls settings for host {host}: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// tonic's message.
        reason: String,
    },
}

/// Where a host's agent is: its name (which its certificate must carry) and its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentAddr {
    /// The host's name.
    pub host: String,
    /// HOST:PORT of its gRPC server.
    pub address: String,
}

/// A pool of agent clients keyed by host and address. With TLS material every channel is
/// mutual TLS: the controller presents its certificate, and an agent must present the
/// certificate of the host it is registered as.
#[derive(Debug, Default)]
pub struct AgentPool {
    tls: Option<TlsMaterial>,
    channels: Mutex<HashMap<AgentAddr, Channel>>,
}

/// Deadline of ordinary agent calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl AgentPool {
    /// An empty pool; `tls` none is development mode (plain HTTP/2).
    pub fn new(tls: Option<TlsMaterial>) -> Self {
        Self {
            tls,
            channels: Mutex::default(),
        }
    }

    /// A client for the agent at `addr`.
    pub fn client(&self, addr: &AgentAddr) -> Result<AgentClient<Channel>, AgentClientError> {
        self.channel(addr).map(AgentClient::new)
    }

    /// A client of the storage service of the agent at `addr`.
    pub fn storage(
        &self,
        addr: &AgentAddr,
    ) -> Result<AgentStorageClient<Channel>, AgentClientError> {
        self.channel(addr).map(AgentStorageClient::new)
    }

    /// The (lazily connected) channel to the agent at `addr`.
    fn channel(&self, addr: &AgentAddr) -> Result<Channel, AgentClientError> {
        let mut map = self.channels.lock();
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", addr.address))
            .map_err(|e| AgentClientError::BadAddress {
                addr: addr.address.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(novacron_security::tls::mutual_client(tls, &addr.host))
                .map_err(|e| AgentClientError::Tls {
                    host: addr.host.clone(),
                    reason: e.to_string(),
                })?;
        }
        let ch = ep.connect_lazy();
        map.insert(addr.clone(), ch.clone());
        Ok(ch)
    }

    /// Drops the cached channels of `address` (after the agent moved or restarted).
    pub fn forget(&self, address: &str) {
        self.channels.lock().retain(|k, _| k.address != address);
    }
}

/// Wraps `msg` in a request with `timeout`.
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// A short description of an agent status, for messages.
pub fn state_name(s: i32) -> &'static str {
    match apb::VmState::try_from(s).unwrap_or(apb::VmState::Unspecified) {
        apb::VmState::Unspecified => "unknown",
        apb::VmState::Created => "created",
        apb::VmState::Starting => "starting",
        apb::VmState::Running => "running",
        apb::VmState::Paused => "paused",
        apb::VmState::Stopped => "stopped",
        apb::VmState::Crashed => "crashed",
        apb::VmState::Incoming => "incoming",
        apb::VmState::Migrating => "migrating",
        apb::VmState::Indoubt => "indoubt",
    }
}

/// The name of a migration phase, for output and messages.
pub fn migration_phase_name(p: i32) -> &'static str {
    match apb::MigrationPhase::try_from(p).unwrap_or(apb::MigrationPhase::Unspecified) {
        apb::MigrationPhase::Unspecified => "unknown",
        apb::MigrationPhase::Preparing => "preparing",
        apb::MigrationPhase::Waiting => "waiting",
        apb::MigrationPhase::Transferring => "transferring",
        apb::MigrationPhase::Completed => "completed",
        apb::MigrationPhase::Failed => "failed",
        apb::MigrationPhase::Settling => "settling",
    }
}
