//! Run control shared by the vCPU threads and the rest of the VMM: pausing and resuming all
//! vCPUs (kicking them out of KVM_RUN with a signal), and recording why the VM ends.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why the VM stopped; maps to the process exit status documented in `vmm/API.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off, or the API asked for shutdown.
    PowerOff,
    /// The guest was migrated to a destination that confirmed it is running.
    MigratedAway,
    /// The guest asked for a reset.
    Reset,
    /// The guest triple-faulted.
    TripleFault,
    /// KVM reported an internal error or an exit the VMM does not handle.
    InternalError(String),
    /// The VMM itself failed.
    Error(String),
}

impl ExitReason {
    /// Process exit status for this reason.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::MigratedAway => 0,
            ExitReason::Error(_) => 1,
            ExitReason::Reset => 10,
            ExitReason::TripleFault => 11,
            ExitReason::InternalError(_) => 12,
        }
    }

    /// One line for the user.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::PowerOff => "guest powered off".into(),
            ExitReason::MigratedAway => "guest migrated to the destination".into(),
            ExitReason::Reset => "guest requested a reset".into(),
            ExitReason::TripleFault => "guest triple fault (KVM_EXIT_SHUTDOWN)".into(),
            ExitReason::InternalError(s) => format!("KVM internal error: {s}"),
            ExitReason::Error(s) => format!("VMM error: {s}"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pause_requested: bool,
    paused: usize,
    exit: Option<ExitReason>,
    threads: Vec<libc::pthread_t>,
    running: usize,
}

/// Shared pause/exit state of a VM's vCPU threads.
#[derive(Debug, Default)]
pub struct RunControl {
    state: Mutex<State>,
    changed: Condvar,
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
}

impl RunControl {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Registers the calling thread as a vCPU thread.
    pub fn register_vcpu_thread(&self) {
        let mut s = self.lock();
        // SAFETY: pthread_self has no preconditions.
        s.threads.push(unsafe { libc::pthread_self() });
        s.running += 1;
        self.changed.notify_all();
    }

    /// Marks a vCPU thread as gone.
    pub fn vcpu_thread_done(&self) {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        s.threads.retain(|t| *t != me);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before each KVM_RUN: blocks while a pause is requested;
    /// returns false if the VM is ending and the thread should exit.
    pub fn checkpoint(&self) -> bool {
        let mut s = self.lock();
        if s.pause_requested && s.exit.is_none() {
            s.paused += 1;
            self.changed.notify_all();
            while s.pause_requested && s.exit.is_none() {
                self.changed.wait(&mut s);
            }
            s.paused -= 1;
            self.changed.notify_all();
        }
        s.exit.is_none()
    }

    fn kick_all(&self, s: &State) {
        for t in &s.threads {
            // SAFETY: t is a live thread registered by register_vcpu_thread and removed before
            // it exits (vcpu_thread_done runs under the same lock we hold); the signal has a
            // handler installed by install_kick_handler.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Stops every vCPU outside KVM_RUN; returns once all are parked (or the VM ended).
    pub fn pause(&self) {
        let mut s = self.lock();
        s.pause_requested = true;
        while s.paused < s.running && s.exit.is_none() {
            self.kick_all(&s);
            self.changed.wait_for(&mut s, Duration::from_micros(500));
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.pause_requested = false;
        self.changed.notify_all();
    }

    /// Whether a pause is in effect.
    pub fn is_paused(&self) -> bool {
        self.lock().pause_requested
    }

    /// Ends the VM with `reason` (the first reason wins) and kicks every vCPU.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut s = self.lock();
        if s.exit.is_none() {
            s.exit = Some(reason);
        }
        self.kick_all(&s);
        self.changed.notify_all();
    }

    /// The exit reason, if the VM is ending.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.lock().exit.clone()
    }

    /// Blocks until an exit is requested, then until every vCPU thread has left (bounded).
    pub fn wait_exit(&self) -> ExitReason {
        let mut s = self.lock();
        while s.exit.is_none() {
            self.changed.wait(&mut s);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while s.running > 0 && std::time::Instant::now() < deadline {
            self.kick_all(&s);
            self.changed.wait_for(&mut s, Duration::from_millis(5));
        }
        s.exit.clone().unwrap_or(ExitReason::PowerOff)
    }
}
