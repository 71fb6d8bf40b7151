//! virtio-blk and virtio-net throughput with the test guest's polling drivers.
//!
//! - virtio-blk on a raw image file: sequential writes, then sequential reads, in 4 KiB and
//!   128 KiB requests, with 1 and 32 requests in flight (MiB/s from the host's clock between
//!   the guest's `BENCH ... start` and `... done` lines).
//! - virtio-net on a tap in a private network namespace, 1514-byte frames: guest to tap (the
//!   host counts what arrives on an AF_PACKET socket) and tap to guest (the host sends as fast
//!   as it can; the guest counts what it received between its first and last frame).
//!
//! Run: `cargo bench --bench devices_virtio` (about a minute). Without `--bench` (as under
//! `cargo test --benches`) a short smoke pass runs. QEMU is not run side by side: its x86
//! machine types with virtio-mmio (`microvm`) hang on these hosts.

mod support;

use novacron_testsupport::net::{add_tap, in_private_netns, PacketSocket};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

struct Guest {
    /// Kills the VMM when the guest is dropped.
    _child: support::Kill,
    lines: Receiver<(Instant, String)>,
    log: Vec<String>,
}

impl Guest {
    fn start(vmm: &Path, cmdline: &str, extra: &[&str]) -> Guest {
        let mut child = Command::new(vmm)
            .arg("run")
            .arg("--kernel")
            .arg(novacron_testsupport::guest())
            .args(["--memory", "256M", "--cmdline", cmdline])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn novacron-vmm");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Guest {
            _child: support::Kill(child),
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns when it arrived and the line.
    fn wait(&mut self, needle: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) => {
                    self.log.push(l.clone());
                    if l.contains("CHECK FAIL") || l.contains("ERROR") {
                        panic!("guest failed: {l}\n{}", self.log.join("\n"));
                    }
                    if l.contains(needle) {
                        return (t, l);
                    }
                }
                Err(_) => panic!("timed out waiting for '{needle}'\n{}", self.log.join("\n")),
            }
        }
    }
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

fn blk(vmm: &Path, dir: &Path, full: bool) {
    println!(
        "virtio-blk, raw image in {} (page cache), sequential",
        dir.display()
    );
    println!(
        "{:<6} {:>8} {:>4} {:>8} {:>8} {:>10}",
        "op", "bs", "qd", "MiB", "secs", "MiB/s"
    );
    let img = dir.join("bench.img");
    let size = 512u64 << 20;
    let f = std::fs::File::create(&img).expect("image");
    f.set_len(size).expect("size image");
    drop(f);
    let disk = img.display().to_string();
    for (bs, mib) in [
        (4096u64, if full { 128 } else { 4 }),
        (128 << 10, if full { 512 } else { 16 }),
    ] {
        for qd in [1u64, 32] {
            let cmdline = format!("workload=blkbench bs={bs} qd={qd} mib={mib}");
            let mut g = Guest::start(vmm, &cmdline, &["--disk", &disk]);
            for op in ["write", "read"] {
                let (t0, _) = g.wait(
                    &format!(
                        "BENCH blk op={op} bs={bs} qd={qd} bytes={} start",
                        mib << 20
                    ),
                    Duration::from_secs(30),
                );
                let (t1, line) = g.wait(
                    &format!("BENCH blk op={op} bs={bs} qd={qd} bytes={} done", mib << 20),
                    Duration::from_secs(300),
                );
                assert_eq!(field(&line, "errors"), Some(0), "{line}");
                let secs = (t1 - t0).as_secs_f64();
                println!(
                    "{:<6} {:>6}KiB {:>4} {:>8} {:>8.3} {:>10.1}",
                    op,
                    bs >> 10,
                    qd,
                    mib,
                    secs,
                    mib as f64 / secs
                );
            }
            g.wait("CHECK PASS workload=blkbench", Duration::from_secs(10));
        }
    }
    let _ = std::fs::remove_file(&img);
}

fn net(vmm: PathBuf, full: bool) {
    in_private_netns(move || {
        let tap = "ncbench0";
        let frames: u64 = if full { 200_000 } else { 2_000 };
        // The host sends faster than any guest drains, and a tap drops what does not fit
        // its queue: make the queue hold a whole receive run, so that the guest's drain rate
        // is what gets measured.
        let rx_frames = frames.min(50_000);
        add_tap(tap, Some(rx_frames + 1000));
        let sock = PacketSocket::open(tap, 0x88b6, Duration::from_millis(200), Some(64 << 20));
        let size = 1514u64;
        let net_arg = format!("tap={tap},mac=52:54:00:00:be:01");
        println!("virtio-net, tap in a private netns, {size}-byte frames");
        println!(
            "{:<12} {:>8} {:>8} {:>8} {:>10} {:>8}",
            "direction", "frames", "arrived", "secs", "MiB/s", "kpps"
        );

        // Guest to tap.
        let mut g = Guest::start(
            &vmm,
            &format!("workload=netbench dir=tx frames={frames} size={size}"),
            &["--net", &net_arg],
        );
        let (t0, _) = g.wait("BENCH net op=tx size=", Duration::from_secs(30));
        let counter = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut idle = 0;
            while idle < 10 {
                if sock.recv().is_some_and(|f| !f.is_empty()) {
                    n += 1;
                    idle = 0;
                } else {
                    idle += 1;
                }
            }
            (n, sock)
        });
        let (t1, _) = g.wait(" done ticks=", Duration::from_secs(300));
        let secs = (t1 - t0).as_secs_f64();
        let (arrived, sock) = counter.join().expect("counter");
        println!(
            "{:<12} {:>8} {:>8} {:>8.3} {:>10.1} {:>8.1}",
            "guest->tap",
            frames,
            arrived,
            secs,
            (frames * size) as f64 / secs / (1 << 20) as f64,
            frames as f64 / secs / 1e3
        );
        drop(g);

        // Tap to guest.
        let hz = 1000u64;
        let mut g = Guest::start(
            &vmm,
            &format!("workload=netbench dir=rx frames={rx_frames} hz={hz}"),
            &["--net", &net_arg],
        );
        g.wait("BENCH net op=rx ready", Duration::from_secs(30));
        let mut frame = vec![0x5au8; size as usize];
        frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0xbe, 1]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[12..14].copy_from_slice(&0x88b6u16.to_be_bytes());
        let send_start = Instant::now();
        for _ in 0..rx_frames {
            // A full tap queue drops frames; the guest's count says how many arrived.
            let _ = sock.send(&frame);
        }
        let send_secs = send_start.elapsed().as_secs_f64();
        let (_, line) = g.wait("BENCH net op=rx frames=", Duration::from_secs(300));
        let got = field(&line, "frames").unwrap_or(0);
        let ticks = field(&line, "ticks").unwrap_or(0).max(1);
        let secs = ticks as f64 / hz as f64;
        println!(
            "{:<12} {:>8} {:>8} {:>8.3} {:>10.1} {:>8.1}   (host sent for {send_secs:.3} s)",
            "tap->guest",
            rx_frames,
            got,
            secs,
            (got * size) as f64 / secs / (1 << 20) as f64,
            got as f64 / secs / 1e3
        );
    });
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let bins = support::release_bins();
    let vmm = bins.join("novacron-vmm");
    let dir = std::env::temp_dir().join(format!("novacron-devbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    blk(&vmm, &dir, full);
    println!();
    net(vmm, full);
    let _ = std::fs::remove_dir_all(&dir);
}
