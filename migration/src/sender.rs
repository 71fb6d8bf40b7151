//! The source side of precopy over a [`UnitSource`]: handshake, a full pass over the units
//! holding data, dirty passes until the [`Convergence`] decision switches over (throttling
//! the guest if asked), then pause, final pass, state, optional verification, and the
//! destination's confirmation. The caller resumes its guest on any error except
//! [`SessionError::InDoubt`].
//!
//! Units are read into the batches of the encoder threads ([`crate::encoder_pool`]) and
//! written as the threads finish them. After each round the sender feeds the convergence
//! model ([`crate::convergence`]) what it measured: the dirty units and rate, its own cost
//! per unit, wire bytes per unit, the link's rate ([`crate::link`]), and the fixed part
//! (state, and the verification of the chosen mode at the measured crc cost). The link's
//! propagation delay is not counted (no downtime target can buy it down), so
//! over a long link the source's downtime (pause to confirmation) exceeds the target by
//! about one round trip, while the destination's stays near it.
//!
//! # Stopping
//!
//! The caller's [`Cancel`] and the deadline (`--timeout`; twice that with auto-converge,
//! whose decision keeps throttling past the timeout) are checked between batches and inside
//! the pacer's waits, so a slow link or a huge round never outlives them: the session ends
//! with [`SessionError::Cancelled`] or [`SessionError::Timeout`] and the caller resumes.
//! Once `Complete` is written nothing stops the session any more: from then on a missing
//! `Confirm` (read error, end of stream, timeout) is [`SessionError::InDoubt`], and the
//! caller must keep the guest paused.
//!
//! # Verification
//!
//! With `--verify`, the source lists `(unit, crc32)` records ([`crate::verify`]) after the
//! state and before `Complete`: `full` every non-zero populated unit, `sampled` every unit
//! of the final pass plus a random sample of the other populated units (fresh seed per
//! migration, drawn in tens of µs just before the pause, outside the dirty set known
//! then); the records are computed on several threads while paused.
//!
//! # Test switch: a skipped unit
//!
//! `test_skip_page_round = Some(r)` leaves out of round `r` its lowest-numbered unit whose
//! content is not zero, and removes that unit from every later dirty set (final pass
//! included), so the destination keeps a stale copy (from an earlier round, or zero) and
//! only verification can notice.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::time::{Duration, Instant};

use novacron_vmm_api::migration::{
    mem_available_bytes, MigrateOptions, MigrationSummary, RoundSummary, VerifyMode,
};

use crate::auto::AutoSelector;
use crate::convergence::{Convergence, Decision, Measured};
use crate::encoder_pool::{Choice, Encoded, EncoderPool, PoolError};
use crate::error::CodecError;
use crate::link::{LinkMeter, LAN_PRIOR, LAN_RTT};
use crate::page_cache::SLOT_OVERHEAD_BYTES;
use crate::protocol::{
    self, Abort, Confirm, Frame, FrameReader, FrameType, FrameWriter, Hello, HelloAck,
    ProtocolError, RoundEnd, SampledVerify, PROTOCOL_VERSION, VERIFY_RECORD,
};
use crate::session::{Cancel, HookError, SessionError};
use crate::transport::Transport;
use crate::unit::{SourceId, UnitSet, UnitSource};
use crate::verify;
use crate::{is_zero_page, EncoderConfig, Encoding, DEFAULT_ZSTD_LEVEL, PAGE_SIZE};

/// Units per batch frame.
const BATCH_UNITS: usize = 1024;
/// Longest wait for any one reply of the destination (HelloAck, RoundAck, Confirm); a
/// RoundAck wait is also cut at the deadline.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest single sleep of the pacer, so the stop conditions are checked this often.
const PACER_SLICE: Duration = Duration::from_millis(50);
/// The socket's write timeout: a peer that takes no data blocks a write at most this long
/// before the stop conditions are checked again.
const WRITE_SLICE: Duration = Duration::from_millis(250);
/// Verification records per Verify frame (12 B each: 12 MiB, under the frame limit).
const VERIFY_RECORDS_PER_FRAME: usize = 1 << 20;
/// Time assumed from the dirty-log collection to the guest being stopped, on top of the
/// collection itself (the vCPU kicks), for the pages written meanwhile.
const PAUSE_ALLOWANCE_S: f64 = 0.0005;
/// Downtime assumed for capturing and restoring the VM state (ms), part of the fixed cost.
const STATE_ALLOWANCE_MS: f64 = 0.2;

/// What the engine asks of the guest whose units it sends.
pub trait Guest {
    /// Throttles the guest's vCPUs to `pct` percent of the time (auto-converge only).
    fn throttle(&mut self, pct: u32);
    /// Reports the measured dirty rate (units/s), for status.
    fn dirty_rate(&mut self, units_per_s: f64);
    /// Stops the guest (and any throttling): downtime starts.
    fn pause(&mut self);
    /// The VM state envelope, captured while paused after the final pass.
    fn state(&mut self) -> Result<Vec<u8>, HookError>;
}

/// Why a session stopped from outside its protocol (carried inside an `io::Error` out of
/// the pacer, and turned into [`SessionError::Cancelled`] or [`SessionError::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Stopped {
    /// The caller cancelled.
    #[error("migration cancelled")]
    Cancelled,
    /// The deadline passed.
    #[error("migration deadline passed")]
    Deadline,
}

/// The stop conditions of one session: the caller's cancel and the deadline.
#[derive(Clone, Debug)]
struct Stop {
    cancel: Cancel,
    deadline: Instant,
}

impl Stop {
    /// Fails if the session must stop now.
    fn check(&self) -> Result<(), SessionError> {
        self.io().map_err(|e| ProtocolError::Io(e).into())
    }

    /// [`Stop::check`] as an I/O error, for the pacer.
    fn io(&self) -> std::io::Result<()> {
        if self.cancel.is_cancelled() {
            Err(std::io::Error::other(Stopped::Cancelled))
        } else if Instant::now() >= self.deadline {
            Err(std::io::Error::other(Stopped::Deadline))
        } else {
            Ok(())
        }
    }

    /// Why `e` stopped the session, if a stop condition did: a [`Stopped`] from the pacer
    /// or a batch boundary, or a read that timed out at the deadline.
    fn reason(&self, e: &SessionError) -> Option<Stopped> {
        if self.cancel.is_cancelled() {
            return Some(Stopped::Cancelled);
        }
        let SessionError::Protocol(ProtocolError::Io(io)) = e else {
            return None;
        };
        if let Some(s) = io.get_ref().and_then(|i| i.downcast_ref::<Stopped>()) {
            return Some(*s);
        }
        let timed_out = matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        (timed_out && Instant::now() >= self.deadline).then_some(Stopped::Deadline)
    }
}

/// How long the outgoing stream waits, in the pacer and on a socket that does not take
/// data (the socket has a short write timeout, [`WRITE_SLICE`]).
#[derive(Clone, Debug)]
enum Patience {
    /// Until the session must stop (precopy, final pass, state, verification).
    Until(Stop),
    /// At most this long blocked on the socket (`Complete`: then in doubt; the best-effort
    /// Abort: zero).
    For(Duration),
}

/// A writer that counts bytes and paces them to a rate with a token bucket; its waits
/// (for tokens, and for a socket that does not take data) end as its [`Patience`] says.
struct Paced<W: Write> {
    inner: W,
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
    sent: u64,
    patience: Patience,
}

impl<W: Write> Paced<W> {
    fn new(inner: W, rate: Option<u64>, stop: Stop) -> Self {
        Paced {
            inner,
            rate,
            tokens: 0.0,
            last: Instant::now(),
            sent: 0,
            patience: Patience::Until(stop),
        }
    }

    /// Runs `op` on the inner writer, retrying while the socket's write timeout expires
    /// and the patience lasts.
    fn patiently<T>(
        &mut self,
        mut op: impl FnMut(&mut W) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let start = Instant::now();
        loop {
            match op(&mut self.inner) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    match &self.patience {
                        Patience::Until(stop) => stop.io()?,
                        Patience::For(d) if start.elapsed() < *d => {}
                        Patience::For(_) => return Err(e),
                    }
                }
                r => return r,
            }
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut n = buf.len().min(64 << 10);
        if let Some(rate) = self.rate {
            // Slow links take small steps, so no single step waits long.
            n = n.min(((rate / 20) as usize).max(512));
            let burst = (rate as f64 / 50.0).max(64.0 * 1024.0);
            loop {
                let now = Instant::now();
                self.tokens = (self.tokens
                    + now.duration_since(self.last).as_secs_f64() * rate as f64)
                    .min(burst);
                self.last = now;
                if self.tokens >= n as f64 {
                    break;
                }
                if let Patience::Until(stop) = &self.patience {
                    stop.io()?;
                }
                let wait = (n as f64 - self.tokens) / rate as f64;
                self.patiently(|w| w.flush())?;
                std::thread::sleep(Duration::from_secs_f64(wait).min(PACER_SLICE));
            }
            self.tokens -= n as f64;
        }
        let w = self.patiently(|w| w.write(&buf[..n]))?;
        self.sent += w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.patiently(|w| w.flush())
    }
}

/// How batches are encoded: fixed by `--compression`, or chosen per batch by `auto`.
enum Mode {
    Fixed(Choice),
    Auto(AutoSelector),
}

/// The outgoing stream: paced writer, encoding choice, link meter and units per encoding.
struct Wire {
    out: FrameWriter<Paced<BufWriter<Transport>>>,
    mode: Mode,
    link: LinkMeter,
    /// Units sent per encoding in the current pass (indexed by `Encoding as usize`).
    pass_units: [u64; Encoding::ALL.len()],
}

impl Wire {
    fn choose(&mut self) -> Choice {
        match &mut self.mode {
            Mode::Fixed(c) => *c,
            Mode::Auto(a) => a.choose(self.link.rate()),
        }
    }

    /// Writes one encoded batch; the time blocked on the link feeds the link meter and,
    /// with `auto`, the batch's figures feed the selector.
    fn write_batch(&mut self, source: SourceId, e: Encoded<'_>) -> Result<(), SessionError> {
        let t = Instant::now();
        let before = self.out.get_ref().sent;
        self.out.source_frame(FrameType::Pages, source, e.frame)?;
        self.link
            .observe(self.out.get_ref().sent - before, t.elapsed());
        if let Mode::Auto(a) = &mut self.mode {
            a.observe_batch(&e.stats);
        }
        self.pass_units[e.stats.encoding as usize] += e.stats.pages;
        Ok(())
    }

    /// Flushes the stream; the time it blocks counts as link time.
    fn flush(&mut self) -> Result<(), SessionError> {
        let t = Instant::now();
        self.out.flush()?;
        self.link.observe(0, t.elapsed());
        Ok(())
    }

    /// Wire bytes so far.
    fn sent(&self) -> u64 {
        self.out.get_ref().sent
    }
}

/// One pass's figures.
struct PassStats {
    units: u64,
    zero: u64,
    bytes: u64,
    /// The encoding that carried most of the pass's units.
    encoding: Encoding,
    /// Units per encoding name.
    by_encoding: BTreeMap<String, u64>,
}

impl PassStats {
    /// The round summary of this pass.
    fn summary(
        &self,
        round: u32,
        ms: f64,
        dirty_pages: u64,
        dirty_rate: f64,
        throttle_pct: u32,
    ) -> RoundSummary {
        RoundSummary {
            round,
            encoding: self.encoding,
            pages_by_encoding: self.by_encoding.clone(),
            pages: self.units,
            zero_pages: self.zero,
            bytes: self.bytes,
            ms,
            dirty_pages,
            dirty_rate,
            throttle_pct,
            predicted_downtime_ms: 0.0,
        }
    }
}

/// Sender cost and wire cost per unit as the last precopy round measured them, for the
/// convergence model.
struct Rates {
    /// Seconds of sender work per unit read (read + encode + write, from the start of a
    /// pass to its last byte written; the destination's acknowledgement not included).
    s_per_unit: Option<f64>,
    /// Wire bytes per unit sent.
    wire_per_unit: f64,
    /// Seconds to crc one unit on one thread (measured after the first pass).
    crc_s_per_unit: f64,
}

/// The unit the test switch left out, and in which round.
#[derive(Clone, Copy, Debug, Default)]
struct Skip {
    round: Option<u32>,
    unit: Option<u64>,
}

impl Skip {
    /// Removes the skipped unit from `set` (it must stay stale at the destination).
    fn exclude(&self, set: &mut UnitSet) {
        if let Some(n) = self.unit {
            if let Some(w) = set.words_mut().get_mut((n / 64) as usize) {
                *w &= !(1u64 << (n % 64));
            }
        }
    }
}

/// What the session has done so far, for the error it may end with.
#[derive(Clone, Copy, Debug)]
struct Progress {
    rounds: usize,
    dirty: u64,
    best_ms: f64,
}

/// The stream and unit machinery of one outgoing migration.
struct Sender {
    wire: Wire,
    input: FrameReader<BufReader<Transport>>,
    /// The stream, for read deadlines.
    socket: Transport,
    pool: EncoderPool,
    zero_units: u64,
    stop: Stop,
    skip: Skip,
    progress: Progress,
    /// First-pass hot-set detection: see [`Peek`].
    peek: Peek,
}

/// Looks at the dirty log during a first pass larger than the sent-page cache, so the
/// pages the guest re-dirties are protected in the cache before the rest of the pass
/// evicts them (their next send is then a delta). What it collects joins the next dirty
/// set (round 1 re-protects each window before reading it, as for any collected unit).
struct Peek {
    /// Units read between looks (0: never look).
    every: u64,
    /// Sent-page cache capacity (units): looking pays only when the first pass exceeds it.
    cache_units: u64,
    /// Units collected by the looks, for the next dirty set.
    collected: UnitSet,
    /// One look's units.
    scratch: UnitSet,
}

impl Sender {
    /// One precopy round: the pass (see [`Sender::send_pass`]), then `RoundEnd` and the
    /// destination's acknowledgement. Returns the pass and its duration (ms); updates `rates`.
    fn round<S: UnitSource>(
        &mut self,
        source: &mut S,
        units: &UnitSet,
        first: bool,
        round: u32,
        rates: &mut Rates,
    ) -> Result<(PassStats, f64), SessionError> {
        let start = Instant::now();
        let skip = self.skip.round == Some(round);
        let st = self.send_pass(source, units, first, !first, skip, None)?;
        self.wire.flush()?;
        let send_s = start.elapsed().as_secs_f64();
        self.end_round(round)?;
        // Round 0 reads zero units too (and skips them): they count towards its cost.
        let read = if first { st.units + st.zero } else { st.units };
        if send_s > 0.0 && read > 0 {
            rates.s_per_unit = Some(send_s / read as f64);
        }
        if st.units > 0 {
            rates.wire_per_unit = st.bytes as f64 / st.units as f64;
        }
        self.progress.rounds += 1;
        Ok((st, start.elapsed().as_secs_f64() * 1e3))
    }

    /// Sends the units set in `units`; zero units are skipped when `skip_zero` (the
    /// destination starts zeroed), else sent as zero markers. With `prepare`, the source
    /// prepares each window of units just before it is read (e.g. re-arms write
    /// protection). With `skip_one`, the first non-zero unit is left out (test switch).
    /// Units are read straight into the batch of their encoder shard; finished batches are
    /// written as they come back, so reading, encoding and sending overlap. The stop
    /// conditions are checked at every batch. With `records`, the `(unit, crc32)` of every
    /// unit read is pushed there, ascending (the final pass's records for sampled
    /// verification, computed while the pass is sent).
    fn send_pass<S: UnitSource>(
        &mut self,
        source: &mut S,
        units: &UnitSet,
        skip_zero: bool,
        prepare: bool,
        mut skip_one: bool,
        mut records: Option<&mut Vec<(u64, u32)>>,
    ) -> Result<PassStats, SessionError> {
        let Sender {
            wire,
            pool,
            zero_units,
            stop,
            skip,
            peek,
            ..
        } = self;
        let id = source.id();
        let before = wire.sent();
        wire.pass_units = [0; Encoding::ALL.len()];
        let (mut sent, mut zero) = (0u64, 0u64);
        let mut prepared_to = 0usize; // bitmap words prepared so far
                                      // Only a first pass larger than the cache looks at the dirty log as it goes.
        let peek_every = if skip_zero && units.count() > peek.cache_units {
            peek.every
        } else {
            0
        };
        if peek_every > 0 && peek.scratch.len() != units.len() {
            peek.scratch = UnitSet::new(units.len());
            peek.collected = UnitSet::new(units.len());
        }
        let mut read = 0u64;
        for n in units.iter() {
            read += 1;
            if peek_every > 0 && read.is_multiple_of(peek_every) {
                peek.scratch.clear();
                source.dirty(&mut peek.scratch, false)?;
                for u in peek.scratch.iter().filter(|u| *u < n) {
                    pool.protect(u);
                }
                union_into(&mut peek.collected, &peek.scratch);
            }
            let word = (n / 64) as usize;
            if prepare && word >= prepared_to {
                stop.check()?;
                prepared_to = source.prepare(units.words(), word)?.max(word + 1);
            }
            let shard = pool.shard_of(n);
            let buf = pool.slot(shard);
            source.read(n, buf)?;
            if let Some(r) = records.as_mut() {
                r.push((n, crc32fast::hash(&buf[..])));
            }
            if is_zero_page(buf) {
                zero += 1;
                if skip_zero {
                    continue;
                }
            } else if skip_one {
                skip_one = false;
                skip.unit = Some(n);
                tracing::warn!(unit = n, "test switch: unit left out of the pass");
                continue;
            }
            sent += 1;
            if pool.keep(shard, n) {
                stop.check()?;
                let choice = wire.choose();
                pool.submit(shard, choice, &mut |e| wire.write_batch(id, e))?;
                pool.poll(&mut |e| wire.write_batch(id, e))?;
            }
        }
        let choice = wire.choose();
        pool.drain(choice, &mut |e| wire.write_batch(id, e))?;
        *zero_units += zero;
        let mut by_encoding = BTreeMap::new();
        let mut encoding = choice.encoding;
        for e in Encoding::ALL {
            let n = wire.pass_units[e as usize];
            if n > 0 {
                by_encoding.insert(e.name().to_string(), n);
            }
            if n > wire.pass_units[encoding as usize] {
                encoding = e;
            }
        }
        Ok(PassStats {
            units: sent,
            zero,
            bytes: wire.sent() - before,
            encoding,
            by_encoding,
        })
    }

    /// Ends a round and waits until the destination has applied it.
    fn end_round(&mut self, round: u32) -> Result<(), SessionError> {
        self.wire
            .out
            .json(FrameType::RoundEnd, &RoundEnd { round })?;
        self.wire.flush()?;
        self.wait_reply()?;
        self.expect_reply(FrameType::RoundAck, "RoundAck")
            .map(|_| ())
    }

    /// Waits until the destination's next frame starts arriving, at most
    /// [`REPLY_TIMEOUT`], checking the stop conditions every [`WRITE_SLICE`]: a reply wait
    /// before the commit point never outlasts a cancel or the deadline. (It peeks at the
    /// socket, so no byte of the frame is consumed before the frame is read.)
    fn wait_reply(&mut self) -> Result<(), SessionError> {
        let end = Instant::now() + REPLY_TIMEOUT;
        let io = |e| SessionError::from(ProtocolError::Io(e));
        self.socket
            .set_read_timeout(Some(WRITE_SLICE))
            .map_err(io)?;
        loop {
            if !self.input.get_ref().buffer().is_empty() {
                break;
            }
            self.stop.check()?;
            match self.socket.wait_readable() {
                // Data, or the end of the stream (the read reports it).
                Ok(()) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= end {
                        return Err(io(e));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        self.socket
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(io)
    }

    /// Reads the destination's next frame and checks it is of `kind`.
    fn expect_reply(&mut self, kind: FrameType, want: &'static str) -> Result<Frame, SessionError> {
        self.wire.out.flush()?;
        let f = self.input.read()?;
        if f.kind == FrameType::Abort {
            let a: Abort = f.json()?;
            return Err(SessionError::Aborted(a.reason));
        }
        if f.kind != kind {
            return Err(ProtocolError::Unexpected { got: f.kind, want }.into());
        }
        Ok(f)
    }

    /// Computes the verification of `mode` on several threads and sends it; returns how
    /// many units it covers. Full mode sends the records of every non-zero populated unit,
    /// [`VERIFY_RECORDS_PER_FRAME`] at a time (memory stays bounded for any guest size);
    /// sampled mode one [`SampledVerify`]: the digests of `final_pass` and of `sample` units
    /// drawn now with a fresh seed, which the destination recomputes.
    fn send_verify<S: UnitSource + Sync>(
        &mut self,
        source: &mut S,
        mode: VerifyMode,
        final_pass: &UnitSet,
        sample: u64,
        mut final_records: Vec<(u64, u32)>,
    ) -> Result<u64, SessionError> {
        let id = source.id();
        let threads = verify::default_threads();
        match mode {
            VerifyMode::Off => Ok(0),
            VerifyMode::Sampled => {
                let seed = verify::random_seed();
                let src: &S = source;
                let t = Instant::now();
                let mut addressable = UnitSet::new(src.count());
                src.addressable(&mut addressable);
                let listed_ms = t.elapsed().as_secs_f64() * 1e3;
                let (final_units, final_digest) = verify::final_pass_digest(&mut final_records);
                let units = verify::sample_units(final_pass, &addressable, sample, seed);
                let records = verify::crc_records(&units, threads, false, &|n, b| src.read(n, b))?;
                let d = verify::SampledDigests {
                    final_units,
                    sample_units: units.len() as u64,
                    final_digest,
                    sample_digest: verify::digest(&records),
                };
                let payload = SampledVerify {
                    seed,
                    sample,
                    final_units: d.final_units,
                    final_digest: d.final_digest,
                    sample_digest: d.sample_digest,
                }
                .encode();
                let digests_ms = t.elapsed().as_secs_f64() * 1e3;
                self.wire
                    .out
                    .source_frame(FrameType::Verify, id, &payload)?;
                tracing::debug!(
                    listed_ms,
                    digests_ms,
                    written_ms = t.elapsed().as_secs_f64() * 1e3,
                    final_units = d.final_units,
                    sample_units = d.sample_units,
                    threads,
                    "sampled verification at the source"
                );
                Ok(d.final_units + d.sample_units)
            }
            VerifyMode::Full => {
                let mut set = UnitSet::new(source.count());
                source.populated(&mut set)?;
                let src: &S = source;
                let mut units =
                    Vec::with_capacity(VERIFY_RECORDS_PER_FRAME.min(set.count() as usize));
                let mut all = set.iter().peekable();
                let mut listed = 0u64;
                loop {
                    units.clear();
                    units.extend(all.by_ref().take(VERIFY_RECORDS_PER_FRAME));
                    let records =
                        verify::crc_records(&units, threads, true, &|n, b| src.read(n, b))?;
                    listed += records.len() as u64;
                    let payload = protocol::encode_verify(&records);
                    self.wire
                        .out
                        .source_frame(FrameType::Verify, id, &payload)?;
                    if all.peek().is_none() {
                        return Ok(listed);
                    }
                }
            }
        }
    }
}

/// Adds the units of `src` to `dst` (sets of the same source).
fn union_into(dst: &mut UnitSet, src: &UnitSet) {
    for (o, w) in dst.words_mut().iter_mut().zip(src.words()) {
        *o |= w;
    }
}

/// Seconds one thread needs to crc a unit, measured on up to 64 units of `populated`.
fn crc_cost<S: UnitSource>(source: &S, populated: &UnitSet) -> f64 {
    let mut buf = [0u8; PAGE_SIZE];
    let t = Instant::now();
    let mut n = 0u32;
    for u in populated.iter().take(64) {
        if source.read(u, &mut buf).is_ok() {
            std::hint::black_box(crc32fast::hash(&buf));
            n += 1;
        }
    }
    if n == 0 {
        return 1e-6;
    }
    t.elapsed().as_secs_f64() / f64::from(n)
}

/// Migrates the units of `source` over `stream` (connected to the destination: a
/// [`Transport`], mutual TLS or plain TCP), announcing
/// the guest with `hello` (its `version` and `encodings` are filled in here). The options
/// are validated against the guest and the host first. On success the destination runs the
/// guest; on [`SessionError::InDoubt`] the caller must keep its guest paused; on any other
/// error the caller resumes its own (the destination has been told, best effort).
pub fn migrate<S: UnitSource + Sync, G: Guest>(
    stream: impl Into<Transport>,
    mut hello: Hello,
    opts: &MigrateOptions,
    source: &mut S,
    guest: &mut G,
    cancel: &Cancel,
) -> Result<MigrationSummary, SessionError> {
    let t0 = Instant::now();
    let memory = hello.memory;
    let host = mem_available_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read MemAvailable: the cache size is checked against the guest only");
        0
    });
    opts.validate(memory, host)
        .map_err(|e| SessionError::Options(e.to_string()))?;
    if cancel.is_cancelled() {
        return Err(SessionError::Cancelled);
    }
    let stream: Transport = stream.into();
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(ProtocolError::Io)?;
    stream
        .set_write_timeout(Some(WRITE_SLICE))
        .map_err(ProtocolError::Io)?;
    let input = FrameReader::new(BufReader::new(
        stream.try_clone().map_err(ProtocolError::Io)?,
    ));
    let socket = stream.try_clone().map_err(ProtocolError::Io)?;
    let cache_bytes = match (opts.compression.fixed(), opts.cache_bytes) {
        (Some(Encoding::Raw), _) | (Some(Encoding::Zstd), _) => 0,
        (_, 0) => (memory / 2).clamp(16 << 20, 2 << 30) as usize,
        (_, n) => usize::try_from(n).map_err(|_| {
            SessionError::Options(format!("cache size {n} bytes does not fit this host"))
        })?,
    };
    let cache_units = cache_bytes / (PAGE_SIZE + SLOT_OVERHEAD_BYTES);
    let threads = opts
        .encoder_threads()
        .map_err(|e| SessionError::Options(e.to_string()))?;
    let pool = EncoderPool::new(
        EncoderConfig {
            cache_bytes,
            ..EncoderConfig::default()
        },
        threads,
        BATCH_UNITS,
    )
    .map_err(|e| match e {
        PoolError::Codec {
            source: CodecError::Config(_),
            ..
        } => SessionError::Options(format!(
            "cannot set up the encoders with a {cache_bytes}-byte sent-page cache: {e}"
        )),
        e => e.into(),
    })?;
    let mode = match opts.compression.fixed() {
        Some(encoding) => Mode::Fixed(Choice {
            encoding,
            level: DEFAULT_ZSTD_LEVEL,
        }),
        None => Mode::Auto(AutoSelector::new(threads as usize)),
    };
    // Auto-converge keeps throttling past the timeout (see `convergence`): its hard
    // deadline is twice the timeout.
    let limit = Duration::from_secs(
        opts.timeout_s
            .saturating_mul(1 + u64::from(opts.auto_converge)),
    );
    let stop = Stop {
        cancel: cancel.clone(),
        deadline: t0 + limit,
    };
    let mut s = Sender {
        wire: Wire {
            out: FrameWriter::new(Paced::new(
                BufWriter::with_capacity(1 << 20, stream),
                opts.bandwidth,
                stop.clone(),
            )),
            mode,
            link: LinkMeter::new(opts.bandwidth),
            pass_units: [0; Encoding::ALL.len()],
        },
        input,
        socket,
        pool,
        zero_units: 0,
        stop,
        skip: Skip {
            round: opts.test_skip_page_round,
            unit: None,
        },
        progress: Progress {
            rounds: 0,
            dirty: 0,
            best_ms: f64::INFINITY,
        },
        peek: Peek {
            every: (cache_units / 4) as u64,
            cache_units: cache_units as u64,
            // Allocated by the first pass that looks.
            collected: UnitSet::new(0),
            scratch: UnitSet::new(0),
        },
    };
    let result = handshake(&mut s, &mut hello, opts)
        .and_then(|()| precopy(&mut s, source, guest, opts, &hello, t0));
    let result = result.map_err(|e| stopped(&s, e, opts));
    if let Err(e) = &result {
        if !matches!(
            e,
            SessionError::Aborted(_) | SessionError::Refused(_) | SessionError::InDoubt(_)
        ) {
            // Tell the destination (best effort: unpaced, no waiting on a full socket).
            let paced = s.wire.out.get_mut();
            paced.rate = None;
            paced.patience = Patience::For(Duration::ZERO);
            let _ = s.wire.out.json(
                FrameType::Abort,
                &Abort {
                    reason: e.to_string(),
                },
            );
            let _ = s.wire.out.flush();
        }
    }
    result
}

/// Turns an error caused by a stop condition into [`SessionError::Cancelled`] or
/// [`SessionError::Timeout`] (with the achievable downtime); other errors pass.
fn stopped(s: &Sender, e: SessionError, opts: &MigrateOptions) -> SessionError {
    if matches!(e, SessionError::InDoubt(_)) {
        return e;
    }
    match s.stop.reason(&e) {
        Some(Stopped::Cancelled) => SessionError::Cancelled,
        Some(Stopped::Deadline) => SessionError::Timeout {
            secs: opts.timeout_s,
            rounds: s.progress.rounds,
            wire_mib: s.wire.sent() as f64 / 1048576.0,
            dirty: s.progress.dirty,
            best_ms: s.progress.best_ms,
            target_ms: opts.downtime_ms,
        },
        None => e,
    }
}

/// Sends Hello and checks the answer: nothing moves until the destination accepts.
fn handshake(s: &mut Sender, hello: &mut Hello, opts: &MigrateOptions) -> Result<(), SessionError> {
    hello.version = PROTOCOL_VERSION;
    hello.encodings = Encoding::ALL.iter().map(|e| e.name().to_string()).collect();
    hello.migration_id = opts.migration_id.clone();
    hello.verify = opts.verify;
    let sent_hello = Instant::now();
    s.wire.out.json(FrameType::Hello, &*hello)?;
    s.wire.flush()?;
    s.wait_reply()?;
    let reply = s.expect_reply(FrameType::HelloAck, "HelloAck")?;
    if sent_hello.elapsed() < LAN_RTT {
        s.wire.link.set_prior(Some(LAN_PRIOR));
    }
    let ack: HelloAck = reply.json()?;
    if !ack.ok {
        return Err(SessionError::Refused(ack.error));
    }
    let offered = |e: Encoding| ack.encodings.iter().any(|n| n == e.name());
    match opts.compression.fixed() {
        Some(e) if !offered(e) => Err(SessionError::Refused(format!(
            "destination cannot decode {} pages",
            e.name()
        ))),
        None if !(offered(Encoding::Raw) && offered(Encoding::Delta)) => Err(
            SessionError::Refused("destination cannot decode raw and delta pages".into()),
        ),
        _ => Ok(()),
    }
}

/// The fixed part of the predicted downtime (ms): the state, and the verification of
/// `mode` over `final_units` final-pass units (`populated` units in all), computed on the
/// source and checked on the destination on `threads` threads each, plus its records on
/// the wire.
fn fixed_ms(
    mode: VerifyMode,
    final_units: f64,
    populated: u64,
    sample: u64,
    rates: &Rates,
    link: Option<f64>,
) -> f64 {
    // Units crc'd on each end, and the bytes their verification puts on the wire.
    let (listed, wire_bytes) = match mode {
        VerifyMode::Off => (0.0, 0.0),
        VerifyMode::Sampled => (
            final_units + sample.min(populated) as f64,
            protocol::SAMPLED_VERIFY_LEN as f64,
        ),
        VerifyMode::Full => (populated as f64, populated as f64 * VERIFY_RECORD as f64),
    };
    let threads = verify::default_threads() as f64;
    let compute_ms = 2.0 * listed * rates.crc_s_per_unit / threads * 1e3;
    let wire_ms = link
        .filter(|l| *l > 0.0)
        .map(|l| wire_bytes / l * 1e3)
        .unwrap_or(0.0);
    STATE_ALLOWANCE_MS + compute_ms + wire_ms
}

fn precopy<S: UnitSource + Sync, G: Guest>(
    s: &mut Sender,
    source: &mut S,
    guest: &mut G,
    opts: &MigrateOptions,
    hello: &Hello,
    t0: Instant,
) -> Result<MigrationSummary, SessionError> {
    let mut rounds: Vec<RoundSummary> = Vec::new();
    let mut dirty = UnitSet::new(source.count());
    let mut rates = Rates {
        s_per_unit: None,
        wire_per_unit: PAGE_SIZE as f64,
        crc_s_per_unit: 1e-6,
    };
    let mut decision = Convergence::new(
        opts.downtime_ms,
        Duration::from_secs(opts.timeout_s),
        opts.auto_converge,
    );
    let sample = opts.verify_sample();

    // Round 0: every unit holding data; the rest is never read.
    source.track()?;
    let mut populated = UnitSet::new(source.count());
    source.populated(&mut populated)?;
    let populated_count = populated.count();
    if opts.verify != VerifyMode::Off {
        rates.crc_s_per_unit = crc_cost(source, &populated);
    }
    let (st, mut ms) = s.round(source, &populated, true, 0, &mut rates)?;
    rounds.push(st.summary(0, ms, populated_count, 0.0, 0));
    drop(populated);

    // Dirty rounds until the final pass fits the downtime target.
    let mut round = 1u32;
    let mut throttle_pct = 0;
    let predicted = loop {
        s.stop.check()?;
        dirty.clear();
        let collect = Instant::now();
        source.dirty(&mut dirty, false)?;
        let collect_s = collect.elapsed().as_secs_f64();
        union_into(&mut dirty, &s.peek.collected);
        s.peek.collected.clear();
        s.skip.exclude(&mut dirty);
        let n = dirty.count();
        s.progress.dirty = n;
        let dirty_rate = n as f64 / (ms / 1e3).max(1e-6);
        guest.dirty_rate(dirty_rate);
        let link = s.wire.link.rate();
        let mut measured = Measured {
            dirty: n,
            dirty_rate,
            collect_s: collect_s + PAUSE_ALLOWANCE_S,
            sender_s_per_unit: rates.s_per_unit,
            wire_per_unit: rates.wire_per_unit,
            link_bytes_per_s: link,
            fixed_ms: 0.0,
            elapsed: t0.elapsed(),
        };
        measured.fixed_ms = fixed_ms(
            opts.verify,
            measured.final_units(),
            populated_count,
            sample,
            &rates,
            link,
        );
        let d = decision.decide(&measured);
        s.progress.best_ms = decision.best_ms();
        if let Some(last) = rounds.last_mut() {
            last.predicted_downtime_ms = decision.last_ms();
        }
        tracing::debug!(
            round,
            dirty = n,
            dirty_rate,
            last_round_ms = ms,
            sender_us_per_unit = rates.s_per_unit.map(|c| c * 1e6),
            wire_per_unit = rates.wire_per_unit,
            link_bytes_per_s = link,
            predicted_ms = decision.last_ms(),
            best_ms = decision.best_ms(),
            "round measured"
        );
        match d {
            Decision::Switchover => break decision.last_ms(),
            Decision::GiveUp { best_ms } => {
                return Err(SessionError::Timeout {
                    secs: opts.timeout_s,
                    rounds: rounds.len(),
                    wire_mib: s.wire.sent() as f64 / 1048576.0,
                    dirty: n,
                    best_ms,
                    target_ms: opts.downtime_ms,
                })
            }
            Decision::Continue { throttle_pct: pct } => {
                if pct != throttle_pct {
                    guest.throttle(pct);
                    throttle_pct = pct;
                }
            }
        }
        let (st, round_ms) = s.round(source, &dirty, false, round, &mut rates)?;
        ms = round_ms;
        rounds.push(st.summary(round, ms, n, dirty_rate, throttle_pct));
        round += 1;
    };

    // Switchover: pause, final pass, state. Downtime starts when the guest is asked to stop.
    let t_pause = Instant::now();
    let ms_since = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    guest.pause();
    let paused_ms = ms_since(t_pause);
    s.wire.out.frame(FrameType::Switchover, &[])?;
    // `dirty` still holds the units collected when the loop decided to switch over: add
    // what was written since, and send the union.
    source.dirty(&mut dirty, true)?;
    s.skip.exclude(&mut dirty);
    let n = dirty.count();
    let collected_ms = ms_since(t_pause);
    let skip_final = s.skip.round == Some(round);
    // Sampled verification's final-pass records are computed as the pass reads its units.
    let mut final_records = Vec::new();
    let record = (opts.verify == VerifyMode::Sampled).then_some(&mut final_records);
    let st = s.send_pass(source, &dirty, false, false, skip_final, record)?;
    // Push the final units out now: the destination applies them while the state is saved.
    s.wire.flush()?;
    let sent_ms = ms_since(t_pause);
    let state = guest.state().map_err(SessionError::Capture)?;
    // Packed: the state crosses the link while the guest is paused on both ends.
    let packed = zstd::bulk::compress(&state, DEFAULT_ZSTD_LEVEL)
        .map_err(|e| SessionError::Capture(Box::new(e)))?;
    s.wire.out.frame(FrameType::State, &packed)?;
    // Out now: the destination restores it while verification is computed here.
    s.wire.flush()?;
    let state_ms = ms_since(t_pause);
    let t_verify = Instant::now();
    let listed = s.send_verify(source, opts.verify, &dirty, sample, final_records)?;
    let verify_ms = ms_since(t_verify);
    s.wire.flush()?;
    // The last moment to stop: after Complete the destination may commit.
    s.stop.check()?;
    s.wire.out.get_mut().patience = Patience::For(REPLY_TIMEOUT);
    let confirm = confirm(s)?;
    tracing::debug!(
        paused_ms,
        collected_ms,
        sent_ms,
        state_ms,
        verify_ms,
        confirmed_ms = ms_since(t_pause),
        pages = n,
        "switchover"
    );
    let expected = (opts.verify != VerifyMode::Off).then_some(listed);
    if confirm.verified_pages != expected {
        // The destination has committed: this is worth a warning, never a resume here.
        tracing::warn!(
            listed = ?expected,
            checked = ?confirm.verified_pages,
            "the destination checked another number of verification records than the source listed"
        );
    }
    let downtime = t_pause.elapsed().as_secs_f64() * 1e3;
    rounds.push(st.summary(round, downtime, n, 0.0, throttle_pct));
    let codec = s.pool.totals();
    let mut saved = BTreeMap::new();
    for e in Encoding::ALL {
        let ms = codec.mode(e);
        if ms.batches > 0 {
            saved.insert(e.name().to_string(), ms.bytes_saved());
        }
    }
    Ok(MigrationSummary {
        ok: true,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        downtime_ms: downtime,
        dest_downtime_ms: confirm.downtime_ms,
        rounds: rounds.len() as u32,
        zero_pages: s.zero_units,
        wire_bytes: s.wire.sent(),
        memory_bytes: hello.memory,
        disk_bytes: hello.copied_disks.iter().sum(),
        throttle_pct: decision.throttle_pct(),
        verified: confirm.verified_pages.is_some(),
        verify_mode: opts.verify,
        // Both ends: the source computing, the destination checking.
        verify_ms: verify_ms + confirm.verify_ms,
        predicted_downtime_ms: predicted,
        verified_pages: confirm.verified_pages.unwrap_or(0),
        cache_hit_rate: codec.cache_hit_rate(),
        encoder_cpu_ms: codec.cpu_ns as f64 / 1e6,
        codec,
        bytes_saved: saved,
        round_details: rounds,
    })
}

/// Sends `Complete` and reads the destination's answer. A refusal (Abort, or a Confirm
/// that is not ok) means the destination will not run the guest: a normal error. No answer
/// at all (write or read error, end of stream, timeout, garbage) is
/// [`SessionError::InDoubt`]: the destination may have committed.
fn confirm(s: &mut Sender) -> Result<Confirm, SessionError> {
    let in_doubt = |e: &dyn std::fmt::Display| SessionError::InDoubt(e.to_string());
    s.wire
        .out
        .frame(FrameType::Complete, &[])
        .map_err(|e| in_doubt(&e))?;
    s.socket
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| in_doubt(&e))?;
    let reply = match s.expect_reply(FrameType::Confirm, "Confirm") {
        Ok(f) => f,
        Err(e @ SessionError::Aborted(_)) => return Err(e),
        Err(e) => return Err(in_doubt(&e)),
    };
    let confirm: Confirm = reply.json().map_err(|e| in_doubt(&e))?;
    if !confirm.ok {
        return Err(SessionError::Refused(confirm.error));
    }
    Ok(confirm)
}
