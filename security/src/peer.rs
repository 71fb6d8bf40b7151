//! Authorization by certificate: [`RequirePeer`], a tonic interceptor that lets a call
//! through only when the client's (already CA-verified) certificate names an allowed
//! [`Identity`], and hands that identity to the handler as a [`PeerIdentity`] extension.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::identity::{peer_identity, Identity};

/// The caller's identity, as its certificate names it (absent in development mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Identity);

/// Which callers a service takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Only the controller.
    Controller,
    /// Any host's agent.
    Hosts,
    /// The controller or any host's agent.
    ControllerOrHosts,
    /// Any certificate of the CA (users authenticate further with a token).
    Anyone,
}

impl Allow {
    fn admits(self, id: &Identity) -> bool {
        matches!(
            (self, id),
            (Allow::Anyone, _)
                | (
                    Allow::Controller | Allow::ControllerOrHosts,
                    Identity::Controller
                )
                | (Allow::Hosts | Allow::ControllerOrHosts, Identity::Host(_))
        )
    }
}

/// Server interceptor admitting the callers of an [`Allow`] (or, in development mode without
/// TLS, everyone).
#[derive(Debug, Clone, Copy)]
pub struct RequirePeer {
    allow: Option<Allow>,
}

impl RequirePeer {
    /// Admits the callers `allow` names.
    pub fn new(allow: Allow) -> Self {
        Self { allow: Some(allow) }
    }

    /// Development mode: no TLS, everyone is admitted.
    pub fn insecure() -> Self {
        Self { allow: None }
    }
}

/// The identity of the caller of `req` (none without TLS).
pub fn caller<T>(req: &Request<T>) -> Option<&Identity> {
    req.extensions().get::<PeerIdentity>().map(|p| &p.0)
}

impl Interceptor for RequirePeer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(allow) = self.allow else {
            return Ok(req);
        };
        let id = {
            let certs = req
                .peer_certs()
                .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
            let first = certs
                .first()
                .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
            peer_identity(first.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?
        };
        if !allow.admits(&id) {
            return Err(Status::permission_denied(format!(
                "{id} may not call this service"
            )));
        }
        req.extensions_mut().insert(PeerIdentity(id));
        Ok(req)
    }
}
