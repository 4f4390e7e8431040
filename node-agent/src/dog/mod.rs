//! `dog`, the command-line client, in the syntax of Sheepdog's dog:
//! `dog vdi create NAME SIZE -p 7001`, `dog node list`, `dog cluster up --nodes 3 --dir DIR`.

mod check;
mod client;
mod cluster;
mod local_cluster;
mod node;
mod vdi;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dog",
    version,
    about = "Manage a Sheepdog cluster and its volumes"
)]
pub struct Dog {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Volumes (VDIs): create, list, delete, resize, read, write.
    #[command(subcommand)]
    Vdi(vdi::VdiCommand),
    /// Storage nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// The cluster, and local clusters on this machine.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Which sheep to talk to, and how to print the answer.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Address of the sheep to talk to.
    #[arg(short = 'a', long = "address", default_value = "127.0.0.1")]
    pub address: String,
    /// gRPC port of the sheep to talk to.
    #[arg(short = 'p', long = "port", default_value_t = crate::config::DEFAULT_PEER_PORT)]
    pub port: u16,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dog` and returns the process exit code.
pub async fn run(dog: Dog) -> anyhow::Result<()> {
    match dog.command {
        Command::Vdi(cmd) => vdi::run(cmd).await,
        Command::Node(cmd) => node::run(cmd).await,
        Command::Cluster(cmd) => cluster::run(cmd).await,
    }
}

/// Prints `value` as pretty JSON.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
