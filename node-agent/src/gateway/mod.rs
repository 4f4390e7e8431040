//! The gateway: turns volume I/O into object I/O on the right replicas.
//!
//! Every node is a gateway for every volume. A volume byte range is split at object
//! boundaries; each object's replica set comes from the placement ring of the current cluster
//! map; [`replicas::Replicas`] does the replicated I/O.

mod io;
mod metadata_lock;
mod replicas;
mod volumes;

pub use replicas::Replicas;

use crate::peer::ReplicaError;
use crate::store::StoreError;
use sheepdog_model::inode::InodeError;
use sheepdog_model::{ClusterMap, Inode, ObjectId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A failed gateway operation.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("volume {name:?} does not exist; `dog vdi list` shows the volumes")]
    NoSuchVolume { name: String },
    #[error("volume {name:?} already exists; pick another name or delete it first")]
    VolumeExists { name: String },
    #[error(transparent)]
    InvalidVolume(#[from] InodeError),
    #[error("range {offset}+{len} is past the end of volume {name:?} ({size} bytes)")]
    OutOfRange {
        name: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("volume {name:?} is read-only")]
    ReadOnly { name: String },
    #[error("no storage node can hold object {oid}: the cluster map has no nodes")]
    NoReplicas { oid: ObjectId },
    #[error(
        "only {live} live replicas for object {oid}, fewer than minCopies {need}: writes resume when nodes return"
    )]
    NotEnoughReplicas {
        oid: ObjectId,
        live: usize,
        need: usize,
    },
    #[error("this node cannot reach the coordinator, so it serves no I/O (its lease expired)")]
    Fenced,
    #[error("gave up on {what}: {reason}")]
    TimedOut { what: String, reason: String },
    #[error("another volume operation is running in the cluster ({reason}); try again")]
    MetadataBusy { reason: String },
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("every volume id is in use; delete volumes to free some")]
    VidsExhausted,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal task failed: {0}")]
    Task(String),
}

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// A volume as the gateway holds it: the inode, kept in step with its stored copy.
pub struct Volume {
    pub inode: RwLock<Inode>,
}

/// The gateway of one node.
pub struct Gateway {
    replicas: Replicas,
    default_copies: u8,
    volumes: RwLock<HashMap<u32, Arc<Volume>>>,
    names: RwLock<HashMap<String, u32>>,
    metadata: metadata_lock::MetadataLock,
}

impl Gateway {
    /// A gateway over `replicas`. Volumes are found in the cluster when first asked for.
    /// Metadata operations lock through `coordinator` when there is one.
    pub fn new(replicas: Replicas, default_copies: u8, coordinator: Option<&str>) -> Self {
        let metadata = metadata_lock::MetadataLock::new(coordinator, replicas.self_id());
        Self {
            replicas,
            default_copies,
            volumes: RwLock::default(),
            names: RwLock::default(),
            metadata,
        }
    }

    pub fn cluster_map(&self) -> ClusterMap {
        self.replicas.map()
    }

    pub fn default_copies(&self) -> u8 {
        self.default_copies
    }

    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        let vid = self.names.read().unwrap().get(name).copied();
        vid.and_then(|vid| self.volumes.read().unwrap().get(&vid).cloned())
            .ok_or_else(|| GatewayError::NoSuchVolume {
                name: name.to_owned(),
            })
    }

    /// The volume called `name`, with its inode freshly read from its replicas (another
    /// gateway may have written to it); looks through the whole cluster if it is not cached.
    pub async fn open_volume(&self, name: &str) -> Result<Arc<Volume>> {
        let volume = match self.volume(name) {
            Ok(volume) => volume,
            Err(_) => {
                self.load_volumes().await?;
                self.volume(name)?
            }
        };
        let (vid, copies) = {
            let inode = volume.inode.read().unwrap();
            (inode.vid, inode.copies)
        };
        match self.read_inode(ObjectId::inode(vid), copies).await {
            Ok(fresh) => *volume.inode.write().unwrap() = fresh,
            Err(GatewayError::InvalidVolume(InodeError::BadMagic)) => {
                self.forget(vid);
                return Err(GatewayError::NoSuchVolume {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(e),
        }
        Ok(volume)
    }

    /// Every volume in the cluster, sorted by name.
    pub async fn list_volumes(&self) -> Result<Vec<Inode>> {
        self.load_volumes().await?;
        Ok(self.inodes())
    }

    /// Copies of every cached volume's inode, sorted by name.
    pub fn inodes(&self) -> Vec<Inode> {
        let volumes = self.volumes.read().unwrap();
        let mut inodes: Vec<Inode> = volumes
            .values()
            .map(|v| v.inode.read().unwrap().clone())
            .collect();
        inodes.sort_by(|a, b| a.name.cmp(&b.name));
        inodes
    }
}

/// Bytes of objects a volume owns.
pub fn allocated_bytes(inode: &Inode) -> u64 {
    let owned = inode.data_vids.iter().filter(|&&v| v == inode.vid).count() as u64;
    owned * u64::from(inode.object_size)
}
