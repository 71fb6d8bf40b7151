//! virtio-blk workloads (`blk`, `blkro`, `blkread`, `blkloop`, `blkhot`, `blkbench`), polling.
//!
//! A request uses three descriptors in slot `s`: `3s` the 16-byte header, `3s+1` the data,
//! `3s+2` the status byte. Up to `qd` requests are in flight.

use crate::bootinfo::BootInfo;
use crate::devworkloads::{fail, num, pattern_word, region};
use crate::virtio::{self, Alloc, Queue, DESC_F_NEXT, DESC_F_WRITE};
use crate::{outln, sys};

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
/// Status: success / I/O error / unsupported.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
const SECTOR: u64 = 512;
const MAX_SLOTS: u16 = 64;
/// Status value the driver writes before submitting, to see that the device wrote it.
const S_UNSET: u8 = 0xee;

/// A block device with `slots` request slots.
pub struct Blk {
    q: Queue,
    /// Header (16 bytes) and status (1 byte at +16) per slot, 32 bytes apart.
    meta: u64,
    slots: u16,
    busy: [bool; MAX_SLOTS as usize],
    pub features: u64,
    pub capacity: u64,
}

impl Blk {
    pub fn open(nth: usize, slots: u16, alloc: &mut Alloc) -> Result<Blk, &'static str> {
        let dev = virtio::find(virtio::ID_BLOCK, nth).ok_or("no such virtio-blk device")?;
        let features = dev.begin_init(F_RO | F_FLUSH)?;
        let q = Queue::setup(dev, 0, 256, alloc)?;
        dev.finish_init()?;
        let slots = slots.clamp(1, MAX_SLOTS).min(q.size / 3);
        let meta = alloc.take(32 * slots as u64, 64).ok_or("out of memory")?;
        let capacity = dev.config64(0);
        Ok(Blk {
            q,
            meta,
            slots,
            busy: [false; MAX_SLOTS as usize],
            features,
            capacity,
        })
    }

    fn status_addr(&self, slot: u16) -> u64 {
        self.meta + 32 * slot as u64 + 16
    }

    /// Queues a request in a free slot (the caller makes sure one is free); no notify.
    pub fn submit(&mut self, kind: u32, sector: u64, buf: u64, len: u32) -> u16 {
        let slot = (0..self.slots)
            .find(|&s| !self.busy[s as usize])
            .unwrap_or(0);
        self.busy[slot as usize] = true;
        let hdr = self.meta + 32 * slot as u64;
        // SAFETY: the slot's metadata lives in memory allocated for this device.
        unsafe {
            core::ptr::write_volatile(hdr as *mut u32, kind);
            core::ptr::write_volatile((hdr + 4) as *mut u32, 0);
            core::ptr::write_volatile((hdr + 8) as *mut u64, sector);
            core::ptr::write_volatile(self.status_addr(slot) as *mut u8, S_UNSET);
        }
        let d = 3 * slot;
        self.q.set_desc(d, hdr, 16, DESC_F_NEXT, d + 1);
        if len == 0 {
            self.q.set_desc(d, hdr, 16, DESC_F_NEXT, d + 2);
        } else {
            let flags = if kind == T_OUT { 0 } else { DESC_F_WRITE };
            self.q.set_desc(d + 1, buf, len, flags | DESC_F_NEXT, d + 2);
        }
        self.q
            .set_desc(d + 2, self.status_addr(slot), 1, DESC_F_WRITE, 0);
        self.q.push(d);
        slot
    }

    pub fn notify(&self) {
        self.q.notify();
    }

    /// Polls for one completion: `(slot, status, used_len)`.
    pub fn poll(&mut self) -> Option<(u16, u8, u32)> {
        let (head, len) = self.q.pop_used()?;
        let slot = head / 3;
        if slot >= self.slots {
            return Some((slot, 0xff, len));
        }
        self.busy[slot as usize] = false;
        // SAFETY: as in submit.
        let status = unsafe { core::ptr::read_volatile(self.status_addr(slot) as *const u8) };
        Some((slot, status, len))
    }

    /// Waits for one completion (spinning; the device thread answers within microseconds to
    /// milliseconds). Gives up after about 10 s of timer ticks.
    pub fn wait(&mut self) -> Option<(u16, u8, u32)> {
        let deadline = sys::ticks() + 1000;
        loop {
            if let Some(c) = self.poll() {
                return Some(c);
            }
            if sys::ticks() > deadline {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// One synchronous request; returns `(status, used_len)`.
    pub fn request(&mut self, kind: u32, sector: u64, buf: u64, len: u32) -> Option<(u8, u32)> {
        self.submit(kind, sector, buf, len);
        self.notify();
        self.wait().map(|(_, s, l)| (s, l))
    }

    pub fn in_flight(&self) -> u16 {
        self.q.in_flight()
    }
}

fn fill_pattern(buf: u64, bytes: u64, seed: u64, disk_offset: u64) {
    for i in (0..bytes).step_by(8) {
        // SAFETY: buf..buf+bytes was allocated for this purpose.
        unsafe {
            core::ptr::write_volatile((buf + i) as *mut u64, pattern_word(seed, disk_offset + i))
        };
    }
}

/// First mismatching byte offset (relative to `buf`), if any.
fn check_pattern(buf: u64, bytes: u64, seed: u64, disk_offset: u64) -> Option<u64> {
    (0..bytes).step_by(8).find(|&i| {
        // SAFETY: as in fill_pattern.
        let got = unsafe { core::ptr::read_volatile((buf + i) as *const u64) };
        got != pattern_word(seed, disk_offset + i)
    })
}

pub fn run(name: &str, cmdline: &'static [u8], boot: &BootInfo) -> ! {
    let disk = num(cmdline, "disk", 0) as usize;
    let seed = num(cmdline, "seed", 1);
    let start = num(cmdline, "sector", 0);
    let sectors = num(cmdline, "sectors", 2048).max(1);
    let per_req = num(cmdline, "req_sectors", 128).clamp(1, 2048);
    let mib = num(cmdline, "mib", 16).max(1);
    let bs = num(cmdline, "bs", 4096).clamp(512, 1 << 20) & !511;
    let qd = num(cmdline, "qd", 32).clamp(1, MAX_SLOTS as u64) as u16;
    let data_bytes = match name {
        "blkbench" => bs * qd as u64,
        "blkhot" => BLOCK + sectors / (BLOCK / SECTOR) + 4096,
        _ => 2 * sectors * SECTOR,
    };
    let mut alloc = region(boot, data_bytes + (2 << 20));
    let mut blk = match Blk::open(disk, if name == "blkbench" { qd } else { 1 }, &mut alloc) {
        Ok(b) => b,
        Err(e) => fail(name, e),
    };
    let ro = blk.features & F_RO != 0;
    let Some(id_buf) = alloc.take(32, 64) else {
        fail(name, "out of memory")
    };
    let id = match blk.request(T_GET_ID, 0, id_buf, 20) {
        Some((S_OK, _)) => {
            let mut s = [0u8; 20];
            for (i, b) in s.iter_mut().enumerate() {
                // SAFETY: id_buf has 32 bytes.
                *b = unsafe { core::ptr::read_volatile((id_buf + i as u64) as *const u8) };
            }
            s
        }
        _ => fail(name, "get-id failed"),
    };
    let id_len = id.iter().position(|&b| b == 0).unwrap_or(20);
    let id_str = core::str::from_utf8(&id[..id_len]).unwrap_or("?");
    outln!("BLK id={id_str} capacity={} ro={}", blk.capacity, ro as u8);

    match name {
        "blkro" => {
            let Some(buf) = alloc.take(SECTOR, 4096) else {
                fail(name, "out of memory")
            };
            let (ws, _) = blk
                .request(T_OUT, 0, buf, SECTOR as u32)
                .unwrap_or((0xff, 0));
            let (rs, _) = blk
                .request(T_IN, 0, buf, SECTOR as u32)
                .unwrap_or((0xff, 0));
            outln!("BLK write_status={ws} read_status={rs}");
            if ro && ws == S_IOERR && rs == S_OK {
                outln!("CHECK PASS workload=blkro write_status={ws}");
            } else {
                outln!(
                    "CHECK FAIL workload=blkro ro={} write_status={ws} read_status={rs}",
                    ro as u8
                );
            }
        }
        "blk" | "blkread" | "blkloop" => {
            if start + sectors > blk.capacity {
                fail(name, "sectors beyond the disk");
            }
            let bytes = sectors * SECTOR;
            let Some(wbuf) = alloc.take(bytes, 4096) else {
                fail(name, "out of memory")
            };
            let Some(rbuf) = alloc.take(bytes, 4096) else {
                fail(name, "out of memory")
            };
            let mut seed = seed;
            loop {
                let t0 = sys::ticks();
                if name != "blkread" {
                    write_pattern(name, &mut blk, wbuf, start, sectors, per_req, seed);
                }
                let mut s = 0;
                while s < sectors {
                    let n = per_req.min(sectors - s);
                    let st = blk.request(T_IN, start + s, rbuf + s * SECTOR, (n * SECTOR) as u32);
                    match st {
                        Some((S_OK, len)) if len as u64 == n * SECTOR + 1 => {}
                        other => {
                            outln!(
                                "CHECK FAIL workload={name} op=read sector={} result={other:?}",
                                start + s
                            );
                            sys::idle_forever();
                        }
                    }
                    s += n;
                }
                match check_pattern(rbuf, bytes, seed, start * SECTOR) {
                    None => outln!(
                        "CHECK PASS workload={name} sectors={sectors} seed={seed} ticks={}",
                        sys::ticks() - t0
                    ),
                    Some(off) => {
                        outln!(
                            "CHECK FAIL workload={name} mismatch_at_byte={}",
                            start * SECTOR + off
                        );
                        sys::idle_forever();
                    }
                }
                if name != "blkloop" {
                    break;
                }
                seed += 1;
            }
        }
        "blkhot" => hot(&mut blk, &mut alloc, start, sectors),
        _ => bench(&mut blk, &mut alloc, mib, bs, qd),
    }
    outln!("DONE workload={name}");
    sys::idle_forever();
}

/// Bytes per block of the `blkhot` workload.
const BLOCK: u64 = 4096;

/// `blkhot`: forever, each 4 KiB block of `sectors` sectors from `start` is read, one byte
/// (at an offset that differs per block) is checked against what the previous visit wrote,
/// bumped and written back. The first visit learns the byte (the region holds whatever the
/// host put there). Prints `CHECK PASS workload=blkhot pass=N` after each full pass, or
/// `CHECK FAIL` naming the block whose byte is not the one written last.
fn hot(blk: &mut Blk, alloc: &mut Alloc, start: u64, sectors: u64) -> ! {
    let per = BLOCK / SECTOR;
    let blocks = sectors / per;
    if blocks == 0 || start + blocks * per > blk.capacity {
        fail("blkhot", "region empty or beyond the disk");
    }
    let (Some(buf), Some(gens)) = (alloc.take(BLOCK, 4096), alloc.take(blocks, 64)) else {
        fail("blkhot", "out of memory")
    };
    let mut pass = 0u64;
    loop {
        let t0 = sys::ticks();
        for b in 0..blocks {
            let sector = start + b * per;
            let off = (b * 37) % BLOCK;
            match blk.request(T_IN, sector, buf, BLOCK as u32) {
                Some((S_OK, _)) => {}
                other => {
                    outln!("CHECK FAIL workload=blkhot op=read sector={sector} result={other:?}");
                    sys::idle_forever();
                }
            }
            let (byte, gen) = ((buf + off) as *mut u8, (gens + b) as *mut u8);
            // SAFETY: buf has BLOCK bytes and gens `blocks` bytes, both from the workload
            // region; off < BLOCK and b < blocks.
            let (have, want) =
                unsafe { (core::ptr::read_volatile(byte), core::ptr::read_volatile(gen)) };
            if pass > 0 && have != want {
                outln!(
                    "CHECK FAIL workload=blkhot block={b} sector={sector} pass={pass} byte={have} expected={want}"
                );
                sys::idle_forever();
            }
            let next = have.wrapping_add(1);
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(byte, next);
                core::ptr::write_volatile(gen, next);
            }
            match blk.request(T_OUT, sector, buf, BLOCK as u32) {
                Some((S_OK, _)) => {}
                other => {
                    outln!("CHECK FAIL workload=blkhot op=write sector={sector} result={other:?}");
                    sys::idle_forever();
                }
            }
        }
        outln!(
            "CHECK PASS workload=blkhot pass={pass} blocks={blocks} ticks={}",
            sys::ticks() - t0
        );
        pass += 1;
    }
}

/// Writes the pattern of `seed` to `sectors` sectors from `start` and flushes; a failure is
/// reported and ends the workload.
fn write_pattern(
    name: &str,
    blk: &mut Blk,
    wbuf: u64,
    start: u64,
    sectors: u64,
    per_req: u64,
    seed: u64,
) {
    fill_pattern(wbuf, sectors * SECTOR, seed, start * SECTOR);
    let mut s = 0;
    while s < sectors {
        let n = per_req.min(sectors - s);
        let st = blk.request(T_OUT, start + s, wbuf + s * SECTOR, (n * SECTOR) as u32);
        if st.map(|x| x.0) != Some(S_OK) {
            outln!(
                "CHECK FAIL workload={name} op=write sector={} status={:?}",
                start + s,
                st.map(|x| x.0)
            );
            sys::idle_forever();
        }
        s += n;
    }
    let fl = blk.request(T_FLUSH, 0, 0, 0).map(|x| x.0);
    if fl != Some(S_OK) {
        outln!("CHECK FAIL workload={name} op=flush status={fl:?}");
        sys::idle_forever();
    }
    if name == "blk" {
        outln!("BLK wrote sectors={sectors} from={start} seed={seed}");
    }
}

/// Sequential writes then reads of `mib` MiB in `bs`-byte requests with `qd` in flight.
fn bench(blk: &mut Blk, alloc: &mut Alloc, mib: u64, bs: u64, qd: u16) {
    let total = mib << 20;
    let sectors_per = bs / SECTOR;
    let span = (blk.capacity / sectors_per).max(1);
    let Some(bufs) = alloc.take(bs * qd as u64, 4096) else {
        fail("blkbench", "out of memory")
    };
    for op in [T_OUT, T_IN] {
        let op_name = if op == T_OUT { "write" } else { "read" };
        let reqs = total / bs;
        outln!("BENCH blk op={op_name} bs={bs} qd={qd} bytes={total} start");
        let t0 = virtio::rdtsc();
        let k0 = sys::ticks();
        let (mut sent, mut done, mut errors) = (0u64, 0u64, 0u64);
        while done < reqs {
            let mut queued = false;
            while sent < reqs && blk.in_flight() < qd {
                let slot = sent % qd as u64;
                let sector = (sent % span) * sectors_per;
                blk.submit(op, sector, bufs + slot * bs, bs as u32);
                sent += 1;
                queued = true;
            }
            if queued {
                blk.notify();
            }
            while let Some((_, status, _)) = blk.poll() {
                done += 1;
                if status != S_OK {
                    errors += 1;
                }
            }
        }
        let cycles = virtio::rdtsc() - t0;
        outln!(
            "BENCH blk op={op_name} bs={bs} qd={qd} bytes={total} done ticks={} tsc={cycles} errors={errors}",
            sys::ticks() - k0
        );
    }
    outln!("CHECK PASS workload=blkbench");
}
