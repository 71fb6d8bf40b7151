//! Identity and access: users (argon2 passwords, TOTP), projects and their members, quotas,
//! session tokens (EdDSA-signed JWTs) and API tokens, the authorization policy and the audit
//! log. Records live in the store's `iam` table under keys prefixed by kind:
//!
//! - `user/<name>`: a [`users::UserRecord`];
//! - `project/<name>`: a [`pb::Project`] (with its quota);
//! - `member/<project>/<user>`: a [`pb::Member`];
//! - `token/<id>`: a [`tokens::TokenRecord`] (the API token's digest, never its secret).
//!
//! Files: [`users`] (passwords, TOTP), [`tokens`] (signing key, JWTs, API tokens),
//! [`roles`] (roles, [`roles::Principal`] and the one policy, [`roles::authorize`]),
//! [`quotas`] (usage and limits, checked in the scheduler's atomic step), [`audit`] (the
//! audit log), [`authn`] (the `Authenticate` interceptor), [`throttle`] (waits after
//! repeated failed logins), [`service`] (`IamService` of `proto/iam.proto`).

pub mod audit;
pub mod authn;
pub mod quotas;
pub mod roles;
pub mod service;
pub mod throttle;
pub mod tokens;
pub mod users;

use std::path::Path;
use std::sync::Arc;

use novacron_proto::controller as pb;
use prost::Message;
use tonic::Status;

use crate::store::{Op, Store, StoreError};
use crate::util::now_ms;
pub use roles::{authorize, Action, Object, Principal, Refusal, Role};
pub use tokens::SigningKey;

/// The project of objects created without one, and of records older than projects.
pub const DEFAULT_PROJECT: &str = "default";

/// How long a session token from `Login` is valid.
pub const SESSION_TTL_S: u64 = 3600;

/// Errors of identity and access operations; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    /// The credentials are missing, wrong, expired or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown (or invisible) user, project, member or token.
    #[error("{0}")]
    NotFound(String),
    /// Name in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not valid now (deleting a project with VMs, bootstrapping twice).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The signing key file could not be read or written.
    #[error("signing key {path}: {reason}")]
    Key {
        /// Key file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Password hashing or randomness failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<IamError> for Status {
    fn from(e: IamError) -> Self {
        let msg = e.to_string();
        match e {
            IamError::Unauthenticated(_) => Status::unauthenticated(msg),
            IamError::PermissionDenied(_) => Status::permission_denied(msg),
            IamError::InvalidArgument(_) => Status::invalid_argument(msg),
            IamError::NotFound(_) => Status::not_found(msg),
            IamError::AlreadyExists(_) => Status::already_exists(msg),
            IamError::FailedPrecondition(_) => Status::failed_precondition(msg),
            IamError::Key { .. } | IamError::Internal(_) | IamError::Store(_) => {
                Status::internal(msg)
            }
        }
    }
}

/// Result of identity and access operations.
pub type Result<T, E = IamError> = std::result::Result<T, E>;

/// The project a VM belongs to (`default` for records older than projects).
pub fn project_of(vm: &pb::Vm) -> &str {
    if vm.project.is_empty() {
        DEFAULT_PROJECT
    } else {
        &vm.project
    }
}

/// A request's project, `default` when empty.
pub fn requested_project(p: &str) -> &str {
    if p.is_empty() {
        DEFAULT_PROJECT
    } else {
        p
    }
}

/// Whether `n` can name a user or a project: 1-64 of `[a-z0-9._-]`, starting with a letter
/// or digit (it becomes part of store keys and audit records).
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

fn check_name(what: &str, n: &str) -> Result<()> {
    if valid_name(n) {
        Ok(())
    } else {
        Err(IamError::InvalidArgument(format!(
            "invalid {what} name {n:?}: use 1-64 of [a-z0-9._-], starting with a letter or digit"
        )))
    }
}

fn decode<M: Message + Default>(key: &str, b: &[u8]) -> Result<M> {
    M::decode(b).map_err(|e| IamError::Internal(format!("stored record {key}: {e}")))
}

/// The store key of a record.
pub fn user_key(name: &str) -> String {
    format!("user/{name}")
}

/// The store key of a record.
pub fn project_key(name: &str) -> String {
    format!("project/{name}")
}

/// The store key of a record.
pub fn member_key(project: &str, user: &str) -> String {
    format!("member/{project}/{user}")
}

/// The store key of a record.
pub fn token_key(id: &str) -> String {
    format!("token/{id}")
}

/// Identity and access state: the store's `iam` records and the token signing key.
#[derive(Debug)]
pub struct Iam {
    store: Arc<Store>,
    key: SigningKey,
    throttle: throttle::LoginThrottle,
}

impl Iam {
    /// Opens the identity records of `store`, with the signing key of `data_dir` (created,
    /// mode 0600, on first use), and makes sure the `default` project exists.
    pub fn open(store: Arc<Store>, data_dir: &Path) -> Result<Self> {
        let key = SigningKey::load_or_create(data_dir)?;
        let iam = Iam {
            store,
            key,
            throttle: throttle::LoginThrottle::default(),
        };
        if iam.project(DEFAULT_PROJECT)?.is_none() {
            let p = pb::Project {
                name: DEFAULT_PROJECT.into(),
                description: "objects created without a project".into(),
                quota: None,
                created_at_ms: now_ms(),
            };
            let key = project_key(DEFAULT_PROJECT);
            iam.store.apply(&[Op::PutIam(&key, p.encode_to_vec())])?;
        }
        Ok(iam)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The token signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The failed-login records.
    pub fn login_throttle(&self) -> &throttle::LoginThrottle {
        &self.throttle
    }

    /// A project by name.
    pub fn project(&self, name: &str) -> Result<Option<pb::Project>> {
        let key = project_key(name);
        self.store
            .iam_record(&key)?
            .map(|b| decode(&key, &b))
            .transpose()
    }

    /// Every project, by name.
    pub fn projects(&self) -> Result<Vec<pb::Project>> {
        self.store
            .iam_records("project/")?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// Every membership (of one project when given), by project then user.
    pub fn members(&self, project: Option<&str>) -> Result<Vec<pb::Member>> {
        let prefix = match project {
            Some(p) => format!("member/{p}/"),
            None => "member/".to_string(),
        };
        self.store
            .iam_records(&prefix)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// The quota of a project (none: unlimited).
    pub fn quota(&self, project: &str) -> Result<pb::Quota> {
        Ok(self
            .project(project)?
            .and_then(|p| p.quota)
            .unwrap_or_default())
    }
}

/// Creates the first admin in `store` (refused when an admin exists) and, with `totp`,
/// enrols and activates TOTP at once, returning its secret and otpauth URL. This is what
/// `novacron-controller bootstrap-admin` runs on the controller host, with the controller
/// stopped (the store allows one process).
pub fn bootstrap_admin(
    store: &Store,
    name: &str,
    password: &str,
    totp: bool,
) -> Result<Option<pb::EnrollTotpResponse>> {
    users::bootstrap_admin(store, name, password, totp)
}

/// Applies the policy for a call about `object` (`None`: about no project), as a status:
/// NOT_FOUND with `not_found` (the message of a missing object), PERMISSION_DENIED with the
/// reason.
pub fn check(
    p: &Principal,
    action: Action,
    object: Option<Object<'_>>,
    not_found: impl FnOnce() -> String,
) -> Result<(), Status> {
    match authorize(p, action, object) {
        Ok(()) => Ok(()),
        Err(Refusal::NotFound) => Err(Status::not_found(not_found())),
        Err(Refusal::Denied(m)) => Err(Status::permission_denied(m)),
    }
}

/// A call naming `project` with an API token scoped to another project is UNAUTHENTICATED:
/// the token is not a credential for that project.
pub fn check_scope(p: &Principal, project: &str) -> Result<(), Status> {
    match p.scoped_project() {
        Some(s) if s != project => Err(Status::unauthenticated(format!(
            "this API token is scoped to project {s}, not {project}"
        ))),
        _ => Ok(()),
    }
}

/// The message of a project that does not exist (or that the caller cannot see).
pub fn project_not_found(name: &str) -> String {
    format!("project {name} not found")
}

impl Iam {
    /// Checks a call naming `project`: the token's scope, the project's existence and the
    /// policy (NOT_FOUND alike for a missing and an invisible project).
    pub fn check_project(
        &self,
        p: &Principal,
        action: Action,
        project: &str,
    ) -> Result<(), Status> {
        check_scope(p, project)?;
        if self.project(project).map_err(Status::from)?.is_none() {
            return Err(Status::not_found(project_not_found(project)));
        }
        check(p, action, Some(Object::project(project)), || {
            project_not_found(project)
        })
    }
}
