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
    use std::path::Path;

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

    /// `novacron-vmm` as clap sees it, with just the `run` subcommand.
    #[derive(clap::Parser)]
    struct Vmm {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Run(RunArgs),
    }

    fn parse_run(m: &novacron_vmm_api::machine::MachineOptions) -> RunArgs {
        use clap::Parser;
        let argv = std::iter::once("novacron-vmm".to_string()).chain(m.args());
        match Vmm::try_parse_from(argv) {
            Ok(Vmm { cmd: Sub::Run(a) }) => a,
            Err(e) => panic!("{:?} does not parse: {e}", m.args()),
        }
    }

    #[test]
    fn machine_options_parse_as_run_arguments() {
        use novacron_vmm_api::machine::{Disk, MachineOptions, Nic, Serial};
        let boot = MachineOptions {
            kernel: Some("/img/vmlinux".into()),
            initrd: Some("/img/initrd".into()),
            cmdline: "console=ttyS0 reboot=k".into(),
            memory_mib: 512,
            vcpus: 4,
            serial: Serial::File("/vm/console.log".into()),
            api_socket: Some("/vm/api.sock".into()),
            disks: vec![
                Disk {
                    path: "/vm/root.img".into(),
                    read_only: false,
                    shared: false,
                },
                Disk {
                    path: "/vm/seed.img".into(),
                    read_only: true,
                    shared: false,
                },
                Disk {
                    path: "/nfs/data.img".into(),
                    read_only: false,
                    shared: true,
                },
            ],
            nets: vec![
                Nic {
                    tap: "nc-a0".into(),
                    mac: Some("52:54:00:12:34:56".into()),
                },
                Nic {
                    tap: "nc-a1".into(),
                    mac: None,
                },
            ],
            paused: true,
            ..Default::default()
        };
        let a = parse_run(&boot);
        assert_eq!(a.kernel.as_deref(), Some(Path::new("/img/vmlinux")));
        assert_eq!(a.initrd.as_deref(), Some(Path::new("/img/initrd")));
        assert_eq!(a.cmdline, "console=ttyS0 reboot=k");
        assert_eq!(a.memory, 512 << 20);
        assert_eq!(a.vcpus, 4);
        assert_eq!(a.serial, SerialTarget::File("/vm/console.log".into()));
        assert_eq!(a.api_socket.as_deref(), Some(Path::new("/vm/api.sock")));
        assert_eq!(
            a.disks,
            [
                DiskConfig {
                    path: "/vm/root.img".into(),
                    read_only: false,
                    shared: false
                },
                DiskConfig {
                    path: "/vm/seed.img".into(),
                    read_only: true,
                    shared: false
                },
                DiskConfig {
                    path: "/nfs/data.img".into(),
                    read_only: false,
                    shared: true
                }
            ]
        );
        assert_eq!(
            a.nets,
            [
                NetConfig {
                    tap: "nc-a0".into(),
                    mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
                },
                NetConfig {
                    tap: "nc-a1".into(),
                    mac: None
                }
            ]
        );
        assert!(a.paused && a.incoming.is_none() && a.restore.is_none());

        let incoming = MachineOptions {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            paused: false,
            serial: Serial::None,
            incoming: Some("tcp:127.0.0.1:4444".into()),
            migration_id: Some("mig-7".into()),
            incoming_timeout_s: Some(45),
            ..boot.clone()
        };
        let a = parse_run(&incoming);
        assert_eq!(a.incoming.as_deref(), Some("tcp:127.0.0.1:4444"));
        assert_eq!(a.migration_id.as_deref(), Some("mig-7"));
        assert_eq!(a.incoming_timeout, Some(45));
        assert!(a.migration_tls_ca.is_none());
        let tls = parse_run(&MachineOptions {
            incoming: Some("tls:127.0.0.1:4444".into()),
            incoming_tls: Some(novacron_vmm_api::migration::TlsFiles {
                ca: "/d/ca.pem".into(),
                cert: "/d/cert.pem".into(),
                key: "/d/key.pem".into(),
            }),
            ..incoming.clone()
        });
        assert_eq!(
            (
                tls.migration_tls_ca.as_deref(),
                tls.migration_tls_cert.as_deref(),
                tls.migration_tls_key.as_deref()
            ),
            (
                Some(Path::new("/d/ca.pem")),
                Some(Path::new("/d/cert.pem")),
                Some(Path::new("/d/key.pem"))
            )
        );
        assert!(a.kernel.is_none() && a.cmdline.is_empty() && !a.paused);
        assert_eq!(a.serial, SerialTarget::None);
        assert_eq!(
            (a.memory, a.vcpus, a.disks.len(), a.nets.len()),
            (512 << 20, 4, 3, 2)
        );

        let restore = MachineOptions {
            restore: Some("/snap".into()),
            serial: Serial::Stdout,
            ..incoming.clone()
        };
        let restore = MachineOptions {
            incoming: None,
            migration_id: None,
            incoming_timeout_s: None,
            ..restore
        };
        let a = parse_run(&restore);
        assert_eq!(a.restore.as_deref(), Some(Path::new("/snap")));
        assert_eq!(a.serial, SerialTarget::Stdout);
    }
}

/// The options of `novacron-vmm run` (the command line `novacron_vmm_api::machine::MachineOptions`
/// produces).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Kernel: ELF vmlinux, bzImage, or the test guest.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest RAM, e.g. 128M or 1G.
    #[arg(long, default_value = "128M", value_parser = parse_memory)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub vcpus: u8,
    /// Serial console: stdout, file:PATH or none.
    #[arg(long, default_value = "stdout")]
    pub serial: SerialTarget,
    /// Control socket path.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// virtio-blk disk backed by a raw file: PATH[,ro] (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<DiskConfig>,
    /// virtio-net interface on a tap device: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net")]
    pub nets: Vec<NetConfig>,
    /// Restore a snapshot directory (written by `snapshot`) instead of booting.
    #[arg(long, conflicts_with_all = ["kernel", "incoming"])]
    pub restore: Option<PathBuf>,
    /// Wait for an incoming migration on tls:HOST:PORT (mutual TLS with the
    /// --migration-tls-* credential) or tcp:HOST:PORT (plain, debugging only) instead of
    /// booting.
    #[arg(long, conflicts_with = "kernel")]
    pub incoming: Option<String>,
    /// With --incoming tls:...: the migration's CA certificate (PEM).
    #[arg(long, requires_all = ["incoming", "migration_tls_cert", "migration_tls_key"])]
    pub migration_tls_ca: Option<PathBuf>,
    /// With --incoming tls:...: this destination's certificate (PEM), signed by that CA.
    #[arg(long, requires = "migration_tls_ca")]
    pub migration_tls_cert: Option<PathBuf>,
    /// With --incoming tls:...: this destination's private key (PEM).
    #[arg(long, requires = "migration_tls_ca")]
    pub migration_tls_key: Option<PathBuf>,
    /// With --incoming: the migration id the source's stream must carry; streams with
    /// another id are refused and the VMM keeps waiting.
    #[arg(long, requires = "incoming")]
    pub migration_id: Option<String>,
    /// With --incoming: give up (exit with an error) if no migration has started within this
    /// many seconds [default: 600].
    #[arg(long, requires = "incoming", value_parser = clap::value_parser!(u64).range(1..))]
    pub incoming_timeout: Option<u64>,
    /// Start with the vCPUs paused.
    #[arg(long)]
    pub paused: bool,
    /// Run without seccomp filters. For debugging only: it says so on stderr, and a guest
    /// that escapes into this process may then make any system call.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Let system calls outside the seccomp filters through and log them to the kernel log
    /// (`dmesg`, audit type=1326, with the thread's name). For writing filters only.
    #[arg(long, conflicts_with = "no_seccomp")]
    pub seccomp_log: bool,
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

/// A virtio-blk disk: `PATH[,ro][,shared]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// Backing raw file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// The same file is reachable from every host the VM migrates between: a live
    /// migration does not copy it. Writable disks that are not shared are copied by the
    /// migration stream (and, on a destination, must be blank files of the source's size).
    #[serde(default)]
    pub shared: bool,
}

impl DiskConfig {
    /// Whether a live migration carries this disk's blocks.
    pub fn copied(&self) -> bool {
        !self.read_only && !self.shared
    }
}

impl std::str::FromStr for DiskConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("disk needs a path: PATH[,ro][,shared]")?;
        let mut read_only = false;
        let mut shared = false;
        for opt in parts {
            match opt {
                "ro" | "readonly" => read_only = true,
                "rw" => read_only = false,
                "shared" => shared = true,
                other => {
                    return Err(format!(
                        "unknown disk option '{other}': expected ro, rw or shared"
                    ))
                }
            }
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
            shared,
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
