//! Backups: a full snapshot directory (meta, state, sparse memory, captured disks) as one
//! compressed file, to carry to another host or controller, and back.
//!
//! Format: one zstd frame (with its content checksum) holding
//!
//! ```text
//! magic "NOVACRON-BACKUP\0" | version u32
//! per file:  kind 1 u8 | name_len u16 | name | size u64
//!            extents: offset u64 | len u64 | data[len] | crc32(data) u32  ... until offset = u64::MAX
//! end:       kind 0 u8
//! ```
//!
//! (integers little-endian). Files are stored sparse: only their data extents
//! (`SEEK_DATA`/`SEEK_HOLE`), so a 1 GiB disk holding 10 MiB costs about 10 MiB before
//! compression. Import checks every field before it writes (plain file names only, sizes
//! and extents within bounds, crcs), writes into a new directory, and checks the result
//! reads as a snapshot.

use novacron_migration::disk::data_extents;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 16] = b"NOVACRON-BACKUP\0";
/// Backup format version.
pub const BACKUP_VERSION: u32 = 1;
const KIND_END: u8 = 0;
const KIND_FILE: u8 = 1;
const END_OF_EXTENTS: u64 = u64::MAX;
/// Largest extent chunk written at once (and accepted on import).
const CHUNK: u64 = 4 << 20;
/// Largest file a backup may hold (1 TiB): bounds what an import allocates.
const MAX_FILE: u64 = 1 << 40;
/// Most files in a backup.
const MAX_FILES: usize = 256;

/// Errors exporting or importing a backup.
#[derive(Debug, Error)]
pub enum BackupError {
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
    /// The snapshot cannot be exported.
    #[error("cannot export {dir}: {reason}")]
    Export {
        /// The snapshot directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The backup file is damaged or not a backup.
    #[error("{file} is not a valid NovaCron backup: {reason}")]
    Corrupt {
        /// The backup file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The target directory is not empty.
    #[error("cannot import into {0}: the directory exists and is not empty")]
    TargetNotEmpty(PathBuf),
    /// The imported files are not a snapshot.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupInfo {
    /// Files.
    pub files: usize,
    /// Bytes of data (holes excluded).
    pub data_bytes: u64,
    /// Bytes of the backup file.
    pub backup_bytes: u64,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Writes the full snapshot in `dir` to the backup file `to` (created; an existing file is
/// refused).
pub fn export(dir: &Path, to: &Path) -> Result<BackupInfo, BackupError> {
    let meta = crate::snapshot::read_meta(dir)?;
    let refuse = |reason: String| BackupError::Export {
        dir: dir.to_path_buf(),
        reason,
    };
    if meta.parent.is_some() {
        return Err(refuse(
            "it is a diff snapshot; export the full snapshot (take one without --diff)".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().map_err(io("stat", &e.path()))?;
        if !ft.is_file() || !plain_name(&name) {
            return Err(refuse(format!(
                "{name:?} is not a plain file of a snapshot"
            )));
        }
        names.push(name);
    }
    names.sort();
    if names.len() > MAX_FILES {
        return Err(refuse(format!(
            "{} files, at most {MAX_FILES}",
            names.len()
        )));
    }
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io("create", to))?;
    let mut z = zstd::Encoder::new(BufWriter::new(out), 3).map_err(io("compress into", to))?;
    z.include_checksum(true).map_err(io("compress into", to))?;
    let w = io("write", to);
    let mut info = BackupInfo::default();
    let mut body = || -> std::io::Result<()> {
        z.write_all(MAGIC)?;
        z.write_all(&BACKUP_VERSION.to_le_bytes())?;
        let mut buf = vec![0u8; CHUNK as usize];
        for name in &names {
            let path = dir.join(name);
            let f = File::open(&path)?;
            let size = f.metadata()?.len();
            z.write_all(&[KIND_FILE])?;
            z.write_all(&(name.len() as u16).to_le_bytes())?;
            z.write_all(name.as_bytes())?;
            z.write_all(&size.to_le_bytes())?;
            for (start, end) in data_extents(&f, size)? {
                let mut at = start;
                while at < end {
                    let n = (end - at).min(CHUNK);
                    let chunk = &mut buf[..n as usize];
                    f.read_exact_at(chunk, at)?;
                    z.write_all(&at.to_le_bytes())?;
                    z.write_all(&n.to_le_bytes())?;
                    z.write_all(chunk)?;
                    z.write_all(&crc32fast::hash(chunk).to_le_bytes())?;
                    info.data_bytes += n;
                    at += n;
                }
            }
            z.write_all(&END_OF_EXTENTS.to_le_bytes())?;
            info.files += 1;
        }
        z.write_all(&[KIND_END])?;
        Ok(())
    };
    if let Err(e) = body() {
        let _ = std::fs::remove_file(to);
        return Err(w(e));
    }
    let out = z
        .finish()
        .and_then(|b| b.into_inner().map_err(|e| e.into_error()))
        .map_err(io("finish", to))?;
    out.sync_all().map_err(io("sync", to))?;
    info.backup_bytes = out.metadata().map_err(io("stat", to))?.len();
    Ok(info)
}

/// Reads a backup into the new (or empty) snapshot directory `dir`; on any error the
/// files written so far are removed.
pub fn import(from: &Path, dir: &Path) -> Result<BackupInfo, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::TargetNotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        Err(e) => return Err(io("open", dir)(e)),
    }
    let r = import_into(from, dir);
    if r.is_err() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut info = r?;
    info.backup_bytes = std::fs::metadata(from).map(|m| m.len()).unwrap_or(0);
    crate::snapshot::read_meta(dir)?;
    Ok(info)
}

fn import_into(from: &Path, dir: &Path) -> Result<BackupInfo, BackupError> {
    let file = File::open(from).map_err(io("open", from))?;
    let mut z = zstd::Decoder::new(BufReader::new(file)).map_err(io("decompress", from))?;
    let corrupt = |reason: String| BackupError::Corrupt {
        file: from.to_path_buf(),
        reason,
    };
    let read = |z: &mut dyn Read, buf: &mut [u8], what: &str| {
        z.read_exact(buf)
            .map_err(|e| corrupt(format!("cannot read {what}: {e}")))
    };
    let u64_of = |z: &mut dyn Read, what: &str| -> Result<u64, BackupError> {
        let mut b = [0u8; 8];
        read(z, &mut b, what)?;
        Ok(u64::from_le_bytes(b))
    };
    let mut head = [0u8; 20];
    read(&mut z, &mut head, "the header")?;
    if &head[..16] != MAGIC {
        return Err(corrupt("no NovaCron backup header".into()));
    }
    let version = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if version != BACKUP_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this VMM reads {BACKUP_VERSION}"
        )));
    }
    let mut info = BackupInfo::default();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let mut kind = [0u8; 1];
        read(&mut z, &mut kind, "an entry")?;
        match kind[0] {
            KIND_END => break,
            KIND_FILE => {}
            k => return Err(corrupt(format!("unknown entry kind {k}"))),
        }
        if seen.len() >= MAX_FILES {
            return Err(corrupt(format!("more than {MAX_FILES} files")));
        }
        let mut len = [0u8; 2];
        read(&mut z, &mut len, "a file name length")?;
        let mut name = vec![0u8; usize::from(u16::from_le_bytes(len))];
        read(&mut z, &mut name, "a file name")?;
        let name = String::from_utf8(name)
            .ok()
            .filter(|n| plain_name(n))
            .ok_or_else(|| corrupt("a file name that is not a plain name".into()))?;
        if !seen.insert(name.clone()) {
            return Err(corrupt(format!("{name} appears twice")));
        }
        let size = u64_of(&mut z, "a file size")?;
        if size > MAX_FILE {
            return Err(corrupt(format!("{name}: {size} bytes, at most {MAX_FILE}")));
        }
        let path = dir.join(&name);
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("create", &path))?;
        out.set_len(size).map_err(io("size", &path))?;
        let mut next = 0u64; // extents ascend and do not overlap
        loop {
            let at = u64_of(&mut z, "an extent offset")?;
            if at == END_OF_EXTENTS {
                break;
            }
            let n = u64_of(&mut z, "an extent length")?;
            if at < next || n == 0 || n > CHUNK || at.checked_add(n).is_none_or(|e| e > size) {
                return Err(corrupt(format!(
                    "{name}: extent {at}+{n} out of order or beyond its {size} bytes"
                )));
            }
            let chunk = &mut buf[..n as usize];
            read(&mut z, chunk, "extent data")?;
            let mut crc = [0u8; 4];
            read(&mut z, &mut crc, "an extent crc")?;
            if crc32fast::hash(chunk) != u32::from_le_bytes(crc) {
                return Err(corrupt(format!("{name}: crc mismatch at byte {at}")));
            }
            out.write_all_at(chunk, at).map_err(io("write", &path))?;
            info.data_bytes += n;
            next = at + n;
        }
        out.sync_all().map_err(io("sync", &path))?;
        info.files += 1;
    }
    // Anything after the end marker is damage too.
    let mut rest = [0u8; 1];
    match z.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err(corrupt("data after the end marker".into())),
        Err(e) => return Err(corrupt(format!("the compressed stream is damaged: {e}"))),
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("novacron-backup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fake_snapshot(dir: &Path) {
        let meta = serde_json::json!({
            "version": 1, "kind": "full", "memory": 1 << 20, "vcpus": 1,
            "parent": null, "pages": 1, "cmdline": "", "disks": []
        });
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        std::fs::write(dir.join("state.bin"), b"state").unwrap();
        let mem = File::create(dir.join("memory.bin")).unwrap();
        mem.set_len(64 << 20).unwrap();
        mem.write_all_at(&[7u8; 8192], 40 << 20).unwrap();
    }

    #[test]
    fn export_import_round_trip_keeps_content_and_holes() {
        let root = scratch("rt");
        let (snap, back, out) = (root.join("snap"), root.join("b.nbk"), root.join("out"));
        std::fs::create_dir_all(&snap).unwrap();
        fake_snapshot(&snap);
        let e = export(&snap, &back).unwrap();
        assert_eq!(e.files, 3);
        assert!(e.backup_bytes < 64 << 10, "{e:?}");
        assert!(
            export(&snap, &back).is_err(),
            "an existing backup file is not overwritten"
        );
        let i = import(&back, &out).unwrap();
        assert_eq!((i.files, i.data_bytes), (e.files, e.data_bytes));
        for f in ["meta.json", "state.bin", "memory.bin"] {
            assert_eq!(
                std::fs::read(snap.join(f)).unwrap(),
                std::fs::read(out.join(f)).unwrap()
            );
        }
        let blocks = std::os::unix::fs::MetadataExt::blocks(
            &std::fs::metadata(out.join("memory.bin")).unwrap(),
        );
        assert!(blocks * 512 < 1 << 20, "memory.bin should stay sparse");
        assert!(matches!(
            import(&back, &out),
            Err(BackupError::TargetNotEmpty(_))
        ));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn damaged_backups_are_refused_and_leave_nothing() {
        let root = scratch("bad");
        let (snap, back) = (root.join("snap"), root.join("b.nbk"));
        std::fs::create_dir_all(&snap).unwrap();
        fake_snapshot(&snap);
        export(&snap, &back).unwrap();
        let good = std::fs::read(&back).unwrap();
        // Flip a byte inside the compressed data, truncate, and write garbage.
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let cases: [(&str, Vec<u8>); 3] = [
            ("flipped", flipped),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("garbage", vec![0x5a; 200]),
        ];
        for (name, bytes) in cases {
            let f = root.join(format!("{name}.nbk"));
            std::fs::write(&f, bytes).unwrap();
            let out = root.join(format!("out-{name}"));
            let r = import(&f, &out);
            assert!(r.is_err(), "{name}: a damaged backup was imported");
            let left = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
            assert_eq!(left, 0, "{name}: files left behind");
        }
        let _ = std::fs::remove_dir_all(root);
    }
}
