//! gRPC API of Sheepdog nodes, generated from `proto/sheepdog/v1`.

/// Version 1 of the API: volume and cluster services.
pub mod v1 {
    tonic::include_proto!("sheepdog.v1");
}

/// Conversions between the cluster map and its wire form.
mod convert {
    use super::v1::{ClusterMapMessage, MapNode};
    use sheepdog_model::{ClusterMap, NodeInfo};

    impl From<&NodeInfo> for MapNode {
        fn from(n: &NodeInfo) -> Self {
            Self {
                id: n.id.clone(),
                peer_addr: n.peer_addr.clone(),
                nbd_addr: n.nbd_addr.clone(),
                zone: n.zone.clone(),
                weight: n.weight,
                joined_epoch: n.joined_epoch,
            }
        }
    }

    impl From<MapNode> for NodeInfo {
        fn from(n: MapNode) -> Self {
            Self {
                id: n.id,
                peer_addr: n.peer_addr,
                nbd_addr: n.nbd_addr,
                zone: n.zone,
                weight: n.weight,
                joined_epoch: n.joined_epoch,
            }
        }
    }

    impl From<&ClusterMap> for ClusterMapMessage {
        fn from(map: &ClusterMap) -> Self {
            Self {
                epoch: map.epoch,
                nodes: map.nodes.iter().map(MapNode::from).collect(),
            }
        }
    }

    impl From<ClusterMapMessage> for ClusterMap {
        fn from(msg: ClusterMapMessage) -> Self {
            ClusterMap::new(
                msg.epoch,
                msg.nodes.into_iter().map(NodeInfo::from).collect(),
            )
        }
    }
}
