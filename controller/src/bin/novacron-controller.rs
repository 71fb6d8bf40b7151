//! `novacron-controller --listen ADDR --data-dir DIR`: the NovaCron controller;
//! `novacron-controller certs init|issue|join-token`: its PKI.
//! `novacron-controller bootstrap-admin --data-dir DIR --user NAME [--password-file F]
//! [--totp]`: creates the first admin in the store (the controller stopped).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use novacron_controller::iam::authn::IamMode;
use novacron_controller::scheduler::{Policy, Strategy};
use novacron_controller::{certs, server, Config};
use novacron_security::{Identity, TlsMaterial};

/// The NovaCron controller: VM and host API, scheduler, reconcile loop.
#[derive(Debug, Parser)]
#[command(
    name = "novacron-controller",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates: the CA, the controller's, hosts' and clients'.
    #[command(subcommand)]
    Certs(Certs),
}

#[derive(Debug, Subcommand)]
enum Certs {
    /// Creates the CA (or adopts yours with --ca-cert/--ca-key), the controller's certificate
    /// and a client certificate for novactl, under DATA_DIR/pki.
    Init {
        /// The controller's data directory.
        #[arg(long, default_value = "/var/lib/novacron/controller")]
        data_dir: PathBuf,
        /// Extra DNS name or IP address of the controller (repeatable; `localhost` and
        /// 127.0.0.1 are always in).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Your own CA certificate (PEM) instead of a new one.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The key of --ca-cert (PEM).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Name of the first client certificate.
        #[arg(long, default_value = "admin")]
        client: String,
    },
    /// Issues a host or client certificate into a TLS directory (ca.pem, cert.pem, key.pem).
    Issue {
        /// The controller's data directory (holding the CA).
        #[arg(long, default_value = "/var/lib/novacron/controller")]
        data_dir: PathBuf,
        /// A host certificate for the agent of this host name.
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        host: Option<String>,
        /// A client certificate (novactl, automation) with this name.
        #[arg(long)]
        client: Option<String>,
        /// Extra DNS name or IP address (hosts; repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints a one-time token with which the agent of HOST obtains its certificate
    /// (`novacron-agent join`).
    JoinToken {
        /// The controller's data directory (holding the CA).
        #[arg(long, default_value = "/var/lib/novacron/controller")]
        data_dir: PathBuf,
        /// The host's name (its certificate will carry it).
        #[arg(long)]
        host: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
}

/// Serving options.
#[derive(Debug, clap::Args)]
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
    /// TLS directory (ca.pem, cert.pem, key.pem; ca.key enables joins) [default:
    /// DATA_DIR/pki].
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Join endpoint (server-only TLS), where agents trade a join token for a certificate.
    #[arg(long, default_value = "127.0.0.1:7071")]
    join_listen: SocketAddr,
    /// Development only: serve plain HTTP/2 without certificates (prints a warning).
    #[arg(long)]
    insecure_dev: bool,
}

fn read_file(p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn certs(cmd: Certs) -> Result<(), String> {
    match cmd {
        Certs::Init {
            data_dir,
            sans,
            ca_cert,
            ca_key,
            client,
        } => {
            let own = match (ca_cert, ca_key) {
                (Some(c), Some(k)) => Some((read_file(&c)?, read_file(&k)?)),
                _ => None,
            };
            let done = certs::init(&data_dir, &sans, own, &client).map_err(|e| e.to_string())?;
            println!("controller TLS directory: {}", done.tls_dir.display());
            println!(
                "novactl certificate ({client}): export NOVACRON_TLS_DIR={}",
                done.client_dir.display()
            );
            println!(
                "agents: `novacron-controller certs join-token --host NAME`, then \
                 `novacron-agent join --token TOKEN --controller-join HOST:7071`"
            );
            Ok(())
        }
        Certs::Issue {
            data_dir,
            host,
            client,
            sans,
            out,
        } => {
            let who = match (host, client) {
                (Some(h), _) => Identity::Host(h),
                (None, Some(c)) => Identity::Client(c),
                (None, None) => return Err("give --host or --client".into()),
            };
            certs::issue(&data_dir, &who, &sans, &out).map_err(|e| e.to_string())?;
            println!("issued a certificate for {who} into {}", out.display());
            Ok(())
        }
        Certs::JoinToken {
            data_dir,
            host,
            ttl_s,
        } => {
            let t = certs::join_token(&data_dir, &host, Duration::from_secs(ttl_s))
                .map_err(|e| e.to_string())?;
            println!("{t}");
            Ok(())
        }
    }
}

/// Creates the first admin of a controller's store. Run it on the controller host with the
/// controller stopped; the password comes from `--password-file` or the first line of
/// standard input.
#[derive(Debug, Parser)]
#[command(name = "novacron-controller bootstrap-admin")]
struct BootstrapArgs {
    /// Directory of the embedded store.
    #[arg(long, default_value = "/var/lib/novacron/controller")]
    data_dir: PathBuf,
    /// Name of the admin.
    #[arg(long)]
    user: String,
    /// File holding the password (default: read a line from standard input).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Also enrol TOTP now and print its secret and otpauth URL.
    #[arg(long)]
    totp: bool,
    /// Also write an admin API token (valid until revoked) to this new file (mode 0600), for
    /// automation that cannot log in (`novactl --token-file`).
    #[arg(long)]
    api_token_file: Option<PathBuf>,
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn bootstrap(args: BootstrapArgs) -> ExitCode {
    let password = match &args.password_file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map(|_| line)
                .map_err(|e| format!("standard input: {e}"))
        }
    };
    let password = match password {
        Ok(p) => p.trim_end_matches(['\r', '\n']).to_string(),
        Err(e) => {
            eprintln!("novacron-controller bootstrap-admin: cannot read the password: {e}");
            return ExitCode::from(2);
        }
    };
    let res = novacron_controller::store::Store::open(&args.data_dir)
        .map_err(|e| e.to_string())
        .and_then(|store| {
            novacron_controller::iam::Iam::open(std::sync::Arc::new(store), &args.data_dir)
                .map_err(|e| e.to_string())
        })
        .and_then(|iam| {
            let totp = novacron_controller::iam::bootstrap_admin(
                iam.store(),
                &args.user,
                &password,
                args.totp,
            )
            .map_err(|e| e.to_string())?;
            if let Some(path) = &args.api_token_file {
                let (_, token) = novacron_controller::iam::tokens::mint(
                    iam.store(),
                    &args.user,
                    "",
                    novacron_proto::controller::Role::Admin as i32,
                    "bootstrap",
                    0,
                )
                .map_err(|e| e.to_string())?;
                write_private(path, &token).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(totp)
        });
    match res {
        Ok(totp) => {
            println!("admin {} created", args.user);
            if let Some(t) = totp {
                println!("TOTP secret: {}", t.secret);
                println!("otpauth URL: {}", t.otpauth_url);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("novacron-controller bootstrap-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    novacron_proto::serving::init_logging();
    if std::env::args().nth(1).as_deref() == Some("bootstrap-admin") {
        return bootstrap(BootstrapArgs::parse_from(std::env::args().skip(1)));
    }
    let cli = Cli::parse();
    if let Some(Command::Certs(c)) = cli.command {
        return match certs(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("novacron-controller: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli.serve;
    if args.cpu_overcommit <= 0.0 || args.memory_overcommit <= 0.0 {
        eprintln!("novacron-controller: overcommit ratios must be positive");
        return ExitCode::from(2);
    }
    let tls_dir = args
        .tls_dir
        .clone()
        .unwrap_or_else(|| certs::pki_dir(&args.data_dir));
    let tls = if args.insecure_dev {
        eprintln!(
            "novacron-controller: WARNING: --insecure-dev: no TLS and no authentication; \
             never use this outside development"
        );
        None
    } else if !TlsMaterial::present(&tls_dir) {
        eprintln!(
            "novacron-controller: no TLS certificates in {}: run `novacron-controller certs \
             init --data-dir {}` first (or pass --insecure-dev for development)",
            tls_dir.display(),
            args.data_dir.display()
        );
        return ExitCode::from(2);
    } else {
        match TlsMaterial::load(&tls_dir) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("novacron-controller: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let join_listen = tls.as_ref().map(|_| args.join_listen);
    let cfg = Config {
        tls,
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
    let iam = if args.insecure_dev {
        IamMode::InsecureDev
    } else {
        IamMode::Enforce
    };
    match rt.block_on(server::serve(cfg, args.listen, join_listen, iam)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("novacron-controller: {e}");
            ExitCode::FAILURE
        }
    }
}
