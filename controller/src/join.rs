//! The join endpoint (`novacron.controller.v1.Join`): an agent trades a one-time join token
//! and a certificate request for its host certificate, signed by the controller's CA for the
//! host name the token was minted for. Served on its own listener with server-only TLS.

use std::sync::Arc;

use novacron_proto::controller as pb;
use novacron_proto::controller::join_server::Join;
use novacron_security::join::JoinTokens;
use novacron_security::{pki, CertAuthority, Identity};
use tonic::{Request, Response, Status};

/// The join service.
#[derive(Debug, Clone)]
pub struct JoinApi {
    /// The CA that signs host certificates.
    pub ca: Arc<CertAuthority>,
    /// The outstanding tokens.
    pub tokens: JoinTokens,
}

#[tonic::async_trait]
impl Join for JoinApi {
    async fn join_host(
        &self,
        r: Request<pb::JoinHostRequest>,
    ) -> Result<Response<pb::JoinHostResponse>, Status> {
        let r = r.into_inner();
        // A malformed request must not use up the token.
        pki::check_request(&r.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let host = self
            .tokens
            .redeem(&r.secret)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let cert_pem = self
            .ca
            .sign_request(&r.csr_pem, &Identity::Host(host.clone()))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(host = %host, "issued a host certificate through a join token");
        Ok(Response::new(pb::JoinHostResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            host_name: host,
        }))
    }
}
