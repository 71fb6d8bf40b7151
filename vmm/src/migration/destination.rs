//! The destination side of a live migration: waits for the migration stream it was started
//! for and runs the engine's receive loop ([`novacron_migration::receiver`]) into this
//! machine, which starts only once memory, state and (if asked) verification are complete.
//!
//! The listener keeps accepting until the accept deadline (`--incoming-timeout`, default
//! [`DEFAULT_INCOMING_TIMEOUT`]), then fails with [`MigrationError::NoIncoming`]. A stray
//! connection (a port scan that connects and closes, junk, a peer silent until the read
//! timeout, a Hello of another migration id: [`SessionError::Stray`], or any failure before
//! a Hello of the awaited migration) is logged, counted and dropped; it changed nothing
//! here. With `tls:`, a connection must first complete a mutually authenticated TLS
//! handshake with a client certificate of this migration's CA, within the read timeout:
//! a plain-TCP client, one without a certificate, or one certified by another CA fails the
//! handshake and is a stray like the others: the destination keeps waiting for its real
//! peer until the accept deadline. Once the awaited source's Hello has been accepted, a failed stream ends the VMM
//! with an error (the guest never ran here).

use super::glue::{GuestSink, VmTakeover};
use super::options::{parse_addr, tls_context, MigrationTls};
use super::MigrationError;
use crate::machine::Machine;
use novacron_migration::disk::Joined;
pub use novacron_migration::receiver::Received;
use novacron_migration::session::{Expect, SessionError};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default of `--incoming-timeout`: how long a destination waits for its migration.
pub const DEFAULT_INCOMING_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest wait for any one read from a source (and so for a silent stray connection).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest single wait for a connection (without a deadline the loop just waits again).
const ACCEPT_POLL_MAX: Duration = Duration::from_secs(60);

/// Waits up to `timeout` for a connection to accept on `listener` (no polling delay: the
/// source's connection is accepted as soon as it arrives); false on timeout or a signal.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the count is 1; the fd
    // stays open (borrowed from `listener`).
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

/// What the destination waits for.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// `tls:HOST:PORT` (or `tcp:HOST:PORT`, debugging only) to listen on.
    pub addr: String,
    /// The destination's half of the migration credential (required with `tls:`).
    pub tls: Option<MigrationTls>,
    /// The migration id the source's Hello must carry (`None`: any).
    pub migration_id: Option<String>,
    /// Give up if no migration has started within this time.
    pub accept_timeout: Duration,
}

/// Listens on `inc.addr` and receives one migration into `m`, which must be built but not
/// started. On success the guest is running here. `on_listening` is called once the socket is
/// bound.
pub fn receive(
    m: &Arc<Machine>,
    inc: &Incoming,
    on_listening: &dyn Fn(std::net::SocketAddr),
) -> Result<Received, MigrationError> {
    let addr = &inc.addr;
    let parsed = parse_addr(addr)?;
    let sa = parsed.addr;
    let tls = tls_context(addr, &parsed, inc.tls.as_ref(), true)?;
    super::glue::check_incoming_disks(m)?;
    let listen_err = |source| MigrationError::Listen {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(sa).map_err(listen_err)?;
    if let Ok(local) = listener.local_addr() {
        on_listening(local);
    }
    let deadline = Instant::now().checked_add(inc.accept_timeout);
    let expect = Expect {
        migration_id: inc.migration_id.clone(),
        read_timeout: READ_TIMEOUT.min(inc.accept_timeout.max(Duration::from_secs(1))),
    };
    let mut strays = 0u32;
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(MigrationError::NoIncoming {
                addr: addr.to_string(),
                secs: inc.accept_timeout.as_secs(),
                strays,
            });
        }
        if !wait_readable(&listener, left.unwrap_or(ACCEPT_POLL_MAX)).map_err(listen_err)? {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(listen_err(source)),
        };
        let stream = match &tls {
            Some(ctx) => match ctx.handshake(stream, expect.read_timeout) {
                Ok(s) => s,
                Err(e) => {
                    strays += 1;
                    tracing::warn!(
                        "incoming migration: refused connection {strays} from {peer}: {e}; still waiting"
                    );
                    continue;
                }
            },
            None => stream.into(),
        };
        let mut sink = Joined::sink(GuestSink::new(m), super::glue::disk_sink(m)?)?;
        let mut takeover = VmTakeover::new(m, inc.migration_id.clone());
        match novacron_migration::receiver::receive(stream, &mut sink, &mut takeover, &expect) {
            Ok(r) => return Ok(r),
            Err(e) if matches!(e, SessionError::Stray(_)) || !takeover.accepted_hello() => {
                strays += 1;
                tracing::warn!(
                    "incoming migration: ignored connection {strays} from {peer}, not the awaited migration ({e}); still waiting"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}
