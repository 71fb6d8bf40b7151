//! virtio 1.x devices on the virtio-mmio transport.
//!
//! - [`mmio`]: the transport. Its register window (one 4 KiB page per device at
//!   `layout::VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE`) is served to vCPU MMIO exits through
//!   the MMIO [`Bus`](crate::devices::Bus). Queue notifications reach the device thread through
//!   ioeventfds (KVM signals them without a VM exit); interrupts go to the guest through irqfds.
//! - [`block`]: virtio-blk on a raw file (read, write, flush, get-id, read-only mode).
//! - [`net`]: virtio-net on a tap device ([`tap`]).
//! - [`chain`]: descriptor-chain parsing shared by the devices. The guest is untrusted: a chain
//!   that is malformed or points outside guest RAM fails that one request.
//! - [`manager`]: creates the devices from the machine configuration, runs them on one device
//!   thread (epoll), and saves, restores, pauses and resumes them.
//!
//! Every write a device makes into guest memory goes through `vm-memory` (the `GuestMem`
//! `AtomicBitmap`), so dirty-page tracking for snapshots and migration sees it.

pub mod block;
pub mod chain;
pub mod manager;
pub mod mmio;
pub mod net;
pub mod tap;

pub use manager::{
    DeviceManager, DevicesState, DiskHandle, ManagerError, QueueRegs, TransportState,
};
pub use mmio::MmioTransport;

use crate::memory::GuestMem;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// virtio device ID of a network card.
pub const TYPE_NET: u32 = 1;
/// virtio device ID of a block device.
pub const TYPE_BLOCK: u32 = 2;

/// Feature bit: the device conforms to virtio 1.x (the only mode offered).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: the driver is ready; queues may be used.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: the device hit an error and must be reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// Interrupt status bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// A device model behind a virtio-mmio transport. The transport owns the queues and the
/// registers; the device consumes and fills queue buffers. All methods run with the
/// transport's lock held; `process_*` run only on the device thread (or a test), never on a
/// vCPU thread.
pub trait VirtioDevice: Send {
    /// virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (their count is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (most devices ignore writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The whole configuration space (saved with the device state).
    fn config_bytes(&self) -> Vec<u8>;
    /// Restores configuration fields that are device state rather than configuration (for
    /// example a generated MAC address).
    fn restore_config(&mut self, _bytes: &[u8]) {}
    /// The driver set DRIVER_OK with these accepted features.
    fn activate(&mut self, _features: u64) {}
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Consumes the available buffers of queue `index`; returns whether buffers were used (the
    /// guest should be interrupted).
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool;
    /// A backend file descriptor the device thread should watch (edge-triggered, readable).
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The backend file descriptor became readable.
    fn process_backend(&mut self, _queues: &mut [Queue], _mem: &GuestMem) -> bool {
        false
    }
}

/// Copies `config[offset..]` into `data` (zero past the end): the common `read_config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Signals `evt` (a queue notification, an interrupt or a wake-up). A counter that is already
/// at its limit (EAGAIN) is signalled already; any other failure is logged, naming `what`.
pub fn signal(evt: &EventFd, what: &str) {
    if let Err(e) = evt.write(1) {
        if e.kind() != std::io::ErrorKind::WouldBlock {
            tracing::warn!("cannot signal {what}: {e}");
        }
    }
}
