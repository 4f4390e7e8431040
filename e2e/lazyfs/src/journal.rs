//! Which namespace changes (create, mkdir, mknod, symlink, link, rename, unlink, rmdir) are
//! durable, and which a power cut undoes.
//!
//! Every change is applied to the backing directory at once (so reads and listings see it)
//! and recorded here with the directory whose fsync makes it durable. What "durable" means is
//! the [`Model`]. Removed entries are parked in the trash until their removal is durable, so
//! that a power cut can put them back. Changes of attributes (mode, owner, times) are not
//! recorded: they are durable at once.

use std::path::PathBuf;

/// When a namespace change survives a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// At once: a power cut undoes no namespace change (Jepsen's LazyFS does the same).
    Eager,
    /// Once anything is fsynced afterwards, a file or a directory: one journal for the whole
    /// file system, committed by every fsync, as ext4 and XFS behave in practice.
    Journal,
    /// Only once its directory is fsynced (for a rename, the destination directory): what
    /// POSIX promises and no more. An fsync of a new file does not make its name durable.
    Strict,
}

/// A directory, by its inode number in the mounted file system.
pub type DirId = u64;

/// One namespace change, with what undoing it needs. Paths are in the backing directory;
/// `ino` is the backing inode the change is about, so that an undo touches nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new entry (file, directory, node, symlink or hard link): removed by an undo.
    Created { path: PathBuf, ino: u64 },
    /// An entry unlinked, rmdir'ed or replaced by a rename, parked at `trash`: put back by an
    /// undo, deleted for good once durable.
    Removed {
        path: PathBuf,
        trash: PathBuf,
        ino: u64,
    },
    /// An entry renamed: renamed back by an undo.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
}

/// The namespace changes that are not durable yet, oldest first.
#[derive(Debug)]
pub struct Journal {
    model: Model,
    pending: Vec<(DirId, Change)>,
}

impl Journal {
    pub fn new(model: Model) -> Self {
        Self {
            model,
            pending: Vec::new(),
        }
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// Changes not durable yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records `change`, made in directory `dir`; returns the changes this made durable.
    pub fn record(&mut self, dir: DirId, change: Change) -> Vec<Change> {
        if self.model == Model::Eager {
            return vec![change];
        }
        self.pending.push((dir, change));
        Vec::new()
    }

    /// A file was fsynced; returns the changes this made durable.
    pub fn file_synced(&mut self) -> Vec<Change> {
        match self.model {
            Model::Journal => self.commit_all(),
            Model::Eager | Model::Strict => Vec::new(),
        }
    }

    /// Directory `dir` was fsynced; returns the changes this made durable.
    pub fn dir_synced(&mut self, dir: DirId) -> Vec<Change> {
        match self.model {
            Model::Journal => self.commit_all(),
            Model::Eager => Vec::new(),
            Model::Strict => {
                let (done, kept) = std::mem::take(&mut self.pending)
                    .into_iter()
                    .partition(|(d, _)| *d == dir);
                self.pending = kept;
                done.into_iter().map(|(_, c)| c).collect()
            }
        }
    }

    /// Makes every change durable (a clean unmount); returns them.
    pub fn commit_all(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// A power cut: returns the changes to undo, newest first.
    pub fn cut(&mut self) -> Vec<Change> {
        let mut undo: Vec<Change> = self.commit_all();
        undo.reverse();
        undo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(name: &str) -> Change {
        Change::Created {
            path: name.into(),
            ino: 1,
        }
    }

    #[test]
    fn eager_changes_are_durable_at_once() {
        let mut journal = Journal::new(Model::Eager);
        assert_eq!(journal.record(1, created("a")), vec![created("a")]);
        assert!(journal.cut().is_empty());
    }

    #[test]
    fn any_fsync_commits_the_whole_journal() {
        let mut journal = Journal::new(Model::Journal);
        assert!(journal.record(1, created("a")).is_empty());
        assert!(journal.record(2, created("b")).is_empty());
        assert_eq!(journal.file_synced(), vec![created("a"), created("b")]);
        journal.record(1, created("c"));
        assert_eq!(journal.dir_synced(7), vec![created("c")]);
        journal.record(1, created("d"));
        assert_eq!(journal.cut(), vec![created("d")]);
    }

    #[test]
    fn strict_changes_wait_for_their_own_directory() {
        let mut journal = Journal::new(Model::Strict);
        journal.record(1, created("a"));
        journal.record(2, created("b"));
        journal.record(1, created("c"));
        assert!(journal.file_synced().is_empty());
        assert_eq!(journal.dir_synced(1), vec![created("a"), created("c")]);
        journal.record(2, created("d"));
        assert_eq!(journal.pending(), 2);
        assert_eq!(journal.cut(), vec![created("d"), created("b")]);
        assert_eq!(journal.pending(), 0);
    }
}
