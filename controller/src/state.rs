//! The controller's in-memory view: VMs by id and name, hosts with the last report of their
//! agent, and the scheduler's claims. It is rebuilt from the store at startup and changed only
//! under the controller's state mutex, always together with a store transaction.

use std::collections::{BTreeMap, HashMap};

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;

use crate::scheduler::{HostSpec, Policy, Request, Resources, Scheduler};

/// Errors of state lookups.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    /// No VM with that name or id.
    #[error("vm {0} not found")]
    VmNotFound(String),
    /// No host with that name.
    #[error("host {0} does not exist")]
    HostNotFound(String),
}

/// A host with what its agent last reported.
#[derive(Debug, Clone, Default)]
pub struct HostEntry {
    /// The host record (persisted).
    pub host: pb::Host,
    /// VM statuses from the last heartbeat, by VM id.
    pub reports: HashMap<String, apb::VmStatus>,
    /// When that heartbeat arrived (ms since the epoch; 0: none since the controller started).
    pub report_at_ms: i64,
    /// When the host went NotReady.
    pub not_ready_since_ms: Option<i64>,
}

impl HostEntry {
    /// Whether the host is Ready.
    pub fn ready(&self) -> bool {
        self.host.state == pb::HostState::Ready as i32
    }

    /// Whether new VMs may land here.
    pub fn schedulable(&self) -> bool {
        self.ready() && !self.host.cordoned
    }
}

/// The in-memory state.
#[derive(Debug, Default)]
pub struct State {
    /// VMs by id.
    pub vms: HashMap<String, pb::Vm>,
    /// VM ids by name (ordered: pagination follows names).
    pub names: BTreeMap<String, String>,
    /// Hosts by name.
    pub hosts: BTreeMap<String, HostEntry>,
    /// Claims.
    pub sched: Scheduler,
}

/// What a VM asks of the scheduler, owned so a [`Request`] can borrow it.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// vCPUs and memory.
    pub resources: Resources,
    /// Required host labels.
    pub host_labels: BTreeMap<String, String>,
    /// Anti-affinity group.
    pub group: Option<String>,
    /// Pinned host.
    pub pinned: Option<String>,
}

impl Needs {
    /// From a VM spec.
    pub fn of(spec: &pb::VmSpec) -> Self {
        let p = spec.placement.clone().unwrap_or_default();
        Needs {
            resources: Resources::new(spec.vcpus.max(0) as u64, spec.memory_mib.max(0) as u64),
            host_labels: p.host_labels.into_iter().collect(),
            group: (!p.anti_affinity_group.is_empty()).then_some(p.anti_affinity_group),
            pinned: (!p.host.is_empty()).then_some(p.host),
        }
    }

    /// A scheduler request for `vm_id`, excluding `exclude`.
    pub fn request<'a>(&'a self, vm_id: &'a str, exclude: &'a [&'a str]) -> Request<'a> {
        Request {
            vm_id,
            resources: self.resources,
            host_labels: &self.host_labels,
            anti_affinity_group: self.group.as_deref(),
            exclude,
        }
    }
}

impl State {
    /// Builds the state from stored records: hosts first, then every VM's claims.
    pub fn from_records(
        policy: Policy,
        hosts: Vec<pb::Host>,
        vms: Vec<pb::Vm>,
        now_ms: i64,
    ) -> Self {
        let mut st = State {
            sched: Scheduler::new(policy),
            ..Default::default()
        };
        for mut h in hosts {
            // Give every host a full heartbeat timeout to report after a controller restart.
            h.last_heartbeat_ms = now_ms;
            st.sched.upsert_host(host_spec(&h, true));
            st.hosts.insert(
                h.name.clone(),
                HostEntry {
                    host: h,
                    ..Default::default()
                },
            );
        }
        for vm in vms {
            st.names.insert(vm.name.clone(), vm.id.clone());
            st.claim_existing(&vm);
            st.vms.insert(vm.id.clone(), vm);
        }
        st.refresh_host_counts();
        st
    }

    /// Records the claims a VM already holds (its host, and a migration target in progress).
    pub fn claim_existing(&mut self, vm: &pb::Vm) {
        let needs = Needs::of(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default()));
        let req = needs.request(&vm.id, &[]);
        if !vm.host.is_empty() {
            let _ = self.sched.force_claim(&vm.host, &req);
        }
        if vm.phase == pb::VmPhase::Migrating as i32 {
            if let Some(m) = &vm.migration {
                if !m.target_host.is_empty() {
                    let _ = self.sched.force_claim(&m.target_host, &req);
                }
            }
        }
    }

    /// Looks a VM up by name, then by id.
    pub fn find_vm(&self, key: &str) -> Result<&pb::Vm, StateError> {
        self.names
            .get(key)
            .and_then(|id| self.vms.get(id))
            .or_else(|| self.vms.get(key))
            .ok_or_else(|| StateError::VmNotFound(key.to_string()))
    }

    /// The id of a VM given by name or id.
    pub fn vm_id(&self, key: &str) -> Result<String, StateError> {
        self.find_vm(key).map(|v| v.id.clone())
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<&HostEntry, StateError> {
        self.hosts
            .get(name)
            .ok_or_else(|| StateError::HostNotFound(name.to_string()))
    }

    /// A host by name, mutable.
    pub fn host_mut(&mut self, name: &str) -> Result<&mut HostEntry, StateError> {
        self.hosts
            .get_mut(name)
            .ok_or_else(|| StateError::HostNotFound(name.to_string()))
    }

    /// Updates each host's allocation and VM count from the scheduler's claims.
    pub fn refresh_host_counts(&mut self) {
        for (name, e) in self.hosts.iter_mut() {
            let a = self.sched.allocated(name).unwrap_or_default();
            e.host.allocated = Some(apb::Resources {
                vcpus: a.vcpus as u32,
                memory_mib: a.memory_mib,
            });
            e.host.vm_count = self.sched.claim_count(name) as u32;
        }
    }

    /// The host record as the API shows it (with allocation).
    pub fn host_view(&self, name: &str) -> Result<pb::Host, StateError> {
        let e = self.host(name)?;
        let mut h = e.host.clone();
        let a = self.sched.allocated(name).unwrap_or_default();
        h.allocated = Some(apb::Resources {
            vcpus: a.vcpus as u32,
            memory_mib: a.memory_mib,
        });
        h.vm_count = self.vms.values().filter(|v| v.host == name).count() as u32;
        Ok(h)
    }

    /// VM ids placed on `host`.
    pub fn vms_on(&self, host: &str) -> Vec<String> {
        let mut v: Vec<&pb::Vm> = self.vms.values().filter(|v| v.host == host).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter().map(|v| v.id.clone()).collect()
    }
}

/// The scheduler's view of a host record.
pub fn host_spec(h: &pb::Host, schedulable: bool) -> HostSpec {
    let cap = h.capacity.unwrap_or_default();
    HostSpec {
        name: h.name.clone(),
        capacity: Resources::new(cap.vcpus as u64, cap.memory_mib),
        labels: h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        schedulable: schedulable && !h.cordoned,
    }
}

/// The agent's configuration of a VM.
pub fn agent_config(vm: &pb::Vm) -> apb::VmConfig {
    let spec = vm.spec.clone().unwrap_or_default();
    let mut disks = Vec::new();
    if !spec.image.is_empty() {
        disks.push(apb::Disk {
            image: spec.image.clone(),
            size_mib: 0,
            readonly: false,
            clone: true,
            shared: false,
        });
    }
    disks.extend(spec.disks.iter().map(|d| apb::Disk {
        image: d.image.clone(),
        size_mib: d.size_mib.max(0) as u64,
        readonly: d.readonly,
        clone: d.clone,
        shared: d.shared,
    }));
    apb::VmConfig {
        id: vm.id.clone(),
        name: vm.name.clone(),
        vcpus: spec.vcpus.max(0) as u32,
        memory_mib: spec.memory_mib.max(0) as u64,
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline.clone(),
        disks,
        nics: spec
            .networks
            .iter()
            .map(|n| apb::Nic {
                bridge: n.bridge.clone(),
                mac: n.mac.clone(),
            })
            .collect(),
        labels: spec.labels.clone(),
    }
}

/// The phase an agent report implies, if it implies one.
pub fn phase_from_report(st: &apb::VmStatus) -> Option<pb::VmPhase> {
    use apb::VmState as S;
    match S::try_from(st.state).unwrap_or(S::Unspecified) {
        S::Running | S::Paused | S::Migrating => Some(pb::VmPhase::Running),
        S::Stopped | S::Created => Some(pb::VmPhase::Stopped),
        S::Crashed => Some(pb::VmPhase::Failed),
        S::Starting | S::Incoming => Some(pb::VmPhase::Scheduled),
        // The controller settles an in-doubt source from what both agents hold.
        S::Unspecified | S::Indoubt => None,
    }
}

/// A new VM's record: generation 1, created now, on `host`, wanting `desired`, in `phase`.
pub fn new_vm(
    id: &str,
    spec: pb::VmSpec,
    host: &str,
    desired: pb::DesiredState,
    phase: pb::VmPhase,
) -> pb::Vm {
    let now = crate::util::now_ms();
    pb::Vm {
        id: id.to_string(),
        name: spec.name.clone(),
        spec: Some(spec),
        desired: desired as i32,
        phase: phase as i32,
        host: host.to_string(),
        created_at_ms: now,
        updated_at_ms: now,
        generation: 1,
        ..Default::default()
    }
}

/// The desired state of a VM created started (`start`) or stopped.
pub fn desired(start: bool) -> pb::DesiredState {
    if start {
        pb::DesiredState::Running
    } else {
        pb::DesiredState::Stopped
    }
}

/// The restart policy of a VM (unspecified means always).
pub fn restart_policy(vm: &pb::Vm) -> pb::RestartPolicy {
    match vm
        .spec
        .as_ref()
        .map(|s| s.restart_policy)
        .and_then(|p| pb::RestartPolicy::try_from(p).ok())
    {
        Some(pb::RestartPolicy::OnFailure) => pb::RestartPolicy::OnFailure,
        Some(pb::RestartPolicy::Never) => pb::RestartPolicy::Never,
        _ => pb::RestartPolicy::Always,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_claims_from_records() {
        let host = |n: &str| pb::Host {
            name: n.into(),
            capacity: Some(apb::Resources {
                vcpus: 4,
                memory_mib: 1024,
            }),
            state: pb::HostState::Ready as i32,
            ..Default::default()
        };
        let spec = pb::VmSpec {
            name: "a".into(),
            vcpus: 1,
            memory_mib: 256,
            ..Default::default()
        };
        let vm = pb::Vm {
            id: "1".into(),
            name: "a".into(),
            host: "h1".into(),
            spec: Some(spec),
            phase: pb::VmPhase::Migrating as i32,
            migration: Some(pb::MigrationInfo {
                target_host: "h2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let st = State::from_records(Policy::default(), vec![host("h1"), host("h2")], vec![vm], 7);
        assert_eq!(st.sched.allocated("h1").unwrap().memory_mib, 256);
        assert_eq!(st.sched.allocated("h2").unwrap().memory_mib, 256);
        assert_eq!(st.find_vm("a").unwrap().id, "1");
        assert_eq!(st.find_vm("1").unwrap().name, "a");
        assert!(st.find_vm("b").is_err());
        assert_eq!(st.hosts["h1"].host.last_heartbeat_ms, 7);
    }
}
