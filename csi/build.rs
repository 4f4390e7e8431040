//! Compiles the CSI specification's protobuf (proto/csi, pinned to v1.12.0) with the protoc
//! and well-known types shipped in the protoc-bin-vendored crate: no system protoc, no network.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/csi/v1.12.0/csi.proto";
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known
        .to_str()
        .ok_or("the protoc include path is not UTF-8")?;
    let includes = ["../proto/csi/v1.12.0", well_known];
    tonic_prost_build::configure()
        .build_client(true)
        .compile_with_config(config, &[proto], &includes)?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
