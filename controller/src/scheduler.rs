//! The scheduler: a pure, in-memory placement engine (no I/O, no clocks) so it can be unit
//! tested and benchmarked with 10,000 hosts and 100,000 VMs without any process.
//!
//! A decision runs **filters** over every host (schedulable, capacity with overcommit ratios,
//! required labels, anti-affinity group, exclusions) and then a **score** (pack: fullest host
//! that still fits; spread: emptiest). [`Scheduler::place`] chooses and claims in one call on
//! `&mut self`: whoever owns the scheduler (the controller keeps it behind its state mutex)
//! gets atomic claims, so two concurrent creates can never both land on a host that only has
//! room for one. Claims are keyed by VM id and idempotent.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// vCPUs and memory, the two dimensions the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Resources {
    /// Builds a resource amount.
    pub fn new(vcpus: u64, memory_mib: u64) -> Self {
        Self { vcpus, memory_mib }
    }
}

/// How hosts are ranked among those that pass the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Fill the fullest host first (fewer hosts in use).
    Pack,
    /// Use the emptiest host first (even load).
    #[default]
    Spread,
}

impl std::str::FromStr for Strategy {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pack" => Ok(Strategy::Pack),
            "spread" => Ok(Strategy::Spread),
            other => Err(SchedulerError::BadStrategy(other.to_string())),
        }
    }
}

/// Placement policy: overcommit ratios and the scoring strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// vCPUs that may be allocated per host CPU of capacity (e.g. 4.0).
    pub cpu_overcommit: f64,
    /// Memory that may be allocated per MiB of capacity (1.0: no overcommit).
    pub memory_overcommit: f64,
    /// Pack or spread.
    pub strategy: Strategy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            strategy: Strategy::Spread,
        }
    }
}

/// Errors of scheduling decisions and claims.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// No host passed the filters; the message tells how many each filter rejected.
    #[error("no host can take the VM ({0})")]
    NoFit(FilterCounts),
    /// The named host is not known.
    #[error("host {0} does not exist")]
    UnknownHost(String),
    /// The named host exists but cannot take the VM.
    #[error("host {host} cannot take the VM: {reason}")]
    HostRejected {
        /// The host.
        host: String,
        /// Which filter said no.
        reason: Rejection,
    },
    /// Unknown strategy name.
    #[error("unknown placement strategy {0:?} (pack or spread)")]
    BadStrategy(String),
}

/// Why a filter rejected a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Cordoned or NotReady.
    Unschedulable,
    /// Excluded by the request (e.g. the migration source).
    Excluded,
    /// Not enough vCPUs or memory left (after overcommit).
    Capacity,
    /// Lacks a required label.
    Labels,
    /// Already runs a VM of the same anti-affinity group.
    AntiAffinity,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::Unschedulable => "cordoned or not ready",
            Rejection::Excluded => "excluded",
            Rejection::Capacity => "insufficient capacity",
            Rejection::Labels => "missing required labels",
            Rejection::AntiAffinity => "anti-affinity group already present",
        })
    }
}

/// How many hosts each filter rejected, for an actionable error message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterCounts {
    /// Hosts considered.
    pub hosts: usize,
    /// Cordoned or NotReady.
    pub unschedulable: usize,
    /// Excluded by the request.
    pub excluded: usize,
    /// Without room.
    pub capacity: usize,
    /// Without the labels.
    pub labels: usize,
    /// Anti-affinity conflicts.
    pub anti_affinity: usize,
}

impl fmt::Display for FilterCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} hosts: {} unschedulable, {} excluded, {} insufficient capacity, {} missing labels, {} anti-affinity",
            self.hosts, self.unschedulable, self.excluded, self.capacity, self.labels, self.anti_affinity
        )
    }
}

/// What the scheduler knows about a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// Unique host name.
    pub name: String,
    /// Allocatable capacity before overcommit.
    pub capacity: Resources,
    /// Host labels.
    pub labels: BTreeMap<String, String>,
    /// Ready and not cordoned.
    pub schedulable: bool,
}

/// One placement request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The VM the claim is for (claims are keyed by it).
    pub vm_id: &'a str,
    /// What the VM needs.
    pub resources: Resources,
    /// Labels a host must carry.
    pub host_labels: &'a BTreeMap<String, String>,
    /// VMs of the same group never share a host.
    pub anti_affinity_group: Option<&'a str>,
    /// Hosts that must not be chosen.
    pub exclude: &'a [&'a str],
}

#[derive(Debug, Clone)]
struct Claim {
    resources: Resources,
    group: Option<String>,
}

/// What every decision scans, kept small and contiguous (one array for all hosts).
#[derive(Debug, Clone, Copy, Default)]
struct Hot {
    schedulable: bool,
    limit: Resources,
    allocated: Resources,
    /// 1 / limit, for scoring without divisions.
    inv_cpu: f64,
    inv_mem: f64,
}

impl Hot {
    fn new(capacity: &Resources, schedulable: bool, policy: &Policy) -> Self {
        let limit = limit_of(capacity, policy);
        let mut h = Hot {
            schedulable,
            limit,
            allocated: Resources::default(),
            inv_cpu: 0.0,
            inv_mem: 0.0,
        };
        h.set_limit(limit);
        h
    }

    fn set_limit(&mut self, limit: Resources) {
        self.limit = limit;
        self.inv_cpu = if limit.vcpus == 0 {
            0.0
        } else {
            1.0 / limit.vcpus as f64
        };
        self.inv_mem = if limit.memory_mib == 0 {
            0.0
        } else {
            1.0 / limit.memory_mib as f64
        };
    }

    #[inline]
    fn fits(&self, r: &Resources) -> bool {
        self.allocated.vcpus + r.vcpus <= self.limit.vcpus
            && self.allocated.memory_mib + r.memory_mib <= self.limit.memory_mib
    }

    /// Utilisation after adding `r` (mean of the CPU and memory fractions).
    #[inline]
    fn utilisation_after(&self, r: &Resources) -> f64 {
        ((self.allocated.vcpus + r.vcpus) as f64 * self.inv_cpu
            + (self.allocated.memory_mib + r.memory_mib) as f64 * self.inv_mem)
            * 0.5
    }
}

/// The rest of a host: only looked at when a request needs it.
#[derive(Debug, Clone)]
struct Cold {
    spec: HostSpec,
    groups: HashMap<String, u32>,
    claims: HashMap<String, Claim>,
}

fn ratio(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        1.0
    } else {
        used as f64 / limit as f64
    }
}

fn limit_of(capacity: &Resources, policy: &Policy) -> Resources {
    Resources {
        vcpus: (capacity.vcpus as f64 * policy.cpu_overcommit).floor() as u64,
        memory_mib: (capacity.memory_mib as f64 * policy.memory_overcommit).floor() as u64,
    }
}

/// The placement engine. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    policy: Policy,
    hot: Vec<Hot>,
    cold: Vec<Cold>,
    index: HashMap<String, usize>,
}

impl Scheduler {
    /// An empty scheduler with `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            hot: Vec::new(),
            cold: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Number of hosts known.
    pub fn host_count(&self) -> usize {
        self.hot.len()
    }

    /// Adds a host or updates its capacity, labels and schedulability, keeping its claims.
    pub fn upsert_host(&mut self, spec: HostSpec) {
        match self.index.get(&spec.name) {
            Some(&i) => {
                let limit = limit_of(&spec.capacity, &self.policy);
                self.hot[i].set_limit(limit);
                self.hot[i].schedulable = spec.schedulable;
                self.cold[i].spec = spec;
            }
            None => {
                self.index.insert(spec.name.clone(), self.hot.len());
                self.hot
                    .push(Hot::new(&spec.capacity, spec.schedulable, &self.policy));
                self.cold.push(Cold {
                    spec,
                    groups: HashMap::new(),
                    claims: HashMap::new(),
                });
            }
        }
    }

    /// Marks a host (un)schedulable (cordon, NotReady). Returns false for an unknown host.
    pub fn set_schedulable(&mut self, host: &str, schedulable: bool) -> bool {
        match self.index.get(host) {
            Some(&i) => {
                self.hot[i].schedulable = schedulable;
                self.cold[i].spec.schedulable = schedulable;
                true
            }
            None => false,
        }
    }

    /// Whether the host is known.
    pub fn has_host(&self, host: &str) -> bool {
        self.index.contains_key(host)
    }

    /// What the claims on `host` add up to.
    pub fn allocated(&self, host: &str) -> Option<Resources> {
        self.index.get(host).map(|&i| self.hot[i].allocated)
    }

    /// The host's limit after overcommit.
    pub fn limit(&self, host: &str) -> Option<Resources> {
        self.index.get(host).map(|&i| self.hot[i].limit)
    }

    /// Utilisation of `host` (mean of CPU and memory fractions of its limit).
    pub fn utilisation(&self, host: &str) -> Option<f64> {
        self.index.get(host).map(|&i| {
            let h = &self.hot[i];
            (ratio(h.allocated.vcpus, h.limit.vcpus)
                + ratio(h.allocated.memory_mib, h.limit.memory_mib))
                / 2.0
        })
    }

    /// Number of VMs claiming on `host`.
    pub fn claim_count(&self, host: &str) -> usize {
        self.index
            .get(host)
            .map(|&i| self.cold[i].claims.len())
            .unwrap_or(0)
    }

    /// Whether `vm_id` holds a claim on `host`.
    pub fn has_claim(&self, host: &str, vm_id: &str) -> bool {
        self.index
            .get(host)
            .map(|&i| self.cold[i].claims.contains_key(vm_id))
            .unwrap_or(false)
    }

    /// The filters that need more than the hot data: exclusions, labels, anti-affinity.
    fn cold_filter(&self, i: usize, req: &Request<'_>) -> Result<(), Rejection> {
        let c = &self.cold[i];
        if !req.exclude.is_empty() && req.exclude.contains(&c.spec.name.as_str()) {
            return Err(Rejection::Excluded);
        }
        if !req.host_labels.is_empty()
            && !req
                .host_labels
                .iter()
                .all(|(k, v)| c.spec.labels.get(k) == Some(v))
        {
            return Err(Rejection::Labels);
        }
        if let Some(g) = req.anti_affinity_group {
            if c.groups.get(g).copied().unwrap_or(0) > 0 {
                return Err(Rejection::AntiAffinity);
            }
        }
        Ok(())
    }

    /// All filters for host `i`.
    fn filter(&self, i: usize, req: &Request<'_>) -> Result<(), Rejection> {
        let h = &self.hot[i];
        if !h.schedulable {
            return Err(Rejection::Unschedulable);
        }
        if !req.exclude.is_empty() && req.exclude.contains(&self.cold[i].spec.name.as_str()) {
            return Err(Rejection::Excluded);
        }
        if !h.fits(&req.resources) {
            return Err(Rejection::Capacity);
        }
        self.cold_filter(i, req)
    }

    /// Runs filters and scores and returns the best host, without claiming.
    pub fn choose(&self, req: &Request<'_>) -> Result<&str, SchedulerError> {
        let pack = self.policy.strategy == Strategy::Pack;
        let needs_cold = !req.exclude.is_empty()
            || !req.host_labels.is_empty()
            || req.anti_affinity_group.is_some();
        let r = req.resources;
        let mut best: Option<(usize, f64)> = None;
        for (i, h) in self.hot.iter().enumerate() {
            if !h.schedulable || !h.fits(&r) {
                continue;
            }
            let u = h.utilisation_after(&r);
            let score = if pack { u } else { -u };
            // Strictly greater: ties go to the earlier (first registered) host. Only a host
            // that would win pays for the cold filters.
            if best.is_none_or(|(_, s)| score > s) {
                if needs_cold && self.cold_filter(i, req).is_err() {
                    continue;
                }
                best = Some((i, score));
            }
        }
        match best {
            Some((i, _)) => Ok(&self.cold[i].spec.name),
            None => Err(SchedulerError::NoFit(self.count_rejections(req))),
        }
    }

    /// Why each host rejects `req` (only computed for error messages).
    fn count_rejections(&self, req: &Request<'_>) -> FilterCounts {
        let mut c = FilterCounts {
            hosts: self.hot.len(),
            ..Default::default()
        };
        for i in 0..self.hot.len() {
            match self.filter(i, req) {
                Ok(()) => {}
                Err(Rejection::Unschedulable) => c.unschedulable += 1,
                Err(Rejection::Excluded) => c.excluded += 1,
                Err(Rejection::Capacity) => c.capacity += 1,
                Err(Rejection::Labels) => c.labels += 1,
                Err(Rejection::AntiAffinity) => c.anti_affinity += 1,
            }
        }
        c
    }

    /// Chooses a host and claims the request's resources on it, atomically.
    pub fn place(&mut self, req: &Request<'_>) -> Result<String, SchedulerError> {
        let host = self.choose(req)?.to_string();
        self.claim(&host, req)?;
        Ok(host)
    }

    /// Claims on a named host after checking it is schedulable and the request fits there.
    /// Claiming again for the same VM on the same host is a no-op.
    pub fn claim(&mut self, host: &str, req: &Request<'_>) -> Result<(), SchedulerError> {
        let &i = self
            .index
            .get(host)
            .ok_or_else(|| SchedulerError::UnknownHost(host.to_string()))?;
        if self.cold[i].claims.contains_key(req.vm_id) {
            return Ok(());
        }
        self.filter(i, req)
            .map_err(|reason| SchedulerError::HostRejected {
                host: host.to_string(),
                reason,
            })?;
        self.add(i, req);
        Ok(())
    }

    /// Records a claim without checks: used for what is already true (loading assignments
    /// from the store, a VM an agent reports running).
    pub fn force_claim(&mut self, host: &str, req: &Request<'_>) -> Result<(), SchedulerError> {
        let &i = self
            .index
            .get(host)
            .ok_or_else(|| SchedulerError::UnknownHost(host.to_string()))?;
        self.add(i, req);
        Ok(())
    }

    fn add(&mut self, i: usize, req: &Request<'_>) {
        let c = &mut self.cold[i];
        if c.claims.contains_key(req.vm_id) {
            return;
        }
        let h = &mut self.hot[i];
        h.allocated.vcpus += req.resources.vcpus;
        h.allocated.memory_mib += req.resources.memory_mib;
        if let Some(g) = req.anti_affinity_group {
            *c.groups.entry(g.to_string()).or_insert(0) += 1;
        }
        c.claims.insert(
            req.vm_id.to_string(),
            Claim {
                resources: req.resources,
                group: req.anti_affinity_group.map(str::to_string),
            },
        );
    }

    /// Releases `vm_id`'s claim on `host`. Returns whether there was one.
    pub fn release(&mut self, host: &str, vm_id: &str) -> bool {
        let Some(&i) = self.index.get(host) else {
            return false;
        };
        let c = &mut self.cold[i];
        let Some(claim) = c.claims.remove(vm_id) else {
            return false;
        };
        let h = &mut self.hot[i];
        h.allocated.vcpus = h.allocated.vcpus.saturating_sub(claim.resources.vcpus);
        h.allocated.memory_mib = h
            .allocated
            .memory_mib
            .saturating_sub(claim.resources.memory_mib);
        if let Some(g) = claim.group {
            if let Some(n) = c.groups.get_mut(&g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.groups.remove(&g);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use parking_lot::RwLock;

    use super::*;

    fn host(name: &str, vcpus: u64, mem: u64) -> HostSpec {
        HostSpec {
            name: name.into(),
            capacity: Resources::new(vcpus, mem),
            labels: BTreeMap::new(),
            schedulable: true,
        }
    }

    fn req<'a>(
        id: &'a str,
        vcpus: u64,
        mem: u64,
        labels: &'a BTreeMap<String, String>,
    ) -> Request<'a> {
        Request {
            vm_id: id,
            resources: Resources::new(vcpus, mem),
            host_labels: labels,
            anti_affinity_group: None,
            exclude: &[],
        }
    }

    fn policy(strategy: Strategy) -> Policy {
        Policy {
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            strategy,
        }
    }

    #[test]
    fn spread_alternates_and_pack_fills() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(policy(Strategy::Spread));
        s.upsert_host(host("a", 8, 1024));
        s.upsert_host(host("b", 8, 1024));
        let placed: Vec<String> = ["1", "2", "3", "4"]
            .iter()
            .map(|id| s.place(&req(id, 1, 64, &none)).unwrap())
            .collect();
        assert_eq!(placed, ["a", "b", "a", "b"]);

        let mut p = Scheduler::new(policy(Strategy::Pack));
        p.upsert_host(host("a", 8, 1024));
        p.upsert_host(host("b", 8, 1024));
        let placed: Vec<String> = ["1", "2", "3"]
            .iter()
            .map(|id| p.place(&req(id, 1, 64, &none)).unwrap())
            .collect();
        assert_eq!(placed, ["a", "a", "a"]);
    }

    #[test]
    fn capacity_with_overcommit() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(Policy {
            cpu_overcommit: 2.0,
            memory_overcommit: 1.5,
            strategy: Strategy::Pack,
        });
        s.upsert_host(host("a", 2, 100));
        assert_eq!(s.limit("a"), Some(Resources::new(4, 150)));
        s.place(&req("1", 2, 100, &none)).unwrap();
        s.place(&req("2", 2, 50, &none)).unwrap();
        let err = s.place(&req("3", 1, 1, &none)).unwrap_err();
        assert!(
            matches!(err, SchedulerError::NoFit(c) if c.capacity == 1),
            "{err}"
        );
        assert!(s.release("a", "1"));
        assert!(!s.release("a", "1"));
        s.place(&req("3", 1, 1, &none)).unwrap();
    }

    #[test]
    fn labels_cordon_exclusion_and_anti_affinity() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(policy(Strategy::Spread));
        let mut ssd = host("a", 8, 1024);
        ssd.labels.insert("disk".into(), "ssd".into());
        s.upsert_host(ssd);
        s.upsert_host(host("b", 8, 1024));
        s.upsert_host(host("c", 8, 1024));
        let want: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        assert_eq!(s.place(&req("1", 1, 1, &want)).unwrap(), "a");

        s.set_schedulable("b", false);
        let excl = ["c"];
        let r = Request {
            exclude: &excl,
            ..req("2", 1, 1, &none)
        };
        assert_eq!(s.place(&r).unwrap(), "a");
        let r = Request {
            exclude: &["a", "c"],
            ..req("3", 1, 1, &none)
        };
        assert!(
            matches!(s.place(&r), Err(SchedulerError::NoFit(c)) if c.unschedulable == 1 && c.excluded == 2)
        );

        s.set_schedulable("b", true);
        let g = Request {
            anti_affinity_group: Some("db"),
            ..req("g1", 1, 1, &none)
        };
        let h1 = s.place(&g).unwrap();
        let h2 = s.place(&Request { vm_id: "g2", ..g }).unwrap();
        let h3 = s.place(&Request { vm_id: "g3", ..g }).unwrap();
        let mut hs = vec![h1, h2, h3];
        hs.sort();
        assert_eq!(hs, ["a", "b", "c"]);
        assert!(
            matches!(s.place(&Request { vm_id: "g4", ..g }), Err(SchedulerError::NoFit(c)) if c.anti_affinity == 3)
        );
        // Releasing a group member frees its host for the group.
        assert!(s.release("b", "g2") || s.release("a", "g2") || s.release("c", "g2"));
        s.place(&Request { vm_id: "g4", ..g }).unwrap();
    }

    #[test]
    fn claims_are_idempotent_and_checked() {
        let none = BTreeMap::new();
        let mut s = Scheduler::new(policy(Strategy::Pack));
        s.upsert_host(host("a", 1, 100));
        s.claim("a", &req("1", 1, 60, &none)).unwrap();
        s.claim("a", &req("1", 1, 60, &none)).unwrap();
        assert_eq!(s.allocated("a"), Some(Resources::new(1, 60)));
        assert_eq!(
            s.claim("a", &req("2", 0, 60, &none)),
            Err(SchedulerError::HostRejected {
                host: "a".into(),
                reason: Rejection::Capacity
            })
        );
        assert_eq!(
            s.claim("zz", &req("2", 0, 1, &none)),
            Err(SchedulerError::UnknownHost("zz".into()))
        );
        s.force_claim("a", &req("3", 1, 100, &none)).unwrap();
        assert_eq!(s.allocated("a"), Some(Resources::new(2, 160)));
    }

    /// Eight threads decide from the same snapshot (under a shared read lock, released
    /// before claiming) and then claim what they chose: every round they all pick the same
    /// host, so near the end more threads claim a host than it has room for, and only
    /// [`Scheduler::claim`]'s own check keeps the host from being overbooked. The barriers
    /// make every round's decisions see one state, so the outcome is exact, not a matter of
    /// timing.
    #[test]
    fn concurrent_places_never_overbook() {
        const THREADS: usize = 8;
        let mut s = Scheduler::new(policy(Strategy::Spread));
        s.upsert_host(host("a", 64, 1000));
        s.upsert_host(host("b", 64, 1000));
        let s = Arc::new(RwLock::new(s));
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = Arc::clone(&s);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let none = BTreeMap::new();
                    let (mut placed, mut refused) = (0usize, 0usize);
                    for round in 0.. {
                        let id = format!("{t}-{round}");
                        let r = req(&id, 1, 30, &none);
                        barrier.wait();
                        // Decide on a snapshot; the read lock is gone before the claim.
                        let chosen = s.read().choose(&r).map(str::to_string);
                        barrier.wait();
                        let Ok(host) = chosen else {
                            // Every thread saw the same full cluster: all stop together.
                            break;
                        };
                        match s.write().claim(&host, &r) {
                            Ok(()) => placed += 1,
                            Err(SchedulerError::HostRejected {
                                reason: Rejection::Capacity,
                                ..
                            }) => refused += 1,
                            Err(e) => panic!("claim of {id} on {host}: {e}"),
                        }
                    }
                    (placed, refused)
                })
            })
            .collect();
        let (placed, refused) = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |(p, r), (tp, tr)| (p + tp, r + tr));
        let s = s.read();
        // 1000 MiB / 30 MiB = 33 per host.
        assert_eq!(placed, 66);
        for h in ["a", "b"] {
            assert_eq!(s.claim_count(h), 33, "{h}");
            assert_eq!(s.allocated(h), Some(Resources::new(33, 990)), "{h}");
        }
        // Rounds of 8 fill each host to 32; in the last round on each, 8 threads go for the
        // one slot left: 7 claims per host had to be refused.
        assert_eq!(refused, 2 * (THREADS - 1));
    }
}
