//! NovaCron's security plumbing shared by the controller, the agents, novactl and the test
//! harness:
//!
//! - [`pki`]: the certificate authority (create, issue, sign certificate requests);
//! - [`identity`]: who a certificate names (`spiffe://novacron/...`);
//! - [`files`]: the on-disk layout of a component's TLS directory;
//! - [`tls`]: tonic server and client TLS settings (mutual TLS, rustls with ring);
//! - [`peer`]: the interceptor that admits callers by certificate identity;
//! - [`join`]: one-time join tokens with which agents obtain their host certificate.

pub mod files;
pub mod identity;
pub mod join;
pub mod peer;
pub mod pki;
pub mod random;
pub mod tls;

pub use files::TlsMaterial;
pub use identity::Identity;
pub use peer::{Allow, PeerIdentity, RequirePeer};
pub use pki::CertAuthority;
