//! The dirty log: which objects were written since the last flush.
//!
//! A write updates an object's data and then its checksum table with two `pwrite`s. If `sheep`
//! is killed between them, the block's checksum no longer matches. Such a block was never
//! flushed, so either content is legitimate: at start-up, the checksums of every object named
//! in the log are recomputed from the data before any I/O is served. An object enters the log
//! (one 8-byte append, in the page cache) before its first write after a flush; a flush syncs
//! the objects and then rewrites the log with only what was written since.
//!
//! The log is not fsynced on every append: it protects against process crashes (`kill -9`,
//! panics), which leave the page cache intact. After a power loss a torn unflushed block is
//! reported as a checksum error and repaired from another replica, never served as good data.

use sheepdog_model::ObjectId;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct DirtyLog {
    path: PathBuf,
    file: File,
    pending: HashSet<ObjectId>,
}

impl DirtyLog {
    /// Opens the log at `path`, returning it (empty) and the objects a previous run left in it.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<ObjectId>)> {
        let leftover = match fs::read(path) {
            Ok(bytes) => bytes
                .chunks_exact(8)
                .filter_map(|c| ObjectId::from_raw(u64::from_le_bytes(c.try_into().unwrap())).ok())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok((
            Self {
                path: path.to_owned(),
                file,
                pending: HashSet::new(),
            },
            leftover,
        ))
    }

    /// Records that `oid` is about to be written. Cheap when it already is recorded.
    pub fn mark(&mut self, oid: ObjectId) -> io::Result<()> {
        if self.pending.insert(oid)
            && let Err(e) = self.file.write_all(&oid.raw().to_le_bytes())
        {
            self.pending.remove(&oid);
            return Err(e);
        }
        Ok(())
    }

    /// Takes the set of objects to sync for a flush.
    pub fn take_pending(&mut self) -> HashSet<ObjectId> {
        std::mem::take(&mut self.pending)
    }

    /// Puts back objects whose sync failed, so a later flush tries again.
    pub fn restore(&mut self, oids: impl IntoIterator<Item = ObjectId>) {
        self.pending.extend(oids);
    }

    /// Replaces the log with just the objects written since `take_pending`.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let bytes: Vec<u8> = self
            .pending
            .iter()
            .flat_map(|o| o.raw().to_le_bytes())
            .collect();
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}
