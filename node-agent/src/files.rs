//! Volumes as files, through FUSE: how a host without the ublk or nbd kernel module gets a
//! block device of a volume (a loop device over its file, see the CSI driver's node service).
//!
//! The file system is mounted the first time a volume is exported, on `DIR/files`, and holds
//! one file per exported volume, named as it (`NAME`, or `NAME@TAG` for a snapshot). The
//! node agent serves it, not the CSI node plugin, so a restart of the plugin leaves the
//! devices working. Every read, write, flush (fsync) and discard (a hole punched) goes
//! straight to this node's gateway, as NBD requests do: files are opened with direct I/O and
//! nothing is cached in the kernel, so several nodes writing one shared volume (a live
//! migration) see each other's writes, and a sync is a FLUSH of the gateway.
//!
//! An exported volume is attached as an NBD client would attach it (client `file`): the only
//! writer unless exported shared or read-only.

use crate::gateway::attach::Attachment;
use crate::gateway::{Gateway, GatewayError, Volume};
use crate::nbd::errors::errno;
use crate::nbd::proto::{CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Nothing is cached by the kernel: sizes change with resizes, and data with other gateways.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// Largest read or write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;
/// Requests the kernel keeps in flight to the file system at once (a loop device queues 128).
const MAX_IN_FLIGHT: u16 = 128;
/// The fallocate mode of a discard: punch a hole, keep the size.
const PUNCH_HOLE: i32 = 0x02 | 0x01;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(
        "cannot mount the volume files on {path}: {reason}; this node needs /dev/fuse (on Kubernetes the node agent runs privileged)"
    )]
    Mount { path: PathBuf, reason: String },
    #[error(
        "volume {name:?} is already exported on this node {how}; unexport it first to export it another way"
    )]
    OtherAccess { name: String, how: &'static str },
    #[error(
        "volume {name:?} is still open {opened} time(s) on this node (a loop device?); detach it first (losetup -d)"
    )]
    InUse { name: String, opened: u32 },
}

/// One exported volume.
struct File {
    name: String,
    volume: Arc<Volume>,
    /// The writer's attachment; `None` when read-only.
    attachment: Option<Attachment>,
    shared: bool,
    opened: u32,
    /// Who asked for the export (the CSI node ids), for the API to report.
    clients: BTreeSet<String>,
}

impl File {
    fn how(&self) -> &'static str {
        match (self.attachment.is_none(), self.shared) {
            (true, _) => "read-only",
            (false, true) => "shared",
            (false, false) => "for its only writer",
        }
    }

    fn add_client(&mut self, client: &str) {
        if !client.is_empty() {
            self.clients.insert(client.to_owned());
        }
    }
}

/// What is exported, by inode number (from 2; the root directory is 1).
#[derive(Default)]
struct Table {
    files: BTreeMap<u64, File>,
    next_ino: u64,
}

impl Table {
    fn by_name(&self, name: &str) -> Option<(u64, &File)> {
        self.files
            .iter()
            .find(|(_, f)| f.name == name)
            .map(|(&ino, f)| (ino, f))
    }

    fn by_name_mut(&mut self, name: &str) -> Option<&mut File> {
        self.files.values_mut().find(|f| f.name == name)
    }
}

/// An exported file, as the API reports it.
#[derive(Debug, Clone)]
pub struct Exported {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub shared: bool,
    pub read_only: bool,
    pub opened: u32,
    pub clients: Vec<String>,
}

pub struct VolumeFiles {
    gateway: Arc<Gateway>,
    mountpoint: PathBuf,
    table: Arc<Mutex<Table>>,
    session: tokio::sync::Mutex<Option<fuser::BackgroundSession>>,
}

impl VolumeFiles {
    pub fn new(gateway: Arc<Gateway>, mountpoint: PathBuf) -> Self {
        Self {
            gateway,
            mountpoint,
            table: Arc::new(Mutex::new(Table {
                files: BTreeMap::new(),
                next_ino: ROOT + 1,
            })),
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// Exports `name` (idempotent), attaching it unless read-only; refreshes its size.
    /// `client` (if not empty) is added to the clients the file reports.
    pub async fn export(
        &self,
        name: &str,
        shared: bool,
        read_only: bool,
        client: &str,
    ) -> Result<Exported, FilesError> {
        self.mount().await?;
        let read_only = read_only || name.contains('@');
        let volume = self.gateway.open_volume(name).await?;
        {
            let mut table = self.table.lock().unwrap();
            if let Some(file) = table.by_name_mut(name) {
                if file.shared != shared || file.attachment.is_none() != read_only {
                    return Err(FilesError::OtherAccess {
                        name: name.into(),
                        how: file.how(),
                    });
                }
                file.add_client(client);
                return Ok(self.describe(file));
            }
        }
        let attachment = if read_only {
            None
        } else {
            let attachments = self.gateway.attachments();
            Some(attachments.attach(name, "file", shared).await?)
        };
        let mut table = self.table.lock().unwrap();
        if let Some(file) = table.by_name_mut(name) {
            // Exported meanwhile by a concurrent call: that one stands.
            file.add_client(client);
            return Ok(self.describe(file));
        }
        let ino = table.next_ino;
        table.next_ino += 1;
        let mut file = File {
            name: name.to_owned(),
            volume,
            attachment,
            shared,
            opened: 0,
            clients: BTreeSet::new(),
        };
        file.add_client(client);
        let exported = self.describe(&file);
        table.files.insert(ino, file);
        tracing::info!(volume.name = name, shared, read_only, path = %exported.path.display(), "exported as a file");
        Ok(exported)
    }

    /// Removes the file of `name` (and its attachment); nothing to do if it is not exported.
    pub fn unexport(&self, name: &str) -> Result<(), FilesError> {
        let mut table = self.table.lock().unwrap();
        let Some((ino, file)) = table.by_name(name) else {
            return Ok(());
        };
        if file.opened > 0 {
            return Err(FilesError::InUse {
                name: name.into(),
                opened: file.opened,
            });
        }
        table.files.remove(&ino);
        tracing::info!(volume.name = name, "file export removed");
        Ok(())
    }

    pub fn list(&self) -> Vec<Exported> {
        let table = self.table.lock().unwrap();
        table.files.values().map(|f| self.describe(f)).collect()
    }

    fn describe(&self, file: &File) -> Exported {
        Exported {
            name: file.name.clone(),
            path: self.mountpoint.join(&file.name),
            size: file.volume.inode.read().unwrap().size,
            shared: file.shared,
            read_only: file.attachment.is_none(),
            opened: file.opened,
            clients: file.clients.iter().cloned().collect(),
        }
    }

    /// Mounts the file system unless it is mounted; a dead mount of an earlier run (its
    /// node agent was killed) is detached first.
    async fn mount(&self) -> Result<(), FilesError> {
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|s| !s.guard.is_finished()) {
            return Ok(());
        }
        let failed = |reason: String| FilesError::Mount {
            path: self.mountpoint.clone(),
            reason,
        };
        let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        std::fs::create_dir_all(&self.mountpoint).map_err(|e| failed(e.to_string()))?;
        let fs = Files {
            gateway: self.gateway.clone(),
            runtime: tokio::runtime::Handle::current(),
            table: self.table.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("sheepdog".into()),
            fuser::MountOption::Subtype("sheepdog".into()),
        ];
        config.n_threads = Some(2);
        let mounted = fuser::Session::new(fs, &self.mountpoint, &config)
            .and_then(fuser::Session::spawn)
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(path = %self.mountpoint.display(), "volume files mounted");
        *session = Some(mounted);
        Ok(())
    }

    /// Unmounts the file system (at shutdown); a busy mount is detached.
    pub async fn unmount(&self) {
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(error = %e, "cannot unmount the volume files; detaching them");
            let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// An exported volume as a request finds it: the volume, its name, and whether it may be
/// written now (`Err` says why not).
type Opened = (Arc<Volume>, String, Result<(), GatewayError>);

/// The FUSE side: requests become gateway calls on the runtime; replies go out when they end.
struct Files {
    gateway: Arc<Gateway>,
    runtime: tokio::runtime::Handle,
    table: Arc<Mutex<Table>>,
}

fn root_attr() -> FileAttr {
    attr(ROOT, 0, FileType::Directory, 0o700)
}

fn attr(ino: u64, size: u64, kind: FileType, perm: u16) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn fuse_errno(e: &GatewayError, kind: u16) -> Errno {
    Errno::from_i32(errno(e, kind) as i32)
}

impl Files {
    fn file_attr(&self, ino: u64) -> Option<FileAttr> {
        let table = self.table.lock().unwrap();
        let file = table.files.get(&ino)?;
        let size = file.volume.inode.read().unwrap().size;
        let perm = if file.attachment.is_some() {
            0o600
        } else {
            0o400
        };
        Some(attr(ino, size, FileType::RegularFile, perm))
    }

    /// The volume of `ino`, with whether it may be written now (`Err` says why not).
    fn volume(&self, ino: u64) -> Result<Opened, Errno> {
        let table = self.table.lock().unwrap();
        let file = table.files.get(&ino).ok_or(Errno::ENOENT)?;
        let writable = match &file.attachment {
            Some(attachment) => attachment.check(),
            None => Err(GatewayError::ReadOnly {
                name: file.name.clone(),
            }),
        };
        Ok((file.volume.clone(), file.name.clone(), writable))
    }
}

impl Filesystem for Files {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(0);
        // The loop device submits direct I/O asynchronously: without async DIO the kernel
        // would wait for each request before sending the next (queue depth 1), and without
        // more background requests than the default 16 a deep queue would stall in the kernel.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        let _ = config.set_max_background(MAX_IN_FLIGHT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == ROOT)
            .then(|| {
                let table = self.table.lock().unwrap();
                table.by_name(name.to_str()?).map(|(ino, _)| ino)
            })
            .flatten();
        match found.and_then(|ino| self.file_attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(&TTL, &root_attr());
        }
        match self.file_attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut table = self.table.lock().unwrap();
        let Some(file) = table.files.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let writes = flags.0 & libc_accmode() != 0;
        if writes && file.attachment.is_none() {
            return reply.error(Errno::EROFS);
        }
        file.opened += 1;
        // Direct writes of one file run in parallel (Linux 6.2 and later; older kernels
        // ignore the flag and serialize them), as NBD requests do: the loop device queues
        // many at once, and the gateway orders nothing between them either.
        let flags = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        reply.opened(FileHandle(ino.0), flags);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(file) = self.table.lock().unwrap().files.get_mut(&ino.0) {
            file.opened = file.opened.saturating_sub(1);
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (volume, _, _) = match self.volume(ino.0) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        let end = volume.inode.read().unwrap().size;
        let len = u64::from(size).min(end.saturating_sub(offset));
        if len == 0 {
            return reply.data(&[]);
        }
        let gateway = self.gateway.clone();
        self.runtime.spawn(async move {
            match gateway.read(&volume, offset, len).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(fuse_errno(&e, CMD_READ)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (volume, name, writable) = match self.volume(ino.0) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = writable {
            tracing::warn!(volume.name = %name, error = %e, "refused a write to a volume file");
            return reply.error(fuse_errno(&e, CMD_WRITE));
        }
        let (gateway, data) = (self.gateway.clone(), bytes::Bytes::copy_from_slice(data));
        let len = data.len() as u32;
        self.runtime.spawn(async move {
            match gateway.write(&volume, offset, data, false).await {
                Ok(()) => reply.written(len),
                Err(e) => {
                    tracing::warn!(volume.name = %name, offset, error = %e, "a write to a volume file failed");
                    reply.error(fuse_errno(&e, CMD_WRITE))
                }
            }
        });
    }

    /// A close: not a sync (that is `fsync`).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// A sync of the file (a loop device's FLUSH): every write before it becomes durable.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let gateway = self.gateway.clone();
        self.runtime.spawn(async move {
            match gateway.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "a sync of a volume file failed");
                    reply.error(fuse_errno(&e, CMD_FLUSH))
                }
            }
        });
    }

    /// A discard (a loop device's DISCARD or WRITE ZEROES): the range reads as zeros.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode & PUNCH_HOLE != PUNCH_HOLE {
            // Space is thin-provisioned: there is nothing to allocate ahead.
            return reply.error(Errno::EOPNOTSUPP);
        }
        let (volume, name, writable) = match self.volume(ino.0) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = writable {
            return reply.error(fuse_errno(&e, CMD_TRIM));
        }
        let gateway = self.gateway.clone();
        self.runtime.spawn(async move {
            match gateway.zero(&volume, offset, length, false).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::warn!(volume.name = %name, offset, length, error = %e, "a discard on a volume file failed");
                    reply.error(fuse_errno(&e, CMD_TRIM))
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (ROOT, FileType::Directory, ".".to_owned()),
            (ROOT, FileType::Directory, "..".to_owned()),
        ];
        let table = self.table.lock().unwrap();
        entries.extend(
            table
                .files
                .iter()
                .map(|(&ino, f)| (ino, FileType::RegularFile, f.name.clone())),
        );
        drop(table);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// `O_WRONLY | O_RDWR`: the access mode bits that ask for writes.
const fn libc_accmode() -> i32 {
    0o1 | 0o2
}

/// Where a node's volume files are mounted.
pub fn mountpoint(data_dir: &Path) -> PathBuf {
    data_dir.join("files")
}
