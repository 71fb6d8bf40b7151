//! Storage objects of the controller (issue 12): snapshots of VMs (memory, devices and disks,
//! taken and kept by the agent of the VM's host), restores, clones, templates, and backups. The
//! records live in the store's `storage` table under keys prefixed by kind, written in the
//! same transaction as the event that describes the change:
//!
//! - `snap/<vm-id>/<name>`: a [`pb::Snapshot`];
//! - `tmpl/<vm-id>`: a [`pb::Template`], the VM itself marked as a template (snapshots carry
//!   their own `template` flag).
//!
//! Files: [`snapshots`] (take, list, delete, restore), [`clones`] (clones and templates),
//! [`backup`] (export to and import from backup files),
//! [`api`] (the `StorageService` of `proto/storage.proto`). Errors are the controller's
//! ([`ControllerError`]), with the same status codes as the VM service.

pub mod api;
mod backup;
mod clones;
mod snapshots;

use std::time::Duration;

use novacron_proto::controller as pb;
use prost::Message;

use crate::controller::{agent_err, Controller, ControllerError, Result};
use crate::store::Op;

/// Deadline of an agent's snapshot or restore (memory and disks are written meanwhile).
const STORAGE_CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// The store key of a snapshot.
fn snap_key(vm_id: &str, name: &str) -> String {
    format!("snap/{vm_id}/{name}")
}

/// The store key of a VM marked as a template.
fn tmpl_key(vm_id: &str) -> String {
    format!("tmpl/{vm_id}")
}

/// Whether `n` can name a snapshot: 1-64 of `[A-Za-z0-9._-]`, not starting with `.` (the
/// agent makes it a directory name).
pub fn valid_snapshot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn check_snapshot_name(n: &str) -> Result<()> {
    if valid_snapshot_name(n) {
        Ok(())
    } else {
        Err(ControllerError::InvalidArgument(format!(
            "invalid snapshot name {n:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

fn decode<M: Message + Default>(key: &str, b: &[u8]) -> Result<M> {
    M::decode(b).map_err(|e| ControllerError::Internal(format!("stored record {key}: {e}")))
}

impl Controller {
    /// A stored snapshot, NOT_FOUND naming the VM when missing.
    pub(crate) fn snapshot_record(&self, vm: &pb::Vm, name: &str) -> Result<pb::Snapshot> {
        let key = snap_key(&vm.id, name);
        match self.store.record(&key)? {
            Some(b) => decode(&key, &b),
            None => Err(ControllerError::NotFound(format!(
                "vm {} has no snapshot {name}",
                vm.name
            ))),
        }
    }

    /// Every stored snapshot of `vm_id` (all VMs when `None`), in key order.
    pub(crate) fn snapshot_records(&self, vm_id: Option<&str>) -> Result<Vec<pb::Snapshot>> {
        let prefix = match vm_id {
            Some(id) => format!("snap/{id}/"),
            None => "snap/".to_string(),
        };
        self.store
            .records(&prefix)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// Forgets the storage records of a deleted VM (its snapshot files went with its
    /// directory on its host).
    pub(crate) fn forget_storage_of(&self, vm_id: &str) -> Result<()> {
        let mut keys: Vec<String> = self
            .store
            .records(&format!("snap/{vm_id}/"))?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.push(tmpl_key(vm_id));
        let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::DeleteRecord(k)).collect();
        self.store.apply(&ops)?;
        Ok(())
    }

    /// The storage client of a Ready host's agent.
    fn storage_client(
        &self,
        host: &str,
    ) -> Result<
        novacron_proto::agent::agent_storage_client::AgentStorageClient<tonic::transport::Channel>,
    > {
        Ok(self.agents.storage(&self.agent_addr(host)?)?)
    }
}

/// Maps an agent's storage error.
fn storage_err(host: &str) -> impl Fn(tonic::Status) -> ControllerError + '_ {
    move |s| agent_err(host, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_and_keys() {
        assert!(valid_snapshot_name("before-upgrade.1"));
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_snapshot_name(bad), "{bad}");
        }
        assert_eq!(snap_key("id", "s"), "snap/id/s");
        // Prefix scans of one VM never see another VM whose id extends it.
        assert!(!snap_key("id2", "s").starts_with("snap/id/"));
    }
}
