//! The source side of precopy live migration: handshake, full pass over the pages the guest
//! touched, dirty passes until the estimated final pass fits the downtime target (throttling
//! the vCPUs if asked), then pause, final pass, state, optional verification, and the
//! destination's confirmation. Any failure before that confirmation resumes the guest here.

use super::encoding::{BatchEncoder, EncoderConfig, Encoding, MAX_BATCH_PAGES, PAGE_SIZE};
use super::options::{parse_tcp, MigrateOptions, MigrationSummary, RoundSummary};
use super::protocol::{
    self, Abort, Confirm, FrameType, Hello, HelloAck, RoundEnd, PROTOCOL_VERSION,
};
use super::MigrationError;
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

/// The stream and page machinery of one outgoing migration.
struct Sender<'a> {
    m: &'a Machine,
    out: Paced<BufWriter<TcpStream>>,
    input: BufReader<TcpStream>,
    encoder: BatchEncoder,
    batch: Vec<[u8; PAGE_SIZE]>,
    pfns: Vec<u64>,
    frame: Vec<u8>,
    zero_pages: u64,
}

struct PassStats {
    pages: u64,
    zero: u64,
    bytes: u64,
}

impl Sender<'_> {
    fn flush_batch(&mut self, encoding: Encoding) -> Result<(), MigrationError> {
        if self.pfns.is_empty() {
            return Ok(());
        }
        let pages: Vec<(u64, &[u8; PAGE_SIZE])> =
            self.pfns.iter().copied().zip(self.batch.iter()).collect();
        self.encoder
            .encode_into(encoding, &pages, &mut self.frame)?;
        protocol::write_frame(&mut self.out, FrameType::Pages, &self.frame)?;
        self.pfns.clear();
        Ok(())
    }

    /// Sends the pages set in `pages`; zero pages are skipped when `skip_zero` (the
    /// destination starts zeroed), else sent as zero markers. With `rearm`, each window of
    /// pages is re-protected in KVM just before it is read (manual-protect mode).
    fn send_pass(
        &mut self,
        pages: &PageBitmap,
        encoding: Encoding,
        skip_zero: bool,
        rearm: bool,
    ) -> Result<PassStats, MigrationError> {
        let before = self.out.sent;
        let mut st = PassStats {
            pages: 0,
            zero: 0,
            bytes: 0,
        };
        let limit = BATCH_PAGES.min(MAX_BATCH_PAGES);
        if self.batch.len() < limit {
            self.batch.resize(limit, [0u8; PAGE_SIZE]);
        }
        let mut armed_to = 0usize; // bitmap words re-protected so far (manual-protect mode)
        for pfn in pages.iter() {
            let word = (pfn / 64) as usize;
            if rearm && word >= armed_to {
                let end = (word + dirty::REARM_WORDS).min(pages.words.len());
                dirty::rearm(self.m, word, &pages.words[word..end])?;
                armed_to = end;
            }
            let slot = self.pfns.len();
            let buf = &mut self.batch[slot];
            self.m
                .mem
                .read_slice(buf, GuestAddress(pfn * PAGE_SIZE as u64))?;
            if is_zero_page(buf) {
                st.zero += 1;
                if skip_zero {
                    continue;
                }
            }
            self.pfns.push(pfn);
            st.pages += 1;
            if self.pfns.len() == limit {
                self.flush_batch(encoding)?;
            }
        }
        self.flush_batch(encoding)?;
        self.zero_pages += st.zero;
        st.bytes = self.out.sent - before;
        Ok(st)
    }

    /// Ends a round and waits until the destination has applied it.
    fn end_round(&mut self, round: u32) -> Result<(), MigrationError> {
        protocol::write_json(&mut self.out, FrameType::RoundEnd, &RoundEnd { round })?;
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
        self.out.flush()?;
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

/// Chooses the encoding of the next round for `auto`: compression pays only when the link is
/// slower than the encoder can fill it.
fn auto_encoding(link_bytes_per_s: Option<f64>) -> Encoding {
    match link_bytes_per_s {
        // Faster than ~1.5 GB/s (loopback, fast LAN): raw pages cost less than encoding them.
        Some(bw) if bw > 1.5e9 => Encoding::Raw,
        _ => Encoding::Delta,
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
    let encoder = BatchEncoder::new(EncoderConfig {
        cache_bytes,
        ..EncoderConfig::default()
    })?;
    let mut s = Sender {
        m,
        out: Paced::new(BufWriter::with_capacity(1 << 20, stream), opts.bandwidth),
        input,
        encoder,
        batch: Vec::new(),
        pfns: Vec::new(),
        frame: Vec::new(),
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
    protocol::write_json(&mut s.out, FrameType::Hello, &hello)?;
    let reply = s.expect_reply(FrameType::HelloAck, "HelloAck")?;
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
                &mut s.out,
                FrameType::Abort,
                &Abort {
                    reason: e.to_string(),
                },
            );
            let _ = s.out.flush();
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
    let mut link_rate: Option<f64> = None; // bytes/s
    let mut page_rate: Option<f64> = None; // pages/s sent
    let pick = |link: Option<f64>| {
        opts.compression
            .fixed()
            .unwrap_or_else(|| auto_encoding(link))
    };

    // Round 0: every page the guest (or loader) ever touched; untouched memory is never read.
    let touched = dirty::touched_pages(m);
    let mut round_start = Instant::now();
    let enc = pick(opts.bandwidth.map(|b| b as f64));
    let st = s.send_pass(&touched, enc, true, false)?;
    s.end_round(0)?;
    let mut elapsed = round_start.elapsed().as_secs_f64();
    rounds.push(RoundSummary {
        round: 0,
        encoding: enc,
        pages: st.pages,
        zero_pages: st.zero,
        bytes: st.bytes,
        ms: elapsed * 1e3,
        dirty_pages: touched.count(),
        ..Default::default()
    });
    if elapsed > 0.0 && st.pages > 0 {
        link_rate = Some(st.bytes as f64 / elapsed);
        page_rate = Some((st.pages + st.zero) as f64 / elapsed);
    }

    // Dirty rounds while the final pass would exceed the downtime target.
    let mut round = 1u32;
    let mut best = u64::MAX;
    let mut stuck = 0u32;
    loop {
        dirty.clear();
        tracker.collect_deferred(&mut dirty)?;
        let n = dirty.count();
        let dirty_rate = n as f64 / elapsed.max(1e-6);
        let est_ms = match page_rate {
            Some(r) if r > 0.0 => n as f64 / r * 1e3,
            _ => n as f64 * PAGE_SIZE as f64 / 1e9 * 1e3,
        };
        if est_ms <= opts.downtime_ms as f64 || n == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(opts.timeout_s) {
            match throttle {
                // Auto-converge: force the switchover once throttling is at its maximum.
                Some(t) if t.get() >= 99 => break,
                Some(_) => {}
                None => return Err(MigrationError::Timeout(opts.timeout_s)),
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
            return Err(MigrationError::Timeout(opts.timeout_s));
        }
        round_start = Instant::now();
        let enc = pick(link_rate);
        let st = s.send_pass(&dirty, enc, false, true)?;
        s.end_round(round)?;
        elapsed = round_start.elapsed().as_secs_f64();
        if elapsed > 0.0 && st.pages > 0 {
            link_rate = Some(st.bytes as f64 / elapsed);
            page_rate = Some(st.pages as f64 / elapsed);
        }
        rounds.push(RoundSummary {
            round,
            encoding: enc,
            pages: st.pages,
            zero_pages: st.zero,
            bytes: st.bytes,
            ms: elapsed * 1e3,
            dirty_pages: n,
            dirty_rate,
            throttle_pct: throttle.map(|t| t.get()).unwrap_or(0),
        });
        round += 1;
    }

    // Switchover: pause, final pass, state.
    let throttle_pct = throttle.map(|t| t.get()).unwrap_or(0);
    if let Some(t) = throttle {
        t.halt();
    }
    m.pause_all();
    let t_pause = Instant::now();
    protocol::write_frame(&mut s.out, FrameType::Switchover, &[])?;
    // `dirty` still holds the pages collected when the loop decided to switch over: add what
    // was written since, and send the union.
    tracker.collect_into(&mut dirty)?;
    let n = dirty.count();
    let enc = pick(link_rate);
    let st = s.send_pass(&dirty, enc, false, false)?;
    let state = crate::state::save(m, devices_state())?;
    protocol::write_frame(&mut s.out, FrameType::State, &crate::state::encode(&state)?)?;
    if opts.verify {
        send_verify(s, m)?;
    }
    protocol::write_frame(&mut s.out, FrameType::Complete, &[])?;
    let reply = s.expect_reply(FrameType::Confirm, "Confirm")?;
    let confirm: Confirm = reply.json()?;
    if !confirm.ok {
        return Err(MigrationError::Refused(confirm.error));
    }
    let downtime = t_pause.elapsed().as_secs_f64() * 1e3;
    rounds.push(RoundSummary {
        round,
        encoding: enc,
        pages: st.pages,
        zero_pages: st.zero,
        bytes: st.bytes,
        ms: downtime,
        dirty_pages: n,
        dirty_rate: 0.0,
        throttle_pct,
    });
    let _ = tracker.stop();
    let codec = *s.encoder.totals();
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
        wire_bytes: s.out.sent,
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
                &mut s.out,
                FrameType::Verify,
                &protocol::encode_verify(&records),
            )?;
            records.clear();
        }
    }
    protocol::write_frame(
        &mut s.out,
        FrameType::Verify,
        &protocol::encode_verify(&records),
    )?;
    Ok(())
}
