//! Storage objects end to end (issue 12), with a real controller, agent, `novacron-vmm` and
//! the test guest: a snapshot of a running VM with a disk puts memory and disk back at the
//! snapshot point when restored; a clone of a snapshot boots with its own identity while its
//! source keeps running; ten clones of a template share their blocks with it (measured on an
//! XFS loop filesystem with reflink, when `mkfs.xfs` is installed).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::*;

mod counter_guest;
use counter_guest::*;

fn counter_spec(c: &Cluster, name: &str) -> pb::VmSpec {
    pb::VmSpec {
        cmdline: "workload=counter".into(),
        disks: vec![pb::DiskSpec {
            size_mib: 8,
            ..Default::default()
        }],
        networks: vec![pb::NetworkSpec {
            bridge: String::new(),
            mac: "52:54:00:aa:00:01".into(),
        }],
        ..c.spec(name, 32)
    }
}

async fn cluster(tag: &str, before_agent: impl FnOnce(&Path)) -> Cluster {
    let mut c = Cluster::new(tag, Vmm::Real, &[]);
    before_agent(&c.root.join("node-a"));
    c.start_controller();
    // Room for a template and ten stopped clones (stopped VMs keep their claim).
    c.start_agent(
        "node-a",
        "127.0.0.2",
        &["--capacity-memory", "4G", "--capacity-vcpus", "32"],
    );
    c.wait_ready_hosts(1).await;
    c
}

use novacron_testsupport::mgmt::run_scenario as run;

#[test]
fn snapshot_and_restore_a_running_vm_with_a_disk() {
    run(Duration::from_secs(90), async {
        let c = cluster("snap", |_| {}).await;
        let mut vms = c.vms().await;
        let mut st = storage(&c).await;
        vms.create_vm(pb::CreateVmRequest {
            spec: Some(counter_spec(&c, "web")),
            ..Default::default()
        })
        .await
        .unwrap();
        let vm = wait_phase(&vms, "web", pb::VmPhase::Running, Duration::from_secs(30)).await;
        let console = console(&vm);
        let vmdir = console.parent().unwrap().to_path_buf();
        let disk = vmdir.join("disk0.img");
        wait_console(&console, "COUNT n=", 500, guest_timeout(Vmm::Real)).await;

        // Snapshot through novactl: memory, devices and the disk at one point.
        let (ok, out, err) = c.novactl(&["vm", "snapshot", "web", "s1"]);
        assert!(ok, "vm snapshot: {out}{err}");
        let snap = st
            .get_snapshot(pb::SnapshotRef {
                vm: "web".into(),
                snapshot: "s1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(snap.host, "node-a");
        assert_eq!(snap.disks.len(), 1, "{snap:?}");
        let image = vmdir.join("snapshots/s1/disk-0.img");
        let at_snapshot = max_record(&image);
        eprintln!(
            "snapshot s1: counter {at_snapshot} on its disk image, guest paused {:.1} ms",
            snap.paused_ms
        );

        // The guest goes on writing, in memory and on the disk.
        wait_for("the guest writing on", Duration::from_secs(30), || {
            let console = console.clone();
            async move { (last_count(&console) > at_snapshot + 3000).then_some(()) }
        })
        .await;
        let before_restore = max_record(&disk);
        assert!(before_restore > at_snapshot + 3000, "{before_restore}");
        assert_ne!(
            std::fs::read(&disk).unwrap(),
            std::fs::read(&image).unwrap()
        );

        // Restore, paused at the snapshot point: the disk is the snapshot's, byte for byte.
        let restored = st
            .restore_snapshot(pb::RestoreSnapshotRequest {
                vm: "web".into(),
                snapshot: "s1".into(),
                paused: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(restored.phase, pb::VmPhase::Running as i32);
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            std::fs::read(&image).unwrap(),
            "the disk is not back at the snapshot point"
        );
        assert_eq!(max_record(&disk), at_snapshot);
        let mark = std::fs::metadata(&console).unwrap().len() as usize;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(counts(&console, mark).is_empty(), "a paused guest printed");

        // Resume: the guest's memory is at the snapshot point too, so it counts on from
        // the value the snapshot held (the record of n is written before its COUNT line).
        let after = resume_and_count(&vmdir, &console, mark, "counting after the restore").await;
        assert!(
            after[0] == at_snapshot || after[0] == at_snapshot + 1,
            "first count after the restore {} (snapshot held {at_snapshot}, the guest had \
             reached {before_restore})",
            after[0]
        );
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1),
            "counts not consecutive"
        );
        assert_eq!(count_lines(&console, "CHECK FAIL"), 0);

        // A restore through novactl resumes at once; the same snapshot can be used again.
        let (ok, out, err) = c.novactl(&["vm", "restore", "web", "s1"]);
        assert!(ok, "vm restore: {out}{err}");
        let mark = std::fs::metadata(&console).unwrap().len() as usize;
        wait_for(
            "counting after the second restore",
            Duration::from_secs(20),
            || {
                let console = console.clone();
                async move { (!counts(&console, mark).is_empty()).then_some(()) }
            },
        )
        .await;
        assert!(counts(&console, mark)[0] <= at_snapshot + 1000);

        // Listing, a duplicate name, deleting.
        let (ok, out, _) = c.novactl(&["vm", "snapshots", "web"]);
        assert!(ok && out.contains("s1"), "{out}");
        let dup = st
            .create_snapshot(pb::CreateSnapshotRequest {
                vm: "web".into(),
                snapshot: "s1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);
        let (ok, out, err) = c.novactl(&["vm", "snapshot-delete", "web", "s1"]);
        assert!(ok, "{out}{err}");
        assert!(!vmdir.join("snapshots/s1").exists());
        let r = st
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.total, 0);
        let kinds: Vec<String> = {
            use tokio_stream::StreamExt;
            let mut s = vms
                .watch_events(pb::WatchEventsRequest {
                    replay: true,
                    vm: "web".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut k = Vec::new();
            while let Ok(Some(Ok(ev))) =
                tokio::time::timeout(Duration::from_millis(300), s.next()).await
            {
                k.push(ev.kind);
            }
            k
        };
        for want in ["SnapshotCreated", "SnapshotRestored", "SnapshotDeleted"] {
            assert!(kinds.iter().any(|k| k == want), "{want} missing: {kinds:?}");
        }
    });
}

#[test]
fn a_clone_boots_with_its_own_identity_while_its_source_runs() {
    run(Duration::from_secs(90), async {
        let c = cluster("clone", |_| {}).await;
        let mut vms = c.vms().await;
        vms.create_vm(pb::CreateVmRequest {
            spec: Some(counter_spec(&c, "src")),
            ..Default::default()
        })
        .await
        .unwrap();
        let src = wait_phase(&vms, "src", pb::VmPhase::Running, Duration::from_secs(30)).await;
        let src_console = console(&src);
        wait_console(&src_console, "COUNT n=", 200, guest_timeout(Vmm::Real)).await;
        let (ok, out, err) = c.novactl(&["vm", "snapshot", "src", "base"]);
        assert!(ok, "{out}{err}");
        // A running VM cannot be cloned from its live disks.
        let (ok, _, err) = c.novactl(&["vm", "clone", "src", "nope"]);
        assert!(!ok && err.contains("FAILED_PRECONDITION"), "{err}");
        let (ok, out, err) = c.novactl(&["vm", "clone", "src", "copy", "--snapshot", "base"]);
        assert!(ok, "vm clone: {out}{err}");
        let copy = wait_phase(&vms, "copy", pb::VmPhase::Running, Duration::from_secs(30)).await;
        assert_ne!(copy.id, src.id);
        assert_eq!(copy.host, src.host);
        let mac = |v: &pb::Vm| v.spec.as_ref().unwrap().networks[0].mac.clone();
        assert_ne!(mac(&copy), mac(&src));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", running_pid(&copy))).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains(&mac(&copy)), "{cmdline}");
        // The clone boots fresh and counts from zero in its own directory.
        let copy_console = console(&copy);
        assert_ne!(copy_console, src_console);
        wait_console(&copy_console, "COUNT n=", 100, guest_timeout(Vmm::Real)).await;
        assert_eq!(counts(&copy_console, 0)[0], 0);
        // The source kept running throughout, same process.
        let src_now = get(&mut vms, "src").await;
        assert_eq!(running_pid(&src_now), running_pid(&src));
        let n = last_count(&src_console);
        wait_for("the source counting on", Duration::from_secs(10), || {
            let p = src_console.clone();
            async move { (last_count(&p) > n + 100).then_some(()) }
        })
        .await;
        assert_eq!(count_lines(&src_console, "CHECK FAIL"), 0);
        assert_eq!(count_lines(&copy_console, "CHECK FAIL"), 0);
    });
}

/// An XFS filesystem with reflink in a loop file mounted at `at` (lazily unmounted on drop);
/// `None` when mkfs.xfs is not installed.
struct XfsMount(PathBuf);

impl XfsMount {
    fn new(at: &Path) -> Option<XfsMount> {
        let img = at.with_extension("xfs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(1 << 30).unwrap();
        let mkfs = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .status();
        if !matches!(mkfs, Ok(s) if s.success()) {
            eprintln!("mkfs.xfs unavailable: measuring on the host filesystem instead");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount of the XFS loop filesystem failed");
        Some(XfsMount(at.to_path_buf()))
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "XFS loop filesystem kept mounted for inspection at {}",
                self.0.display()
            );
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes in use on the filesystem holding `p`.
fn fs_used(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs only writes into the zeroed struct it is given.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

#[test]
fn ten_clones_of_a_template_share_its_blocks() {
    run(Duration::from_secs(120), async {
        let mut mount = None;
        let c = cluster("tmpl", |at| mount = XfsMount::new(at)).await;
        let data = c.root.join("node-a");
        let mut vms = c.vms().await;
        // The template's disk: 8 MiB of the guest's pattern on a 32 MiB disk.
        let spec = pb::VmSpec {
            cmdline: "workload=blk sectors=16384 req_sectors=256".into(),
            disks: vec![pb::DiskSpec {
                size_mib: 32,
                ..Default::default()
            }],
            restart_policy: pb::RestartPolicy::Never as i32,
            ..c.spec("golden", 64)
        };
        vms.create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap();
        let golden = wait_phase(
            &vms,
            "golden",
            pb::VmPhase::Running,
            Duration::from_secs(30),
        )
        .await;
        wait_console(
            &console(&golden),
            "CHECK PASS workload=blk",
            1,
            guest_timeout(Vmm::Real),
        )
        .await;
        let (ok, out, err) = c.novactl(&["vm", "stop", "golden", "--force"]);
        assert!(ok, "{out}{err}");
        let (ok, _, err) = c.novactl(&["vm", "create", "c0", "--template", "golden"]);
        assert!(!ok && err.contains("not a template"), "{err}");
        let (ok, out, err) = c.novactl(&["vm", "template", "golden"]);
        assert!(ok, "{out}{err}");
        let golden_disk = console(&golden).parent().unwrap().join("disk0.img");
        let written = std::fs::metadata(&golden_disk).unwrap().blocks() * 512;
        assert!(written >= 8 << 20, "template disk holds {written} bytes");

        let used_before = fs_used(&data);
        for i in 0..10 {
            let name = format!("c{i}");
            let (ok, out, err) =
                c.novactl(&["vm", "create", &name, "--template", "golden", "--stopped"]);
            assert!(ok, "create {name}: {out}{err}");
        }
        let used_after = fs_used(&data);
        let grown = used_after.saturating_sub(used_before);
        let mut per_clone = Vec::new();
        for v in list(&mut vms)
            .await
            .iter()
            .filter(|v| v.name.starts_with('c'))
        {
            let d = data.join("vms").join(&v.id).join("disk0.img");
            per_clone.push(std::fs::metadata(&d).unwrap().blocks() * 512);
            assert_eq!(
                std::fs::read(&d).unwrap(),
                std::fs::read(&golden_disk).unwrap()
            );
        }
        assert_eq!(per_clone.len(), 10);
        eprintln!(
            "ten clones of a template with {} MiB written: filesystem use grew by {} KiB \
             (each clone's st_blocks: {} KiB; reflink: {})",
            written >> 20,
            grown >> 10,
            per_clone[0] >> 10,
            mount.is_some()
        );
        if mount.is_some() {
            assert!(
                grown < written,
                "ten clones took {grown} bytes: the blocks are not shared ({written} written)"
            );
        }
        // A clone starts and finds the template's data (its own run rewrites the pattern
        // and checks it).
        let (ok, out, err) = c.novactl(&["vm", "start", "c3"]);
        assert!(ok, "{out}{err}");
        let c3 = wait_phase(&vms, "c3", pb::VmPhase::Running, Duration::from_secs(30)).await;
        wait_console(
            &console(&c3),
            "CHECK PASS workload=blk",
            1,
            guest_timeout(Vmm::Real),
        )
        .await;
        drop(c);
        drop(mount);
    });
}
