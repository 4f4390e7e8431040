//! Replicated object I/O: the one place that decides which nodes hold an object.

use super::{GatewayError, Result};
use crate::store::ObjectStore;
use sheepdog_model::{ClusterMap, ObjectId, Ring};
use std::sync::{Arc, RwLock};

struct View {
    map: ClusterMap,
    ring: Ring,
}

/// Replicated I/O on objects.
///
/// Guarantees, today (one node per replica set):
/// - a write or zero is acknowledged only when every node of the object's replica set has
///   applied it; with `fua` it is durable (fsynced) on each of them;
/// - a read is served by one replica;
/// - an object's replica set is the first `copies` distinct nodes on the ring of the current
///   cluster map, the same answer on every node.
///
/// Not yet: replica sets spanning several nodes, retries across epochs and `minCopies`; a
/// replica that is not this node is reported unreachable. Replication fills this in without
/// changing callers.
pub struct Replicas {
    self_id: String,
    store: Arc<ObjectStore>,
    view: RwLock<View>,
}

impl Replicas {
    pub fn new(self_id: String, store: Arc<ObjectStore>, map: ClusterMap) -> Self {
        let ring = Ring::new(&map);
        Self {
            self_id,
            store,
            view: RwLock::new(View { map, ring }),
        }
    }

    pub fn map(&self) -> ClusterMap {
        self.view.read().unwrap().map.clone()
    }

    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// Checks that `oid`'s whole replica set is reachable and returns the local store.
    fn local(&self, oid: ObjectId, copies: u8) -> Result<Arc<ObjectStore>> {
        let view = self.view.read().unwrap();
        let set = view.ring.replicas(oid, usize::from(copies));
        if set.is_empty() {
            return Err(GatewayError::NoReplicas { oid });
        }
        for index in set {
            let node = &view.map.nodes[index];
            if node.id != self.self_id {
                return Err(GatewayError::ReplicaUnreachable {
                    oid,
                    node: node.id.clone(),
                });
            }
        }
        Ok(self.store.clone())
    }

    pub async fn read(
        &self,
        oid: ObjectId,
        copies: u8,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let store = self.local(oid, copies)?;
        blocking(move || {
            let mut buf = vec![0u8; len];
            store.read(oid, offset, &mut buf).map(|()| buf)
        })
        .await
    }

    pub async fn write(
        &self,
        oid: ObjectId,
        copies: u8,
        capacity: u64,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    ) -> Result<()> {
        let store = self.local(oid, copies)?;
        blocking(move || store.write(oid, capacity, offset, &data, fua)).await
    }

    pub async fn zero(
        &self,
        oid: ObjectId,
        copies: u8,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<()> {
        let store = self.local(oid, copies)?;
        blocking(move || store.zero(oid, offset, len, fua)).await
    }

    pub async fn remove(&self, oid: ObjectId, copies: u8) -> Result<()> {
        let store = self.local(oid, copies)?;
        blocking(move || store.remove(oid)).await
    }

    /// Makes every completed write durable on every node.
    pub async fn flush(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || store.flush()).await
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::store::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(GatewayError::from),
        Err(e) => Err(GatewayError::Task(e.to_string())),
    }
}
