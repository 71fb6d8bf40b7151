//! `novacron-agent --listen ADDR --data-dir DIR --controller ADDR`: the NovaCron host agent;
//! `novacron-agent join --token T --controller-join ADDR`: obtains its host certificate.
//! (`novacron-agent __supervise DIR` is the per-VM supervisor it starts; not for users.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use novacron_agent::server::{self, AgentConfig};
use novacron_agent::{host, join, supervise};
use novacron_vmm_api::units::{parse_size, UnitError};

/// The NovaCron host agent.
#[derive(Debug, Parser)]
#[command(name = "novacron-agent", version)]
struct Args {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Address the controller and peer agents reach this agent at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory (VMs, disks, console logs, agent id).
    #[arg(long, default_value = "/var/lib/novacron/agent")]
    data_dir: PathBuf,
    /// Controller address (HOST:PORT); without it the agent runs standalone.
    #[arg(long)]
    controller: Option<String>,
    /// Host name (default: the kernel's host name).
    #[arg(long)]
    name: Option<String>,
    /// Host label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Allocatable vCPUs (default: online CPUs).
    #[arg(long)]
    capacity_vcpus: Option<u32>,
    /// Allocatable memory, e.g. 4G (default: total memory).
    #[arg(long)]
    capacity_memory: Option<String>,
    /// novacron-vmm executable (default: next to this executable, then PATH).
    #[arg(long)]
    vmm_binary: Option<PathBuf>,
    /// Graceful-stop timeout before SIGKILL (ms).
    #[arg(long, default_value_t = 10000)]
    stop_timeout_ms: u64,
    /// How long a starting VMM may take to answer its API (ms).
    #[arg(long, default_value_t = 20000)]
    start_timeout_ms: u64,
    /// Heartbeat period unless the controller sets one (ms).
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// TLS directory (ca.pem, cert.pem, key.pem) [default: DATA_DIR/tls].
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Development only: serve plain HTTP/2 and check no certificates (prints a warning).
    #[arg(long)]
    insecure_dev: bool,
    /// Run VMs without per-VM cgroups (no CPU, memory or pids limits; prints a warning): for
    /// hosts where the agent cannot create cgroups.
    #[arg(long)]
    no_cgroups: bool,
    /// CPU overcommit F: each VM may use vcpus/F CPUs (at least 0.1 CPU); 1.0 gives every
    /// vCPU a whole CPU.
    #[arg(long, default_value_t = 1.0)]
    cpu_overcommit: f64,
}

/// `novacron-agent join`: trades a join token for this host's certificate.
#[derive(Debug, Parser)]
#[command(name = "novacron-agent join")]
struct JoinArgs {
    /// The token `novacron-controller certs join-token --host NAME` printed.
    #[arg(long)]
    token: String,
    /// The controller's join endpoint (HOST:PORT).
    #[arg(long)]
    controller_join: String,
    /// Data directory; the certificate goes to DATA_DIR/tls unless --tls-dir.
    #[arg(long, default_value = "/var/lib/novacron/agent")]
    data_dir: PathBuf,
    /// TLS directory to write.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

fn join_main(argv: &[String]) -> ExitCode {
    let args = JoinArgs::parse_from(argv);
    let dir = args.tls_dir.unwrap_or_else(|| args.data_dir.join("tls"));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("novacron-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(join::join(&args.token, &args.controller_join, &dir)) {
        Ok(host) => {
            println!("joined as host {host}; certificate in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("novacron-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--capacity-memory` in MiB (sizes in the syntax of `novacron_vmm_api::units`), rounded up.
fn parse_mib(s: &str) -> Result<u64, UnitError> {
    Ok(parse_size(s)?.div_ceil(1 << 20))
}

fn find_vmm() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join("novacron-vmm");
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("novacron-vmm");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("novacron-vmm")
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(supervise::SUPERVISE_ARG) {
        let Some(dir) = argv.get(2) else {
            eprintln!("usage: novacron-agent {} VM_DIR", supervise::SUPERVISE_ARG);
            return ExitCode::from(2);
        };
        return ExitCode::from(supervise::supervise_main(Path::new(dir)) as u8);
    }
    novacron_proto::serving::init_logging();
    if argv.get(1).map(String::as_str) == Some("join") {
        return join_main(&argv[1..]);
    }
    let args = Args::parse();
    let mut labels = HashMap::new();
    for l in &args.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => {
                eprintln!("novacron-agent: --label expects KEY=VALUE, got {l:?}");
                return ExitCode::from(2);
            }
        }
    }
    let capacity_memory_mib = match &args.capacity_memory {
        Some(s) => match parse_mib(s) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("novacron-agent: bad --capacity-memory: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if args.no_cgroups {
        eprintln!(
            "novacron-agent: WARNING: --no-cgroups: VMs run without CPU, memory or pids limits; \
             one guest can starve the host"
        );
    }
    let tls_dir = args
        .tls_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("tls"));
    let (tls, cert_host) = if args.insecure_dev {
        eprintln!(
            "novacron-agent: WARNING: --insecure-dev: no TLS; anyone who can reach the agent \
             drives its VMs; never use this outside development"
        );
        (None, None)
    } else {
        match join::load(&tls_dir) {
            Ok((m, host)) => (Some(m), Some(host)),
            Err(e) => {
                eprintln!(
                    "novacron-agent: {e}; obtain a host certificate with `novacron-agent join` \
                     (or pass --insecure-dev for development)"
                );
                return ExitCode::from(2);
            }
        }
    };
    // The host name is the one the certificate carries: the controller checks it.
    let name = match (args.name, cert_host) {
        (Some(n), Some(c)) if n != c => {
            eprintln!("novacron-agent: --name {n} but the certificate is for host {c}");
            return ExitCode::from(2);
        }
        (_, Some(c)) => c,
        (Some(n), None) => n,
        (None, None) => host::hostname(),
    };
    let cfg = AgentConfig {
        name,
        listen: args.listen,
        advertise: args.advertise,
        data_dir: args.data_dir,
        controller: args.controller,
        vmm_binary: args.vmm_binary.unwrap_or_else(find_vmm),
        labels,
        capacity_vcpus: args.capacity_vcpus,
        capacity_memory_mib,
        stop_timeout: Duration::from_millis(args.stop_timeout_ms),
        start_timeout: Duration::from_millis(args.start_timeout_ms),
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms.max(10)),
        tls,
        cgroups: !args.no_cgroups,
        cpu_overcommit: args.cpu_overcommit,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("novacron-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("novacron-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn capacity_memory_is_a_size() {
        assert_eq!(super::parse_mib("4G").unwrap(), 4096);
        assert_eq!(super::parse_mib("256MiB").unwrap(), 256);
        assert_eq!(super::parse_mib("1536K").unwrap(), 2);
        assert!(super::parse_mib("lots").is_err());
    }
}
