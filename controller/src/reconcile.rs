//! The reconcile loop: compares desired state with what agents report and acts.
//!
//! Each pass (every `reconcile_interval`):
//! - a Ready host whose last heartbeat is older than `heartbeat_timeout` becomes NotReady and
//!   its VMs' phase Unknown; after `eviction_timeout` more, its VMs whose restart policy allows
//!   it and whose desired state is running are placed on another host and started there;
//! - a VM whose host reports it missing is created again; a VM that stopped by itself is
//!   restarted (or marked stopped) per its restart policy; a VM that should be stopped is
//!   stopped; a Pending VM is placed when room appears; an interrupted delete or migration
//!   (controller restart) is finished;
//! - a VM an agent reports that the controller placed elsewhere (or deleted) is removed from
//!   that agent, which fences the old copy of an evicted VM when its host comes back; a copy
//!   of a VM that still exists is removed only once the VM's own host reports it running, so
//!   the last copy is never deleted.
//!
//! Decisions only use reports received after the VM's last change, and skip VMs that an
//! operation holds, so they never race a user's call.

use std::sync::Arc;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use tokio::sync::OwnedMutexGuard;

use crate::controller::{Controller, ControllerError};
use crate::settle::Settled;
use crate::state::{restart_policy, Needs};
use crate::util::now_ms;

/// Errors of reconcile actions (logged, retried on the next pass).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The underlying operation failed.
    #[error("{action} {vm}: {source}")]
    Action {
        /// What was attempted.
        action: &'static str,
        /// VM id.
        vm: String,
        /// Why it failed.
        source: ControllerError,
    },
}

/// One corrective action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create on its host (missing there), started if desired running.
    Ensure(String),
    /// Start after it stopped by itself.
    Restart(String),
    /// Start a defined, never-started VM.
    Start(String),
    /// Guest powered off and the policy does not restart it: desired becomes stopped.
    MarkStopped(String),
    /// Stop a VM that should not run.
    Stop(String),
    /// Place a Pending VM.
    Place(String),
    /// Move a VM off a NotReady host.
    Evict(String),
    /// Finish an interrupted delete.
    Delete(String),
    /// Settle an interrupted migration.
    ResolveMigration(String),
    /// Remove a VM an agent runs but should not (host, vm id).
    Orphan(String, String),
}

impl Action {
    fn vm(&self) -> &str {
        match self {
            Action::Ensure(v)
            | Action::Restart(v)
            | Action::Start(v)
            | Action::MarkStopped(v)
            | Action::Stop(v)
            | Action::Place(v)
            | Action::Evict(v)
            | Action::Delete(v)
            | Action::ResolveMigration(v)
            | Action::Orphan(_, v) => v,
        }
    }
}

/// Runs the loop forever.
pub async fn run(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(ctl.cfg.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let actions = ctl.plan();
        for (action, guard) in actions {
            let ctl = Arc::clone(&ctl);
            tokio::spawn(async move {
                if let Err(e) = ctl.act(action, guard).await {
                    tracing::warn!("reconcile: {e}");
                }
            });
        }
        ctl.gc_locks();
    }
}

impl Controller {
    /// One planning pass: updates host readiness and returns the actions to take, each with
    /// the lock of its VM already held.
    pub fn plan(&self) -> Vec<(Action, OwnedMutexGuard<()>)> {
        let now = now_ms();
        let hb_timeout = self.cfg.heartbeat_timeout.as_millis() as i64;
        let evict_after = self.cfg.eviction_timeout.as_millis() as i64;
        let mut actions = Vec::new();
        let mut not_ready = Vec::new();
        {
            let mut st = self.state();
            // Host readiness.
            let names: Vec<String> = st.hosts.keys().cloned().collect();
            for name in names {
                let Some(e) = st.hosts.get(&name) else {
                    continue;
                };
                if e.ready() && now - e.host.last_heartbeat_ms > hb_timeout {
                    let mut h = e.host.clone();
                    h.state = pb::HostState::NotReady as i32;
                    if let Err(err) = self.save_host(&mut st, h) {
                        tracing::warn!("saving host {name}: {err}");
                    }
                    st.sched.set_schedulable(&name, false);
                    if let Some(e) = st.hosts.get_mut(&name) {
                        e.not_ready_since_ms = Some(now);
                        e.reports.clear();
                    }
                    for id in st.vms_on(&name) {
                        let Some(vm) = st.vms.get(&id) else { continue };
                        if vm.phase == pb::VmPhase::Migrating as i32
                            || vm.phase == pb::VmPhase::Deleting as i32
                        {
                            continue;
                        }
                        let mut vm = vm.clone();
                        vm.phase = pb::VmPhase::Unknown as i32;
                        if let Err(err) = self.save_vm(&mut st, vm) {
                            tracing::warn!("saving vm {id}: {err}");
                        }
                    }
                    not_ready.push(name);
                }
            }

            // Per-VM decisions.
            for vm in st.vms.values() {
                let id = vm.id.clone();
                let phase = pb::VmPhase::try_from(vm.phase).unwrap_or(pb::VmPhase::Unspecified);
                let desired_running = vm.desired == pb::DesiredState::Running as i32;
                let action = match phase {
                    pb::VmPhase::Deleting => Some(Action::Delete(id)),
                    pb::VmPhase::Migrating => Some(Action::ResolveMigration(id)),
                    _ if vm.host.is_empty() => desired_running.then_some(Action::Place(id)),
                    _ => match st.hosts.get(&vm.host) {
                        None => None,
                        Some(h) if !h.ready() => {
                            let long = h.not_ready_since_ms.is_some_and(|t| now - t > evict_after);
                            (long
                                && desired_running
                                && restart_policy(vm) != pb::RestartPolicy::Never)
                                .then_some(Action::Evict(id))
                        }
                        // Only trust a report that arrived after the VM's last change.
                        Some(h) if h.report_at_ms <= vm.updated_at_ms => None,
                        Some(h) => decide(vm, h.reports.get(&vm.id)),
                    },
                };
                if let Some(a) = action {
                    actions.push(a);
                }
            }

            // Orphans: VMs an agent has that belong elsewhere or nowhere.
            for (name, e) in st.hosts.iter() {
                if !e.ready() {
                    continue;
                }
                for id in e.reports.keys() {
                    let orphan = match st.vms.get(id) {
                        None => true,
                        Some(vm) => {
                            let incoming_here = vm.phase == pb::VmPhase::Migrating as i32
                                && vm
                                    .migration
                                    .as_ref()
                                    .is_some_and(|m| m.target_host == *name);
                            // Never the last copy: only when the VM's own host reports it
                            // running (a report newer than the VM's last change).
                            let runs_at_home = st.hosts.get(&vm.host).is_some_and(|home| {
                                home.ready()
                                    && home.report_at_ms > vm.updated_at_ms
                                    && home.reports.get(id).is_some_and(|r| {
                                        r.state == apb::VmState::Running as i32
                                            || r.state == apb::VmState::Paused as i32
                                    })
                            });
                            vm.host != *name
                                && !incoming_here
                                && runs_at_home
                                && e.report_at_ms > vm.updated_at_ms
                        }
                    };
                    if orphan {
                        actions.push(Action::Orphan(name.clone(), id.clone()));
                    }
                }
            }
        }
        for name in not_ready {
            self.events
                .emit("HostNotReady", None, &name, "missed heartbeats");
        }
        // Take each VM's lock now; skip VMs an operation holds.
        actions
            .into_iter()
            .filter_map(|a| {
                let key = a.vm().to_string();
                self.try_lock_key(&key).map(|g| (a, g))
            })
            .collect()
    }

    /// Carries out one action, holding the VM's lock.
    pub async fn act(
        &self,
        action: Action,
        _guard: OwnedMutexGuard<()>,
    ) -> Result<(), ReconcileError> {
        let name = match &action {
            Action::Ensure(_) => "ensure",
            Action::Restart(_) => "restart",
            Action::Start(_) => "start",
            Action::MarkStopped(_) => "mark stopped",
            Action::Stop(_) => "stop",
            Action::Place(_) => "place",
            Action::Evict(_) => "evict",
            Action::Delete(_) => "delete",
            Action::ResolveMigration(_) => "resolve migration",
            Action::Orphan(_, _) => "remove orphan",
        };
        let vm_id = action.vm().to_string();
        self.act_inner(action)
            .await
            .map_err(|source| ReconcileError::Action {
                action: name,
                vm: vm_id,
                source,
            })
    }

    async fn act_inner(&self, action: Action) -> Result<(), ControllerError> {
        match action {
            Action::Ensure(id) => {
                let vm = self.state().find_vm(&id)?.clone();
                let start = vm.desired == pb::DesiredState::Running as i32;
                let status = self.agent_create(&vm.host, &vm, start).await?;
                let vm = self.update_status(&id, status, false)?;
                self.emit_vm("VmRecreated", &vm, "missing on its host; created again");
            }
            Action::Restart(id) | Action::Start(id) => {
                let vm = self.state().find_vm(&id)?.clone();
                let status = self.agent_start(&vm.host, &vm).await?;
                let vm = self.update_status(&id, status, true)?;
                self.emit_vm("VmRestarted", &vm, format!("restart #{}", vm.restart_count));
            }
            Action::MarkStopped(id) => {
                let vm = {
                    let mut st = self.state();
                    let mut vm = st.find_vm(&id)?.clone();
                    vm.desired = pb::DesiredState::Stopped as i32;
                    vm.phase = pb::VmPhase::Stopped as i32;
                    self.save_vm(&mut st, vm)?
                };
                self.emit_vm(
                    "VmStopped",
                    &vm,
                    "guest powered off; restart policy keeps it off",
                );
            }
            Action::Stop(id) => {
                let vm = self.state().find_vm(&id)?.clone();
                let status = self
                    .agent_stop(
                        &vm.host,
                        &id,
                        false,
                        self.cfg.stop_timeout.as_millis() as u32,
                    )
                    .await?;
                let vm = self.update_status(&id, status, false)?;
                self.emit_vm("VmStopped", &vm, "stopped (desired state)");
            }
            Action::Place(id) => {
                let vm = {
                    let mut st = self.state();
                    let mut vm = st.find_vm(&id)?.clone();
                    let needs = Needs::of(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default()));
                    let Ok(host) = st.sched.place(&needs.request(&id, &[])) else {
                        return Ok(());
                    };
                    vm.host = host;
                    vm.phase = pb::VmPhase::Scheduled as i32;
                    st.refresh_host_counts();
                    self.save_vm(&mut st, vm)?
                };
                self.emit_vm("VmScheduled", &vm, format!("placed on {}", vm.host));
                let status = self.agent_create(&vm.host, &vm, true).await?;
                self.update_status(&id, status, false)?;
            }
            Action::Evict(id) => {
                let (vm, old) = {
                    let mut st = self.state();
                    let mut vm = st.find_vm(&id)?.clone();
                    let old = vm.host.clone();
                    let needs = Needs::of(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default()));
                    let exclude = [old.as_str()];
                    st.sched.release(&old, &id);
                    match st.sched.place(&needs.request(&id, &exclude)) {
                        Ok(h) => {
                            vm.host = h;
                            vm.phase = pb::VmPhase::Scheduled as i32;
                            vm.restart_count += 1;
                            vm.message = format!("restarted after host {old} went NotReady");
                        }
                        Err(e) => {
                            vm.host.clear();
                            vm.phase = pb::VmPhase::Pending as i32;
                            vm.message = format!("host {old} NotReady and no room elsewhere: {e}");
                        }
                    }
                    st.refresh_host_counts();
                    (self.save_vm(&mut st, vm)?, old)
                };
                self.emit_vm("VmEvicted", &vm, vm.message.clone());
                if !vm.host.is_empty() {
                    let status = self.agent_create(&vm.host, &vm, true).await?;
                    let vm = self.update_status(&id, status, false)?;
                    self.emit_vm("VmRestarted", &vm, format!("on {} (was on {old})", vm.host));
                }
            }
            Action::Delete(id) => {
                let vm = self.state().find_vm(&id)?.clone();
                let ready = self.state().hosts.get(&vm.host).is_some_and(|h| h.ready());
                if ready {
                    self.agent_delete(&vm.host, &id).await?;
                }
                self.forget_vm(&vm)?;
                self.emit_vm("VmDeleted", &vm, "deleted");
            }
            Action::ResolveMigration(id) => self.resolve_migration(&id).await?,
            Action::Orphan(host, id) => {
                self.agent_delete(&host, &id).await?;
                self.events.emit(
                    "OrphanRemoved",
                    Some(("", &id)),
                    &host,
                    "vm placed elsewhere or deleted; removed from this host",
                );
            }
        }
        Ok(())
    }

    /// Applies an agent status to a VM and saves it.
    fn update_status(
        &self,
        id: &str,
        status: apb::VmStatus,
        restarted: bool,
    ) -> Result<pb::Vm, ControllerError> {
        let mut st = self.state();
        let mut vm = st.find_vm(id)?.clone();
        Self::apply_status(&mut vm, status);
        if restarted {
            vm.restart_count += 1;
        }
        self.save_vm(&mut st, vm)
    }

    /// Settles a migration the controller did not see end (it restarted meanwhile, or the
    /// outcome was still ambiguous when the MigrateVm call gave up): asks both agents
    /// (`settle`); an undecidable case is asked again on the next pass.
    async fn resolve_migration(&self, id: &str) -> Result<(), ControllerError> {
        match self
            .settle_once(
                id,
                None,
                "interrupted (controller restart or unsettled outcome)",
            )
            .await?
        {
            Settled::Committed(vm) => self.emit_vm(
                "MigrationCompleted",
                &vm,
                "settled from both hosts: the destination runs the vm",
            ),
            Settled::Aborted(vm) => self.emit_vm(
                "MigrationFailed",
                &vm,
                "settled from both hosts: the vm stays on its source",
            ),
            Settled::Pending(why) => tracing::info!("migration of {id} not settled yet: {why}"),
        }
        Ok(())
    }
}

/// What to do about a VM on a Ready host, given its report there.
pub fn decide(vm: &pb::Vm, report: Option<&apb::VmStatus>) -> Option<Action> {
    use apb::VmState as S;
    let id = vm.id.clone();
    let desired_running = vm.desired == pb::DesiredState::Running as i32;
    let Some(r) = report else {
        return Some(Action::Ensure(id));
    };
    let state = S::try_from(r.state).unwrap_or(S::Unspecified);
    let policy = restart_policy(vm);
    match (desired_running, state) {
        (true, S::Stopped) => Some(if policy == pb::RestartPolicy::Always {
            Action::Restart(id)
        } else {
            Action::MarkStopped(id)
        }),
        (true, S::Crashed) => (policy != pb::RestartPolicy::Never).then_some(Action::Restart(id)),
        (true, S::Created) => Some(Action::Start(id)),
        (false, S::Running | S::Paused) => Some(Action::Stop(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(desired: pb::DesiredState, policy: pb::RestartPolicy) -> pb::Vm {
        pb::Vm {
            id: "v".into(),
            desired: desired as i32,
            spec: Some(pb::VmSpec {
                restart_policy: policy as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rep(s: apb::VmState) -> apb::VmStatus {
        apb::VmStatus {
            state: s as i32,
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        use pb::DesiredState::{Running, Stopped};
        use pb::RestartPolicy::{Always, Never, OnFailure};
        let v = vm(Running, Always);
        assert_eq!(decide(&v, None), Some(Action::Ensure("v".into())));
        assert_eq!(decide(&v, Some(&rep(apb::VmState::Running))), None);
        assert_eq!(
            decide(&v, Some(&rep(apb::VmState::Stopped))),
            Some(Action::Restart("v".into()))
        );
        assert_eq!(
            decide(&v, Some(&rep(apb::VmState::Crashed))),
            Some(Action::Restart("v".into()))
        );
        let v = vm(Running, OnFailure);
        assert_eq!(
            decide(&v, Some(&rep(apb::VmState::Stopped))),
            Some(Action::MarkStopped("v".into()))
        );
        assert_eq!(
            decide(&v, Some(&rep(apb::VmState::Crashed))),
            Some(Action::Restart("v".into()))
        );
        let v = vm(Running, Never);
        assert_eq!(decide(&v, Some(&rep(apb::VmState::Crashed))), None);
        let v = vm(Stopped, Always);
        assert_eq!(
            decide(&v, Some(&rep(apb::VmState::Running))),
            Some(Action::Stop("v".into()))
        );
        assert_eq!(decide(&v, Some(&rep(apb::VmState::Stopped))), None);
        assert_eq!(decide(&v, None), Some(Action::Ensure("v".into())));
    }
}
