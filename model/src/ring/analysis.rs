//! Exact measurements of a ring: how closely load follows weight and how much moves between
//! two maps. Shares are fractions of the 64-bit hash space (the limit of infinitely many
//! objects), so sampling noise cannot hide a bias. Used by the property tests and by
//! `cargo run --release -p sheepdog-model --example ring_figures`.

use super::Ring;
use crate::ClusterMap;

/// Replica set (as node ids) of the objects whose hash lands at `position`.
fn set_at(ring: &Ring, map: &ClusterMap, position: u64, copies: usize) -> Vec<String> {
    let set = ring.replicas_at(position, copies);
    set.into_iter().map(|i| map.nodes[i].id.clone()).collect()
}

/// Elementary intervals of the hash space: (interval end position, interval length / 2^64).
fn intervals(positions: &mut Vec<u64>) -> Vec<(u64, f64)> {
    positions.sort_unstable();
    positions.dedup();
    let span = |from: u64, to: u64| to.wrapping_sub(from) as f64 / 2f64.powi(64);
    let mut out = Vec::with_capacity(positions.len());
    for (i, &p) in positions.iter().enumerate() {
        let prev = if i == 0 {
            *positions.last().unwrap()
        } else {
            positions[i - 1]
        };
        out.push((
            p,
            if positions.len() == 1 {
                1.0
            } else {
                span(prev, p)
            },
        ));
    }
    out
}

/// Worst relative deviation of each node's share of replicas from its share of weight.
pub fn worst_imbalance(map: &ClusterMap, copies: usize) -> f64 {
    let weights: Vec<u64> = map.nodes.iter().map(|n| n.weight).collect();
    let map = map.clone();
    let ring = Ring::new(&map);
    let mut load = vec![0f64; weights.len()];
    let mut positions: Vec<u64> = ring.points.iter().map(|p| p.0).collect();
    for (end, len) in intervals(&mut positions) {
        for n in ring.replicas_at(end, copies) {
            load[n] += len / copies as f64;
        }
    }
    let total: u64 = weights.iter().sum();
    load.iter()
        .zip(&map.nodes)
        .map(|(l, n)| (l / (n.weight as f64 / total as f64) - 1.0).abs())
        .fold(0.0, f64::max)
}

/// Fraction of replica slots that change holder between two maps.
pub fn moved_fraction(before: &ClusterMap, after: &ClusterMap, copies: usize) -> f64 {
    let (a, b) = (Ring::new(before), Ring::new(after));
    let mut positions: Vec<u64> = a.points.iter().chain(&b.points).map(|p| p.0).collect();
    let mut moved = 0.0;
    for (end, len) in intervals(&mut positions) {
        let old = set_at(&a, before, end, copies);
        let new = set_at(&b, after, end, copies);
        let changed = new.iter().filter(|id| !old.contains(id)).count();
        moved += len * changed as f64 / copies as f64;
    }
    moved
}
