//! Parallel page encoding for the migration source.
//!
//! One thread per shard, each owning a [`BatchEncoder`] built from
//! [`EncoderConfig::sharded`] (its own slice of the sent-page cache and its own zstd context:
//! no lock on the hot path). The sender reads each page straight into a buffer of the batch
//! its shard is filling ([`EncoderPool::slot`]), hands full batches to the shard's thread
//! ([`EncoderPool::submit`]), and writes finished batches as they come back. Each shard's
//! batches come back in the order they were submitted, so the destination applies them in
//! that order; batches of different shards may interleave (see the ordering contract in
//! [`crate`]). Buffers go back to their shard and are reused, so a pass allocates
//! nothing once every shard has cycled its buffers.
//!
//! Even with one thread the pool pipelines: the shard's thread encodes while the sender
//! reads guest memory and writes the previous batch to the socket. With zero threads it
//! encodes in the caller's thread as each batch is submitted: for raw batches, which cost
//! little more than the copy that fills them, a hand-off to another thread costs more than
//! it saves.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{
    channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError,
};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::batch::{Encoding, MAX_BATCH_PAGES};
use crate::encoder::{BatchEncoder, EncoderConfig};
use crate::error::CodecError;
use crate::shard::shard_of;
use crate::stats::{BatchStats, CodecStats};
use crate::PAGE_SIZE;

/// Jobs queued per shard beyond the one its thread is encoding.
const QUEUE_DEPTH: usize = 1;

/// Errors of the encoder pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Bad pool parameters.
    #[error("invalid encoder pool: {0}")]
    Config(&'static str),
    /// An encoder thread could not be started.
    #[error("cannot start encoder thread {shard}: {source}")]
    Spawn {
        /// The shard.
        shard: usize,
        /// Error from the OS.
        source: std::io::Error,
    },
    /// An encoder thread is gone (it panicked or its channel closed).
    #[error("encoder thread {0} stopped unexpectedly")]
    WorkerGone(usize),
    /// Encoding a batch failed.
    #[error("encoder thread {shard}: {source}")]
    Codec {
        /// The shard.
        shard: usize,
        /// What failed.
        source: CodecError,
    },
}

/// How a batch is to be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The batch encoding.
    pub encoding: Encoding,
    /// zstd level for `Zstd` and `Delta`.
    pub level: i32,
}

/// A batch's pages and buffers, cycled between the sender and a shard's thread.
struct Batch {
    pfns: Vec<u64>,
    pages: Vec<[u8; PAGE_SIZE]>,
    frame: Vec<u8>,
    /// Pages of this shard to protect in the sent-page cache once the batch is encoded
    /// (see [`EncoderPool::protect`]).
    protect: Vec<u64>,
}

impl Batch {
    fn new(capacity: usize) -> Self {
        Batch {
            pfns: Vec::with_capacity(capacity),
            pages: vec![[0u8; PAGE_SIZE]; capacity],
            frame: Vec::new(),
            protect: Vec::new(),
        }
    }
}

struct Job {
    choice: Choice,
    batch: Batch,
}

/// A batch a shard's thread has finished.
struct Done {
    shard: usize,
    result: Result<BatchStats, CodecError>,
    batch: Batch,
    totals: CodecStats,
}

/// A finished batch, ready to be written as one `Pages` frame.
pub struct Encoded<'a> {
    /// The encoded batch.
    pub frame: &'a [u8],
    /// Its statistics.
    pub stats: BatchStats,
}

struct Shard {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The encoder of a pool without threads.
    inline: Option<BatchEncoder>,
    filling: Batch,
    spare: Vec<Batch>,
    totals: CodecStats,
    in_flight: usize,
}

/// N encoder threads, one per shard of the page space.
pub struct EncoderPool {
    shards: Vec<Shard>,
    results: Receiver<Done>,
    batch_pages: usize,
    in_flight: usize,
}

impl EncoderPool {
    /// Starts `threads` encoder threads sharing `config`'s cache budget (0: one shard,
    /// encoded in the caller's thread); batches hold up to `batch_pages` pages.
    pub fn new(config: EncoderConfig, threads: u32, batch_pages: usize) -> Result<Self, PoolError> {
        if batch_pages == 0 || batch_pages > MAX_BATCH_PAGES {
            return Err(PoolError::Config("batch size must be 1..=4096 pages"));
        }
        let (done_tx, results) = channel();
        if threads == 0 {
            let encoder = BatchEncoder::new(config)
                .map_err(|source| PoolError::Codec { shard: 0, source })?;
            return Ok(EncoderPool {
                shards: vec![Shard {
                    tx: None,
                    thread: None,
                    inline: Some(encoder),
                    filling: Batch::new(batch_pages),
                    spare: Vec::new(),
                    totals: CodecStats::default(),
                    in_flight: 0,
                }],
                results,
                batch_pages,
                in_flight: 0,
            });
        }
        let mut shards = Vec::with_capacity(threads as usize);
        for (index, cfg) in config.sharded(threads).into_iter().enumerate() {
            let encoder = BatchEncoder::new(cfg).map_err(|source| PoolError::Codec {
                shard: index,
                source,
            })?;
            let (tx, rx) = sync_channel(QUEUE_DEPTH);
            let done = done_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("encoder-{index}"))
                .spawn(move || {
                    crate::threads::started(crate::threads::ThreadRole::Encoder);
                    worker(index, encoder, rx, done)
                })
                .map_err(|source| PoolError::Spawn {
                    shard: index,
                    source,
                })?;
            shards.push(Shard {
                tx: Some(tx),
                thread: Some(thread),
                inline: None,
                filling: Batch::new(batch_pages),
                spare: Vec::new(),
                totals: CodecStats::default(),
                in_flight: 0,
            });
        }
        Ok(EncoderPool {
            shards,
            results,
            batch_pages,
            in_flight: 0,
        })
    }

    /// The shard that owns `pfn`.
    pub fn shard_of(&self, pfn: u64) -> usize {
        shard_of(pfn, self.shards.len() as u32) as usize
    }

    /// The buffer the next page of `shard` goes into. Read the page into it, then
    /// [`EncoderPool::keep`] it, or leave it to be overwritten by the next page.
    pub fn slot(&mut self, shard: usize) -> &mut [u8; PAGE_SIZE] {
        let b = &mut self.shards[shard].filling;
        let at = b.pfns.len();
        &mut b.pages[at]
    }

    /// Asks the sent-page cache of `pfn`'s shard to protect `pfn` (it was re-dirtied: see
    /// [`crate::page_cache`]). Applied after the shard's next batch is encoded, so a page
    /// kept in a batch still in flight is protected once it is cached.
    pub fn protect(&mut self, pfn: u64) {
        let shard = self.shard_of(pfn);
        self.shards[shard].filling.protect.push(pfn);
    }

    /// Keeps the page just read into `slot(shard)` as page `pfn`; true when the shard's
    /// batch is full and must be submitted.
    pub fn keep(&mut self, shard: usize, pfn: u64) -> bool {
        let b = &mut self.shards[shard].filling;
        b.pfns.push(pfn);
        b.pfns.len() == self.batch_pages
    }

    /// Hands the batch `shard` is filling to its thread (nothing if it is empty). While the
    /// shard's queue is full, finished batches are passed to `sink` to make progress.
    pub fn submit<E: From<PoolError>>(
        &mut self,
        shard: usize,
        choice: Choice,
        sink: &mut impl FnMut(Encoded<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.shards[shard].filling.pfns.is_empty() {
            return Ok(());
        }
        let Shard {
            inline,
            filling,
            totals,
            ..
        } = &mut self.shards[shard];
        if let Some(encoder) = inline.as_mut() {
            let Batch {
                pfns,
                pages,
                frame,
                protect,
            } = filling;
            let r = encode(encoder, choice, pfns, pages, frame, protect);
            *totals = *encoder.totals();
            let stats = r.map_err(|source| PoolError::Codec { shard, source })?;
            let out = sink(Encoded { frame, stats });
            pfns.clear();
            return out;
        }
        let next = match self.shards[shard].spare.pop() {
            Some(b) => b,
            None => Batch::new(self.batch_pages),
        };
        let batch = std::mem::replace(&mut self.shards[shard].filling, next);
        let mut job = Job { choice, batch };
        loop {
            let tx = self.shards[shard]
                .tx
                .as_ref()
                .ok_or(PoolError::WorkerGone(shard))?;
            match tx.try_send(job) {
                Ok(()) => {
                    self.in_flight += 1;
                    self.shards[shard].in_flight += 1;
                    return Ok(());
                }
                Err(TrySendError::Full(j)) => {
                    job = j;
                    self.finish_one(sink)?;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(PoolError::WorkerGone(shard).into());
                }
            }
        }
    }

    /// Passes every batch that has already finished to `sink`, without waiting.
    pub fn poll<E: From<PoolError>>(
        &mut self,
        sink: &mut impl FnMut(Encoded<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Ok(done) = self.results.try_recv() {
            self.complete(done, sink)?;
        }
        Ok(())
    }

    /// Submits every partly filled batch with `choice` and waits for all batches, passing
    /// each to `sink`. Afterwards every page kept so far has been through `sink`.
    pub fn drain<E: From<PoolError>>(
        &mut self,
        choice: Choice,
        sink: &mut impl FnMut(Encoded<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for shard in 0..self.shards.len() {
            self.submit(shard, choice, sink)?;
        }
        while self.in_flight > 0 {
            self.finish_one(sink)?;
        }
        Ok(())
    }

    /// Statistics of all shards' encoders, as of the last finished batch of each.
    pub fn totals(&self) -> CodecStats {
        let mut t = CodecStats::default();
        for s in &self.shards {
            t.merge(&s.totals);
        }
        t
    }

    fn finish_one<E: From<PoolError>>(
        &mut self,
        sink: &mut impl FnMut(Encoded<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let done = loop {
            match self.results.recv_timeout(Duration::from_millis(100)) {
                Ok(done) => break done,
                Err(RecvTimeoutError::Timeout) => {
                    // A thread that exited with batches queued will never report them.
                    if let Some(gone) = self.shards.iter().position(|s| {
                        s.in_flight > 0 && s.thread.as_ref().is_none_or(|t| t.is_finished())
                    }) {
                        // Whatever it sent before exiting is reported first.
                        if let Ok(done) = self.results.try_recv() {
                            break done;
                        }
                        return Err(PoolError::WorkerGone(gone).into());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(PoolError::WorkerGone(0).into());
                }
            }
        };
        self.complete(done, sink)
    }

    fn complete<E: From<PoolError>>(
        &mut self,
        done: Done,
        sink: &mut impl FnMut(Encoded<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let Done {
            shard,
            result,
            mut batch,
            totals,
        } = done;
        self.in_flight -= 1;
        self.shards[shard].in_flight -= 1;
        let stats = match result {
            Ok(stats) => stats,
            Err(source) => {
                // The thread stops after a failed batch; later submits must not queue to it.
                self.shards[shard].tx = None;
                return Err(PoolError::Codec { shard, source }.into());
            }
        };
        self.shards[shard].totals = totals;
        let r = sink(Encoded {
            frame: &batch.frame,
            stats,
        });
        batch.pfns.clear();
        self.shards[shard].spare.push(batch);
        r
    }
}

impl Drop for EncoderPool {
    fn drop(&mut self) {
        for s in &mut self.shards {
            s.tx = None;
        }
        // Unblock threads waiting to report: drain what is left.
        while self.results.try_recv().is_ok() {}
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Encodes the batch `pfns`/`pages` into `frame` as `choice` says.
fn encode(
    encoder: &mut BatchEncoder,
    choice: Choice,
    pfns: &[u64],
    pages: &[[u8; PAGE_SIZE]],
    frame: &mut Vec<u8>,
    protect: &mut Vec<u64>,
) -> Result<BatchStats, CodecError> {
    if choice.encoding != Encoding::Raw && encoder.config().zstd_level != choice.level {
        encoder.set_zstd_level(choice.level)?;
    }
    let refs: Vec<(u64, &[u8; PAGE_SIZE])> = pfns.iter().copied().zip(pages.iter()).collect();
    let r = encoder.encode_into(choice.encoding, &refs, frame);
    encoder.protect_pages(protect);
    protect.clear();
    r
}

/// A shard's thread: encodes its jobs in order and reports each one.
fn worker(shard: usize, mut encoder: BatchEncoder, jobs: Receiver<Job>, done: Sender<Done>) {
    while let Ok(Job { choice, mut batch }) = jobs.recv() {
        let Batch {
            pfns,
            pages,
            frame,
            protect,
        } = &mut batch;
        let run = catch_unwind(AssertUnwindSafe(|| {
            encode(&mut encoder, choice, pfns, pages, frame, protect)
        }));
        let (result, stop) = match run {
            Ok(r) => {
                let stop = r.is_err();
                (r, stop)
            }
            Err(_) => (Err(CodecError::Poisoned), true),
        };
        let totals = *encoder.totals();
        if done
            .send(Done {
                shard,
                result,
                batch,
                totals,
            })
            .is_err()
            || stop
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::BatchDecoder;

    fn page(seed: u64, version: u8) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(seed * 1000 + i as u64 / 16).to_le_bytes());
        }
        p[(seed as usize * 7) % PAGE_SIZE] = version;
        p
    }

    /// Encodes passes over `n` pages with `threads` shards and applies the frames in the
    /// order the pool produced them: the destination must end up identical.
    fn round_trip(threads: u32, encoding: Encoding) {
        let n = 3000u64;
        let mut dest = vec![[0u8; PAGE_SIZE]; n as usize];
        let cfg = EncoderConfig {
            cache_bytes: 64 << 20,
            ..EncoderConfig::default()
        };
        let mut pool = EncoderPool::new(cfg, threads, 100).expect("pool");
        let choice = Choice { encoding, level: 1 };
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for version in 1..=3u8 {
            let mut sink = |e: Encoded<'_>| -> Result<(), PoolError> {
                frames.push(e.frame.to_vec());
                Ok(())
            };
            // Second and third pass rewrite every third page.
            for pfn in (0..n).filter(|p| version == 1 || p % 3 == 0) {
                let shard = pool.shard_of(pfn);
                *pool.slot(shard) = page(pfn, version);
                if pool.keep(shard, pfn) {
                    pool.submit(shard, choice, &mut sink).expect("submit");
                }
                pool.poll(&mut sink).expect("poll");
            }
            pool.drain(choice, &mut sink).expect("drain");
            for f in frames.drain(..) {
                BatchDecoder::new()
                    .and_then(|mut d| d.decode(&f, &mut dest[..]))
                    .expect("decode");
            }
            for pfn in 0..n {
                let want = if version == 1 || pfn % 3 == 0 {
                    page(pfn, version)
                } else {
                    page(pfn, 1)
                };
                assert_eq!(dest[pfn as usize], want, "page {pfn} after pass {version}");
            }
        }
        let t = pool.totals();
        assert_eq!(t.total().pages, 3000 + 2 * 1000);
        if encoding == Encoding::Delta {
            assert_eq!(t.kinds.delta, 2000, "every rewritten page goes as a delta");
        }
    }

    #[test]
    fn sharded_delta_round_trips() {
        round_trip(3, Encoding::Delta);
    }

    #[test]
    fn single_thread_raw_and_zstd_round_trip() {
        round_trip(1, Encoding::Raw);
        round_trip(2, Encoding::Zstd);
    }

    #[test]
    fn inline_pool_round_trips() {
        round_trip(0, Encoding::Raw);
        round_trip(0, Encoding::Delta);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let cfg = EncoderConfig::default();
        assert!(matches!(
            EncoderPool::new(cfg, 1, 0),
            Err(PoolError::Config(_))
        ));
        assert!(matches!(
            EncoderPool::new(cfg, 1, MAX_BATCH_PAGES + 1),
            Err(PoolError::Config(_))
        ));
    }

    #[test]
    fn codec_error_is_reported_with_its_shard() {
        let mut pool = EncoderPool::new(EncoderConfig::default(), 2, 4).expect("pool");
        // Page 64 belongs to shard 1: shard 0's encoder refuses the batch.
        *pool.slot(0) = page(1, 1);
        pool.keep(0, 64);
        let choice = Choice {
            encoding: Encoding::Zstd,
            level: 1,
        };
        let mut sink = |_: Encoded<'_>| -> Result<(), PoolError> { Ok(()) };
        let r = pool.drain(choice, &mut sink);
        assert!(
            matches!(r, Err(PoolError::Codec { shard: 0, .. })),
            "{:?}",
            r.err()
        );
        // The failed shard's thread has stopped: the pool says so instead of hanging.
        *pool.slot(0) = page(2, 1);
        pool.keep(0, 2);
        let r = pool.drain(choice, &mut sink);
        assert!(matches!(r, Err(PoolError::WorkerGone(0))), "{:?}", r.err());
    }
}
