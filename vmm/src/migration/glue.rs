//! Everything the migration engine needs from a [`Machine`], in one place: guest memory and
//! its dirty tracking as the engine's unit source ([`GuestSource`]) and sink
//! ([`GuestSink`]), the Hello fields taken from the machine and the check of a peer's
//! Hello, and the hooks for pause, throttle, state capture and restore, and start
//! ([`VmGuest`], [`VmTakeover`]).

use super::guest_pages::GuestMemoryPages;
use crate::devices::virtio::DiskHandle;
use crate::dirty::{self, DirtyTracker, PageBitmap};
use crate::kvm::cpuid;
use crate::machine::Machine;
use crate::memory::GuestMem;
use crate::persist::Persist;
use novacron_migration::disk::{self, Disk, DiskError, DiskSet};
use novacron_migration::protocol::{Hello, PROTOCOL_VERSION};
use novacron_migration::receiver::Takeover;
use novacron_migration::sender::Guest;
use novacron_migration::session::HookError;
use novacron_migration::unit::{SourceId, UnitError, UnitSet, UnitSink, UnitSource, GUEST_MEMORY};
use novacron_migration::{PageStore, PAGE_SIZE};
use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// The source's Hello for `m` (version and encodings are the engine's to fill in).
pub fn hello(m: &Machine) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        memory: m.config().memory,
        vcpus: m.config().vcpus,
        cpuid: cpuid::feature_words(m.cpuid()),
        disks: m.config().disks.len(),
        nets: m.config().nets.len(),
        encodings: Vec::new(),
        migration_id: String::new(),
        verify: Default::default(),
        copied_disks: copied(m).map(|(_, h)| disk_size(h)).collect(),
    }
}

/// The disks a live migration copies (writable, not shared), with their `--disk` index.
fn copied(m: &Machine) -> impl Iterator<Item = (usize, &DiskHandle)> {
    m.disks()
        .iter()
        .enumerate()
        .filter(|(_, h)| h.config.copied())
}

fn disk_size(h: &DiskHandle) -> u64 {
    h.file.metadata().map(|md| md.len()).unwrap_or(0)
}

/// The copied disks of `m` as one unit source (the source side: read-only handles and the
/// devices' write tracking).
pub fn disk_source(m: &Machine) -> Result<DiskSet, DiskError> {
    let mut disks = Vec::new();
    for (_, h) in copied(m) {
        let file = h.file.try_clone().map_err(|source| DiskError::Io {
            path: h.config.path.clone(),
            source,
        })?;
        disks.push(Disk::new(file, &h.config.path, h.dirty.clone())?);
    }
    Ok(DiskSet::new(disks))
}

/// The copied disks of `m` as one unit sink (the destination side: each file opened again
/// for writing).
pub fn disk_sink(m: &Machine) -> Result<DiskSet, DiskError> {
    let mut disks = Vec::new();
    for (_, h) in copied(m) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", h.file.as_raw_fd()))
            .map_err(|source| DiskError::Io {
                path: h.config.path.clone(),
                source,
            })?;
        disks.push(Disk::new(file, &h.config.path, None)?);
    }
    Ok(DiskSet::new(disks))
}

/// Checks that every disk an incoming migration copies into is blank (before listening).
pub fn check_incoming_disks(m: &Machine) -> Result<(), DiskError> {
    for (_, h) in copied(m) {
        disk::check_blank(&h.file, &h.config.path)?;
    }
    Ok(())
}

/// Checks the source's Hello against this machine; returns the refusal reason if any.
pub fn check_hello(m: &Machine, h: &Hello) -> Result<(), String> {
    if h.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} not supported (this VMM speaks {PROTOCOL_VERSION})",
            h.version
        ));
    }
    if h.memory != m.config().memory {
        return Err(format!(
            "memory size differs: source {} MiB, destination {} MiB",
            h.memory >> 20,
            m.config().memory >> 20
        ));
    }
    if h.vcpus != m.config().vcpus {
        return Err(format!(
            "vCPU count differs: source {}, destination {}",
            h.vcpus,
            m.config().vcpus
        ));
    }
    if h.disks != m.config().disks.len() || h.nets != m.config().nets.len() {
        return Err(format!(
            "device set differs: source {} disks/{} nets, destination {} disks/{} nets",
            h.disks,
            h.nets,
            m.config().disks.len(),
            m.config().nets.len()
        ));
    }
    let ours: Vec<u64> = copied(m).map(|(_, d)| disk_size(d)).collect();
    if h.copied_disks != ours {
        return Err(format!(
            "copied disks differ (writable disks that are not shared, sizes in bytes): \
             source {:?}, destination {ours:?}; the destination's copy of each must be a blank \
             file of the source's size",
            h.copied_disks
        ));
    }
    let missing = cpuid::missing_features(&h.cpuid, &cpuid::feature_words(m.cpuid()));
    if !missing.is_empty() {
        return Err(format!(
            "destination CPU lacks features the guest may use: {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

fn dirty_error(e: impl std::fmt::Display) -> UnitError {
    UnitError::Dirty {
        source_id: GUEST_MEMORY,
        reason: e.to_string(),
    }
}

/// Puts the page frames of `m`'s RAM regions into `set` (the MMIO hole left out).
fn ram_frames(m: &Machine, set: &mut UnitSet) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for r in m.mem().iter() {
        let start = r.start_addr().0 / PAGE_SIZE as u64;
        set.fill_range(start, start + r.len() / PAGE_SIZE as u64);
    }
}

/// ORs a dirty bitmap into a unit set (same layout: bit `n` is page frame `n`).
fn or_into(set: &mut UnitSet, bits: &PageBitmap) {
    for (o, w) in set.words_mut().iter_mut().zip(&bits.words) {
        *o |= w;
    }
}

/// Guest memory as the engine's unit source: page frames, KVM's dirty log, and the
/// re-protection of each window before it is read (manual-protect mode).
pub struct GuestSource<'a> {
    m: &'a Machine,
    tracker: Option<DirtyTracker<'a>>,
    scratch: PageBitmap,
}

impl<'a> GuestSource<'a> {
    /// The source over `m`'s memory; tracking starts with [`UnitSource::track`].
    pub fn new(m: &'a Machine) -> Self {
        GuestSource {
            m,
            tracker: None,
            scratch: PageBitmap::new(dirty::frame_count(m)),
        }
    }

    /// Stops dirty tracking (after a successful migration).
    pub fn stop(self) {
        if let Some(t) = self.tracker {
            let _ = t.stop();
        }
    }
}

impl UnitSource for GuestSource<'_> {
    fn id(&self) -> SourceId {
        GUEST_MEMORY
    }

    fn count(&self) -> u64 {
        dirty::frame_count(self.m)
    }

    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError> {
        or_into(set, &dirty::touched_pages(self.m));
        Ok(())
    }

    fn track(&mut self) -> Result<(), UnitError> {
        self.m.prepare_state().map_err(dirty_error)?;
        self.tracker = Some(DirtyTracker::start(self.m).map_err(dirty_error)?);
        Ok(())
    }

    fn dirty(&mut self, set: &mut UnitSet, final_pass: bool) -> Result<(), UnitError> {
        let tracker = self
            .tracker
            .as_mut()
            .ok_or_else(|| dirty_error("dirty tracking was not started"))?;
        self.scratch.clear();
        if final_pass {
            tracker.collect_into(&mut self.scratch)
        } else {
            tracker.collect_deferred(&mut self.scratch)
        }
        .map_err(dirty_error)?;
        or_into(set, &self.scratch);
        Ok(())
    }

    fn prepare(&mut self, words: &[u64], word: usize) -> Result<usize, UnitError> {
        let end = (word + dirty::REARM_WORDS).min(words.len());
        dirty::rearm(self.m, word, &words[word..end]).map_err(dirty_error)?;
        Ok(end)
    }

    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        self.m
            .mem()
            .read_slice(buf, GuestAddress(n * PAGE_SIZE as u64))
            .map_err(|e| UnitError::Read {
                source_id: GUEST_MEMORY,
                unit: n,
                reason: e.to_string(),
            })
    }
    fn addressable(&self, set: &mut UnitSet) {
        ram_frames(self.m, set);
    }
}

/// Guest memory of a machine being received, as the engine's unit sink.
pub struct GuestSink<'a> {
    m: &'a Machine,
    pages: GuestMemoryPages<'a, GuestMem>,
}

impl<'a> GuestSink<'a> {
    /// The sink over `m`'s memory.
    pub fn new(m: &'a Machine) -> Self {
        GuestSink {
            m,
            pages: GuestMemoryPages(m.mem()),
        }
    }
}

impl PageStore for GuestSink<'_> {
    fn contains(&self, index: u64) -> bool {
        self.pages.contains(index)
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self.pages.read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        self.pages.write_page(index, data)
    }
}

impl UnitSink for GuestSink<'_> {
    fn id(&self) -> SourceId {
        GUEST_MEMORY
    }

    fn count(&self) -> u64 {
        dirty::frame_count(self.m)
    }

    fn populated(&self, set: &mut UnitSet) {
        or_into(set, &dirty::touched_pages(self.m));
    }
    fn addressable(&self, set: &mut UnitSet) {
        ram_frames(self.m, set);
    }
}

/// Pauses the vCPUs for a share of every 20 ms slice while precopy does not converge.
struct Throttle {
    pct: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttle {
    fn new(m: &Machine) -> Self {
        let pct = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, ctl) = (pct.clone(), stop.clone(), m.control().clone());
        let thread = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || {
                let slice = Duration::from_millis(20);
                // Sleeps until `d` from now, or until `halt` wakes the thread.
                let nap = |d: Duration| {
                    let end = Instant::now() + d;
                    while !s.load(Ordering::SeqCst) {
                        let left = end.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                };
                while !s.load(Ordering::SeqCst) {
                    let share = p.load(Ordering::SeqCst).min(99);
                    if share == 0 {
                        nap(slice);
                        continue;
                    }
                    ctl.pause();
                    nap(slice * share / 100);
                    ctl.resume();
                    nap(slice * (100 - share) / 100);
                }
            })
            .ok();
        Throttle { pct, stop, thread }
    }

    /// Stops the throttle thread at once (leaving the vCPUs resumed) and waits for it: the
    /// switchover's pause does not wait out a throttle slice.
    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The source machine's hooks: throttle, pause, state capture.
pub struct VmGuest<'a> {
    m: &'a Machine,
    throttle: Option<Throttle>,
}

impl<'a> VmGuest<'a> {
    /// Hooks for `m`; with `auto_converge` a throttle thread is ready to slow the vCPUs.
    pub fn new(m: &'a Machine, auto_converge: bool) -> Self {
        VmGuest {
            m,
            throttle: auto_converge.then(|| Throttle::new(m)),
        }
    }

    /// After a failed migration: stops throttling and dirty logging, resumes the guest.
    pub fn resume(mut self) {
        if let Some(t) = &mut self.throttle {
            t.halt();
        }
        if let Err(e) = self.m.vm().set_dirty_logging(false) {
            tracing::warn!("cannot turn dirty logging off after a failed migration: {e}");
        }
        self.m.resume_all();
    }
}

impl Guest for VmGuest<'_> {
    fn throttle(&mut self, pct: u32) {
        if let Some(t) = &self.throttle {
            t.pct.store(pct, Ordering::SeqCst);
        }
    }

    fn dirty_rate(&mut self, units_per_s: f64) {
        self.m.set_dirty_pages_per_sec(units_per_s as u64);
    }

    fn pause(&mut self) {
        if let Some(t) = &mut self.throttle {
            t.halt();
        }
        self.m.pause_all();
    }

    fn state(&mut self) -> Result<Vec<u8>, HookError> {
        let state = self.m.save()?;
        Ok(crate::state::encode(&state)?)
    }
}

/// The destination machine's hooks: Hello check, state restore, start.
pub struct VmTakeover<'a> {
    m: &'a Arc<Machine>,
    /// The migration id the Hello must carry (`None`: any).
    migration_id: Option<String>,
    /// Set once a Hello carrying the awaited migration id reached the compatibility check.
    accepted_hello: Cell<bool>,
}

impl<'a> VmTakeover<'a> {
    /// Hooks for `m`, built but not started, awaiting the migration `migration_id` (if set).
    pub fn new(m: &'a Arc<Machine>, migration_id: Option<String>) -> Self {
        VmTakeover {
            m,
            migration_id,
            accepted_hello: Cell::new(false),
        }
    }

    /// Whether this connection carried a Hello of the awaited migration. A connection that
    /// failed before that (closed, junk, silent, another migration id) is stray: it changed
    /// nothing here and the destination keeps waiting for its source.
    pub fn accepted_hello(&self) -> bool {
        self.accepted_hello.get()
    }
}

impl Takeover for VmTakeover<'_> {
    fn check(&self, hello: &Hello) -> Result<(), String> {
        if let Some(id) = &self.migration_id {
            if &hello.migration_id != id {
                return Err(format!(
                    "stream is for migration '{}', this destination awaits '{id}'",
                    hello.migration_id
                ));
            }
        }
        self.accepted_hello.set(true);
        check_hello(self.m, hello)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), HookError> {
        let st = crate::state::decode(state)?;
        self.m.restore(&st)?;
        Ok(())
    }

    fn start(&mut self) -> Result<(), HookError> {
        // Writes made while receiving are not guest activity.
        vm_memory::GuestMemoryBackend::iter(self.m.mem())
            .for_each(|r| std::ops::Deref::deref(r).bitmap().reset());
        self.m.start()?;
        Ok(())
    }
}
