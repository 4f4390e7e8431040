//! Core types shared by every Sheepdog component.
//!
//! Nothing here does I/O: these are pure data types and functions that every node computes
//! identically, so that any node can act as the gateway for any volume.

/// The epoch-numbered list of storage nodes.
pub mod cluster_map;
/// Every inode of the cluster: working volumes, snapshots, references and garbage.
pub mod directory;
/// Volume metadata (the inode) and its versioned binary encoding.
pub mod inode;
/// Membership: heartbeats and the current map give the next map.
pub mod membership;
/// Object ids: `flags | vid | index`, the name of every stored object.
pub mod oid;
/// Consistent-hashing placement of objects on nodes.
pub mod ring;
/// Human sizes such as `512M` and `10G`.
pub mod size;

pub use cluster_map::{ClusterMap, NodeInfo};
pub use directory::Directory;
pub use inode::Inode;
pub use oid::ObjectId;
pub use ring::Ring;

/// Default size of a data object: 4 MiB.
pub const DEFAULT_OBJECT_SIZE: u32 = 4 << 20;
/// Default number of copies of each object.
pub const DEFAULT_COPIES: u8 = 3;
/// Checksum granularity inside an object: every 4 KiB block has its own CRC32C.
pub const BLOCK_SIZE: u32 = 4096;
