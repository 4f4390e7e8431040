//! The local object store: one sparse file per object under `DATA_DIR/obj/`.
//!
//! Every 4 KiB block carries a CRC32C that is verified on every read; a mismatch is an error
//! naming the object and block, never silent bad data. Every block also carries the version
//! of the write that last changed it: a change applies only to blocks older than its own
//! version, so a late or repeated request never overwrites newer data (see `format`). Reads of
//! never-written ranges and of missing objects return zeros. Removing an object at a version
//! leaves a tombstone (a header, no data) that keeps older requests out; zeroing whole blocks
//! punches holes. `flush` and FUA writes make data durable with `fdatasync`, and new or
//! removed files with an `fsync` of the directory. See `docs/storage-format.md`.

mod copy;
mod dirty_log;
pub mod format;
mod table;

pub use copy::{Copy, merge};
use dirty_log::DirtyLog;
use format::{BS, ENTRY, ENTRY_V1, FORMAT_V1, HEADER_LEN, HeaderError, ObjectHeader};
use rustix::fs::{FallocateFlags, fallocate};
use sheepdog_model::ObjectId;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
pub use table::table_vid;

const LOCK_STRIPES: usize = 256;
/// The version of every block of a copy-on-write copy: older than any write (versions of
/// writes come from wall clocks), newer than a block never written (0), so recovery tells a
/// copy from a hole and copies it.
pub const COPY_VERSION: u64 = 1;
const MAX_OPEN_FILES: usize = 4096;

/// A failed object-store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open object {oid} ({path}): {source}")]
    OpenObject {
        oid: ObjectId,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read object {oid}: {source}")]
    ReadObject { oid: ObjectId, source: io::Error },
    #[error("cannot write object {oid}: {source}")]
    WriteObject { oid: ObjectId, source: io::Error },
    #[error("no space left on the data disk writing object {oid}: free space or add a node")]
    DiskFull { oid: ObjectId },
    #[error("object {oid} block {block} failed its checksum: this copy is corrupt")]
    Corrupt { oid: ObjectId, block: u64 },
    #[error("object {oid} has an unusable header: {reason}")]
    BadHeader { oid: ObjectId, reason: HeaderError },
    #[error("range {offset}+{len} is outside object {oid} of {capacity} bytes")]
    OutOfRange {
        oid: ObjectId,
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("cannot sync the data directory {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot remove object {oid}: {source}")]
    RemoveObject { oid: ObjectId, source: io::Error },
    #[error("cannot open the data directory {path}: {source}")]
    OpenDir { path: PathBuf, source: io::Error },
    #[error(
        "the data disk under {path} failed to sync earlier: writes since the last flush may be lost, so this node serves nothing until it is restarted (check the disk)"
    )]
    DiskFailed { path: PathBuf },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What an object is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Bytes of data the object holds.
    pub capacity: u64,
    /// Copies the cluster keeps of it.
    pub copies: u8,
}

/// What a versioned change did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The newest version of a block this change skipped because that block was newer than
    /// the change: the caller's version clock is behind (another gateway wrote since).
    pub newer: Option<u64>,
}

/// What the store knows of one object without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub copies: u8,
    /// A digest of the object's block versions, block checksums and floor: two copies with
    /// the same summary hold the same versions and bytes of every block.
    pub summary: u64,
    /// Removed: a header that keeps older requests out, and no data.
    pub tombstone: bool,
}

/// Space used by the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: u64,
    /// Bytes of disk the object files occupy.
    pub bytes: u64,
}

struct ObjectFile {
    file: File,
    header: ObjectHeader,
}

/// What a change writes over a range.
#[derive(Clone, Copy)]
enum Fill<'a> {
    Data(&'a [u8]),
    Zeros,
}

pub struct ObjectStore {
    dir: PathBuf,
    /// Every stored object, loaded from the headers and tables at start.
    index: RwLock<HashMap<ObjectId, Meta>>,
    files: Mutex<HashMap<ObjectId, Arc<ObjectFile>>>,
    locks: Vec<RwLock<()>>,
    dirty: Mutex<DirtyLog>,
    dir_dirty: AtomicBool,
    flush_lock: Mutex<()>,
    /// Set when an fsync failed: the kernel may have dropped dirty pages, so nothing this
    /// store says about durability can be trusted any more.
    failed: AtomicBool,
}

impl ObjectStore {
    /// Opens (creating if needed) the store under `data_dir`, converting older object
    /// formats and repairing checksums of objects that an unclean stop left half-written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("obj");
        let open_dir = |source| StoreError::OpenDir {
            path: dir.clone(),
            source,
        };
        create_dir_durably(&dir).map_err(open_dir)?;
        remove_temp_files(&dir).map_err(open_dir)?;
        let (log, leftover) = DirtyLog::open(&data_dir.join("dirty.log")).map_err(open_dir)?;
        let store = Self {
            dir: dir.clone(),
            index: RwLock::default(),
            files: Mutex::new(HashMap::new()),
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            dirty: Mutex::new(log),
            dir_dirty: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
        };
        store.load_index().map_err(open_dir)?;
        store.repair_checksums(&leftover)?;
        Ok(store)
    }

    /// Whether an fsync failed: the node must stop serving.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Reads `buf.len()` bytes at `offset` of `oid`; a missing object reads as zeros.
    pub fn read(&self, oid: ObjectId, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_health()?;
        let _guard = self.lock(oid).read().unwrap();
        match self.object(oid)? {
            None => buf.fill(0),
            Some(obj) => {
                check_range(&obj, offset, buf.len() as u64)?;
                read_verified(&obj, offset, buf)?;
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` of `oid` at `version`, creating the object as `spec` says if
    /// needed. Blocks already at `version` or newer are left as they are. With `fua`, the data
    /// is durable when this returns.
    pub fn write(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        data: &[u8],
        version: u64,
        fua: bool,
    ) -> Result<Applied> {
        self.change(
            oid,
            spec,
            offset,
            data.len() as u64,
            Fill::Data(data),
            version,
            fua,
        )
    }

    /// Makes `len` bytes at `offset` of `oid` read as zeros at `version`, freeing the space
    /// they used. Zeroing the whole object removes it ([`ObjectStore::remove_at`]).
    pub fn zero(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        len: u64,
        version: u64,
        fua: bool,
    ) -> Result<Applied> {
        if offset == 0 && len == spec.capacity.div_ceil(BS) * BS {
            return self.remove_at(oid, spec, version, fua);
        }
        self.change(oid, spec, offset, len, Fill::Zeros, version, fua)
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        len: u64,
        fill: Fill,
        version: u64,
        fua: bool,
    ) -> Result<Applied> {
        self.check_health()?;
        let (obj, applied) = {
            let _guard = self.lock(oid).write().unwrap();
            let obj = match self.object(oid)? {
                Some(obj) => obj,
                None => self.create(oid, spec, 0)?,
            };
            check_range(&obj, offset, len)?;
            self.mark_dirty(&obj)?;
            let change = match table::table_vid(oid) {
                Some(vid) if offset + len > table::TABLE_START => {
                    change_inode(&obj, vid, offset, fill, version)?
                }
                _ => apply(&obj, offset, len, fill, version)?,
            };
            if change.changed {
                self.update_meta(oid, |meta| {
                    meta.summary ^= change.summary_delta;
                    meta.tombstone = false;
                });
            }
            (
                obj,
                Applied {
                    newer: change.newer,
                },
            )
        };
        if fua {
            self.sync_object(&obj)?;
        }
        Ok(applied)
    }

    /// Removes `oid` at `version`: it becomes a tombstone that reads as zeros and refuses
    /// every older change. Blocks newer than `version` are kept (then only older ones are
    /// zeroed).
    pub fn remove_at(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        version: u64,
        fua: bool,
    ) -> Result<Applied> {
        self.check_health()?;
        let _guard = self.lock(oid).write().unwrap();
        let spec = match self.object(oid)? {
            None => spec,
            Some(obj) => {
                let (newest, floor) = (newest_block(&obj)?, obj.header.floor);
                if newest > version {
                    // A newer write reached some blocks: keep them, zero the rest.
                    self.mark_dirty(&obj)?;
                    let all = obj.header.capacity;
                    let change = apply(&obj, 0, all, Fill::Zeros, version)?;
                    self.update_meta(oid, |meta| meta.summary ^= change.summary_delta);
                    drop(_guard);
                    if fua {
                        self.sync_object(&obj)?;
                    }
                    return Ok(Applied {
                        newer: change.newer,
                    });
                }
                if floor >= version {
                    let newer = (floor > version).then_some(floor);
                    return Ok(Applied { newer });
                }
                if self.meta(oid).is_some_and(|m| m.tombstone) {
                    // Removed already: nothing can be older than "empty".
                    return Ok(Applied::default());
                }
                ObjectSpec {
                    capacity: obj.header.capacity,
                    copies: obj.header.copies,
                }
            }
        };
        self.files.lock().unwrap().remove(&oid);
        let header = header(oid, spec, version);
        let file = self.create_file(header, &[], &[])?;
        self.cache(oid, ObjectFile { file, header });
        if fua {
            self.sync_dir()?;
        }
        Ok(Applied::default())
    }

    /// Deletes `oid` and its file outright (copies this node no longer holds, objects of
    /// deleted volumes); removing a missing object succeeds.
    pub fn remove(&self, oid: ObjectId) -> Result<()> {
        let _guard = self.lock(oid).write().unwrap();
        self.files.lock().unwrap().remove(&oid);
        self.index.write().unwrap().remove(&oid);
        match fs::remove_file(self.path(oid)) {
            Ok(()) => self.dir_dirty.store(true, Ordering::Release),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::RemoveObject { oid, source }),
        }
        Ok(())
    }

    /// Makes every write and removal that completed before this call durable. An fsync
    /// failure is final: Linux may have dropped the pages, so retrying could report success
    /// for lost data; the store refuses everything from then on.
    pub fn flush(&self) -> Result<()> {
        self.check_health()?;
        let _serial = self.flush_lock.lock().unwrap();
        let pending = self.dirty.lock().unwrap().take_pending();
        for &oid in pending.keys() {
            // A change logged before the take may still be between its log entry and its
            // pwrites (it holds the object's lock across both): wait for it, so the sync
            // covers it. Changes that start later log the object anew.
            let _settled = self.lock(oid).read().unwrap();
            let synced = self.object(oid).and_then(|obj| match obj {
                Some(obj) => self.sync_object(&obj),
                None => Ok(()),
            });
            if let Err(e) = synced {
                self.dirty.lock().unwrap().restore(pending);
                return Err(e);
            }
        }
        self.sync_dir()?;
        let sync_err = |source| StoreError::Sync {
            path: self.dir.clone(),
            source,
        };
        let checkpoint = self.dirty.lock().unwrap().checkpoint();
        checkpoint.map_err(|source| {
            self.fail(&source);
            sync_err(source)
        })
    }

    /// Whether `oid` is stored here with data (not removed).
    pub fn contains(&self, oid: ObjectId) -> bool {
        self.index
            .read()
            .unwrap()
            .get(&oid)
            .is_some_and(|m| !m.tombstone)
    }

    /// What the store knows of `oid`, tombstones included.
    pub fn meta(&self, oid: ObjectId) -> Option<Meta> {
        self.index.read().unwrap().get(&oid).copied()
    }

    /// Every object stored here, tombstones included.
    pub fn list(&self) -> Vec<(ObjectId, Meta)> {
        self.index
            .read()
            .unwrap()
            .iter()
            .map(|(&oid, &meta)| (oid, meta))
            .collect()
    }

    /// Objects with data (tombstones left out) and the disk bytes they occupy.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for (oid, meta) in self.list() {
            if meta.tombstone {
                continue;
            }
            if let Ok(stat) = fs::metadata(self.path(oid)) {
                usage.objects += 1;
                usage.bytes += stat.blocks() * 512;
            }
        }
        Ok(usage)
    }

    /// Fails once an fsync failed: the node serves nothing from then on.
    pub fn check_health(&self) -> Result<()> {
        if self.has_failed() {
            return Err(StoreError::DiskFailed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn path(&self, oid: ObjectId) -> PathBuf {
        self.dir.join(oid.to_string())
    }

    fn lock(&self, oid: ObjectId) -> &RwLock<()> {
        let stripe = xxhash_rust::xxh3::xxh3_64(&oid.raw().to_le_bytes()) as usize % LOCK_STRIPES;
        &self.locks[stripe]
    }

    fn update_meta(&self, oid: ObjectId, change: impl FnOnce(&mut Meta)) {
        if let Some(meta) = self.index.write().unwrap().get_mut(&oid) {
            change(meta);
        }
    }

    /// The open object file, or `None` when the object does not exist.
    fn object(&self, oid: ObjectId) -> Result<Option<Arc<ObjectFile>>> {
        if let Some(obj) = self.files.lock().unwrap().get(&oid) {
            return Ok(Some(obj.clone()));
        }
        if self.meta(oid).is_none() {
            return Ok(None);
        }
        let path = self.path(oid);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::OpenObject { oid, path, source }),
        };
        let mut raw = vec![0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut raw, 0)
            .map_err(|source| StoreError::ReadObject { oid, source })?;
        let header =
            ObjectHeader::decode(&raw).map_err(|reason| StoreError::BadHeader { oid, reason })?;
        if header.oid != oid {
            let reason = HeaderError::Oid(sheepdog_model::oid::InvalidObjectId(header.oid.raw()));
            return Err(StoreError::BadHeader { oid, reason });
        }
        Ok(Some(self.cache(oid, ObjectFile { file, header })))
    }

    fn cache(&self, oid: ObjectId, obj: ObjectFile) -> Arc<ObjectFile> {
        let obj = Arc::new(obj);
        let mut files = self.files.lock().unwrap();
        if files.len() >= MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(oid, obj.clone());
        obj
    }

    /// Creates an empty object file: written under a temporary name, then renamed into place.
    fn create(&self, oid: ObjectId, spec: ObjectSpec, floor: u64) -> Result<Arc<ObjectFile>> {
        let header = header(oid, spec, floor);
        let file = self.create_file(header, &[], &[])?;
        Ok(self.cache(oid, ObjectFile { file, header }))
    }

    /// Writes a new object file holding `data` (sparse: zero blocks are skipped) with the
    /// block `versions`, and renames it into place, replacing any older file and updating the
    /// index.
    fn create_file(&self, header: ObjectHeader, data: &[u8], versions: &[u64]) -> Result<File> {
        let oid = header.oid;
        let tmp = self.dir.join(format!(".tmp-{oid}"));
        let write_err = |source: io::Error| io_error(oid, source);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all_at(&header.encode(), 0).map_err(write_err)?;
        file.set_len(header.file_len()).map_err(write_err)?;
        let mut table = vec![0u8; header.table_len() as usize];
        let mut summary = format::floor_hash(header.floor);
        let zero = [0u8; BS as usize];
        for i in 0..header.blocks() as usize {
            let start = i * BS as usize;
            let version = versions.get(i).copied().unwrap_or(0);
            let mut full = [0u8; BS as usize];
            if start < data.len() {
                let end = (start + BS as usize).min(data.len());
                full[..end - start].copy_from_slice(&data[start..end]);
            }
            if full != zero {
                file.write_all_at(&full, header.data_offset() + i as u64 * BS)
                    .map_err(write_err)?;
            }
            if full != zero || version != 0 {
                table[i * ENTRY..(i + 1) * ENTRY].copy_from_slice(&format::entry(&full, version));
            }
            summary ^= format::table_hash(&table, 0, i);
        }
        let written = !data.is_empty() || versions.iter().any(|&v| v != 0);
        if written {
            file.write_all_at(&table, HEADER_LEN).map_err(write_err)?;
        }
        file.sync_data().map_err(write_err)?;
        fs::rename(&tmp, self.path(oid)).map_err(write_err)?;
        self.dir_dirty.store(true, Ordering::Release);
        let meta = Meta {
            copies: header.copies,
            summary,
            tombstone: header.floor > 0 && !written,
        };
        self.index.write().unwrap().insert(oid, meta);
        Ok(file)
    }

    /// Creates `oid` holding `data` with every block at [`COPY_VERSION`] (older than any
    /// write, newer than a block never written), unless the object exists already (a
    /// copy-on-write copy another gateway made first). Returns whether it was created.
    /// Durable when this returns.
    pub fn put_if_absent(&self, oid: ObjectId, spec: ObjectSpec, data: &[u8]) -> Result<bool> {
        self.check_health()?;
        let _guard = self.lock(oid).write().unwrap();
        if self.meta(oid).is_some() {
            return Ok(false);
        }
        if data.len() as u64 > spec.capacity {
            let (offset, len, capacity) = (0, data.len() as u64, spec.capacity);
            return Err(StoreError::OutOfRange {
                oid,
                offset,
                len,
                capacity,
            });
        }
        let versions = vec![COPY_VERSION; spec.capacity.div_ceil(BS) as usize];
        self.create_file(header(oid, spec, 0), data, &versions)?;
        self.sync_dir()?;
        Ok(true)
    }

    /// A whole copy of `oid`, tombstones included, every block verified.
    pub fn get(&self, oid: ObjectId) -> Result<Option<Copy>> {
        self.check_health()?;
        let _guard = self.lock(oid).read().unwrap();
        match self.object(oid)? {
            Some(obj) => whole_copy(&obj).map(Some),
            None => Ok(None),
        }
    }

    /// Replaces this node's copy of `oid` with the newest of each block among it and
    /// `others` (recovery, repair). A local copy that fails its checksums is left out.
    /// Durable when this returns. Returns whether the local copy changed.
    pub fn merge_in(&self, oid: ObjectId, others: &[Copy]) -> Result<bool> {
        self.check_health()?;
        let _guard = self.lock(oid).write().unwrap();
        let mut copies = others.to_vec();
        let local = match self.object(oid) {
            Ok(Some(obj)) => match whole_copy(&obj) {
                Ok(copy) => Some(copy),
                Err(StoreError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            },
            Ok(None) | Err(StoreError::BadHeader { .. }) => None,
            Err(e) => return Err(e),
        };
        copies.extend(local.clone());
        let Some(merged) = merge(&copies, table::table_vid(oid)) else {
            return Ok(false);
        };
        if local.as_ref() == Some(&merged) {
            return Ok(false);
        }
        let header = header(oid, merged.spec, merged.floor);
        if merged.data.len() as u64 > header.capacity {
            let (offset, len, capacity) = (0, merged.data.len() as u64, header.capacity);
            return Err(StoreError::OutOfRange {
                oid,
                offset,
                len,
                capacity,
            });
        }
        self.files.lock().unwrap().remove(&oid);
        self.create_file(header, &merged.data, &merged.versions)?;
        self.sync_dir()?;
        Ok(true)
    }

    /// Logs `obj` as written since the last flush, with its checksum table as it is now (on
    /// disk: nothing was written to it since its last sync). Called with its lock held.
    fn mark_dirty(&self, obj: &ObjectFile) -> Result<()> {
        let oid = obj.header.oid;
        let snapshot =
            || read_table(obj, 0, obj.header.blocks()).map_err(|e| io::Error::other(e.to_string()));
        let marked = self.dirty.lock().unwrap().mark(oid, snapshot);
        marked.map_err(|source| {
            // The log's fdatasync failed (or the write before it): as final as any fsync.
            self.fail(&source);
            io_error(oid, source)
        })
    }

    fn sync_object(&self, obj: &ObjectFile) -> Result<()> {
        if let Err(source) = obj.file.sync_data() {
            self.fail(&source);
            return Err(io_error(obj.header.oid, source));
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            let synced = File::open(&self.dir).and_then(|d| d.sync_all());
            if let Err(source) = synced {
                self.dir_dirty.store(true, Ordering::Release);
                self.fail(&source);
                return Err(StoreError::Sync {
                    path: self.dir.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    fn fail(&self, source: &io::Error) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(dir = %self.dir.display(), error = %source, "an fsync failed: writes since the last flush may be lost; this node stops serving");
        }
    }

    /// Reads the header and table of every object file, converting version-1 files.
    fn load_index(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(oid) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) else {
                continue;
            };
            let Ok(oid) = ObjectId::from_raw(oid) else {
                continue;
            };
            if let Err(e) = self.load_object(oid, &entry.path()) {
                tracing::error!(object = %oid, path = %entry.path().display(), error = %e, "object file is unusable; it is ignored");
            }
        }
        Ok(())
    }

    fn load_object(&self, oid: ObjectId, path: &Path) -> Result<()> {
        let read_err = |source| StoreError::ReadObject { oid, source };
        let file = File::open(path).map_err(read_err)?;
        let mut raw = [0u8; 64];
        file.read_exact_at(&mut raw, 0).map_err(read_err)?;
        let (header, version) = ObjectHeader::decode_any(&raw)
            .map_err(|reason| StoreError::BadHeader { oid, reason })?;
        if header.oid != oid {
            let reason = HeaderError::Oid(sheepdog_model::oid::InvalidObjectId(header.oid.raw()));
            return Err(StoreError::BadHeader { oid, reason });
        }
        if version == FORMAT_V1 {
            return self.convert_v1(&file, header);
        }
        let obj = ObjectFile { file, header };
        let table = read_table(&obj, 0, header.blocks())?;
        let mut summary = format::floor_hash(header.floor);
        let mut written = false;
        for i in 0..header.blocks() as usize {
            let v = format::entry_version(&table, i);
            written |= v != 0 || format::entry_crc(&table, i) != 0;
            summary ^= format::table_hash(&table, 0, i);
        }
        let meta = Meta {
            copies: header.copies,
            summary,
            tombstone: header.floor > 0 && !written,
        };
        self.index.write().unwrap().insert(oid, meta);
        Ok(())
    }

    /// Rewrites a version-1 object (no block versions) as version 2, every block at version
    /// 0; the checksums are verified on the way.
    fn convert_v1(&self, file: &File, header: ObjectHeader) -> Result<()> {
        let oid = header.oid;
        let read_err = |source| StoreError::ReadObject { oid, source };
        let table_len = header.table_len_v1();
        let mut table = vec![0u8; table_len as usize];
        file.read_exact_at(&mut table, HEADER_LEN)
            .map_err(read_err)?;
        let mut data = vec![0u8; header.capacity as usize];
        file.read_exact_at(&mut data, HEADER_LEN + table_len)
            .map_err(read_err)?;
        let file = self.create_file(header, &data, &[])?;
        // A block that failed its checksum keeps failing it: recovery replaces it.
        for (i, block) in data.chunks(BS as usize).enumerate() {
            let stored = &table[i * ENTRY_V1..(i + 1) * ENTRY_V1];
            if format::block_checksum(block) != u32::from_le_bytes(stored.try_into().unwrap()) {
                tracing::warn!(object = %oid, block = i, "a version-1 block fails its checksum");
                file.write_all_at(stored, HEADER_LEN + (i * ENTRY) as u64)
                    .map_err(|e| io_error(oid, e))?;
                file.sync_data().map_err(|e| io_error(oid, e))?;
            }
        }
        tracing::info!(object = %oid, "converted an object file from format version 1 to 2");
        self.sync_dir()
    }

    /// Repairs the objects a previous run may have left half-written: written since the last
    /// flush, then killed or cut off from power. A block's data and its table entry are on
    /// different pages, and either can reach the disk without the other; an entry that spans
    /// two pages can even keep one write's checksum and another's version. So a block whose
    /// entry changed since the object's snapshot (its table at its first write after the last
    /// flush, in the dirty log) is only trusted if it matches its data and lies in one page.
    /// Otherwise the block takes the snapshot's entry if its data is the snapshot's, or its
    /// data's checksum at the snapshot's version: the data is some write newer than the
    /// snapshot, of unknown version, and the snapshot's version is a lower bound, so every
    /// newer copy elsewhere wins in recovery, and no older one does. Without a snapshot (a
    /// version-1 log), such a block goes to version 0.
    fn repair_checksums(&self, objects: &[(ObjectId, dirty_log::Snapshot)]) -> Result<()> {
        for (oid, snapshot) in objects {
            let oid = *oid;
            let Some(obj) = self.object(oid)? else {
                continue;
            };
            let mut data = vec![0u8; obj.header.capacity as usize];
            let read_err = |source| StoreError::ReadObject { oid, source };
            obj.file
                .read_exact_at(&mut data, obj.header.data_offset())
                .map_err(read_err)?;
            let mut table = read_table(&obj, 0, obj.header.blocks())?;
            let mut repaired = 0;
            for (i, block) in data.chunks(BS as usize).enumerate() {
                let entry = &table[i * ENTRY..(i + 1) * ENTRY];
                let before: Option<[u8; ENTRY]> = if snapshot.is_empty() {
                    None
                } else {
                    Some(
                        snapshot
                            .get(i * ENTRY..(i + 1) * ENTRY)
                            .map_or([0; ENTRY], |e| e.try_into().unwrap()),
                    )
                };
                let crc = format::block_checksum(block);
                let fixed = if crc == format::entry_crc(&table, i) {
                    match before {
                        // One page: the entry is one write's, and its data is there.
                        _ if !format::entry_spans_pages(i) => continue,
                        Some(b) if b == entry => continue,
                        // Spanning two pages, the checksum can be the snapshot's with a
                        // newer write's version: the bytes are the snapshot's, so is the
                        // version. A newer checksum matching the data is that write's, with
                        // its own version or the snapshot's (its version page lost, so it
                        // was never flushed): both are safe to keep.
                        Some(b) if crc == format::entry_crc(&b, 0) => b,
                        Some(_) => continue,
                        None => format::entry(block, 0),
                    }
                } else {
                    match before {
                        Some(b) if crc == format::entry_crc(&b, 0) => b,
                        Some(b) => format::entry(block, format::entry_version(&b, 0)),
                        None => format::entry(block, 0),
                    }
                };
                if fixed == entry {
                    continue;
                }
                table[i * ENTRY..(i + 1) * ENTRY].copy_from_slice(&fixed);
                repaired += 1;
            }
            if repaired == 0 {
                continue;
            }
            obj.file
                .write_all_at(&table, HEADER_LEN)
                .map_err(|e| io_error(oid, e))?;
            obj.file.sync_data().map_err(|e| io_error(oid, e))?;
            self.files.lock().unwrap().remove(&oid);
            self.load_object(oid, &self.path(oid))?;
            tracing::warn!(object = %oid, blocks = repaired, "repaired blocks written since the last flush before an unclean stop whose data and checksum table disagreed; recovery brings their current version from the other copies");
        }
        let mut dirty = self.dirty.lock().unwrap();
        dirty.take_pending();
        let sync_err = |source| StoreError::Sync {
            path: self.dir.clone(),
            source,
        };
        dirty.checkpoint().map_err(sync_err)
    }
}

fn header(oid: ObjectId, spec: ObjectSpec, floor: u64) -> ObjectHeader {
    ObjectHeader {
        oid,
        capacity: spec.capacity.div_ceil(BS) * BS,
        copies: spec.copies,
        floor,
    }
}

fn io_error(oid: ObjectId, source: io::Error) -> StoreError {
    if source.kind() == io::ErrorKind::StorageFull {
        StoreError::DiskFull { oid }
    } else {
        StoreError::WriteObject { oid, source }
    }
}

/// Creates `dir` and any missing parent so that their names survive a power cut: each new
/// directory's parent is synced after it is made.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    File::open(parent.unwrap_or(Path::new(".")))?.sync_all()
}

fn remove_temp_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn check_range(obj: &ObjectFile, offset: u64, len: u64) -> Result<()> {
    let capacity = obj.header.capacity;
    if offset.checked_add(len).is_none_or(|end| end > capacity) {
        return Err(StoreError::OutOfRange {
            oid: obj.header.oid,
            offset,
            len,
            capacity,
        });
    }
    Ok(())
}

/// The table entries of blocks `first..first+count`.
fn read_table(obj: &ObjectFile, first: u64, count: u64) -> Result<Vec<u8>> {
    let mut table = vec![0u8; count as usize * ENTRY];
    obj.file
        .read_exact_at(&mut table, HEADER_LEN + first * ENTRY as u64)
        .map_err(|source| StoreError::ReadObject {
            oid: obj.header.oid,
            source,
        })?;
    Ok(table)
}

/// The whole of `obj`: spec, floor, block versions and data, every block verified.
fn whole_copy(obj: &ObjectFile) -> Result<Copy> {
    let mut data = vec![0u8; obj.header.capacity as usize];
    read_verified(obj, 0, &mut data)?;
    let used = data
        .chunks(BS as usize)
        .rposition(|b| b.iter().any(|&x| x != 0));
    data.truncate(used.map_or(0, |i| (i + 1) * BS as usize));
    let table = read_table(obj, 0, obj.header.blocks())?;
    let versions = (0..obj.header.blocks() as usize)
        .map(|i| format::entry_version(&table, i))
        .collect();
    let spec = ObjectSpec {
        capacity: obj.header.capacity,
        copies: obj.header.copies,
    };
    Ok(Copy {
        spec,
        floor: obj.header.floor,
        versions,
        data,
    })
}

/// The newest version of any block of `obj`, its floor included.
fn newest_block(obj: &ObjectFile) -> Result<u64> {
    let table = read_table(obj, 0, obj.header.blocks())?;
    let newest = (0..obj.header.blocks() as usize)
        .map(|i| format::entry_version(&table, i))
        .max()
        .unwrap_or(0);
    Ok(newest.max(obj.header.floor))
}

/// Reads whole blocks `first..first+count` and verifies them against `table` (their entries).
fn read_checked(obj: &ObjectFile, first: u64, buf: &mut [u8], table: &[u8]) -> Result<()> {
    let oid = obj.header.oid;
    obj.file
        .read_exact_at(buf, obj.header.data_offset() + first * BS)
        .map_err(|source| StoreError::ReadObject { oid, source })?;
    match format::first_mismatch(buf, table) {
        Some(i) => Err(StoreError::Corrupt {
            oid,
            block: first + i as u64,
        }),
        None => Ok(()),
    }
}

/// Reads whole blocks `first..first+count` with their checksums and verifies them.
fn read_blocks(obj: &ObjectFile, first: u64, buf: &mut [u8]) -> Result<()> {
    let table = read_table(obj, first, buf.len() as u64 / BS)?;
    read_checked(obj, first, buf, &table)
}

/// Reads any byte range, verifying every block it touches.
fn read_verified(obj: &ObjectFile, offset: u64, buf: &mut [u8]) -> Result<()> {
    let (first, end) = (offset / BS, (offset + buf.len() as u64).div_ceil(BS));
    if offset.is_multiple_of(BS) && (buf.len() as u64).is_multiple_of(BS) {
        return read_blocks(obj, first, buf);
    }
    let mut blocks = vec![0u8; ((end - first) * BS) as usize];
    read_blocks(obj, first, &mut blocks)?;
    let skip = (offset - first * BS) as usize;
    buf.copy_from_slice(&blocks[skip..skip + buf.len()]);
    Ok(())
}

/// What [`apply`] did.
#[derive(Default)]
struct Change {
    newer: Option<u64>,
    summary_delta: u64,
    changed: bool,
}

impl Change {
    fn and(self, other: Change) -> Change {
        Change {
            newer: self.newer.max(other.newer),
            summary_delta: self.summary_delta ^ other.summary_delta,
            changed: self.changed || other.changed,
        }
    }
}

/// A change to an inode object: the header by versions ([`apply`]), the data table entry by
/// entry ([`join_table`]). Zeroing table entries changes nothing: entries never go back.
fn change_inode(
    obj: &ObjectFile,
    vid: u32,
    offset: u64,
    fill: Fill,
    version: u64,
) -> Result<Change> {
    let start = table::TABLE_START;
    let mut change = Change::default();
    if offset < start {
        let head = match fill {
            Fill::Data(data) => Fill::Data(&data[..(start - offset) as usize]),
            Fill::Zeros => Fill::Zeros,
        };
        change = apply(obj, offset, start - offset, head, version)?;
    }
    let from = offset.max(start);
    if let Fill::Data(data) = fill {
        let part = &data[(from - offset) as usize..];
        change = change.and(join_table(obj, vid, from, part, version)?);
    }
    Ok(change)
}

/// Joins `data` (whole table entries at `offset`) into the table of `vid`, block by block;
/// a block takes the newest version it has seen.
fn join_table(
    obj: &ObjectFile,
    vid: u32,
    offset: u64,
    data: &[u8],
    version: u64,
) -> Result<Change> {
    if !offset.is_multiple_of(4) || !data.len().is_multiple_of(4) {
        return apply(obj, offset, data.len() as u64, Fill::Data(data), version);
    }
    let (first, end) = (offset / BS, (offset + data.len() as u64).div_ceil(BS));
    let mut table = read_table(obj, first, end - first)?;
    let mut blocks = vec![0u8; ((end - first) * BS) as usize];
    read_checked(obj, first, &mut blocks, &table)?;
    let old = blocks.clone();
    let at = (offset - first * BS) as usize;
    table::join_into(vid, &mut blocks[at..at + data.len()], data);
    let mut change = Change::default();
    for (i, (new, before)) in blocks
        .chunks(BS as usize)
        .zip(old.chunks(BS as usize))
        .enumerate()
    {
        let stored = format::entry_version(&table, i).max(obj.header.floor);
        if new == before && stored >= version {
            continue;
        }
        let v = stored.max(version);
        change.summary_delta ^= format::table_hash(&table, first, i);
        table[i * ENTRY..(i + 1) * ENTRY].copy_from_slice(&format::entry(new, v));
        change.summary_delta ^= format::table_hash(&table, first, i);
        change.changed = true;
    }
    if change.changed {
        let oid = obj.header.oid;
        obj.file
            .write_all_at(&blocks, obj.header.data_offset() + first * BS)
            .map_err(|e| io_error(oid, e))?;
        obj.file
            .write_all_at(&table, HEADER_LEN + first * ENTRY as u64)
            .map_err(|e| io_error(oid, e))?;
    }
    Ok(change)
}

/// Writes `fill` over `len` bytes at `offset`, at `version`, to the blocks whose version is
/// older; partial blocks are read (verified) and merged. Whole zeroed blocks are punched out.
/// Data goes first, then the table entries of the changed blocks.
fn apply(obj: &ObjectFile, offset: u64, len: u64, fill: Fill, version: u64) -> Result<Change> {
    let (first, end) = (offset / BS, (offset + len).div_ceil(BS));
    let count = (end - first) as usize;
    let mut table = read_table(obj, first, end - first)?;
    let floor = obj.header.floor;
    let mut change = Change {
        newer: None,
        summary_delta: 0,
        changed: false,
    };
    let stored = |t: &[u8], i| format::entry_version(t, i);
    let fresh: Vec<bool> = (0..count)
        .map(|i| {
            let current = stored(&table, i).max(floor);
            if current > version {
                change.newer = change.newer.max(Some(current));
            }
            current < version
        })
        .collect();
    let mut i = 0;
    while i < count {
        if !fresh[i] {
            i += 1;
            continue;
        }
        let run_start = i;
        while i < count && fresh[i] {
            i += 1;
        }
        let run = (first + run_start as u64, first + i as u64);
        let entries = write_run(
            obj,
            run,
            offset,
            len,
            fill,
            version,
            &table[run_start * ENTRY..i * ENTRY],
        )?;
        for (k, entry) in entries.chunks(ENTRY).enumerate() {
            let at = run_start + k;
            change.summary_delta ^= format::table_hash(&table, first, at);
            table[at * ENTRY..(at + 1) * ENTRY].copy_from_slice(entry);
            change.summary_delta ^= format::table_hash(&table, first, at);
        }
        obj.file
            .write_all_at(&entries, HEADER_LEN + run.0 * ENTRY as u64)
            .map_err(|e| io_error(obj.header.oid, e))?;
        change.changed = true;
    }
    Ok(change)
}

/// Writes the part of a change that falls in blocks `run.0..run.1` and returns their new
/// table entries. `old` holds the run's current entries (to verify merged partial blocks).
#[allow(clippy::too_many_arguments)]
fn write_run(
    obj: &ObjectFile,
    run: (u64, u64),
    offset: u64,
    len: u64,
    fill: Fill,
    version: u64,
    old: &[u8],
) -> Result<Vec<u8>> {
    let oid = obj.header.oid;
    let (run_off, run_end) = (run.0 * BS, run.1 * BS);
    let (from, to) = (offset.max(run_off), (offset + len).min(run_end));
    let write = |bytes: &[u8], at: u64| {
        obj.file
            .write_all_at(bytes, obj.header.data_offset() + at)
            .map_err(|e| io_error(oid, e))
    };
    let blocks = (run.1 - run.0) as usize;
    let head_partial = from > run_off;
    let tail_partial = to < run_end;
    if let Fill::Zeros = fill {
        // Whole blocks are punched; partial ones rewritten as merged blocks below.
        let whole_first = if head_partial { run.0 + 1 } else { run.0 };
        let whole_end = if tail_partial { run.1 - 1 } else { run.1 };
        let mut entries = vec![0u8; blocks * ENTRY];
        if whole_end > whole_first {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let at = obj.header.data_offset() + whole_first * BS;
            fallocate(&obj.file, flags, at, (whole_end - whole_first) * BS)
                .map_err(|e| io_error(oid, e.into()))?;
            for b in whole_first..whole_end {
                let k = (b - run.0) as usize;
                entries[k * ENTRY..(k + 1) * ENTRY]
                    .copy_from_slice(&format::entry(&[0u8; BS as usize], version));
            }
        }
        let mut partial = Vec::new();
        if head_partial {
            partial.push(run.0);
        }
        if tail_partial && !(head_partial && blocks == 1) {
            partial.push(run.1 - 1);
        }
        for b in partial {
            let k = (b - run.0) as usize;
            let mut block = vec![0u8; BS as usize];
            read_checked(obj, b, &mut block, &old[k * ENTRY..(k + 1) * ENTRY])?;
            let (lo, hi) = (from.max(b * BS) - b * BS, to.min((b + 1) * BS) - b * BS);
            block[lo as usize..hi as usize].fill(0);
            write(&block, b * BS)?;
            entries[k * ENTRY..(k + 1) * ENTRY].copy_from_slice(&format::entry(&block, version));
        }
        return Ok(entries);
    }
    let Fill::Data(data) = fill else {
        unreachable!("zeros handled above")
    };
    let part = &data[(from - offset) as usize..(to - offset) as usize];
    if !head_partial && !tail_partial {
        write(part, run_off)?;
        return Ok(format::table_entries(part, version));
    }
    let mut buf = vec![0u8; (run_end - run_off) as usize];
    if head_partial || blocks == 1 {
        read_checked(obj, run.0, &mut buf[..BS as usize], &old[..ENTRY])?;
    }
    if tail_partial && blocks > 1 {
        let at = buf.len() - BS as usize;
        read_checked(obj, run.1 - 1, &mut buf[at..], &old[(blocks - 1) * ENTRY..])?;
    }
    let skip = (from - run_off) as usize;
    buf[skip..skip + part.len()].copy_from_slice(part);
    write(&buf, run_off)?;
    Ok(format::table_entries(&buf, version))
}

#[cfg(test)]
mod tests;
