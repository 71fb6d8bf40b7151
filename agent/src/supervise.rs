//! Per-VM supervisor processes. The agent never makes a VMM its own child: it starts
//! `novacron-agent __supervise <vm-dir>` in a new session (`setsid`), and that small process
//! starts the VMM, records its pid in `vmm.pid`, waits for it, restarts it after a
//! guest-requested reset (exit status 10) and finally writes the exit status to `exit.json`.
//! Supervisor and VMM survive an agent restart; the new agent reads these files to re-adopt
//! running VMs and to learn how stopped ones ended.
//!
//! Files in the VM directory: `launch.json` (written by the agent), `supervisor.pid`,
//! `vmm.pid` (`PID START_MS`), `exit.json`, `reboots`, `stop-requested` (agent asks not to
//! restart on reset), `vmm.log` (VMM stdout and stderr).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

/// The hidden first argument that turns `novacron-agent` into a supervisor.
pub const SUPERVISE_ARG: &str = "__supervise";

/// Exit status of `novacron-vmm run` for a guest-requested reset.
pub const EXIT_RESET: i32 = 10;

/// Errors of supervision.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// A supervision file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A supervision file is malformed.
    #[error("{path}: malformed: {reason}")]
    Malformed {
        /// File.
        path: String,
        /// Parser message.
        reason: String,
    },
    /// The supervisor could not be started.
    #[error("cannot start the supervisor {exe}: {source}")]
    Spawn {
        /// Executable.
        exe: String,
        /// OS error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SuperviseError + '_ {
    move |source| SuperviseError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the supervisor runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Launch {
    /// The VMM executable.
    pub vmm: PathBuf,
    /// Arguments of the first start (may contain `--incoming`).
    pub argv: Vec<String>,
    /// Arguments of restarts after a guest reset (a fresh boot).
    pub boot_argv: Vec<String>,
}

/// How a VMM ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed.
    pub signal: Option<i32>,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The VMM's pid.
    pub pid: i32,
    /// Why it could not even start, if so.
    #[serde(default)]
    pub error: String,
}

/// A running VMM as recorded in `vmm.pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    /// Process id.
    pub pid: i32,
    /// Start time (ms since the epoch).
    pub started_at_ms: i64,
}

/// Writes `data` to `path` atomically (temporary file, rename). Not fsynced: these files
/// describe processes, which a host crash ends anyway; a torn file after a crash is treated
/// like a missing one (the controller recreates the VM).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SuperviseError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads `vmm.pid`.
pub fn read_pid(dir: &Path) -> Option<PidRecord> {
    let s = std::fs::read_to_string(dir.join("vmm.pid")).ok()?;
    let mut it = s.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let started_at_ms = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(PidRecord { pid, started_at_ms })
}

/// Reads `exit.json`.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    let s = std::fs::read(dir.join("exit.json")).ok()?;
    serde_json::from_slice(&s).ok()
}

/// Reads the number of resets handled.
pub fn read_reboots(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("reboots"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads the supervisor's pid.
pub fn read_supervisor_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("supervisor.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Writes `launch.json` and clears the records of a previous run.
pub fn prepare_launch(dir: &Path, launch: &Launch) -> Result<(), SuperviseError> {
    let data = serde_json::to_vec_pretty(launch).map_err(|e| SuperviseError::Malformed {
        path: dir.join("launch.json").display().to_string(),
        reason: e.to_string(),
    })?;
    write_atomic(&dir.join("launch.json"), &data)?;
    for f in ["exit.json", "vmm.pid", "stop-requested", "supervisor.pid"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// Starts a detached supervisor for the VM in `dir` (after [`prepare_launch`]). The agent
/// reaps it if it exits while the agent runs.
pub fn spawn(agent_exe: &Path, dir: &Path) -> Result<(), SuperviseError> {
    let log_path = dir.join("supervisor.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let log2 = log.try_clone().map_err(io_err(&log_path))?;
    let mut cmd = tokio::process::Command::new(agent_exe);
    cmd.arg(SUPERVISE_ARG)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        exe: agent_exe.display().to_string(),
        source,
    })?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

fn ignore_signals() {
    // SAFETY: installing SIG_IGN for these signals has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The supervisor process's main: runs the VMM of `dir` until it ends for good. Returns the
/// supervisor's exit status.
pub fn supervise_main(dir: &Path) -> i32 {
    ignore_signals();
    let launch: Launch = match std::fs::read(dir.join("launch.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("supervisor: {}: {e}", dir.join("launch.json").display());
            return 1;
        }
    };
    if let Err(e) = write_atomic(
        &dir.join("supervisor.pid"),
        std::process::id().to_string().as_bytes(),
    ) {
        eprintln!("supervisor: {e}");
    }
    let mut argv = launch.argv.clone();
    let mut reboots = read_reboots(dir);
    loop {
        let log_path = dir.join("vmm.log");
        let out = OpenOptions::new().create(true).append(true).open(&log_path);
        let (stdout, stderr) = match out.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = std::process::Command::new(&launch.vmm);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: signal() is async-signal-safe; restores what ignore_signals() changed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd.spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let rec = ExitRecord {
                    code: Some(127),
                    at_ms: now_ms(),
                    error: format!("cannot start {}: {e}", launch.vmm.display()),
                    ..Default::default()
                };
                write_exit(dir, &rec);
                return 1;
            }
        };
        let pid = child.id() as i32;
        if let Err(e) = write_atomic(
            &dir.join("vmm.pid"),
            format!("{pid} {}\n", now_ms()).as_bytes(),
        ) {
            eprintln!("supervisor: {e}");
        }
        let status = loop {
            match child.wait() {
                Ok(s) => break Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("supervisor: wait: {e}");
                    break None;
                }
            }
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        if code == Some(EXIT_RESET) && !dir.join("stop-requested").exists() {
            reboots += 1;
            let _ = write_atomic(&dir.join("reboots"), reboots.to_string().as_bytes());
            argv = launch.boot_argv.clone();
            continue;
        }
        write_exit(
            dir,
            &ExitRecord {
                code,
                signal,
                at_ms: now_ms(),
                pid,
                error: String::new(),
            },
        );
        return 0;
    }
}

fn write_exit(dir: &Path, rec: &ExitRecord) {
    match serde_json::to_vec(rec) {
        Ok(b) => {
            if let Err(e) = write_atomic(&dir.join("exit.json"), &b) {
                eprintln!("supervisor: {e}");
            }
        }
        Err(e) => eprintln!("supervisor: exit record: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip() {
        let dir = std::env::temp_dir().join(format!("nc-sup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_pid(&dir).is_none());
        write_atomic(&dir.join("vmm.pid"), b"123 456\n").unwrap();
        assert_eq!(
            read_pid(&dir),
            Some(PidRecord {
                pid: 123,
                started_at_ms: 456
            })
        );
        write_exit(
            &dir,
            &ExitRecord {
                code: Some(0),
                pid: 123,
                at_ms: 1,
                ..Default::default()
            },
        );
        assert_eq!(read_exit(&dir).unwrap().code, Some(0));
        let l = Launch {
            vmm: "/bin/true".into(),
            argv: vec![],
            boot_argv: vec![],
        };
        prepare_launch(&dir, &l).unwrap();
        assert!(read_exit(&dir).is_none());
        assert!(read_pid(&dir).is_none());
        // The supervisor itself, run in-process on /bin/sh: exits 0 after one run.
        let l = Launch {
            vmm: "/bin/sh".into(),
            argv: vec!["-c".into(), "exit 3".into()],
            boot_argv: vec![],
        };
        prepare_launch(&dir, &l).unwrap();
        assert_eq!(supervise_main(&dir), 0);
        assert_eq!(read_exit(&dir).unwrap().code, Some(3));
        // A reset (10) restarts with boot_argv.
        let l = Launch {
            vmm: "/bin/sh".into(),
            argv: vec!["-c".into(), "exit 10".into()],
            boot_argv: vec!["-c".into(), "exit 0".into()],
        };
        prepare_launch(&dir, &l).unwrap();
        assert_eq!(supervise_main(&dir), 0);
        assert_eq!(read_exit(&dir).unwrap().code, Some(0));
        assert_eq!(read_reboots(&dir), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
