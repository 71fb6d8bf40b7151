//! VM disks: each disk of a VM is a file in its directory, copied or cloned (reflink, where
//! the filesystem supports it) from an image, or a blank sparse file. Read-only disks and
//! shared disks (an image on storage every host reaches) use the image in place.
//!
//! Which disks move with a VM ([`moves`]): the files in its directory. A live migration's
//! destination creates each writable one blank at the source's size ([`prepare_incoming`]),
//! for the VMM's stream to fill; a cold move copies them between agents
//! ([`crate::disk_copy`]). Disks used in place are never copied or deleted.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use novacron_proto::agent as apb;

use crate::images_dir::{ConfinementError, ImagesDir};

/// Errors preparing disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image is not a file of the agent's images directory (missing, or refused: the
    /// answer is the same).
    #[error(transparent)]
    Confined(#[from] ConfinementError),
    /// Neither an image nor a size.
    #[error("disk {0}: needs an image or a size")]
    Empty(usize),
    /// A shared disk names no file.
    #[error("disk {0}: a shared disk needs an image (the file every host reaches)")]
    SharedNeedsImage(usize),
    /// An incoming migration did not say how large a disk is on the source.
    #[error("disk {0}: the source's size of this writable disk is missing (PrepareIncomingRequest.disk_sizes)")]
    SizeMissing(usize),
    /// Copying or creating failed.
    #[error("disk {index}: {path}: {source}")]
    Io {
        /// Disk index.
        index: usize,
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// The image file of disk `index`: `name` resolved inside the agent's images directory
/// ([`ImagesDir::resolve`]: nothing outside it, and the same answer for a missing file).
pub fn image(images: &Path, index: usize, name: &str) -> Result<PathBuf, DiskError> {
    Ok(ImagesDir::new(images).resolve(&format!("disk {index} image"), name)?)
}

/// A prepared disk: the path to hand the VMM and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDisk {
    /// File the VMM opens.
    pub path: PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// On shared storage: the same file on every host (never copied by a migration).
    pub shared: bool,
}

/// Whether a disk is used in place (read-only or shared image) rather than being a file of
/// the VM's own directory.
pub fn in_place(d: &apb::Disk) -> bool {
    !d.image.is_empty() && (d.readonly || d.shared)
}

/// Whether a disk moves with its VM (a file of its directory): copied by a cold move,
/// carried by a live migration's stream when writable.
pub fn moves(d: &apb::Disk) -> bool {
    !in_place(d)
}

/// The file of disk `index` of a VM in `dir` (nothing is created).
pub fn path_of(
    dir: &Path,
    images: &Path,
    index: usize,
    d: &apb::Disk,
) -> Result<PathBuf, DiskError> {
    if in_place(d) {
        image(images, index, &d.image)
    } else {
        Ok(dir.join(format!("disk{index}.img")))
    }
}

/// What each disk of a VM in `dir` looks like on this host (size, allocation).
pub fn describe(dir: &Path, images: &Path, disks: &[apb::Disk]) -> Vec<apb::DiskStatus> {
    use std::os::unix::fs::MetadataExt;
    disks
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let path = path_of(dir, images, index, d).ok();
            let (size_bytes, allocated_bytes) = path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| (m.len(), m.blocks() * 512))
                .unwrap_or((0, 0));
            apb::DiskStatus {
                index: index as u32,
                path: path.map(|p| p.display().to_string()).unwrap_or_default(),
                size_bytes,
                allocated_bytes,
                readonly: d.readonly,
                shared: d.shared,
            }
        })
        .collect()
}

/// Creates, for an incoming live migration, each writable disk that moves as a blank sparse
/// file of the source's size (`sizes`, by index): the VMM's stream fills it. Existing files
/// are truncated first (a blank target is what the VMM requires). Other disks are left to
/// [`prepare`].
pub fn prepare_incoming(dir: &Path, disks: &[apb::Disk], sizes: &[u64]) -> Result<(), DiskError> {
    for (index, d) in disks.iter().enumerate() {
        if !moves(d) || d.readonly {
            continue;
        }
        let size = match sizes.get(index) {
            Some(&s) if s > 0 => s,
            _ => return Err(DiskError::SizeMissing(index)),
        };
        let dst = dir.join(format!("disk{index}.img"));
        let io = |source| DiskError::Io {
            index,
            path: dst.display().to_string(),
            source,
        };
        let f = File::create(&dst).map_err(io)?;
        f.set_len(size).map_err(io)?;
    }
    Ok(())
}

const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies `src` to `dst`, as a reflink clone (shared blocks) when `try_clone` and the
/// filesystem allows it.
pub(crate) fn clone_or_copy(src: &Path, dst: &Path, try_clone: bool) -> std::io::Result<()> {
    if try_clone {
        let s = File::open(src)?;
        let d = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dst)?;
        // SAFETY: both descriptors are valid for the duration of the call.
        let r = unsafe { libc::ioctl(d.as_raw_fd(), FICLONE as _, s.as_raw_fd()) };
        if r == 0 {
            return Ok(());
        }
    }
    std::fs::copy(src, dst).map(|_| ())
}

/// Prepares the disks of a VM in `dir` (idempotent: existing disk files are kept).
pub fn prepare(
    dir: &Path,
    images: &Path,
    disks: &[apb::Disk],
) -> Result<Vec<PreparedDisk>, DiskError> {
    let mut out = Vec::new();
    for (index, d) in disks.iter().enumerate() {
        let dst = dir.join(format!("disk{index}.img"));
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| DiskError::Io {
                index,
                path,
                source,
            }
        };
        if d.shared && d.image.is_empty() {
            return Err(DiskError::SharedNeedsImage(index));
        }
        if !d.image.is_empty() {
            let src = image(images, index, &d.image)?;
            if in_place(d) {
                out.push(PreparedDisk {
                    path: src,
                    readonly: d.readonly,
                    shared: d.shared,
                });
                continue;
            }
            if !dst.exists() {
                let tmp = dst.with_extension("partial");
                clone_or_copy(&src, &tmp, d.clone).map_err(io(&tmp))?;
                std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
            }
        } else if d.size_mib == 0 {
            return Err(DiskError::Empty(index));
        } else if !dst.exists() {
            File::create(&dst).map_err(io(&dst))?;
        }
        if d.size_mib > 0 {
            let f = OpenOptions::new()
                .write(true)
                .open(&dst)
                .map_err(io(&dst))?;
            let want = d.size_mib * 1024 * 1024;
            if f.metadata().map_err(io(&dst))?.len() < want {
                f.set_len(want).map_err(io(&dst))?;
            }
        }
        out.push(PreparedDisk {
            path: dst,
            readonly: d.readonly,
            shared: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_blank_and_readonly() {
        let dir = std::env::temp_dir().join(format!("nc-disks-{}", std::process::id()));
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("base.img"), b"hello").unwrap();
        let disks = vec![
            apb::Disk {
                image: "base.img".into(),
                size_mib: 1,
                readonly: false,
                clone: true,
                shared: false,
            },
            apb::Disk {
                image: String::new(),
                size_mib: 2,
                readonly: false,
                clone: false,
                shared: false,
            },
            apb::Disk {
                image: "base.img".into(),
                size_mib: 0,
                readonly: true,
                clone: false,
                shared: false,
            },
            apb::Disk {
                image: "base.img".into(),
                shared: true,
                ..Default::default()
            },
        ];
        let p = prepare(&dir, &images, &disks).unwrap();
        assert_eq!(std::fs::metadata(&p[0].path).unwrap().len(), 1 << 20);
        assert_eq!(&std::fs::read(&p[0].path).unwrap()[..5], b"hello");
        assert_eq!(std::fs::metadata(&p[1].path).unwrap().len(), 2 << 20);
        assert!(p[2].readonly && p[2].path.ends_with("base.img"));
        // Shared: the image itself, writable, never a copy.
        assert!(!p[3].readonly && p[3].shared && p[3].path == images.join("base.img"));
        assert!(!dir.join("disk3.img").exists());
        let st = describe(&dir, &images, &disks);
        assert_eq!(st[1].size_bytes, 2 << 20);
        assert!(st[1].allocated_bytes < st[1].size_bytes);
        assert!(st[3].shared && st[3].size_bytes == 5);
        let no_file = vec![apb::Disk {
            shared: true,
            ..Default::default()
        }];
        assert!(matches!(
            prepare(&dir, &images, &no_file),
            Err(DiskError::SharedNeedsImage(0))
        ));
        let missing = vec![apb::Disk {
            image: "nope.img".into(),
            ..Default::default()
        }];
        assert!(matches!(
            prepare(&dir, &images, &missing),
            Err(DiskError::Confined(_))
        ));
        // An absolute path is refused even where the file exists.
        let absolute = vec![apb::Disk {
            image: images.join("base.img").display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        assert!(matches!(
            prepare(&dir, &images, &absolute),
            Err(DiskError::Confined(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn incoming_disks_are_blank_at_the_source_size() {
        let dir = std::env::temp_dir().join(format!("nc-disks-in-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk0.img"), b"stale data").unwrap();
        let disks = vec![
            apb::Disk {
                image: "base.img".into(),
                ..Default::default()
            },
            apb::Disk {
                image: "ro.img".into(),
                readonly: true,
                ..Default::default()
            },
            apb::Disk {
                image: "/shared/s.img".into(),
                shared: true,
                ..Default::default()
            },
        ];
        prepare_incoming(&dir, &disks, &[3 << 20, 0, 0]).unwrap();
        let m = std::fs::metadata(dir.join("disk0.img")).unwrap();
        assert_eq!(m.len(), 3 << 20);
        assert!(std::fs::read(dir.join("disk0.img"))
            .unwrap()
            .iter()
            .all(|b| *b == 0));
        assert!(!dir.join("disk1.img").exists() && !dir.join("disk2.img").exists());
        assert!(matches!(
            prepare_incoming(&dir, &disks, &[]),
            Err(DiskError::SizeMissing(0))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
