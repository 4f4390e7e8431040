//! Volume metadata: create, delete, resize, and loading the stored inodes at start.
//!
//! Metadata operations are serialized on this node by one lock. The inode is stored as the
//! object `ObjectId::inode(vid)`: written whole (with FUA) when it is created or resized, and one
//! 4-byte data-table entry at a time when an object is first written.

use super::{Gateway, GatewayError, Result, Volume};
use crate::store::ObjectSpec;
use sheepdog_model::inode::{self, INODE_OBJECT_CAPACITY};
use sheepdog_model::oid::MAX_VID;
use sheepdog_model::{DEFAULT_OBJECT_SIZE, Inode, ObjectId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

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

    /// Deletes a volume and every object it owns.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        self.with_metadata_lock(self.delete_locked(name)).await
    }

    /// Changes a volume's size; shrinking frees the objects past the new end.
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<Inode> {
        self.with_metadata_lock(self.resize_locked(name, size))
            .await
    }

    /// Runs a metadata operation under the cluster-wide lock, releasing it whatever the outcome.
    async fn with_metadata_lock<T>(&self, operation: impl Future<Output = Result<T>>) -> Result<T> {
        let held = self.metadata.acquire().await?;
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
        self.load_volumes().await?;
        if self.names.read().unwrap().contains_key(name) {
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
        let inode = Inode::new(
            self.free_vid(name)?,
            name,
            size,
            object_size,
            copies,
            now_ns(),
        )?;
        self.store_inode(&inode).await?;
        tracing::info!(
            volume.name = name,
            vdi.id = inode.vid,
            size,
            copies,
            "created volume"
        );
        self.insert(inode.clone());
        Ok(inode)
    }

    async fn delete_locked(&self, name: &str) -> Result<()> {
        let inode = self.open_volume(name).await?.inode.read().unwrap().clone();
        for (index, &owner) in inode.data_vids.iter().enumerate() {
            if owner == inode.vid {
                self.replicas
                    .remove(ObjectId::data(inode.vid, index as u32), inode.copies)
                    .await?;
            }
        }
        self.replicas
            .remove(ObjectId::inode(inode.vid), inode.copies)
            .await?;
        self.names.write().unwrap().remove(name);
        self.volumes.write().unwrap().remove(&inode.vid);
        tracing::info!(volume.name = name, vdi.id = inode.vid, "deleted volume");
        Ok(())
    }

    async fn resize_locked(&self, name: &str, size: u64) -> Result<Inode> {
        let volume = self.open_volume(name).await?;
        let old = volume.inode.read().unwrap().clone();
        let mut new = old.clone();
        new.resize(size)?;
        for index in new.data_vids.len()..old.data_vids.len() {
            if old.data_vids[index] == old.vid {
                self.replicas
                    .remove(ObjectId::data(old.vid, index as u32), old.copies)
                    .await?;
            }
        }
        if new.data_vids.len() < old.data_vids.len() {
            let from = Inode::table_offset(new.data_vids.len() as u32);
            let len = 4 * (old.data_vids.len() - new.data_vids.len()) as u64;
            self.replicas
                .zero(ObjectId::inode(old.vid), old.copies, from, len, false)
                .await?;
        }
        self.store_inode(&new).await?;
        *volume.inode.write().unwrap() = new.clone();
        tracing::info!(
            volume.name = name,
            vdi.id = new.vid,
            old_size = old.size,
            size,
            "resized volume"
        );
        Ok(new)
    }

    /// Writes the whole inode, header and data table, durably.
    async fn store_inode(&self, inode: &Inode) -> Result<()> {
        let oid = ObjectId::inode(inode.vid);
        let bytes = bytes::Bytes::from(inode.encode());
        self.replicas
            .write(
                oid,
                ObjectSpec {
                    capacity: INODE_OBJECT_CAPACITY,
                    copies: inode.copies,
                },
                0,
                bytes,
                true,
            )
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
            .write(
                oid,
                ObjectSpec {
                    capacity: INODE_OBJECT_CAPACITY,
                    copies,
                },
                at,
                entry,
                fua,
            )
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

    /// The first unused vid after a hash of the name, so a name tends to keep its vid.
    fn free_vid(&self, name: &str) -> Result<u32> {
        let volumes = self.volumes.read().unwrap();
        let start = (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % u64::from(MAX_VID)) as u32;
        (0..MAX_VID)
            .map(|i| (start + i) % MAX_VID + 1)
            .find(|vid| !volumes.contains_key(vid))
            .ok_or(GatewayError::VidsExhausted)
    }

    fn insert(&self, inode: Inode) {
        self.names
            .write()
            .unwrap()
            .insert(inode.name.clone(), inode.vid);
        let volume = Arc::new(Volume {
            inode: RwLock::new(inode.clone()),
        });
        self.volumes.write().unwrap().insert(inode.vid, volume);
    }

    /// Finds the inodes stored anywhere in the cluster and caches the volumes; forgets cached
    /// volumes whose inode no longer exists.
    pub(super) async fn load_volumes(&self) -> Result<()> {
        let inodes = self.inode_objects().await;
        let known: Vec<u32> = self.volumes.read().unwrap().keys().copied().collect();
        for vid in known {
            if !inodes.contains_key(&ObjectId::inode(vid)) {
                self.forget(vid);
            }
        }
        for (oid, copies) in inodes {
            if self.volumes.read().unwrap().contains_key(&oid.vid()) {
                continue;
            }
            match self.read_inode(oid, copies).await {
                Ok(inode) => self.insert(inode),
                Err(e) => tracing::warn!(object = %oid, error = %e, "cannot read a volume's inode"),
            }
        }
        Ok(())
    }

    /// Inode objects held by any reachable node, with their copies.
    async fn inode_objects(&self) -> HashMap<ObjectId, u8> {
        let mut found: HashMap<ObjectId, u8> = self
            .replicas
            .store()
            .list()
            .into_iter()
            .filter(|(o, _)| o.is_inode())
            .collect();
        let view = self.replicas.view().current();
        for node in view
            .map
            .nodes
            .iter()
            .filter(|n| n.id != self.replicas.self_id())
        {
            match self.replicas.peers().list(node, view.epoch(), true).await {
                Ok(list) => found.extend(list.into_iter().filter(|(o, _)| o.is_inode())),
                Err(e) => {
                    tracing::debug!(node.id = %node.id, error = %e, "cannot list a node's volumes")
                }
            }
        }
        found
    }

    pub(super) fn forget(&self, vid: u32) {
        if let Some(volume) = self.volumes.write().unwrap().remove(&vid) {
            let name = volume.inode.read().unwrap().name.clone();
            self.names.write().unwrap().remove(&name);
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

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
