//! gRPC API of Sheepdog nodes, generated from `proto/sheepdog/v1`.

/// Version 1 of the API: volume and cluster services.
pub mod v1 {
    tonic::include_proto!("sheepdog.v1");
}
