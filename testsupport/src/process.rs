//! Child processes tied to a test's lifetime: killed and reaped on drop.

use std::process::Child;

/// A child process, killed and reaped when dropped (also when the test panics).
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `PF_USER_WORKER` in `/proc/PID/task/TID/stat`: a kernel worker attached to a user process
/// (KVM's `kvm-nx-lpage-recovery`); it never runs user code.
const PF_USER_WORKER: u64 = 0x4000;

/// The sandbox fields of one thread's `/proc/PID/task/TID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSandbox {
    /// `Name:`.
    pub name: String,
    /// `Seccomp:` (0 none, 2 filter).
    pub seccomp: String,
    /// `NoNewPrivs:`.
    pub no_new_privs: String,
}

/// [`ThreadSandbox`] of every user thread of `pid` (kernel workers skipped).
pub fn thread_sandboxes(pid: u32) -> Vec<ThreadSandbox> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let t = t.path();
        let Ok(stat) = std::fs::read_to_string(t.join("stat")) else {
            continue;
        };
        // After the parenthesised name: state is field 3, flags field 9.
        let flags = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(6))
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        if flags & PF_USER_WORKER != 0 {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(t.join("status")) else {
            // The thread ended since the directory was listed.
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push(ThreadSandbox {
            name: field("Name:"),
            seccomp: field("Seccomp:"),
            no_new_privs: field("NoNewPrivs:"),
        });
    }
    out
}
