//! The NovaCron certificate authority: creating it, issuing the controller's, hosts' and
//! clients' certificates, and signing the certificate requests of joining agents.
//!
//! Every certificate names who holds it twice: a SPIFFE-style URI (see [`Identity`]) that the
//! services authorize on, and a DNS name that TLS clients verify (`novacron-controller` for
//! the controller, the host's name for an agent). Keys are ECDSA P-256.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{Identity, IdentityError};

/// The DNS name in the controller's certificate; clients verify it whatever address they
/// dial.
pub const CONTROLLER_DNS_NAME: &str = "novacron-controller";

/// How long issued certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating a key or a certificate failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was generated.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The CA's certificate or key does not parse.
    #[error("the CA {what} does not parse: {source}")]
    BadCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A certificate signing request does not parse or its signature is wrong.
    #[error("the certificate request is not valid: {0}")]
    BadCsr(rcgen::Error),
    /// The name to put in a certificate is not allowed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// A key and the certificate issued for it, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The certificate authority: its certificate and signing key.
pub struct CertAuthority {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

fn generate_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

fn validity(params: &mut CertificateParams, valid: Duration) {
    let now = std::time::SystemTime::now();
    // A minute of slack for hosts whose clocks are slightly behind the CA's.
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + valid).into();
}

fn random_serial() -> Result<rcgen::SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    crate::random::fill(&mut b).map_err(|_| PkiError::Generate {
        what: "a serial number",
        source: rcgen::Error::RingUnspecified,
    })?;
    b[0] &= 0x7f;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    s.try_into().map_err(|source| PkiError::Generate {
        what: "a subject alternative name",
        source,
    })
}

/// The parameters of a leaf certificate for `who`, with `extra` names (DNS names or IP
/// addresses) besides the identity's own.
fn leaf_params(who: &Identity, extra: &[String]) -> Result<CertificateParams, PkiError> {
    who.validate()?;
    let mut p = CertificateParams::default();
    validity(&mut p, LEAF_VALIDITY);
    p.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.common_name());
    dn.push(DnType::OrganizationName, "NovaCron");
    p.distinguished_name = dn;
    p.subject_alt_names.push(SanType::URI(ia5(&who.uri())?));
    if let Some(dns) = who.dns_name() {
        p.subject_alt_names.push(SanType::DnsName(ia5(&dns)?));
    }
    for name in extra {
        match name.parse::<IpAddr>() {
            Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) => p.subject_alt_names.push(SanType::DnsName(ia5(name)?)),
        }
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Controllers and agents are both servers and clients of each other; clients only dial.
    p.extended_key_usages = match who {
        Identity::Client(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl CertAuthority {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = generate_key("the CA key")?;
        let mut p = CertificateParams::default();
        validity(&mut p, CA_VALIDITY);
        p.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "NovaCron");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).map_err(|source| PkiError::Generate {
            what: "the CA certificate",
            source,
        })?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA of an existing certificate and key (PEM), e.g. one the operator brings.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::BadCa {
            what: "key",
            source,
        })?;
        // Parse once now so a bad certificate is reported here, not at the first issue.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(|source| PkiError::BadCa {
            what: "certificate",
            source,
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    /// The CA certificate (PEM), what every component trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM), to store next to the certificate on the controller host only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(|source| PkiError::BadCa {
            what: "certificate",
            source,
        })
    }

    /// Issues a new key and certificate for `who`, valid also for the `extra` DNS names and
    /// IP addresses.
    pub fn issue(&self, who: &Identity, extra: &[String]) -> Result<Issued, PkiError> {
        let key = generate_key("a key")?;
        let params = leaf_params(who, extra)?;
        let cert =
            params
                .signed_by(&key, &self.issuer()?)
                .map_err(|source| PkiError::Generate {
                    what: "a certificate",
                    source,
                })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate request (PEM) for `who`: only the request's public key is used
    /// (its signature is checked); names and usages are the CA's choice, never the
    /// requester's.
    pub fn sign_request(&self, csr_pem: &str, who: &Identity) -> Result<String, PkiError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        csr.params = leaf_params(who, &[])?;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(|source| PkiError::Generate {
                what: "a certificate",
                source,
            })?;
        Ok(cert.pem())
    }
}

/// Checks that `csr_pem` is a well-formed, correctly self-signed certificate request (before a
/// one-time join token is used up on it).
pub fn check_request(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(PkiError::BadCsr)
}

/// A new key and a certificate request for it (both PEM), what a joining agent sends.
pub fn certificate_request(common_name: &str) -> Result<Issued, PkiError> {
    let key = generate_key("a key")?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let csr = p
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|source| PkiError::Generate {
            what: "a certificate request",
            source,
        })?;
    Ok(Issued {
        cert_pem: csr,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::peer_identity;

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn issued_certificates_carry_the_identity() {
        let ca = CertAuthority::generate("test CA").unwrap();
        for who in [
            Identity::Controller,
            Identity::Host("h-1.example".into()),
            Identity::Client("alice".into()),
        ] {
            let i = ca.issue(&who, &["127.0.0.1".into()]).unwrap();
            assert_eq!(peer_identity(&der(&i.cert_pem)).unwrap(), who);
        }
        // A reloaded CA issues too.
        let again = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        again.issue(&Identity::Controller, &[]).unwrap();
    }

    #[test]
    fn requests_get_the_cas_names_not_their_own() {
        let ca = CertAuthority::generate("test CA").unwrap();
        let req = certificate_request("spiffe://novacron/controller").unwrap();
        let cert = ca
            .sign_request(&req.cert_pem, &Identity::Host("h2".into()))
            .unwrap();
        assert_eq!(
            peer_identity(&der(&cert)).unwrap(),
            Identity::Host("h2".into())
        );
        assert!(matches!(
            ca.sign_request("garbage", &Identity::Host("h2".into())),
            Err(PkiError::BadCsr(_))
        ));
        assert!(matches!(
            ca.issue(&Identity::Host("no/slash".into()), &[]),
            Err(PkiError::Identity(_))
        ));
    }
}
