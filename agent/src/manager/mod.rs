//! The VM manager: the agent's VMs, each a directory under `<data-dir>/vms/<id>` holding its
//! configuration (`config.pb`), metadata (`meta.json`), disks, console log, API socket and
//! the supervision files of [`crate::supervise`]. It creates, starts, stops, reboots and
//! deletes VMs, prepares incoming migrations and drives outgoing ones, and re-adopts every
//! VM found in the data directory when the agent starts.
//!
//! Each VM has an operation lock (one lifecycle operation at a time) and a data lock held only
//! briefly, so status queries and heartbeats never wait for a long operation such as a
//! migration.
//!
//! Files: [`vm`] (a VM's record, metadata and status), [`files`] (its directory, command
//! line, ports and console logs), [`lifecycle`] (launching, waiting for and stopping VMMs),
//! [`adopt`] (re-adoption after an agent restart), [`migration`] (incoming and outgoing
//! migrations), [`cold`] (disks copied between agents for a stopped VM), [`storage`]
//! (snapshots, restores and clones), [`backup`] (snapshots exported to and imported from
//! backup files).

mod adopt;
mod backup;
mod cold;
mod files;
mod lifecycle;
mod migration;
mod storage;
mod vm;

pub use cold::ExportStream;
pub use storage::SNAPSHOTS_DIR;

pub use vm::{Meta, Role, VmData, VmHandle};

use files::DiskPlan;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_vmm_api::protocol::Lifecycle;
use parking_lot::{Mutex, MutexGuard};

use crate::cgroup::{CgroupError, HostCgroups};
use crate::disk_copy::CopyError;
use crate::disks::{self, DiskError};
use crate::images_dir::ImagesDir;
use crate::net::NetError;
use crate::supervise::{now_ms, SuperviseError};
use crate::vmm_client::{self, Info, Observed, VmmClientError};

/// Errors of VM operations; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown VM.
    #[error("vm {0} not found on this host")]
    NotFound(String),
    /// The id is in use by a different VM.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not valid in the VM's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Transient failure (VMM slow to answer).
    #[error("{0}")]
    Unavailable(String),
    /// The migration failed; the VM keeps running here.
    #[error("{0}")]
    Aborted(String),
    /// A disk could not be prepared.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A disk could not be copied from the source agent (cold migration).
    #[error("copying disk {index} of vm {vm}: {source}")]
    Copy {
        /// VM name.
        vm: String,
        /// Disk index.
        index: usize,
        /// What failed.
        source: CopyError,
    },
    /// A tap device could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Supervision files or process.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The VM's cgroup could not be set up.
    #[error("vm {vm}: {source}")]
    Cgroup {
        /// VM name.
        vm: String,
        /// What failed.
        source: CgroupError,
    },
    /// The VMM API.
    #[error(transparent)]
    Vmm(#[from] VmmClientError),
    /// Filesystem.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ManagerError + '_ {
    move |source| ManagerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Agent settings the manager needs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// `<data-dir>`.
    pub data_dir: PathBuf,
    /// The `novacron-vmm` executable.
    pub vmm_binary: PathBuf,
    /// This agent's executable (started as the per-VM supervisor).
    pub agent_exe: PathBuf,
    /// Address incoming migrations listen on.
    pub migration_host: String,
    /// Default graceful-stop timeout.
    pub stop_timeout: Duration,
    /// How long a VMM may take to answer its API after start.
    pub start_timeout: Duration,
    /// Short form of the agent id (tap names).
    pub agent_tag: String,
    /// This host's TLS material for calling peer agents (none: development mode, plain
    /// HTTP/2).
    pub peer_tls: Option<novacron_security::TlsMaterial>,
    /// Where VM cgroups go and the CPU overcommit of their limits.
    pub cgroups: HostCgroups,
}

/// The VM manager. See the module documentation.
#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    vms: Mutex<BTreeMap<String, Arc<VmHandle>>>,
    create: tokio::sync::Mutex<()>,
    finished: Mutex<HashMap<String, apb::MigrateOutResponse>>,
    faults: TestFaults,
}

/// Test-only fault switches, from the environment variable `NOVACRON_AGENT_TEST_FAULT`
/// (comma-separated). They exist so the fault tests (`tests/mgmt_migration_faults.rs`) can
/// make the management plane fail at precise points; never set them in production.
/// - `drop-migrate-reply`: MigrateOut fails after the VMM's `migrate` finished (as if the
///   answer were lost on the way to the controller);
/// - `migrate-unreachable`: MigrateOut sends the VMM to a closed port instead of the
///   destination;
/// - `delay-migrate:MS`: MigrateOut waits MS milliseconds before sending `migrate`;
/// - `incoming-timeout:S`: an incoming VMM waits at most S seconds for its stream;
/// - `migrate-via:PORT`: MigrateOut sends the VMM to `127.0.0.1:PORT` (a test's relay)
///   instead of the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestFaults {
    /// `drop-migrate-reply`.
    pub drop_migrate_reply: bool,
    /// `migrate-unreachable`.
    pub migrate_unreachable: bool,
    /// `delay-migrate:MS`.
    pub delay_migrate_ms: u64,
    /// `incoming-timeout:S`.
    pub incoming_timeout_s: Option<u64>,
    /// `migrate-via:PORT`.
    pub migrate_via_port: Option<u16>,
}

impl TestFaults {
    /// The name of the environment variable.
    pub const ENV: &'static str = "NOVACRON_AGENT_TEST_FAULT";

    /// Parses the switches (unknown or malformed ones are logged and ignored).
    pub fn parse(s: &str) -> Self {
        let mut f = TestFaults::default();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let (name, arg) = match w.split_once(':') {
                Some((n, a)) => (n, a.parse::<u64>().ok()),
                None => (w, None),
            };
            match (name, arg) {
                ("drop-migrate-reply", None) => f.drop_migrate_reply = true,
                ("migrate-unreachable", None) => f.migrate_unreachable = true,
                ("delay-migrate", Some(ms)) => f.delay_migrate_ms = ms,
                ("incoming-timeout", Some(secs)) if secs > 0 => f.incoming_timeout_s = Some(secs),
                ("migrate-via", Some(port)) if port > 0 && port <= u64::from(u16::MAX) => {
                    f.migrate_via_port = Some(port as u16)
                }
                _ => tracing::warn!("{}: unknown test fault {w:?}", Self::ENV),
            }
        }
        if f != TestFaults::default() {
            tracing::warn!("TEST FAULTS ACTIVE ({}): {f:?}", Self::ENV);
        }
        f
    }

    fn from_env() -> Self {
        std::env::var(Self::ENV)
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn same_machine(a: &apb::VmConfig, b: &apb::VmConfig) -> bool {
    a.id == b.id
        && a.vcpus == b.vcpus
        && a.memory_mib == b.memory_mib
        && a.kernel == b.kernel
        && a.disks == b.disks
        && a.nics == b.nics
}

impl Manager {
    /// A manager over `cfg.data_dir`; call [`Manager::adopt`] next.
    pub fn new(cfg: ManagerConfig) -> Result<Arc<Self>, ManagerError> {
        let vms_dir = cfg.data_dir.join("vms");
        std::fs::create_dir_all(&vms_dir).map_err(io_err(&vms_dir))?;
        let images = cfg.data_dir.join("images");
        std::fs::create_dir_all(&images).map_err(io_err(&images))?;
        Ok(Arc::new(Manager {
            cfg,
            vms: Mutex::new(BTreeMap::new()),
            create: tokio::sync::Mutex::new(()),
            finished: Mutex::new(HashMap::new()),
            faults: TestFaults::from_env(),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    pub(super) fn map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<VmHandle>>> {
        self.vms.lock()
    }

    pub(super) fn handle(&self, id: &str) -> Result<Arc<VmHandle>, ManagerError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(id.to_string()))
    }

    pub(super) fn vm_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("vms").join(id)
    }

    pub(super) fn images_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("images")
    }

    pub(super) fn socket_path(&self, id: &str) -> PathBuf {
        let p = self.vm_dir(id).join("api.sock");
        if p.as_os_str().len() <= 100 {
            p
        } else {
            std::env::temp_dir().join(format!("nc-{}-{id}.sock", self.cfg.agent_tag))
        }
    }

    pub(super) fn validate(
        &self,
        c: &apb::VmConfig,
        need_kernel: bool,
    ) -> Result<(), ManagerError> {
        let bad = |m: String| Err(ManagerError::InvalidArgument(m));
        if !valid_id(&c.id) {
            return bad(format!("invalid vm id {:?}", c.id));
        }
        if c.vcpus == 0 || c.memory_mib == 0 {
            return bad("vcpus and memory must be positive".into());
        }
        // Every file the VM boots from comes from the images directory (the same answer
        // for a missing file and a path outside it).
        let images = ImagesDir::new(self.images_dir());
        let confined = |what: &str, name: &str| {
            images
                .resolve(what, name)
                .map(|_| ())
                .map_err(|e| ManagerError::InvalidArgument(e.to_string()))
        };
        if need_kernel {
            if c.kernel.is_empty() {
                return bad("a kernel is required".into());
            }
            confined("kernel", &c.kernel)?;
            if !c.initrd.is_empty() {
                confined("initrd", &c.initrd)?;
            }
        }
        for (i, d) in c.disks.iter().enumerate() {
            if !d.image.is_empty() {
                confined(&format!("disk {i} image"), &d.image)?;
            }
        }
        Ok(())
    }

    /// Creates a VM (idempotent for the same id and machine) and optionally starts it.
    pub async fn create(
        &self,
        c: apb::VmConfig,
        start: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        self.validate(&c, true)?;
        let h = {
            let _g = self.create.lock().await;
            let existing = self.map().get(&c.id).cloned();
            match existing {
                Some(h) => {
                    if !same_machine(&h.data().config, &c) {
                        return Err(ManagerError::AlreadyExists(format!(
                            "vm {} exists here with a different configuration",
                            c.id
                        )));
                    }
                    h
                }
                None => {
                    let meta = Meta {
                        socket: self.socket_path(&c.id),
                        role: Role::Normal,
                        created_at_ms: now_ms(),
                        ..Default::default()
                    };
                    if let Err(e) = self.materialise(&c, &meta, DiskPlan::Fresh) {
                        let _ = std::fs::remove_dir_all(self.vm_dir(&c.id));
                        return Err(e);
                    }
                    let data = VmData::created(c.clone(), self.vm_dir(&c.id), meta);
                    let h = VmHandle::new(data);
                    self.map().insert(c.id.clone(), Arc::clone(&h));
                    tracing::info!(vm = %c.name, id = %c.id, "created");
                    h
                }
            }
        };
        if start {
            self.start(&c.id).await
        } else {
            let mut d = h.data();
            d.refresh();
            Ok(d.status())
        }
    }

    /// Status of one VM, with a fresh `info` from its VMM when it runs.
    pub async fn get(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let (socket, live) = {
            let mut d = h.data();
            d.refresh();
            (d.meta.socket.clone(), d.pid > 0)
        };
        if live {
            if let Ok(o) = vmm_client::observe(&socket, Duration::from_secs(1)).await {
                self.take_observed(&h, o);
            }
        }
        let mut d = h.data();
        d.refresh();
        Ok(self.status_with_disks(&d))
    }

    /// [`VmData::status`] with the VM's disk files as this host sees them.
    fn status_with_disks(&self, d: &VmData) -> apb::VmStatus {
        let mut s = d.status();
        s.disks = disks::describe(&d.dir, &self.images_dir(), &d.config.disks);
        s
    }

    /// Records what `info` said (see [`Manager::take_info`]).
    pub(super) fn take_observed(&self, h: &VmHandle, o: Observed) {
        match o {
            Observed::Info(i) => self.take_info(h, i),
            Observed::InDoubt => {
                let mut d = h.data();
                if !d.in_doubt {
                    tracing::warn!(vm = %d.config.name, "source vmm is in doubt");
                }
                d.in_doubt = true;
                d.refresh();
            }
        }
    }

    /// Records an `info` answer; finishes an incoming migration whose VMM now runs.
    pub(super) fn take_info(&self, h: &VmHandle, i: Info) {
        let mut d = h.data();
        d.in_doubt = false;
        let done_incoming = d.meta.role == Role::Incoming && i.state != Lifecycle::Incoming;
        d.info = Some(i);
        if done_incoming {
            d.meta.role = Role::Normal;
            d.meta.migration_id.clear();
            if let Some(m) = d.migration.as_mut() {
                m.phase = apb::MigrationPhase::Completed as i32;
                m.elapsed_ms = (now_ms() - m.started_at_ms).max(0) as u64;
            }
            let (dir, meta) = (d.dir.clone(), d.meta.clone());
            if let Err(e) = self.write_meta(&dir, &meta) {
                tracing::warn!("{e}");
            }
            // The migration's credential is spent (its CA signs nothing more): drop the key.
            files::remove_migration_tls(&dir);
            tracing::info!(vm = %d.config.name, "incoming migration completed");
        }
        d.refresh();
    }

    /// Statuses of all VMs, ordered by id.
    pub fn list(&self) -> Vec<apb::VmStatus> {
        let hs: Vec<Arc<VmHandle>> = self.map().values().cloned().collect();
        hs.iter()
            .map(|h| {
                let mut d = h.data();
                d.refresh();
                self.status_with_disks(&d)
            })
            .collect()
    }

    /// Refreshes every VM and asks each live VMM for `info` (the monitor's tick). Also
    /// finishes incoming migrations whose VMM now runs.
    pub async fn monitor_tick(&self) {
        let hs: Vec<Arc<VmHandle>> = self.map().values().cloned().collect();
        for h in hs {
            let (socket, live) = {
                let mut d = h.data();
                d.refresh();
                (d.meta.socket.clone(), d.pid > 0)
            };
            if !live {
                continue;
            }
            match vmm_client::observe(&socket, Duration::from_secs(1)).await {
                Ok(o) => self.take_observed(&h, o),
                Err(e) => tracing::debug!("info of {}: {e}", h.data().config.name),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TestFaults;

    #[test]
    fn test_faults_parse() {
        assert_eq!(TestFaults::parse(""), TestFaults::default());
        let f = TestFaults::parse(
            "drop-migrate-reply, delay-migrate:250,incoming-timeout:3,migrate-via:4000",
        );
        assert!(f.drop_migrate_reply && !f.migrate_unreachable);
        assert_eq!(f.migrate_via_port, Some(4000));
        assert_eq!((f.delay_migrate_ms, f.incoming_timeout_s), (250, Some(3)));
        // Unknown and malformed switches are ignored.
        let f = TestFaults::parse("nope,delay-migrate:soon,incoming-timeout:0,migrate-unreachable");
        assert_eq!(
            f,
            TestFaults {
                migrate_unreachable: true,
                ..Default::default()
            }
        );
    }
}
