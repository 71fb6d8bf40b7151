//! Benchmark: migration of a guest whose memory is real data (issue 11, "How it is judged"),
//! and the loopback `ab` case against QEMU.
//!
//! * Table 1: a 512 MiB test guest loaded with the real-data initrd (`scripts/data-initrd.sh`:
//!   ~400 MiB of installed Debian files) running `workload=hot` (a 128 MiB hot set inside
//!   that data, one byte per page rewritten as fast as the guest can), migrated with
//!   `--compression auto` and the management plane's default verification (`--verify
//!   sampled`) through `novacron-wanrelay` at 100 Mbit/s and 50 ms RTT, and over loopback,
//!   for `--downtime-ms 2 --auto-converge` and `--downtime-ms 300`. (The hot set is
//!   rewritten faster than any round carries it, ~260k pages/s, so without `--auto-converge`
//!   a 2 ms target fails at the timeout naming the achievable downtime, ~45 ms here: the
//!   issue's policy. One such run is shown.) Each run's row and the medians: rounds,
//!   total, downtime at the source (pause to confirmation, so it includes a round trip) and
//!   at the destination (switchover received to vCPUs running), the predicted downtime
//!   (`MigrationSummary.predicted_downtime_ms`, 0 when the engine does not fill it), wire
//!   MiB, and PASS/MISS against the WAN targets (at most 20 rounds, 15 s, 170 MiB, and at
//!   the destination at most 2 ms for the 2 ms target, at most the target otherwise, in
//!   every run). With QEMU installed, the same guest, initrd and link
//!   under QEMU with XBZRLE, side by side (QEMU measures its downtime at the source, without
//!   the round trip, and has no destination figure).
//! * Table 2: a 1 GiB guest running `ab` on 256 MiB over loopback, `--compression auto` and
//!   sampled verification, against QEMU's plain precopy (its best total time here): PASS when
//!   our median total is at most 0.25x QEMU's and every run's destination downtime at most
//!   1 ms.
//!
//! Our runs go over plain `tcp:` and over `tls:` (the migration's one-time credential, as the
//! agent always migrates), each case printing both and the ratio of the medians
//! (`NOVACRON_BENCH_TLS`: `tcp`, `tls` or `both`, the default; the target is at most 1.10x).
//!
//! Run: `cargo bench --bench data_migration`. Environment: NOVACRON_BENCH_RUNS (default 3),
//! NOVACRON_BENCH_ONLY (comma-separated subset of `wan`, `loopback`, `ab`; default all),
//! NOVACRON_WAN_TIMEOUT (seconds per NovaCron attempt, default 60), NOVACRON_QEMU_TIMEOUT
//! (default 120), NOVACRON_QEMU_XBZRLE_MIB (XBZRLE cache, default 256). These are
//! measurements, not timed tests: on a shared host the figures are noisy.

mod support;

use std::path::Path;
use std::time::Duration;

use support::qemu::{QemuResult, QemuRun, QEMU};
use support::{median, MigrationRun, MigrationSummary, MigrationTls};

/// The relay's link for the WAN case.
const WAN: &[&str] = &["--rate", "100mbit", "--rtt-ms", "50"];
/// The real-data guest.
const HOT: &str = "workload=hot hot=128";
const HOT_MEM_MIB: u64 = 512;
/// The `ab` guest.
const AB: &str = "workload=ab mib=256";
const AB_MEM_MIB: u64 = 1024;

/// The WAN targets, every run (ARCHITECTURE.md, issue 11).
const MAX_ROUNDS: f64 = 20.0;
const MAX_TOTAL_MS: f64 = 15_000.0;
const MAX_WIRE_MIB: f64 = 170.0;
const MAX_WAN_DEST_DT_MS: f64 = 2.0;
/// Timeout of the one WAN 2 ms run without auto-converge.
const NO_AC_TIMEOUT_S: u64 = 20;
/// Most a `tls:` migration may cost over `tcp:` (median totals; ARCHITECTURE.md).
const MAX_TLS_RATIO: f64 = 1.10;
/// The loopback `ab` targets.
const MAX_AB_RATIO: f64 = 0.25;
const MAX_AB_DEST_DT_MS: f64 = 1.0;

/// One row's figures; `None` prints as `-`.
#[derive(Default, Clone)]
struct Row {
    rounds: Option<f64>,
    total_s: Option<f64>,
    src_dt: Option<f64>,
    dest_dt: Option<f64>,
    predicted: Option<f64>,
    wire_mib: Option<f64>,
}

impl Row {
    fn ours(s: &MigrationSummary) -> Row {
        Row {
            rounds: Some(f64::from(s.rounds)),
            total_s: Some(s.total_ms / 1e3),
            src_dt: Some(s.downtime_ms),
            dest_dt: Some(s.dest_downtime_ms),
            predicted: Some(s.predicted_downtime_ms),
            wire_mib: Some(s.wire_bytes as f64 / 1048576.0),
        }
    }

    fn qemu(q: &QemuResult) -> Row {
        Row {
            rounds: Some(q.rounds),
            total_s: Some(q.total_ms / 1e3),
            src_dt: Some(q.downtime_ms),
            dest_dt: None,
            predicted: None,
            wire_mib: Some(q.wire_bytes / 1048576.0),
        }
    }

    /// The medians of each column over `rows`.
    fn median(rows: &[Row]) -> Row {
        let col = |f: fn(&Row) -> Option<f64>| {
            let v: Vec<f64> = rows.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(&v))
        };
        Row {
            rounds: col(|r| r.rounds),
            total_s: col(|r| r.total_s),
            src_dt: col(|r| r.src_dt),
            dest_dt: col(|r| r.dest_dt),
            predicted: col(|r| r.predicted),
            wire_mib: col(|r| r.wire_mib),
        }
    }

    /// The WAN targets this row of a `target_ms` case misses (empty: PASS).
    fn wan_misses(&self, target_ms: u64) -> Vec<&'static str> {
        let over = |v: Option<f64>, max: f64| v.is_none_or(|v| v > max);
        let mut m = Vec::new();
        if over(self.rounds, MAX_ROUNDS) {
            m.push("rounds");
        }
        if over(self.total_s.map(|s| s * 1e3), MAX_TOTAL_MS) {
            m.push("total");
        }
        if over(self.wire_mib, MAX_WIRE_MIB) {
            m.push("wire");
        }
        if over(self.dest_dt, MAX_WAN_DEST_DT_MS.max(target_ms as f64)) {
            m.push("dest dt");
        }
        m
    }
}

fn header() {
    println!(
        "{:<8} {:<9} {:>6} {:>6} {:>7} {:>8} {:>10} {:>10} {:>10} {:>9}  verdict",
        "vmm",
        "link",
        "target",
        "run",
        "rounds",
        "total s",
        "src dt ms",
        "dest dt ms",
        "pred dt ms",
        "wire MiB"
    );
}

fn print_row(vmm: &str, link: &str, target: u64, run: &str, r: &Row, verdict: &str) {
    let c = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    };
    println!(
        "{:<8} {:<9} {:>4}ms {:>6} {:>7} {:>8} {:>10} {:>10} {:>10} {:>9}  {}",
        vmm,
        link,
        target,
        run,
        c(r.rounds, 0),
        c(r.total_s, 2),
        c(r.src_dt, 2),
        c(r.dest_dt, 3),
        c(r.predicted, 3),
        c(r.wire_mib, 1),
        verdict
    );
}

fn print_failure(vmm: &str, link: &str, target: u64, run: &str, why: &str) {
    // The VMM's "novacron-vmm: migration failed, guest still running here: " adds nothing.
    let why = why.rsplit("here: ").next().unwrap_or(why);
    let why: String = why.chars().take(150).collect();
    println!("{vmm:<8} {link:<9} {target:>4}ms {run:>6}  failed: {why}");
}

/// Settings shared by every case.
struct Bench<'a> {
    bins: &'a Path,
    vmm: &'a Path,
    guest: &'a Path,
    dir: &'a Path,
    runs: usize,
    timeout: String,
    qemu: bool,
    qemu_timeout: Duration,
    xbzrle_mib: u64,
    /// Our runs over `tls:` with this credential (destination half, source half); `None`:
    /// plain `tcp:`.
    tls: Option<(&'a MigrationTls, &'a MigrationTls)>,
}

impl Bench<'_> {
    /// Our rows' label: the transport.
    fn label(&self) -> &'static str {
        if self.tls.is_some() {
            "nc-tls"
        } else {
            "novacron"
        }
    }
}

/// Which of our transports each case runs (`NOVACRON_BENCH_TLS`: `tcp`, `tls` or `both`).
fn transports(setting: &str) -> Vec<bool> {
    match setting {
        "tcp" | "off" => vec![false],
        "tls" | "on" => vec![true],
        _ => vec![false, true],
    }
}

/// The TLS cost of a case: median total over tls / over tcp, both printed.
fn tls_cost(what: &str, tcp: &[Row], tls: &[Row]) -> Option<String> {
    let total = |rows: &[Row]| median(&rows.iter().filter_map(|r| r.total_s).collect::<Vec<_>>());
    if tcp.is_empty() || tls.is_empty() {
        return None;
    }
    let ratio = total(tls) / total(tcp);
    let dest = |rows: &[Row]| median(&rows.iter().filter_map(|r| r.dest_dt).collect::<Vec<_>>());
    Some(format!(
        "TLS cost, {what}: median total tcp {:.3} s, tls {:.3} s = {ratio:.3}x (<= {MAX_TLS_RATIO}x: {}); dest dt tcp {:.3} ms, tls {:.3} ms",
        total(tcp),
        total(tls),
        if ratio <= MAX_TLS_RATIO { "PASS" } else { "MISS" },
        dest(tcp),
        dest(tls),
    ))
}

/// One case: a guest, a link, a downtime target and whether to throttle.
struct Case<'a> {
    cmdline: &'a str,
    mem_mib: u64,
    initrd: Option<&'a Path>,
    link: &'a str,
    relay: Option<&'a [&'a str]>,
    downtime_ms: u64,
    auto_converge: bool,
}

impl Bench<'_> {
    /// Our runs of `case`, each printed (with its WAN verdict if `judge`); returns the rows of
    /// the runs that completed and whether every run passed.
    fn ours(&self, case: &Case, judge: bool) -> (Vec<Row>, bool) {
        let mem = format!("{}M", case.mem_mib);
        let dt = case.downtime_ms.to_string();
        let mut extra = vec![
            "--compression",
            "auto",
            "--verify",
            "sampled",
            "--downtime-ms",
            dt.as_str(),
            "--timeout",
            self.timeout.as_str(),
        ];
        if case.auto_converge {
            extra.push("--auto-converge");
        }
        let mut rows = Vec::new();
        let mut all_pass = true;
        for run in 1..=self.runs {
            let r = MigrationRun {
                vmm: self.vmm,
                guest: self.guest,
                initrd: case.initrd,
                dir: self.dir,
                cmdline: case.cmdline,
                mem: &mem,
                extra: &extra,
                relay: case.relay,
                disk: None,
                tls: self.tls,
                run_args: &[],
            }
            .run();
            match r {
                Ok(s) => {
                    let row = Row::ours(&s);
                    let verdict = if judge {
                        let m = row.wan_misses(case.downtime_ms);
                        all_pass &= m.is_empty();
                        if m.is_empty() {
                            "PASS".to_string()
                        } else {
                            format!("MISS ({})", m.join(", "))
                        }
                    } else {
                        "-".to_string()
                    };
                    print_row(
                        self.label(),
                        case.link,
                        case.downtime_ms,
                        &run.to_string(),
                        &row,
                        &verdict,
                    );
                    rows.push(row);
                }
                Err(e) => {
                    all_pass = false;
                    print_failure(
                        self.label(),
                        case.link,
                        case.downtime_ms,
                        &run.to_string(),
                        &e,
                    );
                }
            }
        }
        if !rows.is_empty() {
            let verdict = match (judge, all_pass) {
                (false, _) => "-",
                (true, true) => "PASS (every run)",
                (true, false) => "MISS",
            };
            print_row(
                self.label(),
                case.link,
                case.downtime_ms,
                "median",
                &Row::median(&rows),
                verdict,
            );
        }
        let complete = rows.len() == self.runs;
        (rows, all_pass && complete)
    }

    /// QEMU's runs of `case` (XBZRLE if `xbzrle`), each printed; returns the completed rows.
    fn qemu(&self, case: &Case, xbzrle: bool) -> Vec<Row> {
        let name = if xbzrle { "qemu-xbz" } else { "qemu" };
        let mut rows = Vec::new();
        for run in 1..=self.runs {
            let r = QemuRun {
                bins: self.bins,
                guest: self.guest,
                initrd: case.initrd,
                dir: self.dir,
                cmdline: case.cmdline,
                mem_mib: case.mem_mib,
                xbzrle_cache_mib: xbzrle.then_some(self.xbzrle_mib),
                downtime_ms: case.downtime_ms,
                relay: case.relay,
                timeout: self.qemu_timeout,
                disk: None,
                zero_blocks: false,
            }
            .run();
            match r {
                Ok(q) => {
                    let row = Row::qemu(&q);
                    print_row(
                        name,
                        case.link,
                        case.downtime_ms,
                        &run.to_string(),
                        &row,
                        "-",
                    );
                    rows.push(row);
                }
                Err(e) => print_failure(name, case.link, case.downtime_ms, &run.to_string(), &e),
            }
        }
        if !rows.is_empty() {
            print_row(
                name,
                case.link,
                case.downtime_ms,
                "median",
                &Row::median(&rows),
                "-",
            );
        }
        rows
    }
}

/// The host's load average, printed with the tables: these hosts are shared and noisy.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let dir = std::env::temp_dir().join(format!("novacron-bench-data-{}", std::process::id()));
    let runs = env_or("NOVACRON_BENCH_RUNS", "3").parse().unwrap_or(3);
    let only = env_or("NOVACRON_BENCH_ONLY", "wan,loopback,ab");
    let want = |k: &str| only.split(',').any(|o| o.trim() == k);
    let b = Bench {
        bins: &bins,
        vmm: &vmm,
        guest: &guest,
        dir: &dir,
        runs,
        timeout: env_or("NOVACRON_WAN_TIMEOUT", "60"),
        qemu: support::have(QEMU),
        qemu_timeout: Duration::from_secs(
            env_or("NOVACRON_QEMU_TIMEOUT", "120")
                .parse()
                .unwrap_or(120),
        ),
        xbzrle_mib: env_or("NOVACRON_QEMU_XBZRLE_MIB", "256")
            .parse()
            .unwrap_or(256),
        tls: None,
    };
    // One credential for every TLS run, issued as the controller issues it per migration.
    let cred = novacron_controller::migration_tls::issue("bench").expect("issue a credential");
    let with_tls = Bench {
        tls: Some((&cred.destination, &cred.source)),
        timeout: b.timeout.clone(),
        ..b
    };
    let variants = transports(&env_or("NOVACRON_BENCH_TLS", "both"));
    let bench_of = |tls: bool| if tls { &with_tls } else { &b };
    if !b.qemu {
        println!("({QEMU} not installed: no QEMU figures; `apt-get install qemu-system-x86`)");
    }

    println!("load average at start: {}", load());
    let mut verdicts = Vec::new();
    if want("wan") || want("loopback") {
        match support::data_initrd() {
            Err(e) => println!("Table 1 skipped: {e}"),
            Ok(initrd) => {
                println!(
                    "Table 1: {HOT_MEM_MIB} MiB guest, real-data initrd {} ({} MiB), `{HOT}`, --compression auto --verify sampled, {runs} runs",
                    initrd.display(),
                    std::fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0)
                );
                println!(
                    "WAN = novacron-wanrelay {}; QEMU: XBZRLE, cache {} MiB",
                    WAN.join(" "),
                    b.xbzrle_mib
                );
                header();
                let links: Vec<(&str, Option<&[&str]>)> = [("wan", Some(WAN)), ("loopback", None)]
                    .into_iter()
                    .filter(|(l, _)| want(l))
                    .collect();
                for (link, relay) in links {
                    for downtime_ms in [2, 300] {
                        let case = Case {
                            cmdline: HOT,
                            mem_mib: HOT_MEM_MIB,
                            initrd: Some(&initrd),
                            link,
                            relay,
                            downtime_ms,
                            auto_converge: downtime_ms == 2,
                        };
                        let judge = link == "wan";
                        if judge && case.auto_converge {
                            // The policy without auto-converge, once: it must fail at
                            // the timeout naming the achievable downtime.
                            println!("(without --auto-converge, {NO_AC_TIMEOUT_S} s timeout:)");
                            let once = Bench {
                                runs: 1,
                                timeout: NO_AC_TIMEOUT_S.to_string(),
                                ..b
                            };
                            once.ours(
                                &Case {
                                    auto_converge: false,
                                    ..case
                                },
                                false,
                            );
                        }
                        let mut pass = true;
                        let mut by_transport: Vec<Vec<Row>> = vec![Vec::new(), Vec::new()];
                        for &tls in &variants {
                            let (rows, p) = bench_of(tls).ours(&case, judge);
                            pass &= p;
                            by_transport[usize::from(tls)] = rows;
                        }
                        verdicts.extend(tls_cost(
                            &format!("{link} real data, --downtime-ms {downtime_ms}"),
                            &by_transport[0],
                            &by_transport[1],
                        ));
                        if judge {
                            verdicts.push(format!(
                                "WAN real data, --downtime-ms {downtime_ms}{}: {} (<= {MAX_ROUNDS} rounds, <= {} s, <= {MAX_WIRE_MIB} MiB, dest dt <= {} ms, every run)",
                                if case.auto_converge { " --auto-converge" } else { "" },
                                if pass { "PASS" } else { "MISS" },
                                MAX_TOTAL_MS / 1e3,
                                MAX_WAN_DEST_DT_MS.max(downtime_ms as f64)
                            ));
                        }
                        if b.qemu {
                            b.qemu(&case, true);
                        }
                    }
                }
            }
        }
    }

    if want("ab") {
        println!();
        println!(
            "Table 2: {AB_MEM_MIB} MiB guest, `{AB}`, loopback; novacron --compression auto --verify sampled --downtime-ms 2; QEMU plain precopy (downtime-limit 300 ms), {runs} runs"
        );
        header();
        let ours = Case {
            cmdline: AB,
            mem_mib: AB_MEM_MIB,
            initrd: None,
            link: "loopback",
            relay: None,
            downtime_ms: 2,
            auto_converge: false,
        };
        let mut by_transport: Vec<Vec<Row>> = vec![Vec::new(), Vec::new()];
        for &tls in &variants {
            by_transport[usize::from(tls)] = bench_of(tls).ours(&ours, false).0;
        }
        verdicts.extend(tls_cost(
            "loopback ab 1 GiB",
            &by_transport[0],
            &by_transport[1],
        ));
        // The QEMU comparison uses the plain-TCP rows when there are some.
        let rows = if by_transport[0].is_empty() {
            by_transport[1].clone()
        } else {
            by_transport[0].clone()
        };
        let q = if b.qemu {
            b.qemu(
                &Case {
                    downtime_ms: 300,
                    ..ours
                },
                false,
            )
        } else {
            Vec::new()
        };
        let total =
            |rows: &[Row]| median(&rows.iter().filter_map(|r| r.total_s).collect::<Vec<_>>());
        let worst_dest = rows
            .iter()
            .filter_map(|r| r.dest_dt)
            .fold(f64::NAN, f64::max);
        let dest_ok = rows.len() == runs && worst_dest <= MAX_AB_DEST_DT_MS;
        if q.is_empty() || rows.is_empty() {
            verdicts.push(format!(
                "loopback ab: no ratio (QEMU figures missing); worst dest dt {worst_dest:.3} ms: {}",
                if dest_ok { "PASS" } else { "MISS" }
            ));
        } else {
            let ratio = total(&rows) / total(&q);
            let pass = ratio <= MAX_AB_RATIO && dest_ok;
            verdicts.push(format!(
                "loopback ab: median total {:.3} s vs QEMU {:.3} s = {ratio:.3}x (<= {MAX_AB_RATIO}x), worst dest dt {worst_dest:.3} ms (<= {MAX_AB_DEST_DT_MS} ms): {}",
                total(&rows),
                total(&q),
                if pass { "PASS" } else { "MISS" }
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("load average at the end: {}", load());
    for v in verdicts {
        println!("{v}");
    }
}
