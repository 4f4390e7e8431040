//! The local object store: one sparse file per object under `DATA_DIR/obj/`.
//!
//! Every 4 KiB block carries a CRC32C that is verified on every read; a mismatch is an error
//! naming the object and block, never silent bad data. Reads of never-written ranges and of
//! missing objects return zeros. Zeroing a whole object removes its file; zeroing whole blocks
//! punches holes. `flush` and FUA writes make data durable with `fdatasync`, and new or removed
//! files with an `fsync` of the directory. See `docs/architecture.md` for why one file per object.

mod dirty_log;
pub mod format;

use dirty_log::DirtyLog;
use format::{BS, HEADER_LEN, HeaderError, ObjectHeader};
use rustix::fs::{FallocateFlags, fallocate};
use sheepdog_model::ObjectId;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const LOCK_STRIPES: usize = 256;
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

pub struct ObjectStore {
    dir: PathBuf,
    /// Every stored object and its copies, loaded from the headers at start.
    index: RwLock<HashMap<ObjectId, u8>>,
    files: Mutex<HashMap<ObjectId, Arc<ObjectFile>>>,
    locks: Vec<RwLock<()>>,
    dirty: Mutex<DirtyLog>,
    dir_dirty: AtomicBool,
    flush_lock: Mutex<()>,
}

impl ObjectStore {
    /// Opens (creating if needed) the store under `data_dir`, repairing checksums of objects
    /// that an unclean stop left half-written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("obj");
        let open_dir = |source| StoreError::OpenDir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(open_dir)?;
        remove_temp_files(&dir).map_err(open_dir)?;
        let (log, leftover) = DirtyLog::open(&data_dir.join("dirty.log")).map_err(open_dir)?;
        let index = RwLock::new(load_index(&dir).map_err(open_dir)?);
        let store = Self {
            dir,
            index,
            files: Mutex::new(HashMap::new()),
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            dirty: Mutex::new(log),
            dir_dirty: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
        };
        store.repair_checksums(&leftover)?;
        Ok(store)
    }

    /// Reads `buf.len()` bytes at `offset` of `oid`; a missing object reads as zeros.
    pub fn read(&self, oid: ObjectId, offset: u64, buf: &mut [u8]) -> Result<()> {
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

    /// Writes `data` at `offset` of `oid`, creating the object as `spec` says if needed.
    /// With `fua`, the data is durable when this returns.
    pub fn write(
        &self,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<()> {
        let obj = {
            let _guard = self.lock(oid).write().unwrap();
            let obj = match self.object(oid)? {
                Some(obj) => obj,
                None => self.create(oid, spec)?,
            };
            check_range(&obj, offset, data.len() as u64)?;
            self.mark_dirty(oid)?;
            write_blocks(&obj, offset, data)?;
            obj
        };
        if fua {
            self.sync_object(&obj)?;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` of `oid` read as zeros, freeing the space they used.
    pub fn zero(&self, oid: ObjectId, offset: u64, len: u64, fua: bool) -> Result<()> {
        let obj = {
            let _guard = self.lock(oid).write().unwrap();
            let Some(obj) = self.object(oid)? else {
                return Ok(());
            };
            check_range(&obj, offset, len)?;
            if offset == 0 && len == obj.header.capacity {
                return self.remove_locked(oid, fua);
            }
            self.mark_dirty(oid)?;
            zero_blocks(&obj, offset, len)?;
            obj
        };
        if fua {
            self.sync_object(&obj)?;
        }
        Ok(())
    }

    /// Removes `oid`; removing a missing object succeeds.
    pub fn remove(&self, oid: ObjectId) -> Result<()> {
        let _guard = self.lock(oid).write().unwrap();
        self.remove_locked(oid, false)
    }

    /// Makes every write and removal that completed before this call durable.
    pub fn flush(&self) -> Result<()> {
        let _serial = self.flush_lock.lock().unwrap();
        let pending = self.dirty.lock().unwrap().take_pending();
        let mut failed = None;
        for &oid in &pending {
            let synced = self.object(oid).and_then(|obj| match obj {
                Some(obj) => self.sync_object(&obj),
                None => Ok(()),
            });
            if let Err(e) = synced {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            self.dirty.lock().unwrap().restore(pending);
            return Err(e);
        }
        self.sync_dir()?;
        let sync_err = |source| StoreError::Sync {
            path: self.dir.clone(),
            source,
        };
        self.dirty.lock().unwrap().checkpoint().map_err(sync_err)
    }

    /// Whether `oid` is stored here.
    pub fn contains(&self, oid: ObjectId) -> bool {
        self.index.read().unwrap().contains_key(&oid)
    }

    /// Every object stored here, with its copies.
    pub fn list(&self) -> Vec<(ObjectId, u8)> {
        self.index
            .read()
            .unwrap()
            .iter()
            .map(|(&oid, &copies)| (oid, copies))
            .collect()
    }

    /// Objects stored and disk bytes they occupy.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for (oid, _) in self.list() {
            if let Ok(meta) = fs::metadata(self.path(oid)) {
                usage.objects += 1;
                usage.bytes += meta.blocks() * 512;
            }
        }
        Ok(usage)
    }

    fn path(&self, oid: ObjectId) -> PathBuf {
        self.dir.join(oid.to_string())
    }

    fn lock(&self, oid: ObjectId) -> &RwLock<()> {
        let stripe = xxhash_rust::xxh3::xxh3_64(&oid.raw().to_le_bytes()) as usize % LOCK_STRIPES;
        &self.locks[stripe]
    }

    /// The open object file, or `None` when the object does not exist.
    fn object(&self, oid: ObjectId) -> Result<Option<Arc<ObjectFile>>> {
        if let Some(obj) = self.files.lock().unwrap().get(&oid) {
            return Ok(Some(obj.clone()));
        }
        if !self.contains(oid) {
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
    fn create(&self, oid: ObjectId, spec: ObjectSpec) -> Result<Arc<ObjectFile>> {
        let header = ObjectHeader {
            oid,
            capacity: spec.capacity.div_ceil(BS) * BS,
            copies: spec.copies,
        };
        let file = self.create_file(header, &[])?;
        Ok(self.cache(oid, ObjectFile { file, header }))
    }

    /// Writes a new object file holding `data` (sparse: zero blocks are skipped) and renames it
    /// into place, replacing any older file and updating the index.
    fn create_file(&self, header: ObjectHeader, data: &[u8]) -> Result<File> {
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
        for (i, block) in data.chunks(BS as usize).enumerate() {
            if block.iter().any(|&b| b != 0) {
                let mut full = block.to_vec();
                full.resize(BS as usize, 0);
                file.write_all_at(&full, header.data_offset() + i as u64 * BS)
                    .map_err(write_err)?;
                table[i * 4..i * 4 + 4]
                    .copy_from_slice(&format::block_checksum(&full).to_le_bytes());
            }
        }
        if !data.is_empty() {
            file.write_all_at(&table, HEADER_LEN).map_err(write_err)?;
            file.sync_data().map_err(write_err)?;
        }
        fs::rename(&tmp, self.path(oid)).map_err(write_err)?;
        self.dir_dirty.store(true, Ordering::Release);
        self.index.write().unwrap().insert(oid, header.copies);
        Ok(file)
    }

    /// Replaces `oid` with a complete copy (recovery). Durable when this returns.
    pub fn put(&self, oid: ObjectId, spec: ObjectSpec, data: &[u8]) -> Result<()> {
        let _guard = self.lock(oid).write().unwrap();
        self.files.lock().unwrap().remove(&oid);
        let header = ObjectHeader {
            oid,
            capacity: spec.capacity.div_ceil(BS) * BS,
            copies: spec.copies,
        };
        if data.len() as u64 > header.capacity {
            let (offset, len, capacity) = (0, data.len() as u64, header.capacity);
            return Err(StoreError::OutOfRange {
                oid,
                offset,
                len,
                capacity,
            });
        }
        self.create_file(header, data)?;
        self.sync_dir()
    }

    /// A whole object: its spec and its bytes up to the last non-zero block.
    pub fn get(&self, oid: ObjectId) -> Result<Option<(ObjectSpec, Vec<u8>)>> {
        let _guard = self.lock(oid).read().unwrap();
        let Some(obj) = self.object(oid)? else {
            return Ok(None);
        };
        let mut data = vec![0u8; obj.header.capacity as usize];
        read_verified(&obj, 0, &mut data)?;
        let used = data
            .chunks(BS as usize)
            .rposition(|b| b.iter().any(|&x| x != 0));
        data.truncate(used.map_or(0, |i| (i + 1) * BS as usize));
        let spec = ObjectSpec {
            capacity: obj.header.capacity,
            copies: obj.header.copies,
        };
        Ok(Some((spec, data)))
    }

    fn remove_locked(&self, oid: ObjectId, durable: bool) -> Result<()> {
        self.files.lock().unwrap().remove(&oid);
        self.index.write().unwrap().remove(&oid);
        match fs::remove_file(self.path(oid)) {
            Ok(()) => self.dir_dirty.store(true, Ordering::Release),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::RemoveObject { oid, source }),
        }
        if durable { self.sync_dir() } else { Ok(()) }
    }

    fn mark_dirty(&self, oid: ObjectId) -> Result<()> {
        self.dirty
            .lock()
            .unwrap()
            .mark(oid)
            .map_err(|source| io_error(oid, source))
    }

    fn sync_object(&self, obj: &ObjectFile) -> Result<()> {
        obj.file
            .sync_data()
            .map_err(|source| io_error(obj.header.oid, source))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            let synced = File::open(&self.dir).and_then(|d| d.sync_all());
            if let Err(source) = synced {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(StoreError::Sync {
                    path: self.dir.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    /// Recomputes the checksum tables of objects a previous run may have left half-written.
    fn repair_checksums(&self, oids: &[ObjectId]) -> Result<()> {
        for &oid in oids {
            let Some(obj) = self.object(oid)? else {
                continue;
            };
            let mut data = vec![0u8; obj.header.capacity as usize];
            let read_err = |source| StoreError::ReadObject { oid, source };
            obj.file
                .read_exact_at(&mut data, obj.header.data_offset())
                .map_err(read_err)?;
            let table = format::table_entries(&data);
            obj.file
                .write_all_at(&table, HEADER_LEN)
                .map_err(|e| io_error(oid, e))?;
            obj.file.sync_data().map_err(|e| io_error(oid, e))?;
            tracing::warn!(object = %oid, "recomputed checksums of an object written since the last flush before an unclean stop");
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

fn io_error(oid: ObjectId, source: io::Error) -> StoreError {
    if source.kind() == io::ErrorKind::StorageFull {
        StoreError::DiskFull { oid }
    } else {
        StoreError::WriteObject { oid, source }
    }
}

/// Reads the header of every object file: oid and copies.
fn load_index(dir: &Path) -> io::Result<HashMap<ObjectId, u8>> {
    let mut index = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(oid) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) else {
            continue;
        };
        let Ok(oid) = ObjectId::from_raw(oid) else {
            continue;
        };
        let mut raw = [0u8; 64];
        File::open(entry.path())?.read_exact_at(&mut raw, 0)?;
        match ObjectHeader::decode(&raw) {
            Ok(header) if header.oid == oid => {
                index.insert(oid, header.copies);
            }
            _ => {
                tracing::error!(object = %oid, path = %entry.path().display(), "object file has an unusable header; it is ignored")
            }
        }
    }
    Ok(index)
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

/// Reads whole blocks `first..first+count` with their checksums and verifies them.
fn read_blocks(obj: &ObjectFile, first: u64, buf: &mut [u8]) -> Result<()> {
    let oid = obj.header.oid;
    let count = buf.len() as u64 / BS;
    let mut table = vec![0u8; (count * 4) as usize];
    let read_err = |source| StoreError::ReadObject { oid, source };
    obj.file
        .read_exact_at(buf, obj.header.data_offset() + first * BS)
        .map_err(read_err)?;
    obj.file
        .read_exact_at(&mut table, HEADER_LEN + first * 4)
        .map_err(read_err)?;
    match format::first_mismatch(buf, &table) {
        Some(i) => Err(StoreError::Corrupt {
            oid,
            block: first + i as u64,
        }),
        None => Ok(()),
    }
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

/// Writes any byte range: partial first and last blocks are read (verified) and merged, then
/// the data and its checksums are written.
fn write_blocks(obj: &ObjectFile, offset: u64, data: &[u8]) -> Result<()> {
    let oid = obj.header.oid;
    let (first, end) = (offset / BS, (offset + data.len() as u64).div_ceil(BS));
    let merged;
    let blocks: &[u8] = if offset.is_multiple_of(BS) && (data.len() as u64).is_multiple_of(BS) {
        data
    } else {
        let mut buf = vec![0u8; ((end - first) * BS) as usize];
        let last_at = buf.len() - BS as usize;
        let tail_partial = !(offset + data.len() as u64).is_multiple_of(BS);
        if !offset.is_multiple_of(BS) || (end - first == 1 && tail_partial) {
            read_blocks(obj, first, &mut buf[..BS as usize])?;
        }
        if end - first > 1 && tail_partial {
            read_blocks(obj, end - 1, &mut buf[last_at..])?;
        }
        let skip = (offset - first * BS) as usize;
        buf[skip..skip + data.len()].copy_from_slice(data);
        merged = buf;
        &merged
    };
    let table = format::table_entries(blocks);
    let write = |bytes: &[u8], at| {
        obj.file
            .write_all_at(bytes, at)
            .map_err(|e| io_error(oid, e))
    };
    write(blocks, obj.header.data_offset() + first * BS)?;
    write(&table, HEADER_LEN + first * 4)
}

/// Zeroes a byte range: whole blocks are punched out of the file, partial ones rewritten.
fn zero_blocks(obj: &ObjectFile, offset: u64, len: u64) -> Result<()> {
    let oid = obj.header.oid;
    let end = offset + len;
    let (whole_first, whole_end) = (offset.div_ceil(BS), end / BS);
    if whole_first >= whole_end {
        return write_blocks(obj, offset, &vec![0u8; len as usize]);
    }
    let at = obj.header.data_offset() + whole_first * BS;
    let span = (whole_end - whole_first) * BS;
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    fallocate(&obj.file, flags, at, span).map_err(|e| io_error(oid, e.into()))?;
    let zeros = vec![0u8; ((whole_end - whole_first) * 4) as usize];
    obj.file
        .write_all_at(&zeros, HEADER_LEN + whole_first * 4)
        .map_err(|e| io_error(oid, e))?;
    if offset < whole_first * BS {
        write_blocks(
            obj,
            offset,
            &vec![0u8; (whole_first * BS - offset) as usize],
        )?;
    }
    if end > whole_end * BS {
        write_blocks(
            obj,
            whole_end * BS,
            &vec![0u8; (end - whole_end * BS) as usize],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
