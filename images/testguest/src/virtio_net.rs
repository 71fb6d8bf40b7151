//! virtio-net workloads (`net`, `netbench`), polling.
//!
//! Frames carry a zeroed 12-byte `virtio_net_hdr_v1` in front. Receive buffers are 2 KiB, one
//! descriptor each (descriptor `i` = buffer `i`), re-posted as soon as they are consumed.
//! Test frames use EtherType 0x88b5 (local experimental), benchmark frames 0x88b6.

use crate::bootinfo::BootInfo;
use crate::devworkloads::{fail, num, region};
use crate::virtio::{self, Alloc, Queue, DESC_F_WRITE};
use crate::{outln, sys};

const F_MAC: u64 = 1 << 5;
const HDR: u64 = 12;
const BUF: u64 = 2048;
const RX_BUFS: u16 = 128;
/// EtherType of test frames.
pub const ETHERTYPE_TEST: u16 = 0x88b5;
/// EtherType of benchmark frames.
pub const ETHERTYPE_BENCH: u16 = 0x88b6;

pub struct Net {
    rx: Queue,
    tx: Queue,
    rx_bufs: u64,
    tx_bufs: u64,
    tx_next: u16,
    pub mac: [u8; 6],
}

impl Net {
    pub fn open(nth: usize, alloc: &mut Alloc) -> Result<Net, &'static str> {
        let dev = virtio::find(virtio::ID_NET, nth).ok_or("no such virtio-net device")?;
        let features = dev.begin_init(F_MAC)?;
        let rx = Queue::setup(dev, 0, 256, alloc)?;
        let tx = Queue::setup(dev, 1, 256, alloc)?;
        let rx_bufs = alloc
            .take(BUF * RX_BUFS as u64, 4096)
            .ok_or("out of memory")?;
        let tx_bufs = alloc
            .take(BUF * tx.size as u64, 4096)
            .ok_or("out of memory")?;
        let mut mac = [0u8; 6];
        if features & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = dev.config8(i as u64);
            }
        }
        let mut net = Net {
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            tx_next: 0,
            mac,
        };
        let n = RX_BUFS.min(net.rx.size);
        for i in 0..n {
            net.rx
                .set_desc(i, rx_bufs + BUF * i as u64, BUF as u32, DESC_F_WRITE, 0);
            net.rx.push(i);
        }
        dev.finish_init()?;
        net.rx.notify();
        Ok(net)
    }

    /// A free transmit buffer (reclaiming completed ones; waits if all are in flight).
    fn tx_slot(&mut self) -> u16 {
        loop {
            while self.tx.pop_used().is_some() {}
            if self.tx.in_flight() < self.tx.size {
                let s = self.tx_next % self.tx.size;
                self.tx_next = self.tx_next.wrapping_add(1);
                return s;
            }
            core::hint::spin_loop();
        }
    }

    /// Address of transmit buffer `slot`'s frame (after the header).
    fn tx_frame(&self, slot: u16) -> u64 {
        self.tx_bufs + BUF * slot as u64 + HDR
    }

    /// Queues the frame already in `slot` (length `len` without the header); no notify.
    fn tx_push(&mut self, slot: u16, len: u64) {
        let buf = self.tx_bufs + BUF * slot as u64;
        // SAFETY: the header lies in our transmit buffer.
        unsafe { core::ptr::write_bytes(buf as *mut u8, 0, HDR as usize) };
        self.tx.set_desc(slot, buf, (HDR + len) as u32, 0, 0);
        self.tx.push(slot);
    }

    /// Sends one frame: `dst`, our MAC, `ethertype`, `payload`.
    pub fn send(&mut self, dst: [u8; 6], ethertype: u16, payload: &[u8]) {
        let slot = self.tx_slot();
        let f = self.tx_frame(slot);
        let len = (14 + payload.len() as u64).min(BUF - HDR);
        // SAFETY: the frame fits the 2 KiB buffer (length clamped above).
        unsafe {
            let p = f as *mut u8;
            core::ptr::copy_nonoverlapping(dst.as_ptr(), p, 6);
            core::ptr::copy_nonoverlapping(self.mac.as_ptr(), p.add(6), 6);
            core::ptr::copy_nonoverlapping(ethertype.to_be_bytes().as_ptr(), p.add(12), 2);
            core::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(14), (len - 14) as usize);
        }
        self.tx_push(slot, len);
        self.tx.notify();
    }

    /// The next received frame as (descriptor, frame address, frame length).
    pub fn recv(&mut self) -> Option<(u16, u64, u64)> {
        let (head, len) = self.rx.pop_used()?;
        let frame_len = (len as u64).saturating_sub(HDR);
        Some((
            head,
            self.rx_bufs + BUF * (head % RX_BUFS) as u64 + HDR,
            frame_len,
        ))
    }

    /// Gives receive buffer `head` back to the device (no notify).
    pub fn recycle(&mut self, head: u16) {
        self.rx.push(head % RX_BUFS);
    }

    pub fn rx_notify(&self) {
        self.rx.notify();
    }

    /// Waits until every transmitted frame was taken by the device.
    pub fn flush_tx(&mut self) {
        let deadline = sys::ticks() + 500;
        while self.tx.in_flight() > 0 && sys::ticks() < deadline {
            while self.tx.pop_used().is_some() {}
            core::hint::spin_loop();
        }
    }
}

fn frame_bytes(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: the frame lies in a receive buffer the device has returned to us; it stays
    // untouched until recycled, and callers finish with the slice before recycling.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

fn ethertype(f: &[u8]) -> u16 {
    if f.len() < 14 {
        return 0;
    }
    u16::from_be_bytes([f[12], f[13]])
}

/// Parses `seq=<n>` out of a payload.
fn seq_of(p: &[u8]) -> Option<u64> {
    let i = p.windows(4).position(|w| w == b"seq=")?;
    let mut n = 0u64;
    let mut any = false;
    for &b in &p[i + 4..] {
        if !b.is_ascii_digit() {
            break;
        }
        n = n * 10 + (b - b'0') as u64;
        any = true;
    }
    any.then_some(n)
}

struct Buf {
    b: [u8; 128],
    n: usize,
}

impl core::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let k = s.len().min(self.b.len() - self.n);
        self.b[self.n..self.n + k].copy_from_slice(&s.as_bytes()[..k]);
        self.n += k;
        Ok(())
    }
}

pub fn run(name: &str, cmdline: &'static [u8], boot: &BootInfo) -> ! {
    let mut alloc = region(boot, 4 << 20);
    let mut net = match Net::open(num(cmdline, "nic", 0) as usize, &mut alloc) {
        Ok(n) => n,
        Err(e) => fail(name, e),
    };
    let m = net.mac;
    outln!(
        "NET mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    );
    if name == "net" {
        echo(&mut net, cmdline);
    } else {
        bench(&mut net, cmdline);
    }
    outln!("DONE workload={name}");
    sys::idle_forever();
}

/// `net`: send `frames` test frames, then echo test frames until `rx` were received.
fn echo(net: &mut Net, cmdline: &'static [u8]) {
    let frames = num(cmdline, "frames", 8);
    let want_rx = num(cmdline, "rx", frames);
    for i in 0..frames {
        let mut p = Buf { b: [0; 128], n: 0 };
        let _ = core::fmt::write(&mut p, format_args!("NOVACRON-NET seq={i} "));
        while p.n < 100 {
            p.b[p.n] = (i as u8).wrapping_add(p.n as u8);
            p.n += 1;
        }
        net.send([0xff; 6], ETHERTYPE_TEST, &p.b[..p.n]);
    }
    net.flush_tx();
    outln!("NET tx frames={frames}");
    let mut got = 0;
    let mut other = 0u64;
    while got < want_rx {
        let Some((head, addr, len)) = net.recv() else {
            core::hint::spin_loop();
            continue;
        };
        let f = frame_bytes(addr, len);
        if ethertype(f) == ETHERTYPE_TEST && f[14..].starts_with(b"HOST") {
            let seq = seq_of(&f[14..]).unwrap_or(u64::MAX);
            outln!("NET rx seq={seq} len={len}");
            let mut dst = [0u8; 6];
            dst.copy_from_slice(&f[6..12]);
            let mut p = Buf { b: [0; 128], n: 0 };
            let _ = core::fmt::write(&mut p, format_args!("ECHO "));
            let k = (f.len() - 14).min(p.b.len() - p.n);
            p.b[p.n..p.n + k].copy_from_slice(&f[14..14 + k]);
            p.n += k;
            net.send(dst, ETHERTYPE_TEST, &p.b[..p.n]);
            got += 1;
        } else {
            other += 1;
        }
        net.recycle(head);
        net.rx_notify();
    }
    net.flush_tx();
    outln!("CHECK PASS workload=net tx={frames} rx={got} ignored={other}");
}

/// `netbench dir=tx`: send `frames` frames of `size` bytes as fast as possible.
/// `netbench dir=rx`: count benchmark frames until `frames` arrived or a second passes
/// without any.
fn bench(net: &mut Net, cmdline: &'static [u8]) {
    let frames = num(cmdline, "frames", 100_000);
    let size = num(cmdline, "size", 1514).clamp(60, BUF - HDR);
    let dir_rx = crate::devworkloads::arg(cmdline, "dir") == Some(b"rx");
    if !dir_rx {
        // Pre-fill every transmit buffer once; the loop only queues descriptors.
        for s in 0..net.tx.size {
            let f = net.tx_frame(s);
            // SAFETY: the frame fits the buffer (size clamped).
            unsafe {
                let p = f as *mut u8;
                core::ptr::write_bytes(p, 0xff, 6);
                core::ptr::copy_nonoverlapping(net.mac.as_ptr(), p.add(6), 6);
                core::ptr::copy_nonoverlapping(
                    ETHERTYPE_BENCH.to_be_bytes().as_ptr(),
                    p.add(12),
                    2,
                );
                core::ptr::write_bytes(p.add(14), 0x5a, (size - 14) as usize);
            }
        }
        outln!("BENCH net op=tx size={size} frames={frames} start");
        let t0 = virtio::rdtsc();
        let k0 = sys::ticks();
        let mut sent = 0;
        while sent < frames {
            let mut batch = 0;
            while sent < frames && batch < 64 {
                let slot = net.tx_slot();
                net.tx_push(slot, size);
                sent += 1;
                batch += 1;
            }
            net.tx.notify();
        }
        net.flush_tx();
        outln!(
            "BENCH net op=tx size={size} frames={frames} bytes={} done ticks={} tsc={}",
            frames * size,
            sys::ticks() - k0,
            virtio::rdtsc() - t0
        );
    } else {
        outln!("BENCH net op=rx ready");
        let (mut n, mut bytes) = (0u64, 0u64);
        let (mut first_tick, mut last_tick, mut first_tsc, mut last_tsc) = (0, 0, 0, 0);
        let mut idle_since = sys::ticks();
        // Every notification is a VM exit; give buffers back in batches, and at once only
        // when the ring has gone quiet (so the device is never left without buffers).
        let mut unnotified = 0;
        loop {
            let mut any = false;
            while let Some((head, addr, len)) = net.recv() {
                let f = frame_bytes(addr, len);
                if ethertype(f) == ETHERTYPE_BENCH {
                    if n == 0 {
                        first_tick = sys::ticks();
                        first_tsc = virtio::rdtsc();
                    }
                    n += 1;
                    bytes += len;
                    last_tick = sys::ticks();
                    last_tsc = virtio::rdtsc();
                }
                net.recycle(head);
                any = true;
                unnotified += 1;
                if unnotified >= 32 {
                    net.rx_notify();
                    unnotified = 0;
                }
            }
            if any {
                idle_since = sys::ticks();
            } else if unnotified > 0 {
                net.rx_notify();
                unnotified = 0;
            }
            if n >= frames
                || (n > 0 && sys::ticks() - idle_since > 100)
                || sys::ticks() - idle_since > 3000
            {
                break;
            }
            core::hint::spin_loop();
        }
        outln!(
            "BENCH net op=rx frames={n} bytes={bytes} done ticks={} tsc={}",
            last_tick - first_tick,
            last_tsc - first_tsc
        );
    }
    outln!("CHECK PASS workload=netbench");
}
