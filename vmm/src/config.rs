//! The machine configuration a VMM is started with, and parsers for its command-line values.

pub use novacron_vmm_api::units::{parse_rate, parse_size, UnitError};
use std::path::PathBuf;
use thiserror::Error;

/// Errors in user-supplied configuration values.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A size or rate that does not parse.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// A size outside what the VMM supports.
    #[error("memory size {got} MiB out of range: must be between {min} MiB and {max} MiB")]
    MemoryOutOfRange {
        /// Requested MiB.
        got: u64,
        /// Minimum MiB.
        min: u64,
        /// Maximum MiB.
        max: u64,
    },
    /// A vCPU count outside what the VMM supports.
    #[error("vcpu count {0} out of range: must be between 1 and {1}")]
    VcpusOutOfRange(u32, u32),
    /// A serial target that does not parse.
    #[error("invalid serial target '{0}': expected stdout, none or file:PATH")]
    BadSerial(String),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// The VMM's stdout; stdin feeds the guest when it is a terminal.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialTarget {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(SerialTarget::Stdout),
            "none" | "null" => Ok(SerialTarget::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialTarget::File(PathBuf::from(p))),
                _ => Err(ConfigError::BadSerial(s.to_string())),
            },
        }
    }
}

/// Smallest guest RAM accepted.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest RAM accepted.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 254;

/// Parses a guest memory size and checks it is in range.
pub fn parse_memory(s: &str) -> Result<u64, ConfigError> {
    let bytes = parse_size(s)?;
    let mib = bytes >> 20;
    if bytes % (1 << 20) != 0 || !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(ConfigError::MemoryOutOfRange {
            got: mib,
            min: MIN_MEMORY_MIB,
            max: MAX_MEMORY_MIB,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_range_is_checked() {
        assert!(parse_memory("1M").is_err());
        assert!(parse_memory("128M").is_ok());
        assert!(parse_memory("1500K").is_err());
    }

    #[test]
    fn disks_and_nets_parse() {
        let d: DiskConfig = "/tmp/a.img,ro".parse().expect("disk");
        assert!(d.read_only);
        assert!("/tmp/a,bogus".parse::<DiskConfig>().is_err());
        let n: NetConfig = "tap=tap0,mac=52:54:00:12:34:56".parse().expect("net");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert!("tap=tap0,mac=52:54".parse::<NetConfig>().is_err());
        assert!("mac=52:54:00:12:34:56".parse::<NetConfig>().is_err());
    }

    #[test]
    fn serial_targets_parse() {
        assert_eq!(
            "stdout".parse::<SerialTarget>().ok(),
            Some(SerialTarget::Stdout)
        );
        assert_eq!(
            "none".parse::<SerialTarget>().ok(),
            Some(SerialTarget::None)
        );
        assert_eq!(
            "file:/tmp/x".parse::<SerialTarget>().ok(),
            Some(SerialTarget::File("/tmp/x".into()))
        );
        assert!("file:".parse::<SerialTarget>().is_err());
        assert!("tcp".parse::<SerialTarget>().is_err());
    }
}

/// Everything a VMM process is started with.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Kernel image (ELF or bzImage); absent for restore and incoming migration.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Serial console target.
    pub serial: SerialTarget,
    /// virtio-blk disks, in order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, in order.
    pub nets: Vec<NetConfig>,
}

/// A virtio-blk disk: `PATH[,ro]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// Backing raw file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("disk needs a path: PATH[,ro]")?;
        let mut read_only = false;
        for opt in parts {
            match opt {
                "ro" | "readonly" => read_only = true,
                "rw" => read_only = false,
                other => return Err(format!("unknown disk option '{other}': expected ro or rw")),
            }
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// A virtio-net interface on a tap device: `tap=NAME[,mac=MAC]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// Tap device name (opened, or created if missing).
    pub tap: String,
    /// Guest MAC address.
    pub mac: Option<[u8; 6]>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", v)) if !v.is_empty() && v.len() < 16 => tap = Some(v.to_string()),
                Some(("tap", v)) => {
                    return Err(format!("invalid tap name '{v}': 1 to 15 characters"))
                }
                Some(("mac", v)) => mac = Some(parse_mac(v)?),
                _ => {
                    return Err(format!(
                        "unknown net option '{opt}': expected tap=NAME[,mac=MAC]"
                    ))
                }
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or("net needs tap=NAME")?,
            mac,
        })
    }
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad =
        || format!("invalid MAC address '{s}': expected six hex bytes like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, part) in s.split(':').enumerate() {
        if i >= 6 || part.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        n += 1;
    }
    if n != 6 {
        return Err(bad());
    }
    Ok(mac)
}

impl MachineConfig {
    /// Checks ranges that clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || u32::from(self.vcpus) > MAX_VCPUS {
            return Err(ConfigError::VcpusOutOfRange(
                u32::from(self.vcpus),
                MAX_VCPUS,
            ));
        }
        Ok(())
    }
}
