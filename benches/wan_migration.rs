//! Benchmark: migration across a 100 Mbit/s, 50 ms RTT link (the userspace WAN relay) of a
//! 512 MiB guest: bytes on the wire, total time, downtime and rounds.
//!
//! * Table 1 (the WAN issue): `fill` with a 64 MiB hot set and `ab` on 128 MiB, with each
//!   page encoding, downtime target NOVACRON_WAN_DOWNTIME (default 300 ms).
//! * Table 2 (the architecture target, downtime 2 ms): `fill` with 64 and 128 MiB hot sets
//!   with delta and auto, and `ab` with auto and --auto-converge (it rewrites all 32768 pages
//!   of its region faster than any final pass of them can be applied, so only throttling
//!   brings its final pass under 2 ms).
//!
//! Downtime is printed twice: at the source (pause to the destination's confirmation, so it
//! includes the 50 ms round trip) and at the destination (switchover frame received to
//! vCPUs running: the final pass, state and restore, without the link's propagation delay,
//! which is what QEMU's figure measures too).
//!
//! * Table 3: the cost of TLS on this link: one case over `tcp:` and `tls:`, medians and
//!   their ratio.
//!
//! Run: `cargo bench --bench wan_migration` (NOVACRON_WAN_TIMEOUT=seconds per attempt,
//! default 60; NOVACRON_WAN_TABLES=1,2,tls to choose tables; NOVACRON_BENCH_RUNS for table 3).

mod support;

use std::path::Path;

struct Bench<'a> {
    vmm: &'a Path,
    guest: &'a Path,
    dir: &'a Path,
    timeout: &'a str,
}

impl Bench<'_> {
    /// Runs one migration and prints its row; returns the wire bytes (for a failed attempt,
    /// those it sent before giving up).
    fn row(
        &self,
        name: &str,
        cmdline: &str,
        enc: &str,
        extra: &[&str],
        none: Option<f64>,
    ) -> Option<f64> {
        let relay: &[&str] = &["--rate", "100mbit", "--rtt-ms", "50"];
        let mut args = vec!["--compression", enc, "--timeout", self.timeout];
        args.extend_from_slice(extra);
        let label = if extra.contains(&"--auto-converge") {
            format!("{enc}+ac")
        } else {
            enc.to_string()
        };
        match support::migrate_once(
            self.vmm,
            self.guest,
            self.dir,
            cmdline,
            "512M",
            &args,
            Some(relay),
        ) {
            Ok(v) => {
                let wire = v["wire_bytes"].as_f64().unwrap_or(0.0);
                let vs_none = none
                    .filter(|_| enc != "none")
                    .map(|n| format!("  ({:.4}x of none)", wire / n))
                    .unwrap_or_default();
                println!(
                    "{:<26} {:<8} {:>9.1} {:>8.2} {:>8.1}ms {:>7.2}ms {:>7} {:>9} {:>6.0}ms {:>5}%{}",
                    name,
                    label,
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
                    v["throttle_pct"],
                    vs_none
                );
                Some(wire)
            }
            Err(e) => {
                // "(N rounds, X MiB sent, ...": what the failed attempt put on the wire.
                let sent = e
                    .split(" MiB sent")
                    .next()
                    .and_then(|h| h.rsplit(", ").next())
                    .and_then(|x| x.parse::<f64>().ok());
                match sent {
                    Some(m) => println!(
                        "{name:<26} {label:<8} {m:>9.1}  did not converge within {} s",
                        self.timeout
                    ),
                    None => println!("{name:<26} {label:<8} failed: {e}"),
                }
                sent.map(|m| m * 1048576.0)
            }
        }
    }
}

fn header() {
    println!(
        "{:<26} {:<8} {:>9} {:>8} {:>10} {:>9} {:>7} {:>9} {:>8} {:>6}",
        "workload",
        "enc",
        "wire MiB",
        "total s",
        "src dt",
        "dest dt",
        "rounds",
        "cache hit",
        "enc cpu",
        "thr"
    );
}

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let timeout = std::env::var("NOVACRON_WAN_TIMEOUT").unwrap_or_else(|_| "60".into());
    let downtime = std::env::var("NOVACRON_WAN_DOWNTIME").unwrap_or_else(|_| "300".into());
    let dir = std::env::temp_dir().join(format!("novacron-bench-wan-{}", std::process::id()));
    let b = Bench {
        vmm: &vmm,
        guest: &guest,
        dir: &dir,
        timeout: &timeout,
    };
    // NOVACRON_WAN_TABLES: which of `1`, `2`, `tls` to run (comma-separated; default all).
    let tables = std::env::var("NOVACRON_WAN_TABLES").unwrap_or_else(|_| "1,2,tls".into());
    let want = |t: &str| tables.split(',').any(|x| x.trim() == t);
    let fill64 = "workload=fill mib=256 hot=64 rate=5000";
    let fill128 = "workload=fill mib=256 hot=128 rate=5000";
    let ab = "workload=ab mib=128";

    if want("1") {
        println!(
            "Table 1: 100 Mbit/s, 50 ms RTT (novacron-wanrelay), 512 MiB guest, downtime target {downtime} ms, timeout {timeout} s"
        );
        header();
        let dt = ["--downtime-ms", downtime.as_str()];
        for (name, cmdline) in [("fill 256 MiB, 64 MiB hot", fill64), ("ab 128 MiB", ab)] {
            let none = b.row(name, cmdline, "none", &dt, None);
            for enc in ["zstd", "delta", "auto"] {
                b.row(name, cmdline, enc, &dt, none);
            }
        }
        println!(
            "(x of none: against the bytes none sent before giving up, when it did not converge)"
        );
    }
    if want("2") {
        println!();
        println!("Table 2: same link, downtime target 2 ms");
        header();
        let dt2 = ["--downtime-ms", "2"];
        for (name, cmdline) in [
            ("fill 256 MiB, 64 MiB hot", fill64),
            ("fill 256 MiB, 128 MiB hot", fill128),
        ] {
            for enc in ["delta", "auto"] {
                b.row(name, cmdline, enc, &dt2, None);
            }
        }
        b.row(
            "ab 128 MiB",
            ab,
            "auto",
            &["--downtime-ms", "2", "--auto-converge"],
            None,
        );
    }
    if want("tls") {
        // What TLS costs on this link: the same migration over tcp: and over tls: (the
        // credential the agent always migrates with), NOVACRON_BENCH_RUNS runs each.
        let runs: usize = std::env::var("NOVACRON_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let cred = novacron_controller::migration_tls::issue("bench").expect("credential");
        println!();
        println!("Table 3: TLS cost on the same link, fill 256 MiB with 64 MiB hot, auto, downtime target {downtime} ms, median of {runs}");
        let relay: &[&str] = &["--rate", "100mbit", "--rtt-ms", "50"];
        let args = [
            "--compression",
            "auto",
            "--timeout",
            timeout.as_str(),
            "--downtime-ms",
            downtime.as_str(),
        ];
        let mut medians = Vec::new();
        for tls in [false, true] {
            let over = tls.then_some((&cred.destination, &cred.source));
            let (mut total, mut wire) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                match support::migrate_once_over(
                    &vmm,
                    &guest,
                    &dir,
                    fill64,
                    "512M",
                    &args,
                    Some(relay),
                    over,
                ) {
                    Ok(v) => {
                        total.push(v["total_ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
                        wire.push(v["wire_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0);
                    }
                    Err(e) => println!("  {} run failed: {e}", if tls { "tls" } else { "tcp" }),
                }
            }
            let (t, w) = (support::median(&total), support::median(&wire));
            println!(
                "  {:<4} total {t:.2} s (runs {total:.2?}), {w:.1} MiB on the wire",
                if tls { "tls" } else { "tcp" }
            );
            medians.push(t);
        }
        if let [tcp, tls] = medians[..] {
            println!("  tls/tcp median total: {:.3}x", tls / tcp);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("QEMU 7.2 on these hosts (ARCHITECTURE.md): real-data guest, 128 MiB hot set: 46 s, 530 MiB (XBZRLE); plain precopy never converges.");
}
