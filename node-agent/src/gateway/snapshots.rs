//! Snapshots, clones, rollback and delete: copy-on-write at object granularity.
//!
//! Every operation runs under the cluster-wide metadata lock, on a directory of every inode
//! read after taking it. Each has one commit point, a single durable inode write:
//!
//! - snapshot: the tag is stamped on the working inode, then the new working inode (next
//!   generation, parent = the old one, a copy of its table) is written: that is the commit;
//!   then the old inode is flagged a snapshot.
//! - rollback: the new working inode (next generation, a copy of the snapshot's table) is the
//!   commit; then the old working inode is deleted.
//! - clone: writing the clone's inode.
//! - delete: flagging the inode deleted; objects nothing reads are then freed.
//!
//! An operation interrupted after its commit point is finished by the next one
//! ([`Directory::repairs`]). Writes to the working volume are frozen on every node of the
//! cluster across a snapshot, rollback or delete, so that the snapshot holds exactly the
//! writes acknowledged before it.

use super::volumes::{inode_spec, now_ns};
use super::{Gateway, GatewayError, Result, Volume};
use crate::freeze::Change;
use crate::store::ObjectSpec;
use sheepdog_model::directory::Repair;
use sheepdog_model::inode;
use sheepdog_model::{Directory, Inode, ObjectId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long after a node left the map garbage collection waits: the node may come back with
/// the only copy of an inode that reads objects that look unread without it.
const GC_GRACE: Duration = Duration::from_secs(600);
/// How often a node tries again a garbage collection it had to put off.
const GC_RETRY: Duration = Duration::from_secs(2);
/// How long a freeze lasts if the gateway that took it dies before thawing.
const FREEZE_TTL: Duration = Duration::from_secs(30);
/// How long a thaw waits for a node's answer.
const THAW_WAIT: Duration = Duration::from_secs(5);
/// How long a metadata operation tries to freeze a volume on every node.
const FREEZE_WAIT: Duration = Duration::from_secs(20);
/// How long before its freezes could expire an operation still commits: the commit write's
/// time. The freezes are renewed every third of their time limit, so this leaves 10 s.
const FREEZE_MARGIN: Duration = Duration::from_secs(10);

/// The renewal of a volume's freezes on every node while its metadata operation runs.
pub(super) struct FreezeRenewal {
    /// Tells this renewal from a later one of the same vid.
    id: u64,
    /// The operation's fence, sent with every freeze, renewal and thaw.
    fence: u64,
    task: tokio::task::JoinHandle<()>,
    /// The nodes frozen.
    nodes: Vec<sheepdog_model::NodeInfo>,
    /// Until when every node's freeze is known to hold.
    held_until: Arc<std::sync::Mutex<Instant>>,
}

impl Drop for FreezeRenewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The renewals of the freezes this gateway's metadata operations hold, by vid.
pub(super) type FreezeRenewals = Arc<std::sync::Mutex<HashMap<u32, FreezeRenewal>>>;

/// Held by a metadata operation from its freeze to its thaw. Dropped without a thaw (the
/// operation was cancelled: its client went away), it stops the renewals, so the freezes
/// expire by themselves instead of holding the volume's writes for ever.
#[must_use = "the freeze's renewals stop when this is dropped"]
pub(super) struct Frozen {
    vid: u32,
    id: u64,
    fence: u64,
    renewals: FreezeRenewals,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut renewals = self.renewals.lock().unwrap();
        if renewals.get(&self.vid).is_some_and(|r| r.id == self.id) {
            renewals.remove(&self.vid);
        }
    }
}

static RENEWAL_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Gateway {
    /// Snapshots the working volume `name` as `tag` (empty: the next free number). Returns the
    /// snapshot.
    pub async fn snapshot_volume(&self, name: &str, tag: &str) -> Result<Inode> {
        self.with_metadata_lock(self.snapshot_locked(name, tag))
            .await
    }

    /// A new writable volume `name` from the snapshot `source@tag`, sharing all its objects.
    pub async fn clone_volume(&self, source: &str, tag: &str, name: &str) -> Result<Inode> {
        self.with_metadata_lock(self.clone_locked(source, tag, name))
            .await
    }

    /// Gives the volume `name` the content of its snapshot `tag` again. Returns the new
    /// working inode.
    pub async fn rollback_volume(&self, name: &str, tag: &str) -> Result<Inode> {
        self.with_metadata_lock(self.rollback_locked(name, tag))
            .await
    }

    /// Deletes the volume `name`, or its snapshot `tag` when one is given, and frees every
    /// object that nothing reads any more.
    pub async fn delete_volume(&self, name: &str, tag: Option<&str>) -> Result<()> {
        self.with_metadata_lock(self.delete_locked(name, tag)).await
    }

    /// The directory, with the work of any interrupted operation finished first.
    pub(super) async fn prepared_directory(&self) -> Result<Directory> {
        let dir = self.complete_directory().await?;
        let repairs = dir.repairs();
        if repairs.is_empty() {
            return Ok(dir);
        }
        for repair in repairs {
            let vid = match repair {
                Repair::FinishSnapshot(vid) | Repair::Delete(vid) => vid,
            };
            let Some(mut inode) = dir.get(vid).cloned() else {
                continue;
            };
            match repair {
                Repair::FinishSnapshot(_) => inode.snapshot = true,
                Repair::Delete(_) => inode.deleted = true,
            }
            tracing::warn!(vdi.id = vid, repair = ?repair, "finishing an interrupted volume operation");
            self.seal(vid).await;
            self.store_inode_header(&inode).await?;
        }
        self.collect_garbage().await?;
        self.complete_directory().await
    }

    async fn snapshot_locked(&self, name: &str, tag: &str) -> Result<Inode> {
        let dir = self.prepared_directory().await?;
        let working = dir.working(name).ok_or_else(|| no_volume(name))?;
        let tag = if tag.is_empty() {
            next_tag(&dir, name)
        } else {
            tag.to_owned()
        };
        validate_tag(&tag)?;
        if dir.snapshot(name, &tag).is_some() {
            let name = name.to_owned();
            return Err(GatewayError::SnapshotExists { name, tag });
        }
        let (old_vid, copies) = (working.vid, working.copies);
        let new_vid = self.new_vid(&dir, name)?;
        let generation = dir.next_generation(name);
        let started = Instant::now();
        let frozen = self.freeze_everywhere(old_vid).await?;
        // Writes are drained: this read has every acknowledged write's table entry.
        let result = async {
            let mut snapshot = self.read_inode(ObjectId::inode(old_vid), copies).await?;
            snapshot.tag = tag.clone();
            snapshot.ctime_ns = now_ns();
            self.store_inode_header(&snapshot).await?;
            let mut next = snapshot.clone();
            next.vid = new_vid;
            next.parent_vid = old_vid;
            next.generation = generation;
            next.ctime_ns = now_ns();
            next.tag.clear();
            self.check_frozen(old_vid).await?;
            self.commit(&next).await?;
            self.seal(old_vid).await;
            Ok((snapshot, next))
        }
        .await;
        let (mut snapshot, next) = match result {
            Ok(done) => done,
            Err(e) => {
                self.thaw_everywhere(&frozen, None).await;
                return Err(e);
            }
        };
        self.move_local(old_vid, &next);
        self.thaw_everywhere(&frozen, Some(Change::Replaced(new_vid)))
            .await;
        let frozen = started.elapsed();
        snapshot.snapshot = true;
        self.store_inode_header(&snapshot).await?;
        tracing::info!(
            volume.name = name,
            tag,
            snapshot.vid = old_vid,
            vdi.id = new_vid,
            frozen_ms = frozen.as_millis() as u64,
            "took a snapshot"
        );
        Ok(snapshot)
    }

    async fn clone_locked(&self, source: &str, tag: &str, name: &str) -> Result<Inode> {
        inode::validate_name(name)?;
        let dir = self.prepared_directory().await?;
        let snapshot = dir
            .snapshot(source, tag)
            .ok_or_else(|| no_snapshot(source, tag))?;
        if dir.working(name).is_some() {
            return Err(GatewayError::VolumeExists {
                name: name.to_owned(),
            });
        }
        let mut clone = snapshot.clone();
        clone.vid = self.new_vid(&dir, name)?;
        clone.name = name.to_owned();
        clone.snapshot = false;
        clone.tag.clear();
        clone.parent_vid = snapshot.vid;
        clone.generation = dir.next_generation(name);
        clone.ctime_ns = now_ns();
        self.commit(&clone).await?;
        tracing::info!(
            volume.name = name,
            source,
            tag,
            vdi.id = clone.vid,
            "cloned a snapshot"
        );
        self.cache(clone.clone());
        Ok(clone)
    }

    async fn rollback_locked(&self, name: &str, tag: &str) -> Result<Inode> {
        let dir = self.prepared_directory().await?;
        let snapshot = dir
            .snapshot(name, tag)
            .ok_or_else(|| no_snapshot(name, tag))?;
        let old = dir.working(name).map(|w| w.vid);
        let mut next = snapshot.clone();
        next.vid = self.new_vid(&dir, name)?;
        next.snapshot = false;
        next.tag.clear();
        next.parent_vid = snapshot.vid;
        next.generation = dir.next_generation(name);
        next.ctime_ns = now_ns();
        let frozen = match old {
            Some(old) => Some(self.freeze_everywhere(old).await?),
            None => None,
        };
        if let Err(e) = async {
            if let Some(old) = old {
                self.check_frozen(old).await?;
            }
            self.commit(&next).await
        }
        .await
        {
            if let Some(frozen) = &frozen {
                self.thaw_everywhere(frozen, None).await;
            }
            return Err(e);
        }
        if let (Some(old), Some(frozen)) = (old, &frozen) {
            self.seal(old).await;
            self.move_local(old, &next);
            self.thaw_everywhere(frozen, Some(Change::Replaced(next.vid)))
                .await;
            self.mark_deleted(&dir, old).await?;
            self.collect_garbage().await?;
        } else {
            self.cache(next.clone());
        }
        tracing::info!(volume.name = name, tag, vdi.id = next.vid, "rolled back");
        Ok(next)
    }

    async fn delete_locked(&self, name: &str, tag: Option<&str>) -> Result<()> {
        let dir = self.prepared_directory().await?;
        match tag {
            Some(tag) => {
                let snapshot = dir
                    .snapshot(name, tag)
                    .ok_or_else(|| no_snapshot(name, tag))?;
                self.mark_deleted(&dir, snapshot.vid).await?;
            }
            None => {
                let vid = dir.working(name).ok_or_else(|| no_volume(name))?.vid;
                let frozen = self.freeze_everywhere(vid).await?;
                let deleted = async {
                    self.check_frozen(vid).await?;
                    self.mark_deleted(&dir, vid).await
                };
                if let Err(e) = deleted.await {
                    self.thaw_everywhere(&frozen, None).await;
                    return Err(e);
                }
                self.seal(vid).await;
                self.forget(vid);
                self.thaw_everywhere(&frozen, Some(Change::Deleted)).await;
            }
        }
        tracing::info!(volume.name = name, tag, "deleted");
        self.collect_garbage().await
    }

    /// Writes a new inode that commits an operation; if the write fails, removes what may
    /// have reached some replicas, so that the operation leaves nothing behind.
    async fn commit(&self, inode: &Inode) -> Result<()> {
        self.metadata.check()?;
        if let Err(e) = self.store_inode(inode).await {
            let oid = ObjectId::inode(inode.vid);
            if let Err(undo) = self.replicas.remove(oid, inode_spec(inode.copies)).await {
                tracing::error!(object = %oid, error = %undo, "cannot remove the inode of a failed operation; the next operation finishes or undoes it");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn mark_deleted(&self, dir: &Directory, vid: u32) -> Result<()> {
        let Some(inode) = dir.get(vid) else {
            return Ok(());
        };
        let mut inode = self.read_inode(ObjectId::inode(vid), inode.copies).await?;
        inode.deleted = true;
        self.metadata.check()?;
        self.store_inode_header(&inode).await
    }

    /// Frees the objects of deleted inodes that nothing reads, then the inodes themselves.
    ///
    /// Only on a complete view of a settled cluster: every node of the map answered, every
    /// inode was read, every node recovered the current epoch, and no node left the map
    /// within [`GC_GRACE`] (it may hold the only copy of an inode that still reads these
    /// objects). Otherwise nothing is freed now; a later operation frees it.
    async fn collect_garbage(&self) -> Result<()> {
        let view = self.replicas.view();
        let unsettled = if !view.all_recovered() {
            Some("not every node has recovered the current epoch".to_owned())
        } else {
            view.departed_within(GC_GRACE)
                .map(|node| format!("node {node} left the cluster recently"))
        };
        if let Some(why) = unsettled {
            tracing::info!(reason = %why, "not freeing unread objects yet; this node tries again");
            self.gc_deferred.store(true, Ordering::Release);
            return Ok(());
        }
        let dir = match self.complete_directory().await {
            Ok(dir) => dir,
            Err(e @ GatewayError::IncompleteView { .. }) => {
                tracing::info!(error = %e, "not freeing unread objects yet; this node tries again");
                self.gc_deferred.store(true, Ordering::Release);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.gc_deferred.store(false, Ordering::Release);
        let garbage = dir.garbage();
        self.metadata.check()?;
        if !garbage.inodes.is_empty() {
            // First, durably: a node away now drops these vids' copies when it returns.
            self.metadata.retire(&garbage.inodes).await?;
            self.replicas.view().retired.add(&garbage.inodes);
        }
        for &oid in &garbage.objects {
            let spec = dir.get(oid.vid()).map_or(inode_spec(1), |i| ObjectSpec {
                capacity: u64::from(i.object_size),
                copies: i.copies,
            });
            self.replicas
                .collect(oid, spec, self.metadata.token())
                .await?;
        }
        for &vid in &garbage.inodes {
            if let Some(inode) = dir.get(vid) {
                let (oid, spec) = (ObjectId::inode(vid), inode_spec(inode.copies));
                self.replicas
                    .collect(oid, spec, self.metadata.token())
                    .await?;
            }
        }
        // Deleted inodes that stay (some objects are still read) keep their table entries:
        // entries never go back (see `store::table`). Their freed objects are tombstones, and
        // removing a tombstone again changes nothing.
        if !garbage.objects.is_empty() || !garbage.inodes.is_empty() {
            tracing::info!(
                objects = garbage.objects.len(),
                inodes = garbage.inodes.len(),
                "freed objects nothing reads any more"
            );
        }
        Ok(())
    }

    /// Seals `vid` (it stopped being a working volume) here and on the coordinator, durably.
    /// Called after the operation's commit point, so it cannot fail the operation: if the
    /// coordinator cannot record it, the nodes frozen by the operation still know (the thaw
    /// tells them), and only a gateway cut off during the operation could still write the
    /// old vid; that is logged.
    async fn seal(&self, vid: u32) {
        self.replicas.view().sealed.add(&[vid]);
        if let Err(e) = self.metadata.seal(&[vid]).await {
            tracing::error!(vdi.id = vid, error = %e, "cannot seal a replaced vid on the coordinator; a gateway cut off now could still write to it");
        }
    }

    /// Runs garbage collection again, under the metadata lock, while an earlier one was put
    /// off: objects of deleted volumes are freed once every node is back and recovered.
    pub async fn retry_deferred_gc(self: Arc<Self>) {
        loop {
            tokio::time::sleep(GC_RETRY).await;
            if !self.gc_deferred.load(Ordering::Acquire) {
                continue;
            }
            if let Err(e) = self.with_metadata_lock(self.collect_garbage()).await {
                tracing::debug!(error = %e, "garbage collection failed; trying again later");
            }
        }
    }

    /// Points this node's handle of the volume at its new working inode.
    fn move_local(&self, old_vid: u32, next: &Inode) {
        let cached = self.volumes.read().unwrap().get(&old_vid).cloned();
        match cached {
            Some(volume) => self.retarget(&volume, next.clone()),
            None => self.cache(next.clone()),
        }
    }

    /// Freezes writes to `vid` on every node of the cluster. A node that does not answer is
    /// retried until it answers or leaves the cluster map (then it is fenced and cannot
    /// write); if that takes too long the operation fails and the volume is thawed.
    pub(super) async fn freeze_everywhere(&self, vid: u32) -> Result<Frozen> {
        let started = Instant::now();
        let deadline = started + FREEZE_WAIT;
        let id = RENEWAL_IDS.fetch_add(1, Ordering::Relaxed);
        // Greater than any earlier operation's: a newer metadata lock grant, or a later
        // operation of this gateway under the same grant.
        let fence = (u64::from(self.metadata.token()) << 32) | (id & 0xffff_ffff);
        let nodes = self.replicas.view().current().map.nodes.clone();
        let mut frozen = Vec::new();
        for node in nodes {
            let result = loop {
                let wait = deadline.saturating_duration_since(Instant::now());
                let attempt = if node.id == self.replicas.self_id() {
                    tokio::time::timeout(wait, self.freezer.freeze(vid, fence, FREEZE_TTL))
                        .await
                        .map_err(|_| "writes in flight on this node did not finish".to_string())
                } else {
                    let freeze = self.replicas.peers().freeze(&node, vid, fence, FREEZE_TTL);
                    match tokio::time::timeout(wait, freeze).await {
                        Ok(answer) => answer.map_err(|e| e.to_string()),
                        Err(_) => Err("no answer".to_string()),
                    }
                };
                match attempt {
                    Ok(true) => break Ok(true),
                    // Refused for this fence: asking again cannot change that.
                    Ok(false) => {
                        break Err(
                            "refused: a newer operation froze or thawed the volume there".into(),
                        );
                    }
                    Err(_)
                        if !self
                            .replicas
                            .view()
                            .current()
                            .map
                            .nodes
                            .iter()
                            .any(|n| n.id == node.id) =>
                    {
                        break Ok(false);
                    }
                    Err(reason) if Instant::now() >= deadline => break Err(reason),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            match result {
                Ok(true) => frozen.push(node),
                Ok(false) => {}
                Err(reason) => {
                    // Every node, not only those that answered: a freeze still on its way to
                    // one that did not is then refused when it arrives.
                    let map = self.replicas.view().current().map.nodes.clone();
                    let thaws = map.iter().map(|n| self.thaw_node(n, vid, fence, None));
                    futures::future::join_all(thaws).await;
                    return Err(GatewayError::TimedOut {
                        what: format!("freezing writes to vid {vid} on node {}", node.id),
                        reason,
                    });
                }
            }
        }
        let held_until = Arc::new(std::sync::Mutex::new(started + FREEZE_TTL));
        let renewer = Renewer {
            freezer: self.freezer.clone(),
            peers: self.replicas.peers().clone(),
            view: self.replicas.view().clone(),
            vid,
            fence,
        };
        let task = tokio::spawn(renewer.run(frozen.clone(), started, held_until.clone()));
        let renewal = FreezeRenewal {
            id,
            fence,
            task,
            nodes: frozen,
            held_until,
        };
        self.freeze_renewals.lock().unwrap().insert(vid, renewal);
        Ok(Frozen {
            vid,
            id,
            fence,
            renewals: self.freeze_renewals.clone(),
        })
    }

    /// Fails unless every node of the map holds its freeze of `vid` long enough for a
    /// commit, confirmed by a renewal round now: a freeze that expired, or a node that
    /// restarted or joined since the freeze, lets writes reach the old vid, which the commit
    /// would lose.
    pub(super) async fn check_frozen(&self, vid: u32) -> Result<()> {
        let failed = |reason: String| GatewayError::TimedOut {
            what: format!("keeping writes to vid {vid} frozen on every node"),
            reason: format!("{reason}; the operation stopped before its commit, run it again"),
        };
        let (nodes, held_until, fence) = {
            let renewals = self.freeze_renewals.lock().unwrap();
            let renewal = renewals
                .get(&vid)
                .ok_or_else(|| failed("the freeze is no longer held".into()))?;
            (
                renewal.nodes.clone(),
                renewal.held_until.clone(),
                renewal.fence,
            )
        };
        let map = self.replicas.view().current().map.clone();
        if let Some(new) = map
            .nodes
            .iter()
            .find(|n| !nodes.iter().any(|f| f.id == n.id))
        {
            return Err(failed(format!("node {} joined since the freeze", new.id)));
        }
        let renewer = Renewer {
            freezer: self.freezer.clone(),
            peers: self.replicas.peers().clone(),
            view: self.replicas.view().clone(),
            vid,
            fence,
        };
        let round = Instant::now();
        if let Err(node) = renewer.round(&nodes).await {
            return Err(failed(format!("node {node} did not confirm its freeze")));
        }
        let mut until = held_until.lock().unwrap();
        *until = (*until).max(round + FREEZE_TTL);
        if Instant::now() + FREEZE_MARGIN >= *until {
            return Err(failed("the freezes would expire during the commit".into()));
        }
        Ok(())
    }

    pub(super) async fn thaw_everywhere(&self, frozen: &Frozen, change: Option<Change>) {
        let (vid, fence) = (frozen.vid, frozen.fence);
        let renewal = {
            let mut renewals = self.freeze_renewals.lock().unwrap();
            match renewals.get(&vid) {
                Some(r) if r.id == frozen.id => renewals.remove(&vid),
                _ => None,
            }
        };
        if let Some(mut renewal) = renewal {
            // Stopped, and no renewal in flight, before any thaw goes out.
            renewal.task.abort();
            let _ = (&mut renewal.task).await;
        }
        let nodes = self.replicas.view().current().map.nodes.clone();
        let thaws = nodes
            .iter()
            .map(|node| self.thaw_node(node, vid, fence, change));
        futures::future::join_all(thaws).await;
        if !nodes.iter().any(|n| n.id == self.replicas.self_id()) {
            self.freezer.thaw(vid, fence, change);
        }
    }

    /// Thaws `vid` on `node`; a node that does not answer in time keeps its freeze until it
    /// expires (a late thaw changes nothing that a newer operation froze).
    async fn thaw_node(
        &self,
        node: &sheepdog_model::NodeInfo,
        vid: u32,
        fence: u64,
        change: Option<Change>,
    ) {
        if node.id == self.replicas.self_id() {
            self.freezer.thaw(vid, fence, change);
            return;
        }
        let thaw = self.replicas.peers().thaw(node, vid, fence, change);
        let error = match tokio::time::timeout(THAW_WAIT, thaw).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {THAW_WAIT:?}"),
        };
        tracing::warn!(node.id = %node.id, vdi.id = vid, error, "cannot thaw a volume on a node; its freeze expires by itself");
    }

    /// Moves a working volume's handle to what replaced its vid (`Replaced` with the same vid:
    /// read its inode again). A successor that is gone already (a later rollback or delete) or
    /// a freeze that expired means a look-up by name.
    pub(super) async fn follow(&self, volume: &Volume, vid: u32, change: Change) -> Result<()> {
        let (name, copies) = {
            let inode = volume.inode.read().unwrap();
            (inode.name.clone(), inode.copies)
        };
        let successor = match change {
            Change::Deleted => return Err(no_volume(&name)),
            Change::Replaced(next) => self
                .read_inode(ObjectId::inode(next), copies)
                .await
                .ok()
                .filter(|i| !i.snapshot && !i.deleted),
            Change::Unknown => None,
        };
        let inode = match successor {
            Some(inode) => inode,
            None => {
                let dir = self.load_directory().await?;
                dir.working(&name)
                    .cloned()
                    .ok_or_else(|| no_volume(&name))?
            }
        };
        if inode.vid == vid {
            // Still this vid (a resize, or an expired freeze): take its new header.
            volume.refresh(inode);
            self.freezer.clear(vid);
        } else {
            self.retarget(volume, inode);
        }
        Ok(())
    }
}

/// The first of `1`, `2`, ... that no snapshot of `name` has as its tag.
fn next_tag(dir: &Directory, name: &str) -> String {
    (1u64..)
        .map(|n| n.to_string())
        .find(|tag| dir.snapshot(name, tag).is_none())
        .expect("a free number")
}

/// Tags follow the rules of names.
fn validate_tag(tag: &str) -> Result<()> {
    inode::validate_name(tag).map_err(|_| {
        GatewayError::InvalidVolume(inode::InodeError::InvalidName {
            name: tag.to_owned(),
            reason: "a snapshot tag must be 1 to 256 printable bytes without '@' or '/'",
        })
    })
}

fn no_volume(name: &str) -> GatewayError {
    GatewayError::NoSuchVolume {
        name: name.to_owned(),
    }
}

fn no_snapshot(name: &str, tag: &str) -> GatewayError {
    GatewayError::NoSuchSnapshot {
        name: name.to_owned(),
        tag: tag.to_owned(),
    }
}

/// Renews one volume's freezes.
struct Renewer {
    freezer: Arc<crate::freeze::Freezer>,
    peers: Arc<crate::peer::Peers>,
    view: Arc<crate::cluster::ClusterView>,
    vid: u32,
    fence: u64,
}

impl Renewer {
    /// Every third of the time limit from `started` until aborted (by the thaw, or a dropped
    /// [`Frozen`]), moving `held_until` on after each round every node confirmed.
    async fn run(
        self,
        nodes: Vec<sheepdog_model::NodeInfo>,
        started: Instant,
        held_until: Arc<std::sync::Mutex<Instant>>,
    ) {
        let period = FREEZE_TTL / 3;
        let first = tokio::time::Instant::from_std(started) + period;
        let mut ticks = tokio::time::interval_at(first, period);
        loop {
            ticks.tick().await;
            let round = Instant::now();
            if self.round(&nodes).await.is_ok() {
                let mut until = held_until.lock().unwrap();
                *until = (*until).max(round + FREEZE_TTL);
            }
        }
    }

    /// Renews the freeze on every node of `nodes` still in the map, all at once; the first
    /// node that did not confirm, if any. A node that left the map is passed over: its
    /// gateway's writes are refused by the others' epoch.
    async fn round(&self, nodes: &[sheepdog_model::NodeInfo]) -> std::result::Result<(), String> {
        let map = self.view.current().map.clone();
        let renewals = nodes
            .iter()
            .filter(|n| map.node(&n.id).is_some())
            .map(|node| async move {
                let held = if node.id == self.view.self_id() {
                    Ok(self.freezer.renew(self.vid, self.fence, FREEZE_TTL))
                } else {
                    let renew = self
                        .peers
                        .renew_freeze(node, self.vid, self.fence, FREEZE_TTL);
                    match tokio::time::timeout(FREEZE_TTL / 3, renew).await {
                        Ok(answer) => answer.map_err(|e| e.to_string()),
                        Err(_) => Err("no answer".into()),
                    }
                };
                (node, held)
            });
        let mut failed = None;
        for (node, held) in futures::future::join_all(renewals).await {
            if !matches!(held, Ok(true)) {
                tracing::warn!(node.id = %node.id, vdi.id = self.vid, answer = ?held, "cannot renew a volume freeze on a node");
                failed.get_or_insert_with(|| node.id.clone());
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancelled operation drops its `Frozen` without a thaw: the renewal stops (the
    /// freezes expire by themselves), and a later operation's renewal of the vid is kept.
    #[tokio::test]
    async fn dropping_a_frozen_guard_stops_its_renewal_and_only_its_own() {
        let renewals = FreezeRenewals::default();
        let renewal = |id: u64| FreezeRenewal {
            id,
            fence: id,
            task: tokio::spawn(std::future::pending::<()>()),
            nodes: Vec::new(),
            held_until: Arc::new(std::sync::Mutex::new(Instant::now())),
        };
        renewals.lock().unwrap().insert(7, renewal(1));
        let frozen = Frozen {
            vid: 7,
            id: 1,
            fence: 1,
            renewals: renewals.clone(),
        };
        let task = renewals.lock().unwrap()[&7].task.abort_handle();
        drop(frozen);
        assert!(renewals.lock().unwrap().is_empty(), "the renewal is gone");
        tokio::task::yield_now().await;
        assert!(task.is_finished(), "and its task stopped");
        // A stale guard leaves a newer renewal of the same vid alone.
        renewals.lock().unwrap().insert(7, renewal(2));
        drop(Frozen {
            vid: 7,
            id: 1,
            fence: 1,
            renewals: renewals.clone(),
        });
        assert_eq!(renewals.lock().unwrap()[&7].id, 2);
    }
}
