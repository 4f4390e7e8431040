//! Builds and runs a `sheep` node from its configuration.

use crate::config::SheepConfig;
use crate::gateway::{Gateway, Replicas};
use crate::nbd;
use crate::rpc::{ClusterApi, MAX_MESSAGE, VolumeApi};
use crate::store::ObjectStore;
use anyhow::Context;
use sheepdog_api::v1::cluster_service_server::ClusterServiceServer;
use sheepdog_api::v1::volume_service_server::VolumeServiceServer;
use sheepdog_model::{ClusterMap, NodeInfo};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

/// Runs the node until SIGTERM or SIGINT, then makes every write durable and returns.
pub async fn run(config: SheepConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("cannot create the data directory {}", config.dir.display()))?;
    let store = Arc::new(ObjectStore::open(&config.dir)?);
    let me = NodeInfo {
        id: config.node_id(),
        peer_addr: config.listen.to_string(),
        nbd_addr: config.nbd.to_string(),
        zone: config.zone.clone(),
        weight: match config.weight {
            Some(weight) => weight,
            None => capacity(&config.dir)?,
        },
    };
    let map = ClusterMap::new(1, vec![me.clone()]);
    let replicas = Replicas::new(me.id.clone(), store.clone(), map);
    let gateway = Arc::new(Gateway::new(replicas, config.copies).await?);

    let grpc = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for gRPC: is another sheep using it? choose another with --listen",
            config.listen
        )
    })?;
    let nbd_tcp = TcpListener::bind(config.nbd).await.with_context(|| {
        format!(
            "cannot listen on {} for NBD: is another server using it? choose another with --nbd",
            config.nbd
        )
    })?;
    let nbd_unix = bind_unix(&config.nbd_socket())?;
    tokio::spawn(nbd::serve_tcp(nbd_tcp, gateway.clone()));
    tokio::spawn(nbd::serve_unix(nbd_unix, gateway.clone()));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node.id = %me.id,
        grpc = %config.listen,
        nbd = %config.nbd,
        nbd.socket = %config.nbd_socket().display(),
        weight = me.weight,
        volumes = gateway.inodes().len(),
        "sheep is serving"
    );

    let volumes = VolumeServiceServer::new(VolumeApi {
        gateway: gateway.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let cluster = ClusterServiceServer::new(ClusterApi {
        gateway: gateway.clone(),
    });
    tonic::transport::Server::builder()
        .add_service(volumes)
        .add_service(cluster)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            shutdown_signal(),
        )
        .await
        .context("gRPC server failed")?;

    tracing::info!("stopping: making every write durable");
    store.flush()?;
    let _ = std::fs::remove_file(config.nbd_socket());
    Ok(())
}

/// Binds the NBD unix socket with owner and group access only.
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot replace the old socket {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the NBD socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot restrict the NBD socket {}", path.display()))?;
    Ok(listener)
}

/// Capacity of the file system holding `dir`, in bytes.
fn capacity(dir: &Path) -> anyhow::Result<u64> {
    let stat = rustix::fs::statvfs(dir)
        .with_context(|| format!("cannot measure the disk of {}", dir.display()))?;
    Ok(stat.f_blocks * stat.f_frsize)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
