//! The ACPI power-management registers of the hardware-reduced FADT: the sleep control and
//! sleep status registers and the reset register, one byte each in a small MMIO window (MMIO
//! rather than port I/O so that ring-3 code, such as the test guest, can reach them too).
//!
//! Writing SLP_EN (bit 5) with SLP_TYP (bits 4:2) = 5, the `_S5_` value in the DSDT, powers
//! the machine off; writing [`RESET_VALUE`] to the reset register resets it.

use crate::devices::bus::{BusDevice, GuestEvent};

/// Base of the register window: the page just below the virtio-mmio windows.
pub const PM_START: u64 = crate::layout::VIRTIO_MMIO_START - 0x1000;
/// Size of the register window on the bus.
pub const PM_SIZE: u64 = 0x10;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// Value that resets the machine when written to the reset register.
pub const RESET_VALUE: u8 = 0x1;
/// Sleep control: SLP_EN.
const SLP_EN: u8 = 1 << 5;
/// Sleep status: WAK_STS.
const WAK_STS: u8 = 1 << 7;

/// The power-management register block.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS_OFFSET {
            if let Some(b) = data.first_mut() {
                *b = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestEvent> {
        let v = *data.first()?;
        match offset {
            SLEEP_CONTROL_OFFSET if v & SLP_EN != 0 && (v >> 2) & 7 == super::S5_SLEEP_TYPE => {
                Some(GuestEvent::PowerOff)
            }
            RESET_OFFSET if v == RESET_VALUE => Some(GuestEvent::Reset),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let mut pm = AcpiPm;
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[(5 << 2) | SLP_EN]),
            Some(GuestEvent::PowerOff)
        );
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]), None);
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[5 << 2]), None);
        assert_eq!(
            pm.write(RESET_OFFSET, &[RESET_VALUE]),
            Some(GuestEvent::Reset)
        );
        assert_eq!(pm.write(RESET_OFFSET, &[0]), None);
    }
}
