//! Where certificates live on disk: a TLS directory holds `ca.pem` (the CA every peer is
//! checked against), `cert.pem` and `key.pem` (this component's own). Keys are written 0600
//! in a 0700 directory whatever the umask.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::pki::Issued;

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name (on the controller host only).
pub const CA_KEY: &str = "ca.key";
/// A component's certificate.
pub const CERT: &str = "cert.pem";
/// A component's private key.
pub const KEY: &str = "key.pem";

/// Errors reading or writing TLS files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A file that must not be overwritten exists.
    #[error("{0} exists; remove it first or choose another directory")]
    Exists(PathBuf),
}

/// A component's TLS material, PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The CA certificate(s) peers are verified against.
    pub ca_pem: String,
    /// This component's certificate (chain).
    pub cert_pem: String,
    /// This component's key.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn read(path: PathBuf) -> Result<String, FilesError> {
    std::fs::read_to_string(&path).map_err(|source| FilesError::Read { path, source })
}

/// Creates `dir` (and parents) and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), FilesError> {
    let err = |source| FilesError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Writes `contents` to `path` with `mode` (set explicitly, so the umask does not matter),
/// replacing the file atomically.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), FilesError> {
    let err = |source| FilesError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl TlsMaterial {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, FilesError> {
        Ok(Self {
            ca_pem: read(dir.join(CA_CERT))?,
            cert_pem: read(dir.join(CERT))?,
            key_pem: read(dir.join(KEY))?,
        })
    }

    /// The material of `issued` trusting `ca_pem`.
    pub fn new(ca_pem: &str, issued: &Issued) -> Self {
        Self {
            ca_pem: ca_pem.to_string(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
        }
    }

    /// Writes the three files into `dir` (created 0700; the key 0600).
    pub fn save(&self, dir: &Path) -> Result<(), FilesError> {
        private_dir(dir)?;
        write_file(&dir.join(CA_CERT), &self.ca_pem, 0o644)?;
        write_file(&dir.join(CERT), &self.cert_pem, 0o644)?;
        write_file(&dir.join(KEY), &self.key_pem, 0o600)
    }

    /// Whether `dir` holds a complete set.
    pub fn present(dir: &Path) -> bool {
        [CA_CERT, CERT, KEY].iter().all(|f| dir.join(f).is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn keys_are_private_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("nc-tlsfiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = TlsMaterial {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        };
        // SAFETY: umask only changes this process's file creation mask; restored below.
        let old = unsafe { libc::umask(0) };
        let res = m.save(&dir.join("t"));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        res.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.join("t")), 0o700);
        assert_eq!(mode(&dir.join("t").join(KEY)), 0o600);
        let back = TlsMaterial::load(&dir.join("t")).unwrap();
        assert_eq!(back.key_pem, "key");
        assert!(TlsMaterial::present(&dir.join("t")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
