//! Volume metadata: create, delete, resize, and loading the stored inodes at start.
//!
//! Metadata operations are serialized on this node by one lock. The inode is stored as the
//! object `ObjectId::inode(vid)`: written whole (with FUA) when it is created or resized, and one
//! 4-byte data-table entry at a time when an object is first written.

use super::{Gateway, GatewayError, Result, Volume};
use sheepdog_model::inode::{self, INODE_OBJECT_CAPACITY};
use sheepdog_model::oid::MAX_VID;
use sheepdog_model::{DEFAULT_OBJECT_SIZE, Inode, ObjectId};
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
        let _serial = self.metadata.lock().await;
        inode::validate_name(name)?;
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

    /// Deletes a volume and every object it owns.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let _serial = self.metadata.lock().await;
        let inode = self.volume(name)?.inode.read().unwrap().clone();
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

    /// Changes a volume's size; shrinking frees the objects past the new end.
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<Inode> {
        let _serial = self.metadata.lock().await;
        let volume = self.volume(name)?;
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
            .write(oid, inode.copies, INODE_OBJECT_CAPACITY, 0, bytes, true)
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
            .write(oid, copies, INODE_OBJECT_CAPACITY, at, entry, fua)
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

    /// Reads every inode stored on this node.
    pub(super) async fn load_volumes(&self) -> Result<()> {
        let store = self.replicas.store().clone();
        let oids = store.list()?;
        for oid in oids.into_iter().filter(|o| o.is_inode()) {
            let inode = self.read_inode(oid).await?;
            tracing::info!(volume.name = %inode.name, vdi.id = inode.vid, "loaded volume");
            self.insert(inode);
        }
        Ok(())
    }

    async fn read_inode(&self, oid: ObjectId) -> Result<Inode> {
        let store = self.replicas.store().clone();
        let read = move || -> Result<Inode> {
            let mut header = vec![0u8; inode::HEADER_LEN];
            store.read(oid, 0, &mut header)?;
            let partial = Inode::decode(&header)?;
            let mut bytes = vec![0u8; partial.encoded_len()];
            store.read(oid, 0, &mut bytes)?;
            Ok(Inode::decode(&bytes)?)
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))?
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
