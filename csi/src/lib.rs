//! The Sheepdog CSI driver: the CSI services (identity, controller, node) on a unix socket,
//! speaking to the cluster through a sheep's gRPC API. See `docs/csi.md`.

pub mod capabilities;
pub mod controller;
pub mod fields;
pub mod host;
pub mod identity;
pub mod ids;
pub mod inflight;
pub mod node;
pub mod proto;
pub mod server;
pub mod sheep;
