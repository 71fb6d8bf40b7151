//! QEMU as the peer the migration benchmarks compare with: the same test guest (its PVH
//! entry, `-M pc -kernel`) with the same initrd and command line, migrated between two
//! `qemu-system-x86_64` processes, through the same `novacron-wanrelay` when a link is
//! emulated, driven over QMP. Only used when QEMU is installed ([`super::have`]).
//!
//! With a disk ([`QemuRun::disk`]) the migration is QEMU's block migration (no shared
//! storage): the source's image is attached as `-drive ...,if=none,id=d0` with a
//! `virtio-blk-pci` device (the test guest drives only virtio-mmio, so it leaves the disk
//! alone), the destination gets its own blank image of the same size, and the `block`
//! capability is set before `migrate`. QEMU 7.2's `query-migrate` shows a `disk` section
//! only while the migration is active, not once it has completed, so a block migration's
//! wire bytes are the whole stream's, derived from the completed migration's figures:
//! `ram.mbps` (QEMU computes it from the bytes its migration stream wrote, every section
//! included) times the transfer time (`total-time - setup-time`); the disk's share is that
//! minus `ram.transferred`. The last `disk` section seen while polling (every 100 ms) is
//! kept too, for what it is worth (on these hosts 7.2 showed none).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{wait_for, Kill, MigrationDisk};
use crate::relay_process::RelayProcess;

/// The QEMU binary the benchmarks look for.
pub const QEMU: &str = "qemu-system-x86_64";

/// One QEMU migration of the test guest.
pub struct QemuRun<'a> {
    /// Directory holding `novacron-wanrelay` (the release binaries).
    pub bins: &'a Path,
    /// The test guest ELF (booted through its PVH note).
    pub guest: &'a Path,
    /// An initrd to load (`-initrd`).
    pub initrd: Option<&'a Path>,
    /// Scratch directory (emptied first).
    pub dir: &'a Path,
    /// Guest command line (`-append`).
    pub cmdline: &'a str,
    /// Guest memory in MiB (`-m`).
    pub mem_mib: u64,
    /// XBZRLE with a cache of this many MiB, or plain precopy (`None`).
    pub xbzrle_cache_mib: Option<u64>,
    /// `downtime-limit` (ms).
    pub downtime_ms: u64,
    /// Relay arguments, or `None` for a direct connection.
    pub relay: Option<&'a [&'a str]>,
    /// Give up (`migrate_cancel`) after this long.
    pub timeout: Duration,
    /// A disk migrated with QEMU's block migration (`block` capability), or `None`.
    pub disk: Option<MigrationDisk<'a>>,
    /// With a disk, also QEMU's `zero-blocks` capability (zero blocks sent as a flag
    /// instead of 1 MiB of zeros; off by default in QEMU).
    pub zero_blocks: bool,
}

/// What `query-migrate` reported for a completed migration.
#[derive(Debug, Clone, Default)]
pub struct QemuResult {
    /// `total-time` (ms).
    pub total_ms: f64,
    /// `downtime` (ms), measured by QEMU at the source (stop to last byte sent).
    pub downtime_ms: f64,
    /// `ram.transferred` (bytes); for a block migration the whole stream, `ram.mbps x
    /// (total-time - setup-time)` (see the module's doc).
    pub wire_bytes: f64,
    /// A block migration's disk bytes: `wire_bytes - ram.transferred` (0 without a disk).
    pub disk_bytes: f64,
    /// `disk.transferred` and `disk.total` as last polled while the migration was active
    /// (bytes; 0 if none was seen).
    pub disk_polled: (f64, f64),
    /// `ram.dirty-sync-count`: dirty-bitmap syncs, QEMU's count of rounds.
    pub rounds: f64,
}

/// A QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `sock` (waiting up to 30 s for QEMU to create it) and leaves
    /// capabilities negotiation mode.
    fn connect(sock: &Path) -> Result<Qmp, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("QMP socket {}: {e}", sock.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let mut greeting = String::new();
        qmp.reader
            .read_line(&mut greeting)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value (events in between are skipped).
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let req = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{req}").map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("QMP {command}: {e}"))?;
            if n == 0 {
                return Err(format!("QMP {command}: QEMU closed the connection"));
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {command}: {e}"));
            }
        }
    }
}

impl QemuRun<'_> {
    /// What the guest prints once its workload runs (and again after a migration).
    fn ready_marker(&self) -> &'static str {
        if self.cmdline.contains("idle") {
            "PROGRESS"
        } else {
            "CHECK PASS"
        }
    }

    fn spawn(&self, log: &Path, sock: &Path, incoming: bool) -> Result<Kill, String> {
        let mut cmd = Command::new(QEMU);
        cmd.args(["-M", "pc", "-enable-kvm", "-smp", "1", "-nodefaults"])
            .args(["-display", "none", "-no-reboot", "-m"])
            .arg(self.mem_mib.to_string())
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .arg("-kernel")
            .arg(self.guest)
            .args(["-append", self.cmdline]);
        if let Some(initrd) = self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        if let Some(disk) = self.disk {
            let image = if incoming {
                disk.destination
            } else {
                disk.source
            };
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=d0", image.display()))
                .args(["-device", "virtio-blk-pci,drive=d0"]);
        }
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Kill)
            .map_err(|e| format!("cannot start {QEMU}: {e}"))
    }

    /// Runs it; returns QEMU's figures, or why it failed (including "did not complete").
    pub fn run(&self) -> Result<QemuResult, String> {
        let dir = self.dir;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let path = |n: &str| -> PathBuf { dir.join(n) };
        let (slog, ssock, dlog, dsock) =
            (path("s.log"), path("s.qmp"), path("d.log"), path("d.qmp"));
        if let Some(disk) = self.disk {
            disk.blank_destination()?;
        }
        let ready = self.ready_marker();
        let _src = self.spawn(&slog, &ssock, false)?;
        if !wait_for(&slog, ready, Duration::from_secs(300)) {
            return Err(format!("the source guest never printed {ready} under QEMU"));
        }
        std::thread::sleep(Duration::from_millis(500));
        let _dst = self.spawn(&dlog, &dsock, true)?;
        let port = crate::net::free_port("127.0.0.1");
        let mut dq = Qmp::connect(&dsock)?;
        let mut sq = Qmp::connect(&ssock)?;
        let mut caps =
            vec![json!({ "capability": "xbzrle", "state": self.xbzrle_cache_mib.is_some() })];
        if self.disk.is_some() {
            caps.push(json!({ "capability": "block", "state": true }));
            caps.push(json!({ "capability": "zero-blocks", "state": self.zero_blocks }));
        }
        for q in [&mut dq, &mut sq] {
            q.execute("migrate-set-capabilities", json!({ "capabilities": caps }))?;
        }
        dq.execute(
            "migrate-incoming",
            json!({ "uri": format!("tcp:127.0.0.1:{port}") }),
        )?;
        let (_relay, target) = match self.relay {
            Some(a) => {
                let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let r = RelayProcess::try_start(self.bins, to, a)?;
                let p = r.port();
                (Some(r), p)
            }
            None => (None, port),
        };
        let mut params = json!({
            "downtime-limit": self.downtime_ms,
            // No rate limit of QEMU's own (its default is 32 MiB/s): the link is the limit.
            "max-bandwidth": 100u64 << 30,
        });
        if let Some(mib) = self.xbzrle_cache_mib {
            params["xbzrle-cache-size"] = json!(mib << 20);
        }
        sq.execute("migrate-set-parameters", params)?;
        sq.execute(
            "migrate",
            json!({ "uri": format!("tcp:127.0.0.1:{target}") }),
        )?;
        let started = Instant::now();
        let mut disk_polled = (0.0, 0.0);
        let info = loop {
            std::thread::sleep(Duration::from_millis(100));
            let info = sq.execute("query-migrate", json!({}))?;
            if let Some(d) = info.get("disk") {
                let f = |k: &str| d[k].as_f64().unwrap_or(0.0);
                disk_polled = (f("transferred"), f("total"));
            }
            match info["status"].as_str().unwrap_or("") {
                "completed" => break info,
                "failed" | "cancelled" => {
                    return Err(format!("QEMU migration {}: {}", info["status"], info))
                }
                _ => {}
            }
            if started.elapsed() > self.timeout {
                let _ = sq.execute("migrate_cancel", json!({}));
                return Err(format!(
                    "did not complete within {} s ({} rounds, {:.1} MiB of RAM and {:.1} MiB of disk sent)",
                    self.timeout.as_secs(),
                    info["ram"]["dirty-sync-count"],
                    info["ram"]["transferred"].as_f64().unwrap_or(0.0) / 1048576.0,
                    info["disk"]["transferred"].as_f64().unwrap_or(0.0) / 1048576.0
                ));
            }
        };
        if !wait_for(&dlog, ready, Duration::from_secs(60)) {
            return Err(format!("the QEMU destination did not report {ready}"));
        }
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let ram = f(&info["ram"]["transferred"]);
        let (wire_bytes, disk_bytes) = if self.disk.is_some() {
            // Mbit/s x ms = 125 bytes.
            let transfer_ms = f(&info["total-time"]) - info["setup-time"].as_f64().unwrap_or(0.0);
            let stream = f(&info["ram"]["mbps"]) * transfer_ms * 125.0;
            if !stream.is_finite() {
                return Err(format!(
                    "cannot tell the block migration's bytes (no ram.mbps or total-time): {info}"
                ));
            }
            (stream, stream - ram)
        } else {
            (ram, 0.0)
        };
        Ok(QemuResult {
            total_ms: f(&info["total-time"]),
            downtime_ms: f(&info["downtime"]),
            wire_bytes,
            disk_bytes,
            disk_polled,
            rounds: f(&info["ram"]["dirty-sync-count"]),
        })
    }
}
