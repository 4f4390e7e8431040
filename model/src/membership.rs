//! Membership: the pure function that turns heartbeats into the next cluster map.
//!
//! The embedded coordinator runs it today; the Kubernetes operator's leader runs the same code
//! over node Leases. It has no clock and no I/O: callers pass the time.

use crate::{ClusterMap, NodeInfo};
use std::collections::BTreeMap;

/// The last heartbeat heard from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// What the node says about itself.
    pub node: NodeInfo,
    /// When it was heard, in milliseconds on the caller's monotonic clock.
    pub at_ms: u64,
}

/// Membership settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// A node silent for this long is removed from the map.
    pub failure_timeout_ms: u64,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            failure_timeout_ms: 10_000,
        }
    }
}

impl Membership {
    /// Whether a node last heard at `at_ms` still counts as alive at `now_ms`.
    pub fn alive(&self, at_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(at_ms) < self.failure_timeout_ms
    }

    /// The next map, or `None` when `current` still describes the live nodes.
    ///
    /// - Nodes heard within the failure timeout are members, with the addresses, zone and
    ///   weight of their latest heartbeat; others are removed; new ones join, with
    ///   `joined_epoch` set to the new epoch (members keep theirs).
    /// - When no node at all is alive the map is kept: a whole cluster that stopped comes
    ///   back to the epoch it left, and nothing is re-replicated.
    /// - Any change makes a map at `current.epoch + 1`.
    pub fn next_map(
        &self,
        current: &ClusterMap,
        heartbeats: &BTreeMap<String, Heartbeat>,
        now_ms: u64,
    ) -> Option<ClusterMap> {
        let epoch = current.epoch + 1;
        let alive: Vec<NodeInfo> = heartbeats
            .values()
            .filter(|hb| self.alive(hb.at_ms, now_ms))
            .map(|hb| NodeInfo {
                joined_epoch: current.node(&hb.node.id).map_or(epoch, |n| n.joined_epoch),
                ..hb.node.clone()
            })
            .collect();
        if alive.is_empty() {
            return None;
        }
        let next = ClusterMap::new(epoch, alive);
        (next.nodes != current.nodes).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(id: &str, weight: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            peer_addr: format!("{id}:7000"),
            nbd_addr: format!("{id}:10809"),
            zone: "z".into(),
            weight,
            joined_epoch: 0,
        }
    }

    fn beats(list: &[(&str, u64)]) -> BTreeMap<String, Heartbeat> {
        list.iter()
            .map(|&(id, at_ms)| {
                (
                    id.to_string(),
                    Heartbeat {
                        node: node(id, 1),
                        at_ms,
                    },
                )
            })
            .collect()
    }

    const M: Membership = Membership {
        failure_timeout_ms: 10_000,
    };

    #[test]
    fn a_silent_node_leaves_after_the_timeout() {
        let map = ClusterMap::new(4, vec![node("a", 1), node("b", 1)]);
        let hb = beats(&[("a", 20_000), ("b", 11_000)]);
        assert_eq!(
            M.next_map(&map, &hb, 20_500),
            None,
            "b silent 9.5 s: still a member"
        );
        let next = M.next_map(&map, &hb, 21_000).unwrap();
        assert_eq!(next.epoch, 5);
        assert_eq!(
            next.nodes,
            vec![node("a", 1)],
            "a keeps the epoch it joined at"
        );
    }

    #[test]
    fn a_new_node_joins_and_changed_details_bump_the_epoch() {
        let map = ClusterMap::new(1, vec![node("a", 1)]);
        let next = M.next_map(&map, &beats(&[("a", 5), ("c", 5)]), 10).unwrap();
        assert_eq!(next.epoch, 2);
        assert_eq!(next.nodes.len(), 2);
        assert_eq!(next.node("c").unwrap().joined_epoch, 2);
        assert_eq!(next.node("a").unwrap().joined_epoch, 0);
        let mut hb = beats(&[("a", 5)]);
        hb.get_mut("a").unwrap().node.weight = 7;
        assert_eq!(M.next_map(&map, &hb, 10).unwrap().nodes[0].weight, 7);
    }

    #[test]
    fn a_cluster_with_no_live_node_keeps_its_map() {
        let map = ClusterMap::new(9, vec![node("a", 1), node("b", 1)]);
        assert_eq!(
            M.next_map(&map, &beats(&[("a", 0), ("b", 0)]), 60_000),
            None
        );
        assert_eq!(M.next_map(&map, &BTreeMap::new(), 60_000), None);
    }

    proptest! {
        #[test]
        fn epochs_only_grow_and_members_are_exactly_the_live_nodes(
            ages in proptest::collection::vec(0u64..20_000, 1..12),
            epoch in 0u64..1000,
        ) {
            let now = 100_000;
            let ids: Vec<String> = (0..ages.len()).map(|i| format!("n{i}")).collect();
            let hb: BTreeMap<String, Heartbeat> = ids.iter().zip(&ages)
                .map(|(id, age)| (id.clone(), Heartbeat { node: node(id, 1), at_ms: now - age }))
                .collect();
            let map = ClusterMap::new(epoch, vec![]);
            let live: Vec<&String> = ids.iter().zip(&ages).filter(|(_, a)| **a < 10_000).map(|(id, _)| id).collect();
            match M.next_map(&map, &hb, now) {
                Some(next) => {
                    prop_assert_eq!(next.epoch, epoch + 1);
                    let members: Vec<&String> = next.nodes.iter().map(|n| &n.id).collect();
                    let mut want = live.clone();
                    want.sort();
                    prop_assert_eq!(members, want);
                }
                None => prop_assert!(live.is_empty()),
            }
        }
    }
}
