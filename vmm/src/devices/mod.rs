//! Emulated devices and the buses that route vCPU port-I/O and MMIO exits to them: the serial
//! port, i8042 and CMOS on port I/O, and the virtio-mmio devices (block, network) on MMIO.

pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, GuestEvent};
