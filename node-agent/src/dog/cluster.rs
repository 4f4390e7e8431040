//! `dog cluster ...`: cluster information, and local clusters on this machine.

use super::node::{print_table, rows};
use super::{Target, local_cluster, print_json};
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the cluster's status, epoch and nodes.
    Info {
        #[command(flatten)]
        target: Target,
    },
    /// Compare every replica of every object; exit non-zero while any lacks its copies.
    Check {
        /// Copy the majority version over missing, corrupt or differing copies.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Start a local cluster of sheep processes on loopback, in the background.
    Up(local_cluster::UpArgs),
    /// Stop a local cluster started with `dog cluster up`.
    Down {
        /// Directory the cluster was started in.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    status: String,
    epoch: u64,
    default_copies: u32,
    version: String,
    nodes: Vec<super::node::NodeRow>,
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Info { target } => {
            let info = super::client::cluster_info(&target).await?;
            let info = Info {
                status: info.status,
                epoch: info.epoch,
                default_copies: info.default_copies,
                version: info.version,
                nodes: rows(&info.nodes).await,
            };
            if target.json {
                return print_json(&info);
            }
            println!("Cluster status: {}", info.status);
            println!("Epoch: {}", info.epoch);
            println!("Default copies: {}", info.default_copies);
            println!("Sheep version: {}", info.version);
            print_table(&info.nodes);
            Ok(())
        }
        ClusterCommand::Check { repair, target } => super::check::run(target, repair).await,
        ClusterCommand::Up(args) => local_cluster::up(args).await,
        ClusterCommand::Down { dir } => local_cluster::down(&dir).await,
    }
}
