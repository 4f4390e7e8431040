//! The cluster map: which storage nodes exist at which epoch.
//!
//! Persisted and exchanged as JSON with a `version` field; a reader refuses a version it does not
//! know rather than guessing.

use serde::{Deserialize, Serialize};

/// The format version this code writes.
pub const FORMAT_VERSION: u32 = 1;

/// One storage node as every other node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Stable, unique node id (a Kubernetes node name, or `0`, `1`, ... in a local cluster).
    pub id: String,
    /// Address of the node's gRPC service (control API and peer service).
    pub peer_addr: String,
    /// Address of the node's NBD server.
    pub nbd_addr: String,
    /// Failure zone; replicas go to distinct zones when there are enough of them.
    pub zone: String,
    /// Capacity in bytes: the node gets virtual nodes on the ring in proportion to it.
    pub weight: u64,
    /// Epoch at which the node last joined the map. A node whose copies predate this epoch
    /// left and came back: its copies may be stale and are refreshed by recovery.
    #[serde(default)]
    pub joined_epoch: u64,
}

/// An epoch-numbered list of nodes. Epochs only grow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMap {
    pub version: u32,
    pub epoch: u64,
    pub nodes: Vec<NodeInfo>,
}

/// A persisted cluster map that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterMapError {
    #[error("cluster map is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error(
        "cluster map format version {0} is newer than this sheep understands ({FORMAT_VERSION}); upgrade sheep"
    )]
    UnsupportedVersion(u32),
}

impl ClusterMap {
    /// A map at `epoch` holding `nodes`, sorted by id so that equal maps encode identically.
    pub fn new(epoch: u64, mut nodes: Vec<NodeInfo>) -> Self {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            version: FORMAT_VERSION,
            epoch,
            nodes,
        }
    }

    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a cluster map always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, ClusterMapError> {
        let map: Self = serde_json::from_str(text)?;
        if map.version != FORMAT_VERSION {
            return Err(ClusterMapError::UnsupportedVersion(map.version));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            peer_addr: format!("127.0.0.1:700{id}"),
            nbd_addr: format!("127.0.0.1:1080{id}"),
            zone: "z".into(),
            weight: 1 << 40,
            joined_epoch: 0,
        }
    }

    #[test]
    fn json_round_trips_and_sorts_nodes() {
        let map = ClusterMap::new(3, vec![node("1"), node("0")]);
        assert_eq!(map.nodes[0].id, "0");
        assert_eq!(ClusterMap::from_json(&map.to_json()).unwrap(), map);
        assert!(map.to_json().contains("\"peerAddr\""));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut map = ClusterMap::new(1, vec![node("0")]);
        map.version = 9;
        let err = ClusterMap::from_json(&map.to_json()).unwrap_err();
        assert!(err.to_string().contains("upgrade sheep"), "{err}");
    }
}
