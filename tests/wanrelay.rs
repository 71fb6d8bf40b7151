//! Integration tests of `novacron-wanrelay`: real TCP through the relay on 127.0.0.1 only.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use novacron_testsupport::{noise, RelayProcess as Relay};

/// A server that runs `handler` on its first connection.
fn server<F>(handler: F) -> (SocketAddr, thread::JoinHandle<()>)
where
    F: FnOnce(TcpStream) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        handler(s);
    });
    (addr, h)
}

fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

#[test]
fn data_arrives_intact_in_both_directions() {
    let (addr, srv) = server(echo);
    let relay = Relay::start(addr, &[]);
    let data = noise(3 << 20, 1);
    let mut c = TcpStream::connect(relay.addr).unwrap();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        for chunk in sent.chunks(7919) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    srv.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed data differs");
}

#[test]
fn rate_limit_2mb_at_8mbit_takes_about_2s() {
    const LEN: usize = 2_000_000;
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, srv) = server(move |mut s| {
        let mut got = 0usize;
        let mut buf = [0u8; 64 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        tx.send((got, Instant::now())).unwrap();
    });
    let relay = Relay::start(addr, &["--rate", "8mbit"]);
    let data = noise(LEN, 2);
    let t0 = Instant::now();
    let mut c = TcpStream::connect(relay.addr).unwrap();
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, t1) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    srv.join().unwrap();
    assert_eq!(got, LEN);
    // 2,000,000 bytes at 1,000,000 bytes/s = 2.0 s.
    let secs = t1.duration_since(t0).as_secs_f64();
    assert!(
        (1.8..3.5).contains(&secs),
        "2 MB at 8 mbit took {secs:.2} s"
    );
}

/// Round-trip time of `n` small ping-pongs through `addr`, in seconds each.
fn ping_pong(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut buf = [0u8; 8];
    (0..n)
        .map(|i| {
            let t = Instant::now();
            c.write_all(&(i as u64).to_le_bytes()).unwrap();
            c.read_exact(&mut buf).unwrap();
            assert_eq!(u64::from_le_bytes(buf), i as u64);
            t.elapsed().as_secs_f64()
        })
        .collect()
}

#[test]
fn added_delay_is_observed() {
    let (addr, srv) = server(|s| {
        s.set_nodelay(true).unwrap();
        echo(s)
    });
    let relay = Relay::start(addr, &["--rtt-ms", "150"]);
    let rtts = ping_pong(relay.addr, 5);
    srv.join().unwrap();
    for rtt in rtts {
        // 75 ms each way; allow scheduling noise on a loaded host above, not below.
        assert!((0.149..0.40).contains(&rtt), "round trip took {rtt:.3} s");
    }
    // The `--delay-ms` spelling means the same added round-trip time.
    let (addr, srv) = server(|s| {
        s.set_nodelay(true).unwrap();
        echo(s)
    });
    let relay = Relay::start(addr, &["--delay-ms", "60", "--rate", "100mbit"]);
    let rtts = ping_pong(relay.addr, 3);
    srv.join().unwrap();
    for rtt in rtts {
        assert!((0.059..0.30).contains(&rtt), "round trip took {rtt:.3} s");
    }
}

#[test]
fn flip_byte_at_flips_exactly_that_byte() {
    const LEN: usize = 200_000;
    const AT: usize = 123_457;
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, srv) = server(move |mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the whole forward stream, then send a reply (reverse direction untouched).
        while got.len() < LEN {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        s.write_all(&noise(LEN, 9)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        tx.send(got).unwrap();
    });
    let relay = Relay::start(addr, &["--flip-byte-at", &AT.to_string()]);
    let data = noise(LEN, 3);
    let mut c = TcpStream::connect(relay.addr).unwrap();
    c.write_all(&data).unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    srv.join().unwrap();
    assert_eq!(got.len(), LEN);
    let diffs: Vec<usize> = (0..LEN).filter(|&i| got[i] != data[i]).collect();
    assert_eq!(diffs, vec![AT]);
    assert_eq!(got[AT], data[AT] ^ 0xFF);
    assert!(reply == noise(LEN, 9), "reverse direction was modified");
}

#[test]
fn exits_when_stdin_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut relay = Relay::start(listener.local_addr().unwrap(), &[]);
    drop(relay.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = relay.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relay still running after stdin closed"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn max_conns_refuses_extra_connections() {
    let (addr, srv) = server(echo);
    let relay = Relay::start(addr, &["--max-conns", "1"]);
    let mut first = TcpStream::connect(relay.addr).unwrap();
    first.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // The relay closes the second connection at once.
    let mut second = TcpStream::connect(relay.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut one = [0u8; 1];
    // Closed means end-of-file or a reset; a read timeout means the relay kept it open.
    match second.read(&mut one) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        other => panic!("second connection was not closed by the relay: {other:?}"),
    }
    // The first one still works.
    first.write_all(b"pong").unwrap();
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    first.shutdown(Shutdown::Write).unwrap();
    srv.join().unwrap();
}
