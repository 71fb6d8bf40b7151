//! tonic TLS settings from [`TlsMaterial`]: servers that require a client certificate from
//! the CA (mutual TLS), the join endpoint that does not, and clients that present their own
//! certificate and verify the server's name.

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use crate::files::TlsMaterial;

/// A server that only completes handshakes with clients holding a certificate of the CA.
pub fn mutual_server(m: &TlsMaterial) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(&m.cert_pem, &m.key_pem))
        .client_ca_root(Certificate::from_pem(&m.ca_pem))
}

/// A server that proves its identity but takes clients without certificates (the join
/// endpoint, where agents that have no certificate yet ask for one).
pub fn server_only(m: &TlsMaterial) -> ServerTlsConfig {
    ServerTlsConfig::new().identity(TlsIdentity::from_pem(&m.cert_pem, &m.key_pem))
}

/// A client presenting its certificate and accepting only a server of the CA whose
/// certificate names `server_name`.
pub fn mutual_client(m: &TlsMaterial, server_name: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&m.ca_pem))
        .identity(TlsIdentity::from_pem(&m.cert_pem, &m.key_pem))
        .domain_name(server_name)
}

/// A client without a certificate of its own (joining agents) that accepts only a server of
/// the CA in `ca_pem` named `server_name`.
pub fn anonymous_client(ca_pem: &str, server_name: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name)
}
