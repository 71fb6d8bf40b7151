//! The source side of precopy live migration: handshake, full pass over the pages the guest
//! touched, dirty passes until the estimated final pass fits the downtime target (throttling
//! the vCPUs if asked), then pause, final pass, state, optional verification, and the
//! destination's confirmation. Any failure before that confirmation resumes the guest here.
//!
//! Pages are read into the batches of the encoder threads ([`super::encoder_pool`]) and
//! written as the threads finish them. The final pass is estimated from the sender's
//! measured page rate and the link's measured rate ([`super::link`]), whichever is slower;
//! the link's propagation delay is not counted (no downtime target can buy it down), so
//! over a long link the source's downtime (pause to confirmation) exceeds the target by
//! about one round trip, while the destination's stays near it.

use super::options::{parse_tcp, MigrateOptions, MigrationSummary, RoundSummary};
use super::MigrationError;
use novacron_migration::auto::AutoSelector;
use novacron_migration::encoder_pool::{Choice, Encoded, EncoderPool};
use novacron_migration::link::{LinkMeter, LAN_PRIOR, LAN_RTT};
use novacron_migration::protocol::{
    self, Abort, Confirm, FrameType, Hello, HelloAck, RoundEnd, PROTOCOL_VERSION,
};
use novacron_migration::{EncoderConfig, Encoding, DEFAULT_ZSTD_LEVEL, PAGE_SIZE};
use crate::dirty::{self, DirtyTracker, PageBitmap};
use crate::kvm::cpuid;
use crate::machine::Machine;
use crate::memory::is_zero_page;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// Pages per batch frame.
const BATCH_PAGES: usize = 1024;
/// Rounds after which a non-converging migration counts as stuck.
const STUCK_ROUNDS: u32 = 30;

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

/// Pauses the vCPUs for a share of every 20 ms slice while precopy does not converge.
struct Throttle {
    pct: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Throttle {
    fn new(m: &Arc<Machine>) -> Self {
        let pct = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, ctl) = (pct.clone(), stop.clone(), m.control().clone());
        let thread = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || {
                let slice = Duration::from_millis(20);
                while !s.load(Ordering::SeqCst) {
                    let share = p.load(Ordering::SeqCst).min(99);
                    if share == 0 {
                        std::thread::sleep(slice);
                        continue;
                    }
                    ctl.pause();
                    std::thread::sleep(slice * share / 100);
                    ctl.resume();
                    std::thread::sleep(slice * (100 - share) / 100);
                }
            })
            .ok();
        Throttle {
            pct,
            stop,
            thread: std::sync::Mutex::new(thread),
        }
    }

    fn set(&self, pct: u32) {
        self.pct.store(pct, Ordering::SeqCst);
    }

    fn get(&self) -> u32 {
        self.pct.load(Ordering::SeqCst)
    }

    /// Stops the throttle thread (leaving the vCPUs resumed) and waits for it.
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// How batches are encoded: fixed by `--compression`, or chosen per batch by `auto`.
enum Mode {
    Fixed(Choice),
    Auto(AutoSelector),
}

/// The outgoing stream: paced writer, encoding choice, link meter and pages per encoding.
struct Wire {
    out: Paced<BufWriter<TcpStream>>,
    mode: Mode,
    link: LinkMeter,
    /// Pages sent per encoding in the current pass (indexed by `Encoding as usize`).
    pass_pages: [u64; Encoding::ALL.len()],
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
    fn write_batch(&mut self, e: Encoded<'_>) -> Result<(), MigrationError> {
        let t = Instant::now();
        let before = self.out.sent;
        protocol::write_frame(&mut self.out, FrameType::Pages, e.frame)?;
        self.link.observe(self.out.sent - before, t.elapsed());
        if let Mode::Auto(a) = &mut self.mode {
            a.observe_batch(&e.stats);
        }
        self.pass_pages[e.stats.encoding as usize] += e.stats.pages;
        Ok(())
    }

    /// Flushes the stream; the time it blocks counts as link time.
    fn flush(&mut self) -> Result<(), MigrationError> {
        let t = Instant::now();
        self.out.flush().map_err(protocol::ProtocolError::Io)?;
        self.link.observe(0, t.elapsed());
        Ok(())
    }
}

/// The stream and page machinery of one outgoing migration.
struct Sender<'a> {
    m: &'a Machine,
    wire: Wire,
    input: BufReader<TcpStream>,
    pool: EncoderPool,
    zero_pages: u64,
}

struct PassStats {
    pages: u64,
    zero: u64,
    bytes: u64,
    /// The encoding that carried most of the pass's pages.
    encoding: Encoding,
    /// Pages per encoding name.
    by_encoding: std::collections::BTreeMap<String, u64>,
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
            pages: self.pages,
            zero_pages: self.zero,
            bytes: self.bytes,
            ms,
            dirty_pages,
            dirty_rate,
            throttle_pct,
        }
    }
}

/// Sender throughput and wire cost per page as the last precopy round measured them, for
/// estimating the final pass.
struct Rates {
    /// Pages/s from the start of a pass to its last byte written (the destination's
    /// acknowledgement not included).
    pages_per_s: Option<f64>,
    /// Wire bytes per page sent.
    wire_per_page: f64,
}

impl Sender<'_> {
    /// One precopy round: the pass (see [`Sender::send_pass`]), then `RoundEnd` and the
    /// destination's acknowledgement. Returns the pass and its duration (ms); updates `rates`.
    fn round(
        &mut self,
        pages: &PageBitmap,
        first: bool,
        round: u32,
        rates: &mut Rates,
    ) -> Result<(PassStats, f64), MigrationError> {
        let start = Instant::now();
        let st = self.send_pass(pages, first, !first)?;
        self.wire.flush()?;
        let send_s = start.elapsed().as_secs_f64();
        self.end_round(round)?;
        // Round 0 reads zero pages too (and skips them): they count towards its rate.
        let read = if first { st.pages + st.zero } else { st.pages };
        if send_s > 0.0 && st.pages > 0 {
            rates.pages_per_s = Some(read as f64 / send_s);
            rates.wire_per_page = st.bytes as f64 / st.pages as f64;
        }
        Ok((st, start.elapsed().as_secs_f64() * 1e3))
    }

    /// Sends the pages set in `pages`; zero pages are skipped when `skip_zero` (the
    /// destination starts zeroed), else sent as zero markers. With `rearm`, each window of
    /// pages is re-protected in KVM just before it is read (manual-protect mode). Pages are
    /// read straight into the batch of their encoder shard; finished batches are written
    /// as they come back, so reading, encoding and sending overlap.
    fn send_pass(
        &mut self,
        pages: &PageBitmap,
        skip_zero: bool,
        rearm: bool,
    ) -> Result<PassStats, MigrationError> {
        let Sender {
            m,
            wire,
            pool,
            zero_pages,
            ..
        } = self;
        let before = wire.out.sent;
        wire.pass_pages = [0; Encoding::ALL.len()];
        let (mut sent, mut zero) = (0u64, 0u64);
        let mut armed_to = 0usize; // bitmap words re-protected so far (manual-protect mode)
        for pfn in pages.iter() {
            let word = (pfn / 64) as usize;
            if rearm && word >= armed_to {
                let end = (word + dirty::REARM_WORDS).min(pages.words.len());
                dirty::rearm(m, word, &pages.words[word..end])?;
                armed_to = end;
            }
            let shard = pool.shard_of(pfn);
            let buf = pool.slot(shard);
            m.mem
                .read_slice(buf, GuestAddress(pfn * PAGE_SIZE as u64))?;
            if is_zero_page(buf) {
                zero += 1;
                if skip_zero {
                    continue;
                }
            }
            sent += 1;
            if pool.keep(shard, pfn) {
                let choice = wire.choose();
                pool.submit(shard, choice, &mut |e| wire.write_batch(e))?;
                pool.poll(&mut |e| wire.write_batch(e))?;
            }
        }
        let choice = wire.choose();
        pool.drain(choice, &mut |e| wire.write_batch(e))?;
        *zero_pages += zero;
        let mut by_encoding = std::collections::BTreeMap::new();
        let mut encoding = choice.encoding;
        for e in Encoding::ALL {
            let n = wire.pass_pages[e as usize];
            if n > 0 {
                by_encoding.insert(e.name().to_string(), n);
            }
            if n > wire.pass_pages[encoding as usize] {
                encoding = e;
            }
        }
        Ok(PassStats {
            pages: sent,
            zero,
            bytes: wire.out.sent - before,
            encoding,
            by_encoding,
        })
    }

    /// Ends a round and waits until the destination has applied it.
    fn end_round(&mut self, round: u32) -> Result<(), MigrationError> {
        protocol::write_json(&mut self.wire.out, FrameType::RoundEnd, &RoundEnd { round })?;
        self.wire.flush()?;
        self.expect_reply(FrameType::RoundAck, "RoundAck")
            .map(|_| ())
    }

    /// Reads the destination's next frame and checks it is of `kind`.
    fn expect_reply(
        &mut self,
        kind: FrameType,
        want: &'static str,
    ) -> Result<protocol::Frame, MigrationError> {
        let f = self.read_reply()?;
        if f.kind != kind {
            return Err(protocol::ProtocolError::Unexpected { got: f.kind, want }.into());
        }
        Ok(f)
    }

    fn read_reply(&mut self) -> Result<protocol::Frame, MigrationError> {
        self.wire.out.flush()?;
        let f = protocol::read_frame(&mut self.input)?;
        if f.kind == FrameType::Abort {
            let a: Abort = f.json()?;
            return Err(MigrationError::Aborted(a.reason));
        }
        Ok(f)
    }
}

fn connect(opts: &MigrateOptions) -> Result<TcpStream, MigrationError> {
    let addr = parse_tcp(&opts.to)?;
    // The destination may still be starting: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(MigrationError::Connect {
                    addr: opts.to.clone(),
                    source,
                })
            }
        }
    }
}

/// Migrates `m` to `opts.to`. On success the destination runs the guest and the caller must
/// end this VM; on error the guest keeps running here.
pub fn migrate(
    m: &Arc<Machine>,
    opts: &MigrateOptions,
    devices_state: &dyn Fn() -> serde_json::Value,
) -> Result<MigrationSummary, MigrationError> {
    let t0 = Instant::now();
    let stream = connect(opts)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(protocol::ProtocolError::Io)?;
    let input = BufReader::new(stream.try_clone().map_err(protocol::ProtocolError::Io)?);
    let cache_bytes = match (opts.compression.fixed(), opts.cache_bytes) {
        (Some(Encoding::Raw), _) | (Some(Encoding::Zstd), _) => 0,
        (_, 0) => (m.config.memory / 2).clamp(16 << 20, 2 << 30) as usize,
        (_, n) => n as usize,
    };
    let threads = opts
        .encoder_threads()
        .map_err(|e| MigrationError::Options(e.to_string()))?;
    let pool = EncoderPool::new(
        EncoderConfig {
            cache_bytes,
            ..EncoderConfig::default()
        },
        threads,
        BATCH_PAGES,
    )?;
    let mode = match opts.compression.fixed() {
        Some(encoding) => Mode::Fixed(Choice {
            encoding,
            level: DEFAULT_ZSTD_LEVEL,
        }),
        None => Mode::Auto(AutoSelector::new(threads as usize)),
    };
    let mut s = Sender {
        m,
        wire: Wire {
            out: Paced::new(BufWriter::with_capacity(1 << 20, stream), opts.bandwidth),
            mode,
            link: LinkMeter::new(opts.bandwidth),
            pass_pages: [0; Encoding::ALL.len()],
        },
        input,
        pool,
        zero_pages: 0,
    };

    // Handshake: nothing moves until the destination accepts.
    let hello = Hello {
        version: PROTOCOL_VERSION,
        memory: m.config.memory,
        vcpus: m.config.vcpus,
        cpuid: cpuid::feature_words(&m.cpuid),
        disks: m.config.disks.len(),
        nets: m.config.nets.len(),
        encodings: Encoding::ALL.iter().map(|e| e.name().to_string()).collect(),
    };
    let sent_hello = Instant::now();
    protocol::write_json(&mut s.wire.out, FrameType::Hello, &hello)?;
    let reply = s.expect_reply(FrameType::HelloAck, "HelloAck")?;
    if sent_hello.elapsed() < LAN_RTT {
        s.wire.link.set_prior(Some(LAN_PRIOR));
    }
    let ack: HelloAck = reply.json()?;
    if !ack.ok {
        return Err(MigrationError::Refused(ack.error));
    }
    let offered = |e: Encoding| ack.encodings.iter().any(|n| n == e.name());
    match opts.compression.fixed() {
        Some(e) if !offered(e) => {
            return Err(MigrationError::Refused(format!(
                "destination cannot decode {} pages",
                e.name()
            )))
        }
        None if !(offered(Encoding::Raw) && offered(Encoding::Delta)) => {
            return Err(MigrationError::Refused(
                "destination cannot decode raw and delta pages".into(),
            ))
        }
        _ => {}
    }

    crate::state::prepare(m);
    let tracker = DirtyTracker::start(m)?;
    let throttle = if opts.auto_converge {
        Some(Throttle::new(m))
    } else {
        None
    };
    let result = precopy(
        &mut s,
        m,
        opts,
        tracker,
        throttle.as_ref(),
        t0,
        devices_state,
    );
    let max_throttle = throttle.as_ref().map(|t| t.get()).unwrap_or(0);
    if let Some(t) = throttle {
        t.halt();
    }
    match result {
        Ok(mut summary) => {
            summary.throttle_pct = summary.throttle_pct.max(max_throttle);
            Ok(summary)
        }
        Err(e) => {
            // Tell the destination (best effort) and keep the guest running here.
            let _ = protocol::write_json(
                &mut s.wire.out,
                FrameType::Abort,
                &Abort {
                    reason: e.to_string(),
                },
            );
            let _ = s.wire.out.flush();
            m.vm.set_dirty_logging(false).ok();
            m.resume_all();
            Err(e)
        }
    }
}

fn precopy(
    s: &mut Sender<'_>,
    m: &Arc<Machine>,
    opts: &MigrateOptions,
    mut tracker: DirtyTracker<'_>,
    throttle: Option<&Throttle>,
    t0: Instant,
    devices_state: &dyn Fn() -> serde_json::Value,
) -> Result<MigrationSummary, MigrationError> {
    let mut rounds: Vec<RoundSummary> = Vec::new();
    let mut dirty = PageBitmap::new(dirty::frame_count(m));
    let mut rates = Rates {
        pages_per_s: None,
        wire_per_page: PAGE_SIZE as f64,
    };

    // Round 0: every page the guest (or loader) ever touched; untouched memory is never read.
    let touched = dirty::touched_pages(m);
    let (st, mut ms) = s.round(&touched, true, 0, &mut rates)?;
    rounds.push(st.summary(0, ms, touched.count(), 0.0, 0));

    // Dirty rounds while the final pass would exceed the downtime target.
    let mut round = 1u32;
    let mut best = u64::MAX;
    let mut stuck = 0u32;
    loop {
        dirty.clear();
        tracker.collect_deferred(&mut dirty)?;
        let n = dirty.count();
        let dirty_rate = n as f64 / (ms / 1e3).max(1e-6);
        m.dirty_pages_per_sec
            .store(dirty_rate as u64, std::sync::atomic::Ordering::Relaxed);
        // The final pass takes as long as the sender needs for n pages, or the link for
        // their bytes, whichever is longer (the link's propagation delay is not downtime
        // the target can buy down, and is not counted).
        let sender_ms = match rates.pages_per_s {
            Some(r) if r > 0.0 => n as f64 / r * 1e3,
            _ => n as f64 * PAGE_SIZE as f64 / 1e9 * 1e3,
        };
        let link_ms = s
            .wire
            .link
            .rate()
            .map(|l| n as f64 * rates.wire_per_page / l * 1e3)
            .unwrap_or(0.0);
        let est_ms = sender_ms.max(link_ms);
        if est_ms <= opts.downtime_ms as f64 || n == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(opts.timeout_s) {
            match throttle {
                // Auto-converge: force the switchover once throttling is at its maximum.
                Some(t) if t.get() >= 99 => break,
                Some(_) => {}
                None => return Err(timeout(opts, &rounds, s, n)),
            }
        }
        if n < best {
            best = n;
            stuck = 0;
        } else {
            stuck += 1;
        }
        if let Some(t) = throttle {
            // Not converging: each round without progress throttles harder.
            if stuck > 0 || round > 4 {
                let next = if t.get() == 0 {
                    20
                } else {
                    (t.get() + 10).min(99)
                };
                t.set(next);
            }
        } else if stuck > STUCK_ROUNDS && t0.elapsed() > Duration::from_secs(opts.timeout_s) {
            return Err(timeout(opts, &rounds, s, n));
        }
        let (st, round_ms) = s.round(&dirty, false, round, &mut rates)?;
        ms = round_ms;
        let throttle_pct = throttle.map(|t| t.get()).unwrap_or(0);
        rounds.push(st.summary(round, ms, n, dirty_rate, throttle_pct));
        round += 1;
    }

    // Switchover: pause, final pass, state.
    let throttle_pct = throttle.map(|t| t.get()).unwrap_or(0);
    if let Some(t) = throttle {
        t.halt();
    }
    // Downtime starts when the first vCPU is asked to stop.
    let t_pause = Instant::now();
    let ms_since = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    m.pause_all();
    let paused_ms = ms_since(t_pause);
    protocol::write_frame(&mut s.wire.out, FrameType::Switchover, &[])?;
    // `dirty` still holds the pages collected when the loop decided to switch over: add what
    // was written since, and send the union.
    tracker.collect_into(&mut dirty)?;
    let n = dirty.count();
    let collected_ms = ms_since(t_pause);
    let st = s.send_pass(&dirty, false, false)?;
    // Push the final pages out now: the destination applies them while the state is saved.
    s.wire.flush()?;
    let sent_ms = ms_since(t_pause);
    let state = crate::state::save(m, devices_state())?;
    protocol::write_frame(
        &mut s.wire.out,
        FrameType::State,
        &crate::state::encode(&state)?,
    )?;
    let state_ms = ms_since(t_pause);
    if opts.verify {
        send_verify(s, m)?;
    }
    protocol::write_frame(&mut s.wire.out, FrameType::Complete, &[])?;
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
        return Err(MigrationError::Refused(confirm.error));
    }
    let downtime = t_pause.elapsed().as_secs_f64() * 1e3;
    rounds.push(st.summary(round, downtime, n, 0.0, throttle_pct));
    let _ = tracker.stop();
    let codec = s.pool.totals();
    let mut saved = std::collections::BTreeMap::new();
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
        zero_pages: s.zero_pages,
        wire_bytes: s.wire.out.sent,
        memory_bytes: m.config.memory,
        throttle_pct,
        verified: opts.verify,
        cache_hit_rate: codec.cache_hit_rate(),
        encoder_cpu_ms: codec.cpu_ns as f64 / 1e6,
        codec,
        bytes_saved: saved,
        round_details: rounds,
    })
}

fn timeout(
    opts: &MigrateOptions,
    rounds: &[RoundSummary],
    s: &Sender<'_>,
    dirty: u64,
) -> MigrationError {
    MigrationError::Timeout {
        secs: opts.timeout_s,
        rounds: rounds.len(),
        wire_mib: s.wire.out.sent as f64 / 1048576.0,
        dirty,
    }
}

/// Sends (pfn, crc32) for every non-zero page of the final (paused) memory.
fn send_verify(s: &mut Sender<'_>, m: &Machine) -> Result<(), MigrationError> {
    let touched = dirty::touched_pages(m);
    let mut records = Vec::with_capacity(4096);
    let mut buf = [0u8; PAGE_SIZE];
    for pfn in touched.iter() {
        m.mem
            .read_slice(&mut buf, GuestAddress(pfn * PAGE_SIZE as u64))?;
        if !is_zero_page(&buf) {
            records.push((pfn, crc32fast::hash(&buf)));
        }
        if records.len() == 1 << 20 {
            protocol::write_frame(
                &mut s.wire.out,
                FrameType::Verify,
                &protocol::encode_verify(&records),
            )?;
            records.clear();
        }
    }
    protocol::write_frame(
        &mut s.wire.out,
        FrameType::Verify,
        &protocol::encode_verify(&records),
    )?;
    Ok(())
}
