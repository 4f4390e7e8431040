//! The volume directory: every inode of the cluster, and the rules that give one consistent
//! view of them. Which inode is a name's working volume, which snapshot a tag names, what a
//! volume owns and shares, what an interrupted metadata operation left to finish, and which
//! objects nothing reads any more.
//!
//! Copy-on-write makes every data table entry a reference: entry `i` of volume `x` holding
//! vid `v` means `x` reads object `(v, i)`. A table only gains references to other vids when
//! it is copied (snapshot, clone, rollback), which happens under the cluster-wide metadata
//! lock; writes only replace entries with the writer's own vid or 0. So a directory read
//! under the lock over-counts references, never under-counts them, and garbage found in it
//! is really garbage.

use crate::{Inode, ObjectId};
use std::collections::{BTreeMap, HashSet};

/// Every inode of the cluster, by vid.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    inodes: BTreeMap<u32, Inode>,
}

/// Work that an interrupted snapshot or rollback left behind, found from the generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// A working inode superseded by its own child: a snapshot stopped after its commit
    /// point. Finish it by flagging the inode a snapshot (its tag is already written).
    FinishSnapshot(u32),
    /// A working inode superseded by an inode that is not its child: the old volume of a
    /// rollback stopped after its commit point. Delete it.
    Delete(u32),
}

/// What deleting can free now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Garbage {
    /// Objects owned by deleted inodes that no live volume reads.
    pub objects: Vec<ObjectId>,
    /// Deleted inodes none of whose objects is read any more: remove them after `objects`.
    pub inodes: Vec<u32>,
}

impl Directory {
    pub fn new(inodes: impl IntoIterator<Item = Inode>) -> Self {
        Self {
            inodes: inodes.into_iter().map(|i| (i.vid, i)).collect(),
        }
    }

    pub fn get(&self, vid: u32) -> Option<&Inode> {
        self.inodes.get(&vid)
    }

    /// Every inode, deleted ones included, by vid.
    pub fn all(&self) -> impl Iterator<Item = &Inode> {
        self.inodes.values()
    }

    /// Inodes users see (not deleted), sorted by name, then oldest generation first.
    pub fn visible(&self) -> Vec<&Inode> {
        let mut v: Vec<&Inode> = self.all().filter(|i| !i.deleted).collect();
        v.sort_by(|a, b| {
            (&a.name, a.generation, a.ctime_ns, a.vid).cmp(&(
                &b.name,
                b.generation,
                b.ctime_ns,
                b.vid,
            ))
        });
        v
    }

    /// The working (writable) volume called `name`: of its working inodes, the one with the
    /// highest generation.
    pub fn working(&self, name: &str) -> Option<&Inode> {
        self.all()
            .filter(|i| i.name == name && !i.snapshot && !i.deleted)
            .max_by_key(|i| (i.generation, i.vid))
    }

    /// The live snapshot of `name` tagged `tag`.
    pub fn snapshot(&self, name: &str, tag: &str) -> Option<&Inode> {
        self.all()
            .find(|i| i.name == name && i.tag == tag && i.snapshot && !i.deleted)
    }

    /// A generation higher than that of every inode ever called `name`.
    pub fn next_generation(&self, name: &str) -> u64 {
        self.all()
            .filter(|i| i.name == name)
            .map(|i| i.generation)
            .max()
            .map_or(1, |g| g + 1)
    }

    /// Inodes whose parent is `vid`.
    pub fn children(&self, vid: u32) -> impl Iterator<Item = &Inode> {
        self.all().filter(move |i| i.parent_vid == vid)
    }

    /// Whether `vid` names anything: an inode, a parent link or a data table entry. Such a vid
    /// is never given to a new volume.
    pub fn vid_in_use(&self, vid: u32) -> bool {
        self.inodes.contains_key(&vid)
            || self
                .all()
                .any(|i| i.parent_vid == vid || i.data_vids.contains(&vid))
    }

    /// The working inodes superseded by a newer generation of the same name, and what to do
    /// with each.
    pub fn repairs(&self) -> Vec<Repair> {
        let mut repairs = Vec::new();
        for inode in self.all().filter(|i| !i.snapshot && !i.deleted) {
            let Some(winner) = self.working(&inode.name) else {
                continue;
            };
            if winner.vid == inode.vid {
                continue;
            }
            repairs.push(if winner.parent_vid == inode.vid {
                Repair::FinishSnapshot(inode.vid)
            } else {
                Repair::Delete(inode.vid)
            });
        }
        repairs
    }

    /// Objects of deleted inodes that no live volume reads, and the deleted inodes that can
    /// go once those objects are removed.
    pub fn garbage(&self) -> Garbage {
        let referenced: HashSet<(u32, u32)> = self
            .all()
            .filter(|i| !i.deleted)
            .flat_map(|i| {
                i.data_vids
                    .iter()
                    .enumerate()
                    .filter(|&(_, &v)| v != 0)
                    .map(|(index, &v)| (v, index as u32))
            })
            .collect();
        let mut garbage = Garbage::default();
        for inode in self.all().filter(|i| i.deleted) {
            let mut still_read = false;
            for (index, &owner) in inode.data_vids.iter().enumerate() {
                if owner != inode.vid {
                    continue;
                }
                if referenced.contains(&(owner, index as u32)) {
                    still_read = true;
                } else {
                    garbage.objects.push(ObjectId::data(owner, index as u32));
                }
            }
            if !still_read {
                garbage.inodes.push(inode.vid);
            }
        }
        garbage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inode::Usage;

    fn volume(vid: u32, name: &str, table: &[u32]) -> Inode {
        let mut inode =
            Inode::new(vid, name, table.len() as u64 * 4096 * 16, 1 << 16, 3, 0).unwrap();
        inode.data_vids = table.to_vec();
        inode
    }

    /// `base` snapshotted as `tag` into a new working vid.
    fn snapshot(base: &mut Inode, tag: &str, new_vid: u32) -> Inode {
        let mut next = base.clone();
        next.vid = new_vid;
        next.parent_vid = base.vid;
        next.generation = base.generation + 1;
        base.snapshot = true;
        base.tag = tag.into();
        next
    }

    #[test]
    fn the_newest_working_generation_is_the_volume() {
        let mut a = volume(1, "vm", &[1, 0]);
        let b = snapshot(&mut a, "s1", 2);
        let dir = Directory::new([a.clone(), b.clone()]);
        assert_eq!(dir.working("vm").unwrap().vid, 2);
        assert_eq!(dir.snapshot("vm", "s1").unwrap().vid, 1);
        assert!(dir.snapshot("vm", "nope").is_none());
        assert_eq!(dir.next_generation("vm"), 3);
        assert_eq!(
            dir.get(2).unwrap().usage(),
            Usage {
                owned: 0,
                shared: 1
            }
        );
        assert_eq!(
            dir.get(1).unwrap().usage(),
            Usage {
                owned: 1,
                shared: 0
            }
        );
        assert!(dir.repairs().is_empty());
    }

    #[test]
    fn a_snapshot_stopped_after_its_commit_point_is_finished() {
        let mut a = volume(1, "vm", &[1]);
        a.tag = "s1".into();
        let mut b = a.clone();
        b.vid = 2;
        b.parent_vid = 1;
        b.generation = 2;
        let dir = Directory::new([a, b]);
        assert_eq!(dir.working("vm").unwrap().vid, 2);
        assert_eq!(dir.repairs(), vec![Repair::FinishSnapshot(1)]);
    }

    #[test]
    fn a_rollback_stopped_after_its_commit_point_deletes_the_old_volume() {
        let mut a = volume(1, "vm", &[1, 0]);
        let mut b = snapshot(&mut a, "s1", 2);
        b.data_vids = vec![2, 2];
        let mut c = a.clone();
        c.vid = 3;
        c.snapshot = false;
        c.tag.clear();
        c.parent_vid = 1;
        c.generation = 3;
        let dir = Directory::new([a, b, c]);
        assert_eq!(dir.working("vm").unwrap().vid, 3);
        assert_eq!(dir.repairs(), vec![Repair::Delete(2)]);
    }

    #[test]
    fn deleted_objects_go_only_when_nothing_reads_them() {
        // a (snapshot) owns 0 and 1; b overwrote 1 and owns 2; c is a clone of a.
        let mut a = volume(1, "vm", &[1, 1, 0]);
        let mut b = snapshot(&mut a, "s1", 2);
        b.data_vids = vec![1, 2, 2];
        let mut c = a.clone();
        c.vid = 3;
        c.name = "clone".into();
        c.snapshot = false;
        c.parent_vid = 1;
        c.data_vids = vec![3, 1, 0];
        a.deleted = true;
        let dir = Directory::new([a.clone(), b.clone(), c.clone()]);
        // 0 is read by b, 1 by c: nothing to free and a stays.
        assert_eq!(dir.garbage(), Garbage::default());
        c.deleted = true;
        let dir = Directory::new([a.clone(), b.clone(), c.clone()]);
        // Now only b reads (1, 0); (1, 1) and all of c go, a stays for b.
        assert_eq!(
            dir.garbage(),
            Garbage {
                objects: vec![ObjectId::data(1, 1), ObjectId::data(3, 0)],
                inodes: vec![3],
            }
        );
        b.deleted = true;
        let dir = Directory::new([a, b, c]);
        let garbage = dir.garbage();
        assert_eq!(garbage.inodes, vec![1, 2, 3]);
        assert_eq!(garbage.objects.len(), 5);
        assert!(dir.visible().is_empty());
    }

    #[test]
    fn vids_referenced_anywhere_are_in_use() {
        let mut a = volume(5, "vm", &[5]);
        let mut b = snapshot(&mut a, "s", 6);
        b.parent_vid = 9;
        let dir = Directory::new([b]);
        assert!(dir.vid_in_use(5), "read through the table");
        assert!(dir.vid_in_use(6));
        assert!(dir.vid_in_use(9), "a parent link");
        assert!(!dir.vid_in_use(7));
    }
}
