//! The VM manager: the agent's VMs, each a directory under `<data-dir>/vms/<id>` holding its
//! configuration (`config.pb`), metadata (`meta.json`), disks, console log, API socket and
//! the supervision files of [`crate::supervise`]. It creates, starts, stops, reboots and
//! deletes VMs, prepares incoming migrations and drives outgoing ones, and re-adopts every
//! VM found in the data directory when the agent starts.
//!
//! Each VM has an operation lock (one lifecycle operation at a time) and a data lock held only
//! briefly, so status queries and heartbeats never wait for a long operation such as a
//! migration.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use novacron_proto::agent as apb;
use novacron_vmm_api::machine::{Disk, MachineOptions, Nic, Serial};
use novacron_vmm_api::protocol::Lifecycle;
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::disks::{self, DiskError, PreparedDisk};
use crate::net::{self, NetError};
use crate::procfs;
use crate::supervise::{self, now_ms, ExitRecord, Launch, SuperviseError};
use crate::vmm_client::{self, Info, VmmClientError};

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
    /// A tap device could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Supervision files or process.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
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
}

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
}

impl VmData {
    /// A VM that exists on disk but has not run yet.
    fn created(config: apb::VmConfig, dir: PathBuf, meta: Meta) -> Self {
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
        }
    }

    fn running(&self) -> bool {
        matches!(
            self.state,
            apb::VmState::Running
                | apb::VmState::Paused
                | apb::VmState::Incoming
                | apb::VmState::Migrating
                | apb::VmState::Starting
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
                    Some(Lifecycle::Paused) => apb::VmState::Paused,
                    Some(Lifecycle::Incoming) => apb::VmState::Incoming,
                    Some(Lifecycle::Migrating) => apb::VmState::Migrating,
                    Some(Lifecycle::Running) => apb::VmState::Running,
                    None if self.meta.role == Role::Incoming => apb::VmState::Incoming,
                    None if now < self.starting_until_ms => apb::VmState::Starting,
                    None => apb::VmState::Running,
                };
                return;
            }
        }
        // Not running (any more).
        if now < self.starting_until_ms && supervise::read_exit(&self.dir).is_none() {
            self.state = apb::VmState::Starting;
            return;
        }
        self.pid = 0;
        self.info = None;
        let stop_requested = self.dir.join("stop-requested").exists();
        self.exit = supervise::read_exit(&self.dir);
        self.state = match &self.exit {
            Some(e) if e.code == Some(0) || stop_requested => apb::VmState::Stopped,
            Some(_) => apb::VmState::Crashed,
            None if supervise::read_pid(&self.dir).is_some() => {
                self.message = "vmm vanished without an exit record (supervisor killed?)".into();
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
            apb::VmMetrics {
                cpu_time_ms: procfs::cpu_time_ms(self.pid).unwrap_or(0),
                rss_bytes: procfs::rss_bytes(self.pid).unwrap_or(0),
                dirty_pages_per_sec: self
                    .info
                    .as_ref()
                    .map(|i| i.dirty_pages_per_sec)
                    .unwrap_or(0),
            }
        } else {
            apb::VmMetrics::default()
        };
        let (exit_code, exit_signal) = match &self.exit {
            Some(e) => (e.code.unwrap_or(-1), e.signal.unwrap_or(0)),
            None => (-1, 0),
        };
        let message = match (&self.exit, self.message.is_empty()) {
            (Some(e), true) if !live && !e.error.is_empty() => e.error.clone(),
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
            vmm_state: self
                .info
                .as_ref()
                .map(|i| i.state.name().to_string())
                .unwrap_or_default(),
            console_log: self.dir.join("console.log").display().to_string(),
            adopted: self.adopted,
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
        }
    }
}

/// One VM: an operation lock and its data.
#[derive(Debug)]
pub struct VmHandle {
    op: tokio::sync::Mutex<()>,
    data: Mutex<VmData>,
}

impl VmHandle {
    fn new(data: VmData) -> Arc<Self> {
        Arc::new(VmHandle {
            op: tokio::sync::Mutex::new(()),
            data: Mutex::new(data),
        })
    }

    /// The data, locked briefly.
    pub fn data(&self) -> MutexGuard<'_, VmData> {
        self.data.lock()
    }
}

/// The VM manager. See the module documentation.
#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    vms: Mutex<BTreeMap<String, Arc<VmHandle>>>,
    create: tokio::sync::Mutex<()>,
    finished: Mutex<HashMap<String, apb::MigrateOutResponse>>,
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
        }))
    }

    /// The settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<VmHandle>>> {
        self.vms.lock()
    }

    fn handle(&self, id: &str) -> Result<Arc<VmHandle>, ManagerError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(id.to_string()))
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("vms").join(id)
    }

    fn images_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("images")
    }

    fn socket_path(&self, id: &str) -> PathBuf {
        let p = self.vm_dir(id).join("api.sock");
        if p.as_os_str().len() <= 100 {
            p
        } else {
            std::env::temp_dir().join(format!("nc-{}-{id}.sock", self.cfg.agent_tag))
        }
    }

    /// Re-adopts every VM in the data directory: running VMMs are kept as they are.
    pub async fn adopt(&self) -> Result<usize, ManagerError> {
        let vms_dir = self.cfg.data_dir.join("vms");
        let mut n = 0;
        let entries = std::fs::read_dir(&vms_dir).map_err(io_err(&vms_dir))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(id) = dir.file_name().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            let config = match std::fs::read(dir.join("config.pb"))
                .ok()
                .and_then(|b| apb::VmConfig::decode(b.as_slice()).ok())
            {
                Some(c) => c,
                None => {
                    tracing::warn!("skipping {}: no readable config.pb", dir.display());
                    continue;
                }
            };
            let meta: Meta = match std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(m) => m,
                None => {
                    tracing::warn!("skipping {}: no readable meta.json", dir.display());
                    continue;
                }
            };
            let mut data = VmData::created(config, dir.clone(), meta);
            data.refresh();
            if data.pid > 0 {
                match vmm_client::info(&data.meta.socket, Duration::from_secs(2)).await {
                    Ok(info) => data.info = Some(info),
                    Err(e) => {
                        data.message = format!("re-adopted, but its API does not answer: {e}")
                    }
                }
                data.adopted = true;
                data.refresh();
                tracing::info!(vm = %data.config.name, pid = data.pid, "re-adopted running vm");
            }
            self.map().insert(id, VmHandle::new(data));
            n += 1;
        }
        Ok(n)
    }

    fn validate(&self, c: &apb::VmConfig, need_kernel: bool) -> Result<(), ManagerError> {
        let bad = |m: String| Err(ManagerError::InvalidArgument(m));
        if !valid_id(&c.id) {
            return bad(format!("invalid vm id {:?}", c.id));
        }
        if c.vcpus == 0 || c.memory_mib == 0 {
            return bad("vcpus and memory must be positive".into());
        }
        if need_kernel {
            if c.kernel.is_empty() {
                return bad("a kernel is required".into());
            }
            let k = disks::resolve(&self.images_dir(), &c.kernel);
            if !k.is_file() {
                return bad(format!("kernel {} not found on this host", k.display()));
            }
        }
        Ok(())
    }

    /// Writes a new VM's directory: config, metadata, disks, taps.
    fn materialise(&self, c: &apb::VmConfig, meta: &Meta) -> Result<(), ManagerError> {
        let dir = self.vm_dir(&c.id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        supervise::write_atomic(&dir.join("config.pb"), &c.encode_to_vec())?;
        self.write_meta(&dir, meta)?;
        disks::prepare(&dir, &self.images_dir(), &c.disks)?;
        for (i, nic) in c.nics.iter().enumerate() {
            net::ensure_tap(&self.tap(&c.id, i), &nic.bridge)?;
        }
        Ok(())
    }

    fn tap(&self, vm_id: &str, i: usize) -> String {
        net::tap_name(&format!("{}{vm_id}", self.cfg.agent_tag), i)
    }

    fn write_meta(&self, dir: &Path, meta: &Meta) -> Result<(), ManagerError> {
        let b = serde_json::to_vec_pretty(meta).map_err(|e| ManagerError::Io {
            path: dir.join("meta.json").display().to_string(),
            source: std::io::Error::other(e),
        })?;
        supervise::write_atomic(&dir.join("meta.json"), &b)?;
        Ok(())
    }

    /// The `novacron-vmm run` arguments of a VM (a fresh boot, or `--incoming ADDR`).
    pub fn vmm_args(
        &self,
        c: &apb::VmConfig,
        socket: &Path,
        incoming: Option<&str>,
    ) -> Result<Vec<String>, ManagerError> {
        let dir = self.vm_dir(&c.id);
        let images = self.images_dir();
        let boot = incoming.is_none();
        let resolve = |p: &str| (boot && !p.is_empty()).then(|| disks::resolve(&images, p));
        let prepared: Vec<PreparedDisk> = disks::prepare(&dir, &images, &c.disks)?;
        let machine = MachineOptions {
            kernel: resolve(&c.kernel),
            initrd: resolve(&c.initrd),
            cmdline: if boot { c.cmdline.clone() } else { String::new() },
            memory_mib: c.memory_mib,
            vcpus: c.vcpus,
            serial: Serial::File(dir.join("console.log")),
            api_socket: Some(socket.to_path_buf()),
            disks: prepared
                .into_iter()
                .map(|d| Disk {
                    path: d.path,
                    read_only: d.readonly,
                })
                .collect(),
            nets: c
                .nics
                .iter()
                .enumerate()
                .map(|(i, nic)| Nic {
                    tap: self.tap(&c.id, i),
                    mac: (!nic.mac.is_empty()).then(|| nic.mac.clone()),
                })
                .collect(),
            incoming: incoming.map(str::to_string),
            restore: None,
            paused: false,
        };
        Ok(machine.args())
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
                    if let Err(e) = self.materialise(&c, &meta) {
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

    /// Starts a VM (no-op when running).
    pub async fn start(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        self.start_locked(&h).await
    }

    async fn start_locked(&self, h: &VmHandle) -> Result<apb::VmStatus, ManagerError> {
        let (dir, socket, launch) = {
            let mut d = h.data();
            d.refresh();
            if d.running() {
                return Ok(d.status());
            }
            if d.meta.role == Role::Incoming {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is an unfinished incoming migration",
                    d.config.name
                )));
            }
            let argv = self.vmm_args(&d.config, &d.meta.socket, None)?;
            let launch = Launch {
                vmm: self.cfg.vmm_binary.clone(),
                argv: argv.clone(),
                boot_argv: argv,
            };
            (d.dir.clone(), d.meta.socket.clone(), launch)
        };
        self.launch(h, &dir, &socket, &launch).await?;
        self.wait_api(h, &dir, &socket).await
    }

    async fn launch(
        &self,
        h: &VmHandle,
        dir: &Path,
        socket: &Path,
        launch: &Launch,
    ) -> Result<(), ManagerError> {
        let _ = std::fs::remove_file(socket);
        supervise::prepare_launch(dir, launch)?;
        {
            let mut d = h.data();
            d.meta.ever_started = true;
            d.exit = None;
            d.info = None;
            d.message.clear();
            d.adopted = false;
            d.starting_until_ms = now_ms() + self.cfg.start_timeout.as_millis() as i64;
            d.state = apb::VmState::Starting;
            self.write_meta(dir, &d.meta)?;
        }
        supervise::spawn(&self.cfg.agent_exe, dir)?;
        Ok(())
    }

    /// Waits until the VMM answers `info`, or fails.
    async fn wait_api(
        &self,
        h: &VmHandle,
        dir: &Path,
        socket: &Path,
    ) -> Result<apb::VmStatus, ManagerError> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            if let Some(exit) = supervise::read_exit(dir) {
                let tail = log_tail(&dir.join("vmm.log"));
                let mut d = h.data();
                d.starting_until_ms = 0;
                d.refresh();
                let why = if !exit.error.is_empty() {
                    exit.error.clone()
                } else {
                    format!(
                        "vmm exited with status {:?} (signal {:?}): {tail}",
                        exit.code, exit.signal
                    )
                };
                d.message = why.clone();
                return Err(ManagerError::FailedPrecondition(why));
            }
            if supervise::read_pid(dir).is_some() && socket.exists() {
                if let Ok(info) = vmm_client::info(socket, Duration::from_millis(500)).await {
                    let mut d = h.data();
                    d.info = Some(info);
                    d.starting_until_ms = 0;
                    d.refresh();
                    return Ok(d.status());
                }
            }
            if Instant::now() > deadline {
                let mut d = h.data();
                d.starting_until_ms = 0;
                d.message = "vmm did not answer on its api socket in time".into();
                return Err(ManagerError::Unavailable(format!(
                    "vm {}: vmm did not answer on its api socket within {:?}",
                    d.config.name, self.cfg.start_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops a VM: `shutdown` on its API, then SIGKILL after `timeout` (or at once if
    /// `force`).
    pub async fn stop(
        &self,
        id: &str,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        self.stop_locked(&h, timeout.unwrap_or(self.cfg.stop_timeout), force)
            .await
    }

    async fn stop_locked(
        &self,
        h: &VmHandle,
        timeout: Duration,
        force: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        let (dir, socket, pid) = {
            let mut d = h.data();
            d.refresh();
            if !d.running() {
                return Ok(d.status());
            }
            (d.dir.clone(), d.meta.socket.clone(), d.pid)
        };
        let marker = dir.join("stop-requested");
        std::fs::write(&marker, b"").map_err(io_err(&marker))?;
        if !force {
            if let Err(e) = vmm_client::shutdown(&socket, Duration::from_secs(2)).await {
                tracing::warn!("graceful shutdown of {}: {e}", dir.display());
            }
            wait_exit(pid, &socket, timeout).await;
        }
        if procfs::alive_with_arg(pid, &socket) {
            procfs::signal(pid, libc::SIGKILL);
            wait_exit(pid, &socket, Duration::from_secs(5)).await;
        }
        // Give the supervisor a moment to write exit.json.
        let deadline = Instant::now() + Duration::from_secs(2);
        while supervise::read_exit(&dir).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut d = h.data();
        d.starting_until_ms = 0;
        d.refresh();
        Ok(d.status())
    }

    /// Reboots a VM: graceful stop, then start.
    pub async fn reboot(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let dir = h.data().dir.clone();
        self.stop_locked(&h, self.cfg.stop_timeout, false).await?;
        let n = supervise::read_reboots(&dir) + 1;
        supervise::write_atomic(&dir.join("reboots"), n.to_string().as_bytes())?;
        self.start_locked(&h).await
    }

    /// Deletes a VM: kills it and removes its directory and taps. Returns whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, ManagerError> {
        let Ok(h) = self.handle(id) else {
            return Ok(false);
        };
        let _op = h.op.lock().await;
        self.stop_locked(&h, Duration::ZERO, true).await?;
        self.remove_locked(&h).await?;
        Ok(true)
    }

    async fn remove_locked(&self, h: &VmHandle) -> Result<(), ManagerError> {
        let (id, dir, socket, nics) = {
            let d = h.data();
            (
                d.config.id.clone(),
                d.dir.clone(),
                d.meta.socket.clone(),
                d.config.nics.len(),
            )
        };
        for i in 0..nics {
            if let Err(e) = net::remove_tap(&self.tap(&id, i)) {
                tracing::warn!("removing tap of {id}: {e}");
            }
        }
        self.map().remove(&id);
        let _ = std::fs::remove_file(&socket);
        // Let the supervisor finish writing its exit record first.
        if let Some(sup) = supervise::read_supervisor_pid(&dir) {
            let deadline = Instant::now() + Duration::from_secs(3);
            while procfs::alive(sup) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut attempt = 0;
        while dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    tracing::debug!("removing {}: {e}; retrying", dir.display());
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        tracing::info!(id = %id, "removed");
        Ok(())
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
            if let Ok(info) = vmm_client::info(&socket, Duration::from_secs(1)).await {
                self.take_info(&h, info);
            }
        }
        let mut d = h.data();
        d.refresh();
        Ok(d.status())
    }

    /// Records an `info` answer; finishes an incoming migration whose VMM now runs.
    fn take_info(&self, h: &VmHandle, i: Info) {
        let mut d = h.data();
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
                d.status()
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
            match vmm_client::info(&socket, Duration::from_secs(1)).await {
                Ok(i) => self.take_info(&h, i),
                Err(e) => tracing::debug!("info of {}: {e}", h.data().config.name),
            }
        }
    }

    /// Migration destination: starts an incoming VMM and returns its `tcp:HOST:PORT`.
    pub async fn prepare_incoming(
        &self,
        c: apb::VmConfig,
        migration_id: &str,
    ) -> Result<(String, apb::VmStatus), ManagerError> {
        self.validate(&c, false)?;
        let _g = self.create.lock().await;
        if let Some(h) = self.map().get(&c.id).cloned() {
            let mut d = h.data();
            d.refresh();
            if d.meta.role == Role::Incoming && d.meta.migration_id == migration_id && d.running() {
                return Ok((d.meta.incoming_addr.clone(), d.status()));
            }
            return Err(ManagerError::AlreadyExists(format!(
                "vm {} already exists on this host",
                c.name
            )));
        }
        let port = free_port(&self.cfg.migration_host)?;
        let addr = format!("tcp:{}:{port}", self.cfg.migration_host);
        let meta = Meta {
            socket: self.socket_path(&c.id),
            role: Role::Incoming,
            migration_id: migration_id.to_string(),
            incoming_addr: addr.clone(),
            created_at_ms: now_ms(),
            ever_started: true,
        };
        if let Err(e) = self.materialise(&c, &meta) {
            let _ = std::fs::remove_dir_all(self.vm_dir(&c.id));
            return Err(e);
        }
        let argv = self.vmm_args(&c, &meta.socket, Some(&addr))?;
        let boot_argv = if c.kernel.is_empty() {
            argv.clone()
        } else {
            self.vmm_args(&c, &meta.socket, None)?
        };
        let launch = Launch {
            vmm: self.cfg.vmm_binary.clone(),
            argv,
            boot_argv,
        };
        let data = VmData {
            state: apb::VmState::Incoming,
            migration: Some(apb::MigrationProgress {
                migration_id: migration_id.to_string(),
                role: apb::MigrationRole::Destination as i32,
                phase: apb::MigrationPhase::Waiting as i32,
                peer: String::new(),
                started_at_ms: now_ms(),
                ..Default::default()
            }),
            ..VmData::created(c.clone(), self.vm_dir(&c.id), meta.clone())
        };
        let h = VmHandle::new(data);
        self.map().insert(c.id.clone(), Arc::clone(&h));
        let _op = h.op.lock().await;
        let res = async {
            self.launch(&h, &self.vm_dir(&c.id), &meta.socket, &launch)
                .await?;
            self.wait_api(&h, &self.vm_dir(&c.id), &meta.socket)
                .await
        }
        .await;
        match res {
            Ok(status) => {
                tracing::info!(vm = %c.name, %addr, "incoming migration prepared");
                Ok((addr, status))
            }
            Err(e) => {
                let _ = self.stop_locked(&h, Duration::ZERO, true).await;
                let _ = self.remove_locked(&h).await;
                Err(e)
            }
        }
    }

    /// Migration destination: drops an incoming VM that did not complete.
    pub async fn abort_incoming(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let status = {
            let mut d = h.data();
            d.refresh();
            if d.meta.role != Role::Incoming {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is not an incoming migration here",
                    d.config.name
                )));
            }
            d.status()
        };
        self.stop_locked(&h, Duration::ZERO, true).await?;
        self.remove_locked(&h).await?;
        tracing::info!(id, "incoming migration aborted");
        Ok(status)
    }

    /// Migration source: sends `migrate` to the VMM and waits for the summary. On success the
    /// VMM has exited and the VM is forgotten here (its console log is kept under
    /// `<data-dir>/migrated/`).
    pub async fn migrate_out(
        &self,
        id: &str,
        to: &str,
        options: &apb::MigrateOptions,
        migration_id: &str,
    ) -> Result<apb::MigrateOutResponse, ManagerError> {
        if let Some(done) = self.finished_migration(migration_id) {
            return Ok(done);
        }
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        if let Some(done) = self.finished_migration(migration_id) {
            return Ok(done);
        }
        if !to.starts_with("tcp:") {
            return Err(ManagerError::InvalidArgument(format!(
                "migration target {to:?} is not tcp:HOST:PORT"
            )));
        }
        let args = vmm_client::migrate_options(to, options)
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        let (socket, pid, dir) = {
            let mut d = h.data();
            d.refresh();
            if !matches!(d.state, apb::VmState::Running | apb::VmState::Paused) {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is not running here",
                    d.config.name
                )));
            }
            d.migration = Some(apb::MigrationProgress {
                migration_id: migration_id.to_string(),
                role: apb::MigrationRole::Source as i32,
                phase: apb::MigrationPhase::Transferring as i32,
                peer: args.to.clone(),
                started_at_ms: now_ms(),
                ..Default::default()
            });
            (d.meta.socket.clone(), d.pid, d.dir.clone())
        };
        let started = Instant::now();
        let timeout = if options.timeout_s > 0 {
            Duration::from_secs(u64::from(options.timeout_s) + 30)
        } else {
            Duration::from_secs(3600)
        };
        tracing::info!(id, to = %args.to, "migrating out");
        match vmm_client::migrate(&socket, &args, timeout).await {
            Ok(summary) => {
                let summary = crate::summary::to_proto(&summary);
                // The source VMM exits 0 once the destination confirmed.
                wait_exit(pid, &socket, Duration::from_secs(30)).await;
                let status = {
                    let mut d = h.data();
                    if let Some(m) = d.migration.as_mut() {
                        m.phase = apb::MigrationPhase::Completed as i32;
                        m.summary = Some(summary.clone());
                        m.elapsed_ms = started.elapsed().as_millis() as u64;
                    }
                    d.refresh();
                    d.status()
                };
                self.keep_console_log(id, &dir);
                self.remove_locked(&h).await?;
                let resp = apb::MigrateOutResponse {
                    summary: Some(summary),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    status: Some(status),
                };
                if !migration_id.is_empty() {
                    self.finished
                        .lock()
                        .insert(migration_id.to_string(), resp.clone());
                }
                tracing::info!(id, ms = resp.elapsed_ms, "migrated out");
                Ok(resp)
            }
            Err(e) => {
                let mut d = h.data();
                if let Some(m) = d.migration.as_mut() {
                    m.phase = apb::MigrationPhase::Failed as i32;
                    m.error = e.to_string();
                }
                d.refresh();
                Err(ManagerError::Aborted(format!(
                    "migration of {} failed: {e}",
                    d.config.name
                )))
            }
        }
    }

    fn finished_migration(&self, migration_id: &str) -> Option<apb::MigrateOutResponse> {
        if migration_id.is_empty() {
            return None;
        }
        self.finished
            .lock()
            .get(migration_id)
            .cloned()
    }

    fn keep_console_log(&self, id: &str, dir: &Path) {
        let keep = self.cfg.data_dir.join("migrated");
        if std::fs::create_dir_all(&keep).is_ok() {
            let _ = std::fs::rename(
                dir.join("console.log"),
                keep.join(format!("{id}.{}.console.log", now_ms())),
            );
        }
    }
}

/// Waits until `pid` is gone (or no longer the VMM of `socket`), up to `timeout`.
async fn wait_exit(pid: i32, socket: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while procfs::alive_with_arg(pid, socket) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A free TCP port on `host` (bound and released).
fn free_port(host: &str) -> Result<u16, ManagerError> {
    let l = TcpListener::bind((host, 0)).map_err(|source| ManagerError::Io {
        path: format!("tcp {host}:0"),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| ManagerError::Io {
            path: format!("tcp {host}:0"),
            source,
        })
}

/// The last non-empty line of a log, for error messages.
fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(no output)".into())
}
