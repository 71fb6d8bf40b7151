//! Migration set-ups: a booted source and a destination VMM listening for it.

use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::scratch::Scratch;
use crate::vmm_process::Vmm;

/// A source VMM booted with the test guest running `cmdline` in `memory` (past its first
/// self-check) and a destination VMM of `dst_memory` listening on a free port: (source,
/// destination, port).
pub fn migration_pair(
    dir: &Scratch,
    cmdline: &str,
    memory: &str,
    dst_memory: &str,
) -> (Vmm, Vmm, u16) {
    let mut src = Vmm::boot_guest(dir, "src", cmdline, memory);
    src.wait_for("CHECK PASS", 0, Duration::from_secs(120));
    let port = free_port("127.0.0.1");
    let dst = incoming(dir, "dst", port, dst_memory);
    (src, dst, port)
}

/// Starts a destination VMM with `--incoming tcp:127.0.0.1:PORT` and waits until it listens
/// (so a relay in front of it can connect).
pub fn incoming(dir: &Scratch, name: &str, port: u16, memory: &str) -> Vmm {
    let addr = format!("tcp:127.0.0.1:{port}");
    let mut v = Vmm::start(
        dir,
        name,
        &["--incoming", addr.as_str(), "--memory", memory],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !v.err().contains("waiting for incoming migration") {
        assert!(v.alive(), "destination exited: {}", v.err());
        assert!(Instant::now() < deadline, "destination never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    v
}

/// Writes one VMM's half of a migration credential into `dir` as `<name>-ca.pem`,
/// `<name>-cert.pem`, `<name>-key.pem` and returns the `--migration-tls-*` flags naming them.
pub fn tls_flags(
    dir: &Scratch,
    name: &str,
    t: &novacron_vmm_api::migration::MigrationTls,
) -> Vec<String> {
    let mut flags = Vec::new();
    for (flag, suffix, pem) in [
        ("--migration-tls-ca", "ca", &t.ca_pem),
        ("--migration-tls-cert", "cert", &t.cert_pem),
        ("--migration-tls-key", "key", &t.key_pem),
    ] {
        let p = dir.path(&format!("{name}-{suffix}.pem"));
        std::fs::write(&p, pem).expect("write credential file");
        flags.push(flag.to_string());
        flags.push(p.display().to_string());
    }
    flags
}

/// [`incoming`] on `tls:127.0.0.1:PORT` with the destination half `t` of a credential.
pub fn incoming_tls(
    dir: &Scratch,
    name: &str,
    port: u16,
    memory: &str,
    t: &novacron_vmm_api::migration::MigrationTls,
) -> Vmm {
    let addr = format!("tls:127.0.0.1:{port}");
    let mut args = vec![
        "--incoming".to_string(),
        addr,
        "--memory".into(),
        memory.into(),
    ];
    args.extend(tls_flags(dir, name, t));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut v = Vmm::start(dir, name, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !v.err().contains("waiting for incoming migration") {
        assert!(v.alive(), "destination exited: {}", v.err());
        assert!(Instant::now() < deadline, "destination never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    v
}
