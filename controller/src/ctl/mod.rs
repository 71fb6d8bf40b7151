//! novactl: the controller's command-line client. Verbs follow virsh/kubectl habits
//! (`vm create|list|get|start|stop|reboot|delete|migrate`, `host list|get|cordon|uncordon|drain`,
//! `events`); output is a table or JSON (`-o json`). Mutating calls carry a fresh request id and
//! are retried with the same id when the controller is briefly unavailable.

pub mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use novacron_proto::controller::host_service_client::HostServiceClient;
use novacron_proto::controller::vm_service_client::VmServiceClient;
use tokio_stream::StreamExt;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::auth::{read_token, AttachToken, AuthError};

/// Errors of novactl.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The controller answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] Status),
    /// The controller could not be reached.
    #[error("cannot reach the controller at {addr}: {reason}")]
    Connect {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
    /// The token file.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

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
    /// Controller address (HOST:PORT or http://HOST:PORT); env NOVACRON_CONTROLLER.
    #[arg(long, short = 'c', global = true)]
    pub controller: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// File holding the controller's bearer token; env NOVACRON_TOKEN_FILE.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
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
    /// Live-migrate a VM to a host (or one the scheduler picks).
    Migrate(MigrateArgs),
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
    /// Extra disk: image=PATH[,size=SIZE][,ro][,clone] or size=SIZE (repeatable).
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
    /// Bandwidth limit (bytes/s, or with K/M/G suffix).
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

/// Parses a size: `64M`, `1G`, `512K`, `1T`, or a bare number of MiB; may be negative (the
/// controller rejects negative sizes). Returns MiB.
pub fn parse_mib(s: &str) -> Result<i64, CtlError> {
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let t = t.trim_end_matches(['B', 'b', 'i']);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1.0 / 1024.0,
                'M' => 1.0,
                'G' => 1024.0,
                'T' => 1024.0 * 1024.0,
                _ => return Err(CtlError::Usage(format!("bad size {s:?}: use K, M, G or T"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1.0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| CtlError::Usage(format!("bad size {s:?}")))?;
    let mib = (n * mult).ceil() as i64;
    Ok(if neg { -mib } else { mib })
}

fn parse_bytes(s: &str) -> Result<u64, CtlError> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(CtlError::Usage(format!("bad rate {s:?}"))),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| CtlError::Usage(format!("bad rate {s:?}")))
}

fn parse_kv(items: &[String]) -> Result<HashMap<String, String>, CtlError> {
    items
        .iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CtlError::Usage(format!("expected KEY=VALUE, got {i:?}"))),
        })
        .collect()
}

fn parse_disk(s: &str) -> Result<pb::DiskSpec, CtlError> {
    let mut d = pb::DiskSpec::default();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("image", v)) | Some(("path", v)) => d.image = v.to_string(),
            Some(("size", v)) => d.size_mib = parse_mib(v)?,
            None if part == "ro" || part == "readonly" => d.readonly = true,
            None if part == "clone" => d.clone = true,
            None if !part.is_empty() && d.image.is_empty() => d.image = part.to_string(),
            _ => {
                return Err(CtlError::Usage(format!(
                    "bad disk {s:?}: image=PATH[,size=SIZE][,ro][,clone]"
                )))
            }
        }
    }
    Ok(d)
}

fn parse_net(s: &str) -> Result<pb::NetworkSpec, CtlError> {
    let mut n = pb::NetworkSpec::default();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("bridge", v)) => n.bridge = v.to_string(),
            Some(("mac", v)) => n.mac = v.to_string(),
            _ => {
                return Err(CtlError::Usage(format!(
                    "bad network {s:?}: bridge=NAME[,mac=MAC]"
                )))
            }
        }
    }
    Ok(n)
}

fn parse_restart(s: &str) -> Result<pb::RestartPolicy, CtlError> {
    match s {
        "always" => Ok(pb::RestartPolicy::Always),
        "on-failure" => Ok(pb::RestartPolicy::OnFailure),
        "never" => Ok(pb::RestartPolicy::Never),
        _ => Err(CtlError::Usage(format!(
            "bad restart policy {s:?}: always, on-failure or never"
        ))),
    }
}

/// Builds the create request from `vm create`'s arguments.
pub fn create_request(a: &CreateArgs) -> Result<pb::CreateVmRequest, CtlError> {
    let spec = pb::VmSpec {
        name: a.name.clone(),
        vcpus: a.vcpus,
        memory_mib: parse_mib(&a.memory)?,
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        image: a.image.clone(),
        cmdline: a.cmdline.clone(),
        disks: a
            .disks
            .iter()
            .map(|d| parse_disk(d))
            .collect::<Result<_, _>>()?,
        networks: a
            .nets
            .iter()
            .map(|n| parse_net(n))
            .collect::<Result<_, _>>()?,
        labels: parse_kv(&a.labels)?,
        placement: Some(pb::Placement {
            host_labels: parse_kv(&a.host_labels)?,
            anti_affinity_group: a.anti_affinity.clone(),
            host: a.host.clone(),
        }),
        restart_policy: parse_restart(&a.restart)? as i32,
    };
    Ok(pb::CreateVmRequest {
        request_id: rid(&a.request_id),
        spec: Some(spec),
        stopped: a.stopped,
    })
}

fn rid(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

type Authed = InterceptedService<Channel, AttachToken>;

/// Connected clients.
struct Clients {
    vm: VmServiceClient<Authed>,
    host: HostServiceClient<Authed>,
}

/// Default controller address.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:7070";

async fn connect(cli: &Cli) -> Result<Clients, CtlError> {
    let token_file = cli
        .token_file
        .clone()
        .or_else(|| std::env::var_os("NOVACRON_TOKEN_FILE").map(PathBuf::from));
    let token = match &token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };
    let addr = cli
        .controller
        .clone()
        .or_else(|| std::env::var("NOVACRON_CONTROLLER").ok())
        .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string());
    let uri = if addr.contains("://") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };
    let err = |reason: String| CtlError::Connect {
        addr: addr.clone(),
        reason,
    };
    let ch = Endpoint::from_shared(uri)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| err(e.to_string()))?;
    let auth = AttachToken::new(token.as_deref());
    Ok(Clients {
        vm: VmServiceClient::with_interceptor(ch.clone(), auth.clone()),
        host: HostServiceClient::with_interceptor(ch, auth),
    })
}

/// Retries `f` (same request, same request id) while the controller answers UNAVAILABLE.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut delay = Duration::from_millis(200);
    for _ in 0..3 {
        match f().await {
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            r => return r.map(|r| r.into_inner()),
        }
    }
    f().await.map(|r| r.into_inner())
}

macro_rules! call {
    ($client:expr, $method:ident, $req:expr) => {{
        let req = $req;
        retry(|| {
            let mut cl = $client.clone();
            let r = req.clone();
            async move { cl.$method(r).await }
        })
        .await?
    }};
}

/// Runs one novactl command, writing its output to stdout.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let c = connect(&cli).await?;
    let fmt = cli.output;
    match cli.command {
        Command::Vm(cmd) => match cmd {
            VmCmd::Create(a) => {
                let req = create_request(&a)?;
                let vm = call!(c.vm, create_vm, req);
                output::print_vm(&vm, fmt);
            }
            VmCmd::List(a) => {
                let labels = parse_kv(&a.labels)?;
                let mut token = a.page.page_token.clone();
                let mut all = Vec::new();
                let mut next;
                loop {
                    let req = pb::ListVmsRequest {
                        page_size: if a.page.page_size == 0 {
                            500
                        } else {
                            a.page.page_size
                        },
                        page_token: token.clone(),
                        host: a.host.clone(),
                        labels: labels.clone(),
                    };
                    let resp = call!(c.vm, list_vms, req);
                    all.extend(resp.vms);
                    next = resp.next_page_token;
                    if a.page.page_size != 0 || next.is_empty() {
                        break;
                    }
                    token = next.clone();
                }
                output::print_vms(&all, &next, fmt);
            }
            VmCmd::Get(a) => {
                let vm = call!(c.vm, get_vm, pb::GetVmRequest { vm: a.name.clone() });
                output::print_vm(&vm, fmt);
            }
            VmCmd::Start(a) => {
                let req = pb::VmActionRequest {
                    request_id: rid(&a.request_id),
                    vm: a.name,
                };
                let vm = call!(c.vm, start_vm, req);
                output::print_vm(&vm, fmt);
            }
            VmCmd::Stop(a) => {
                let req = pb::StopVmRequest {
                    request_id: rid(&a.request_id),
                    vm: a.name,
                    force: a.force,
                    timeout_ms: a.timeout_ms,
                };
                let vm = call!(c.vm, stop_vm, req);
                output::print_vm(&vm, fmt);
            }
            VmCmd::Reboot(a) => {
                let req = pb::VmActionRequest {
                    request_id: rid(&a.request_id),
                    vm: a.name,
                };
                let vm = call!(c.vm, reboot_vm, req);
                output::print_vm(&vm, fmt);
            }
            VmCmd::Delete(a) => {
                let req = pb::VmActionRequest {
                    request_id: rid(&a.request_id),
                    vm: a.name,
                };
                let r = call!(c.vm, delete_vm, req);
                output::print_deleted(&r, fmt);
            }
            VmCmd::Migrate(a) => {
                let req = pb::MigrateVmRequest {
                    request_id: rid(&a.request_id),
                    vm: a.name,
                    target_host: a.to,
                    options: Some(apb::MigrateOptions {
                        downtime_ms: a.downtime_ms,
                        bandwidth: parse_bytes(&a.bandwidth)?,
                        timeout_s: a.timeout_s,
                        auto_converge: a.auto_converge,
                        compression: a.compression,
                    }),
                };
                let r = call!(c.vm, migrate_vm, req);
                output::print_migration(&r, fmt);
            }
        },
        Command::Host(cmd) => match cmd {
            HostCmd::List(p) => {
                let mut token = p.page_token.clone();
                let mut all = Vec::new();
                let mut next;
                loop {
                    let req = pb::ListHostsRequest {
                        page_size: if p.page_size == 0 { 500 } else { p.page_size },
                        page_token: token.clone(),
                    };
                    let resp = call!(c.host, list_hosts, req);
                    all.extend(resp.hosts);
                    next = resp.next_page_token;
                    if p.page_size != 0 || next.is_empty() {
                        break;
                    }
                    token = next.clone();
                }
                output::print_hosts(&all, &next, fmt);
            }
            HostCmd::Get(a) => {
                let h = call!(
                    c.host,
                    get_host,
                    pb::HostActionRequest {
                        request_id: String::new(),
                        host: a.host.clone()
                    }
                );
                output::print_host(&h, fmt);
            }
            HostCmd::Cordon(a) => {
                let req = pb::HostActionRequest {
                    request_id: rid(&a.request_id),
                    host: a.host,
                };
                let h = call!(c.host, cordon_host, req);
                output::print_host(&h, fmt);
            }
            HostCmd::Uncordon(a) => {
                let req = pb::HostActionRequest {
                    request_id: rid(&a.request_id),
                    host: a.host,
                };
                let h = call!(c.host, uncordon_host, req);
                output::print_host(&h, fmt);
            }
            HostCmd::Drain(a) => {
                let req = pb::DrainHostRequest {
                    request_id: rid(&a.request_id),
                    host: a.host,
                    parallel: a.parallel,
                };
                let r = call!(c.host, drain_host, req);
                output::print_drain(&r, fmt);
            }
        },
        Command::Events(a) => {
            let req = pb::WatchEventsRequest {
                since_seq: a.since,
                replay: true,
                vm: a.vm,
                host: a.host,
            };
            let mut stream = c.vm.clone().watch_events(req).await?.into_inner();
            if !a.follow {
                // Print the backlog: stop once no event arrives for a moment.
                let mut evs = Vec::new();
                while let Ok(Some(ev)) =
                    tokio::time::timeout(Duration::from_millis(300), stream.next()).await
                {
                    evs.push(ev?);
                }
                output::print_events(&evs, fmt);
            } else {
                if fmt == Format::Table {
                    output::print_event_header();
                }
                while let Some(ev) = stream.next().await {
                    output::print_event_line(&ev?, fmt);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("64M").unwrap(), 64);
        assert_eq!(parse_mib("64MiB").unwrap(), 64);
        assert_eq!(parse_mib("1G").unwrap(), 1024);
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert_eq!(parse_mib("-64M").unwrap(), -64);
        assert_eq!(parse_mib("1536K").unwrap(), 2);
        assert!(parse_mib("12Q").is_err());
        assert_eq!(parse_bytes("10M").unwrap(), 10 << 20);
    }

    #[test]
    fn create_args() {
        let cli = Cli::try_parse_from([
            "novactl",
            "vm",
            "create",
            "web",
            "--vcpus",
            "2",
            "--memory",
            "-64M",
            "--kernel",
            "/k",
            "--disk",
            "image=/i.img,ro",
            "--disk",
            "size=1G",
            "--net",
            "bridge=br0,mac=52:54:00:00:00:01",
            "-l",
            "app=web",
            "--host-label",
            "zone=a",
            "--anti-affinity",
            "web",
            "--restart",
            "never",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("not create")
        };
        let r = create_request(&a).unwrap();
        let s = r.spec.unwrap();
        assert_eq!(s.memory_mib, -64);
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.disks.len(), 2);
        assert!(s.disks[0].readonly);
        assert_eq!(s.disks[1].size_mib, 1024);
        assert_eq!(s.networks[0].bridge, "br0");
        assert_eq!(s.labels["app"], "web");
        assert_eq!(s.placement.unwrap().host_labels["zone"], "a");
        assert_eq!(s.restart_policy, pb::RestartPolicy::Never as i32);
        assert!(!r.request_id.is_empty());
    }
}
