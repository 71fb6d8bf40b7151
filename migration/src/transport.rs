//! The migration stream's transport: mutual TLS (`tls:HOST:PORT`, what the agent always
//! uses) or plain TCP (`tcp:HOST:PORT`, for debugging at the VMM's command line).
//!
//! # The one-time credential
//!
//! Each migration has its own CA ([`MigrationTls`]: issued by the controller, its key
//! discarded once it has signed two certificates): the destination's server certificate
//! (DNS name [`SERVER_NAME`]) and the source's client certificate. The destination
//! ([`TlsContext::server`]) requires a client certificate chaining to that CA, the source
//! ([`TlsContext::client`]) a server certificate chaining to it; anything else (no
//! certificate, a certificate of another migration's CA, plain TCP, a peer that stalls)
//! fails the handshake, within a deadline. TLS 1.3 only, AES-128-GCM only (AES-NI makes it
//! the cheapest AEAD here), no session resumption or tickets: nothing survives the one
//! connection.
//!
//! # The stream
//!
//! [`Transport`] is what the engine's sender and receiver read and write: `Read + Write`,
//! cloneable (the TLS session is shared by the clones: the engine uses its reading and
//! writing halves from one thread), with the socket operations the engine needs (timeouts,
//! nodelay, peek for a reply). The TLS path keeps large I/O: records are read from a
//! 256 KiB socket buffer (rustls alone reads 4 KiB per syscall) and written out with
//! vectored writes of up to 1 MiB of records. Writes never wait on reads: a socket that
//! takes no data ends a write with its timeout error (`WouldBlock`), the encrypted bytes
//! stay queued, and the next write or flush sends them first.

use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use novacron_vmm_api::migration::MigrationTls;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use thiserror::Error;

/// The DNS name in every destination certificate, and the name the source checks.
pub const SERVER_NAME: &str = "novacron-migration";

/// Bytes read from the socket at once on the TLS path.
const READ_BUFFER: usize = 256 << 10;
/// Encrypted bytes queued at most per write (sent with vectored writes).
const WRITE_QUEUE: usize = 1 << 20;

/// Why a migration TLS credential or handshake failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A PEM item of the credential is missing or unreadable.
    #[error("migration TLS credential: the {what} is not valid PEM ({detail}); the controller issues a fresh credential per migration")]
    Pem {
        /// Which item: CA certificate, certificate or key.
        what: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// The credential parsed but rustls refused it (e.g. the key does not match).
    #[error("migration TLS credential refused: {0}")]
    Config(String),
    /// The peer did not complete a mutually authenticated handshake.
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer's address.
        peer: String,
        /// What went wrong (a certificate refused, a plain-TCP peer, a closed connection).
        source: io::Error,
    },
    /// The peer did not complete the handshake in time.
    #[error("TLS handshake with {peer} not complete within {secs:.1} s")]
    Timeout {
        /// The peer's address.
        peer: String,
        /// The time allowed.
        secs: f64,
    },
}

/// The crypto both ends use: ring, TLS 1.3 AES-128-GCM only.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(p)
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> TransportError {
    move |e| TransportError::Pem {
        what,
        detail: e.to_string(),
    }
}

fn config_err(e: rustls::Error) -> TransportError {
    TransportError::Config(e.to_string())
}

/// The parsed credential: trust anchor, own chain, own key.
struct Parsed {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn parse(c: &MigrationTls) -> Result<Parsed, TransportError> {
    let certs = |pem: &str, what: &'static str| -> Result<Vec<CertificateDer<'static>>, _> {
        let v = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(what))?;
        if v.is_empty() {
            return Err(TransportError::Pem {
                what,
                detail: "no CERTIFICATE block".into(),
            });
        }
        Ok(v)
    };
    let mut roots = RootCertStore::empty();
    for ca in certs(&c.ca_pem, "CA certificate")? {
        roots.add(ca).map_err(config_err)?;
    }
    Ok(Parsed {
        roots,
        chain: certs(&c.cert_pem, "certificate")?,
        key: PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(pem_err("key"))?,
    })
}

/// One end's TLS configuration for one migration.
#[derive(Clone)]
pub enum TlsContext {
    /// The destination: accepts only a client certified by the migration's CA.
    Server(Arc<ServerConfig>),
    /// The source: accepts only a server certified by the migration's CA.
    Client(Arc<ClientConfig>),
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsContext::Server(_) => "TlsContext::Server",
            TlsContext::Client(_) => "TlsContext::Client",
        })
    }
}

impl TlsContext {
    /// The destination's configuration from its half of the credential.
    pub fn server(c: &MigrationTls) -> Result<Self, TransportError> {
        let p = parse(c)?;
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(p.roots), provider.clone())
                .build()
                .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(p.chain, p.key)
            .map_err(config_err)?;
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(TlsContext::Server(Arc::new(cfg)))
    }

    /// The source's configuration from its half of the credential.
    pub fn client(c: &MigrationTls) -> Result<Self, TransportError> {
        let p = parse(c)?;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(p.roots)
            .with_client_auth_cert(p.chain, p.key)
            .map_err(config_err)?;
        cfg.resumption = Resumption::disabled();
        Ok(TlsContext::Client(Arc::new(cfg)))
    }

    /// Runs the handshake over `sock` (connected, or accepted), within `timeout`. On
    /// success the stream is mutually authenticated; on error `sock` is closed.
    pub fn handshake(
        &self,
        sock: TcpStream,
        timeout: Duration,
    ) -> Result<Transport, TransportError> {
        let peer = sock
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "the peer".into());
        let failed = |source: io::Error| TransportError::Handshake {
            peer: peer.clone(),
            source,
        };
        let mut conn: Connection = match self {
            TlsContext::Server(cfg) => rustls::ServerConnection::new(cfg.clone())
                .map_err(config_err)?
                .into(),
            TlsContext::Client(cfg) => {
                let name = ServerName::try_from(SERVER_NAME)
                    .map_err(|e| TransportError::Config(e.to_string()))?;
                ClientConnection::new(cfg.clone(), name)
                    .map_err(config_err)?
                    .into()
            }
        };
        conn.set_buffer_limit(Some(WRITE_QUEUE));
        let deadline = Instant::now() + timeout;
        let mut io = sock.try_clone().map_err(&failed)?;
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::Timeout {
                    peer,
                    secs: timeout.as_secs_f64(),
                });
            }
            sock.set_read_timeout(Some(left)).map_err(&failed)?;
            sock.set_write_timeout(Some(left)).map_err(&failed)?;
            match conn.complete_io(&mut io) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(TransportError::Timeout {
                        peer,
                        secs: timeout.as_secs_f64(),
                    })
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e)),
            }
        }
        // Anything the handshake left to send (the client's Finished) goes now.
        while conn.wants_write() {
            conn.write_tls(&mut io).map_err(&failed)?;
        }
        sock.set_read_timeout(None).map_err(&failed)?;
        sock.set_write_timeout(None).map_err(&failed)?;
        let reader = BufReader::with_capacity(READ_BUFFER, sock.try_clone().map_err(&failed)?);
        Ok(Transport {
            raw: sock,
            tls: Some(Arc::new(Mutex::new(Tls {
                conn,
                reader,
                writer: io,
            }))),
        })
    }
}

/// The TLS session and its socket halves, shared by a transport's clones.
struct Tls {
    conn: Connection,
    /// Socket reads, [`READ_BUFFER`] at a time.
    reader: BufReader<TcpStream>,
    /// Socket writes.
    writer: TcpStream,
}

impl Tls {
    /// Writes the queued records out; a socket that takes no data ends it with its error.
    fn drain(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.writer)? == 0 {
                return Err(ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Whether plaintext or unprocessed bytes are already here (a read would not wait on
    /// the socket for them).
    fn buffered(&mut self) -> io::Result<bool> {
        if !self.reader.buffer().is_empty() {
            return Ok(true);
        }
        let state = self
            .conn
            .process_new_packets()
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
        Ok(state.plaintext_bytes_to_read() > 0)
    }
}

impl Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // No plaintext yet: more records are needed.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Queued records (an alert, a key update) go first.
            self.drain()?;
            self.conn.read_tls(&mut self.reader)?;
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.drain();
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // What earlier writes queued goes first: a full socket ends this call having taken
        // nothing of `buf`, so the caller's retry is exact.
        self.drain()?;
        let n = self.conn.writer().write(buf)?;
        // A full socket now only delays these bytes to the next call.
        match self.drain() {
            Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(e),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.drain()
    }
}

/// The migration stream: a TCP socket, mutually authenticated TLS over it, or plain.
/// Clones share the stream (and the TLS session), for use from one thread: on TLS a read
/// that waits for the peer holds the session, so a write through another clone waits too.
#[derive(Debug)]
pub struct Transport {
    raw: TcpStream,
    tls: Option<Arc<Mutex<Tls>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl From<TcpStream> for Transport {
    /// A plain-TCP stream (`tcp:`: debugging only).
    fn from(raw: TcpStream) -> Self {
        Transport { raw, tls: None }
    }
}

impl Transport {
    fn tls(&self) -> Option<MutexGuard<'_, Tls>> {
        // A panic while holding the lock leaves the session unusable anyway; its bytes
        // are still consistent enough to fail on the next record.
        self.tls
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The underlying socket (for shutting the stream down from another thread).
    pub fn socket(&self) -> &TcpStream {
        &self.raw
    }

    /// Another handle to the same stream.
    pub fn try_clone(&self) -> io::Result<Transport> {
        Ok(Transport {
            raw: self.raw.try_clone()?,
            tls: self.tls.clone(),
        })
    }

    /// Sets the socket's read timeout (a read that waits longer fails with `WouldBlock`).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.raw.set_read_timeout(t)
    }

    /// Sets the socket's write timeout (a write that waits longer fails with `WouldBlock`).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.raw.set_write_timeout(t)
    }

    /// Sets TCP_NODELAY.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.raw.set_nodelay(on)
    }

    /// Shuts the socket down.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.raw.shutdown(how)
    }

    /// Waits (at most the read timeout) until a read would find data or the end of the
    /// stream, consuming nothing; `WouldBlock` when the timeout passed first.
    pub fn wait_readable(&self) -> io::Result<()> {
        if let Some(mut t) = self.tls() {
            if t.buffered()? {
                return Ok(());
            }
        }
        self.raw.peek(&mut [0u8; 1]).map(|_| ())
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls() {
            Some(mut t) => t.read(buf),
            None => (&self.raw).read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tls() {
            Some(mut t) => t.write(buf),
            None => (&self.raw).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tls() {
            Some(mut t) => t.flush(),
            None => (&self.raw).flush(),
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    /// (destination half, source half) of a fresh credential, as the controller issues it.
    pub(super) fn credential() -> (MigrationTls, MigrationTls) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf = |eku| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &issuer).unwrap();
            MigrationTls {
                ca_pem: ca.pem(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        };
        (
            leaf(ExtendedKeyUsagePurpose::ServerAuth),
            leaf(ExtendedKeyUsagePurpose::ClientAuth),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::credential;
    use super::*;
    use std::net::TcpListener;

    /// Runs a TLS server with `server` on a loopback port; it echoes what it reads back
    /// (and reports its handshake's outcome).
    fn serve(server: &MigrationTls) -> (u16, std::thread::JoinHandle<Result<u64, String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ctx = TlsContext::server(server).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().map_err(|e| e.to_string())?;
            let mut t = ctx
                .handshake(s, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            t.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = t.read(&mut buf).map_err(|e| e.to_string())?;
                if k == 0 {
                    return Ok(n);
                }
                n += k as u64;
                t.write_all(&buf[..k]).map_err(|e| e.to_string())?;
                t.flush().map_err(|e| e.to_string())?;
                if n >= 8 << 20 {
                    return Ok(n);
                }
            }
        });
        (port, h)
    }

    #[test]
    fn mutual_tls_carries_data_both_ways() {
        let (dst, src) = credential();
        let (port, server) = serve(&dst);
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut t = TlsContext::client(&src)
            .unwrap()
            .handshake(sock, Duration::from_secs(5))
            .unwrap();
        assert!(t.is_tls());
        // Clones share the session from one thread, as the engine uses them.
        let mut reader = t.try_clone().unwrap();
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let mut back = vec![0u8; data.len()];
        for (chunk, echo) in data.chunks(1 << 20).zip(back.chunks_mut(1 << 20)) {
            t.write_all(chunk).unwrap();
            t.flush().unwrap();
            reader.read_exact(echo).unwrap();
        }
        assert!(back == data, "echo differs");
        assert_eq!(server.join().unwrap(), Ok(8 << 20));
    }

    fn refused(client: rustls::ClientConfig, server: &MigrationTls) -> String {
        let (port, server) = serve(server);
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ctx = TlsContext::Client(Arc::new(client));
        // TLS 1.3: the client may think it is done before the server judged its
        // certificate; then its first read fails.
        if let Ok(mut t) = ctx.handshake(sock, Duration::from_secs(5)) {
            let _ = t.write_all(b"hello").and_then(|_| t.flush());
            t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert!(t.read(&mut [0u8; 16]).is_err(), "the client got data");
        }
        server
            .join()
            .unwrap()
            .expect_err("the server accepted the client")
    }

    #[test]
    fn a_client_without_a_certificate_is_refused() {
        let (dst, _) = credential();
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(dst.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let e = refused(cfg, &dst);
        assert!(
            e.contains("certificate") || e.contains("Certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_client_of_another_ca_is_refused() {
        let (dst, _) = credential();
        let (_, other_src) = credential();
        // Trusts the destination's CA, but its own certificate is another migration's.
        let mut c = other_src.clone();
        c.ca_pem = dst.ca_pem.clone();
        let TlsContext::Client(cfg) = TlsContext::client(&c).unwrap() else {
            unreachable!()
        };
        let e = refused((*cfg).clone(), &dst);
        assert!(
            e.contains("UnknownIssuer") || e.contains("certificate"),
            "{e}"
        );
    }

    #[test]
    fn the_source_refuses_a_server_of_another_ca() {
        let (_, src) = credential();
        let (other_dst, _) = credential();
        let (port, server) = serve(&other_dst);
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let e = TlsContext::client(&src)
            .unwrap()
            .handshake(sock, Duration::from_secs(5))
            .expect_err("the source accepted another CA's server");
        assert!(e.to_string().contains("invalid peer certificate"), "{e}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn plain_tcp_and_silence_fail_the_handshake() {
        let (dst, _) = credential();
        let (port, server) = serve(&dst);
        let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain.write_all(&[0x5a; 64]).unwrap();
        assert!(server.join().unwrap().is_err(), "plain TCP got through");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        let t0 = Instant::now();
        let e = TlsContext::server(&dst)
            .unwrap()
            .handshake(s, Duration::from_millis(300))
            .expect_err("a silent peer completed a handshake");
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn bad_pem_is_named() {
        let (mut dst, _) = credential();
        dst.key_pem = "not a key".into();
        let e = TlsContext::server(&dst).unwrap_err().to_string();
        assert!(e.contains("key is not valid PEM"), "{e}");
    }
}

/// Throughput of the stream itself over loopback, plain and TLS (a measurement, not a check:
/// `cargo test --release -p novacron-migration --lib transport::throughput -- --ignored
/// --nocapture`).
#[cfg(test)]
mod throughput {
    use super::tests_support::credential;
    use super::*;
    use std::net::TcpListener;

    fn run(tls: bool, bytes: usize) -> f64 {
        let (dst, src) = credential();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut t = if tls {
                TlsContext::server(&dst)
                    .unwrap()
                    .handshake(s, Duration::from_secs(5))
                    .unwrap()
            } else {
                Transport::from(s)
            };
            let mut r = BufReader::with_capacity(1 << 20, &mut t);
            let mut buf = vec![0u8; 4 << 20];
            let mut n = 0;
            while n < bytes {
                let k = r.read(&mut buf).unwrap();
                assert!(k > 0);
                n += k;
            }
        });
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let t0 = Instant::now();
        let t = if tls {
            TlsContext::client(&src)
                .unwrap()
                .handshake(s, Duration::from_secs(5))
                .unwrap()
        } else {
            Transport::from(s)
        };
        let mut w = std::io::BufWriter::with_capacity(1 << 20, t);
        let chunk = vec![0x5au8; 4 << 20];
        let mut sent = 0;
        while sent < bytes {
            w.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        w.flush().unwrap();
        server.join().unwrap();
        bytes as f64 / t0.elapsed().as_secs_f64() / 1e6
    }

    #[test]
    #[ignore]
    fn throughput() {
        for _ in 0..2 {
            let tcp = run(false, 1 << 30);
            let tls = run(true, 1 << 30);
            println!(
                "1 GiB over loopback: tcp {tcp:.0} MB/s, tls {tls:.0} MB/s ({:.2}x)",
                tcp / tls
            );
        }
    }
}
