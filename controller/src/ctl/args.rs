//! novactl's command line: the verbs and their arguments as clap parses them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use super::iam::{AuditArgs, LoginArgs, ProjectCmd, TokenCmd, UserCmd};
pub use super::storage::{
    CloneArgs, ExportArgs, ImportArgs, RestoreArgs, SnapArgs, SnapshotsArgs, TemplateArgs,
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// novactl's command line.
#[derive(Debug, Parser)]
#[command(
    name = "novactl",
    version,
    about = "Command-line client of the NovaCron controller"
)]
pub struct Cli {
    /// Controller address: HOST:PORT (mutual TLS) or http://HOST:PORT (a development
    /// controller without TLS); env NOVACRON_CONTROLLER.
    #[arg(long, short = 'c', global = true)]
    pub controller: Option<String>,
    /// TLS directory with this client's certificate (ca.pem, cert.pem, key.pem); env
    /// NOVACRON_TLS_DIR, else ~/.config/novacron/tls.
    #[arg(long, global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// File holding the bearer token (an API token or a session token); env
    /// NOVACRON_TOKEN_FILE, then env NOVACRON_TOKEN (the token itself), then the token
    /// `novactl login` stored.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Project of new objects, and the only one lists show (default: `default` for new
    /// objects, every project you see for lists).
    #[arg(long, global = true)]
    pub project: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Show events (and follow them with --follow).
    Events(EventsArgs),
    /// Log in (password, then the TOTP code if enrolled) and keep the session token.
    Login(LoginArgs),
    /// Forget the stored session token.
    Logout,
    /// Who the token is, and its projects.
    Whoami,
    /// Users (admins), and your TOTP second factor.
    #[command(subcommand)]
    User(UserCmd),
    /// Projects, their members and quotas.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// API tokens for automation (the project is `--project`).
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit log of mutating calls (`--project P`; admins: all projects).
    Audit(AuditArgs),
}

/// `vm` verbs.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create (and start) a VM.
    Create(Box<CreateArgs>),
    /// List VMs.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show one VM.
    Get(NameArg),
    /// Start a VM.
    Start(NameArg),
    /// Stop a VM (graceful, then forced after the timeout).
    Stop(StopArgs),
    /// Reboot a running VM.
    Reboot(NameArg),
    /// Delete a VM.
    #[command(alias = "rm")]
    Delete(NameArg),
    /// Live-migrate a VM to a host (or one the scheduler picks); `--cancel` stops the VM's
    /// migration in progress.
    Migrate(MigrateArgs),
    /// Snapshot a running VM: memory, device state and disks, crash-consistent.
    Snapshot(SnapArgs),
    /// List a VM's snapshots (every VM's without a name).
    Snapshots(SnapshotsArgs),
    /// Delete a snapshot.
    SnapshotDelete(SnapArgs),
    /// Put a VM back at a snapshot (memory, devices and disks) and resume it.
    Restore(RestoreArgs),
    /// A new VM with its own identity from a stopped VM or a snapshot.
    Clone(CloneArgs),
    /// Mark (or `--unset`) a VM or snapshot as a template for `vm create --template`.
    Template(TemplateArgs),
    /// List templates.
    Templates,
    /// Write a snapshot as one compressed backup file on its host (`--to`, absolute, new).
    SnapshotExport(ExportArgs),
    /// Create a stopped VM from a backup file on a host; restore its snapshot to resume it.
    SnapshotImport(ImportArgs),
}

/// How the destination verifies the final memory (`vm migrate --verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// The management plane's default (sampled).
    Default,
    /// No verification beyond the batches' checksums.
    Off,
    /// Every final-pass page plus a sample of the rest (bounded downtime).
    Sampled,
    /// Every page (costs a pass over guest memory while the guest is paused).
    Full,
}

/// `host` verbs.
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List hosts.
    #[command(alias = "ls")]
    List(PageArgs),
    /// Show one host.
    Get(HostArg),
    /// Stop placing VMs on a host.
    Cordon(HostArg),
    /// Allow placing VMs on a host again.
    Uncordon(HostArg),
    /// Cordon a host and live-migrate every VM off it.
    Drain(DrainArgs),
}

/// A VM name or id.
#[derive(Debug, Args)]
pub struct NameArg {
    /// VM name or id.
    pub name: String,
    /// Client request id (default: a fresh one; reuse it to retry safely).
    #[arg(long)]
    pub request_id: Option<String>,
}

/// A host name.
#[derive(Debug, Args)]
pub struct HostArg {
    /// Host name.
    pub host: String,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// Pagination.
#[derive(Debug, Args, Default)]
pub struct PageArgs {
    /// Page size (0: fetch every page).
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
    /// Start after this page token.
    #[arg(long, default_value = "")]
    pub page_token: String,
}

/// `vm list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only VMs on this host.
    #[arg(long, default_value = "")]
    pub host: String,
    /// Only VMs with this label (KEY=VALUE, repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `vm create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name.
    pub name: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub vcpus: i32,
    /// Memory (e.g. 64M, 1G; a bare number is MiB).
    #[arg(long, short = 'm', default_value = "128M", allow_hyphen_values = true)]
    pub memory: String,
    /// Kernel path on the hosts.
    #[arg(long, default_value = "")]
    pub kernel: String,
    /// Initrd path on the hosts.
    #[arg(long, default_value = "")]
    pub initrd: String,
    /// Disk image cloned as the boot disk.
    #[arg(long, default_value = "")]
    pub image: String,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Extra disk: image=PATH[,size=SIZE][,ro][,clone][,shared] or size=SIZE (repeatable).
    /// Writable disks move with the VM (live migration streams them, a cold move copies
    /// them); `ro` disks and `shared` ones (a file every host reaches, used in place) are
    /// never copied or deleted.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// Network: bridge=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net")]
    pub nets: Vec<String>,
    /// VM label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Required host label KEY=VALUE (repeatable).
    #[arg(long = "host-label")]
    pub host_labels: Vec<String>,
    /// Anti-affinity group: VMs of a group never share a host.
    #[arg(long, default_value = "")]
    pub anti_affinity: String,
    /// Pin to this host.
    #[arg(long, default_value = "")]
    pub host: String,
    /// Restart policy: always, on-failure, never.
    #[arg(long, default_value = "always")]
    pub restart: String,
    /// Create without starting.
    #[arg(long)]
    pub stopped: bool,
    /// Clone the template VM (or `VM:SNAPSHOT`) instead: the new VM gets the template's
    /// machine and disks with its own identity; the other machine arguments are ignored.
    #[arg(long, default_value = "")]
    pub template: String,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// VM name or id.
    pub name: String,
    /// Power off at once.
    #[arg(long)]
    pub force: bool,
    /// Grace period before forcing (ms; 0: controller default).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u32,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// VM name or id.
    pub name: String,
    /// Target host (default: the scheduler picks).
    #[arg(long, default_value = "")]
    pub to: String,
    /// Downtime target (ms).
    #[arg(long, default_value_t = 0)]
    pub downtime_ms: u32,
    /// Bandwidth limit: bytes/s (10M, 64KiB/s) or bits/s (100mbit); 0: no limit.
    #[arg(long, default_value = "0")]
    pub bandwidth: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 0)]
    pub timeout_s: u32,
    /// Throttle vCPUs if the migration does not converge.
    #[arg(long)]
    pub auto_converge: bool,
    /// none, zstd, delta or auto.
    #[arg(long, default_value = "")]
    pub compression: String,
    /// Verification of the final memory.
    #[arg(long, value_enum, default_value_t = VerifyArg::Default)]
    pub verify: VerifyArg,
    /// Stop the VM's migration in progress instead (the guest resumes on its source).
    #[arg(long, conflicts_with_all = ["to", "downtime_ms", "bandwidth", "timeout_s", "auto_converge", "compression", "verify"])]
    pub cancel: bool,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `host drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Host name.
    pub host: String,
    /// Migrations at a time.
    #[arg(long, default_value_t = 0)]
    pub parallel: u32,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep following new events.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Only events of this VM.
    #[arg(long, default_value = "")]
    pub vm: String,
    /// Only events of this host.
    #[arg(long, default_value = "")]
    pub host: String,
}
