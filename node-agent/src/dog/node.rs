//! `dog node ...`: storage node commands.

use super::client::{cluster, failed};
use super::{Target, print_json};
use clap::Subcommand;
use serde::Serialize;
use sheepdog_api::v1;
use sheepdog_model::size;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the storage nodes of the cluster.
    List {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub id: String,
    pub peer_addr: String,
    pub nbd_addr: String,
    pub zone: String,
    pub capacity: u64,
    pub used: u64,
    pub objects: u64,
}

pub fn rows(nodes: &[v1::Node]) -> Vec<NodeRow> {
    nodes
        .iter()
        .map(|n| NodeRow {
            id: n.id.clone(),
            peer_addr: n.peer_addr.clone(),
            nbd_addr: n.nbd_addr.clone(),
            zone: n.zone.clone(),
            capacity: n.capacity,
            used: n.used_bytes,
            objects: n.object_count,
        })
        .collect()
}

pub fn print_table(rows: &[NodeRow]) {
    println!(
        "  {:<4} {:<10} {:<22} {:<22} {:<10} {:>10} {:>10} {:>8}",
        "Idx", "Id", "Peer", "NBD", "Zone", "Capacity", "Used", "Objects"
    );
    for (i, r) in rows.iter().enumerate() {
        println!(
            "  {:<4} {:<10} {:<22} {:<22} {:<10} {:>10} {:>10} {:>8}",
            i,
            r.id,
            r.peer_addr,
            r.nbd_addr,
            r.zone,
            size::format(r.capacity),
            size::format(r.used),
            r.objects
        );
    }
}

pub async fn run(cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List { target } => {
            let nodes = cluster(&target)
                .await?
                .list_nodes(v1::ListNodesRequest {})
                .await
                .map_err(failed)?;
            let rows = rows(&nodes.into_inner().nodes);
            if target.json {
                return print_json(&rows);
            }
            print_table(&rows);
            Ok(())
        }
    }
}
