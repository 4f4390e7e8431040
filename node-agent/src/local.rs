//! This node as a replica: store operations on the objects it holds.
//!
//! When the current epoch made this node a new holder of an object that recovery has not
//! copied yet, a read recovers that object first, ahead of the throttled queue. Changes need
//! not wait for the object: every block carries its version and recovery merges
//! newest-per-block into the local copy, so a whole-block write or a removal applied before
//! recovery stays. Only a change to part of a block recovers first, because it merges with
//! the block's old bytes.
//!
//! **The activation barrier.** No request of epoch E is served before recovery has listed
//! every node of map E ([`Recovery::wait_listed`]), which brings each of them to E: a write
//! acknowledged at E cannot be missed by a node still reading its own copy at E-1.
//!
//! **The epoch barrier.** Every change holds the replica gate shared while it runs, and is
//! checked against the current epoch only once it holds it. Listing and fetching objects for
//! recovery at epoch E first [`drain`](Local::drain) the gate: once that returns, no change
//! admitted at an older epoch is still running on this node, so a new holder that copies an
//! object at E cannot miss a write that was acknowledged at E-1.

use crate::cluster::{ClusterView, Epoch};
use crate::peer::ReplicaError;
use crate::recovery::Recovery;
use crate::store::{Applied, ObjectSpec, ObjectStore, StoreError};
use sheepdog_model::ObjectId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Local {
    pub node: String,
    pub store: Arc<ObjectStore>,
    pub recovery: Arc<Recovery>,
    view: Arc<ClusterView>,
    gate: tokio::sync::RwLock<()>,
    /// The newest epoch whose older changes are known to have finished.
    drained: AtomicU64,
}

type Reply<T> = Result<T, ReplicaError>;

/// Requests up to this size that need no fsync run on the async thread: they only touch the
/// page cache, and a hop to the blocking pool costs more than the copy.
const INLINE_MAX: usize = 64 << 10;

/// One change to an object, at a version.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// `fence`: the metadata lock's fencing token of a commit write (0: not one).
    Write {
        offset: u64,
        data: bytes::Bytes,
        fence: u32,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// The whole object: it becomes a tombstone. `garbage`: garbage collection of a deleted
    /// volume's objects, the one change allowed on a sealed vid.
    Remove {
        garbage: bool,
        fence: u32,
    },
}

impl Mutation {
    /// The metadata lock's fencing token a commit carries (0: not a commit).
    fn fence(&self) -> u32 {
        match self {
            Self::Write { fence, .. } | Self::Remove { fence, .. } => *fence,
            Self::Zero { .. } => 0,
        }
    }

    fn touches_part_of_a_block(&self) -> bool {
        let bs = u64::from(sheepdog_model::BLOCK_SIZE);
        let (offset, len) = match self {
            Self::Write { offset, data, .. } => (*offset, data.len() as u64),
            Self::Zero { offset, len } => (*offset, *len),
            Self::Remove { .. } => return false,
        };
        !offset.is_multiple_of(bs) || !len.is_multiple_of(bs)
    }
}

impl Local {
    pub fn new(store: Arc<ObjectStore>, recovery: Arc<Recovery>, view: Arc<ClusterView>) -> Self {
        Self {
            node: view.self_id().to_owned(),
            store,
            recovery,
            view,
            gate: tokio::sync::RwLock::new(()),
            drained: AtomicU64::new(0),
        }
    }

    pub async fn read(
        &self,
        epoch: &Epoch,
        oid: ObjectId,
        offset: u64,
        len: usize,
    ) -> Reply<Vec<u8>> {
        self.recovery.before_io(epoch, oid).await?;
        self.check_epoch(epoch)?;
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

    /// Applies `change` at `version` to this node's copy, which recovery brings up to date
    /// first if this epoch made this node a new holder.
    pub async fn change(
        &self,
        epoch: &Epoch,
        oid: ObjectId,
        spec: ObjectSpec,
        change: Mutation,
        version: u64,
        fua: bool,
    ) -> Reply<Applied> {
        if self.view.retired.contains(oid.vid()) {
            // A retired vid is never used again: its objects simply go, and nothing may
            // write them back (a late request of the deleted volume).
            if let Mutation::Remove { .. } = change {
                return self
                    .blocking(move |s| s.remove(oid))
                    .await
                    .map(|()| Applied::default());
            }
        }
        self.check_vid(
            oid,
            matches!(change, Mutation::Remove { garbage: true, .. }),
        )?;
        let fence = change.fence();
        if fence > 0
            && let Err(newest) = self.view.admit_fence(fence)
        {
            return Err(ReplicaError::Fenced {
                node: self.node.clone(),
                message: format!(
                    "its fencing token {fence} is older than {newest}: another gateway took the metadata lock since; the operation stopped, run it again"
                ),
            });
        }
        if change.touches_part_of_a_block() {
            self.recovery.before_io(epoch, oid).await?;
        } else {
            self.recovery.wait_listed(epoch).await?;
        }
        let _gate = self.gate.read().await;
        self.check_epoch(epoch)?;
        match change {
            Mutation::Write { offset, data, .. } if !fua && data.len() <= INLINE_MAX => self
                .store
                .write(oid, spec, offset, &data, version, false)
                .map_err(|e| ReplicaError::from_store(&self.node, &e)),
            Mutation::Write { offset, data, .. } => {
                self.blocking(move |s| s.write(oid, spec, offset, &data, version, fua))
                    .await
            }
            Mutation::Zero { offset, len } => {
                self.blocking(move |s| s.zero(oid, spec, offset, len, version, fua))
                    .await
            }
            Mutation::Remove { .. } => {
                self.blocking(move |s| s.remove_at(oid, spec, version, fua))
                    .await
            }
        }
    }

    /// Creates `oid` with `data` at the copy version unless a copy exists (copy-on-write). Returns
    /// whether it was created. A copy not recovered yet is merged in later: its blocks are
    /// all newer than the copy version.
    pub async fn put_if_absent(
        &self,
        epoch: &Epoch,
        oid: ObjectId,
        spec: ObjectSpec,
        data: bytes::Bytes,
    ) -> Reply<bool> {
        self.check_vid(oid, false)?;
        self.recovery.wait_listed(epoch).await?;
        let _gate = self.gate.read().await;
        self.check_epoch(epoch)?;
        self.blocking(move |store| store.put_if_absent(oid, spec, &data))
            .await
    }

    pub async fn flush(&self) -> Reply<()> {
        self.blocking(|store| store.flush()).await
    }

    /// Waits until no change admitted before `epoch` is still running here.
    pub async fn drain(&self, epoch: u64) {
        if self.drained.load(Ordering::Acquire) >= epoch {
            return;
        }
        drop(self.gate.write().await);
        self.drained.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Refuses to create or change an object of a deleted volume, or data of a vid that is no
    /// longer written (a late request from a gateway that missed a freeze); `garbage` removals
    /// of a sealed vid's objects are allowed.
    fn check_vid(&self, oid: ObjectId, garbage: bool) -> Reply<()> {
        if self.view.retired.contains(oid.vid()) {
            return Err(self.invalid(format!("object {oid} belongs to a deleted volume")));
        }
        if !oid.is_inode() && !garbage && self.view.sealed.contains(oid.vid()) {
            return Err(ReplicaError::Sealed {
                node: self.node.clone(),
                message: format!(
                    "vid {} is no longer a working volume (snapshotted, rolled back or deleted); look the volume up again",
                    oid.vid()
                ),
            });
        }
        Ok(())
    }

    /// Refuses a request for an epoch this node has left.
    fn check_epoch(&self, epoch: &Epoch) -> Reply<()> {
        let current = self.view.epoch();
        if current != epoch.epoch() {
            return Err(ReplicaError::Epoch {
                node: self.node.clone(),
                theirs: current,
            });
        }
        Ok(())
    }

    fn invalid(&self, message: String) -> ReplicaError {
        ReplicaError::Invalid {
            node: self.node.clone(),
            message,
        }
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

/// A one-node replica in `dir` at epoch 1 for unit tests: its store, view, recovery (not
/// running) and replica.
#[cfg(test)]
pub(crate) fn test_replica(
    dir: &std::path::Path,
) -> (
    Arc<ObjectStore>,
    Arc<ClusterView>,
    Arc<Recovery>,
    Arc<Local>,
) {
    use sheepdog_model::ClusterMap;
    let store = Arc::new(ObjectStore::open(&dir.join("objects")).unwrap());
    let view =
        Arc::new(ClusterView::open(dir, "n0".into(), ClusterMap::new(1, vec![]), false).unwrap());
    let limits = crate::recovery::Limits {
        concurrency: 1,
        bandwidth: 0,
    };
    let peers = Arc::new(crate::peer::Peers::default());
    let recovery = Arc::new(Recovery::new(view.clone(), store.clone(), peers, limits));
    let local = Arc::new(Local::new(store.clone(), recovery.clone(), view.clone()));
    recovery.attach(local.clone());
    (store, view, recovery, local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheepdog_model::ClusterMap;
    use std::time::Duration;

    /// The epoch barrier: a write admitted at epoch 1 that has not reached the store yet holds
    /// up `drain(2)`, so recovery at epoch 2 cannot list the object before the write lands.
    #[test]
    fn draining_a_new_epoch_waits_for_changes_admitted_at_the_old_one() {
        // One blocking thread, which the test occupies: the admitted write then waits in the
        // blocking queue, after its epoch check, for as long as the test wants.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (store, view, recovery, local) = test_replica(dir.path());
            // Epoch 1 recovered (this test runs no recovery): its changes pass the
            // activation barrier.
            recovery.recovered_epoch().store(1, Ordering::Release);

            let (release, held) = std::sync::mpsc::channel::<()>();
            let occupier = tokio::task::spawn_blocking(move || held.recv());
            let oid = ObjectId::data(1, 0);
            let spec = ObjectSpec {
                capacity: 4 << 20,
                copies: 1,
            };
            let epoch1 = view.current();
            let write = tokio::spawn({
                let local = local.clone();
                async move {
                    let data = bytes::Bytes::from(vec![7u8; 4096]);
                    let change = Mutation::Write {
                        offset: 0,
                        data,
                        fence: 0,
                    };
                    local.change(&epoch1, oid, spec, change, 1, true).await
                }
            });
            // Admitted: it holds the gate while it waits for the store.
            let admitted = async {
                while local.gate.try_write().is_ok() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), admitted)
                .await
                .expect("a change holds the replica gate until it has landed");
            assert!(view.adopt(ClusterMap::new(2, vec![])));
            let drain = tokio::spawn({
                let local = local.clone();
                async move { local.drain(2).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !drain.is_finished(),
                "drain(2) returned while a write admitted at epoch 1 had not landed"
            );
            release.send(()).unwrap();
            occupier.await.unwrap().unwrap();
            drain.await.unwrap();
            let mut got = vec![0u8; 4096];
            store.read(oid, 0, &mut got).unwrap();
            assert_eq!(
                got,
                vec![7u8; 4096],
                "the write landed before drain returned"
            );
            write
                .await
                .unwrap()
                .expect("the write admitted at epoch 1 succeeds");
        });
    }
}
