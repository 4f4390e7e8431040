//! Volume metadata: create, resize, the volume directory and the cache of open volumes.
//!
//! Metadata operations are serialized cluster-wide by the metadata lock. The inode is stored
//! as the object `ObjectId::inode(vid)`: written whole (with FUA) when it is created or
//! changed, and one 4-byte data-table entry at a time when an object is first written.
//! Snapshots, clones, rollback and delete are in `snapshots.rs`.

use super::{Gateway, GatewayError, Result, Volume};
use crate::freeze::Change;
use crate::store::ObjectSpec;
use sheepdog_model::inode::{self, INODE_OBJECT_CAPACITY};
use sheepdog_model::oid::MAX_VID;
use sheepdog_model::{DEFAULT_OBJECT_SIZE, Directory, Inode, ObjectId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How many inodes a directory load reads at once.
const DIRECTORY_READS: usize = 16;
/// How long a complete view of the volumes waits for a node that does not answer.
const COMPLETE_VIEW_WAIT: Duration = Duration::from_secs(20);

/// How sure a view of the volume directory must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sight {
    /// Whatever the reachable nodes hold: for finding a volume.
    BestEffort,
    /// Every node of the map and every inode: for choosing vids and freeing objects.
    Complete,
}

impl Gateway {
    /// Creates an empty volume. `copies` and `object_size` of 0 mean the defaults.
    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
        copies: u8,
        object_size: u32,
    ) -> Result<Inode> {
        self.with_metadata_lock(self.create_locked(name, size, copies, object_size))
            .await
    }

    /// Changes a volume's size; shrinking frees the objects past the new end.
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<Inode> {
        self.with_metadata_lock(self.resize_locked(name, size))
            .await
    }

    /// Runs a metadata operation under the cluster-wide lock, releasing it whatever the outcome.
    pub(super) async fn with_metadata_lock<T>(
        &self,
        operation: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let held = self.metadata.acquire().await?;
        self.replicas.view().retired.add(&held.retired);
        self.replicas.view().sealed.add(&held.sealed);
        let result = operation.await;
        self.metadata.release(held).await;
        result
    }

    async fn create_locked(
        &self,
        name: &str,
        size: u64,
        copies: u8,
        object_size: u32,
    ) -> Result<Inode> {
        inode::validate_name(name)?;
        let dir = self.prepared_directory().await?;
        if dir.working(name).is_some() {
            return Err(GatewayError::VolumeExists {
                name: name.to_owned(),
            });
        }
        let copies = if copies == 0 {
            self.default_copies
        } else {
            copies
        };
        let object_size = if object_size == 0 {
            DEFAULT_OBJECT_SIZE
        } else {
            object_size
        };
        let mut inode = Inode::new(
            self.new_vid(&dir, name)?,
            name,
            size,
            object_size,
            copies,
            now_ns(),
        )?;
        inode.generation = dir.next_generation(name);
        self.metadata.check()?;
        self.store_inode(&inode).await?;
        tracing::info!(
            volume.name = name,
            vdi.id = inode.vid,
            size,
            copies,
            "created volume"
        );
        self.cache(inode.clone());
        Ok(inode)
    }

    /// Resizes under a freeze of the volume's writes on every node, so no write lands past a
    /// new, smaller end; the thaw tells every gateway to read the inode again. Only the header
    /// is rewritten: the data table on disk, which other gateways update, is left as it is
    /// (except the entries past a new, smaller end).
    async fn resize_locked(&self, name: &str, size: u64) -> Result<Inode> {
        let volume = self.open_volume(name).await?;
        let vid = volume.vid();
        let frozen = self.freeze_everywhere(vid).await?;
        let result = self.resize_frozen(&volume, size).await;
        let change = result.as_ref().ok().map(|_| Change::Replaced(vid));
        self.thaw_everywhere(&frozen, change).await;
        let (old, new) = result?;
        tracing::info!(
            volume.name = name,
            vdi.id = new.vid,
            old_size = old.size,
            size,
            "resized volume"
        );
        Ok(new)
    }

    async fn resize_frozen(&self, volume: &Volume, size: u64) -> Result<(Inode, Inode)> {
        let copies = volume.inode.read().unwrap().copies;
        let old = self
            .read_inode(ObjectId::inode(volume.vid()), copies)
            .await?;
        let mut new = old.clone();
        new.resize(size)?;
        let spec = ObjectSpec {
            capacity: u64::from(old.object_size),
            copies: old.copies,
        };
        // Past a new, smaller end every written object becomes an empty one of the volume's
        // own (entries never go back to 0), so growing again reads zeros there.
        for index in new.data_vids.len()..old.data_vids.len() {
            let owner = old.data_vids[index];
            if owner == 0 {
                continue;
            }
            let index = index as u32;
            self.replicas
                .remove(ObjectId::data(old.vid, index), spec)
                .await?;
            if owner != old.vid {
                self.set_owner(volume, index, old.vid, false).await?;
            }
        }
        self.metadata.check()?;
        self.check_frozen(new.vid).await?;
        self.store_inode_header(&new).await?;
        *volume.inode.write().unwrap() = new.clone();
        Ok((old, new))
    }

    /// Writes the whole inode, header and data table, durably: for a new inode. A commit
    /// point, fenced by the metadata lock's token.
    pub(super) async fn store_inode(&self, inode: &Inode) -> Result<()> {
        let oid = ObjectId::inode(inode.vid);
        let (bytes, fence) = (bytes::Bytes::from(inode.encode()), self.metadata.token());
        self.replicas
            .write_fenced(oid, inode_spec(inode.copies), 0, bytes, true, fence)
            .await
    }

    /// Writes only the inode's header, durably: the data table on disk is the truth for the
    /// entries, which gateways update one at a time. A commit point, fenced by the metadata
    /// lock's token.
    pub(super) async fn store_inode_header(&self, inode: &Inode) -> Result<()> {
        let oid = ObjectId::inode(inode.vid);
        let mut header = vec![0u8; inode::HEADER_LEN];
        inode.encode_header(&mut header);
        let (spec, fence) = (inode_spec(inode.copies), self.metadata.token());
        self.replicas
            .write_fenced(oid, spec, 0, header.into(), true, fence)
            .await
    }

    /// Records that object `index` of `volume` is owned by `owner` (0: nobody).
    pub(super) async fn set_owner(
        &self,
        volume: &Volume,
        index: u32,
        owner: u32,
        fua: bool,
    ) -> Result<()> {
        let (vid, copies) = {
            let inode = volume.inode.read().unwrap();
            (inode.vid, inode.copies)
        };
        let entry = bytes::Bytes::copy_from_slice(&owner.to_le_bytes());
        let (oid, at) = (ObjectId::inode(vid), Inode::table_offset(index));
        self.replicas
            .write(oid, inode_spec(copies), at, entry, fua)
            .await?;
        if let Some(slot) = volume
            .inode
            .write()
            .unwrap()
            .data_vids
            .get_mut(index as usize)
        {
            *slot = owner;
        }
        Ok(())
    }

    /// A vid for a new inode called `name`: unused, unreferenced and never retired.
    pub(super) fn new_vid(&self, dir: &Directory, name: &str) -> Result<u32> {
        free_vid(dir, name, |vid| self.replicas.view().retired.contains(vid))
    }

    /// Caches a working volume, unless this vid is cached already.
    pub(super) fn cache(&self, inode: Inode) {
        let mut volumes = self.volumes.write().unwrap();
        if volumes.contains_key(&inode.vid) {
            return;
        }
        self.names
            .write()
            .unwrap()
            .insert(inode.name.clone(), inode.vid);
        volumes.insert(inode.vid, Arc::new(Volume::new(inode)));
    }

    /// Points a cached volume at its new working inode (after a snapshot or rollback).
    pub(super) fn retarget(&self, volume: &Volume, inode: Inode) {
        let old = volume.vid();
        let mut volumes = self.volumes.write().unwrap();
        let arc = volumes
            .get(&old)
            .filter(|arc| std::ptr::eq(Arc::as_ptr(arc), volume))
            .cloned();
        if arc.is_some() {
            volumes.remove(&old);
        }
        tracing::info!(volume.name = %inode.name, from = old, to = inode.vid, "volume moved to a new working vid");
        self.names
            .write()
            .unwrap()
            .insert(inode.name.clone(), inode.vid);
        let new_vid = inode.vid;
        *volume.inode.write().unwrap() = inode;
        if let Some(arc) = arc {
            volumes.entry(new_vid).or_insert(arc);
        }
    }

    /// Reads every inode the reachable nodes hold and brings the cache of working volumes in
    /// step. Good enough to find a volume; decisions that free or allocate use
    /// [`Gateway::complete_directory`].
    pub(super) async fn load_directory(&self) -> Result<Directory> {
        self.directory(Sight::BestEffort).await
    }

    /// Like [`Gateway::load_directory`], but every node of the map answered and every inode was
    /// read, or this fails: a volume missing from the view would have its vid reused or the
    /// objects it reads freed.
    pub(super) async fn complete_directory(&self) -> Result<Directory> {
        self.directory(Sight::Complete).await
    }

    async fn directory(&self, sight: Sight) -> Result<Directory> {
        use futures::StreamExt;
        let objects = self.inode_objects(sight).await?;
        // Read a few at once: one slow inode (a replica cut off) must not add its I/O timeout
        // to every other's.
        let reads: Vec<_> = futures::stream::iter(objects)
            .map(|(oid, copies)| async move { (oid, self.read_inode(oid, copies).await) })
            .buffered(DIRECTORY_READS)
            .collect()
            .await;
        let mut inodes = Vec::new();
        for (oid, read) in reads {
            match read {
                Ok(inode) => inodes.push(inode),
                Err(GatewayError::InvalidVolume(inode::InodeError::BadMagic)) => {}
                Err(e) if sight == Sight::Complete => {
                    return Err(GatewayError::IncompleteView {
                        reason: format!("the inode {oid} cannot be read: {e}"),
                    });
                }
                Err(e) => tracing::warn!(object = %oid, error = %e, "cannot read a volume's inode"),
            }
        }
        let dir = Directory::new(inodes);
        let cached: Vec<Arc<Volume>> = self.volumes.read().unwrap().values().cloned().collect();
        for volume in cached {
            let (vid, name) = {
                let inode = volume.inode.read().unwrap();
                (inode.vid, inode.name.clone())
            };
            match dir.working(&name) {
                Some(w) if w.vid == vid => volume.refresh(w.clone()),
                Some(w) if !self.volumes.read().unwrap().contains_key(&w.vid) => {
                    self.retarget(&volume, w.clone())
                }
                _ => self.forget(vid),
            }
        }
        for inode in dir.all().filter(|i| !i.snapshot && !i.deleted) {
            if dir.working(&inode.name).is_some_and(|w| w.vid == inode.vid) {
                self.cache(inode.clone());
            }
        }
        Ok(dir)
    }

    /// Inode objects held by the nodes of the map, with their copies. With `Sight::Complete`
    /// a node that does not answer is asked again until it does or leaves the map.
    async fn inode_objects(&self, sight: Sight) -> Result<HashMap<ObjectId, u8>> {
        let view = self.replicas.view();
        let mut found: HashMap<ObjectId, u8> = self
            .replicas
            .store()
            .list()
            .into_iter()
            .filter(|(o, m)| o.is_inode() && !m.tombstone && !view.retired.contains(o.vid()))
            .map(|(o, m)| (o, m.copies))
            .collect();
        let deadline = Instant::now() + COMPLETE_VIEW_WAIT;
        let current = view.current();
        for node in current
            .map
            .nodes
            .iter()
            .filter(|n| n.id != self.replicas.self_id())
        {
            loop {
                let epoch = view.epoch();
                match self.replicas.peers().list(node, epoch, true).await {
                    Ok(list) => {
                        found.extend(
                            list.into_iter()
                                .filter(|(o, m)| o.is_inode() && !m.tombstone)
                                .map(|(o, m)| (o, m.copies)),
                        );
                        break;
                    }
                    Err(e) if sight == Sight::BestEffort => {
                        tracing::debug!(node.id = %node.id, error = %e, "cannot list a node's volumes");
                        break;
                    }
                    Err(_) if view.current().map.node(&node.id).is_none() => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(GatewayError::IncompleteView {
                            reason: format!("node {} does not answer: {e}", node.id),
                        });
                    }
                    Err(e) => {
                        crate::recovery::catch_up(view, self.replicas.peers(), node, &e).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Ok(found)
    }

    pub(super) fn forget(&self, vid: u32) {
        if let Some(volume) = self.volumes.write().unwrap().remove(&vid) {
            let name = volume.inode.read().unwrap().name.clone();
            let mut names = self.names.write().unwrap();
            if names.get(&name) == Some(&vid) {
                names.remove(&name);
            }
        }
    }

    /// Reads an inode, header then data table, from its replicas.
    pub(super) async fn read_inode(&self, oid: ObjectId, copies: u8) -> Result<Inode> {
        let header = self
            .replicas
            .read(oid, copies, 0, inode::HEADER_LEN)
            .await?;
        let partial = Inode::decode(&header)?;
        let table_len = partial.encoded_len() - inode::HEADER_LEN;
        let table = self
            .replicas
            .read(oid, copies, inode::HEADER_LEN as u64, table_len)
            .await?;
        Ok(Inode::decode(&[header, table].concat())?)
    }
}

/// The first vid after a hash of the name that nothing uses or references and that was
/// never retired, so a name tends to keep its vid while it lives.
fn free_vid(dir: &Directory, name: &str, retired: impl Fn(u32) -> bool) -> Result<u32> {
    let start = (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % u64::from(MAX_VID)) as u32;
    (0..MAX_VID)
        .map(|i| (start + i) % MAX_VID + 1)
        .find(|&vid| !dir.vid_in_use(vid) && !retired(vid))
        .ok_or(GatewayError::VidsExhausted)
}

/// What an inode object is stored as.
pub(super) fn inode_spec(copies: u8) -> ObjectSpec {
    ObjectSpec {
        capacity: INODE_OBJECT_CAPACITY,
        copies,
    }
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
