//! `dog`: the Sheepdog command-line client.

use clap::Parser;
use sheepdog_node_agent::dog::{Dog, run};

#[tokio::main]
async fn main() {
    if let Err(e) = run(Dog::parse()).await {
        eprintln!("dog: {e:#}");
        std::process::exit(1);
    }
}
