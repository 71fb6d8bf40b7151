//! Who holds a certificate: [`Identity`] and reading it back from a peer's certificate.
//!
//! The identity travels as a URI subject alternative name:
//! `spiffe://novacron/controller`, `spiffe://novacron/host/<name>`,
//! `spiffe://novacron/client/<name>`.

use std::fmt;

/// The URI prefix of every NovaCron identity.
pub const URI_PREFIX: &str = "spiffe://novacron/";

/// Errors of identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A host or client name that cannot be put in a certificate.
    #[error(
        "name {0:?} is not allowed in a certificate: use 1-63 letters, digits, '-', '_' or '.', \
         starting with a letter or digit"
    )]
    BadName(String),
    /// The peer's certificate does not parse.
    #[error("the peer certificate does not parse")]
    BadCertificate,
    /// The peer's certificate carries no NovaCron identity.
    #[error("the peer certificate carries no NovaCron identity (spiffe://novacron/...)")]
    NoIdentity,
}

/// A principal of the management plane as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The controller.
    Controller,
    /// The agent of the named host.
    Host(String),
    /// A named client (an operator's novactl, automation).
    Client(String),
}

/// Whether `name` may be a host or client name in a certificate (and in TLS server names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.contains("..")
        && !name.ends_with('.')
}

impl Identity {
    /// Checks the name is one a certificate can carry.
    pub fn validate(&self) -> Result<(), IdentityError> {
        match self {
            Identity::Controller => Ok(()),
            Identity::Host(n) | Identity::Client(n) if valid_name(n) => Ok(()),
            Identity::Host(n) | Identity::Client(n) => Err(IdentityError::BadName(n.clone())),
        }
    }

    /// The identity URI.
    pub fn uri(&self) -> String {
        match self {
            Identity::Controller => format!("{URI_PREFIX}controller"),
            Identity::Host(n) => format!("{URI_PREFIX}host/{n}"),
            Identity::Client(n) => format!("{URI_PREFIX}client/{n}"),
        }
    }

    /// The DNS name TLS clients verify (clients have none).
    pub fn dns_name(&self) -> Option<String> {
        match self {
            Identity::Controller => Some(crate::pki::CONTROLLER_DNS_NAME.to_string()),
            Identity::Host(n) => Some(n.clone()),
            Identity::Client(_) => None,
        }
    }

    /// The certificate's common name.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Controller => "novacron controller".into(),
            Identity::Host(n) => format!("novacron host {n}"),
            Identity::Client(n) => format!("novacron client {n}"),
        }
    }

    /// Parses an identity URI.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let id = match rest.split_once('/') {
            None if rest == "controller" => Identity::Controller,
            Some(("host", n)) => Identity::Host(n.to_string()),
            Some(("client", n)) => Identity::Client(n.to_string()),
            _ => return None,
        };
        id.validate().ok().map(|()| id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Controller => write!(f, "controller"),
            Identity::Host(n) => write!(f, "host {n}"),
            Identity::Client(n) => write!(f, "client {n}"),
        }
    }
}

/// The identity in a (DER) certificate that TLS already verified against the CA.
pub fn peer_identity(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::BadCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::BadCertificate)?
        .ok_or(IdentityError::NoIdentity)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Identity::from_uri(u),
            _ => None,
        })
        .ok_or(IdentityError::NoIdentity)
}

/// The identity in the first certificate of a PEM text (e.g. a component's own `cert.pem`).
pub fn pem_identity(pem: &str) -> Result<Identity, IdentityError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| IdentityError::BadCertificate)?;
    peer_identity(&p.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_names_are_refused() {
        for id in [
            Identity::Controller,
            Identity::Host("node-1.dc".into()),
            Identity::Client("ci_bot".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for bad in ["", "-x", "a/b", "a..b", "x.", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(Identity::from_uri(&format!("{URI_PREFIX}host/{bad}")).is_none());
        }
        assert!(Identity::from_uri("spiffe://other/controller").is_none());
        assert!(Identity::from_uri("spiffe://novacron/admin/x").is_none());
    }
}
