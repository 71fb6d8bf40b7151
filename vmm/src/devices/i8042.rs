//! A minimal i8042 keyboard controller: enough for a guest to find it and to reset the
//! machine by pulsing the reset line (command 0xFE on port 0x64).

use super::bus::{BusDevice, GuestEvent};

/// The controller at ports 0x60 (data, offset 0) and 0x64 (command/status, offset 4).
#[derive(Debug, Default)]
pub struct I8042 {
    command_byte: u8,
    expect_command_byte: bool,
}

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_PULSE_RESET: u8 = 0xfe;

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            // Data port: report the controller command byte after a read request, else empty.
            0 => self.command_byte,
            // Status: output buffer empty, input buffer empty, system flag set.
            4 => 0x04,
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestEvent> {
        let v = *data.first()?;
        match offset {
            4 => match v {
                CMD_PULSE_RESET => return Some(GuestEvent::Reset),
                CMD_WRITE_CTR => self.expect_command_byte = true,
                CMD_READ_CTR => {}
                _ => {}
            },
            0 if self.expect_command_byte => {
                self.command_byte = v;
                self.expect_command_byte = false;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset() {
        let mut k = I8042::default();
        assert_eq!(k.write(4, &[0xfe]), Some(GuestEvent::Reset));
        assert_eq!(k.write(4, &[0x20]), None);
        let mut s = [0u8];
        k.read(4, &mut s);
        assert_eq!(s[0] & 1, 0);
    }
}
