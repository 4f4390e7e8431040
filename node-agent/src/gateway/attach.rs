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
            if let Some(renewal) = held.remove(&self.key).and_then(|e| e.renewal) {
                renewal.abort();
            }
        }
        let (name, holder) = self.key.clone();
        let Some(client) = self.owner.coordinator.clone() else {
            self.owner.local.lock().unwrap().release(&name, &holder);
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let req = UnlockRequest {
                    name,
                    holder,
                    holder_prefix: false,
                };
                if let Err(status) = client.clone().unlock(req).await {
                    tracing::warn!(error = %status.message(), "cannot release a volume attachment; it expires by itself");
                }
            });
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

    /// Attaches volume `name` for `client` (its address), exclusively or shared.
    pub async fn attach(
        self: &Arc<Self>,
        name: &str,
        client: &str,
        shared: bool,
    ) -> Result<Attachment> {
        let mode = if shared { "shared" } else { "exclusive" };
        let holder = format!("{}{client}/{mode}", self.node);
        let key = (lease_name(name), holder.clone());
        if let Some(entry) = self.held.lock().unwrap().get_mut(&key) {
            entry.connections += 1;
            return Ok(Attachment {
                name: name.to_owned(),
                key,
                lost: entry.lost.clone(),
                owner: self.clone(),
            });
        }
        let req = LockRequest {
            name: lease_name(name),
            holder: holder.clone(),
            ttl_ms: TTL.as_millis() as u64,
            shared,
            fenced: false,
        };
        let deadline = Instant::now() + WAIT;
        let other = loop {
            let answer = match &self.coordinator {
                None => {
                    let now = now_ms();
                    let until = now + TTL.as_millis() as u64;
                    let mut local = self.local.lock().unwrap();
                    local.acquire(&req.name, &holder, shared, now, until)
                }
                Some(client) => match client.clone().lock(req.clone()).await {
                    Ok(resp) if resp.get_ref().granted => Ok(true),
                    Ok(resp) => Err(resp.into_inner().holder),
                    Err(status) => {
                        return Err(GatewayError::TimedOut {
                            what: format!("attaching volume {name:?}"),
                            reason: format!("the coordinator: {}", status.message()),
                        });
                    }
                },
            };
            match answer {
                Ok(_) => break None,
                Err(other) if Instant::now() >= deadline => break Some(other),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if let Some(holder) = other {
            return Err(GatewayError::Attached {
                name: name.to_owned(),
                holder,
            });
        }
        let mut held = self.held.lock().unwrap();
        let entry = held.entry(key.clone()).or_insert_with(|| {
            let lost = Arc::new(AtomicBool::new(false));
            let renewal = self
                .coordinator
                .clone()
                .map(|client| tokio::spawn(renew(client, req, lost.clone())));
            Held {
                connections: 0,
                lost,
                renewal,
            }
        });
        entry.connections += 1;
        Ok(Attachment {
            name: name.to_owned(),
            key,
            lost: entry.lost.clone(),
            owner: self.clone(),
        })
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
}
