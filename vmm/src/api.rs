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

/// How long writing one response may block (a client that never reads).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn bind_error(path: &Path, kind: std::io::ErrorKind, msg: String) -> ApiError {
    ApiError::Bind {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, msg),
    }
}

/// Binds a Unix socket at `path`, mode 0600 whatever the umask: it is bound inside a fresh
/// private (0700) directory next to `path`, chmod-ed, then hard-linked into place (which,
/// unlike a rename, fails if something appeared at `path` meanwhile: nothing is ever
/// replaced), so it is never reachable with wider permissions.
fn bind_private(path: &Path) -> Result<UnixListener, ApiError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            bind_error(
                path,
                std::io::ErrorKind::InvalidInput,
                "the API socket path has no file name".into(),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(err)?;
    let inner = tmp.join("s");
    let r = UnixListener::bind(&inner)
        .and_then(|l| {
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
            std::fs::hard_link(&inner, path)?;
            Ok(l)
        })
        .map_err(err);
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&tmp);
    r
}

/// Binds `path` and serves requests on a background thread, one thread per connection (so
/// `info` and `cancel` are answered while a `migrate` runs). A stale socket at `path` is
/// replaced; anything else there (a live socket, a regular file, a directory) is refused.
pub fn serve(path: &Path, handler: Arc<dyn Handler>) -> Result<(), ApiError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket nobody answers on is stale; a live one means another VMM owns it.
            if UnixStream::connect(path).is_ok() {
                return Err(bind_error(
                    path,
                    std::io::ErrorKind::AddrInUse,
                    "another VMM is serving this socket".into(),
                ));
            }
            std::fs::remove_file(path).map_err(|source| ApiError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(bind_error(
                path,
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it (remove it or choose another --api-socket path)",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ApiError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let listener = bind_private(path)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // Connections run on threads started from here: they inherit this filter.
            crate::sandbox::install_or_exit(crate::sandbox::ThreadKind::Api);
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

/// One request line read from a connection.
enum Line {
    /// The connection ended (nothing more to read).
    End,
    /// A complete line (or the last, unterminated one).
    Text(Vec<u8>),
    /// Longer than [`MAX_REQUEST_LINE`]; the rest of it, up to its newline, was discarded.
    TooLong,
}

fn read_request_line(reader: &mut BufReader<UnixStream>) -> Line {
    let mut line = Vec::new();
    match Read::by_ref(reader)
        .take(MAX_REQUEST_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
    {
        Ok(0) | Err(_) => return Line::End,
        Ok(_) => {}
    }
    if line.last() == Some(&b'\n') || line.len() <= MAX_REQUEST_LINE {
        return Line::Text(line);
    }
    // Over-long: discard up to and including the newline that ends it.
    loop {
        let (found, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => return Line::TooLong,
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            },
        };
        reader.consume(used);
        if found {
            return Line::TooLong;
        }
    }
}

fn serve_conn(conn: UnixStream, handler: Arc<dyn Handler>) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let _ = writer.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut reader = BufReader::new(conn);
    loop {
        let req = match read_request_line(&mut reader) {
            Line::End => return,
            Line::TooLong => Err(format!(
                "request too long: a request line may hold at most {MAX_REQUEST_LINE} bytes; the rest of the line was discarded"
            )),
            Line::Text(bytes) => match String::from_utf8(bytes) {
                Ok(line) => decode_request(&line).map_err(|e| e.to_string()),
                Err(_) => Err("request is not UTF-8 text: send one JSON object per line".into()),
            },
        };
        let out = match &req {
            Ok(r) => encode_response(&handler.handle(r)),
            Err(e) => encode_response::<Reply>(&Err(e.clone())),
        };
        let written = writer
            .write_all(out.as_bytes())
            .and_then(|_| writer.flush());
        // Even if the reply could not be written: a confirmed migration or a shutdown must
        // still end the VMM.
        if let Ok(r) = &req {
            handler.after_response(r);
        }
        if written.is_err() {
            return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_vmm_api::protocol::{Empty, Reply};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: &Request) -> Result<Reply, String> {
            match req {
                Request::Info => Ok(Reply::Empty(Empty {})),
                other => Err(format!("{} refused", other.name())),
            }
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nc-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn over_long_line_gets_one_error_and_its_rest_is_discarded() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_conn(server, Arc::new(Echo)));
        // An over-long line whose tail looks like a request: it must not be parsed.
        let mut line = vec![b'x'; MAX_REQUEST_LINE + 10];
        line.extend_from_slice(b"{\"cmd\":\"pause\"}\n{\"cmd\":\"info\"}\n");
        client.write_all(&line).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        t.join().unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("request too long"), "{out}");
        assert!(!out.contains("pause refused"), "{out}");
        assert!(lines[1].contains("\"ok\":true"), "{out}");
    }

    #[test]
    fn binary_and_partial_lines_get_error_replies() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_conn(server, Arc::new(Echo)));
        client
            .write_all(b"\xff\xfe\x00\n{\"cmd\":\n{\"cmd\":\"info\"}")
            .unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        t.join().unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains("not UTF-8"), "{out}");
        assert!(lines[1].contains("\"ok\":false"), "{out}");
        assert!(lines[2].contains("\"ok\":true"), "{out}");
    }

    #[test]
    fn socket_is_private_and_a_regular_file_is_never_replaced() {
        let d = scratch("bind");
        let file = d.join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        let e = serve(&file, Arc::new(Echo)).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = d.join("api.sock");
        serve(&sock, Arc::new(Echo)).unwrap();
        let meta = std::fs::symlink_metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let _: Empty = call(&sock, &Request::Info).unwrap();
        // A second VMM on the same live socket is refused.
        let e = serve(&sock, Arc::new(Echo)).unwrap_err().to_string();
        assert!(e.contains("another VMM"), "{e}");
        // No temporary left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
