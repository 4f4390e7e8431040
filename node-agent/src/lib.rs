//! `sheep`, the Sheepdog storage node, and `dog`, its command-line client.

/// Local object store: sparse, checksummed object files on the data disk.
pub mod store;
