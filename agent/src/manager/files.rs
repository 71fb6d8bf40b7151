//! A VM's files and host resources: its directory (config, metadata, disks, taps), its
//! `novacron-vmm run` command line, free ports for incoming migrations, and console logs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use novacron_proto::agent as apb;
use novacron_vmm_api::machine::{Disk, MachineOptions, Nic, Serial};
use prost::Message;

use crate::disks::{self, PreparedDisk};
use crate::images_dir::ImagesDir;
use crate::net::{self};
use crate::supervise::{self, now_ms};

use super::{io_err, Manager, ManagerError, Meta};
use novacron_vmm_api::migration::TlsFiles;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Creates `dir` (and missing parents) and makes it 0700 whatever the umask: a VM's
/// directory holds its disks, its control socket and migration keys.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ManagerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// The files of a migration credential in a VM directory ([`Manager::write_migration_tls`]).
const MIGRATION_TLS_FILES: [&str; 3] = [
    "migration-ca.pem",
    "migration-cert.pem",
    "migration-key.pem",
];

/// Removes a spent migration credential from a VM directory (best effort).
pub(super) fn remove_migration_tls(dir: &Path) {
    for f in MIGRATION_TLS_FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Writes `bytes` to a new or truncated `path` that only its owner may read (0600 whatever
/// the umask).
fn private_file(path: &Path, bytes: &[u8]) -> Result<(), ManagerError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

/// Where the disks of a new VM directory come from.
#[derive(Debug)]
pub(super) enum DiskPlan<'a> {
    /// From their images (or blank of their size): a new VM.
    Fresh,
    /// Writable disks that move blank at the source's sizes, by index: an incoming live
    /// migration (the VMM's stream fills them).
    Incoming(&'a [u64]),
    /// Files already received (disk index, staged file), moved in: a cold migration.
    Staged(&'a [(usize, PathBuf)]),
}

impl Manager {
    /// Writes a new VM's directory: config, metadata, disks, taps.
    pub(super) fn materialise(
        &self,
        c: &apb::VmConfig,
        meta: &Meta,
        plan: DiskPlan<'_>,
    ) -> Result<(), ManagerError> {
        let dir = self.vm_dir(&c.id);
        private_dir(&dir)?;
        supervise::write_atomic(&dir.join("config.pb"), &c.encode_to_vec())?;
        self.write_meta(&dir, meta)?;
        match plan {
            DiskPlan::Fresh => {}
            DiskPlan::Incoming(sizes) => disks::prepare_incoming(&dir, &c.disks, sizes)?,
            DiskPlan::Staged(files) => {
                for (i, f) in files {
                    let dst = dir.join(format!("disk{i}.img"));
                    std::fs::rename(f, &dst).map_err(io_err(&dst))?;
                }
            }
        }
        // Keeps the files already there; prepares the others.
        disks::prepare(&dir, &self.images_dir(), &c.disks)?;
        for (i, nic) in c.nics.iter().enumerate() {
            net::ensure_tap(&self.tap(&c.id, i), &nic.bridge)?;
        }
        Ok(())
    }

    /// Writes the destination's half of a migration credential into the VM's directory
    /// (0700), each file created 0600 whatever the umask, for the incoming VMM's
    /// `--migration-tls-*` flags.
    pub(super) fn write_migration_tls(
        &self,
        dir: &Path,
        t: &apb::MigrationTls,
    ) -> Result<TlsFiles, ManagerError> {
        let [ca, cert, key] = MIGRATION_TLS_FILES.map(|f| dir.join(f));
        let files = TlsFiles { ca, cert, key };
        for (path, pem) in [
            (&files.ca, &t.ca_pem),
            (&files.cert, &t.cert_pem),
            (&files.key, &t.key_pem),
        ] {
            private_file(path, pem.as_bytes())?;
        }
        Ok(files)
    }

    pub(super) fn tap(&self, vm_id: &str, i: usize) -> String {
        net::tap_name(&format!("{}{vm_id}", self.cfg.agent_tag), i)
    }

    pub(super) fn write_meta(&self, dir: &Path, meta: &Meta) -> Result<(), ManagerError> {
        let b = serde_json::to_vec_pretty(meta).map_err(|e| ManagerError::Io {
            path: dir.join("meta.json").display().to_string(),
            source: std::io::Error::other(e),
        })?;
        supervise::write_atomic(&dir.join("meta.json"), &b)?;
        Ok(())
    }

    /// The `novacron-vmm run` arguments of a VM (a fresh boot, or `--incoming ADDR`).
    pub fn vmm_args(
        &self,
        c: &apb::VmConfig,
        socket: &Path,
        incoming: Option<&str>,
    ) -> Result<Vec<String>, ManagerError> {
        self.vmm_args_for(c, socket, incoming, "", None)
    }

    /// [`Manager::vmm_args`] of an incoming VMM that waits `incoming_timeout_s` for the
    /// stream of `migration_id` (never dropped: without them a stray or a wrong stream could
    /// take the destination).
    pub fn vmm_args_for(
        &self,
        c: &apb::VmConfig,
        socket: &Path,
        incoming: Option<&str>,
        migration_id: &str,
        incoming_timeout_s: Option<u64>,
    ) -> Result<Vec<String>, ManagerError> {
        self.machine_options(c, socket, incoming, migration_id, incoming_timeout_s)
            .map(|m| m.args())
    }

    /// The machine options behind [`Manager::vmm_args_for`] (restores set `restore` and
    /// `paused` on them).
    pub(super) fn machine_options(
        &self,
        c: &apb::VmConfig,
        socket: &Path,
        incoming: Option<&str>,
        migration_id: &str,
        incoming_timeout_s: Option<u64>,
    ) -> Result<MachineOptions, ManagerError> {
        let tell = incoming.is_some();
        let dir = self.vm_dir(&c.id);
        let images = self.images_dir();
        let boot = incoming.is_none();
        let resolve = |what: &str, p: &str| -> Result<Option<PathBuf>, ManagerError> {
            if !boot || p.is_empty() {
                return Ok(None);
            }
            ImagesDir::new(&images)
                .resolve(what, p)
                .map(Some)
                .map_err(|e| ManagerError::InvalidArgument(e.to_string()))
        };
        let prepared: Vec<PreparedDisk> = disks::prepare(&dir, &images, &c.disks)?;
        let machine = MachineOptions {
            kernel: resolve("kernel", &c.kernel)?,
            initrd: resolve("initrd", &c.initrd)?,
            cmdline: if boot {
                c.cmdline.clone()
            } else {
                String::new()
            },
            memory_mib: c.memory_mib,
            vcpus: c.vcpus,
            serial: Serial::File(dir.join("console.log")),
            api_socket: Some(socket.to_path_buf()),
            disks: prepared
                .iter()
                .map(|d| Disk {
                    path: d.path.clone(),
                    read_only: d.readonly,
                    shared: d.shared,
                })
                .collect(),
            nets: c
                .nics
                .iter()
                .enumerate()
                .map(|(i, nic)| Nic {
                    tap: self.tap(&c.id, i),
                    mac: (!nic.mac.is_empty()).then(|| nic.mac.clone()),
                })
                .collect(),
            incoming: incoming.map(str::to_string),
            incoming_tls: None,
            migration_id: (tell && !migration_id.is_empty()).then(|| migration_id.to_string()),
            incoming_timeout_s: incoming_timeout_s.filter(|_| tell),
            restore: None,
            paused: false,
        };
        Ok(machine)
    }

    pub(super) fn keep_console_log(&self, id: &str, dir: &Path) {
        let keep = self.cfg.data_dir.join("migrated");
        if std::fs::create_dir_all(&keep).is_ok() {
            let _ = std::fs::rename(
                dir.join("console.log"),
                keep.join(format!("{id}.{}.console.log", now_ms())),
            );
        }
    }
}

/// A free TCP port on `host` (bound and released).
pub(super) fn free_port(host: &str) -> Result<u16, ManagerError> {
    let l = TcpListener::bind((host, 0)).map_err(|source| ManagerError::Io {
        path: format!("tcp {host}:0"),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| ManagerError::Io {
            path: format!("tcp {host}:0"),
            source,
        })
}

/// The last non-empty line of a log, for error messages.
pub(super) fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(no output)".into())
}
