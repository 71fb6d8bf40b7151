//! Authentication of every user-facing call: the [`Authenticate`] interceptor reads
//! `authorization: Bearer <token>`, verifies a session token (JWT) or an API token against
//! the store, and puts the caller's [`Principal`] into the request's extensions; anything
//! else is UNAUTHENTICATED. Handlers take it with [`principal`].

use std::sync::Arc;

use novacron_proto::auth::AUTHORIZATION;
use novacron_proto::controller as pb;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::roles::Scope;
use super::tokens::{self, TokenRecord};
use super::{decode, token_key, users, Iam, IamError, Principal, Result, Role};
use crate::util::now_ms;

/// How the controller authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IamMode {
    /// Every call needs a valid token.
    #[default]
    Enforce,
    /// Development only (`--insecure-dev`): a call without a token acts as an admin.
    InsecureDev,
}

/// The outcome of authentication for the identity service, whose `Login` needs no token.
#[derive(Debug, Clone)]
pub struct Authn(pub std::result::Result<Principal, String>);

/// The server's interceptor (see the module documentation).
#[derive(Debug, Clone)]
pub struct Authenticate {
    iam: Arc<Iam>,
    mode: IamMode,
    optional: bool,
}

impl Authenticate {
    /// Requires a valid token on every call (in `InsecureDev`, a call without one is an
    /// admin's).
    pub fn new(iam: Arc<Iam>, mode: IamMode) -> Self {
        Authenticate {
            iam,
            mode,
            optional: false,
        }
    }

    /// For the identity service: never refuses, records the outcome as [`Authn`] for the
    /// handlers (all but `Login` require a principal).
    pub fn optional(iam: Arc<Iam>, mode: IamMode) -> Self {
        Authenticate {
            iam,
            mode,
            optional: true,
        }
    }

    fn outcome(&self, req: &Request<()>) -> std::result::Result<Principal, String> {
        let Some(v) = req.metadata().get(AUTHORIZATION) else {
            return match self.mode {
                IamMode::InsecureDev => Ok(Principal::insecure_dev()),
                IamMode::Enforce => Err(
                    "missing bearer token (authorization: Bearer <token>): log in with \
                         `novactl login` or pass an API token"
                        .into(),
                ),
            };
        };
        let token = v
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer "))
            .ok_or_else(|| "malformed authorization header: use `Bearer <token>`".to_string())?;
        self.iam
            .authenticate(token.trim())
            .map_err(|e| e.to_string())
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        let outcome = self.outcome(&req);
        if self.optional {
            req.extensions_mut().insert(Authn(outcome));
            return Ok(req);
        }
        match outcome {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Ok(req)
            }
            Err(m) => Err(Status::unauthenticated(m)),
        }
    }
}

/// The caller of an authenticated request (UNAUTHENTICATED when there is none).
pub fn principal<T>(r: &Request<T>) -> std::result::Result<Principal, Status> {
    if let Some(p) = r.extensions().get::<Principal>() {
        return Ok(p.clone());
    }
    match r.extensions().get::<Authn>() {
        Some(Authn(Ok(p))) => Ok(p.clone()),
        Some(Authn(Err(m))) => Err(Status::unauthenticated(m.clone())),
        None => Err(Status::unauthenticated("the call was not authenticated")),
    }
}

impl Iam {
    /// The principal of a bearer token: an API token (`nct_...`) or a session token.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let (user, token_id, scope) = match tokens::parse_api_token(token) {
            Some((id, secret)) => {
                let key = token_key(id);
                let bad = || IamError::Unauthenticated("invalid API token".into());
                let rec: TokenRecord = match self.store.iam_record(&key)? {
                    Some(b) => decode(&key, &b)?,
                    None => return Err(bad()),
                };
                if !bool::from(rec.digest.as_slice().ct_eq(&tokens::digest(secret))) {
                    return Err(bad());
                }
                let info = rec.info.unwrap_or_default();
                if info.revoked {
                    return Err(IamError::Unauthenticated(format!(
                        "API token {id} was revoked"
                    )));
                }
                if info.expires_at_ms > 0 && info.expires_at_ms <= now_ms() {
                    return Err(IamError::Unauthenticated(format!("API token {id} expired")));
                }
                let scope = if info.role == pb::Role::Admin as i32 {
                    Scope::Admin
                } else {
                    let role = Role::from_pb(info.role).ok_or_else(bad)?;
                    Scope::Project(info.project.clone(), role)
                };
                (info.user, Some(id.to_string()), Some(scope))
            }
            None => (self.key.verify(token)?.sub, None, None),
        };
        let Some(u) = users::get(&self.store, &user)? else {
            return Err(IamError::Unauthenticated(format!(
                "user {user} no longer exists"
            )));
        };
        if matches!(scope, Some(Scope::Admin)) && !u.admin() {
            return Err(IamError::Unauthenticated(
                "admin API token of a user who is no longer an admin".into(),
            ));
        }
        let roles = self
            .members(None)?
            .into_iter()
            .filter(|m| m.user == user)
            .filter_map(|m| Role::from_pb(m.role).map(|r| (m.project, r)))
            .collect();
        Ok(Principal {
            user,
            admin: u.admin(),
            token: token_id,
            scope,
            roles,
        })
    }
}
