//! The registry agents report to: host registration and heartbeats with VM statuses.

use std::collections::HashMap;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;

use super::{Controller, ControllerError, Result};
use crate::state::host_spec;
use crate::util::{now_ms, valid_name};

impl Controller {
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
