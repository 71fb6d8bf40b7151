//! A whole precopy migration with no KVM: an in-memory unit source whose simulated guest
//! dirties units between rounds, sent over a real loopback TCP socket to an in-memory
//! sink: several rounds, switchover, state, verification; the sink ends equal to the source.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use novacron_migration::protocol::{Hello, PROTOCOL_VERSION};
use novacron_migration::receiver::{self, Takeover};
use novacron_migration::sender::{self, Guest};
use novacron_migration::session::{Cancel, Expect, HookError, SessionError};
use novacron_migration::testdata::{dirty_pass, guest_image, Page, Rng};
use novacron_migration::unit::{MemoryUnits, UnitError, UnitSet, UnitSource, GUEST_MEMORY};
use novacron_migration::{is_zero_page, PAGE_SIZE};
use novacron_vmm_api::migration::{Compression, MigrateOptions, VerifyMode};
use std::net::{TcpListener, TcpStream};

const UNITS: u64 = 4096;

/// Guest memory whose "guest" rewrites units while each round is in flight: the number of
/// units dirtied per round follows `schedule`, then a few more just before the pause.
struct DirtyingGuest {
    memory: MemoryUnits,
    shadow: Vec<Page>,
    rng: Rng,
    schedule: Vec<usize>,
    rounds: usize,
}

impl DirtyingGuest {
    fn new(schedule: Vec<usize>) -> Self {
        let mut rng = Rng::new(5);
        let shadow = guest_image(&mut rng, UNITS as usize);
        let mut memory = MemoryUnits::new(GUEST_MEMORY, UNITS);
        for (i, p) in shadow.iter().enumerate() {
            memory.store(i as u64, p);
        }
        DirtyingGuest {
            memory,
            shadow,
            rng,
            schedule,
            rounds: 0,
        }
    }

    /// The guest runs: `count` units change (tweaked, rewritten, zeroed or copied).
    fn run(&mut self, count: usize) {
        for n in dirty_pass(&mut self.rng, &mut self.shadow, count) {
            self.memory.store(n, &self.shadow[n as usize]);
        }
    }
}

impl UnitSource for DirtyingGuest {
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
        let count = if final_pass {
            40
        } else {
            let c = self.schedule.get(self.rounds).copied().unwrap_or(0);
            self.rounds += 1;
            c
        };
        self.run(count);
        self.memory.dirty(set, final_pass)
    }
    fn prepare(&mut self, set: &UnitSet, word: usize) -> Result<usize, UnitError> {
        self.memory.prepare(set, word)
    }
    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        self.memory.read(n, buf)
    }
}

/// The source's hooks: records throttle, pause and state capture.
#[derive(Default)]
struct Hooks {
    paused: bool,
}

impl Guest for Hooks {
    fn throttle(&mut self, _pct: u32) {}
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
    }
}

/// Runs one migration; returns the sender's result, the receiver's, the sink and hooks.
fn run(
    guest: &mut DirtyingGuest,
    opts: &MigrateOptions,
    memory: u64,
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
    let sent = sender::migrate(
        stream,
        hello(memory),
        opts,
        guest,
        &mut hooks,
        &Cancel::new(),
    );
    let (received, sink, takeover) = dest.join().unwrap();
    (sent, received, sink, takeover, hooks)
}

#[test]
fn precopy_over_loopback_converges_and_the_sink_equals_the_source() {
    for compression in [Compression::Auto, Compression::None, Compression::Delta] {
        let mut guest = DirtyingGuest::new(vec![1500, 800, 400, 150, 0]);
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
    let mut guest = DirtyingGuest::new(vec![200, 0]);
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
    let mut guest = DirtyingGuest::new(vec![0]);
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
