//! `sheep`, the Sheepdog storage node, and `dog`, its command-line client.

/// This node's view of the cluster map, its history, and the lease.
pub mod cluster;
/// Configuration of `sheep`.
pub mod config;
/// The membership coordinator of the embedded default.
pub mod coordinator;
/// Wiring of a `sheep` node: store, gateway, NBD and gRPC servers.
pub mod daemon;
/// `dog`, the command-line client.
pub mod dog;
/// Volumes as files through FUSE, for loop devices (the CSI node plugin's fallback attach).
pub mod files;
/// Write freezes around snapshots, rollbacks and deletes.
pub mod freeze;
/// Volume I/O and metadata over replicated objects; every node is a gateway.
pub mod gateway;
/// Named, time-limited leases, exclusive or shared.
pub mod leases;
/// This node as a replica: store operations preceded by recovery of the object.
pub mod local;
/// Prometheus metrics, served at `/metrics` on the gRPC port.
pub mod metrics;
/// NBD server (fixed newstyle) on TCP and unix sockets.
pub mod nbd;
/// Peer service between nodes: replica I/O, listing and fetching objects, map exchange.
pub mod peer;
/// Recovery and rebalancing after epoch changes, and removal of copies no longer owned.
pub mod recovery;
/// gRPC control API: volume and cluster services.
pub mod rpc;
/// Local object store: sparse, checksummed object files on the data disk.
pub mod store;
