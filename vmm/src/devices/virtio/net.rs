//! virtio-net on a tap device: queue 0 receives (tap to guest), queue 1 transmits (guest to
//! tap). No offloads are offered, so every frame carries a zeroed 12-byte `virtio_net_hdr_v1`
//! that the device strips on transmit and prepends on receive.
//!
//! Receive is driven both by the tap becoming readable (edge-triggered) and by the guest
//! adding receive buffers: a frame read from the tap while the guest has no buffer waits in
//! the device until a buffer arrives (the tap keeps queueing the rest).

use super::chain;
use super::tap::Tap;
use super::{VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1};
use crate::memory::GuestMem;
use std::os::fd::{AsRawFd, RawFd};
use virtio_queue::{Queue, QueueT};

/// Feature: the configuration space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: the configuration space holds the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Length of `virtio_net_hdr_v1` (virtio 1.x always includes `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Link status bit: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Largest frame moved in either direction (a tap with a 64 KiB MTU).
const MAX_FRAME: usize = 65536 + 14;
/// Smallest frame transmitted (an Ethernet header).
const MIN_FRAME: usize = 14;

/// Counters, for benchmarks and debugging.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (frames only).
    pub rx_bytes: u64,
    /// Frames read from the tap that no guest buffer could hold.
    pub rx_dropped: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Bytes sent to the tap.
    pub tx_bytes: u64,
    /// Transmit chains that were malformed or could not be written.
    pub tx_errors: u64,
}

/// A virtio-net device.
pub struct Net {
    tap: Tap,
    config: [u8; 8],
    /// Header space then the frame read from the tap and not yet delivered.
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    tx_buf: Vec<u8>,
    /// Counters.
    pub stats: NetStats,
}

impl Net {
    /// A device on `tap` with MAC address `mac`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Net {
            tap,
            config,
            rx_buf: vec![0; NET_HDR_LEN + MAX_FRAME],
            rx_pending: None,
            tx_buf: vec![0; MAX_FRAME],
            stats: NetStats::default(),
        }
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.config[..6]);
        m
    }

    /// Delivers frames from the tap into receive buffers until either runs out.
    fn process_rx(&mut self, queues: &mut [Queue], mem: &GuestMem) -> bool {
        let Some(q) = queues.get_mut(RX_QUEUE) else {
            return false;
        };
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                Some(n) => n,
                None => match self.tap.read_frame(&mut self.rx_buf[NET_HDR_LEN..]) {
                    Ok(Some(n)) => {
                        self.rx_pending = Some(n);
                        n
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("tap {}: read failed: {e}", self.tap.name());
                        break;
                    }
                },
            };
            let Some(dc) = q.pop_descriptor_chain(mem) else {
                // No buffer: keep the frame until the guest adds one.
                break;
            };
            let head = dc.head_index();
            self.rx_pending = None;
            let total = NET_HDR_LEN + len;
            let written = match chain::from_queue(dc, mem) {
                Ok(c) if chain::total_len(&c.writable) >= total as u64 => {
                    self.rx_buf[..NET_HDR_LEN].fill(0);
                    // num_buffers = 1
                    self.rx_buf[10] = 1;
                    chain::write_from(mem, &c.writable, &self.rx_buf[..total]).unwrap_or(0)
                }
                _ => 0,
            };
            if written == total {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += len as u64;
            } else {
                self.stats.rx_dropped += 1;
            }
            if let Err(e) = q.add_used(mem, head, written as u32) {
                tracing::debug!("virtio-net: cannot return rx descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }

    /// Sends every transmit chain to the tap.
    fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMem) -> bool {
        let Some(q) = queues.get_mut(TX_QUEUE) else {
            return false;
        };
        let mut used = false;
        while let Some(dc) = q.pop_descriptor_chain(mem) {
            let head = dc.head_index();
            let ok = match chain::from_queue(dc, mem) {
                Ok(c) => {
                    let data = chain::skip(&c.readable, NET_HDR_LEN as u64);
                    let len = chain::total_len(&data);
                    if (MIN_FRAME as u64..=MAX_FRAME as u64).contains(&len) {
                        let len = len as usize;
                        match chain::read_into(mem, &data, &mut self.tx_buf[..len]) {
                            Ok(n) if n == len => match self.tap.write_frame(&self.tx_buf[..len]) {
                                Ok(()) => {
                                    self.stats.tx_frames += 1;
                                    self.stats.tx_bytes += len as u64;
                                    true
                                }
                                Err(e) => {
                                    tracing::debug!("tap {}: write failed: {e}", self.tap.name());
                                    false
                                }
                            },
                            _ => false,
                        }
                    } else {
                        false
                    }
                }
                Err(e) => {
                    tracing::debug!("virtio-net: bad tx chain: {e}");
                    false
                }
            };
            if !ok {
                self.stats.tx_errors += 1;
            }
            if let Err(e) = q.add_used(mem, head, 0) {
                tracing::debug!("virtio-net: cannot return tx descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn config_bytes(&self) -> Vec<u8> {
        self.config.to_vec()
    }

    fn restore_config(&mut self, bytes: &[u8]) {
        if let Some(mac) = bytes.get(..6) {
            self.config[..6].copy_from_slice(mac);
        }
    }

    fn reset(&mut self) {
        self.rx_pending = None;
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
        match index {
            RX_QUEUE => self.process_rx(queues, mem),
            TX_QUEUE => self.process_tx(queues, mem),
            _ => false,
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.tap.as_raw_fd())
    }

    fn process_backend(&mut self, queues: &mut [Queue], mem: &GuestMem) -> bool {
        self.process_rx(queues, mem)
    }
}

/// A locally administered MAC address derived from `seed` (52:54:00 prefix, as QEMU uses).
pub fn default_mac(seed: &str, index: usize) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes().chain((index as u32).to_le_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}
