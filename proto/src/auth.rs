//! Bearer-token authentication of NovaCron's gRPC calls, both sides of it: [`read_token`]
//! loads a token file, [`AttachToken`] is the client's interceptor adding
//! `authorization: Bearer <token>` to every call, and [`BearerAuth`] the server's interceptor
//! refusing calls without the right token (compared in constant time).
//!
//! A client (novactl, the agent's registry client):
//! ```
//! # use novacron_proto::auth::AttachToken;
//! let attach = AttachToken::new(Some("s3cret"))?;
//! // RegistryClient::with_interceptor(channel, attach)
//! # Ok::<(), novacron_proto::auth::AuthError>(())
//! ```
//! A server wraps each protected service with
//! `InterceptedService::new(service, BearerAuth::new(token))`; with no token configured both
//! interceptors let everything through.

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// Errors loading or using a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("token file {0} is empty")]
    Empty(String),
    /// The token cannot travel in a gRPC header.
    #[error("the bearer token holds characters not allowed in a header (use visible ASCII)")]
    NotAHeader,
}

/// Reads a token file (surrounding whitespace is ignored).
pub fn read_token(path: &Path) -> Result<String, AuthError> {
    let s = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let t = s.trim().to_string();
    if t.is_empty() {
        return Err(AuthError::Empty(path.display().to_string()));
    }
    Ok(t)
}

/// Server side: checks the bearer token of each request (no token configured: everything
/// passes). Missing and wrong tokens are both UNAUTHENTICATED, with different messages.
#[derive(Debug, Clone, Default)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
}

impl BearerAuth {
    /// An interceptor requiring `token` when given.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(Arc::from),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.token else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match got.strip_prefix("Bearer ") {
            Some(t) if bool::from(t.as_bytes().ct_eq(want.as_bytes())) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            )),
        }
    }
}

/// Client side: adds `authorization: Bearer <token>` to outgoing requests (no token: nothing).
#[derive(Debug, Clone, Default)]
pub struct AttachToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AttachToken {
    /// Attaches `token` when given; a token that cannot be a header value is an error.
    pub fn new(token: Option<&str>) -> Result<Self, AuthError> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| AuthError::NotAHeader)
            })
            .transpose()?;
        Ok(Self { header })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert(AUTHORIZATION, h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert(AUTHORIZATION, v.parse().unwrap());
        r
    }

    fn message(r: Result<Request<()>, Status>) -> String {
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        s.message().to_string()
    }

    #[test]
    fn server_checks_the_token() {
        let mut a = BearerAuth::new(Some("s3cret".into()));
        assert!(a.call(with_auth("Bearer s3cret")).is_ok());
        assert_eq!(
            message(a.call(with_auth("Bearer nope"))),
            "invalid bearer token"
        );
        // A prefix of the token, or the token plus more, is wrong too.
        assert_eq!(
            message(a.call(with_auth("Bearer s3cre"))),
            "invalid bearer token"
        );
        assert_eq!(
            message(a.call(with_auth("Bearer s3crets"))),
            "invalid bearer token"
        );
        assert!(message(a.call(Request::new(()))).starts_with("missing"));
        assert!(message(a.call(with_auth("Basic s3cret"))).starts_with("missing"));
        assert!(BearerAuth::new(None).call(Request::new(())).is_ok());
    }

    #[test]
    fn client_attaches_what_the_server_wants() {
        let mut server = BearerAuth::new(Some("s3cret".into()));
        let r = AttachToken::new(Some("s3cret"))
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer s3cret");
        assert!(server.call(r).is_ok());
        let r = AttachToken::new(None)
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        assert!(r.metadata().get(AUTHORIZATION).is_none());
        assert!(server.call(r).is_err());
        assert!(matches!(
            AttachToken::new(Some("bad\ntoken")),
            Err(AuthError::NotAHeader)
        ));
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("novacron-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "  s3cret\n").unwrap();
        assert_eq!(read_token(&f).unwrap(), "s3cret");
        std::fs::write(&f, " \n").unwrap();
        assert!(matches!(read_token(&f), Err(AuthError::Empty(_))));
        assert!(matches!(
            read_token(&dir.join("absent")),
            Err(AuthError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
