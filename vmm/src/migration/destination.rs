//! The destination side of a live migration: waits for the migration stream it was started
//! for and runs the engine's receive loop ([`novacron_migration::receiver`]) into this
//! machine, which starts only once memory, state and (if asked) verification are complete.
//!
//! The listener keeps accepting until the accept deadline (`--incoming-timeout`, default
//! [`DEFAULT_INCOMING_TIMEOUT`]), then fails with [`MigrationError::NoIncoming`]. A stray
//! connection (a port scan that connects and closes, junk, a peer silent until the read
//! timeout, a Hello of another migration id: [`SessionError::Stray`], or any failure before
//! a Hello of the awaited migration) is logged, counted and dropped; it changed nothing
//! here. Once the awaited source's Hello has been accepted, a failed stream ends the VMM
//! with an error (the guest never ran here).

use super::glue::{GuestSink, VmTakeover};
use super::options::parse_tcp;
use super::MigrationError;
use crate::machine::Machine;
pub use novacron_migration::receiver::Received;
use novacron_migration::session::{Expect, SessionError};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default of `--incoming-timeout`: how long a destination waits for its migration.
pub const DEFAULT_INCOMING_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest wait for any one read from a source (and so for a silent stray connection).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the accept loop looks at the deadline while nobody connects.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What the destination waits for.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// `tcp:HOST:PORT` to listen on.
    pub addr: String,
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
    let sa = parse_tcp(addr)?;
    let listen_err = |source| MigrationError::Listen {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(sa).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
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
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(MigrationError::NoIncoming {
                        addr: addr.to_string(),
                        secs: inc.accept_timeout.as_secs(),
                        strays,
                    });
                }
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(source) => return Err(listen_err(source)),
        };
        stream.set_nonblocking(false).map_err(listen_err)?;
        let mut sink = GuestSink::new(m);
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
