//! The controller core: VM and host operations on top of the state, the store, the scheduler
//! and the agents. Every operation validates first and changes nothing when it fails
//! (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED);
//! state changes are persisted before the call answers. Operations on one VM are serialised
//! by a per-VM async lock, which the reconcile loop also honours.
//!
//! This module holds the [`Controller`] itself and how it persists records; its children hold
//! the rest by concern: [`error`] (errors and their status codes), [`config`] (settings),
//! `locks` (per-key locks), `idempotency` (request ids), `agent_calls` (calls to agents),
//! [`validate`] (VM specs), `vm_ops` and `host_ops` (the user API), `registry` (what agents
//! report).

use std::collections::HashMap;
use std::sync::Arc;

use novacron_proto::controller as pb;
use parking_lot::{Mutex, MutexGuard};

use crate::agent_client::AgentPool;
use crate::events::EventBus;
use crate::iam::Iam;
use crate::state::State;
use crate::store::{Op, Store};
use crate::util::now_ms;

mod agent_calls;
pub mod config;
pub mod error;
mod host_ops;
mod idempotency;
mod locks;
mod registry;
pub mod validate;
mod vm_ops;
pub(crate) use vm_ops::Origin;

pub use config::Config;
pub(crate) use error::agent_err;
pub use error::{ControllerError, Result};
pub use validate::validate_spec;

/// Largest page a list call returns.
pub const MAX_PAGE: usize = 1000;
/// Page size when the request gives none.
pub const DEFAULT_PAGE: usize = 100;

/// The controller. Shared as `Arc<Controller>` by the API, the reconcile loop and drains.
#[derive(Debug)]
pub struct Controller {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<Store>,
    state: Mutex<State>,
    pub(crate) events: EventBus,
    pub(crate) agents: AgentPool,
    locks: Mutex<HashMap<String, locks::KeyLock>>,
    iam: Arc<Iam>,
}

/// The page size of a list request: the default when none is given, at most [`MAX_PAGE`].
fn page_bounds(page_size: u32) -> usize {
    match page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

impl Controller {
    /// Opens the store in `cfg.data_dir` and rebuilds the state from it.
    pub fn open(cfg: Config) -> Result<Arc<Self>> {
        let store = Arc::new(Store::open(&cfg.data_dir)?);
        let _ = store.expire_requests(now_ms() - 24 * 3600 * 1000);
        let snap = store.load()?;
        let iam = Arc::new(Iam::open(Arc::clone(&store), &cfg.data_dir)?);
        let events = EventBus::new(Arc::clone(&store), snap.last_event_seq);
        for vm in &snap.vms {
            events.learn_project(&vm.id, crate::iam::project_of(vm));
        }
        let state = State::from_records(cfg.policy, snap.hosts, snap.vms, now_ms());
        let agents = AgentPool::new(cfg.tls.clone());
        Ok(Arc::new(Controller {
            cfg,
            store,
            state: Mutex::new(state),
            events,
            agents,
            locks: Mutex::new(HashMap::new()),
            iam,
        }))
    }

    /// Identity and access: users, projects, tokens, the audit log.
    pub fn iam(&self) -> &Arc<Iam> {
        &self.iam
    }

    /// What the VMs of `project` use, against its quota.
    pub fn project_usage(&self, project: &str) -> pb::Usage {
        crate::iam::quotas::usage(self.state().vms.values(), project)
    }

    /// Runs `f` under the state mutex (what creates check projects and quotas under), with
    /// the state it guards.
    pub(crate) fn with_state_lock<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let st = self.state();
        f(&st)
    }

    /// Checks that `project` exists and a new VM of it with `spec` fits its quota, under the
    /// state mutex `st` that the caller holds until the VM is in the state: the same atomic
    /// step as the scheduler's claim, so concurrent creates cannot exceed a quota.
    pub(crate) fn check_quota(&self, st: &State, project: &str, spec: &pb::VmSpec) -> Result<()> {
        // Read under the mutex `DeleteProject` deletes under: no VM lands in a project
        // being deleted.
        let Some(proj) = self.iam.project(project)? else {
            return Err(ControllerError::NotFound(crate::iam::project_not_found(
                project,
            )));
        };
        let quota = proj.quota.unwrap_or_default();
        if quota == pb::Quota::default() {
            return Ok(());
        }
        let used = crate::iam::quotas::usage(st.vms.values(), project);
        crate::iam::quotas::check(project, &quota, &used, spec)
            .map_err(ControllerError::ResourceExhausted)
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
        self.state.lock()
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

    fn vm_name_id(vm: &pb::Vm) -> (String, String) {
        (vm.name.clone(), vm.id.clone())
    }

    /// Emits an event about `vm`.
    pub(crate) fn emit_vm(&self, kind: &str, vm: &pb::Vm, msg: impl Into<String>) {
        let (n, i) = Self::vm_name_id(vm);
        self.events.emit(kind, Some((&n, &i)), &vm.host, msg);
    }
}
