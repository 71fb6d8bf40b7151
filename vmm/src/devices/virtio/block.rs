//! virtio-blk backed by a raw file: read, write, flush and get-id requests, optionally
//! read-only. Requests run synchronously on the device thread; data moves between the file and
//! guest memory through vm-memory (no bounce buffer, dirty bitmap updated).
//!
//! A request is a descriptor chain of a 16-byte header (type, reserved, sector), the data
//! buffers, and a final device-writable status byte. A chain that is malformed (too short,
//! out of guest RAM, readable after writable, unaligned or beyond the disk) gets
//! `VIRTIO_BLK_S_IOERR` in its status byte when that byte is addressable, and is otherwise
//! returned with a used length of 0.

use super::chain::{self, Chain, Segment};
use super::{VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};
use crate::memory::GuestMem;
use novacron_migration::disk::DirtyBlocks;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Feature: `seg_max` in the configuration space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: `blk_size` in the configuration space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: the flush command is supported.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: write to a read-only disk, malformed request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device ID string.
pub const ID_BYTES: usize = 20;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the request header.
const REQ_HEADER_LEN: u64 = 16;
/// Length of the configuration space.
const CONFIG_LEN: usize = 64;

/// Errors opening a disk image.
#[derive(Debug, Error)]
pub enum BlockError {
    /// The image cannot be opened or inspected.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Counters, for benchmarks and debugging.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlockStats {
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed (any non-OK status, or no status byte).
    pub errors: u64,
    /// Bytes read from the disk into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest to the disk.
    pub write_bytes: u64,
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    read_only: bool,
    /// Capacity in sectors.
    capacity: u64,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_LEN],
    /// The blocks written since live migration last collected them (writable disks).
    dirty: Option<Arc<DirtyBlocks>>,
    /// Counters.
    pub stats: BlockStats,
}

impl Block {
    /// Opens the raw image at `path` (read-only if `read_only`); the device ID is the file
    /// name (truncated to 20 bytes).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut id = [0u8; ID_BYTES];
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self::from_file(file, read_only, id).map_err(err)
    }

    /// A device on an already open file.
    pub fn from_file(file: File, read_only: bool, id: [u8; ID_BYTES]) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        let capacity = size / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        // size_max (8) unused; seg_max (12); geometry (16) unused; blk_size (20).
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            file,
            read_only,
            capacity,
            id,
            config,
            dirty: (!read_only).then(|| Arc::new(DirtyBlocks::new(size))),
            stats: BlockStats::default(),
        })
    }

    /// What live migration reads this disk through: the same file opened again read-only
    /// (its own file offset: the device seeks its descriptor, migration lists extents with
    /// `lseek`) and the write tracking (`None` for a read-only disk).
    pub fn migration_handle(&self) -> std::io::Result<(File, Option<Arc<DirtyBlocks>>)> {
        use std::os::fd::AsRawFd;
        let again = File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))?;
        Ok((again, self.dirty.clone()))
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn in_bounds(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|off| off.checked_add(len))
            .is_some_and(|end| end <= self.capacity * SECTOR_SIZE)
    }

    /// Runs one request: returns the status and the data bytes written into the guest.
    fn execute(&mut self, mem: &GuestMem, readable: &[Segment], data_out: &[Segment]) -> (u8, u64) {
        let mut hdr = [0u8; REQ_HEADER_LEN as usize];
        match chain::read_into(mem, readable, &mut hdr) {
            Ok(n) if n == hdr.len() => {}
            _ => return (VIRTIO_BLK_S_IOERR, 0),
        }
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = chain::total_len(data_out);
                if !len.is_multiple_of(SECTOR_SIZE) || !self.in_bounds(sector, len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match chain::file_to_guest(mem, data_out, &mut self.file, sector * SECTOR_SIZE) {
                    Ok(()) => {
                        self.stats.read_bytes += len;
                        (VIRTIO_BLK_S_OK, len)
                    }
                    Err(e) => {
                        tracing::debug!("virtio-blk read at sector {sector}: {e}");
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let data = chain::skip(readable, REQ_HEADER_LEN);
                let len = chain::total_len(&data);
                if !len.is_multiple_of(SECTOR_SIZE) || !self.in_bounds(sector, len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let res = chain::guest_to_file(mem, &data, &mut self.file, sector * SECTOR_SIZE);
                // Marked after the write (even a failed one may have changed blocks), so a
                // migration pass either reads the new data or sees the mark.
                if let Some(d) = &self.dirty {
                    d.mark(sector * SECTOR_SIZE, len);
                }
                match res {
                    Ok(()) => {
                        self.stats.write_bytes += len;
                        (VIRTIO_BLK_S_OK, 0)
                    }
                    Err(e) => {
                        tracing::debug!("virtio-blk write at sector {sector}: {e}");
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    return (VIRTIO_BLK_S_OK, 0);
                }
                match self.file.sync_data() {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(e) => {
                        tracing::warn!("virtio-blk flush: {e}");
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let out = chain::truncate(data_out, ID_BYTES as u64);
                match chain::write_from(mem, &out, &self.id) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n as u64),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Handles one chain given as raw descriptors; returns the used length.
    pub fn handle(&mut self, mem: &GuestMem, descs: &[(GuestAddress, u32, bool)]) -> u32 {
        self.stats.requests += 1;
        let chain: Chain = match chain::parse(descs.iter().copied(), mem) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("virtio-blk: bad descriptor chain: {e}");
                self.stats.errors += 1;
                // Report the error if the last writable byte is addressable.
                if let Some(&(addr, len, _)) = descs.iter().rev().find(|d| d.2 && d.1 > 0) {
                    if let Some(status) = addr.0.checked_add(u64::from(len) - 1) {
                        if mem
                            .write_obj(VIRTIO_BLK_S_IOERR, GuestAddress(status))
                            .is_ok()
                        {
                            return 1;
                        }
                    }
                }
                return 0;
            }
        };
        let Some(last) = chain.writable.last() else {
            self.stats.errors += 1;
            return 0;
        };
        // Validated by parse: inside guest memory, len >= 1.
        let status_addr = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
        let data_out = chain::truncate(&chain.writable, chain::total_len(&chain.writable) - 1);
        let (status, written) = self.execute(mem, &chain.readable, &data_out);
        if status != VIRTIO_BLK_S_OK {
            self.stats.errors += 1;
        }
        if mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        // A chain carries at most 4 GiB (virtio-queue enforces it), so this fits.
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f =
            VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn config_bytes(&self) -> Vec<u8> {
        self.config.to_vec()
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
        let Some(q) = queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        let mut descs = Vec::with_capacity(4);
        while let Some(dc) = q.pop_descriptor_chain(mem) {
            let head = dc.head_index();
            descs.clear();
            descs.extend(dc.map(|d| (d.addr(), d.len(), d.is_write_only())));
            let len = self.handle(mem, &descs);
            if let Err(e) = q.add_used(mem, head, len) {
                tracing::debug!("virtio-blk: cannot return descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn temp_disk(sectors: u64) -> (PathBuf, File) {
        let p = std::env::temp_dir().join(format!(
            "novacron-blk-unit-{}-{sectors}",
            std::process::id()
        ));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("create");
        f.write_all(&vec![0u8; (sectors * SECTOR_SIZE) as usize])
            .expect("fill");
        (p, f)
    }

    fn header(mem: &GuestMem, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).expect("hdr");
    }

    /// Runs a request of type `kind` at `sector` with the data buffers `data` (guest
    /// address, length, device-writable) between a header at 0x100 and a status byte at
    /// 0x200; returns (bytes the device reports written, status byte).
    fn request(
        blk: &mut Block,
        mem: &GuestMem,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> (u32, Option<u8>) {
        header(mem, 0x100, kind, sector);
        let mut descs = vec![(GuestAddress(0x100), 16, false)];
        descs.extend(data.iter().map(|&(at, len, w)| (GuestAddress(at), len, w)));
        descs.push((GuestAddress(0x200), 1, true));
        let used = blk.handle(mem, &descs);
        (used, mem.read_obj::<u8>(GuestAddress(0x200)).ok())
    }

    #[test]
    fn write_read_flush_id_and_errors() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let (path, f) = temp_disk(16);
        let mut blk = Block::from_file(f, false, *b"unit-test-disk\0\0\0\0\0\0").expect("blk");
        let ok = Some(VIRTIO_BLK_S_OK);
        let ioerr = Some(VIRTIO_BLK_S_IOERR);
        // Write sector 3.
        mem.write_slice(&[0xab; 512], GuestAddress(0x1000))
            .expect("data");
        let out = request(&mut blk, &mem, VIRTIO_BLK_T_OUT, 3, &[(0x1000, 512, false)]);
        assert_eq!(out, (1, ok));
        let mut disk = File::open(&path).expect("open");
        let mut buf = vec![0u8; 512];
        disk.seek(SeekFrom::Start(3 * 512)).expect("seek");
        disk.read_exact(&mut buf).expect("read");
        assert!(buf.iter().all(|&b| b == 0xab));
        // Read it back into two buffers.
        let two = [(0x3000, 256, true), (0x4000, 256, true)];
        assert_eq!(request(&mut blk, &mem, VIRTIO_BLK_T_IN, 3, &two), (513, ok));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x40ff)).ok(), Some(0xab));
        // Beyond the end of the disk.
        let past = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 16, &[(0x3000, 512, true)]);
        assert_eq!(past, (1, ioerr));
        // Flush, get-id, unsupported.
        assert_eq!(request(&mut blk, &mem, VIRTIO_BLK_T_FLUSH, 0, &[]), (1, ok));
        let id = request(&mut blk, &mem, VIRTIO_BLK_T_GET_ID, 0, &[(0x300, 20, true)]);
        assert_eq!(id, (21, ok));
        let mut id = [0u8; 14];
        mem.read_slice(&mut id, GuestAddress(0x300)).expect("id");
        assert_eq!(&id, b"unit-test-disk");
        let unsupp = Some(VIRTIO_BLK_S_UNSUPP);
        assert_eq!(request(&mut blk, &mem, 99, 0, &[]), (1, unsupp));
        // Data outside guest memory: the status byte still reports the error.
        let outside = request(&mut blk, &mem, VIRTIO_BLK_T_IN, 0, &[(0xff00, 512, true)]);
        assert_eq!(outside, (1, ioerr));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn read_only_refuses_writes() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let (path, f) = temp_disk(4);
        let mut blk = Block::from_file(f, true, [0; ID_BYTES]).expect("blk");
        assert_ne!(blk.features() & VIRTIO_BLK_F_RO, 0);
        let write = request(&mut blk, &mem, VIRTIO_BLK_T_OUT, 0, &[(0x1000, 512, false)]);
        assert_eq!(write, (1, Some(VIRTIO_BLK_S_IOERR)));
        let _ = std::fs::remove_file(&path);
    }
}
