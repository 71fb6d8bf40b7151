//! Loading a guest for the 64-bit Linux boot protocol: an ELF vmlinux (or the test guest) or a
//! bzImage, an optional initrd, the command line, and the zero page with its e820 map.

use crate::layout::{
    self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PAGE_SIZE, ZERO_PAGE_START,
};
use crate::memory::GuestMem;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Errors loading a guest kernel, initrd or command line.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel or initrd file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither an ELF kernel nor a bzImage.
    #[error("{0} is not a kernel: expected an x86_64 ELF (vmlinux) or a bzImage")]
    NotAKernel(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// The kernel's entry point is outside guest RAM.
    #[error("kernel entry point {0:#x} is outside guest memory")]
    EntryOutsideMemory(u64),
    /// The command line is too long or has invalid characters.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The initrd does not fit in guest RAM.
    #[error(
        "initrd of {size} bytes does not fit in guest memory below {limit:#x} above the kernel"
    )]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// Highest address usable.
        limit: u64,
    },
    /// Writing boot structures into guest memory failed.
    #[error("cannot write boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Writing the zero page failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(linux_loader::configurator::Error),
}

/// What the loader produced: where to start the boot vCPU.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
}

/// Kind of kernel image, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// ELF (vmlinux or the test guest).
    Elf,
    /// bzImage.
    BzImage,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` and tells whether it is an ELF or a bzImage.
pub fn detect(path: &Path) -> Result<(File, KernelKind), BootError> {
    let mut f = File::open(path).map_err(read_err(path))?;
    let mut head = vec![0u8; 0x210];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]).map_err(read_err(path))? {
            0 => break,
            n => got += n,
        }
    }
    head.truncate(got);
    if head.starts_with(b"\x7fELF") {
        // ELFCLASS64, little endian, EM_X86_64.
        if head.len() >= 20
            && head[4] == 2
            && head[5] == 1
            && u16::from_le_bytes([head[18], head[19]]) == 62
        {
            return Ok((f, KernelKind::Elf));
        }
        return Err(BootError::NotAKernel(path.to_path_buf()));
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok((f, KernelKind::BzImage));
    }
    Err(BootError::NotAKernel(path.to_path_buf()))
}

/// Loads the kernel at `path` into `mem`; returns the entry point and the bzImage setup
/// header if there is one.
pub fn load_kernel(
    mem: &GuestMem,
    path: &Path,
) -> Result<(LoadedKernel, Option<setup_header>), BootError> {
    let (mut file, kind) = detect(path)?;
    let load_err = |source| BootError::Load {
        path: path.to_path_buf(),
        source,
    };
    let (entry, end, hdr) = match kind {
        KernelKind::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            (r.kernel_load.0, r.kernel_end, r.setup_header)
        }
        KernelKind::BzImage => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            // The 64-bit entry is 0x200 bytes into the protected-mode kernel.
            (r.kernel_load.0 + 0x200, r.kernel_end, r.setup_header)
        }
    };
    if !mem.address_in_range(GuestAddress(entry)) {
        return Err(BootError::EntryOutsideMemory(entry));
    }
    Ok((LoadedKernel { entry, end }, hdr))
}

/// Builds the command line, checking it fits the boot protocol's limit.
pub fn make_cmdline(s: &str) -> Result<Cmdline, BootError> {
    Cmdline::try_from(s, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)
}

/// Loads the initrd at the highest page-aligned address that fits below `limit` and above
/// `kernel_end`; returns (address, size).
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(read_err(path))?;
    let size = data.len() as u64;
    let low_end = mem.last_addr().0.min(layout::MMIO_GAP_START - 1) + 1;
    let top = low_end.min(limit);
    let addr = top.checked_sub(size).map(|a| a & !(PAGE_SIZE - 1));
    match addr {
        Some(a) if a >= kernel_end => {
            mem.write_slice(&data, GuestAddress(a))?;
            Ok((a, size))
        }
        _ => Err(BootError::InitrdTooBig { size, limit: top }),
    }
}

/// Writes the command line and the zero page (setup header, initrd, e820 map).
pub fn write_boot_params(
    mem: &GuestMem,
    mem_size: u64,
    cmdline: &Cmdline,
    hdr: Option<setup_header>,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(|e| {
        BootError::Load {
            path: PathBuf::from("<cmdline>"),
            source: e,
        }
    })?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    let mut params = boot_params::default();
    if let Some(h) = hdr {
        params.hdr = h;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = layout::e820_map(mem_size);
    for (i, (addr, size, kind)) in map.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(BootError::BootParams)
}

/// The highest address an initrd may end at, from the setup header (or the protocol default).
pub fn initrd_limit(hdr: Option<&setup_header>) -> u64 {
    match hdr.map(|h| h.initrd_addr_max) {
        Some(m) if m != 0 => u64::from(m) + 1,
        _ => 0x3800_0000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_file_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("novacron-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join("notakernel");
        std::fs::write(&p, b"hello, I am not a kernel\n").expect("write");
        assert!(matches!(detect(&p), Err(BootError::NotAKernel(_))));
        assert!(matches!(
            detect(&dir.join("missing")),
            Err(BootError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn long_cmdline_is_refused() {
        assert!(make_cmdline(&"x".repeat(CMDLINE_MAX_SIZE + 1)).is_err());
        assert!(make_cmdline("console=ttyS0").is_ok());
    }
}
