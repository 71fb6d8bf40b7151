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

/// What to do about an ambiguous migration, from what both agents hold ([`plan`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The destination runs the guest (it confirmed): the VM is there now; the source copy
    /// goes.
    Commit(Box<apb::VmStatus>),
    /// The destination cannot commit any more, or never will: it is dropped first (when it
    /// still has a record worth dropping), then an in-doubt source is resumed.
    Abort {
        /// Tell the destination agent to drop its incoming VM.
        drop_destination: bool,
        /// Tell the source agent to resume its in-doubt VMM.
        resume_source: bool,
    },
    /// Not decidable yet (why): ask again later.
    Wait(String),
}

/// Decides from the source's and the destination's holdings (pure; see the module
/// documentation). Never aborts while the destination might still commit and no other copy
/// is known, and never resumes a source while the destination's state is unknown.
pub fn plan(src: &Held, dst: &Held) -> Plan {
    if let Held::Running(status) = dst {
        return Plan::Commit(Box::new(status.clone()));
    }
    let dst_busy = matches!(dst, Held::Incoming | Held::Busy);
    let keep_source = match (src, dst) {
        (Held::Busy | Held::Incoming, _) => return Plan::Wait("source still transferring".into()),
        // A source that resumed by itself never had its final pass confirmed: the
        // destination cannot commit any more.
        (Held::Running(_), _) => true,
        (Held::InDoubt, Held::Unreachable(e)) => {
            return Plan::Wait(format!("source in doubt, destination unreachable: {e}"))
        }
        (Held::InDoubt, _) => true,
        (Held::Unreachable(e), _) => return Plan::Wait(format!("source unreachable: {e}")),
        // The source holds no live copy: wait while the destination may still commit.
        (Held::Absent | Held::Exited(_), _) if dst_busy => {
            return Plan::Wait("source gone, destination still incoming".into())
        }
        (Held::Absent | Held::Exited(_), Held::Unreachable(e)) => {
            return Plan::Wait(format!("source gone, destination unreachable: {e}"))
        }
        (Held::Absent | Held::Exited(_), _) => false,
    };
    Plan::Abort {
        // An exited destination is kept when the source has nothing: its record is the last.
        drop_destination: keep_source || !matches!(dst, Held::Exited(_)),
        resume_source: matches!(src, Held::InDoubt),
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

    /// The commit side of settling: the record moves to the destination, which runs `status`,
    /// then the source copy (in doubt or exited) is shut down and forgotten.
    async fn commit(
        &self,
        id: &str,
        source: &str,
        target: &str,
        status: apb::VmStatus,
        summary: Option<apb::MigrationSummary>,
    ) -> Result<Settled> {
        let vm = {
            let mut st = self.state();
            let mut cur = st.find_vm(id)?.clone();
            st.sched.release(source, id);
            cur.host = target.to_string();
            Self::apply_status(&mut cur, status);
            cur.phase = pb::VmPhase::Running as i32;
            if let Some(mm) = cur.migration.as_mut() {
                mm.phase = apb::MigrationPhase::Completed as i32;
                mm.ended_at_ms = now_ms();
                if summary.is_some() {
                    mm.summary = summary;
                }
            }
            st.refresh_host_counts();
            self.save_vm(&mut st, cur)?
        };
        // Best effort: otherwise the reconcile loop removes it as an orphan, the destination
        // reporting the VM running.
        if let Err(e) = self.settle_source(source, id, true).await {
            tracing::warn!("settle {id}: removing the source copy on {source}: {e}");
        }
        Ok(Settled::Committed(vm))
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
        let (dst, src) = tokio::join!(self.held(&target, id), self.held(&source, id));
        tracing::info!(vm = %vm.name, ?dst, ?src, "settling migration ({why})");
        let (drop_destination, resume_source) = match plan(&src, &dst) {
            Plan::Wait(why) => return Ok(Settled::Pending(why)),
            Plan::Commit(status) => {
                if matches!(src, Held::Running(_)) {
                    tracing::warn!(
                        "settle {id}: both {source} and {target} run the vm; the destination confirmed, so the source copy goes"
                    );
                }
                return self.commit(id, &source, &target, *status, summary).await;
            }
            Plan::Abort {
                drop_destination,
                resume_source,
            } => (drop_destination, resume_source),
        };
        // Abort: the destination goes first; only then is an in-doubt source resumed.
        if drop_destination {
            if let Err(e) = self.drop_destination(&target, id).await {
                if resume_source || !matches!(e, ControllerError::Unavailable(_)) {
                    return Ok(Settled::Pending(format!(
                        "destination not dropped yet: {e}"
                    )));
                }
                tracing::warn!("settle {id}: dropping the destination on {target}: {e}");
            }
        }
        if resume_source {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: apb::VmState) -> apb::VmStatus {
        apb::VmStatus {
            state: state as i32,
            ..Default::default()
        }
    }

    fn abort(drop_destination: bool, resume_source: bool) -> Plan {
        Plan::Abort {
            drop_destination,
            resume_source,
        }
    }

    #[test]
    fn a_running_destination_commits_whatever_the_source_says() {
        let running = Held::Running(status(apb::VmState::Running));
        for src in [
            Held::InDoubt,
            Held::Absent,
            Held::Busy,
            Held::Unreachable("down".into()),
            Held::Exited(status(apb::VmState::Stopped)),
        ] {
            assert!(matches!(plan(&src, &running), Plan::Commit(_)), "{src:?}");
        }
    }

    #[test]
    fn an_in_doubt_source_is_resumed_only_after_the_destination_is_known() {
        assert!(matches!(
            plan(&Held::InDoubt, &Held::Unreachable("down".into())),
            Plan::Wait(_)
        ));
        assert_eq!(plan(&Held::InDoubt, &Held::Incoming), abort(true, true));
        assert_eq!(plan(&Held::InDoubt, &Held::Absent), abort(true, true));
        let crashed = Held::Exited(status(apb::VmState::Crashed));
        assert_eq!(plan(&Held::InDoubt, &crashed), abort(true, true));
    }

    #[test]
    fn nothing_is_aborted_while_the_source_is_unknown_or_transferring() {
        for src in [
            Held::Busy,
            Held::Incoming,
            Held::Unreachable("agent restarting".into()),
        ] {
            for dst in [Held::Incoming, Held::Absent, Held::Busy] {
                assert!(matches!(plan(&src, &dst), Plan::Wait(_)), "{src:?} {dst:?}");
            }
        }
    }

    #[test]
    fn a_resumed_source_drops_the_destination() {
        let src = Held::Running(status(apb::VmState::Running));
        assert_eq!(plan(&src, &Held::Incoming), abort(true, false));
        assert_eq!(
            plan(&src, &Held::Unreachable("x".into())),
            abort(true, false)
        );
        let crashed = Held::Exited(status(apb::VmState::Crashed));
        assert_eq!(plan(&src, &crashed), abort(true, false));
    }

    #[test]
    fn without_a_source_copy_the_destination_is_never_dropped_while_it_may_commit() {
        let gone = Held::Exited(status(apb::VmState::Stopped));
        for src in [Held::Absent, gone.clone()] {
            assert!(matches!(plan(&src, &Held::Incoming), Plan::Wait(_)));
            assert!(matches!(plan(&src, &Held::Busy), Plan::Wait(_)));
            assert!(matches!(
                plan(&src, &Held::Unreachable("x".into())),
                Plan::Wait(_)
            ));
            // An exited destination's record is the last one left: kept.
            assert_eq!(plan(&src, &gone), abort(false, false));
        }
    }
}
