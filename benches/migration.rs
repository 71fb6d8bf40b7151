//! Benchmark: live migration over loopback between two novacron-vmm processes, printing the
//! migration summary for an idle 1 GiB guest, a 1 GiB guest running `ab` on 256 MiB, and
//! `rand` at several dirty rates. Medians of several runs.
//!
//! Run: `cargo bench --bench migration` (env NOVACRON_BENCH_RUNS to change the run count)

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
    println!("live migration over loopback, novacron-vmm -> novacron-vmm, median of {runs} runs");
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>7} {:>10} {:>9}",
        "case", "total ms", "downtime", "dest dt", "rounds", "wire MiB", "throttle"
    );
    for (name, cmdline, mem, extra) in &cases {
        let mut res = Vec::new();
        for _ in 0..runs {
            if let Ok(v) = support::migrate_once(&vmm, &guest, &dir, cmdline, mem, extra, None) {
                res.push(v);
            }
        }
        if res.is_empty() {
            println!("{name:<28} failed");
            continue;
        }
        let f = |k: &str| {
            res.iter()
                .map(|v| v[k].as_f64().unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        };
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
    println!("QEMU 7.2 on these hosts (ARCHITECTURE.md): idle 1 GiB 64 ms / 1 ms downtime; ab 256 MiB 1 s / 86 ms (precopy), 1.4 s / 2-3 ms / 516 MiB (XBZRLE).");
}
