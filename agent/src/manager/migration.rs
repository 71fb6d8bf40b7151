//! Live migration on this host: preparing and aborting an incoming VMM (destination), and
//! driving an outgoing migration to its summary (source).

use std::sync::Arc;
use std::time::{Duration, Instant};

use novacron_proto::agent as apb;

use crate::supervise::{now_ms, Launch};
use crate::vmm_client;

use super::files::free_port;
use super::lifecycle::wait_exit;
use super::{Manager, ManagerError, Meta, Role, VmData, VmHandle};

impl Manager {
    /// Migration destination: starts an incoming VMM and returns its `tcp:HOST:PORT`.
    pub async fn prepare_incoming(
        &self,
        c: apb::VmConfig,
        migration_id: &str,
    ) -> Result<(String, apb::VmStatus), ManagerError> {
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
        let addr = format!("tcp:{}:{port}", self.cfg.migration_host);
        let meta = Meta {
            socket: self.socket_path(&c.id),
            role: Role::Incoming,
            migration_id: migration_id.to_string(),
            incoming_addr: addr.clone(),
            created_at_ms: now_ms(),
            ever_started: true,
        };
        if let Err(e) = self.materialise(&c, &meta) {
            let _ = std::fs::remove_dir_all(self.vm_dir(&c.id));
            return Err(e);
        }
        let argv = self.vmm_args(&c, &meta.socket, Some(&addr))?;
        let boot_argv = if c.kernel.is_empty() {
            argv.clone()
        } else {
            self.vmm_args(&c, &meta.socket, None)?
        };
        let launch = Launch {
            vmm: self.cfg.vmm_binary.clone(),
            argv,
            boot_argv,
        };
        let data = VmData {
            state: apb::VmState::Incoming,
            migration: Some(apb::MigrationProgress {
                migration_id: migration_id.to_string(),
                role: apb::MigrationRole::Destination as i32,
                phase: apb::MigrationPhase::Waiting as i32,
                peer: String::new(),
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
                Ok((addr, status))
            }
            Err(e) => {
                let _ = self.stop_locked(&h, Duration::ZERO, true).await;
                let _ = self.remove_locked(&h).await;
                Err(e)
            }
        }
    }

    /// Migration destination: drops an incoming VM that did not complete.
    pub async fn abort_incoming(&self, id: &str) -> Result<apb::VmStatus, ManagerError> {
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
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

    /// Migration source: sends `migrate` to the VMM and waits for the summary. On success the
    /// VMM has exited and the VM is forgotten here (its console log is kept under
    /// `<data-dir>/migrated/`).
    pub async fn migrate_out(
        &self,
        id: &str,
        to: &str,
        options: &apb::MigrateOptions,
        migration_id: &str,
    ) -> Result<apb::MigrateOutResponse, ManagerError> {
        if let Some(done) = self.finished_migration(migration_id) {
            return Ok(done);
        }
        let h = self.handle(id)?;
        let _op = h.op.lock().await;
        if let Some(done) = self.finished_migration(migration_id) {
            return Ok(done);
        }
        if !to.starts_with("tcp:") {
            return Err(ManagerError::InvalidArgument(format!(
                "migration target {to:?} is not tcp:HOST:PORT"
            )));
        }
        let args = vmm_client::migrate_options(to, options)
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
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
                Ok(resp)
            }
            Err(e) => {
                let mut d = h.data();
                if let Some(m) = d.migration.as_mut() {
                    m.phase = apb::MigrationPhase::Failed as i32;
                    m.error = e.to_string();
                }
                d.refresh();
                Err(ManagerError::Aborted(format!(
                    "migration of {} failed: {e}",
                    d.config.name
                )))
            }
        }
    }

    pub(super) fn finished_migration(&self, migration_id: &str) -> Option<apb::MigrateOutResponse> {
        if migration_id.is_empty() {
            return None;
        }
        self.finished.lock().get(migration_id).cloned()
    }
}
