//! The control API on a Unix socket: one JSON request per line, one JSON response per line
//! (protocol in `vmm/API.md`, types and codec in `novacron_vmm_api::protocol`), plus the
//! client used by the CLI subcommands.

use novacron_vmm_api::protocol::{
    decode_request, decode_response, encode_request, encode_response, Reply, ReplyError, Request,
    MAX_REQUEST_LINE, MAX_RESPONSE_LINE,
};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Errors of the control API, on either side.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket could not be created.
    #[error("cannot listen on API socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The client could not reach the VMM.
    #[error(
        "cannot connect to VMM API socket {path}: {source} (is the VMM running with --api-socket?)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The connection failed mid-request.
    #[error("API connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The VMM answered something that is not a response.
    #[error("malformed API response: {0}")]
    BadResponse(String),
    /// The VMM refused the request.
    #[error("{0}")]
    Refused(String),
}

impl From<ReplyError> for ApiError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Refused(m) => ApiError::Refused(m),
            malformed @ ReplyError::Malformed { .. } => {
                ApiError::BadResponse(malformed.to_string())
            }
        }
    }
}

/// Something that serves API requests (the VMM runtime implements this).
pub trait Handler: Send + Sync + 'static {
    /// Handles one request: the reply, or a message a user can act on.
    fn handle(&self, req: &Request) -> Result<Reply, String>;
    /// Called after the response to `req` has been written (e.g. to exit after shutdown).
    fn after_response(&self, _req: &Request) {}
}

/// Binds `path` (replacing a stale socket) and serves requests on a background thread.
pub fn serve(path: &Path, handler: Arc<dyn Handler>) -> Result<(), ApiError> {
    if path.exists() {
        // A socket nobody answers on is stale; a live one means another VMM owns the path.
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::Bind {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another VMM is serving this socket",
                ),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let h = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || serve_conn(conn, h));
            }
        })
        .map_err(ApiError::Io)?;
    Ok(())
}

fn serve_conn(conn: UnixStream, handler: Arc<dyn Handler>) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match Read::by_ref(&mut reader)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let req = decode_request(&line).map_err(|e| e.to_string());
        let out = match &req {
            Ok(r) => encode_response(&handler.handle(r)),
            Err(e) => encode_response::<Reply>(&Err(e.clone())),
        };
        if writer
            .write_all(out.as_bytes())
            .and_then(|_| writer.flush())
            .is_err()
        {
            return;
        }
        if let Ok(r) = &req {
            handler.after_response(r);
        }
    }
}

/// Sends one request and returns the VMM's reply `T`, or its error message.
pub fn call<T: DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ApiError> {
    let mut conn = UnixStream::connect(path).map_err(|source| ApiError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    conn.write_all(encode_request(req).as_bytes())?;
    let mut resp = String::new();
    BufReader::new(conn)
        .take(MAX_RESPONSE_LINE as u64 + 1)
        .read_line(&mut resp)?;
    Ok(decode_response(&resp)?)
}
