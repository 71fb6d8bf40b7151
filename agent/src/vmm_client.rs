//! Client of the VMM's control API (`vmm/API.md`): one JSON object per line on the Unix
//! socket given by `--api-socket`; answers are `{"ok":true,"data":{...}}` or
//! `{"ok":false,"error":"..."}`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Errors talking to a VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmClientError {
    /// The socket could not be reached or the connection broke.
    #[error("vmm api socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("vmm api socket {0}: no answer in time")]
    Timeout(String),
    /// The answer was not the JSON the contract describes.
    #[error("vmm api: malformed answer {0:?}")]
    Malformed(String),
    /// The VMM refused the request.
    #[error("vmm: {0}")]
    Refused(String),
    /// The VMM closed the connection without answering.
    #[error("vmm api socket {0}: closed without an answer")]
    Closed(String),
}

/// The `info` answer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Info {
    /// "running", "paused", "incoming" or "migrating".
    #[serde(default)]
    pub state: String,
    /// vCPUs.
    #[serde(default)]
    pub vcpus: u32,
    /// Guest memory.
    #[serde(default)]
    pub memory_mib: u64,
    /// VMM pid.
    #[serde(default)]
    pub pid: i32,
    /// Time since start.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Kernel path.
    #[serde(default)]
    pub kernel: String,
    /// Current dirty rate.
    #[serde(default)]
    pub dirty_pages_per_sec: u64,
}

/// Sends one request and returns the answer's `data`.
pub async fn call(socket: &Path, req: &Value, timeout: Duration) -> Result<Value, VmmClientError> {
    let path = socket.display().to_string();
    let fut = async {
        let io = |source| VmmClientError::Io {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(socket).await.map_err(io)?;
        let (r, mut w) = stream.into_split();
        let mut line = req.to_string();
        line.push('\n');
        w.write_all(line.as_bytes()).await.map_err(io)?;
        let mut reader = BufReader::new(r);
        let mut answer = String::new();
        let n = reader.read_line(&mut answer).await.map_err(io)?;
        if n == 0 {
            return Err(VmmClientError::Closed(path.clone()));
        }
        parse_answer(&answer)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(VmmClientError::Timeout(path)),
    }
}

/// Parses one answer line.
pub fn parse_answer(line: &str) -> Result<Value, VmmClientError> {
    let v: Value = serde_json::from_str(line.trim())
        .map_err(|_| VmmClientError::Malformed(line.trim().to_string()))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(VmmClientError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("unspecified error")
                .to_string(),
        )),
        None => Err(VmmClientError::Malformed(line.trim().to_string())),
    }
}

/// `info`.
pub async fn info(socket: &Path, timeout: Duration) -> Result<Info, VmmClientError> {
    let data = call(socket, &json!({"cmd": "info"}), timeout).await?;
    serde_json::from_value(data.clone()).map_err(|_| VmmClientError::Malformed(data.to_string()))
}

/// `shutdown` (the VMM exits with status 0 right after answering).
pub async fn shutdown(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call(socket, &json!({"cmd": "shutdown"}), timeout)
        .await
        .map(|_| ())
}

/// `pause`.
pub async fn pause(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call(socket, &json!({"cmd": "pause"}), timeout)
        .await
        .map(|_| ())
}

/// `resume`.
pub async fn resume(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call(socket, &json!({"cmd": "resume"}), timeout)
        .await
        .map(|_| ())
}

/// Options of `migrate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrateArgs {
    /// tcp:HOST:PORT.
    pub to: String,
    /// Downtime target (0: VMM default).
    pub downtime_ms: u32,
    /// Bytes/s (0: unlimited).
    pub bandwidth: u64,
    /// Seconds (0: VMM default).
    pub timeout_s: u32,
    /// vCPU throttling.
    pub auto_converge: bool,
    /// none|zstd|delta|auto (empty: VMM default).
    pub compression: String,
}

/// The `migrate` request for `args`.
pub fn migrate_request(args: &MigrateArgs) -> Value {
    let mut req = json!({"cmd": "migrate", "to": args.to, "auto_converge": args.auto_converge, "verify": true});
    if args.downtime_ms > 0 {
        req["downtime_ms"] = json!(args.downtime_ms);
    }
    if args.bandwidth > 0 {
        req["bandwidth"] = json!(args.bandwidth);
    }
    if args.timeout_s > 0 {
        req["timeout_s"] = json!(args.timeout_s);
    }
    if !args.compression.is_empty() {
        req["compression"] = json!(args.compression);
    }
    req
}

/// `migrate`: answered with the migration summary when the migration ends.
pub async fn migrate(
    socket: &Path,
    args: &MigrateArgs,
    timeout: Duration,
) -> Result<Value, VmmClientError> {
    call(socket, &migrate_request(args), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(r#"{"ok":true,"data":{"a":1}}"#).unwrap(),
            json!({"a":1})
        );
        assert!(
            matches!(parse_answer(r#"{"ok":false,"error":"no"}"#), Err(VmmClientError::Refused(e)) if e == "no")
        );
        assert!(matches!(
            parse_answer("garbage"),
            Err(VmmClientError::Malformed(_))
        ));
        let r = migrate_request(&MigrateArgs {
            to: "tcp:1.2.3.4:5".into(),
            downtime_ms: 2,
            ..Default::default()
        });
        assert_eq!(r["cmd"], "migrate");
        assert_eq!(r["downtime_ms"], 2);
        assert!(r.get("bandwidth").is_none());
    }

    #[tokio::test]
    async fn info_roundtrip() {
        let dir = std::env::temp_dir().join(format!("nc-vmmc-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            assert!(line.contains("\"info\""));
            w.write_all(b"{\"ok\":true,\"data\":{\"state\":\"running\",\"vcpus\":1,\"memory_mib\":64,\"pid\":7,\"uptime_ms\":5,\"kernel\":\"k\",\"dirty_pages_per_sec\":3}}\n").await.unwrap();
        });
        let i = info(&sock, Duration::from_secs(2)).await.unwrap();
        assert_eq!(i.state, "running");
        assert_eq!(i.dirty_pages_per_sec, 3);
        let _ = std::fs::remove_dir_all(dir);
    }
}
