//! The `novacron-vmm` command line: runs one guest (`run`) or talks to a running VMM's
//! control socket. Both binaries (`novacron-vmm`, and `novacron-vmm-testhooks` of the
//! test build) are this.

use crate::api;
use crate::config::{parse_rate, parse_size, MachineConfig, RunArgs};
use crate::control::ExitReason;
use crate::machine::Machine;
use crate::migration::options::{Compression, MigrateOptions};
use crate::runtime::{Lifecycle, Runtime};
use crate::sandbox;
use clap::{Args, Parser, Subcommand};
use novacron_vmm_api::migration::{MigrationSummary, VerifyMode};
use novacron_vmm_api::protocol::{Empty, Info, Request, SnapshotReply};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "novacron-vmm",
    version,
    about = "NovaCron VMM: runs one guest on KVM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest (or wait for an incoming migration, or restore a snapshot).
    Run(RunArgs),
    /// Print the VM's state as JSON.
    Info(SocketArg),
    /// Pause all vCPUs.
    Pause(SocketArg),
    /// Resume all vCPUs.
    Resume(SocketArg),
    /// Stop the VM (the VMM exits with status 0).
    Shutdown(SocketArg),
    /// Write a snapshot (state + sparse memory) to a directory.
    Snapshot(SnapshotArgs),
    /// Live-migrate the VM to a destination started with --incoming; prints a JSON summary.
    Migrate(MigrateArgs),
    /// Cancel the running outgoing migration; answers once the guest runs here again.
    Cancel(SocketArg),
    /// Write a full snapshot directory (memory, state, disks) to one compressed backup file.
    SnapshotExport(TransferArgs),
    /// Read a backup file into a new snapshot directory (restore it with `run --restore`).
    SnapshotImport(TransferArgs),
}

#[derive(Args)]
struct TransferArgs {
    /// Snapshot directory (export) or backup file (import).
    #[arg(long)]
    from: PathBuf,
    /// Backup file to create (export) or new snapshot directory (import).
    #[arg(long)]
    to: PathBuf,
}

/// Prints a backup's figures, or fails with the error.
fn transfer(r: Result<crate::backup::BackupInfo, crate::backup::BackupError>) -> ExitCode {
    match r {
        Ok(info) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[derive(Args)]
struct SnapshotArgs {
    /// The VMM's control socket.
    #[arg(long)]
    api_socket: PathBuf,
    /// Directory to write.
    #[arg(long)]
    to: PathBuf,
    /// Only pages dirtied since the previous snapshot of this VMM.
    #[arg(long)]
    diff: bool,
}

#[derive(Args)]
struct MigrateArgs {
    /// The source VMM's control socket.
    #[arg(long)]
    api_socket: PathBuf,
    /// Destination: tls:HOST:PORT (with --migration-tls-*) or tcp:HOST:PORT (plain,
    /// debugging only).
    #[arg(long)]
    to: String,
    /// With tls:...: the migration's CA certificate (PEM).
    #[arg(long, requires_all = ["migration_tls_cert", "migration_tls_key"])]
    migration_tls_ca: Option<PathBuf>,
    /// With tls:...: this source's certificate (PEM), signed by that CA.
    #[arg(long, requires = "migration_tls_ca")]
    migration_tls_cert: Option<PathBuf>,
    /// With tls:...: this source's private key (PEM).
    #[arg(long, requires = "migration_tls_ca")]
    migration_tls_key: Option<PathBuf>,
    /// Downtime target in milliseconds.
    #[arg(long, default_value_t = 2)]
    downtime_ms: u64,
    /// Bandwidth cap, e.g. 100mbit or 50MB.
    #[arg(long, value_parser = parse_rate)]
    bandwidth: Option<u64>,
    /// Give up after this many seconds if precopy does not converge.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Throttle vCPUs step by step when precopy does not converge.
    #[arg(long)]
    auto_converge: bool,
    /// Page compression: none, zstd, delta or auto.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Verify the final memory before the destination resumes: off, sampled (the final
    /// pass plus a sample of the rest) or full (every page); `--verify` alone means full.
    #[arg(long, num_args = 0..=1, default_value = "off", default_missing_value = "full")]
    verify: VerifyMode,
    /// Pages outside the final pass that sampled verification checks (0 = automatic).
    #[arg(long, default_value_t = 0)]
    verify_sample_pages: u64,
    /// The id the destination was started with (`run --migration-id`).
    #[arg(long, default_value = "")]
    migration_id: String,
    /// Test only: leave out one dirty page in this round, to show verification catch it.
    #[arg(long, hide = true)]
    test_skip_page_round: Option<u32>,
    /// Sent-page cache size for delta compression, e.g. 256M (default: half the guest RAM).
    #[arg(long, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Encoder threads (default: with --compression none the sender encodes inline, else one
    /// per host core, at most 4).
    #[arg(long)]
    encoder_threads: Option<u32>,
}

#[derive(Args)]
struct SocketArg {
    /// The VMM's control socket.
    #[arg(long)]
    api_socket: PathBuf,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("novacron-vmm: {msg}");
    ExitCode::from(1)
}

fn run(mut args: RunArgs) -> ExitCode {
    if args.no_seccomp {
        sandbox::warn_disabled();
    } else if let Err(e) = sandbox::enable(if args.seccomp_log {
        sandbox::Violation::Log
    } else {
        sandbox::Violation::Kill
    }) {
        return fail(e);
    }
    if let Some(dir) = &args.restore {
        match crate::snapshot::read_meta(dir) {
            Ok(meta) => {
                args.memory = meta.memory;
                args.vcpus = meta.vcpus;
                args.cmdline = meta.cmdline;
            }
            Err(e) => return fail(e),
        }
    }
    let config = MachineConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        vcpus: args.vcpus,
        serial: args.serial,
        disks: args.disks,
        nets: args.nets,
    };
    let machine = match Machine::new(config) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let initial = match (&args.incoming, args.paused) {
        (Some(_), _) => Lifecycle::Incoming,
        (None, true) => Lifecycle::Paused,
        (None, false) => Lifecycle::Running,
    };
    let sock = args.api_socket.clone();
    let rt = Runtime::new(
        initial,
        Box::new(move |reason| {
            if let Some(sock) = &sock {
                let _ = std::fs::remove_file(sock);
            }
            std::process::exit(reason.code())
        }),
    );
    let _ = rt.machine.set(machine.clone());
    // A restore answers on its socket only once memory, state and disks are back: before,
    // `info` would report a guest running that is still being loaded.
    let serve = |rt: &std::sync::Arc<Runtime>| match &args.api_socket {
        Some(sock) => api::serve(sock, rt.clone()).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    if args.restore.is_none() {
        if let Err(e) = serve(&rt) {
            return fail(e);
        }
    }
    if args.paused {
        machine.control().pause();
    }
    // Before this thread reads what a peer sends (an incoming stream) or a snapshot holds.
    // A fresh boot reads nothing of the kind: it installs its filter once the vCPUs (each
    // filtered on its own) run, so that they do not carry this broader filter too.
    if args.incoming.is_some() || args.restore.is_some() {
        if let Err(e) = sandbox::install(sandbox::ThreadKind::Main) {
            return fail(e);
        }
    }
    match &args.incoming {
        Some(addr) => {
            use crate::migration::destination::{self, Incoming};
            let tls = match (
                &args.migration_tls_ca,
                &args.migration_tls_cert,
                &args.migration_tls_key,
            ) {
                (Some(ca), Some(cert), Some(key)) => {
                    let files = novacron_vmm_api::migration::TlsFiles {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                    };
                    match files.read() {
                        Ok(t) => Some(t),
                        Err(e) => return fail(e),
                    }
                }
                _ => None,
            };
            let inc = Incoming {
                addr: addr.clone(),
                tls,
                migration_id: args.migration_id.clone(),
                accept_timeout: args
                    .incoming_timeout
                    .map(std::time::Duration::from_secs)
                    .unwrap_or(destination::DEFAULT_INCOMING_TIMEOUT),
            };
            let r = destination::receive(&machine, &inc, &|local| {
                eprintln!("novacron-vmm: waiting for incoming migration on {local}")
            });
            if let Err(e) = r {
                if let Some(sock) = &args.api_socket {
                    let _ = std::fs::remove_file(sock);
                }
                return fail(format!("incoming migration failed: {e}"));
            }
            rt.set_state(if args.paused {
                Lifecycle::Paused
            } else {
                Lifecycle::Running
            });
        }
        None => {
            let loaded = match &args.restore {
                Some(dir) => crate::snapshot::restore(&machine, dir)
                    .map_err(|e| format!("cannot restore {}: {e}", dir.display())),
                None => machine.boot().map_err(|e| e.to_string()),
            };
            if let Err(e) = loaded {
                return fail(e);
            }
            if args.restore.is_some() {
                if let Err(e) = serve(&rt) {
                    return fail(e);
                }
            }
            if let Err(e) = machine.start() {
                return fail(e);
            }
            if args.restore.is_none() {
                if let Err(e) = sandbox::install(sandbox::ThreadKind::Main) {
                    return fail(e);
                }
            }
        }
    }
    let reason = machine.wait();
    if let Some(sock) = &args.api_socket {
        let _ = std::fs::remove_file(sock);
    }
    finish(reason)
}

fn finish(reason: ExitReason) -> ExitCode {
    let code = reason.code();
    match &reason {
        ExitReason::PowerOff | ExitReason::MigratedAway => {}
        _ => eprintln!("novacron-vmm: {}", reason.describe()),
    }
    ExitCode::from(code as u8)
}

/// Sends `req` and prints the reply as pretty JSON when `print`.
fn client<T: DeserializeOwned + Serialize>(sock: &Path, req: &Request, print: bool) -> ExitCode {
    match api::call::<T>(sock, req) {
        Ok(v) => {
            if print {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn migrate(a: MigrateArgs) -> ExitCode {
    let tls = match (
        a.migration_tls_ca,
        a.migration_tls_cert,
        a.migration_tls_key,
    ) {
        (Some(ca), Some(cert), Some(key)) => {
            match (novacron_vmm_api::migration::TlsFiles { ca, cert, key }).read() {
                Ok(t) => Some(t),
                Err(e) => return fail(e),
            }
        }
        _ => None,
    };
    let req = Request::Migrate(MigrateOptions {
        tls,
        to: a.to,
        downtime_ms: a.downtime_ms,
        bandwidth: a.bandwidth,
        timeout_s: a.timeout,
        auto_converge: a.auto_converge,
        compression: a.compression,
        verify: a.verify,
        verify_sample_pages: a.verify_sample_pages,
        migration_id: a.migration_id,
        test_skip_page_round: a.test_skip_page_round,
        cache_bytes: a.cache_size.unwrap_or(0),
        encoder_threads: a.encoder_threads.unwrap_or(0),
    });
    client::<MigrationSummary>(&a.api_socket, &req, true)
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    // A plain level (error, warn, info, debug, trace; default warn) rather than
    // tracing-subscriber's EnvFilter: its directive parser and regex engine would add
    // ~0.5 MiB to the resident text of every VMM.
    let level = std::env::var("NOVACRON_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<tracing::level_filters::LevelFilter>().ok())
        .unwrap_or(tracing::level_filters::LevelFilter::WARN);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .try_init();
    let cli = Cli::parse();
    match cli.cmd {
        Command::Run(a) => run(a),
        Command::Info(s) => client::<Info>(&s.api_socket, &Request::Info, true),
        Command::Pause(s) => client::<Empty>(&s.api_socket, &Request::Pause, false),
        Command::Resume(s) => client::<Empty>(&s.api_socket, &Request::Resume, false),
        Command::Shutdown(s) => client::<Empty>(&s.api_socket, &Request::Shutdown, false),
        Command::Migrate(a) => migrate(a),
        Command::Cancel(s) => client::<Empty>(&s.api_socket, &Request::Cancel, false),
        Command::SnapshotExport(a) => transfer(crate::backup::export(&a.from, &a.to)),
        Command::SnapshotImport(a) => transfer(crate::backup::import(&a.from, &a.to)),
        Command::Snapshot(a) => {
            let req = Request::Snapshot {
                to: a.to,
                diff: a.diff,
            };
            client::<SnapshotReply>(&a.api_socket, &req, true)
        }
    }
}
