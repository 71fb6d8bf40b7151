//! Emulated devices and the buses that route vCPU port-I/O and MMIO exits to them.

pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError, GuestEvent};
