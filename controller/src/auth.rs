//! Optional bearer-token authentication: with `--token-file`, every call to the VM, host and
//! registry services must carry `authorization: Bearer <token>` (health checking and
//! reflection stay open).

use std::path::Path;
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Errors loading the token.
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

/// Checks the bearer token of each request (no token configured: everything passes).
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
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match got.strip_prefix("Bearer ") {
            Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Adds `authorization: Bearer <token>` to outgoing requests (client side).
#[derive(Debug, Clone, Default)]
pub struct AttachToken {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachToken {
    /// Attaches `token` when given. Tokens that are not valid header values are ignored.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            header: token.and_then(|t| format!("Bearer {t}").parse().ok()),
        }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer() {
        let mut a = BearerAuth::new(Some("s3cret".into()));
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(a.call(ok).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            a.call(bad).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(BearerAuth::new(None).call(Request::new(())).is_ok());
        let mut att = AttachToken::new(Some("s3cret"));
        let r = att.call(Request::new(())).unwrap();
        assert!(a.call(r).is_ok());
    }
}
