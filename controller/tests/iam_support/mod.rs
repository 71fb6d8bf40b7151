//! Shared by the identity and access tests: a fixture store (users, projects, members, API
//! tokens, a host, VMs and snapshots in two projects) written with the library, and a real
//! controller serving a copy of it on 127.0.0.1:0 over real gRPC.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use novacron_controller::iam::authn::IamMode;
use novacron_controller::iam::tokens::{self, SigningKey, TokenRecord};
use novacron_controller::iam::{self, users, Iam};
use novacron_controller::store::{Op, Store};
use novacron_controller::{Config, Controller};
use novacron_proto::agent as apb;
use novacron_proto::auth::AttachToken;
use novacron_proto::controller as pb;
use novacron_proto::controller::host_service_client::HostServiceClient;
use novacron_proto::controller::iam_service_client::IamServiceClient;
use novacron_proto::controller::storage_service_client::StorageServiceClient;
use novacron_proto::controller::vm_service_client::VmServiceClient;
use prost::Message;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

/// Every fixture user's password.
pub const PASSWORD: &str = "correct horse battery";

/// The users: admin, alpha's owner, operator and viewer, a user of no project, beta's owner.
pub const USERS: [&str; 6] = ["root", "alice", "oscar", "victor", "nina", "bob"];

/// A scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("novacron-iam-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture: where its store is, VM ids by name, each user's API token (id, token).
pub struct Fixture {
    pub dir: PathBuf,
    pub vm_ids: HashMap<String, String>,
    pub api_tokens: HashMap<String, (String, String)>,
}

fn put_token(store: &Store, user: &str, project: &str, role: pb::Role) -> (String, String) {
    let (id, secret, token) = tokens::new_api_token().unwrap();
    let rec = TokenRecord {
        info: Some(pb::ApiToken {
            id: id.clone(),
            user: user.into(),
            project: project.into(),
            role: role as i32,
            created_at_ms: 1,
            ..Default::default()
        }),
        digest: tokens::digest(&secret),
    };
    store
        .apply(&[Op::PutIam(&iam::token_key(&id), rec.encode_to_vec())])
        .unwrap();
    (id, token)
}

fn vm(id: &str, name: &str, project: &str, by: &str) -> pb::Vm {
    pb::Vm {
        id: id.into(),
        name: name.into(),
        project: project.into(),
        created_by: by.into(),
        host: "h1".into(),
        desired: pb::DesiredState::Stopped as i32,
        phase: pb::VmPhase::Stopped as i32,
        spec: Some(pb::VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib: 64,
            kernel: "/k".into(),
            ..Default::default()
        }),
        generation: 1,
        ..Default::default()
    }
}

/// Writes the fixture store: projects alpha (alice owner, oscar operator, victor viewer) and
/// beta (bob owner); nina in none; root an admin. Host h1 (Ready, an agent address nothing
/// listens on); VMs a-vm (alpha, by alice), a-oscar (alpha, by oscar), b-vm (beta, by bob),
/// each with a snapshot s1 taken by its creator.
pub fn fixture(tag: &str) -> Fixture {
    let dir = scratch(tag);
    let store = Arc::new(Store::open(&dir).unwrap());
    let i = Iam::open(Arc::clone(&store), &dir).unwrap();
    iam::bootstrap_admin(i.store(), "root", PASSWORD, false).unwrap();
    for u in &USERS[1..] {
        users::put(&store, &users::new_record(u, PASSWORD, false).unwrap()).unwrap();
    }
    for p in ["alpha", "beta"] {
        let rec = pb::Project {
            name: p.into(),
            created_at_ms: 1,
            ..Default::default()
        };
        store
            .apply(&[Op::PutIam(&iam::project_key(p), rec.encode_to_vec())])
            .unwrap();
    }
    for (p, u, r) in [
        ("alpha", "alice", pb::Role::Owner),
        ("alpha", "oscar", pb::Role::Operator),
        ("alpha", "victor", pb::Role::Viewer),
        ("beta", "bob", pb::Role::Owner),
    ] {
        let m = pb::Member {
            project: p.into(),
            user: u.into(),
            role: r as i32,
        };
        store
            .apply(&[Op::PutIam(&iam::member_key(p, u), m.encode_to_vec())])
            .unwrap();
    }
    let mut api_tokens = HashMap::new();
    api_tokens.insert(
        "root".to_string(),
        put_token(&store, "root", "", pb::Role::Admin),
    );
    for (u, p, r) in [
        ("alice", "alpha", pb::Role::Owner),
        ("oscar", "alpha", pb::Role::Operator),
        ("victor", "alpha", pb::Role::Viewer),
        ("nina", "alpha", pb::Role::Viewer),
        ("bob", "beta", pb::Role::Owner),
    ] {
        api_tokens.insert(u.to_string(), put_token(&store, u, p, r));
    }
    let host = pb::Host {
        name: "h1".into(),
        address: "127.0.0.1:1".into(),
        agent_id: "agent-h1".into(),
        state: pb::HostState::Ready as i32,
        cpus: 16,
        memory_mib: 65536,
        capacity: Some(apb::Resources {
            vcpus: 64,
            memory_mib: 65536,
        }),
        ..Default::default()
    };
    let mut vm_ids = HashMap::new();
    let mut ops_vms = Vec::new();
    for (name, project, by) in [
        ("a-vm", "alpha", "alice"),
        ("a-oscar", "alpha", "oscar"),
        ("b-vm", "beta", "bob"),
    ] {
        let id = uuid::Uuid::new_v4().to_string();
        vm_ids.insert(name.to_string(), id.clone());
        ops_vms.push((vm(&id, name, project, by), by.to_string()));
    }
    let snaps: Vec<(String, Vec<u8>)> = ops_vms
        .iter()
        .map(|(v, by)| {
            let s = pb::Snapshot {
                name: "s1".into(),
                vm: v.name.clone(),
                vm_id: v.id.clone(),
                host: "h1".into(),
                created_at_ms: 1,
                spec: v.spec.clone(),
                project: v.project.clone(),
                created_by: by.clone(),
                ..Default::default()
            };
            (format!("snap/{}/s1", v.id), s.encode_to_vec())
        })
        .collect();
    let mut ops = vec![Op::PutHost(&host)];
    for (v, _) in &ops_vms {
        ops.push(Op::PutVm(v));
    }
    for (k, b) in &snaps {
        ops.push(Op::PutRecord(k, b.clone()));
    }
    store.apply(&ops).unwrap();
    drop(i);
    drop(store);
    Fixture {
        dir,
        vm_ids,
        api_tokens,
    }
}

/// A copy of `dir` (the store and the signing key) in a new scratch directory.
pub fn copy_of(dir: &Path, tag: &str) -> PathBuf {
    let to = scratch(tag);
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

/// A session token of `user` signed with the key of `dir`, issued `age_s` ago, valid
/// `ttl_s` from then.
pub fn session(dir: &Path, user: &str, age_s: u64, ttl_s: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SigningKey::load_or_create(dir)
        .unwrap()
        .issue(user, now - age_s, ttl_s)
        .unwrap()
        .0
}

/// A controller serving `dir`.
pub struct Running {
    pub ctl: Arc<Controller>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub ch: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Opens the controller of `dir` and serves it on 127.0.0.1:0 (reconcile loop idle).
pub async fn start(dir: &Path, mode: IamMode) -> Running {
    let cfg = Config {
        data_dir: dir.to_path_buf(),
        reconcile_interval: Duration::from_secs(3600),
        heartbeat_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let ctl = Controller::open(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = Arc::clone(&ctl);
    let server = tokio::spawn(async move {
        let serving = novacron_controller::server::Serving {
            tls: None,
            iam: mode,
            join: None,
        };
        novacron_controller::server::serve_with(served, listener, serving, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Running {
        ctl,
        addr,
        dir: dir.to_path_buf(),
        ch,
        stop: Some(stop),
        server: Some(server),
    }
}

impl Running {
    /// Stops serving.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }

    /// Clients attaching `token` (none: no header).
    pub fn clients(&self, token: Option<&str>) -> Clients {
        let a = AttachToken::new(token).unwrap();
        Clients {
            vm: VmServiceClient::with_interceptor(self.ch.clone(), a.clone()),
            host: HostServiceClient::with_interceptor(self.ch.clone(), a.clone()),
            storage: StorageServiceClient::with_interceptor(self.ch.clone(), a.clone()),
            iam: IamServiceClient::with_interceptor(self.ch.clone(), a),
        }
    }

    /// Every table but the audit log.
    pub fn dump(&self) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        self.ctl.iam().store().dump_except_audit().unwrap()
    }

    /// The audit log.
    pub fn audit(&self) -> Vec<pb::AuditRecord> {
        self.ctl.iam().store().audit(|_| true).unwrap()
    }
}

type Authed = InterceptedService<Channel, AttachToken>;

/// One client per user-facing service.
#[derive(Clone)]
pub struct Clients {
    pub vm: VmServiceClient<Authed>,
    pub host: HostServiceClient<Authed>,
    pub storage: StorageServiceClient<Authed>,
    pub iam: IamServiceClient<Authed>,
}

/// Points host h1 of a (stopped) fixture store at `address`.
pub fn set_host_address(dir: &Path, address: &str) {
    let store = Store::open(dir).unwrap();
    let mut h = store
        .load()
        .unwrap()
        .hosts
        .into_iter()
        .find(|h| h.name == "h1")
        .unwrap();
    h.address = address.to_string();
    store.apply(&[Op::PutHost(&h)]).unwrap();
}

/// An agent that only creates VMs (after `delay`, so that concurrent creates overlap) and
/// deletes them; everything else is UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct StubAgent {
    pub delay: Duration,
    pub created: Arc<std::sync::atomic::AtomicUsize>,
}

use novacron_proto::agent::agent_server::{Agent, AgentServer};
use tonic::{Request, Response, Status};

type DiskStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<apb::DiskExportMessage, Status>> + Send>,
>;

#[tonic::async_trait]
impl Agent for StubAgent {
    async fn get_host_info(
        &self,
        _r: Request<apb::GetHostInfoRequest>,
    ) -> Result<Response<apb::HostInfo>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn create_vm(
        &self,
        r: Request<apb::CreateVmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        tokio::time::sleep(self.delay).await;
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = r.into_inner().config.map(|c| c.id).unwrap_or_default();
        Ok(Response::new(apb::VmStatus {
            vm_id: id,
            state: apb::VmState::Stopped as i32,
            ..Default::default()
        }))
    }
    async fn start_vm(
        &self,
        _r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn stop_vm(
        &self,
        _r: Request<apb::StopVmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn reboot_vm(
        &self,
        _r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn delete_vm(
        &self,
        r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::DeleteVmResponse>, Status> {
        let _ = r;
        Ok(Response::new(apb::DeleteVmResponse::default()))
    }
    async fn get_vm(&self, _r: Request<apb::VmRequest>) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn list_vms(
        &self,
        _r: Request<apb::ListVmsRequest>,
    ) -> Result<Response<apb::ListVmsResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn prepare_incoming(
        &self,
        _r: Request<apb::PrepareIncomingRequest>,
    ) -> Result<Response<apb::PrepareIncomingResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn abort_incoming(
        &self,
        _r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn migrate_out(
        &self,
        _r: Request<apb::MigrateOutRequest>,
    ) -> Result<Response<apb::MigrateOutResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn cancel_migration(
        &self,
        _r: Request<apb::VmRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn settle_in_doubt(
        &self,
        _r: Request<apb::SettleInDoubtRequest>,
    ) -> Result<Response<apb::VmStatus>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

/// Serves a [`StubAgent`] on 127.0.0.1:0; returns its address.
pub async fn stub_agent(agent: StubAgent) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AgentServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}
