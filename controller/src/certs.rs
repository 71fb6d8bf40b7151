//! `novacron-controller certs ...`: the operator's PKI in one step. `init` creates the CA
//! (or adopts the operator's own), the controller's certificate and a first client
//! certificate for novactl; `issue` makes host and client certificates directly; `join-token`
//! mints a one-time token with which an agent obtains its host certificate itself.
//!
//! Layout under the controller's data directory: `pki/` is the controller's TLS directory
//! (`ca.pem`, `ca.key`, `cert.pem`, `key.pem`), `pki/join-tokens/` the outstanding tokens,
//! `pki/clients/<name>/` the client bundles `init` made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use novacron_security::files::{self, FilesError, CA_CERT, CA_KEY};
use novacron_security::join::{JoinError, JoinTokens};
use novacron_security::pki::PkiError;
use novacron_security::{CertAuthority, Identity, TlsMaterial};

/// Errors of the certificate commands.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// PKI.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Files.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// Join tokens.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// `init` on a directory that has a CA.
    #[error("{0} already holds a CA; remove the pki directory to start over")]
    Exists(PathBuf),
    /// No CA key to sign with.
    #[error(
        "no CA key at {0}: run `novacron-controller certs init` (with an operator CA kept \
         offline, issue certificates with it instead)"
    )]
    NoCa(PathBuf),
}

/// The controller's TLS directory under `data_dir`.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// The join tokens under the TLS directory `tls_dir`.
pub fn join_tokens(tls_dir: &Path) -> JoinTokens {
    JoinTokens::new(&tls_dir.join("join-tokens"))
}

/// The CA whose key is in `tls_dir`, if it is there (joins need it).
pub fn load_ca(tls_dir: &Path) -> Result<Option<CertAuthority>, CertsError> {
    let key = tls_dir.join(CA_KEY);
    if !key.is_file() {
        return Ok(None);
    }
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| FilesError::Read { path: p, source })
    };
    let ca = CertAuthority::from_pem(&read(tls_dir.join(CA_CERT))?, &read(key)?)?;
    Ok(Some(ca))
}

fn require_ca(tls_dir: &Path) -> Result<CertAuthority, CertsError> {
    load_ca(tls_dir)?.ok_or_else(|| CertsError::NoCa(tls_dir.join(CA_KEY)))
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    /// The controller's TLS directory.
    pub tls_dir: PathBuf,
    /// The client bundle for novactl.
    pub client_dir: PathBuf,
}

/// Creates the CA (or adopts `own_ca` = (certificate PEM, key PEM)), the controller's
/// certificate (valid for `novacron-controller` and `sans`), and a client bundle for
/// `client`.
pub fn init(
    data_dir: &Path,
    sans: &[String],
    own_ca: Option<(String, String)>,
    client: &str,
) -> Result<Initialized, CertsError> {
    let dir = pki_dir(data_dir);
    if dir.join(CA_CERT).exists() {
        return Err(CertsError::Exists(dir));
    }
    let ca = match own_ca {
        Some((cert, key)) => CertAuthority::from_pem(&cert, &key)?,
        None => CertAuthority::generate("NovaCron CA")?,
    };
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(sans.iter().cloned());
    let own = ca.issue(&Identity::Controller, &names)?;
    TlsMaterial::new(ca.cert_pem(), &own).save(&dir)?;
    files::write_file(&dir.join(CA_KEY), &ca.key_pem(), 0o600)?;
    let client_dir = dir.join("clients").join(client);
    issue_into(&ca, &Identity::Client(client.to_string()), &[], &client_dir)?;
    Ok(Initialized {
        tls_dir: dir,
        client_dir,
    })
}

fn issue_into(
    ca: &CertAuthority,
    who: &Identity,
    sans: &[String],
    out: &Path,
) -> Result<(), CertsError> {
    let issued = ca.issue(who, sans)?;
    TlsMaterial::new(ca.cert_pem(), &issued).save(out)?;
    Ok(())
}

/// Issues a certificate for `who` into the TLS directory `out`, with the CA under `data_dir`.
pub fn issue(
    data_dir: &Path,
    who: &Identity,
    sans: &[String],
    out: &Path,
) -> Result<(), CertsError> {
    let ca = require_ca(&pki_dir(data_dir))?;
    issue_into(&ca, who, sans, out)
}

/// Mints a one-time join token for `host`, valid for `ttl`.
pub fn join_token(data_dir: &Path, host: &str, ttl: Duration) -> Result<String, CertsError> {
    let dir = pki_dir(data_dir);
    let ca = require_ca(&dir)?;
    Ok(join_tokens(&dir).create(ca.cert_pem(), host, ttl)?.encode())
}
