//! The destination side over a [`UnitSink`]: checks the handshake (the awaited migration
//! id, the Hello's bounds, then the VMM's [`Takeover`] hooks), applies page batches (every
//! unit's crc32 is verified by the decoder), restores state, verifies the final units as
//! the Hello's verification mode asks, and only then starts the guest and confirms.
//! Anything short of that and the guest never runs here.
//!
//! # The conversation, enforced
//!
//! The receiver is a state machine over the frames of `protocol.rs`; a frame anywhere
//! else than its step is refused ([`ProtocolError::OutOfStep`]), never skipped:
//!
//! ```text
//! Hello                      first frame, within Expect::read_timeout of the connection;
//!                            with Expect::migration_id, carrying that id
//! (Pages* RoundEnd{r})*      precopy rounds r = 0, 1, 2, ... in order; every batch tagged
//!                            with the pass in progress (the number of RoundEnds so far)
//! Switchover Pages*          the final pass: batches tagged with the pass after the last
//!                            RoundEnd
//! State                      exactly once, after the final pass
//! Verify*                    only after State; required when Hello::verify is not Off
//! Complete                   last: the guest starts, Confirm goes back
//! Abort                      anywhere after the Hello: the source gave up
//! ```
//!
//! Before a valid Hello nothing is answered but a refusal: a connection that closes, times
//! out, sends anything but a well-formed Hello, or another migration id is
//! [`SessionError::Stray`], and the VMM keeps waiting for its real peer. After the Hello
//! every read waits at most `Expect::read_timeout`.
//!
//! # Verification
//!
//! In `Full` mode the Verify records, (unit, crc32) pairs of every non-zero unit, are
//! checked on several threads as they arrive, and every populated unit not listed must be
//! zero here; the first mismatch, in record order, is reported. In `Sampled` mode the one
//! Verify frame is a [`SampledVerify`]: the receiver recomputes both digests
//! ([`verify::sampled_digests`]) over the units it received in the final pass and the
//! sample drawn from the source's seed, and refuses on any difference. Either way the
//! guest does not start. (A stream announcing `Off` may still carry Full-style records:
//! they are checked.)

use std::io::{BufReader, BufWriter, ErrorKind, Read};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::decoder::BatchDecoder;
use crate::protocol::SampledVerify;
use crate::protocol::{
    decode_verify, Abort, Confirm, Frame, FrameReader, FrameType, FrameWriter, Hello, HelloAck,
    ProtocolError, RoundEnd, VerifyMode, MAX_STATE,
};
use crate::session::{Expect, HookError, SessionError};
use crate::store::PageStore;
use crate::transport::Transport;
use crate::unit::{UnitSet, UnitSink};
use crate::verify;
use crate::{is_zero_page, Encoding, PAGE_SIZE};

/// What the engine asks of the VMM receiving the guest.
pub trait Takeover {
    /// Checks the source's Hello against this machine; the refusal reason if any.
    fn check(&self, hello: &Hello) -> Result<(), String>;
    /// Restores the VM state envelope the source sent.
    fn restore(&mut self, state: &[u8]) -> Result<(), HookError>;
    /// Starts the guest: every unit and the state are in place.
    fn start(&mut self) -> Result<(), HookError>;
    /// Stops a started guest again: what was received could not be made durable, so this
    /// end refuses the commit (the source resumes) and must not run the guest on.
    fn halt(&mut self) {}
}

/// What the destination reports when it has taken over the guest.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Page batches applied.
    pub batches: u64,
    /// Precopy rounds received (the final pass not counted).
    pub rounds: u32,
    /// Downtime seen here: Switchover to guest running (ms).
    pub downtime_ms: f64,
    /// Units checked against the source's Verify records (`None`: no verification).
    pub verified_pages: Option<u64>,
    /// Time spent checking them (ms), zero-checks of unlisted units included.
    pub verify_ms: f64,
}

/// Records checked on one thread at least (below this, threads cost more than they save).
const VERIFY_CHUNK: usize = 4096;
/// Bitmap words per span of the Full mode's zero check (4096 units).
const SPAN_WORDS: usize = 64;
/// Spans checked on one thread at least.
const SPANS_PER_THREAD: usize = 4;

/// The destination's end of the connection: until the Hello has arrived every read waits
/// at most until one deadline (a peer that trickles bytes cannot hold the destination),
/// afterwards each read at most the socket's read timeout. A timeout reads as
/// [`ErrorKind::TimedOut`] with the wait in its message.
struct Incoming {
    stream: Transport,
    deadline: Option<Instant>,
    timeout: Duration,
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.timed_out(),
            _ => e,
        })
    }
}

impl Incoming {
    fn timed_out(&self) -> std::io::Error {
        let what = if self.deadline.is_some() {
            "no complete Hello"
        } else {
            "no data from the source"
        };
        std::io::Error::new(
            ErrorKind::TimedOut,
            format!("{what} within {:.1} s", self.timeout.as_secs_f64()),
        )
    }
}

type Input = FrameReader<BufReader<Incoming>>;
type Output = FrameWriter<BufWriter<Transport>>;

/// Receives one migration from `stream` into `sink`. On success the guest is running
/// here; on error the source has been told (best effort) and the guest never ran. A
/// connection that is not the awaited migration ends in [`SessionError::Stray`] having
/// touched nothing: the caller may accept the next one.
pub fn receive<K: UnitSink + Sync, T: Takeover>(
    stream: impl Into<Transport>,
    sink: &mut K,
    takeover: &mut T,
    expect: &Expect,
) -> Result<Received, SessionError> {
    let stream: Transport = stream.into();
    let _ = stream.set_nodelay(true);
    let stray = |e: std::io::Error| SessionError::Stray(format!("connection unusable: {e}"));
    stream
        .set_write_timeout(Some(expect.read_timeout))
        .map_err(stray)?;
    let mut out = FrameWriter::new(BufWriter::new(stream.try_clone().map_err(stray)?));
    let incoming = Incoming {
        stream,
        deadline: Some(Instant::now() + expect.read_timeout),
        timeout: expect.read_timeout,
    };
    let mut input = FrameReader::new(BufReader::with_capacity(1 << 20, incoming));
    let result = accept_hello(&mut input, &mut out, sink, takeover, expect).and_then(|hello| {
        let conn = input.get_mut().get_mut();
        conn.deadline = None;
        conn.stream
            .set_read_timeout(Some(expect.read_timeout))
            .map_err(ProtocolError::Io)?;
        receive_stream(&mut input, &mut out, sink, takeover, &hello)
    });
    if let Err(e) = &result {
        if !matches!(e, SessionError::Aborted(_) | SessionError::Stray(_)) {
            let _ = out.json(
                FrameType::Abort,
                &Abort {
                    reason: e.to_string(),
                },
            );
            let _ = out.flush();
        }
    }
    result
}

/// Writes a JSON frame and flushes it.
fn reply<T: serde::Serialize>(
    out: &mut Output,
    kind: FrameType,
    v: &T,
) -> Result<(), SessionError> {
    out.json(kind, v)?;
    out.flush()?;
    Ok(())
}

/// Refuses the Hello with `reason` (best effort: the peer may be gone).
fn refuse_hello(out: &mut Output, reason: &str) {
    let ack = HelloAck {
        ok: false,
        error: reason.to_string(),
        encodings: vec![],
    };
    let _ = reply(out, FrameType::HelloAck, &ack);
}

/// Reads and checks the Hello: the awaited migration (else [`SessionError::Stray`]), in
/// bounds and fitting this destination (else refused), accepted by the VMM.
fn accept_hello<K: UnitSink, T: Takeover>(
    input: &mut Input,
    out: &mut Output,
    sink: &K,
    takeover: &T,
    expect: &Expect,
) -> Result<Hello, SessionError> {
    let first = input
        .read()
        .map_err(|e| SessionError::Stray(format!("no Hello: {e}")))?;
    if first.kind != FrameType::Hello {
        return Err(SessionError::Stray(format!(
            "first frame is {:?}, not Hello",
            first.kind
        )));
    }
    let hello: Hello = first
        .json()
        .map_err(|e| SessionError::Stray(e.to_string()))?;
    if let Some(want) = &expect.migration_id {
        if hello.migration_id != *want {
            let reason = format!(
                "this destination awaits migration {want:?}, not {:?}",
                hello.migration_id
            );
            refuse_hello(out, &reason);
            return Err(SessionError::Stray(reason));
        }
    }
    let capacity = sink.count().saturating_mul(PAGE_SIZE as u64);
    let checked = hello.validate().map_err(|e| e.to_string()).and_then(|()| {
        if hello.memory > capacity {
            return Err(format!(
                "the source's {} MiB of memory exceed the {} MiB this destination holds",
                hello.memory >> 20,
                capacity >> 20
            ));
        }
        takeover.check(&hello)
    });
    if let Err(reason) = checked {
        refuse_hello(out, &reason);
        return Err(SessionError::Refused(reason));
    }
    let ack = HelloAck {
        ok: true,
        error: String::new(),
        encodings: Encoding::ALL.iter().map(|e| e.name().to_string()).collect(),
    };
    reply(out, FrameType::HelloAck, &ack)?;
    Ok(hello)
}

/// Checks a frame is about the sink's source.
fn check_source<K: UnitSink>(f: &Frame, sink: &K) -> Result<(), SessionError> {
    if f.source != sink.id() {
        return Err(SessionError::UnknownSource {
            got: f.source,
            have: sink.id(),
        });
    }
    Ok(())
}

/// Where the conversation is after the Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A precopy round is open: its batches, its RoundEnd, or the Switchover.
    Precopy,
    /// The source has paused: final-pass batches, then State.
    FinalPass,
    /// State restored: Verify frames, then Complete.
    Restored,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Precopy => "during precopy",
            Step::FinalPass => "during the final pass",
            Step::Restored => "after the VM state",
        }
    }

    fn allowed(self) -> &'static str {
        match self {
            Step::Precopy => "Pages, RoundEnd or Switchover",
            Step::FinalPass => "Pages or State",
            Step::Restored => "Verify or Complete",
        }
    }
}

/// The Verify records received so far and what checking them cost.
struct Verification {
    /// Units listed (for the Full mode's check that the rest is zero).
    listed: UnitSet,
    records: u64,
    elapsed: Duration,
}

/// When the destination's downtime went where (ms since Switchover), for the debug log.
#[derive(Default)]
struct Phases {
    state_at: f64,
    state_bytes: usize,
    restored_at: f64,
}

/// The sink seen through the final pass: every unit written is also noted in `written`
/// (the final-pass set sampled verification digests).
struct Recording<'a, K: ?Sized> {
    inner: &'a mut K,
    written: &'a mut UnitSet,
    /// `(unit, crc32)` of every unit written, in write order (sampled verification's
    /// final-pass records, computed as the pass is applied).
    crcs: &'a mut Vec<(u64, u32)>,
}

impl<K: PageStore + ?Sized> PageStore for Recording<'_, K> {
    fn contains(&self, index: u64) -> bool {
        self.inner.contains(index)
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self.inner.read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        let ok = self.inner.write_page(index, data);
        if ok && index < self.written.len() {
            self.written.set(index);
            self.crcs.push((index, crc32fast::hash(data)));
        }
        ok
    }
}

fn receive_stream<K: UnitSink + Sync, T: Takeover>(
    input: &mut Input,
    out: &mut Output,
    sink: &mut K,
    takeover: &mut T,
    hello: &Hello,
) -> Result<Received, SessionError> {
    let mut decoder = BatchDecoder::new()?;
    let mut received = Received::default();
    let mut step = Step::Precopy;
    // The pass in progress: RoundEnds received so far (the final pass is the one after).
    let mut pass: u32 = 0;
    let mut switchover: Option<Instant> = None;
    let since = |t: Option<Instant>| t.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
    let mut phases = Phases::default();
    let mut verification: Option<Verification> = None;
    // Units written in the final pass, for sampled verification.
    let mut final_pass = UnitSet::new(sink.count());
    let mut final_crcs: Vec<(u64, u32)> = Vec::new();
    loop {
        let f = input.read()?;
        match (step, f.kind) {
            (_, FrameType::Abort) => {
                let a: Abort = f.json()?;
                return Err(SessionError::Aborted(a.reason));
            }
            (Step::Precopy | Step::FinalPass, FrameType::Pages) => {
                check_source(&f, sink)?;
                if f.pass != pass as u16 {
                    return Err(ProtocolError::WrongPass {
                        got: f.pass,
                        want: pass as u16,
                    }
                    .into());
                }
                if step == Step::FinalPass {
                    let mut rec = Recording {
                        inner: &mut *sink,
                        written: &mut final_pass,
                        crcs: &mut final_crcs,
                    };
                    decoder.decode(&f.payload, &mut rec)?;
                } else {
                    decoder.decode(&f.payload, sink)?;
                }
                received.batches += 1;
            }
            (Step::Precopy, FrameType::RoundEnd) => {
                let r: RoundEnd = f.json()?;
                if r.round != pass {
                    return Err(ProtocolError::WrongRound {
                        got: r.round,
                        want: pass,
                    }
                    .into());
                }
                reply(out, FrameType::RoundAck, &r)?;
                sink.round_end();
                pass = pass.checked_add(1).ok_or(ProtocolError::WrongRound {
                    got: r.round,
                    want: pass,
                })?;
                received.rounds = pass;
            }
            (Step::Precopy, FrameType::Switchover) => {
                if pass == 0 {
                    // The full pass (round 0) always precedes the switchover.
                    return Err(ProtocolError::OutOfStep {
                        got: f.kind,
                        step: "before the end of round 0",
                        want: "Pages or RoundEnd",
                    }
                    .into());
                }
                switchover = Some(Instant::now());
                step = Step::FinalPass;
            }
            (Step::FinalPass, FrameType::State) => {
                phases.state_at = since(switchover);
                // At most MAX_STATE bytes unpacked, whatever the frame claims.
                let state = zstd::bulk::decompress(&f.payload, MAX_STATE).map_err(|e| {
                    SessionError::Restore(
                        format!("the VM state is not a valid zstd frame: {e}").into(),
                    )
                })?;
                takeover.restore(&state).map_err(SessionError::Restore)?;
                phases.restored_at = since(switchover);
                phases.state_bytes = f.payload.len();
                step = Step::Restored;
            }
            (Step::Restored, FrameType::Verify) if hello.verify == VerifyMode::Sampled => {
                check_source(&f, sink)?;
                if verification.is_some() {
                    return Err(SessionError::Verify(
                        "a second Verify frame in sampled verification".into(),
                    ));
                }
                let t = Instant::now();
                let checked = check_sampled(&f.payload, &*sink, &final_pass, &mut final_crcs)?;
                verification = Some(Verification {
                    listed: UnitSet::new(0),
                    records: checked,
                    elapsed: t.elapsed(),
                });
            }
            (Step::Restored, FrameType::Verify) => {
                check_source(&f, sink)?;
                let v = verification.get_or_insert_with(|| Verification {
                    listed: UnitSet::new(sink.count()),
                    records: 0,
                    elapsed: Duration::ZERO,
                });
                check_verify_frame(&f.payload, &*sink, v)?;
            }
            (Step::Restored, FrameType::Complete) => {
                if let Some(v) = &mut verification {
                    if hello.verify == VerifyMode::Full {
                        let t = Instant::now();
                        check_unlisted_zero(&*sink, &v.listed)?;
                        v.elapsed += t.elapsed();
                    }
                    received.verified_pages = Some(v.records);
                    received.verify_ms = v.elapsed.as_secs_f64() * 1e3;
                } else if hello.verify != VerifyMode::Off {
                    return Err(SessionError::Verify(format!(
                        "the source announced {:?} verification but sent no Verify records \
                         before Complete",
                        hello.verify
                    )));
                }
                let verified_at = since(switchover);
                takeover.start().map_err(SessionError::Start)?;
                received.downtime_ms = since(switchover);
                // The commit waits until what was received is durable (a disk's fdatasync),
                // while the guest already runs; if it cannot be, the guest stops again and
                // the source, told by the Abort, resumes.
                if let Err(e) = sink.flush() {
                    takeover.halt();
                    return Err(SessionError::Start(
                        format!("the received disks cannot be made durable: {e}").into(),
                    ));
                }
                let durable_at = since(switchover);
                tracing::debug!(
                    state_at_ms = phases.state_at,
                    state_bytes = phases.state_bytes,
                    restored_at_ms = phases.restored_at,
                    verified_at_ms = verified_at,
                    verify_ms = received.verify_ms,
                    running_at_ms = received.downtime_ms,
                    durable_at_ms = durable_at,
                    "destination switchover (ms since Switchover)"
                );
                let confirm = Confirm {
                    ok: true,
                    error: String::new(),
                    downtime_ms: received.downtime_ms,
                    verified_pages: received.verified_pages,
                    verify_ms: received.verify_ms,
                };
                reply(out, FrameType::Confirm, &confirm)?;
                return Ok(received);
            }
            (step, got) => {
                return Err(ProtocolError::OutOfStep {
                    got,
                    step: step.name(),
                    want: step.allowed(),
                }
                .into())
            }
        }
    }
}

/// Sampled verification: recomputes the source's two digests over this end's final pass
/// and the sample of the source's seed; the units covered, or which set differs.
fn check_sampled<K: UnitSink + Sync>(
    payload: &[u8],
    sink: &K,
    final_pass: &UnitSet,
    final_crcs: &mut Vec<(u64, u32)>,
) -> Result<u64, SessionError> {
    let want = SampledVerify::decode(payload)?;
    let count = sink.count();
    if want.sample > count {
        return Err(SessionError::Verify(format!(
            "a sample of {} units asked for a guest of {count} units",
            want.sample
        )));
    }
    // The final pass's records were taken as its units were applied; only the sample is
    // read back here.
    let (final_units, final_digest) = verify::final_pass_digest(final_crcs);
    if final_units != want.final_units || final_digest != want.final_digest {
        return Err(SessionError::Verify(format!(
            "the final pass differs: {final_units} units received here, {} sent by the source \
             (digest {final_digest:#010x} here, {:#010x} at the source)",
            want.final_units, want.final_digest
        )));
    }
    let mut addressable = UnitSet::new(count);
    sink.addressable(&mut addressable);
    let units = verify::sample_units(final_pass, &addressable, want.sample, want.seed);
    let records = verify::crc_records(
        &units,
        verify::default_threads(),
        false,
        &|n, buf: &mut [u8; PAGE_SIZE]| {
            if sink.read_page(n, buf) {
                Ok(())
            } else {
                Err(format!("page {n:#x} cannot be read here"))
            }
        },
    )
    .map_err(SessionError::Verify)?;
    let sample_digest = verify::digest(&records);
    if sample_digest != want.sample_digest {
        return Err(SessionError::Verify(format!(
            "sampled units differ: {} units drawn with seed {:#x} outside the final pass \
             (digest {sample_digest:#010x} here, {:#010x} at the source)",
            units.len(),
            want.seed,
            want.sample_digest
        )));
    }
    Ok(final_units + units.len() as u64)
}

/// Checks one Verify frame's records against the sink, on several threads.
fn check_verify_frame<K: UnitSink + Sync>(
    payload: &[u8],
    sink: &K,
    v: &mut Verification,
) -> Result<(), SessionError> {
    let t = Instant::now();
    let records = decode_verify(payload)?;
    let count = sink.count();
    let total = v.records.saturating_add(records.len() as u64);
    if total > count {
        return Err(SessionError::Verify(format!(
            "{total} Verify records for {count} pages"
        )));
    }
    for &(n, _) in &records {
        if n >= count {
            return Err(SessionError::Verify(format!(
                "page {n:#x} is outside guest memory ({count} pages)"
            )));
        }
        if v.listed.get(n) {
            return Err(SessionError::Verify(format!(
                "page {n:#x} is listed twice in the Verify records"
            )));
        }
        v.listed.set(n);
    }
    first_failure(&records, VERIFY_CHUNK, |&(n, crc)| {
        let mut buf = [0u8; PAGE_SIZE];
        match sink.checksum(n, &mut buf) {
            None => Some(format!("page {n:#x} cannot be read here")),
            Some(got) if got != crc => Some(format!(
                "page {n:#x}: crc32 {got:#010x} here, {crc:#010x} at the source"
            )),
            Some(_) => None,
        }
    })
    .map_or(Ok(()), |m| Err(SessionError::Verify(m)))?;
    v.records = total;
    v.elapsed += t.elapsed();
    Ok(())
}

/// Full mode: every populated unit the source did not list must be zero here. The bitmap
/// is walked in spans of [`SPAN_WORDS`] words, several spans per thread (no list of the
/// unlisted units is built: it could be most of a large guest).
fn check_unlisted_zero<K: UnitSink + Sync>(sink: &K, listed: &UnitSet) -> Result<(), SessionError> {
    let mut populated = UnitSet::new(sink.count());
    sink.populated(&mut populated);
    let words = populated.words().len();
    let spans: Vec<(usize, usize)> = (0..words.div_ceil(SPAN_WORDS))
        .map(|i| (i * SPAN_WORDS, ((i + 1) * SPAN_WORDS).min(words)))
        .collect();
    let (populated, listed) = (populated.words(), listed.words());
    first_failure(&spans, SPANS_PER_THREAD, |&(from, to)| {
        let mut buf = [0u8; PAGE_SIZE];
        (from..to).find_map(|w| {
            let mut bits = populated[w] & !listed.get(w).copied().unwrap_or(0);
            while bits != 0 {
                let n = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if !sink.read_page(n, &mut buf) || !is_zero_page(&buf) {
                    return Some(format!(
                        "page {n:#x} is non-zero here but zero at the source"
                    ));
                }
            }
            None
        })
    })
    .map_or(Ok(()), |m| Err(SessionError::Verify(m)))
}

/// Runs `check` over `items` on up to one thread per core, each thread taking at least
/// `min_per_thread` items; the failure of the first item (in order) that fails, if any.
fn first_failure<I: Sync>(
    items: &[I],
    min_per_thread: usize,
    check: impl Fn(&I) -> Option<String> + Sync,
) -> Option<String> {
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(items.len().div_ceil(min_per_thread.max(1)))
        .max(1);
    if threads == 1 {
        return items.iter().find_map(&check);
    }
    let chunk = items.len().div_ceil(threads);
    let check = &check;
    std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().find_map(check)))
            .collect();
        // Chunks are in order: the first chunk with a failure holds the first failure.
        workers.into_iter().find_map(|w| {
            w.join()
                .unwrap_or_else(|_| Some("a verification thread panicked".into()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_is_the_first_in_order_whatever_the_threads() {
        let items: Vec<u64> = (0..100_000).collect();
        let bad = |&n: &u64| (n % 30_001 == 30_000).then(|| format!("bad {n}"));
        assert_eq!(
            first_failure(&items, VERIFY_CHUNK, bad),
            Some("bad 30000".into())
        );
        assert_eq!(first_failure(&items, VERIFY_CHUNK, |_| None), None);
        assert_eq!(first_failure(&items[..10], VERIFY_CHUNK, bad), None);
        let empty: [u64; 0] = [];
        assert_eq!(first_failure(&empty, 1, bad), None);
    }
}
