//! Recovery and rebalancing: after every epoch change, bring this node's copies up to date.
//!
//! For epoch E this node:
//! 1. lists the objects of every other node of map E, with a summary of each copy's block
//!    versions (a node behind on epochs is sent the map; an unreachable one is retried until it
//!    answers or a newer epoch removes it). A node answers only once no change admitted at an
//!    earlier epoch is still running on it (the epoch barrier, see `local`);
//! 2. marks as pending every object it must hold at E (it is in the object's replica set) for
//!    which some node lists a copy whose summary differs from its own: a copy it lacks, a
//!    newer one, or a tombstone. Nothing is trusted for being present: a copy kept from an
//!    earlier epoch, or from before the node left and came back, is compared like any other;
//! 3. fetches, for each pending object, one copy per distinct summary and merges them into its
//!    own, block by block, the newest version winning (`store::merge`), throttled (concurrency
//!    and bandwidth);
//! 4. reports E as recovered in its heartbeats once nothing is pending.
//!
//! A read of a pending object recovers that object first, outside the throttle
//! ([`Recovery::before_io`]). Copies this node no longer owns are removed only once the
//! coordinator says every node of map E has recovered E ([`Recovery::collect_garbage`]).

mod throttle;

use crate::cluster::{ClusterView, Epoch};
use crate::local::Local;
use crate::peer::{Peers, ReplicaError};
use crate::store::{Meta, ObjectStore};
use sheepdog_model::{NodeInfo, ObjectId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use throttle::Throttle;
use tokio::sync::{Semaphore, watch};

/// How long I/O waits for the listing of a new epoch before asking the gateway to retry.
const LISTING_WAIT: Duration = Duration::from_secs(20);

/// Recovery limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Objects fetched at the same time.
    pub concurrency: usize,
    /// Bytes per second fetched, 0 for no limit.
    pub bandwidth: u64,
}

/// Progress of the current epoch's recovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub epoch: u64,
    /// Whether the object lists of every node are in.
    pub listed: bool,
    pub total: u64,
    pub done: u64,
    /// Objects that no reachable node had any more when fetched.
    pub missing: u64,
    /// Newest epoch fully recovered.
    pub recovered_epoch: u64,
}

/// An object to bring up to date, and the nodes holding copies that differ from this node's
/// (one per distinct version summary).
#[derive(Debug, Clone)]
struct Pending {
    sources: Vec<NodeInfo>,
}

#[derive(Default)]
struct State {
    epoch: u64,
    pending: HashMap<ObjectId, Pending>,
    progress: Progress,
}

/// Every copy the nodes of a map list for one object.
struct Listed {
    copies: u8,
    holders: Vec<(NodeInfo, Meta)>,
}

pub struct Recovery {
    view: Arc<ClusterView>,
    store: Arc<ObjectStore>,
    peers: Arc<Peers>,
    /// This node as a replica, for the epoch barrier before listing its own copies.
    local: OnceLock<Arc<Local>>,
    state: Mutex<State>,
    listed: watch::Sender<u64>,
    recovered: Arc<AtomicU64>,
    /// Size of the retired-vid set whose objects are already purged here.
    purged_through: AtomicUsize,
    semaphore: Semaphore,
    throttle: Throttle,
    collected_epoch: AtomicU64,
}

impl Recovery {
    pub fn new(
        view: Arc<ClusterView>,
        store: Arc<ObjectStore>,
        peers: Arc<Peers>,
        limits: Limits,
    ) -> Self {
        Self {
            view,
            store,
            peers,
            local: OnceLock::new(),
            state: Mutex::new(State::default()),
            listed: watch::channel(0).0,
            recovered: Arc::new(AtomicU64::new(0)),
            purged_through: AtomicUsize::new(0),
            semaphore: Semaphore::new(limits.concurrency.max(1)),
            throttle: Throttle::new(limits.bandwidth),
            collected_epoch: AtomicU64::new(0),
        }
    }

    /// Hands recovery this node's replica (built after it, since it calls recovery).
    pub fn attach(&self, local: Arc<Local>) {
        let _ = self.local.set(local);
    }

    /// The newest fully recovered epoch, shared with the heartbeat.
    pub fn recovered_epoch(&self) -> Arc<AtomicU64> {
        self.recovered.clone()
    }

    pub fn progress(&self) -> Progress {
        let state = self.state.lock().unwrap();
        Progress {
            recovered_epoch: self.recovered.load(Ordering::Acquire),
            ..state.progress
        }
    }

    /// Runs recovery for every epoch this node adopts, and garbage collection after.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.view.subscribe();
        loop {
            let epoch = self.view.current();
            if self.recovered.load(Ordering::Acquire) < epoch.epoch() && self.recover(&epoch).await
            {
                self.recovered.fetch_max(epoch.epoch(), Ordering::AcqRel);
                tracing::info!(epoch = epoch.epoch(), "recovery complete");
            }
            self.collect_garbage(&epoch).await;
            self.purge_retired().await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Recovers epoch `epoch`; false if a newer epoch interrupted it or something is left.
    async fn recover(&self, epoch: &Epoch) -> bool {
        let Some(objects) = self.list_all(epoch).await else {
            return false;
        };
        let me = self.view.self_id().to_owned();
        let mut pending = HashMap::new();
        for (oid, listed) in objects {
            if self.view.retired.contains(oid.vid()) {
                continue;
            }
            if !epoch
                .replicas(oid, listed.copies)
                .iter()
                .any(|n| n.id == me)
            {
                continue;
            }
            let mine = self.store.meta(oid).map(|m| m.summary);
            let mut sources: Vec<NodeInfo> = Vec::new();
            let mut seen = Vec::new();
            for (node, meta) in listed.holders {
                if Some(meta.summary) != mine && !seen.contains(&meta.summary) {
                    seen.push(meta.summary);
                    sources.push(node);
                }
            }
            if !sources.is_empty() {
                pending.insert(oid, Pending { sources });
            }
        }
        let total = pending.len() as u64;
        {
            let mut state = self.state.lock().unwrap();
            state.epoch = epoch.epoch();
            state.pending = pending;
            state.progress = Progress {
                epoch: epoch.epoch(),
                listed: true,
                total,
                ..Progress::default()
            };
        }
        self.listed.send_replace(epoch.epoch());
        if total > 0 {
            tracing::info!(epoch = epoch.epoch(), objects = total, "recovering objects");
        }
        self.fetch_pending(epoch).await
    }

    /// Every object on every other node of the map, with copies and holders.
    async fn list_all(&self, epoch: &Epoch) -> Option<HashMap<ObjectId, Listed>> {
        if let Some(local) = self.local.get() {
            local.drain(epoch.epoch()).await;
        }
        let me = self.view.self_id().to_owned();
        let mut objects: HashMap<ObjectId, Listed> = HashMap::new();
        for (oid, meta) in self.store.list() {
            objects.entry(oid).or_insert(Listed {
                copies: meta.copies,
                holders: Vec::new(),
            });
        }
        for node in epoch.map.nodes.iter().filter(|n| n.id != me) {
            let list = loop {
                if self.view.epoch() != epoch.epoch() {
                    return None;
                }
                match self.peers.list(node, epoch.epoch(), false).await {
                    Ok(list) => break list,
                    Err(e) => {
                        self.catch_up(node, &e).await;
                        tracing::debug!(node.id = %node.id, error = %e, "cannot list objects yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            for (oid, meta) in list {
                objects
                    .entry(oid)
                    .or_insert(Listed {
                        copies: meta.copies,
                        holders: Vec::new(),
                    })
                    .holders
                    .push((node.clone(), meta));
            }
        }
        Some(objects)
    }

    async fn fetch_pending(&self, epoch: &Epoch) -> bool {
        loop {
            let oids: Vec<ObjectId> = self.state.lock().unwrap().pending.keys().copied().collect();
            if oids.is_empty() {
                return true;
            }
            let tasks = oids.into_iter().map(|oid| async move {
                let _permit = self.semaphore.acquire().await.expect("never closed");
                if self.view.epoch() != epoch.epoch() {
                    return;
                }
                if let Err(e) = self.recover_object(epoch.epoch(), oid, true).await {
                    tracing::warn!(object = %oid, error = %e, "cannot recover object yet; will retry");
                }
            });
            futures::future::join_all(tasks).await;
            if self.view.epoch() != epoch.epoch() {
                return false;
            }
            if !self.state.lock().unwrap().pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Fetches the differing copies of one pending object and merges them into this node's;
    /// no-op when not pending. In the `background` the bandwidth limit applies; a read
    /// waiting for the object goes first. Recovering one object twice at once is harmless:
    /// the merge is idempotent.
    async fn recover_object(
        &self,
        epoch: u64,
        oid: ObjectId,
        background: bool,
    ) -> Result<(), ReplicaError> {
        let Some(pending) = self.pending(epoch, oid) else {
            return Ok(());
        };
        if self.view.retired.contains(oid.vid()) {
            // Its volume was deleted meanwhile: nothing to recover.
            self.finish(epoch, oid, false);
            return Ok(());
        }
        let mut copies = Vec::new();
        for source in &pending.sources {
            if let Some(copy) = self.peers.fetch(source, epoch, oid).await? {
                if background {
                    self.throttle.take(copy.data.len() as u64).await;
                }
                copies.push(copy);
            }
        }
        if copies.is_empty() {
            // Removed meanwhile everywhere it was listed.
            self.finish(epoch, oid, !self.store.contains(oid));
            return Ok(());
        }
        let store = self.store.clone();
        let merged = tokio::task::spawn_blocking(move || store.merge_in(oid, &copies)).await;
        match merged {
            Ok(Ok(_)) => {
                self.finish(epoch, oid, false);
                Ok(())
            }
            Ok(Err(e)) => Err(ReplicaError::from_store(self.view.self_id(), &e)),
            Err(e) => Err(ReplicaError::Failed {
                node: self.view.self_id().into(),
                message: e.to_string(),
            }),
        }
    }

    fn pending(&self, epoch: u64, oid: ObjectId) -> Option<Pending> {
        let state = self.state.lock().unwrap();
        (state.epoch == epoch)
            .then(|| state.pending.get(&oid).cloned())
            .flatten()
    }

    fn finish(&self, epoch: u64, oid: ObjectId, missing: bool) {
        let mut state = self.state.lock().unwrap();
        if state.epoch == epoch && state.pending.remove(&oid).is_some() {
            state.progress.done += 1;
            state.progress.missing += u64::from(missing);
        }
    }

    /// Before a read of `oid` at `epoch`: waits for the epoch's listing, and recovers `oid`
    /// at once if it is pending, outside the throttle.
    pub async fn before_io(&self, epoch: &Epoch, oid: ObjectId) -> Result<(), ReplicaError> {
        let e = epoch.epoch();
        if self.recovered.load(Ordering::Acquire) >= e {
            return Ok(());
        }
        self.wait_listed(epoch).await?;
        if self.pending(e, oid).is_some() {
            self.recover_object(e, oid, false).await?;
        }
        Ok(())
    }

    /// The activation barrier: no request of epoch `epoch` is served here before this node
    /// has listed every node of its map. Listing brings each of them to the epoch and waits
    /// until none still runs a change of an older one, so once a replica of `epoch` has
    /// acknowledged anything, no member still serves the map before it (whose replica sets
    /// may not hold the write). Asks the gateway to retry if the listing takes too long.
    pub async fn wait_listed(&self, epoch: &Epoch) -> Result<(), ReplicaError> {
        let e = epoch.epoch();
        if self.recovered.load(Ordering::Acquire) >= e {
            return Ok(());
        }
        let mut listed = self.listed.subscribe();
        let listed_in_time = matches!(
            tokio::time::timeout(LISTING_WAIT, listed.wait_for(|&l| l >= e)).await,
            Ok(Ok(_))
        );
        if !listed_in_time {
            let reason = format!("recovery has not listed epoch {e} yet");
            return Err(ReplicaError::Unreachable {
                node: self.view.self_id().into(),
                reason,
            });
        }
        Ok(())
    }

    /// Removes the local copies of objects of retired vids (deleted volumes), once per
    /// growth of the retired set. A node that was away during a delete drops them here
    /// instead of bringing the volume back.
    async fn purge_retired(&self) {
        let count = self.view.retired.len();
        if self.purged_through.load(Ordering::Acquire) >= count {
            return;
        }
        let mut removed = 0;
        for (oid, _) in self.store.list() {
            if !self.view.retired.contains(oid.vid()) {
                continue;
            }
            self.finish(self.view.epoch(), oid, false);
            match self.store.remove(oid) {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(object = %oid, error = %err, "cannot remove a copy of a deleted volume");
                    return;
                }
            }
        }
        self.purged_through.fetch_max(count, Ordering::AcqRel);
        if removed > 0 {
            tracing::info!(objects = removed, "removed copies of deleted volumes");
        }
    }

    /// Removes copies this node no longer owns, once every node has recovered `epoch`.
    async fn collect_garbage(&self, epoch: &Epoch) {
        let e = epoch.epoch();
        if !self.view.all_recovered()
            || self.recovered.load(Ordering::Acquire) < e
            || self.collected_epoch.load(Ordering::Acquire) >= e
        {
            return;
        }
        let me = self.view.self_id().to_owned();
        let mut removed = 0;
        for (oid, meta) in self.store.list() {
            if self.view.epoch() != e {
                return;
            }
            if epoch.replicas(oid, meta.copies).iter().all(|n| n.id != me) {
                if let Err(err) = self.store.remove(oid) {
                    tracing::warn!(object = %oid, error = %err, "cannot remove a copy this node no longer owns");
                    return;
                }
                removed += 1;
            }
        }
        self.collected_epoch.fetch_max(e, Ordering::AcqRel);
        if removed > 0 {
            tracing::info!(
                epoch = e,
                objects = removed,
                "removed copies now held by other nodes"
            );
        }
    }

    /// Helps a peer that refused a request for its epoch: fetch its newer map or push ours.
    pub async fn catch_up(&self, node: &NodeInfo, err: &ReplicaError) {
        catch_up(&self.view, &self.peers, node, err).await;
    }
}

/// After a peer refused a request for its epoch: adopt its newer map, or push ours to it.
pub async fn catch_up(view: &ClusterView, peers: &Peers, node: &NodeInfo, err: &ReplicaError) {
    let ReplicaError::Epoch { theirs, .. } = err else {
        return;
    };
    let ours = view.current();
    if *theirs > ours.epoch() {
        if let Ok(map) = peers.get_map(node).await {
            view.adopt(map);
        }
    } else if *theirs < ours.epoch() {
        let _ = peers.push_map(node, &ours.map).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::Mutation;
    use crate::store::ObjectSpec;

    /// The activation barrier: a whole-block write of an epoch this node has not listed yet
    /// is held until the listing is done (it was applied at once, while other members could
    /// still serve the epoch before).
    #[tokio::test]
    async fn no_change_of_an_epoch_lands_before_its_listing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, view, recovery, local) = crate::local::test_replica(dir.path());
        let oid = ObjectId::data(1, 0);
        let spec = ObjectSpec {
            capacity: 4 << 20,
            copies: 1,
        };
        let epoch = view.current();
        let write = tokio::spawn({
            let local = local.clone();
            async move {
                let change = Mutation::Write {
                    offset: 0,
                    data: bytes::Bytes::from(vec![7u8; 4096]),
                    fence: 0,
                };
                local.change(&epoch, oid, spec, change, 1, false).await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !write.is_finished() && !store.contains(oid),
            "a whole-block write landed before its epoch was listed"
        );
        recovery.listed.send_replace(1);
        write.await.unwrap().expect("the write lands once listed");
        assert!(store.contains(oid));
    }
}
