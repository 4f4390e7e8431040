//! This node as a replica: store operations on the objects it holds, each preceded by the
//! recovery of that object when the current epoch made this node a new holder of it.

use crate::cluster::Epoch;
use crate::peer::ReplicaError;
use crate::recovery::Recovery;
use crate::store::{ObjectSpec, ObjectStore, StoreError};
use sheepdog_model::ObjectId;
use std::sync::Arc;

pub struct Local {
    pub node: String,
    pub store: Arc<ObjectStore>,
    pub recovery: Arc<Recovery>,
}

type Reply<T> = Result<T, ReplicaError>;

/// Requests up to this size that need no fsync run on the async thread: they only touch the
/// page cache, and a hop to the blocking pool costs more than the copy.
const INLINE_MAX: usize = 64 << 10;

impl Local {
    pub async fn read(
        &self,
        epoch: &Epoch,
        oid: ObjectId,
        offset: u64,
        len: usize,
    ) -> Reply<Vec<u8>> {
        self.recovery.before_io(epoch, oid).await?;
        if len <= INLINE_MAX {
            let mut buf = vec![0u8; len];
            let read = self.store.read(oid, offset, &mut buf);
            return read
                .map(|()| buf)
                .map_err(|e| ReplicaError::from_store(&self.node, &e));
        }
        self.blocking(move |store| {
            let mut buf = vec![0u8; len];
            store.read(oid, offset, &mut buf).map(|()| buf)
        })
        .await
    }

    pub async fn write(
        &self,
        epoch: &Epoch,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    ) -> Reply<()> {
        self.recovery.before_io(epoch, oid).await?;
        if !fua && data.len() <= INLINE_MAX {
            let written = self.store.write(oid, spec, offset, &data, false);
            return written.map_err(|e| ReplicaError::from_store(&self.node, &e));
        }
        self.blocking(move |store| store.write(oid, spec, offset, &data, fua))
            .await
    }

    pub async fn zero(
        &self,
        epoch: &Epoch,
        oid: ObjectId,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Reply<()> {
        self.recovery.before_io(epoch, oid).await?;
        self.blocking(move |store| store.zero(oid, offset, len, fua))
            .await
    }

    pub async fn remove(&self, epoch: &Epoch, oid: ObjectId) -> Reply<()> {
        self.recovery.forget(epoch, oid);
        self.blocking(move |store| store.remove(oid)).await
    }

    pub async fn flush(&self) -> Reply<()> {
        self.blocking(|store| store.flush()).await
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Reply<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(ReplicaError::from_store(&self.node, &e)),
            Err(e) => Err(ReplicaError::Failed {
                node: self.node.clone(),
                message: e.to_string(),
            }),
        }
    }
}
