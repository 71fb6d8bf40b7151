//! virtio-net on a tap device, on real /dev/kvm. Everything runs inside a network namespace
//! private to the test thread (traffic never leaves it; the namespace and its taps disappear
//! with the thread):
//!
//! - frames the guest sends arrive on the tap (read on the host with an AF_PACKET socket), with
//!   the MAC address given by `--net tap=NAME,mac=MAC`;
//! - frames written to the tap reach the guest, which echoes them back;
//! - a tap that does not exist yet is created (and brought up) by the VMM.

use novacron_testsupport::net::{add_tap, in_private_netns, ip, PacketSocket};
use novacron_testsupport::{Scratch, Vmm};
use std::time::Duration;

const ETHERTYPE_TEST: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

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
        add_tap(tap, None);
        let sock = PacketSocket::open(tap, ETHERTYPE_TEST, Duration::from_secs(10), None);
        let dir = Scratch::new("net");
        let g = novacron_testsupport::guest();
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
            sock.send(&frame(GUEST_MAC, HOST_MAC, payload.as_bytes()))
                .expect("send a frame to the guest");
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
        let g = novacron_testsupport::guest();
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
