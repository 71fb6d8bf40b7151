//! What the loader tells us: the command line, the memory map and the initrd, from the
//! Linux `boot_params` (zero page) or the PVH `hvm_start_info` (first module).

use crate::entry::ENTRY_PVH;
use crate::layout::MAPPED_LIMIT;

/// Longest command line read.
const CMDLINE_MAX: usize = 4096;
/// Most memory map entries kept.
pub const MEMMAP_MAX: usize = 128;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

#[derive(Clone, Copy, Default)]
pub struct MemRange {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub entry: &'static str,
    pub cmdline: &'static [u8],
    pub memmap: [MemRange; MEMMAP_MAX],
    /// Entries the loader reported (`memmap` holds the first `MEMMAP_MAX` of them).
    pub memmap_len: usize,
    /// The initrd the loader placed in memory: (guest-physical address, size in bytes).
    pub initrd: Option<(u64, u64)>,
    /// Set when the boot information itself is unusable.
    pub error: Option<&'static str>,
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: callers only pass addresses below the 4 GiB identity map; every byte there is
    // mapped and readable (RAM, or MMIO holes that read as all-ones).
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn cmdline_at(addr: u64) -> Result<&'static [u8], &'static str> {
    if addr == 0 {
        return Ok(&[]);
    }
    if addr >= MAPPED_LIMIT - CMDLINE_MAX as u64 {
        return Err("command line above 4 GiB");
    }
    let mut len = 0;
    while len < CMDLINE_MAX && read::<u8>(addr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: the bytes were just read through the identity map and stay mapped; nothing in
    // the guest writes to the loader's command line.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

impl BootInfo {
    /// Parses the boot information at `info` for the entry path `entry` (see `entry.rs`).
    pub fn parse(entry: u64, info: u64) -> BootInfo {
        let mut bi = BootInfo {
            entry: if entry == ENTRY_PVH { "pvh" } else { "linux64" },
            cmdline: &[],
            memmap: [MemRange::default(); MEMMAP_MAX],
            memmap_len: 0,
            initrd: None,
            error: None,
        };
        if info == 0 || info >= MAPPED_LIMIT - 4096 {
            bi.error = Some("no boot information");
            return bi;
        }
        let (cmdline, entries, table, stride, initrd) = if entry == ENTRY_PVH {
            if read::<u32>(info) != 0x336e_c578 {
                bi.error = Some("bad hvm_start_info magic");
                return bi;
            }
            let version = read::<u32>(info + 4);
            let (entries, table) = if version >= 1 {
                (read::<u32>(info + 48) as usize, read::<u64>(info + 40))
            } else {
                (0, 0)
            };
            // nr_modules, modlist_paddr; module 0 (paddr, size) is the initrd.
            let modules = read::<u32>(info + 12);
            let modlist = read::<u64>(info + 16);
            let initrd = if modules > 0 && modlist != 0 && modlist < MAPPED_LIMIT - 16 {
                (read::<u64>(modlist), read::<u64>(modlist + 8))
            } else {
                (0, 0)
            };
            (read::<u64>(info + 24), entries, table, 24, initrd)
        } else {
            let ptr = read::<u32>(info + 0x228) as u64 | (read::<u32>(info + 0xc8) as u64) << 32;
            // hdr.ramdisk_image / ramdisk_size, high halves in ext_ramdisk_image / _size.
            let initrd = (
                read::<u32>(info + 0x218) as u64 | (read::<u32>(info + 0xc0) as u64) << 32,
                read::<u32>(info + 0x21c) as u64 | (read::<u32>(info + 0xc4) as u64) << 32,
            );
            (ptr, read::<u8>(info + 0x1e8) as usize, info + 0x2d0, 20, initrd)
        };
        if initrd.0 != 0 && initrd.1 != 0 {
            bi.initrd = Some(initrd);
        }
        match cmdline_at(cmdline) {
            Ok(c) => bi.cmdline = c,
            Err(e) => bi.error = Some(e),
        }
        if entries > 0 && table.saturating_add((entries * stride) as u64) > MAPPED_LIMIT {
            bi.error = Some("memory map above 4 GiB");
            return bi;
        }
        bi.memmap_len = entries;
        for (i, range) in bi.memmap.iter_mut().take(entries).enumerate() {
            let at = table + (i * stride) as u64;
            *range = MemRange {
                addr: read(at),
                size: read(at + 8),
                kind: read(at + 16),
            };
        }
        bi
    }

    /// The memory map entries read.
    pub fn ranges(&self) -> &[MemRange] {
        &self.memmap[..self.memmap_len.min(MEMMAP_MAX)]
    }

    /// Total usable RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ranges()
            .iter()
            .filter(|r| r.kind == E820_RAM)
            .map(|r| r.size)
            .sum()
    }

    /// Whether `[start, end)` lies within one usable RAM range.
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        self.ranges()
            .iter()
            .any(|r| r.kind == E820_RAM && r.addr <= start && end <= r.addr.saturating_add(r.size))
    }
}
