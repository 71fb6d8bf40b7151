//! The rule table of each thread kind: which system calls it may make, and for the calls
//! whose arguments select very different operations (`ioctl`, `fcntl`, `socket`, `prctl`,
//! `clone`, `mmap`, `mprotect`) which arguments.
//!
//! Every thread shares [`BASE`]: memory, futexes, time, signals, thread exit, and writing
//! the logs and the serial console. The rest is by kind, from the sets below ([`SPAWN`],
//! [`FILES`], [`SOCKETS`], [`EVENTS`]) and the argument rules (`*_rules`); [`rules`] says
//! what each kind does with what it adds.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

use super::ioctls::*;
use super::ThreadKind;

/// Syscall number -> rules (an empty list allows the call with any arguments).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What every thread may do.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_sched_getaffinity,
];

/// Threads that start other threads (a spawned thread sets itself up with these too).
const SPAWN: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    // Installing the started thread's own, narrower filter.
    libc::SYS_seccomp,
];

/// Files: snapshots, restores, disk copies of a migration, the API socket's file.
const FILES: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_getdents64,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_umask,
    libc::SYS_dup,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    // The standard library's path calls on x86_64 use the classic numbers.
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_readlink,
    libc::SYS_chmod,
    libc::SYS_access,
    libc::SYS_faccessat,
    // Finding the resident pages of a mapping (sparse snapshots and migration passes).
    libc::SYS_mincore,
];

/// Sockets: the control API (unix) and migration streams (TCP).
const SOCKETS: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// Waiting on event sources: the virtio event loop's epoll set and its eventfds.
const EVENTS: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

/// Pausing vCPUs: the kick signal goes to each vCPU thread, with `tgkill` restricted to
/// this process's own threads ([`kick_rules`]).
fn kick_rules(r: &mut Rules) -> Result<(), BackendError> {
    // The filters are compiled inside the process they guard: this is its own pid.
    one_of(r, libc::SYS_tgkill, 0, [u64::from(std::process::id())])
}

/// ioctls on the VM's fd that run a migration, a snapshot or a restore.
fn vm_ioctls() -> Vec<u64> {
    vec![
        KVM_CHECK_EXTENSION(),
        KVM_GET_DIRTY_LOG(),
        KVM_CLEAR_DIRTY_LOG(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_ENABLE_CAP(),
        KVM_GET_CLOCK(),
        KVM_SET_CLOCK(),
        KVM_GET_IRQCHIP(),
        KVM_SET_IRQCHIP(),
        KVM_GET_PIT2(),
        KVM_SET_PIT2(),
        KVM_IRQ_LINE(),
        KVM_IRQ_LINE_STATUS(),
    ]
}

/// ioctls on a vCPU's fd: running it, and saving or restoring its state.
fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_GET_FPU(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_GET_CPUID2(),
        KVM_SET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_SET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XSAVE2(),
        KVM_SET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_SET_XCRS(),
        KVM_GET_TSC_KHZ(),
        KVM_SET_TSC_KHZ(),
        KVM_KVMCLOCK_CTRL(),
    ]
}

/// ioctls of the standard library on sockets and terminals.
fn std_ioctls() -> Vec<u64> {
    vec![TCGETS, FIONBIO, FIOCLEX]
}

/// The rules of `kind`.
pub fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    allow(&mut r, BASE);
    memory_rules(&mut r)?;
    prctl_rules(&mut r, kind)?;
    match kind {
        ThreadKind::Main | ThreadKind::Api => {
            // Api: control connections, snapshots, the migration sender and its helpers.
            // Main: boots, restores or receives the guest, starts the vCPUs (and the API
            // listener of a restore), then waits: the union of what those threads do.
            for set in [SPAWN, FILES, SOCKETS, EVENTS] {
                allow(&mut r, set);
            }
            if kind == ThreadKind::Main {
                // The vCPU kick handler is installed when the vCPUs start.
                allow(&mut r, &[libc::SYS_rt_sigaction]);
            }
            kick_rules(&mut r)?;
            clone_rules(&mut r)?;
            fcntl_rules(&mut r)?;
            socket_rules(&mut r, &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6])?;
        }
        ThreadKind::Vcpu => {
            // KVM_RUN and its exits: device registers, interrupts, the serial console; a
            // guest power-off or reset kicks the other vCPUs.
            allow(&mut r, EVENTS);
            kick_rules(&mut r)?;
            fcntl_rules(&mut r)?;
        }
        ThreadKind::Device => {
            // The virtio event loop: queue kicks, disk reads and writes, tap frames.
            allow(&mut r, EVENTS);
            allow(
                &mut r,
                &[
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                    libc::SYS_fallocate,
                    libc::SYS_lseek,
                    libc::SYS_fstat,
                    libc::SYS_statx,
                ],
            );
        }
        ThreadKind::Encoder => {
            // Pages in, encoded batches out, through channels: memory and futexes only.
        }
        ThreadKind::DiskWriteback => {
            allow(&mut r, &[libc::SYS_fdatasync, libc::SYS_fsync]);
            fcntl_rules(&mut r)?;
        }
    }
    let io = ioctls(kind);
    if !io.is_empty() {
        ioctl_rules(&mut r, &io)?;
    }
    Ok(r)
}

/// The ioctl requests `kind` may make.
pub fn ioctls(kind: ThreadKind) -> Vec<u64> {
    match kind {
        // Main: restores and receives (the state of the VM and every vCPU), and runs what
        // the vCPUs run. Api: snapshots and the migration sender, the same state.
        ThreadKind::Main | ThreadKind::Api => {
            // vCPU requests first: KVM_RUN is the hot one (rules are checked in order).
            let mut io = vcpu_ioctls();
            io.extend(vm_ioctls());
            io.extend(std_ioctls());
            io.push(FICLONE());
            io
        }
        ThreadKind::Vcpu => {
            let mut io = vcpu_ioctls();
            io.extend([KVM_IRQ_LINE(), KVM_IRQ_LINE_STATUS()]);
            io
        }
        ThreadKind::Device => vec![KVM_IRQ_LINE(), KVM_IRQ_LINE_STATUS(), TCGETS],
        ThreadKind::Encoder | ThreadKind::DiskWriteback => Vec::new(),
    }
}

fn allow(r: &mut Rules, calls: &[i64]) {
    for &c in calls {
        r.insert(c, Vec::new());
    }
}

fn eq(arg: u8, value: u64) -> Result<Cond, BackendError> {
    Cond::new(arg, Len::Dword, Op::Eq, value)
}

fn one_of(
    r: &mut Rules,
    call: i64,
    arg: u8,
    values: impl IntoIterator<Item = u64>,
) -> Result<(), BackendError> {
    let rules = values
        .into_iter()
        .map(|v| SeccompRule::new(vec![eq(arg, v)?]))
        .collect::<Result<Vec<_>, _>>()?;
    r.insert(call, rules);
    Ok(())
}

/// Anonymous and file mappings, never executable: a guest that took over the process
/// cannot map new code.
fn memory_rules(r: &mut Rules) -> Result<(), BackendError> {
    let no_exec = |arg| {
        SeccompRule::new(vec![Cond::new(
            arg,
            Len::Dword,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])
    };
    r.insert(libc::SYS_mmap, vec![no_exec(2)?]);
    r.insert(libc::SYS_mprotect, vec![no_exec(2)?]);
    Ok(())
}

/// Naming the thread (the standard library does it as a thread starts), and the
/// `no_new_privs` bit a thread sets before installing its own filter.
fn prctl_rules(r: &mut Rules, kind: ThreadKind) -> Result<(), BackendError> {
    let mut ops = vec![libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64];
    if matches!(kind, ThreadKind::Main | ThreadKind::Api) {
        ops.push(libc::PR_SET_NO_NEW_PRIVS as u64);
    }
    one_of(r, libc::SYS_prctl, 0, ops)
}

/// `clone` only for threads (with `CLONE_THREAD`): no new processes.
fn clone_rules(r: &mut Rules) -> Result<(), BackendError> {
    let thread = libc::CLONE_THREAD as u64;
    r.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![Cond::new(
            0,
            Len::Qword,
            Op::MaskedEq(thread),
            thread,
        )?])?],
    );
    Ok(())
}

fn fcntl_rules(r: &mut Rules) -> Result<(), BackendError> {
    one_of(
        r,
        libc::SYS_fcntl,
        1,
        [
            libc::F_GETFD,
            libc::F_SETFD,
            libc::F_GETFL,
            libc::F_SETFL,
            libc::F_DUPFD_CLOEXEC,
        ]
        .map(|v| v as u64),
    )
}

fn socket_rules(r: &mut Rules, families: &[libc::c_int]) -> Result<(), BackendError> {
    one_of(r, libc::SYS_socket, 0, families.iter().map(|&f| f as u64))
}

fn ioctl_rules(r: &mut Rules, requests: &[u64]) -> Result<(), BackendError> {
    one_of(r, libc::SYS_ioctl, 1, requests.iter().copied())
}
