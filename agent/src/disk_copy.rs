//! Copying a VM's disk file between agents (cold migration of a stopped VM): the source agent
//! reads the allocated extents of the file (`lseek` SEEK_DATA/SEEK_HOLE) and streams them as
//! zstd-compressed chunks, each with the crc32 of its data ([`export`], behind the
//! `ExportDisk` RPC); the destination agent writes them into a file created sparse at the
//! source's size, checking every chunk on arrival and the whole stream against the trailer
//! ([`import`]). The wire messages are in `proto/agent.proto` (`DiskExportMessage`).
//!
//! Bounds: chunks hold at most [`CHUNK`] bytes of disk data (a message stays far below
//! gRPC's 4 MiB limit even when incompressible, and decompression is capped at the announced
//! length); the source's reader thread runs at most [`QUEUE`] chunks ahead of the network;
//! the destination gives up when no message arrives for its idle timeout.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::agent::disk_export_message::Kind;
use tokio::sync::mpsc;
use tonic::Status;

/// Most disk bytes in one chunk.
pub const CHUNK: usize = 1 << 20;
/// Chunks the source's reader may have queued ahead of the network.
pub const QUEUE: usize = 4;
/// zstd level of the chunks (fast; disk data is often very compressible).
const ZSTD_LEVEL: i32 = 1;

/// Errors copying a disk, on either side.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading or writing a disk file.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The receiver went away (the source stops reading).
    #[error("the destination stopped receiving")]
    Cancelled,
    /// The peer agent could not be reached or refused.
    #[error("source agent {addr}: {message}")]
    Peer {
        /// Its address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// A chunk's data does not match its crc32.
    #[error(
        "chunk at offset {offset}: crc32 {got:08x}, sender said {want:08x} (corrupted in transit)"
    )]
    Crc {
        /// Disk offset.
        offset: u64,
        /// crc32 announced.
        want: u32,
        /// crc32 of what arrived.
        got: u32,
    },
    /// The stream broke its own rules (order, bounds, lengths, trailer).
    #[error("malformed disk stream: {0}")]
    Protocol(String),
    /// No message for too long.
    #[error("no data from the source agent for {0:?}")]
    Idle(Duration),
}

impl From<CopyError> for Status {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Cancelled => Status::cancelled(e.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The next extent holding data at or after `from`, as (start, end), or None past the last.
/// Filesystems without SEEK_DATA report everything up to `size` as data.
fn next_data(f: &File, from: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    if from >= size {
        return Ok(None);
    }
    let fd = f.as_raw_fd();
    let Ok(off) = libc::off_t::try_from(from) else {
        return Ok(None);
    };
    // SAFETY: lseek only repositions the descriptor, which `f` keeps open for the call.
    let start = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((from, size))),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    let end = if end < 0 { size } else { end as u64 };
    Ok(Some((start as u64, end.min(size))))
}

/// Reads the disk file at `path` and sends it on `tx` (blocking; run it on a blocking
/// thread): a header, a chunk per at most [`CHUNK`] bytes of allocated, non-zero data, and
/// the trailer. Stops with [`CopyError::Cancelled`] when the receiver is gone.
pub fn export(
    path: &Path,
    tx: &mpsc::Sender<Result<apb::DiskExportMessage, Status>>,
) -> Result<apb::DiskTrailer, CopyError> {
    let send = |kind: Kind| {
        tx.blocking_send(Ok(apb::DiskExportMessage { kind: Some(kind) }))
            .map_err(|_| CopyError::Cancelled)
    };
    let f = File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    send(Kind::Header(apb::DiskHeader { size_bytes: size }))?;
    let mut total = crc32fast::Hasher::new();
    let mut trailer = apb::DiskTrailer::default();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while let Some((start, end)) = next_data(&f, pos, size).map_err(io_err(path))? {
        let mut off = start;
        while off < end {
            let len = ((end - off) as usize).min(CHUNK);
            let data = &mut buf[..len];
            f.read_exact_at(data, off).map_err(io_err(path))?;
            if data.iter().all(|b| *b == 0) {
                off += len as u64;
                continue;
            }
            let zstd = zstd::bulk::compress(data, ZSTD_LEVEL).map_err(io_err(path))?;
            total.update(data);
            trailer.chunks += 1;
            trailer.data_bytes += len as u64;
            send(Kind::Chunk(apb::DiskChunk {
                offset: off,
                length: len as u32,
                crc32: crc32fast::hash(data),
                zstd,
            }))?;
            off += len as u64;
        }
        pos = end.max(start + 1);
    }
    trailer.crc32 = total.finalize();
    send(Kind::Trailer(trailer))?;
    Ok(trailer)
}

/// What [`import`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Disk size.
    pub size_bytes: u64,
    /// The verified trailer.
    pub trailer: apb::DiskTrailer,
}

/// Something that yields the messages of one ExportDisk stream.
#[tonic::async_trait]
pub trait DiskStream: Send {
    /// The next message, None at the end.
    async fn next(&mut self) -> Result<Option<apb::DiskExportMessage>, Status>;
}

#[tonic::async_trait]
impl DiskStream for tonic::Streaming<apb::DiskExportMessage> {
    async fn next(&mut self) -> Result<Option<apb::DiskExportMessage>, Status> {
        self.message().await
    }
}

#[tonic::async_trait]
impl DiskStream for mpsc::Receiver<Result<apb::DiskExportMessage, Status>> {
    async fn next(&mut self) -> Result<Option<apb::DiskExportMessage>, Status> {
        self.recv().await.transpose()
    }
}

/// Writes one chunk at its offset after checking it (blocking); returns its data.
fn write_chunk(f: &File, path: &Path, size: u64, c: &apb::DiskChunk) -> Result<Vec<u8>, CopyError> {
    let len = c.length as usize;
    if len == 0 || len > CHUNK || c.offset.checked_add(len as u64).is_none_or(|e| e > size) {
        return Err(CopyError::Protocol(format!(
            "chunk at {} of {} bytes does not fit a {size}-byte disk in {CHUNK}-byte chunks",
            c.offset, c.length
        )));
    }
    let data = zstd::bulk::decompress(&c.zstd, len)
        .map_err(|e| CopyError::Protocol(format!("chunk at {}: zstd: {e}", c.offset)))?;
    if data.len() != len {
        return Err(CopyError::Protocol(format!(
            "chunk at {}: {} bytes after decompression, {len} announced",
            c.offset,
            data.len()
        )));
    }
    let got = crc32fast::hash(&data);
    if got != c.crc32 {
        return Err(CopyError::Crc {
            offset: c.offset,
            want: c.crc32,
            got,
        });
    }
    f.write_all_at(&data, c.offset).map_err(io_err(path))?;
    Ok(data)
}

/// The next message's content, waiting at most `idle`.
async fn next_kind(s: &mut dyn DiskStream, idle: Duration) -> Result<Option<Kind>, CopyError> {
    match tokio::time::timeout(idle, s.next()).await {
        Err(_) => Err(CopyError::Idle(idle)),
        Ok(Err(st)) => Err(CopyError::Protocol(format!(
            "stream ended with {:?}: {}",
            st.code(),
            st.message()
        ))),
        Ok(Ok(m)) => Ok(m.and_then(|m| m.kind)),
    }
}

/// Receives one ExportDisk stream into a new file at `dst` (created sparse at the announced
/// size; it must not exist), every chunk checked, the totals checked against the trailer,
/// and fsynced. On error the file may be partial: the caller removes it.
pub async fn import(
    stream: &mut dyn DiskStream,
    dst: &Path,
    idle: Duration,
) -> Result<Imported, CopyError> {
    let size = match next_kind(stream, idle).await? {
        Some(Kind::Header(h)) => h.size_bytes,
        other => {
            return Err(CopyError::Protocol(format!(
                "expected the header first, got {other:?}"
            )))
        }
    };
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err(dst))?;
    f.set_len(size).map_err(io_err(dst))?;
    let f = Arc::new(f);
    let mut total = crc32fast::Hasher::new();
    let mut got = apb::DiskTrailer::default();
    let mut min_offset = 0u64;
    loop {
        match next_kind(stream, idle).await? {
            Some(Kind::Chunk(c)) => {
                if c.offset < min_offset {
                    return Err(CopyError::Protocol(format!(
                        "chunk at {} overlaps or precedes the previous one (ending at {min_offset})",
                        c.offset
                    )));
                }
                let (f2, p2) = (Arc::clone(&f), dst.to_path_buf());
                min_offset = c.offset + u64::from(c.length);
                let data = tokio::task::spawn_blocking(move || write_chunk(&f2, &p2, size, &c))
                    .await
                    .map_err(|e| CopyError::Protocol(format!("writer task: {e}")))??;
                got.chunks += 1;
                got.data_bytes += data.len() as u64;
                total.update(&data);
            }
            Some(Kind::Trailer(t)) => {
                got.crc32 = total.finalize();
                if t != got {
                    return Err(CopyError::Protocol(format!(
                        "incomplete disk: received {} chunks, {} bytes, crc32 {:08x}; the source sent {} chunks, {} bytes, crc32 {:08x}",
                        got.chunks, got.data_bytes, got.crc32, t.chunks, t.data_bytes, t.crc32
                    )));
                }
                let f2 = Arc::clone(&f);
                tokio::task::spawn_blocking(move || f2.sync_all())
                    .await
                    .map_err(|e| CopyError::Protocol(format!("fsync task: {e}")))?
                    .map_err(io_err(dst))?;
                return Ok(Imported {
                    size_bytes: size,
                    trailer: t,
                });
            }
            Some(Kind::Header(_)) => {
                return Err(CopyError::Protocol("a second header".into()));
            }
            None => {
                return Err(CopyError::Protocol(
                    "the stream ended before its trailer".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nc-copy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A 64 MiB sparse file with data at a few places, one region crossing a chunk boundary.
    fn sparse_source(path: &Path) -> Vec<(u64, Vec<u8>)> {
        let f = File::create(path).unwrap();
        f.set_len(64 << 20).unwrap();
        let parts = vec![
            (0u64, b"boot sector".to_vec()),
            ((3 << 20) - 100, vec![0xab; 300]),
            (
                40 << 20,
                (0..3 * CHUNK).map(|i| (i * 7 % 251) as u8).collect(),
            ),
            ((64 << 20) - 5, b"tail!".to_vec()),
        ];
        for (off, d) in &parts {
            f.write_all_at(d, *off).unwrap();
        }
        parts
    }

    async fn roundtrip(src: &Path, dst: &Path) -> Result<Imported, CopyError> {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let p = src.to_path_buf();
        let h = tokio::task::spawn_blocking(move || export(&p, &tx));
        let r = import(&mut rx, dst, Duration::from_secs(5)).await;
        // A receiver that gave up must stop the sender, not leave it blocked.
        drop(rx);
        let sent = h.await.unwrap();
        match &r {
            Ok(_) => assert!(sent.is_ok(), "{sent:?}"),
            Err(_) => assert!(matches!(sent, Err(CopyError::Cancelled)), "{sent:?}"),
        }
        r
    }

    #[tokio::test]
    async fn sparse_copy_is_identical_and_stays_sparse() {
        use std::os::unix::fs::MetadataExt;
        let d = tmp("rt");
        let (src, dst) = (d.join("src.img"), d.join("dst.img"));
        sparse_source(&src);
        let r = roundtrip(&src, &dst).await.unwrap();
        assert_eq!(r.size_bytes, 64 << 20);
        assert!(r.trailer.data_bytes < 8 << 20, "{r:?}");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let m = std::fs::metadata(&dst).unwrap();
        assert!(
            m.blocks() * 512 < 16 << 20,
            "destination not sparse: {}",
            m.blocks()
        );
        // A target that exists is refused (never overwritten).
        assert!(matches!(
            roundtrip(&src, &dst).await,
            Err(CopyError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(d);
    }

    async fn import_of(msgs: Vec<Kind>, dst: &Path) -> Result<Imported, CopyError> {
        let (tx, mut rx) = mpsc::channel(msgs.len() + 1);
        for k in msgs {
            tx.send(Ok(apb::DiskExportMessage { kind: Some(k) }))
                .await
                .unwrap();
        }
        drop(tx);
        let r = import(&mut rx, dst, Duration::from_secs(5)).await;
        let _ = std::fs::remove_file(dst);
        r
    }

    fn chunk(offset: u64, data: &[u8]) -> apb::DiskChunk {
        apb::DiskChunk {
            offset,
            length: data.len() as u32,
            crc32: crc32fast::hash(data),
            zstd: zstd::bulk::compress(data, 1).unwrap(),
        }
    }

    #[tokio::test]
    async fn corrupt_truncated_and_out_of_bounds_streams_are_refused() {
        let d = tmp("bad");
        let dst = d.join("dst.img");
        let header = Kind::Header(apb::DiskHeader { size_bytes: 4096 });
        let good = chunk(0, b"hello");
        let trailer = apb::DiskTrailer {
            chunks: 1,
            data_bytes: 5,
            crc32: crc32fast::hash(b"hello"),
        };
        let ok = import_of(
            vec![
                header.clone(),
                Kind::Chunk(good.clone()),
                Kind::Trailer(trailer),
            ],
            &dst,
        )
        .await;
        assert!(ok.is_ok(), "{ok:?}");
        let mut bad_crc = good.clone();
        bad_crc.crc32 ^= 1;
        let r = import_of(
            vec![header.clone(), Kind::Chunk(bad_crc), Kind::Trailer(trailer)],
            &dst,
        )
        .await;
        assert!(matches!(r, Err(CopyError::Crc { .. })), "{r:?}");
        // No trailer: the stream was cut.
        let r = import_of(vec![header.clone(), Kind::Chunk(good.clone())], &dst).await;
        assert!(matches!(r, Err(CopyError::Protocol(_))), "{r:?}");
        // A chunk missing: the trailer disagrees.
        let r = import_of(vec![header.clone(), Kind::Trailer(trailer)], &dst).await;
        assert!(matches!(r, Err(CopyError::Protocol(_))), "{r:?}");
        // Beyond the disk's end.
        let r = import_of(
            vec![header.clone(), Kind::Chunk(chunk(4094, b"hello"))],
            &dst,
        )
        .await;
        assert!(matches!(r, Err(CopyError::Protocol(_))), "{r:?}");
        // A decompression bomb is capped at the announced length.
        let mut bomb = chunk(0, &[0u8; 16]);
        bomb.zstd = zstd::bulk::compress(&vec![1u8; 1 << 20], 1).unwrap();
        let r = import_of(vec![header, Kind::Chunk(bomb)], &dst).await;
        assert!(matches!(r, Err(CopyError::Protocol(_))), "{r:?}");
        let _ = std::fs::remove_dir_all(d);
    }
}
