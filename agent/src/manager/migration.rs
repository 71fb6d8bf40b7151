//! Live migration on this host: preparing and aborting an incoming VMM (destination), and
//! driving an outgoing migration to its summary (source).

use std::sync::Arc;
use std::time::{Duration, Instant};

use novacron_proto::agent as apb;
use novacron_vmm_api::migration::MigrationTls;

use crate::supervise::{now_ms, Launch};
use crate::vmm_client::{self, VmmClientError};

use super::files::{free_port, DiskPlan};
use super::lifecycle::wait_exit;
use super::{Manager, ManagerError, Meta, Role, VmData, VmHandle};

/// How long an incoming VMM waits for its connection when the controller names no deadline.
const DEFAULT_INCOMING_TIMEOUT_S: u64 = 600;

/// The migration credential of a request: all three PEM items, or INVALID_ARGUMENT (the
/// agent never runs a migration stream without TLS).
fn credential(t: Option<&apb::MigrationTls>) -> Result<&apb::MigrationTls, ManagerError> {
    t.filter(|t| !t.ca_pem.is_empty() && !t.cert_pem.is_empty() && !t.key_pem.is_empty())
        .ok_or_else(|| {
            ManagerError::InvalidArgument(
                "the migration credential (tls: ca_pem, cert_pem, key_pem) is required: the controller issues one per migration".into(),
            )
        })
}

/// A loopback port nothing listens on (bound and released; test fault only).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1)
}

impl Manager {
    /// Migration destination: starts an incoming VMM and returns its `tls:HOST:PORT` (the
    /// VMM accepts only the source certified by `tls`, the credential's destination half,
    /// written 0600 into the VM's directory; INVALID_ARGUMENT without one). Its
    /// writable disks that move are created blank at the source's sizes (`disk_sizes`, by
    /// index) for the stream to fill; a failure removes them with the VM's directory.
    /// The VMM gets `--migration-id` and `--incoming-timeout` (`incoming_timeout_s`, 0: 600
    /// s); a watcher then asks it for `info` until it runs, so a committed destination is
    /// reported running at once.
    pub async fn prepare_incoming(
        self: &Arc<Self>,
        c: apb::VmConfig,
        migration_id: &str,
        incoming_timeout_s: u32,
        disk_sizes: &[u64],
        tls: Option<&apb::MigrationTls>,
    ) -> Result<(String, apb::VmStatus), ManagerError> {
        let tls = credential(tls)?;
        self.validate(&c, false)?;
        let _g = self.create.lock().await;
        if let Some(h) = self.map().get(&c.id).cloned() {
            let mut d = h.data();
            d.refresh();
            if d.meta.role == Role::Incoming && d.meta.migration_id == migration_id && d.running() {
                return Ok((d.meta.incoming_addr.clone(), d.status()));
            }
            return Err(ManagerError::AlreadyExists(format!(
                "vm {} already exists on this host",
                c.name
            )));
        }
        let port = free_port(&self.cfg.migration_host)?;
        let addr = format!("tls:{}:{port}", self.cfg.migration_host);
        let meta = Meta {
            socket: self.socket_path(&c.id),
            role: Role::Incoming,
            migration_id: migration_id.to_string(),
            incoming_addr: addr.clone(),
            created_at_ms: now_ms(),
            ever_started: true,
        };
        if let Err(e) = self.materialise(&c, &meta, DiskPlan::Incoming(disk_sizes)) {
            let _ = std::fs::remove_dir_all(self.vm_dir(&c.id));
            return Err(e);
        }
        let wait_s = match incoming_timeout_s {
            0 => DEFAULT_INCOMING_TIMEOUT_S,
            t => u64::from(t),
        };
        let wait_s = match self.faults.incoming_timeout_s {
            Some(t) => {
                tracing::warn!(secs = t, "test fault incoming-timeout");
                wait_s.min(t)
            }
            None => wait_s,
        };
        let files = match self.write_migration_tls(&self.vm_dir(&c.id), tls) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.vm_dir(&c.id));
                return Err(e);
            }
        };
        let mut machine =
            self.machine_options(&c, &meta.socket, Some(&addr), migration_id, Some(wait_s))?;
        machine.incoming_tls = Some(files);
        let argv = machine.args();
        let boot_argv = if c.kernel.is_empty() {
            argv.clone()
        } else {
            self.vmm_args(&c, &meta.socket, None)?
        };
        let launch = Launch {
            vmm: self.cfg.vmm_binary.clone(),
            argv,
            boot_argv,
            cgroup: None,
        };
        let data = VmData {
            state: apb::VmState::Incoming,
            migration: Some(apb::MigrationProgress {
                migration_id: migration_id.to_string(),
                role: apb::MigrationRole::Destination as i32,
                phase: apb::MigrationPhase::Waiting as i32,
                peer: addr.clone(),
                started_at_ms: now_ms(),
                ..Default::default()
            }),
            ..VmData::created(c.clone(), self.vm_dir(&c.id), meta.clone())
        };
        let h = VmHandle::new(data);
        self.map().insert(c.id.clone(), Arc::clone(&h));
        let _op = h.op.lock().await;
        let res = async {
            self.launch(&h, &self.vm_dir(&c.id), &meta.socket, &launch)
                .await?;
            self.wait_api(&h, &self.vm_dir(&c.id), &meta.socket).await
        }
        .await;
        match res {
            Ok(status) => {
                tracing::info!(vm = %c.name, %addr, "incoming migration prepared");
                self.watch_incoming(Arc::clone(&h), meta.socket.clone());
                Ok((addr, status))
            }
            Err(e) => {
                let _ = self.stop_locked(&h, Duration::ZERO, true).await;
                let _ = self.remove_locked(&h).await;
                Err(e)
            }
        }
    }

    /// Asks an incoming VMM for `info` every few milliseconds until it runs (the engine
    /// started the guest: the migration committed) or is gone, and records it at once.
    fn watch_incoming(self: &Arc<Self>, h: Arc<VmHandle>, socket: std::path::PathBuf) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                {
                    let mut d = h.data();
                    d.refresh();
                    if d.meta.role != Role::Incoming || d.pid == 0 {
                        return;
                    }
                }
                let id = h.data().config.id.clone();
                if !this.map().get(&id).is_some_and(|x| Arc::ptr_eq(x, &h)) {
                    return;
                }
                if let Ok(o) = vmm_client::observe(&socket, Duration::from_millis(500)).await {
                    this.take_observed(&h, o);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Migration destination: drops an incoming VM that did not complete. Refused
    /// (FAILED_PRECONDITION) when its VMM already runs the guest: the migration committed and
    /// this is now the VM's only copy.
    pub async fn abort_incoming(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let socket = h.data().meta.socket.clone();
        if h.data().pid > 0 {
            if let Ok(o) = vmm_client::observe(&socket, Duration::from_secs(1)).await {
                self.take_observed(&h, o);
            }
        }
        let status = {
            let mut d = h.data();
            d.refresh();
            if d.meta.role != Role::Incoming {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is not an incoming migration here",
                    d.config.name
                )));
            }
            d.status()
        };
        self.stop_locked(&h, Duration::ZERO, true).await?;
        self.remove_locked(&h).await?;
        tracing::info!(id, "incoming migration aborted");
        Ok(status)
    }

    /// Before a migration whose encoder keeps a delta cache (`delta`, `auto`), raises the VM's
    /// memory limit by the cache's size (the VMM's default: half the guest RAM), so the
    /// cache cannot push the VMM into its cgroup's OOM killer. The limit stays raised until
    /// the VM's next start (the VMM need not give the cache's memory back to the kernel).
    fn make_room_for_delta_cache(
        &self,
        h: &VmHandle,
        args: &novacron_vmm_api::migration::MigrateOptions,
    ) -> Result<(), ManagerError> {
        use novacron_vmm_api::migration::Compression;
        if !matches!(args.compression, Compression::Delta | Compression::Auto) {
            return Ok(());
        }
        let (name, memory_mib, cgroup) = {
            let d = h.data();
            (d.config.name.clone(), d.config.memory_mib, d.cgroup.clone())
        };
        let Some(cg) = cgroup else {
            return Ok(());
        };
        let cache = match args.cache_bytes {
            0 => crate::cgroup::delta_cache_bytes(memory_mib),
            b => b,
        };
        let limit = cg.memory_limit_bytes.saturating_add(cache);
        if cg
            .memory_limit()
            .is_some_and(|now| now == 0 || now >= limit)
        {
            return Ok(());
        }
        cg.set_memory_limit(limit)
            .map_err(|source| ManagerError::Cgroup {
                vm: name.clone(),
                source,
            })?;
        tracing::info!(vm = %name, limit_mib = limit >> 20, "memory limit raised for the delta cache");
        Ok(())
    }

    /// Migration source: sends `migrate` to the VMM and waits for the summary. On success the
    /// VMM has exited and the VM is forgotten here (its console log is kept under
    /// `<data-dir>/migrated/`).
    pub async fn migrate_out(
        &self,
        id: &str,
        to: &str,
        options: &apb::MigrateOptions,
        migration_id: &str,
        tls: Option<&apb::MigrationTls>,
    ) -> Result<apb::MigrateOutResponse, ManagerError> {
        if let Some(done) = self.finished_migration(migration_id) {
            return Ok(done);
        }
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        if let Some(done) = self.finished_migration(migration_id) {
            return Ok(done);
        }
        let tls = credential(tls)?;
        if !to.starts_with("tls:") {
            return Err(ManagerError::InvalidArgument(format!(
                "migration target {to:?} is not tls:HOST:PORT (the agent sends migration streams over TLS only)"
            )));
        }
        let to = if self.faults.migrate_unreachable {
            tracing::warn!("test fault migrate-unreachable: sending to a closed port");
            format!("tls:127.0.0.1:{}", closed_port())
        } else if let Some(port) = self.faults.migrate_via_port {
            tracing::warn!(port, "test fault migrate-via: sending through a relay");
            format!("tls:127.0.0.1:{port}")
        } else {
            to.to_string()
        };
        let mut args = vmm_client::migrate_options(&to, options, migration_id)
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        args.tls = Some(MigrationTls {
            ca_pem: tls.ca_pem.clone(),
            cert_pem: tls.cert_pem.clone(),
            key_pem: tls.key_pem.clone(),
        });
        self.make_room_for_delta_cache(&h, &args)?;
        let (socket, pid, dir) = {
            let mut d = h.data();
            d.refresh();
            if !matches!(d.state, apb::VmState::Running | apb::VmState::Paused) {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is not running here",
                    d.config.name
                )));
            }
            d.migration = Some(apb::MigrationProgress {
                migration_id: migration_id.to_string(),
                role: apb::MigrationRole::Source as i32,
                phase: apb::MigrationPhase::Transferring as i32,
                peer: args.to.clone(),
                started_at_ms: now_ms(),
                ..Default::default()
            });
            (d.meta.socket.clone(), d.pid, d.dir.clone())
        };
        let started = Instant::now();
        let timeout = if options.timeout_s > 0 {
            Duration::from_secs(u64::from(options.timeout_s) + 30)
        } else {
            Duration::from_secs(3600)
        };
        if self.faults.delay_migrate_ms > 0 {
            tracing::warn!(
                ms = self.faults.delay_migrate_ms,
                "test fault delay-migrate"
            );
            tokio::time::sleep(Duration::from_millis(self.faults.delay_migrate_ms)).await;
        }
        tracing::info!(id, to = %args.to, "migrating out");
        match vmm_client::migrate(&socket, &args, timeout).await {
            Ok(summary) => {
                let summary = crate::summary::to_proto(&summary);
                // The source VMM exits 0 once the destination confirmed.
                wait_exit(pid, &socket, Duration::from_secs(30)).await;
                let status = {
                    let mut d = h.data();
                    if let Some(m) = d.migration.as_mut() {
                        m.phase = apb::MigrationPhase::Completed as i32;
                        m.summary = Some(summary.clone());
                        m.elapsed_ms = started.elapsed().as_millis() as u64;
                    }
                    d.refresh();
                    d.status()
                };
                self.keep_console_log(id, &dir);
                self.remove_locked(&h).await?;
                let resp = apb::MigrateOutResponse {
                    summary: Some(summary),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    status: Some(status),
                };
                if !migration_id.is_empty() {
                    self.finished
                        .lock()
                        .insert(migration_id.to_string(), resp.clone());
                }
                tracing::info!(id, ms = resp.elapsed_ms, "migrated out");
                if self.faults.drop_migrate_reply {
                    tracing::warn!("test fault drop-migrate-reply: answering with an error");
                    return Err(ManagerError::Unavailable(
                        "test fault drop-migrate-reply: the migration's answer was dropped".into(),
                    ));
                }
                Ok(resp)
            }
            Err(e) => {
                // Did the VMM end in doubt (final frame sent, no confirmation)?
                if let Ok(o) = vmm_client::observe(&socket, Duration::from_secs(2)).await {
                    self.take_observed(&h, o);
                }
                let mut d = h.data();
                d.refresh();
                let in_doubt = d.in_doubt;
                if let Some(m) = d.migration.as_mut() {
                    m.phase = if in_doubt {
                        apb::MigrationPhase::Settling
                    } else {
                        apb::MigrationPhase::Failed
                    } as i32;
                    m.error = e.to_string();
                }
                if in_doubt {
                    return Err(ManagerError::Aborted(format!(
                        "migration of {} is in doubt (the final pass was sent, no confirmation seen): {e}; the guest stays paused until settled",
                        d.config.name
                    )));
                }
                Err(ManagerError::Aborted(format!(
                    "migration of {} failed: {e}",
                    d.config.name
                )))
            }
        }
    }

    /// Migration source: `cancel` on the VMM of a VM that is migrating out (the guest
    /// resumes here). Does not wait for the migration's lock: the MigrateOut call holding it
    /// ends with the VMM's answer.
    pub async fn cancel_migration(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let socket = {
            let mut d = h.data();
            d.refresh();
            let source = d
                .migration
                .as_ref()
                .is_some_and(|m| m.role == apb::MigrationRole::Source as i32);
            if d.state != apb::VmState::Migrating && !source {
                return Err(ManagerError::FailedPrecondition(format!(
                    "vm {} is not migrating out of this host",
                    d.config.name
                )));
            }
            d.meta.socket.clone()
        };
        vmm_client::cancel(&socket, Duration::from_secs(10))
            .await
            .map_err(|e| match e {
                VmmClientError::Refused(m) => ManagerError::FailedPrecondition(m),
                other => ManagerError::Vmm(other),
            })?;
        let mut d = h.data();
        d.refresh();
        Ok(d.status())
    }

    /// Migration source: settles a VM after an ambiguous migration, once the controller knows
    /// what the destination holds. `destination_runs`: this copy is shut down (an in-doubt
    /// VMM accepts `shutdown`) and forgotten; otherwise an in-doubt copy is resumed.
    pub async fn settle_in_doubt(
        &self,
        id: &str,
        destination_runs: bool,
    ) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        let (socket, dir, live) = {
            let mut d = h.data();
            d.refresh();
            (d.meta.socket.clone(), d.dir.clone(), d.pid > 0)
        };
        if live {
            if let Ok(o) = vmm_client::observe(&socket, Duration::from_secs(1)).await {
                self.take_observed(&h, o);
            }
        }
        if destination_runs {
            let status = {
                let mut d = h.data();
                d.refresh();
                if let Some(m) = d.migration.as_mut() {
                    m.phase = apb::MigrationPhase::Completed as i32;
                }
                d.status()
            };
            self.stop_locked(&h, Duration::from_secs(2), false).await?;
            self.keep_console_log(id, &dir);
            self.remove_locked(&h).await?;
            tracing::info!(
                id,
                "settled: the destination runs the vm; source copy removed"
            );
            return Ok(status);
        }
        let in_doubt = h.data().in_doubt;
        if in_doubt {
            vmm_client::resume(&socket, Duration::from_secs(5)).await?;
            if let Ok(o) = vmm_client::observe(&socket, Duration::from_secs(1)).await {
                self.take_observed(&h, o);
            }
            tracing::info!(
                id,
                "settled: the destination does not run the vm; resumed here"
            );
        }
        let mut d = h.data();
        d.in_doubt = false;
        if let Some(m) = d.migration.as_mut() {
            m.phase = apb::MigrationPhase::Failed as i32;
        }
        d.refresh();
        Ok(d.status())
    }

    pub(super) fn finished_migration(&self, migration_id: &str) -> Option<apb::MigrateOutResponse> {
        if migration_id.is_empty() {
            return None;
        }
        self.finished.lock().get(migration_id).cloned()
    }
}
