//! Generates the gRPC code for `agent.proto`, `controller.proto` and the storage APIs
//! (`agent_storage.proto`, `storage.proto`) and identity and access (`iam.proto`), in the same
//! packages, with tonic-prost-build.
//! `protoc` comes from the `protoc-bin-vendored` crate unless `PROTOC` is already set, so no
//! system package is needed. A file descriptor set is written to OUT_DIR for server
//! reflection.

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PROTOC", protoc) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=agent.proto");
    println!("cargo:rerun-if-changed=controller.proto");
    println!("cargo:rerun-if-changed=agent_storage.proto");
    println!("cargo:rerun-if-changed=storage.proto");
    println!("cargo:rerun-if-changed=join.proto");
    println!("cargo:rerun-if-changed=iam.proto");
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("novacron_descriptor.bin"))
        .compile_protos(
            &[
                "agent.proto",
                "controller.proto",
                "agent_storage.proto",
                "storage.proto",
                "join.proto",
                "iam.proto",
            ],
            &["."],
        )?;
    Ok(())
}
