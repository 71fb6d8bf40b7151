//! `novacron-vmm`: runs one guest (`run`) or talks to a running VMM's control socket.

use clap::{Args, Parser, Subcommand};
use novacron_vmm::api;
use novacron_vmm::config::{parse_memory, DiskConfig, MachineConfig, NetConfig, SerialTarget};
use novacron_vmm::control::ExitReason;
use novacron_vmm::machine::Machine;
use novacron_vmm::runtime::{Lifecycle, Runtime};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "novacron-vmm", version, about = "NovaCron VMM: runs one guest on KVM")]
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
}

#[derive(Args)]
struct SocketArg {
    /// The VMM's control socket.
    #[arg(long)]
    api_socket: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Kernel: ELF vmlinux, bzImage, or the test guest.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest RAM, e.g. 128M or 1G.
    #[arg(long, default_value = "128M", value_parser = parse_memory)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    vcpus: u8,
    /// Serial console: stdout, file:PATH or none.
    #[arg(long, default_value = "stdout")]
    serial: SerialTarget,
    /// Control socket path.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// virtio-blk disk backed by a raw file: PATH[,ro] (repeatable).
    #[arg(long = "disk")]
    disks: Vec<DiskConfig>,
    /// virtio-net interface on a tap device: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net")]
    nets: Vec<NetConfig>,
    /// Start with the vCPUs paused.
    #[arg(long)]
    paused: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("novacron-vmm: {msg}");
    ExitCode::from(1)
}

fn run(args: RunArgs) -> ExitCode {
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
    if let Err(e) = machine.boot() {
        return fail(e);
    }
    let rt = Runtime::new(
        if args.paused { Lifecycle::Paused } else { Lifecycle::Running },
        Box::new(|_| {}),
    );
    let _ = rt.machine.set(machine.clone());
    if let Some(sock) = &args.api_socket {
        if let Err(e) = api::serve(sock, rt.clone()) {
            return fail(e);
        }
    }
    if args.paused {
        machine.control().pause();
    }
    if let Err(e) = machine.start() {
        return fail(e);
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

fn client(sock: &SocketArg, cmd: &str) -> ExitCode {
    match api::call(&sock.api_socket, &json!({ "cmd": cmd })) {
        Ok(v) => {
            if cmd == "info" {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NOVACRON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let cli = Cli::parse();
    match cli.cmd {
        Command::Run(a) => run(a),
        Command::Info(s) => client(&s, "info"),
        Command::Pause(s) => client(&s, "pause"),
        Command::Resume(s) => client(&s, "resume"),
        Command::Shutdown(s) => client(&s, "shutdown"),
    }
}
