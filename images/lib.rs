//! The in-repo guest images. `TESTGUEST_ELF` is the path of the test guest built by this
//! crate's build script: a freestanding x86_64 kernel entered through the 64-bit Linux boot
//! protocol (or PVH), documented in `images/README.md`.

/// Absolute path of the built test guest ELF (`novacron-testguest.elf`).
pub const TESTGUEST_ELF: &str = env!("NOVACRON_TESTGUEST_ELF");

/// Guest-physical address of the test guest's timer tick counter (little-endian `u64`), for
/// checking from outside the guest that interrupts keep flowing.
pub const TESTGUEST_TICKS_ADDR: u64 = 0x10_9000;

/// Guest-physical address of the test guest's workload region (`mib` MiB long; for `ab`, the
/// first byte of each 4 KiB page holds the pass counter).
pub const TESTGUEST_REGION_ADDR: u64 = 0x40_0000;

#[cfg(test)]
mod tests {
    /// The guest is built separately, so its layout constants are duplicated here; keep them
    /// in step with `testguest/src/layout.rs`.
    #[test]
    fn addresses_match_the_guest_layout() {
        let layout = include_str!("testguest/src/layout.rs");
        assert!(layout.contains("pub const TICKS_ADDR: u64 = 0x10_9000;"));
        assert!(layout.contains("pub const REGION_BASE: u64 = 0x40_0000;"));
        assert_eq!(super::TESTGUEST_TICKS_ADDR, 0x10_9000);
        assert_eq!(super::TESTGUEST_REGION_ADDR, 0x40_0000);
    }

    #[test]
    fn elf_exists() {
        assert!(std::path::Path::new(super::TESTGUEST_ELF).is_file());
    }
}
