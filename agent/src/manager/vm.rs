//! A VM as the agent knows it: its record ([`VmData`]: configuration, persisted metadata,
//! state refreshed from the supervision files and /proc, the status the API reports) and its
//! locks ([`VmHandle`]).

use std::path::PathBuf;
use std::sync::Arc;

use novacron_proto::agent as apb;
use novacron_vmm_api::protocol::Lifecycle;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use crate::cgroup::VmCgroup;
use crate::procfs;
use crate::supervise::{self, now_ms, ExitRecord};
use crate::vmm_client::Info;

/// Role of a VM on this host.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created here or migrated in and running.
    #[default]
    Normal,
    /// Destination of a migration not yet completed.
    Incoming,
}

/// Per-VM metadata persisted in `meta.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// API socket path.
    pub socket: PathBuf,
    /// Role.
    pub role: Role,
    /// Migration id when incoming.
    #[serde(default)]
    pub migration_id: String,
    /// Address the incoming VMM listens on.
    #[serde(default)]
    pub incoming_addr: String,
    /// Creation time.
    pub created_at_ms: i64,
    /// Whether it was ever started.
    pub ever_started: bool,
}

/// What the agent knows about one VM.
#[derive(Debug, Clone)]
pub struct VmData {
    /// Configuration from the controller.
    pub config: apb::VmConfig,
    /// Directory.
    pub dir: PathBuf,
    /// Metadata.
    pub meta: Meta,
    /// Current state.
    pub state: apb::VmState,
    /// VMM pid while running.
    pub pid: i32,
    /// Start of the current VMM.
    pub started_at_ms: i64,
    /// Last exit.
    pub exit: Option<ExitRecord>,
    /// Last `info` answer.
    pub info: Option<Info>,
    /// Re-adopted after an agent restart.
    pub adopted: bool,
    /// Migration in progress or last ended.
    pub migration: Option<apb::MigrationProgress>,
    /// Last message for users.
    pub message: String,
    /// While starting: until when a missing pid file means "starting".
    pub starting_until_ms: i64,
    /// The VMM last reported itself in doubt (final frame sent, no confirmation seen).
    pub in_doubt: bool,
    /// Its cgroup (from its last launch), if it has one.
    pub cgroup: Option<VmCgroup>,
}

/// Status message of a VMM gone without an exit record (so far).
const VANISHED: &str = "vmm vanished without an exit record (supervisor killed?)";

impl VmData {
    /// A VM that exists on disk but has not run yet.
    pub(super) fn created(config: apb::VmConfig, dir: PathBuf, meta: Meta) -> Self {
        VmData {
            config,
            dir,
            meta,
            state: apb::VmState::Created,
            pid: 0,
            started_at_ms: 0,
            exit: None,
            info: None,
            adopted: false,
            migration: None,
            message: String::new(),
            starting_until_ms: 0,
            in_doubt: false,
            cgroup: None,
        }
    }

    pub(super) fn running(&self) -> bool {
        matches!(
            self.state,
            apb::VmState::Running
                | apb::VmState::Paused
                | apb::VmState::Incoming
                | apb::VmState::Migrating
                | apb::VmState::Starting
                | apb::VmState::Indoubt
        )
    }

    /// Re-reads the supervision files and /proc.
    pub fn refresh(&mut self) {
        let now = now_ms();
        if let Some(p) = supervise::read_pid(&self.dir) {
            if procfs::alive_with_arg(p.pid, &self.meta.socket) {
                self.pid = p.pid;
                self.started_at_ms = p.started_at_ms;
                self.state = match self.info.as_ref().map(|i| i.state) {
                    _ if self.in_doubt => apb::VmState::Indoubt,
                    Some(Lifecycle::Paused) => apb::VmState::Paused,
                    Some(Lifecycle::Incoming) => apb::VmState::Incoming,
                    Some(Lifecycle::Migrating) => apb::VmState::Migrating,
                    Some(Lifecycle::InDoubt) => apb::VmState::Indoubt,
                    Some(Lifecycle::Running) => apb::VmState::Running,
                    None if self.meta.role == Role::Incoming => apb::VmState::Incoming,
                    None if now < self.starting_until_ms => apb::VmState::Starting,
                    None => apb::VmState::Running,
                };
                return;
            }
        }
        // Not running (any more).
        let exit = supervise::read_exit(&self.dir);
        if exit.is_none() && now < self.starting_until_ms {
            self.state = apb::VmState::Starting;
            return;
        }
        if exit.is_none()
            && self.running()
            && supervise::read_supervisor_pid(&self.dir)
                .is_some_and(|sup| procfs::alive_with_arg(sup, &self.dir))
        {
            // The VMM just ended and its supervisor is still at work: it reaps it, then
            // writes the exit record (after reading the cgroup's OOM counter) or restarts it
            // after a guest reset. Until then the state stands; "vanished" is only for a VMM
            // whose supervisor is gone too.
            return;
        }
        self.pid = 0;
        self.info = None;
        self.in_doubt = false;
        let stop_requested = self.dir.join("stop-requested").exists();
        self.exit = exit;
        if self.exit.is_some() && self.message == VANISHED {
            // The supervisor was only late writing the exit record.
            self.message.clear();
        }
        self.state = match &self.exit {
            Some(e) if e.code == Some(0) || stop_requested => apb::VmState::Stopped,
            Some(_) => apb::VmState::Crashed,
            None if supervise::read_pid(&self.dir).is_some() => {
                self.message = VANISHED.into();
                apb::VmState::Crashed
            }
            None if self.meta.ever_started => apb::VmState::Stopped,
            None => apb::VmState::Created,
        };
    }

    /// The status the API reports.
    pub fn status(&self) -> apb::VmStatus {
        let now = now_ms();
        let live = self.pid > 0 && self.running();
        let metrics = if live {
            let cg = self
                .cgroup
                .as_ref()
                .map(VmCgroup::usage)
                .unwrap_or_default();
            apb::VmMetrics {
                cpu_time_ms: procfs::cpu_time_ms(self.pid).unwrap_or(0),
                rss_bytes: procfs::rss_bytes(self.pid).unwrap_or(0),
                dirty_pages_per_sec: self
                    .info
                    .as_ref()
                    .map(|i| i.dirty_pages_per_sec)
                    .unwrap_or(0),
                cgroup_memory_bytes: cg.memory_bytes,
                cgroup_memory_limit_bytes: cg.memory_limit_bytes,
                cgroup_cpu_usage_ms: cg.cpu_usage_ms,
                cgroup_cpu_quota_millicpus: cg.cpu_quota_millicpus,
                cgroup_pids: cg.pids,
                cgroup_oom_kills: cg.oom_kills,
            }
        } else {
            apb::VmMetrics::default()
        };
        let (exit_code, exit_signal) = match &self.exit {
            Some(e) => (e.code.unwrap_or(-1), e.signal.unwrap_or(0)),
            None => (-1, 0),
        };
        let message = match (&self.exit, self.message.is_empty()) {
            (Some(e), true) if !live => e.reason().unwrap_or_default(),
            _ => self.message.clone(),
        };
        let mut migration = self.migration.clone();
        if let Some(m) = migration.as_mut() {
            let ended = [apb::MigrationPhase::Completed, apb::MigrationPhase::Failed];
            if !ended.iter().any(|&p| m.phase == p as i32) {
                m.elapsed_ms = (now - m.started_at_ms).max(0) as u64;
            }
        }
        apb::VmStatus {
            vm_id: self.config.id.clone(),
            name: self.config.name.clone(),
            state: self.state as i32,
            pid: if live { self.pid } else { 0 },
            started_at_ms: if live { self.started_at_ms } else { 0 },
            uptime_ms: if live {
                (now - self.started_at_ms).max(0) as u64
            } else {
                0
            },
            exit_code,
            exit_signal,
            metrics: Some(metrics),
            message,
            migration,
            reboots: supervise::read_reboots(&self.dir),
            vmm_state: if self.in_doubt && live {
                Lifecycle::InDoubt.name().to_string()
            } else {
                self.info
                    .as_ref()
                    .map(|i| i.state.name().to_string())
                    .unwrap_or_default()
            },
            console_log: self.dir.join("console.log").display().to_string(),
            adopted: self.adopted,
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            disks: Vec::new(),
        }
    }
}

/// One VM: an operation lock and its data.
#[derive(Debug)]
pub struct VmHandle {
    pub(super) op: Arc<tokio::sync::Mutex<()>>,
    pub(super) data: Mutex<VmData>,
}

impl VmHandle {
    pub(super) fn new(data: VmData) -> Arc<Self> {
        Arc::new(VmHandle {
            op: Arc::new(tokio::sync::Mutex::new(())),
            data: Mutex::new(data),
        })
    }

    /// The data, locked briefly.
    pub fn data(&self) -> MutexGuard<'_, VmData> {
        self.data.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::OomKill;

    /// A VMM the OOM killer took is reported crashed, with the memory limit as the reason.
    #[test]
    fn oom_kill_is_the_crash_reason() {
        let dir = std::env::temp_dir().join(format!("nc-vm-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = ExitRecord {
            signal: Some(libc::SIGKILL),
            at_ms: 1,
            pid: 42,
            oom_kill: Some(OomKill {
                limit_bytes: 184 << 20,
                cgroup: "/sys/fs/cgroup/novacron/A/vm1".into(),
            }),
            ..Default::default()
        };
        supervise::write_atomic(&dir.join("exit.json"), &serde_json::to_vec(&rec).unwrap())
            .unwrap();
        let meta = Meta {
            socket: dir.join("api.sock"),
            ever_started: true,
            ..Default::default()
        };
        let mut d = VmData::created(apb::VmConfig::default(), dir.clone(), meta);
        d.refresh();
        let st = d.status();
        assert_eq!(st.state, apb::VmState::Crashed as i32);
        assert_eq!(st.exit_signal, libc::SIGKILL);
        assert_eq!(
            st.message,
            "killed by the kernel OOM killer: the VM's memory limit of 184 MiB (cgroup \
             /sys/fs/cgroup/novacron/A/vm1) was reached"
        );
        // A plain SIGKILL says nothing more than the signal.
        let rec = ExitRecord {
            oom_kill: None,
            ..rec
        };
        supervise::write_atomic(&dir.join("exit.json"), &serde_json::to_vec(&rec).unwrap())
            .unwrap();
        d.refresh();
        assert_eq!(d.status().message, "");
        let _ = std::fs::remove_dir_all(dir);
    }
}
