//! A minimal CMOS/RTC at ports 0x70-0x71 reporting the host's UTC time in BCD, so guests that
//! read the clock get a sane answer and never wait on a stuck update-in-progress flag.

use super::bus::{BusDevice, GuestEvent};

/// The CMOS index/data pair.
#[derive(Debug, Default)]
pub struct Cmos {
    index: u8,
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset != 1 || data.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (y, m, d) = civil((now / 86_400) as i64);
        let secs = now % 86_400;
        data[0] = match self.index & 0x7f {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            0x06 => bcd((now / 86_400 + 4) % 7 + 1),
            0x07 => bcd(d),
            0x08 => bcd(m),
            0x09 => bcd(y.rem_euclid(100) as u64),
            0x32 => bcd((y / 100) as u64),
            0x0a => 0x26, // update not in progress, 32.768 kHz divider
            0x0b => 0x02, // 24-hour mode, BCD
            0x0d => 0x80, // battery good
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestEvent> {
        if offset == 0 {
            self.index = *data.first()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(bcd(59), 0x59);
    }
}
