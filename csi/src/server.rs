//! Serving the CSI services on a unix socket created 0600 (only the container orchestrator,
//! running as root, talks to it).

use crate::controller::Controller;
use crate::identity::Identity;
use crate::node::Node;
use crate::proto::csi::controller_server::ControllerServer;
use crate::proto::csi::identity_server::IdentityServer;
use crate::proto::csi::node_server::NodeServer;
use crate::sheep::Sheep;
use anyhow::Context;
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Which services this process serves (identity always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub controller: bool,
    pub node: bool,
}

impl Roles {
    pub const CONTROLLER: Roles = Roles {
        controller: true,
        node: false,
    };
    pub const NODE: Roles = Roles {
        controller: false,
        node: true,
    };
    pub const ALL: Roles = Roles {
        controller: true,
        node: true,
    };
}

#[derive(Debug, Clone)]
pub struct Config {
    pub roles: Roles,
    pub endpoint: String,
    pub node_id: String,
    pub cluster: String,
    pub state_dir: PathBuf,
}

/// The socket path of a CSI endpoint: `unix:///PATH`, `unix://PATH` or a plain path.
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_owned();
    if endpoint.contains("://") && !endpoint.starts_with("unix://") {
        anyhow::bail!("endpoint {endpoint:?}: only unix sockets are served (unix:///PATH)");
    }
    if !path.starts_with('/') {
        anyhow::bail!("endpoint {endpoint:?}: the socket path must be absolute (unix:///PATH)");
    }
    Ok(PathBuf::from(path))
}

/// Serves until SIGTERM or SIGINT, then removes the socket.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let path = socket_path(&config.endpoint)?;
    let listener = bind(&path)?;
    let sheep = Sheep::connect(&config.cluster)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        socket = %path.display(),
        cluster = %config.cluster,
        node = %config.node_id,
        controller = config.roles.controller,
        node_service = config.roles.node,
        "sheepdog-csi serving"
    );
    let identity = Identity::new(sheep.clone(), config.roles);
    let controller = config
        .roles
        .controller
        .then(|| ControllerServer::new(Controller::new(sheep.clone())));
    let node = match config.roles.node {
        true => Some(NodeServer::new(Node::new(
            sheep.clone(),
            config.node_id.clone(),
            config.state_dir.clone(),
        )?)),
        false => None,
    };
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_optional_service(controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown_signal(),
        )
        .await;
    let _ = std::fs::remove_file(&path);
    served.context("the CSI gRPC server failed")
}

/// Binds `path` as a socket only its owner may use, replacing a stale one.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket's directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot replace the old socket {}", path.display()));
        }
    }
    // Created 0600 from the start: no moment in which others could connect.
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    bound.with_context(|| format!("cannot create the CSI socket {}", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
}

#[cfg(test)]
mod tests {
    use super::socket_path;

    #[test]
    fn endpoints_name_a_unix_socket() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").unwrap().to_str(),
            Some("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").unwrap().to_str(),
            Some("/run/csi.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:10000").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
    }
}
