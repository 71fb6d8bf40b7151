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
//!
//! Cgroups: when `launch.json` names the VM's cgroup ([`crate::cgroup::VmCgroup`]), every VMM
//! child enters it between fork and exec, before it runs any guest code (the child writes "0"
//! to each hierarchy's `cgroup.procs`, opened by the supervisor before the fork). The
//! supervisor itself stays outside: the OOM killer of the VM's memory cgroup can only take
//! the VMM, never the process that records how it ended. A VMM that died of SIGKILL while the
//! cgroup's `oom_kill` counter went up is recorded as an OOM kill in `exit.json`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use crate::cgroup::{OomKill, VmCgroup};

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
    /// The cgroup every VMM of this launch runs in (none with `--no-cgroups`, and in
    /// launch files older than cgroups).
    #[serde(default)]
    pub cgroup: Option<VmCgroup>,
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
    /// Set when the kernel's OOM killer killed it inside its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<OomKill>,
}

impl ExitRecord {
    /// Why the VMM ended, when that is more than its exit status: it could not start, or the
    /// OOM killer took it at the VM's memory limit.
    pub fn reason(&self) -> Option<String> {
        if !self.error.is_empty() {
            return Some(self.error.clone());
        }
        if self.signal == Some(libc::SIGSYS) {
            return Some(SECCOMP_KILL.to_string());
        }
        self.oom_kill.as_ref().map(OomKill::message)
    }
}

/// The crash reason of a VMM that its seccomp filter killed.
pub const SECCOMP_KILL: &str = "killed by SIGSYS: the VMM made a system call outside its seccomp filter (a VMM bug, or a guest trying to escape); the kernel log names the call (dmesg: audit type=1326)";

/// Whether a VMM that ended with `signal` was killed by the OOM killer of its cgroup, given
/// the cgroup's `oom_kill` counter before it started and after it ended.
pub fn oom_killed(signal: Option<i32>, before: Option<u64>, after: Option<u64>) -> bool {
    signal == Some(libc::SIGKILL) && matches!((before, after), (Some(b), Some(a)) if a > b)
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

/// Reads `launch.json`.
pub fn read_launch(dir: &Path) -> Result<Launch, SuperviseError> {
    let path = dir.join("launch.json");
    let b = std::fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&b).map_err(|e| SuperviseError::Malformed {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
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
    let launch = match read_launch(dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("supervisor: {e}");
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
        // The cgroup files are opened here, before the fork: the child only writes to them.
        let procs = match open_procs(launch.cgroup.as_ref()) {
            Ok(p) => p,
            Err(error) => {
                write_exit(
                    dir,
                    &ExitRecord {
                        code: Some(127),
                        at_ms: now_ms(),
                        error,
                        ..Default::default()
                    },
                );
                return 1;
            }
        };
        let fds: Vec<RawFd> = procs.iter().map(AsRawFd::as_raw_fd).collect();
        let oom_before = launch.cgroup.as_ref().and_then(VmCgroup::oom_kills);
        let mut cmd = std::process::Command::new(&launch.vmm);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: between fork and exec only async-signal-safe calls run and nothing is
        // allocated: signal() restores what ignore_signals() changed, and write() of a static
        // byte goes to descriptors the parent opened (and keeps open until spawn returns);
        // last_os_error builds an io::Error from errno without allocating.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                for &fd in &fds {
                    // "0": the writing process itself enters the cgroup.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        drop(procs);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let error = match &launch.cgroup {
                    Some(cg) => format!(
                        "cannot start {} in its cgroup (writing 0 to {}, then exec): {e}",
                        launch.vmm.display(),
                        cg.procs_files()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => format!("cannot start {}: {e}", launch.vmm.display()),
                };
                let rec = ExitRecord {
                    code: Some(127),
                    at_ms: now_ms(),
                    error,
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
        let oom_kill = launch.cgroup.as_ref().and_then(|cg| {
            oom_killed(signal, oom_before, cg.oom_kills()).then(|| OomKill {
                limit_bytes: cg.memory_limit().unwrap_or(cg.memory_limit_bytes),
                cgroup: cg.memory.display().to_string(),
            })
        });
        write_exit(
            dir,
            &ExitRecord {
                code,
                signal,
                at_ms: now_ms(),
                pid,
                error: String::new(),
                oom_kill,
            },
        );
        return 0;
    }
}

/// Opens the `cgroup.procs` files of `cg` for writing (close-on-exec: the VMM does not
/// inherit them). The error names the file.
fn open_procs(cg: Option<&VmCgroup>) -> Result<Vec<std::fs::File>, String> {
    let Some(cg) = cg else {
        return Ok(Vec::new());
    };
    cg.procs_files()
        .iter()
        .map(|p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| format!("cannot put the VMM into its cgroup: {}: {e}", p.display()))
        })
        .collect()
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
            cgroup: None,
        };
        prepare_launch(&dir, &l).unwrap();
        assert!(read_exit(&dir).is_none());
        assert!(read_pid(&dir).is_none());
        // The supervisor itself, run in-process on /bin/sh: exits 0 after one run.
        let l = Launch {
            vmm: "/bin/sh".into(),
            argv: vec!["-c".into(), "exit 3".into()],
            boot_argv: vec![],
            cgroup: None,
        };
        prepare_launch(&dir, &l).unwrap();
        assert_eq!(supervise_main(&dir), 0);
        assert_eq!(read_exit(&dir).unwrap().code, Some(3));
        // A reset (10) restarts with boot_argv.
        let l = Launch {
            vmm: "/bin/sh".into(),
            argv: vec!["-c".into(), "exit 10".into()],
            boot_argv: vec!["-c".into(), "exit 0".into()],
            cgroup: None,
        };
        prepare_launch(&dir, &l).unwrap();
        assert_eq!(supervise_main(&dir), 0);
        assert_eq!(read_exit(&dir).unwrap().code, Some(0));
        assert_eq!(read_reboots(&dir), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn old_launch_files_parse() {
        let l: Launch =
            serde_json::from_str(r#"{"vmm": "/x", "argv": ["a"], "boot_argv": []}"#).unwrap();
        assert_eq!(l.cgroup, None);
        let e: ExitRecord =
            serde_json::from_str(r#"{"code": null, "signal": 9, "at_ms": 1, "pid": 2}"#).unwrap();
        assert_eq!((e.oom_kill.clone(), e.reason()), (None, None));
    }

    #[test]
    fn a_seccomp_kill_names_the_filter() {
        let e = ExitRecord {
            signal: Some(libc::SIGSYS),
            ..Default::default()
        };
        assert!(e.reason().unwrap().contains("outside its seccomp filter"));
    }

    #[test]
    fn oom_kill_detection() {
        let k = Some(libc::SIGKILL);
        assert!(oom_killed(k, Some(0), Some(1)));
        assert!(!oom_killed(k, Some(1), Some(1)));
        assert!(!oom_killed(Some(libc::SIGTERM), Some(0), Some(1)));
        assert!(!oom_killed(None, Some(0), Some(1)));
        assert!(!oom_killed(k, None, Some(1)));
        let e = ExitRecord {
            signal: k,
            oom_kill: Some(OomKill {
                limit_bytes: 184 << 20,
                cgroup: "/cg/vm".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            e.reason().unwrap(),
            "killed by the kernel OOM killer: the VM's memory limit of 184 MiB (cgroup /cg/vm) \
             was reached"
        );
    }

    /// The supervisor against a fake v1 cgroup (plain files): the child writes "0" to
    /// cgroup.procs before exec, and a SIGKILL while the oom_kill counter went up is recorded
    /// as an OOM kill; restarts after a reset enter the cgroup again.
    #[test]
    fn supervisor_enters_the_cgroup_and_records_oom_kills() {
        use crate::cgroup::Version;
        let dir = std::env::temp_dir().join(format!("nc-sup-cg-{}", std::process::id()));
        let cgdir = dir.join("cg");
        std::fs::create_dir_all(&cgdir).unwrap();
        let oom = cgdir.join("memory.oom_control");
        std::fs::write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        std::fs::write(cgdir.join("memory.limit_in_bytes"), "192937984\n").unwrap();
        let procs = cgdir.join("cgroup.procs");
        std::fs::write(&procs, "").unwrap();
        let cg = VmCgroup {
            version: Version::V1,
            cpu: cgdir.clone(),
            cpuacct: cgdir.clone(),
            memory: cgdir.clone(),
            pids: cgdir.clone(),
            io: None,
            memory_limit_bytes: 1 << 20,
        };
        // First run: a reset (the child sees that it wrote cgroup.procs); then the restart
        // is "OOM killed".
        let script = format!(
            "test \"$(cat {p})\" = 0 || exit 5; : > {p}; exit 10",
            p = procs.display()
        );
        let boot = format!(
            "test \"$(cat {p})\" = 0 || exit 6; printf 'oom_kill 1\\n' > {o}; kill -9 $$",
            p = procs.display(),
            o = oom.display()
        );
        let l = Launch {
            vmm: "/bin/sh".into(),
            argv: vec!["-c".into(), script],
            boot_argv: vec!["-c".into(), boot],
            cgroup: Some(cg),
        };
        prepare_launch(&dir, &l).unwrap();
        assert_eq!(supervise_main(&dir), 0);
        let e = read_exit(&dir).unwrap();
        assert_eq!((e.code, e.signal), (None, Some(libc::SIGKILL)), "{e:?}");
        assert_eq!(read_reboots(&dir), 1);
        let o = e.oom_kill.clone().expect("recorded as an OOM kill");
        assert_eq!(o.limit_bytes, 192937984);
        assert_eq!(o.cgroup, cgdir.display().to_string());
        assert!(e.reason().unwrap().contains("memory limit of 184 MiB"));
        // A cgroup that cannot be entered fails the start, naming the file.
        std::fs::remove_file(&procs).unwrap();
        prepare_launch(&dir, &l).unwrap();
        assert_eq!(supervise_main(&dir), 1);
        let e = read_exit(&dir).unwrap();
        assert!(e.error.contains("cgroup.procs"), "{}", e.error);
        let _ = std::fs::remove_dir_all(dir);
    }
}
