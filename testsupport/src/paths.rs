//! Where the things tests run live: the workspace binaries in `target/<profile>` and the
//! in-repo test guest.

use std::path::{Path, PathBuf};

/// Directory holding the workspace binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// Path of a workspace binary, built by the README's test command before `cargo test`.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first (the README test command does)",
        p.display()
    );
    p
}

/// The novacron-vmm binary.
pub fn vmm() -> PathBuf {
    bin("novacron-vmm")
}

/// The VMM with the sandbox tests' misbehaviour hooks (`test-hook` requests), which the
/// test command builds with `--features test-hooks`.
pub fn vmm_testhooks() -> PathBuf {
    let p = bin_dir().join("novacron-vmm-testhooks");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p novacron-vmm --features test-hooks --bin novacron-vmm-testhooks` (the README test command does)",
        p.display()
    );
    p
}

/// The test guest ELF.
pub fn guest() -> PathBuf {
    PathBuf::from(novacron_images::TESTGUEST_ELF)
}
