//! The heartbeat: tells the coordinator this node is alive and learns the current map.

use super::ClusterView;
use sheepdog_api::v1::coordinator_service_client::CoordinatorServiceClient;
use sheepdog_api::v1::{GetMapAtRequest, HeartbeatRequest, MapNode};
use sheepdog_model::{ClusterMap, NodeInfo};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Heartbeat settings.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub coordinator: String,
    pub interval: Duration,
}

/// Sends heartbeats forever. `recovered` holds the newest fully recovered epoch. Once the
/// store has failed an fsync the node stops: its lease runs out, so it serves nothing, and the
/// coordinator removes it, so its copies are re-created elsewhere.
pub async fn run(
    config: HeartbeatConfig,
    me: NodeInfo,
    view: Arc<ClusterView>,
    recovered: Arc<AtomicU64>,
    store: Arc<crate::store::ObjectStore>,
) {
    let endpoint = match crate::peer::endpoint(&config.coordinator) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2)),
        Err(e) => {
            tracing::error!(coordinator = %config.coordinator, error = %e, "invalid coordinator address");
            return;
        }
    };
    let mut client = CoordinatorServiceClient::new(endpoint.connect_lazy());
    let mut failures = 0u32;
    loop {
        if store.has_failed() {
            tracing::error!(
                "the data disk failed: no more heartbeats, the cluster removes this node"
            );
            return;
        }
        let sent = Instant::now();
        let req = HeartbeatRequest {
            node: Some(MapNode::from(&me)),
            recovered_epoch: recovered.load(Ordering::Acquire),
            epoch: view.epoch(),
            fence: view.fence(),
        };
        match client.heartbeat(req).await {
            Ok(resp) => {
                if failures > 0 {
                    tracing::info!(coordinator = %config.coordinator, "coordinator reachable again");
                }
                failures = 0;
                let resp = resp.into_inner();
                let timeout = Duration::from_millis(resp.failure_timeout_ms);
                // Before the lease: a node cut off during a snapshot must know the old vid is
                // sealed before it serves again. Before the map: recovery of a new epoch must
                // already skip retired vids.
                view.sealed.add(&resp.sealed_vids);
                let _ = view.admit_fence(resp.fence);
                view.retired.add(&resp.retired_vids);
                // Stop serving well before the others give up on this node.
                view.renew_lease(sent, timeout.mul_f64(0.6));
                if let Some(map) = resp.map {
                    let map = ClusterMap::from(map);
                    let epoch = map.epoch;
                    learn_history(&mut client, &view, epoch).await;
                    view.adopt(map);
                    view.set_all_recovered(epoch, resp.all_recovered);
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(coordinator = %config.coordinator, error = %e.message(), failures, "heartbeat failed");
                }
            }
        }
        tokio::time::sleep(config.interval.saturating_sub(sent.elapsed())).await;
    }
}

/// Fetches the maps between this node's current epoch and `newest`, for recovery.
async fn learn_history(
    client: &mut CoordinatorServiceClient<Channel>,
    view: &ClusterView,
    newest: u64,
) {
    let current = view.epoch();
    for epoch in (current + 1)..newest {
        if view.map_at(epoch).is_some() {
            continue;
        }
        if let Ok(map) = client.get_map_at(GetMapAtRequest { epoch }).await {
            view.remember(ClusterMap::from(map.into_inner()));
        }
    }
}
