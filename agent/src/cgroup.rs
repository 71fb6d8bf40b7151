//! Per-VM cgroups: the host's cgroup setup (detected once at agent start: pure cgroup v2, or
//! the v1 controller hierarchies of a hybrid host), the limits a VM gets (CPU quota, memory,
//! pids, I/O weight), creating and removing a VM's cgroup directories, and reading their
//! usage back for the VM's metrics and its crash reason.
//!
//! Where the cgroups live:
//! - **v2**: `<cgroup2 mount>/novacron/<agent-id>/<vm-id>`. The agent enables `+cpu +memory
//!   +pids` (and `+io` where offered) in `cgroup.subtree_control` of the mount's root, of
//!   `novacron` and of `novacron/<agent-id>`. The tree sits at the hierarchy's root, not under
//!   the agent's own cgroup: v2 forbids distributing controllers from a cgroup that has
//!   processes (the agent's service cgroup has the agent).
//! - **v1** (hybrid hosts): one directory per controller hierarchy,
//!   `<mount>/<agent's own cgroup there>/novacron/<agent-id>/<vm-id>` for `cpu`, `cpuacct`,
//!   `memory`, `pids` and (when it has a weight file) `blkio`. v1 has no internal-process
//!   rule, so the VMs stay inside whatever limits the agent's own cgroups carry.
//!
//! The `<agent-id>` level keeps several agents on one machine (tests) apart: during a
//! migration between two of them the same VM id runs on both.
//!
//! Nothing here enters a cgroup: the supervisor ([`crate::supervise`]) moves each VMM child
//! into the directories of its [`VmCgroup`] between fork and exec.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// CFS period of every VM's CPU quota (µs): the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest CPU quota a VM gets, in thousandths of a CPU, whatever the overcommit.
pub const MIN_MILLICPUS: u64 = 100;

/// Memory a VMM uses beyond the guest RAM it touched (MiB), measured on this repository's
/// VMM (debug build) with the test guest, 128 MiB of guest RAM, 1 vCPU:
/// - idle guest: VmRSS 5.9 MiB (5.2 MiB of it the mapped executable, 0.6 MiB anonymous),
///   so about 6 MiB beyond the guest;
/// - `workload=ab mib=16`: VmRSS 22.2 MiB (6.2 MiB beyond the 16 MiB the guest touches);
///   `mib=64`: 71.3 MiB (7.3 MiB beyond);
/// - the source of a live migration with `--compression delta` (2 encoder threads, 64 MiB
///   delta cache, the default half of the guest RAM): peak VmRSS 167 MiB = 64 MiB touched
///   guest RAM + 64 MiB cache + 39 MiB (encoder buffers, zstd contexts, stream buffers).
///
/// The constant covers that worst case minus the delta cache, which the agent adds to the
/// limit only for a migration that uses one ([`delta_cache_bytes`]); the cgroup also charges
/// kernel memory (page tables, KVM's dirty bitmaps) and page cache, which [`margin_mib`]
/// covers.
pub const VMM_OVERHEAD_MIB: u64 = 40;

/// Smallest safety margin on top of guest RAM and [`VMM_OVERHEAD_MIB`] (MiB).
pub const MIN_MARGIN_MIB: u64 = 16;

/// Tasks a VMM may have beyond 4 per vCPU. Measured: 4 threads for a 1-vCPU guest when
/// running (main, vCPU, API, device); 8 as the source of a delta migration with 2 encoder
/// threads (sender, receiver of the confirmation, encoders); encoder threads are at most 4.
pub const BASE_PIDS: u64 = 64;

/// Default I/O weight (the kernel's default, range 1..10000 in v2, 10..1000 in v1).
pub const DEFAULT_IO_WEIGHT: u32 = 100;

/// Name of the directory that holds the agents' cgroups.
pub const TOP_DIR: &str = "novacron";

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host offers no usable cgroup hierarchy.
    #[error(
        "cgroups are unavailable on this host: {0} (start the agent with --no-cgroups to run \
         VMs without resource limits)"
    )]
    Unavailable(String),
    /// A cgroup file or directory could not be created, read or written.
    #[error("cgroup {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A controller the VMs need is not offered where their cgroups go.
    #[error(
        "cgroup controller {controller} is not available in {path} (offered: {offered:?}); \
         start the agent with --no-cgroups to run VMs without resource limits"
    )]
    MissingController {
        /// Controller name.
        controller: &'static str,
        /// The `cgroup.controllers` file read.
        path: String,
        /// What it lists.
        offered: String,
    },
    /// A cgroup file did not have the expected format.
    #[error("cgroup {path}: unexpected content {content:?}")]
    Format {
        /// File.
        path: String,
        /// What it held.
        content: String,
    },
    /// A bad `--cpu-overcommit`.
    #[error("--cpu-overcommit must be a finite number above 0, got {0}")]
    BadOvercommit(f64),
    /// A VM id that cannot name a directory.
    #[error("vm id {0:?} cannot name a cgroup")]
    BadId(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The limits of one VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per period (µs).
    pub cpu_quota_us: u64,
    /// CFS period (µs).
    pub cpu_period_us: u64,
    /// Memory limit (bytes); swap is not allowed.
    pub memory_bytes: u64,
    /// Most tasks (processes and threads).
    pub pids: u64,
    /// Proportional I/O weight.
    pub io_weight: u32,
}

/// The safety margin of a VM with `memory_mib` of guest RAM (MiB): 1/16 of it, at least
/// [`MIN_MARGIN_MIB`].
pub fn margin_mib(memory_mib: u64) -> u64 {
    (memory_mib / 16).max(MIN_MARGIN_MIB)
}

/// The memory the VMM's default delta cache takes during a migration with `delta` or `auto`
/// compression (half the guest RAM; `vmm/API.md`), which the agent adds to the VM's memory
/// limit before such a migration.
pub fn delta_cache_bytes(memory_mib: u64) -> u64 {
    memory_mib.saturating_mul(1 << 20) / 2
}

/// Checks a `--cpu-overcommit` value.
pub fn check_overcommit(f: f64) -> Result<f64, CgroupError> {
    if f.is_finite() && f > 0.0 {
        Ok(f)
    } else {
        Err(CgroupError::BadOvercommit(f))
    }
}

impl Limits {
    /// The limits of a VM with `vcpus` vCPUs and `memory_mib` of guest RAM on a host whose CPUs
    /// are overcommitted by `cpu_overcommit` (1.0: each vCPU may use a whole CPU; F: 1/F of
    /// one; never below [`MIN_MILLICPUS`] for the VM). Memory: guest RAM +
    /// [`VMM_OVERHEAD_MIB`] + [`margin_mib`]. Tasks: [`BASE_PIDS`] + 4 per vCPU.
    pub fn for_vm(vcpus: u32, memory_mib: u64, cpu_overcommit: f64) -> Limits {
        let f = if cpu_overcommit.is_finite() && cpu_overcommit > 0.0 {
            cpu_overcommit
        } else {
            1.0
        };
        let cpus = f64::from(vcpus.max(1)) / f;
        let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
        let min_quota = CPU_PERIOD_US * MIN_MILLICPUS / 1000;
        let mib = memory_mib + VMM_OVERHEAD_MIB + margin_mib(memory_mib);
        Limits {
            cpu_quota_us: quota.max(min_quota),
            cpu_period_us: CPU_PERIOD_US,
            memory_bytes: mib << 20,
            pids: BASE_PIDS + 4 * u64::from(vcpus),
            io_weight: DEFAULT_IO_WEIGHT,
        }
    }

    /// The CPU quota in thousandths of a CPU.
    pub fn millicpus(&self) -> u64 {
        self.cpu_quota_us * 1000 / self.cpu_period_us.max(1)
    }
}

/// Which cgroup interface a [`VmCgroup`] uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The v1 controller hierarchies (one directory per controller).
    V1,
    /// The unified hierarchy (one directory).
    V2,
}

/// A VM's cgroup: its directories per controller (all the same directory in v2). Recorded in
/// `launch.json` so the supervisor can move the VMM into it and a restarted agent finds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmCgroup {
    /// Interface.
    pub version: Version,
    /// Directory of the `cpu` controller.
    pub cpu: PathBuf,
    /// Directory of CPU accounting (`cpuacct` in v1).
    pub cpuacct: PathBuf,
    /// Directory of the `memory` controller.
    pub memory: PathBuf,
    /// Directory of the `pids` controller.
    pub pids: PathBuf,
    /// Directory of the I/O controller, if it has a weight.
    #[serde(default)]
    pub io: Option<PathBuf>,
    /// The memory limit written at creation (bytes).
    pub memory_limit_bytes: u64,
}

/// What a VM's cgroup reports (zero where a file is missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory charged to the cgroup (bytes; includes page cache and kernel memory).
    pub memory_bytes: u64,
    /// Its memory limit (bytes; 0: none).
    pub memory_limit_bytes: u64,
    /// CPU time used by its tasks (ms).
    pub cpu_usage_ms: u64,
    /// CPU quota (thousandths of a CPU; 0: none).
    pub cpu_quota_millicpus: u64,
    /// Tasks in it.
    pub pids: u64,
    /// Processes of it the kernel's OOM killer killed.
    pub oom_kills: u64,
}

/// A VMM killed by the kernel's OOM killer inside its cgroup, as the supervisor recorded it
/// in `exit.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OomKill {
    /// The memory limit in force (bytes).
    pub limit_bytes: u64,
    /// The memory cgroup's directory.
    pub cgroup: String,
}

impl OomKill {
    /// The crash reason users see.
    pub fn message(&self) -> String {
        format!(
            "killed by the kernel OOM killer: the VM's memory limit of {} MiB (cgroup {}) was \
             reached",
            self.limit_bytes >> 20,
            self.cgroup
        )
    }
}

fn read_string(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let s = read_string(path)?;
    s.trim().parse().map_err(|_| CgroupError::Format {
        path: path.display().to_string(),
        content: s.trim().to_string(),
    })
}

/// The value of `key` in a flat keyed file (`key value` lines: cpu.stat, memory.events,
/// memory.oom_control).
fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let s = read_string(path)?;
    s.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| CgroupError::Format {
            path: path.display().to_string(),
            content: format!("no {key} in {:?}", s.trim()),
        })
}

/// Writes `value` to an existing cgroup file (never creates one).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(value.as_bytes()).map_err(io_err(path))
}

/// v1 reports "no limit" as a huge number (the largest page-aligned i64).
const V1_UNLIMITED: u64 = 1 << 62;

impl VmCgroup {
    /// The distinct directories, in a fixed order (cpu, cpuacct, memory, pids, io).
    pub fn dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        let all = [&self.cpu, &self.cpuacct, &self.memory, &self.pids]
            .into_iter()
            .chain(self.io.as_ref());
        for d in all {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }

    /// The `cgroup.procs` files a process writes "0" to in order to enter the cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The OOM kill counter (`memory.events` `oom_kill` in v2, `memory.oom_control`
    /// `oom_kill` in v1), if readable.
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 => ("memory.oom_control", "oom_kill"),
        };
        read_keyed(&self.memory.join(file), key).ok()
    }

    /// The memory limit in force (bytes; 0: none).
    pub fn memory_limit(&self) -> Option<u64> {
        match self.version {
            Version::V2 => {
                let p = self.memory.join("memory.max");
                let s = read_string(&p).ok()?;
                match s.trim() {
                    "max" => Some(0),
                    v => v.parse().ok(),
                }
            }
            Version::V1 => {
                let v = read_u64(&self.memory.join("memory.limit_in_bytes")).ok()?;
                Some(if v >= V1_UNLIMITED { 0 } else { v })
            }
        }
    }

    /// The usage counters (each zero when its file cannot be read).
    pub fn usage(&self) -> Usage {
        let or0 = |r: Result<u64, CgroupError>| r.unwrap_or(0);
        let quota = self.cpu_quota_millicpus().unwrap_or(0);
        match self.version {
            Version::V2 => Usage {
                memory_bytes: or0(read_u64(&self.memory.join("memory.current"))),
                memory_limit_bytes: self.memory_limit().unwrap_or(0),
                cpu_usage_ms: or0(read_keyed(&self.cpu.join("cpu.stat"), "usage_usec")) / 1000,
                cpu_quota_millicpus: quota,
                pids: or0(read_u64(&self.pids.join("pids.current"))),
                oom_kills: self.oom_kills().unwrap_or(0),
            },
            Version::V1 => Usage {
                memory_bytes: or0(read_u64(&self.memory.join("memory.usage_in_bytes"))),
                memory_limit_bytes: self.memory_limit().unwrap_or(0),
                cpu_usage_ms: or0(read_u64(&self.cpuacct.join("cpuacct.usage"))) / 1_000_000,
                cpu_quota_millicpus: quota,
                pids: or0(read_u64(&self.pids.join("pids.current"))),
                oom_kills: self.oom_kills().unwrap_or(0),
            },
        }
    }

    fn cpu_quota_millicpus(&self) -> Option<u64> {
        match self.version {
            Version::V2 => {
                let s = read_string(&self.cpu.join("cpu.max")).ok()?;
                let mut it = s.split_whitespace();
                let quota = it.next()?;
                let period: u64 = it.next()?.parse().ok()?;
                match quota {
                    "max" => Some(0),
                    q => Some(q.parse::<u64>().ok()? * 1000 / period.max(1)),
                }
            }
            Version::V1 => {
                let s = read_string(&self.cpu.join("cpu.cfs_quota_us")).ok()?;
                let quota: i64 = s.trim().parse().ok()?;
                let period = read_u64(&self.cpu.join("cpu.cfs_period_us")).ok()?;
                Some(if quota < 0 {
                    0
                } else {
                    quota as u64 * 1000 / period.max(1)
                })
            }
        }
    }

    /// Sets the memory limit (e.g. raised for a migration's delta cache).
    pub fn set_memory_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        write_memory_limit(self.version, &self.memory, bytes)
    }

    /// Removes the VM's directories (one attempt each; a missing one counts as removed), then
    /// the agent's and the top directory if they are empty. Fails with the first directory
    /// that stays (busy while a process is still in it).
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first = None;
        for d in self.dirs() {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if first.is_none() {
                        first = Some(io_err(d)(e));
                    }
                    continue;
                }
            }
            // Best effort: the agent's directory, then the top one, when nothing else is in
            // them (another VM or agent keeps them busy).
            let mut up = d.parent();
            for _ in 0..2 {
                match up {
                    Some(p) if std::fs::remove_dir(p).is_ok() => up = p.parent(),
                    _ => break,
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Writes the memory limit (and the no-swap limit) of the memory cgroup `dir`.
fn write_memory_limit(version: Version, dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    match version {
        Version::V2 => {
            write_file(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_file(&swap, "0")?;
            }
            Ok(())
        }
        Version::V1 => {
            // memory.limit_in_bytes <= memory.memsw.limit_in_bytes must hold after every
            // write: raise memsw first, lower it last.
            let limit = dir.join("memory.limit_in_bytes");
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let value = bytes.to_string();
            if !memsw.exists() {
                return write_file(&limit, &value);
            }
            let current = read_u64(&limit).unwrap_or(u64::MAX);
            if bytes > current {
                write_file(&memsw, &value)?;
                write_file(&limit, &value)
            } else {
                write_file(&limit, &value)?;
                write_file(&memsw, &value)
            }
        }
    }
}

/// Where the VMs' cgroups go on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// `--no-cgroups`.
    Disabled,
    /// Detection failed: every VM start fails with this reason.
    Unavailable(String),
    /// Unified hierarchy: `levels` are the directories from the mount's root down to the
    /// agent's directory, each of which must distribute the controllers to the next.
    V2 { levels: Vec<PathBuf> },
    /// v1 hierarchies: the agent's directory in each.
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
        blkio: Option<PathBuf>,
    },
}

/// The host's cgroup setup, detected at agent start, and the CPU overcommit the limits use.
/// [`HostCgroups::create`] makes a VM's cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCgroups {
    mode: Mode,
    cpu_overcommit: f64,
}

/// One line of /proc/self/mountinfo for a cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// The hierarchy's directory that is mounted (`/` unless in a cgroup namespace).
    root: String,
    mount_point: PathBuf,
    /// v2, or v1 with these controllers.
    v2: bool,
    controllers: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\')
            .then(|| s.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mp), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
            continue;
        };
        let v2 = *fstype == "cgroup2";
        if !v2 && *fstype != "cgroup" {
            continue;
        }
        let controllers = if v2 {
            Vec::new()
        } else {
            r.get(2)
                .map(|o| {
                    o.split(',')
                        .filter(|c| !matches!(*c, "rw" | "ro") && !c.contains('='))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        out.push(CgroupMount {
            root: unescape(root),
            mount_point: PathBuf::from(unescape(mp)),
            v2,
            controllers,
        });
    }
    out
}

/// /proc/self/cgroup: controller (or "" for v2) to the process's cgroup path.
fn parse_self_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// The v1 blkio weight files, by preference (CFQ's, then BFQ's).
const V1_WEIGHT_FILES: [&str; 2] = ["blkio.weight", "blkio.bfq.weight"];

/// The controllers the VM cgroups need.
const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

/// Decides where cgroups go from the mount table, the agent's own cgroups and a reader of
/// `cgroup.controllers` files (pure but for that reader).
fn choose(
    mountinfo: &str,
    self_cgroup: &str,
    agent_id: &str,
    controllers_of: &dyn Fn(&Path) -> Option<String>,
) -> Mode {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_self_cgroup(self_cgroup);
    let mut why = Vec::new();
    if let Some(m) = mounts.iter().find(|m| m.v2) {
        let offered = controllers_of(&m.mount_point.join("cgroup.controllers"));
        let offered = offered.unwrap_or_default();
        let have: Vec<&str> = offered.split_whitespace().collect();
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| !have.contains(c))
            .collect();
        if missing.is_empty() {
            let top = m.mount_point.join(TOP_DIR);
            return Mode::V2 {
                levels: vec![m.mount_point.clone(), top.clone(), top.join(agent_id)],
            };
        }
        why.push(format!(
            "the cgroup2 hierarchy at {} lacks {} (offers: {:?})",
            m.mount_point.display(),
            missing.join(", "),
            offered.trim()
        ));
    }
    // v1: the agent's own cgroup in the hierarchy of `c`, below the mount point.
    let dir_of = |c: &str| -> Option<PathBuf> {
        let m = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|x| x == c))?;
        let path = own.get(c).map(String::as_str).unwrap_or("/");
        let rel = if m.root != "/" {
            path.strip_prefix(m.root.as_str()).unwrap_or(path)
        } else {
            path
        };
        let rel = rel.trim_start_matches('/');
        let mut d = m.mount_point.clone();
        if !rel.is_empty() {
            d.push(rel);
        }
        Some(d.join(TOP_DIR).join(agent_id))
    };
    let v1: Vec<Option<PathBuf>> = ["cpu", "cpuacct", "memory", "pids"]
        .iter()
        .map(|c| dir_of(c))
        .collect();
    if let [Some(cpu), Some(cpuacct), Some(memory), Some(pids)] = v1.as_slice() {
        // blkio only with a proportional scheduler's weight file (they exist in the root
        // cgroup too): without one there is nothing to write, and no directory is made.
        let weighted = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|x| x == "blkio"))
            .is_some_and(|m| {
                V1_WEIGHT_FILES
                    .iter()
                    .any(|f| controllers_of(&m.mount_point.join(f)).is_some())
            });
        return Mode::V1 {
            cpu: cpu.clone(),
            cpuacct: cpuacct.clone(),
            memory: memory.clone(),
            pids: pids.clone(),
            blkio: dir_of("blkio").filter(|_| weighted),
        };
    }
    let missing: Vec<&str> = ["cpu", "cpuacct", "memory", "pids"]
        .iter()
        .zip(&v1)
        .filter(|(_, d)| d.is_none())
        .map(|(c, _)| *c)
        .collect();
    why.push(format!("no cgroup v1 hierarchy for {}", missing.join(", ")));
    Mode::Unavailable(why.join("; "))
}

impl HostCgroups {
    /// Detects the host's cgroups from /proc/self/mountinfo and /proc/self/cgroup. A host
    /// without usable cgroups gives a setup whose every [`HostCgroups::create`] fails with the
    /// reason.
    pub fn detect(agent_id: &str, cpu_overcommit: f64) -> HostCgroups {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
        let mode = match (read("/proc/self/mountinfo"), read("/proc/self/cgroup")) {
            (Ok(mi), Ok(cg)) => choose(&mi, &cg, agent_id, &|p: &Path| {
                std::fs::read_to_string(p).ok()
            }),
            (Err(e), _) | (_, Err(e)) => Mode::Unavailable(e),
        };
        if let Mode::V1 { blkio: None, .. } = &mode {
            tracing::warn!(
                "no cgroup v1 blkio hierarchy with {} (no proportional I/O scheduler): VMs get \
                 no I/O weight",
                V1_WEIGHT_FILES.join(" or ")
            );
        }
        HostCgroups {
            mode,
            cpu_overcommit,
        }
    }

    /// No cgroups (`--no-cgroups`): VMs run without resource limits.
    pub fn disabled() -> HostCgroups {
        HostCgroups {
            mode: Mode::Disabled,
            cpu_overcommit: 1.0,
        }
    }

    /// Cgroups of version `version` below `root` (as if it were the hierarchy's mount point,
    /// holding one directory per controller for v1): for tests against a fake tree.
    pub fn under(root: &Path, version: Version, agent_id: &str, cpu_overcommit: f64) -> Self {
        let mode = match version {
            Version::V2 => {
                let top = root.join(TOP_DIR);
                Mode::V2 {
                    levels: vec![root.to_path_buf(), top.clone(), top.join(agent_id)],
                }
            }
            Version::V1 => {
                let d = |c: &str| root.join(c).join(TOP_DIR).join(agent_id);
                Mode::V1 {
                    cpu: d("cpu"),
                    cpuacct: d("cpuacct"),
                    memory: d("memory"),
                    pids: d("pids"),
                    blkio: Some(d("blkio")),
                }
            }
        };
        HostCgroups {
            mode,
            cpu_overcommit,
        }
    }

    /// Whether VMs get cgroups at all (false with `--no-cgroups`).
    pub fn enabled(&self) -> bool {
        self.mode != Mode::Disabled
    }

    /// Why cgroups cannot be used, when detection found none.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.mode {
            Mode::Unavailable(why) => Some(why),
            _ => None,
        }
    }

    /// The CPU overcommit the limits use.
    pub fn cpu_overcommit(&self) -> f64 {
        self.cpu_overcommit
    }

    /// One line for the agent's start log.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Disabled => "cgroups disabled (--no-cgroups): VMs run without limits".into(),
            Mode::Unavailable(why) => format!("cgroups unavailable: {why}"),
            Mode::V2 { levels } => format!(
                "cgroup v2: VM cgroups in {} (cpu overcommit {})",
                levels
                    .last()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                self.cpu_overcommit
            ),
            Mode::V1 { cpu, memory, .. } => format!(
                "cgroup v1: VM cgroups in {}, {}, ... (cpu overcommit {})",
                cpu.display(),
                memory.display(),
                self.cpu_overcommit
            ),
        }
    }

    /// The limits of a VM with `vcpus` and `memory_mib` on this host.
    pub fn limits(&self, vcpus: u32, memory_mib: u64) -> Limits {
        Limits::for_vm(vcpus, memory_mib, self.cpu_overcommit)
    }

    /// Creates (or reuses) the cgroup of VM `vm_id` and writes `limits` into it. `None` with
    /// `--no-cgroups`. Fails naming the file and the OS error when a directory cannot be made,
    /// a controller is missing or a limit cannot be written.
    pub fn create(&self, vm_id: &str, limits: &Limits) -> Result<Option<VmCgroup>, CgroupError> {
        if vm_id.is_empty() || vm_id.contains('/') || vm_id.starts_with('.') {
            return Err(CgroupError::BadId(vm_id.to_string()));
        }
        // A concurrent removal of the last VM's cgroup may take the parents away between
        // creating them and the VM's directory: try again.
        let mut attempt = 0;
        loop {
            match self.create_once(vm_id, limits) {
                Err(CgroupError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 3 =>
                {
                    attempt += 1;
                }
                Err(e) => {
                    // Leave no half-made cgroup behind (best effort: the next start of this
                    // VM would reuse it anyway).
                    for d in self.leaf_dirs(vm_id) {
                        let _ = std::fs::remove_dir(d);
                    }
                    return Err(e);
                }
                r => return r,
            }
        }
    }

    /// The directories a VM's cgroup has or would have.
    fn leaf_dirs(&self, vm_id: &str) -> Vec<PathBuf> {
        match &self.mode {
            Mode::Disabled | Mode::Unavailable(_) => Vec::new(),
            Mode::V2 { levels } => levels.last().map(|d| d.join(vm_id)).into_iter().collect(),
            Mode::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
                blkio,
            } => [cpu, cpuacct, memory, pids]
                .into_iter()
                .chain(blkio.as_ref())
                .map(|d| d.join(vm_id))
                .collect(),
        }
    }

    fn create_once(&self, vm_id: &str, l: &Limits) -> Result<Option<VmCgroup>, CgroupError> {
        match &self.mode {
            Mode::Disabled => Ok(None),
            Mode::Unavailable(why) => Err(CgroupError::Unavailable(why.clone())),
            Mode::V2 { levels } => {
                let mut io = true;
                for (i, dir) in levels.iter().enumerate() {
                    if i > 0 {
                        mkdir(dir)?;
                    }
                    io &= enable_controllers(dir)?;
                }
                let agent_dir = levels.last().ok_or_else(|| {
                    CgroupError::Unavailable("no cgroup v2 directory configured".into())
                })?;
                let dir = agent_dir.join(vm_id);
                mkdir(&dir)?;
                write_file(
                    &dir.join("cpu.max"),
                    &format!("{} {}", l.cpu_quota_us, l.cpu_period_us),
                )?;
                write_memory_limit(Version::V2, &dir, l.memory_bytes)?;
                write_file(&dir.join("pids.max"), &l.pids.to_string())?;
                let io_dir = if io {
                    write_weight(
                        &dir,
                        &["io.weight", "io.bfq.weight"],
                        &format!("default {}", l.io_weight),
                    )?
                } else {
                    tracing::warn!(
                        "cgroup {}: the io controller is not available; no I/O weight",
                        dir.display()
                    );
                    None
                };
                Ok(Some(VmCgroup {
                    version: Version::V2,
                    cpu: dir.clone(),
                    cpuacct: dir.clone(),
                    memory: dir.clone(),
                    pids: dir.clone(),
                    io: io_dir,
                    memory_limit_bytes: l.memory_bytes,
                }))
            }
            Mode::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
                blkio,
            } => {
                let [cpu, cpuacct, memory, pids] =
                    [cpu, cpuacct, memory, pids].map(|d| d.join(vm_id));
                for d in [&cpu, &cpuacct, &memory, &pids] {
                    mkdir_all(d)?;
                }
                // The period first: the quota is checked against it.
                write_file(&cpu.join("cpu.cfs_period_us"), &l.cpu_period_us.to_string())?;
                write_file(&cpu.join("cpu.cfs_quota_us"), &l.cpu_quota_us.to_string())?;
                write_memory_limit(Version::V1, &memory, l.memory_bytes)?;
                write_file(&pids.join("pids.max"), &l.pids.to_string())?;
                let io = match blkio {
                    Some(b) => {
                        let d = b.join(vm_id);
                        mkdir_all(&d)?;
                        let w = write_weight(&d, &V1_WEIGHT_FILES, &l.io_weight.to_string())?;
                        if w.is_none() {
                            // Nothing to keep it for.
                            let _ = std::fs::remove_dir(&d);
                        }
                        w
                    }
                    // Warned about at start.
                    None => None,
                };
                Ok(Some(VmCgroup {
                    version: Version::V1,
                    cpu,
                    cpuacct,
                    memory,
                    pids,
                    io,
                    memory_limit_bytes: l.memory_bytes,
                }))
            }
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Writes the first of `files` that exists in `dir`; `None` (with a warning) if none does.
fn write_weight(dir: &Path, files: &[&str], value: &str) -> Result<Option<PathBuf>, CgroupError> {
    for f in files {
        let p = dir.join(f);
        if p.exists() {
            write_file(&p, value)?;
            return Ok(Some(dir.to_path_buf()));
        }
    }
    tracing::warn!(
        "cgroup {}: none of {} exists (no proportional I/O scheduler); no I/O weight",
        dir.display(),
        files.join(", ")
    );
    Ok(None)
}

/// Makes the v2 cgroup `dir` distribute the controllers VMs need to its children. Returns
/// whether `io` is distributed too (it is optional).
fn enable_controllers(dir: &Path) -> Result<bool, CgroupError> {
    let cpath = dir.join("cgroup.controllers");
    let offered = read_string(&cpath)?;
    let have: Vec<&str> = offered.split_whitespace().collect();
    for c in REQUIRED {
        if !have.contains(&c) {
            return Err(CgroupError::MissingController {
                controller: c,
                path: cpath.display().to_string(),
                offered: offered.trim().to_string(),
            });
        }
    }
    let io = have.contains(&"io");
    let spath = dir.join("cgroup.subtree_control");
    let enabled = read_string(&spath)?;
    let on: Vec<&str> = enabled.split_whitespace().collect();
    let want: Vec<String> = REQUIRED
        .iter()
        .copied()
        .chain(io.then_some("io"))
        .filter(|c| !on.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if !want.is_empty() {
        write_file(&spath, &want.join(" "))?;
    }
    Ok(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nc-cg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (f, v) in files {
            std::fs::write(dir.join(f), v).unwrap();
        }
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    }

    #[test]
    fn limits() {
        let l = Limits::for_vm(2, 1024, 1.0);
        assert_eq!((l.cpu_quota_us, l.cpu_period_us), (200_000, 100_000));
        assert_eq!(l.millicpus(), 2000);
        assert_eq!(l.memory_bytes, (1024 + VMM_OVERHEAD_MIB + 64) << 20);
        assert_eq!(l.pids, 72);
        assert_eq!(l.io_weight, 100);
        // Overcommit: vcpus / F CPUs, never below 0.1 CPU.
        assert_eq!(Limits::for_vm(1, 128, 5.0).millicpus(), 200);
        assert_eq!(Limits::for_vm(4, 128, 2.0).cpu_quota_us, 200_000);
        assert_eq!(Limits::for_vm(1, 128, 100.0).cpu_quota_us, 10_000);
        assert_eq!(Limits::for_vm(1, 128, 0.5).millicpus(), 2000);
        // Small VMs get the minimum margin.
        assert_eq!(
            Limits::for_vm(1, 128, 1.0).memory_bytes,
            (128 + VMM_OVERHEAD_MIB + MIN_MARGIN_MIB) << 20
        );
        assert!(check_overcommit(0.0).is_err());
        assert!(check_overcommit(f64::NAN).is_err());
        assert_eq!(check_overcommit(4.0).unwrap(), 4.0);
        assert_eq!(delta_cache_bytes(128), 64 << 20);
    }

    #[test]
    fn detects_hybrid_and_unified_hosts() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let own = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n4:memory:/sess/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let ctl = |p: &Path| match p.to_str() {
            Some("/sys/fs/cgroup/unified/cgroup.controllers") => Some("hugetlb\n".to_string()),
            Some("/sys/fs/cgroup/blkio/blkio.bfq.weight") => Some("default 100\n".to_string()),
            _ => None,
        };
        let m = choose(hybrid, own, "A", &ctl);
        assert_eq!(
            m,
            Mode::V1 {
                cpu: "/sys/fs/cgroup/cpu/novacron/A".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct/novacron/A".into(),
                memory: "/sys/fs/cgroup/memory/sess/abc/novacron/A".into(),
                pids: "/sys/fs/cgroup/pids/novacron/A".into(),
                blkio: Some("/sys/fs/cgroup/blkio/novacron/A".into()),
            }
        );
        // Without a weight file (no proportional I/O scheduler, as on this CI host) no blkio
        // directory is made.
        match choose(hybrid, own, "A", &|_: &Path| None) {
            Mode::V1 { blkio, .. } => assert_eq!(blkio, None),
            other => panic!("{other:?}"),
        }
        // Co-mounted cpu,cpuacct share one directory.
        let comounted =
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        match choose(comounted, "3:cpu,cpuacct:/x\n", "A", &|_: &Path| None) {
            Mode::V1 {
                cpu,
                cpuacct,
                blkio,
                ..
            } => {
                assert_eq!(cpu, cpuacct);
                assert_eq!(
                    cpu,
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x/novacron/A")
                );
                assert_eq!(blkio, None);
            }
            other => panic!("{other:?}"),
        }
        // Pure v2.
        let unified = "25 20 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let ctl2 = |_: &Path| Some("cpuset cpu io memory hugetlb pids rdma misc\n".to_string());
        assert_eq!(
            choose(
                unified,
                "0::/system.slice/novacron-agent.service\n",
                "A",
                &ctl2
            ),
            Mode::V2 {
                levels: vec![
                    "/sys/fs/cgroup".into(),
                    "/sys/fs/cgroup/novacron".into(),
                    "/sys/fs/cgroup/novacron/A".into()
                ]
            }
        );
        // Neither: the reason names both.
        match choose(unified, "0::/\n", "A", &|_: &Path| Some("cpu\n".into())) {
            Mode::Unavailable(why) => {
                assert!(why.contains("lacks memory, pids"), "{why}");
                assert!(why.contains("no cgroup v1 hierarchy for cpu"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    #[test]
    fn v2_files() {
        let root = tmp("v2");
        let all = "cpu io memory pids";
        touch(
            &root,
            &[
                ("cgroup.controllers", all),
                ("cgroup.subtree_control", "memory"),
            ],
        );
        let top = root.join("novacron");
        touch(
            &top,
            &[("cgroup.controllers", all), ("cgroup.subtree_control", "")],
        );
        let agent = top.join("A");
        touch(
            &agent,
            &[("cgroup.controllers", all), ("cgroup.subtree_control", "")],
        );
        let vm = agent.join("vm1");
        let files = [
            "cgroup.procs",
            "cpu.max",
            "memory.max",
            "memory.swap.max",
            "pids.max",
            "io.weight",
        ];
        touch(&vm, &files.map(|f| (f, "")));
        let host = HostCgroups::under(&root, Version::V2, "A", 5.0);
        let l = host.limits(1, 128);
        let cg = host.create("vm1", &l).unwrap().unwrap();
        assert_eq!(read(root.join("cgroup.subtree_control")), "+cpu +pids +io");
        assert_eq!(
            read(top.join("cgroup.subtree_control")),
            "+cpu +memory +pids +io"
        );
        assert_eq!(read(vm.join("cpu.max")), "20000 100000");
        assert_eq!(read(vm.join("memory.max")), l.memory_bytes.to_string());
        assert_eq!(read(vm.join("memory.swap.max")), "0");
        assert_eq!(read(vm.join("pids.max")), "68");
        assert_eq!(read(vm.join("io.weight")), "default 100");
        assert_eq!(cg.dirs(), vec![vm.as_path()]);
        assert_eq!(cg.procs_files(), vec![vm.join("cgroup.procs")]);
        // Usage as the kernel formats it.
        touch(
            &vm,
            &[
                ("memory.current", "123456\n"),
                (
                    "cpu.stat",
                    "usage_usec 2500000\nuser_usec 1\nsystem_usec 2\n",
                ),
                ("pids.current", "5\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ],
        );
        let u = cg.usage();
        assert_eq!(
            u,
            Usage {
                memory_bytes: 123456,
                memory_limit_bytes: l.memory_bytes,
                cpu_usage_ms: 2500,
                cpu_quota_millicpus: 200,
                pids: 5,
                oom_kills: 1,
            }
        );
        std::fs::write(vm.join("memory.max"), "max\n").unwrap();
        assert_eq!(cg.memory_limit(), Some(0));
        // The record round-trips through launch.json.
        let j = serde_json::to_string(&cg).unwrap();
        assert_eq!(serde_json::from_str::<VmCgroup>(&j).unwrap(), cg);
        // A missing controller fails naming the file.
        std::fs::write(agent.join("cgroup.controllers"), "cpu memory").unwrap();
        let e = host.create("vm1", &l).unwrap_err().to_string();
        assert!(
            e.contains("pids") && e.contains("cgroup.controllers"),
            "{e}"
        );
        // A missing limit file fails naming it (as on a kernel without the controller).
        std::fs::write(agent.join("cgroup.controllers"), all).unwrap();
        std::fs::remove_file(vm.join("pids.max")).unwrap();
        let e = host.create("vm1", &l).unwrap_err().to_string();
        assert!(e.contains("pids.max"), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn v1_files() {
        let root = tmp("v1");
        let host = HostCgroups::under(&root, Version::V1, "A", 1.0);
        let d = |c: &str| root.join(c).join("novacron/A/vm1");
        touch(
            &d("cpu"),
            &[("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")],
        );
        touch(&d("cpuacct"), &[("cpuacct.usage", "1500000000\n")]);
        touch(
            &d("memory"),
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "4096\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
            ],
        );
        touch(&d("pids"), &[("pids.max", "max"), ("pids.current", "4\n")]);
        touch(&d("blkio"), &[("blkio.bfq.weight", "")]);
        let l = host.limits(2, 2048);
        let cg = host.create("vm1", &l).unwrap().unwrap();
        assert_eq!(read(d("cpu").join("cpu.cfs_quota_us")), "200000");
        assert_eq!(read(d("cpu").join("cpu.cfs_period_us")), "100000");
        let mem = l.memory_bytes.to_string();
        assert_eq!(read(d("memory").join("memory.limit_in_bytes")), mem);
        assert_eq!(read(d("memory").join("memory.memsw.limit_in_bytes")), mem);
        assert_eq!(read(d("pids").join("pids.max")), "72");
        assert_eq!(read(d("blkio").join("blkio.bfq.weight")), "100");
        assert_eq!(cg.io, Some(d("blkio")));
        assert_eq!(cg.dirs().len(), 5);
        let u = cg.usage();
        assert_eq!(
            (
                u.memory_bytes,
                u.memory_limit_bytes,
                u.cpu_usage_ms,
                u.cpu_quota_millicpus
            ),
            (4096, l.memory_bytes, 1500, 2000)
        );
        assert_eq!((u.pids, u.oom_kills, cg.oom_kills()), (4, 2, Some(2)));
        // Lowering and raising keep limit <= memsw (the fake tree cannot check it; the order
        // is the one the kernel needs).
        cg.set_memory_limit(1 << 30).unwrap();
        assert_eq!(
            read(d("memory").join("memory.memsw.limit_in_bytes")),
            (1u64 << 30).to_string()
        );
        // Without a weight file, blkio is skipped (not an error).
        std::fs::remove_file(d("blkio").join("blkio.bfq.weight")).unwrap();
        let cg = host.create("vm1", &l).unwrap().unwrap();
        assert_eq!(cg.io, None);
        // Removal: the fake directories hold files, so they stay and the error names one.
        assert!(cg
            .remove()
            .unwrap_err()
            .to_string()
            .contains("novacron/A/vm1"));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn removal_prunes_empty_parents() {
        let root = tmp("rm");
        let cg = VmCgroup {
            version: Version::V2,
            cpu: root.join("novacron/A/vm1"),
            cpuacct: root.join("novacron/A/vm1"),
            memory: root.join("novacron/A/vm1"),
            pids: root.join("novacron/A/vm1"),
            io: None,
            memory_limit_bytes: 1,
        };
        std::fs::create_dir_all(root.join("novacron/A/vm1")).unwrap();
        std::fs::create_dir_all(root.join("novacron/B")).unwrap();
        cg.remove().unwrap();
        assert!(!root.join("novacron/A").exists());
        // Another agent's directory keeps the top one.
        assert!(root.join("novacron/B").exists());
        // Gone already: fine.
        cg.remove().unwrap();
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn oom_message() {
        let o = OomKill {
            limit_bytes: 200 << 20,
            cgroup: "/sys/fs/cgroup/novacron/A/vm1".into(),
        };
        assert_eq!(
            o.message(),
            "killed by the kernel OOM killer: the VM's memory limit of 200 MiB (cgroup \
             /sys/fs/cgroup/novacron/A/vm1) was reached"
        );
    }
}
