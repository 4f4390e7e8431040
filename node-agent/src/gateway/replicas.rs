//! Replicated object I/O: the one place that decides which nodes hold an object and talks to
//! them.

use super::{GatewayError, Result};
use crate::cluster::{ClusterView, Epoch};
use crate::local::{Local, Mutation};
use crate::peer::{Peers, ReplicaError};
use crate::recovery::catch_up;
use crate::store::{ObjectSpec, ObjectStore};
use bytes::Bytes;
use sheepdog_model::{ClusterMap, NodeInfo, ObjectId};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pause before sending a change again to a replica that refused this node's epoch, once
/// caught up: short, since a map change is the common case, but no hot loop if it persists.
const EPOCH_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Pause between attempts while a replica is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One operation on one object.
#[derive(Debug, Clone)]
enum Op {
    /// `fence`: the metadata lock's fencing token of a commit write (0: not one).
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
        fence: u32,
    },
    Zero {
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// The whole object: it becomes a tombstone. `garbage`: collection of a deleted volume's
    /// objects (allowed on sealed vids).
    Remove {
        garbage: bool,
        fence: u32,
    },
    /// A copy-on-write copy: created at the copy version (`store::COPY_VERSION`) where absent, left alone where present.
    PutIfAbsent {
        data: Bytes,
    },
}

/// How many times a change is sent again with a newer version because a replica held a
/// newer one (another gateway wrote meanwhile) before it fails.
const MOST_REVERSIONS: u32 = 16;

/// Replicated I/O on objects.
///
/// Guarantees:
/// - an object's replica set is the first `copies` distinct nodes on the ring of the current
///   map (in distinct zones when there are enough), the same on every node;
/// - a write, zero or remove is sent to every replica in parallel and acknowledged only when
///   all of them have applied it; with `fua` it is durable on each of them;
/// - every change carries a version from this gateway's clock, newer than any version this
///   gateway has issued or seen; a replica applies it only to blocks whose version is older,
///   so a late or repeated request never overwrites a newer write. A replica that holds a
///   newer version of a block (a gateway whose clock ran ahead wrote it) says so, and the
///   change is sent again to every replica with a version past it: of two writes one after
///   the other through two gateways, the second always wins;
/// - a replica on another epoch refuses; this node then adopts the newer map (or pushes its
///   own) and retries at once with the replica set of the newest map;
/// - while a replica is unreachable (or failing) the operation is retried until a new epoch
///   removes that node (failure detection), then applied to the new set; a retry skips the
///   replicas that already applied it and carries the same version; after `io_timeout`
///   without success it fails;
/// - when the current map gives fewer than `min_copies` replicas, writes are refused at once;
/// - a read is served by one replica (this node first when it is one), falling over to the
///   others when a copy is unreachable or corrupt;
/// - a flush returns only when every write this gateway completed before it is durable,
///   including writes a concurrent flush was already syncing;
/// - no I/O is served while this node's lease has lapsed (it cannot reach the coordinator), so
///   a partitioned node acknowledges nothing on a stale epoch.
///
/// Not guaranteed: atomicity across replicas of a write that fails (replicas may differ in the
/// range of an unacknowledged write, as a local disk may after a crash, until recovery or
/// `dog cluster check --repair` merges them, newest version first).
pub struct Replicas {
    view: Arc<ClusterView>,
    local: Arc<Local>,
    peers: Arc<Peers>,
    min_copies: Option<u8>,
    io_timeout: Duration,
    /// Nodes written since the last flush.
    dirty: Mutex<HashSet<String>>,
    /// One flush at a time: a second one must not return while the first still syncs.
    flushing: tokio::sync::Mutex<()>,
    clock: VersionClock,
}

/// Versions for changes: nanoseconds of wall-clock time, never repeating or going back, and
/// moved past any newer version seen (a hybrid logical clock).
#[derive(Default)]
pub struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock past `version`.
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }
}

impl Replicas {
    pub fn new(
        view: Arc<ClusterView>,
        local: Arc<Local>,
        peers: Arc<Peers>,
        min_copies: Option<u8>,
        io_timeout: Duration,
    ) -> Self {
        Self {
            view,
            local,
            peers,
            min_copies,
            io_timeout,
            dirty: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            clock: VersionClock::default(),
        }
    }

    pub fn map(&self) -> ClusterMap {
        self.view.current().map.clone()
    }

    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.local.store
    }

    pub fn self_id(&self) -> &str {
        self.view.self_id()
    }

    /// Replicas that must take a write: Ceph's default `min_size` unless configured.
    pub fn min_copies(&self, copies: u8) -> usize {
        usize::from(self.min_copies.unwrap_or(copies - copies / 2).min(copies))
    }

    pub async fn read(
        &self,
        oid: ObjectId,
        copies: u8,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.io_timeout;
        loop {
            let epoch = self.admit(deadline).await?;
            let mut set = epoch.replicas(oid, copies);
            if set.is_empty() {
                return Err(GatewayError::NoReplicas { oid });
            }
            set.sort_by_key(|n| n.id != self.self_id());
            let mut last = None;
            let mut damaged = 0;
            let replicas = set.len();
            for node in set {
                let got = if node.id == self.self_id() {
                    self.local.read(&epoch, oid, offset, len).await
                } else {
                    self.peers
                        .read(node, epoch.epoch(), oid, offset, len as u32)
                        .await
                };
                match got {
                    Ok(data) => return Ok(data),
                    Err(e @ ReplicaError::Epoch { .. }) => {
                        catch_up(&self.view, &self.peers, node, &e).await;
                        last = Some(e);
                        break;
                    }
                    Err(e @ (ReplicaError::Corrupt { .. } | ReplicaError::Failed { .. })) => {
                        tracing::warn!(object = %oid, error = %e, "read failed on one replica; trying another");
                        damaged += 1;
                        last = Some(e);
                    }
                    Err(e @ ReplicaError::Unreachable { .. }) => {
                        tracing::warn!(object = %oid, error = %e, "read failed on one replica; trying another");
                        last = Some(e);
                    }
                    Err(
                        e @ (ReplicaError::Invalid { .. }
                        | ReplicaError::DiskFull { .. }
                        | ReplicaError::Sealed { .. }
                        | ReplicaError::Fenced { .. }),
                    ) => {
                        return Err(e.into());
                    }
                }
            }
            // Waiting helps unreachable replicas, not damaged ones.
            if damaged == replicas
                && let Some(e) = last
            {
                return Err(e.into());
            }
            self.pause(deadline, format!("object {oid}"), last).await?;
        }
    }

    /// Fails at once when this node's data disk failed: it serves nothing, and a client
    /// should be told so rather than wait for replicas it cannot be admitted to.
    pub fn check_local_disk(&self) -> Result<()> {
        Ok(self.local.store.check_health()?)
    }

    pub async fn write(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<()> {
        self.write_fenced(oid, spec, offset, data, fua, 0).await
    }

    /// A commit write of a metadata operation, carrying the metadata lock's fencing token:
    /// refused by any replica that saw a newer token (another gateway took the lock since).
    pub async fn write_fenced(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        data: Bytes,
        fua: bool,
        fence: u32,
    ) -> Result<()> {
        let op = Op::Write {
            offset,
            data,
            fua,
            fence,
        };
        self.mutate(oid, spec, op).await
    }

    pub async fn zero(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<()> {
        self.mutate(oid, spec, Op::Zero { offset, len, fua }).await
    }

    /// Removes an object: every replica keeps a tombstone that refuses older changes.
    pub async fn remove(&self, oid: ObjectId, spec: ObjectSpec) -> Result<()> {
        let op = Op::Remove {
            garbage: false,
            fence: 0,
        };
        self.mutate(oid, spec, op).await
    }

    /// Removes an object of a deleted volume that nothing reads any more, under the metadata
    /// lock's fencing token `fence`.
    pub async fn collect(&self, oid: ObjectId, spec: ObjectSpec, fence: u32) -> Result<()> {
        let op = Op::Remove {
            garbage: true,
            fence,
        };
        self.mutate(oid, spec, op).await
    }

    /// Creates `oid` holding `data` at the copy version on every replica that has no copy of it: the
    /// copy of a copy-on-write, which any number of gateways may make at once.
    pub async fn put_if_absent(&self, oid: ObjectId, spec: ObjectSpec, data: Bytes) -> Result<()> {
        self.mutate(oid, spec, Op::PutIfAbsent { data }).await
    }

    /// Makes every write this gateway completed before the call durable on every replica.
    pub async fn flush(&self) -> Result<()> {
        let _one_at_a_time = self.flushing.lock().await;
        let mut nodes: HashSet<String> = std::mem::take(&mut *self.dirty.lock().unwrap());
        let deadline = Instant::now() + self.io_timeout;
        while !nodes.is_empty() {
            let epoch = self.admit(deadline).await?;
            // A node removed from the map no longer holds anything that counts.
            nodes.retain(|id| epoch.map.node(id).is_some());
            let targets: Vec<NodeInfo> = nodes
                .iter()
                .filter_map(|id| epoch.map.node(id).cloned())
                .collect();
            let e = epoch.epoch();
            let results = futures::future::join_all(targets.iter().map(|node| async move {
                let done = if node.id == self.self_id() {
                    self.local.flush().await
                } else {
                    self.peers.flush(node, e).await
                };
                (node, done)
            }))
            .await;
            let mut last = None;
            for (node, done) in results {
                match done {
                    Ok(()) => {
                        nodes.remove(&node.id);
                    }
                    Err(e @ ReplicaError::Epoch { .. }) => {
                        catch_up(&self.view, &self.peers, node, &e).await
                    }
                    Err(e @ (ReplicaError::Unreachable { .. } | ReplicaError::Failed { .. })) => {
                        last = Some(e)
                    }
                    Err(e) => {
                        self.dirty.lock().unwrap().extend(nodes);
                        return Err(e.into());
                    }
                }
            }
            if !nodes.is_empty()
                && let Err(e) = self.pause(deadline, "a flush", last).await
            {
                self.dirty.lock().unwrap().extend(nodes);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn mutate(&self, oid: ObjectId, spec: ObjectSpec, op: Op) -> Result<()> {
        let deadline = Instant::now() + self.io_timeout;
        let mut version = self.clock.next();
        let mut reversions = 0;
        // Replicas that have applied the operation: a retry goes only to the others (a node
        // that stays in a newer replica set still has it).
        let mut applied: HashSet<String> = HashSet::new();
        loop {
            let epoch = self.admit(deadline).await?;
            let set = epoch.replicas(oid, spec.copies);
            let need = self.min_copies(spec.copies);
            if set.len() < need {
                tracing::warn!(object = %oid, epoch = epoch.epoch(), replicas = set.len(), need, "refusing write: fewer live replicas than minCopies");
                return Err(GatewayError::NotEnoughReplicas {
                    oid,
                    live: set.len(),
                    need,
                });
            }
            let mut targets: Vec<&NodeInfo> = set
                .into_iter()
                .filter(|n| !applied.contains(&n.id))
                .collect();
            // Remote requests first: they are on the wire while this node writes its own
            // copy (small local writes complete inline, on the first poll).
            targets.sort_by_key(|n| n.id == self.self_id());
            let results = futures::future::join_all(
                targets
                    .iter()
                    .map(|node| self.apply(&epoch, node, oid, spec, &op, version)),
            )
            .await;
            let mut retry = None;
            let mut refused = false;
            let mut newer = None;
            for (node, result) in targets.iter().zip(results) {
                match result {
                    Ok(seen) => {
                        newer = newer.max(seen);
                        self.dirty.lock().unwrap().insert(node.id.clone());
                        applied.insert(node.id.clone());
                    }
                    Err(e @ ReplicaError::Epoch { .. }) => {
                        catch_up(&self.view, &self.peers, node, &e).await;
                        refused = true;
                    }
                    Err(e @ (ReplicaError::Unreachable { .. } | ReplicaError::Failed { .. })) => {
                        tracing::debug!(object = %oid, error = %e, "replica change failed; retrying");
                        retry = Some(e)
                    }
                    Err(
                        e @ (ReplicaError::Corrupt { .. }
                        | ReplicaError::DiskFull { .. }
                        | ReplicaError::Invalid { .. }
                        | ReplicaError::Sealed { .. }
                        | ReplicaError::Fenced { .. }),
                    ) => {
                        return Err(e.into());
                    }
                }
            }
            if let Some(seen) = newer {
                // A replica held a newer version of some block: this gateway's clock is
                // behind another's. Send the change again, newer, to every replica.
                reversions += 1;
                if reversions > MOST_REVERSIONS {
                    return Err(GatewayError::TimedOut {
                        what: format!("object {oid}"),
                        reason: "other gateways kept writing newer versions".into(),
                    });
                }
                self.clock.observe(seen);
                version = self.clock.next();
                applied.clear();
                continue;
            }
            if refused {
                // Caught up with the refusing node's epoch: again at once, but within the
                // deadline (a node whose map cannot be fetched would be retried for ever).
                if Instant::now() > deadline {
                    return Err(GatewayError::TimedOut {
                        what: format!("object {oid}"),
                        reason: "replicas kept refusing this node's epoch".into(),
                    });
                }
                tokio::time::sleep(EPOCH_RETRY_PAUSE).await;
                continue;
            }
            match retry {
                None => return Ok(()),
                Some(e) => {
                    self.pause(deadline, format!("object {oid}"), Some(e))
                        .await?
                }
            }
        }
    }

    /// Applies `op` at `version` on one replica; the newer version it found, if any.
    async fn apply(
        &self,
        epoch: &Epoch,
        node: &NodeInfo,
        oid: ObjectId,
        spec: ObjectSpec,
        op: &Op,
        version: u64,
    ) -> std::result::Result<Option<u64>, ReplicaError> {
        let e = epoch.epoch();
        if node.id == self.self_id() {
            let (mutation, fua) = match op.clone() {
                Op::Write {
                    offset,
                    data,
                    fua,
                    fence,
                } => (
                    Mutation::Write {
                        offset,
                        data,
                        fence,
                    },
                    fua,
                ),
                Op::Zero { offset, len, fua } => (Mutation::Zero { offset, len }, fua),
                Op::Remove { garbage, fence } => (Mutation::Remove { garbage, fence }, false),
                Op::PutIfAbsent { data } => {
                    return self
                        .local
                        .put_if_absent(epoch, oid, spec, data)
                        .await
                        .map(|_| None);
                }
            };
            let applied = self
                .local
                .change(epoch, oid, spec, mutation, version, fua)
                .await?;
            return Ok(applied.newer);
        }
        match op.clone() {
            Op::Write {
                offset,
                data,
                fua,
                fence,
            } => {
                self.peers
                    .write(node, e, oid, spec, offset, data, version, fua, fence)
                    .await
            }
            Op::Zero { offset, len, fua } => {
                self.peers
                    .zero(node, e, oid, spec, offset, len, version, fua)
                    .await
            }
            Op::Remove { garbage, fence } => {
                self.peers
                    .remove(node, e, oid, spec, version, garbage, fence)
                    .await
            }
            Op::PutIfAbsent { data } => self
                .peers
                .put_if_absent(node, e, oid, spec, data)
                .await
                .map(|_| None),
        }
    }

    /// The current epoch, once this node holds a valid lease.
    async fn admit(&self, deadline: Instant) -> Result<Arc<Epoch>> {
        while !self.view.lease_valid() {
            if Instant::now() > deadline {
                return Err(GatewayError::Fenced);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Ok(self.view.current())
    }

    /// Waits before another attempt, or fails once the deadline has passed.
    async fn pause(
        &self,
        deadline: Instant,
        what: impl std::fmt::Display,
        last: Option<ReplicaError>,
    ) -> Result<()> {
        if Instant::now() > deadline {
            let reason = last.map_or_else(|| "no replica answered".to_owned(), |e| e.to_string());
            let what = what.to_string();
            tracing::warn!(%what, %reason, "giving up after the I/O timeout");
            return Err(GatewayError::TimedOut { what, reason });
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        Ok(())
    }
}
