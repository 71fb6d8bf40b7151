//! `novacron-controller --listen ADDR --data-dir DIR`: the NovaCron controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use novacron_controller::scheduler::{Policy, Strategy};
use novacron_controller::{server, Config};
use novacron_proto::auth;

/// The NovaCron controller: VM and host API, scheduler, reconcile loop.
#[derive(Debug, Parser)]
#[command(name = "novacron-controller", version)]
struct Args {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, default_value = "/var/lib/novacron/controller")]
    data_dir: PathBuf,
    /// Placement strategy: pack or spread.
    #[arg(long, default_value = "spread")]
    placement: Strategy,
    /// vCPUs allocatable per host CPU.
    #[arg(long, default_value_t = 4.0)]
    cpu_overcommit: f64,
    /// Memory allocatable per MiB of host memory.
    #[arg(long, default_value_t = 1.0)]
    memory_overcommit: f64,
    /// Heartbeat period asked of agents (ms).
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// A host without heartbeats for this long becomes NotReady (ms).
    #[arg(long, default_value_t = 5000)]
    heartbeat_timeout_ms: u64,
    /// VMs of a host NotReady for this long restart elsewhere per restart policy (ms).
    #[arg(long, default_value_t = 30000)]
    eviction_timeout_ms: u64,
    /// Reconcile period (ms).
    #[arg(long, default_value_t = 1000)]
    reconcile_interval_ms: u64,
    /// Default graceful-stop timeout (ms).
    #[arg(long, default_value_t = 10000)]
    stop_timeout_ms: u64,
    /// Migrations at a time during a drain.
    #[arg(long, default_value_t = 2)]
    drain_parallel: u32,
    /// Do not throttle vCPUs of migrations that do not converge (they may then time out).
    #[arg(long)]
    no_auto_converge: bool,
    /// Downtime target of migrations that do not give one (ms; 0: the VMM's default).
    #[arg(long, default_value_t = 0)]
    migration_downtime_ms: u32,
    /// Require `authorization: Bearer <token>` with the token in this file.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    novacron_proto::serving::init_logging();
    let args = Args::parse();
    if args.cpu_overcommit <= 0.0 || args.memory_overcommit <= 0.0 {
        eprintln!("novacron-controller: overcommit ratios must be positive");
        return ExitCode::from(2);
    }
    let token = match &args.token_file {
        Some(p) => match auth::read_token(p) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("novacron-controller: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let cfg = Config {
        data_dir: args.data_dir,
        policy: Policy {
            cpu_overcommit: args.cpu_overcommit,
            memory_overcommit: args.memory_overcommit,
            strategy: args.placement,
        },
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
        eviction_timeout: Duration::from_millis(args.eviction_timeout_ms),
        reconcile_interval: Duration::from_millis(args.reconcile_interval_ms.max(10)),
        stop_timeout: Duration::from_millis(args.stop_timeout_ms),
        drain_parallel: args.drain_parallel.max(1),
        auto_converge: !args.no_auto_converge,
        downtime_ms: args.migration_downtime_ms,
        ..Config::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("novacron-controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::serve(cfg, args.listen, token)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("novacron-controller: {e}");
            ExitCode::FAILURE
        }
    }
}
