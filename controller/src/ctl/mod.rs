//! novactl: the controller's command-line client. Verbs follow virsh/kubectl habits
//! (`vm create|list|get|start|stop|reboot|delete|migrate`, `host list|get|cordon|uncordon|drain`,
//! `events`); output is a table or JSON (`-o json`). Mutating calls carry a fresh request id and
//! are retried with the same id when the controller is briefly unavailable.
//!
//! [`args`] holds the command line as clap parses it, [`parse`] turns arguments into
//! requests, [`output`] prints answers, [`storage`] and [`iam`] hold the storage and the
//! identity verbs (login, users, projects, tokens, audit); this module connects and runs a
//! command.

pub mod args;
pub mod iam;
pub mod output;
pub mod parse;
pub mod storage;

use std::time::Duration;

use novacron_proto::auth::{AttachToken, AuthError};
use novacron_proto::controller as pb;
use novacron_proto::controller::host_service_client::HostServiceClient;
use novacron_proto::controller::iam_service_client::IamServiceClient;
use novacron_proto::controller::storage_service_client::StorageServiceClient;
use novacron_proto::controller::vm_service_client::VmServiceClient;
use novacron_security::TlsMaterial;
use novacron_vmm_api::units::UnitError;
use tokio_stream::StreamExt;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use args::{Cli, Command, Format, HostCmd, VerifyArg, VmCmd};
pub use parse::{create_request, migrate_request, parse_mib};
use parse::{parse_kv, rid};

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
    /// A size or rate argument that does not parse.
    #[error("{what}: {source}")]
    Unit {
        /// The argument (`--memory`, `--bandwidth`, ...).
        what: &'static str,
        /// What is wrong with it.
        source: UnitError,
    },
    /// The token file or the token.
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

type Authed = InterceptedService<Channel, AttachToken>;

/// Connected clients.
struct Clients {
    vm: VmServiceClient<Authed>,
    host: HostServiceClient<Authed>,
    storage: StorageServiceClient<Authed>,
    iam: IamServiceClient<Authed>,
}

/// Default controller address.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:7070";

/// The client's TLS directory: `--tls-dir`, `NOVACRON_TLS_DIR`, or `~/.config/novacron/tls`
/// when it exists.
fn tls_dir(cli: &Cli) -> Option<std::path::PathBuf> {
    if let Some(d) = cli
        .tls_dir
        .clone()
        .or_else(|| std::env::var_os("NOVACRON_TLS_DIR").map(std::path::PathBuf::from))
    {
        return Some(d);
    }
    let d = std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config/novacron/tls");
    d.is_dir().then_some(d)
}

async fn connect(cli: &Cli) -> Result<Clients, CtlError> {
    let token = match cli.command {
        // A login needs no token (and a stale one must not stand in its way).
        Command::Login(_) => None,
        _ => iam::token_for(cli)?,
    };
    let auth = AttachToken::new(token.as_deref())?;
    let addr = cli
        .controller
        .clone()
        .or_else(|| std::env::var("NOVACRON_CONTROLLER").ok())
        .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string());
    let err = |reason: String| CtlError::Connect {
        addr: addr.clone(),
        reason,
    };
    let (uri, tls) = match addr.strip_prefix("http://") {
        Some(_) => (addr.clone(), None),
        None => {
            let hostport = addr.strip_prefix("https://").unwrap_or(&addr);
            let dir = tls_dir(cli).ok_or_else(|| {
                err("no client certificate: give --tls-dir or NOVACRON_TLS_DIR (`novacron-controller \
                     certs init` made one in DATA_DIR/pki/clients/admin), or \
                     http://HOST:PORT for a development controller"
                    .into())
            })?;
            let m = TlsMaterial::load(&dir).map_err(|e| err(e.to_string()))?;
            (format!("https://{hostport}"), Some(m))
        }
    };
    let mut ep = Endpoint::from_shared(uri)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(m) = &tls {
        ep = ep
            .tls_config(novacron_security::tls::mutual_client(
                m,
                novacron_security::pki::CONTROLLER_DNS_NAME,
            ))
            .map_err(|e| err(e.to_string()))?;
    }
    let ch = ep.connect().await.map_err(|e| err(e.to_string()))?;
    Ok(Clients {
        vm: VmServiceClient::with_interceptor(ch.clone(), auth.clone()),
        host: HostServiceClient::with_interceptor(ch.clone(), auth.clone()),
        storage: StorageServiceClient::with_interceptor(ch.clone(), auth.clone()),
        iam: IamServiceClient::with_interceptor(ch, auth),
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
    if let Command::Logout = cli.command {
        return iam::logout();
    }
    let c = connect(&cli).await?;
    let fmt = cli.output;
    let project = cli.project.clone().unwrap_or_default();
    match cli.command {
        Command::Vm(cmd) => match cmd {
            VmCmd::Create(a) if !a.template.is_empty() => {
                let (source, snapshot) = storage::template_source(&a.template);
                let clone = storage::CloneArgs {
                    source,
                    name: a.name,
                    snapshot,
                    stopped: a.stopped,
                    request_id: a.request_id,
                };
                storage::clone(&mut c.storage.clone(), clone, true, fmt).await?;
            }
            VmCmd::Snapshot(a) => storage::snapshot(&mut c.storage.clone(), a, fmt).await?,
            VmCmd::Snapshots(a) => {
                storage::snapshots(&mut c.storage.clone(), a, &project, fmt).await?
            }
            VmCmd::SnapshotDelete(a) => {
                storage::snapshot_delete(&mut c.storage.clone(), a, fmt).await?
            }
            VmCmd::Restore(a) => storage::restore(&mut c.storage.clone(), a, fmt).await?,
            VmCmd::Clone(a) => storage::clone(&mut c.storage.clone(), a, false, fmt).await?,
            VmCmd::Template(a) => storage::template(&mut c.storage.clone(), a, fmt).await?,
            VmCmd::Templates => storage::templates(&mut c.storage.clone(), &project, fmt).await?,
            VmCmd::SnapshotExport(a) => storage::export(&mut c.storage.clone(), a, fmt).await?,
            VmCmd::SnapshotImport(a) => {
                storage::import(&mut c.storage.clone(), a, &project, fmt).await?
            }
            VmCmd::Create(a) => {
                let mut req = create_request(&a)?;
                req.project = project.clone();
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
                        project: project.clone(),
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
            VmCmd::Migrate(a) if a.cancel => {
                let req = pb::CancelMigrationRequest { vm: a.name };
                let vm = call!(c.vm, cancel_migration, req);
                output::print_vm(&vm, fmt);
            }
            VmCmd::Migrate(a) => {
                let req = migrate_request(&a)?;
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
        Command::Login(a) => iam::login(&mut c.iam.clone(), a, fmt).await?,
        Command::Logout => iam::logout()?,
        Command::Whoami => iam::whoami(&mut c.iam.clone(), fmt).await?,
        Command::User(cmd) => iam::user(&mut c.iam.clone(), cmd, fmt).await?,
        Command::Project(cmd) => iam::project(&mut c.iam.clone(), cmd, fmt).await?,
        Command::Token(cmd) => iam::token(&mut c.iam.clone(), cmd, &project, fmt).await?,
        Command::Audit(a) => iam::audit(&mut c.iam.clone(), a, &project, fmt).await?,
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
