//! Builds and runs a `sheep` node from its configuration.

use crate::cluster::ClusterView;
use crate::cluster::heartbeat::{self, HeartbeatConfig};
use crate::config::SheepConfig;
use crate::files::{self, VolumeFiles};
use crate::freeze::Freezer;
use crate::gateway::{Gateway, Replicas};
use crate::local::Local;
use crate::metrics::Metrics;
use crate::nbd;
use crate::peer::{self, PeerApi, Peers};
use crate::recovery::{Limits, Recovery};
use crate::rpc::{ClusterApi, MAX_MESSAGE, VolumeApi};
use crate::store::ObjectStore;
use anyhow::Context;
use sheepdog_api::v1::cluster_service_server::ClusterServiceServer;
use sheepdog_api::v1::peer_service_server::PeerServiceServer;
use sheepdog_api::v1::volume_service_server::VolumeServiceServer;
use sheepdog_model::{ClusterMap, NodeInfo};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

/// Runs the node until SIGTERM or SIGINT, then makes every write durable and returns.
pub async fn run(config: SheepConfig) -> anyhow::Result<()> {
    let dir = config.data_dir()?;
    crate::store::create_dir_durably(&dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let store = Arc::new(ObjectStore::open(&dir)?);
    let me = NodeInfo {
        id: config.node_id(),
        peer_addr: config.listen.to_string(),
        nbd_addr: config.nbd.to_string(),
        zone: config.zone.clone(),
        joined_epoch: 0,
        weight: match config.weight {
            Some(weight) => weight,
            None => capacity(&dir)?,
        },
    };
    // Alone, the node is its own map; in a cluster the coordinator's map arrives by heartbeat.
    let initial = match &config.coordinator {
        None => ClusterMap::new(
            1,
            vec![NodeInfo {
                joined_epoch: 1,
                ..me.clone()
            }],
        ),
        Some(_) => ClusterMap::new(0, vec![]),
    };
    let view = Arc::new(
        ClusterView::open(&dir, me.id.clone(), initial, config.coordinator.is_some())
            .context("cannot open the cluster map history")?,
    );
    let peers = Arc::new(Peers::default());
    let limits = Limits {
        concurrency: config.recovery_concurrency,
        bandwidth: config.recovery_bandwidth,
    };
    let recovery = Arc::new(Recovery::new(
        view.clone(),
        store.clone(),
        peers.clone(),
        limits,
    ));
    let local = Arc::new(Local::new(store.clone(), recovery.clone(), view.clone()));
    recovery.attach(local.clone());
    let replicas = Replicas::new(
        view.clone(),
        local.clone(),
        peers,
        config.min_copies,
        config.io_timeout,
    );
    let freezer = Arc::new(Freezer::default());
    let gateway = Arc::new(Gateway::new(
        replicas,
        config.copies,
        config.coordinator.as_deref(),
        freezer.clone(),
    ));

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
    let nbd_unix = bind_unix(&config.nbd_socket(&dir))?;
    tokio::spawn(recovery.clone().run());
    tokio::spawn(gateway.clone().retry_deferred_gc());
    if let Some(coordinator) = &config.coordinator {
        let heartbeat = HeartbeatConfig {
            coordinator: coordinator.clone(),
            interval: config.heartbeat_interval,
        };
        tokio::spawn(heartbeat::run(
            heartbeat,
            me.clone(),
            view.clone(),
            recovery.recovered_epoch(),
            store.clone(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    gateway.attachments().forget_previous_run().await;
    tokio::spawn(nbd::serve_tcp(nbd_tcp, gateway.clone(), metrics.clone()));
    tokio::spawn(nbd::serve_unix(nbd_unix, gateway.clone(), metrics.clone()));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node.id = %me.id,
        grpc = %config.listen,
        nbd = %config.nbd,
        nbd.socket = %config.nbd_socket(&dir).display(),
        coordinator = config.coordinator.as_deref().unwrap_or("none (stand-alone)"),
        weight = me.weight,
        epoch = view.epoch(),
        "sheep is serving"
    );

    let files = Arc::new(VolumeFiles::new(gateway.clone(), files::mountpoint(&dir)));
    let volumes = VolumeServiceServer::new(VolumeApi {
        gateway: gateway.clone(),
        files: files.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let cluster = ClusterServiceServer::new(ClusterApi {
        gateway: gateway.clone(),
        recovery: recovery.clone(),
    });
    let peer_api = Arc::new(PeerApi {
        view: view.clone(),
        local,
        freezer,
        thaw_delay: config.inject_thaw_delay,
    });
    let peer = PeerServiceServer::from_arc(peer_api.clone())
        .max_decoding_message_size(peer::MAX_MESSAGE)
        .max_encoding_message_size(peer::MAX_MESSAGE);
    let scrape = {
        let (metrics, view, store, recovery) = (
            metrics.clone(),
            view.clone(),
            store.clone(),
            recovery.clone(),
        );
        move || {
            refresh(&metrics, &view, &store, &recovery);
            metrics.encode()
        }
    };
    let routes = tonic::service::Routes::new(volumes)
        .add_service(cluster)
        .add_service(peer)
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(scrape())),
        );
    tonic::transport::Server::builder()
        .accept_http1(true)
        // A caller cut off by a partition never sends the reset of the request it gave up on:
        // the pings drop its connection, and with it the handlers still waiting for it (a
        // freeze queued behind writes in flight would otherwise hold new writes back).
        .http2_keepalive_interval(Some(peer::KEEP_ALIVE))
        .http2_keepalive_timeout(Some(peer::KEEP_ALIVE_TIMEOUT))
        .initial_stream_window_size(Some(peer::WINDOW))
        .initial_connection_window_size(Some(4 * peer::WINDOW))
        .add_routes(tonic::service::Routes::from(routes))
        .serve_with_incoming_shutdown(peer::listener::split(grpc, peer_api), shutdown_signal())
        .await
        .context("gRPC server failed")?;

    tracing::info!("stopping: making every write durable");
    files.unmount().await;
    store.flush()?;
    let _ = std::fs::remove_file(config.nbd_socket(&dir));
    Ok(())
}

/// Updates the gauges that are read from state rather than counted.
fn refresh(metrics: &Metrics, view: &ClusterView, store: &ObjectStore, recovery: &Recovery) {
    let epoch = view.current();
    metrics.epoch.set(epoch.epoch() as i64);
    metrics.nodes.set(epoch.map.nodes.len() as i64);
    metrics.lease_valid.set(i64::from(view.lease_valid()));
    if let Ok(usage) = store.usage() {
        metrics.objects.set(usage.objects as i64);
        metrics.stored_bytes.set(usage.bytes as i64);
    }
    let progress = recovery.progress();
    metrics.recovery_total.set(progress.total as i64);
    metrics.recovery_done.set(progress.done as i64);
    metrics.recovery_missing.set(progress.missing as i64);
    metrics.recovered_epoch.set(progress.recovered_epoch as i64);
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

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
