//! The VMM runtime behind the control API: answers `info`, `pause`, `resume`, `shutdown` (and,
//! from the migration and snapshot modules, `snapshot` and `migrate`) for one machine.

use crate::api::Handler;
use crate::control::ExitReason;
use crate::machine::Machine;
use crate::migration::options::MigrateOptions;
pub use novacron_vmm_api::protocol::Lifecycle;
use novacron_vmm_api::protocol::{
    DirtyLog, Empty, Info, Reply, Request, SnapshotKind, SnapshotReply,
};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

/// `Lifecycle` as stored in an atomic.
fn to_u8(s: Lifecycle) -> u8 {
    match s {
        Lifecycle::Running => 0,
        Lifecycle::Paused => 1,
        Lifecycle::Incoming => 2,
        Lifecycle::Migrating => 3,
    }
}

fn from_u8(v: u8) -> Lifecycle {
    match v {
        1 => Lifecycle::Paused,
        2 => Lifecycle::Incoming,
        3 => Lifecycle::Migrating,
        _ => Lifecycle::Running,
    }
}

/// The API handler for a machine.
pub struct Runtime {
    /// The machine, once it exists (absent while waiting for an incoming migration).
    pub machine: OnceLock<Arc<Machine>>,
    state: AtomicU8,
    started: std::time::Instant,
    /// Set when the process should end after answering (shutdown).
    shutdown: AtomicBool,
    /// Set when an outgoing migration completed: the process ends after answering.
    migrated: AtomicBool,
    /// Base of the next diff snapshot.
    diff_base: Mutex<crate::snapshot::DiffBase>,
    /// Exit hook: ends the VM with a reason (used when no machine exists yet).
    pub on_exit: Box<dyn Fn(ExitReason) + Send + Sync>,
}

impl Runtime {
    /// A runtime in the given initial state.
    pub fn new(state: Lifecycle, on_exit: Box<dyn Fn(ExitReason) + Send + Sync>) -> Arc<Self> {
        Arc::new(Runtime {
            machine: OnceLock::new(),
            state: AtomicU8::new(to_u8(state)),
            started: std::time::Instant::now(),
            shutdown: AtomicBool::new(false),
            migrated: AtomicBool::new(false),
            diff_base: Mutex::new(crate::snapshot::DiffBase::default()),
            on_exit,
        })
    }

    /// Current lifecycle state.
    pub fn state(&self) -> Lifecycle {
        from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Sets the lifecycle state.
    pub fn set_state(&self, s: Lifecycle) {
        self.state.store(to_u8(s), Ordering::SeqCst);
    }

    fn machine(&self) -> Result<&Arc<Machine>, String> {
        self.machine.get().ok_or_else(|| {
            "no guest yet: this VMM is waiting for an incoming migration".to_string()
        })
    }

    fn snapshot(&self, to: &Path, diff: bool) -> Result<SnapshotReply, String> {
        let m = self.machine()?.clone();
        let was_running = match self.state() {
            Lifecycle::Running => true,
            Lifecycle::Paused => false,
            s => return Err(format!("cannot snapshot while {s}")),
        };
        if was_running {
            m.pause_all();
        }
        let mut base = self.diff_base.lock();
        let r = crate::snapshot::write(&m, to, diff, &mut base);
        drop(base);
        if was_running {
            m.resume_all();
        }
        let info = r.map_err(|e| format!("snapshot failed: {e}"))?;
        Ok(SnapshotReply {
            kind: if diff {
                SnapshotKind::Diff
            } else {
                SnapshotKind::Full
            },
            pages: info.pages,
            bytes: info.bytes,
            paused_ms: info.paused_ms,
        })
    }

    fn migrate(&self, opts: &MigrateOptions) -> Result<Reply, String> {
        let m = self.machine()?.clone();
        let before = match self.state.compare_exchange(
            to_u8(Lifecycle::Running),
            to_u8(Lifecycle::Migrating),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Lifecycle::Running,
            Err(s) => return Err(format!("cannot migrate while {}", from_u8(s))),
        };
        match crate::migration::source::migrate(&m, opts) {
            Ok(summary) => {
                self.migrated.store(true, Ordering::SeqCst);
                Ok(Reply::Migrated(Box::new(summary)))
            }
            Err(e) => {
                self.set_state(before);
                Err(format!("migration failed, guest still running here: {e}"))
            }
        }
    }

    fn info(&self) -> Info {
        let mut info = Info {
            state: self.state(),
            vcpus: 0,
            memory_mib: 0,
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            kernel: String::new(),
            dirty_log: None,
            dirty_pages_per_sec: 0,
        };
        if let Some(m) = self.machine.get() {
            info.vcpus = u32::from(m.config().vcpus);
            info.memory_mib = m.config().memory >> 20;
            info.kernel = m
                .config()
                .kernel
                .as_ref()
                .map(|k| k.display().to_string())
                .unwrap_or_default();
            info.dirty_log = Some(if m.vm().manual_protect() {
                DirtyLog::ManualProtect
            } else {
                DirtyLog::Plain
            });
            info.dirty_pages_per_sec = m.dirty_pages_per_sec();
        }
        info
    }

    fn pause(&self) -> Result<Reply, String> {
        match self.state() {
            Lifecycle::Running => {}
            Lifecycle::Paused => return Ok(Reply::Empty(Empty {})),
            s => return Err(format!("cannot pause while {s}")),
        }
        self.machine()?.pause_all();
        self.set_state(Lifecycle::Paused);
        Ok(Reply::Empty(Empty {}))
    }

    fn resume(&self) -> Result<Reply, String> {
        match self.state() {
            Lifecycle::Paused => {}
            Lifecycle::Running => return Ok(Reply::Empty(Empty {})),
            s => return Err(format!("cannot resume while {s}")),
        }
        self.machine()?.resume_all();
        self.set_state(Lifecycle::Running);
        Ok(Reply::Empty(Empty {}))
    }
}

impl Handler for Runtime {
    fn handle(&self, req: &Request) -> Result<Reply, String> {
        match req {
            Request::Info => Ok(Reply::Info(self.info())),
            Request::Pause => self.pause(),
            Request::Resume => self.resume(),
            Request::Shutdown => {
                if self.state() == Lifecycle::Migrating {
                    return Err("cannot shut down during an outgoing migration".into());
                }
                self.shutdown.store(true, Ordering::SeqCst);
                Ok(Reply::Empty(Empty {}))
            }
            Request::Migrate(opts) => {
                // Migration restarts dirty tracking: the next diff snapshot needs a new base.
                self.diff_base.lock().last = None;
                self.migrate(opts)
            }
            Request::Snapshot { to, diff } => self.snapshot(to, *diff).map(Reply::Snapshot),
            Request::Cancel => Err("no outgoing migration to cancel".into()),
        }
    }

    fn after_response(&self, req: &Request) {
        if matches!(req, Request::Migrate(_)) && self.migrated.load(Ordering::SeqCst) {
            if let Some(m) = self.machine.get() {
                m.control().request_exit(ExitReason::MigratedAway);
            }
        }
        if matches!(req, Request::Shutdown) && self.shutdown.load(Ordering::SeqCst) {
            match self.machine.get() {
                Some(m) => m.control().request_exit(ExitReason::PowerOff),
                None => (self.on_exit)(ExitReason::PowerOff),
            }
        }
    }
}
