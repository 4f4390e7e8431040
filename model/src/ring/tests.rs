//! Property tests of the ring. Shares are measured exactly, as fractions of the 64-bit hash
//! space (the limit of infinitely many objects), so no sampling noise hides a bias.

use super::analysis::{moved_fraction, worst_imbalance};
use super::*;
use crate::NodeInfo;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn node(id: usize, zone: usize, weight: u64) -> NodeInfo {
    NodeInfo {
        id: format!("node-{id}"),
        peer_addr: format!("127.0.0.1:{}", 7000 + id),
        nbd_addr: format!("127.0.0.1:{}", 10809 + id),
        zone: format!("zone-{zone}"),
        weight,
        joined_epoch: 0,
    }
}

fn map(weights: &[u64]) -> ClusterMap {
    let nodes = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| node(i, 0, w))
        .collect();
    ClusterMap::new(1, nodes)
}

fn weights_strategy(nodes: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u64>> {
    nodes
        .prop_flat_map(|n| proptest::collection::vec(512u64..=2048, n))
        .prop_map(|w| w.into_iter().map(|g| g * GIB).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn primaries_follow_weights_within_ten_percent(weights in weights_strategy(10..=200)) {
        let worst = worst_imbalance(&map(&weights), 1);
        prop_assert!(worst <= 0.10, "worst node off its weight share by {:.1}%", worst * 100.0);
    }

    #[test]
    fn three_copies_follow_weights_within_ten_percent(weights in weights_strategy(10..=200)) {
        let worst = worst_imbalance(&map(&weights), 3);
        prop_assert!(worst <= 0.10, "worst node off its weight share by {:.1}%", worst * 100.0);
    }

    #[test]
    fn adding_a_node_moves_at_most_1_2x_the_optimum(
        weights in weights_strategy(10..=200),
        new_weight in 512u64..=2048,
    ) {
        let before = map(&weights);
        let mut nodes = before.nodes.clone();
        nodes.push(node(weights.len(), 0, new_weight * GIB));
        let after = ClusterMap::new(2, nodes);
        let total: u64 = after.nodes.iter().map(|n| n.weight).sum();
        let optimal = (new_weight * GIB) as f64 / total as f64;
        let moved = moved_fraction(&before, &after, 3);
        prop_assert!(moved <= 1.2 * optimal, "moved {moved:.4}, optimal {optimal:.4}");
    }

    #[test]
    fn removing_a_node_moves_at_most_1_2x_the_optimum(
        weights in weights_strategy(10..=200),
        victim in any::<prop::sample::Index>(),
    ) {
        let before = map(&weights);
        let gone = victim.index(weights.len());
        let mut nodes = before.nodes.clone();
        let removed = nodes.remove(gone);
        let after = ClusterMap::new(2, nodes);
        let total: u64 = before.nodes.iter().map(|n| n.weight).sum();
        let optimal = removed.weight as f64 / total as f64;
        let moved = moved_fraction(&before, &after, 3);
        prop_assert!(moved <= 1.2 * optimal, "moved {moved:.4}, optimal {optimal:.4}");
    }

    #[test]
    fn placement_is_deterministic_and_distinct(
        weights in weights_strategy(1..=20),
        oids in proptest::collection::vec((1u32..1000, any::<u32>()), 50),
    ) {
        let forward = map(&weights);
        let mut reversed = forward.nodes.clone();
        reversed.reverse();
        let (a, b) = (Ring::new(&forward), Ring::new(&ClusterMap::new(1, reversed)));
        for (vid, index) in oids {
            let oid = ObjectId::data(vid, index);
            let set = a.replicas(oid, 3);
            prop_assert_eq!(&set, &b.replicas(oid, 3));
            prop_assert_eq!(set.len(), 3.min(weights.len()));
            let mut unique = set.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), set.len());
        }
    }

    #[test]
    fn replicas_land_in_distinct_zones_when_there_are_enough(
        zones in proptest::collection::vec(0usize..4, 6..30),
        index: u32,
    ) {
        let nodes = zones.iter().enumerate().map(|(i, &z)| node(i, z, 1 << 40)).collect();
        let map = ClusterMap::new(1, nodes);
        let ring = Ring::new(&map);
        let zone_count = { let mut z = zones.clone(); z.sort_unstable(); z.dedup(); z.len() };
        let set = ring.replicas(ObjectId::data(1, index), 3);
        let mut chosen: Vec<&str> = set.iter().map(|&i| map.nodes[i].zone.as_str()).collect();
        chosen.sort_unstable();
        chosen.dedup();
        prop_assert_eq!(chosen.len(), zone_count.min(3));
    }
}

#[test]
fn one_node_holds_everything() {
    let map = map(&[GIB]);
    let ring = Ring::new(&map);
    assert_eq!(ring.replicas(ObjectId::data(1, 0), 3), vec![0]);
    assert!(
        Ring::new(&ClusterMap::new(1, vec![]))
            .replicas(ObjectId::data(1, 0), 3)
            .is_empty()
    );
}
