//! Misbehaviour on request, for the tests that show the sandbox holds: a VMM built with the
//! `test-hooks` feature (the `novacron-vmm-testhooks` binary of the test build) obeys the
//! control API's `test-hook` request; every other VMM refuses it. The hooks do what an
//! attacker who took over the process would: open host files, make a forbidden system call,
//! grow without bound.

use novacron_vmm_api::protocol::{Empty, Reply, TestHook};

/// Runs `hook` (test-hooks builds) or refuses it.
pub fn run(hook: &TestHook) -> Result<Reply, String> {
    if cfg!(feature = "test-hooks") {
        obey(hook)
    } else {
        Err("this VMM is built without test hooks: `test-hook` is refused".into())
    }
}

fn obey(hook: &TestHook) -> Result<Reply, String> {
    match hook {
        TestHook::OpenHostFile { path } => match std::fs::File::open(path) {
            Ok(_) => Ok(Reply::Empty(Empty {})),
            Err(e) => Err(format!("cannot open {}: {e}", path.display())),
        },
        TestHook::ForbiddenSyscall => {
            // SAFETY: mount with null pointers reads no memory of ours; without a filter the
            // kernel answers EFAULT or EPERM and nothing changes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mount,
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_char>(),
                    0 as libc::c_ulong,
                    std::ptr::null::<libc::c_void>(),
                )
            };
            Err(format!(
                "mount returned {r} ({}): no seccomp filter stopped it",
                std::io::Error::last_os_error()
            ))
        }
        TestHook::GrowMemory { mib } => {
            let bytes = mib
                .checked_mul(1 << 20)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| format!("{mib} MiB is too large"))?;
            let mut v: Vec<u8> = Vec::new();
            v.try_reserve_exact(bytes)
                .map_err(|e| format!("cannot allocate {mib} MiB: {e}"))?;
            // Writing every byte makes the pages resident, not just reserved.
            v.resize(bytes, 1);
            std::mem::forget(v);
            Ok(Reply::Empty(Empty {}))
        }
    }
}
