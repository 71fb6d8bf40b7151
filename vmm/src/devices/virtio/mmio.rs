//! The virtio-mmio transport (virtio 1.x register layout, "version 2"): the register window a
//! driver uses to negotiate features, set up queues and drive the device status, plus the
//! device's queues, queue-notification eventfds and interrupt eventfd.
//!
//! vCPU threads reach [`MmioTransport`] through the MMIO bus (register reads and writes only:
//! nothing here touches guest memory on a vCPU thread). Queue notifications are eventfds: KVM
//! signals them directly for 32-bit writes of the queue index to `QueueNotify` (ioeventfd), and
//! a write that reaches the transport anyway signals the same eventfd. The device thread waits
//! on them and calls [`MmioTransport::process_queue`], which is the only path that reads or
//! writes guest memory. Used buffers raise the interrupt eventfd (an irqfd in KVM).

use super::{
    VirtioDevice, INT_VRING, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use crate::devices::bus::{BusDevice, GuestEvent};
use crate::memory::GuestMem;
use crate::persist::Persist;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("NOVA").
pub const VENDOR_ID: u32 = 0x4156_4f4e;

/// Register offsets within a device's window.
pub mod reg {
    /// Magic value (R).
    pub const MAGIC: u64 = 0x000;
    /// Version (R).
    pub const VERSION: u64 = 0x004;
    /// Device ID (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor ID (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features, 32 bits selected by `DEVICE_FEATURES_SEL` (R).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word selector (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features, 32 bits selected by `DRIVER_FEATURES_SEL` (W).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word selector (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// Selected queue ready (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification: the queue index (W).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status (RW).
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low (W).
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high (W).
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low (W).
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high (W).
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Shared memory region length, low 32 bits (R; no regions: all ones).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory region length, high (R).
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory region base, low (R).
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory region base, high (R).
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Configuration generation (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Errors restoring a transport from saved state.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The saved state belongs to another kind of device.
    #[error("saved device type {saved} does not match device type {actual}")]
    DeviceType {
        /// Type in the state.
        saved: u32,
        /// Type of this device.
        actual: u32,
    },
    /// The saved state has a different number of queues.
    #[error("saved state has {saved} queues, the device has {actual}")]
    QueueCount {
        /// Count in the state.
        saved: usize,
        /// Count of this device.
        actual: usize,
    },
    /// A saved queue is invalid.
    #[error("saved queue {index} is invalid: {source}")]
    Queue {
        /// Queue index.
        index: usize,
        /// The queue's complaint.
        source: virtio_queue::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The registers of one queue, as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegs {
    /// Maximum size offered by the device.
    pub max_size: u16,
    /// Size chosen by the driver.
    pub size: u16,
    /// Ready bit.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx: bool,
}

impl From<QueueState> for QueueRegs {
    fn from(s: QueueState) -> Self {
        QueueRegs {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl From<QueueRegs> for QueueState {
    fn from(r: QueueRegs) -> Self {
        QueueState {
            max_size: r.max_size,
            next_avail: r.next_avail,
            next_used: r.next_used,
            event_idx_enabled: r.event_idx,
            size: r.size,
            ready: r.ready,
            desc_table: r.desc_table,
            avail_ring: r.avail_ring,
            used_ring: r.used_ring,
        }
    }
}

/// Saved state of one transport and its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// virtio device ID.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Device status.
    pub status: u32,
    /// Interrupt status.
    pub interrupt_status: u32,
    /// Configuration generation.
    pub config_generation: u32,
    /// Whether the device was activated (DRIVER_OK accepted).
    pub activated: bool,
    /// Queue registers and ring positions.
    pub queues: Vec<QueueRegs>,
    /// The device configuration space.
    pub config: Vec<u8>,
}

/// One virtio-mmio device: transport registers, queues and the device model.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    irq: EventFd,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem` (a handle sharing the VM's mapping and
    /// dirty bitmap), with fresh queue-notification and interrupt eventfds.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMem) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|source| TransportError::Queue { index, source })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            queue_evts,
            irq,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The queue-notification eventfds, one per queue.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt eventfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    /// The device model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Whether the driver has set DRIVER_OK and the device accepted it.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt status register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Processes queue `index` if the device is active and the queue ready; raises the
    /// interrupt when buffers were used. Returns whether they were.
    pub fn process_queue(&mut self, index: usize) -> bool {
        if !self.activated || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return false;
        }
        let used = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        if used {
            self.signal_used();
        }
        used
    }

    /// Lets the device handle its backend becoming readable (if active).
    pub fn process_backend(&mut self) -> bool {
        if !self.activated {
            return false;
        }
        let used = self.device.process_backend(&mut self.queues, &self.mem);
        if used {
            self.signal_used();
        }
        used
    }

    /// Marks used buffers in the interrupt status and interrupts the guest.
    pub fn signal_used(&mut self) {
        self.interrupt_status |= INT_VRING;
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("virtio: cannot signal interrupt: {e}");
        }
    }

    /// Signals every ready queue's notification eventfd, so the device thread looks at all of
    /// them (after activation or restore, when notifications may have been missed).
    pub fn kick_queues(&self) {
        for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
            if q.ready() {
                super::signal(evt, "a virtio queue");
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.activated = false;
        self.device.reset();
    }

    fn queues_valid(&self) -> bool {
        self.queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem))
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits are only ever added; clearing happens through reset.
        let mut new = value | old;
        if new & !old & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                new &= !STATUS_FEATURES_OK;
            }
        }
        if new & !old & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 || !self.queues_valid() {
                new = (new & !STATUS_DRIVER_OK) | STATUS_DEVICE_NEEDS_RESET;
            } else {
                for q in &mut self.queues {
                    q.set_event_idx(false);
                }
                self.device.activate(self.driver_features);
                self.activated = true;
                self.kick_queues();
            }
        }
        self.status = new;
    }

    /// Whether queue configuration may change now (not while the device runs).
    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_DRIVER_OK == 0
    }

    /// Saves the transport and device state.
    pub fn save(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|q| QueueRegs::from(q.state()))
                .collect(),
            config: self.device.config_bytes(),
        }
    }

    /// Restores saved state into this (freshly created) transport. The caller kicks the queues
    /// and re-raises a pending interrupt once the device thread runs again.
    pub fn restore(&mut self, st: &TransportState) -> Result<(), TransportError> {
        let actual = self.device.device_type();
        if st.device_type != actual {
            return Err(TransportError::DeviceType {
                saved: st.device_type,
                actual,
            });
        }
        if st.queues.len() != self.queues.len() {
            return Err(TransportError::QueueCount {
                saved: st.queues.len(),
                actual: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(st.queues.len());
        for (index, (regs, cur)) in st.queues.iter().zip(&self.queues).enumerate() {
            let mut state = QueueState::from(*regs);
            state.max_size = cur.max_size();
            queues.push(
                Queue::try_from(state).map_err(|source| TransportError::Queue { index, source })?,
            );
        }
        self.queues = queues;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.driver_features = st.driver_features;
        self.queue_sel = st.queue_sel;
        self.status = st.status;
        self.interrupt_status = st.interrupt_status;
        self.config_generation = st.config_generation;
        self.device.reset();
        self.device.restore_config(&st.config);
        self.activated = st.activated;
        if self.activated {
            self.device.activate(self.driver_features);
        }
        Ok(())
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            reg::QUEUE_DESC_LOW => q.map_or(0, |q| q.desc_table() as u32),
            reg::QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc_table() >> 32) as u32),
            reg::QUEUE_AVAIL_LOW => q.map_or(0, |q| q.avail_ring() as u32),
            reg::QUEUE_AVAIL_HIGH => q.map_or(0, |q| (q.avail_ring() >> 32) as u32),
            reg::QUEUE_USED_LOW => q.map_or(0, |q| q.used_ring() as u32),
            reg::QUEUE_USED_HIGH => q.map_or(0, |q| (q.used_ring() >> 32) as u32),
            // No shared memory regions: a length of -1 says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let config_ok = self.queue_config_allowed();
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let (true, Ok(size)) = (config_ok, u16::try_from(v)) {
                    if let Some(q) = self.selected_queue() {
                        if !q.ready() {
                            q.set_size(size);
                        }
                    }
                }
            }
            reg::QUEUE_READY if config_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    super::signal(evt, "a virtio queue");
                }
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.set_status(v),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                if !config_ok {
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                if q.ready() {
                    return;
                }
                match offset {
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestEvent> {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return None;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, v);
        }
        None
    }
}

/// The transport as the device manager shares it with the bus, behind its lock.
impl Persist for Mutex<MmioTransport> {
    type State = TransportState;
    type Error = TransportError;

    fn save(&self) -> Result<TransportState, TransportError> {
        Ok(self.lock().save())
    }

    fn restore(&self, state: &TransportState) -> Result<(), TransportError> {
        self.lock().restore(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER};
    use vm_memory::{Bytes, GuestAddress};

    /// A device with one queue that uses every buffer it is given.
    struct Sink;

    impl VirtioDevice for Sink {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn config_bytes(&self) -> Vec<u8> {
            vec![1, 2, 3, 4]
        }
        fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
            let q = &mut queues[index];
            let mut used = false;
            while let Some(c) = q.pop_descriptor_chain(mem) {
                let head = c.head_index();
                used |= q.add_used(mem, head, 0).is_ok();
            }
            used
        }
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn setup(t: &mut MmioTransport, features_hi: u32) {
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, features_hi);
        w(
            t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, 8);
        w(t, reg::QUEUE_DESC_LOW, 0x1000);
        w(t, reg::QUEUE_AVAIL_LOW, 0x2000);
        w(t, reg::QUEUE_USED_LOW, 0x3000);
        w(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn negotiation_activation_interrupts_and_state() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let mut t = MmioTransport::new(Box::new(Sink), mem.clone()).expect("transport");
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        let mut b = [0u8; 2];
        t.read(reg::CONFIG + 1, &mut b);
        assert_eq!(b, [2, 3]);

        // Without VERSION_1 the device refuses FEATURES_OK.
        setup(&mut t, 0);
        assert_eq!(r(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);

        setup(&mut t, 1);
        assert_ne!(r(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(t.is_activated());
        // Queue configuration is frozen while running.
        w(&mut t, reg::QUEUE_NUM, 4);
        assert_eq!(t.save().queues[0].size, 8);

        // One chain: descriptor 0, offered in the available ring.
        mem.write_obj(0x4000u64, GuestAddress(0x1000))
            .expect("desc");
        mem.write_obj(16u32, GuestAddress(0x1008)).expect("len");
        mem.write_obj(0u16, GuestAddress(0x2004)).expect("ring");
        mem.write_obj(1u16, GuestAddress(0x2002)).expect("idx");
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(
            t.queue_evts()[0].read().ok(),
            Some(2),
            "activation kick + notify"
        );
        assert!(t.process_queue(0));
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(0x3002)).ok(),
            Some(1),
            "used idx"
        );
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
        assert_eq!(t.irq_evt().read().ok(), Some(1));
        w(&mut t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);

        // Save, restore into a fresh transport, and carry on where it left off.
        let st = t.save();
        assert_eq!(st.queues[0].next_avail, 1);
        assert_eq!(st.queues[0].next_used, 1);
        let mut t2 = MmioTransport::new(Box::new(Sink), mem.clone()).expect("transport");
        t2.restore(&st).expect("restore");
        assert_eq!(t2.save(), st);
        mem.write_obj(0u16, GuestAddress(0x2006)).expect("ring");
        mem.write_obj(2u16, GuestAddress(0x2002)).expect("idx");
        assert!(t2.process_queue(0));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).ok(), Some(2));

        // A mismatched state is refused.
        let mut other = st.clone();
        other.device_type = 7;
        assert!(t2.restore(&other).is_err());
        other = st;
        other.queues.push(other.queues[0]);
        assert!(t2.restore(&other).is_err());
    }

    #[test]
    fn driver_ok_with_a_queue_outside_memory_needs_reset() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let mut t = MmioTransport::new(Box::new(Sink), mem).expect("transport");
        setup(&mut t, 1);
        w(&mut t, reg::QUEUE_READY, 0);
        w(&mut t, reg::QUEUE_USED_LOW, 0xfff0);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, 0xf);
        assert!(!t.is_activated());
        assert_ne!(r(&mut t, reg::STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(!t.process_queue(0));
    }
}
