//! Descriptor chains as the devices see them: the device-readable buffers followed by the
//! device-writable ones, every one checked to lie inside guest RAM before anything is read or
//! written. The guest is untrusted, so a chain that breaks the rules fails its own request and
//! nothing else: [`parse`] never panics and never yields an address outside guest memory.

use crate::memory::GuestMem;
use std::io::{Read, Seek, SeekFrom, Write};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Errors in a descriptor chain or while moving data through it.
#[derive(Debug, Error)]
pub enum ChainError {
    /// A descriptor points (partly) outside guest RAM.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange {
        /// Start address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadAfterWrite,
    /// The chain is shorter than the request needs.
    #[error("descriptor chain too short: need {need} bytes, have {have}")]
    TooShort {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// Guest memory access failed (should not happen after validation).
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The backing file failed.
    #[error("backend I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// One guest buffer, already checked to be inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A parsed chain: its head index and its readable and writable buffers, in order.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Readable (driver to device) buffers.
    pub readable: Vec<Segment>,
    /// Writable (device to driver) buffers.
    pub writable: Vec<Segment>,
}

/// Total length of `segs`.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Walks `descs` (a chain's descriptors, as `(addr, len, write_only)`) into a [`Chain`],
/// checking every buffer against guest RAM and that no readable buffer follows a writable one.
/// Zero-length descriptors are skipped.
pub fn parse<I>(descs: I, mem: &GuestMem) -> Result<Chain, ChainError>
where
    I: IntoIterator<Item = (GuestAddress, u32, bool)>,
{
    let mut chain = Chain::default();
    for (addr, len, write_only) in descs {
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(ChainError::OutOfRange { addr: addr.0, len });
        }
        let seg = Segment { addr, len };
        if write_only {
            chain.writable.push(seg);
        } else if chain.writable.is_empty() {
            chain.readable.push(seg);
        } else {
            return Err(ChainError::ReadAfterWrite);
        }
    }
    Ok(chain)
}

/// Parses a `virtio-queue` descriptor chain (see [`parse`]).
pub fn from_queue<M>(
    dc: virtio_queue::DescriptorChain<M>,
    mem: &GuestMem,
) -> Result<Chain, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    parse(dc.map(|d| (d.addr(), d.len(), d.is_write_only())), mem)
}

/// Drops the first `n` bytes of `segs` (e.g. a request header), returning the rest.
pub fn skip(segs: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        let len = u64::from(s.len);
        if n >= len {
            n -= len;
            continue;
        }
        // n < len <= u32::MAX, so both fit.
        out.push(Segment {
            addr: GuestAddress(s.addr.0 + n),
            len: (len - n) as u32,
        });
        n = 0;
    }
    out
}

/// Keeps only the first `n` bytes of `segs`.
pub fn truncate(segs: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if n == 0 {
            break;
        }
        let take = u64::from(s.len).min(n);
        out.push(Segment {
            addr: s.addr,
            len: take as u32,
        });
        n -= take;
    }
    out
}

/// Copies up to `buf.len()` bytes from the start of `segs` into `buf`; returns how many.
pub fn read_into(mem: &GuestMem, segs: &[Segment], buf: &mut [u8]) -> Result<usize, ChainError> {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], s.addr)?;
        done += n;
    }
    Ok(done)
}

/// Copies `data` into `segs` (through vm-memory, so the dirty bitmap sees it); returns how
/// many bytes fit.
pub fn write_from(mem: &GuestMem, segs: &[Segment], data: &[u8]) -> Result<usize, ChainError> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], s.addr)?;
        done += n;
    }
    Ok(done)
}

/// Reads `total_len(segs)` bytes of `file` at `offset` straight into the guest buffers.
pub fn file_to_guest<F: Read + Seek + vm_memory::ReadVolatile>(
    mem: &GuestMem,
    segs: &[Segment],
    file: &mut F,
    offset: u64,
) -> Result<(), ChainError> {
    file.seek(SeekFrom::Start(offset))?;
    for s in segs {
        mem.read_exact_volatile_from(s.addr, file, s.len as usize)?;
    }
    Ok(())
}

/// Writes the guest buffers to `file` at `offset`.
pub fn guest_to_file<F: Write + Seek + vm_memory::WriteVolatile>(
    mem: &GuestMem,
    segs: &[Segment],
    file: &mut F,
    offset: u64,
) -> Result<(), ChainError> {
    file.seek(SeekFrom::Start(offset))?;
    for s in segs {
        mem.write_all_volatile_to(s.addr, file, s.len as usize)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)])
            .expect("mem")
    }

    #[test]
    fn parse_checks_ranges_and_order() {
        let m = mem();
        let ok = parse(
            [
                (GuestAddress(0x100), 16, false),
                (GuestAddress(0x200), 512, true),
                (GuestAddress(0x400), 1, true),
            ],
            &m,
        )
        .expect("valid chain");
        assert_eq!(ok.readable.len(), 1);
        assert_eq!(ok.writable.len(), 2);
        assert!(matches!(
            parse([(GuestAddress(0xff00), 0x200, false)], &m),
            Err(ChainError::OutOfRange { .. })
        ));
        // Spans the hole between the two regions.
        assert!(parse([(GuestAddress(0x1ff00), 0x200, false)], &m).is_err());
        assert!(parse([(GuestAddress(u64::MAX - 4), 16, false)], &m).is_err());
        assert!(matches!(
            parse(
                [
                    (GuestAddress(0x100), 1, true),
                    (GuestAddress(0x200), 1, false)
                ],
                &m
            ),
            Err(ChainError::ReadAfterWrite)
        ));
    }

    #[test]
    fn skip_and_truncate() {
        let segs = [
            Segment {
                addr: GuestAddress(0x100),
                len: 10,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 10,
            },
        ];
        assert_eq!(
            skip(&segs, 12),
            vec![Segment {
                addr: GuestAddress(0x202),
                len: 8
            }]
        );
        assert_eq!(skip(&segs, 20), vec![]);
        assert_eq!(
            truncate(&segs, 5),
            vec![Segment {
                addr: GuestAddress(0x100),
                len: 5
            }]
        );
        assert_eq!(total_len(&truncate(&segs, 15)), 15);
    }
}
