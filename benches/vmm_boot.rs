//! Benchmark: VMM start to test-guest `READY` (128 MiB guest), median of several runs, and
//! the VMM's own resident memory beyond guest RAM. Prints QEMU's time to `READY` for the same
//! guest file (PVH) side by side when qemu-system-x86_64 is installed.
//!
//! Run: `cargo bench --bench vmm_boot`

mod support;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Spawns `cmd`, returns ms until a stdout line contains READY, and the child.
fn time_to_ready(cmd: &mut Command) -> Option<(f64, std::process::Child)> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let mut lines = BufReader::new(out).lines();
    let deadline = t0 + Duration::from_secs(60);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.contains("READY") => {
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                // Keep draining so the guest never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Some((ms, child));
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let _ = child.kill();
    None
}

/// RSS of `pid` minus the resident part of its guest RAM mapping, and the anonymous part of
/// that (heap, stacks, written data; the rest is file-backed code and read-only data that
/// all VMM processes share), in KiB.
fn vmm_overhead_kib(pid: u32, guest_bytes: u64) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut rss, mut private) = (0u64, 0u64);
    let mut cur_size = 0u64;
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        let (key, value) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok()));
        let is_guest = cur_size * 1024 == guest_bytes;
        match (key, value) {
            (Some("Size:"), Some(v)) => cur_size = v,
            (Some("Rss:"), Some(v)) if !is_guest => rss += v,
            (Some("Anonymous:"), Some(v)) if !is_guest => private += v,
            _ => {}
        }
    }
    Some((rss, private))
}

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let runs = 15;
    let mut times = Vec::new();
    let mut overhead = Vec::new();
    let mut private = Vec::new();
    for _ in 0..runs {
        let mut cmd = Command::new(&vmm);
        cmd.args(["run", "--kernel"]).arg(&guest).args([
            "--cmdline",
            "workload=idle",
            "--memory",
            "128M",
            "--serial",
            "stdout",
        ]);
        if let Some((ms, mut child)) = time_to_ready(&mut cmd) {
            times.push(ms);
            std::thread::sleep(Duration::from_millis(300));
            if let Some((kib, own)) = vmm_overhead_kib(child.id(), 128 << 20) {
                overhead.push(kib as f64);
                private.push(own as f64);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    println!(
        "boot: novacron-vmm start -> test guest READY (128 MiB), {} runs",
        times.len()
    );
    println!(
        "  median {:.1} ms   min {:.1} ms   p90 {:.1} ms   (target: 10 ms)",
        support::median(&times),
        support::percentile(&times, 0.0),
        support::percentile(&times, 90.0)
    );
    println!(
        "  VMM RSS beyond guest RAM: median {:.2} MiB (target: 3 MiB), of which anonymous {:.2} MiB (the rest is file-backed code and read-only data of the binary and libc, shared by all VMMs)",
        support::median(&overhead) / 1024.0,
        support::median(&private) / 1024.0
    );
    if support::have("qemu-system-x86_64") {
        let mut q = Vec::new();
        for _ in 0..3 {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args([
                "-M",
                "pc",
                "-enable-kvm",
                "-m",
                "128",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-no-reboot", "-serial", "stdio", "-kernel"])
            .arg(&guest)
            .args(["-append", "workload=idle"]);
            if let Some((ms, mut child)) = time_to_ready(&mut cmd) {
                q.push(ms);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        println!(
            "  QEMU -M pc -kernel (PVH, SeaBIOS) same guest: median {:.1} ms  -> NovaCron is {:.0}x faster",
            support::median(&q),
            support::median(&q) / support::median(&times)
        );
    } else {
        println!("  (qemu-system-x86_64 not installed: no side-by-side figure)");
    }
}
