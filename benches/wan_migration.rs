//! Benchmark: migration across a 100 Mbit/s, 50 ms RTT link (the userspace WAN relay), for a
//! 512 MiB guest running `fill` with a 64 MiB hot set, and one running `ab` on 128 MiB, with
//! each page encoding: bytes on the wire, total time, downtime and rounds.
//!
//! Run: `cargo bench --bench wan_migration` (NOVACRON_WAN_TIMEOUT=seconds per attempt, default
//! 90; NOVACRON_WAN_DOWNTIME=downtime target in ms, default 300: with a 50 ms round trip the
//! final pass cannot be shorter than one round trip plus the last dirty set).

mod support;

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let timeout = std::env::var("NOVACRON_WAN_TIMEOUT").unwrap_or_else(|_| "90".into());
    let downtime = std::env::var("NOVACRON_WAN_DOWNTIME").unwrap_or_else(|_| "300".into());
    let dir = std::env::temp_dir().join(format!("novacron-bench-wan-{}", std::process::id()));
    let relay: &[&str] = &["--rate", "100mbit", "--rtt-ms", "50"];
    let workloads = [
        (
            "fill 256 MiB, 64 MiB hot",
            "workload=fill mib=256 hot=64 rate=5000",
        ),
        ("ab 128 MiB", "workload=ab mib=128"),
    ];
    println!(
        "WAN migration: 100 Mbit/s, 50 ms RTT (novacron-wanrelay), 512 MiB guest, downtime target {downtime} ms, timeout {timeout} s"
    );
    println!(
        "{:<26} {:<6} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>8}",
        "workload",
        "enc",
        "wire MiB",
        "total s",
        "downtime",
        "dest dt",
        "rounds",
        "cache hit",
        "enc cpu"
    );
    for (name, cmdline) in workloads {
        let mut none_bytes = None;
        for enc in ["none", "zstd", "delta", "auto"] {
            let extra = [
                "--compression",
                enc,
                "--timeout",
                timeout.as_str(),
                "--downtime-ms",
                "2",
            ];
            match support::migrate_once(&vmm, &guest, &dir, cmdline, "512M", &extra, Some(relay)) {
                Some(v) => {
                    let wire = v["wire_bytes"].as_f64().unwrap_or(0.0);
                    if enc == "none" {
                        none_bytes = Some(wire);
                    }
                    println!(
                        "{:<26} {:<6} {:>10.1} {:>10.2} {:>8.2}ms {:>8.2}ms {:>7} {:>10} {:>6.0}ms{}",
                        name,
                        enc,
                        wire / 1048576.0,
                        v["total_ms"].as_f64().unwrap_or(0.0) / 1e3,
                        v["downtime_ms"].as_f64().unwrap_or(0.0),
                        v["dest_downtime_ms"].as_f64().unwrap_or(0.0),
                        v["rounds"],
                        v["cache_hit_rate"]
                            .as_f64()
                            .map(|h| format!("{:.0}%", h * 100.0))
                            .unwrap_or("-".into()),
                        v["encoder_cpu_ms"].as_f64().unwrap_or(0.0),
                        none_bytes
                            .filter(|_| enc != "none")
                            .map(|n| format!("  ({:.2}x of none)", wire / n))
                            .unwrap_or_default()
                    );
                }
                None => println!("{name:<26} {enc:<6} did not converge within {timeout} s"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("QEMU 7.2 on these hosts (ARCHITECTURE.md): real-data guest, 128 MiB hot set: 46 s, 530 MiB (XBZRLE); plain precopy never converges.");
}
