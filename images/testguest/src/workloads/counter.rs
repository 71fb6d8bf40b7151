//! `counter`: an increasing counter written, in a tight ring-3 loop, both to the serial port
//! (`COUNT n=<n>` lines) and to a virtio-blk disk (record `n` in sector `n % sectors`), so a
//! host-side test can check both sequences for a duplicated or lost value across pauses,
//! snapshots and migrations.
//!
//! Per value `n`, in this order: one synchronous write request of the 512-byte record
//! (`u64` magic [`MAGIC`], `u64` n, `u64` !n, zeros) to sector `n % sectors` of disk `disk`
//! (keys `disk`, default 0, and `sectors`, default the whole disk), then the serial line.
//! A failed request prints `CHECK FAIL workload=counter ...` and stops. With `passes=N`
//! (not 0) the workload stops after N values with `DONE workload=counter count=N`.

use crate::bootinfo::BootInfo;
use crate::cmdline::Config;
use crate::devworkloads::{fail, num, region};
use crate::virtio_blk::{Blk, S_OK};
use crate::{outln, sys};

/// First word of every record ("NCCOUNT1", little-endian).
pub const MAGIC: u64 = u64::from_le_bytes(*b"NCCOUNT1");
/// virtio-blk request type: write.
const T_OUT: u32 = 1;
const SECTOR: u64 = 512;

pub fn run(config: &Config, boot: &BootInfo) -> ! {
    let disk = num(boot.cmdline, "disk", 0) as usize;
    let mut alloc = region(boot, 2 << 20);
    let mut blk = match Blk::open(disk, 1, &mut alloc) {
        Ok(b) => b,
        Err(e) => fail("counter", e),
    };
    let sectors = num(boot.cmdline, "sectors", blk.capacity).clamp(1, blk.capacity.max(1));
    let Some(buf) = alloc.take(SECTOR, 4096) else {
        fail("counter", "out of memory")
    };
    // SAFETY: buf..buf+SECTOR was allocated from the checked workload region for this.
    unsafe { core::ptr::write_bytes(buf as *mut u8, 0, SECTOR as usize) };
    outln!("COUNTER disk={disk} sectors={sectors}");
    let mut n: u64 = 0;
    loop {
        if config.passes != 0 && n >= config.passes {
            outln!("DONE workload=counter count={n}");
            sys::idle_forever();
        }
        // SAFETY: as above; volatile so the device reads what this iteration wrote.
        unsafe {
            core::ptr::write_volatile(buf as *mut u64, MAGIC);
            core::ptr::write_volatile((buf + 8) as *mut u64, n);
            core::ptr::write_volatile((buf + 16) as *mut u64, !n);
        }
        match blk.request(T_OUT, n % sectors, buf, SECTOR as u32) {
            Some((S_OK, _)) => {}
            other => {
                outln!("CHECK FAIL workload=counter n={n} write={other:?}");
                sys::idle_forever();
            }
        }
        outln!("COUNT n={n}");
        n += 1;
    }
}
