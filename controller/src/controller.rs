//! The controller core: VM and host operations on top of the state, the store, the scheduler
//! and the agents. Every operation validates first and changes nothing when it fails
//! (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED);
//! state changes are persisted before the call answers. Operations on one VM are serialised
//! by a per-VM async lock, which the reconcile loop also honours.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use prost::Message;
use tonic::{Code, Status};

use crate::agent_client::{request, AgentClientError, AgentPool, CALL_TIMEOUT};
use crate::events::EventBus;
use crate::scheduler::{Policy, Rejection, SchedulerError};
use crate::state::{agent_config, host_spec, phase_from_report, Needs, State, StateError};
use crate::store::{Op, Store, StoreError, StoredRequest};
use crate::util::{now_ms, valid_name};

/// Largest page a list call returns.
pub const MAX_PAGE: usize = 1000;
/// Page size when the request gives none.
pub const DEFAULT_PAGE: usize = 100;

/// Errors of controller operations; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown VM or host.
    #[error("{0}")]
    NotFound(String),
    /// Name in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not valid in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No room.
    #[error("{0}")]
    ResourceExhausted(String),
    /// An agent cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A migration failed; the VM stayed on its source.
    #[error("{0}")]
    Aborted(String),
    /// An agent answered with an error.
    #[error("agent on {host}: {status}")]
    Agent {
        /// The host.
        host: String,
        /// The agent's status.
        status: Status,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StateError> for ControllerError {
    fn from(e: StateError) -> Self {
        ControllerError::NotFound(e.to_string())
    }
}

impl From<AgentClientError> for ControllerError {
    fn from(e: AgentClientError) -> Self {
        ControllerError::Unavailable(e.to_string())
    }
}

impl From<SchedulerError> for ControllerError {
    fn from(e: SchedulerError) -> Self {
        match &e {
            SchedulerError::NoFit(_) => ControllerError::ResourceExhausted(e.to_string()),
            SchedulerError::UnknownHost(_) => ControllerError::NotFound(e.to_string()),
            SchedulerError::HostRejected {
                reason: Rejection::Capacity,
                ..
            } => ControllerError::ResourceExhausted(e.to_string()),
            SchedulerError::HostRejected { .. } => {
                ControllerError::FailedPrecondition(e.to_string())
            }
            SchedulerError::BadStrategy(_) => ControllerError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Self {
        let msg = e.to_string();
        match e {
            ControllerError::InvalidArgument(_) => Status::invalid_argument(msg),
            ControllerError::NotFound(_) => Status::not_found(msg),
            ControllerError::AlreadyExists(_) => Status::already_exists(msg),
            ControllerError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ControllerError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ControllerError::Unavailable(_) => Status::unavailable(msg),
            ControllerError::Aborted(_) => Status::aborted(msg),
            ControllerError::Agent { status, .. } => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    Status::unavailable(msg)
                }
                code => Status::new(code, msg),
            },
            ControllerError::Store(_) | ControllerError::Internal(_) => Status::internal(msg),
        }
    }
}

/// Result of controller operations.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;

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
        }
    }
}

type KeyLock = Arc<tokio::sync::Mutex<()>>;

/// The controller. Shared as `Arc<Controller>` by the API, the reconcile loop and drains.
#[derive(Debug)]
pub struct Controller {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<Store>,
    state: Mutex<State>,
    pub(crate) events: EventBus,
    pub(crate) agents: AgentPool,
    locks: Mutex<HashMap<String, KeyLock>>,
}

/// Validates a VM spec as given by a user.
pub fn validate_spec(spec: &pb::VmSpec) -> Result<()> {
    let bad = |m: String| Err(ControllerError::InvalidArgument(m));
    if !valid_name(&spec.name) {
        return bad(format!(
            "invalid vm name {:?}: 1-63 characters of letters, digits, '-', '_', '.', starting with a letter or digit",
            spec.name
        ));
    }
    if spec.vcpus < 1 || spec.vcpus > 256 {
        return bad(format!(
            "vcpus must be between 1 and 256, got {}",
            spec.vcpus
        ));
    }
    if spec.memory_mib < 1 || spec.memory_mib > 4 * 1024 * 1024 {
        return bad(format!(
            "memory must be between 1 MiB and 4 TiB, got {} MiB",
            spec.memory_mib
        ));
    }
    if spec.kernel.is_empty() && spec.image.is_empty() {
        return bad("a kernel or an image is required".into());
    }
    for (i, d) in spec.disks.iter().enumerate() {
        if d.size_mib < 0 {
            return bad(format!("disk {i}: size must not be negative"));
        }
        if d.image.is_empty() && d.size_mib == 0 {
            return bad(format!("disk {i}: give an image or a size"));
        }
    }
    for (i, n) in spec.networks.iter().enumerate() {
        if !n.mac.is_empty() && !valid_mac(&n.mac) {
            return bad(format!("network {i}: invalid mac {:?}", n.mac));
        }
    }
    if pb::RestartPolicy::try_from(spec.restart_policy).is_err() {
        return bad(format!("unknown restart policy {}", spec.restart_policy));
    }
    Ok(())
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

fn page_bounds(page_size: u32) -> usize {
    match page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// Maps an agent's error status.
pub(crate) fn agent_err(host: &str, status: Status) -> ControllerError {
    ControllerError::Agent {
        host: host.to_string(),
        status,
    }
}

impl Controller {
    /// Opens the store in `cfg.data_dir` and rebuilds the state from it.
    pub fn open(cfg: Config) -> Result<Arc<Self>> {
        let store = Arc::new(Store::open(&cfg.data_dir)?);
        let _ = store.expire_requests(now_ms() - 24 * 3600 * 1000);
        let snap = store.load()?;
        let state = State::from_records(cfg.policy, snap.hosts, snap.vms, now_ms());
        let events = EventBus::new(Arc::clone(&store), snap.last_event_seq);
        Ok(Arc::new(Controller {
            cfg,
            store,
            state: Mutex::new(state),
            events,
            agents: AgentPool::new(),
            locks: Mutex::new(HashMap::new()),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key_lock(&self, key: &str) -> KeyLock {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(key.to_string()).or_default())
    }

    /// Serialises operations on one VM (or any key).
    pub(crate) async fn lock_key(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.key_lock(key).lock_owned().await
    }

    /// The lock of `key` if it is free now.
    pub(crate) fn try_lock_key(&self, key: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.key_lock(key).try_lock_owned().ok()
    }

    /// Whether an operation holds `key` now.
    pub(crate) fn is_busy(&self, key: &str) -> bool {
        let m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).is_some_and(|l| l.try_lock().is_err())
    }

    /// Drops unused lock entries.
    pub(crate) fn gc_locks(&self) {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
    }

    /// Persists `vm` (bumping its generation) and stores it in `st`.
    pub(crate) fn save_vm(&self, st: &mut State, mut vm: pb::Vm) -> Result<pb::Vm> {
        vm.updated_at_ms = now_ms();
        vm.generation += 1;
        self.store.apply(&[Op::PutVm(&vm)])?;
        st.vms.insert(vm.id.clone(), vm.clone());
        Ok(vm)
    }

    /// Persists `vm` together with an event about it (one transaction) and stores it in
    /// `st`; the event is broadcast once stored.
    pub(crate) fn save_vm_event(
        &self,
        st: &mut State,
        mut vm: pb::Vm,
        kind: &str,
        msg: impl Into<String>,
    ) -> Result<pb::Vm> {
        vm.updated_at_ms = now_ms();
        vm.generation += 1;
        self.events
            .emit_with(
                &[Op::PutVm(&vm)],
                kind,
                Some((&vm.name, &vm.id)),
                &vm.host,
                msg,
            )
            .map_err(ControllerError::Store)?;
        st.vms.insert(vm.id.clone(), vm.clone());
        Ok(vm)
    }

    /// Persists a host record.
    pub(crate) fn save_host(&self, st: &mut State, h: pb::Host) -> Result<pb::Host> {
        self.store.apply(&[Op::PutHost(&h)])?;
        let e = st.hosts.entry(h.name.clone()).or_default();
        e.host = h.clone();
        Ok(h)
    }

    /// Runs `fut` once per client request id: a retry gets the stored first answer.
    pub(crate) async fn idempotent<R, F>(&self, request_id: &str, method: &str, fut: F) -> Result<R>
    where
        R: Message + Default,
        F: Future<Output = Result<(R, String)>>,
    {
        if request_id.is_empty() {
            return fut.await.map(|(r, _)| r);
        }
        if request_id.len() > 128 {
            return Err(ControllerError::InvalidArgument(
                "request_id is longer than 128 bytes".into(),
            ));
        }
        let _guard = self.lock_key(&format!("req:{request_id}")).await;
        if let Some(stored) = self.stored_answer::<R>(request_id, method)? {
            return Ok(stored);
        }
        let (resp, target) = fut.await?;
        let rec = StoredRequest {
            method: method.to_string(),
            target,
            response: resp.encode_to_vec(),
            at_ms: now_ms(),
        };
        self.store.apply(&[Op::PutRequest(request_id, rec)])?;
        Ok(resp)
    }

    /// The stored answer of a request id, checking it was used for `method`.
    fn stored_answer<R: Message + Default>(
        &self,
        request_id: &str,
        method: &str,
    ) -> Result<Option<R>> {
        if request_id.len() > 128 {
            return Err(ControllerError::InvalidArgument(
                "request_id is longer than 128 bytes".into(),
            ));
        }
        let Some(stored) = self.store.get_request(request_id)? else {
            return Ok(None);
        };
        if stored.method != method {
            return Err(ControllerError::InvalidArgument(format!(
                "request id {request_id} was already used for {}",
                stored.method
            )));
        }
        R::decode(stored.response.as_slice())
            .map(Some)
            .map_err(|e| ControllerError::Internal(format!("stored answer of {request_id}: {e}")))
    }

    /// The address of a Ready host's agent.
    pub(crate) fn agent_addr(&self, host: &str) -> Result<String> {
        let st = self.state();
        let e = st.host(host)?;
        if !e.ready() {
            return Err(ControllerError::Unavailable(format!(
                "host {host} is NotReady"
            )));
        }
        Ok(e.host.address.clone())
    }

    /// Creates (and optionally starts) `vm` on `host`'s agent.
    pub(crate) async fn agent_create(
        &self,
        host: &str,
        vm: &pb::Vm,
        start: bool,
    ) -> Result<apb::VmStatus> {
        let mut c = self.agents.client(&self.agent_addr(host)?)?;
        let req = apb::CreateVmRequest {
            request_id: String::new(),
            config: Some(agent_config(vm)),
            start,
        };
        c.create_vm(request(req, CALL_TIMEOUT))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| agent_err(host, s))
    }

    pub(crate) async fn agent_delete(&self, host: &str, vm_id: &str) -> Result<()> {
        let mut c = self.agents.client(&self.agent_addr(host)?)?;
        let req = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm_id.to_string(),
        };
        match c.delete_vm(request(req, CALL_TIMEOUT)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(agent_err(host, s)),
        }
    }

    pub(crate) async fn agent_start(&self, host: &str, vm: &pb::Vm) -> Result<apb::VmStatus> {
        let mut c = self.agents.client(&self.agent_addr(host)?)?;
        let req = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm.id.clone(),
        };
        match c.start_vm(request(req, CALL_TIMEOUT)).await {
            Ok(r) => Ok(r.into_inner()),
            // The agent lost it (or never got it): create it again.
            Err(s) if s.code() == Code::NotFound => self.agent_create(host, vm, true).await,
            Err(s) => Err(agent_err(host, s)),
        }
    }

    pub(crate) async fn agent_stop(
        &self,
        host: &str,
        vm_id: &str,
        force: bool,
        timeout_ms: u32,
    ) -> Result<apb::VmStatus> {
        let mut c = self.agents.client(&self.agent_addr(host)?)?;
        let req = apb::StopVmRequest {
            request_id: String::new(),
            vm_id: vm_id.to_string(),
            timeout_ms,
            force,
        };
        let deadline = Duration::from_millis(timeout_ms as u64) + CALL_TIMEOUT;
        c.stop_vm(request(req, deadline))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| agent_err(host, s))
    }

    /// Sets the VM's status and the phase it implies.
    pub(crate) fn apply_status(vm: &mut pb::Vm, status: apb::VmStatus) {
        if let Some(p) = phase_from_report(&status) {
            vm.phase = p as i32;
        }
        vm.status = Some(status);
    }

    fn vm_name_id(vm: &pb::Vm) -> (String, String) {
        (vm.name.clone(), vm.id.clone())
    }

    pub(crate) fn emit_vm(&self, kind: &str, vm: &pb::Vm, msg: impl Into<String>) {
        let (n, i) = Self::vm_name_id(vm);
        self.events.emit(kind, Some((&n, &i)), &vm.host, msg);
    }

    // ---------------------------------------------------------------- VM API

    /// Creates a VM: validates, places it atomically, persists it, then has its agent create
    /// (and start) it. An agent failure undoes everything.
    pub async fn create_vm(&self, req: pb::CreateVmRequest) -> Result<pb::Vm> {
        let spec = req
            .spec
            .ok_or_else(|| ControllerError::InvalidArgument("spec is required".into()))?;
        validate_spec(&spec)?;
        let rid = req.request_id.clone();
        if rid.is_empty() {
            return self
                .create_inner(spec, !req.stopped, rid)
                .await
                .map(|(vm, _)| vm);
        }
        // Like `idempotent`, but the answer is stored by create_inner in the same
        // transactions as the VM itself.
        let _guard = self.lock_key(&format!("req:{rid}")).await;
        if let Some(stored) = self.stored_answer::<pb::Vm>(&rid, "CreateVm")? {
            return Ok(stored);
        }
        self.create_inner(spec, !req.stopped, rid)
            .await
            .map(|(vm, _)| vm)
    }

    async fn create_inner(
        &self,
        spec: pb::VmSpec,
        start: bool,
        request_id: String,
    ) -> Result<(pb::Vm, String)> {
        let id = uuid::Uuid::new_v4().to_string();
        let _vm_guard = self.lock_key(&id).await;
        let vm = {
            let mut st = self.state();
            if st.names.contains_key(&spec.name) {
                return Err(ControllerError::AlreadyExists(format!(
                    "vm {} already exists",
                    spec.name
                )));
            }
            let needs = Needs::of(&spec);
            let req = needs.request(&id, &[]);
            let host = match &needs.pinned {
                Some(h) => {
                    st.host(h)?;
                    st.sched.claim(h, &req)?;
                    h.clone()
                }
                None => st.sched.place(&req)?,
            };
            let now = now_ms();
            let vm = pb::Vm {
                id: id.clone(),
                name: spec.name.clone(),
                spec: Some(spec),
                desired: if start {
                    pb::DesiredState::Running
                } else {
                    pb::DesiredState::Stopped
                } as i32,
                phase: pb::VmPhase::Scheduled as i32,
                host: host.clone(),
                created_at_ms: now,
                updated_at_ms: now,
                generation: 1,
                ..Default::default()
            };
            let mut ops = vec![Op::PutVm(&vm)];
            if !request_id.is_empty() {
                ops.push(Op::PutRequest(
                    &request_id,
                    StoredRequest {
                        method: "CreateVm".into(),
                        target: id.clone(),
                        response: vm.encode_to_vec(),
                        at_ms: now,
                    },
                ));
            }
            let placed = format!("placed on {host}");
            if let Err(e) =
                self.events
                    .emit_with(&ops, "VmCreated", Some((&vm.name, &id)), &host, placed)
            {
                st.sched.release(&host, &id);
                return Err(e.into());
            }
            st.names.insert(vm.name.clone(), id.clone());
            st.vms.insert(id.clone(), vm.clone());
            st.refresh_host_counts();
            vm
        };

        match self.agent_create(&vm.host, &vm, start).await {
            Ok(status) => {
                let mut st = self.state();
                let mut cur = st.vms.get(&id).cloned().unwrap_or(vm);
                Self::apply_status(&mut cur, status);
                cur.message.clear();
                cur.updated_at_ms = now_ms();
                cur.generation += 1;
                // The VM, the answer a retry gets, and the event: one transaction.
                let mut ops = vec![Op::PutVm(&cur)];
                if !request_id.is_empty() {
                    let rec = StoredRequest {
                        method: "CreateVm".into(),
                        target: id.clone(),
                        response: cur.encode_to_vec(),
                        at_ms: now_ms(),
                    };
                    ops.push(Op::PutRequest(&request_id, rec));
                }
                let (kind, msg) = if cur.phase == pb::VmPhase::Running as i32 {
                    ("VmStarted", "running")
                } else {
                    ("VmDefined", "created, not started")
                };
                self.events
                    .emit_with(&ops, kind, Some((&cur.name, &id)), &cur.host, msg)
                    .map_err(ControllerError::Store)?;
                st.vms.insert(id.clone(), cur.clone());
                Ok((cur, id))
            }
            Err(e) => {
                // Undo: nothing of this VM remains.
                {
                    let mut st = self.state();
                    st.vms.remove(&id);
                    st.names.remove(&vm.name);
                    st.sched.release(&vm.host, &id);
                    st.refresh_host_counts();
                    self.store.apply(&[Op::DeleteVm(&id)])?;
                }
                let _ = self.agent_delete(&vm.host, &id).await;
                self.emit_vm(
                    "VmFailed",
                    &vm,
                    format!("create failed and was undone: {e}"),
                );
                Err(e)
            }
        }
    }

    /// A VM by name or id.
    pub fn get_vm(&self, key: &str) -> Result<pb::Vm> {
        if key.is_empty() {
            return Err(ControllerError::InvalidArgument(
                "vm name or id is required".into(),
            ));
        }
        Ok(self.state().find_vm(key)?.clone())
    }

    /// A page of VMs ordered by name.
    pub fn list_vms(&self, req: &pb::ListVmsRequest) -> Result<pb::ListVmsResponse> {
        let size = page_bounds(req.page_size);
        let st = self.state();
        if !req.host.is_empty() {
            st.host(&req.host)?;
        }
        let filter = |vm: &pb::Vm| {
            (req.host.is_empty() || vm.host == req.host)
                && req
                    .labels
                    .iter()
                    .all(|(k, v)| vm.spec.as_ref().and_then(|s| s.labels.get(k)) == Some(v))
        };
        let mut total = 0u32;
        let mut vms = Vec::new();
        let mut next = String::new();
        for (name, id) in st.names.iter() {
            let Some(vm) = st.vms.get(id) else { continue };
            if !filter(vm) {
                continue;
            }
            total += 1;
            if !req.page_token.is_empty() && name.as_str() <= req.page_token.as_str() {
                continue;
            }
            if vms.len() < size {
                vms.push(vm.clone());
            } else if next.is_empty() {
                next = vms
                    .last()
                    .map(|v: &pb::Vm| v.name.clone())
                    .unwrap_or_default();
            }
        }
        Ok(pb::ListVmsResponse {
            vms,
            next_page_token: next,
            total,
        })
    }

    /// Starts a VM (sets its desired state to running).
    pub async fn start_vm(&self, req: pb::VmActionRequest) -> Result<pb::Vm> {
        self.idempotent(&req.request_id, "StartVm", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = {
                let mut st = self.state();
                let mut vm = st.find_vm(&id)?.clone();
                self.check_not_busy_phase(&vm)?;
                if vm.host.is_empty() {
                    let needs = Needs::of(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default()));
                    let host = st.sched.place(&needs.request(&id, &[]))?;
                    vm.host = host;
                    vm.phase = pb::VmPhase::Scheduled as i32;
                    st.refresh_host_counts();
                } else if !st.host(&vm.host)?.ready() {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host {} of vm {} is NotReady",
                        vm.host, vm.name
                    )));
                }
                vm.desired = pb::DesiredState::Running as i32;
                self.save_vm(&mut st, vm)?
            };
            let status = self.agent_start(&vm.host, &vm).await?;
            let vm = {
                let mut st = self.state();
                let mut cur = st.find_vm(&id)?.clone();
                Self::apply_status(&mut cur, status);
                self.save_vm_event(&mut st, cur, "VmStarted", "started")?
            };
            Ok((vm, id.clone()))
        })
        .await
    }

    fn check_not_busy_phase(&self, vm: &pb::Vm) -> Result<()> {
        if vm.phase == pb::VmPhase::Migrating as i32 {
            return Err(ControllerError::FailedPrecondition(format!(
                "vm {} is migrating",
                vm.name
            )));
        }
        if vm.phase == pb::VmPhase::Deleting as i32 {
            return Err(ControllerError::FailedPrecondition(format!(
                "vm {} is being deleted",
                vm.name
            )));
        }
        Ok(())
    }

    /// Stops a VM: graceful shutdown, then forced after the timeout.
    pub async fn stop_vm(&self, req: pb::StopVmRequest) -> Result<pb::Vm> {
        let timeout = if req.timeout_ms == 0 {
            self.cfg.stop_timeout.as_millis() as u32
        } else {
            req.timeout_ms
        };
        self.idempotent(&req.request_id, "StopVm", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = {
                let mut st = self.state();
                let mut vm = st.find_vm(&id)?.clone();
                self.check_not_busy_phase(&vm)?;
                if !vm.host.is_empty() && !st.host(&vm.host)?.ready() {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host {} of vm {} is NotReady",
                        vm.host, vm.name
                    )));
                }
                vm.desired = pb::DesiredState::Stopped as i32;
                if vm.host.is_empty() {
                    vm.phase = pb::VmPhase::Stopped as i32;
                }
                self.save_vm(&mut st, vm)?
            };
            if vm.host.is_empty() {
                return Ok((vm, id.clone()));
            }
            let status = match self.agent_stop(&vm.host, &id, req.force, timeout).await {
                Ok(s) => Some(s),
                Err(ControllerError::Agent { status, .. }) if status.code() == Code::NotFound => {
                    None
                }
                Err(e) => return Err(e),
            };
            let vm = {
                let mut st = self.state();
                let mut cur = st.find_vm(&id)?.clone();
                match status {
                    Some(s) => Self::apply_status(&mut cur, s),
                    None => cur.phase = pb::VmPhase::Stopped as i32,
                }
                let msg = if req.force { "forced off" } else { "stopped" };
                self.save_vm_event(&mut st, cur, "VmStopped", msg)?
            };
            Ok((vm, id.clone()))
        })
        .await
    }

    /// Reboots a running VM.
    pub async fn reboot_vm(&self, req: pb::VmActionRequest) -> Result<pb::Vm> {
        self.idempotent(&req.request_id, "RebootVm", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = self.state().find_vm(&id)?.clone();
            if vm.phase != pb::VmPhase::Running as i32 {
                return Err(ControllerError::FailedPrecondition(format!(
                    "vm {} is not running",
                    vm.name
                )));
            }
            let mut c = self.agents.client(&self.agent_addr(&vm.host)?)?;
            let r = apb::VmRequest {
                request_id: String::new(),
                vm_id: id.clone(),
            };
            let status = c
                .reboot_vm(request(r, CALL_TIMEOUT + self.cfg.stop_timeout))
                .await
                .map_err(|s| agent_err(&vm.host, s))?
                .into_inner();
            let vm = {
                let mut st = self.state();
                let mut cur = st.find_vm(&id)?.clone();
                Self::apply_status(&mut cur, status);
                self.save_vm_event(&mut st, cur, "VmRebooted", "rebooted")?
            };
            Ok((vm, id.clone()))
        })
        .await
    }

    /// Deletes a VM: stops it and removes it from its host, then forgets it.
    pub async fn delete_vm(&self, req: pb::VmActionRequest) -> Result<pb::DeleteVmResponse> {
        self.idempotent(&req.request_id, "DeleteVm", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let (vm, host_ready) = {
                let mut st = self.state();
                let mut vm = st.find_vm(&id)?.clone();
                if vm.phase == pb::VmPhase::Migrating as i32 {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "vm {} is migrating",
                        vm.name
                    )));
                }
                let ready =
                    !vm.host.is_empty() && st.hosts.get(&vm.host).is_some_and(|h| h.ready());
                vm.phase = pb::VmPhase::Deleting as i32;
                (self.save_vm(&mut st, vm)?, ready)
            };
            if host_ready {
                // A failure leaves the VM in Deleting; the reconcile loop finishes the job.
                self.agent_delete(&vm.host, &id).await?;
            }
            self.forget_vm(&vm)?;
            self.emit_vm("VmDeleted", &vm, "deleted");
            Ok((
                pb::DeleteVmResponse {
                    id: id.clone(),
                    name: vm.name.clone(),
                },
                id.clone(),
            ))
        })
        .await
    }

    /// Removes a VM from state and store, releasing its claims.
    pub(crate) fn forget_vm(&self, vm: &pb::Vm) -> Result<()> {
        let mut st = self.state();
        self.store.apply(&[Op::DeleteVm(&vm.id)])?;
        st.vms.remove(&vm.id);
        if st.names.get(&vm.name) == Some(&vm.id) {
            st.names.remove(&vm.name);
        }
        st.sched.release(&vm.host, &vm.id);
        if let Some(m) = &vm.migration {
            st.sched.release(&m.target_host, &vm.id);
        }
        st.refresh_host_counts();
        Ok(())
    }

    // -------------------------------------------------------------- host API

    /// A page of hosts ordered by name.
    pub fn list_hosts(&self, req: &pb::ListHostsRequest) -> Result<pb::ListHostsResponse> {
        let size = page_bounds(req.page_size);
        let st = self.state();
        let mut hosts = Vec::new();
        let mut next = String::new();
        for name in st.hosts.keys() {
            if !req.page_token.is_empty() && name.as_str() <= req.page_token.as_str() {
                continue;
            }
            if hosts.len() == size {
                next = hosts
                    .last()
                    .map(|h: &pb::Host| h.name.clone())
                    .unwrap_or_default();
                break;
            }
            hosts.push(st.host_view(name)?);
        }
        Ok(pb::ListHostsResponse {
            hosts,
            next_page_token: next,
            total: st.hosts.len() as u32,
        })
    }

    /// One host.
    pub fn get_host(&self, name: &str) -> Result<pb::Host> {
        if name.is_empty() {
            return Err(ControllerError::InvalidArgument(
                "host name is required".into(),
            ));
        }
        Ok(self.state().host_view(name)?)
    }

    /// Cordons or uncordons a host.
    pub async fn set_cordon(&self, req: pb::HostActionRequest, cordoned: bool) -> Result<pb::Host> {
        let method = if cordoned {
            "CordonHost"
        } else {
            "UncordonHost"
        };
        let name = req.host.clone();
        self.idempotent(&req.request_id, method, async {
            let h = {
                let mut st = self.state();
                let e = st.host(&name)?;
                let mut h = e.host.clone();
                let ready = e.ready();
                let changed = h.cordoned != cordoned;
                h.cordoned = cordoned;
                if !cordoned {
                    h.draining = false;
                }
                self.save_host(&mut st, h)?;
                st.sched.set_schedulable(&name, ready && !cordoned);
                let view = st.host_view(&name)?;
                (view, changed)
            };
            if h.1 {
                self.events.emit(
                    if cordoned {
                        "HostCordoned"
                    } else {
                        "HostUncordoned"
                    },
                    None,
                    &name,
                    "",
                );
            }
            Ok((h.0, name.clone()))
        })
        .await
    }

    // -------------------------------------------------------------- registry

    /// An agent (re)registers its host.
    pub fn register_host(&self, req: pb::RegisterHostRequest) -> Result<pb::RegisterHostResponse> {
        let info = req
            .host
            .ok_or_else(|| ControllerError::InvalidArgument("host is required".into()))?;
        if !valid_name(&info.name) {
            return Err(ControllerError::InvalidArgument(format!(
                "invalid host name {:?}",
                info.name
            )));
        }
        if info.address.is_empty() {
            return Err(ControllerError::InvalidArgument(
                "host address is required".into(),
            ));
        }
        let now = now_ms();
        let (kind, msg) = {
            let mut st = self.state();
            let prev = st
                .hosts
                .get(&info.name)
                .map(|e| (e.host.clone(), e.ready()));
            if let Some((p, ready)) = &prev {
                let fresh =
                    now - p.last_heartbeat_ms < self.cfg.heartbeat_timeout.as_millis() as i64;
                if *ready
                    && fresh
                    && !p.agent_id.is_empty()
                    && p.agent_id != info.agent_id
                    && p.address != info.address
                {
                    return Err(ControllerError::AlreadyExists(format!(
                        "host name {} is in use by another agent at {}",
                        info.name, p.address
                    )));
                }
                if p.address != info.address {
                    self.agents.forget(&p.address);
                }
            }
            let prev_host = prev.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            let h = pb::Host {
                name: info.name.clone(),
                address: info.address.clone(),
                agent_id: info.agent_id.clone(),
                state: pb::HostState::Ready as i32,
                cordoned: prev_host.cordoned,
                draining: prev_host.draining,
                cpus: info.cpus,
                memory_mib: info.memory_mib,
                capacity: info.capacity.or(Some(apb::Resources {
                    vcpus: info.cpus,
                    memory_mib: info.memory_mib,
                })),
                allocated: None,
                labels: info.labels.clone(),
                last_heartbeat_ms: now,
                vm_count: 0,
                version: info.version.clone(),
                registered_at_ms: if prev.is_some() {
                    prev_host.registered_at_ms
                } else {
                    now
                },
            };
            st.sched.upsert_host(host_spec(&h, true));
            self.save_host(&mut st, h)?;
            if let Ok(e) = st.host_mut(&info.name) {
                e.not_ready_since_ms = None;
            }
            st.refresh_host_counts();
            match prev {
                None => ("HostRegistered", format!("new host at {}", info.address)),
                Some((_, false)) => (
                    "HostReady",
                    format!("agent registered again at {}", info.address),
                ),
                Some(_) => (
                    "HostRegistered",
                    format!("agent registered again at {}", info.address),
                ),
            }
        };
        self.events.emit(kind, None, &info.name, msg);
        self.take_reports(&info.name, req.vms);
        Ok(pb::RegisterHostResponse {
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u32,
        })
    }

    /// An agent's heartbeat with its VM statuses.
    pub fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let now = now_ms();
        let became_ready = {
            let mut st = self.state();
            let Some(e) = st.hosts.get_mut(&req.name) else {
                return Ok(pb::HeartbeatResponse { reregister: true });
            };
            if e.host.agent_id != req.agent_id {
                return Ok(pb::HeartbeatResponse { reregister: true });
            }
            e.host.last_heartbeat_ms = now;
            if !e.ready() {
                let mut h = e.host.clone();
                h.state = pb::HostState::Ready as i32;
                e.not_ready_since_ms = None;
                let cordoned = h.cordoned;
                self.save_host(&mut st, h)?;
                st.sched.set_schedulable(&req.name, !cordoned);
                true
            } else {
                false
            }
        };
        if became_ready {
            self.events
                .emit("HostReady", None, &req.name, "heartbeats resumed");
        }
        self.take_reports(&req.name, req.vms);
        Ok(pb::HeartbeatResponse { reregister: false })
    }

    /// Records a host's VM reports and updates the status of the VMs placed there.
    fn take_reports(&self, host: &str, vms: Vec<apb::VmStatus>) {
        let now = now_ms();
        let mut changed = Vec::new();
        {
            let mut st = self.state();
            let reports: HashMap<String, apb::VmStatus> =
                vms.into_iter().map(|v| (v.vm_id.clone(), v)).collect();
            for (id, rep) in reports.iter() {
                let Some(vm) = st.vms.get(id) else { continue };
                if vm.host != host
                    || vm.phase == pb::VmPhase::Migrating as i32
                    || vm.phase == pb::VmPhase::Deleting as i32
                    || self.is_busy(id)
                {
                    continue;
                }
                let mut vm = vm.clone();
                let old_phase = vm.phase;
                Self::apply_status(&mut vm, rep.clone());
                if vm.phase != old_phase {
                    match self.save_vm(&mut st, vm) {
                        Ok(v) => changed.push((v, old_phase)),
                        Err(e) => tracing::warn!("saving vm {id}: {e}"),
                    }
                } else {
                    st.vms.insert(id.clone(), vm);
                }
            }
            if let Some(e) = st.hosts.get_mut(host) {
                e.reports = reports;
                e.report_at_ms = now;
            }
        }
        for (vm, old) in changed {
            let kind = match pb::VmPhase::try_from(vm.phase).unwrap_or(pb::VmPhase::Unspecified) {
                pb::VmPhase::Running => "VmRunning",
                pb::VmPhase::Stopped => "VmStopped",
                pb::VmPhase::Failed => "VmFailed",
                _ => "VmPhase",
            };
            let from = pb::VmPhase::try_from(old)
                .map(|p| p.as_str_name())
                .unwrap_or("?");
            let exit = vm.status.as_ref().map(|s| s.exit_code).unwrap_or(-1);
            self.emit_vm(
                kind,
                &vm,
                format!("reported by agent (was {from}, exit code {exit})"),
            );
        }
    }
}
