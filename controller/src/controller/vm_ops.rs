//! VM operations of the user API: create (placed atomically, undone on failure), get, list,
//! start, stop, reboot and delete.

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use prost::Message;
use tonic::Code;

use super::validate_spec;
use super::{agent_err, page_bounds, Controller, ControllerError, Result};
use crate::agent_client::{request, CALL_TIMEOUT};
use crate::state::{desired, new_vm, Needs};
use crate::store::{Op, StoredRequest};
use crate::util::now_ms;

/// Where a new VM belongs and who made it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    /// Project.
    pub project: String,
    /// User.
    pub created_by: String,
}

impl Origin {
    /// Sets the VM's project and creator.
    pub fn stamp(&self, vm: &mut pb::Vm) {
        vm.project = self.project.clone();
        vm.created_by = self.created_by.clone();
    }
}

impl Controller {
    /// Creates a VM in `req.project` (empty: `default`) for user `by`: validates, checks the
    /// project's quota and places it in one atomic step, persists it, then has its agent
    /// create (and start) it. An agent failure undoes everything.
    pub async fn create_vm(&self, req: pb::CreateVmRequest, by: &str) -> Result<pb::Vm> {
        let spec = req
            .spec
            .ok_or_else(|| ControllerError::InvalidArgument("spec is required".into()))?;
        validate_spec(&spec)?;
        let rid = req.request_id.clone();
        let origin = Origin {
            project: crate::iam::requested_project(&req.project).to_string(),
            created_by: by.to_string(),
        };
        if rid.is_empty() {
            return self
                .create_inner(spec, !req.stopped, rid, &origin)
                .await
                .map(|(vm, _)| vm);
        }
        // Like `idempotent`, but the answer is stored by create_inner in the same
        // transactions as the VM itself.
        let _guard = self.lock_key(&format!("req:{rid}")).await;
        if let Some(stored) = self.stored_answer::<pb::Vm>(&rid, "CreateVm")? {
            return Ok(stored);
        }
        self.create_inner(spec, !req.stopped, rid, &origin)
            .await
            .map(|(vm, _)| vm)
    }

    async fn create_inner(
        &self,
        spec: pb::VmSpec,
        start: bool,
        request_id: String,
        origin: &Origin,
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
            self.check_quota(&st, &origin.project, &spec)?;
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
            let mut vm = new_vm(&id, spec, &host, desired(start), pb::VmPhase::Scheduled);
            origin.stamp(&mut vm);
            let mut ops = vec![Op::PutVm(&vm)];
            if !request_id.is_empty() {
                ops.push(Op::PutRequest(
                    &request_id,
                    StoredRequest {
                        method: "CreateVm".into(),
                        target: id.clone(),
                        response: vm.encode_to_vec(),
                        at_ms: vm.created_at_ms,
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
        self.list_vms_in(req, &|_| true)
    }

    /// A page of the VMs, ordered by name, whose project `visible` accepts (and that are of
    /// `req.project` when given).
    pub fn list_vms_in(
        &self,
        req: &pb::ListVmsRequest,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<pb::ListVmsResponse> {
        let size = page_bounds(req.page_size);
        let st = self.state();
        if !req.host.is_empty() {
            st.host(&req.host)?;
        }
        let filter = |vm: &pb::Vm| {
            let project = crate::iam::project_of(vm);
            visible(project)
                && (req.project.is_empty() || project == req.project)
                && (req.host.is_empty() || vm.host == req.host)
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
            self.forget_storage_of(&id)?;
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
}
