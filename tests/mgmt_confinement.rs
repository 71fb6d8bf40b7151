//! The agent's confinement, through its gRPC API with a real agent and VMM: kernels and
//! images come only from its images directory (absolute paths, `..`, symlinks out of it:
//! INVALID_ARGUMENT, with the same answer as a missing file), VM directories are 0700 and
//! API sockets and migration keys 0600 whatever the umask (this test runs the agent under
//! umask 000), and migrations without a credential are refused.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::{Duration, Instant};

use novacron_proto::agent as apb;
use novacron_testsupport::mgmt::run_scenario as run;
use novacron_testsupport::mgmt::*;
use tonic::Code;

fn config(id: &str, kernel: &str) -> apb::VmConfig {
    apb::VmConfig {
        id: id.into(),
        name: id.into(),
        vcpus: 1,
        memory_mib: 32,
        kernel: kernel.into(),
        cmdline: "workload=idle".into(),
        ..Default::default()
    }
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn kernels_and_images_only_from_the_images_dir_private_files_whatever_the_umask() {
    // SAFETY: umask only swaps the process's file-mode mask; the agent, its supervisors and
    // VMMs inherit 000 from here (this file's only test).
    let old = unsafe { libc::umask(0) };
    run(Duration::from_secs(120), async {
        let mut cl = Cluster::new("confine", Vmm::Real, &[]);
        cl.start_controller();
        cl.start_agent("node-a", "127.0.0.2", &[]);
        cl.wait_ready_hosts(1).await;
        let mut a = cl.agent("node-a").await;
        let images = cl.images_dir("node-a");
        let kernel = cl.spec("x", 32).kernel;
        // A file outside the images directory, a symlink to it, a directory link out, and a
        // symlink that stays inside.
        let outside = cl.root.join("outside.elf");
        std::fs::copy(images.join(&kernel), &outside).unwrap();
        symlink(&outside, images.join("out.elf")).unwrap();
        symlink(&cl.root, images.join("up")).unwrap();
        symlink(&kernel, images.join("inside.elf")).unwrap();

        let refused = [
            outside.display().to_string(),
            "/nonexistent/vmlinux".into(),
            format!("../{}", outside.file_name().unwrap().to_string_lossy()),
            format!("a/../../{}", outside.file_name().unwrap().to_string_lossy()),
            "out.elf".into(),
            "up/outside.elf".into(),
            "missing.elf".into(),
        ];
        let mut answers = Vec::new();
        for (i, k) in refused.iter().enumerate() {
            let r = a
                .create_vm(apb::CreateVmRequest {
                    config: Some(config(&format!("bad{i}"), k)),
                    ..Default::default()
                })
                .await;
            let s = r.expect_err(&format!("kernel {k:?} accepted"));
            assert_eq!(s.code(), Code::InvalidArgument, "kernel {k:?}: {s:?}");
            let m = s.message().replace(k.as_str(), "NAME");
            assert!(!m.contains("not found") && !m.contains("exist"), "{m}");
            answers.push(m);
        }
        // The answer reads the same whether the path exists or not.
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:#?}");

        // A disk image through a symlink out of the directory: refused the same way.
        let mut c = config("baddisk", &kernel);
        c.disks.push(apb::Disk {
            image: "out.elf".into(),
            readonly: true,
            ..Default::default()
        });
        let s = a
            .create_vm(apb::CreateVmRequest {
                config: Some(c),
                ..Default::default()
            })
            .await
            .expect_err("an image outside the images dir");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

        // A symlink that stays inside is fine; the VM's directory is 0700 and its API socket
        // 0600 although the agent runs under umask 000.
        let st = a
            .create_vm(apb::CreateVmRequest {
                config: Some(config("good", "inside.elf")),
                start: true,
                ..Default::default()
            })
            .await
            .expect("create through a symlink inside the images dir")
            .into_inner();
        let dir = cl.root.join("node-a/vms/good");
        assert_eq!(mode(&dir), 0o700, "vm dir of {st:?}");
        let sock = dir.join("api.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "no api socket at {}",
                sock.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(mode(&sock), 0o600, "api socket");

        // Migrations: no credential, no stream.
        let s = a
            .prepare_incoming(apb::PrepareIncomingRequest {
                config: Some(config("inc", &kernel)),
                migration_id: "m1".into(),
                ..Default::default()
            })
            .await
            .expect_err("prepared without a credential");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        let s = a
            .migrate_out(apb::MigrateOutRequest {
                vm_id: "good".into(),
                to: "tls:127.0.0.1:1".into(),
                migration_id: "m2".into(),
                ..Default::default()
            })
            .await
            .expect_err("migrated without a credential");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        // With one, the destination's half is written 0600 in the 0700 VM dir.
        let cred = novacron_controller::migration_tls::issue("m1").unwrap();
        let r = a
            .prepare_incoming(apb::PrepareIncomingRequest {
                config: Some(config("inc", &kernel)),
                migration_id: "m1".into(),
                incoming_timeout_s: 30,
                tls: Some(novacron_controller::migration_tls::to_proto(
                    &cred.destination,
                )),
                ..Default::default()
            })
            .await
            .expect("prepare with a credential")
            .into_inner();
        assert!(r.address.starts_with("tls:"), "{}", r.address);
        let inc = cl.root.join("node-a/vms/inc");
        assert_eq!(mode(&inc), 0o700);
        for f in [
            "migration-ca.pem",
            "migration-cert.pem",
            "migration-key.pem",
        ] {
            assert_eq!(mode(&inc.join(f)), 0o600, "{f}");
        }
        let _ = a
            .abort_incoming(apb::VmRequest {
                vm_id: "inc".into(),
                ..Default::default()
            })
            .await;
    });
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
}
