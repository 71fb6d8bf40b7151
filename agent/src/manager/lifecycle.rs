//! Starting, stopping, rebooting and deleting VMs: launching a VMM under its supervisor,
//! waiting for its API, graceful shutdown with a SIGKILL fallback, and removal.

use std::path::Path;
use std::time::{Duration, Instant};

use novacron_proto::agent as apb;

use crate::cgroup::VmCgroup;
use crate::net::{self};
use crate::procfs;
use crate::supervise::{self, now_ms, Launch};
use crate::vmm_client;

use super::files::log_tail;
use super::{io_err, Manager, ManagerError, Role, VmHandle};

impl Manager {
    /// Starts a VM (no-op when running).
    pub async fn start(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        self.start_locked(&h).await
    }

    pub(super) async fn start_locked(&self, h: &VmHandle) -> Result<apb::VmStatus, ManagerError> {
        let (dir, socket, launch) = {
            let mut d = h.data();
            d.refresh();
            if d.running() {
                return Ok(d.status());
            }
            if d.meta.role == Role::Incoming {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is an unfinished incoming migration",
                    d.config.name
                )));
            }
            let argv = self.vmm_args(&d.config, &d.meta.socket, None)?;
            let launch = Launch {
                vmm: self.cfg.vmm_binary.clone(),
                argv: argv.clone(),
                boot_argv: argv,
                cgroup: None,
            };
            (d.dir.clone(), d.meta.socket.clone(), launch)
        };
        self.launch(h, &dir, &socket, &launch).await?;
        self.wait_api(h, &dir, &socket).await
    }

    /// Writes `launch` (with the VM's cgroup, created here) and starts its supervisor.
    pub(super) async fn launch(
        &self,
        h: &VmHandle,
        dir: &Path,
        socket: &Path,
        launch: &Launch,
    ) -> Result<(), ManagerError> {
        let _ = std::fs::remove_file(socket);
        // The VM's cgroup (created, or reused from its previous run, with the limits of its
        // configuration) goes into launch.json: the supervisor puts every VMM of this launch,
        // restarts after a reset included, into it.
        let (id, name, vcpus, memory_mib) = {
            let d = h.data();
            let c = &d.config;
            (c.id.clone(), c.name.clone(), c.vcpus, c.memory_mib)
        };
        let limits = self.cfg.cgroups.limits(vcpus, memory_mib);
        let cgroup = self
            .cfg
            .cgroups
            .create(&id, &limits)
            .map_err(|source| ManagerError::Cgroup { vm: name, source })?;
        let launch = Launch {
            cgroup: cgroup.clone(),
            ..launch.clone()
        };
        supervise::prepare_launch(dir, &launch)?;
        {
            let mut d = h.data();
            d.cgroup = cgroup;
            d.meta.ever_started = true;
            d.exit = None;
            d.info = None;
            d.message.clear();
            d.adopted = false;
            d.starting_until_ms = now_ms() + self.cfg.start_timeout.as_millis() as i64;
            d.state = apb::VmState::Starting;
            self.write_meta(dir, &d.meta)?;
        }
        supervise::spawn(&self.cfg.agent_exe, dir)?;
        Ok(())
    }

    /// Waits until the VMM answers `info`, or fails.
    pub(super) async fn wait_api(
        &self,
        h: &VmHandle,
        dir: &Path,
        socket: &Path,
    ) -> Result<apb::VmStatus, ManagerError> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            if let Some(exit) = supervise::read_exit(dir) {
                let tail = log_tail(&dir.join("vmm.log"));
                let mut d = h.data();
                d.starting_until_ms = 0;
                d.refresh();
                let why = exit.reason().unwrap_or_else(|| {
                    format!(
                        "vmm exited with status {:?} (signal {:?}): {tail}",
                        exit.code, exit.signal
                    )
                });
                d.message = why.clone();
                return Err(ManagerError::FailedPrecondition(why));
            }
            if supervise::read_pid(dir).is_some() && socket.exists() {
                if let Ok(info) = vmm_client::info(socket, Duration::from_millis(500)).await {
                    let mut d = h.data();
                    d.info = Some(info);
                    d.starting_until_ms = 0;
                    d.refresh();
                    return Ok(d.status());
                }
            }
            if Instant::now() > deadline {
                let mut d = h.data();
                d.starting_until_ms = 0;
                d.message = "vmm did not answer on its api socket in time".into();
                return Err(ManagerError::Unavailable(format!(
                    "vm {}: vmm did not answer on its api socket within {:?}",
                    d.config.name, self.cfg.start_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops a VM: `shutdown` on its API, then SIGKILL after `timeout` (or at once if
    /// `force`).
    pub async fn stop(
        &self,
        id: &str,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        self.stop_locked(&h, timeout.unwrap_or(self.cfg.stop_timeout), force)
            .await
    }

    pub(super) async fn stop_locked(
        &self,
        h: &VmHandle,
        timeout: Duration,
        force: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        let (dir, socket, pid) = {
            let mut d = h.data();
            d.refresh();
            if !d.running() {
                return Ok(d.status());
            }
            (d.dir.clone(), d.meta.socket.clone(), d.pid)
        };
        let marker = dir.join("stop-requested");
        std::fs::write(&marker, b"").map_err(io_err(&marker))?;
        if !force {
            if let Err(e) = vmm_client::shutdown(&socket, Duration::from_secs(2)).await {
                tracing::warn!("graceful shutdown of {}: {e}", dir.display());
            }
            wait_exit(pid, &socket, timeout).await;
        }
        if procfs::alive_with_arg(pid, &socket) {
            procfs::signal(pid, libc::SIGKILL);
            wait_exit(pid, &socket, Duration::from_secs(5)).await;
        }
        // Give the supervisor a moment to write exit.json.
        let deadline = Instant::now() + Duration::from_secs(2);
        while supervise::read_exit(&dir).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut d = h.data();
        d.starting_until_ms = 0;
        d.refresh();
        Ok(d.status())
    }

    /// Reboots a VM: graceful stop, then start.
    pub async fn reboot(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let dir = h.data().dir.clone();
        self.stop_locked(&h, self.cfg.stop_timeout, false).await?;
        let n = supervise::read_reboots(&dir) + 1;
        supervise::write_atomic(&dir.join("reboots"), n.to_string().as_bytes())?;
        self.start_locked(&h).await
    }

    /// Deletes a VM: kills it and removes its directory and taps. Returns whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, ManagerError> {
        let Ok(h) = self.handle(id) else {
            return Ok(false);
        };
        let _op = h.op.lock().await;
        self.stop_locked(&h, Duration::ZERO, true).await?;
        self.remove_locked(&h).await?;
        Ok(true)
    }

    pub(super) async fn remove_locked(&self, h: &VmHandle) -> Result<(), ManagerError> {
        let (id, dir, socket, nics, cgroup) = {
            let d = h.data();
            (
                d.config.id.clone(),
                d.dir.clone(),
                d.meta.socket.clone(),
                d.config.nics.len(),
                d.cgroup.clone(),
            )
        };
        for i in 0..nics {
            if let Err(e) = net::remove_tap(&self.tap(&id, i)) {
                tracing::warn!("removing tap of {id}: {e}");
            }
        }
        self.map().remove(&id);
        let _ = std::fs::remove_file(&socket);
        // Let the supervisor finish writing its exit record first.
        if let Some(sup) = supervise::read_supervisor_pid(&dir) {
            let deadline = Instant::now() + Duration::from_secs(3);
            while procfs::alive(sup) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(cg) = cgroup {
            remove_cgroup(&id, &cg).await;
        }
        let mut attempt = 0;
        while dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    tracing::debug!("removing {}: {e}; retrying", dir.display());
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        tracing::info!(id = %id, "removed");
        Ok(())
    }
}

/// Removes a VM's cgroup once its processes are gone: the kernel refuses (EBUSY) while a task
/// is still in it, e.g. a VMM not yet reaped. Retries for about two seconds, then logs and
/// leaves it (an empty cgroup costs little; the next VM of that id reuses it).
async fn remove_cgroup(id: &str, cg: &VmCgroup) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match cg.remove() {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("removing the cgroup of {id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                tracing::warn!("the cgroup of vm {id} stays: {e}");
                return;
            }
        }
    }
}

/// Waits until `pid` is gone (or no longer the VMM of `socket`), up to `timeout`.
pub(super) async fn wait_exit(pid: i32, socket: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while procfs::alive_with_arg(pid, socket) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
