//! The one-time credential of a live migration: an ephemeral CA made for one migration,
//! whose key is dropped as soon as it has signed exactly two certificates, the
//! destination VMM's server certificate (DNS name `novacron-migration`, server-auth) and
//! the source VMM's client certificate (client-auth). Each agent gets only its own half
//! (CA certificate, own certificate, own key); the destination accepts only a client
//! certified by that CA, the source only a server certified by it, so no other migration's
//! credential, nor any other peer, can take either end of this stream. Certificates are
//! valid from an hour ago (clock skew) for [`VALIDITY`].

use std::time::{Duration, SystemTime};

use novacron_vmm_api::migration::MigrationTls;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

/// The DNS name of every destination certificate (the name the source VMM checks).
pub const SERVER_NAME: &str = "novacron-migration";

/// How long a migration credential is valid: longer than any migration may run.
pub const VALIDITY: Duration = Duration::from_secs(2 * 86_400);

/// A credential that could not be made.
#[derive(Debug, Error)]
pub enum MigrationTlsError {
    /// Key generation or signing failed (the system's random source, most likely).
    #[error("cannot issue the migration's TLS credential: {0}")]
    Issue(#[from] rcgen::Error),
}

/// Both halves of one migration's credential.
#[derive(Debug, Clone)]
pub struct Credential {
    /// For the source agent's MigrateOut.
    pub source: MigrationTls,
    /// For the destination agent's PrepareIncoming.
    pub destination: MigrationTls,
}

fn params(
    name: &str,
    sans: Vec<String>,
    now: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + VALIDITY).into();
    Ok(p)
}

/// Issues a fresh credential for the migration `migration_id` (named in the certificates'
/// subjects, for logs).
pub fn issue(migration_id: &str) -> Result<Credential, MigrationTlsError> {
    let now = SystemTime::now();
    let ca_key = KeyPair::generate()?;
    let mut ca = params(
        &format!("novacron migration CA {migration_id}"),
        vec![],
        now,
    )?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);

    let leaf = |role: &str, eku: ExtendedKeyUsagePurpose| -> Result<MigrationTls, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = params(
            &format!("novacron migration {role} {migration_id}"),
            vec![SERVER_NAME.to_string()],
            now,
        )?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer)?;
        Ok(MigrationTls {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    };
    let destination = leaf("destination", ExtendedKeyUsagePurpose::ServerAuth)?;
    let source = leaf("source", ExtendedKeyUsagePurpose::ClientAuth)?;
    // The CA's key goes here: nothing can sign for this migration any more.
    drop(issuer);
    drop(ca_key);
    Ok(Credential {
        source,
        destination,
    })
}

/// The proto form of one half.
pub fn to_proto(t: &MigrationTls) -> novacron_proto::agent::MigrationTls {
    novacron_proto::agent::MigrationTls {
        ca_pem: t.ca_pem.clone(),
        cert_pem: t.cert_pem.clone(),
        key_pem: t.key_pem.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_share_the_ca_and_nothing_else() {
        let c = issue("m-1").unwrap();
        assert_eq!(c.source.ca_pem, c.destination.ca_pem);
        assert_ne!(c.source.cert_pem, c.destination.cert_pem);
        assert_ne!(c.source.key_pem, c.destination.key_pem);
        assert!(c.source.key_pem.contains("PRIVATE KEY"));
        let other = issue("m-2").unwrap();
        assert_ne!(other.source.ca_pem, c.source.ca_pem, "a CA per migration");
    }

    #[test]
    fn debug_never_prints_the_key() {
        let c = issue("m-1").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("PRIVATE KEY") && shown.contains("redacted"));
    }
}
