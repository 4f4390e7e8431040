//! The lock that serializes volume metadata operations (create, delete, resize) across the
//! whole cluster: a named lock on the coordinator, held with a time limit so a gateway that
//! dies holding it blocks nobody for long, and renewed every third of it while the operation
//! runs, so a long one (a delete freeing many objects) keeps it. An operation checks it still
//! holds the lock before each commit point ([`MetadataLock::check`]) and stops if it lost it.
//! Each grant carries a *fencing token*, newer than any before; the operation's commit writes
//! carry it ([`MetadataLock::token`]), and a node that has seen a newer one (in a write, or
//! from the coordinator's heartbeat) refuses them. So a holder that stalled past the time
//! limit between its check and its write (a paused process, a long GC) cannot commit over the
//! gateway that took the lock after it.
//! A node without a coordinator is its own cluster and needs only its local lock.

use super::{GatewayError, Result};
use sheepdog_api::v1::coordinator_service_client::CoordinatorServiceClient;
use sheepdog_api::v1::{LockRequest, RetireVidsRequest, SealVidsRequest, UnlockRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const NAME: &str = "volumes";
/// How long the lock is held at most if the holder dies.
const TTL: Duration = Duration::from_secs(30);
/// How long a metadata operation waits for the lock.
const WAIT: Duration = Duration::from_secs(30);

pub struct MetadataLock {
    local: tokio::sync::Mutex<()>,
    coordinator: Option<CoordinatorServiceClient<Channel>>,
    holder: String,
    /// Set by the renewal of the lock held now when it could not keep it.
    lost: Arc<AtomicBool>,
    /// The fencing token of the grant held now (0: none, or a node without a coordinator).
    token: AtomicU32,
    /// How long the lock is held at most if this holder dies.
    ttl: Duration,
}

/// Held while a metadata operation runs; release it with [`MetadataLock::release`].
pub struct Held<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Vids retired in the cluster when the lock was granted.
    pub retired: Vec<u32>,
    /// Vids sealed in the cluster when the lock was granted.
    pub sealed: Vec<u32>,
}

/// Dropped without a release (the operation was cancelled: its client went away), the lock's
/// renewals stop, so it expires by itself.
impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(renewal) = &self.renewal {
            renewal.abort();
        }
    }
}

impl MetadataLock {
    pub fn new(coordinator: Option<CoordinatorServiceClient<Channel>>, holder: &str) -> Self {
        Self {
            local: tokio::sync::Mutex::new(()),
            coordinator,
            holder: holder.to_owned(),
            lost: Arc::default(),
            token: AtomicU32::new(0),
            ttl: TTL,
        }
    }

    /// Fails if the lock this operation holds was lost (its renewal failed for longer than
    /// the time limit, or another gateway took it): the operation must not commit.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(GatewayError::MetadataBusy {
                reason: "this gateway lost the metadata lock while the operation ran".into(),
            });
        }
        Ok(())
    }

    /// Takes the lock on this node, then cluster-wide.
    pub async fn acquire(&self) -> Result<Held<'_>> {
        let local = self.local.lock().await;
        let Some(client) = &self.coordinator else {
            return Ok(Held {
                _local: local,
                renewal: None,
                retired: Vec::new(),
                sealed: Vec::new(),
            });
        };
        let deadline = Instant::now() + WAIT;
        let mut last = String::from("the coordinator did not answer");
        while Instant::now() < deadline {
            match client.clone().lock(self.request()).await {
                Ok(resp) if resp.get_ref().granted => {
                    let resp = resp.into_inner();
                    self.lost.store(false, Ordering::Release);
                    self.token.store(resp.token, Ordering::Release);
                    let renewing = LockRequest {
                        renewal: true,
                        token: resp.token,
                        ..self.request()
                    };
                    let lost = self.lost.clone();
                    let renewal = tokio::spawn(renew(client.clone(), renewing, self.ttl, lost));
                    return Ok(Held {
                        _local: local,
                        renewal: Some(renewal),
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
            token: self.token(),
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
            token: self.token(),
        };
        let done = client.clone().seal_vids(req).await.map(drop);
        done.map_err(|status| coordinator_failed("sealing the vids of replaced volumes", &status))
    }

    /// The fencing token for the commit writes of the operation holding the lock.
    pub fn token(&self) -> u32 {
        self.token.load(Ordering::Acquire)
    }

    fn request(&self) -> LockRequest {
        LockRequest {
            name: NAME.into(),
            holder: self.holder.clone(),
            ttl_ms: self.ttl.as_millis() as u64,
            shared: false,
            fenced: true,
            renewal: false,
            token: 0,
        }
    }

    /// Releases the cluster-wide lock (the local one goes with `held`).
    pub async fn release(&self, held: Held<'_>) {
        self.token.store(0, Ordering::Release);
        if let Some(renewal) = &held.renewal {
            renewal.abort();
        }
        if let Some(client) = &self.coordinator {
            let req = UnlockRequest {
                name: NAME.into(),
                holder: self.holder.clone(),
                holder_prefix: false,
            };
            if let Err(status) = client.clone().unlock(req).await {
                tracing::warn!(error = %status.message(), "cannot release the metadata lock; it expires by itself");
            }
        }
        drop(held);
    }
}

/// A client of the coordinator at `addr`, connected when first used.
pub fn coordinator_client(addr: Option<&str>) -> Option<CoordinatorServiceClient<Channel>> {
    let endpoint = crate::peer::endpoint(addr?).ok()?;
    Some(CoordinatorServiceClient::new(
        endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    ))
}

/// Renews the lock every third of its time limit until aborted; sets `lost` when another
/// holder has it or no renewal succeeded for a whole time limit.
async fn renew(
    mut client: CoordinatorServiceClient<Channel>,
    req: LockRequest,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match client.lock(req.clone()).await {
            Ok(resp)
                if resp.get_ref().granted && [0, req.token].contains(&resp.get_ref().token) =>
            {
                renewed = Instant::now()
            }
            Ok(resp) if resp.get_ref().granted => {
                // Granted anew with a newer token: the lock had expired, and the operation's
                // commits would be fenced anyway.
                tracing::error!("the metadata lock expired while the operation ran; it stops");
                lost.store(true, Ordering::Release);
                return;
            }
            Ok(resp) => {
                tracing::error!(holder = %resp.into_inner().holder, "the metadata lock was taken by another gateway");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(status) if renewed.elapsed() >= ttl => {
                tracing::error!(error = %status.message(), "cannot renew the metadata lock; it has expired");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot renew the metadata lock yet")
            }
        }
    }
}

fn coordinator_failed(what: &str, status: &tonic::Status) -> GatewayError {
    GatewayError::TimedOut {
        what: what.into(),
        reason: format!("the coordinator: {}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::testing::{Running, coordinator, free_port, ran_before};
    use sheepdog_api::v1::LockResponse;

    /// A short time limit (the coordinator grants 1 s at least), long enough for a loaded
    /// machine: renewals every second, a restart window of 1.5 s.
    const SHORT: Duration = Duration::from_secs(3);

    fn lock_for(running: &Running, holder: &str) -> MetadataLock {
        MetadataLock {
            ttl: SHORT,
            ..MetadataLock::new(Some(running.client.clone()), holder)
        }
    }

    /// What the coordinator answers another gateway asking for the lock now.
    async fn other_asks(running: &Running) -> LockResponse {
        let req = LockRequest {
            holder: "other".into(),
            ..lock_for(running, "other").request()
        };
        running.client.clone().lock(req).await.unwrap().into_inner()
    }

    #[tokio::test]
    async fn a_long_operation_keeps_the_metadata_lock_past_its_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let running = coordinator(dir.path(), free_port()).await;
        let lock = lock_for(&running, "gateway-a");
        let held = lock.acquire().await.unwrap();
        tokio::time::sleep(SHORT * 3).await;
        lock.check().expect("the renewed lock is still held");
        let other = other_asks(&running).await;
        assert!(
            !other.granted,
            "another gateway got the lock three time limits in"
        );
        assert_eq!(other.holder, "gateway-a");
        lock.release(held).await;
        assert!(other_asks(&running).await.granted, "released, it is free");
        running.task.abort();
    }

    /// A cancelled operation drops its hold without a release; the gateway's next operation
    /// asks while the old hold is still listed. It must get a token of its own, newer than the
    /// old one (it got 0, which fences nothing and made every node refuse its freezes).
    #[tokio::test]
    async fn a_holder_asking_again_before_its_old_hold_expired_gets_a_newer_token() {
        let dir = tempfile::tempdir().unwrap();
        let running = coordinator(dir.path(), free_port()).await;
        let lock = lock_for(&running, "gateway-a");
        let held = lock.acquire().await.unwrap();
        let first = lock.token();
        assert!(first > 0);
        drop(held);
        let again = lock.acquire().await.unwrap();
        assert!(
            lock.token() > first,
            "token {} after {first}: the second operation needs a newer one",
            lock.token()
        );
        lock.release(again).await;
        running.task.abort();
    }

    #[tokio::test]
    async fn a_holder_whose_lock_was_taken_stops_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let running = coordinator(dir.path(), free_port()).await;
        let lock = lock_for(&running, "gateway-a");
        let held = lock.acquire().await.unwrap();
        let first = lock.token();
        // The lock expires under it (as if its renewals had stalled) and another takes it.
        let expire = UnlockRequest {
            name: NAME.into(),
            holder: "gateway-a".into(),
            holder_prefix: false,
        };
        running.client.clone().unlock(expire).await.unwrap();
        let other = other_asks(&running).await;
        assert!(other.granted);
        assert!(
            other.token > first,
            "the new holder's token fences the old one"
        );
        for refused in [lock.seal(&[7]).await, lock.retire(&[7]).await] {
            let refused = refused.expect_err("the coordinator refuses the old holder's token");
            assert!(refused.to_string().contains("fencing token"), "{refused}");
        }
        tokio::time::sleep(SHORT).await;
        let refused = lock.check().expect_err("the old holder must not commit");
        assert!(
            refused.to_string().contains("lost the metadata lock"),
            "{refused}"
        );
        lock.release(held).await;
        running.task.abort();
    }

    #[tokio::test]
    async fn the_metadata_lock_and_its_token_survive_a_coordinator_restart() {
        let dir = tempfile::tempdir().unwrap();
        // A coordinator with maps of an earlier run is a restarted one.
        ran_before(dir.path());
        let listen = free_port();
        let running = coordinator(dir.path(), listen).await;
        tokio::time::sleep(SHORT).await; // past the restart window of this first run
        let lock = lock_for(&running, "gateway-a");
        let held = lock.acquire().await.unwrap();
        running.task.abort();
        let _ = running.task.await;
        let running = coordinator(dir.path(), listen).await;
        let early = other_asks(&running).await;
        assert!(!early.granted && early.restarting, "{early:?}");
        tokio::time::sleep(SHORT * 2).await;
        lock.check()
            .expect("the holder renewed its lock on the restarted coordinator");
        // It kept its token, and the token is still the newest: its commits go through.
        lock.seal(&[])
            .await
            .expect("the renewed holder's token is still admitted");
        let other = other_asks(&running).await;
        assert!(
            !other.granted,
            "another gateway got a lock that was renewed"
        );
        assert_eq!(other.holder, "gateway-a");
        lock.release(held).await;
        running.task.abort();
    }
}
