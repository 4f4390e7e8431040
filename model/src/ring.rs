//! Placement: a consistent-hashing ring with virtual nodes in proportion to node weight.
//!
//! Each node gets `weight / VNODE_BYTES` virtual nodes (clamped to
//! [`MIN_VNODES`]..=[`MAX_VNODES`]) at positions `xxh3(node id, k)`. The count depends only on
//! the node's own weight, never on the rest of the map, so adding or removing a node moves only
//! the arcs that node gains or loses (about 1/N of the objects). An object's replica set is the
//! first `copies` distinct nodes met clockwise from `xxh3(oid)`, spread over as many zones as
//! the map has: a node in a zone already chosen is skipped until every zone has a copy.
//!
//! The function is pure: every node computes the same replica set from the same map.

use crate::{ClusterMap, ObjectId};
use xxhash_rust::xxh3::xxh3_64;

/// Capacity that earns one virtual node: 256 MiB (a 1 TiB disk gets 4096).
pub const VNODE_BYTES: u64 = 256 << 20;
/// Fewest virtual nodes a node gets, however small its disk.
pub const MIN_VNODES: u64 = 64;
/// Most virtual nodes a node gets, however large its disk.
pub const MAX_VNODES: u64 = 65_536;

/// The ring for one cluster map.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (position, index into `zones`/node list), sorted by position.
    points: Vec<(u64, u32)>,
    /// Zone index of each node, in map order.
    zones: Vec<u32>,
    zone_count: usize,
}

/// Number of virtual nodes a node of `weight` bytes gets.
pub fn vnodes(weight: u64) -> u64 {
    (weight / VNODE_BYTES).clamp(MIN_VNODES, MAX_VNODES)
}

impl Ring {
    pub fn new(map: &ClusterMap) -> Self {
        let mut points = Vec::new();
        for (i, node) in map.nodes.iter().enumerate() {
            for k in 0..vnodes(node.weight) {
                points.push((vnode_position(&node.id, k), i as u32));
            }
        }
        points.sort_unstable();
        let mut zone_names: Vec<&str> = map.nodes.iter().map(|n| n.zone.as_str()).collect();
        zone_names.sort_unstable();
        zone_names.dedup();
        let zones = map
            .nodes
            .iter()
            .map(|n| zone_names.binary_search(&n.zone.as_str()).unwrap() as u32)
            .collect();
        Self {
            points,
            zones,
            zone_count: zone_names.len(),
        }
    }

    /// Indices (into the map's node list) of the nodes holding `oid`, primary first.
    /// Holds `min(copies, nodes)` entries.
    pub fn replicas(&self, oid: ObjectId, copies: usize) -> Vec<usize> {
        self.replicas_at(object_position(oid), copies)
    }

    /// Replica set of whatever hashes to `position`: walking the ring from it, nodes in as
    /// many distinct zones as there are (a node whose zone is already chosen is skipped), then,
    /// with fewer zones than copies, the next nodes not chosen yet.
    fn replicas_at(&self, position: u64, copies: usize) -> Vec<usize> {
        let want = copies.min(self.zones.len());
        let mut chosen: Vec<usize> = Vec::with_capacity(want);
        if want == 0 {
            return chosen;
        }
        let start = self.points.partition_point(|&(pos, _)| pos < position);
        let ring = (0..self.points.len())
            .map(|step| self.points[(start + step) % self.points.len()].1 as usize);
        for distinct_zones in [true, false] {
            for node in ring.clone() {
                if chosen.len() == want {
                    return chosen;
                }
                if distinct_zones && chosen.len() == self.zone_count {
                    break; // every zone has a copy: the rest go anywhere
                }
                let taken = chosen
                    .iter()
                    .any(|&c| c == node || (distinct_zones && self.zones[c] == self.zones[node]));
                if !taken {
                    chosen.push(node);
                }
            }
        }
        chosen
    }
}

fn vnode_position(node_id: &str, k: u64) -> u64 {
    let mut key = Vec::with_capacity(node_id.len() + 9);
    key.extend_from_slice(node_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&k.to_le_bytes());
    xxh3_64(&key)
}

fn object_position(oid: ObjectId) -> u64 {
    xxh3_64(&oid.raw().to_le_bytes())
}

pub mod analysis;
#[cfg(test)]
mod tests;
