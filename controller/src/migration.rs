//! Live migration and host drain orchestration.
//!
//! A migration claims room on the target first (atomically, like a create), records the VM as
//! Migrating, asks the destination agent to prepare an incoming VMM (started with the
//! migration's id and an accept deadline), has the source agent drive `migrate` towards it
//! and, on success, moves the VM's host and releases the source's claim. Any failure is
//! ambiguous until both agents have said what they hold: the controller settles it
//! ([`crate::settle`]) rather than guessing, so the guest ends with exactly one running copy.
//! A drain cordons the host and migrates its VMs a few at a time.

use std::sync::Arc;
use std::time::Instant;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use tokio::sync::Semaphore;

use crate::agent_client::{request, CALL_TIMEOUT};
use crate::controller::{agent_err, Controller, ControllerError, Result};
use crate::settle::Settled;
use crate::state::{agent_config, Needs};
use crate::util::{now_ms, short_summary};

/// How long a destination VMM waits for its stream when the migration has no timeout.
const INCOMING_WAIT_S: u32 = 600;
/// Added to the migration's timeout for the destination's wait.
const INCOMING_MARGIN_S: u32 = 30;
/// How long a failed MigrateVm call keeps settling before it answers UNAVAILABLE and leaves
/// the rest to the reconcile loop.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// Pause between two settling attempts.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Errors specific to drains.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A drain task panicked or was cancelled.
    #[error("drain task failed: {0}")]
    Task(String),
}

impl From<MigrationError> for ControllerError {
    fn from(e: MigrationError) -> Self {
        ControllerError::Internal(e.to_string())
    }
}

impl Controller {
    /// Live-migrates a running VM (see the module documentation).
    pub async fn migrate_vm(&self, req: pb::MigrateVmRequest) -> Result<pb::MigrateVmResponse> {
        let rid = req.request_id.clone();
        self.idempotent(&rid, "MigrateVm", async {
            let id = self.state().vm_id(&req.vm)?;
            let phase = self.state().find_vm(&id)?.phase;
            if phase == pb::VmPhase::Stopped as i32 || phase == pb::VmPhase::Failed as i32 {
                let started = Instant::now();
                let (vm, source, target) = self.cold_move(&id, &req.target_host).await?;
                let r = pb::MigrateVmResponse {
                    vm: Some(vm),
                    source_host: source,
                    target_host: target,
                    summary: None,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                };
                return Ok((r, id.clone()));
            }
            let r = self
                .migrate_locked(
                    &id,
                    &req.target_host,
                    req.options.clone().unwrap_or_default(),
                )
                .await?;
            Ok((r, id.clone()))
        })
        .await
    }

    async fn migrate_locked(
        &self,
        id: &str,
        target: &str,
        mut opts: apb::MigrateOptions,
    ) -> Result<pb::MigrateVmResponse> {
        opts.auto_converge |= self.cfg.auto_converge;
        if opts.downtime_ms == 0 {
            opts.downtime_ms = self.cfg.downtime_ms;
        }
        let _g = self.lock_key(id).await;
        let started = Instant::now();
        // Random, hex: the destination refuses a stream carrying any other id.
        let migration_id = uuid::Uuid::new_v4().simple().to_string();
        // Validate, claim on the target and record the migration.
        let (vm, source, target) = {
            let mut st = self.state();
            let mut vm = st.find_vm(id)?.clone();
            if vm.phase != pb::VmPhase::Running as i32 {
                let phase = pb::VmPhase::try_from(vm.phase)
                    .map(|p| p.as_str_name())
                    .unwrap_or("?");
                return Err(ControllerError::FailedPrecondition(format!(
                    "vm {} is not running (phase {phase}); only running VMs migrate live",
                    vm.name
                )));
            }
            let source = vm.host.clone();
            if !st.host(&source)?.ready() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "source host {source} is NotReady"
                )));
            }
            let needs = Needs::of(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default()));
            let exclude = [source.as_str()];
            let target = if target.is_empty() {
                st.sched.place(&needs.request(id, &exclude))?
            } else {
                let e = st.host(target)?;
                if target == source {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "vm {} is already on {target}",
                        vm.name
                    )));
                }
                if !e.ready() {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host {target} is NotReady"
                    )));
                }
                if e.host.cordoned {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host {target} is cordoned"
                    )));
                }
                st.sched.claim(target, &needs.request(id, &exclude))?;
                target.to_string()
            };
            vm.phase = pb::VmPhase::Migrating as i32;
            vm.migration = Some(pb::MigrationInfo {
                id: migration_id.clone(),
                source_host: source.clone(),
                target_host: target.clone(),
                phase: apb::MigrationPhase::Preparing as i32,
                started_at_ms: now_ms(),
                ..Default::default()
            });
            st.refresh_host_counts();
            match self.save_vm(&mut st, vm) {
                Ok(vm) => (vm, source, target),
                Err(e) => {
                    st.sched.release(&target, id);
                    return Err(e);
                }
            }
        };
        self.emit_vm("MigrationStarted", &vm, format!("{source} -> {target}"));

        match self
            .run_migration(&vm, &source, &target, &migration_id, opts)
            .await
        {
            Ok((summary, status)) => {
                let vm = {
                    let mut st = self.state();
                    let mut cur = st.find_vm(id)?.clone();
                    st.sched.release(&source, id);
                    cur.host = target.clone();
                    Self::apply_status(&mut cur, status);
                    cur.phase = pb::VmPhase::Running as i32;
                    if let Some(m) = cur.migration.as_mut() {
                        m.phase = apb::MigrationPhase::Completed as i32;
                        m.ended_at_ms = now_ms();
                        m.summary = summary.clone();
                    }
                    st.refresh_host_counts();
                    self.save_vm(&mut st, cur)?
                };
                let elapsed = started.elapsed().as_millis() as u64;
                self.emit_vm(
                    "MigrationCompleted",
                    &vm,
                    format!(
                        "{source} -> {target} in {elapsed} ms ({})",
                        summary.as_ref().map(short_summary).unwrap_or_default()
                    ),
                );
                Ok(pb::MigrateVmResponse {
                    vm: Some(vm),
                    source_host: source,
                    target_host: target,
                    summary,
                    elapsed_ms: elapsed,
                })
            }
            Err(e) => {
                // Ambiguous until both agents say what they hold: settle, never guess.
                let why = e.to_string();
                if let Err(err) =
                    self.record_migration_phase(id, apb::MigrationPhase::Settling, &why)
                {
                    tracing::warn!("recording the settling phase of {id}: {err}");
                }
                let deadline = Instant::now() + SETTLE_WAIT.min(self.cfg.migrate_timeout);
                let settled = loop {
                    let r = self.settle_once(id, None, &why).await;
                    if Instant::now() >= deadline {
                        break r;
                    }
                    match r {
                        Ok(Settled::Pending(p)) => {
                            tracing::info!("migration of {id} not settled yet: {p}")
                        }
                        Err(err) => tracing::warn!("settling the migration of {id}: {err}"),
                        done => break done,
                    }
                    tokio::time::sleep(SETTLE_RETRY).await;
                };
                match settled {
                    Ok(Settled::Committed(vm)) => {
                        let elapsed = started.elapsed().as_millis() as u64;
                        self.emit_vm(
                            "MigrationCompleted",
                            &vm,
                            format!("{source} -> {target} in {elapsed} ms (settled after: {why})"),
                        );
                        Ok(pb::MigrateVmResponse {
                            summary: vm.migration.as_ref().and_then(|m| m.summary.clone()),
                            vm: Some(vm),
                            source_host: source,
                            target_host: target,
                            elapsed_ms: elapsed,
                        })
                    }
                    Ok(Settled::Aborted(vm)) => {
                        self.emit_vm("MigrationFailed", &vm, format!("{source} -> {target}: {why}"));
                        Err(match e {
                            ControllerError::Unavailable(m) => ControllerError::Unavailable(
                                format!("migration failed, vm stays on {source}: {m}"),
                            ),
                            other => ControllerError::Aborted(format!(
                                "migration failed, vm stays on {source}: {other}"
                            )),
                        })
                    }
                    Ok(Settled::Pending(p)) => Err(ControllerError::Unavailable(format!(
                        "migration of {id} {source} -> {target} failed ({why}) and its outcome is not settled yet ({p}); the reconcile loop keeps asking both hosts"
                    ))),
                    Err(err) => Err(ControllerError::Unavailable(format!(
                        "migration of {id} failed ({why}); settling it: {err}; the reconcile loop keeps asking both hosts"
                    ))),
                }
            }
        }
    }

    /// Cancels the VM's migration in progress: the source agent asks its VMM to `cancel`
    /// (the guest resumes there); the MigrateVm call then settles as a failed migration.
    /// Does not take the VM's lock (the migration holds it).
    pub async fn cancel_migration(&self, req: pb::CancelMigrationRequest) -> Result<pb::Vm> {
        let vm = {
            let st = self.state();
            let id = st.vm_id(&req.vm)?;
            st.find_vm(&id)?.clone()
        };
        if vm.phase != pb::VmPhase::Migrating as i32 {
            return Err(ControllerError::FailedPrecondition(format!(
                "vm {} is not migrating",
                vm.name
            )));
        }
        let mut c = self.agents.client(&self.agent_addr(&vm.host)?)?;
        let r = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm.id.clone(),
        };
        c.cancel_migration(request(r, CALL_TIMEOUT))
            .await
            .map_err(|s| agent_err(&vm.host, s))?;
        self.events.emit(
            "MigrationCancelled",
            Some((&vm.name, &vm.id)),
            &vm.host,
            "cancel requested",
        );
        Ok(self.state().find_vm(&vm.id)?.clone())
    }

    async fn set_migration_phase(&self, id: &str, phase: apb::MigrationPhase) {
        let mut st = self.state();
        if let Ok(vm) = st.find_vm(id) {
            let mut vm = vm.clone();
            if let Some(m) = vm.migration.as_mut() {
                m.phase = phase as i32;
            }
            if let Err(e) = self.save_vm(&mut st, vm) {
                tracing::warn!("saving migration phase of {id}: {e}");
            }
        }
    }

    async fn run_migration(
        &self,
        vm: &pb::Vm,
        source: &str,
        target: &str,
        migration_id: &str,
        opts: apb::MigrateOptions,
    ) -> Result<(Option<apb::MigrationSummary>, apb::VmStatus)> {
        // The source's disk sizes: the destination creates its writable disks blank at
        // exactly these sizes for the VMM's stream to fill.
        let mut src = self.agents.client(&self.agent_addr(source)?)?;
        let disk_sizes = self.source_disk_sizes(&mut src, source, vm).await?;
        // Destination prepares an incoming VMM.
        let mut dst = self.agents.client(&self.agent_addr(target)?)?;
        let wait_s = match opts.timeout_s {
            0 => INCOMING_WAIT_S,
            t => t.saturating_add(INCOMING_MARGIN_S),
        };
        // This migration's one-time credential: each agent gets only its half.
        let cred = crate::migration_tls::issue(migration_id)
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        let prep = apb::PrepareIncomingRequest {
            request_id: String::new(),
            config: Some(agent_config(vm)),
            migration_id: migration_id.to_string(),
            incoming_timeout_s: wait_s,
            disk_sizes,
            tls: Some(crate::migration_tls::to_proto(&cred.destination)),
        };
        let addr = dst
            .prepare_incoming(request(prep, CALL_TIMEOUT))
            .await
            .map_err(|s| agent_err(target, s))?
            .into_inner()
            .address;
        self.set_migration_phase(&vm.id, apb::MigrationPhase::Transferring)
            .await;
        self.emit_vm(
            "MigrationProgress",
            vm,
            format!("destination {target} listening on {addr}; source sending"),
        );

        // Source drives the migration and waits for the summary (the phase stored above: a
        // controller restarted from here on settles the migration from both agents).
        let out = apb::MigrateOutRequest {
            request_id: String::new(),
            vm_id: vm.id.clone(),
            to: addr,
            migration_id: migration_id.to_string(),
            options: Some(opts),
            tls: Some(crate::migration_tls::to_proto(&cred.source)),
        };
        let res = src
            .migrate_out(request(out, self.cfg.migrate_timeout))
            .await
            .map_err(|s| agent_err(source, s))?
            .into_inner();

        // The destination must now report the VM running.
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let r = apb::VmRequest {
                request_id: String::new(),
                vm_id: vm.id.clone(),
            };
            match dst.get_vm(request(r, CALL_TIMEOUT)).await {
                Ok(s) => {
                    let s = s.into_inner();
                    if s.state == apb::VmState::Running as i32
                        || s.state == apb::VmState::Paused as i32
                    {
                        return Ok((res.summary, s));
                    }
                    if s.state == apb::VmState::Crashed as i32
                        || s.state == apb::VmState::Stopped as i32
                    {
                        return Err(ControllerError::Internal(format!(
                            "destination VMM exited (code {}) after the source reported success: {}",
                            s.exit_code, s.message
                        )));
                    }
                }
                Err(s) => tracing::warn!("destination status of {}: {s}", vm.name),
            }
            if Instant::now() > deadline {
                return Err(ControllerError::Internal(
                    "destination never reported the VM running".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The size of each disk of `vm` on its source host, by index (GetVm on the source's
    /// agent). A writable disk that moves must exist there.
    async fn source_disk_sizes(
        &self,
        src: &mut novacron_proto::agent::agent_client::AgentClient<tonic::transport::Channel>,
        source: &str,
        vm: &pb::Vm,
    ) -> Result<Vec<u64>> {
        let r = apb::VmRequest {
            request_id: String::new(),
            vm_id: vm.id.clone(),
        };
        let st = src
            .get_vm(request(r, CALL_TIMEOUT))
            .await
            .map_err(|s| agent_err(source, s))?
            .into_inner();
        let config = agent_config(vm);
        let mut sizes = vec![0u64; config.disks.len()];
        for d in &st.disks {
            if let Some(s) = sizes.get_mut(d.index as usize) {
                *s = d.size_bytes;
            }
        }
        for (i, d) in config.disks.iter().enumerate() {
            let in_place = !d.image.is_empty() && (d.readonly || d.shared);
            if !in_place && !d.readonly && sizes[i] == 0 {
                return Err(ControllerError::FailedPrecondition(format!(
                    "disk {i} of vm {} is missing on its source host {source} (no size reported): nothing to migrate",
                    vm.name
                )));
            }
        }
        Ok(sizes)
    }

    /// Moves a VM that is not running (stopped or failed) to `target` (empty: the
    /// scheduler picks): the target's agent creates it (not started) with its writable disks
    /// copied from the source's agent (sparse extents, zstd, crc32 per chunk, verified
    /// whole), and only then is the source's copy deleted. On any failure the target holds
    /// nothing and the source keeps the VM.
    async fn cold_move(&self, id: &str, target: &str) -> Result<(pb::Vm, String, String)> {
        let _g = self.lock_key(id).await;
        let (vm, source, target) = {
            let mut st = self.state();
            let vm = st.find_vm(id)?.clone();
            if vm.phase == pb::VmPhase::Running as i32 || vm.phase == pb::VmPhase::Migrating as i32
            {
                return Err(ControllerError::FailedPrecondition(format!(
                    "vm {} is running",
                    vm.name
                )));
            }
            let source = vm.host.clone();
            let needs = Needs::of(vm.spec.as_ref().unwrap_or(&pb::VmSpec::default()));
            let exclude = [source.as_str()];
            let target = if target.is_empty() {
                st.sched.place(&needs.request(id, &exclude))?
            } else {
                if target == source {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "vm {} is already on {target}",
                        vm.name
                    )));
                }
                let e = st.host(target)?;
                if !e.ready() || e.host.cordoned {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host {target} is NotReady or cordoned"
                    )));
                }
                st.sched.claim(target, &needs.request(id, &exclude))?;
                target.to_string()
            };
            st.refresh_host_counts();
            (vm, source, target)
        };
        let res = async {
            let src = apb::DiskSource {
                agent_address: self.agent_addr(&source)?.address,
                vm_id: id.to_string(),
                host_name: source.clone(),
            };
            self.agent_create_copied(&target, &vm, src).await?;
            // The target has every disk, verified: only now does the source's copy go.
            self.agent_delete(&source, id).await
        }
        .await;
        match res {
            Ok(()) => {
                let cur = {
                    let mut st = self.state();
                    let mut cur = st.find_vm(id)?.clone();
                    st.sched.release(&source, id);
                    cur.host = target.clone();
                    if cur.phase != pb::VmPhase::Failed as i32 {
                        cur.phase = pb::VmPhase::Stopped as i32;
                    }
                    st.refresh_host_counts();
                    self.save_vm(&mut st, cur)?
                };
                self.emit_vm(
                    "VmMoved",
                    &cur,
                    format!("stopped vm moved {source} -> {target} (disks copied)"),
                );
                Ok((cur, source, target))
            }
            Err(e) => {
                {
                    let mut st = self.state();
                    st.sched.release(&target, id);
                    st.refresh_host_counts();
                }
                // The target agent removes a failed copy itself; make sure of it.
                if let Err(err) = self.agent_delete(&target, id).await {
                    tracing::warn!("removing the failed copy of {id} on {target}: {err}");
                }
                Err(e)
            }
        }
    }

    /// Drains a host: cordons it and moves every VM off it, `parallel` at a time.
    pub async fn drain_host(
        self: &Arc<Self>,
        req: pb::DrainHostRequest,
    ) -> Result<pb::DrainHostResponse> {
        let name = req.host.clone();
        {
            let st = self.state();
            let e = st.host(&name)?;
            if !e.ready() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "host {name} is NotReady: its VMs cannot be migrated live (they are restarted elsewhere per their restart policy)"
                )));
            }
        }
        let parallel = if req.parallel == 0 {
            self.cfg.drain_parallel
        } else {
            req.parallel
        }
        .max(1);
        let this = Arc::clone(self);
        let rid = req.request_id.clone();
        self.idempotent(&rid, "DrainHost", async move {
            let (vms, was_cordoned) = {
                let mut st = this.state();
                let mut h = st.host(&name)?.host.clone();
                let was = h.cordoned;
                h.cordoned = true;
                h.draining = true;
                this.save_host(&mut st, h)?;
                st.sched.set_schedulable(&name, false);
                (st.vms_on(&name), was)
            };
            if !was_cordoned {
                this.events.emit("HostCordoned", None, &name, "drain");
            }
            this.events.emit(
                "DrainStarted",
                None,
                &name,
                format!("{} vms, {parallel} at a time", vms.len()),
            );
            let sem = Arc::new(Semaphore::new(parallel as usize));
            let mut tasks = tokio::task::JoinSet::new();
            for id in vms {
                let this = Arc::clone(&this);
                let sem = Arc::clone(&sem);
                tasks.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let (vm_name, running) = match this.get_vm(&id) {
                        Ok(vm) => (vm.name.clone(), vm.phase == pb::VmPhase::Running as i32),
                        Err(_) => return (id, Ok(String::new())), // deleted meanwhile
                    };
                    let r = if running {
                        this.migrate_locked(&id, "", apb::MigrateOptions::default())
                            .await
                            .map(|r| r.target_host)
                    } else {
                        this.cold_move(&id, "").await.map(|(_, _, t)| t)
                    };
                    (vm_name, r)
                });
            }
            let mut moved = Vec::new();
            let mut failed = Vec::new();
            while let Some(res) = tasks.join_next().await {
                let (vm, r) = res.map_err(|e| MigrationError::Task(e.to_string()))?;
                match r {
                    Ok(t) if t.is_empty() => {}
                    Ok(t) => moved.push(format!("{vm} -> {t}")),
                    Err(e) => failed.push(format!("{vm}: {e}")),
                }
            }
            moved.sort();
            failed.sort();
            let host = {
                let mut st = this.state();
                let mut h = st.host(&name)?.host.clone();
                h.draining = false;
                this.save_host(&mut st, h)?;
                st.host_view(&name)?
            };
            this.events.emit(
                "DrainCompleted",
                None,
                &name,
                format!("{} moved, {} failed", moved.len(), failed.len()),
            );
            Ok((
                pb::DrainHostResponse {
                    host: Some(host),
                    moved,
                    failed,
                },
                name.clone(),
            ))
        })
        .await
    }
}
