//! The in-repo guest images. `TESTGUEST_ELF` is the path of the test guest built by this
//! crate's build script: a freestanding x86_64 kernel entered through the 64-bit Linux boot
//! protocol (or PVH), documented in `images/README.md`.

/// Absolute path of the built test guest ELF (`novacron-testguest.elf`).
pub const TESTGUEST_ELF: &str = env!("NOVACRON_TESTGUEST_ELF");
