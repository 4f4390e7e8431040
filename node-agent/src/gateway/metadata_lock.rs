//! The lock that serializes volume metadata operations (create, delete, resize) across the
//! whole cluster: a named lock on the coordinator, held with a time limit so a gateway that
//! dies holding it blocks nobody for long. A node without a coordinator is its own cluster and
//! needs only its local lock.

use super::{GatewayError, Result};
use sheepdog_api::v1::coordinator_service_client::CoordinatorServiceClient;
use sheepdog_api::v1::{LockRequest, RetireVidsRequest, SealVidsRequest, UnlockRequest};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

const NAME: &str = "volumes";
/// How long the lock is held at most if the holder dies.
const TTL: Duration = Duration::from_secs(30);
/// How long a metadata operation waits for the lock.
const WAIT: Duration = Duration::from_secs(30);

pub struct MetadataLock {
    local: tokio::sync::Mutex<()>,
    coordinator: Option<CoordinatorServiceClient<Channel>>,
    holder: String,
}

/// Held while a metadata operation runs; release it with [`MetadataLock::release`].
pub struct Held<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    /// Vids retired in the cluster when the lock was granted.
    pub retired: Vec<u32>,
    /// Vids sealed in the cluster when the lock was granted.
    pub sealed: Vec<u32>,
}

impl MetadataLock {
    pub fn new(coordinator: Option<&str>, holder: &str) -> Self {
        let coordinator = coordinator
            .and_then(|addr| Endpoint::from_shared(format!("http://{addr}")).ok())
            .map(|e| {
                CoordinatorServiceClient::new(
                    e.connect_timeout(Duration::from_secs(1))
                        .timeout(Duration::from_secs(5))
                        .connect_lazy(),
                )
            });
        Self {
            local: tokio::sync::Mutex::new(()),
            coordinator,
            holder: holder.to_owned(),
        }
    }

    /// Takes the lock on this node, then cluster-wide.
    pub async fn acquire(&self) -> Result<Held<'_>> {
        let local = self.local.lock().await;
        let Some(client) = &self.coordinator else {
            return Ok(Held {
                _local: local,
                retired: Vec::new(),
                sealed: Vec::new(),
            });
        };
        let deadline = Instant::now() + WAIT;
        let mut last = String::from("the coordinator did not answer");
        while Instant::now() < deadline {
            let req = LockRequest {
                name: NAME.into(),
                holder: self.holder.clone(),
                ttl_ms: TTL.as_millis() as u64,
            };
            match client.clone().lock(req).await {
                Ok(resp) if resp.get_ref().granted => {
                    let resp = resp.into_inner();
                    return Ok(Held {
                        _local: local,
                        retired: resp.retired_vids,
                        sealed: resp.sealed_vids,
                    });
                }
                Ok(resp) => last = format!("node {} holds it", resp.into_inner().holder),
                Err(status) => last = format!("the coordinator: {}", status.message()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(GatewayError::MetadataBusy { reason: last })
    }

    /// Retires `vids` for good on the coordinator (see the `RetireVids` RPC); durable when
    /// it returns. Part of deleting, which runs under this lock.
    pub async fn retire(&self, vids: &[u32]) -> Result<()> {
        let Some(client) = &self.coordinator else {
            return Ok(());
        };
        let req = RetireVidsRequest {
            vids: vids.to_vec(),
        };
        let done = client.clone().retire_vids(req).await.map(drop);
        done.map_err(|status| coordinator_failed("retiring the vids of deleted volumes", &status))
    }

    /// Seals `vids` for good on the coordinator (see the `SealVids` RPC); durable when it
    /// returns. Part of a snapshot, rollback or delete, which run under this lock.
    pub async fn seal(&self, vids: &[u32]) -> Result<()> {
        let Some(client) = &self.coordinator else {
            return Ok(());
        };
        let req = SealVidsRequest {
            vids: vids.to_vec(),
        };
        let done = client.clone().seal_vids(req).await.map(drop);
        done.map_err(|status| coordinator_failed("sealing the vids of replaced volumes", &status))
    }

    /// Releases the cluster-wide lock (the local one goes with `held`).
    pub async fn release(&self, held: Held<'_>) {
        if let Some(client) = &self.coordinator {
            let req = UnlockRequest {
                name: NAME.into(),
                holder: self.holder.clone(),
            };
            if let Err(status) = client.clone().unlock(req).await {
                tracing::warn!(error = %status.message(), "cannot release the metadata lock; it expires by itself");
            }
        }
        drop(held);
    }
}

fn coordinator_failed(what: &str, status: &tonic::Status) -> GatewayError {
    GatewayError::TimedOut {
        what: what.into(),
        reason: format!("the coordinator: {}", status.message()),
    }
}
