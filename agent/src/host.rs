//! The host's inventory: online CPUs, memory, name, and the agent's persistent id.

use std::path::Path;

/// Errors reading the inventory.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The agent id file could not be read or written.
    #[error("agent id file {path}: {source}")]
    AgentId {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// Online CPUs.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Total memory in MiB (from /proc/meminfo; 0 when unreadable).
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// The kernel's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The agent id stored in `<data-dir>/agent-id`, created on first use.
pub fn agent_id(data_dir: &Path) -> Result<String, HostError> {
    let path = data_dir.join("agent-id");
    let err = |source| HostError::AgentId {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, &id).map_err(err)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn inventory() {
        assert!(super::cpus() >= 1);
        assert!(super::memory_mib() > 0);
        let d = std::env::temp_dir().join(format!("nc-host-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = super::agent_id(&d).unwrap();
        assert_eq!(super::agent_id(&d).unwrap(), a);
        let _ = std::fs::remove_dir_all(d);
    }
}
