//! The virtio device manager: builds the virtio-mmio devices of a machine (disks first, then
//! network interfaces, each in command-line order), wires them to KVM (one ioeventfd per
//! queue, one irqfd per device) and runs them on a single device thread that waits on every
//! queue eventfd and backend fd with epoll. vCPU threads only touch transport registers.
//!
//! Device `i` has its register window at `VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE` and GSI
//! [`virtio_irq`]`(i)` (5, 6, 7, then 9 upwards: 8 is left to the RTC).
//!
//! # State, pause and resume (for snapshots and migration)
//!
//! - [`DeviceManager::pause`] returns once the device thread is parked: from then until
//!   [`DeviceManager::resume`], no device reads or writes guest memory or completes a request.
//!   Notifications and tap frames arriving meanwhile are kept (eventfd counters, the tap's
//!   queue) and handled after `resume`. Requests run synchronously, so none is in flight
//!   while paused. Pausing twice is harmless; `resume` undoes any number of `pause` calls.
//! - [`DeviceManager::save`] ([`Persist`]) returns a [`DevicesState`] (serde): per device its transport
//!   registers (feature selectors and accepted features, status, interrupt status, queue
//!   select, config generation), every queue's size, ready bit, ring addresses and
//!   `next_avail`/`next_used`, and the configuration space. Call it while paused (vCPUs and
//!   devices), so the queues and guest memory agree.
//! - [`DeviceManager::restore`] loads such a state into a manager built from the same
//!   `--disk`/`--net` options (checked: device count and types, queue counts). Once the
//!   device thread runs again, every ready queue is re-examined (notifications that were in
//!   flight when the state was saved are not lost) and a pending interrupt is raised again.

use super::block::{Block, BlockError};
use super::mmio::{MmioTransport, TransportError};
use super::net::{default_mac, Net};
use super::tap::{Tap, TapError};
use super::VirtioDevice;
use crate::config::{DiskConfig, NetConfig};
use crate::devices::bus::{Bus, BusError};
use crate::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::memory::GuestMem;
use crate::persist::Persist;
use kvm_ioctls::{IoEventAddress, VmFd};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub use super::mmio::{QueueRegs, TransportState};

/// Highest GSI of the in-kernel IOAPIC.
const MAX_GSI: u32 = 23;
/// The RTC's IRQ, never given to a virtio device.
const RTC_IRQ: u32 = 8;

/// GSI of virtio device `index`, or `None` when the IOAPIC has no pin left.
pub fn virtio_irq(index: usize) -> Option<u32> {
    let mut irq = VIRTIO_IRQ_BASE;
    let mut left = index;
    loop {
        if irq > MAX_GSI {
            return None;
        }
        if irq != RTC_IRQ {
            if left == 0 {
                return Some(irq);
            }
            left -= 1;
        }
        irq += 1;
    }
}

/// Errors creating, wiring or restoring the devices.
#[derive(Debug, Error)]
pub enum ManagerError {
    /// A disk image could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A tap device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A transport could not be created or restored.
    #[error("virtio device {index}: {source}")]
    Transport {
        /// Device index.
        index: usize,
        /// The error.
        source: TransportError,
    },
    /// More devices than interrupt pins.
    #[error("too many virtio devices ({0}): at most {1} are supported")]
    TooMany(usize, usize),
    /// KVM refused an ioeventfd or irqfd.
    #[error("cannot register {what} for virtio device {index} with KVM: {source}")]
    Kvm {
        /// ioeventfd or irqfd.
        what: &'static str,
        /// Device index.
        index: usize,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// epoll or eventfd setup failed.
    #[error("cannot set up the device thread's event loop: {0}")]
    Epoll(std::io::Error),
    /// The device thread could not be started.
    #[error("cannot start the device thread: {0}")]
    Thread(std::io::Error),
    /// Saved state does not match the configured devices.
    #[error("saved device state has {saved} devices, this VM has {actual} (the --disk/--net options must match)")]
    DeviceCount {
        /// Devices in the state.
        saved: usize,
        /// Devices configured.
        actual: usize,
    },
}

/// Where a device lives, for the bus and the ACPI tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Base of the register window.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// GSI.
    pub irq: u32,
    /// virtio device ID.
    pub device_type: u32,
}

/// Saved state of all virtio devices, in device order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// One entry per device.
    pub devices: Vec<TransportState>,
}

#[derive(Debug, Default)]
struct Ctl {
    pause_requested: bool,
    paused: bool,
    stop: bool,
    running: bool,
    kick_all: bool,
}

struct Shared {
    wake: EventFd,
    ctl: Mutex<Ctl>,
    cond: Condvar,
}

/// A disk as live migration sees it: its configuration, a second handle on its file and
/// its write tracking (`None` for read-only disks).
#[derive(Debug)]
pub struct DiskHandle {
    /// The `--disk` option.
    pub config: DiskConfig,
    /// The file (positional I/O only).
    pub file: std::fs::File,
    /// Blocks written since the last collection.
    pub dirty: Option<Arc<novacron_migration::disk::DirtyBlocks>>,
}

/// The machine's virtio devices and their device thread.
pub struct DeviceManager {
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    disks: Vec<DiskHandle>,
    infos: Vec<DeviceInfo>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const TOKEN_WAKE: u64 = 0;
const KIND_QUEUE: u64 = 1 << 40;
const KIND_BACKEND: u64 = 2 << 40;

impl DeviceManager {
    /// Opens the disks and taps, creates one device per `--disk` then per `--net`, registers
    /// their ioeventfds and irqfds with `vm` and starts the device thread.
    pub fn new(
        vm: &VmFd,
        mem: &GuestMem,
        disks: &[DiskConfig],
        nets: &[NetConfig],
    ) -> Result<Self, ManagerError> {
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        let mut handles = Vec::with_capacity(disks.len());
        for d in disks {
            let blk = Block::open(&d.path, d.read_only)?;
            let (file, dirty) = blk.migration_handle().map_err(|source| BlockError::Open {
                path: d.path.clone(),
                source,
            })?;
            handles.push(DiskHandle {
                config: d.clone(),
                file,
                dirty,
            });
            devices.push(Box::new(blk));
        }
        for (i, n) in nets.iter().enumerate() {
            let tap = Tap::open(&n.tap)?;
            let mac = n.mac.unwrap_or_else(|| default_mac(&n.tap, i));
            devices.push(Box::new(Net::new(tap, mac)));
        }
        let mut m = Self::with_devices(devices, mem, Some(vm))?;
        m.disks = handles;
        Ok(m)
    }

    /// The disks, in `--disk` order (for live migration).
    pub fn disks(&self) -> &[DiskHandle] {
        &self.disks
    }

    /// A manager for already built devices; with `vm`, their notifications and interrupts are
    /// wired to KVM (without, e.g. in tests, they are plain eventfds).
    pub fn with_devices(
        devices: Vec<Box<dyn VirtioDevice>>,
        mem: &GuestMem,
        vm: Option<&VmFd>,
    ) -> Result<Self, ManagerError> {
        let max = (0..).take_while(|&i| virtio_irq(i).is_some()).count();
        if devices.len() > max {
            return Err(ManagerError::TooMany(devices.len(), max));
        }
        let mut transports = Vec::new();
        let mut infos = Vec::new();
        for (index, dev) in devices.into_iter().enumerate() {
            let device_type = dev.device_type();
            let t = MmioTransport::new(dev, mem.clone())
                .map_err(|source| ManagerError::Transport { index, source })?;
            let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
            let irq = virtio_irq(index).ok_or(ManagerError::TooMany(index + 1, max))?;
            if let Some(vm) = vm {
                for (q, evt) in t.queue_evts().iter().enumerate() {
                    let addr = IoEventAddress::Mmio(base + super::mmio::reg::QUEUE_NOTIFY);
                    vm.register_ioevent(evt, &addr, q as u32)
                        .map_err(|source| ManagerError::Kvm {
                            what: "ioeventfd",
                            index,
                            source,
                        })?;
                }
                vm.register_irqfd(t.irq_evt(), irq)
                    .map_err(|source| ManagerError::Kvm {
                        what: "irqfd",
                        index,
                        source,
                    })?;
            }
            transports.push(Arc::new(Mutex::new(t)));
            infos.push(DeviceInfo {
                base,
                size: VIRTIO_MMIO_SIZE,
                irq,
                device_type,
            });
        }
        let shared = Arc::new(Shared {
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(ManagerError::Epoll)?,
            ctl: Mutex::new(Ctl::default()),
            cond: Condvar::new(),
        });
        let epoll = build_epoll(&shared, &transports)?;
        let m = DeviceManager {
            transports,
            disks: Vec::new(),
            infos,
            shared,
            thread: Mutex::new(None),
        };
        // No devices, no thread (keeps device-less VMs, e.g. density runs, lean).
        if !m.transports.is_empty() {
            m.spawn(epoll)?;
        }
        Ok(m)
    }

    fn spawn(&self, epoll: Epoll) -> Result<(), ManagerError> {
        let shared = self.shared.clone();
        let transports = self.transports.clone();
        shared.ctl.lock().running = true;
        let h = std::thread::Builder::new()
            .name("virtio".into())
            .stack_size(256 << 10)
            .spawn(move || {
                crate::sandbox::install_or_exit(crate::sandbox::ThreadKind::Device);
                device_loop(&shared, &transports, &epoll);
                let mut c = shared.ctl.lock();
                c.running = false;
                c.paused = false;
                shared.cond.notify_all();
            })
            .map_err(|e| {
                self.shared.ctl.lock().running = false;
                ManagerError::Thread(e)
            })?;
        *self.thread.lock() = Some(h);
        Ok(())
    }

    /// Puts every device's register window on the MMIO bus.
    pub fn register(&self, bus: &mut Bus) -> Result<(), BusError> {
        for (t, info) in self.transports.iter().zip(&self.infos) {
            bus.insert(info.base, info.size, t.clone())?;
        }
        Ok(())
    }

    /// Where each device lives (for the ACPI DSDT).
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    /// The transports (for tests and benchmarks).
    pub fn transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.transports
    }

    /// Parks the device thread; see the module documentation.
    pub fn pause(&self) {
        let mut c = self.shared.ctl.lock();
        if !c.running {
            return;
        }
        c.pause_requested = true;
        super::signal(&self.shared.wake, "the virtio device thread");
        while c.running && !c.paused {
            self.shared.cond.wait(&mut c);
        }
    }

    /// Lets the device thread run again.
    pub fn resume(&self) {
        let mut c = self.shared.ctl.lock();
        c.pause_requested = false;
        self.shared.cond.notify_all();
        super::signal(&self.shared.wake, "the virtio device thread");
    }

    /// Whether the device thread is parked.
    pub fn is_paused(&self) -> bool {
        let c = self.shared.ctl.lock();
        c.paused || !c.running
    }

    fn stop(&self) {
        {
            let mut c = self.shared.ctl.lock();
            c.stop = true;
            self.shared.cond.notify_all();
        }
        super::signal(&self.shared.wake, "the virtio device thread");
        if let Some(h) = self.thread.lock().take() {
            if h.join().is_err() {
                tracing::error!("the virtio device thread panicked");
            }
        }
    }
}

impl Persist for DeviceManager {
    type State = DevicesState;
    type Error = ManagerError;

    /// Saves every device; call while paused.
    fn save(&self) -> Result<DevicesState, ManagerError> {
        let devices = self
            .transports
            .iter()
            .enumerate()
            .map(|(index, t)| {
                t.save()
                    .map_err(|source| ManagerError::Transport { index, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(DevicesState { devices })
    }

    /// Loads `st` into the devices (see the module documentation).
    fn restore(&self, st: &DevicesState) -> Result<(), ManagerError> {
        if st.devices.len() != self.transports.len() {
            return Err(ManagerError::DeviceCount {
                saved: st.devices.len(),
                actual: self.transports.len(),
            });
        }
        let was_paused = self.shared.ctl.lock().pause_requested;
        self.pause();
        let mut result = Ok(());
        for (index, (t, s)) in self.transports.iter().zip(&st.devices).enumerate() {
            if let Err(source) = Persist::restore(&**t, s) {
                result = Err(ManagerError::Transport { index, source });
                break;
            }
        }
        self.shared.ctl.lock().kick_all = true;
        if !was_paused {
            self.resume();
        }
        result
    }
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        self.stop();
    }
}

fn build_epoll(
    shared: &Shared,
    transports: &[Arc<Mutex<MmioTransport>>],
) -> Result<Epoll, ManagerError> {
    let epoll = Epoll::new().map_err(ManagerError::Epoll)?;
    let add = |fd: i32, events: EventSet, token: u64| {
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
            .map_err(ManagerError::Epoll)
    };
    add(shared.wake.as_raw_fd(), EventSet::IN, TOKEN_WAKE)?;
    for (d, t) in transports.iter().enumerate() {
        let t = t.lock();
        for (q, evt) in t.queue_evts().iter().enumerate() {
            add(
                evt.as_raw_fd(),
                EventSet::IN,
                KIND_QUEUE | ((d as u64) << 16) | q as u64,
            )?;
        }
        if let Some(fd) = t.device().backend_fd() {
            add(
                fd,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                KIND_BACKEND | d as u64,
            )?;
        }
    }
    Ok(epoll)
}

/// Body of the device thread.
fn device_loop(shared: &Shared, transports: &[Arc<Mutex<MmioTransport>>], epoll: &Epoll) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        {
            let mut c = shared.ctl.lock();
            if c.pause_requested && !c.stop {
                c.paused = true;
                shared.cond.notify_all();
                while c.pause_requested && !c.stop {
                    shared.cond.wait(&mut c);
                }
                c.paused = false;
            }
            if c.stop {
                return;
            }
            if std::mem::take(&mut c.kick_all) {
                drop(c);
                for t in transports {
                    let t = t.lock();
                    t.kick_queues();
                    if t.interrupt_status() != 0 {
                        super::signal(t.irq_evt(), "a virtio interrupt");
                    }
                }
            }
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio device thread: epoll failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            match token & !0xff_ffff_ffff {
                KIND_QUEUE => {
                    let d = ((token >> 16) & 0xffff) as usize;
                    let q = (token & 0xffff) as usize;
                    if let Some(t) = transports.get(d) {
                        let mut t = t.lock();
                        if let Some(evt) = t.queue_evts().get(q) {
                            let _ = evt.read();
                        }
                        t.process_queue(q);
                    }
                }
                KIND_BACKEND => {
                    if let Some(t) = transports.get((token & 0xffff) as usize) {
                        t.lock().process_backend();
                    }
                }
                _ => {
                    let _ = shared.wake.read();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::mmio::reg;
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    fn w(t: &Mutex<MmioTransport>, off: u64, v: u32) {
        t.lock().write(off, &v.to_le_bytes());
    }

    fn used_idx(mem: &GuestMem) -> u16 {
        mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap_or(0xffff)
    }

    #[test]
    fn pause_holds_requests_until_resume_and_state_round_trips() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let path = std::env::temp_dir().join(format!("novacron-mgr-unit-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).expect("disk");
        let blk = Block::open(&path, false).expect("blk");
        let m = DeviceManager::with_devices(vec![Box::new(blk)], &mem, None).expect("manager");
        assert_eq!(m.devices()[0].irq, 5);
        let t = m.transports()[0].clone();
        w(&t, reg::STATUS, 3);
        w(&t, reg::DRIVER_FEATURES_SEL, 1);
        w(&t, reg::DRIVER_FEATURES, 1);
        w(&t, reg::STATUS, 0xb);
        w(&t, reg::QUEUE_NUM, 16);
        w(&t, reg::QUEUE_DESC_LOW, 0x1000);
        w(&t, reg::QUEUE_AVAIL_LOW, 0x2000);
        w(&t, reg::QUEUE_USED_LOW, 0x3000);
        w(&t, reg::QUEUE_READY, 1);
        w(&t, reg::STATUS, 0xf);
        assert!(t.lock().is_activated());

        m.pause();
        assert!(m.is_paused());
        // A GET_ID request: header, 20-byte buffer, status byte.
        mem.write_obj(8u32, GuestAddress(0x100)).expect("hdr");
        let descs: [(u64, u32, u16, u16); 3] =
            [(0x100, 16, 1, 1), (0x300, 20, 3, 2), (0x200, 1, 2, 0)];
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let d = 0x1000 + 16 * i as u64;
            mem.write_obj(*addr, GuestAddress(d)).expect("desc");
            mem.write_obj(*len, GuestAddress(d + 8)).expect("desc");
            mem.write_obj(*flags, GuestAddress(d + 12)).expect("desc");
            mem.write_obj(*next, GuestAddress(d + 14)).expect("desc");
        }
        mem.write_obj(0xeeu8, GuestAddress(0x200)).expect("status");
        mem.write_obj(0u16, GuestAddress(0x2004)).expect("ring");
        mem.write_obj(1u16, GuestAddress(0x2002)).expect("idx");
        w(&t, reg::QUEUE_NOTIFY, 0);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(used_idx(&mem), 0, "nothing may be processed while paused");
        let st = m.save().expect("save");
        assert_eq!(st.devices[0].queues[0].next_avail, 0);
        let json = serde_json::to_string(&st).expect("serialize");
        let back: DevicesState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, st);

        m.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while used_idx(&mem) != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(used_idx(&mem), 1, "processed after resume");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x200)).ok(), Some(0));

        // The saved (pre-resume) state restores into a second manager, which then finds the
        // pending request on its own (queues are re-examined after a restore).
        mem.write_obj(0u16, GuestAddress(0x3002))
            .expect("reset used idx");
        let blk2 = Block::open(&path, false).expect("blk");
        let m2 = DeviceManager::with_devices(vec![Box::new(blk2)], &mem, None).expect("manager");
        m2.restore(&back).expect("restore");
        let deadline = Instant::now() + Duration::from_secs(5);
        while used_idx(&mem) != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            used_idx(&mem),
            1,
            "restored device completes the pending request"
        );
        assert!(m2.restore(&DevicesState::default()).is_err());
        drop(m);
        drop(m2);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn irqs_skip_the_rtc_and_end_at_the_last_pin() {
        assert_eq!(virtio_irq(0), Some(5));
        assert_eq!(virtio_irq(2), Some(7));
        assert_eq!(virtio_irq(3), Some(9));
        assert_eq!(virtio_irq(17), Some(23));
        assert_eq!(virtio_irq(18), None);
    }
}
