//! Backups end to end (issue 12), with real controllers, agents, `novacron-vmm` and the test
//! guest: a snapshot of a running `counter` VM with a disk is exported by one cluster's
//! controller to one file, imported by a second, independent cluster (its own controller,
//! store and agent data directory) as a new VM, and restoring that VM puts its disk at the
//! snapshot's bytes and its guest counting on from the snapshot's value.

use std::time::Duration;

use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::*;

mod counter_guest;
use counter_guest::*;

use novacron_testsupport::mgmt::run_scenario as run;

async fn one_host(tag: &str, host: &str, ip: &str) -> Cluster {
    let mut c = Cluster::new(tag, Vmm::Real, &[]);
    c.start_controller();
    c.start_agent(host, ip, &[]);
    c.wait_ready_hosts(1).await;
    c
}

#[test]
fn export_a_snapshot_and_import_it_on_another_controller() {
    run(Duration::from_secs(90), async {
        let a = one_host("bka", "node-a", "127.0.0.2").await;
        let mut vms = a.vms().await;
        let mut st = storage(&a).await;
        let spec = pb::VmSpec {
            cmdline: "workload=counter".into(),
            disks: vec![pb::DiskSpec {
                size_mib: 8,
                ..Default::default()
            }],
            networks: vec![pb::NetworkSpec {
                bridge: String::new(),
                mac: "52:54:00:aa:00:01".into(),
            }],
            ..a.spec("web", 32)
        };
        vms.create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap();
        let web = wait_phase(&vms, "web", pb::VmPhase::Running, Duration::from_secs(30)).await;
        let console_a = console(&web);
        wait_console(&console_a, "COUNT n=", 500, guest_timeout(Vmm::Real)).await;
        let (ok, out, err) = a.novactl(&["vm", "snapshot", "web", "s1"]);
        assert!(ok, "vm snapshot: {out}{err}");
        let image = console_a.parent().unwrap().join("snapshots/s1/disk-0.img");
        let at_snapshot = max_record(&image);

        // Export through novactl; the file must be new and the path absolute.
        let file = a.root.join("web-s1.ncbak");
        let file_s = file.display().to_string();
        let (ok, out, err) = a.novactl(&["vm", "snapshot-export", "web", "s1", "--to", &file_s]);
        assert!(ok, "vm snapshot-export: {out}{err}");
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size > 0 && size < 8 << 20, "backup of {size} bytes");
        let again = st
            .export_snapshot(pb::ExportSnapshotRequest {
                vm: "web".into(),
                snapshot: "s1".into(),
                path: file_s.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        let relative = st
            .export_snapshot(pb::ExportSnapshotRequest {
                vm: "web".into(),
                snapshot: "s1".into(),
                path: "web.ncbak".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(relative.code(), tonic::Code::InvalidArgument);
        let events = a.novactl(&["events"]).1;
        assert!(events.contains("SnapshotExported"), "{events}");
        // The first cluster stops its VM (two cores: one guest at a time).
        let (ok, out, err) = a.novactl(&["vm", "stop", "web"]);
        assert!(ok, "vm stop: {out}{err}");

        // A second cluster: its own controller, store and agent data directory. The backup
        // file is carried over to its host.
        let b = one_host("bkb", "node-b", "127.0.0.3").await;
        let carried = b.root.join("carried.ncbak");
        std::fs::copy(&file, &carried).unwrap();
        let carried_s = carried.display().to_string();
        let (ok, out, err) = b.novactl(&[
            "vm",
            "snapshot-import",
            "copy",
            "--host",
            "node-b",
            "--from",
            &carried_s,
        ]);
        assert!(ok, "vm snapshot-import: {out}{err}");
        let mut vms_b = b.vms().await;
        let mut st_b = storage(&b).await;
        let copy = get(&mut vms_b, "copy").await;
        assert_eq!(copy.phase, pb::VmPhase::Stopped as i32, "{copy:?}");
        assert_eq!(copy.host, "node-b");
        assert_ne!(copy.id, web.id);
        let spec = copy.spec.clone().unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib, spec.disks.len()), (1, 32, 1));
        assert_eq!(spec.networks.len(), 1);
        assert_ne!(spec.networks[0].mac, "52:54:00:aa:00:01");
        let snaps = st_b
            .list_snapshots(pb::ListSnapshotsRequest {
                vm: "copy".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(snaps.snapshots.len(), 1);
        assert_eq!(snaps.snapshots[0].name, "s1");
        assert_eq!(snaps.snapshots[0].host, "node-b");
        // The name is taken now.
        let dup = st_b
            .import_snapshot(pb::ImportSnapshotRequest {
                host: "node-b".into(),
                path: carried_s.clone(),
                name: "copy".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);

        // Restore, paused: the disk holds the snapshot's bytes.
        let restored = st_b
            .restore_snapshot(pb::RestoreSnapshotRequest {
                vm: "copy".into(),
                snapshot: "s1".into(),
                paused: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(restored.phase, pb::VmPhase::Running as i32);
        let console_b = console(&restored);
        let vmdir_b = console_b.parent().unwrap().to_path_buf();
        assert!(vmdir_b.starts_with(&b.root), "{}", vmdir_b.display());
        assert_eq!(
            std::fs::read(vmdir_b.join("disk0.img")).unwrap(),
            std::fs::read(&image).unwrap(),
            "the imported VM's disk is not at the snapshot point"
        );
        assert_eq!(max_record(&vmdir_b.join("disk0.img")), at_snapshot);

        // Resume: its memory is at the snapshot point too.
        let mark = std::fs::metadata(&console_b).map(|m| m.len()).unwrap_or(0) as usize;
        let after =
            resume_and_count(&vmdir_b, &console_b, mark, "the imported guest counting").await;
        assert!(
            after[0] == at_snapshot || after[0] == at_snapshot + 1,
            "first count of the imported guest {} (the snapshot held {at_snapshot})",
            after[0]
        );
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1),
            "counts not consecutive"
        );
        assert_eq!(count_lines(&console_b, "CHECK FAIL"), 0);
    });
}
