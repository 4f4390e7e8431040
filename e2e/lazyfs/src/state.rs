//! Every operation of the mounted file system, in plain Rust over the backing directory:
//! unsynced data lives in one [`Overlay`] per file, namespace changes go to the backing
//! directory at once and into the [`Journal`], and [`State::cut`] is the power cut.
//!
//! A file's overlay lives from its first open (or truncation) until it is closed with nothing
//! unsynced, or until the power is cut; it keeps a descriptor of the backing file, so an open
//! file that was unlinked or renamed away stays readable and syncable.

use crate::journal::{Change, Journal, Model};
use crate::nodes::{Nodes, ROOT};
use crate::overlay::{Backing, Overlay};
use crate::trash::{self, Trash};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Attributes of a node as the mounted file system shows them.
#[derive(Debug)]
pub struct Attr {
    pub ino: u64,
    pub meta: Metadata,
    /// The size with unsynced changes.
    pub size: u64,
    /// 512-byte blocks, counting unsynced data.
    pub blocks: u64,
}

/// A time to set: now, or a given time.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// What a power cut dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Cuts since start, this one included.
    pub cut: u64,
    /// Files that had unsynced changes.
    pub files: usize,
    /// Bytes of unsynced written data.
    pub bytes: u64,
    /// Namespace changes undone.
    pub undone: usize,
    /// Open file handles that now fail with EIO.
    pub handles: usize,
    /// Pages of unsynced data written back before the cut (a torn cut).
    pub kept: u64,
}

struct OpenFile {
    file: File,
    overlay: Overlay,
    handles: usize,
}

/// A backing file as the overlay sees it.
struct FileBacking<'a>(&'a File);

impl Backing for FileBacking<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn punch(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match fallocate(self.0, flags, offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let end = (offset + len).min(self.0.metadata()?.len());
                let zeros = vec![0u8; end.saturating_sub(offset) as usize];
                self.0.write_all_at(&zeros, offset)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

pub struct State {
    nodes: Nodes,
    files: HashMap<u64, OpenFile>,
    /// Open file handles: the node each one is of.
    handles: HashMap<u64, u64>,
    next_handle: u64,
    journal: Journal,
    trash: Trash,
    cuts: u64,
    /// How many of the next fsyncs fail (see [`State::fail_fsyncs`]).
    failing_fsyncs: u64,
}

impl State {
    /// The file system over backing directory `root`, whose namespace changes become durable
    /// as `model` says.
    pub fn new(root: &Path, model: Model) -> io::Result<Self> {
        let root = root.canonicalize()?;
        let meta = fs::metadata(&root)?;
        if !meta.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let trash = Trash::open(&root)?;
        Ok(Self {
            nodes: Nodes::new(root, meta.ino()),
            files: HashMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            journal: Journal::new(model),
            trash,
            cuts: 0,
            failing_fsyncs: 0,
        })
    }

    /// Namespace changes not durable yet.
    pub fn pending_changes(&self) -> usize {
        self.journal.pending()
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> io::Result<Attr> {
        let path = self.child(parent, name)?;
        let meta = fs::symlink_metadata(&path)?;
        let ino = self.nodes.entry(parent, name, meta.ino());
        Ok(self.attr(ino, meta))
    }

    pub fn getattr(&self, ino: u64) -> io::Result<Attr> {
        let meta = match self.files.get(&ino) {
            Some(open) => open.file.metadata()?,
            None => self.stat(ino)?.1,
        };
        Ok(self.attr(ino, meta))
    }

    /// Truncates or extends a regular file (unsynced, like a write).
    pub fn set_size(&mut self, ino: u64, size: u64) -> io::Result<()> {
        self.open_file(ino)?.overlay.set_len(size);
        Ok(())
    }

    pub fn set_mode(&self, ino: u64, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let perms = fs::Permissions::from_mode(mode & 0o7777);
        match self.files.get(&ino) {
            Some(open) => open.file.set_permissions(perms),
            None => fs::set_permissions(self.stat(ino)?.0, perms),
        }
    }

    pub fn set_owner(&self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        use rustix::fs::{AtFlags, CWD, Gid, Uid, chownat};
        let (path, _) = self.stat(ino)?;
        let uid = uid.map(Uid::from_raw);
        let gid = gid.map(Gid::from_raw);
        Ok(chownat(CWD, &path, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    pub fn set_times(
        &self,
        ino: u64,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> io::Result<()> {
        use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT, utimensat};
        let spec = |t: Option<SetTime>| match t {
            None => Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            Some(SetTime::Now) => Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
            Some(SetTime::At(t)) => {
                let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                Timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: d.subsec_nanos().into(),
                }
            }
        };
        let times = Timestamps {
            last_access: spec(atime),
            last_modification: spec(mtime),
        };
        let (path, _) = self.stat(ino)?;
        Ok(utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    pub fn readlink(&self, ino: u64) -> io::Result<PathBuf> {
        fs::read_link(self.stat(ino)?.0)
    }

    /// Creates a special file (FIFO, socket, device) or a regular one.
    pub fn mknod(&mut self, parent: u64, name: &OsStr, mode: u32, rdev: u32) -> io::Result<Attr> {
        use rustix::fs::{CWD, FileType, Mode, mknodat};
        let path = self.child(parent, name)?;
        let kind = FileType::from_raw_mode(mode);
        let perm = Mode::from_raw_mode(mode & 0o7777);
        if kind == FileType::RegularFile {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .open(&path)?;
        } else {
            mknodat(CWD, &path, kind, perm, rdev.into())?;
        }
        self.created(parent, name, path)
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<Attr> {
        let path = self.child(parent, name)?;
        fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        self.created(parent, name, path)
    }

    pub fn symlink(&mut self, parent: u64, name: &OsStr, target: &Path) -> io::Result<Attr> {
        let path = self.child(parent, name)?;
        std::os::unix::fs::symlink(target, &path)?;
        self.created(parent, name, path)
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> io::Result<Attr> {
        let (from, _) = self.stat(ino)?;
        let path = self.child(parent, name)?;
        fs::hard_link(from, &path)?;
        self.created(parent, name, path)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        self.remove(parent, path, meta.ino())
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let meta = fs::symlink_metadata(&path)?;
        if !meta.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if fs::read_dir(&path)?.next().is_some() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.remove(parent, path, meta.ino())
    }

    /// Renames; `flags` are renameat2's (RENAME_NOREPLACE only).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EINVAL));
        }
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let moved = fs::symlink_metadata(&from)?;
        if moved.is_dir() && to.starts_with(&from) && to != from {
            return Err(errno(libc::EINVAL));
        }
        let mut durable = Vec::new();
        match fs::symlink_metadata(&to) {
            Ok(target) => {
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(errno(libc::EEXIST));
                }
                if target.ino() == moved.ino() {
                    return Ok(()); // two links to one file: POSIX says do nothing
                }
                match (moved.is_dir(), target.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if fs::read_dir(&to)?.next().is_some() => {
                        return Err(errno(libc::ENOTEMPTY));
                    }
                    _ => {}
                }
                // Park the replaced entry so that a power cut can put it back.
                let parked = self.trash.put(&to)?;
                if let Err(e) = fs::rename(&from, &to) {
                    self.trash.restore(&parked, &to)?;
                    return Err(e);
                }
                let removed = Change::Removed {
                    path: to.clone(),
                    trash: parked,
                    ino: target.ino(),
                };
                durable.extend(self.journal.record(new_parent, removed));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(&from, &to)?,
            Err(e) => return Err(e),
        }
        self.nodes.entry(new_parent, new_name, moved.ino());
        let renamed = Change::Renamed {
            from,
            to,
            ino: moved.ino(),
        };
        durable.extend(self.journal.record(new_parent, renamed));
        self.commit(durable);
        Ok(())
    }

    /// Opens a regular file; returns its handle.
    pub fn open(&mut self, ino: u64, flags: i32) -> io::Result<u64> {
        let open = self.open_file(ino)?;
        open.handles += 1;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            open.overlay.set_len(0);
        }
        Ok(self.new_handle(ino))
    }

    /// Creates and opens a regular file (or opens it if it exists and `flags` lack O_EXCL).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Attr, u64)> {
        let path = self.child(parent, name)?;
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&path);
        match created {
            Ok(file) => {
                let attr = self.created(parent, name, path)?;
                let overlay = Overlay::new(0);
                let open = OpenFile {
                    file,
                    overlay,
                    handles: 1,
                };
                self.files.insert(attr.ino, open);
                let handle = self.new_handle(attr.ino);
                Ok((attr, handle))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                let attr = self.lookup(parent, name)?;
                let handle = self.open(attr.ino, flags)?;
                Ok((self.getattr(attr.ino)?, handle))
            }
            Err(e) => Err(e),
        }
    }

    pub fn read(&self, handle: u64, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let open = self.handle(handle)?;
        open.overlay
            .read(&FileBacking(&open.file), offset, len.into())
    }

    pub fn write(&mut self, handle: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.handle_mut(handle)?.overlay.write(offset, data);
        Ok(data.len())
    }

    /// fallocate(2): preallocation (only its size change matters), punching holes and
    /// zeroing ranges; all unsynced.
    pub fn fallocate(&mut self, handle: u64, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let overlay = &mut self.handle_mut(handle)?.overlay;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = offset.saturating_add(len);
        let grow = !keep_size && end > overlay.size();
        let supported = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 | libc::FALLOC_FL_ZERO_RANGE => true,
            libc::FALLOC_FL_PUNCH_HOLE => keep_size,
            _ => false,
        };
        if !supported {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if grow {
            overlay.set_len(end);
        }
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            overlay.zero(offset, len);
        }
        Ok(())
    }

    /// Makes the next `count` fsyncs of files fail as a disk's write-back error does on Linux:
    /// the call returns EIO and the file's unsynced changes are gone (the kernel marks the
    /// pages clean), so a retry succeeds without writing them.
    pub fn fail_fsyncs(&mut self, count: u64) {
        self.failing_fsyncs = count;
    }

    /// fsync/fdatasync: the file's unsynced changes go to the backing file, which is synced.
    pub fn fsync(&mut self, handle: u64, datasync: bool) -> io::Result<()> {
        let failing = self.failing_fsyncs > 0;
        let open = self.handle_mut(handle)?;
        if failing {
            open.overlay = Overlay::new(open.file.metadata()?.len());
            self.failing_fsyncs -= 1;
            tracing::info!(
                handle,
                "failed an fsync (injected): its unsynced changes are dropped"
            );
            return Err(errno(libc::EIO));
        }
        if !open.overlay.is_clean() {
            open.overlay.apply(&mut FileBacking(&open.file))?;
            open.overlay = Overlay::new(open.overlay.size());
        }
        if datasync {
            open.file.sync_data()?;
        } else {
            open.file.sync_all()?;
        }
        let durable = self.journal.file_synced();
        self.commit(durable);
        Ok(())
    }

    /// A handle is closed. Unsynced changes stay (a close is no sync) while the file is
    /// still reachable.
    pub fn release(&mut self, handle: u64) {
        let Some(ino) = self.handles.remove(&handle) else {
            return; // a handle from before a power cut
        };
        let Some(open) = self.files.get_mut(&ino) else {
            return;
        };
        open.handles -= 1;
        if open.handles == 0 && (open.overlay.is_clean() || self.stat(ino).is_err()) {
            self.files.remove(&ino);
        }
    }

    /// Entries of directory `ino`: node, type and name, "." and ".." first.
    pub fn readdir(&mut self, ino: u64) -> io::Result<Vec<(u64, fs::FileType, OsString)>> {
        let (path, meta) = self.stat(ino)?;
        if !meta.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let mut entries = vec![
            (ino, meta.file_type(), ".".into()),
            (ino, meta.file_type(), "..".into()),
        ];
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            if ino == ROOT && name == trash::NAME {
                continue;
            }
            let child = self.nodes.entry(ino, &name, entry.ino());
            entries.push((child, entry.file_type()?, name));
        }
        Ok(entries)
    }

    /// fsync of a directory: its namespace changes become durable (see [`Model`]).
    pub fn fsyncdir(&mut self, ino: u64) -> io::Result<()> {
        let (path, _) = self.stat(ino)?;
        File::open(&path)?.sync_all()?;
        let durable = self.journal.dir_synced(ino);
        self.commit(durable);
        Ok(())
    }

    pub fn statfs(&self) -> io::Result<rustix::fs::StatVfs> {
        Ok(rustix::fs::statvfs(self.nodes.root())?)
    }

    /// Cuts the power: drops every unsynced change of data, undoes the namespace changes
    /// that are not durable, and invalidates every open handle.
    pub fn cut(&mut self) -> CutReport {
        let dirty: Vec<&OpenFile> = self
            .files
            .values()
            .filter(|f| !f.overlay.is_clean())
            .collect();
        let files = dirty.len();
        let bytes = dirty.iter().map(|f| f.overlay.pending_bytes()).sum();
        let undone = self
            .journal
            .cut()
            .iter()
            .filter(|c| self.trash.undo(c))
            .count();
        let handles = self.handles.len();
        self.files.clear();
        self.handles.clear();
        self.cuts += 1;
        CutReport {
            cut: self.cuts,
            files,
            bytes,
            undone,
            handles,
            kept: 0,
        }
    }

    /// A torn power cut: the kernel had written back some unsynced pages and not others.
    /// Each 4 KiB page holding unsynced data of each file is written to the backing file with
    /// its current content, or not, as a hash of `seed`, the file's path and the page's index
    /// decides (about half are); size changes are not written back. Then [`State::cut`].
    pub fn cut_torn(&mut self, seed: u64) -> CutReport {
        const PAGE: u64 = 4096;
        let mut kept = 0;
        for (&ino, open) in &self.files {
            let path = self.nodes.path(ino).unwrap_or_default();
            let relative = path.strip_prefix(self.nodes.root()).unwrap_or(&path);
            let salt = fnv1a(relative.as_os_str().as_encoded_bytes());
            for page in open.overlay.dirty_pages(PAGE) {
                if splitmix(seed ^ salt ^ splitmix(page)) & 1 == 0 {
                    continue;
                }
                let written = open
                    .overlay
                    .read(&FileBacking(&open.file), page * PAGE, PAGE)
                    .and_then(|data| open.file.write_all_at(&data, page * PAGE));
                match written {
                    Ok(()) => kept += 1,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), page, error = %e, "cannot write a page back")
                    }
                }
            }
        }
        CutReport { kept, ..self.cut() }
    }

    /// A clean unmount: every unsynced change becomes durable, and the trash goes. Nothing
    /// may be done after this.
    pub fn shutdown(&mut self) {
        for open in self.files.values_mut() {
            if open.overlay.is_clean() {
                continue;
            }
            let synced = open
                .overlay
                .apply(&mut FileBacking(&open.file))
                .and_then(|()| open.file.sync_all());
            match synced {
                Ok(()) => open.overlay = Overlay::new(open.overlay.size()),
                Err(e) => tracing::error!(error = %e, "cannot write unsynced data back at unmount"),
            }
        }
        let durable = self.journal.commit_all();
        self.commit(durable);
        self.trash.close();
    }

    fn attr(&self, ino: u64, meta: Metadata) -> Attr {
        let (size, blocks) = match self.files.get(&ino) {
            Some(open) if !open.overlay.is_clean() => (
                open.overlay.size(),
                meta.blocks() + open.overlay.pending_bytes().div_ceil(512),
            ),
            _ => (meta.len(), meta.blocks()),
        };
        Attr {
            ino,
            meta,
            size,
            blocks,
        }
    }

    /// Path of entry `name` of directory `parent` in the backing directory.
    fn child(&self, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
        if parent == ROOT && name == trash::NAME {
            return Err(errno(libc::ENOENT));
        }
        self.nodes.child(parent, name).ok_or(errno(libc::ENOENT))
    }

    /// Path and metadata of node `ino`, checked to still be that node.
    fn stat(&self, ino: u64) -> io::Result<(PathBuf, Metadata)> {
        let path = self.nodes.path(ino).ok_or(errno(libc::ENOENT))?;
        let meta = fs::symlink_metadata(&path)?;
        if Some(meta.ino()) != self.nodes.backing(ino) {
            return Err(errno(libc::ENOENT)); // replaced, or undone by a power cut
        }
        Ok((path, meta))
    }

    /// Records the creation of `path` (entry `name` of `parent`) and returns its attributes.
    fn created(&mut self, parent: u64, name: &OsStr, path: PathBuf) -> io::Result<Attr> {
        let meta = fs::symlink_metadata(&path)?;
        let ino = self.nodes.entry(parent, name, meta.ino());
        let change = Change::Created {
            path,
            ino: meta.ino(),
        };
        let durable = self.journal.record(parent, change);
        self.commit(durable);
        Ok(self.attr(ino, meta))
    }

    /// Unlinks or rmdirs `path` of directory `parent`: it is parked in the trash until the
    /// removal is durable.
    fn remove(&mut self, parent: u64, path: PathBuf, ino: u64) -> io::Result<()> {
        let parked = self.trash.put(&path)?;
        let change = Change::Removed {
            path,
            trash: parked,
            ino,
        };
        let durable = self.journal.record(parent, change);
        self.commit(durable);
        Ok(())
    }

    fn commit(&self, durable: Vec<Change>) {
        for change in &durable {
            self.trash.commit(change);
        }
    }

    /// The open state of regular file `ino`, opening its backing file if needed.
    fn open_file(&mut self, ino: u64) -> io::Result<&mut OpenFile> {
        if !self.files.contains_key(&ino) {
            let (path, meta) = self.stat(ino)?;
            if meta.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            if !meta.is_file() {
                return Err(errno(libc::EINVAL));
            }
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS)) => {
                    File::open(&path)?
                }
                Err(e) => return Err(e),
            };
            let open = OpenFile {
                file,
                overlay: Overlay::new(meta.len()),
                handles: 0,
            };
            self.files.insert(ino, open);
        }
        Ok(self.files.get_mut(&ino).expect("inserted above"))
    }

    fn new_handle(&mut self, ino: u64) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, ino);
        handle
    }

    /// The open file of `handle`; EIO for a handle opened before a power cut.
    fn handle(&self, handle: u64) -> io::Result<&OpenFile> {
        self.handles
            .get(&handle)
            .and_then(|ino| self.files.get(ino))
            .ok_or(errno(libc::EIO))
    }

    fn handle_mut(&mut self, handle: u64) -> io::Result<&mut OpenFile> {
        self.handles
            .get(&handle)
            .and_then(|ino| self.files.get_mut(ino))
            .ok_or(errno(libc::EIO))
    }
}

#[cfg(test)]
mod tests;
