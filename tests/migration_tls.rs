//! Live migration over mutual TLS (`tls:`) between two real VMM processes over loopback,
//! with the one-time credential the controller issues
//! (`novacron_controller::migration_tls::issue`): a migration with the right halves
//! succeeds with its memory verified; a plain-TCP client and a client certified by another
//! migration's CA cannot get a stream into the destination, which keeps waiting and then
//! takes the real source; a destination that cannot prove it is this migration's peer (a
//! certificate of another CA, or plain TCP) fails the migration and the source guest keeps
//! running.

use novacron_controller::migration_tls::{issue, Credential};
use novacron_migration::protocol::{FrameType, FrameWriter, Hello, PROTOCOL_VERSION};
use novacron_migration::transport::TlsContext;
use novacron_testsupport::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn migrate_tls(
    dir: &Scratch,
    src: &Vmm,
    port: u16,
    c: &Credential,
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    let to = format!("tls:127.0.0.1:{port}");
    let mut args: Vec<String> = vec!["--to".into(), to];
    args.extend(tls_flags(dir, "src", &c.source));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = src.client("migrate", &args);
    let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (ok, v, err)
}

fn boot_source(dir: &Scratch) -> Vmm {
    let mut src = Vmm::boot_guest(
        dir,
        "src",
        "workload=rand mib=32 rate=5000 bytes=64",
        "128M",
    );
    src.wait_for("CHECK PASS", 0, Duration::from_secs(120));
    src
}

/// The source guest is alive, running, and its counter keeps ticking and self-checking.
fn source_keeps_running(src: &mut Vmm) {
    assert!(src.alive(), "source VMM died: {}", src.err());
    let (ok, out, err) = src.client("info", &[]);
    assert!(ok, "info: {err}");
    assert!(out.contains("\"running\""), "source not running: {out}");
    let before = last_ticks(&src.log());
    src.assert_still_passing();
    let len = src.log().len();
    let log = src.wait_for("PROGRESS", len, T);
    assert!(
        last_ticks(&log) > before,
        "the source guest's ticks stopped at {before}"
    );
}

/// The destination took over the guest: it runs, passes its self-check, and its ticks carry
/// on from the source's.
fn destination_took_over(src: &mut Vmm, dst: &mut Vmm) {
    assert_eq!(src.wait_exit(T), Some(0), "source: {}", src.err());
    let src_ticks = last_ticks(&src.log());
    let log = dst.wait_for("CHECK PASS", 0, T);
    let log = dst.wait_for("PROGRESS", log.len(), T);
    assert!(
        !log.contains("CHECK FAIL") && !log.contains("READY"),
        "{log}"
    );
    assert!(last_ticks(&log) > src_ticks, "{log}");
    let (_, out, _) = dst.client("info", &[]);
    assert!(out.contains("\"running\""), "{out}");
}

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        memory: 128 << 20,
        vcpus: 1,
        cpuid: Vec::new(),
        disks: 0,
        nets: 0,
        encodings: vec!["raw".into()],
        migration_id: String::new(),
        verify: Default::default(),
        copied_disks: Vec::new(),
    }
}

/// Everything the destination answers `s` until it closes (at most 10 s).
fn answer(mut s: impl Read) -> Result<Vec<u8>, std::io::Error> {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[test]
fn tls_migration_moves_the_guest_with_memory_verified() {
    let dir = Scratch::new("tls-ok");
    let c = issue("tls-ok").unwrap();
    let mut src = boot_source(&dir);
    let port = free_port("127.0.0.1");
    let mut dst = incoming_tls(&dir, "dst", port, "128M", &c.destination);
    let (ok, summary, err) = migrate_tls(&dir, &src, port, &c, &["--verify", "full"]);
    assert!(ok, "TLS migration failed: {err}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["verified"], true, "{summary}");
    assert!(
        summary["verified_pages"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    destination_took_over(&mut src, &mut dst);
}

#[test]
fn strays_cannot_reach_a_tls_destination_and_the_real_source_still_migrates() {
    let dir = Scratch::new("tls-strays");
    let c = issue("tls-strays").unwrap();
    let other = issue("another-migration").unwrap();
    let mut src = boot_source(&dir);
    let port = free_port("127.0.0.1");
    let mut dst = incoming_tls(&dir, "dst", port, "128M", &c.destination);
    let addr = format!("127.0.0.1:{port}");

    // A plain-TCP client sends a well-formed Hello: it gets no HelloAck, at most a TLS
    // alert, and the connection closes.
    let plain = TcpStream::connect(&addr).unwrap();
    let mut w = FrameWriter::new(plain.try_clone().unwrap());
    w.json(FrameType::Hello, &hello()).unwrap();
    w.flush().unwrap();
    let got = answer(plain).unwrap_or_default();
    assert!(
        got.is_empty() || got[0] == 0x15,
        "a plain client got an answer that is not a TLS alert: {got:?}"
    );

    // A client certified by another migration's CA: the destination refuses its
    // certificate, so nothing it sends is read and no frame comes back.
    let sock = TcpStream::connect(&addr).unwrap();
    let ctx = TlsContext::client(&other.source).unwrap();
    match ctx.handshake(sock, Duration::from_secs(10)) {
        Err(_) => {}
        Ok(mut t) => {
            let mut w = FrameWriter::new(t.try_clone().unwrap());
            let _ = w.json(FrameType::Hello, &hello()).and_then(|_| w.flush());
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r = answer(&mut t);
            assert!(
                r.is_err(),
                "a client of another CA got a stream: {:?}",
                r.map(|b| b.len())
            );
        }
    }

    // The destination's own half presented as a client (wrong role) is refused as well.
    let sock = TcpStream::connect(&addr).unwrap();
    if let Ok(mut t) = TlsContext::client(&c.destination)
        .unwrap()
        .handshake(sock, Duration::from_secs(10))
    {
        let mut w = FrameWriter::new(t.try_clone().unwrap());
        let _ = w.json(FrameType::Hello, &hello()).and_then(|_| w.flush());
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(answer(&mut t).is_err(), "a server-auth certificate got in");
    }

    // The destination is still waiting, refused them as strays, and takes the real source.
    assert!(dst.alive(), "destination gave up: {}", dst.err());
    let deadline = Instant::now() + T;
    while dst.err().matches("refused connection").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "strays not refused: {}",
            dst.err()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, summary, err) = migrate_tls(&dir, &src, port, &c, &["--verify", "sampled"]);
    assert!(
        ok,
        "the real source could not migrate after the strays: {err}"
    );
    assert_eq!(summary["ok"], true, "{summary}");
    destination_took_over(&mut src, &mut dst);
}

#[test]
fn a_destination_that_is_not_the_peer_fails_the_migration_and_the_source_keeps_running() {
    let dir = Scratch::new("tls-wrongdst");
    let c = issue("tls-wrongdst").unwrap();
    let other = issue("another-migration").unwrap();
    let mut src = boot_source(&dir);

    // A destination holding another migration's credential: the source refuses its
    // certificate (and it would refuse the source's).
    let port = free_port("127.0.0.1");
    let mut impostor = incoming_tls(&dir, "impostor", port, "128M", &other.destination);
    let (ok, _, err) = migrate_tls(&dir, &src, port, &c, &[]);
    assert!(!ok, "migrated to a destination of another CA");
    assert!(err.contains("TLS") || err.contains("certificate"), "{err}");
    source_keeps_running(&mut src);
    assert!(
        impostor.alive(),
        "the impostor must not have received a guest"
    );

    // A plain-TCP destination: no TLS server at all.
    let port = free_port("127.0.0.1");
    let _plain = incoming(&dir, "plain", port, "128M");
    let (ok, _, err) = migrate_tls(&dir, &src, port, &c, &[]);
    assert!(!ok, "migrated to a plain-TCP destination over tls:");
    assert!(err.contains("TLS"), "{err}");
    source_keeps_running(&mut src);

    // Still migratable to its real peer afterwards.
    let port = free_port("127.0.0.1");
    let mut dst = incoming_tls(&dir, "dst", port, "128M", &c.destination);
    let (ok, _, err) = migrate_tls(&dir, &src, port, &c, &["--verify", "sampled"]);
    assert!(ok, "the source could not migrate to its real peer: {err}");
    destination_took_over(&mut src, &mut dst);
}
