//! `lazyfs`: a FUSE file system for power-loss tests, in the spirit of Jepsen's LazyFS.
//!
//! `lazyfs --backing DIR --mount MOUNTPOINT [--control FIFO] [--metadata strict|journal|eager]`
//! mounts a pass-through view of `DIR` in which every data write that has not been fsynced
//! exists only in `lazyfs`'s memory. Cutting the power (SIGUSR1, or a `cut` line written to the
//! control FIFO) drops all of it, exactly as a machine losing power drops its page cache.
//! `lazyfs` prints `ready pid=N` on standard output once mounted, and one `cut N ...` line per
//! completed cut (see [`control`]). It runs as root and mounts with mount(2) directly (no
//! `fusermount3` needed); SIGTERM or SIGINT unmount it.
//!
//! # Data
//!
//! - Reads always see the latest content, synced or not.
//! - Writes, `fallocate` (punch hole, zero range, size-changing preallocation) and truncation
//!   or extension (`truncate`, `ftruncate`, `O_TRUNC`) go to an in-memory [`Overlay`] of the
//!   file. Only `fsync` or `fdatasync` of that file applies its overlay to the backing file,
//!   which is then fsynced. A close (`flush`) makes nothing durable; a closed file keeps its
//!   unsynced changes (still readable) until a sync or a cut.
//! - A plain cut is all or nothing per file: the backing file holds exactly the content of
//!   the file's last fsync. A torn cut (`cut torn SEED`) first writes back a seeded half of
//!   the unsynced 4 KiB pages, as the kernel's write-back could have done.
//! - Attribute changes (mode, owner, times) are applied to the backing file at once and
//!   survive a cut.
//!
//! # Namespace changes
//!
//! create, mkdir, mknod (FIFOs, sockets), symlink, link, rename, unlink and rmdir are applied
//! to the backing directory at once (a listing of `DIR` shows them) and recorded in a
//! [`Journal`]. Removed and replaced entries are moved to `DIR/.lazyfs-trash` (hidden from the
//! mount) until their removal is durable. When a change is durable is the [`Model`]:
//!
//! - `strict` (the default): only once its directory is fsynced (for a rename, the
//!   destination directory). This is what POSIX promises: a file created, written and
//!   fsynced but whose directory was never fsynced disappears at a cut.
//! - `journal`: once anything (a file or a directory) is fsynced afterwards, as ext4 and XFS
//!   behave in practice with their single journal.
//! - `eager`: at once (what Jepsen's LazyFS does).
//!
//! A cut undoes the changes that are not durable, newest first: new entries are removed
//! (directories with their content), removed ones put back from the trash, renames renamed
//! back. An undo that later durable changes made impossible (its entry was moved or replaced
//! since) is skipped with a warning.
//!
//! # After a cut
//!
//! What survives is: the content of every file as of its last fsync, the namespace as of the
//! durable changes, and attributes. The mount stays and behaves as freshly mounted: nothing is
//! cached in the kernel (zero time-to-live, direct I/O), and file handles opened before the
//! cut fail with EIO (the processes that held them are expected to be dead, as after a real
//! power loss).
//!
//! # Stopping
//!
//! SIGTERM or SIGINT unmount cleanly, and a clean unmount makes everything durable: every
//! overlay is written back and synced, and every namespace change kept, as an unmount of a
//! real file system does. If the mount is busy it is detached instead. If `lazyfs` itself is
//! killed, unsynced data is lost and namespace changes are kept (the trash is emptied at the
//! next start).
//!
//! Limits: the whole content written between two fsyncs is held in memory; there is no
//! extended attribute or lock support (the kernel keeps POSIX locks local); hard links work,
//! but a node is known by the last name it was seen under.

pub mod control;
pub mod fs;
pub mod journal;
pub mod nodes;
pub mod overlay;
pub mod state;
pub mod trash;

pub use fs::LazyFs;
pub use journal::{Journal, Model};
pub use overlay::Overlay;
pub use state::State;
