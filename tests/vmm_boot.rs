//! Boots the test guest on real /dev/kvm and checks its serial output, the control API and
//! the VMM's exit statuses.

use novacron_testsupport::*;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[test]
fn idle_guest_boots_and_ticks() {
    let dir = Scratch::new("idle");
    let mut v = Vmm::boot_guest(&dir, "idle", "workload=idle", "128M");
    let log = v.wait_for("READY workload=idle", 0, T);
    assert!(log.contains("NOVACRON-TESTGUEST"), "banner missing:\n{log}");
    let first = last_ticks(&v.wait_for("PROGRESS", 0, T));
    let deadline = Instant::now() + T;
    let later = loop {
        let t = last_ticks(&v.log());
        if t > first {
            break t;
        }
        assert!(v.alive(), "VMM died: {}", v.err());
        assert!(
            Instant::now() < deadline,
            "ticks stayed at {first} for {T:?}:\n{}",
            v.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(later > first);
    let (ok, out, err) = v.client("info", &[]);
    assert!(ok, "info failed: {err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("info is JSON");
    assert_eq!(info["state"], "running");
    assert_eq!(info["memory_mib"], 128);
    assert_eq!(info["vcpus"], 1);
    let (ok, _, err) = v.client("shutdown", &[]);
    assert!(ok, "shutdown failed: {err}");
    assert_eq!(v.wait_exit(T), Some(0));
}

fn workload_passes(cmdline: &str, memory: &str, name: &str) {
    let dir = Scratch::new(name);
    let mut v = Vmm::boot_guest(&dir, name, cmdline, memory);
    v.wait_for("READY", 0, T);
    let log = v.wait_for(
        &format!("CHECK PASS workload={name}"),
        0,
        Duration::from_secs(60),
    );
    assert!(!log.contains("CHECK FAIL"), "self-check failed:\n{log}");
    let t1 = last_ticks(&log);
    // Progress continues and ticks advance.
    let len = log.len();
    let log = v.wait_for("PROGRESS", len, T);
    assert!(last_ticks(&log) > t1, "ticks did not advance:\n{log}");
    assert!(!log.contains("CHECK FAIL"), "self-check failed:\n{log}");
}

#[test]
fn ab_workload_self_check_passes() {
    workload_passes("workload=ab mib=64", "256M", "ab");
}

#[test]
fn rand_workload_self_check_passes() {
    workload_passes("workload=rand mib=32 rate=20000 bytes=16", "128M", "rand");
}

#[test]
fn fill_workload_self_check_passes() {
    workload_passes("workload=fill mib=32 hot=8 rate=20000", "128M", "fill");
}

#[test]
fn pause_stops_ticks_and_resume_restarts_them() {
    let dir = Scratch::new("pause");
    let mut v = Vmm::boot_guest(&dir, "pause", "workload=idle report_ms=50", "128M");
    v.wait_for("PROGRESS", 0, T);
    let (ok, _, err) = v.client("pause", &[]);
    assert!(ok, "pause failed: {err}");
    let (_, out, _) = v.client("info", &[]);
    assert!(out.contains("\"paused\""), "info while paused: {out}");
    // Paused: over a window of 12 report periods the guest writes nothing and its ticks
    // stay put, sampled every period (the VMM stays up throughout).
    let at_pause = v.log();
    let window = Instant::now() + Duration::from_millis(600);
    while Instant::now() < window {
        std::thread::sleep(Duration::from_millis(50));
        assert!(v.alive(), "VMM died while paused: {}", v.err());
        let now = v.log();
        assert_eq!(
            last_ticks(&now),
            last_ticks(&at_pause),
            "guest made progress while paused"
        );
        assert_eq!(
            now.len(),
            at_pause.len(),
            "guest wrote to its serial port while paused:\n{now}"
        );
    }
    let still = v.log();
    let (ok, _, err) = v.client("resume", &[]);
    assert!(ok, "resume failed: {err}");
    let log = v.wait_for("PROGRESS", still.len(), T);
    assert!(last_ticks(&log) > last_ticks(&still));
}

#[test]
fn guest_reset_and_triple_fault_have_distinct_statuses() {
    let dir = Scratch::new("exits");
    let mut r = Vmm::boot_guest(&dir, "reset", "workload=reset", "64M");
    assert_eq!(r.wait_exit(T), Some(10), "reset: {}\n{}", r.err(), r.log());
    let mut t = Vmm::boot_guest(&dir, "triple", "workload=triplefault", "64M");
    assert_eq!(
        t.wait_exit(T),
        Some(11),
        "triple fault: {}\n{}",
        t.err(),
        t.log()
    );
    assert!(t.err().contains("triple fault"), "stderr: {}", t.err());
}

fn run_fails(args: &[&str], expect: &str) {
    let out = Command::new(vmm())
        .arg("run")
        .args(args)
        .output()
        .expect("run vmm");
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(expect),
        "{args:?}: stderr was {err:?}, expected {expect:?}"
    );
    assert!(
        err.trim().lines().count() <= 4,
        "error should be short: {err}"
    );
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = Scratch::new("badinput");
    let text = dir.path("notakernel");
    std::fs::write(&text, "just text\n").expect("write");
    let t = text.to_str().expect("utf8");
    run_fails(
        &["--kernel", "/nonexistent/vmlinux"],
        "cannot read /nonexistent/vmlinux",
    );
    run_fails(&["--kernel", t], "is not a kernel");
    run_fails(&["--kernel", t, "--memory", "12Q"], "invalid size");
    run_fails(&["--kernel", t, "--memory", "4T"], "out of range");
    run_fails(&["--kernel", t, "--vcpus", "0"], "vcpus");
    run_fails(
        &["--kernel", t, "--serial", "tcp:1"],
        "invalid serial target",
    );
    run_fails(&[], "--kernel is required");
}

#[test]
fn api_rejects_unknown_and_malformed_requests() {
    use std::io::{BufRead, BufReader, Write};
    let dir = Scratch::new("api");
    let mut v = Vmm::boot_guest(&dir, "api", "workload=idle", "64M");
    v.wait_for("READY", 0, T);
    let mut s = std::os::unix::net::UnixStream::connect(&v.sock).expect("connect");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    for req in [
        "{\"cmd\":\"frobnicate\"}",
        "not json",
        "{\"nocmd\":1}",
        "{\"cmd\":\"migrate\",\"to\":\"udp:x\"}",
    ] {
        writeln!(s, "{req}").expect("write");
        let mut line = String::new();
        r.read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json response");
        assert_eq!(v["ok"], false, "{req} -> {line}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert!(v.alive());
}
