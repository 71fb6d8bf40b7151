//! Process inspection through /proc: liveness (zombies count as dead), identity (the command
//! line names the VM's API socket, so a recycled pid is never mistaken for a VMM), CPU time
//! and resident memory.

use std::path::Path;

/// Errors reading /proc.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (usually: the process is gone).
    #[error("reading /proc/{pid}/{file}: {source}")]
    Read {
        /// Process id.
        pid: i32,
        /// File under /proc/PID.
        file: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The file did not have the expected format.
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format {
        /// Process id.
        pid: i32,
        /// File under /proc/PID.
        file: &'static str,
    },
}

fn read(pid: i32, file: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read {
        pid,
        file,
        source,
    })
}

/// Fields of /proc/PID/stat after the command name.
fn stat_fields(pid: i32) -> Result<Vec<String>, ProcError> {
    let s = read(pid, "stat")?;
    let close = s
        .rfind(')')
        .ok_or(ProcError::Format { pid, file: "stat" })?;
    Ok(s[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match stat_fields(pid) {
        Ok(f) => f.first().is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and its command line contains `needle` (e.g. the API socket path).
pub fn alive_with_arg(pid: i32, needle: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    raw.split(|&b| b == 0)
        .any(|arg| arg.windows(needle.len().max(1)).any(|w| w == needle))
}

/// utime + stime of `pid` in milliseconds.
pub fn cpu_time_ms(pid: i32) -> Result<u64, ProcError> {
    let f = stat_fields(pid)?;
    // After ")": state(0) ppid(1) ... utime(11) stime(12)
    let get = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(ProcError::Format { pid, file: "stat" })
    };
    let ticks = get(11)? + get(12)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(ticks * 1000 / hz)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: i32) -> Result<u64, ProcError> {
    let s = read(pid, "statm")?;
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or(ProcError::Format { pid, file: "statm" })?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * if page > 0 { page as u64 } else { 4096 })
}

/// Sends `sig` to `pid`. Returns false when the process does not exist.
pub fn signal(pid: i32, sig: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_inspection() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(rss_bytes(me).unwrap() > 0);
        cpu_time_ms(me).unwrap();
        assert!(!alive(0));
        assert!(!alive(i32::MAX));
        let exe = std::env::current_exe().unwrap();
        assert!(alive_with_arg(me, &exe) || alive_with_arg(me, Path::new("novacron")));
        assert!(!alive_with_arg(
            me,
            Path::new("/definitely/not/an/arg.sock")
        ));
    }
}
