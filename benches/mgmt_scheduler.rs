//! Scheduler benchmark: 10,000 simulated hosts, 100,000 VMs placed one decision at a time
//! (filters: capacity with overcommit, labels, anti-affinity, cordoned hosts; score: pack or
//! spread; each decision claims atomically). Prints decisions per second and latency
//! percentiles per strategy. `cargo bench --bench mgmt_scheduler` (env MGMT_BENCH_HOSTS /
//! MGMT_BENCH_VMS to change the sizes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use novacron_controller::scheduler::{HostSpec, Policy, Request, Resources, Scheduler, Strategy};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Deterministic xorshift so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Row {
    strategy: &'static str,
    placed: usize,
    rejected: usize,
    total: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn run(strategy: Strategy, hosts: usize, vms: usize) -> Row {
    let mut s = Scheduler::new(Policy {
        cpu_overcommit: 4.0,
        memory_overcommit: 1.0,
        strategy,
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..hosts {
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_string(), format!("z{}", i % 10));
        if i % 4 == 0 {
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        s.upsert_host(HostSpec {
            name: format!("host-{i:05}"),
            capacity: Resources::new(32 + (i % 3) as u64 * 16, 131_072 + (i % 2) as u64 * 131_072),
            labels,
            // 1% cordoned or NotReady.
            schedulable: i % 100 != 0,
        });
    }
    let ssd: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
    let zone: BTreeMap<String, String> = [("zone".to_string(), "z3".to_string())].into();
    let none = BTreeMap::new();
    let ids: Vec<String> = (0..vms).map(|i| format!("vm-{i:06}")).collect();
    let groups: Vec<String> = (0..500).map(|g| format!("group-{g}")).collect();
    let mut lat = Vec::with_capacity(vms);
    let mut rejected = 0;
    let t0 = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let r = rng.next();
        let vcpus = [1, 1, 2, 2, 4, 8][(r % 6) as usize];
        let mem = [512, 1024, 2048, 4096, 8192][((r >> 8) % 5) as usize];
        let labels = match (r >> 16) % 20 {
            0 => &ssd,
            1 => &zone,
            _ => &none,
        };
        // 5% in anti-affinity groups of ~10 VMs.
        let group = (r >> 24)
            .is_multiple_of(20)
            .then(|| groups[i % groups.len()].as_str());
        let req = Request {
            vm_id: id,
            resources: Resources::new(vcpus, mem),
            host_labels: labels,
            anti_affinity_group: group,
            exclude: &[],
        };
        let t = Instant::now();
        let res = s.place(&req);
        lat.push(t.elapsed());
        if res.is_err() {
            rejected += 1;
        }
    }
    let total = t0.elapsed();
    lat.sort();
    Row {
        strategy: match strategy {
            Strategy::Pack => "pack",
            Strategy::Spread => "spread",
        },
        placed: vms - rejected,
        rejected,
        total,
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let hosts = env_usize("MGMT_BENCH_HOSTS", if quick { 1_000 } else { 10_000 });
    let vms = env_usize("MGMT_BENCH_VMS", if quick { 10_000 } else { 100_000 });
    println!("scheduler: {hosts} hosts, {vms} VMs, overcommit cpu 4.0 / memory 1.0, 1% hosts unschedulable");
    println!(
        "{:<8} {:>9} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "strategy", "placed", "rejected", "decisions/s", "p50", "p99", "max"
    );
    for strategy in [Strategy::Spread, Strategy::Pack] {
        let r = run(strategy, hosts, vms);
        println!(
            "{:<8} {:>9} {:>9} {:>12.0} {:>8.1}us {:>8.1}us {:>8.1}us",
            r.strategy,
            r.placed,
            r.rejected,
            vms as f64 / r.total.as_secs_f64(),
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.max.as_secs_f64() * 1e6,
        );
    }
}
