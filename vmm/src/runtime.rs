//! The VMM runtime behind the control API: answers `info`, `pause`, `resume`, `shutdown` (and,
//! from the migration and snapshot modules, `snapshot` and `migrate`) for one machine.

use crate::api::Handler;
use crate::control::ExitReason;
use crate::machine::Machine;
use crate::migration::options::MigrateOptions;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Lifecycle state reported by `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    /// vCPUs running.
    Running = 0,
    /// Paused by the API.
    Paused = 1,
    /// Waiting for an incoming migration.
    Incoming = 2,
    /// An outgoing migration is in progress.
    Migrating = 3,
}

impl Lifecycle {
    fn name(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Paused => "paused",
            Lifecycle::Incoming => "incoming",
            Lifecycle::Migrating => "migrating",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Lifecycle::Paused,
            2 => Lifecycle::Incoming,
            3 => Lifecycle::Migrating,
            _ => Lifecycle::Running,
        }
    }
}

/// The API handler for a machine.
pub struct Runtime {
    /// The machine, once it exists (absent while waiting for an incoming migration).
    pub machine: std::sync::OnceLock<Arc<Machine>>,
    state: AtomicU8,
    started: std::time::Instant,
    /// Set when the process should end after answering (shutdown).
    shutdown: std::sync::atomic::AtomicBool,
    /// Set when an outgoing migration completed: the process ends after answering.
    migrated: std::sync::atomic::AtomicBool,
    /// Base of the next diff snapshot.
    diff_base: std::sync::Mutex<crate::snapshot::DiffBase>,
    /// Exit hook: ends the VM with a reason (used when no machine exists yet).
    pub on_exit: Box<dyn Fn(ExitReason) + Send + Sync>,
}

impl Runtime {
    /// A runtime in the given initial state.
    pub fn new(state: Lifecycle, on_exit: Box<dyn Fn(ExitReason) + Send + Sync>) -> Arc<Self> {
        Arc::new(Runtime {
            machine: std::sync::OnceLock::new(),
            state: AtomicU8::new(state as u8),
            started: std::time::Instant::now(),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            migrated: std::sync::atomic::AtomicBool::new(false),
            diff_base: std::sync::Mutex::new(crate::snapshot::DiffBase::default()),
            on_exit,
        })
    }

    /// Current lifecycle state.
    pub fn state(&self) -> Lifecycle {
        Lifecycle::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Sets the lifecycle state.
    pub fn set_state(&self, s: Lifecycle) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    fn machine(&self) -> Result<&Arc<Machine>, String> {
        self.machine.get().ok_or_else(|| {
            "no guest yet: this VMM is waiting for an incoming migration".to_string()
        })
    }

    fn snapshot(&self, req: &Value) -> Result<Value, String> {
        let to = req
            .get("to")
            .and_then(Value::as_str)
            .ok_or("snapshot needs \"to\": a directory")?;
        let diff = req.get("diff").and_then(Value::as_bool).unwrap_or(false);
        let m = self.machine()?.clone();
        let was_running = match self.state() {
            Lifecycle::Running => true,
            Lifecycle::Paused => false,
            s => return Err(format!("cannot snapshot while {}", s.name())),
        };
        if was_running {
            m.pause_all();
        }
        let mut base = self.diff_base.lock().unwrap_or_else(|p| p.into_inner());
        let r = crate::snapshot::write(&m, std::path::Path::new(to), diff, &mut base);
        drop(base);
        if was_running {
            m.resume_all();
        }
        let info = r.map_err(|e| format!("snapshot failed: {e}"))?;
        serde_json::to_value(info).map_err(|e| e.to_string())
    }

    fn migrate(&self, req: &Value) -> Result<Value, String> {
        let opts: MigrateOptions = serde_json::from_value(req.clone())
            .map_err(|e| format!("invalid migrate request: {e}"))?;
        let m = self.machine()?.clone();
        let before = match self.state.compare_exchange(
            Lifecycle::Running as u8,
            Lifecycle::Migrating as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Lifecycle::Running,
            Err(s) => {
                return Err(format!(
                    "cannot migrate while {}",
                    Lifecycle::from_u8(s).name()
                ))
            }
        };
        match crate::migration::source::migrate(&m, &opts) {
            Ok(summary) => {
                self.migrated.store(true, Ordering::SeqCst);
                serde_json::to_value(summary).map_err(|e| e.to_string())
            }
            Err(e) => {
                self.set_state(before);
                Err(format!("migration failed, guest still running here: {e}"))
            }
        }
    }

    fn info(&self) -> Value {
        let (vcpus, mib, kernel, dirty_log, dirty_rate) = match self.machine.get() {
            Some(m) => (
                u32::from(m.config().vcpus),
                m.config().memory >> 20,
                m.config()
                    .kernel
                    .as_ref()
                    .map(|k| k.display().to_string())
                    .unwrap_or_default(),
                if m.vm().manual_protect() {
                    "manual-protect"
                } else {
                    "plain"
                },
                m.dirty_pages_per_sec(),
            ),
            None => (0, 0, String::new(), "", 0),
        };
        json!({
            "state": self.state().name(),
            "vcpus": vcpus,
            "memory_mib": mib,
            "pid": std::process::id(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "kernel": kernel,
            "dirty_log": dirty_log,
            "dirty_pages_per_sec": dirty_rate,
        })
    }
}

impl Handler for Runtime {
    fn handle(&self, cmd: &str, req: &Value) -> Result<Value, String> {
        match cmd {
            "info" => Ok(self.info()),
            "pause" => {
                match self.state() {
                    Lifecycle::Running => {}
                    Lifecycle::Paused => return Ok(json!({})),
                    s => return Err(format!("cannot pause while {}", s.name())),
                }
                self.machine()?.pause_all();
                self.set_state(Lifecycle::Paused);
                Ok(json!({}))
            }
            "resume" => {
                match self.state() {
                    Lifecycle::Paused => {}
                    Lifecycle::Running => return Ok(json!({})),
                    s => return Err(format!("cannot resume while {}", s.name())),
                }
                self.machine()?.resume_all();
                self.set_state(Lifecycle::Running);
                Ok(json!({}))
            }
            "shutdown" => {
                if self.state() == Lifecycle::Migrating {
                    return Err("cannot shut down during an outgoing migration".into());
                }
                self.shutdown.store(true, Ordering::SeqCst);
                Ok(json!({}))
            }
            "migrate" => {
                // Migration restarts dirty tracking: the next diff snapshot needs a new base.
                self.diff_base.lock().unwrap_or_else(|p| p.into_inner()).last = None;
                self.migrate(req)
            }
            "snapshot" => self.snapshot(req),
            other => Err(format!(
                "unknown command '{other}': expected info, pause, resume, shutdown, snapshot or migrate"
            )),
        }
    }

    fn after_response(&self, cmd: &str) {
        if cmd == "migrate" && self.migrated.load(Ordering::SeqCst) {
            if let Some(m) = self.machine.get() {
                m.control().request_exit(ExitReason::MigratedAway);
            }
        }
        if cmd == "shutdown" && self.shutdown.load(Ordering::SeqCst) {
            match self.machine.get() {
                Some(m) => m.control().request_exit(ExitReason::PowerOff),
                None => (self.on_exit)(ExitReason::PowerOff),
            }
        }
    }
}
