//! The backing directory's side of namespace changes: where removed entries wait until their
//! removal is durable, and how a power cut undoes a [`Change`].
//!
//! The trash is `BACKING/.lazyfs-trash`, hidden from the mounted file system. Whatever is in it
//! at start-up is deleted: removals that a previous `lazyfs` did not see become final.

use crate::journal::Change;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Name of the trash directory, at the root of the backing directory.
pub const NAME: &str = ".lazyfs-trash";

#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    next: u64,
}

impl Trash {
    /// Opens the (emptied) trash of the backing directory `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let dir = root.join(NAME);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self { dir, next: 0 })
    }

    /// Removes the (empty) trash directory: `lazyfs` stops.
    pub fn close(&self) {
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove the trash");
        }
    }

    /// Moves `path` (a file, or an empty directory) into the trash; returns where it went.
    pub fn put(&mut self, path: &Path) -> io::Result<PathBuf> {
        self.next += 1;
        let parked = self.dir.join(self.next.to_string());
        fs::rename(path, &parked)?;
        Ok(parked)
    }

    /// Moves `parked` back to `path` (a rename that failed after its target was parked).
    pub fn restore(&self, parked: &Path, path: &Path) -> io::Result<()> {
        fs::rename(parked, path)
    }

    /// `change` is durable: deletes what it left in the trash.
    pub fn commit(&self, change: &Change) {
        if let Change::Removed { trash, .. } = change
            && let Err(e) = remove(trash)
        {
            tracing::warn!(path = %trash.display(), error = %e, "cannot empty the trash");
        }
    }

    /// Undoes `change` on the backing directory (a power cut); returns whether it could.
    /// An entry that later durable changes replaced or moved is left alone.
    pub fn undo(&self, change: &Change) -> bool {
        let undone = match change {
            Change::Created { path, ino } => is(path, *ino) && remove(path).is_ok(),
            Change::Removed { path, trash, .. } => {
                let back = is_free(path) && fs::rename(trash, path).is_ok();
                if !back {
                    let _ = remove(trash);
                }
                back
            }
            Change::Renamed { from, to, ino } => {
                is(to, *ino) && is_free(from) && fs::rename(to, from).is_ok()
            }
        };
        if !undone {
            tracing::warn!(
                ?change,
                "a power cut cannot undo this change: later durable changes moved its entries"
            );
        }
        undone
    }
}

/// Whether `path` names backing inode `ino`.
fn is(path: &Path, ino: u64) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino)
}

/// Whether nothing is at `path` while its directory exists.
fn is_free(path: &Path) -> bool {
    let parent_exists = path.parent().is_none_or(|p| p.is_dir());
    parent_exists && fs::symlink_metadata(path).is_err()
}

/// Removes a file, a symlink or a whole directory tree.
fn remove(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().ino()
    }

    #[test]
    fn undoes_creations_removals_and_renames() {
        let root = tempfile::tempdir().unwrap();
        let mut trash = Trash::open(root.path()).unwrap();
        let (a, b, d) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("d"),
        );
        fs::write(&a, "old a").unwrap();
        fs::write(&b, "old b").unwrap();
        // rename a over b: b is parked first.
        let (a_ino, b_ino) = (ino(&a), ino(&b));
        let parked = trash.put(&b).unwrap();
        fs::rename(&a, &b).unwrap();
        let removed = Change::Removed {
            path: b.clone(),
            trash: parked,
            ino: b_ino,
        };
        let renamed = Change::Renamed {
            from: a.clone(),
            to: b.clone(),
            ino: a_ino,
        };
        fs::create_dir(&d).unwrap();
        fs::write(d.join("inside"), "x").unwrap();
        let created = Change::Created {
            path: d.clone(),
            ino: ino(&d),
        };
        for change in [created, renamed, removed] {
            assert!(trash.undo(&change), "{change:?}");
        }
        assert_eq!(fs::read_to_string(&a).unwrap(), "old a");
        assert_eq!(fs::read_to_string(&b).unwrap(), "old b");
        assert!(!d.exists());
    }

    #[test]
    fn leaves_alone_what_was_replaced_since() {
        let root = tempfile::tempdir().unwrap();
        let trash = Trash::open(root.path()).unwrap();
        let a = root.path().join("a");
        fs::write(&a, "first").unwrap();
        let first = ino(&a);
        let keep = root.path().join("keep");
        fs::write(&keep, "").unwrap();
        fs::remove_file(&a).unwrap();
        fs::rename(&keep, &a).unwrap();
        let change = Change::Created {
            path: a.clone(),
            ino: first,
        };
        assert!(!trash.undo(&change));
        assert!(a.exists());
    }

    #[test]
    fn commit_empties_the_trash_and_open_empties_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let mut trash = Trash::open(root.path()).unwrap();
        let a = root.path().join("a");
        fs::write(&a, "x").unwrap();
        let parked = trash.put(&a).unwrap();
        let change = Change::Removed {
            path: a.clone(),
            trash: parked.clone(),
            ino: 0,
        };
        trash.commit(&change);
        assert!(!parked.exists());
        fs::write(&a, "y").unwrap();
        trash.put(&a).unwrap();
        Trash::open(root.path()).unwrap();
        assert_eq!(fs::read_dir(root.path().join(NAME)).unwrap().count(), 0);
    }
}
