//! The mutation campaign over recorded streams: a real precopy from the in-process sender
//! (a simulated guest dirtying its units between rounds) is recorded on its way to the
//! receiver, then damaged copies are replayed against `receiver::receive` over loopback
//! TCP: single bit flips in headers and payloads, truncations, swapped, duplicated and
//! dropped frames, oversized length fields, and frames moved, dropped, duplicated or
//! inserted with their numbers and crcs recomputed (so that only the receiver's state
//! machine, or verification, can tell). No damaged stream may start the guest, and every
//! replay ends within its read timeout. Deterministic: fixed seeds throughout.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use novacron_migration::protocol::{
    self, Frame, FrameType, Hello, RoundEnd, HEADER_LEN, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use novacron_migration::receiver::{self, Received, Takeover};
use novacron_migration::sender::{self, Guest};
use novacron_migration::session::{Cancel, Expect, HookError, SessionError};
use novacron_migration::testdata::{recording_relay, Page, Rng, ScheduledGuest};
use novacron_migration::unit::{MemoryUnits, GUEST_MEMORY};
use novacron_migration::PAGE_SIZE;
use novacron_vmm_api::migration::{Compression, MigrateOptions, VerifyMode};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const UNITS: u64 = 1024;
const ID: &str = "mutation-campaign-1";
/// Read timeout of every replay: a replay that stalls ends after this.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// The campaign's guest: [`UNITS`] units, `schedule[r]` dirtied in round `r` and 20 more
/// before the pause.
fn sim_guest(seed: u64, schedule: Vec<usize>) -> ScheduledGuest {
    ScheduledGuest::new(seed, UNITS, schedule, 20)
}

struct Source;

impl Guest for Source {
    fn throttle(&mut self, _pct: u32) {}
    fn dirty_rate(&mut self, _units_per_s: f64) {}
    fn pause(&mut self) {}
    fn state(&mut self) -> Result<Vec<u8>, HookError> {
        Ok(b"the vm state".to_vec())
    }
}

/// The destination's hooks: accepts a Hello of the right size; records whether it started.
#[derive(Default)]
struct Dest {
    restored: bool,
    started: bool,
}

impl Takeover for Dest {
    fn check(&self, hello: &Hello) -> Result<(), String> {
        if hello.memory != UNITS * PAGE_SIZE as u64 {
            return Err(format!("memory size differs: {}", hello.memory));
        }
        Ok(())
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), HookError> {
        if state != b"the vm state" {
            return Err("bad state".into());
        }
        self.restored = true;
        Ok(())
    }
    fn start(&mut self) -> Result<(), HookError> {
        self.started = true;
        Ok(())
    }
}

fn expect() -> Expect {
    Expect {
        migration_id: Some(ID.into()),
        read_timeout: READ_TIMEOUT,
    }
}

/// A recorded migration: the source-to-destination bytes and the source's final memory.
struct Recording {
    bytes: Vec<u8>,
    memory: Vec<Page>,
}

/// Runs a real migration through a recording relay and returns what the source sent.
fn record(verify: VerifyMode, compression: Compression, seed: u64) -> Recording {
    let dest_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest_addr = dest_l.local_addr().unwrap();
    let dest = std::thread::spawn(move || {
        let (stream, _) = dest_l.accept().unwrap();
        let mut sink = MemoryUnits::new(GUEST_MEMORY, UNITS);
        let mut d = Dest::default();
        let r = receiver::receive(stream, &mut sink, &mut d, &expect());
        (r, sink)
    });
    let (relay_addr, relay) = recording_relay(dest_addr).unwrap();
    let mut guest = sim_guest(seed, vec![300, 120, 40, 0]);
    let opts = MigrateOptions {
        to: "tcp:127.0.0.1:0".into(),
        downtime_ms: 0,
        compression,
        verify,
        migration_id: ID.into(),
        timeout_s: 60,
        ..MigrateOptions::default()
    };
    let stream = TcpStream::connect(relay_addr).unwrap();
    let summary = sender::migrate(
        stream,
        Hello {
            version: PROTOCOL_VERSION,
            memory: UNITS * PAGE_SIZE as u64,
            vcpus: 1,
            cpuid: vec![(1, 0, [1, 2, 3, 4])],
            disks: 0,
            nets: 0,
            encodings: Vec::new(),
            migration_id: String::new(),
            verify,
            copied_disks: Vec::new(),
        },
        &opts,
        &mut guest,
        &mut Source,
        &Cancel::new(),
    )
    .unwrap();
    assert!(summary.rounds >= 4, "{summary:?}");
    let (received, sink) = dest.join().unwrap();
    received.unwrap();
    assert!(sink.units() == guest.memory.units());
    Recording {
        bytes: relay.join().unwrap().unwrap(),
        memory: guest.memory.units().to_vec(),
    }
}

/// Splits a recorded stream into its frames.
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut r = bytes;
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(protocol::read_frame(&mut r).unwrap());
    }
    out
}

/// The frames as bytes, numbered 0.. in their new order, crcs recomputed.
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
        out.extend_from_slice(&f.to_bytes().unwrap());
    }
    out
}

/// Byte offset of each frame in the stream, and the stream's length at the end.
fn offsets(frames: &[Frame]) -> Vec<usize> {
    let mut at = vec![0];
    for f in frames {
        at.push(at.last().unwrap() + HEADER_LEN + f.payload.len());
    }
    at
}

fn copy(f: &Frame) -> Frame {
    Frame {
        kind: f.kind,
        source: f.source,
        pass: f.pass,
        seq: f.seq,
        payload: f.payload.clone(),
    }
}

/// What one replay did.
struct Outcome {
    result: Result<Received, SessionError>,
    started: bool,
    sink: MemoryUnits,
    elapsed: Duration,
}

/// Replays `bytes` as a source would (draining what the destination answers), against
/// `receive` on a connection accepted from `listener`. With `hold`, the connection stays
/// open after the bytes instead of closing: the receiver must give up on its own.
fn replay(listener: &TcpListener, bytes: &[u8], hold: bool) -> Outcome {
    let addr = listener.local_addr().unwrap();
    let data = bytes.to_vec();
    let peer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut r = s.try_clone().unwrap();
        let drain = std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        });
        let _ = s.write_all(&data);
        if !hold {
            let _ = s.shutdown(Shutdown::Write);
        }
        // Drained until the receiver closes its end.
        drain.join().unwrap();
    });
    let (stream, _) = listener.accept().unwrap();
    let mut sink = MemoryUnits::new(GUEST_MEMORY, UNITS);
    let mut dest = Dest::default();
    let t = Instant::now();
    let result = receiver::receive(stream, &mut sink, &mut dest, &expect());
    let elapsed = t.elapsed();
    peer.join().unwrap();
    Outcome {
        result,
        started: dest.started,
        sink,
        elapsed,
    }
}

/// The campaign's bookkeeping: every damaged replay must be refused without starting the
/// guest and within the deadline; `harmless` replays may succeed only with the source's
/// exact memory.
struct Campaign<'a> {
    listener: TcpListener,
    rec: &'a Recording,
    replays: usize,
    failures: Vec<String>,
}

impl<'a> Campaign<'a> {
    fn new(rec: &'a Recording) -> Self {
        Campaign {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            rec,
            replays: 0,
            failures: Vec::new(),
        }
    }

    fn run(&mut self, name: &str, bytes: &[u8], hold: bool) -> Option<Outcome> {
        self.replays += 1;
        let o = catch_unwind(AssertUnwindSafe(|| replay(&self.listener, bytes, hold)));
        match o {
            Err(_) => {
                self.failures.push(format!("{name}: panicked"));
                None
            }
            Ok(o) => {
                if std::env::var_os("MUTATION_VERBOSE").is_some() {
                    let how = o.result.as_ref().map(|_| "taken".to_string());
                    eprintln!("{name}: {}", how.unwrap_or_else(|e| e.to_string()));
                }
                if o.elapsed > READ_TIMEOUT * 4 {
                    self.failures
                        .push(format!("{name}: took {:?} (hang?)", o.elapsed));
                }
                Some(o)
            }
        }
    }

    /// A damaged stream: must be refused, guest not started.
    fn damaged(&mut self, name: &str, bytes: &[u8]) {
        self.damaged_held(name, bytes, false)
    }

    fn damaged_held(&mut self, name: &str, bytes: &[u8], hold: bool) {
        if let Some(o) = self.run(name, bytes, hold) {
            if o.started || o.result.is_ok() {
                self.failures
                    .push(format!("{name}: resumed a guest from a damaged stream"));
            }
        }
    }

    /// A stream reordered or thinned where the result may still be exact: refused, or the
    /// guest holds exactly the source's memory.
    fn harmless_or_refused(&mut self, name: &str, bytes: &[u8]) {
        if let Some(o) = self.run(name, bytes, false) {
            if (o.started || o.result.is_ok()) && o.sink.units() != &self.rec.memory[..] {
                self.failures.push(format!(
                    "{name}: resumed a guest whose memory differs from the source"
                ));
            }
        }
    }

    fn finish(self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} replays failed:\n{}",
            self.failures.len(),
            self.replays,
            self.failures.join("\n")
        );
        eprintln!("{what}: {} replays, all refused or exact", self.replays);
    }
}

/// Where the frames of the recording are: index of Switchover, State, Verify (if any),
/// Complete, and the Pages frames with their pass.
struct Layout {
    switchover: usize,
    state: usize,
    complete: usize,
    pages: Vec<(usize, u16)>,
}

fn layout(fs: &[Frame]) -> Layout {
    let find = |k: FrameType| fs.iter().position(|f| f.kind == k).unwrap();
    Layout {
        switchover: find(FrameType::Switchover),
        state: find(FrameType::State),
        complete: find(FrameType::Complete),
        pages: fs
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == FrameType::Pages)
            .map(|(i, f)| (i, f.pass))
            .collect(),
    }
}

#[test]
fn the_recorded_stream_replays_and_a_stray_connection_first_does_not_matter() {
    let rec = record(VerifyMode::Full, Compression::Delta, 11);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let o = replay(&listener, &rec.bytes, false);
    let r = o.result.unwrap();
    assert!(o.started && o.sink.units() == &rec.memory[..]);
    assert!(r.verified_pages.unwrap_or(0) > 0 && r.rounds >= 4, "{r:?}");

    // The VMM's accept loop: stray connections are refused, then the real one is taken.
    let addr = listener.local_addr().unwrap();
    let mut wrong_id = frames(&rec.bytes);
    let mut hello: Hello = wrong_id[0].json().unwrap();
    hello.migration_id = "someone-else".into();
    wrong_id[0].payload = serde_json::to_vec(&hello).unwrap();
    let wrong_id = renumbered(&wrong_id);
    let strays: Vec<Vec<u8>> = vec![
        Vec::new(),                         // connect and close (a port scan)
        b"GET / HTTP/1.0\r\n\r\n".to_vec(), // garbage
        rec.bytes[..10].to_vec(),           // a partial header
        wrong_id,                           // another migration
    ];
    let client = std::thread::spawn(move || {
        for s in strays.iter().chain(std::iter::once(&rec.bytes)) {
            let mut c = TcpStream::connect(addr).unwrap();
            let mut r = c.try_clone().unwrap();
            let drain = std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while matches!(r.read(&mut b), Ok(n) if n > 0) {}
            });
            let _ = c.write_all(s);
            let _ = c.shutdown(Shutdown::Write);
            drain.join().unwrap();
        }
        rec
    });
    let mut strays_seen = 0;
    let (received, sink, dest) = loop {
        let (stream, _) = listener.accept().unwrap();
        let mut sink = MemoryUnits::new(GUEST_MEMORY, UNITS);
        let mut dest = Dest::default();
        match receiver::receive(stream, &mut sink, &mut dest, &expect()) {
            Err(SessionError::Stray(why)) => {
                assert!(!dest.started && !dest.restored, "{why}");
                strays_seen += 1;
            }
            r => break (r, sink, dest),
        }
    };
    let rec = client.join().unwrap();
    assert_eq!(strays_seen, 4);
    received.unwrap();
    assert!(dest.started && sink.units() == &rec.memory[..]);

    // A destination that never hears a complete Hello gives up at its deadline (Stray).
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&rec.bytes[..30]).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let t = Instant::now();
    let r = receiver::receive(
        stream,
        &mut MemoryUnits::new(GUEST_MEMORY, UNITS),
        &mut Dest::default(),
        &expect(),
    );
    assert!(
        matches!(&r, Err(SessionError::Stray(why)) if why.contains("within")),
        "{r:?}"
    );
    assert!(t.elapsed() < READ_TIMEOUT * 3, "{:?}", t.elapsed());
    drop(c);
}

#[test]
fn bit_flips_truncations_and_frame_damage_never_resume() {
    let rec = record(VerifyMode::Full, Compression::Delta, 21);
    let fs = frames(&rec.bytes);
    let at = offsets(&fs);
    let len = rec.bytes.len();
    let mut rng = Rng::new(0x5eed);
    let mut c = Campaign::new(&rec);

    // Single bit flips: every header byte of every frame, and random payload bytes.
    for (i, f) in fs.iter().enumerate() {
        for b in 0..HEADER_LEN {
            let mut m = rec.bytes.clone();
            m[at[i] + b] ^= 1 << rng.below(8);
            c.damaged(&format!("flip header byte {b} of frame {i}"), &m);
        }
        for _ in 0..f.payload.len().min(6) {
            let off = at[i] + HEADER_LEN + rng.below(f.payload.len() as u64) as usize;
            let mut m = rec.bytes.clone();
            m[off] ^= 1 << rng.below(8);
            c.damaged(&format!("flip payload byte {off} of frame {i}"), &m);
        }
    }
    // Truncation: at every frame boundary, inside every header, and at random points.
    let mut cuts: Vec<usize> = at[..at.len() - 1].to_vec();
    cuts.extend(at[..at.len() - 1].iter().map(|a| a + 7));
    cuts.extend((0..60).map(|_| rng.below(len as u64) as usize));
    cuts.push(len - 1);
    for cut in cuts {
        c.damaged(&format!("truncated at {cut}"), &rec.bytes[..cut]);
    }
    // A few truncations with the connection held open: the read timeout ends them.
    for i in [1, fs.len() / 2, fs.len() - 1] {
        c.damaged_held(
            &format!("truncated before frame {i}, held open"),
            &rec.bytes[..at[i]],
            true,
        );
    }
    // Frames swapped, duplicated, dropped, numbers left as sent.
    for i in 0..fs.len() {
        let frame = &rec.bytes[at[i]..at[i + 1]];
        if i + 1 < fs.len() {
            let mut m = rec.bytes[..at[i]].to_vec();
            m.extend_from_slice(&rec.bytes[at[i + 1]..at[i + 2]]);
            m.extend_from_slice(frame);
            m.extend_from_slice(&rec.bytes[at[i + 2]..]);
            c.damaged(&format!("frames {i} and {} swapped", i + 1), &m);
        }
        if i + 1 < fs.len() {
            // (A copy of the last frame, Complete, would come after the guest started.)
            let mut m = rec.bytes[..at[i + 1]].to_vec();
            m.extend_from_slice(frame);
            m.extend_from_slice(&rec.bytes[at[i + 1]..]);
            c.damaged(&format!("frame {i} duplicated"), &m);
        }
        let mut m = rec.bytes[..at[i]].to_vec();
        m.extend_from_slice(&rec.bytes[at[i + 1]..]);
        c.damaged(&format!("frame {i} dropped"), &m);
    }
    // Oversized (and undersized) length fields, header crc recomputed so the length is
    // believed: refused from the header, or the payload no longer matches.
    for (i, f) in fs.iter().enumerate() {
        let real = f.payload.len() as u64;
        for n in [
            f.kind.max_payload() as u64 + 1,
            MAX_PAYLOAD as u64 + 1,
            u64::from(u32::MAX),
            real + 1,
            real.saturating_sub(1),
        ] {
            if n == real {
                continue;
            }
            let mut m = rec.bytes.clone();
            let h = &mut m[at[i]..at[i] + HEADER_LEN];
            h[8..12].copy_from_slice(&(n as u32).to_le_bytes());
            let crc = crc32fast::hash(&h[..20]);
            h[20..24].copy_from_slice(&crc.to_le_bytes());
            c.damaged(&format!("frame {i} length {real} -> {n}"), &m);
        }
    }
    c.finish("raw damage");
}

#[test]
fn renumbered_frames_are_caught_by_the_state_machine() {
    let rec = record(VerifyMode::Full, Compression::Auto, 31);
    let fs = frames(&rec.bytes);
    let lay = layout(&fs);
    let mut c = Campaign::new(&rec);
    let with = |edit: &dyn Fn(&mut Vec<Frame>)| {
        let mut v: Vec<Frame> = fs.iter().map(copy).collect();
        edit(&mut v);
        renumbered(&v)
    };
    // The renumbered original is the original.
    assert_eq!(with(&|_| {}), rec.bytes);

    // Every batch moved into every other pass (before that pass's first frame, or into the
    // final pass right after the Switchover): the pass tag gives it away.
    let final_pass = fs[lay.pages.last().unwrap().0].pass;
    let mut passes: Vec<(u16, usize)> = Vec::new(); // (pass, index of its first frame)
    for &(i, p) in &lay.pages {
        if !passes.iter().any(|&(q, _)| q == p) {
            passes.push((p, i));
        }
    }
    for &(i, p) in &lay.pages {
        for &(q, first) in &passes {
            if q == p {
                continue;
            }
            let target = if q == final_pass {
                lay.switchover + 1
            } else {
                first
            };
            let m = with(&|v| {
                let f = v.remove(i);
                let t = if target > i { target - 1 } else { target };
                v.insert(t, f);
            });
            c.damaged(&format!("batch {i} (pass {p}) moved into pass {q}"), &m);
        }
    }
    // A round-0 batch and a final-pass batch exchanged (the issue's swap).
    let first0 = lay.pages[0].0;
    let last = lay.pages.last().unwrap().0;
    c.damaged(
        "round-0 batch and final-pass batch exchanged",
        &with(&|v| v.swap(first0, last)),
    );
    // Every frame but the batches dropped, duplicated (the Hello: a second one mid-stream).
    for i in 0..fs.len() {
        if fs[i].kind == FrameType::Pages {
            continue;
        }
        c.damaged(
            &format!("{:?} {i} dropped", fs[i].kind),
            &with(&|v| {
                v.remove(i);
            }),
        );
        if i != lay.complete {
            c.damaged(
                &format!("{:?} {i} duplicated", fs[i].kind),
                &with(&|v| {
                    let f = copy(&v[i]);
                    v.insert(i + 1, f);
                }),
            );
        }
    }
    // State before the final pass; Verify before State; Complete before Verify; batches
    // after State.
    c.damaged(
        "State before the final pass",
        &with(&|v| {
            let f = v.remove(lay.state);
            v.insert(lay.switchover, f);
        }),
    );
    c.damaged(
        "Verify before State",
        &with(&|v| {
            let f = v.remove(lay.state + 1);
            v.insert(lay.state, f);
        }),
    );
    c.damaged(
        "Complete before Verify",
        &with(&|v| {
            v.swap(lay.complete - 1, lay.complete);
        }),
    );
    c.damaged(
        "a final-pass batch after State",
        &with(&|v| {
            let f = v.remove(last);
            v.insert(lay.state, f);
        }),
    );
    // Frames of the other direction, or unknown to this step, inserted anywhere.
    for kind in [
        FrameType::HelloAck,
        FrameType::RoundAck,
        FrameType::Confirm,
        FrameType::Switchover,
        FrameType::Complete,
        FrameType::Abort,
    ] {
        for i in [1, lay.switchover, lay.state + 1] {
            let payload = match kind {
                FrameType::Switchover | FrameType::Complete => Vec::new(),
                _ => br#"{"ok":true,"round":0,"reason":"x"}"#.to_vec(),
            };
            c.damaged(
                &format!("{kind:?} inserted at {i}"),
                &with(&|v| {
                    v.insert(
                        i,
                        Frame {
                            kind,
                            source: 0,
                            pass: 0,
                            seq: 0,
                            payload: payload.clone(),
                        },
                    );
                }),
            );
        }
    }
    // RoundEnds renumbered.
    for (i, f) in fs
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind == FrameType::RoundEnd)
    {
        let r: RoundEnd = f.json().unwrap();
        for other in [r.round + 1, r.round.wrapping_sub(1), u32::MAX] {
            c.damaged(
                &format!("RoundEnd {} renumbered {other}", r.round),
                &with(&|v| {
                    v[i].payload = serde_json::to_vec(&RoundEnd { round: other }).unwrap();
                }),
            );
        }
    }
    // Hellos: no id, another id, out of bounds, another verification mode (Off: then the
    // Verify frames are checked anyway; Sampled: only listed pages are checked).
    let hello: Hello = fs[0].json().unwrap();
    let hellos: Vec<(&str, Hello)> = vec![
        (
            "no migration id",
            Hello {
                migration_id: String::new(),
                ..hello.clone()
            },
        ),
        (
            "another id",
            Hello {
                migration_id: format!("{ID}x"),
                ..hello.clone()
            },
        ),
        (
            "600 CPUID entries",
            Hello {
                cpuid: vec![(0, 0, [0; 4]); 600],
                ..hello.clone()
            },
        ),
        (
            "100000 CPUID entries",
            Hello {
                cpuid: vec![(0, 0, [0; 4]); 100_000],
                ..hello.clone()
            },
        ),
        (
            "no vCPU",
            Hello {
                vcpus: 0,
                ..hello.clone()
            },
        ),
        (
            "huge memory",
            Hello {
                memory: 1 << 50,
                ..hello.clone()
            },
        ),
        (
            "200 disks",
            Hello {
                disks: 200,
                ..hello.clone()
            },
        ),
        (
            "1000 encodings",
            Hello {
                encodings: vec!["raw".into(); 1000],
                ..hello.clone()
            },
        ),
    ];
    for (name, h) in hellos {
        let body = serde_json::to_vec(&h).unwrap();
        c.damaged(
            &format!("Hello with {name}"),
            &with(&|v| v[0].payload = body.clone()),
        );
    }
    // A Verify record naming a page twice, or outside memory, or with a wrong crc.
    let verify = lay.state + 1;
    let records = protocol::decode_verify(&fs[verify].payload).unwrap();
    let edits: Vec<(&str, Vec<(u64, u32)>)> = vec![
        ("a page listed twice", {
            let mut r = records.clone();
            r.push(r[0]);
            r
        }),
        ("a page outside memory", {
            let mut r = records.clone();
            r.push((UNITS, 0));
            r
        }),
        ("a wrong crc", {
            let mut r = records.clone();
            r[records.len() / 2].1 ^= 1;
            r
        }),
        ("a non-zero page missing (Full)", records[1..].to_vec()),
    ];
    for (name, r) in edits {
        let body = protocol::encode_verify(&r);
        c.damaged(
            &format!("Verify with {name}"),
            &with(&|v| v[verify].payload = body.clone()),
        );
    }
    // Batches of one pass exchanged, or dropped, renumbered: pages are crc-checked one by one
    // and Full verification lists every page, so the guest starts only with exact memory.
    for w in lay.pages.windows(2) {
        let ((i, p), (j, q)) = (w[0], w[1]);
        if p == q {
            c.harmless_or_refused(
                &format!("batches {i} and {j} of pass {p} exchanged"),
                &with(&|v| v.swap(i, j)),
            );
        }
    }
    for &(i, p) in &lay.pages {
        c.harmless_or_refused(
            &format!("batch {i} of pass {p} dropped"),
            &with(&|v| {
                v.remove(i);
            }),
        );
    }
    c.finish("renumbered damage");
}

#[test]
fn verification_is_required_when_announced() {
    // Off in the recording: no Verify frames. The same stream announcing Full or Sampled
    // verification is refused at Complete; as recorded it is taken.
    let rec = record(VerifyMode::Off, Compression::None, 41);
    let fs = frames(&rec.bytes);
    assert!(!fs.iter().any(|f| f.kind == FrameType::Verify));
    let mut c = Campaign::new(&rec);
    for mode in [VerifyMode::Full, VerifyMode::Sampled] {
        let mut v: Vec<Frame> = fs.iter().map(copy).collect();
        let mut h: Hello = v[0].json().unwrap();
        h.verify = mode;
        v[0].payload = serde_json::to_vec(&h).unwrap();
        let bytes = renumbered(&v);
        let o = c
            .run(&format!("{mode:?} announced, no Verify"), &bytes, false)
            .unwrap();
        assert!(!o.started, "{mode:?}");
        assert!(
            matches!(&o.result, Err(SessionError::Verify(m)) if m.contains("no Verify")),
            "{mode:?}: {:?}",
            o.result.as_ref().err()
        );
    }
    let o = c.run("as recorded", &rec.bytes, false).unwrap();
    assert!(o.started && o.result.unwrap().verified_pages.is_none());
    c.finish("verification required");
}
