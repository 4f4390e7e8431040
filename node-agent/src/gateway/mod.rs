//! The gateway: turns volume I/O into object I/O on the right replicas.
//!
//! Every node is a gateway for every volume. A volume byte range is split at object
//! boundaries; each object's replica set comes from the placement ring of the current cluster
//! map; [`replicas::Replicas`] does the replicated I/O.

pub mod attach;
mod io;
pub(crate) mod metadata_lock;
mod replicas;
mod snapshots;
mod volumes;

pub use replicas::Replicas;

use crate::freeze::Freezer;
use crate::peer::ReplicaError;
use crate::store::StoreError;
use sheepdog_model::inode::InodeError;
use sheepdog_model::{ClusterMap, Directory, Inode, ObjectId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A failed gateway operation.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("volume {name:?} does not exist; `dog vdi list` shows the volumes")]
    NoSuchVolume { name: String },
    #[error("volume {name:?} already exists; pick another name or delete it first")]
    VolumeExists { name: String },
    #[error("volume {name:?} has no snapshot tagged {tag:?}; `dog vdi list` shows the snapshots")]
    NoSuchSnapshot { name: String, tag: String },
    #[error("volume {name:?} already has a snapshot tagged {tag:?}; pick another tag")]
    SnapshotExists { name: String, tag: String },
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
    #[error(
        "volume {name:?} is attached for writing by another client ({holder}); detach it there first, or, to write it from several places at once (a live migration), open it as \"{name}/shared\" everywhere; to read beside it, open \"{name}/readonly\""
    )]
    Attached { name: String, holder: String },
    #[error(
        "this client's attachment of volume {name:?} expired and another client attached it; reconnect once that client is gone"
    )]
    Detached { name: String },
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
    #[error("cannot see every volume of the cluster ({reason}); try again when every node is back")]
    IncompleteView { reason: String },
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

/// A volume as the gateway holds it: the inode, kept in step with its stored copy. A working
/// volume's handle follows it to a new vid when a snapshot or rollback replaces its inode.
pub struct Volume {
    pub inode: RwLock<Inode>,
}

impl Volume {
    pub fn new(inode: Inode) -> Self {
        Self {
            inode: RwLock::new(inode),
        }
    }

    pub fn vid(&self) -> u32 {
        self.inode.read().unwrap().vid
    }

    /// Takes a freshly read copy of the same inode (same vid). Table entries this gateway set
    /// to its own vid are kept: a read racing a table update must not make a later write copy
    /// the object again from its ancestor.
    fn refresh(&self, mut fresh: Inode) {
        let mut inode = self.inode.write().unwrap();
        debug_assert_eq!(fresh.vid, inode.vid, "refresh is for the same inode");
        for (entry, &mine) in fresh.data_vids.iter_mut().zip(&inode.data_vids) {
            if mine == fresh.vid {
                *entry = mine;
            }
        }
        *inode = fresh;
    }
}

/// Stripes of the locks that serialize copy-on-write of one object.
const COW_STRIPES: usize = 64;

/// The gateway of one node.
pub struct Gateway {
    replicas: Replicas,
    default_copies: u8,
    volumes: RwLock<HashMap<u32, Arc<Volume>>>,
    names: RwLock<HashMap<String, u32>>,
    /// Vid and copies of snapshots opened before, by name and tag.
    snapshot_vids: RwLock<HashMap<(String, String), (u32, u8)>>,
    metadata: metadata_lock::MetadataLock,
    /// Which clients may write which volumes.
    attachments: Arc<attach::Attachments>,
    freezer: Arc<Freezer>,
    /// The renewals of the freezes this gateway's metadata operation holds, by vid.
    freeze_renewals: snapshots::FreezeRenewals,
    cow_locks: Vec<tokio::sync::Mutex<()>>,
    /// Set when garbage collection was put off (the view was not complete or settled).
    gc_deferred: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// A gateway over `replicas`. Volumes are found in the cluster when first asked for.
    /// Metadata operations lock through `coordinator` when there is one.
    pub fn new(
        replicas: Replicas,
        default_copies: u8,
        coordinator: Option<&str>,
        freezer: Arc<Freezer>,
    ) -> Self {
        let coordinator = metadata_lock::coordinator_client(coordinator);
        let attachments = attach::Attachments::new(coordinator.clone(), replicas.self_id());
        let metadata = metadata_lock::MetadataLock::new(coordinator, replicas.self_id());
        Self {
            replicas,
            default_copies,
            volumes: RwLock::default(),
            names: RwLock::default(),
            snapshot_vids: RwLock::default(),
            metadata,
            attachments,
            freezer,
            freeze_renewals: Default::default(),
            cow_locks: (0..COW_STRIPES).map(|_| Default::default()).collect(),
            gc_deferred: Default::default(),
        }
    }

    pub fn cluster_map(&self) -> ClusterMap {
        self.replicas.map()
    }

    pub fn default_copies(&self) -> u8 {
        self.default_copies
    }

    /// Which clients may write which volumes.
    pub fn attachments(&self) -> &Arc<attach::Attachments> {
        &self.attachments
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

    /// The volume called `name` (or the snapshot `name@tag`), with its inode freshly read
    /// from its replicas (another gateway may have written to it).
    pub async fn open_volume(&self, name: &str) -> Result<Arc<Volume>> {
        self.replicas.check_local_disk()?;
        if let Some((name, tag)) = name.split_once('@') {
            return self.open_snapshot(name, tag).await;
        }
        let volume = match self.volume(name) {
            Ok(volume) => volume,
            Err(_) => {
                self.load_directory().await?;
                self.volume(name)?
            }
        };
        let vid = volume.vid();
        if let Some(change) = self.freezer.change(vid) {
            self.follow(&volume, vid, change).await?;
        }
        let (vid, copies) = {
            let inode = volume.inode.read().unwrap();
            (inode.vid, inode.copies)
        };
        match self.read_inode(ObjectId::inode(vid), copies).await {
            Ok(fresh) if !fresh.snapshot && !fresh.deleted => volume.refresh(fresh),
            Ok(_) | Err(GatewayError::InvalidVolume(InodeError::BadMagic)) => {
                // Replaced or deleted by a gateway this one did not hear from.
                let dir = self.load_directory().await?;
                match dir.working(name) {
                    Some(w) => self.retarget(&volume, w.clone()),
                    None => {
                        self.forget(vid);
                        return Err(GatewayError::NoSuchVolume {
                            name: name.to_owned(),
                        });
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(volume)
    }

    /// A read-only handle on the snapshot `name@tag`. A snapshot found before is read again
    /// by its vid alone; the whole directory is read only on a miss.
    async fn open_snapshot(&self, name: &str, tag: &str) -> Result<Arc<Volume>> {
        let key = (name.to_owned(), tag.to_owned());
        let known = self.snapshot_vids.read().unwrap().get(&key).copied();
        if let Some((vid, copies)) = known
            && let Ok(inode) = self.read_inode(ObjectId::inode(vid), copies).await
            && inode.snapshot
            && !inode.deleted
            && inode.name == name
            && inode.tag == tag
        {
            return Ok(Arc::new(Volume::new(inode)));
        }
        let dir = self.load_directory().await?;
        let inode = dir
            .snapshot(name, tag)
            .ok_or_else(|| GatewayError::NoSuchSnapshot {
                name: name.to_owned(),
                tag: tag.to_owned(),
            })?;
        self.snapshot_vids
            .write()
            .unwrap()
            .insert(key, (inode.vid, inode.copies));
        Ok(Arc::new(Volume::new(inode.clone())))
    }

    /// Every volume and snapshot of the cluster users see, sorted by name.
    pub async fn list_volumes(&self) -> Result<Directory> {
        self.load_directory().await
    }
}
