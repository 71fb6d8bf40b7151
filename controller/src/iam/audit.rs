//! The audit log: every mutating call, allowed or refused, appends one
//! [`pb::AuditRecord`] (time, principal, project, method, object, request id, result code and
//! message) to the store's `audit` table once it has its answer. [`Call`] is how a handler
//! records itself: made first, told the project once known, finished with the answer.

use novacron_proto::controller as pb;
use tonic::Status;

use super::Principal;
use crate::store::{Store, StoreError};
use crate::util::now_ms;

/// Audit records kept.
pub const KEEP_AUDIT: u64 = 100_000;
/// Records one `ListAudit` answers when it gives no limit.
pub const DEFAULT_LIMIT: usize = 1000;

/// The gRPC name of a status code, as audit records spell it.
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One mutating call being audited.
#[derive(Debug)]
pub struct Call {
    rec: pb::AuditRecord,
}

impl Call {
    /// A call of `method` (`Service/Method`) by `who` about `object`.
    pub fn new(who: &Principal, method: &str, request_id: &str, object: &str) -> Self {
        Self::named(&who.audit_name(), method, request_id, object)
    }

    /// A call by a principal known only by name (a login).
    pub fn named(who: &str, method: &str, request_id: &str, object: &str) -> Self {
        Call {
            rec: pb::AuditRecord {
                principal: who.to_string(),
                method: method.to_string(),
                object: object.to_string(),
                request_id: request_id.to_string(),
                ..Default::default()
            },
        }
    }

    /// The project the call is about, once known.
    pub fn project(&mut self, project: &str) {
        self.rec.project = project.to_string();
    }

    /// The object, when only the call knows it (a new token's id).
    pub fn object(&mut self, object: &str) {
        self.rec.object = object.to_string();
    }

    /// Records the answer and hands it on (a record that cannot be stored is logged).
    pub fn finish<T>(mut self, store: &Store, r: Result<T, Status>) -> Result<T, Status> {
        self.rec.time_ms = now_ms();
        match &r {
            Ok(_) => self.rec.result = "OK".into(),
            Err(s) => {
                self.rec.result = code_name(s.code()).into();
                self.rec.message = s.message().to_string();
            }
        }
        if let Err(e) = store.append_audit(&mut self.rec, KEEP_AUDIT) {
            tracing::warn!(method = self.rec.method, "audit record not stored: {e}");
        }
        r
    }
}

/// The audit records of `project` (all when `None`) at or after `since_ms`, the last
/// `limit` of them, oldest first.
pub fn list(
    store: &Store,
    project: Option<&str>,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<pb::AuditRecord>, StoreError> {
    let mut v = store.audit(|r| r.time_ms >= since_ms && project.is_none_or(|p| r.project == p))?;
    let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
    if v.len() > limit {
        v.drain(..v.len() - limit);
    }
    Ok(v)
}
