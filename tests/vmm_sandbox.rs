//! The VMM's seccomp sandbox on real /dev/kvm: every thread of a running VMM is filtered
//! (`Seccomp: 2`, `NoNewPrivs: 1`), a system call outside the filter kills the process with
//! `SIGSYS`, `--no-seccomp` says on stderr that it is off, and the misbehaviour hooks exist
//! only in the test build's VMM. Migration, snapshots and devices under the sandbox are the
//! rest of the suite: it is on by default in every test.

use novacron_testsupport::paths::vmm_testhooks;
use novacron_testsupport::process::thread_sandboxes;
use novacron_testsupport::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Sends one request line to the VMM's API socket and returns the response line.
fn request(v: &Vmm, line: &str) -> String {
    let mut s = UnixStream::connect(&v.sock).expect("connect to the API socket");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut out = String::new();
    let _ = BufReader::new(s).read_line(&mut out);
    out
}

fn boot(bin: Option<&std::path::Path>, dir: &Scratch, extra: &[&str]) -> Vmm {
    let g = paths::guest();
    // A disk, so that the virtio event loop runs too.
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let disk = disk.display().to_string();
    let mut args = vec![
        "--disk",
        disk.as_str(),
        "--kernel",
        g.to_str().unwrap(),
        "--cmdline",
        "workload=idle",
        "--memory",
        "128M",
        "--vcpus",
        "2",
    ];
    args.extend_from_slice(extra);
    let mut v = match bin {
        Some(b) => Vmm::start_bin(b, dir, "vm", &args),
        None => Vmm::start(dir, "vm", &args),
    };
    v.wait_for("READY workload=idle", 0, T);
    v
}

#[test]
fn every_thread_of_a_running_vmm_is_filtered() {
    let dir = Scratch::new("sandbox-threads");
    let v = boot(None, &dir, &[]);
    // A connection is served on its own thread: make one exist while we look.
    let info = request(&v, r#"{"cmd":"info"}"#);
    assert!(info.contains("\"ok\":true"), "{info}");
    let ts = thread_sandboxes(v.child.id());
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    for want in ["vcpu0", "vcpu1", "virtio", "api"] {
        assert!(names.contains(&want), "no {want} thread: {names:?}");
    }
    for t in &ts {
        assert_eq!(t.seccomp, "2", "thread {} is not filtered: {ts:?}", t.name);
        assert_eq!(
            t.no_new_privs, "1",
            "thread {} lacks no_new_privs: {ts:?}",
            t.name
        );
    }
    assert!(!v.err().contains("WARNING"), "{}", v.err());
}

#[test]
fn no_seccomp_says_so_and_leaves_threads_unfiltered() {
    let dir = Scratch::new("sandbox-off");
    let v = boot(None, &dir, &["--no-seccomp"]);
    assert!(
        v.err().contains("seccomp filters are OFF"),
        "no warning on stderr: {}",
        v.err()
    );
    let ts = thread_sandboxes(v.child.id());
    assert!(ts.iter().all(|t| t.seccomp == "0"), "{ts:?}");
}

#[test]
fn a_vmm_without_test_hooks_refuses_them() {
    let dir = Scratch::new("sandbox-nohooks");
    let mut v = boot(None, &dir, &[]);
    let r = request(&v, r#"{"cmd":"test-hook","hook":"forbidden-syscall"}"#);
    assert!(r.contains("built without test hooks"), "{r}");
    assert!(v.alive());
}

#[test]
fn a_system_call_outside_the_filter_kills_the_vmm_with_sigsys() {
    let dir = Scratch::new("sandbox-sigsys");
    let mut v = boot(Some(&vmm_testhooks()), &dir, &[]);
    // The hooks work: a file the filter lets the API thread open.
    let r = request(
        &v,
        &format!(
            r#"{{"cmd":"test-hook","hook":"open-host-file","path":"{}"}}"#,
            paths::guest().display()
        ),
    );
    assert!(r.contains("\"ok\":true"), "{r}");
    let r = request(&v, r#"{"cmd":"test-hook","hook":"forbidden-syscall"}"#);
    assert!(r.is_empty(), "the VMM answered instead of dying: {r}");
    let st = v.wait_status(T);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}; stderr: {}", v.err());
}

#[test]
fn without_the_filter_the_forbidden_call_is_only_refused_by_the_kernel() {
    // The control for the test above: the hook itself does not crash the VMM.
    let dir = Scratch::new("sandbox-sigsys-off");
    let mut v = boot(Some(&vmm_testhooks()), &dir, &["--no-seccomp"]);
    let r = request(&v, r#"{"cmd":"test-hook","hook":"forbidden-syscall"}"#);
    assert!(r.contains("no seccomp filter stopped it"), "{r}");
    assert!(v.alive());
}
