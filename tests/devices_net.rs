//! virtio-net on a tap device, on real /dev/kvm. Everything runs inside a network namespace
//! private to the test thread (traffic never leaves it; the namespace and its taps disappear
//! with the thread):
//!
//! - frames the guest sends arrive on the tap (read on the host with an AF_PACKET socket), with
//!   the MAC address given by `--net tap=NAME,mac=MAC`;
//! - frames written to the tap reach the guest, which echoes them back;
//! - a tap that does not exist yet is created (and brought up) by the VMM.

mod common;

use common::{Scratch, Vmm};
use std::process::Command;
use std::time::Duration;

const ETHERTYPE_TEST: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Runs `f` on a thread that has its own network namespace; child processes it spawns
/// (ip, the VMM) inherit it.
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    let r = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        f();
    })
    .join();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// An AF_PACKET socket on `ifname` for EtherType `proto`.
struct PacketSocket(i32);

impl PacketSocket {
    fn open(ifname: &str, proto: u16) -> PacketSocket {
        let name = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: plain libc calls with valid arguments; results are checked.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0, "no interface {ifname}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be()));
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto.to_be();
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            PacketSocket(fd)
        }
    }

    /// Receives one frame (None on timeout).
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame is valid for its length.
        let n = unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this struct.
        unsafe { libc::close(self.0) };
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn frames_flow_between_guest_and_tap_both_ways() {
    in_private_netns(|| {
        let tap = "nctap0";
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&["link", "set", tap, "up"]);
        let sock = PacketSocket::open(tap, ETHERTYPE_TEST);
        let dir = Scratch::new("net");
        let g = common::guest();
        let net = format!("tap={tap},mac=52:54:00:ab:cd:ef");
        let mut vm = Vmm::start(
            &dir,
            "net",
            &[
                "--kernel",
                g.to_str().expect("utf8"),
                "--cmdline",
                "workload=net frames=5 rx=4",
                "--memory",
                "64M",
                "--net",
                &net,
            ],
        );
        // Guest to tap.
        for i in 0..5 {
            let f = sock
                .recv()
                .unwrap_or_else(|| panic!("frame {i} from the guest never arrived\n{}", vm.log()));
            assert_eq!(&f[0..6], &[0xff; 6], "broadcast destination");
            assert_eq!(&f[6..12], &GUEST_MAC, "source is the configured MAC");
            assert_eq!(u16::from_be_bytes([f[12], f[13]]), ETHERTYPE_TEST);
            let want = format!("NOVACRON-NET seq={i} ");
            assert!(
                f[14..].starts_with(want.as_bytes()),
                "frame {i}: {:?}",
                &f[14..40]
            );
            assert_eq!(f.len(), 14 + 100, "frame length");
        }
        let log = vm.wait_for("NET tx frames=5", 0, Duration::from_secs(20));
        assert!(log.contains("NET mac=52:54:00:ab:cd:ef"), "{log}");
        // Tap to guest, and the guest's echo back.
        for i in 0..4 {
            let payload = format!("HOST seq={i} {}", "x".repeat(40 + i));
            sock.send(&frame(GUEST_MAC, HOST_MAC, payload.as_bytes()));
            let echo = sock
                .recv()
                .unwrap_or_else(|| panic!("echo {i} never arrived\n{}", vm.log()));
            assert_eq!(&echo[0..6], &HOST_MAC, "echo goes back to the sender");
            assert_eq!(&echo[6..12], &GUEST_MAC);
            let want = format!("ECHO {payload}");
            assert_eq!(&echo[14..], want.as_bytes(), "echo {i}");
        }
        let log = vm.wait_for(
            "CHECK PASS workload=net tx=5 rx=4",
            0,
            Duration::from_secs(20),
        );
        for i in 0..4 {
            assert!(
                log.contains(&format!("NET rx seq={i} len={}", 14 + 10 + 1 + 40 + i)),
                "{log}"
            );
        }
    });
}

#[test]
fn vmm_creates_a_missing_tap_and_brings_it_up() {
    in_private_netns(|| {
        let dir = Scratch::new("net-create");
        let g = common::guest();
        let mut vm = Vmm::start(
            &dir,
            "netc",
            &[
                "--kernel",
                g.to_str().expect("utf8"),
                "--cmdline",
                "workload=net frames=1 rx=0",
                "--memory",
                "64M",
                "--net",
                "tap=ncnew0",
            ],
        );
        let log = vm.wait_for(
            "CHECK PASS workload=net tx=1 rx=0",
            0,
            Duration::from_secs(20),
        );
        // No MAC given: a locally administered 52:54:00 address.
        assert!(log.contains("NET mac=52:54:00:"), "{log}");
        let link = ip(&["link", "show", "ncnew0"]);
        assert!(link.contains("UP"), "{link}");
    });
}
