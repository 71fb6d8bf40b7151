//! vCPUs pause at an instruction boundary (issue 11): the test guest's `counter` workload
//! writes an increasing counter to a virtio-blk disk and to the serial port in a tight ring-3
//! loop, every step a port-I/O or MMIO exit. It is paused and resumed 1000 times and then
//! migrated 20 times over loopback (each destination copying the disk into its own blank file); the
//! serial sequence, read across every VMM's log in order, and the records on the disk must
//! show every value exactly once, with no gap.
//!
//! What this can and cannot catch: a vCPU saved in the middle of an I/O instruction resumes
//! on the destination at that instruction and performs its access again. On the CI hosts'
//! kernel (6.18) KVM has already moved RIP past an `out` when it exits to the VMM, while an
//! `in` stays at the instruction until KVM is re-entered (both measured); the counter's reads
//! have no side effects, so here the end-to-end check passes even with the completion step
//! removed (measured: 150 migrations). The VMMs run with `NOVACRON_LOG=debug` and the test prints how
//! many of the sources' pauses found an I/O exit pending and completed it before parking.

mod vmm_conn;

use novacron_testsupport::*;
use std::time::{Duration, Instant};
use vmm_conn::{migrate, Conn};

const T: Duration = Duration::from_secs(60);
/// Disk sectors the counter cycles through (`sectors=` of the workload).
const SECTORS: u64 = 1 << 16;
const SECTOR: usize = 512;
/// `images/testguest/src/workloads/counter.rs`: the record magic.
const MAGIC: &[u8; 8] = b"NCCOUNT1";
const PAUSES: usize = 1000;
/// Migrations by default; `NOVACRON_PAUSE_MIGRATIONS` asks for more (a vCPU is in the middle
/// of an I/O exit at a given pause only a few times in a hundred, so a longer run gives the
/// check more chances).
const MIGRATIONS: usize = 20;
/// What a VMM logs (at `NOVACRON_LOG=debug`) when a pause found a vCPU with an I/O exit
/// pending and completed its instruction before parking (`vmm/src/vcpu.rs`).
const COMPLETED_IO: &str = "completing its instruction first";

/// The `COUNT n=<n>` values of the complete lines of `log`, in order, and the problems found:
/// any complete line in the counter's stream that does not parse.
fn serial_counts(log: &str) -> (Vec<u64>, Vec<String>) {
    let mut values = Vec::new();
    let mut bad = Vec::new();
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    };
    let mut started = false;
    for line in complete.lines() {
        if let Some(v) = line.strip_prefix("COUNT n=") {
            started = true;
            match v.parse() {
                Ok(n) => values.push(n),
                Err(_) => bad.push(line.to_string()),
            }
        } else if started {
            bad.push(line.to_string());
        }
    }
    (values, bad)
}

/// Asserts `values` is exactly `0, 1, 2, ...`; returns the last value.
fn assert_consecutive(what: &str, values: &[u64]) -> u64 {
    for (i, w) in values.windows(2).enumerate() {
        assert!(
            w[1] == w[0] + 1,
            "{what}: value {} follows {} at position {} (duplicate or gap)",
            w[1],
            w[0],
            i + 1
        );
    }
    assert_eq!(
        values.first().copied(),
        Some(0),
        "{what}: does not start at 0"
    );
    *values.last().unwrap_or(&0)
}

/// The counter values recorded on the disk, sorted; panics on a malformed record.
fn disk_counts(disk: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for (s, rec) in disk.chunks_exact(SECTOR).enumerate().take(SECTORS as usize) {
        if rec.iter().all(|&b| b == 0) {
            continue;
        }
        assert_eq!(&rec[..8], MAGIC, "sector {s}: not a counter record");
        let word = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().unwrap());
        let n = word(1);
        assert_eq!(word(2), !n, "sector {s}: record {n} torn");
        assert_eq!(n % SECTORS, s as u64, "sector {s}: holds record {n}");
        out.push(n);
    }
    out.sort_unstable();
    out
}

/// Waits until the guest has printed at least `more` counter lines after byte `from`.
fn wait_counting(vm: &mut Vmm, from: usize, more: usize) -> usize {
    let deadline = Instant::now() + T;
    loop {
        let log = vm.log();
        let n = log.get(from..).map_or(0, |t| t.matches("COUNT n=").count());
        if n >= more {
            return log.len();
        }
        assert!(vm.alive(), "VMM exited: {}\n{}", vm.err(), log);
        assert!(
            !log.contains("CHECK FAIL") && !log.contains("ERROR"),
            "guest failed:\n{log}"
        );
        assert!(Instant::now() < deadline, "the counter stopped:\n{log}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn counter_survives_1000_pauses_and_20_migrations_without_duplicate_or_gap() {
    // The VMMs inherit it: their stderr then tells how often a pause met a pending I/O.
    std::env::set_var("NOVACRON_LOG", "debug");
    let dir = Scratch::new("pause-resume");
    let mut disk = dir.path("counter.img");
    std::fs::write(&disk, vec![0u8; SECTORS as usize * SECTOR]).expect("disk image");
    let d = disk.to_str().expect("utf8").to_string();
    let g = guest();
    let cmdline = format!("workload=counter sectors={SECTORS}");
    let mut vm = Vmm::start(
        &dir,
        "vm0",
        &[
            "--kernel",
            g.to_str().expect("utf8"),
            "--cmdline",
            &cmdline,
            "--memory",
            "64M",
            "--disk",
            &d,
        ],
    );
    let mut at = wait_counting(&mut vm, 0, 20);

    // 1000 pauses and resumes, on one connection, each while the counter runs.
    let mut c = Conn::open(&vm.sock, T);
    for i in 0..PAUSES {
        let v = c.request(r#"{"cmd":"pause"}"#);
        assert_eq!(v["ok"], true, "pause {i}: {v}");
        if i % 100 == 0 {
            // Paused means stopped: neither the serial log nor the disk changes.
            let (log, image) = (vm.log(), std::fs::read(&disk).expect("read disk"));
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                vm.log().len(),
                log.len(),
                "pause {i}: the guest still prints"
            );
            assert!(
                std::fs::read(&disk).expect("read disk") == image,
                "pause {i}: the disk still changes"
            );
        }
        let v = c.request(r#"{"cmd":"resume"}"#);
        assert_eq!(v["ok"], true, "resume {i}: {v}");
        if i % 100 == 99 {
            at = wait_counting(&mut vm, at, 5);
        }
    }
    drop(c);

    // 20 migrations, each destination copying the disk into its own blank file.
    let migrations = std::env::var("NOVACRON_PAUSE_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIGRATIONS);
    let mut logs = Vec::new();
    let mut completed_io = std::collections::BTreeMap::<String, u32>::new();
    for i in 1..=migrations {
        wait_counting(&mut vm, at, 20);
        let port = free_port("127.0.0.1");
        let addr = format!("tcp:127.0.0.1:{port}");
        let next = dir.path(&format!("counter-{i}.img"));
        std::fs::File::create(&next)
            .and_then(|f| f.set_len(SECTORS * SECTOR as u64))
            .expect("blank disk");
        disk = next;
        let d = disk.to_str().expect("utf8").to_string();
        let mut dst = Vmm::start(
            &dir,
            &format!("vm{i}"),
            &["--incoming", &addr, "--memory", "64M", "--disk", &d],
        );
        let deadline = Instant::now() + T;
        while !dst.err().contains("waiting for incoming migration") {
            assert!(dst.alive(), "destination {i} exited: {}", dst.err());
            assert!(Instant::now() < deadline, "destination {i} never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ok, summary, err) = migrate(&vm, port, &[]);
        assert!(ok, "migration {i} failed: {err}");
        assert_eq!(summary["ok"], true, "migration {i}: {summary}");
        assert_eq!(vm.wait_exit(T), Some(0), "source {i}: {}", vm.err());
        for line in vm.err().lines().filter(|l| l.contains(COMPLETED_IO)) {
            let kind = line.split(" with a ").nth(1).unwrap_or(line);
            *completed_io
                .entry(kind.split(" exit").next().unwrap_or(kind).to_string())
                .or_insert(0) += 1;
        }
        logs.push(vm.log());
        vm = dst;
        at = 0;
    }
    wait_counting(&mut vm, 0, 20);
    let (ok, _, err) = vm.client("shutdown", &[]);
    assert!(ok, "shutdown: {err}");
    assert_eq!(vm.wait_exit(T), Some(0), "{}", vm.err());
    logs.push(vm.log());

    // The serial stream, across all the VMMs in order.
    let all: String = logs.concat();
    let (serial, bad) = serial_counts(&all);
    assert!(
        bad.is_empty(),
        "corrupted counter lines (duplicated or lost bytes): {bad:?}"
    );
    let last = assert_consecutive("serial", &serial);
    assert!(
        last > (migrations * 20) as u64,
        "too few values to mean anything: {last}"
    );

    // The disk: every value written exactly once in its slot, the newest SECTORS of them
    // (or all, if fewer) present, none beyond what the guest got to print or was printing.
    let image = std::fs::read(&disk).expect("read disk");
    let on_disk = disk_counts(&image);
    let top = *on_disk.last().expect("no records on disk");
    assert!(
        top == last || top == last + 1,
        "disk holds records up to {top}, serial up to {last}"
    );
    eprintln!(
        "counter: {} serial values (last {last}), {} records on disk (newest {top}); sources' pauses that completed a pending I/O instruction first: \
         {completed_io:?}",
        serial.len(),
        on_disk.len()
    );
    let expect_from = (top + 1).saturating_sub(SECTORS);
    assert_eq!(on_disk.first().copied(), Some(expect_from), "oldest record");
    assert_eq!(
        on_disk.len() as u64,
        top + 1 - expect_from,
        "records missing on disk (a gap) between {expect_from} and {top}"
    );
}
