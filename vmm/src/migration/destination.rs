//! The destination side of a live migration: waits for the migration stream it was started
//! for and runs the engine's receive loop ([`novacron_migration::receiver`]) into this
//! machine, which starts only once memory, state and (if asked) verification are complete.
//!
//! The listener keeps accepting until the accept deadline (`--incoming-timeout`): a
//! connection that is not the awaited migration (a port scan that connects and closes, junk,
//! a Hello with another migration id, a peer that sends nothing until the read timeout) is
//! logged and dropped, as long as it wrote nothing into guest memory. Once pages have
//! arrived, a failed stream ends the VMM: the guest memory is no longer clean.

use super::glue::{GuestSink, VmTakeover};
use super::options::parse_tcp;
use super::MigrationError;
use crate::machine::Machine;
pub use novacron_migration::receiver::Received;
use novacron_migration::session::Expect;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default of `--incoming-timeout`: how long a destination waits for its migration.
pub const DEFAULT_INCOMING_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest wait for any one read from a source (and so for a silent stray connection).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    let deadline = Instant::now() + inc.accept_timeout;
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
                if Instant::now() >= deadline {
                    return Err(MigrationError::NoIncoming {
                        addr: addr.to_string(),
                        secs: inc.accept_timeout.as_secs(),
                        strays,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(source) => return Err(listen_err(source)),
        };
        stream.set_nonblocking(false).map_err(listen_err)?;
        let mut sink = GuestSink::new(m);
        let mut takeover = VmTakeover::new(m);
        match novacron_migration::receiver::receive(stream, &mut sink, &mut takeover, &expect) {
            Ok(r) => return Ok(r),
            // TODO(integrator): once engine-rx's `SessionError::Stray` lands, it is covered
            // here too (it is returned before any page arrives); the rule below is the one
            // that keeps the guest safe either way: a connection that wrote nothing into
            // guest memory (closed before a Hello, junk, a wrong migration id, a refused
            // Hello, a read timeout) is stray, and the listener keeps waiting.
            Err(e) if !sink.written() && !takeover.restored() => {
                strays += 1;
                tracing::warn!(
                    "incoming migration: connection from {peer} is not the awaited migration ({e}); still waiting"
                );
                eprintln!(
                    "novacron-vmm: ignored a connection from {peer}: {e}; still waiting for the migration"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}
