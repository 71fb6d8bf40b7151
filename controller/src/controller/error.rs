//! Errors of controller operations and the gRPC status code each maps to.

use tonic::{Code, Status};

use crate::agent_client::AgentClientError;
use crate::scheduler::{Rejection, SchedulerError};
use crate::state::StateError;
use crate::store::StoreError;

/// Errors of controller operations; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown VM or host.
    #[error("{0}")]
    NotFound(String),
    /// Name in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not valid in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No room.
    #[error("{0}")]
    ResourceExhausted(String),
    /// An agent cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A migration failed; the VM stayed on its source.
    #[error("{0}")]
    Aborted(String),
    /// An agent answered with an error.
    #[error("agent on {host}: {status}")]
    Agent {
        /// The host.
        host: String,
        /// The agent's status.
        status: Status,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Identity and access (opening the signing key, reading records).
    #[error(transparent)]
    Iam(#[from] crate::iam::IamError),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StateError> for ControllerError {
    fn from(e: StateError) -> Self {
        ControllerError::NotFound(e.to_string())
    }
}

impl From<AgentClientError> for ControllerError {
    fn from(e: AgentClientError) -> Self {
        ControllerError::Unavailable(e.to_string())
    }
}

impl From<SchedulerError> for ControllerError {
    fn from(e: SchedulerError) -> Self {
        match &e {
            SchedulerError::NoFit(_) => ControllerError::ResourceExhausted(e.to_string()),
            SchedulerError::UnknownHost(_) => ControllerError::NotFound(e.to_string()),
            SchedulerError::HostRejected {
                reason: Rejection::Capacity,
                ..
            } => ControllerError::ResourceExhausted(e.to_string()),
            SchedulerError::HostRejected { .. } => {
                ControllerError::FailedPrecondition(e.to_string())
            }
            SchedulerError::BadStrategy(_) => ControllerError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Self {
        let msg = e.to_string();
        match e {
            ControllerError::InvalidArgument(_) => Status::invalid_argument(msg),
            ControllerError::NotFound(_) => Status::not_found(msg),
            ControllerError::AlreadyExists(_) => Status::already_exists(msg),
            ControllerError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ControllerError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ControllerError::Unavailable(_) => Status::unavailable(msg),
            ControllerError::Aborted(_) => Status::aborted(msg),
            ControllerError::Agent { status, .. } => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    Status::unavailable(msg)
                }
                code => Status::new(code, msg),
            },
            ControllerError::Iam(e) => e.into(),
            ControllerError::Store(_) | ControllerError::Internal(_) => Status::internal(msg),
        }
    }
}

/// Result of controller operations.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;

/// Maps an agent's error status.
pub(crate) fn agent_err(host: &str, status: Status) -> ControllerError {
    ControllerError::Agent {
        host: host.to_string(),
        status,
    }
}
