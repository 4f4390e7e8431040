//! `sheepdog-csi`: the CSI driver. One binary, its role a subcommand: `controller` (volumes,
//! snapshots, clones, expansion), `node` (attaching volumes on a host), or `all` (every
//! service on one socket, for tests and single-node use). It reaches the cluster through a
//! sheep's gRPC API, so it runs against the embedded default as it does in Kubernetes:
//!
//! ```sh
//! sheepdog-csi all --endpoint unix:///run/csi.sock --node-id n1 --cluster 127.0.0.1:7000
//! ```

use clap::{Parser, Subcommand};
use sheepdog_csi::server::{self, Roles};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "CSI driver for Sheepdog volumes")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// The controller service (with identity): run once per cluster.
    Controller(Args),
    /// The node service (with identity): run on every host that attaches volumes.
    Node(Args),
    /// Every service on one socket.
    All(Args),
}

#[derive(clap::Args)]
struct Args {
    /// Where to serve CSI: `unix:///PATH` (or a plain path). The socket is created 0600.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///run/csi/csi.sock")]
    endpoint: String,
    /// This host's node id, as the container orchestrator knows it.
    #[arg(long, env = "CSI_NODE_ID", default_value_t = hostname())]
    node_id: String,
    /// The gRPC address of a sheep (HOST:PORT); on Kubernetes, the local node agent.
    #[arg(long, env = "SHEEPDOG_CLUSTER", default_value = "127.0.0.1:7000")]
    cluster: String,
    /// Where the node service keeps what it attached, so a restart finds it again.
    #[arg(
        long,
        env = "SHEEPDOG_CSI_STATE",
        default_value = "/var/lib/sheepdog-csi"
    )]
    state_dir: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (roles, args) = match cli.role {
        Role::Controller(args) => (Roles::CONTROLLER, args),
        Role::Node(args) => (Roles::NODE, args),
        Role::All(args) => (Roles::ALL, args),
    };
    let config = server::Config {
        roles,
        endpoint: args.endpoint,
        node_id: args.node_id,
        cluster: args.cluster,
        state_dir: args.state_dir,
    };
    server::run(config).await
}
