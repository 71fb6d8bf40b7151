//! Builds the freestanding test guest with the host's `rustc` for the host target
//! (`x86_64-unknown-linux-gnu`), `no_std`, statically linked at a fixed physical address by
//! `testguest/linker.ld`. The ELF lands in OUT_DIR and is copied next to the workspace's
//! binaries (`target/<profile>/novacron-testguest.elf`) so the README command can name it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src_dir = manifest.join("testguest");
    println!("cargo:rerun-if-changed={}", src_dir.display());
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let elf = out.join("novacron-testguest.elf");
    let linker_script = src_dir.join("linker.ld");
    let output = Command::new(&rustc)
        .arg("--edition=2021")
        .arg("--crate-type=bin")
        .arg("--crate-name=novacron_testguest")
        .arg("--target=x86_64-unknown-linux-gnu")
        .args(["-C", "panic=abort"])
        .args(["-C", "opt-level=2"])
        .args(["-C", "debuginfo=0"])
        .args(["-C", "strip=debuginfo"])
        .args(["-C", "relocation-model=static"])
        .args(["-C", "code-model=small"])
        .args(["-C", "target-cpu=x86-64"])
        .args(["-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-nostartfiles"])
        .args(["-C", "link-arg=-static"])
        .args(["-C", "link-arg=-no-pie"])
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .args(["-C", "link-arg=-Wl,-z,max-page-size=4096"])
        .arg("-C")
        .arg(format!("link-arg=-T{}", linker_script.display()))
        .arg("-o")
        .arg(&elf)
        .arg(src_dir.join("src/main.rs"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("failed to run rustc for the test guest");
    let diagnostics = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{diagnostics}");
        panic!("building the test guest failed");
    }
    // The guest's own warnings would otherwise be invisible: pass them on to cargo.
    for line in diagnostics.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=testguest: {line}");
    }
    println!("cargo:rustc-env=NOVACRON_TESTGUEST_ELF={}", elf.display());

    // Copy next to the binaries: OUT_DIR is target/<profile>/build/<pkg>-<hash>/out.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let dest = profile_dir.join("novacron-testguest.elf");
        let _ = copy_if_changed(&elf, &dest);
    }
}

fn copy_if_changed(from: &Path, to: &Path) -> std::io::Result<()> {
    let new = std::fs::read(from)?;
    if std::fs::read(to).ok().as_deref() != Some(&new[..]) {
        std::fs::write(to, new)?;
    }
    Ok(())
}
