//! An address-range bus (used for both port I/O and MMIO): devices register a range, and a
//! vCPU exit at an address is dispatched to the device owning it with the offset into its
//! range. Accesses nobody owns read as all-ones and writes are dropped.

use parking_lot::Mutex;
use std::sync::Arc;

/// Something the guest asked the VMM to do through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// Reset the machine (i8042 pulse, ACPI reset register).
    Reset,
    /// Power the machine off (ACPI sleep to S5).
    PowerOff,
}

/// A device on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`; may ask the VMM to reset or power off.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestEvent>;
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors registering devices.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// An ordered set of non-overlapping device ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dev` for `[base, base+len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let end = base.saturating_add(len);
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.push((base, len, dev));
        self.ranges.sort_by_key(|r| r.0);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        let (b, l, d) = self.ranges.get(i.checked_sub(1)?)?;
        (addr < b + l).then_some((addr - b, d))
    }

    /// Dispatches a read; unowned addresses read as all-ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((off, d)) => d.lock().read(off, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches a write; unowned addresses drop it.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<GuestEvent> {
        let (off, d) = self.find(addr)?;
        d.lock().write(off, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _: u64, data: &[u8]) -> Option<GuestEvent> {
            self.0 = data[0];
            None
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        bus.insert(0x10, 8, Arc::new(Mutex::new(Echo(1))))
            .expect("insert");
        assert!(bus.insert(0x14, 8, Arc::new(Mutex::new(Echo(2)))).is_err());
        bus.insert(0x18, 8, Arc::new(Mutex::new(Echo(7))))
            .expect("adjacent insert");
        let mut b = [0u8; 1];
        bus.read(0x12, &mut b);
        assert_eq!(b[0], 3);
        bus.read(0x18, &mut b);
        assert_eq!(b[0], 7);
        bus.read(0x20, &mut b);
        assert_eq!(b[0], 0xff);
        bus.write(0x10, &[9]);
        bus.read(0x10, &mut b);
        assert_eq!(b[0], 9);
    }
}
