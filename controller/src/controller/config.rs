//! Controller settings, as given on the command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::scheduler::Policy;

/// Controller settings (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Overcommit and strategy.
    pub policy: Policy,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// Missing heartbeats for this long makes a host NotReady.
    pub heartbeat_timeout: Duration,
    /// A NotReady host's VMs are restarted elsewhere after this long (per restart policy).
    pub eviction_timeout: Duration,
    /// Period of the reconcile loop.
    pub reconcile_interval: Duration,
    /// Default graceful-stop timeout.
    pub stop_timeout: Duration,
    /// Default drain parallelism.
    pub drain_parallel: u32,
    /// Deadline of one live migration.
    pub migrate_timeout: Duration,
    /// Turn on vCPU throttling for every migration (drains must converge).
    pub auto_converge: bool,
    /// Downtime target when a request gives none (0: the VMM's default).
    pub downtime_ms: u32,
    /// The controller's TLS material: its certificate for calling agents, and the CA they
    /// must chain to. None only in development mode (`--insecure-dev`).
    pub tls: Option<novacron_security::TlsMaterial>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/novacron/controller"),
            policy: Policy::default(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            eviction_timeout: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(10),
            drain_parallel: 2,
            migrate_timeout: Duration::from_secs(600),
            auto_converge: true,
            downtime_ms: 0,
            tls: None,
        }
    }
}
