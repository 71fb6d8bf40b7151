//! VM disks: each disk of a VM is a file in its directory, copied or cloned (reflink, where
//! the filesystem supports it) from an image, or a blank sparse file. Read-only disks use the
//! image in place.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use novacron_proto::agent as apb;

/// Errors preparing disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image does not exist on this host.
    #[error("disk {index}: image {path} not found on this host")]
    ImageMissing {
        /// Disk index.
        index: usize,
        /// Resolved image path.
        path: String,
    },
    /// Neither an image nor a size.
    #[error("disk {0}: needs an image or a size")]
    Empty(usize),
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

/// Resolves a host path given by the controller: absolute as is, relative under `images`.
pub fn resolve(images: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        images.join(path)
    }
}

/// A prepared disk: the path to hand the VMM and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDisk {
    /// File the VMM opens.
    pub path: PathBuf,
    /// Read-only.
    pub readonly: bool,
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
        if !d.image.is_empty() {
            let src = resolve(images, &d.image);
            if !src.is_file() {
                return Err(DiskError::ImageMissing {
                    index,
                    path: src.display().to_string(),
                });
            }
            if d.readonly {
                out.push(PreparedDisk {
                    path: src,
                    readonly: true,
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
            },
            apb::Disk {
                image: String::new(),
                size_mib: 2,
                readonly: false,
                clone: false,
            },
            apb::Disk {
                image: images.join("base.img").display().to_string(),
                size_mib: 0,
                readonly: true,
                clone: false,
            },
        ];
        let p = prepare(&dir, &images, &disks).unwrap();
        assert_eq!(std::fs::metadata(&p[0].path).unwrap().len(), 1 << 20);
        assert_eq!(&std::fs::read(&p[0].path).unwrap()[..5], b"hello");
        assert_eq!(std::fs::metadata(&p[1].path).unwrap().len(), 2 << 20);
        assert!(p[2].readonly && p[2].path.ends_with("base.img"));
        let missing = vec![apb::Disk {
            image: "nope.img".into(),
            ..Default::default()
        }];
        assert!(matches!(
            prepare(&dir, &images, &missing),
            Err(DiskError::ImageMissing { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
