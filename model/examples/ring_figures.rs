//! Prints the ring's balance and movement figures for a range of cluster sizes.
//!
//! `cargo run --release -p sheepdog-model --example ring_figures`

use sheepdog_model::ring::analysis::{moved_fraction, worst_imbalance};
use sheepdog_model::{ClusterMap, NodeInfo};

const GIB: u64 = 1 << 30;

fn node(i: usize, weight: u64) -> NodeInfo {
    NodeInfo {
        id: format!("node-{i}"),
        peer_addr: String::new(),
        nbd_addr: String::new(),
        zone: "z".into(),
        weight,
        joined_epoch: 0,
    }
}

/// Deterministic spread of weights from 512 GiB to 2 TiB (a 4x range).
fn weight(i: usize) -> u64 {
    (512 + (i as u64 * 2_654_435_761 % 1537)) * GIB
}

fn main() {
    println!("nodes  worst-primary  worst-3-copies  add-moved/optimal  remove-moved/optimal");
    for n in [10, 20, 50, 100, 200] {
        let nodes: Vec<NodeInfo> = (0..n).map(|i| node(i, weight(i))).collect();
        let map = ClusterMap::new(1, nodes.clone());
        let total: u64 = nodes.iter().map(|n| n.weight).sum();
        let mut grown = nodes.clone();
        grown.push(node(n, weight(n)));
        let grown = ClusterMap::new(2, grown);
        let add_optimal = weight(n) as f64 / (total + weight(n)) as f64;
        let add = moved_fraction(&map, &grown, 3) / add_optimal;
        let mut shrunk = nodes.clone();
        let gone = shrunk.remove(n / 2);
        let shrunk = ClusterMap::new(2, shrunk);
        let remove = moved_fraction(&map, &shrunk, 3) / (gone.weight as f64 / total as f64);
        println!(
            "{n:>5}  {:>12.2}%  {:>13.2}%  {add:>17.3}  {remove:>20.3}",
            100.0 * worst_imbalance(&map, 1),
            100.0 * worst_imbalance(&map, 3),
        );
    }
}
