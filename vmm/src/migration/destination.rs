//! The destination side of a live migration: waits for one migration stream and runs the
//! engine's receive loop ([`novacron_migration::receiver`]) into this machine, which starts
//! only once memory, state and (if asked) verification are complete.

use super::glue::{GuestSink, VmTakeover};
use super::options::parse_tcp;
use super::MigrationError;
use crate::machine::Machine;
pub use novacron_migration::receiver::Received;
use std::net::TcpListener;
use std::sync::Arc;

/// Listens on `addr` (`tcp:HOST:PORT`) and receives one migration into `m`, which must be
/// built but not started. On success the guest is running here. `on_listening` is called once
/// the socket is bound.
pub fn receive(
    m: &Arc<Machine>,
    addr: &str,
    on_listening: &dyn Fn(std::net::SocketAddr),
) -> Result<Received, MigrationError> {
    let sa = parse_tcp(addr)?;
    let listener = TcpListener::bind(sa).map_err(|source| MigrationError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    if let Ok(local) = listener.local_addr() {
        on_listening(local);
    }
    let (stream, _) = listener.accept().map_err(|source| MigrationError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    drop(listener);
    let mut sink = GuestSink::new(m);
    let mut takeover = VmTakeover::new(m);
    Ok(novacron_migration::receiver::receive(
        stream,
        &mut sink,
        &mut takeover,
        &novacron_migration::session::Expect::default(),
    )?)
}
