//! Benchmark: live migration over loopback between two novacron-vmm processes, printing the
//! migration summary for an idle 1 GiB guest, a 1 GiB guest running `ab` on 256 MiB, and
//! `rand` at several dirty rates. Medians of several runs.
//!
//! Run: `cargo bench --bench migration` (env NOVACRON_BENCH_RUNS to change the run count)

mod support;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(log: &Path, needle: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn one(vmm: &Path, guest: &Path, dir: &Path, cmdline: &str, mem: &str, extra: &[&str]) -> Option<serde_json::Value> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).ok()?;
    let (slog, ssock, dlog) = (dir.join("s.log"), dir.join("s.sock"), dir.join("d.log"));
    let _src = Kill(
        Command::new(vmm)
            .args(["run", "--kernel"])
            .arg(guest)
            .args(["--cmdline", cmdline, "--memory", mem, "--serial"])
            .arg(format!("file:{}", slog.display()))
            .arg("--api-socket")
            .arg(&ssock)
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    let needle = if cmdline.contains("idle") { "PROGRESS" } else { "CHECK PASS" };
    if !wait_for(&slog, needle, Duration::from_secs(120)) {
        return None;
    }
    // Let the workload reach its steady state.
    std::thread::sleep(Duration::from_millis(500));
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let _dst = Kill(
        Command::new(vmm)
            .args(["run", "--incoming", &format!("tcp:127.0.0.1:{port}"), "--memory", mem, "--serial"])
            .arg(format!("file:{}", dlog.display()))
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    let out = Command::new(vmm)
        .args(["migrate", "--api-socket"])
        .arg(&ssock)
        .args(["--to", &format!("tcp:127.0.0.1:{port}")])
        .args(extra)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("migration failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // The destination's workload must still pass.
    if !cmdline.contains("idle") && !wait_for(&dlog, "CHECK PASS", Duration::from_secs(60)) {
        eprintln!("destination did not report CHECK PASS");
        return None;
    }
    Some(v)
}

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let runs: usize = std::env::var("NOVACRON_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir: PathBuf = std::env::temp_dir().join(format!("novacron-bench-mig-{}", std::process::id()));
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        ("idle 1 GiB", "workload=idle", "1G", vec![]),
        ("ab 256 MiB in 1 GiB", "workload=ab mib=256", "1G", vec![]),
        ("ab 256 MiB, auto-converge", "workload=ab mib=256", "1G", vec!["--auto-converge", "--timeout", "5"]),
        ("rand 64 MiB @ 2k pages/s", "workload=rand mib=64 rate=2000", "512M", vec![]),
        ("rand 64 MiB @ 20k pages/s", "workload=rand mib=64 rate=20000", "512M", vec![]),
        ("rand 64 MiB @ 100k pages/s", "workload=rand mib=64 rate=100000", "512M", vec!["--auto-converge", "--timeout", "5"]),
    ];
    println!("live migration over loopback, novacron-vmm -> novacron-vmm, median of {runs} runs");
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>7} {:>10} {:>9}",
        "case", "total ms", "downtime", "dest dt", "rounds", "wire MiB", "throttle"
    );
    for (name, cmdline, mem, extra) in &cases {
        let mut res = Vec::new();
        for _ in 0..runs {
            if let Some(v) = one(&vmm, &guest, &dir, cmdline, mem, extra) {
                res.push(v);
            }
        }
        if res.is_empty() {
            println!("{name:<28} failed");
            continue;
        }
        let f = |k: &str| res.iter().map(|v| v[k].as_f64().unwrap_or(f64::NAN)).collect::<Vec<_>>();
        println!(
            "{:<28} {:>9.1} {:>10.2} {:>10.2} {:>7.0} {:>10.1} {:>8.0}%",
            name,
            support::median(&f("total_ms")),
            support::median(&f("downtime_ms")),
            support::median(&f("dest_downtime_ms")),
            support::median(&f("rounds")),
            support::median(&f("wire_bytes")) / 1048576.0,
            support::median(&f("throttle_pct")),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("QEMU 7.2 on these hosts (ARCHITECTURE.md): idle 1 GiB 64 ms / 1 ms downtime; ab 256 MiB 1 s / 86 ms (precopy).");
}
