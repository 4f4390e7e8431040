//! Attachments: who may write a volume. A client that opens a volume for writing attaches it:
//! exclusively by default, so a second writer anywhere in the cluster is refused while the
//! first is attached; or *shared*, by every writer that asks for it (a live migration's source
//! and target, a cluster file system). Reading beside a writer needs no attachment.
//!
//! A client is known by its address and the gateway it uses: NBD carries no other identity.
//! Its connections share one attachment (`nbdcopy` and other multi-connection clients open
//! several), released when the last one closes. So two clients on one host using the same
//! gateway are not told apart: the check is between hosts, or between gateways.
//!
//! An attachment is a lease on the coordinator (`attach/NAME`), renewed every third of
//! [`TTL`] while the client is connected and released when it leaves; a gateway that dies
//! holding one blocks the volume for at most [`TTL`], and a restarted node drops its previous
//! run's leases at start ([`Attachments::forget_previous_run`]). If the lease is found held by
//! someone else at a renewal (it expired while the coordinator could not be reached, and
//! another client attached), the attachment is lost and its client's writes are refused. If
//! the coordinator cannot be reached, attached clients go on writing: the lease guards
//! against a second writer, it is not needed to write. A node without a coordinator keeps its
//! leases itself.

use super::{GatewayError, Result};
use crate::leases::Leases;
use sheepdog_api::v1::coordinator_service_client::CoordinatorServiceClient;
use sheepdog_api::v1::{LockRequest, UnlockRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// How long an attachment outlives a gateway that died holding it.
pub const TTL: Duration = Duration::from_secs(15);
/// How long an attach waits for a lease another client holds: a client that just left
/// releases it a moment after its connection closed.
const WAIT: Duration = Duration::from_secs(3);
/// How long an attach waits for a coordinator that just restarted to let the holders of its
/// lost leases renew them (half their time limit).
const RESTART_WAIT: Duration = Duration::from_secs(10);

/// How a client opens a volume: the export name `NAME`, `NAME/shared` or `NAME/readonly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The only writer (the default).
    Exclusive,
    /// One of several writers that all opened it shared.
    Shared,
    /// No writes.
    ReadOnly,
}

impl Access {
    /// Splits an export name into the volume (or `NAME@TAG` snapshot) and the access asked for.
    pub fn parse(export: &str) -> (&str, Access) {
        match export.rsplit_once('/') {
            Some((name, "shared")) => (name, Access::Shared),
            Some((name, "readonly")) => (name, Access::ReadOnly),
            _ => (export, Access::Exclusive),
        }
    }
}

pub struct Attachments {
    coordinator: Option<CoordinatorServiceClient<Channel>>,
    /// A standalone node's leases.
    local: Mutex<Leases>,
    /// This node's holder prefix, `NODE/`.
    node: String,
    /// The attachments held here, by lease name and holder.
    held: Mutex<HashMap<(String, String), Held>>,
    /// Orders this gateway's lock and unlock requests, so that a client attaching again
    /// right after its last connection closed is not undone by that connection's release.
    ordered: tokio::sync::Mutex<()>,
}

/// One client's attachment of one volume, shared by its connections.
struct Held {
    connections: usize,
    lost: Arc<AtomicBool>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

/// A connection's hold on a volume; the attachment ends when its client's last one drops.
pub struct Attachment {
    name: String,
    key: (String, String),
    lost: Arc<AtomicBool>,
    owner: Arc<Attachments>,
}

impl Attachment {
    /// Fails when the lease was lost to another client: no more writes.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(GatewayError::Detached {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        {
            let mut held = self.owner.held.lock().unwrap();
            let Some(entry) = held.get_mut(&self.key) else {
                return;
            };
            entry.connections -= 1;
            if entry.connections > 0 {
                return;
            }
        }
        let (owner, key) = (self.owner.clone(), self.key.clone());
        if owner.coordinator.is_none() {
            if owner.take_unused(&key) {
                owner.local.lock().unwrap().release(&key.0, &key.1);
            }
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { owner.release(key).await });
        }
    }
}

fn lease_name(volume: &str) -> String {
    format!("attach/{volume}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Attachments {
    pub fn new(coordinator: Option<CoordinatorServiceClient<Channel>>, node: &str) -> Arc<Self> {
        Arc::new(Self {
            coordinator,
            local: Mutex::default(),
            node: format!("{node}/"),
            held: Mutex::default(),
            ordered: tokio::sync::Mutex::new(()),
        })
    }

    /// Releases every attachment an earlier run of this node held (it was killed, or its
    /// machine lost power, with clients attached), so they can attach again at once.
    pub async fn forget_previous_run(&self) {
        let Some(client) = &self.coordinator else {
            return;
        };
        let req = UnlockRequest {
            name: String::new(),
            holder: self.node.clone(),
            holder_prefix: true,
        };
        let done = tokio::time::timeout(Duration::from_secs(3), client.clone().unlock(req)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(
                "cannot release the attachments of this node's previous run; they expire within {TTL:?}"
            );
        }
    }

    /// Forgets `key`'s attachment if no connection uses it; whether it did.
    fn take_unused(&self, key: &(String, String)) -> bool {
        let mut held = self.held.lock().unwrap();
        if held.get(key).is_none_or(|e| e.connections != 0) {
            return false;
        }
        if let Some(renewal) = held.remove(key).and_then(|e| e.renewal) {
            renewal.abort();
        }
        true
    }

    /// Releases `key`'s lease on the coordinator, unless a connection took it again.
    async fn release(&self, key: (String, String)) {
        let _ordered = self.ordered.lock().await;
        let Some(client) = &self.coordinator else {
            return;
        };
        if !self.take_unused(&key) {
            return;
        }
        let (name, holder) = key;
        let req = UnlockRequest {
            name,
            holder,
            holder_prefix: false,
        };
        if let Err(status) = client.clone().unlock(req).await {
            tracing::warn!(error = %status.message(), "cannot release a volume attachment; it expires by itself");
        }
    }

    /// Attaches volume `name` for `client` (who it is: its address, or its process on the unix
    /// socket), exclusively or shared.
    pub async fn attach(
        self: &Arc<Self>,
        name: &str,
        client: &str,
        shared: bool,
    ) -> Result<Attachment> {
        let mode = if shared { "shared" } else { "exclusive" };
        let holder = format!("{}{client}/{mode}", self.node);
        let key = (lease_name(name), holder.clone());
        let req = LockRequest {
            name: lease_name(name),
            holder: holder.clone(),
            ttl_ms: TTL.as_millis() as u64,
            shared,
            fenced: false,
            renewal: false,
            token: 0,
        };
        let attachment = |lost: Arc<AtomicBool>| Attachment {
            name: name.to_owned(),
            key: key.clone(),
            lost,
            owner: self.clone(),
        };
        let started = Instant::now();
        let mut deadline = started + WAIT;
        loop {
            let answer = {
                let _ordered = self.ordered.lock().await;
                if let Some(entry) = self.held.lock().unwrap().get_mut(&key) {
                    // The client's other connection, or its last one a moment ago.
                    entry.connections += 1;
                    return Ok(attachment(entry.lost.clone()));
                }
                let answer = match &self.coordinator {
                    // A standalone node renews nothing: its leases last while they are held.
                    None => self.local.lock().unwrap().acquire(
                        &req.name,
                        &holder,
                        shared,
                        now_ms(),
                        u64::MAX,
                    ),
                    Some(client) => match client.clone().lock(req.clone()).await {
                        Ok(resp) if resp.get_ref().granted => Ok(true),
                        Ok(resp) if resp.get_ref().restarting => {
                            deadline = deadline.max(started + RESTART_WAIT);
                            Err(resp.into_inner().holder)
                        }
                        Ok(resp) => Err(resp.into_inner().holder),
                        Err(status) => {
                            return Err(GatewayError::TimedOut {
                                what: format!("attaching volume {name:?}"),
                                reason: format!("the coordinator: {}", status.message()),
                            });
                        }
                    },
                };
                if answer.is_ok() {
                    let lost = Arc::new(AtomicBool::new(false));
                    let renewing = LockRequest {
                        renewal: true,
                        ..req.clone()
                    };
                    let renewal = self
                        .coordinator
                        .clone()
                        .map(|client| tokio::spawn(renew(client, renewing, lost.clone())));
                    let entry = Held {
                        connections: 1,
                        lost: lost.clone(),
                        renewal,
                    };
                    self.held.lock().unwrap().insert(key.clone(), entry);
                    return Ok(attachment(lost));
                }
                answer
            };
            match answer {
                Err(holder) if Instant::now() >= deadline => {
                    return Err(GatewayError::Attached {
                        name: name.to_owned(),
                        holder,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Renews an attachment until aborted; marks it lost if another client holds the lease.
async fn renew(
    mut client: CoordinatorServiceClient<Channel>,
    req: LockRequest,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(TTL / 3).await;
        match client.lock(req.clone()).await {
            Ok(resp) if resp.get_ref().granted => {}
            Ok(resp) => {
                tracing::error!(lease = %req.name, holder = %resp.into_inner().holder, "a volume attachment expired and another client attached the volume: this client's writes are refused from now on");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(status) => {
                tracing::warn!(lease = %req.name, error = %status.message(), "cannot renew a volume attachment; the client goes on writing")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_say_how_a_volume_is_opened() {
        assert_eq!(Access::parse("vm1"), ("vm1", Access::Exclusive));
        assert_eq!(Access::parse("vm1/shared"), ("vm1", Access::Shared));
        assert_eq!(Access::parse("vm1@t/readonly"), ("vm1@t", Access::ReadOnly));
        assert_eq!(Access::parse("vm1/other"), ("vm1/other", Access::Exclusive));
    }

    #[tokio::test]
    async fn a_standalone_node_refuses_a_second_exclusive_writer() {
        let attachments = Attachments::new(None, "n0");
        let first = attachments.attach("vm1", "10.0.0.1", false).await.unwrap();
        let second_connection = attachments.attach("vm1", "10.0.0.1", false).await.unwrap();
        let err = attachments
            .attach("vm1", "10.0.0.2", false)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("/shared"), "{err}");
        assert!(attachments.attach("vm1", "10.0.0.2", true).await.is_err());
        drop(first);
        assert!(
            attachments.attach("vm1", "10.0.0.2", false).await.is_err(),
            "the client's other connection keeps the attachment"
        );
        drop(second_connection);
        let a = attachments.attach("vm1", "10.0.0.2", true).await.unwrap();
        let _b = attachments.attach("vm1", "10.0.0.3", true).await.unwrap();
        assert!(attachments.attach("vm1", "10.0.0.4", false).await.is_err());
        a.check().unwrap();
    }

    use crate::coordinator::testing::{Running, coordinator, free_port, ran_before};

    /// What the coordinator answers another node's client asking for `vm1` now.
    async fn other_asks(running: &Running) -> sheepdog_api::v1::LockResponse {
        let req = LockRequest {
            name: lease_name("vm1"),
            holder: "n9/10.0.0.9/exclusive".into(),
            ttl_ms: TTL.as_millis() as u64,
            shared: false,
            fenced: false,
            renewal: false,
            token: 0,
        };
        running.client.clone().lock(req).await.unwrap().into_inner()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_client_reconnecting_while_its_last_connection_is_released_stays_attached() {
        let dir = tempfile::tempdir().unwrap();
        let running = coordinator(dir.path(), free_port()).await;
        let attachments = Attachments::new(Some(running.client.clone()), "n0");
        let mut connection = attachments.attach("vm1", "10.0.0.1", false).await.unwrap();
        for round in 0..200 {
            // The old connection closes and its release starts; the client is back at once,
            // or a moment later.
            drop(connection);
            for _ in 0..round % 8 {
                tokio::task::yield_now().await;
            }
            connection = attachments.attach("vm1", "10.0.0.1", false).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let other = other_asks(&running).await;
        assert!(
            !other.granted,
            "a release undid the attachment of the client's new connection"
        );
        assert_eq!(other.holder, "n0/10.0.0.1/exclusive");
        connection.check().unwrap();
        drop(connection);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(other_asks(&running).await.granted, "released at the end");
        running.task.abort();
    }

    #[tokio::test]
    async fn an_attachment_outlives_a_coordinator_restart() {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_port();
        let running = coordinator(dir.path(), listen).await;
        let attachments = Attachments::new(Some(running.client.clone()), "n0");
        let connection = attachments.attach("vm1", "10.0.0.1", false).await.unwrap();
        running.task.abort();
        let _ = running.task.await;
        ran_before(dir.path());
        let running = coordinator(dir.path(), listen).await;
        let early = other_asks(&running).await;
        assert!(!early.granted && early.restarting, "{early:?}");
        // The holder renews every third of the time limit, before the window (half of it)
        // closes; past the window, the lease is still the holder's.
        tokio::time::sleep(TTL / 2 + Duration::from_millis(500)).await;
        let other = other_asks(&running).await;
        assert!(
            !other.granted,
            "a second writer attached after the coordinator restarted"
        );
        assert_eq!(other.holder, "n0/10.0.0.1/exclusive");
        connection.check().unwrap();
        running.task.abort();
    }

    #[tokio::test]
    async fn an_attachment_outlives_a_coordinator_that_lost_its_directory() {
        let listen = free_port();
        let first_dir = tempfile::tempdir().unwrap();
        let running = coordinator(first_dir.path(), listen).await;
        let attachments = Attachments::new(Some(running.client.clone()), "n0");
        let connection = attachments.attach("vm1", "10.0.0.1", false).await.unwrap();
        running.task.abort();
        let _ = running.task.await;
        // Its directory is gone: it starts empty, and a node tells it of epoch 3.
        let empty = tempfile::tempdir().unwrap();
        let running = coordinator(empty.path(), listen).await;
        let node = sheepdog_api::v1::MapNode {
            id: "n1".into(),
            peer_addr: "127.0.0.1:1".into(),
            nbd_addr: "127.0.0.1:2".into(),
            zone: "default".into(),
            weight: 1 << 30,
            joined_epoch: 1,
        };
        let heartbeat = sheepdog_api::v1::HeartbeatRequest {
            node: Some(node),
            recovered_epoch: 3,
            epoch: 3,
            fence: 0,
        };
        running.client.clone().heartbeat(heartbeat).await.unwrap();
        let early = other_asks(&running).await;
        assert!(!early.granted && early.restarting, "{early:?}");
        tokio::time::sleep(TTL / 2 + Duration::from_secs(2)).await;
        let other = other_asks(&running).await;
        assert!(
            !other.granted,
            "a second writer attached after the coordinator lost its directory"
        );
        assert_eq!(other.holder, "n0/10.0.0.1/exclusive");
        connection.check().unwrap();
        running.task.abort();
    }
}
