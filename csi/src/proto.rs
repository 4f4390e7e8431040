//! Types, servers and clients generated from the CSI specification's protobuf, v1.12.0
//! (`proto/csi`).

#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}
