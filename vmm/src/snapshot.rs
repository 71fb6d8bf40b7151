//! Snapshots on disk and restoring them in a new process.
//!
//! A snapshot directory holds `meta.json` (kind, size, parent), `state.bin` (the VM state
//! envelope from `state.rs`) and `memory.bin`, a sparse file indexed by guest-physical
//! address: zero pages are holes. A diff snapshot holds only the pages dirtied since its
//! parent snapshot (listed in `pages.bitmap`, so a page that became zero is restored as
//! zero); restoring it applies the parent chain first.
//!
//! Every writable disk is captured with the memory, while the guest is paused, as
//! `disk-N.img` (N the `--disk` index): a reflink of the disk where the filesystem allows
//! (instant, blocks shared until either side writes), else a sparse copy of its data
//! extents. Restoring writes each captured image back into the VM's `--disk` file before
//! memory and state are loaded, so memory and disks are both back at the snapshot point.
//! Read-only disks are not captured (they cannot change).

use crate::dirty::{self, PageBitmap};
use crate::layout::PAGE_SIZE;
use crate::machine::Machine;
use crate::memory::is_zero_page;
use crate::persist::Persist;
use novacron_migration::disk::{clone_or_sparse_copy, CopyKind};
pub use novacron_vmm_api::protocol::SnapshotDisk;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Snapshot format version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Errors writing or reading snapshots.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// meta.json is malformed.
    #[error("{path} is not a NovaCron snapshot: {reason}")]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A diff snapshot without a full snapshot before it.
    #[error(
        "no base for a diff snapshot: take a full snapshot first (dirty tracking starts there)"
    )]
    NoBase,
    /// State capture or restore failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Dirty tracking failed.
    #[error(transparent)]
    Vm(#[from] crate::kvm::vm::VmError),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// meta.json could not be serialised.
    #[error("cannot serialise snapshot metadata: {0}")]
    Meta(serde_json::Error),
    /// The snapshot's disks do not match the VM's `--disk` options.
    #[error("snapshot {dir} cannot be restored onto these disks: {reason}")]
    DiskMismatch {
        /// The snapshot.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },
}

/// Captures every writable disk of `m` into `dir` (the devices are paused).
fn capture_disks(m: &Machine, dir: &Path) -> Result<Vec<SnapshotDisk>, SnapshotError> {
    let mut out = Vec::new();
    for (index, h) in m.disks().iter().enumerate() {
        if h.config.read_only {
            continue;
        }
        let file = format!("disk-{index}.img");
        let path = dir.join(&file);
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("create", &path))?;
        let how = clone_or_sparse_copy(&h.file, &dst).map_err(io("capture disk into", &path))?;
        dst.sync_all().map_err(io("sync", &path))?;
        let size = dst.metadata().map_err(io("stat", &path))?.len();
        out.push(SnapshotDisk {
            index,
            file,
            size,
            copy: match how {
                CopyKind::Reflink => "reflink",
                CopyKind::Sparse => "sparse",
            }
            .into(),
        });
    }
    Ok(out)
}

/// Writes the disks captured in `dir` back into `m`'s `--disk` files (not yet started).
fn restore_disks(m: &Machine, dir: &Path, disks: &[SnapshotDisk]) -> Result<(), SnapshotError> {
    let mismatch = |reason: String| SnapshotError::DiskMismatch {
        dir: dir.to_path_buf(),
        reason,
    };
    let writable = m.disks().iter().filter(|h| !h.config.read_only).count();
    if disks.len() != writable {
        return Err(mismatch(format!(
            "it holds {} writable disk(s), the VM has {writable}",
            disks.len()
        )));
    }
    for d in disks {
        let h = m
            .disks()
            .get(d.index)
            .filter(|h| !h.config.read_only)
            .ok_or_else(|| mismatch(format!("disk {} is not a writable --disk here", d.index)))?;
        if d.file.contains('/') || d.file.starts_with('.') {
            return Err(mismatch(format!(
                "disk file name {:?} is not a plain name",
                d.file
            )));
        }
        let src_path = dir.join(&d.file);
        let src = File::open(&src_path).map_err(io("open", &src_path))?;
        let have = src.metadata().map_err(io("stat", &src_path))?.len();
        let target = h.file.metadata().map_err(io("stat", &h.config.path))?.len();
        if have != d.size || target != d.size {
            return Err(mismatch(format!(
                "disk {}: the snapshot's image is {have} bytes (recorded {}), {} is {target}",
                d.index,
                d.size,
                h.config.path.display()
            )));
        }
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", h.file.as_raw_fd()))
            .map_err(io("open for writing", &h.config.path))?;
        clone_or_sparse_copy(&src, &dst).map_err(io("restore disk into", &h.config.path))?;
        dst.sync_all().map_err(io("sync", &h.config.path))?;
    }
    Ok(())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Format version.
    pub version: u32,
    /// "full" or "diff".
    pub kind: String,
    /// Guest RAM bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Parent snapshot directory (diff snapshots).
    pub parent: Option<PathBuf>,
    /// Pages written.
    pub pages: u64,
    /// Kernel command line of the original boot (informational).
    pub cmdline: String,
    /// The writable disks captured with the memory.
    #[serde(default)]
    pub disks: Vec<SnapshotDisk>,
}

/// What `snapshot` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Pages written to memory.bin.
    pub pages: u64,
    /// Bytes of page data written.
    pub bytes: u64,
    /// "full" or "diff".
    pub kind: String,
    /// Milliseconds the guest was paused.
    pub paused_ms: f64,
    /// The disks captured.
    pub disks: Vec<SnapshotDisk>,
}

/// The base a diff snapshot builds on: the previous snapshot's directory.
#[derive(Default)]
pub struct DiffBase {
    /// Directory of the last snapshot while dirty logging has been on since.
    pub last: Option<PathBuf>,
}

/// Writes a snapshot of `m` (which the caller has paused, vCPUs and devices) to `dir`. With
/// `diff`, only pages dirtied since the previous snapshot are written. Afterwards dirty logging
/// stays on so the next diff snapshot can build on this one.
pub fn write(
    m: &Machine,
    dir: &Path,
    diff: bool,
    base: &mut DiffBase,
) -> Result<SnapshotInfo, SnapshotError> {
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let frames = dirty::frame_count(m);
    let (pages, parent) = if diff {
        let parent = base.last.clone().ok_or(SnapshotError::NoBase)?;
        let mut bm = PageBitmap::new(frames);
        dirty::collect(m, &mut bm)?;
        (bm, Some(parent))
    } else {
        (dirty::touched_pages(m), None)
    };
    let mem_path = dir.join("memory.bin");
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&mem_path)
        .map_err(io("create", &mem_path))?;
    file.set_len(frames * PAGE_SIZE)
        .map_err(io("size", &mem_path))?;
    let mut buf = [0u8; PAGE_SIZE as usize];
    let (mut written, mut bytes) = (0u64, 0u64);
    for pfn in pages.iter() {
        m.mem()
            .read_slice(&mut buf, GuestAddress(pfn * PAGE_SIZE))?;
        if is_zero_page(&buf) {
            continue;
        }
        file.write_all_at(&buf, pfn * PAGE_SIZE)
            .map_err(io("write", &mem_path))?;
        written += 1;
        bytes += PAGE_SIZE;
    }
    file.sync_all().map_err(io("sync", &mem_path))?;
    if diff {
        let bm_path = dir.join("pages.bitmap");
        let raw: Vec<u8> = pages.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&bm_path, raw).map_err(io("write", &bm_path))?;
    }
    let disks = capture_disks(m, dir)?;
    let state = m.save()?;
    let state_path = dir.join("state.bin");
    std::fs::write(&state_path, crate::state::encode(&state)?).map_err(io("write", &state_path))?;
    let meta = SnapshotMeta {
        version: SNAPSHOT_VERSION,
        kind: if diff { "diff" } else { "full" }.into(),
        memory: m.config().memory,
        vcpus: m.config().vcpus,
        parent,
        pages: written,
        cmdline: m.config().cmdline.clone(),
        disks: disks.clone(),
    };
    let meta_path = dir.join("meta.json");
    let mut f = File::create(&meta_path).map_err(io("create", &meta_path))?;
    let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(SnapshotError::Meta)?;
    f.write_all(&meta_bytes)
        .and_then(|_| f.sync_all())
        .map_err(io("write", &meta_path))?;
    // Track dirty pages from here for the next diff snapshot.
    if !diff {
        m.vm().set_dirty_logging(true)?;
        let mut discard = PageBitmap::new(frames);
        dirty::collect(m, &mut discard)?;
    }
    base.last = Some(std::fs::canonicalize(dir).map_err(io("resolve", dir))?);
    Ok(SnapshotInfo {
        pages: written,
        bytes,
        kind: meta.kind,
        paused_ms: t0.elapsed().as_secs_f64() * 1e3,
        disks,
    })
}

/// Reads `dir/meta.json`.
pub fn read_meta(dir: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let p = dir.join("meta.json");
    let raw = std::fs::read(&p).map_err(io("read", &p))?;
    let meta: SnapshotMeta = serde_json::from_slice(&raw).map_err(|e| SnapshotError::BadMeta {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    if meta.version > SNAPSHOT_VERSION {
        return Err(SnapshotError::BadMeta {
            path: p,
            reason: format!(
                "format version {} is newer than this VMM supports",
                meta.version
            ),
        });
    }
    Ok(meta)
}

/// The chain base..=dir of snapshot directories.
fn chain(dir: &Path) -> Result<Vec<(PathBuf, SnapshotMeta)>, SnapshotError> {
    let mut out = Vec::new();
    let mut cur = Some(dir.to_path_buf());
    while let Some(d) = cur {
        if out.len() > 1000 {
            return Err(SnapshotError::BadMeta {
                path: d,
                reason: "parent chain too long or cyclic".into(),
            });
        }
        let meta = read_meta(&d)?;
        cur = meta.parent.clone();
        out.push((d, meta));
    }
    out.reverse();
    Ok(out)
}

/// Copies the data extents of a sparse memory file into guest memory.
fn load_full(m: &Machine, path: &Path) -> Result<(), SnapshotError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut off: i64 = 0;
    while (off as u64) < len {
        // SAFETY: lseek on an open fd we own; SEEK_DATA/SEEK_HOLE only move the offset.
        let data = unsafe { libc::lseek(f.as_raw_fd(), off, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // No more data.
            }
            return Err(SnapshotError::Io {
                what: "seek data in",
                path: path.to_path_buf(),
                source: e,
            });
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        f.seek(SeekFrom::Start(data as u64))
            .map_err(io("seek", path))?;
        let mut pos = data as u64;
        while pos < end as u64 {
            let n = ((end as u64 - pos) as usize).min(buf.len());
            f.read_exact(&mut buf[..n]).map_err(io("read", path))?;
            m.mem().write_slice(&buf[..n], GuestAddress(pos))?;
            pos += n as u64;
        }
        off = end;
    }
    Ok(())
}

/// Applies a diff snapshot's listed pages.
fn load_diff(m: &Machine, dir: &Path) -> Result<(), SnapshotError> {
    let mem_path = dir.join("memory.bin");
    let bm_path = dir.join("pages.bitmap");
    let f = File::open(&mem_path).map_err(io("open", &mem_path))?;
    let raw = std::fs::read(&bm_path).map_err(io("read", &bm_path))?;
    let words: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let bm = PageBitmap { words };
    let mut buf = [0u8; PAGE_SIZE as usize];
    for pfn in bm.iter() {
        f.read_exact_at(&mut buf, pfn * PAGE_SIZE)
            .map_err(io("read", &mem_path))?;
        m.mem().write_slice(&buf, GuestAddress(pfn * PAGE_SIZE))?;
    }
    Ok(())
}

/// Loads memory (following the diff chain) and state from `dir` into a freshly built,
/// not yet started machine.
pub fn restore(m: &Machine, dir: &Path) -> Result<(), SnapshotError> {
    let chain = chain(dir)?;
    if let Some((_, last)) = chain.last() {
        restore_disks(m, dir, &last.disks)?;
    }
    for (i, (d, meta)) in chain.iter().enumerate() {
        if meta.memory != m.config().memory || meta.vcpus != m.config().vcpus {
            return Err(SnapshotError::BadMeta {
                path: d.clone(),
                reason: "memory size or vCPU count differs within the snapshot chain".into(),
            });
        }
        if i == 0 {
            load_full(m, &d.join("memory.bin"))?;
        } else {
            load_diff(m, d)?;
        }
    }
    let state_path = dir.join("state.bin");
    let raw = std::fs::read(&state_path).map_err(io("read", &state_path))?;
    let state = crate::state::decode(&raw)?;
    m.restore(&state)?;
    Ok(())
}
