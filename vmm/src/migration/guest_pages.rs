//! Guest memory as the engine's page store: page `i` is guest-physical address
//! `i × PAGE_SIZE`.

use novacron_migration::{PageStore, PAGE_SIZE};

/// [`PageStore`] over vm-memory guest memory: page `i` is guest-physical address
/// `i × PAGE_SIZE`; pages in holes between regions are out of range.
#[derive(Debug)]
pub struct GuestMemoryPages<'a, M: ?Sized>(pub &'a M);

impl<M: vm_memory::GuestMemory + ?Sized> GuestMemoryPages<'_, M> {
    fn addr(index: u64) -> Option<vm_memory::GuestAddress> {
        index
            .checked_mul(PAGE_SIZE as u64)
            .map(vm_memory::GuestAddress)
    }
}

impl<M: vm_memory::GuestMemory + ?Sized> PageStore for GuestMemoryPages<'_, M> {
    fn contains(&self, index: u64) -> bool {
        Self::addr(index).is_some_and(|a| {
            vm_memory::GuestMemory::check_range(
                self.0,
                a,
                PAGE_SIZE,
                vm_memory::Permissions::ReadWrite,
            )
        })
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        Self::addr(index).is_some_and(|a| vm_memory::Bytes::read_slice(self.0, buf, a).is_ok())
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        Self::addr(index).is_some_and(|a| vm_memory::Bytes::write_slice(self.0, data, a).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_migration::testdata::*;
    use novacron_migration::{CodecError, Encoding};

    #[test]
    fn guest_memory_pages_store() {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let ps = PAGE_SIZE as u64;
        // Two regions with a hole between pages 16 and 32.
        let gm = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 16 * PAGE_SIZE),
            (GuestAddress(32 * ps), 16 * PAGE_SIZE),
        ])
        .unwrap();
        let mut store = GuestMemoryPages(&gm);
        assert!(store.contains(0) && store.contains(15) && store.contains(47));
        assert!(!store.contains(16) && !store.contains(48) && !store.contains(u64::MAX));
        let mut rng = Rng::new(31);
        let mut src: Vec<Page> = vec![[0u8; PAGE_SIZE]; 48];
        for i in [1usize, 15, 32, 40] {
            src[i] = new_content(&mut rng);
        }
        src[41] = src[40];
        let mut enc = encoder(1 << 20, true);
        let idx = [1u64, 15, 32, 40, 41];
        let pages: Vec<(u64, &Page)> = idx.iter().map(|&i| (i, &src[i as usize])).collect();
        let b = enc.encode(Encoding::Zstd, &pages).unwrap();
        decode_batch(&b.bytes, &mut store).unwrap();
        tweak(&mut src[32], &mut rng);
        let b = enc.encode(Encoding::Delta, &[(32, &src[32])]).unwrap();
        assert_eq!(b.stats.kinds.delta, 1);
        decode_batch(&b.bytes, &mut store).unwrap();
        let mut buf = [0u8; PAGE_SIZE];
        for &i in &idx {
            assert!(store.read_page(i, &mut buf));
            assert_eq!(buf, src[i as usize], "page {i}");
        }
        let hole = [0u8; PAGE_SIZE];
        let mut enc = encoder(0, false);
        let b = enc.encode(Encoding::Raw, &[(20, &hole)]).unwrap();
        assert!(matches!(
            decode_batch(&b.bytes, &mut store),
            Err(CodecError::PageOutOfRange(20))
        ));
    }
}
