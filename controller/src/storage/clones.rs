//! Clones and templates: a clone is a new VM (own id, name and MACs) on the host of its
//! source, whose disks the agent reflinks from the source's stopped disks or from one of its
//! snapshots; a template is a VM or snapshot marked as one, the source of `vm create
//! --template`.

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use prost::Message;

use super::snapshots::check_idle;
use super::{check_snapshot_name, decode, snap_key, storage_err, tmpl_key, STORAGE_CALL_TIMEOUT};
use crate::agent_client::request;
use crate::controller::{validate_spec, Controller, ControllerError, Origin, Result};
use crate::state::{agent_config, desired, new_vm, Needs};
use crate::store::Op;

/// The spec of a clone: the source's, renamed, with fresh MACs, pinned to the source's host
/// (its disks are there).
fn clone_spec(base: &pb::VmSpec, name: &str, id: &str, host: &str) -> pb::VmSpec {
    let mut spec = base.clone();
    spec.name = name.to_string();
    for (i, n) in spec.networks.iter_mut().enumerate() {
        n.mac = novacron_proto::mac::for_vm(id, i);
    }
    let mut p = spec.placement.clone().unwrap_or_default();
    p.host = host.to_string();
    spec.placement = Some(p);
    spec
}

impl Controller {
    /// Creates a VM from a stopped VM or a snapshot (see the module documentation) for user
    /// `by`, in the source's project (and within its quota).
    pub async fn clone_vm(&self, req: pb::CloneVmRequest, by: &str) -> Result<pb::Vm> {
        if !req.snapshot.is_empty() {
            check_snapshot_name(&req.snapshot)?;
        }
        self.idempotent(&req.request_id, "CloneVm", async {
            let src_id = self.state().vm_id(&req.source)?;
            let _src_guard = self.lock_key(&src_id).await;
            let src = self.state().find_vm(&src_id)?.clone();
            check_idle(&src)?;
            let (base, host) = if req.snapshot.is_empty() {
                if req.require_template && self.store.record(&tmpl_key(&src_id))?.is_none() {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "vm {} is not a template (mark it with `novactl vm template {}`)",
                        src.name, src.name
                    )));
                }
                (src.spec.clone().unwrap_or_default(), src.host.clone())
            } else {
                let snap = self.snapshot_record(&src, &req.snapshot)?;
                if req.require_template && !snap.template {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "snapshot {} of vm {} is not a template (mark it with `novactl vm \
                         template {} --snapshot {}`)",
                        snap.name, src.name, src.name, snap.name
                    )));
                }
                if snap.host != src.host {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "snapshot {} is on host {}, vm {} moved to {}: clone it there",
                        snap.name, snap.host, src.name, src.host
                    )));
                }
                (snap.spec.unwrap_or_default(), snap.host)
            };
            if host.is_empty() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "vm {} has never been placed: its disks exist nowhere yet",
                    src.name
                )));
            }
            let id = uuid::Uuid::new_v4().to_string();
            let spec = clone_spec(&base, &req.name, &id, &host);
            validate_spec(&spec)?;
            let _guard = self.lock_key(&id).await;
            let start = !req.stopped;
            let vm = {
                let mut st = self.state();
                if st.names.contains_key(&spec.name) {
                    return Err(ControllerError::AlreadyExists(format!(
                        "vm {} already exists",
                        spec.name
                    )));
                }
                let origin = Origin {
                    project: crate::iam::project_of(&src).to_string(),
                    created_by: by.to_string(),
                };
                self.check_quota(&st, &origin.project, &spec)?;
                let needs = Needs::of(&spec);
                st.host(&host)?;
                st.sched.claim(&host, &needs.request(&id, &[]))?;
                let mut vm = new_vm(&id, spec, &host, desired(start), pb::VmPhase::Scheduled);
                origin.stamp(&mut vm);
                let from = if req.snapshot.is_empty() {
                    format!("cloned from vm {}", src.name)
                } else {
                    format!("cloned from snapshot {} of vm {}", req.snapshot, src.name)
                };
                if let Err(e) = self.events.emit_with(
                    &[Op::PutVm(&vm)],
                    "VmCloned",
                    Some((&vm.name, &id)),
                    &host,
                    from,
                ) {
                    st.sched.release(&host, &id);
                    return Err(e.into());
                }
                st.names.insert(vm.name.clone(), id.clone());
                st.vms.insert(id.clone(), vm.clone());
                st.refresh_host_counts();
                vm
            };
            let res = async {
                let mut c = self.storage_client(&host)?;
                let r = apb::CloneVmRequest {
                    request_id: String::new(),
                    source_vm_id: src_id.clone(),
                    snapshot: req.snapshot.clone(),
                    config: Some(agent_config(&vm)),
                    start,
                };
                c.clone_vm(request(r, STORAGE_CALL_TIMEOUT))
                    .await
                    .map(|r| r.into_inner())
                    .map_err(storage_err(&host))
            }
            .await;
            match res {
                Ok(status) => {
                    let mut st = self.state();
                    let mut cur = st.find_vm(&id)?.clone();
                    Self::apply_status(&mut cur, status);
                    let (kind, msg) = if cur.phase == pb::VmPhase::Running as i32 {
                        ("VmStarted", "running")
                    } else {
                        ("VmDefined", "created, not started")
                    };
                    let cur = self.save_vm_event(&mut st, cur, kind, msg)?;
                    Ok((cur, id.clone()))
                }
                Err(e) => {
                    {
                        let mut st = self.state();
                        st.vms.remove(&id);
                        st.names.remove(&vm.name);
                        st.sched.release(&host, &id);
                        st.refresh_host_counts();
                        self.store.apply(&[Op::DeleteVm(&id)])?;
                    }
                    let _ = self.agent_delete(&host, &id).await;
                    self.emit_vm("VmFailed", &vm, format!("clone failed and was undone: {e}"));
                    Err(e)
                }
            }
        })
        .await
    }

    /// Marks or unmarks a VM, or one of its snapshots, as a template.
    pub async fn set_template(&self, req: pb::SetTemplateRequest) -> Result<pb::Template> {
        if !req.snapshot.is_empty() {
            check_snapshot_name(&req.snapshot)?;
        }
        self.idempotent(&req.request_id, "SetTemplate", async {
            let id = self.state().vm_id(&req.vm)?;
            let _g = self.lock_key(&id).await;
            let vm = self.state().find_vm(&id)?.clone();
            let (kind, what) = if req.template {
                ("TemplateMarked", "marked as a template")
            } else {
                ("TemplateUnmarked", "no longer a template")
            };
            let t = if req.snapshot.is_empty() {
                let t = pb::Template {
                    vm: vm.name.clone(),
                    vm_id: id.clone(),
                    snapshot: String::new(),
                    host: vm.host.clone(),
                    template: req.template,
                    project: crate::iam::project_of(&vm).to_string(),
                };
                let key = tmpl_key(&id);
                let op = if req.template {
                    Op::PutRecord(&key, t.encode_to_vec())
                } else {
                    Op::DeleteRecord(&key)
                };
                self.events.emit_with(
                    &[op],
                    kind,
                    Some((&vm.name, &id)),
                    &vm.host,
                    format!("vm {} {what}", vm.name),
                )?;
                t
            } else {
                let mut snap = self.snapshot_record(&vm, &req.snapshot)?;
                snap.template = req.template;
                let key = snap_key(&id, &snap.name);
                self.events.emit_with(
                    &[Op::PutRecord(&key, snap.encode_to_vec())],
                    kind,
                    Some((&vm.name, &id)),
                    &snap.host,
                    format!("snapshot {} {what}", snap.name),
                )?;
                pb::Template {
                    vm: vm.name.clone(),
                    vm_id: id.clone(),
                    snapshot: snap.name,
                    host: snap.host,
                    template: req.template,
                    project: crate::iam::project_of(&vm).to_string(),
                }
            };
            Ok((t, id.clone()))
        })
        .await
    }

    /// Every template: VMs marked as one, then snapshots, by VM name.
    pub fn list_templates(&self) -> Result<pb::ListTemplatesResponse> {
        self.list_templates_in(&pb::ListTemplatesRequest::default(), &|_| true)
    }

    /// The templates whose VM's project `visible` accepts (and is `req.project` when given).
    pub fn list_templates_in(
        &self,
        req: &pb::ListTemplatesRequest,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<pb::ListTemplatesResponse> {
        let mut templates = Vec::new();
        for (k, v) in self.store.records("tmpl/")? {
            let mut t: pb::Template = decode(&k, &v)?;
            if let Ok(vm) = self.state().find_vm(&t.vm_id) {
                t.vm = vm.name.clone();
                t.host = vm.host.clone();
                t.project = crate::iam::project_of(vm).to_string();
            }
            templates.push(t);
        }
        for s in self.snapshot_records(None)? {
            if s.template {
                let project = match self.state().vms.get(&s.vm_id) {
                    Some(vm) => crate::iam::project_of(vm).to_string(),
                    None => s.project.clone(),
                };
                templates.push(pb::Template {
                    vm: s.vm,
                    vm_id: s.vm_id,
                    snapshot: s.name,
                    host: s.host,
                    template: true,
                    project,
                });
            }
        }
        for t in templates.iter_mut() {
            if t.project.is_empty() {
                t.project = crate::iam::DEFAULT_PROJECT.to_string();
            }
        }
        templates.retain(|t| {
            visible(&t.project) && (req.project.is_empty() || t.project == req.project)
        });
        templates.sort_by(|a, b| (&a.vm, &a.snapshot).cmp(&(&b.vm, &b.snapshot)));
        Ok(pb::ListTemplatesResponse { templates })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_get_their_own_macs_and_the_source_host() {
        let base = pb::VmSpec {
            name: "src".into(),
            networks: vec![
                pb::NetworkSpec {
                    bridge: "br0".into(),
                    mac: "52:54:00:00:00:01".into(),
                },
                pb::NetworkSpec::default(),
            ],
            ..Default::default()
        };
        let a = clone_spec(&base, "a", "id-a", "h1");
        let b = clone_spec(&base, "b", "id-b", "h1");
        assert_eq!(a.name, "a");
        assert_eq!(a.placement.as_ref().map(|p| p.host.as_str()), Some("h1"));
        let macs: Vec<&str> = a
            .networks
            .iter()
            .chain(&b.networks)
            .map(|n| n.mac.as_str())
            .collect();
        let mut uniq = macs.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), 4, "{macs:?}");
        assert!(!macs.contains(&"52:54:00:00:00:01"));
        assert_eq!(a.networks[0].bridge, "br0");
    }
}
