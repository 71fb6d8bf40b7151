//! Benchmark: live migration over loopback between two novacron-vmm processes, printing the
//! migration summary for an idle 1 GiB guest, a 1 GiB guest running `ab` on 256 MiB, and
//! `rand` at several dirty rates. Medians of several runs.
//!
//! Each case runs over plain `tcp:` and over `tls:` (the one-time credential the agent always
//! migrates with) and prints the ratio of the median totals.
//!
//! Run: `cargo bench --bench migration` (env NOVACRON_BENCH_RUNS to change the run count,
//! NOVACRON_BENCH_TLS=tcp|tls|both, NOVACRON_BENCH_CASES=comma-separated name parts)

mod support;
use std::path::PathBuf;

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let runs: usize = std::env::var("NOVACRON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("novacron-bench-mig-{}", std::process::id()));
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        ("idle 1 GiB", "workload=idle", "1G", vec![]),
        ("ab 256 MiB in 1 GiB", "workload=ab mib=256", "1G", vec![]),
        (
            "ab 256 MiB, compression auto",
            "workload=ab mib=256",
            "1G",
            vec!["--compression", "auto"],
        ),
        (
            "ab 256 MiB, auto-converge",
            "workload=ab mib=256",
            "1G",
            vec!["--auto-converge", "--timeout", "5"],
        ),
        (
            "rand 64 MiB @ 2k pages/s",
            "workload=rand mib=64 rate=2000",
            "512M",
            vec![],
        ),
        (
            "rand 64 MiB @ 20k pages/s",
            "workload=rand mib=64 rate=20000",
            "512M",
            vec![],
        ),
        (
            "rand 64 MiB @ 20k, auto",
            "workload=rand mib=64 rate=20000",
            "512M",
            vec!["--compression", "auto"],
        ),
        (
            "rand 64 MiB @ 100k pages/s",
            "workload=rand mib=64 rate=100000",
            "512M",
            vec!["--auto-converge", "--timeout", "5"],
        ),
    ];
    // `tcp` rows, `tls` rows (the migration's one-time credential, as the agent migrates),
    // or both with the ratio of the medians (NOVACRON_BENCH_TLS, default both).
    let tls_setting = std::env::var("NOVACRON_BENCH_TLS").unwrap_or_else(|_| "both".into());
    let transports: &[bool] = match tls_setting.as_str() {
        "tcp" | "off" => &[false],
        "tls" | "on" => &[true],
        _ => &[false, true],
    };
    // NOVACRON_BENCH_CASES: only the cases whose name contains one of these (comma-separated).
    let only = std::env::var("NOVACRON_BENCH_CASES").unwrap_or_default();
    let cred = novacron_controller::migration_tls::issue("bench").expect("issue a credential");
    println!("live migration over loopback, novacron-vmm -> novacron-vmm, median of {runs} runs");
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9}",
        "case", "total ms", "downtime", "dest dt", "rounds", "wire MiB", "throttle", "tls/tcp"
    );
    for (name, cmdline, mem, extra) in &cases {
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o.trim())) {
            continue;
        }
        let mut tcp_total = None;
        for &tls in transports {
            let over = tls.then_some((&cred.destination, &cred.source));
            let mut res = Vec::new();
            for _ in 0..runs {
                if let Ok(v) =
                    support::migrate_once_over(&vmm, &guest, &dir, cmdline, mem, extra, None, over)
                {
                    res.push(v);
                }
            }
            let label = format!("{name}{}", if tls { " [tls]" } else { "" });
            if res.is_empty() {
                println!("{label:<34} failed");
                continue;
            }
            let f = |k: &str| {
                res.iter()
                    .map(|v| v[k].as_f64().unwrap_or(f64::NAN))
                    .collect::<Vec<_>>()
            };
            let total = support::median(&f("total_ms"));
            let ratio = match (tls, tcp_total) {
                (true, Some(t)) => format!("{:.3}x", total / t),
                _ => "-".into(),
            };
            if !tls {
                tcp_total = Some(total);
            }
            println!(
                "{:<34} {:>9.1} {:>10.2} {:>10.2} {:>7.0} {:>10.1} {:>8.0}% {:>9}",
                label,
                total,
                support::median(&f("downtime_ms")),
                support::median(&f("dest_downtime_ms")),
                support::median(&f("rounds")),
                support::median(&f("wire_bytes")) / 1048576.0,
                support::median(&f("throttle_pct")),
                ratio,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("QEMU 7.2 on these hosts (ARCHITECTURE.md): idle 1 GiB 64 ms / 1 ms downtime; ab 256 MiB 1 s / 86 ms (precopy), 1.4 s / 2-3 ms / 516 MiB (XBZRLE).");
}
