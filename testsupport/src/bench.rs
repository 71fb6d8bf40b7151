//! Helpers shared by the benchmarks: building and locating release binaries, the real-data
//! initrd, statistics, and one migration of the test guest from boot to the destination's
//! self-check.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use novacron_vmm_api::migration::{MigrationSummary, MigrationTls};

pub mod qemu;

use crate::relay_process::RelayProcess;

/// The workspace root: this crate's parent directory.
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Builds the release binaries the benchmark drives and returns the release dir.
pub fn release_bins() -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "novacron-vmm",
            "-p",
            "novacron-images",
            "-p",
            "novacron-testsupport",
            "--bins",
        ])
        .status()
        .expect("run cargo build");
    assert!(st.success(), "building release binaries failed");
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("release")
}

/// Why the real-data initrd is not there.
#[derive(Debug)]
pub enum DataInitrdError {
    /// Its packages could not be fetched (no network, no mirror): callers may skip.
    Unavailable(String),
    /// The script failed otherwise: a real error.
    Failed(String),
}

impl std::fmt::Display for DataInitrdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataInitrdError::Unavailable(m) => write!(f, "data initrd unavailable: {m}"),
            DataInitrdError::Failed(m) => write!(f, "data initrd build failed: {m}"),
        }
    }
}

/// The real-data initrd (~400 MiB of installed Debian files), built by
/// `scripts/data-initrd.sh` on first use and cached (see the script for where).
pub fn data_initrd() -> Result<PathBuf, DataInitrdError> {
    let script = workspace_root().join("scripts/data-initrd.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DataInitrdError::Failed(format!("cannot run {}: {e}", script.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let why = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    match out.status.code() {
        Some(0) => {}
        Some(2) => return Err(DataInitrdError::Unavailable(why)),
        _ => return Err(DataInitrdError::Failed(format!("{}: {why}", out.status))),
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(DataInitrdError::Failed(format!(
            "the script printed {path:?}, which is not a file"
        )))
    }
}

/// Median of `v` (sorted copy).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

/// Percentile `p` (0..100) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub use crate::process::Kill;

/// Waits until `log` contains `needle`.
pub fn wait_for(log: &Path, needle: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Boots the test guest with `cmdline`, waits for its workload, migrates it to a fresh
/// destination (through the WAN relay with `relay_args` if given) and returns the summary,
/// or why it failed. [`MigrationRun`] with no initrd.
pub fn migrate_once(
    vmm: &Path,
    guest: &Path,
    dir: &Path,
    cmdline: &str,
    mem: &str,
    extra: &[&str],
    relay_args: Option<&[&str]>,
) -> Result<serde_json::Value, String> {
    migrate_once_over(vmm, guest, dir, cmdline, mem, extra, relay_args, None)
}

/// [`migrate_once`] over `tls:` with a credential (destination half, source half), or plain
/// `tcp:` with `None`.
#[allow(clippy::too_many_arguments)]
pub fn migrate_once_over(
    vmm: &Path,
    guest: &Path,
    dir: &Path,
    cmdline: &str,
    mem: &str,
    extra: &[&str],
    relay_args: Option<&[&str]>,
    tls: Option<(&MigrationTls, &MigrationTls)>,
) -> Result<serde_json::Value, String> {
    let summary = MigrationRun {
        vmm,
        guest,
        initrd: None,
        dir,
        cmdline,
        mem,
        extra,
        relay: relay_args,
        disk: None,
        tls,
        run_args: &[],
    }
    .run()?;
    serde_json::to_value(summary).map_err(|e| e.to_string())
}

/// A disk that moves with a benchmark's guest: the source VMM (or QEMU) gets `source`, the
/// destination `destination`, which the run (re)creates before it starts as a blank sparse
/// file of the source's size (`File::create` + `set_len`), as a destination VMM requires.
#[derive(Debug, Clone, Copy)]
pub struct MigrationDisk<'a> {
    /// The source's disk image (raw). Left in place; the guest may write to it.
    pub source: &'a Path,
    /// Where the destination's blank copy goes (overwritten).
    pub destination: &'a Path,
}

impl MigrationDisk<'_> {
    /// Creates the destination as a blank sparse file of the source's size; returns the size.
    pub fn blank_destination(&self) -> Result<u64, String> {
        let size = std::fs::metadata(self.source)
            .map_err(|e| format!("source disk {}: {e}", self.source.display()))?
            .len();
        let f = std::fs::File::create(self.destination)
            .map_err(|e| format!("destination disk {}: {e}", self.destination.display()))?;
        f.set_len(size)
            .map_err(|e| format!("destination disk {}: {e}", self.destination.display()))?;
        Ok(size)
    }
}

/// The last `n` lines of the file at `path` (empty if it cannot be read), for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// One benchmark migration: boot the test guest (with an initrd and a disk if given), wait
/// for its workload's first `CHECK PASS`, migrate it to a fresh destination VMM with
/// `novacron-vmm migrate ... extra` (through a `novacron-wanrelay` started with `relay` if
/// given), and wait for the destination's `CHECK PASS`. The VMMs' stderr goes to `s.err` and
/// `d.err` in `dir` (set `NOVACRON_LOG=debug` to see the engine's rounds there).
pub struct MigrationRun<'a> {
    /// The `novacron-vmm` binary (its directory also holds `novacron-wanrelay`).
    pub vmm: &'a Path,
    /// The test guest ELF.
    pub guest: &'a Path,
    /// An initrd to load (`--initrd`).
    pub initrd: Option<&'a Path>,
    /// Scratch directory (emptied first).
    pub dir: &'a Path,
    /// Guest command line.
    pub cmdline: &'a str,
    /// Guest memory (`--memory`).
    pub mem: &'a str,
    /// Extra `migrate` arguments.
    pub extra: &'a [&'a str],
    /// Relay arguments (`--rate ... --rtt-ms ...`), or `None` for a direct connection.
    pub relay: Option<&'a [&'a str]>,
    /// A writable disk (`--disk`) copied by the migration, or `None`.
    pub disk: Option<MigrationDisk<'a>>,
    /// Migrate over `tls:` with this credential (destination half, source half), or plain
    /// `tcp:` with `None`.
    pub tls: Option<(&'a MigrationTls, &'a MigrationTls)>,
    /// Extra `run` arguments of both VMMs (e.g. `--no-seccomp`).
    pub run_args: &'a [&'a str],
}

/// Writes one half of a credential into `dir` as `<name>-{ca,cert,key}.pem` and returns the
/// `--migration-tls-*` arguments naming the files.
fn tls_args(dir: &Path, name: &str, t: &MigrationTls) -> Result<Vec<String>, String> {
    let mut a = Vec::new();
    for (flag, suffix, pem) in [
        ("--migration-tls-ca", "ca", &t.ca_pem),
        ("--migration-tls-cert", "cert", &t.cert_pem),
        ("--migration-tls-key", "key", &t.key_pem),
    ] {
        let p = dir.join(format!("{name}-{suffix}.pem"));
        std::fs::write(&p, pem).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        a.push(flag.to_string());
        a.push(p.display().to_string());
    }
    Ok(a)
}

impl MigrationRun<'_> {
    /// Runs it; returns the source's summary, or why it failed.
    pub fn run(&self) -> Result<MigrationSummary, String> {
        let (vmm, dir, cmdline, mem) = (self.vmm, self.dir, self.cmdline, self.mem);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let (slog, ssock, dlog) = (dir.join("s.log"), dir.join("s.sock"), dir.join("d.log"));
        let (serr, derr) = (dir.join("s.err"), dir.join("d.err"));
        let err_file = |p: &Path| {
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        if let Some(disk) = self.disk {
            disk.blank_destination()?;
        }
        let mut src = Command::new(vmm);
        src.arg("run").args(self.run_args);
        src.arg("--kernel").arg(self.guest);
        if let Some(initrd) = self.initrd {
            src.arg("--initrd").arg(initrd);
        }
        if let Some(disk) = self.disk {
            src.arg("--disk").arg(disk.source);
        }
        let _src = Kill(
            src.args(["--cmdline", cmdline, "--memory", mem, "--serial"])
                .arg(format!("file:{}", slog.display()))
                .arg("--api-socket")
                .arg(&ssock)
                .stderr(err_file(&serr)?)
                .spawn()
                .map_err(|e| e.to_string())?,
        );
        let needle = if cmdline.contains("idle") {
            "PROGRESS"
        } else {
            "CHECK PASS"
        };
        if !wait_for(&slog, needle, Duration::from_secs(300)) {
            return Err(format!("the source guest never printed {needle}"));
        }
        // Let the workload reach its steady state.
        std::thread::sleep(Duration::from_millis(500));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| e.to_string())?
            .local_addr()
            .map_err(|e| e.to_string())?
            .port();
        let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
        let mut dst = Command::new(vmm);
        dst.arg("run").args(self.run_args);
        dst.args([
            "--incoming",
            &format!("{scheme}:127.0.0.1:{port}"),
            "--memory",
            mem,
        ]);
        if let Some((d, _)) = self.tls {
            dst.args(tls_args(dir, "d", d)?);
        }
        if let Some(disk) = self.disk {
            dst.arg("--disk").arg(disk.destination);
        }
        let _dst = Kill(
            dst.arg("--serial")
                .arg(format!("file:{}", dlog.display()))
                .stderr(err_file(&derr)?)
                .spawn()
                .map_err(|e| e.to_string())?,
        );
        // It listens once it has checked its disks (a blank target) and mapped its memory.
        if !wait_for(
            &derr,
            "waiting for incoming migration",
            Duration::from_secs(30),
        ) {
            return Err(format!(
                "the destination VMM never listened: {}",
                tail(&derr, 5)
            ));
        }
        let bins = vmm.parent().ok_or("no binary dir")?;
        let (_relay, target) = match self.relay {
            Some(a) => {
                let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let r = RelayProcess::try_start(bins, to, a)?;
                let p = r.port();
                (Some(r), p)
            }
            None => (None, port),
        };
        let out = Command::new(vmm)
            .args(["migrate", "--api-socket"])
            .arg(&ssock)
            .args(["--to", &format!("{scheme}:127.0.0.1:{target}")])
            .args(match self.tls {
                Some((_, src)) => tls_args(dir, "s", src)?,
                None => Vec::new(),
            })
            .args(self.extra)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let summary: MigrationSummary =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if !cmdline.contains("idle") && !wait_for(&dlog, "CHECK PASS", Duration::from_secs(60)) {
            return Err(format!(
                "destination did not report CHECK PASS: {}",
                tail(&derr, 5)
            ));
        }
        if std::fs::read_to_string(&dlog).is_ok_and(|l| l.contains("CHECK FAIL")) {
            return Err("destination reported CHECK FAIL".into());
        }
        Ok(summary)
    }
}
