//! Disks move with their VM, through the real controller, agents and `novacron-vmm`
//! processes booting the in-repo test guest (`images/README.md`: `blk`, `blkloop`):
//! - a live migration carries every block the guest (and the host, before boot) wrote: on
//!   the destination `blkloop` keeps passing with later seeds (a pass that straddles the
//!   switchover reads back on the destination what it wrote on the source), and a region
//!   written outside the guest's range is there byte for byte;
//! - a drain moves a running VM live and a stopped one cold (its disk file copied between
//!   the agents: same bytes, still sparse, the source's copy gone);
//! - a destination VMM killed mid-migration leaves the source running, its disk intact, and
//!   nothing on the destination;
//! - a shared disk is neither copied nor deleted.
//!
//! Over loopback only: the WAN relay variant of the live case is not here (see
//! `docs/management.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::*;

/// Sectors the guest's `blkloop` rewrites each pass (1 MiB).
const SECTORS: u64 = 2048;
/// Where the host writes its own pattern, beyond the guest's range.
const HOST_AT: u64 = 6 << 20;

use novacron_testsupport::mgmt::run_scenario as run;

/// Deterministic, incompressible bytes (`testsupport::data::noise`).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    novacron_testsupport::data::noise(len, seed)
}

/// A 64-bit FNV-1a of a whole file.
fn hash_file(p: &Path) -> u64 {
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).expect("read disk");
    b
}

fn write_at(p: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    f.write_all_at(data, off).expect("write disk");
    f.sync_all().expect("sync disk");
}

/// Disk `i` of VM `id` in agent `host`'s data directory.
fn disk_path(cl: &Cluster, host: &str, id: &str, i: usize) -> PathBuf {
    cl.root
        .join(host)
        .join("vms")
        .join(id)
        .join(format!("disk{i}.img"))
}

fn vm_dir(cl: &Cluster, host: &str, id: &str) -> PathBuf {
    cl.root.join(host).join("vms").join(id)
}

/// Seeds of the `CHECK PASS workload=blkloop` lines of a console log, in order.
fn pass_seeds(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("CHECK PASS workload=blkloop"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seed="))
                .and_then(|s| s.parse().ok())
        })
        .collect()
}

/// A cluster whose node-a holds VMs created by `make` (node-b joins after them, so they
/// land on node-a).
async fn cluster(tag: &str) -> Cluster {
    let mut cl = Cluster::new(tag, Vmm::Real, &["--placement", "spread"]);
    cl.start_controller();
    cl.start_agent("node-a", "127.0.0.2", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(1).await;
    cl
}

async fn join_node_b(cl: &mut Cluster) {
    cl.start_agent("node-b", "127.0.0.3", &["--capacity-memory", "512M"]);
    cl.wait_ready_hosts(2).await;
}

/// Creates a stopped VM on the cluster with one disk and `cmdline`.
async fn create_stopped(cl: &Cluster, name: &str, disk: pb::DiskSpec, cmdline: &str) -> pb::Vm {
    let mut c = cl.vms().await;
    let mut spec = cl.spec(name, 64);
    spec.cmdline = cmdline.to_string();
    spec.disks = vec![disk];
    c.create_vm(pb::CreateVmRequest {
        spec: Some(spec),
        stopped: true,
        ..Default::default()
    })
    .await
    .expect("create")
    .into_inner()
}

async fn start(cl: &Cluster, name: &str) -> pb::Vm {
    let mut c = cl.vms().await;
    c.start_vm(pb::VmActionRequest {
        vm: name.to_string(),
        ..Default::default()
    })
    .await
    .expect("start")
    .into_inner()
}

/// A running `blkloop` VM on node-a whose disk also holds `host` bytes at [`HOST_AT`],
/// written before boot; waits for two passes.
async fn blkloop_vm(cl: &Cluster, name: &str, disk_mib: i64, host: &[u8]) -> pb::Vm {
    let cmd = format!("workload=blkloop disk=0 sectors={SECTORS} seed=1");
    let disk = pb::DiskSpec {
        size_mib: disk_mib,
        ..Default::default()
    };
    let vm = create_stopped(cl, name, disk, &cmd).await;
    assert_eq!(vm.host, "node-a");
    write_at(&disk_path(cl, "node-a", &vm.id, 0), HOST_AT, host);
    let vm = start(cl, name).await;
    wait_console(
        &console(&vm),
        "CHECK PASS workload=blkloop",
        2,
        guest_timeout(Vmm::Real),
    )
    .await;
    vm
}

/// The console log of VM `name` once the controller reports it on `host`'s data directory.
async fn console_on(cl: &Cluster, name: &str, host: &str) -> PathBuf {
    let dir = cl.root.join(host);
    let c = cl.vms().await;
    let v = wait_for(
        &format!("{name}'s console on {host}"),
        Duration::from_secs(10),
        || {
            let (mut c, dir) = (c.clone(), dir.clone());
            async move {
                let v = get(&mut c, name).await;
                console(&v).starts_with(&dir).then_some(v)
            }
        },
    )
    .await;
    console(&v)
}

/// After a live move of `vm` from node-a to node-b: the guest passes on node-b with later
/// seeds and never fails, the host's bytes are on node-b's disk, node-a holds nothing.
async fn check_moved_live(cl: &Cluster, vm: &pb::Vm, last_src_seed: u64, host: &[u8]) {
    let c = cl.vms().await;
    let now = wait_phase(&c, &vm.name, pb::VmPhase::Running, Duration::from_secs(30)).await;
    assert_eq!(now.host, "node-b");
    let log = console_on(cl, &vm.name, "node-b").await;
    wait_console(
        &log,
        "CHECK PASS workload=blkloop",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        count_lines(&log, "CHECK FAIL"),
        0,
        "guest failed on node-b: {}",
        log.display()
    );
    let seeds = pass_seeds(&log);
    assert!(
        seeds.first().is_some_and(|s| *s > last_src_seed),
        "node-b's passes {seeds:?} do not continue after the source's seed {last_src_seed}"
    );
    let dst = disk_path(cl, "node-b", &vm.id, 0);
    assert!(
        read_at(&dst, HOST_AT, host.len()) == host,
        "the host's bytes at {HOST_AT} did not reach node-b's disk"
    );
    wait_for(
        "node-a to drop its copy",
        Duration::from_secs(20),
        || async { (!vm_dir(cl, "node-a", &vm.id).exists()).then_some(()) },
    )
    .await;
}

#[test]
fn live_migration_carries_written_blocks() {
    run(Duration::from_secs(90), async {
        let mut cl = cluster("dlive").await;
        let host = noise(1, 256 << 10);
        let vm = blkloop_vm(&cl, "lv", 16, &host).await;
        join_node_b(&mut cl).await;
        let src_size = std::fs::metadata(disk_path(&cl, "node-a", &vm.id, 0))
            .expect("source disk")
            .len();
        let last = pass_seeds(&console(&vm)).last().copied().unwrap_or(0);
        let mut c = cl.vms().await;
        let r = c
            .migrate_vm(pb::MigrateVmRequest {
                vm: vm.name.clone(),
                target_host: "node-b".into(),
                options: Some(apb::MigrateOptions {
                    timeout_s: 60,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("migrate")
            .into_inner();
        assert_eq!(r.target_host, "node-b");
        let dst_size = std::fs::metadata(disk_path(&cl, "node-b", &vm.id, 0))
            .expect("destination disk")
            .len();
        assert_eq!(dst_size, src_size);
        check_moved_live(&cl, &vm, last, &host).await;
    });
}

#[test]
fn drain_moves_running_live_and_stopped_cold_with_their_disks() {
    run(Duration::from_secs(120), async {
        let mut cl = cluster("ddrain").await;
        let host = noise(2, 256 << 10);
        let live = blkloop_vm(&cl, "dl", 16, &host).await;
        // The cold one writes its pattern once, then is stopped.
        let disk = pb::DiskSpec {
            size_mib: 32,
            ..Default::default()
        };
        let cold = create_stopped(
            &cl,
            "dc",
            disk,
            &format!("workload=blk disk=0 sectors={SECTORS} seed=7"),
        )
        .await;
        let cold_src = disk_path(&cl, "node-a", &cold.id, 0);
        write_at(&cold_src, 20 << 20, &noise(3, 1 << 20));
        let cold = start(&cl, "dc").await;
        wait_console(
            &console(&cold),
            "CHECK PASS workload=blk",
            1,
            guest_timeout(Vmm::Real),
        )
        .await;
        let mut c = cl.vms().await;
        c.stop_vm(pb::StopVmRequest {
            vm: "dc".into(),
            force: true,
            ..Default::default()
        })
        .await
        .expect("stop");
        wait_phase(&c, "dc", pb::VmPhase::Stopped, Duration::from_secs(20)).await;
        let before = hash_file(&cold_src);
        let size = std::fs::metadata(&cold_src).expect("cold disk").len();
        assert!(
            read_at(&cold_src, 0, 8) != [0u8; 8],
            "the guest wrote nothing"
        );
        join_node_b(&mut cl).await;
        let last = pass_seeds(&console(&live)).last().copied().unwrap_or(0);
        let mut h = cl.hosts().await;
        let r = h
            .drain_host(pb::DrainHostRequest {
                host: "node-a".into(),
                ..Default::default()
            })
            .await
            .expect("drain")
            .into_inner();
        assert!(r.failed.is_empty(), "drain failures: {:?}", r.failed);
        assert_eq!(r.moved.len(), 2, "{:?}", r.moved);
        // Cold: the same bytes, still sparse, on node-b; nothing left on node-a.
        let v = get(&mut c, "dc").await;
        assert_eq!(
            (v.host.as_str(), v.phase),
            ("node-b", pb::VmPhase::Stopped as i32)
        );
        let cold_dst = disk_path(&cl, "node-b", &cold.id, 0);
        assert_eq!(
            hash_file(&cold_dst),
            before,
            "the cold copy differs from the source"
        );
        let m = std::fs::metadata(&cold_dst).expect("cold copy");
        assert_eq!(m.len(), size);
        use std::os::unix::fs::MetadataExt;
        assert!(
            m.blocks() * 512 < 8 << 20,
            "the copy is not sparse: {} blocks",
            m.blocks()
        );
        assert!(
            !vm_dir(&cl, "node-a", &cold.id).exists(),
            "node-a kept the cold vm"
        );
        // Live.
        check_moved_live(&cl, &live, last, &host).await;
        // Beyond the guest's range, the host's bytes came along too.
        assert!(read_at(&cold_dst, 20 << 20, 1 << 20) == noise(3, 1 << 20));
    });
}

#[test]
fn destination_killed_mid_migration_keeps_the_source_and_its_disk() {
    run(Duration::from_secs(90), async {
        let mut cl = cluster("dkill").await;
        // 24 MiB of incompressible host data on the disk: at 4 MiB/s its blocks take seconds.
        let host = noise(4, 24 << 20);
        let vm = blkloop_vm(&cl, "dk", 32, &host).await;
        join_node_b(&mut cl).await;
        let src = disk_path(&cl, "node-a", &vm.id, 0);
        let mut c = cl.vms().await;
        let name = vm.name.clone();
        let task = tokio::spawn(async move {
            c.migrate_vm(pb::MigrateVmRequest {
                vm: name,
                target_host: "node-b".into(),
                options: Some(apb::MigrateOptions {
                    bandwidth: 4 << 20,
                    timeout_s: 60,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
        });
        let mut b = cl.agent("node-b").await;
        let dst = wait_for("node-b incoming", Duration::from_secs(30), || {
            let mut b = b.clone();
            let id = vm.id.clone();
            async move {
                b.get_vm(apb::VmRequest {
                    vm_id: id,
                    ..Default::default()
                })
                .await
                .ok()
                .map(|r| r.into_inner())
                .filter(|s| s.state == apb::VmState::Incoming as i32 && s.pid > 0)
            }
        })
        .await;
        let dst_disk = disk_path(&cl, "node-b", &vm.id, 0);
        assert!(
            dst_disk.exists(),
            "node-b has no disk file for the incoming vm"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(dst.pid, libc::SIGKILL);
        }
        let r = task.await.expect("task");
        assert!(
            r.is_err(),
            "migration succeeded without its destination: {r:?}"
        );
        let v = wait_phase(
            &cl.vms().await,
            &vm.name,
            pb::VmPhase::Running,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(v.host, "node-a");
        let log = console(&v);
        let n = count_lines(&log, "CHECK PASS workload=blkloop");
        wait_console(
            &log,
            "CHECK PASS workload=blkloop",
            n + 2,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(count_lines(&log, "CHECK FAIL"), 0);
        assert!(
            read_at(&src, HOST_AT, host.len()) == host,
            "the source's disk changed"
        );
        wait_for(
            "node-b to remove its files",
            Duration::from_secs(20),
            || async { (!vm_dir(&cl, "node-b", &vm.id).exists()).then_some(()) },
        )
        .await;
        let gone = b
            .get_vm(apb::VmRequest {
                vm_id: vm.id.clone(),
                ..Default::default()
            })
            .await;
        assert!(gone.is_err(), "node-b still knows the vm: {gone:?}");
    });
}

#[test]
fn shared_disk_is_neither_copied_nor_deleted() {
    run(Duration::from_secs(90), async {
        let mut cl = cluster("dshared").await;
        // Shared storage both hosts reach: one file, in both agents' images directories
        // (hard links: agents take images from there only).
        let shared = cl.images_dir("node-a").join("shared.img");
        let f = std::fs::File::create(&shared).expect("shared image");
        f.set_len(8 << 20).expect("size");
        drop(f);
        let other = cl.images_dir("node-b");
        std::fs::create_dir_all(&other).expect("images dir");
        std::fs::hard_link(&shared, other.join("shared.img")).expect("link the shared image");
        let host = noise(5, 64 << 10);
        write_at(&shared, HOST_AT, &host);
        let disk = pb::DiskSpec {
            image: "shared.img".into(),
            shared: true,
            ..Default::default()
        };
        let cmd = format!("workload=blkloop disk=0 sectors={SECTORS} seed=1");
        let vm = create_stopped(&cl, "sh", disk, &cmd).await;
        assert!(
            !disk_path(&cl, "node-a", &vm.id, 0).exists(),
            "a shared disk was copied at create"
        );
        let vm = start(&cl, "sh").await;
        wait_console(
            &console(&vm),
            "CHECK PASS workload=blkloop",
            2,
            guest_timeout(Vmm::Real),
        )
        .await;
        join_node_b(&mut cl).await;
        let last = pass_seeds(&console(&vm)).last().copied().unwrap_or(0);
        let mut c = cl.vms().await;
        c.migrate_vm(pb::MigrateVmRequest {
            vm: "sh".into(),
            target_host: "node-b".into(),
            ..Default::default()
        })
        .await
        .expect("migrate");
        let v = wait_phase(&c, "sh", pb::VmPhase::Running, Duration::from_secs(30)).await;
        assert_eq!(v.host, "node-b");
        assert!(
            !disk_path(&cl, "node-b", &vm.id, 0).exists(),
            "the shared disk was copied to node-b"
        );
        assert!(shared.exists(), "the migration deleted the shared disk");
        let log = console_on(&cl, "sh", "node-b").await;
        wait_console(
            &log,
            "CHECK PASS workload=blkloop",
            2,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(count_lines(&log, "CHECK FAIL"), 0);
        assert!(pass_seeds(&log).first().is_some_and(|s| *s > last));
        assert!(read_at(&shared, HOST_AT, host.len()) == host);
        // Deleting the VM leaves the shared file.
        c.delete_vm(pb::VmActionRequest {
            vm: "sh".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
        assert!(shared.exists(), "deleting the vm deleted the shared disk");
        assert!(!vm_dir(&cl, "node-b", &vm.id).exists());
    });
}
