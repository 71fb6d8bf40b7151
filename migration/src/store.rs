//! Where the decoder writes pages: the [`PageStore`] trait and its in-memory implementations.

use crate::PAGE_SIZE;

/// Destination memory as seen by the decoder.
///
/// This is a copy-in/copy-out interface rather than one handing out `&mut [u8; 4096]`:
/// guest memory (vm-memory's `GuestMemoryMmap`) is volatile memory mapped into the guest, and
/// safe access to it is by copies (`Bytes::read_slice`/`write_slice`); and the decoder
/// reconstructs each page in a scratch buffer anyway, so that a page failing its crc check
/// is never modified. The extra 4 KiB copy costs far less than decompression.
/// [`GuestMemoryPages`] implements it for vm-memory; slices and vectors of pages implement
/// it for tests and tools.
pub trait PageStore {
    /// True if page `index` exists and can be read and written.
    fn contains(&self, index: u64) -> bool;
    /// Copies page `index` into `buf`; false if it cannot be read.
    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool;
    /// Overwrites page `index` with `data`; false if it cannot be written.
    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool;
}

impl PageStore for [[u8; PAGE_SIZE]] {
    fn contains(&self, index: u64) -> bool {
        usize::try_from(index).is_ok_and(|i| i < self.len())
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        match usize::try_from(index).ok().and_then(|i| self.get(i)) {
            Some(p) => {
                buf.copy_from_slice(p);
                true
            }
            None => false,
        }
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        match usize::try_from(index).ok().and_then(|i| self.get_mut(i)) {
            Some(p) => {
                p.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

impl PageStore for Vec<[u8; PAGE_SIZE]> {
    fn contains(&self, index: u64) -> bool {
        PageStore::contains(self.as_slice(), index)
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self.as_slice().read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        self.as_mut_slice().write_page(index, data)
    }
}
