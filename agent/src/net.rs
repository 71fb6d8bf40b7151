//! VM network interfaces: one persistent tap device per NIC (`nc<vm-id prefix><index>`),
//! attached to the NIC's bridge, created with `ip` from iproute2 and removed with the VM.

use std::process::Command;

/// Errors managing tap devices.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` failed.
    #[error("ip {args}: {message}")]
    Ip {
        /// Arguments.
        args: String,
        /// stderr or the OS error.
        message: String,
    },
}

/// The tap device name of NIC `index` of VM `vm_id` (at most 15 bytes).
pub fn tap_name(vm_id: &str, index: usize) -> String {
    let short: String = vm_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("nc{short}{index}")
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip {
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates (if missing) and brings up the tap of a NIC, attached to `bridge` when given.
pub fn ensure_tap(name: &str, bridge: &str) -> Result<(), NetError> {
    if !exists(name) {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    }
    if !bridge.is_empty() {
        ip(&["link", "set", name, "master", bridge])?;
    }
    ip(&["link", "set", name, "up"])
}

/// Removes a tap (missing is fine).
pub fn remove_tap(name: &str) -> Result<(), NetError> {
    if exists(name) {
        ip(&["link", "del", name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_ifnamsiz() {
        let n = super::tap_name("0123abcd-ef01-2345-6789-abcdef012345", 12);
        assert_eq!(n, "nc0123abcd12");
        assert!(n.len() <= 15);
    }
}
