//! Benchmark: what the VMM's seccomp sandbox costs. Boot to the test guest's `READY`
//! (128 MiB, 2 vCPUs) and a loopback live migration (512 MiB guest, `rand` dirtying 64 MiB
//! at 20k pages/s, plain `tcp:`), each with the sandbox on (the default) and with
//! `--no-seccomp`, alternating so drift hits both alike. Prints medians and the ratio
//! sandboxed / unsandboxed; the target is at most 5% apart.
//!
//! Run: `cargo bench --bench sandbox_overhead` (NOVACRON_BENCH_RUNS, default 11 boots and 5
//! migrations per variant).

mod support;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// ms from spawn to the guest's READY on stdout, or `None`.
fn boot_ms(vmm: &std::path::Path, guest: &std::path::Path, run_args: &[&str]) -> Option<f64> {
    let t0 = Instant::now();
    let mut child = Command::new(vmm)
        .arg("run")
        .args(run_args)
        .arg("--kernel")
        .arg(guest)
        .args([
            "--cmdline",
            "workload=idle",
            "--memory",
            "128M",
            "--vcpus",
            "2",
            "--serial",
            "stdout",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let mut ms = None;
    for line in BufReader::new(out).lines() {
        match line {
            Ok(l) if l.contains("READY") => {
                ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            Ok(_) if t0.elapsed() > Duration::from_secs(60) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    ms
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let runs: usize = std::env::var("NOVACRON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 11 } else { 1 });
    let variants: [(&str, &[&str]); 2] = [("sandbox on", &[]), ("--no-seccomp", &["--no-seccomp"])];

    let mut boots = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, (_, args)) in variants.iter().enumerate() {
            if let Some(ms) = boot_ms(&vmm, &guest, args) {
                boots[i].push(ms);
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("novacron-bench-sandbox-{}", std::process::id()));
    let mig_runs = if full { runs.div_ceil(2).max(3) } else { 1 };
    let mut migs = [Vec::new(), Vec::new()];
    let mut downs = [Vec::new(), Vec::new()];
    for _ in 0..mig_runs {
        for (i, (_, args)) in variants.iter().enumerate() {
            let r = support::MigrationRun {
                vmm: &vmm,
                guest: &guest,
                initrd: None,
                dir: &dir,
                cmdline: "workload=rand mib=64 rate=20000",
                mem: "512M",
                extra: &[],
                relay: None,
                disk: None,
                tls: None,
                run_args: args,
            }
            .run();
            match r {
                Ok(s) => {
                    migs[i].push(s.total_ms);
                    downs[i].push(s.downtime_ms);
                }
                Err(e) => eprintln!("{}: migration failed: {e}", variants[i].0),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("seccomp sandbox cost, medians (boots: {runs} per variant, migrations: {mig_runs})");
    println!(
        "{:<16} {:>14} {:>18} {:>14}",
        "", "boot->READY ms", "migration total ms", "downtime ms"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        println!(
            "{:<16} {:>14.1} {:>18.1} {:>14.2}",
            name,
            support::median(&boots[i]),
            support::median(&migs[i]),
            support::median(&downs[i])
        );
    }
    let ratio = |v: &[Vec<f64>; 2]| support::median(&v[0]) / support::median(&v[1]);
    println!(
        "{:<16} {:>13.3}x {:>17.3}x {:>13.3}x",
        "on / off",
        ratio(&boots),
        ratio(&migs),
        ratio(&downs)
    );
}
