//! Client of the VMM's control API (`vmm/API.md`): typed requests and replies from
//! `novacron_vmm_api::protocol`, one line each way on the Unix socket given by `--api-socket`.

use std::path::Path;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_vmm_api::migration::{Compression, MigrateOptions, MigrationSummary, VerifyMode};
pub use novacron_vmm_api::protocol::Info;
use novacron_vmm_api::protocol::{
    decode_response, encode_request, Empty, Lifecycle, ReplyError, Request, MAX_RESPONSE_LINE,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    /// Migration options the VMM would not accept.
    #[error("{0}")]
    BadOptions(String),
}

impl From<ReplyError> for VmmClientError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Refused(m) => VmmClientError::Refused(m),
            ReplyError::Malformed { line, .. } => VmmClientError::Malformed(line),
        }
    }
}

/// Sends one request and returns the VMM's reply `T`.
pub async fn call<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, VmmClientError> {
    let path = socket.display().to_string();
    let fut = async {
        let io = |source| VmmClientError::Io {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(socket).await.map_err(io)?;
        let (r, mut w) = stream.into_split();
        w.write_all(encode_request(req).as_bytes())
            .await
            .map_err(io)?;
        let mut reader = BufReader::new(r.take(MAX_RESPONSE_LINE as u64 + 1));
        let mut answer = String::new();
        let n = reader.read_line(&mut answer).await.map_err(io)?;
        if n == 0 {
            return Err(VmmClientError::Closed(path.clone()));
        }
        Ok(decode_response(&answer)?)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(VmmClientError::Timeout(path)),
    }
}

/// `info`.
pub async fn info(socket: &Path, timeout: Duration) -> Result<Info, VmmClientError> {
    call(socket, &Request::Info, timeout).await
}

/// What `info` says about a VMM, with the in-doubt source state (`Lifecycle::InDoubt`: the
/// final frame was sent, no confirmation seen) set apart.
#[derive(Debug, Clone)]
pub enum Observed {
    /// Any other state.
    Info(Info),
    /// The VMM is in doubt; its vCPUs stay paused until `resume` or `shutdown`.
    InDoubt,
}

/// `info`, with the in-doubt state set apart.
pub async fn observe(socket: &Path, timeout: Duration) -> Result<Observed, VmmClientError> {
    let i = info(socket, timeout).await?;
    Ok(if i.state == Lifecycle::InDoubt {
        Observed::InDoubt
    } else {
        Observed::Info(i)
    })
}

/// `cancel`: stops an outgoing migration (the VMM resumes the guest).
pub async fn cancel(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call::<Empty>(socket, &Request::Cancel, timeout)
        .await
        .map(|_| ())
}

/// `shutdown` (the VMM exits with status 0 right after answering).
pub async fn shutdown(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call::<Empty>(socket, &Request::Shutdown, timeout)
        .await
        .map(|_| ())
}

/// `pause`.
pub async fn pause(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call::<Empty>(socket, &Request::Pause, timeout)
        .await
        .map(|_| ())
}

/// `resume`.
pub async fn resume(socket: &Path, timeout: Duration) -> Result<(), VmmClientError> {
    call::<Empty>(socket, &Request::Resume, timeout)
        .await
        .map(|_| ())
}

/// The verification mode of a management-plane migration: `DEFAULT` is sampled (bounded
/// downtime); full verification only when asked for.
pub fn verify_mode(v: i32) -> VerifyMode {
    match apb::VerifyMode::try_from(v).unwrap_or(apb::VerifyMode::Default) {
        apb::VerifyMode::Off => VerifyMode::Off,
        apb::VerifyMode::Full => VerifyMode::Full,
        apb::VerifyMode::Sampled | apb::VerifyMode::Default => VerifyMode::Sampled,
    }
}

/// The VMM's `migrate` options for a migration to `to` as the controller asked for it: zero
/// (or empty) fields keep the VMM's defaults, verification is sampled unless asked otherwise,
/// and the stream carries `migration_id` (the id the destination was started with).
pub fn migrate_options(
    to: &str,
    o: &apb::MigrateOptions,
    migration_id: &str,
) -> Result<MigrateOptions, VmmClientError> {
    let defaults = MigrateOptions::default();
    let compression = match o.compression.as_str() {
        "" => defaults.compression,
        c => c
            .parse::<Compression>()
            .map_err(VmmClientError::BadOptions)?,
    };
    Ok(MigrateOptions {
        to: to.to_string(),
        downtime_ms: match o.downtime_ms {
            0 => defaults.downtime_ms,
            d => u64::from(d),
        },
        bandwidth: (o.bandwidth > 0).then_some(o.bandwidth),
        timeout_s: match o.timeout_s {
            0 => defaults.timeout_s,
            t => u64::from(t),
        },
        auto_converge: o.auto_converge,
        compression,
        verify: verify_mode(o.verify),
        migration_id: migration_id.to_string(),
        ..defaults
    })
}

/// `migrate`: answered with the migration summary when the migration ends.
pub async fn migrate(
    socket: &Path,
    opts: &MigrateOptions,
    timeout: Duration,
) -> Result<MigrationSummary, VmmClientError> {
    call(socket, &Request::Migrate(opts.clone()), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_vmm_api::protocol::Lifecycle;

    #[test]
    fn options_keep_the_vmm_defaults() {
        let o = migrate_options(
            "tcp:1.2.3.4:5",
            &apb::MigrateOptions {
                downtime_ms: 2,
                ..Default::default()
            },
            "ab12",
        )
        .unwrap();
        assert_eq!(o.migration_id, "ab12");
        assert_eq!(o.to, "tcp:1.2.3.4:5");
        assert_eq!(o.downtime_ms, 2);
        assert_eq!(o.bandwidth, None);
        assert_eq!(o.timeout_s, MigrateOptions::default().timeout_s);
        assert_eq!(o.compression, Compression::None);
        assert_eq!(o.verify, VerifyMode::Sampled);
        for (v, m) in [
            (apb::VerifyMode::Off, VerifyMode::Off),
            (apb::VerifyMode::Sampled, VerifyMode::Sampled),
            (apb::VerifyMode::Full, VerifyMode::Full),
        ] {
            let o = apb::MigrateOptions {
                verify: v as i32,
                ..Default::default()
            };
            assert_eq!(migrate_options("tcp:h:1", &o, "").unwrap().verify, m);
        }
        let o = migrate_options(
            "tcp:h:1",
            &apb::MigrateOptions {
                bandwidth: 1000,
                timeout_s: 9,
                compression: "zstd".into(),
                auto_converge: true,
                ..Default::default()
            },
            "",
        )
        .unwrap();
        assert_eq!(
            (o.bandwidth, o.timeout_s, o.compression, o.auto_converge),
            (Some(1000), 9, Compression::Zstd, true)
        );
        assert!(matches!(
            migrate_options(
                "tcp:h:1",
                &apb::MigrateOptions {
                    compression: "lz4".into(),
                    ..Default::default()
                },
                ""
            ),
            Err(VmmClientError::BadOptions(e)) if e.contains("lz4")
        ));
    }

    /// A socket that answers one request with `answer` and hands back the request line.
    fn one_shot(
        name: &str,
        answer: &'static [u8],
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        tokio::task::JoinHandle<String>,
    ) {
        let dir = std::env::temp_dir().join(format!("nc-vmmc-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            w.write_all(answer).await.unwrap();
            line
        });
        (dir, sock, task)
    }

    #[tokio::test]
    async fn info_roundtrip() {
        let (dir, sock, task) = one_shot("info", b"{\"ok\":true,\"data\":{\"state\":\"running\",\"vcpus\":1,\"memory_mib\":64,\"pid\":7,\"uptime_ms\":5,\"kernel\":\"k\",\"dirty_pages_per_sec\":3}}\n");
        let i = info(&sock, Duration::from_secs(2)).await.unwrap();
        assert_eq!(i.state, Lifecycle::Running);
        assert_eq!(i.dirty_pages_per_sec, 3);
        assert_eq!(task.await.unwrap(), "{\"cmd\":\"info\"}\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn refusals_and_garbage() {
        let (dir, sock, task) = one_shot("refused", b"{\"ok\":false,\"error\":\"no\"}\n");
        assert!(
            matches!(pause(&sock, Duration::from_secs(2)).await, Err(VmmClientError::Refused(e)) if e == "no")
        );
        assert_eq!(task.await.unwrap(), "{\"cmd\":\"pause\"}\n");
        let _ = std::fs::remove_dir_all(dir);
        let (dir, sock, task) = one_shot("garbage", b"garbage\n");
        assert!(matches!(
            info(&sock, Duration::from_secs(2)).await,
            Err(VmmClientError::Malformed(_))
        ));
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
