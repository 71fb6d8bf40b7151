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
