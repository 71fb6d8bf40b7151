//! Benchmark: live migration of a VM with a writable disk and no shared storage (issue 12,
//! "How it is judged"), side by side with QEMU 7.2's block migration.
//!
//! The disk: a 1 GiB sparse raw image whose first 512 MiB hold real files and whose other
//! 512 MiB are holes. The files are the real-data initrd of `scripts/data-initrd.sh` (~404
//! MiB of installed Debian files in an uncompressed cpio: ELF code, data tables, headers,
//! source text), written from offset 0, then its first ~108 MiB once more until 512 MiB are
//! written, placed so that those bytes sit 2 KiB off their first copy's 4 KiB units (no unit
//! repeats, so dedup and delta see fresh data; zstd's window is far shorter than the 404 MiB
//! between the copies). Nothing is downloaded beyond what the script fetches. (`zstd -1`
//! packs those 512 MiB to 184 MiB, `zstd -3` to 161 MiB.)
//!
//! Our side: a 512 MiB test guest with that disk running `blkhot` over 64 MiB in the middle
//! of the written half (`sector=524288 sectors=131072`: every 4 KiB block of the region read,
//! one byte bumped and written back, as fast as the guest can, forever; each visit checks
//! the byte the last one wrote, so a lost write fails the run; the way a database rewrites
//! its pages in place), migrated to a destination VMM
//! started with a blank sparse 1 GiB `--disk`, with `--compression auto --verify sampled
//! --downtime-ms 5 --auto-converge`, over loopback and through `novacron-wanrelay --rate
//! 100mbit --rtt-ms 50`. Each run ends only after the destination's guest printed `CHECK
//! PASS` (its read-back of the pattern it wrote on the source). Per run: rounds, total,
//! downtime at the source (pause to the destination's confirmation: one round trip on the
//! WAN) and at the destination (switchover received to vCPUs running), the predicted
//! downtime, wire MiB; then the medians.
//!
//! QEMU's side (only when `qemu-system-x86_64` is installed): the same guest ELF (PVH entry,
//! `-M pc -kernel`), 512 MiB, the same image on `-drive ...,if=none` + `virtio-blk-pci`
//! (the test guest drives only virtio-mmio, so this guest runs `workload=idle` and leaves
//! the disk alone), a blank 1 GiB image at the destination, `block` capability,
//! `downtime-limit` 5 ms, no bandwidth cap of its own, through the same relay. Its downtime
//! is its own source-side figure. QEMU 7.2 drops `query-migrate`'s `disk` section once a migration has
//! completed, so its wire bytes are the whole stream's, `ram.mbps x (total-time -
//! setup-time)` (QEMU's `mbps` counts every byte its stream wrote), the disk's share that minus
//! `ram.transferred` (`testsupport/src/bench/qemu.rs`).
//!
//! Verdicts, on the WAN case: our median total at most 0.25x QEMU's, our median wire bytes
//! at most 0.2x QEMU's, and every run's destination downtime at most 5 ms. Without QEMU the
//! ratios are taken against the quoted QEMU figures (97 s, 1,075 MiB), and the
//! output says so.
//!
//! Run: `cargo bench --bench disk_migration`. Environment: NOVACRON_BENCH_RUNS (default 3),
//! NOVACRON_BENCH_ONLY (comma-separated subset of `loopback`, `wan`; default both),
//! NOVACRON_BENCH_VMMS (comma-separated subset of `novacron`, `qemu`; default both),
//! NOVACRON_WAN_TIMEOUT (`--timeout` of our migrations, s, default 180),
//! NOVACRON_QEMU_TIMEOUT (QEMU runs are cancelled after this, s, default 300),
//! NOVACRON_QEMU_ZERO_BLOCKS (1: also QEMU's `zero-blocks` capability, default 0, as in the
//! issue's measurement), NOVACRON_IMAGE_CACHE (where the data initrd is cached),
//! NOVACRON_LOG=debug (after each of our runs, the switchover phases both VMMs logged). These are
//! measurements, not timed tests: on a shared host the figures are noisy.

mod support;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use support::qemu::{QemuResult, QemuRun, QEMU};
use support::{median, MigrationDisk, MigrationRun, MigrationSummary};

const MIB: u64 = 1 << 20;
/// The disk and how much of it holds files.
const DISK_BYTES: u64 = 1 << 30;
const WRITTEN_BYTES: u64 = 512 * MIB;
/// The guest: 512 MiB, `blkhot` over 64 MiB from 256 MiB into the disk.
const MEM_MIB: u64 = 512;
const WORKLOAD: &str = "workload=blkhot sector=524288 sectors=131072";
/// QEMU's guest leaves the disk alone (no virtio-mmio there).
const QEMU_CMDLINE: &str = "workload=idle";
/// The relay's link for the WAN case.
const WAN: &[&str] = &["--rate", "100mbit", "--rtt-ms", "50"];
/// Our destination downtime target (and the `--downtime-ms` we ask for; QEMU's limit too).
const DOWNTIME_MS: u64 = 5;
/// The WAN targets (issue 12).
const MAX_TIME_RATIO: f64 = 0.25;
const MAX_WIRE_RATIO: f64 = 0.2;
const MAX_DEST_DT_MS: f64 = 5.0;
/// The QEMU 7.2 figures on these hosts, used when QEMU is not installed:
/// (link, total s, downtime ms, wire MiB or NaN when not quoted).
const QUOTED_QEMU: &[(&str, f64, f64, f64)] = &[
    ("loopback", 2.2, 20.0, f64::NAN),
    ("wan", 97.0, 3.0, 1075.0),
];

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
            wire_mib: Some(s.wire_bytes as f64 / MIB as f64),
        }
    }

    fn qemu(q: &QemuResult) -> Row {
        Row {
            rounds: Some(q.rounds),
            total_s: Some(q.total_ms / 1e3),
            src_dt: Some(q.downtime_ms),
            dest_dt: None,
            predicted: None,
            wire_mib: Some(q.wire_bytes / MIB as f64),
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
}

fn header() {
    println!(
        "{:<8} {:<9} {:>6} {:>7} {:>8} {:>10} {:>10} {:>10} {:>9}  note",
        "vmm",
        "link",
        "run",
        "rounds",
        "total s",
        "src dt ms",
        "dest dt ms",
        "pred dt ms",
        "wire MiB"
    );
}

fn print_row(vmm: &str, link: &str, run: &str, r: &Row, note: &str) {
    let c = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    };
    println!(
        "{:<8} {:<9} {:>6} {:>7} {:>8} {:>10} {:>10} {:>10} {:>9}  {}",
        vmm,
        link,
        run,
        c(r.rounds, 0),
        c(r.total_s, 2),
        c(r.src_dt, 2),
        c(r.dest_dt, 3),
        c(r.predicted, 3),
        c(r.wire_mib, 1),
        note
    );
}

fn print_failure(vmm: &str, link: &str, run: &str, why: &str) {
    // The VMM's "novacron-vmm: migration failed, guest still running here: " adds nothing.
    let why = why.rsplit("here: ").next().unwrap_or(why);
    let why: String = why.chars().take(300).collect();
    println!("{vmm:<8} {link:<9} {run:>6}  failed: {why}");
}

/// Writes the benchmark's disk image at `path`: `DISK_BYTES` long, its first
/// `WRITTEN_BYTES` copied from `data` and then from `data` again (from an offset that puts
/// its bytes 2 KiB off their first copy's 4 KiB units), as often as it takes; the rest holes.
fn build_image(path: &Path, data: &Path) -> Result<(), String> {
    let mut out = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    out.set_len(DISK_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut at = 0u64;
    let mut buf = vec![0u8; MIB as usize];
    let mut copy = 0;
    while at < WRITTEN_BYTES {
        // The first copy from its start, the others misaligned against it.
        let skip = if copy == 0 { 0 } else { (at + 2048) % 4096 };
        let mut f = File::open(data).map_err(|e| format!("{}: {e}", data.display()))?;
        f.seek(SeekFrom::Start(skip))
            .map_err(|e| format!("{}: {e}", data.display()))?;
        let before = at;
        loop {
            let want = buf.len().min((WRITTEN_BYTES - at) as usize);
            if want == 0 {
                break;
            }
            let n = f
                .read(&mut buf[..want])
                .map_err(|e| format!("{}: {e}", data.display()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", path.display()))?;
            at += n as u64;
        }
        if at == before {
            return Err(format!("{} holds nothing to repeat", data.display()));
        }
        copy += 1;
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `line` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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

/// Settings shared by every case.
struct Bench<'a> {
    bins: &'a Path,
    vmm: &'a Path,
    guest: &'a Path,
    dir: &'a Path,
    disk: MigrationDisk<'a>,
    runs: usize,
    timeout: String,
    qemu_timeout: Duration,
    zero_blocks: bool,
    /// `NOVACRON_LOG=debug`: print the VMMs' switchover phases after each run.
    debug: bool,
}

impl Bench<'_> {
    /// Our runs over `link`; returns the completed rows and every run's destination downtime
    /// verdict (false if a run failed).
    fn ours(&self, link: &str, relay: Option<&[&str]>) -> (Vec<Row>, bool) {
        let mem = format!("{MEM_MIB}M");
        let dt = DOWNTIME_MS.to_string();
        let extra = [
            "--compression",
            "auto",
            "--verify",
            "sampled",
            "--downtime-ms",
            dt.as_str(),
            "--auto-converge",
            "--timeout",
            self.timeout.as_str(),
        ];
        let mut rows = Vec::new();
        let mut dest_ok = true;
        for run in 1..=self.runs {
            let r = MigrationRun {
                vmm: self.vmm,
                guest: self.guest,
                initrd: None,
                dir: self.dir,
                cmdline: WORKLOAD,
                mem: &mem,
                extra: &extra,
                relay,
                disk: Some(self.disk),
                tls: None,
                run_args: &[],
            }
            .run();
            match r {
                Ok(s) => {
                    let row = Row::ours(&s);
                    let ok = row.dest_dt.is_some_and(|d| d <= MAX_DEST_DT_MS);
                    dest_ok &= ok;
                    let note = format!(
                        "throttle {}%, dest dt {}",
                        s.throttle_pct,
                        if ok { "ok" } else { "over 5 ms" }
                    );
                    print_row("novacron", link, &run.to_string(), &row, &note);
                    if self.debug {
                        self.print_phases();
                    }
                    rows.push(row);
                }
                Err(e) => {
                    dest_ok = false;
                    print_failure("novacron", link, &run.to_string(), &e);
                }
            }
        }
        if !rows.is_empty() {
            print_row("novacron", link, "median", &Row::median(&rows), "");
        }
        (rows, dest_ok)
    }

    /// With `NOVACRON_LOG=debug`: the switchover phases both VMMs logged (stderr in `dir`).
    fn print_phases(&self) {
        for (file, what) in [("s.err", "switchover"), ("d.err", "destination switchover")] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            if let Some(line) = text.lines().rev().find(|l| l.contains(what)) {
                let fields = strip_ansi(line);
                let fields = fields.rsplit(": ").next().unwrap_or(&fields);
                println!("         {file}: {fields}");
            }
        }
    }

    /// QEMU's block migrations over `link`; returns the completed rows.
    fn qemu(&self, link: &str, relay: Option<&[&str]>) -> Vec<Row> {
        let mut rows = Vec::new();
        for run in 1..=self.runs {
            let r = QemuRun {
                bins: self.bins,
                guest: self.guest,
                initrd: None,
                dir: self.dir,
                cmdline: QEMU_CMDLINE,
                mem_mib: MEM_MIB,
                xbzrle_cache_mib: None,
                downtime_ms: DOWNTIME_MS,
                relay,
                timeout: self.qemu_timeout,
                disk: Some(self.disk),
                zero_blocks: self.zero_blocks,
            }
            .run();
            match r {
                Ok(q) => {
                    let row = Row::qemu(&q);
                    let polled = if q.disk_polled.1 > 0.0 {
                        format!(
                            " (last polled {:.1} of {:.1} MiB)",
                            q.disk_polled.0 / MIB as f64,
                            q.disk_polled.1 / MIB as f64
                        )
                    } else {
                        String::new()
                    };
                    let note = format!(
                        "disk {:.1} MiB{polled}, ram {:.1} MiB",
                        q.disk_bytes / MIB as f64,
                        (q.wire_bytes - q.disk_bytes) / MIB as f64
                    );
                    print_row("qemu", link, &run.to_string(), &row, &note);
                    rows.push(row);
                }
                Err(e) => print_failure("qemu", link, &run.to_string(), &e),
            }
        }
        if !rows.is_empty() {
            print_row("qemu", link, "median", &Row::median(&rows), "");
        }
        rows
    }
}

fn main() {
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let guest = bins.join("novacron-testguest.elf");
    let dir = std::env::temp_dir().join(format!("novacron-bench-disk-{}", std::process::id()));
    let disks =
        std::env::temp_dir().join(format!("novacron-bench-disk-images-{}", std::process::id()));
    let runs = env_or("NOVACRON_BENCH_RUNS", "3").parse().unwrap_or(3);
    let only = env_or("NOVACRON_BENCH_ONLY", "loopback,wan");
    let want = |k: &str| only.split(',').any(|o| o.trim() == k);
    let vmms = env_or("NOVACRON_BENCH_VMMS", "novacron,qemu");
    let run_vmm = |k: &str| vmms.split(',').any(|o| o.trim() == k);
    let have_qemu = support::have(QEMU) && run_vmm("qemu");

    let initrd = match support::data_initrd() {
        Ok(p) => p,
        Err(e) => {
            println!("disk_migration skipped: {e}");
            return;
        }
    };
    std::fs::create_dir_all(&disks).expect("create the disk image directory");
    let (src_img, dst_img) = (disks.join("src.img"), disks.join("dst.img"));
    build_image(&src_img, &initrd).expect("build the source disk image");
    let disk = MigrationDisk {
        source: &src_img,
        destination: &dst_img,
    };
    let b = Bench {
        bins: &bins,
        vmm: &vmm,
        guest: &guest,
        dir: &dir,
        disk,
        runs,
        timeout: env_or("NOVACRON_WAN_TIMEOUT", "180"),
        qemu_timeout: Duration::from_secs(
            env_or("NOVACRON_QEMU_TIMEOUT", "300")
                .parse()
                .unwrap_or(300),
        ),
        zero_blocks: env_or("NOVACRON_QEMU_ZERO_BLOCKS", "0") == "1",
        debug: env_or("NOVACRON_LOG", "").contains("debug"),
    };

    println!("load average at start: {}", load());
    println!(
        "disk: {} MiB sparse image, first {} MiB from the data initrd {} ({} MiB; then its start again, 2 KiB off its 4 KiB units); the rest holes",
        DISK_BYTES / MIB,
        WRITTEN_BYTES / MIB,
        initrd.display(),
        std::fs::metadata(&initrd).map(|m| m.len() / MIB).unwrap_or(0)
    );
    println!(
        "novacron: {MEM_MIB} MiB guest, `{WORKLOAD}`, --compression auto --verify sampled --downtime-ms {DOWNTIME_MS} --auto-converge, destination --disk a blank sparse 1 GiB file; {runs} runs"
    );
    if have_qemu {
        println!(
            "qemu: {MEM_MIB} MiB guest, `{QEMU_CMDLINE}` (the disk on virtio-blk-pci, which the test guest ignores), block migration{}, downtime-limit {DOWNTIME_MS} ms, wire = ram.mbps x (total-time - setup-time) (7.2 drops the disk section at completion)",
            if b.zero_blocks { " + zero-blocks" } else { "" }
        );
    } else {
        println!(
            "({QEMU} not installed: no QEMU runs; ratios are against the issue's quoted QEMU 7.2 figures; `apt-get install qemu-system-x86`)"
        );
    }
    println!("WAN = novacron-wanrelay {}", WAN.join(" "));
    header();

    let mut verdicts = Vec::new();
    let links: Vec<(&str, Option<&[&str]>)> = [("loopback", None), ("wan", Some(WAN))]
        .into_iter()
        .filter(|(l, _)| want(l))
        .collect();
    for (link, relay) in links {
        let (rows, dest_ok) = if run_vmm("novacron") {
            b.ours(link, relay)
        } else {
            (Vec::new(), false)
        };
        let q = if have_qemu {
            b.qemu(link, relay)
        } else {
            Vec::new()
        };
        let col = |rows: &[Row], f: fn(&Row) -> Option<f64>| {
            median(&rows.iter().filter_map(f).collect::<Vec<_>>())
        };
        let (q_total, q_wire, source) = if q.is_empty() {
            let quoted = QUOTED_QEMU.iter().find(|(l, ..)| *l == link);
            let (t, w) = quoted
                .map(|&(_, t, _, w)| (t, w))
                .unwrap_or((f64::NAN, f64::NAN));
            (t, w, "the issue's quoted QEMU figures")
        } else {
            (
                col(&q, |r| r.total_s),
                col(&q, |r| r.wire_mib),
                "QEMU measured here",
            )
        };
        if rows.is_empty() {
            if run_vmm("novacron") {
                verdicts.push(format!("{link}: every NovaCron run failed: MISS"));
            }
            continue;
        }
        let (total, wire) = (col(&rows, |r| r.total_s), col(&rows, |r| r.wire_mib));
        let worst_dest = rows
            .iter()
            .filter_map(|r| r.dest_dt)
            .fold(f64::NAN, f64::max);
        let (tr, wr) = (total / q_total, wire / q_wire);
        if link == "wan" {
            let pass = |ok: bool| if ok { "PASS" } else { "MISS" };
            let complete = rows.len() == runs;
            verdicts.push(format!(
                "wan (vs {source}): total {total:.2} s vs {q_total:.2} s = {tr:.3}x (<= {MAX_TIME_RATIO}x): {}; wire {wire:.1} MiB vs {q_wire:.1} MiB = {wr:.3}x (<= {MAX_WIRE_RATIO}x): {}; worst dest dt {worst_dest:.3} ms (<= {MAX_DEST_DT_MS} ms, every run{}): {}; overall: {}",
                pass(tr <= MAX_TIME_RATIO),
                pass(wr <= MAX_WIRE_RATIO),
                if complete { "" } else { ", a run failed" },
                pass(dest_ok && complete),
                pass(tr <= MAX_TIME_RATIO && wr <= MAX_WIRE_RATIO && dest_ok && complete),
            ));
        } else {
            verdicts.push(format!(
                "{link} (vs {source}; no target): total {total:.2} s vs {q_total:.2} s = {tr:.3}x; wire {wire:.1} MiB vs {q_wire:.1} MiB = {wr:.3}x; worst dest dt {worst_dest:.3} ms"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&disks);
    println!();
    println!("load average at the end: {}", load());
    for v in verdicts {
        println!("{v}");
    }
}
