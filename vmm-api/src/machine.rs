//! The machine a `novacron-vmm run` process is started with, and its command-line form
//! (`vmm/API.md`): what the agent launches and the VMM's own `run` arguments parse.

use std::path::PathBuf;

/// Where the guest's serial console goes (`--serial`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Serial {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

/// A virtio-blk disk (`--disk PATH[,ro][,shared]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Backing raw file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Both hosts of a migration reach this same file: live migration does not copy it.
    /// A writable disk that is not shared travels in the migration stream, and on a
    /// destination (`incoming`) must be a blank file of the source's size.
    pub shared: bool,
}

/// A virtio-net interface (`--net tap=NAME[,mac=MAC]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Tap device name.
    pub tap: String,
    /// Guest MAC address, `52:54:00:12:34:56` (absent: the VMM picks one).
    pub mac: Option<String>,
}

/// The options of `novacron-vmm run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineOptions {
    /// Kernel image (not needed with `incoming` or `restore`).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (empty: none).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Serial console target.
    pub serial: Serial,
    /// Control socket.
    pub api_socket: Option<PathBuf>,
    /// Disks, in order.
    pub disks: Vec<Disk>,
    /// Network interfaces, in order.
    pub nets: Vec<Nic>,
    /// Wait for an incoming migration on `tls:HOST:PORT` (or `tcp:HOST:PORT`, debugging
    /// only) instead of booting.
    pub incoming: Option<String>,
    /// The destination's half of the migration credential (`--migration-tls-ca`,
    /// `--migration-tls-cert`, `--migration-tls-key`), required with `tls:`.
    pub incoming_tls: Option<crate::migration::TlsFiles>,
    /// The id the incoming migration's stream must carry (`--migration-id`); a stream
    /// with any other id is refused and the VMM keeps waiting for its real peer.
    pub migration_id: Option<String>,
    /// Seconds to wait for the incoming migration's connection before giving up
    /// (`--incoming-timeout`; the VMM's default when `None`).
    pub incoming_timeout_s: Option<u64>,
    /// Restore a snapshot directory instead of booting.
    pub restore: Option<PathBuf>,
    /// Start with the vCPUs paused.
    pub paused: bool,
}

impl Default for MachineOptions {
    fn default() -> Self {
        MachineOptions {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            memory_mib: 128,
            vcpus: 1,
            serial: Serial::Stdout,
            api_socket: None,
            disks: Vec::new(),
            nets: Vec::new(),
            incoming: None,
            incoming_tls: None,
            migration_id: None,
            incoming_timeout_s: None,
            restore: None,
            paused: false,
        }
    }
}

impl MachineOptions {
    /// The `novacron-vmm` arguments that start this machine, `run` first.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        let mut opt = |name: &str, value: String| {
            a.push(format!("--{name}"));
            a.push(value);
        };
        if let Some(k) = &self.kernel {
            opt("kernel", k.display().to_string());
        }
        if let Some(i) = &self.initrd {
            opt("initrd", i.display().to_string());
        }
        if !self.cmdline.is_empty() {
            opt("cmdline", self.cmdline.clone());
        }
        opt("memory", format!("{}M", self.memory_mib));
        opt("vcpus", self.vcpus.to_string());
        opt(
            "serial",
            match &self.serial {
                Serial::Stdout => "stdout".into(),
                Serial::File(p) => format!("file:{}", p.display()),
                Serial::None => "none".into(),
            },
        );
        if let Some(s) = &self.api_socket {
            opt("api-socket", s.display().to_string());
        }
        for d in &self.disks {
            let ro = if d.read_only { ",ro" } else { "" };
            let shared = if d.shared { ",shared" } else { "" };
            opt("disk", format!("{}{ro}{shared}", d.path.display()));
        }
        for n in &self.nets {
            let mac = n
                .mac
                .as_ref()
                .map(|m| format!(",mac={m}"))
                .unwrap_or_default();
            opt("net", format!("tap={}{mac}", n.tap));
        }
        if let Some(addr) = &self.incoming {
            opt("incoming", addr.clone());
        }
        if let Some(t) = &self.incoming_tls {
            opt("migration-tls-ca", t.ca.display().to_string());
            opt("migration-tls-cert", t.cert.display().to_string());
            opt("migration-tls-key", t.key.display().to_string());
        }
        if let Some(id) = &self.migration_id {
            opt("migration-id", id.clone());
        }
        if let Some(t) = self.incoming_timeout_s {
            opt("incoming-timeout", t.to_string());
        }
        if let Some(dir) = &self.restore {
            opt("restore", dir.display().to_string());
        }
        if self.paused {
            a.push("--paused".into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_spell_every_option() {
        let m = MachineOptions {
            kernel: Some("/k".into()),
            cmdline: "console=ttyS0 quiet".into(),
            memory_mib: 256,
            vcpus: 2,
            serial: Serial::File("/d/console.log".into()),
            api_socket: Some("/d/api.sock".into()),
            disks: vec![
                Disk {
                    path: "/d/root.img".into(),
                    read_only: true,
                    shared: false,
                },
                Disk {
                    path: "/nfs/data.img".into(),
                    read_only: false,
                    shared: true,
                },
            ],
            nets: vec![Nic {
                tap: "nc0".into(),
                mac: Some("52:54:00:00:00:01".into()),
            }],
            paused: true,
            ..Default::default()
        };
        assert_eq!(
            m.args(),
            [
                "run",
                "--kernel",
                "/k",
                "--cmdline",
                "console=ttyS0 quiet",
                "--memory",
                "256M",
                "--vcpus",
                "2",
                "--serial",
                "file:/d/console.log",
                "--api-socket",
                "/d/api.sock",
                "--disk",
                "/d/root.img,ro",
                "--disk",
                "/nfs/data.img,shared",
                "--net",
                "tap=nc0,mac=52:54:00:00:00:01",
                "--paused",
            ]
        );
    }
}
