//! From novactl's arguments to requests: sizes, rates, labels, disks, networks and restart
//! policies as users write them. Sizes and rates go through the one parser,
//! [`novacron_vmm_api::units`].

use std::collections::HashMap;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use novacron_vmm_api::units::{parse_rate, parse_size, UnitError};

use super::args::{CreateArgs, MigrateArgs, VerifyArg};
use super::CtlError;

/// Parses a size into MiB, rounded up: the sizes of [`parse_size`] (`64M`, `1G`, `2GiB`,
/// `1536K`), except that a bare number is MiB. A leading `-` is kept, so that the controller,
/// not novactl, refuses negative sizes.
pub fn parse_mib(s: &str) -> Result<i64, UnitError> {
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let bytes = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        parse_size(&format!("{t}M"))
    } else {
        parse_size(t)
    }
    .map_err(|_| UnitError::Size(s.to_string()))?;
    // At most 2^64 / 2^20 = 2^44 MiB: always fits an i64.
    let mib = bytes.div_ceil(1 << 20) as i64;
    Ok(if neg { -mib } else { mib })
}

/// Parses `--bandwidth`: `0` (no limit) or a rate of [`parse_rate`] (`10M`, `64KiB/s`,
/// `100mbit`), in bytes per second.
pub fn parse_bandwidth(s: &str) -> Result<u64, UnitError> {
    if s.trim() == "0" {
        Ok(0)
    } else {
        parse_rate(s)
    }
}

/// A unit error with the argument it came from.
fn unit(what: &'static str) -> impl Fn(UnitError) -> CtlError {
    move |source| CtlError::Unit { what, source }
}

/// Parses repeated `KEY=VALUE` arguments.
pub(super) fn parse_kv(items: &[String]) -> Result<HashMap<String, String>, CtlError> {
    items
        .iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CtlError::Usage(format!("expected KEY=VALUE, got {i:?}"))),
        })
        .collect()
}

fn parse_disk(s: &str) -> Result<pb::DiskSpec, CtlError> {
    let mut d = pb::DiskSpec::default();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("image", v)) | Some(("path", v)) => d.image = v.to_string(),
            Some(("size", v)) => d.size_mib = parse_mib(v).map_err(unit("--disk size"))?,
            None if part == "ro" || part == "readonly" => d.readonly = true,
            None if part == "clone" => d.clone = true,
            None if part == "shared" => d.shared = true,
            None if !part.is_empty() && d.image.is_empty() => d.image = part.to_string(),
            _ => {
                return Err(CtlError::Usage(format!(
                    "bad disk {s:?}: image=PATH[,size=SIZE][,ro][,clone][,shared]"
                )))
            }
        }
    }
    Ok(d)
}

fn parse_net(s: &str) -> Result<pb::NetworkSpec, CtlError> {
    let mut n = pb::NetworkSpec::default();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("bridge", v)) => n.bridge = v.to_string(),
            Some(("mac", v)) => n.mac = v.to_string(),
            _ => {
                return Err(CtlError::Usage(format!(
                    "bad network {s:?}: bridge=NAME[,mac=MAC]"
                )))
            }
        }
    }
    Ok(n)
}

fn parse_restart(s: &str) -> Result<pb::RestartPolicy, CtlError> {
    match s {
        "always" => Ok(pb::RestartPolicy::Always),
        "on-failure" => Ok(pb::RestartPolicy::OnFailure),
        "never" => Ok(pb::RestartPolicy::Never),
        _ => Err(CtlError::Usage(format!(
            "bad restart policy {s:?}: always, on-failure or never"
        ))),
    }
}

/// Builds the create request from `vm create`'s arguments.
pub fn create_request(a: &CreateArgs) -> Result<pb::CreateVmRequest, CtlError> {
    let spec = pb::VmSpec {
        name: a.name.clone(),
        vcpus: a.vcpus,
        memory_mib: parse_mib(&a.memory).map_err(unit("--memory"))?,
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        image: a.image.clone(),
        cmdline: a.cmdline.clone(),
        disks: a
            .disks
            .iter()
            .map(|d| parse_disk(d))
            .collect::<Result<_, _>>()?,
        networks: a
            .nets
            .iter()
            .map(|n| parse_net(n))
            .collect::<Result<_, _>>()?,
        labels: parse_kv(&a.labels)?,
        placement: Some(pb::Placement {
            host_labels: parse_kv(&a.host_labels)?,
            anti_affinity_group: a.anti_affinity.clone(),
            host: a.host.clone(),
        }),
        restart_policy: parse_restart(&a.restart)? as i32,
    };
    Ok(pb::CreateVmRequest {
        request_id: rid(&a.request_id),
        spec: Some(spec),
        stopped: a.stopped,
        ..Default::default()
    })
}

/// Builds the migrate request from `vm migrate`'s arguments (not `--cancel`).
pub fn migrate_request(a: &MigrateArgs) -> Result<pb::MigrateVmRequest, CtlError> {
    Ok(pb::MigrateVmRequest {
        request_id: rid(&a.request_id),
        vm: a.name.clone(),
        target_host: a.to.clone(),
        options: Some(apb::MigrateOptions {
            downtime_ms: a.downtime_ms,
            bandwidth: parse_bandwidth(&a.bandwidth).map_err(unit("--bandwidth"))?,
            timeout_s: a.timeout_s,
            auto_converge: a.auto_converge,
            compression: a.compression.clone(),
            verify: match a.verify {
                VerifyArg::Default => apb::VerifyMode::Default,
                VerifyArg::Off => apb::VerifyMode::Off,
                VerifyArg::Sampled => apb::VerifyMode::Sampled,
                VerifyArg::Full => apb::VerifyMode::Full,
            } as i32,
        }),
    })
}

/// The request id given, or a fresh one.
pub(crate) fn rid(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::args::{Cli, Command, VmCmd};
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("64M").unwrap(), 64);
        assert_eq!(parse_mib("64MiB").unwrap(), 64);
        assert_eq!(parse_mib("1G").unwrap(), 1024);
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert_eq!(parse_mib("-64M").unwrap(), -64);
        assert_eq!(parse_mib("1536K").unwrap(), 2);
        assert!(parse_mib("12Q").is_err());
        assert!(parse_mib("").is_err());
        assert!(parse_mib("-").is_err());
        assert_eq!(parse_bandwidth("10M").unwrap(), 10 << 20);
        assert_eq!(parse_bandwidth("0").unwrap(), 0);
        assert_eq!(parse_bandwidth("100mbit").unwrap(), 12_500_000);
        assert!(parse_bandwidth("fast").is_err());
    }

    #[test]
    fn sizes_and_rates_that_overflow_are_errors_not_panics() {
        for b in [
            "99999999999999999G",
            "99999999999999999999G",
            "17179869184G",
            "16777216T",
            "18446744073709551616",
            "99999999999999999gbit",
            "1e300gbit",
            "17179869184GiB/s",
        ] {
            let e = parse_bandwidth(b).expect_err(b).to_string();
            assert!(e.contains("invalid rate"), "{b}: {e}");
        }
        // The largest rate that fits is accepted.
        assert_eq!(
            parse_bandwidth("17179869183G").unwrap(),
            17_179_869_183u64 << 30
        );
        for m in [
            "99999999999999999G",
            "-99999999999999999G",
            "17592186044416",
            "16777216T",
            "99999999999999999999",
        ] {
            assert!(parse_mib(m).is_err(), "{m} accepted");
        }
        assert_eq!(parse_mib("17592186044415").unwrap(), 17_592_186_044_415);
        let cli = Cli::try_parse_from([
            "novactl",
            "vm",
            "migrate",
            "web",
            "--bandwidth",
            "99999999999999999G",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Migrate(a)) = cli.command else {
            panic!("not migrate")
        };
        let e = migrate_request(&a).unwrap_err().to_string();
        assert!(
            e.starts_with("--bandwidth: invalid rate '99999999999999999G'"),
            "{e}"
        );
        let cli = Cli::try_parse_from([
            "novactl",
            "vm",
            "create",
            "x",
            "--memory",
            "99999999999999999G",
            "--disk",
            "size=99999999999999999T",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("not create")
        };
        let e = create_request(&a).unwrap_err().to_string();
        assert!(e.starts_with("--memory: invalid size"), "{e}");
    }

    #[test]
    fn unit_errors_name_the_argument() {
        let cli = Cli::try_parse_from(["novactl", "vm", "create", "x", "--memory", "12Q"]).unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("not create")
        };
        let e = create_request(&a).unwrap_err().to_string();
        assert!(e.starts_with("--memory: invalid size '12Q'"), "{e}");
        let cli =
            Cli::try_parse_from(["novactl", "vm", "create", "x", "--disk", "size=lots"]).unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("not create")
        };
        let e = create_request(&a).unwrap_err().to_string();
        assert!(e.starts_with("--disk size: invalid size 'lots'"), "{e}");
    }

    #[test]
    fn migrate_args() {
        let cli = Cli::try_parse_from([
            "novactl",
            "vm",
            "migrate",
            "web",
            "--to",
            "b",
            "--verify",
            "full",
            "--bandwidth",
            "100mbit",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Migrate(a)) = cli.command else {
            panic!("not migrate")
        };
        assert!(!a.cancel);
        let r = migrate_request(&a).unwrap();
        let o = r.options.unwrap();
        assert_eq!((r.vm.as_str(), r.target_host.as_str()), ("web", "b"));
        assert_eq!(o.verify, apb::VerifyMode::Full as i32);
        assert_eq!(o.bandwidth, 12_500_000);
        // The management plane's default is left to the controller and agent (sampled).
        let cli = Cli::try_parse_from(["novactl", "vm", "migrate", "web"]).unwrap();
        let Command::Vm(VmCmd::Migrate(a)) = cli.command else {
            panic!("not migrate")
        };
        let o = migrate_request(&a).unwrap().options.unwrap();
        assert_eq!(o.verify, apb::VerifyMode::Default as i32);
        let cli = Cli::try_parse_from(["novactl", "vm", "migrate", "web", "--cancel"]).unwrap();
        let Command::Vm(VmCmd::Migrate(a)) = cli.command else {
            panic!("not migrate")
        };
        assert!(a.cancel);
        assert!(
            Cli::try_parse_from(["novactl", "vm", "migrate", "web", "--cancel", "--to", "b"])
                .is_err(),
            "--cancel takes no migration options"
        );
        assert!(
            Cli::try_parse_from(["novactl", "vm", "migrate", "web", "--verify", "all"]).is_err()
        );
    }

    #[test]
    fn create_args() {
        let cli = Cli::try_parse_from([
            "novactl",
            "vm",
            "create",
            "web",
            "--vcpus",
            "2",
            "--memory",
            "-64M",
            "--kernel",
            "/k",
            "--disk",
            "image=/i.img,ro",
            "--disk",
            "size=1G",
            "--disk",
            "image=/nfs/data.img,shared",
            "--net",
            "bridge=br0,mac=52:54:00:00:00:01",
            "-l",
            "app=web",
            "--host-label",
            "zone=a",
            "--anti-affinity",
            "web",
            "--restart",
            "never",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("not create")
        };
        let r = create_request(&a).unwrap();
        let s = r.spec.unwrap();
        assert_eq!(s.memory_mib, -64);
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.disks.len(), 3);
        assert!(s.disks[0].readonly && !s.disks[0].shared);
        assert_eq!(s.disks[1].size_mib, 1024);
        assert!(s.disks[2].shared && !s.disks[2].readonly && s.disks[2].image == "/nfs/data.img");
        assert_eq!(s.networks[0].bridge, "br0");
        assert_eq!(s.labels["app"], "web");
        assert_eq!(s.placement.unwrap().host_labels["zone"], "a");
        assert_eq!(s.restart_policy, pb::RestartPolicy::Never as i32);
        assert!(!r.request_id.is_empty());
    }
}
