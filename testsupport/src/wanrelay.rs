//! The WAN relay: a userspace TCP relay that emulates a WAN link, for tests and benchmarks
//! on hosts that have `tc tbf` but no `netem` (the `novacron-wanrelay` binary drives it).
//!
//! For each accepted connection the relay connects to its target (and only there) and copies
//! both directions through an emulated link:
//!
//! * **Rate** ([`LinkConfig::rate`]): each direction is a bottleneck of RATE, shared by all
//!   connections of the relay, modelled as a token bucket with a small burst (5 ms of RATE,
//!   at least 1500 bytes): a chunk leaves the bottleneck when the bytes queued before it have
//!   been serialized at RATE. The queue in front of the bottleneck is small: the relay reads
//!   at most one chunk ahead, and clamps the receive buffer of the sockets it reads from to
//!   64 KiB, so a sender sees back-pressure instead of megabytes of hidden buffering.
//! * **Delay** ([`LinkConfig::rtt`]): every chunk is delivered RTT/2 after it leaves the
//!   bottleneck, in each direction; a request/response round trip through the relay
//!   therefore takes RTT more than without it. The delay line holds whatever is in flight (up
//!   to the bandwidth-delay product of the link), so throughput is not limited by the delay.
//! * **Corruption** ([`LinkConfig::flip_byte_at`]): byte N (0-based) of each connection's
//!   forward (client to server) stream is XORed with 0xFF.
//!
//! Limits of the model: the relay terminates TCP on both sides, so the endpoints' TCP sees
//! a short RTT to the relay (congestion-control dynamics of a long path are not
//! reproduced), and nothing is ever dropped or reordered.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source} (is the address local and the port free?)")]
    Listen {
        /// The address asked for.
        addr: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The bound socket has no local address.
    #[error("cannot read the listening address: {0}")]
    LocalAddr(io::Error),
}

/// The emulated link between the relay's clients and its target.
#[derive(Debug, Clone, Default)]
pub struct LinkConfig {
    /// Added round-trip time: each direction delays data by half of it.
    pub rtt: Duration,
    /// Capacity per direction in bytes per second, shared by all connections; unlimited
    /// when `None`.
    pub rate: Option<u64>,
    /// XOR 0xFF into this byte (0-based) of each connection's client-to-server stream.
    pub flip_byte_at: Option<u64>,
    /// Maximum simultaneously relayed connections; further ones are closed at once.
    pub max_conns: usize,
}

/// The bottleneck of one direction: a token bucket that may go into debt, so that
/// concurrent senders are serialized at the link rate in arrival order.
struct Bottleneck {
    rate: f64,
    burst: f64,
    /// (tokens, time of last refill); tokens < 0 is the backlog still to be serialized.
    state: Mutex<(f64, Instant)>,
}

impl Bottleneck {
    fn new(rate: u64) -> Self {
        let rate = rate as f64;
        let burst = (rate * 0.005).max(1500.0);
        Bottleneck {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Largest chunk worth passing at once (one burst, capped at 64 KiB).
    fn chunk(&self) -> usize {
        (self.burst as usize).clamp(1500, 64 << 10)
    }

    /// Takes `n` bytes through the bottleneck; returns the instant they have left it.
    fn pass(&self, n: usize) -> Instant {
        let now = Instant::now();
        let mut st = self.state.lock();
        let elapsed = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.rate).min(self.burst) - n as f64;
        st.1 = now;
        if st.0 >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-st.0 / self.rate)
        }
    }
}

/// Settings shared by all connections.
struct Link {
    one_way: Duration,
    forward: Option<Bottleneck>,
    reverse: Option<Bottleneck>,
    flip_at: Option<u64>,
}

enum Msg {
    Data(Vec<u8>, Instant),
    Eof,
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// Sets an integer socket option, best effort: a failure only leaves the kernel default,
/// which changes how closely the link is emulated, not correctness.
fn set_sockopt(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to a live local
    // c_int; `fd` is an open socket borrowed from its owner for the duration of the call.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Receive buffer of the sockets the relay reads from when a rate is set: the queue in
/// front of the emulated bottleneck.
const QUEUE_RCVBUF: libc::c_int = 64 << 10;

/// MSS the relay advertises to its clients when a rate is set, as on an Ethernet path.
/// Loopback's 64 KiB segments make the client's send buffer autotune to megabytes that
/// would hide the bottleneck from it.
const LINK_MSS: libc::c_int = 1448;

/// Reads `src`, passes each chunk through the bottleneck and hands it to the delay line.
fn ingress(
    mut src: TcpStream,
    tx: SyncSender<Msg>,
    bottleneck: Option<&Bottleneck>,
    one_way: Duration,
    flip_at: Option<u64>,
) {
    let chunk = bottleneck.map_or(64 << 10, Bottleneck::chunk);
    let mut offset = 0u64;
    loop {
        let mut buf = vec![0u8; chunk];
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                let _ = src.shutdown(Shutdown::Both);
                return; // dropping `tx` tells egress to abort
            }
        };
        buf.truncate(n);
        if let Some(at) = flip_at {
            if at >= offset && at < offset + n as u64 {
                buf[(at - offset) as usize] ^= 0xFF;
            }
        }
        offset += n as u64;
        let left = bottleneck.map_or_else(Instant::now, |b| b.pass(n));
        // The bottleneck is serial: wait here until the chunk has left it, so the queue in
        // front of it is this chunk plus the (clamped) socket buffers.
        sleep_until(left);
        if tx.send(Msg::Data(buf, left + one_way)).is_err() {
            let _ = src.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = tx.send(Msg::Eof);
}

/// Delivers chunks to `dst` when their delay has elapsed; half-closes `dst` at end of
/// stream, or shuts both sides down if ingress aborted or `dst` failed.
fn egress(mut dst: TcpStream, rx: Receiver<Msg>) {
    loop {
        match rx.recv() {
            Ok(Msg::Data(buf, at)) => {
                sleep_until(at);
                if dst.write_all(&buf).is_err() {
                    let _ = dst.shutdown(Shutdown::Both);
                    return;
                }
            }
            Ok(Msg::Eof) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Err(_) => {
                let _ = dst.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Relays one direction with two threads (bottleneck side and delay-line side).
fn direction(
    src: TcpStream,
    dst: TcpStream,
    link: Arc<Link>,
    forward: bool,
) -> io::Result<[thread::JoinHandle<()>; 2]> {
    let bottleneck = if forward {
        link.forward.as_ref()
    } else {
        link.reverse.as_ref()
    };
    // Delay-line capacity in chunks: the bandwidth-delay product twice over, or 64 MiB
    // without a rate limit, so an unthrottled sender cannot buffer without bound.
    let chunk = bottleneck.map_or(64 << 10, Bottleneck::chunk);
    let inflight = bottleneck.map_or(64 << 20, |b| {
        (2.0 * b.rate * link.one_way.as_secs_f64()) as usize + (1 << 20)
    });
    let (tx, rx) = sync_channel(inflight.div_ceil(chunk).max(16));
    let link2 = Arc::clone(&link);
    let a = thread::Builder::new()
        .name("relay-ingress".into())
        .spawn(move || {
            let l = &*link2;
            let b = if forward {
                l.forward.as_ref()
            } else {
                l.reverse.as_ref()
            };
            ingress(
                src,
                tx,
                b,
                l.one_way,
                if forward { l.flip_at } else { None },
            );
        })?;
    let b = thread::Builder::new()
        .name("relay-egress".into())
        .spawn(move || egress(dst, rx))?;
    Ok([a, b])
}

/// Relays one accepted connection until both directions are finished.
fn relay(client: TcpStream, to: &str, link: Arc<Link>) -> io::Result<()> {
    let server = TcpStream::connect(to)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    if link.forward.is_some() || link.reverse.is_some() {
        set_sockopt(&client, libc::SOL_SOCKET, libc::SO_RCVBUF, QUEUE_RCVBUF);
        set_sockopt(&server, libc::SOL_SOCKET, libc::SO_RCVBUF, QUEUE_RCVBUF);
    }
    let fwd = direction(
        client.try_clone()?,
        server.try_clone()?,
        Arc::clone(&link),
        true,
    )?;
    let rev = direction(server, client, link, false)?;
    for h in fwd.into_iter().chain(rev) {
        let _ = h.join();
    }
    Ok(())
}

/// A bound relay, ready to serve.
pub struct Relay {
    listener: TcpListener,
    to: String,
    link: Arc<Link>,
    max_conns: usize,
}

impl Relay {
    /// Binds `listen` (port 0 picks a free port); connections will be relayed to `to`.
    pub fn bind(listen: &str, to: &str, cfg: &LinkConfig) -> Result<Relay, RelayError> {
        let listener = TcpListener::bind(listen).map_err(|source| RelayError::Listen {
            addr: listen.to_string(),
            source,
        })?;
        if cfg.rate.is_some() {
            // Inherited by accepted sockets: keeps the queue before the bottleneck small.
            set_sockopt(&listener, libc::SOL_SOCKET, libc::SO_RCVBUF, QUEUE_RCVBUF);
            set_sockopt(&listener, libc::IPPROTO_TCP, libc::TCP_MAXSEG, LINK_MSS);
        }
        let link = Arc::new(Link {
            one_way: cfg.rtt / 2,
            forward: cfg.rate.map(Bottleneck::new),
            reverse: cfg.rate.map(Bottleneck::new),
            flip_at: cfg.flip_byte_at,
        });
        Ok(Relay {
            listener,
            to: to.to_string(),
            link,
            max_conns: cfg.max_conns,
        })
    }

    /// The address the relay listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, RelayError> {
        self.listener.local_addr().map_err(RelayError::LocalAddr)
    }

    /// Accepts and relays connections until the listener fails for good; problems with
    /// single connections are reported on stderr and do not stop the relay.
    pub fn serve(self) {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            let client = match conn {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("novacron-wanrelay: accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if active.load(Ordering::SeqCst) >= self.max_conns {
                eprintln!(
                    "novacron-wanrelay: refusing connection: {} already active",
                    self.max_conns
                );
                drop(client);
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let (to, link, active2) =
                (self.to.clone(), Arc::clone(&self.link), Arc::clone(&active));
            let spawned = thread::Builder::new()
                .name("relay-conn".into())
                .spawn(move || {
                    if let Err(e) = relay(client, &to, link) {
                        eprintln!("novacron-wanrelay: relaying to {to}: {e}");
                    }
                    active2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                eprintln!("novacron-wanrelay: {e}");
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_the_shared_parser() {
        use novacron_vmm_api::units::parse_rate;
        assert_eq!(parse_rate("100mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("5mbit"), Ok(625_000));
        assert_eq!(parse_rate("8Mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("10MB"), Ok(10 << 20));
        assert_eq!(parse_rate("1.5gbit"), Ok(187_500_000));
        assert_eq!(parse_rate("64KiB"), Ok(65_536));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("10mbps").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("3 furlongs").is_err());
    }

    #[test]
    fn bottleneck_serializes_at_rate() {
        let b = Bottleneck::new(1_000_000);
        let t0 = Instant::now();
        let mut last = t0;
        for _ in 0..100 {
            last = b.pass(10_000);
        }
        // 1 MB at 1 MB/s, minus the initial 5 ms burst.
        let d = last.duration_since(t0).as_secs_f64();
        assert!((0.98..1.02).contains(&d), "{d}");
        assert!(b.chunk() >= 1500 && b.chunk() <= 64 << 10);
    }
}
