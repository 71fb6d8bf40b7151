//! Run control shared by the vCPU threads and the rest of the VMM: pausing and resuming all
//! vCPUs, and recording why the VM ends.
//!
//! # How a pause works
//!
//! [`RunControl::pause`] sets the pause flag (an atomic the vCPU threads read before every
//! `KVM_RUN`), then sends each registered vCPU thread the kick signal exactly once and waits
//! on a condition variable until every running vCPU has parked. There is no re-kick loop:
//! one kick is enough because the signal handler ([`install_kick_handler`]) sets
//! `kvm_run.immediate_exit = 1` on the interrupted thread's own vCPU (the thread registers
//! it with [`set_kick_target`]). Whatever the thread was doing when the signal arrived:
//!
//! - inside `KVM_RUN`, running guest code or halted: the signal makes `KVM_RUN` return
//!   `EINTR`;
//! - in user space, between two `KVM_RUN`s (handling an exit, or about to enter): the next
//!   `KVM_RUN` sees `immediate_exit` and returns `EINTR` without running guest code, and the
//!   flag check before it sees the pause anyway (the flag is set before the signal is sent).
//!
//! A vCPU parks only at an instruction boundary. After a port-I/O or MMIO exit the
//! instruction is not finished until KVM is re-entered (KVM copies the data of an `in` or an
//! MMIO read into the guest's registers then, and string I/O continues), and that pending part
//! is not in any state user space can save. So a vCPU whose last exit was port I/O or MMIO
//! re-enters `KVM_RUN` with `immediate_exit = 1` when a pause is requested: KVM completes the
//! pending instruction and returns `EINTR` without executing another guest instruction (if
//! completing it needs another exit, as string I/O can, that exit is handled and the vCPU
//! re-enters again, still with `immediate_exit`). Only after that `EINTR` does the vCPU tell
//! KVM the guest was paused (`KVM_KVMCLOCK_CTRL`, so the guest's soft-lockup watchdog does not
//! fire after a long pause) and park in [`RunControl::park`]. State is saved only once
//! [`RunControl::pause`] has returned, i.e. after every vCPU parked.
//!
//! Exits ([`RunControl::request_exit`]) use the same kick: the vCPU threads see the exit
//! reason at their next check and leave their loops.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Mirror of `State::pause_requested`, read by the vCPU threads before every KVM_RUN
    /// without taking the lock.
    pause_flag: AtomicBool,
    /// Mirror of `State::exit.is_some()`.
    exit_flag: AtomicBool,
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// The `immediate_exit` byte of the `kvm_run` area of the vCPU this thread runs (null on
    /// other threads). Const-initialised with no destructor, so the signal handler may read it.
    static KICK_TARGET: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Registers `immediate_exit` (a pointer to the `immediate_exit` byte of the `kvm_run` area of
/// the vCPU the calling thread runs) as the byte the kick signal sets on this thread; null
/// unregisters it.
///
/// # Safety
///
/// Until the calling thread calls this again with null, `immediate_exit` must stay valid for
/// writes (the vCPU fd, and with it its `kvm_run` mapping, must outlive the registration).
pub unsafe fn set_kick_target(immediate_exit: *mut u8) {
    KICK_TARGET.with(|t| t.set(immediate_exit));
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: read a const-initialised thread local, write a byte.
    KICK_TARGET.with(|t| {
        let p = t.get();
        if !p.is_null() {
            // SAFETY: set_kick_target's contract keeps p valid for writes while registered;
            // the handler runs on the thread that registered it. A volatile write because KVM
            // reads the byte from the shared kvm_run mapping.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// Installs the handler for the kick signal (it sets `immediate_exit` on the interrupted
/// thread's vCPU, see the module docs); call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
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

    /// Whether a pause is requested (read by the vCPU threads before every KVM_RUN).
    pub fn pause_requested(&self) -> bool {
        self.pause_flag.load(Ordering::SeqCst)
    }

    /// Whether the VM is ending.
    pub fn exit_requested(&self) -> bool {
        self.exit_flag.load(Ordering::SeqCst)
    }

    /// Called by a vCPU thread at an instruction boundary once it saw
    /// [`RunControl::pause_requested`]: blocks while the pause lasts; returns false if the VM
    /// is ending and the thread should exit.
    pub fn park(&self) -> bool {
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

    /// Stops every vCPU at an instruction boundary, outside KVM_RUN; returns once all are
    /// parked (or the VM ended). Each vCPU thread is kicked once (see the module docs).
    pub fn pause(&self) {
        let mut s = self.lock();
        if !s.pause_requested {
            s.pause_requested = true;
            self.pause_flag.store(true, Ordering::SeqCst);
            self.kick_all(&s);
        }
        while s.paused < s.running && s.exit.is_none() {
            self.changed.wait(&mut s);
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.pause_requested = false;
        self.pause_flag.store(false, Ordering::SeqCst);
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
            self.exit_flag.store(true, Ordering::SeqCst);
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
        // request_exit kicked every thread once; they leave at their next check.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while s.running > 0 {
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.exit.clone().unwrap_or(ExitReason::PowerOff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Threads standing in for vCPU threads: check the flags the way `vcpu::run_loop` does,
    /// count their steps ("guest instructions").
    fn spawn(
        ctl: &Arc<RunControl>,
        steps: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..3)
            .map(|_| {
                let (ctl, steps) = (ctl.clone(), steps.clone());
                std::thread::spawn(move || {
                    ctl.register_vcpu_thread();
                    while !ctl.exit_requested() {
                        if ctl.pause_requested() {
                            if !ctl.park() {
                                break;
                            }
                            continue;
                        }
                        steps.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    ctl.vcpu_thread_done();
                })
            })
            .collect()
    }

    #[test]
    fn pause_returns_once_every_thread_parked_and_resume_releases_them() {
        install_kick_handler().unwrap();
        let ctl = Arc::new(RunControl::default());
        let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = spawn(&ctl, &steps);
        while ctl.lock().running < 3 {
            std::thread::yield_now();
        }
        for _ in 0..200 {
            ctl.pause();
            assert_eq!(
                ctl.lock().paused,
                3,
                "pause returned before every thread parked"
            );
            let before = steps.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(200));
            assert_eq!(
                steps.load(Ordering::SeqCst),
                before,
                "a thread ran while paused"
            );
            ctl.resume();
        }
        let before = steps.load(Ordering::SeqCst);
        while steps.load(Ordering::SeqCst) == before {
            std::thread::yield_now();
        }
        ctl.pause();
        ctl.request_exit(ExitReason::PowerOff);
        assert_eq!(ctl.wait_exit(), ExitReason::PowerOff);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ctl.lock().running, 0);
    }
}
