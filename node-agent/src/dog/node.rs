//! `dog node ...`: storage node commands.

use super::client::{cluster, failed};
use super::{Target, print_json};
use clap::Subcommand;
use serde::Serialize;
use sheepdog_api::v1;
use sheepdog_model::size;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the storage nodes of the cluster, with what each one stores.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show each node's recovery progress for the current epoch.
    Recovery {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRow {
    pub id: String,
    pub reachable: bool,
    pub epoch: u64,
    pub listed: bool,
    pub done: u64,
    pub total: u64,
    pub missing: u64,
    pub recovered_epoch: u64,
}

/// A node as it describes itself (its own usage), or `None` if it cannot be asked.
async fn self_described(node: &v1::Node) -> Option<v1::Node> {
    let mut client = cluster(&node_target(node)?).await.ok()?;
    let list = client
        .list_nodes(v1::ListNodesRequest {})
        .await
        .ok()?
        .into_inner();
    list.nodes.into_iter().find(|n| n.id == node.id)
}

fn node_target(node: &v1::Node) -> Option<Target> {
    let (address, port) = node.peer_addr.rsplit_once(':')?;
    Some(Target {
        address: address.to_owned(),
        port: port.parse().ok()?,
        json: false,
    })
}

/// How long `dog` waits for one node's own description before showing it as unreachable: a
/// stopped or cut-off node must not hang the whole listing.
const NODE_ANSWER: std::time::Duration = std::time::Duration::from_secs(3);

async fn recovery_rows(nodes: &[v1::Node]) -> Vec<RecoveryRow> {
    let mut rows = Vec::new();
    for node in nodes {
        let status = async {
            let mut client = cluster(&node_target(node)?).await.ok()?;
            Some(
                client
                    .get_recovery(v1::GetRecoveryRequest {})
                    .await
                    .ok()?
                    .into_inner(),
            )
        };
        rows.push(
            match tokio::time::timeout(NODE_ANSWER, status)
                .await
                .ok()
                .flatten()
            {
                Some(s) => RecoveryRow {
                    id: node.id.clone(),
                    reachable: true,
                    epoch: s.epoch,
                    listed: s.listed,
                    done: s.objects_done,
                    total: s.objects_total,
                    missing: s.objects_missing,
                    recovered_epoch: s.recovered_epoch,
                },
                None => RecoveryRow {
                    id: node.id.clone(),
                    reachable: false,
                    epoch: 0,
                    listed: false,
                    done: 0,
                    total: 0,
                    missing: 0,
                    recovered_epoch: 0,
                },
            },
        );
    }
    rows
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub id: String,
    pub peer_addr: String,
    pub nbd_addr: String,
    pub zone: String,
    pub capacity: u64,
    /// Bytes stored, as the node itself reports; `None` when it could not be asked.
    pub used: Option<u64>,
    pub objects: Option<u64>,
}

/// One row per node of the map, with the usage each node reports about itself.
pub async fn rows(nodes: &[v1::Node]) -> Vec<NodeRow> {
    let mut rows = Vec::new();
    for node in nodes {
        let own = tokio::time::timeout(NODE_ANSWER, self_described(node))
            .await
            .ok()
            .flatten();
        rows.push(NodeRow {
            id: node.id.clone(),
            peer_addr: node.peer_addr.clone(),
            nbd_addr: node.nbd_addr.clone(),
            zone: node.zone.clone(),
            capacity: node.capacity,
            used: own.as_ref().map(|n| n.used_bytes),
            objects: own.as_ref().map(|n| n.object_count),
        });
    }
    rows
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
            r.used.map_or("-".into(), size::format),
            r.objects.map_or("-".into(), |o| o.to_string())
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
            let rows = rows(&nodes.into_inner().nodes).await;
            if target.json {
                return print_json(&rows);
            }
            print_table(&rows);
            Ok(())
        }
        NodeCommand::Recovery { target } => {
            let nodes = cluster(&target)
                .await?
                .list_nodes(v1::ListNodesRequest {})
                .await
                .map_err(failed)?;
            let rows = recovery_rows(&nodes.into_inner().nodes).await;
            if target.json {
                return print_json(&rows);
            }
            println!(
                "  {:<10} {:>6} {:>8} {:>16} {:>8} {:>10}",
                "Id", "Epoch", "Listed", "Objects", "Missing", "Recovered"
            );
            for r in rows {
                if !r.reachable {
                    println!("  {:<10} unreachable", r.id);
                    continue;
                }
                let progress = format!("{}/{}", r.done, r.total);
                println!(
                    "  {:<10} {:>6} {:>8} {:>16} {:>8} {:>10}",
                    r.id, r.epoch, r.listed, progress, r.missing, r.recovered_epoch
                );
            }
            Ok(())
        }
    }
}
