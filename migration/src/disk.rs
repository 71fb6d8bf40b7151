//! Disks as a migration source and sink: a raw disk file is a run of `PAGE_SIZE` units
//! (the last one may be short; it is read zero-padded and written truncated), its writes are
//! tracked in a [`DirtyBlocks`] bitmap that the disk device marks after every write, and its
//! first pass reads only the allocated extents (`SEEK_DATA`/`SEEK_HOLE`), so a sparse disk
//! costs what it holds. [`DiskSet`] lays one or more disks end to end in one unit space
//! (each starting on a 64-unit boundary, so every disk begins a bitmap word) and is both a
//! [`UnitSource`] (on the source) and a [`UnitSink`] (on the destination, where units of
//! zeros punch holes so the copy stays sparse).
//!
//! Ordering: the device marks a block dirty *after* its write reached the file, and
//! [`UnitSource::dirty`] takes the bits (atomic swap) before the pass reads the blocks, so a
//! write is either read by this pass or marked for the next; the final pass runs with the
//! device quiesced.

use crate::store::PageStore;
use crate::unit::{SourceId, UnitError, UnitSet, UnitSink, UnitSource};
use crate::PAGE_SIZE;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const UNIT: u64 = PAGE_SIZE as u64;

/// Most units a migration stream can address (batch page indices are below 2^32).
pub const MAX_STREAM_UNITS: u64 = 1 << 32;

/// Errors of disk migration set-up.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The disk file cannot be inspected.
    #[error("disk {path}: {source}")]
    Io {
        /// The disk file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A migration target already holds data.
    #[error(
        "disk {path}: an incoming migration copies this disk, but the file already holds \
         {bytes} bytes of data (first at byte {first}); give a blank sparse file of the \
         source's size (e.g. `truncate -s SIZE FILE` on a new file), or mark the disk shared \
         if both hosts reach the same file"
    )]
    NotBlank {
        /// The disk file.
        path: PathBuf,
        /// Non-zero bytes found (at least).
        bytes: u64,
        /// Offset of the first non-zero byte.
        first: u64,
    },
    /// The disks do not fit in one stream.
    #[error("{units} units of memory and disks exceed the {MAX_STREAM_UNITS} a migration stream addresses")]
    TooLarge {
        /// Units asked for.
        units: u64,
    },
}

/// Blocks of one disk written since the last collection: one bit per `PAGE_SIZE` unit,
/// set by the disk device after each write, taken by the migration source.
#[derive(Debug)]
pub struct DirtyBlocks {
    words: Box<[AtomicU64]>,
    units: u64,
}

impl DirtyBlocks {
    /// A clean bitmap for a disk of `bytes` bytes.
    pub fn new(bytes: u64) -> Self {
        let units = bytes.div_ceil(UNIT);
        DirtyBlocks {
            words: (0..units.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            units,
        }
    }

    /// Units tracked.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// Marks the units overlapping bytes `offset..offset + len` (call after the write).
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / UNIT;
        let last = (offset.saturating_add(len) - 1) / UNIT;
        let last = last.min(self.units.saturating_sub(1));
        let mut u = first;
        while u <= last {
            let w = (u / 64) as usize;
            let lo = u % 64;
            let hi = (last - (u - lo)).min(63);
            let bits = if hi - lo == 63 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo + 1)) - 1) << lo
            };
            if let Some(word) = self.words.get(w) {
                word.fetch_or(bits, Ordering::Release);
            }
            u = u - lo + 64;
        }
    }

    /// ORs the marked units into `out` (bit `n` of word `n / 64` is unit `n`) and clears them.
    pub fn take_into(&self, out: &mut [u64]) {
        for (o, w) in out.iter_mut().zip(self.words.iter()) {
            if w.load(Ordering::Relaxed) != 0 {
                *o |= w.swap(0, Ordering::AcqRel);
            }
        }
    }

    /// Forgets every mark.
    pub fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }
}

/// One disk of a [`DiskSet`].
#[derive(Debug)]
pub struct Disk {
    /// The file (read on the source, written on the destination).
    pub file: File,
    /// Where it is, for messages.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its write tracking (sources only).
    pub dirty: Option<Arc<DirtyBlocks>>,
}

impl Disk {
    /// The disk `file` at `path` (its size now); `dirty` for a source.
    pub fn new(
        file: File,
        path: &Path,
        dirty: Option<Arc<DirtyBlocks>>,
    ) -> Result<Self, DiskError> {
        let size = file
            .metadata()
            .map_err(|source| DiskError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            size,
            dirty,
        })
    }

    fn units(&self) -> u64 {
        self.size.div_ceil(UNIT)
    }
}

/// The data extents of `file` (`SEEK_DATA`/`SEEK_HOLE`), as byte ranges, ascending; the
/// whole file if the filesystem cannot tell.
pub fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let Ok(pos) = libc::off_t::try_from(at) else {
            break;
        };
        // SAFETY: lseek on a descriptor owned by `file`, borrowed for the call; it changes
        // only the file offset, which no reader here uses (all I/O is positional).
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // No data after `at`.
                Some(libc::ENXIO) => break,
                // No SEEK_DATA here: everything may hold data.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    out.push((at, size));
                    break;
                }
                _ => return Err(e),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if end <= start {
            break;
        }
        out.push((start, end));
        at = end;
    }
    Ok(out)
}

/// Checks that a migration target holds no data: no allocated extent, or only zeros in
/// those it has.
pub fn check_blank(file: &File, path: &Path) -> Result<(), DiskError> {
    let io = |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut found: Option<(u64, u64)> = None;
    for (start, end) in data_extents(file, size).map_err(io)? {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at).map_err(io)?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                let nz = buf[..n].iter().filter(|&&b| b != 0).count() as u64;
                let (first, bytes) = found.unwrap_or((at + i as u64, 0));
                found = Some((first, bytes + nz));
            }
            at += n as u64;
        }
    }
    match found {
        None => Ok(()),
        Some((first, bytes)) => Err(DiskError::NotBlank {
            path: path.to_path_buf(),
            bytes,
            first,
        }),
    }
}

/// How [`clone_or_sparse_copy`] copied a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyKind {
    /// The destination shares the source's blocks (`FICLONE`).
    Reflink,
    /// Only the data extents were copied; holes stay holes.
    Sparse,
}

/// `FICLONE`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` (open for writing) hold exactly `src`'s content and size: a reflink where
/// the filesystem allows, else a copy of `src`'s data extents into a file of holes.
pub fn clone_or_sparse_copy(src: &File, dst: &File) -> std::io::Result<CopyKind> {
    let size = src.metadata()?.len();
    dst.set_len(0)?;
    // SAFETY: FICLONE on two descriptors owned by `dst` and `src` for the call; it only
    // changes `dst`'s content (or fails, leaving it empty).
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        dst.set_len(size)?;
        return Ok(CopyKind::Reflink);
    }
    dst.set_len(size)?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(src, size)? {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            // Zeros inside an extent stay holes too.
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
    }
    Ok(CopyKind::Sparse)
}

/// Disks laid end to end in one unit space: disk `i` starts at unit `starts[i]`, a
/// multiple of 64. Units between disks are never populated and cannot be read or written.
#[derive(Debug, Default)]
pub struct DiskSet {
    disks: Vec<Disk>,
    starts: Vec<u64>,
    count: u64,
    writeback: Option<Writeback>,
}

/// A thread that makes what a destination received so far durable (fdatasync of every
/// disk) whenever a round ends, so the receive loop never blocks on writeback and the
/// final flush finds little left to do.
#[derive(Debug)]
struct Writeback {
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl Writeback {
    fn start(disks: &[Disk]) -> Option<Writeback> {
        let mut files = Vec::with_capacity(disks.len());
        for d in disks {
            match d.file.try_clone() {
                Ok(f) => files.push((f, d.path.clone())),
                Err(e) => {
                    tracing::warn!("{}: no background writeback: {e}", d.path.display());
                    return None;
                }
            }
        }
        // One pending nudge is enough: a sync that starts later covers earlier writes.
        let (nudge, wait) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("disk-writeback".into())
            .spawn(move || {
                crate::threads::started(crate::threads::ThreadRole::DiskWriteback);
                while wait.recv().is_ok() {
                    for (f, path) in &files {
                        if let Err(e) = f.sync_data() {
                            tracing::warn!("{}: background writeback: {e}", path.display());
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Writeback { nudge }),
            Err(e) => {
                tracing::warn!("no background disk writeback thread: {e}");
                None
            }
        }
    }
}

impl DiskSet {
    /// The disks, in stream order (both ends list the same disks in the same order).
    pub fn new(disks: Vec<Disk>) -> Self {
        let mut starts = Vec::with_capacity(disks.len());
        let mut at = 0u64;
        for d in &disks {
            starts.push(at);
            at = (at + d.units()).next_multiple_of(64);
        }
        DiskSet {
            disks,
            starts,
            count: at,
            writeback: None,
        }
    }

    /// The disks.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// Sizes in bytes, in order.
    pub fn sizes(&self) -> Vec<u64> {
        self.disks.iter().map(|d| d.size).collect()
    }

    /// The disk holding unit `n` and the unit's byte offset in it.
    fn locate(&self, n: u64) -> Option<(&Disk, u64)> {
        let i = self.starts.partition_point(|&s| s <= n).checked_sub(1)?;
        let d = &self.disks[i];
        let u = n - self.starts[i];
        (u < d.units()).then_some((d, u * UNIT))
    }

    fn read_unit(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
        let (d, off) = self
            .locate(n)
            .ok_or_else(|| format!("unit {n} is not on any disk"))?;
        let len = (d.size - off).min(UNIT) as usize;
        d.file
            .read_exact_at(&mut buf[..len], off)
            .map_err(|e| format!("{}: read at byte {off}: {e}", d.path.display()))?;
        buf[len..].fill(0);
        Ok(())
    }

    fn populated_into(&self, set: &mut UnitSet) -> Result<(), UnitError> {
        for (d, &start) in self.disks.iter().zip(&self.starts) {
            let extents = data_extents(&d.file, d.size).map_err(|e| UnitError::Dirty {
                source_id: DISKS,
                reason: format!("{}: cannot list its data extents: {e}", d.path.display()),
            })?;
            for (s, e) in extents {
                for u in s / UNIT..e.div_ceil(UNIT) {
                    set.set(start + u);
                }
            }
        }
        Ok(())
    }

    fn addressable_into(&self, set: &mut UnitSet) {
        for (d, &start) in self.disks.iter().zip(&self.starts) {
            set.fill_range(start, start + d.units());
        }
    }

    /// Asks the writeback thread (started on first use) to make what was written so far
    /// durable; never waits.
    pub fn start_writeback(&mut self) {
        if self.disks.is_empty() {
            return;
        }
        if self.writeback.is_none() {
            self.writeback = Writeback::start(&self.disks);
        }
        if let Some(w) = &self.writeback {
            let _ = w.nudge.try_send(());
        }
    }

    /// Makes every disk's data durable (fdatasync).
    pub fn sync(&self) -> Result<(), String> {
        for d in &self.disks {
            d.file.sync_data().map_err(|e| {
                format!(
                    "{}: cannot make the copied disk durable: {e}",
                    d.path.display()
                )
            })?;
        }
        Ok(())
    }
}

/// The source id disks would have on their own (today they travel joined with memory).
pub const DISKS: SourceId = 1;

impl UnitSource for DiskSet {
    fn id(&self) -> SourceId {
        DISKS
    }

    fn count(&self) -> u64 {
        self.count
    }

    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError> {
        self.populated_into(set)
    }

    fn track(&mut self) -> Result<(), UnitError> {
        for d in &self.disks {
            match &d.dirty {
                Some(b) => b.clear(),
                None => {
                    return Err(UnitError::Dirty {
                        source_id: DISKS,
                        reason: format!(
                            "{}: writes to this disk are not tracked",
                            d.path.display()
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    fn dirty(&mut self, set: &mut UnitSet, _final_pass: bool) -> Result<(), UnitError> {
        let words = set.words_mut();
        for (d, &start) in self.disks.iter().zip(&self.starts) {
            if let Some(b) = &d.dirty {
                let w = (start / 64) as usize;
                if let Some(out) = words.get_mut(w..) {
                    b.take_into(out);
                }
            }
        }
        Ok(())
    }

    fn prepare(&mut self, words: &[u64], _word: usize) -> Result<usize, UnitError> {
        Ok(words.len())
    }

    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        self.read_unit(n, buf).map_err(|reason| UnitError::Read {
            source_id: DISKS,
            unit: n,
            reason,
        })
    }

    fn addressable(&self, set: &mut UnitSet) {
        self.addressable_into(set);
    }
}

impl PageStore for DiskSet {
    fn contains(&self, index: u64) -> bool {
        self.locate(index).is_some()
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self.read_unit(index, buf).is_ok()
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        let Some((d, off)) = self.locate(index) else {
            return false;
        };
        let len = (d.size - off).min(UNIT);
        if crate::is_zero_page(data) {
            let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
                return false;
            };
            // SAFETY: fallocate on a descriptor owned by `d.file`, inside the file
            // (KEEP_SIZE): the range reads as zeros afterwards.
            let r = unsafe {
                libc::fallocate(
                    d.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    o,
                    l,
                )
            };
            if r == 0 {
                return true;
            }
        }
        d.file.write_all_at(&data[..len as usize], off).is_ok()
    }
}

impl UnitSink for DiskSet {
    fn id(&self) -> SourceId {
        DISKS
    }

    fn count(&self) -> u64 {
        self.count
    }

    fn populated(&self, set: &mut UnitSet) {
        // An extent that cannot be listed counts as data (verification then reads it).
        if self.populated_into(set).is_err() {
            for (d, &start) in self.disks.iter().zip(&self.starts) {
                for u in 0..d.units() {
                    set.set(start + u);
                }
            }
        }
    }

    fn addressable(&self, set: &mut UnitSet) {
        self.addressable_into(set);
    }

    fn round_end(&mut self) {
        self.start_writeback();
    }

    fn flush(&mut self) -> Result<(), String> {
        self.sync()
    }
}

/// Two unit sources (or sinks) in one unit space: `first`'s units, then `second`'s from the
/// next multiple of 64 (so each begins a bitmap word). The engine runs one session over
/// both: every encoding, the sender's threads, the convergence model and verification serve
/// memory and disks alike. The stream carries the first part's source id.
#[derive(Debug)]
pub struct Joined<A, B> {
    /// The first part (guest memory).
    pub first: A,
    /// The second part (disks).
    pub second: B,
    offset: u64,
    scratch: UnitSet,
}

impl<A, B> Joined<A, B> {
    fn with_counts(first: A, second: B, a: u64, b: u64) -> Result<Self, DiskError> {
        let offset = a.next_multiple_of(64);
        let units = offset.saturating_add(b);
        if units > MAX_STREAM_UNITS {
            return Err(DiskError::TooLarge { units });
        }
        Ok(Joined {
            first,
            second,
            offset,
            scratch: UnitSet::new(0),
        })
    }

    /// The unit where the second part starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// ORs into `set` the units `a` lists of the first part (of `counts.0` units) and `b`
    /// of the second (of `counts.1`), each at its place in the joined space.
    fn list_both(
        &self,
        set: &mut UnitSet,
        counts: (u64, u64),
        a: impl FnOnce(&A, &mut UnitSet),
        b: impl FnOnce(&B, &mut UnitSet),
    ) {
        let mut part = UnitSet::new(counts.0);
        a(&self.first, &mut part);
        or_at(set, &part, 0);
        let mut part = UnitSet::new(counts.1);
        b(&self.second, &mut part);
        or_at(set, &part, (self.offset / 64) as usize);
    }

    /// Units of `set` (of this joined space) in the second part.
    pub fn second_count(&self, set: &UnitSet) -> u64 {
        let w = (self.offset / 64) as usize;
        set.words()
            .get(w..)
            .map_or(0, |ws| ws.iter().map(|w| u64::from(w.count_ones())).sum())
    }
}

impl<A: UnitSource, B: UnitSource> Joined<A, B> {
    /// Joins two sources; fails if the stream cannot address them.
    pub fn source(first: A, second: B) -> Result<Self, DiskError> {
        let (a, b) = (first.count(), second.count());
        Self::with_counts(first, second, a, b)
    }
}

impl<A: UnitSink, B: UnitSink> Joined<A, B> {
    /// Joins two sinks; fails if the stream cannot address them.
    pub fn sink(first: A, second: B) -> Result<Self, DiskError> {
        let (a, b) = (first.count(), second.count());
        Self::with_counts(first, second, a, b)
    }
}

/// Runs `f` on a scratch set of `n` units, then ORs it into `set`'s words from `word`.
fn via_scratch<E>(
    scratch: &mut UnitSet,
    n: u64,
    set: &mut UnitSet,
    word: usize,
    f: impl FnOnce(&mut UnitSet) -> Result<(), E>,
) -> Result<(), E> {
    if scratch.len() != n {
        *scratch = UnitSet::new(n);
    } else {
        scratch.clear();
    }
    f(scratch)?;
    or_at(set, scratch, word);
    Ok(())
}

impl<A: UnitSource, B: UnitSource> UnitSource for Joined<A, B> {
    fn id(&self) -> SourceId {
        self.first.id()
    }

    fn count(&self) -> u64 {
        self.offset + self.second.count()
    }

    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError> {
        let (a, b, w) = (
            self.first.count(),
            self.second.count(),
            (self.offset / 64) as usize,
        );
        via_scratch(&mut self.scratch, a, set, 0, |s| self.first.populated(s))?;
        via_scratch(&mut self.scratch, b, set, w, |s| self.second.populated(s))
    }

    fn track(&mut self) -> Result<(), UnitError> {
        self.first.track()?;
        self.second.track()
    }

    fn dirty(&mut self, set: &mut UnitSet, final_pass: bool) -> Result<(), UnitError> {
        let (a, b, w) = (
            self.first.count(),
            self.second.count(),
            (self.offset / 64) as usize,
        );
        via_scratch(&mut self.scratch, a, set, 0, |s| {
            self.first.dirty(s, final_pass)
        })?;
        via_scratch(&mut self.scratch, b, set, w, |s| {
            self.second.dirty(s, final_pass)
        })
    }

    fn prepare(&mut self, words: &[u64], word: usize) -> Result<usize, UnitError> {
        let split = ((self.offset / 64) as usize).min(words.len());
        if word < split {
            self.first.prepare(&words[..split], word)
        } else {
            Ok(split + self.second.prepare(&words[split..], word - split)?)
        }
    }

    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        if n < self.offset {
            self.first.read(n, buf)
        } else {
            self.second.read(n - self.offset, buf)
        }
    }

    fn addressable(&self, set: &mut UnitSet) {
        let counts = (self.first.count(), self.second.count());
        self.list_both(
            set,
            counts,
            |a, s| a.addressable(s),
            |b, s| b.addressable(s),
        );
    }
}

/// ORs `part`'s words into `set`'s from word `word`.
fn or_at(set: &mut UnitSet, part: &UnitSet, word: usize) {
    if let Some(out) = set.words_mut().get_mut(word..) {
        for (o, x) in out.iter_mut().zip(part.words()) {
            *o |= x;
        }
    }
}

impl<A: PageStore, B: PageStore> PageStore for Joined<A, B> {
    fn contains(&self, index: u64) -> bool {
        if index < self.offset {
            self.first.contains(index)
        } else {
            self.second.contains(index - self.offset)
        }
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        if index < self.offset {
            self.first.read_page(index, buf)
        } else {
            self.second.read_page(index - self.offset, buf)
        }
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        if index < self.offset {
            self.first.write_page(index, data)
        } else {
            self.second.write_page(index - self.offset, data)
        }
    }
}

impl<A: UnitSink, B: UnitSink> UnitSink for Joined<A, B> {
    fn id(&self) -> SourceId {
        self.first.id()
    }

    fn count(&self) -> u64 {
        self.offset + self.second.count()
    }

    fn populated(&self, set: &mut UnitSet) {
        let counts = (self.first.count(), self.second.count());
        self.list_both(set, counts, |a, s| a.populated(s), |b, s| b.populated(s));
    }

    fn addressable(&self, set: &mut UnitSet) {
        let counts = (self.first.count(), self.second.count());
        self.list_both(
            set,
            counts,
            |a, s| a.addressable(s),
            |b, s| b.addressable(s),
        );
    }

    fn round_end(&mut self) {
        self.first.round_end();
        self.second.round_end();
    }

    fn flush(&mut self) -> Result<(), String> {
        self.first.flush()?;
        self.second.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::MemoryUnits;

    fn temp(name: &str, size: u64) -> (PathBuf, File) {
        let p = std::env::temp_dir().join(format!("novacron-disk-{name}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(size).unwrap();
        (p, f)
    }

    #[test]
    fn dirty_blocks_mark_every_overlapped_unit() {
        let d = DirtyBlocks::new(300 * UNIT + 100);
        assert_eq!(d.units(), 301);
        d.mark(UNIT - 1, 2); // units 0 and 1
        d.mark(63 * UNIT, 70 * UNIT); // 63..=132
        d.mark(300 * UNIT + 50, 10_000); // clipped to the last unit
        d.mark(5 * UNIT, 0); // nothing
        let mut out = vec![0u64; 5];
        d.take_into(&mut out);
        let mut s = UnitSet::new(301);
        s.words_mut().copy_from_slice(&out);
        let want: Vec<u64> = [0, 1].into_iter().chain(63..=132).chain([300]).collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), want);
        let mut again = vec![0u64; 5];
        d.take_into(&mut again);
        assert!(again.iter().all(|&w| w == 0), "taking clears");
    }

    #[test]
    fn disk_set_lists_extents_reads_writes_and_punches_zeros() {
        let (p1, f1) = temp("a", 10 * UNIT + 512);
        let (p2, f2) = temp("b", 64 * UNIT);
        f1.write_all_at(&[7u8; 512], 10 * UNIT).unwrap(); // the short last unit
        f2.write_all_at(&[9u8; 4096], 3 * UNIT).unwrap();
        let d1 = Disk::new(f1, &p1, Some(Arc::new(DirtyBlocks::new(10 * UNIT + 512)))).unwrap();
        let d2 = Disk::new(f2, &p2, None).unwrap();
        let mut set = DiskSet::new(vec![d1, d2]);
        // Disk 1: 11 units, rounded to 64; disk 2 starts at unit 64.
        assert_eq!(UnitSource::count(&set), 128);
        let mut pop = UnitSet::new(128);
        UnitSource::populated(&mut set, &mut pop).unwrap();
        assert!(
            pop.get(10) && pop.get(64 + 3),
            "{:?}",
            pop.iter().collect::<Vec<_>>()
        );
        assert!(!pop.get(64 + 20));
        let mut buf = [0u8; PAGE_SIZE];
        UnitSource::read(&set, 10, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 7) && buf[512..].iter().all(|&b| b == 0));
        assert!(
            UnitSource::read(&set, 20, &mut buf).is_err(),
            "between disks"
        );
        assert!(!PageStore::contains(&set, 11) && PageStore::contains(&set, 64));
        // Writes: the short unit is truncated, zeros punch a hole.
        assert!(set.write_page(10, &[1u8; PAGE_SIZE]));
        assert_eq!(std::fs::metadata(&p1).unwrap().len(), 10 * UNIT + 512);
        assert!(set.write_page(64 + 3, &[0u8; PAGE_SIZE]));
        assert!(set.read_page(64 + 3, &mut buf) && buf.iter().all(|&b| b == 0));
        assert!(!set.write_page(30, &[1u8; PAGE_SIZE]));
        let mut after = UnitSet::new(128);
        UnitSink::populated(&set, &mut after);
        assert!(!after.get(64 + 3), "the zeroed unit is a hole again");
        let _ = std::fs::remove_file(p1);
        let _ = std::fs::remove_file(p2);
    }

    #[test]
    fn blank_check_accepts_holes_and_zeros_and_names_data() {
        let (p, f) = temp("blank", 64 * UNIT);
        check_blank(&f, &p).unwrap();
        f.write_all_at(&[0u8; 8192], 5 * UNIT).unwrap();
        check_blank(&f, &p).unwrap();
        f.write_all_at(b"data", 9 * UNIT + 3).unwrap();
        match check_blank(&f, &p) {
            Err(DiskError::NotBlank { first, bytes, .. }) => {
                assert_eq!((first, bytes), (9 * UNIT + 3, 4));
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn joined_maps_both_parts_into_one_unit_space() {
        let mut mem = MemoryUnits::new(0, 70);
        mem.store(69, &[3u8; PAGE_SIZE]);
        let (p, f) = temp("joined", 8 * UNIT);
        let blocks = Arc::new(DirtyBlocks::new(8 * UNIT));
        f.write_all_at(&[5u8; 4096], 2 * UNIT).unwrap();
        let disks = DiskSet::new(vec![Disk::new(f, &p, Some(blocks.clone())).unwrap()]);
        let mut j = Joined::source(mem, disks).unwrap();
        assert_eq!(j.offset(), 128);
        assert_eq!(UnitSource::count(&j), 128 + 64);
        let mut pop = UnitSet::new(192);
        UnitSource::populated(&mut j, &mut pop).unwrap();
        assert_eq!(pop.iter().collect::<Vec<_>>(), vec![69, 130]);
        assert_eq!(j.second_count(&pop), 1);
        j.track().unwrap();
        j.first.store(1, &[1u8; PAGE_SIZE]);
        blocks.mark(7 * UNIT, 1);
        let mut d = UnitSet::new(192);
        j.dirty(&mut d, false).unwrap();
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![1, 135]);
        let mut buf = [0u8; PAGE_SIZE];
        j.read(130, &mut buf).unwrap();
        assert_eq!(buf, [5u8; PAGE_SIZE]);
        j.read(69, &mut buf).unwrap();
        assert_eq!(buf, [3u8; PAGE_SIZE]);
        // prepare: words of the first part go to memory, the rest to the disks.
        assert_eq!(j.prepare(d.words(), 0).unwrap(), 2);
        assert_eq!(j.prepare(d.words(), 2).unwrap(), 3);
        // Addressable: memory's 70 units and the disk's 8, not the gaps.
        let mut a = UnitSet::new(192);
        UnitSource::addressable(&j, &mut a);
        let want: Vec<u64> = (0..70).chain(128..136).collect();
        assert_eq!(a.iter().collect::<Vec<_>>(), want);
        let _ = std::fs::remove_file(p);
    }
}
