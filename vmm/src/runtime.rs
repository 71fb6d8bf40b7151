//! The VMM runtime behind the control API: answers `info`, `pause`, `resume`, `shutdown` (and,
//! from the migration and snapshot modules, `snapshot`, `migrate` and `cancel`) for one
//! machine.
//!
//! An outgoing migration runs on the thread of the connection that asked for it; `info`,
//! `cancel` and `shutdown` are served meanwhile on other connections. Its outcome:
//! - confirmed by the destination (the commit point): this VMM exits with `MigratedAway`
//!   right after writing the reply, and within [`COMMIT_GRACE`] even if the reply cannot be
//!   written or nobody reads it;
//! - in doubt (final frame sent, no confirmation): the vCPUs stay paused, `info` says
//!   `indoubt`, and only `resume` and `shutdown` are accepted;
//! - any other failure, or `cancel`: the guest runs here again.

use crate::api::Handler;
use crate::control::ExitReason;
use crate::machine::Machine;
use crate::migration::options::MigrateOptions;
use crate::migration::MigrationError;
use novacron_migration::session::{Cancel, SessionError};
pub use novacron_vmm_api::protocol::Lifecycle;
use novacron_vmm_api::protocol::{
    DirtyLog, Empty, Info, Reply, Request, SnapshotKind, SnapshotReply,
};
use parking_lot::{Condvar, Mutex};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// `Lifecycle` as stored in an atomic.
fn to_u8(s: Lifecycle) -> u8 {
    match s {
        Lifecycle::Running => 0,
        Lifecycle::Paused => 1,
        Lifecycle::Incoming => 2,
        Lifecycle::Migrating => 3,
        Lifecycle::InDoubt => 4,
    }
}

fn from_u8(v: u8) -> Lifecycle {
    match v {
        1 => Lifecycle::Paused,
        2 => Lifecycle::Incoming,
        3 => Lifecycle::Migrating,
        4 => Lifecycle::InDoubt,
        _ => Lifecycle::Running,
    }
}

/// After the destination confirmed, the longest the VMM waits for the `migrate` reply to be
/// written before it exits anyway.
pub const COMMIT_GRACE: Duration = Duration::from_secs(2);

/// How long `cancel` waits for the engine to notice the cancellation before it also shuts
/// the migration connection down.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Backstop for the migration's own `timeout_s` (enforced by the engine): a migration still
/// running this long after its timeout is cancelled by the VMM (unless it auto-converges).
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// How long `cancel` waits in all for the migration to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The outgoing migration in progress.
struct Outgoing {
    cancel: Cancel,
    conn: Option<TcpStream>,
}

/// How the latest outgoing migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The guest runs here again.
    Resumed,
    /// The destination confirmed: this VMM ends.
    Committed,
    /// No confirmation: the vCPUs stay paused.
    InDoubt,
}

/// What stopping the outgoing migration found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// No outgoing migration was running.
    NoneRunning,
    /// It ended, this way.
    Ended(Outcome),
    /// It did not stop in time.
    Stuck,
}

#[derive(Default)]
struct MigrationSlot {
    current: Option<Outgoing>,
    last: Option<Outcome>,
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
    /// The outgoing migration, if one runs, and how the latest one ended.
    outgoing: Mutex<MigrationSlot>,
    /// Signalled when an outgoing migration ends.
    outgoing_done: Condvar,
    /// Exit hook: ends the process with a reason (used when no guest runs yet: no machine, or
    /// a destination waiting for its migration).
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
            outgoing: Mutex::new(MigrationSlot::default()),
            outgoing_done: Condvar::new(),
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
        if to.as_os_str().is_empty() || to.to_str().is_some_and(|s| s.trim().is_empty()) {
            return Err(
                "snapshot needs a directory to write: \"to\" is empty (give a path, e.g. /var/lib/novacron/snap1)"
                    .into(),
            );
        }
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
            disks: info.disks,
        })
    }

    fn migrate(&self, opts: &MigrateOptions) -> Result<Reply, String> {
        let m = self.machine()?.clone();
        // Bad options are answered at once; the guest never pauses for them.
        crate::migration::options::validate(opts, m.config().memory)
            .map_err(|e| format!("migration refused, guest still running here: {e}"))?;
        let cancel = Cancel::new();
        {
            // Under the slot's lock, so `cancel` sees either no migration or this one.
            let mut slot = self.outgoing.lock();
            if let Err(s) = self.state.compare_exchange(
                to_u8(Lifecycle::Running),
                to_u8(Lifecycle::Migrating),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                return Err(format!("cannot migrate while {}", from_u8(s)));
            }
            slot.current = Some(Outgoing {
                cancel: cancel.clone(),
                conn: None,
            });
        }
        let timed_out = AtomicBool::new(false);
        let deadline = Duration::from_secs(opts.timeout_s)
            .checked_add(TIMEOUT_GRACE)
            .and_then(|d| Instant::now().checked_add(d))
            .filter(|_| !opts.auto_converge);
        std::thread::scope(|s| {
            if let Some(deadline) = deadline {
                let fired = &timed_out;
                s.spawn(move || self.watchdog(deadline, fired));
            }
            let r = crate::migration::source::migrate(&m, opts, &cancel, &|conn| {
                if let Some(o) = self.outgoing.lock().current.as_mut() {
                    o.conn = conn.try_clone().ok();
                }
            });
            let (outcome, reply) = self.outcome(&m, r, &cancel, &timed_out, opts.timeout_s);
            let mut slot = self.outgoing.lock();
            slot.current = None;
            slot.last = Some(outcome);
            self.outgoing_done.notify_all();
            reply
        })
    }

    /// Waits until the outgoing migration ends or `deadline` passes; then stops it.
    fn watchdog(&self, deadline: Instant, fired: &AtomicBool) {
        let mut slot = self.outgoing.lock();
        while slot.current.is_some() {
            if self
                .outgoing_done
                .wait_until(&mut slot, deadline)
                .timed_out()
                && slot.current.is_some()
            {
                fired.store(true, Ordering::SeqCst);
                drop(slot);
                tracing::warn!("outgoing migration still running past its timeout: cancelling it");
                self.stop_migration();
                return;
            }
        }
    }

    /// What the migration's result means for this VMM: its outcome and the `migrate` reply.
    fn outcome(
        &self,
        m: &Arc<Machine>,
        r: Result<crate::migration::options::MigrationSummary, MigrationError>,
        cancel: &Cancel,
        timed_out: &AtomicBool,
        timeout_s: u64,
    ) -> (Outcome, Result<Reply, String>) {
        match r {
            Ok(summary) => {
                // The commit point: the destination runs the guest. End here whatever
                // happens to the reply.
                self.migrated.store(true, Ordering::SeqCst);
                let ctl = m.control().clone();
                let _ = std::thread::Builder::new()
                    .name("commit".into())
                    .spawn(move || {
                        std::thread::sleep(COMMIT_GRACE);
                        ctl.request_exit(ExitReason::MigratedAway);
                    });
                (Outcome::Committed, Ok(Reply::Migrated(Box::new(summary))))
            }
            Err(MigrationError::Session(e @ SessionError::InDoubt(_))) => {
                self.set_state(Lifecycle::InDoubt);
                (
                    Outcome::InDoubt,
                    Err(format!(
                        "migration in doubt: {e}. The vCPUs stay paused here; send `resume` if the destination does not run the guest, or `shutdown` if it does"
                    )),
                )
            }
            Err(e) => {
                self.set_state(Lifecycle::Running);
                let what = if timed_out.load(Ordering::SeqCst) {
                    format!("migration timed out (still running {timeout_s} s after it started) and was cancelled")
                } else if cancel.is_cancelled() {
                    "migration cancelled".to_string()
                } else {
                    "migration failed".to_string()
                };
                (
                    Outcome::Resumed,
                    Err(format!("{what}, guest still running here: {e}")),
                )
            }
        }
    }

    /// Stops the outgoing migration, if one runs, and waits until it ended.
    fn stop_migration(&self) -> Stop {
        let mut slot = self.outgoing.lock();
        let Some(o) = slot.current.as_ref() else {
            return Stop::NoneRunning;
        };
        o.cancel.cancel();
        let start = Instant::now();
        let mut shut = false;
        while slot.current.is_some() {
            if !shut && start.elapsed() >= CANCEL_GRACE {
                // The engine did not notice in time (blocked in a write or a long sleep):
                // break its connection. Before the final frame that fails the migration and
                // resumes the guest; after it the engine reports the migration in doubt.
                if let Some(c) = slot.current.as_ref().and_then(|o| o.conn.as_ref()) {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                shut = true;
            }
            if start.elapsed() >= CANCEL_WAIT {
                return Stop::Stuck;
            }
            self.outgoing_done
                .wait_for(&mut slot, Duration::from_millis(100));
        }
        slot.last.map_or(Stop::NoneRunning, Stop::Ended)
    }

    fn cancel(&self) -> Result<Reply, String> {
        match self.stop_migration() {
            Stop::Ended(Outcome::Resumed) => Ok(Reply::Empty(Empty {})),
            Stop::Ended(Outcome::Committed) => Err(
                "too late to cancel: the destination had already confirmed; the guest runs there and this VMM exits"
                    .into(),
            ),
            Stop::Ended(Outcome::InDoubt) => Err(
                "cancel came after the final frame and the destination never confirmed: the migration is in doubt, the vCPUs stay paused here; send `resume` if the destination does not run the guest, or `shutdown` if it does"
                    .into(),
            ),
            Stop::NoneRunning => Err(format!(
                "no outgoing migration to cancel (the VMM is {})",
                self.state()
            )),
            Stop::Stuck => Err(format!(
                "the migration did not stop within {} s of the cancel request",
                CANCEL_WAIT.as_secs()
            )),
        }
    }

    fn shutdown(&self) -> Result<Reply, String> {
        match self.stop_migration() {
            // The VMM is exiting as migrated away; nothing more to do.
            Stop::Ended(Outcome::Committed) => return Ok(Reply::Empty(Empty {})),
            Stop::Stuck => {
                return Err(format!(
                    "cannot shut down: the outgoing migration did not stop within {} s",
                    CANCEL_WAIT.as_secs()
                ))
            }
            Stop::Ended(Outcome::Resumed | Outcome::InDoubt) | Stop::NoneRunning => {}
        }
        self.shutdown.store(true, Ordering::SeqCst);
        Ok(Reply::Empty(Empty {}))
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
            Lifecycle::InDoubt => {
                return Err(
                    "the migration is in doubt and the vCPUs are already paused; only `resume` or `shutdown` are accepted"
                        .into(),
                )
            }
            s => return Err(format!("cannot pause while {s}")),
        }
        self.machine()?.pause_all();
        self.set_state(Lifecycle::Paused);
        Ok(Reply::Empty(Empty {}))
    }

    fn resume(&self) -> Result<Reply, String> {
        match self.state() {
            Lifecycle::Paused => {}
            Lifecycle::InDoubt => {
                // The operator knows the destination does not run the guest.
                let m = self.machine()?;
                if let Err(e) = m.vm().set_dirty_logging(false) {
                    tracing::warn!(
                        "cannot turn dirty logging off after an in-doubt migration: {e}"
                    );
                }
                m.resume_all();
                self.set_state(Lifecycle::Running);
                return Ok(Reply::Empty(Empty {}));
            }
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
            Request::Shutdown => self.shutdown(),
            Request::Migrate(_) | Request::Snapshot { .. } if self.state() == Lifecycle::InDoubt => {
                Err("the last migration is in doubt (the destination may run the guest): only `resume` (it does not) or `shutdown` (it does) are accepted".into())
            }
            Request::Migrate(opts) => {
                // Migration restarts dirty tracking: the next diff snapshot needs a new base.
                self.diff_base.lock().last = None;
                self.migrate(opts)
            }
            Request::Snapshot { to, diff } => self.snapshot(to, *diff).map(Reply::Snapshot),
            Request::Cancel => self.cancel(),
            Request::TestHook(hook) => crate::sandbox::hooks::run(hook),
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
                // A destination still waiting runs no vCPUs: nothing would see the request.
                Some(m) if self.state() != Lifecycle::Incoming => {
                    m.control().request_exit(ExitReason::PowerOff)
                }
                _ => (self.on_exit)(ExitReason::PowerOff),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;
    use std::sync::Arc;

    /// A runtime with no machine in `state`, whose exit hook records the status it was given.
    fn runtime(state: Lifecycle) -> (Arc<Runtime>, Arc<AtomicI32>) {
        let exited = Arc::new(AtomicI32::new(-1));
        let e = exited.clone();
        let rt = Runtime::new(
            state,
            Box::new(move |r| e.store(r.code(), Ordering::SeqCst)),
        );
        (rt, exited)
    }

    fn refused(rt: &Runtime, req: Request) -> String {
        match rt.handle(&req) {
            Err(e) => e,
            Ok(r) => panic!("{} accepted: {r:?}", req.name()),
        }
    }

    #[test]
    fn in_doubt_accepts_only_info_resume_and_shutdown() {
        let (rt, exited) = runtime(Lifecycle::InDoubt);
        match rt.handle(&Request::Info) {
            Ok(Reply::Info(i)) => assert_eq!(i.state, Lifecycle::InDoubt),
            other => panic!("info: {other:?}"),
        }
        assert!(refused(&rt, Request::Pause).contains("in doubt"));
        let migrate = Request::Migrate(MigrateOptions {
            to: "tcp:127.0.0.1:1".into(),
            ..MigrateOptions::default()
        });
        assert!(refused(&rt, migrate).contains("in doubt"));
        let snap = Request::Snapshot {
            to: "/tmp/x".into(),
            diff: false,
        };
        assert!(refused(&rt, snap).contains("in doubt"));
        assert!(refused(&rt, Request::Cancel).contains("no outgoing migration"));
        assert!(rt.handle(&Request::Shutdown).is_ok());
        rt.after_response(&Request::Shutdown);
        assert_eq!(
            exited.load(Ordering::SeqCst),
            0,
            "shutdown ends the process with 0"
        );
    }

    #[test]
    fn empty_snapshot_path_is_refused_before_anything_else() {
        let (rt, _) = runtime(Lifecycle::Running);
        for to in ["", "  "] {
            let req = Request::Snapshot {
                to: to.into(),
                diff: false,
            };
            assert!(refused(&rt, req).contains("\"to\" is empty"));
        }
    }

    #[test]
    fn shutdown_of_a_waiting_destination_exits() {
        let (rt, exited) = runtime(Lifecycle::Incoming);
        assert!(rt.handle(&Request::Shutdown).is_ok());
        rt.after_response(&Request::Shutdown);
        assert_eq!(exited.load(Ordering::SeqCst), 0);
    }
}
