//! `sheep`, the Sheepdog storage node, and `dog`, its command-line client.

/// Configuration of `sheep`.
pub mod config;
/// Wiring of a `sheep` node: store, gateway, NBD and gRPC servers.
pub mod daemon;
/// `dog`, the command-line client.
pub mod dog;
/// Volume I/O and metadata over replicated objects; every node is a gateway.
pub mod gateway;
/// NBD server (fixed newstyle) on TCP and unix sockets.
pub mod nbd;
/// gRPC control API: volume and cluster services.
pub mod rpc;
/// Local object store: sparse, checksummed object files on the data disk.
pub mod store;
