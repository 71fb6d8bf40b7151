//! The agent's certificate: `novacron-agent join` trades a join token for a host certificate
//! at the controller's join endpoint, and [`load`] reads it back at start (with the host name
//! it carries).

use std::path::Path;
use std::time::Duration;

use novacron_proto::controller as cpb;
use novacron_proto::controller::join_client::JoinClient;
use novacron_security::files::FilesError;
use novacron_security::identity::pem_identity;
use novacron_security::join::{JoinError as TokenError, JoinToken};
use novacron_security::pki::{self, PkiError, CONTROLLER_DNS_NAME};
use novacron_security::{tls, Identity, TlsMaterial};
use tonic::transport::Endpoint;

/// Errors joining or loading the host certificate.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token does not parse.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Making the key or request.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Reading or writing the TLS directory.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The controller could not be reached or refused.
    #[error("join at {addr}: {message}")]
    Controller {
        /// The join endpoint.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The certificate is not a host certificate.
    #[error("the certificate in {dir} is not a host certificate: {reason}")]
    NotAHost {
        /// The TLS directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// Obtains this host's certificate with `token` from the join endpoint `addr` (HOST:PORT) and
/// writes the TLS directory `dir`; answers the host name.
pub async fn join(token: &str, addr: &str, dir: &Path) -> Result<String, JoinError> {
    let t = JoinToken::decode(token)?;
    let req = pki::certificate_request(&t.host)?;
    let fail = |message: String| JoinError::Controller {
        addr: addr.to_string(),
        message,
    };
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_config(tls::anonymous_client(&t.ca_pem, CONTROLLER_DNS_NAME))
        .map_err(|e| fail(e.to_string()))?
        .connect()
        .await
        .map_err(|e| fail(format!("{e} (is the join endpoint at this address?)")))?;
    let r = JoinClient::new(ch)
        .join_host(cpb::JoinHostRequest {
            secret: t.secret.clone(),
            csr_pem: req.cert_pem,
        })
        .await
        .map_err(|s| fail(s.message().to_string()))?
        .into_inner();
    let m = TlsMaterial {
        ca_pem: t.ca_pem,
        cert_pem: r.cert_pem,
        key_pem: req.key_pem,
    };
    m.save(dir)?;
    Ok(r.host_name)
}

/// Reads the TLS directory `dir`: the material and the host name its certificate carries.
pub fn load(dir: &Path) -> Result<(TlsMaterial, String), JoinError> {
    let m = TlsMaterial::load(dir)?;
    let not_host = |reason: String| JoinError::NotAHost {
        dir: dir.display().to_string(),
        reason,
    };
    match pem_identity(&m.cert_pem) {
        Ok(Identity::Host(h)) => Ok((m, h)),
        Ok(other) => Err(not_host(format!("it is the certificate of the {other}"))),
        Err(e) => Err(not_host(e.to_string())),
    }
}
