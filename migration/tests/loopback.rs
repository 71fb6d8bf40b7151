//! A whole precopy migration with no KVM: an in-memory unit source whose simulated guest
//! dirties units between rounds, sent over a real loopback TCP socket to an in-memory
//! sink: several rounds, switchover, state, verification; the sink ends equal to the source.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use novacron_migration::protocol::{
    FrameReader, FrameType, FrameWriter, Hello, HelloAck, RoundEnd, PROTOCOL_VERSION,
};
use novacron_migration::receiver::{self, Takeover};
use novacron_migration::sender::{self, Guest};
use novacron_migration::session::{Cancel, Expect, HookError, SessionError};
use novacron_migration::testdata::{guest_image, Rng, ScheduledGuest};
use novacron_migration::unit::{MemoryUnits, UnitError, UnitSet, UnitSource, GUEST_MEMORY};
use novacron_migration::verify::{sampled_catch_probability, sampled_set};
use novacron_migration::{is_zero_page, Encoding, PAGE_SIZE};
use novacron_vmm_api::migration::{Compression, MigrateOptions, VerifyMode};
use std::io::{BufReader, BufWriter};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const UNITS: u64 = 4096;

/// The loopback tests' guest: seed 5, [`UNITS`] units, `schedule[r]` dirtied in round `r`
/// and 40 more before the pause.
fn dirtying(schedule: Vec<usize>) -> ScheduledGuest {
    ScheduledGuest::new(5, UNITS, schedule, 40)
}

/// The source's hooks: records throttle, pause and state capture.
#[derive(Default)]
struct Hooks {
    paused: bool,
    /// Throttles asked for, in order.
    throttles: Vec<u32>,
}

impl Guest for Hooks {
    fn throttle(&mut self, pct: u32) {
        self.throttles.push(pct);
    }
    fn dirty_rate(&mut self, _units_per_s: f64) {}
    fn pause(&mut self) {
        self.paused = true;
    }
    fn state(&mut self) -> Result<Vec<u8>, HookError> {
        Ok(b"vm state".to_vec())
    }
}

/// The destination's hooks: accepts a Hello of the right size, keeps the state, starts.
#[derive(Default)]
struct Dest {
    state: Vec<u8>,
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
        self.state = state.to_vec();
        Ok(())
    }
    fn start(&mut self) -> Result<(), HookError> {
        self.started = true;
        Ok(())
    }
}

fn hello(memory: u64) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        memory,
        vcpus: 1,
        cpuid: Vec::new(),
        disks: 0,
        nets: 0,
        encodings: Vec::new(),
        migration_id: String::new(),
        verify: VerifyMode::Off,
        copied_disks: Vec::new(),
    }
}

/// Runs one migration; returns the sender's result, the receiver's, the sink and hooks.
fn run(
    guest: &mut ScheduledGuest,
    opts: &MigrateOptions,
    memory: u64,
) -> (
    Result<novacron_vmm_api::migration::MigrationSummary, SessionError>,
    Result<receiver::Received, SessionError>,
    MemoryUnits,
    Dest,
    Hooks,
) {
    run_cancel(guest, opts, memory, &Cancel::new())
}

/// [`run`] with a cancel handle.
fn run_cancel(
    guest: &mut ScheduledGuest,
    opts: &MigrateOptions,
    memory: u64,
    cancel: &Cancel,
) -> (
    Result<novacron_vmm_api::migration::MigrationSummary, SessionError>,
    Result<receiver::Received, SessionError>,
    MemoryUnits,
    Dest,
    Hooks,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut sink = MemoryUnits::new(GUEST_MEMORY, UNITS);
        let mut takeover = Dest::default();
        let r = receiver::receive(stream, &mut sink, &mut takeover, &Expect::default());
        (r, sink, takeover)
    });
    let stream = TcpStream::connect(addr).unwrap();
    let mut hooks = Hooks::default();
    let sent = sender::migrate(stream, hello(memory), opts, guest, &mut hooks, cancel);
    let (received, sink, takeover) = dest.join().unwrap();
    (sent, received, sink, takeover, hooks)
}

#[test]
fn precopy_over_loopback_converges_and_the_sink_equals_the_source() {
    for compression in [Compression::Auto, Compression::None, Compression::Delta] {
        let mut guest = dirtying(vec![1500, 800, 400, 150, 0]);
        let opts = MigrateOptions {
            to: "tcp:127.0.0.1:0".into(),
            downtime_ms: 0,
            compression,
            verify: VerifyMode::Full,
            timeout_s: 60,
            ..MigrateOptions::default()
        };
        let (sent, received, sink, dest, hooks) = run(&mut guest, &opts, UNITS * PAGE_SIZE as u64);
        let summary = sent.unwrap();
        let received = received.unwrap();
        assert!(hooks.paused && dest.started, "{compression:?}");
        assert_eq!(dest.state, b"vm state");
        // Round 0, five dirty rounds (the last found nothing dirty: switchover), final pass.
        assert_eq!(summary.rounds, 6, "{compression:?}: {summary:?}");
        assert_eq!(summary.round_details[1].dirty_pages, 1500);
        assert_eq!(summary.round_details[5].pages, 40);
        assert!(
            sink.units() == guest.memory.units(),
            "{compression:?}: sink differs"
        );
        let nonzero = guest.shadow.iter().filter(|p| !is_zero_page(p)).count() as u64;
        assert!(summary.verified);
        assert_eq!(summary.verified_pages, nonzero);
        assert_eq!(received.verified_pages, Some(nonzero));
        assert!(received.batches >= 6);
        if compression == Compression::Delta {
            assert!(summary.codec.kinds.delta > 0, "{:?}", summary.codec);
        }
    }
}

#[test]
fn without_verification_nothing_is_reported_verified() {
    let mut guest = dirtying(vec![200, 0]);
    let opts = MigrateOptions {
        to: "tcp:127.0.0.1:0".into(),
        downtime_ms: 0,
        ..MigrateOptions::default()
    };
    let (sent, received, sink, _, _) = run(&mut guest, &opts, UNITS * PAGE_SIZE as u64);
    let summary = sent.unwrap();
    assert!(!summary.verified);
    assert_eq!(summary.verified_pages, 0);
    assert_eq!(received.unwrap().verified_pages, None);
    assert!(sink.units() == guest.memory.units());
}

#[test]
fn a_refused_hello_moves_no_memory() {
    let mut guest = dirtying(vec![0]);
    let opts = MigrateOptions {
        to: "tcp:127.0.0.1:0".into(),
        ..MigrateOptions::default()
    };
    let (sent, received, sink, dest, hooks) = run(&mut guest, &opts, 1 << 20);
    assert!(matches!(sent, Err(SessionError::Refused(ref r)) if r.contains("memory size")));
    assert!(matches!(received, Err(SessionError::Refused(_))));
    assert!(!hooks.paused && !dest.started);
    assert!(sink.units().iter().all(is_zero_page));
}

/// Options of a verified migration of the test guest (downtime 0: switch over when nothing
/// is dirty).
fn verified(verify: VerifyMode) -> MigrateOptions {
    MigrateOptions {
        to: "tcp:127.0.0.1:0".into(),
        downtime_ms: 0,
        verify,
        timeout_s: 60,
        ..MigrateOptions::default()
    }
}

/// Migrates with `verify` (sample of 100) and checks the summary's prediction and
/// verification figures.
fn check_summary(verify: VerifyMode) {
    let mut guest = dirtying(vec![1500, 800, 0]);
    let opts = MigrateOptions {
        verify_sample_pages: 100,
        ..verified(verify)
    };
    let (sent, received, sink, _, _) = run(&mut guest, &opts, UNITS * PAGE_SIZE as u64);
    let summary = sent.unwrap();
    received.unwrap();
    assert!(sink.units() == guest.memory.units());
    assert_eq!(summary.verify_mode, verify);
    assert!(summary.verify_ms > 0.0, "{summary:?}");
    assert!(summary.predicted_downtime_ms > 0.0, "{summary:?}");
    // Every dirty round carries the prediction made after it.
    assert!(summary.round_details[..summary.round_details.len() - 1]
        .iter()
        .all(|r| r.predicted_downtime_ms > 0.0));
    if verify == VerifyMode::Sampled {
        // The final pass (40 units, some of them zero) plus 100 others.
        assert_eq!(summary.verified_pages, 140, "{summary:?}");
    }
}

#[test]
fn the_summary_reports_the_prediction_and_the_verification() {
    check_summary(VerifyMode::Full);
}

#[test]
fn sampled_verification_of_a_small_sample_passes() {
    check_summary(VerifyMode::Sampled);
}

/// The test switch skips a unit of round 1 and keeps it out of later rounds.
fn skipping(verify: VerifyMode) -> MigrateOptions {
    MigrateOptions {
        test_skip_page_round: Some(1),
        verify_sample_pages: UNITS,
        ..verified(verify)
    }
}

/// Units where the sink differs from the source.
fn differing(sink: &MemoryUnits, guest: &ScheduledGuest) -> Vec<usize> {
    (0..UNITS as usize)
        .filter(|&i| sink.units()[i] != guest.memory.units()[i])
        .collect()
}

#[test]
fn full_and_sampled_verification_catch_a_skipped_unit_off_does_not() {
    for verify in [VerifyMode::Full, VerifyMode::Sampled] {
        let mut guest = dirtying(vec![1500, 800, 400, 0]);
        let (sent, received, _, dest, hooks) =
            run(&mut guest, &skipping(verify), UNITS * PAGE_SIZE as u64);
        assert!(
            matches!(received, Err(SessionError::Verify(_))),
            "{verify:?}: {received:?}"
        );
        match sent {
            Err(SessionError::Aborted(reason)) => {
                assert!(reason.contains("verification failed"), "{reason}")
            }
            other => panic!("{verify:?}: {other:?}"),
        }
        assert!(hooks.paused && !dest.started, "{verify:?}");
    }
    let mut guest = dirtying(vec![1500, 800, 400, 0]);
    let (sent, received, sink, dest, _) = run(
        &mut guest,
        &skipping(VerifyMode::Off),
        UNITS * PAGE_SIZE as u64,
    );
    sent.unwrap();
    received.unwrap();
    assert!(dest.started);
    assert_eq!(
        differing(&sink, &guest).len(),
        1,
        "exactly the skipped unit is stale"
    );
}

#[test]
fn sampled_catch_rate_over_seeds_matches_the_formula() {
    // The test guest's populated units, a final pass of 40 of them, 4 units missed
    // outside it (as the skip switch would leave them), samples of 256.
    let mut guest = dirtying(vec![]);
    let mut populated = UnitSet::new(UNITS);
    guest.populated(&mut populated).unwrap();
    let units: Vec<u64> = populated.iter().collect();
    let mut final_pass = UnitSet::new(UNITS);
    for &n in units.iter().step_by(units.len() / 40).take(40) {
        final_pass.set(n);
    }
    let candidates: Vec<u64> = units
        .iter()
        .copied()
        .filter(|n| !final_pass.get(*n))
        .collect();
    let missed = [
        candidates[3],
        candidates[500],
        candidates[1000],
        candidates[candidates.len() - 1],
    ];
    let sample = 256;
    let runs = 2000u64;
    let caught = (0..runs)
        .filter(|seed| {
            let set = sampled_set(
                &final_pass,
                &populated,
                sample,
                seed.wrapping_mul(0x9E37_79B9),
            );
            missed.iter().any(|m| set.get(*m))
        })
        .count() as f64;
    let want = sampled_catch_probability(candidates.len() as u64, sample, missed.len() as u64);
    let rate = caught / runs as f64;
    // Standard error ~0.011 at p ~ 0.4.
    assert!((rate - want).abs() < 0.04, "caught {rate}, formula {want}");
    assert!(want > 0.1 && want < 0.9, "{want}");
}

#[test]
fn a_slow_link_times_out_inside_the_round() {
    // `--bandwidth 8kbit --timeout 5`: the first pass alone would take hours; the answer
    // comes within a second of the timeout.
    let mut guest = dirtying(vec![100, 0]);
    let opts = MigrateOptions {
        bandwidth: Some(1000),
        timeout_s: 5,
        ..verified(VerifyMode::Off)
    };
    let t = Instant::now();
    let (sent, received, _, dest, hooks) = run(&mut guest, &opts, UNITS * PAGE_SIZE as u64);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    match sent {
        Err(e @ SessionError::Timeout { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("within 5 s") && msg.contains("first pass did not finish"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(received.is_err());
    assert!(!hooks.paused && !dest.started);
}

#[test]
fn cancel_stops_a_migration_quickly() {
    let mut guest = dirtying(vec![100, 0]);
    let opts = MigrateOptions {
        bandwidth: Some(1000),
        timeout_s: 600,
        ..verified(VerifyMode::Off)
    };
    let cancel = Cancel::new();
    let c = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c.cancel();
    });
    let t = Instant::now();
    let (sent, received, _, dest, hooks) =
        run_cancel(&mut guest, &opts, UNITS * PAGE_SIZE as u64, &cancel);
    canceller.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(sent, Err(SessionError::Cancelled)), "{sent:?}");
    assert!(received.is_err());
    assert!(!hooks.paused && !dest.started);
}

#[test]
fn a_cancel_before_the_start_moves_nothing() {
    let mut guest = dirtying(vec![0]);
    let cancel = Cancel::new();
    cancel.cancel();
    let (sent, _, sink, dest, hooks) = run_cancel(
        &mut guest,
        &verified(VerifyMode::Off),
        UNITS * PAGE_SIZE as u64,
        &cancel,
    );
    assert!(matches!(sent, Err(SessionError::Cancelled)), "{sent:?}");
    assert!(!hooks.paused && !dest.started);
    assert!(sink.units().iter().all(is_zero_page));
}

#[test]
fn bad_options_are_refused_before_the_handshake() {
    for (opts, want) in [
        (
            MigrateOptions {
                bandwidth: Some(0),
                ..verified(VerifyMode::Off)
            },
            "bandwidth 0",
        ),
        (
            MigrateOptions {
                compression: Compression::Delta,
                cache_bytes: 1 << 50,
                ..verified(VerifyMode::Off)
            },
            "cache size",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut guest = dirtying(vec![0]);
        let sent = sender::migrate(
            stream,
            hello(UNITS * PAGE_SIZE as u64),
            &opts,
            &mut guest,
            &mut Hooks::default(),
            &Cancel::new(),
        );
        match sent {
            Err(SessionError::Options(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{other:?}"),
        }
        // Nothing was sent: not even a Hello.
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(!matches!(std::io::Read::read(&mut peer, &mut byte), Ok(1)));
    }
}

/// A destination that follows the protocol up to a point: it accepts the Hello, answers
/// RoundEnds up to round `ack_rounds`, then closes; with `close_at_complete`, it answers
/// every round and closes when Complete arrives (without a Confirm).
fn fake_destination(listener: TcpListener, ack_rounds: u32, close_at_complete: bool) {
    let (stream, _) = listener.accept().unwrap();
    let mut input = FrameReader::new(BufReader::new(stream.try_clone().unwrap()));
    let mut out = FrameWriter::new(BufWriter::new(stream));
    loop {
        let Ok(f) = input.read() else { return };
        match f.kind {
            FrameType::Hello => {
                let ack = HelloAck {
                    ok: true,
                    error: String::new(),
                    encodings: Encoding::ALL.iter().map(|e| e.name().to_string()).collect(),
                };
                out.json(FrameType::HelloAck, &ack).unwrap();
                out.flush().unwrap();
            }
            FrameType::RoundEnd => {
                let r: RoundEnd = f.json().unwrap();
                if r.round >= ack_rounds && !close_at_complete {
                    return;
                }
                out.json(FrameType::RoundAck, &r).unwrap();
                out.flush().unwrap();
            }
            FrameType::Complete => return,
            _ => {}
        }
    }
}

/// Migrates the test guest to a [`fake_destination`].
fn run_fake(
    ack_rounds: u32,
    close_at_complete: bool,
) -> (
    Result<novacron_vmm_api::migration::MigrationSummary, SessionError>,
    Hooks,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dest =
        std::thread::spawn(move || fake_destination(listener, ack_rounds, close_at_complete));
    let mut guest = dirtying(vec![300, 0]);
    let mut hooks = Hooks::default();
    let sent = sender::migrate(
        TcpStream::connect(addr).unwrap(),
        hello(UNITS * PAGE_SIZE as u64),
        &verified(VerifyMode::Off),
        &mut guest,
        &mut hooks,
        &Cancel::new(),
    );
    dest.join().unwrap();
    (sent, hooks)
}

#[test]
fn no_confirm_after_complete_is_in_doubt() {
    let (sent, hooks) = run_fake(u32::MAX, true);
    assert!(hooks.paused);
    match sent {
        Err(e @ SessionError::InDoubt(_)) => {
            assert!(e.to_string().contains("stays paused"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_destination_lost_before_complete_is_a_normal_error() {
    // The destination goes away at the end of round 1, before the switchover.
    let (sent, hooks) = run_fake(1, false);
    assert!(!hooks.paused);
    assert!(matches!(sent, Err(SessionError::Protocol(_))), "{sent:?}");
}

#[test]
fn a_destination_that_stops_reading_times_out_at_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts the Hello, then neither reads nor answers.
    let dest = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut input = FrameReader::new(BufReader::new(stream.try_clone().unwrap()));
        let mut out = FrameWriter::new(BufWriter::new(stream));
        let f = input.read().unwrap();
        assert_eq!(f.kind, FrameType::Hello);
        let ack = HelloAck {
            ok: true,
            error: String::new(),
            encodings: Encoding::ALL.iter().map(|e| e.name().to_string()).collect(),
        };
        out.json(FrameType::HelloAck, &ack).unwrap();
        out.flush().unwrap();
        std::thread::sleep(Duration::from_secs(4));
    });
    let mut guest = dirtying(vec![100, 0]);
    let mut hooks = Hooks::default();
    let opts = MigrateOptions {
        timeout_s: 2,
        ..verified(VerifyMode::Off)
    };
    let t = Instant::now();
    let sent = sender::migrate(
        TcpStream::connect(addr).unwrap(),
        hello(UNITS * PAGE_SIZE as u64),
        &opts,
        &mut guest,
        &mut hooks,
        &Cancel::new(),
    );
    let took = t.elapsed();
    assert!(
        matches!(sent, Err(SessionError::Timeout { .. })),
        "{sent:?}"
    );
    assert!(took < Duration::from_millis(3300), "took {took:?}");
    assert!(!hooks.paused);
    dest.join().unwrap();
}

#[test]
fn a_plateau_that_never_fits_fails_at_the_timeout_with_the_achievable_downtime() {
    // 300 units dirty every round, a target only an idle guest meets.
    let mut guest = dirtying(vec![300; 1_000_000]);
    let opts = MigrateOptions {
        timeout_s: 1,
        ..verified(VerifyMode::Off)
    };
    let t = Instant::now();
    let (sent, received, _, dest, hooks) = run(&mut guest, &opts, UNITS * PAGE_SIZE as u64);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    match sent {
        Err(
            e @ SessionError::Timeout {
                best_ms, rounds, ..
            },
        ) => {
            assert!(best_ms.is_finite() && best_ms > 0.0, "{best_ms}");
            assert!(rounds > 3, "{rounds}");
            let msg = e.to_string();
            assert!(msg.contains("achievable downtime was"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        hooks.throttles.is_empty(),
        "no throttle without auto-converge"
    );
    assert!(received.is_err() && !dest.started && !hooks.paused);
}

#[test]
fn auto_converge_throttles_to_the_model_then_forces_the_switchover() {
    let mut guest = dirtying(vec![300; 1_000_000]);
    let opts = MigrateOptions {
        timeout_s: 1,
        auto_converge: true,
        ..verified(VerifyMode::Full)
    };
    let (sent, received, sink, dest, hooks) = run(&mut guest, &opts, UNITS * PAGE_SIZE as u64);
    let summary = sent.unwrap();
    received.unwrap();
    assert!(dest.started && hooks.paused);
    assert!(sink.units() == guest.memory.units());
    assert_eq!(summary.throttle_pct, 99);
    // The first plateau throttles to what the model asks for (at least the start share).
    assert!(
        hooks.throttles.first().is_some_and(|&t| t >= 20),
        "{:?}",
        hooks.throttles
    );
    assert!(
        hooks.throttles.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        hooks.throttles
    );
}

/// Guest memory with a hot set: every collection of the dirty log finds the hot units
/// rewritten (one byte each), as if the guest wrote them continuously.
struct HotGuest {
    memory: MemoryUnits,
    hot: Vec<u64>,
    tick: usize,
}

impl HotGuest {
    fn new() -> Self {
        let mut rng = Rng::new(9);
        let image = guest_image(&mut rng, UNITS as usize);
        let mut memory = MemoryUnits::new(GUEST_MEMORY, UNITS);
        for (i, p) in image.iter().enumerate() {
            memory.store(i as u64, p);
        }
        let hot = (0..UNITS)
            .filter(|&n| !is_zero_page(&image[n as usize]))
            .step_by(64)
            .collect();
        HotGuest {
            memory,
            hot,
            tick: 0,
        }
    }
}

impl UnitSource for HotGuest {
    fn id(&self) -> u8 {
        GUEST_MEMORY
    }
    fn count(&self) -> u64 {
        UNITS
    }
    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError> {
        UnitSource::populated(&mut self.memory, set)
    }
    fn track(&mut self) -> Result<(), UnitError> {
        self.memory.track()
    }
    fn dirty(&mut self, set: &mut UnitSet, final_pass: bool) -> Result<(), UnitError> {
        self.tick += 1;
        for &h in &self.hot {
            let mut p = self.memory.units()[h as usize];
            p[self.tick % PAGE_SIZE] = p[self.tick % PAGE_SIZE].wrapping_add(1);
            self.memory.store(h, &p);
        }
        self.memory.dirty(set, final_pass)
    }
    fn prepare(&mut self, words: &[u64], word: usize) -> Result<usize, UnitError> {
        self.memory.prepare(words, word)
    }
    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        self.memory.read(n, buf)
    }
}

#[test]
fn the_hot_set_stays_cached_through_a_first_pass_larger_than_the_cache() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut sink = MemoryUnits::new(GUEST_MEMORY, UNITS);
        let r = receiver::receive(stream, &mut sink, &mut Dest::default(), &Expect::default());
        (r, sink)
    });
    let mut guest = HotGuest::new();
    let hot = guest.hot.len() as u64;
    // A 6 MiB cache (1512 pages) against a first pass of ~2700 pages: without the looks at
    // the dirty log, the hot pages of the first ~1200 would be evicted before their resend.
    let opts = MigrateOptions {
        compression: Compression::Delta,
        cache_bytes: 6 << 20,
        downtime_ms: 1000,
        encoder_threads: 1,
        ..verified(VerifyMode::Full)
    };
    let summary = sender::migrate(
        TcpStream::connect(addr).unwrap(),
        hello(UNITS * PAGE_SIZE as u64),
        &opts,
        &mut guest,
        &mut Hooks::default(),
        &Cancel::new(),
    )
    .unwrap();
    let (received, sink) = dest.join().unwrap();
    received.unwrap();
    assert!(sink.units() == guest.memory.units());
    // Round 0 and the final pass, which re-sends the hot set: every hot page is a delta
    // against the copy sent in round 0, although the cache is far smaller than the pass.
    assert_eq!(summary.rounds, 2, "{summary:?}");
    let last = summary.round_details.last().unwrap();
    assert_eq!(last.pages, hot);
    assert!(
        summary.codec.kinds.delta >= hot,
        "{} of {hot} hot pages sent as deltas: {:?}",
        summary.codec.kinds.delta,
        summary.codec
    );
}

#[test]
fn cancel_while_waiting_for_a_silent_destination_is_quick() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, then never answers the Hello.
    let dest = std::thread::spawn(move || {
        let (_stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let cancel = Cancel::new();
    let c = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c.cancel();
    });
    let mut guest = dirtying(vec![0]);
    let t = Instant::now();
    let sent = sender::migrate(
        TcpStream::connect(addr).unwrap(),
        hello(UNITS * PAGE_SIZE as u64),
        &verified(VerifyMode::Off),
        &mut guest,
        &mut Hooks::default(),
        &cancel,
    );
    assert!(matches!(sent, Err(SessionError::Cancelled)), "{sent:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    canceller.join().unwrap();
    dest.join().unwrap();
}
