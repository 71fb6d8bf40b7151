//! Idempotent requests: a client request id gets the stored first answer on a retry.

use std::future::Future;

use prost::Message;

use super::{Controller, ControllerError, Result};
use crate::store::{Op, StoredRequest};
use crate::util::now_ms;

/// Longest stored request id: the API prefixes a client's id (at most 128 bytes) with its
/// user name (at most 64) and a `/`.
const MAX_STORED_RID: usize = 256;

impl Controller {
    /// Runs `fut` once per client request id: a retry gets the stored first answer.
    pub(crate) async fn idempotent<R, F>(&self, request_id: &str, method: &str, fut: F) -> Result<R>
    where
        R: Message + Default,
        F: Future<Output = Result<(R, String)>>,
    {
        if request_id.is_empty() {
            return fut.await.map(|(r, _)| r);
        }
        if request_id.len() > MAX_STORED_RID {
            return Err(ControllerError::InvalidArgument(format!(
                "request_id is longer than {MAX_STORED_RID} bytes"
            )));
        }
        let _guard = self.lock_key(&format!("req:{request_id}")).await;
        if let Some(stored) = self.stored_answer::<R>(request_id, method)? {
            return Ok(stored);
        }
        let (resp, target) = fut.await?;
        let rec = StoredRequest {
            method: method.to_string(),
            target,
            response: resp.encode_to_vec(),
            at_ms: now_ms(),
        };
        self.store.apply(&[Op::PutRequest(request_id, rec)])?;
        Ok(resp)
    }

    /// The stored answer of a request id, checking it was used for `method`.
    pub(crate) fn stored_answer<R: Message + Default>(
        &self,
        request_id: &str,
        method: &str,
    ) -> Result<Option<R>> {
        if request_id.len() > MAX_STORED_RID {
            return Err(ControllerError::InvalidArgument(format!(
                "request_id is longer than {MAX_STORED_RID} bytes"
            )));
        }
        let Some(stored) = self.store.get_request(request_id)? else {
            return Ok(None);
        };
        if stored.method != method {
            return Err(ControllerError::InvalidArgument(format!(
                "request id {request_id} was already used for {}",
                stored.method
            )));
        }
        R::decode(stored.response.as_slice())
            .map(Some)
            .map_err(|e| ControllerError::Internal(format!("stored answer of {request_id}: {e}")))
    }
}
