//! The dirty log: which objects were written since the last flush, and what their checksum
//! tables held before.
//!
//! A write updates an object's data and then its checksum table with two `pwrite`s, to
//! different pages of the file. After `kill -9` the second may be missing; after a power cut
//! either page can reach the disk without the other. Such a block was never flushed, so
//! either content is legitimate, but its table entry no longer says which write it holds. At
//! start-up every object named in the log is repaired before any I/O is served, using the
//! table the object had when it was first written after its last flush (its *snapshot*, a
//! state that is on disk): a block whose data matches neither its entry nor its snapshot entry
//! holds a write newer than the snapshot and gets the snapshot's version, a lower bound, so
//! that any newer copy elsewhere wins and no older one does (`super::ObjectStore::open`).
//!
//! Format, version 2: a 16-byte header (magic `SDDIRTY2`, current generation u64 LE), then
//! entries: generation u64 LE, oid u64 LE, snapshot length u32 LE, CRC32C u32 LE of the
//! entry with this field zero, the snapshot. Only entries of the header's generation count;
//! an object's first entry in it holds its snapshot. An object gets an entry, fdatasynced,
//! before its first write after a flush, so the log names every object that may be torn. A
//! flush, once its objects are synced, appends the objects written meanwhile under a new
//! generation and then bumps the header: two small in-place writes. Past [`COMPACT_AT`] the
//! log is rewritten as a new file instead. Version 1 (16-byte entries, no snapshots) is read
//! and rewritten as version 2 when the log opens; its objects repair without snapshots.
//!
//! The power-cut tests (`e2e/tests/power_loss.rs`, lazyfs) found an unsynced log losing the
//! flushed bytes of blocks a later write tore, and the torture schedules found repaired
//! blocks keeping the version of a write whose bytes never reached the disk.

use sheepdog_model::ObjectId;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SDDIRTY2";
const MAGIC_V1: &[u8; 8] = b"SDDIRTY1";
const HEADER: u64 = 16;
const ENTRY_HEAD: usize = 24;
const ENTRY_V1: usize = 16;
/// Log size past which a checkpoint rewrites it as a new file.
const COMPACT_AT: u64 = 4 << 20;

/// The checksum table an object had before its first write since a flush (empty when the
/// object did not exist, or when a version-1 log named it).
pub type Snapshot = Vec<u8>;

pub struct DirtyLog {
    path: PathBuf,
    file: File,
    /// Generation of new entries (the header's).
    generation: u64,
    /// Newest generation in the file; the next one is above it, so that entries a crash left
    /// after the header's generation never count again.
    newest: u64,
    /// Where the next entry goes.
    end: u64,
    pub(super) pending: HashMap<ObjectId, Snapshot>,
}

impl DirtyLog {
    /// Opens the log at `path`, returning it and the objects a previous run left in it, with
    /// their snapshots. Those stay pending (and logged) until the caller has repaired them and
    /// calls `checkpoint`.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<(ObjectId, Snapshot)>)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (leftover, generation, newest, end, current_format) = if bytes.is_empty() {
            (Vec::new(), 0, 0, HEADER, false)
        } else {
            let parsed = parse(&bytes).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a dirty log; if this node was stopped cleanly, remove it",
                        path.display()
                    ),
                )
            })?;
            (parsed.0, parsed.1, parsed.2, parsed.3, &bytes[..8] == MAGIC)
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            generation,
            newest,
            end,
            pending: leftover.iter().cloned().collect(),
        };
        if !current_format || end < bytes.len() as u64 {
            // New, version 1, or ending in a torn entry: start a fresh version-2 file holding
            // the leftovers, so that no entry past the tear can count again later.
            log.rewrite(newest.max(generation) + 1)?;
        }
        Ok((log, leftover))
    }

    /// Records, durably, that `oid` is about to be written, with `snapshot` (called only when
    /// it is not recorded yet) giving its checksum table now. Cheap when it already is
    /// recorded: one `fdatasync` per object per flush interval.
    pub fn mark(
        &mut self,
        oid: ObjectId,
        snapshot: impl FnOnce() -> io::Result<Snapshot>,
    ) -> io::Result<()> {
        if self.pending.contains_key(&oid) {
            return Ok(());
        }
        let table = snapshot()?;
        let bytes = entry(self.generation, oid, &table);
        self.file
            .write_all_at(&bytes, self.end)
            .and_then(|()| self.file.sync_data())?;
        self.end += bytes.len() as u64;
        self.pending.insert(oid, table);
        Ok(())
    }

    /// Takes the objects to sync for a flush.
    pub fn take_pending(&mut self) -> HashMap<ObjectId, Snapshot> {
        std::mem::take(&mut self.pending)
    }

    /// Puts back objects whose sync failed, so a later flush tries again; their snapshots
    /// are older than any taken since, so they replace them.
    pub fn restore(&mut self, objects: HashMap<ObjectId, Snapshot>) {
        self.pending.extend(objects);
    }

    /// The generation of new entries: one more after every checkpoint.
    #[cfg(test)]
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts a new generation holding just the objects written since `take_pending`.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        let generation = self.generation.max(self.newest) + 1;
        if self.end >= COMPACT_AT {
            return self.rewrite(generation);
        }
        let mut at = self.end;
        for (&oid, table) in &self.pending {
            let bytes = entry(generation, oid, table);
            self.file.write_all_at(&bytes, at)?;
            at += bytes.len() as u64;
        }
        if at > self.end {
            // The new generation's entries are on disk before the header names it: a cut
            // that kept the header without them would leave their objects unlisted.
            self.file.sync_data()?;
        }
        self.file.write_all_at(&header(generation), 0)?;
        self.generation = generation;
        self.newest = generation;
        self.end = at;
        Ok(())
    }

    /// Replaces the log with a new file of generation `generation` holding the pending
    /// objects: written and synced aside, renamed over the log, the directory synced.
    fn rewrite(&mut self, generation: u64) -> io::Result<()> {
        let mut bytes = header(generation).to_vec();
        for (&oid, table) in &self.pending {
            bytes.extend_from_slice(&entry(generation, oid, table));
        }
        let tmp = self.path.with_extension("log.tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = file;
        self.generation = generation;
        self.newest = generation;
        self.end = bytes.len() as u64;
        Ok(())
    }
}

fn header(generation: u64) -> [u8; HEADER as usize] {
    let mut bytes = [0u8; HEADER as usize];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..].copy_from_slice(&generation.to_le_bytes());
    bytes
}

fn entry(generation: u64, oid: ObjectId, table: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENTRY_HEAD + table.len());
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&oid.raw().to_le_bytes());
    bytes.extend_from_slice(&(table.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    bytes.extend_from_slice(table);
    let crc = crc32c::crc32c(&bytes);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// What a log holds: see [`parse`].
type Parsed = (Vec<(ObjectId, Snapshot)>, u64, u64, u64);

/// The objects of the header's generation with their first snapshots, that generation, the
/// newest generation in the file, and where the valid entries end (an append cut short by a crash ends them: it was never
/// acknowledged, so its object was not written).
fn parse(bytes: &[u8]) -> Option<Parsed> {
    if bytes.len() < HEADER as usize {
        return None;
    }
    let current = u64_at(bytes, 8);
    let mut found: Vec<(ObjectId, Snapshot)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut newest = current;
    let mut keep = |generation: u64, raw: u64, table: &[u8]| {
        newest = newest.max(generation);
        if let Ok(oid) = ObjectId::from_raw(raw)
            && generation == current
            && seen.insert(oid)
        {
            found.push((oid, table.to_vec()));
        }
    };
    let mut at = HEADER as usize;
    if &bytes[..8] == MAGIC_V1 {
        for chunk in bytes[at..].chunks_exact(ENTRY_V1) {
            keep(u64_at(chunk, 0), u64_at(chunk, 8), &[]);
        }
        return Some((found, current, newest, bytes.len() as u64));
    }
    if &bytes[..8] != MAGIC {
        return None;
    }
    while bytes.len() >= at + ENTRY_HEAD {
        let len = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
        let Some(whole) = bytes.get(at..at + ENTRY_HEAD + len) else {
            break;
        };
        let stored = u32::from_le_bytes(whole[20..24].try_into().unwrap());
        let mut check = whole.to_vec();
        check[20..24].fill(0);
        if crc32c::crc32c(&check) != stored {
            break;
        }
        keep(u64_at(whole, 0), u64_at(whole, 8), &whole[ENTRY_HEAD..]);
        at += whole.len();
    }
    Some((found, current, newest, at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> io::Result<Snapshot> {
        Ok(Vec::new())
    }

    /// Opens the log as start-up does: collect leftovers, "repair" them, checkpoint.
    fn reopen(path: &Path) -> Vec<(ObjectId, Snapshot)> {
        let (mut log, mut leftover) = DirtyLog::open(path).unwrap();
        log.take_pending();
        log.checkpoint().unwrap();
        leftover.sort();
        leftover
    }

    fn oids(leftover: &[(ObjectId, Snapshot)]) -> Vec<ObjectId> {
        leftover.iter().map(|(oid, _)| *oid).collect()
    }

    #[test]
    fn leftovers_stay_logged_with_their_snapshots_until_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        log.mark(ObjectId::data(1, 1), || Ok(vec![7; 12])).unwrap();
        drop(log);
        let (_crashed_during_repair, leftover) = DirtyLog::open(&path).unwrap();
        assert_eq!(leftover, vec![(ObjectId::data(1, 1), vec![7; 12])]);
        assert_eq!(reopen(&path), vec![(ObjectId::data(1, 1), vec![7; 12])]);
        assert_eq!(reopen(&path), vec![]);
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
        log.mark(a, none).unwrap();
        log.mark(b, none).unwrap();
        let flushing = log.take_pending();
        assert_eq!(flushing.len(), 2);
        log.mark(c, none).unwrap(); // written while the flush syncs a and b
        log.checkpoint().unwrap();
        drop(log);
        assert_eq!(oids(&reopen(&path)), vec![c]);
        assert_eq!(
            reopen(&path),
            vec![],
            "start-up checkpoints what it repaired"
        );
    }

    #[test]
    fn an_object_keeps_its_first_snapshot_until_a_flush_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let a = ObjectId::data(1, 1);
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        log.mark(a, || Ok(vec![1])).unwrap();
        log.mark(a, || panic!("a recorded object is not snapshotted again"))
            .unwrap();
        let flushing = log.take_pending();
        log.mark(a, || Ok(vec![2])).unwrap(); // written while the flush syncs it
        drop(log);
        // The flush never finished: the older snapshot, the one on disk, counts.
        let (_, leftover) = DirtyLog::open(&path).unwrap();
        assert_eq!(leftover, vec![(a, vec![1])]);
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        log.take_pending();
        log.mark(a, || Ok(vec![3])).unwrap();
        let _ = flushing;
        log.checkpoint().unwrap();
        drop(log);
        assert_eq!(reopen(&path), vec![(a, vec![3])]);
    }

    #[test]
    fn a_crash_after_a_checkpoint_without_its_header_counts_no_entry_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (a, b) = (ObjectId::data(1, 1), ObjectId::data(1, 2));
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        log.mark(a, none).unwrap();
        log.take_pending();
        log.mark(b, none).unwrap();
        log.checkpoint().unwrap(); // b under a new generation
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let old = u64_at(&bytes, 8) - 1;
        bytes[8..16].copy_from_slice(&old.to_le_bytes()); // the header write was lost
        std::fs::write(&path, &bytes).unwrap();
        let (mut log, mut leftover) = DirtyLog::open(&path).unwrap();
        leftover.sort();
        assert_eq!(oids(&leftover), vec![a, b], "the older generation counts");
        log.take_pending();
        log.checkpoint().unwrap();
        drop(log);
        assert_eq!(reopen(&path), vec![], "b's entry is not revived");
    }

    #[test]
    fn a_torn_append_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        log.mark(ObjectId::data(1, 1), || Ok(vec![9; 100])).unwrap();
        log.mark(ObjectId::data(1, 2), || Ok(vec![9; 100])).unwrap();
        drop(log);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let (mut log, leftover) = DirtyLog::open(&path).unwrap();
        assert_eq!(oids(&leftover), vec![ObjectId::data(1, 1)]);
        log.mark(ObjectId::data(1, 3), none).unwrap();
        drop(log);
        let mut got = oids(&reopen(&path));
        got.sort();
        assert_eq!(got, vec![ObjectId::data(1, 1), ObjectId::data(1, 3)]);
    }

    #[test]
    fn compaction_keeps_pending_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let (mut log, _) = DirtyLog::open(&path).unwrap();
        let keep = ObjectId::data(2, 0);
        let table = || Ok(vec![5u8; 12 * 1024]);
        for round in 0..(COMPACT_AT / (12 * 1024) / 50 + 2) {
            for i in 0..50 {
                log.mark(ObjectId::data(3, (round * 50 + i) as u32), table)
                    .unwrap();
            }
            log.take_pending();
            log.mark(keep, table).unwrap();
            log.checkpoint().unwrap();
        }
        assert!(
            log.end < COMPACT_AT + 60 * 12 * 1024,
            "compacted: {}",
            log.end
        );
        drop(log);
        assert_eq!(reopen(&path), vec![(keep, vec![5u8; 12 * 1024])]);
    }

    #[test]
    fn a_version_1_log_is_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirty.log");
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&4u64.to_le_bytes());
        for (generation, oid) in [(3u64, ObjectId::data(1, 1)), (4, ObjectId::data(1, 2))] {
            bytes.extend_from_slice(&generation.to_le_bytes());
            bytes.extend_from_slice(&oid.raw().to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let (_, leftover) = DirtyLog::open(&path).unwrap();
        assert_eq!(leftover, vec![(ObjectId::data(1, 2), vec![])]);
        assert_eq!(&std::fs::read(&path).unwrap()[..8], MAGIC);
        assert_eq!(reopen(&path), vec![(ObjectId::data(1, 2), vec![])]);
        assert_eq!(reopen(&path), vec![]);
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
