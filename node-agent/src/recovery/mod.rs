//! Recovery and rebalancing: after every epoch change, pull the objects this node now holds.
//!
//! For epoch E this node:
//! 1. lists the objects of every other node of map E (a node behind on epochs is sent the map;
//!    an unreachable one is retried until it answers or a newer epoch removes it);
//! 2. marks as pending every object it must hold at E (it is in the object's replica set) and
//!    does not have, or whose copy it cannot trust because it left the cluster and came back
//!    since that copy was written (its `joinedEpoch` is newer than its last map before start);
//! 3. fetches each pending object whole from a node that has it, throttled (concurrency and
//!    bandwidth), and stores it durably;
//! 4. reports E as recovered in its heartbeats once nothing is pending.
//!
//! I/O on a pending object recovers that object first ([`Recovery::before_io`]), so a new
//! holder never applies a write on top of a missing object. Copies this node no longer owns
//! are removed only once the coordinator says every node of map E has recovered E
//! ([`Recovery::collect_garbage`]).

mod throttle;

use crate::cluster::{ClusterView, Epoch};
use crate::peer::{Peers, ReplicaError};
use crate::store::{ObjectSpec, ObjectStore};
use sheepdog_model::{NodeInfo, ObjectId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use throttle::Throttle;
use tokio::sync::{Semaphore, watch};

const LOCK_STRIPES: usize = 256;
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
    /// Objects that no reachable node had (lost, or never written after all).
    pub missing: u64,
    /// Newest epoch fully recovered.
    pub recovered_epoch: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    spec_copies: u8,
    holders: Vec<NodeInfo>,
}

#[derive(Default)]
struct State {
    epoch: u64,
    pending: HashMap<ObjectId, Pending>,
    progress: Progress,
}

pub struct Recovery {
    view: Arc<ClusterView>,
    store: Arc<ObjectStore>,
    peers: Arc<Peers>,
    state: Mutex<State>,
    listed: watch::Sender<u64>,
    recovered: Arc<AtomicU64>,
    /// Local copies are trusted for maps where this node's joinedEpoch is at most this.
    trusted_through: AtomicU64,
    /// Size of the retired-vid set whose objects are already purged here.
    purged_through: std::sync::atomic::AtomicUsize,
    locks: Vec<tokio::sync::Mutex<()>>,
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
        let trusted = view.epoch_at_start();
        Self {
            view,
            store,
            peers,
            state: Mutex::new(State::default()),
            listed: watch::channel(0).0,
            recovered: Arc::new(AtomicU64::new(0)),
            trusted_through: AtomicU64::new(trusted),
            purged_through: std::sync::atomic::AtomicUsize::new(0),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            semaphore: Semaphore::new(limits.concurrency.max(1)),
            throttle: Throttle::new(limits.bandwidth),
            collected_epoch: AtomicU64::new(0),
        }
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
                self.trusted_through
                    .fetch_max(epoch.epoch(), Ordering::AcqRel);
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
        let untrusted = epoch
            .map
            .node(&me)
            .is_some_and(|n| n.joined_epoch > self.trusted_through.load(Ordering::Acquire));
        let mut pending = HashMap::new();
        for (oid, (copies, holders)) in objects {
            if self.view.is_retired(oid.vid()) {
                continue;
            }
            let mine = epoch.replicas(oid, copies).iter().any(|n| n.id == me);
            let local = self.store.contains(oid);
            if mine && (!local || untrusted) {
                let holders = holders.into_iter().filter(|n| n.id != me).collect();
                pending.insert(
                    oid,
                    Pending {
                        spec_copies: copies,
                        holders,
                    },
                );
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
            tracing::info!(
                epoch = epoch.epoch(),
                objects = total,
                untrusted,
                "recovering objects"
            );
        }
        self.fetch_pending(epoch).await
    }

    /// Every object on every node of the map (including this one), with copies and holders.
    async fn list_all(&self, epoch: &Epoch) -> Option<HashMap<ObjectId, (u8, Vec<NodeInfo>)>> {
        let me = self.view.self_id().to_owned();
        let mut objects: HashMap<ObjectId, (u8, Vec<NodeInfo>)> = HashMap::new();
        for (oid, copies) in self.store.list() {
            objects.entry(oid).or_insert((copies, Vec::new()));
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
            for (oid, copies) in list {
                objects
                    .entry(oid)
                    .or_insert((copies, Vec::new()))
                    .1
                    .push(node.clone());
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
                if let Err(e) = self.recover_object(epoch.epoch(), oid).await {
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

    /// Fetches one pending object from a holder and stores it; no-op when not pending.
    async fn recover_object(&self, epoch: u64, oid: ObjectId) -> Result<(), ReplicaError> {
        let _lock = self.lock(oid).lock().await;
        let Some(pending) = self.pending(epoch, oid) else {
            return Ok(());
        };
        if self.view.is_retired(oid.vid()) {
            // Its volume was deleted meanwhile: nothing to recover.
            self.finish(epoch, oid, false);
            return Ok(());
        }
        let mut last_err = None;
        for holder in &pending.holders {
            match self.peers.fetch(holder, oid).await {
                Ok(Some((spec, data))) => {
                    self.throttle.take(data.len() as u64).await;
                    let spec = ObjectSpec {
                        copies: pending.spec_copies,
                        ..spec
                    };
                    let store = self.store.clone();
                    let stored =
                        tokio::task::spawn_blocking(move || store.put(oid, spec, &data)).await;
                    match stored {
                        Ok(Ok(())) => {
                            self.finish(epoch, oid, false);
                            return Ok(());
                        }
                        Ok(Err(e)) => {
                            return Err(ReplicaError::from_store(self.view.self_id(), &e));
                        }
                        Err(e) => {
                            return Err(ReplicaError::Failed {
                                node: self.view.self_id().into(),
                                message: e.to_string(),
                            });
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => {
                // No holder has it: removed meanwhile, or lost with every other copy. A local
                // copy (even an untrusted one) is then the best there is, and is kept.
                self.finish(epoch, oid, !self.store.contains(oid));
                Ok(())
            }
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

    /// Before I/O on `oid` at `epoch`: waits for the epoch's listing, recovers `oid` if pending.
    pub async fn before_io(&self, epoch: &Epoch, oid: ObjectId) -> Result<(), ReplicaError> {
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
        if self.pending(e, oid).is_some() {
            self.recover_object(e, oid).await?;
            if self.pending(e, oid).is_some() {
                let reason = format!("object {oid} is not recovered yet");
                return Err(ReplicaError::Unreachable {
                    node: self.view.self_id().into(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Forgets a pending object that is being removed.
    pub fn forget(&self, epoch: &Epoch, oid: ObjectId) {
        self.finish(epoch.epoch(), oid, false);
    }

    /// Removes the local copies of objects of retired vids (deleted volumes), once per
    /// growth of the retired set. A node that was away during a delete drops them here
    /// instead of bringing the volume back.
    async fn purge_retired(&self) {
        let count = self.view.retired_count();
        if self.purged_through.load(Ordering::Acquire) >= count {
            return;
        }
        let mut removed = 0;
        for (oid, _) in self.store.list() {
            if !self.view.is_retired(oid.vid()) {
                continue;
            }
            let _lock = self.lock(oid).lock().await;
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
        for (oid, copies) in self.store.list() {
            if self.view.epoch() != e {
                return;
            }
            if epoch.replicas(oid, copies).iter().all(|n| n.id != me) {
                let _lock = self.lock(oid).lock().await;
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

    fn lock(&self, oid: ObjectId) -> &tokio::sync::Mutex<()> {
        let stripe = xxhash_rust::xxh3::xxh3_64(&oid.raw().to_le_bytes()) as usize % LOCK_STRIPES;
        &self.locks[stripe]
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
