//! The control API on a Unix socket: one JSON request per line, one JSON response per line
//! (protocol in `vmm/API.md`), plus the client used by the CLI subcommands.

use serde_json::{json, Value};
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

/// Something that serves API commands (the VMM runtime implements this).
pub trait Handler: Send + Sync + 'static {
    /// Handles one request; `Ok(data)` or `Err(message)`.
    fn handle(&self, cmd: &str, req: &Value) -> Result<Value, String>;
    /// Called after the response to `cmd` has been written (e.g. to exit after shutdown).
    fn after_response(&self, _cmd: &str) {}
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

/// Largest request line accepted.
const MAX_REQUEST: usize = 64 << 10;

fn serve_conn(conn: UnixStream, handler: Arc<dyn Handler>) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match Read::by_ref(&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (resp, cmd) = if line.len() > MAX_REQUEST {
            (
                json!({"ok": false, "error": "request too long"}),
                String::new(),
            )
        } else {
            match serde_json::from_str::<Value>(line.trim()) {
                Ok(req) => match req.get("cmd").and_then(Value::as_str) {
                    Some(cmd) => match handler.handle(cmd, &req) {
                        Ok(data) => (json!({"ok": true, "data": data}), cmd.to_string()),
                        Err(e) => (json!({"ok": false, "error": e}), cmd.to_string()),
                    },
                    None => (
                        json!({"ok": false, "error": "request has no \"cmd\" string"}),
                        String::new(),
                    ),
                },
                Err(e) => (
                    json!({"ok": false, "error": format!("request is not JSON: {e}")}),
                    String::new(),
                ),
            }
        };
        let mut out = resp.to_string();
        out.push('\n');
        if writer
            .write_all(out.as_bytes())
            .and_then(|_| writer.flush())
            .is_err()
        {
            return;
        }
        handler.after_response(&cmd);
    }
}

/// Sends one request and returns the response's `data`, or the VMM's error message.
pub fn call(path: &Path, req: &Value) -> Result<Value, ApiError> {
    let mut conn = UnixStream::connect(path).map_err(|source| ApiError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let mut line = req.to_string();
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(conn).read_line(&mut resp)?;
    let v: Value = serde_json::from_str(resp.trim())
        .map_err(|e| ApiError::BadResponse(format!("{e}: {resp:?}")))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(ApiError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
        )),
        None => Err(ApiError::BadResponse(resp)),
    }
}
