//! Validation of VM specs as users give them.

use novacron_proto::controller as pb;

use super::{ControllerError, Result};
use crate::util::valid_name;

/// Validates a VM spec as given by a user.
pub fn validate_spec(spec: &pb::VmSpec) -> Result<()> {
    let bad = |m: String| Err(ControllerError::InvalidArgument(m));
    if !valid_name(&spec.name) {
        return bad(format!(
            "invalid vm name {:?}: 1-63 characters of letters, digits, '-', '_', '.', starting with a letter or digit",
            spec.name
        ));
    }
    if spec.vcpus < 1 || spec.vcpus > 256 {
        return bad(format!(
            "vcpus must be between 1 and 256, got {}",
            spec.vcpus
        ));
    }
    if spec.memory_mib < 1 || spec.memory_mib > 4 * 1024 * 1024 {
        return bad(format!(
            "memory must be between 1 MiB and 4 TiB, got {} MiB",
            spec.memory_mib
        ));
    }
    if spec.kernel.is_empty() && spec.image.is_empty() {
        return bad("a kernel or an image is required".into());
    }
    for (i, d) in spec.disks.iter().enumerate() {
        if d.size_mib < 0 {
            return bad(format!("disk {i}: size must not be negative"));
        }
        if d.image.is_empty() && d.size_mib == 0 {
            return bad(format!("disk {i}: give an image or a size"));
        }
        if d.shared && (d.image.is_empty() || d.clone || d.size_mib != 0) {
            return bad(format!(
                "disk {i}: a shared disk is an image file every host reaches, used in place: give image=PATH, without size or clone"
            ));
        }
    }
    for (i, n) in spec.networks.iter().enumerate() {
        if !n.mac.is_empty() && !valid_mac(&n.mac) {
            return bad(format!("network {i}: invalid mac {:?}", n.mac));
        }
    }
    if pb::RestartPolicy::try_from(spec.restart_policy).is_err() {
        return bad(format!("unknown restart policy {}", spec.restart_policy));
    }
    Ok(())
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}
