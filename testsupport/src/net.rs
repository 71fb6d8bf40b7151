//! Host networking for tests: free TCP ports, a private network namespace per test thread,
//! tap devices made with `ip`, and AF_PACKET sockets to read and write frames on a tap.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

/// A free TCP port on `ip` (an address of this host, e.g. 127.0.0.1 or 127.0.0.2).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// Runs `f` on a thread that has its own network namespace (traffic never leaves it; the
/// namespace and its devices disappear with the thread); child processes it spawns (ip, the
/// VMM) inherit it. A panic in `f` is resumed on the caller's thread.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let r = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (the tests need root)",
            io::Error::last_os_error()
        );
        f()
    })
    .join();
    match r {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Runs `ip ARGS` (iproute2), panicking with its stderr if it fails; returns its stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates tap `name` and brings it up, with a transmit queue of `txqueuelen` frames if
/// given (a tap drops what does not fit its queue).
pub fn add_tap(name: &str, txqueuelen: Option<u64>) {
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    match txqueuelen {
        Some(q) => ip(&["link", "set", name, "txqueuelen", &q.to_string(), "up"]),
        None => ip(&["link", "set", name, "up"]),
    };
}

/// Sets one socket option from a plain value.
fn setsockopt<T>(fd: &OwnedFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes from a live reference; the fd is open
    // for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An AF_PACKET socket bound to one interface and EtherType, closed on drop.
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Opens one on `ifname` for EtherType `proto`; `recv` gives up after `timeout`. With
    /// `rcvbuf`, the receive buffer is forced to that many bytes (for benchmarks that let
    /// frames pile up).
    pub fn open(ifname: &str, proto: u16, timeout: Duration, rcvbuf: Option<usize>) -> Self {
        let name = CString::new(ifname).expect("interface name without NUL");
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be())) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a live sockaddr_ll of the size passed; the fd is open.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind to {ifname}: {}", io::Error::last_os_error());
        if let Some(bytes) = rcvbuf {
            let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            setsockopt(&fd, libc::SO_RCVBUFFORCE, &bytes).expect("SO_RCVBUFFORCE");
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
        };
        setsockopt(&fd, libc::SO_RCVTIMEO, &tv).expect("SO_RCVTIMEO");
        PacketSocket(fd)
    }

    /// Receives one frame (None on timeout or error).
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is valid for writes of its length; the fd is open.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Sends one frame whole.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of its length; the fd is open.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match usize::try_from(n) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "short send: {n} of {} bytes",
                frame.len()
            ))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}
