//! Inode numbers of the mounted file system, and where each one is in the backing directory.
//!
//! Each backing inode gets one number, the root 1. A node remembers its directory and name
//! (the last ones it was looked up or renamed under), so renaming a directory moves its whole
//! subtree at no cost. Nodes are never forgotten: `lazyfs` is a test tool for file systems of
//! thousands of files, not millions.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

pub const ROOT: u64 = 1;

#[derive(Debug)]
struct Node {
    parent: u64,
    name: OsString,
    backing: u64,
}

#[derive(Debug)]
pub struct Nodes {
    root: PathBuf,
    by_ino: HashMap<u64, Node>,
    by_backing: HashMap<u64, u64>,
    next: u64,
}

impl Nodes {
    /// The nodes of backing directory `root`, whose backing inode is `root_backing`.
    pub fn new(root: PathBuf, root_backing: u64) -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                backing: root_backing,
            },
        );
        Self {
            root,
            by_ino,
            by_backing: HashMap::from([(root_backing, ROOT)]),
            next: ROOT + 1,
        }
    }

    /// The node of backing inode `backing`, found as `name` in directory `parent`.
    pub fn entry(&mut self, parent: u64, name: &OsStr, backing: u64) -> u64 {
        if let Some(&ino) = self.by_backing.get(&backing) {
            if ino != ROOT {
                self.moved(ino, parent, name);
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_backing.insert(backing, ino);
        self.by_ino.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
                backing,
            },
        );
        ino
    }

    /// Node `ino` is now `name` in directory `parent`.
    pub fn moved(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.parent = parent;
            name.clone_into(&mut node.name);
        }
    }

    /// The backing inode of node `ino`.
    pub fn backing(&self, ino: u64) -> Option<u64> {
        self.by_ino.get(&ino).map(|n| n.backing)
    }

    /// Where node `ino` is in the backing directory (the last place it was seen).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let node = self.by_ino.get(&at)?;
            names.push(node.name.as_os_str());
            at = node.parent;
            if names.len() > 4096 {
                return None; // a cycle left by renames of stale nodes
            }
        }
        let mut path = self.root.clone();
        path.extend(names.iter().rev());
        Some(path)
    }

    /// Path of `name` in directory `parent`.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.path(parent).map(|p| p.join(name))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_a_directory_moves_its_subtree() {
        let mut nodes = Nodes::new("/b".into(), 100);
        let dir = nodes.entry(ROOT, "d".as_ref(), 101);
        let file = nodes.entry(dir, "f".as_ref(), 102);
        assert_eq!(nodes.path(file).unwrap(), Path::new("/b/d/f"));
        nodes.moved(dir, ROOT, "e".as_ref());
        assert_eq!(nodes.path(file).unwrap(), Path::new("/b/e/f"));
        assert_eq!(
            nodes.entry(dir, "g".as_ref(), 102),
            file,
            "same backing inode"
        );
        assert_eq!(nodes.path(file).unwrap(), Path::new("/b/e/g"));
        assert_eq!(nodes.path(ROOT).unwrap(), Path::new("/b"));
        assert_eq!(nodes.backing(file), Some(102));
    }
}
