//! A minimal polling virtio-mmio driver core (virtio 1.x, split rings), all in ring 3: device
//! discovery by probing the VMM's MMIO windows, feature negotiation, and virtqueues in
//! identity-mapped guest memory (so guest-virtual = guest-physical addresses go straight into
//! descriptors). No interrupts: completions are found by polling the used ring.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// First virtio-mmio window (`layout::VIRTIO_MMIO_START` in the VMM).
pub const MMIO_START: u64 = 0xd000_0000;
/// Size of one window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Windows probed.
pub const MAX_DEVICES: u64 = 32;
/// "virt".
const MAGIC: u32 = 0x7472_6976;

/// Device IDs.
pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;

/// virtio 1.x.
pub const F_VERSION_1: u64 = 1 << 32;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG: u64 = 0x100;

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// One device's register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    pub base: u64,
}

impl Mmio {
    pub fn read(&self, off: u64) -> u32 {
        // SAFETY: the MMIO windows are identity-mapped and user-accessible; an address nobody
        // owns reads as all-ones from the VMM.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    pub fn write(&self, off: u64, v: u32) {
        // SAFETY: as for read; writes to unowned addresses are dropped by the VMM.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    /// Reads a byte of the device configuration space.
    pub fn config8(&self, off: u64) -> u8 {
        // SAFETY: as for read.
        unsafe { read_volatile((self.base + REG_CONFIG + off) as *const u8) }
    }

    /// Reads a little-endian u64 of the configuration space (two 32-bit reads).
    pub fn config64(&self, off: u64) -> u64 {
        let lo = self.read(REG_CONFIG + off) as u64;
        let hi = self.read(REG_CONFIG + off + 4) as u64;
        lo | (hi << 32)
    }

    pub fn device_id(&self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    /// Features offered by the device.
    pub fn device_features(&self) -> u64 {
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let lo = self.read(REG_DEVICE_FEATURES) as u64;
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let hi = self.read(REG_DEVICE_FEATURES) as u64;
        lo | (hi << 32)
    }

    /// Resets the device, acknowledges it and negotiates `wanted & offered` (VERSION_1 is
    /// required). Returns the accepted features.
    pub fn begin_init(&self, wanted: u64) -> Result<u64, &'static str> {
        self.write(REG_STATUS, 0);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let accepted = offered & (wanted | F_VERSION_1);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, accepted as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (accepted >> 32) as u32);
        self.write(
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if self.read(REG_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err("device refused FEATURES_OK");
        }
        Ok(accepted)
    }

    /// Sets DRIVER_OK once the queues are set up.
    pub fn finish_init(&self) -> Result<(), &'static str> {
        self.write(
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        if self.read(REG_STATUS) & STATUS_DRIVER_OK == 0 {
            return Err("device refused DRIVER_OK");
        }
        Ok(())
    }
}

/// Finds the `nth` device with ID `id` by probing the windows.
pub fn find(id: u32, nth: usize) -> Option<Mmio> {
    let mut seen = 0;
    for i in 0..MAX_DEVICES {
        let dev = Mmio {
            base: MMIO_START + i * MMIO_SIZE,
        };
        if dev.read(REG_MAGIC) != MAGIC || dev.read(REG_VERSION) != 2 {
            break;
        }
        if dev.device_id() == id {
            if seen == nth {
                return Some(dev);
            }
            seen += 1;
        }
    }
    None
}

/// Counts the virtio-mmio devices present.
pub fn count() -> usize {
    (0..MAX_DEVICES)
        .take_while(|&i| {
            Mmio {
                base: MMIO_START + i * MMIO_SIZE,
            }
            .read(REG_MAGIC)
                == MAGIC
        })
        .count()
}

/// A bump allocator over a RAM range, zero-filling what it hands out.
pub struct Alloc {
    pub next: u64,
    pub end: u64,
}

impl Alloc {
    pub fn new(start: u64, end: u64) -> Alloc {
        Alloc { next: start, end }
    }

    /// `size` bytes aligned to `align` (a power of two), zeroed.
    pub fn take(&mut self, size: u64, align: u64) -> Option<u64> {
        let at = (self.next + align - 1) & !(align - 1);
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: [at, end) is RAM handed out once by this allocator (the caller guarantees
        // the allocator's range is unused RAM).
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, size as usize) };
        Some(at)
    }
}

/// A split virtqueue, polled.
pub struct Queue {
    dev: Mmio,
    index: u16,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
}

impl Queue {
    /// Sets up queue `index` with up to `want` entries (a power of two).
    pub fn setup(
        dev: Mmio,
        index: u16,
        want: u16,
        alloc: &mut Alloc,
    ) -> Result<Queue, &'static str> {
        dev.write(REG_QUEUE_SEL, index as u32);
        let max = dev.read(REG_QUEUE_NUM_MAX);
        if max == 0 {
            return Err("queue not available");
        }
        let mut size = want.min(max.min(32768) as u16);
        while size & (size - 1) != 0 {
            size &= size - 1;
        }
        let n = size as u64;
        let desc = alloc
            .take(16 * n, 4096)
            .ok_or("out of memory for the descriptor table")?;
        let avail = alloc
            .take(6 + 2 * n, 4096)
            .ok_or("out of memory for the available ring")?;
        let used = alloc
            .take(6 + 8 * n, 4096)
            .ok_or("out of memory for the used ring")?;
        dev.write(REG_QUEUE_NUM, size as u32);
        dev.write(REG_QUEUE_DESC_LOW, desc as u32);
        dev.write(REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        dev.write(REG_QUEUE_AVAIL_LOW, avail as u32);
        dev.write(REG_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        dev.write(REG_QUEUE_USED_LOW, used as u32);
        dev.write(REG_QUEUE_USED_HIGH, (used >> 32) as u32);
        dev.write(REG_QUEUE_READY, 1);
        Ok(Queue {
            dev,
            index,
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * (i % self.size) as u64;
        // SAFETY: the descriptor table is ours (allocated in setup), `i % size` is in range.
        unsafe {
            write_volatile(d as *mut u64, addr);
            write_volatile((d + 8) as *mut u32, len);
            write_volatile((d + 12) as *mut u16, flags);
            write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Offers the chain starting at descriptor `head` (without notifying).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        // SAFETY: the available ring is ours; the slot index is in range.
        unsafe { write_volatile(slot as *mut u16, head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        // SAFETY: as above (the idx field).
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.avail_idx) };
        fence(Ordering::SeqCst);
    }

    /// Tells the device the queue has new buffers.
    pub fn notify(&self) {
        self.dev.write(REG_QUEUE_NOTIFY, self.index as u32);
    }

    /// The next used element `(head, len)`, if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: the used ring is ours; the device writes it, hence volatile reads.
        let idx = unsafe { read_volatile((self.used + 2) as *const u16) };
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        // SAFETY: as above; the element index is in range.
        let (id, len) = unsafe {
            (
                read_volatile(e as *const u32),
                read_volatile((e + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Chains offered and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }
}

/// Reads the CPU's time-stamp counter (allowed in ring 3).
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}
