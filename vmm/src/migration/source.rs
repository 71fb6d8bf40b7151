//! The source side of a live migration: connects to the destination (mutual TLS with
//! `tls:`), and runs the engine's
//! precopy ([`novacron_migration::sender`]) over this machine's memory; any failure before
//! the destination's confirmation resumes the guest here.

use super::glue::{self, GuestSource, VmGuest};
use super::options::{parse_addr, tls_context, MigrateOptions, MigrationSummary};
use super::MigrationError;
use crate::machine::Machine;
use novacron_migration::disk::Joined;
use novacron_migration::sender;
use novacron_migration::session::{Cancel, SessionError};
use novacron_migration::transport::Transport;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for the destination to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(opts: &MigrateOptions) -> Result<TcpStream, MigrationError> {
    let addr = parse_addr(&opts.to)?.addr;
    // The destination may still be starting: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(MigrationError::Connect {
                    addr: opts.to.clone(),
                    source,
                })
            }
        }
    }
}

/// Migrates `m` to `opts.to`. On success the destination runs the guest and the caller must
/// end this VM. On [`SessionError::InDoubt`] (final frame sent, no confirmation) the vCPUs
/// stay paused: the caller must not resume them until it knows the destination does not run
/// the guest. On any other error the guest keeps running here.
///
/// `cancel` stops the migration from another thread; `on_connected` gets a clone of the
/// connection (so a canceller can shut it down if the engine is stuck in a write).
pub fn migrate(
    m: &Arc<Machine>,
    opts: &MigrateOptions,
    cancel: &Cancel,
    on_connected: &dyn Fn(&TcpStream),
) -> Result<MigrationSummary, MigrationError> {
    let disks = glue::disk_source(m)?;
    let tls = tls_context(&opts.to, &parse_addr(&opts.to)?, opts.tls.as_ref(), false)?;
    let socket = connect(opts)?;
    on_connected(&socket);
    // With `tls:` only a destination certified by this migration's CA gets the stream; a
    // failed handshake fails the migration before anything paused the guest.
    let stream = match tls {
        Some(ctx) => {
            ctx.handshake(socket, HANDSHAKE_TIMEOUT)
                .map_err(|source| MigrationError::Tls {
                    addr: opts.to.clone(),
                    source,
                })?
        }
        None => Transport::from(socket),
    };
    // Guest memory, then the copied disks, in one unit space: one session moves both.
    let mut source = Joined::source(GuestSource::new(m), disks)?;
    let mut guest = VmGuest::new(m, opts.auto_converge);
    match sender::migrate(
        stream,
        glue::hello(m),
        opts,
        &mut source,
        &mut guest,
        cancel,
    ) {
        Ok(summary) => {
            source.first.stop();
            Ok(summary)
        }
        Err(e @ SessionError::InDoubt(_)) => {
            // Dropping `guest` stops the throttle; the vCPUs stay paused.
            drop(guest);
            Err(e.into())
        }
        Err(e) => {
            guest.resume();
            Err(e.into())
        }
    }
}
