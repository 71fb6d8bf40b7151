//! The source side of a live migration: connects to the destination and runs the engine's
//! precopy ([`novacron_migration::sender`]) over this machine's memory; any failure before
//! the destination's confirmation resumes the guest here.

use super::glue::{self, GuestSource, VmGuest};
use super::options::{parse_tcp, MigrateOptions, MigrationSummary};
use super::MigrationError;
use crate::machine::Machine;
use novacron_migration::sender;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn connect(opts: &MigrateOptions) -> Result<TcpStream, MigrationError> {
    let addr = parse_tcp(&opts.to)?;
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
/// end this VM; on error the guest keeps running here.
pub fn migrate(
    m: &Arc<Machine>,
    opts: &MigrateOptions,
) -> Result<MigrationSummary, MigrationError> {
    let stream = connect(opts)?;
    let mut source = GuestSource::new(m);
    let mut guest = VmGuest::new(m, opts.auto_converge);
    match sender::migrate(
        stream,
        glue::hello(m),
        opts,
        &mut source,
        &mut guest,
        &novacron_migration::session::Cancel::new(),
    ) {
        Ok(summary) => {
            source.stop();
            Ok(summary)
        }
        Err(e) => {
            guest.resume();
            Err(e.into())
        }
    }
}
