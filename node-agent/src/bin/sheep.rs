//! `sheep`: the Sheepdog storage node.

use clap::Parser;
use sheepdog_node_agent::config::{Cli, Role};
use sheepdog_node_agent::{coordinator, daemon};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    abort_on_panic();
    match cli.role {
        Some(Role::Coordinator(config)) => coordinator::run(config).await,
        None => daemon::run(cli.node).await,
    }
}

/// A storage daemon stops at once on a bug rather than limping on with a broken invariant.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}
