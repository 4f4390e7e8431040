//! The dirty log: which objects were written since the last flush.
//!
//! A write updates an object's data and then its checksum table with two `pwrite`s. If `sheep`
//! is killed between them, the block's checksum no longer matches. Such a block was never
//! flushed, so either content is legitimate: at start-up, the checksums of every object named
//! in the log are recomputed from the data before any I/O is served.
//!
//! Format, version 1: a 16-byte header (magic `SDDIRTY1`, current generation u64 LE), then
//! 16-byte entries (generation u64 LE, oid u64 LE). Only entries of the header's generation
//! count. An object gets an entry (one `pwrite`, in the page cache) before its first write after
//! a flush. A flush, once its objects are synced, carries the objects written meanwhile into a
//! new generation and then bumps the header, so a checkpoint is two small in-place writes, no
//! file creation or rename. The log is compacted when it grows past [`COMPACT_AT`].
//!
//! An append is fdatasynced before the object is written, so the log names every object
//! that may be torn after a process crash (`kill -9`, panics) and after a power cut alike.
//! The power-cut tests (`e2e/tests/power_loss.rs`, lazyfs) found the unsynced log losing the
//! flushed bytes of blocks a later, unflushed write tore.

use sheepdog_model::ObjectId;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"SDDIRTY1";
const HEADER: u64 = 16;
const ENTRY: u64 = 16;
/// Log size past which a checkpoint rewrites it from the start.
const COMPACT_AT: u64 = 1 << 20;

pub struct DirtyLog {
    file: File,
    /// Generation of new entries (the header's).
    generation: u64,
    /// Newest generation seen in the file; the next one is above it.
    newest: u64,
    /// Where the next entry goes.
    end: u64,
    pending: HashSet<ObjectId>,
}

impl DirtyLog {
    /// Opens the log at `path`, returning it and the objects a previous run left in it. Those
    /// stay pending (and logged) until the caller has repaired them and calls `checkpoint`.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<ObjectId>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let bytes = std::fs::read(path)?;
        let (leftover, current, newest) = if bytes.is_empty() {
            (Vec::new(), 0, 0)
        } else {
            parse(&bytes).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a dirty log; if this node was stopped cleanly, remove it",
                        path.display()
                    ),
                )
            })?
        };
        let end = if bytes.is_empty() {
            HEADER
        } else {
            HEADER + (bytes.len() as u64 - HEADER) / ENTRY * ENTRY
        };
        let pending = leftover.iter().copied().collect();
        let mut log = Self {
            file,
            generation: current,
            newest,
            end,
            pending,
        };
        if bytes.is_empty() {
            log.checkpoint()?;
        }
        Ok((log, leftover))
    }

    /// Records, durably, that `oid` is about to be written. Cheap when it already is
    /// recorded: one `fdatasync` per object per flush interval. Durable because after a power
    /// cut a write that reached the disk without its checksum (two `pwrite`s, either may be
    /// lost) must be found and its checksums recomputed, or the flushed bytes of its block
    /// would read as corrupt.
    pub fn mark(&mut self, oid: ObjectId) -> io::Result<()> {
        if self.pending.insert(oid) {
            let logged = self
                .file
                .write_all_at(&entry(self.generation, oid), self.end)
                .and_then(|()| self.file.sync_data());
            if let Err(e) = logged {
                self.pending.remove(&oid);
                return Err(e);
            }
            self.end += ENTRY;
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

    /// Starts a new generation holding just the objects written since `take_pending`.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        let generation = self.generation.max(self.newest) + 1;
        let mut at = if self.pending.is_empty() || self.end >= COMPACT_AT {
            HEADER
        } else {
            self.end
        };
        if at == HEADER && !self.pending.is_empty() {
            // Compaction overwrites old entries of objects still pending: write their new
            // entries past the end first, so a crash mid-way loses no pending object.
            let mut tail = self.end;
            for &oid in &self.pending {
                self.file.write_all_at(&entry(self.generation, oid), tail)?;
                tail += ENTRY;
            }
        }
        for &oid in &self.pending {
            self.file.write_all_at(&entry(generation, oid), at)?;
            at += ENTRY;
        }
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&generation.to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.generation = generation;
        self.newest = generation;
        self.end = at;
        Ok(())
    }
}

fn entry(generation: u64, oid: ObjectId) -> [u8; ENTRY as usize] {
    let mut bytes = [0u8; ENTRY as usize];
    bytes[..8].copy_from_slice(&generation.to_le_bytes());
    bytes[8..].copy_from_slice(&oid.raw().to_le_bytes());
    bytes
}

/// The objects of the header's generation, that generation, and the newest generation seen
/// anywhere, so that the next one is fresh even if a crash left newer entries behind.
fn parse(bytes: &[u8]) -> Option<(Vec<ObjectId>, u64, u64)> {
    if bytes.len() < HEADER as usize || &bytes[..8] != MAGIC {
        return None;
    }
    let current = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let mut newest = current;
    let mut oids = HashSet::new();
    for chunk in bytes[HEADER as usize..].chunks_exact(ENTRY as usize) {
        let generation = u64::from_le_bytes(chunk[..8].try_into().ok()?);
        newest = newest.max(generation);
        if generation == current {
            let raw = u64::from_le_bytes(chunk[8..].try_into().ok()?);
            oids.extend(ObjectId::from_raw(raw).ok());
        }
    }
    Some((oids.into_iter().collect(), current, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the log as start-up does: collect leftovers, "repair" them, checkpoint.
    fn reopen(path: &Path) -> Vec<ObjectId> {
        let (mut log, mut leftover) = DirtyLog::open(path).unwrap();
        log.take_pending();
        log.checkpoint().unwrap();
        leftover.sort();
        leftover
    }

    #[test]
    fn leftovers_stay_logged_until_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        log.mark(ObjectId::data(1, 1)).unwrap();
        drop(log);
        let (_crashed_during_repair, leftover) = DirtyLog::open(&path).unwrap();
        assert_eq!(leftover.len(), 1);
        assert_eq!(reopen(&path), vec![ObjectId::data(1, 1)]);
    }

    #[test]
    fn only_objects_written_since_the_last_checkpoint_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (a, b, c) = (
            ObjectId::data(1, 1),
            ObjectId::data(1, 2),
            ObjectId::data(1, 3),
        );
        let (mut log, leftover) = DirtyLog::open(&path).unwrap();
        assert!(leftover.is_empty());
        log.mark(a).unwrap();
        log.mark(b).unwrap();
        let flushing = log.take_pending();
        assert_eq!(flushing.len(), 2);
        log.mark(c).unwrap(); // written while the flush syncs a and b
        log.checkpoint().unwrap();
        drop(log);
        assert_eq!(reopen(&path), vec![c]);
        assert_eq!(
            reopen(&path),
            Vec::<ObjectId>::new(),
            "start-up checkpoints what it repaired"
        );
    }

    #[test]
    fn compaction_keeps_pending_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        let keep = ObjectId::data(2, 0);
        for round in 0..(COMPACT_AT / ENTRY / 100 + 2) {
            for i in 0..100 {
                log.mark(ObjectId::data(3, (round * 100 + i) as u32))
                    .unwrap();
            }
            log.take_pending();
            log.mark(keep).unwrap();
            log.checkpoint().unwrap();
        }
        assert!(
            log.end < COMPACT_AT + 200 * ENTRY,
            "the log was compacted: {}",
            log.end
        );
        drop(log);
        assert_eq!(reopen(&path), vec![keep]);
    }

    #[test]
    fn a_foreign_file_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        std::fs::write(&path, b"something else entirely").unwrap();
        let err = DirtyLog::open(&path).err().unwrap();
        assert!(err.to_string().contains("remove it"), "{err}");
    }
}
