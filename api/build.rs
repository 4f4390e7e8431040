//! Compiles proto/sheepdog/v1 with the protoc shipped in the protoc-bin-vendored crate, so the
//! build needs no system protoc and never touches the network.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Payloads as `bytes::Bytes`: replica writes and reads are passed on without copies.
    config.bytes(["."]);
    let protos = [
        "../proto/sheepdog/v1/volume.proto",
        "../proto/sheepdog/v1/cluster.proto",
        "../proto/sheepdog/v1/peer.proto",
        "../proto/sheepdog/v1/coordinator.proto",
    ];
    tonic_prost_build::configure().compile_with_config(config, &protos, &["../proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
