//! The VMM's seccomp sandbox: one BPF filter per kind of thread, each allowing only the
//! system calls (and, for `ioctl`, `fcntl`, `socket` and `prctl`, the arguments) that kind of
//! thread makes. A thread installs its own filter when it starts its work, before it touches
//! anything a guest or a peer controls; a call outside the filter kills the whole process
//! with `SIGSYS`, which the agent reports as a sandbox violation.
//!
//! Filters stack: a thread started after its parent installed a filter runs under both, so
//! the effective rule set is the intersection. Threads spawned by the control API (the
//! migration sender, its watchdog, the encoder workers) therefore run under the API filter
//! plus their own. The main thread installs its filter before it reads an incoming
//! migration stream or a snapshot (then the vCPUs and a restore's API listener start under
//! it, so it allows what they need and is the broadest), or, for a fresh boot, once the
//! vCPUs run: before then it reads nothing a guest or a peer wrote.
//!
//! The `novacron-vmm` binary turns the sandbox on ([`enable`]) unless it runs with
//! `--no-seccomp`, which exists for debugging (it says so on stderr) and is never what the
//! agent runs. Library users (unit tests that drive a machine in-process) run unfiltered
//! unless they enable it.

mod filters;
pub mod hooks;
mod ioctls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use novacron_migration::threads::ThreadRole;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The kinds of thread a VMM runs; each has its own filter. The discriminants are the
/// positions in [`ThreadKind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once set-up is done: boots, restores or receives the guest, then
    /// waits for the VM to end.
    Main,
    /// A vCPU thread: `KVM_RUN` and the device emulation of its exits.
    Vcpu,
    /// The virtio event loop (and the serial console's stdin reader).
    Device,
    /// The control API listener and its connections, which run snapshots and the migration
    /// sender.
    Api,
    /// A migration encoder worker: compresses pages handed to it in memory.
    Encoder,
    /// The background disk writeback of a disk migration.
    DiskWriteback,
}

impl ThreadKind {
    /// Every kind, for building and testing all filters.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Api,
        ThreadKind::Encoder,
        ThreadKind::DiskWriteback,
    ];

    /// The kind's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Api => "api",
            ThreadKind::Encoder => "encoder",
            ThreadKind::DiskWriteback => "disk-writeback",
        }
    }
}

/// Errors of the sandbox.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    /// A filter's rules could not be compiled (a bug in the rule tables).
    #[error("seccomp filter for {kind} threads does not compile: {reason}")]
    Compile {
        /// Thread kind.
        kind: &'static str,
        /// seccompiler's message.
        reason: String,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter for {kind} threads: {reason} (run with --no-seccomp only to debug)")]
    Install {
        /// Thread kind.
        kind: &'static str,
        /// seccompiler's message.
        reason: String,
    },
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static LOG_ONLY: AtomicBool = AtomicBool::new(false);
static PROGRAMS: OnceLock<Result<Programs, SandboxError>> = OnceLock::new();

/// The compiled filters.
struct Programs {
    /// One per thread kind, in the order of [`ThreadKind::ALL`].
    kinds: Vec<BpfProgram>,
    /// Answers `clone3` with `ENOSYS`, so that the C library starts threads with `clone`,
    /// whose flags a filter can check (`clone3` passes them behind a pointer). Stacked under
    /// the kind's filter on threads that start threads: the kernel takes the most
    /// restrictive answer of all filters, so `clone3` fails and `clone` is allowed only with
    /// `CLONE_THREAD`, i.e. no new process.
    no_clone3: BpfProgram,
}

/// Turns the sandbox on for this process: compiles every filter (so a bad rule table fails
/// the VMM before any guest runs, not on its first migration) and makes [`install`] apply
/// them. Also makes the threads of the migration engine install theirs.
pub fn enable(on_violation: Violation) -> Result<(), SandboxError> {
    if on_violation == Violation::Log {
        LOG_ONLY.store(true, Ordering::SeqCst);
        eprintln!(
            "novacron-vmm: WARNING: --seccomp-log: system calls outside the filters are only logged (kernel log, type=1326), not stopped. Use this only to write filters."
        );
    }
    if let Err(e) = programs() {
        return Err(e.clone());
    }
    ENABLED.store(true, Ordering::SeqCst);
    novacron_migration::threads::set_start_hook(|role| {
        install_or_exit(match role {
            ThreadRole::Encoder => ThreadKind::Encoder,
            ThreadRole::DiskWriteback => ThreadKind::DiskWriteback,
        })
    });
    Ok(())
}

/// What a call outside the filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Kill the process with `SIGSYS` (the default, and what the agent runs).
    Kill,
    /// Allow the call and log it to the kernel log (`--seccomp-log`, to write filters).
    Log,
}

/// Says on stderr that this process runs without filters (`--no-seccomp`).
pub fn warn_disabled() {
    eprintln!(
        "novacron-vmm: WARNING: seccomp filters are OFF (--no-seccomp): a guest that escapes into this process may make any system call. Use this only to debug."
    );
}

/// Whether [`install`] applies filters.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

fn programs() -> &'static Result<Programs, SandboxError> {
    PROGRAMS.get_or_init(|| {
        let kinds = ThreadKind::ALL
            .into_iter()
            .map(compile)
            .collect::<Result<_, _>>()?;
        Ok(Programs {
            kinds,
            no_clone3: compile_no_clone3()?,
        })
    })
}

fn compile_no_clone3() -> Result<BpfProgram, SandboxError> {
    let err = |e: seccompiler::BackendError| SandboxError::Compile {
        kind: "clone3",
        reason: e.to_string(),
    };
    let rules = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    filter.try_into().map_err(err)
}

/// Compiles the filter of `kind`.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SandboxError> {
    let err = |e: seccompiler::BackendError| SandboxError::Compile {
        kind: kind.name(),
        reason: e.to_string(),
    };
    let rules = filters::rules(kind).map_err(err)?;
    let mismatch = if LOG_ONLY.load(Ordering::SeqCst) {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(err)?;
    filter.try_into().map_err(err)
}

/// Installs the filter of `kind` on the calling thread (and sets `no_new_privs`, which a
/// filter needs). Does nothing unless [`enable`] ran.
pub fn install(kind: ThreadKind) -> Result<(), SandboxError> {
    if !enabled() {
        return Ok(());
    }
    let progs = programs().as_ref().map_err(Clone::clone)?;
    let prog = &progs.kinds[kind as usize];
    let failed = |e: seccompiler::Error| SandboxError::Install {
        kind: kind.name(),
        reason: e.to_string(),
    };
    // First: the kind's own filter may not allow installing another one.
    if matches!(kind, ThreadKind::Main | ThreadKind::Api) {
        seccompiler::apply_filter(&progs.no_clone3).map_err(failed)?;
    }
    seccompiler::apply_filter(prog).map_err(failed)
}

/// Installs the filter of `kind` for a thread that cannot report an error: on failure the
/// VMM exits, since running unfiltered is not an option once the sandbox is on.
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        eprintln!("novacron-vmm: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests;
