//! Calls to the agents on behalf of VM operations, and what their answers mean for a VM.

use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use tonic::Code;

use super::{agent_err, Controller, ControllerError, Result};
use crate::agent_client::{request, AgentAddr, CALL_TIMEOUT};
use crate::state::{agent_config, phase_from_report};

impl Controller {
    /// The address of a Ready host's agent.
    pub(crate) fn agent_addr(&self, host: &str) -> Result<AgentAddr> {
        let st = self.state();
        let e = st.host(host)?;
        if !e.ready() {
            return Err(ControllerError::Unavailable(format!(
                "host {host} is NotReady"
            )));
        }
        Ok(AgentAddr {
            host: host.to_string(),
            address: e.host.address.clone(),
        })
    }

    /// The address of a host's agent whatever its readiness (settling a migration asks an
    /// agent that may have just restarted).
    pub(crate) fn agent_addr_any(&self, host: &str) -> Result<AgentAddr> {
        Ok(AgentAddr {
            host: host.to_string(),
            address: self.state().host(host)?.host.address.clone(),
        })
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
            copy_disks_from: None,
        };
        c.create_vm(request(req, CALL_TIMEOUT))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| agent_err(host, s))
    }

    /// Creates `vm` (not started) on `host`'s agent with its writable disks pulled from
    /// `src` (a cold move); the agent answers once every disk arrived and was verified.
    pub(crate) async fn agent_create_copied(
        &self,
        host: &str,
        vm: &pb::Vm,
        src: apb::DiskSource,
    ) -> Result<apb::VmStatus> {
        let mut c = self.agents.client(&self.agent_addr(host)?)?;
        let req = apb::CreateVmRequest {
            request_id: String::new(),
            config: Some(agent_config(vm)),
            start: false,
            copy_disks_from: Some(src),
        };
        c.create_vm(request(req, self.cfg.migrate_timeout))
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
}
