//! Re-adoption: after an agent restart, every VM in the data directory is read back and
//! running VMMs are kept as they are.

use std::time::Duration;

use novacron_proto::agent as apb;
use prost::Message;

use crate::supervise;
use crate::vmm_client;

use super::{io_err, Manager, ManagerError, Meta, VmData, VmHandle};

impl Manager {
    /// Re-adopts every VM in the data directory: running VMMs are kept as they are.
    pub async fn adopt(&self) -> Result<usize, ManagerError> {
        let vms_dir = self.cfg.data_dir.join("vms");
        let mut n = 0;
        let entries = std::fs::read_dir(&vms_dir).map_err(io_err(&vms_dir))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(id) = dir.file_name().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            let config = match std::fs::read(dir.join("config.pb"))
                .ok()
                .and_then(|b| apb::VmConfig::decode(b.as_slice()).ok())
            {
                Some(c) => c,
                None => {
                    tracing::warn!("skipping {}: no readable config.pb", dir.display());
                    continue;
                }
            };
            let meta: Meta = match std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(m) => m,
                None => {
                    tracing::warn!("skipping {}: no readable meta.json", dir.display());
                    continue;
                }
            };
            let mut data = VmData::created(config, dir.clone(), meta);
            // The cgroup of its last launch (running or not: deleting the VM removes it).
            data.cgroup = supervise::read_launch(&dir).ok().and_then(|l| l.cgroup);
            data.refresh();
            if data.pid > 0 {
                match vmm_client::observe(&data.meta.socket, Duration::from_secs(2)).await {
                    Ok(vmm_client::Observed::Info(info)) => data.info = Some(info),
                    Ok(vmm_client::Observed::InDoubt) => data.in_doubt = true,
                    Err(e) => {
                        data.message = format!("re-adopted, but its API does not answer: {e}")
                    }
                }
                data.adopted = true;
                data.refresh();
                tracing::info!(vm = %data.config.name, pid = data.pid, "re-adopted running vm");
            }
            self.map().insert(id, VmHandle::new(data));
            n += 1;
        }
        Ok(n)
    }
}
