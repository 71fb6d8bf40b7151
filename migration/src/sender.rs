//! The source side of precopy over a [`UnitSource`]: handshake, a full pass over the units
//! holding data, dirty passes until the [`Convergence`] decision switches over (throttling
//! the guest if asked), then pause, final pass, state, optional verification, and the
//! destination's confirmation. The caller resumes its guest on any error.
//!
//! Units are read into the batches of the encoder threads ([`crate::encoder_pool`]) and
//! written as the threads finish them. The final pass is estimated from the sender's
//! measured unit rate and the link's measured rate ([`crate::link`]), whichever is slower;
//! the link's propagation delay is not counted (no downtime target can buy it down), so
//! over a long link the source's downtime (pause to confirmation) exceeds the target by
//! about one round trip, while the destination's stays near it.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use novacron_vmm_api::migration::{MigrateOptions, MigrationSummary, RoundSummary, VerifyMode};

use crate::auto::AutoSelector;
use crate::convergence::{Convergence, Decision, Measured};
use crate::encoder_pool::{Choice, Encoded, EncoderPool};
use crate::link::{LinkMeter, LAN_PRIOR, LAN_RTT};
use crate::protocol::{
    self, Abort, Confirm, Frame, FrameReader, FrameType, FrameWriter, Hello, HelloAck,
    ProtocolError, RoundEnd, PROTOCOL_VERSION,
};
use crate::session::{Cancel, HookError, SessionError};
use crate::unit::{SourceId, UnitSet, UnitSource};
use crate::{is_zero_page, EncoderConfig, Encoding, DEFAULT_ZSTD_LEVEL, PAGE_SIZE};

/// Units per batch frame.
const BATCH_UNITS: usize = 1024;

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

/// A writer that counts bytes and paces them to a rate with a token bucket.
struct Paced<W: Write> {
    inner: W,
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
    sent: u64,
}

impl<W: Write> Paced<W> {
    fn new(inner: W, rate: Option<u64>) -> Self {
        Paced {
            inner,
            rate,
            tokens: 0.0,
            last: Instant::now(),
            sent: 0,
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(64 << 10);
        if let Some(rate) = self.rate {
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
                let wait = (n as f64 - self.tokens) / rate as f64;
                self.inner.flush()?;
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.05)));
            }
            self.tokens -= n as f64;
        }
        let w = self.inner.write(&buf[..n])?;
        self.sent += w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// How batches are encoded: fixed by `--compression`, or chosen per batch by `auto`.
enum Mode {
    Fixed(Choice),
    Auto(AutoSelector),
}

/// The outgoing stream: paced writer, encoding choice, link meter and units per encoding.
struct Wire {
    out: FrameWriter<Paced<BufWriter<TcpStream>>>,
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
        }
    }
}

/// Sender throughput and wire cost per unit as the last precopy round measured them, for
/// estimating the final pass.
struct Rates {
    /// Units/s from the start of a pass to its last byte written (the destination's
    /// acknowledgement not included).
    units_per_s: Option<f64>,
    /// Wire bytes per unit sent.
    wire_per_unit: f64,
}

/// The stream and unit machinery of one outgoing migration.
struct Sender {
    wire: Wire,
    input: FrameReader<BufReader<TcpStream>>,
    pool: EncoderPool,
    zero_units: u64,
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
        let st = self.send_pass(source, units, first, !first)?;
        self.wire.flush()?;
        let send_s = start.elapsed().as_secs_f64();
        self.end_round(round)?;
        // Round 0 reads zero units too (and skips them): they count towards its rate.
        let read = if first { st.units + st.zero } else { st.units };
        if send_s > 0.0 && st.units > 0 {
            rates.units_per_s = Some(read as f64 / send_s);
            rates.wire_per_unit = st.bytes as f64 / st.units as f64;
        }
        Ok((st, start.elapsed().as_secs_f64() * 1e3))
    }

    /// Sends the units set in `units`; zero units are skipped when `skip_zero` (the
    /// destination starts zeroed), else sent as zero markers. With `prepare`, the source
    /// prepares each window of units just before it is read (e.g. re-arms write
    /// protection). Units are read straight into the batch of their encoder shard; finished
    /// batches are written as they come back, so reading, encoding and sending overlap.
    fn send_pass<S: UnitSource>(
        &mut self,
        source: &mut S,
        units: &UnitSet,
        skip_zero: bool,
        prepare: bool,
    ) -> Result<PassStats, SessionError> {
        let Sender {
            wire,
            pool,
            zero_units,
            ..
        } = self;
        let id = source.id();
        let before = wire.out.get_ref().sent;
        wire.pass_units = [0; Encoding::ALL.len()];
        let (mut sent, mut zero) = (0u64, 0u64);
        let mut prepared_to = 0usize; // bitmap words prepared so far
        for n in units.iter() {
            let word = (n / 64) as usize;
            if prepare && word >= prepared_to {
                prepared_to = source.prepare(units, word)?.max(word + 1);
            }
            let shard = pool.shard_of(n);
            let buf = pool.slot(shard);
            source.read(n, buf)?;
            if is_zero_page(buf) {
                zero += 1;
                if skip_zero {
                    continue;
                }
            }
            sent += 1;
            if pool.keep(shard, n) {
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
            bytes: wire.out.get_ref().sent - before,
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
        self.expect_reply(FrameType::RoundAck, "RoundAck")
            .map(|_| ())
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

    /// Sends (unit, crc32) for every non-zero unit of the final (paused) source; returns
    /// how many it listed.
    fn send_verify<S: UnitSource>(&mut self, source: &mut S) -> Result<u64, SessionError> {
        let mut populated = UnitSet::new(source.count());
        source.populated(&mut populated)?;
        let mut records = Vec::with_capacity(4096);
        let mut listed = 0u64;
        let mut buf = [0u8; PAGE_SIZE];
        let id = source.id();
        for n in populated.iter() {
            source.read(n, &mut buf)?;
            if !is_zero_page(&buf) {
                records.push((n, crc32fast::hash(&buf)));
                listed += 1;
            }
            if records.len() == 1 << 20 {
                let payload = protocol::encode_verify(&records);
                self.wire
                    .out
                    .source_frame(FrameType::Verify, id, &payload)?;
                records.clear();
            }
        }
        let payload = protocol::encode_verify(&records);
        self.wire
            .out
            .source_frame(FrameType::Verify, id, &payload)?;
        Ok(listed)
    }
}

/// Migrates the units of `source` over `stream` (connected to the destination), announcing
/// the guest with `hello` (its `version` and `encodings` are filled in here). On success
/// the destination runs the guest; on error the caller resumes its own (the destination
/// has been told, best effort).
pub fn migrate<S: UnitSource, G: Guest>(
    stream: TcpStream,
    mut hello: Hello,
    opts: &MigrateOptions,
    source: &mut S,
    guest: &mut G,
    cancel: &Cancel,
) -> Result<MigrationSummary, SessionError> {
    let _ = cancel; // checked between batches (issue 11: sender helper)
    let t0 = Instant::now();
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(ProtocolError::Io)?;
    let input = FrameReader::new(BufReader::new(
        stream.try_clone().map_err(ProtocolError::Io)?,
    ));
    let memory = hello.memory;
    let cache_bytes = match (opts.compression.fixed(), opts.cache_bytes) {
        (Some(Encoding::Raw), _) | (Some(Encoding::Zstd), _) => 0,
        (_, 0) => (memory / 2).clamp(16 << 20, 2 << 30) as usize,
        (_, n) => n as usize,
    };
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
    )?;
    let mode = match opts.compression.fixed() {
        Some(encoding) => Mode::Fixed(Choice {
            encoding,
            level: DEFAULT_ZSTD_LEVEL,
        }),
        None => Mode::Auto(AutoSelector::new(threads as usize)),
    };
    let mut s = Sender {
        wire: Wire {
            out: FrameWriter::new(Paced::new(
                BufWriter::with_capacity(1 << 20, stream),
                opts.bandwidth,
            )),
            mode,
            link: LinkMeter::new(opts.bandwidth),
            pass_units: [0; Encoding::ALL.len()],
        },
        input,
        pool,
        zero_units: 0,
    };
    let result = handshake(&mut s, &mut hello, opts)
        .and_then(|()| precopy(&mut s, source, guest, opts, &hello, t0));
    if let Err(e) = &result {
        if !matches!(e, SessionError::Aborted(_) | SessionError::Refused(_)) {
            // Tell the destination (best effort).
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

/// Sends Hello and checks the answer: nothing moves until the destination accepts.
fn handshake(s: &mut Sender, hello: &mut Hello, opts: &MigrateOptions) -> Result<(), SessionError> {
    hello.version = PROTOCOL_VERSION;
    hello.encodings = Encoding::ALL.iter().map(|e| e.name().to_string()).collect();
    hello.migration_id = opts.migration_id.clone();
    hello.verify = opts.verify;
    let sent_hello = Instant::now();
    s.wire.out.json(FrameType::Hello, &*hello)?;
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

fn precopy<S: UnitSource, G: Guest>(
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
        units_per_s: None,
        wire_per_unit: PAGE_SIZE as f64,
    };
    let mut decision = Convergence::new(
        opts.downtime_ms,
        Duration::from_secs(opts.timeout_s),
        opts.auto_converge,
    );

    // Round 0: every unit holding data; the rest is never read.
    source.track()?;
    let mut populated = UnitSet::new(source.count());
    source.populated(&mut populated)?;
    let (st, mut ms) = s.round(source, &populated, true, 0, &mut rates)?;
    rounds.push(st.summary(0, ms, populated.count(), 0.0, 0));
    drop(populated);

    // Dirty rounds until the final pass fits the downtime target.
    let mut round = 1u32;
    let mut throttle_pct = 0;
    loop {
        dirty.clear();
        source.dirty(&mut dirty, false)?;
        let n = dirty.count();
        let dirty_rate = n as f64 / (ms / 1e3).max(1e-6);
        guest.dirty_rate(dirty_rate);
        let measured = Measured {
            dirty: n,
            sender_units_per_s: rates.units_per_s,
            wire_per_unit: rates.wire_per_unit,
            link_bytes_per_s: s.wire.link.rate(),
            elapsed: t0.elapsed(),
        };
        match decision.decide(&measured) {
            Decision::Switchover => break,
            Decision::GiveUp => {
                return Err(SessionError::Timeout {
                    secs: opts.timeout_s,
                    rounds: rounds.len(),
                    wire_mib: s.wire.out.get_ref().sent as f64 / 1048576.0,
                    dirty: n,
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
    }

    // Switchover: pause, final pass, state. Downtime starts when the guest is asked to stop.
    let t_pause = Instant::now();
    let ms_since = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    guest.pause();
    let paused_ms = ms_since(t_pause);
    s.wire.out.frame(FrameType::Switchover, &[])?;
    // `dirty` still holds the units collected when the loop decided to switch over: add
    // what was written since, and send the union.
    source.dirty(&mut dirty, true)?;
    let n = dirty.count();
    let collected_ms = ms_since(t_pause);
    let st = s.send_pass(source, &dirty, false, false)?;
    // Push the final units out now: the destination applies them while the state is saved.
    s.wire.flush()?;
    let sent_ms = ms_since(t_pause);
    let state = guest.state().map_err(SessionError::Capture)?;
    s.wire.out.frame(FrameType::State, &state)?;
    let state_ms = ms_since(t_pause);
    let listed = if opts.verify != VerifyMode::Off {
        Some(s.send_verify(source)?)
    } else {
        None
    };
    s.wire.out.frame(FrameType::Complete, &[])?;
    let reply = s.expect_reply(FrameType::Confirm, "Confirm")?;
    tracing::debug!(
        paused_ms,
        collected_ms,
        sent_ms,
        state_ms,
        confirmed_ms = ms_since(t_pause),
        pages = n,
        "switchover"
    );
    let confirm: Confirm = reply.json()?;
    if !confirm.ok {
        return Err(SessionError::Refused(confirm.error));
    }
    if confirm.verified_pages != listed {
        return Err(SessionError::Verify(format!(
            "the source listed {listed:?} pages for verification, the destination checked {:?}",
            confirm.verified_pages
        )));
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
        wire_bytes: s.wire.out.get_ref().sent,
        memory_bytes: hello.memory,
        throttle_pct: decision.throttle_pct(),
        verified: confirm.verified_pages.is_some(),
        verify_mode: opts.verify,
        verify_ms: 0.0,
        predicted_downtime_ms: 0.0,
        verified_pages: confirm.verified_pages.unwrap_or(0),
        cache_hit_rate: codec.cache_hit_rate(),
        encoder_cpu_ms: codec.cpu_ns as f64 / 1e6,
        codec,
        bytes_saved: saved,
        round_details: rounds,
    })
}
