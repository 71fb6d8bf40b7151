//! The VMM's control protocol (`vmm/API.md`): typed requests, the response envelope, typed
//! replies, and the line codec both clients (the VMM's CLI and the agent) and the server use.

use crate::migration::MigrateOptions;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use thiserror::Error;

/// Longest request line a VMM accepts (bytes, newline excluded).
pub const MAX_REQUEST_LINE: usize = 64 << 10;
/// Longest response line a client accepts (bytes, newline excluded): a migration summary
/// lists every round, so this is generous.
pub const MAX_RESPONSE_LINE: usize = 16 << 20;

/// The commands of the control API, tagged by `"cmd"` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The VM's state ([`Info`]).
    Info,
    /// Pause all vCPUs.
    Pause,
    /// Resume all vCPUs.
    Resume,
    /// Stop the VM; the VMM exits with status 0 right after answering.
    Shutdown,
    /// Write a snapshot ([`SnapshotReply`]).
    Snapshot {
        /// Directory to write.
        to: PathBuf,
        /// Only pages dirtied since the previous snapshot.
        #[serde(default)]
        diff: bool,
    },
    /// Live-migrate; answered with the [`crate::migration::MigrationSummary`] when the migration ends.
    Migrate(MigrateOptions),
    /// Stop the outgoing migration in progress and resume the guest here (refused when
    /// none runs, or once the destination has committed).
    Cancel,
    /// Make the VMM misbehave on purpose, so that tests can show the sandbox holds. Only a
    /// VMM built with the `test-hooks` feature obeys; every other VMM refuses it.
    #[serde(rename = "test-hook")]
    TestHook(TestHook),
}

/// What a `test-hook` request makes a test-hooks VMM do (`"hook"` on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "hook", rename_all = "kebab-case")]
pub enum TestHook {
    /// Open a file by its host path for reading and report what happened.
    OpenHostFile {
        /// The path to open.
        path: PathBuf,
    },
    /// Make a system call that no thread's seccomp filter allows (`mount`).
    ForbiddenSyscall,
    /// Allocate and touch this much memory in the VMM process, and keep it.
    GrowMemory {
        /// MiB to add.
        mib: u64,
    },
}

/// Every command name, in the order the protocol documents them.
pub const COMMANDS: [&str; 8] = [
    "info",
    "pause",
    "resume",
    "shutdown",
    "snapshot",
    "migrate",
    "cancel",
    "test-hook",
];

impl Request {
    /// The command's name on the wire (`"info"`, `"migrate"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Info => "info",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Shutdown => "shutdown",
            Request::Snapshot { .. } => "snapshot",
            Request::Migrate(_) => "migrate",
            Request::Cancel => "cancel",
            Request::TestHook(_) => "test-hook",
        }
    }
}

/// The VMM's lifecycle state, as `info` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// vCPUs running.
    Running,
    /// Paused through the API (or started with `--paused`).
    Paused,
    /// Waiting for an incoming migration.
    Incoming,
    /// An outgoing migration is in progress.
    Migrating,
    /// The source sent the final frame but never saw the destination's confirmation: the
    /// destination may be running the guest. vCPUs stay paused here; only `resume` (the
    /// destination is known not to run it) and `shutdown` (it is) are accepted.
    #[serde(rename = "indoubt")]
    InDoubt,
}

impl Lifecycle {
    /// The state's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Paused => "paused",
            Lifecycle::Incoming => "incoming",
            Lifecycle::Migrating => "migrating",
            Lifecycle::InDoubt => "indoubt",
        }
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the VMM tracks dirty pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirtyLog {
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`: pages are re-protected when collected.
    ManualProtect,
    /// Plain `KVM_GET_DIRTY_LOG`.
    Plain,
}

/// The `info` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// Lifecycle state.
    pub state: Lifecycle,
    /// vCPUs (0 while no guest exists yet).
    #[serde(default)]
    pub vcpus: u32,
    /// Guest memory (MiB).
    #[serde(default)]
    pub memory_mib: u64,
    /// The VMM's process id.
    #[serde(default)]
    pub pid: u32,
    /// Time since the VMM started (ms).
    #[serde(default)]
    pub uptime_ms: u64,
    /// Kernel path (empty for restores and incoming migrations).
    #[serde(default)]
    pub kernel: String,
    /// Dirty-log mode (absent while no guest exists yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_log: Option<DirtyLog>,
    /// Dirty rate the latest migration round measured (pages/s; 0 before any migration).
    #[serde(default)]
    pub dirty_pages_per_sec: u64,
}

/// Kind of snapshot written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Every non-zero page.
    Full,
    /// Pages dirtied since the previous snapshot.
    Diff,
}

/// The `snapshot` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// Full or diff.
    pub kind: SnapshotKind,
    /// Pages written.
    pub pages: u64,
    /// Bytes of page data written.
    pub bytes: u64,
    /// Milliseconds the guest was paused.
    pub paused_ms: f64,
    /// The writable disks captured with the memory (`DIR/disk-N.img`).
    #[serde(default)]
    pub disks: Vec<SnapshotDisk>,
}

/// A disk captured by `snapshot`, as `meta.json` and the `snapshot` reply list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    /// The `--disk` index.
    pub index: usize,
    /// File name inside the snapshot directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// "reflink" (shares the disk's blocks) or "sparse" (data extents copied).
    #[serde(default)]
    pub copy: String,
}

/// The reply of `pause`, `resume` and `shutdown`: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// What the VMM answers a request with: the `data` of a successful response.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `info`.
    Info(Info),
    /// `pause`, `resume`, `shutdown`.
    Empty(Empty),
    /// `snapshot`.
    Snapshot(SnapshotReply),
    /// `migrate`.
    Migrated(Box<crate::migration::MigrationSummary>),
}

/// A request line the VMM cannot serve; the texts are what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST_LINE`].
    #[error("request too long")]
    TooLong,
    /// Not a JSON object.
    #[error("request is not JSON: {0}")]
    NotJson(String),
    /// No `"cmd"` string.
    #[error("request has no \"cmd\" string")]
    NoCmd,
    /// A command the VMM does not know.
    #[error("unknown command '{0}': expected info, pause, resume, shutdown, snapshot, migrate or cancel")]
    Unknown(String),
    /// `snapshot` without a usable `"to"`.
    #[error("snapshot needs \"to\": a directory")]
    Snapshot,
    /// `migrate` with options that do not parse.
    #[error("invalid migrate request: {0}")]
    Migrate(String),
    /// Another command whose fields do not parse.
    #[error("invalid {cmd} request: {reason}")]
    Invalid {
        /// The command.
        cmd: String,
        /// Parser message.
        reason: String,
    },
}

/// A response line that is not a successful reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// The VMM refused the request, with its message.
    #[error("{0}")]
    Refused(String),
    /// The line is not a response, or its data is not the reply the request expects.
    #[error("{reason}: {line:?}")]
    Malformed {
        /// What is wrong.
        reason: String,
        /// The line as received (trimmed).
        line: String,
    },
}

/// The response envelope on the wire.
#[derive(Serialize, Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One request line, newline included.
pub fn encode_request(req: &Request) -> String {
    // A `Request` holds only strings, numbers and booleans: it always serializes.
    let mut line = serde_json::to_string(req).unwrap_or_default();
    line.push('\n');
    line
}

/// Decodes one request line (trailing newline allowed).
pub fn decode_request(line: &str) -> Result<Request, RequestError> {
    if line.trim_end_matches(['\n', '\r']).len() > MAX_REQUEST_LINE {
        return Err(RequestError::TooLong);
    }
    let v: Value =
        serde_json::from_str(line.trim()).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let cmd = v
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or(RequestError::NoCmd)?;
    if !COMMANDS.contains(&cmd) {
        return Err(RequestError::Unknown(cmd.to_string()));
    }
    let command = cmd.to_string();
    serde_json::from_value(v).map_err(|e| match command.as_str() {
        "snapshot" => RequestError::Snapshot,
        "migrate" => RequestError::Migrate(e.to_string()),
        _ => RequestError::Invalid {
            cmd: command,
            reason: e.to_string(),
        },
    })
}

/// One response line, newline included: `{"ok":true,"data":...}` or
/// `{"ok":false,"error":"..."}`.
pub fn encode_response<T: Serialize>(reply: &Result<T, String>) -> String {
    let env = match reply {
        Ok(data) => match serde_json::to_value(data) {
            Ok(v) => Envelope {
                ok: true,
                data: Some(v),
                error: None,
            },
            Err(e) => Envelope {
                ok: false,
                data: None,
                error: Some(format!("cannot encode the reply: {e}")),
            },
        },
        Err(e) => Envelope {
            ok: false,
            data: None,
            error: Some(e.clone()),
        },
    };
    let mut line = serde_json::to_string(&env).unwrap_or_default();
    line.push('\n');
    line
}

/// Decodes one response line into the reply `T` the request expects.
pub fn decode_response<T: DeserializeOwned>(line: &str) -> Result<T, ReplyError> {
    let line = line.trim();
    let bad = |reason: String| ReplyError::Malformed {
        reason,
        line: line.to_string(),
    };
    let env: Envelope = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    if !env.ok {
        return Err(ReplyError::Refused(
            env.error.unwrap_or_else(|| "unspecified error".into()),
        ));
    }
    serde_json::from_value(env.data.unwrap_or(Value::Null)).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::Compression;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Info,
            Request::Pause,
            Request::Resume,
            Request::Shutdown,
            Request::Snapshot {
                to: "/tmp/s".into(),
                diff: true,
            },
            Request::Migrate(MigrateOptions {
                to: "tcp:1.2.3.4:5".into(),
                bandwidth: Some(1000),
                compression: Compression::Zstd,
                verify: crate::migration::VerifyMode::Full,
                ..Default::default()
            }),
        ];
        for r in reqs {
            let line = encode_request(&r);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["cmd"], r.name());
            assert_eq!(decode_request(&line).unwrap(), r);
        }
    }

    #[test]
    fn wire_form_is_the_documented_one() {
        assert_eq!(encode_request(&Request::Info), "{\"cmd\":\"info\"}\n");
        let m =
            decode_request(r#"{"cmd":"migrate","to":"tcp:h:1","compression":"delta"}"#).unwrap();
        let Request::Migrate(o) = m else {
            panic!("{m:?}")
        };
        assert_eq!(o.to, "tcp:h:1");
        assert_eq!(o.downtime_ms, 2);
        assert_eq!(o.timeout_s, 300);
        assert_eq!(o.compression, Compression::Delta);
        assert_eq!(
            decode_request(r#"{"cmd":"snapshot","to":"/d"}"#).unwrap(),
            Request::Snapshot {
                to: "/d".into(),
                diff: false
            }
        );
    }

    #[test]
    fn bad_requests_keep_their_texts() {
        assert_eq!(
            decode_request("nope")
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("request is not JSON")
        );
        assert_eq!(
            decode_request(r#"{"x":1}"#).unwrap_err().to_string(),
            "request has no \"cmd\" string"
        );
        assert_eq!(
            decode_request(r#"{"cmd":"reboot"}"#)
                .unwrap_err()
                .to_string(),
            "unknown command 'reboot': expected info, pause, resume, shutdown, snapshot, migrate or cancel"
        );
        assert_eq!(
            decode_request(r#"{"cmd":"snapshot"}"#).unwrap_err(),
            RequestError::Snapshot
        );
        let e = decode_request(r#"{"cmd":"migrate","to":"tcp:h:1","compression":"lz4"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid migrate request: "), "{e}");
        let long = format!(
            "{{\"cmd\":\"info\",\"x\":\"{}\"}}",
            "a".repeat(MAX_REQUEST_LINE)
        );
        assert_eq!(decode_request(&long).unwrap_err(), RequestError::TooLong);
    }

    #[test]
    fn responses_round_trip() {
        let info = Info {
            state: Lifecycle::Paused,
            vcpus: 2,
            memory_mib: 256,
            pid: 7,
            uptime_ms: 5,
            kernel: "k".into(),
            dirty_log: Some(DirtyLog::ManualProtect),
            dirty_pages_per_sec: 3,
        };
        let line = encode_response(&Ok(info.clone()));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["data"]["state"], "paused");
        assert_eq!(v["data"]["dirty_log"], "manual-protect");
        assert_eq!(decode_response::<Info>(&line).unwrap(), info);
        assert_eq!(
            encode_response(&Ok(Empty {})),
            "{\"ok\":true,\"data\":{}}\n"
        );
        assert_eq!(
            decode_response::<Empty>("{\"ok\":true,\"data\":{}}"),
            Ok(Empty {})
        );
        let refused = encode_response::<Empty>(&Err("cannot pause while migrating".into()));
        assert_eq!(
            refused,
            "{\"ok\":false,\"error\":\"cannot pause while migrating\"}\n"
        );
        assert_eq!(
            decode_response::<Empty>(&refused),
            Err(ReplyError::Refused("cannot pause while migrating".into()))
        );
        assert!(matches!(
            decode_response::<Info>("garbage"),
            Err(ReplyError::Malformed { .. })
        ));
        assert!(matches!(
            decode_response::<Info>(r#"{"ok":true,"data":{"state":"asleep"}}"#),
            Err(ReplyError::Malformed { .. })
        ));
    }
}
