//! Settling a migration whose outcome is ambiguous: the source agent's MigrateOut failed or
//! its answer was lost, the source VMM is in doubt (final pass sent, no confirmation), or the
//! controller restarted mid-migration.
//!
//! The controller never guesses: it asks BOTH agents what they hold (GetVm) and only then
//! acts, in an order that never leaves zero running copies and never two:
//! - the destination runs the guest → commit: the VM's record moves to the destination, then
//!   the source copy (in doubt or exited) is shut down and forgotten;
//! - the destination does not run it and the source still holds it → abort: the destination
//!   is dropped first (its agent refuses if it runs by then: re-evaluated next time), then an
//!   in-doubt source is resumed;
//! - the source is still transferring, or an agent does not answer while the other cannot
//!   prove the outcome → nothing is done; the caller (or the reconcile loop) asks again.

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use tonic::Code;

use crate::agent_client::{request, CALL_TIMEOUT};
use crate::controller::{agent_err, Controller, ControllerError, Result};
use crate::util::now_ms;

/// What one agent holds of the migrating VM.
#[derive(Debug, Clone)]
pub enum Held {
    /// The agent did not answer.
    Unreachable(String),
    /// The agent does not know the VM.
    Absent,
    /// Running or paused (a committed destination, or a source that resumed).
    Running(apb::VmStatus),
    /// A source in doubt: vCPUs paused, waiting to be settled.
    InDoubt,
    /// Still transferring (source) or starting.
    Busy,
    /// A destination still waiting for or receiving the stream.
    Incoming,
    /// The VMM exited (stopped or crashed).
    Exited(apb::VmStatus),
}

impl Held {
    fn of(s: apb::VmStatus) -> Held {
        use apb::VmState as S;
        match S::try_from(s.state).unwrap_or(S::Unspecified) {
            S::Running | S::Paused => Held::Running(s),
            S::Indoubt => Held::InDoubt,
            S::Migrating | S::Starting | S::Unspecified => Held::Busy,
            S::Incoming => Held::Incoming,
            S::Stopped | S::Crashed | S::Created => Held::Exited(s),
        }
    }
}

/// How one settling attempt ended.
#[derive(Debug)]
pub enum Settled {
    /// The destination runs the VM; the record points at it.
    Committed(pb::Vm),
    /// The VM stays on its source; the destination was dropped.
    Aborted(pb::Vm),
    /// Not decidable yet (why).
    Pending(String),
}

impl Controller {
    /// Asks `host`'s agent what it holds of `vm_id`.
    pub(crate) async fn held(&self, host: &str, vm_id: &str) -> Held {
        let addr = match self.agent_addr_any(host) {
            Ok(a) => a,
            Err(e) => return Held::Unreachable(e.to_string()),
        };
        let mut c = match self.agents.client(&addr) {
            Ok(c) => c,
            Err(e) => return Held::Unreachable(e.to_string()),
        };
        let r = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm_id.to_string(),
        };
        match c.get_vm(request(r, CALL_TIMEOUT)).await {
            Ok(s) => Held::of(s.into_inner()),
            Err(s) if s.code() == Code::NotFound => Held::Absent,
            Err(s) => Held::Unreachable(s.to_string()),
        }
    }

    /// Tells `host`'s agent to settle its in-doubt (or exited) source copy.
    async fn settle_source(&self, host: &str, vm_id: &str, destination_runs: bool) -> Result<()> {
        let mut c = self.agents.client(&self.agent_addr_any(host)?)?;
        let r = apb::SettleInDoubtRequest {
            request_id: String::new(),
            vm_id: vm_id.to_string(),
            destination_runs,
        };
        match c.settle_in_doubt(request(r, CALL_TIMEOUT)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(agent_err(host, s)),
        }
    }

    /// Drops the destination's incoming VM; Ok when it is gone (or never was).
    async fn drop_destination(&self, host: &str, vm_id: &str) -> Result<()> {
        let mut c = self.agents.client(&self.agent_addr_any(host)?)?;
        let r = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm_id.to_string(),
        };
        match c.abort_incoming(request(r, CALL_TIMEOUT)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(agent_err(host, s)),
        }
    }

    /// Records the migration's phase (and error) before the next step, so a restarted
    /// controller knows where it was.
    pub(crate) fn record_migration_phase(
        &self,
        id: &str,
        phase: apb::MigrationPhase,
        error: &str,
    ) -> Result<()> {
        let mut st = self.state();
        let mut vm = st.find_vm(id)?.clone();
        if let Some(m) = vm.migration.as_mut() {
            m.phase = phase as i32;
            if !error.is_empty() {
                m.error = error.to_string();
            }
        }
        self.save_vm(&mut st, vm).map(|_| ())
    }

    /// Cancels the VM's migration in progress: the source agent asks its VMM to `cancel`
    /// (the guest resumes there); the MigrateVm call then settles as a failed migration.
    /// Does not take the VM's lock (the migration holds it).
    pub async fn cancel_migration(&self, req: pb::CancelMigrationRequest) -> Result<pb::Vm> {
        let vm = {
            let st = self.state();
            let id = st.vm_id(&req.vm)?;
            st.find_vm(&id)?.clone()
        };
        if vm.phase != pb::VmPhase::Migrating as i32 {
            return Err(ControllerError::FailedPrecondition(format!(
                "vm {} is not migrating",
                vm.name
            )));
        }
        let mut c = self.agents.client(&self.agent_addr(&vm.host)?)?;
        let r = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm.id.clone(),
        };
        c.cancel_migration(request(r, CALL_TIMEOUT))
            .await
            .map_err(|s| agent_err(&vm.host, s))?;
        self.events.emit(
            "MigrationCancelled",
            Some((&vm.name, &vm.id)),
            &vm.host,
            "cancel requested",
        );
        Ok(self.state().find_vm(&vm.id)?.clone())
    }

    /// One settling attempt for the migrating VM `id` (see the module documentation). The
    /// caller holds the VM's lock.
    pub(crate) async fn settle_once(
        &self,
        id: &str,
        summary: Option<apb::MigrationSummary>,
        why: &str,
    ) -> Result<Settled> {
        let vm = self.state().find_vm(id)?.clone();
        if vm.phase != pb::VmPhase::Migrating as i32 {
            return Ok(Settled::Aborted(vm));
        }
        let m = vm.migration.clone().unwrap_or_default();
        let (source, target) = (vm.host.clone(), m.target_host.clone());
        let dst = self.held(&target, id).await;
        if let Held::Running(status) = &dst {
            // Commit: the destination's confirmation happened; the record follows it first.
            let vm = {
                let mut st = self.state();
                let mut cur = st.find_vm(id)?.clone();
                st.sched.release(&source, id);
                cur.host = target.clone();
                Self::apply_status(&mut cur, status.clone());
                cur.phase = pb::VmPhase::Running as i32;
                if let Some(mm) = cur.migration.as_mut() {
                    mm.phase = apb::MigrationPhase::Completed as i32;
                    mm.ended_at_ms = now_ms();
                    if summary.is_some() {
                        mm.summary = summary.clone();
                    }
                }
                st.refresh_host_counts();
                self.save_vm(&mut st, cur)?
            };
            // Then the source copy goes (best effort: the reconcile loop removes it later as
            // an orphan, the destination reporting the VM running).
            if let Err(e) = self.settle_source(&source, id, true).await {
                tracing::warn!("settle {id}: removing the source copy on {source}: {e}");
            }
            return Ok(Settled::Committed(vm));
        }
        let src = self.held(&source, id).await;
        tracing::info!(vm = %vm.name, ?dst, ?src, "settling migration ({why})");
        let dst_busy = matches!(dst, Held::Incoming | Held::Busy);
        let keep_source = match (&src, &dst) {
            (Held::Busy | Held::Incoming, _) => {
                return Ok(Settled::Pending("source still transferring".into()))
            }
            // A source that resumed by itself never sent the final pass to completion: the
            // destination cannot commit any more.
            (Held::Running(_), _) => true,
            (Held::InDoubt, Held::Unreachable(e)) => {
                return Ok(Settled::Pending(format!(
                    "source in doubt, destination unreachable: {e}"
                )))
            }
            (Held::InDoubt, _) => true,
            (Held::Unreachable(e), _) => {
                return Ok(Settled::Pending(format!("source unreachable: {e}")))
            }
            // The source holds no live copy: wait while the destination may still commit.
            (Held::Absent | Held::Exited(_), _) if dst_busy => {
                return Ok(Settled::Pending(
                    "source gone, destination still incoming".into(),
                ))
            }
            (Held::Absent | Held::Exited(_), Held::Unreachable(e)) => {
                return Ok(Settled::Pending(format!(
                    "source gone, destination unreachable: {e}"
                )))
            }
            (Held::Absent | Held::Exited(_), _) => false,
        };
        // Abort: the destination goes first; only then is an in-doubt source resumed.
        if keep_source || !matches!(dst, Held::Exited(_)) {
            if let Err(e) = self.drop_destination(&target, id).await {
                if matches!(src, Held::InDoubt) || !matches!(e, ControllerError::Unavailable(_)) {
                    return Ok(Settled::Pending(format!(
                        "destination not dropped yet: {e}"
                    )));
                }
                tracing::warn!("settle {id}: dropping the destination on {target}: {e}");
            }
        }
        if matches!(src, Held::InDoubt) {
            self.settle_source(&source, id, false).await?;
        }
        let src_after = self.held(&source, id).await;
        let vm = {
            let mut st = self.state();
            let mut cur = st.find_vm(id)?.clone();
            st.sched.release(&target, id);
            match (&src_after, &dst) {
                (Held::Running(s), _) | (Held::Exited(s), _) => {
                    Self::apply_status(&mut cur, s.clone())
                }
                // Both copies dead; the destination's record is the last one left.
                (Held::Absent, Held::Exited(s)) => {
                    st.sched.release(&source, id);
                    cur.host = target.clone();
                    Self::apply_status(&mut cur, s.clone());
                }
                _ => cur.phase = pb::VmPhase::Unknown as i32,
            }
            if cur.phase == pb::VmPhase::Migrating as i32 {
                cur.phase = pb::VmPhase::Unknown as i32;
            }
            if let Some(mm) = cur.migration.as_mut() {
                mm.phase = apb::MigrationPhase::Failed as i32;
                mm.ended_at_ms = now_ms();
                if mm.error.is_empty() {
                    mm.error = why.to_string();
                }
            }
            st.refresh_host_counts();
            self.save_vm(&mut st, cur)?
        };
        Ok(Settled::Aborted(vm))
    }
}
