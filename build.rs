//! Generates the gRPC code for `proto/fetchd/v1/fetchd.proto` with a pure-Rust
//! protobuf compiler (protox), so no system `protoc` is needed.

use std::path::PathBuf;

const PROTO: &str = "proto/fetchd/v1/fetchd.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    // Source info carries the .proto comments into the generated Rust docs.
    compiler.include_source_info(true).open_file(PROTO)?;
    // The encoded descriptor set feeds server reflection.
    std::fs::write(
        out_dir.join("fetchd_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // Every `bytes` field is a `bytes::Bytes`: chunks move through without copies.
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
