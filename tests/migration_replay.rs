//! Mutating replay of a recorded stream against a real `novacron-vmm run --incoming`: the
//! stream of a real migration (a booted test guest rewriting its memory, `--verify full`)
//! is recorded through a relay, then replayed, intact and damaged, to fresh destination
//! VMMs. The intact replay resumes the guest (its self-check passes: the harness replays
//! faithfully); no damaged replay ever resumes it: the VMM exits non-zero, or keeps
//! waiting, and its serial port stays silent. After a stray connection the destination
//! still accepts the real stream.

use novacron_migration::protocol::{self, Frame, FrameType, Hello};
use novacron_migration::testdata::recording_relay;
use novacron_testsupport::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const ID: &str = "replay-7f3a";
const MEMORY: &str = "128M";

/// Runs a real migration from a booted source through a recording relay into a real
/// destination; returns the source-to-destination bytes.
fn record(dir: &Scratch) -> Vec<u8> {
    let (mut src, mut dst, port) = migration_pair(
        dir,
        "workload=rand mib=16 rate=5000 bytes=64",
        MEMORY,
        MEMORY,
    );
    let (relay_addr, relay) =
        recording_relay(([127, 0, 0, 1], port).into()).expect("recording relay");
    let relay_port = relay_addr.port();
    let to = format!("tcp:127.0.0.1:{relay_port}");
    let (ok, out, err) = src.client(
        "migrate",
        // A downtime target the dirty rate can meet with pages left for the final pass.
        &[
            "--to",
            &to,
            "--verify",
            "full",
            "--migration-id",
            ID,
            "--downtime-ms",
            "100",
        ],
    );
    assert!(ok, "recording migration failed: {err}\n{out}");
    assert_eq!(src.wait_exit(T), Some(0), "{}", src.err());
    dst.wait_for("CHECK PASS", 0, T);
    relay.join().expect("relay").expect("relay io")
}

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut r = bytes;
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(protocol::read_frame(&mut r).expect("recorded frame"));
    }
    out
}

/// The frames as bytes, numbered 0.. in this order, crcs recomputed: damage only the
/// destination's state machine or verification can see.
fn renumbered(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let f = Frame {
            kind: f.kind,
            source: f.source,
            pass: f.pass,
            seq: i as u32,
            payload: f.payload.clone(),
        };
        out.extend_from_slice(&f.to_bytes().expect("frame"));
    }
    out
}

fn edited(bytes: &[u8], edit: impl FnOnce(&mut Vec<Frame>)) -> Vec<u8> {
    let mut fs = frames(bytes);
    edit(&mut fs);
    renumbered(&fs)
}

/// Sends `bytes` to the destination as a source would (draining its answers), then closes.
fn send(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect destination");
    let mut r = s.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while matches!(r.read(&mut b), Ok(n) if n > 0) {}
    });
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let _ = drain.join();
}

/// A fresh destination VMM waiting on a free port, with `extra` arguments.
fn destination(dir: &Scratch, name: &str, extra: &[&str]) -> (Vmm, u16) {
    let port = free_port("127.0.0.1");
    let addr = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--incoming", addr.as_str(), "--memory", MEMORY];
    args.extend_from_slice(extra);
    let mut v = Vmm::start(dir, name, &args);
    let deadline = Instant::now() + T;
    while !v.err().contains("waiting for incoming migration") {
        assert!(v.alive(), "{name}: destination exited: {}", v.err());
        assert!(
            Instant::now() < deadline,
            "{name}: destination never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (v, port)
}

/// The guest never ran on `v`: nothing on its serial port.
fn guest_never_ran(name: &str, v: &Vmm) {
    let log = v.log();
    for needle in ["READY", "PROGRESS", "CHECK"] {
        assert!(
            !log.contains(needle),
            "{name}: the destination resumed a guest from a damaged stream:\n{log}"
        );
    }
}

/// Replays a damaged stream: the destination must refuse it, naming `want_in_err` on its
/// stderr, and either exit with a failure or keep waiting for its real source (a stream
/// refused before its Hello passed the VMM's own check counts as stray there); either way
/// the guest never runs.
fn refused(dir: &Scratch, name: &str, bytes: &[u8], want_in_err: &str) {
    let (mut dst, port) = destination(dir, name, &[]);
    send(port, bytes);
    let deadline = Instant::now() + T;
    while dst.alive() && !dst.err().contains(want_in_err) {
        assert!(
            Instant::now() < deadline,
            "{name}: no refusal naming {want_in_err:?}: {}",
            dst.err()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Exited, or said why it refused: give an exit a moment to land.
    std::thread::sleep(Duration::from_millis(200));
    eprintln!("{name}: refused: {}", dst.err().trim());
    if let Ok(Some(status)) = dst.child.try_wait() {
        assert!(
            !status.success(),
            "{name}: destination exited successfully: {}",
            dst.err()
        );
    }
    assert!(
        dst.err().contains(want_in_err),
        "{name}: expected {want_in_err:?} in: {}",
        dst.err()
    );
    guest_never_ran(name, &dst);
}

#[test]
fn damaged_replays_of_a_real_stream_never_resume_the_guest() {
    let dir = Scratch::new("mig-replay");
    // The final pass must carry batches (the swap below needs one): a guest that rewrites
    // 5000 pages/s and a 100 ms downtime target leave some; record again if not.
    let (rec, fs) = (0..3)
        .map(|_| {
            let rec = record(&dir);
            let fs = frames(&rec);
            (rec, fs)
        })
        .find(|(_, fs)| {
            let sw = fs.iter().position(|f| f.kind == FrameType::Switchover);
            fs.iter()
                .rposition(|f| f.kind == FrameType::Pages)
                .is_some_and(|p| Some(p) > sw)
        })
        .expect("three recordings without a final-pass batch");
    let find = |k: FrameType| fs.iter().position(|f| f.kind == k).expect("frame kind");
    let switchover = find(FrameType::Switchover);
    let state = find(FrameType::State);
    let round0 = fs
        .iter()
        .position(|f| f.kind == FrameType::Pages && f.pass == 0)
        .expect("a round-0 batch");
    let last = fs
        .iter()
        .rposition(|f| f.kind == FrameType::Pages)
        .expect("a batch");
    assert!(fs.iter().any(|f| f.kind == FrameType::Verify));

    // Intact (renumbering changes nothing): the guest resumes and passes its self-check.
    assert_eq!(edited(&rec, |_| {}), rec);
    let (mut dst, port) = destination(&dir, "intact", &[]);
    send(port, &rec);
    let log = dst.wait_for("CHECK PASS", 0, T);
    assert!(
        !log.contains("CHECK FAIL") && !log.contains("READY"),
        "{log}"
    );
    drop(dst);

    // The swap: a round-0 batch and a final-pass batch exchanged, numbers and
    // crcs recomputed.
    refused(
        &dir,
        "swapped",
        &edited(&rec, |v| v.swap(round0, last)),
        "pass",
    );
    // Verification was announced but the Verify frames are gone.
    refused(
        &dir,
        "no-verify",
        &edited(&rec, |v| v.retain(|f| f.kind != FrameType::Verify)),
        "no Verify records",
    );
    // State before the final pass.
    refused(
        &dir,
        "early-state",
        &edited(&rec, |v| {
            let f = v.remove(state);
            v.insert(switchover, f);
        }),
        "out of place",
    );
    // A bit flipped in the middle of the stream, numbers as sent.
    let mut flipped = rec.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    refused(&dir, "flipped", &flipped, "crc32");
    // Cut short before Complete.
    refused(
        &dir,
        "truncated",
        &rec[..rec.len() - protocol::HEADER_LEN],
        "closed",
    );
    // A Hello with 600 CPUID entries (the bound is 512).
    let mut hello: Hello = fs[0].json().expect("hello");
    hello.cpuid = vec![(0, 0, [0; 4]); 600];
    let big = serde_json::to_vec(&hello).expect("json");
    refused(
        &dir,
        "cpuid",
        &edited(&rec, |v| v[0].payload = big),
        "CPUID entries",
    );
}

#[test]
fn a_wrong_id_or_a_stray_connection_leaves_the_destination_waiting_for_the_real_stream() {
    let dir = Scratch::new("mig-replay-stray");
    let rec = record(&dir);
    let (mut dst, port) = destination(&dir, "stray", &["--migration-id", ID]);
    // A port scan, garbage, and a migration with another id: refused, still waiting.
    let _ = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    send(port, b"GET / HTTP/1.0\r\n\r\n");
    let wrong = edited(&rec, |v| {
        let mut h: Hello = v[0].json().expect("hello");
        h.migration_id = format!("{ID}-other");
        v[0].payload = serde_json::to_vec(&h).expect("json");
    });
    send(port, &wrong);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        dst.alive(),
        "destination gave up after stray connections: {}",
        dst.err()
    );
    guest_never_ran("stray", &dst);
    // The real stream still gets in.
    send(port, &rec);
    let log = dst.wait_for("CHECK PASS", 0, T);
    assert!(
        !log.contains("CHECK FAIL") && !log.contains("READY"),
        "{log}"
    );
}
