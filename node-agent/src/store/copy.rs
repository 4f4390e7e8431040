//! Whole copies of an object with their block versions, and how recovery merges them.

use super::ObjectSpec;
use super::format::BS;

/// A whole copy of an object: what recovery and repair move between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub spec: ObjectSpec,
    /// Version below which no block can be (the removal that emptied the object).
    pub floor: u64,
    /// The version of each block, as stored (0: never written since the floor).
    pub versions: Vec<u64>,
    /// The object's bytes up to its last non-zero block.
    pub data: Vec<u8>,
}

impl Copy {
    /// The version of block `i`: its own, or the floor when that is newer.
    pub fn version(&self, i: usize) -> u64 {
        self.versions.get(i).copied().unwrap_or(0).max(self.floor)
    }

    /// The bytes of block `i` (zeros past the end of `data`).
    fn block(&self, i: usize) -> [u8; BS as usize] {
        let mut out = [0u8; BS as usize];
        let start = i * BS as usize;
        if start < self.data.len() {
            let end = (start + BS as usize).min(self.data.len());
            out[..end - start].copy_from_slice(&self.data[start..end]);
        }
        out
    }
}

/// The newest state of an object from several copies of it: for every block, the data of the
/// copy whose version of that block is highest. The floor is the highest floor. For the
/// inode of `table_vid`, blocks of its data table are joined entry by entry instead (see
/// `table`), at the highest version. `None` when `copies` is empty.
pub fn merge(copies: &[Copy], table_vid: Option<u32>) -> Option<Copy> {
    let first = copies.first()?;
    if copies.len() == 1 {
        return Some(first.clone());
    }
    let blocks = (first.spec.capacity / BS) as usize;
    let floor = copies.iter().map(|c| c.floor).max().unwrap_or(0);
    let mut versions = vec![0u64; blocks];
    let mut data = vec![0u8; blocks * BS as usize];
    let table_from = (super::table::TABLE_START / BS) as usize;
    for (i, version) in versions.iter_mut().enumerate() {
        let out = &mut data[i * BS as usize..(i + 1) * BS as usize];
        match table_vid {
            Some(vid) if i >= table_from => {
                for copy in copies.iter().filter(|c| c.version(i) > floor) {
                    *version = (*version).max(copy.version(i));
                    super::table::join_into(vid, out, &copy.block(i));
                }
            }
            _ => {
                // Equal versions with different bytes (a copy torn by a crash) resolve the
                // same way on every node: the larger bytes win, so merges converge.
                let newest = copies
                    .iter()
                    .max_by_key(|c| (c.version(i), c.block(i)))
                    .expect("at least one copy");
                let v = newest.version(i);
                if v > floor {
                    *version = v;
                    out.copy_from_slice(&newest.block(i));
                }
            }
        }
    }
    let used = data
        .chunks(BS as usize)
        .rposition(|b| b.iter().any(|&x| x != 0));
    data.truncate(used.map_or(0, |i| (i + 1) * BS as usize));
    Some(Copy {
        spec: first.spec,
        floor,
        versions,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(floor: u64, blocks: &[(u64, u8)]) -> Copy {
        let mut data = Vec::new();
        for &(_, byte) in blocks {
            data.extend(std::iter::repeat_n(byte, BS as usize));
        }
        Copy {
            spec: ObjectSpec {
                capacity: 4 * BS,
                copies: 2,
            },
            floor,
            versions: blocks
                .iter()
                .map(|&(v, _)| v)
                .chain([0; 4])
                .take(4)
                .collect(),
            data,
        }
    }

    #[test]
    fn each_block_comes_from_its_newest_copy() {
        let a = copy(0, &[(5, 1), (2, 2), (0, 0)]);
        let b = copy(0, &[(3, 9), (7, 8), (1, 4)]);
        let merged = merge(&[a, b], None).unwrap();
        assert_eq!(merged.versions, vec![5, 7, 1, 0]);
        assert_eq!(merged.block(0)[0], 1);
        assert_eq!(merged.block(1)[0], 8);
        assert_eq!(merged.block(2)[0], 4);
        assert_eq!(merged.data.len(), 3 * BS as usize);
    }

    #[test]
    fn a_newer_removal_hides_older_blocks() {
        let stale = copy(0, &[(5, 1), (9, 2)]);
        let removed = copy(6, &[]);
        let merged = merge(&[stale, removed], None).unwrap();
        assert_eq!(merged.floor, 6);
        assert_eq!(merged.versions, vec![0, 9, 0, 0]);
        assert_eq!(merged.block(0), [0u8; BS as usize]);
        assert_eq!(merged.block(1)[0], 2);
    }

    #[test]
    fn inode_tables_join_entry_by_entry() {
        let entry = |index: usize, vid: u32| {
            let mut data = vec![0u8; 2 * BS as usize];
            let at = BS as usize + 4 * index;
            data[at..at + 4].copy_from_slice(&vid.to_le_bytes());
            data
        };
        let copy = |versions: Vec<u64>, data: Vec<u8>| Copy {
            spec: ObjectSpec {
                capacity: 2 * BS,
                copies: 2,
            },
            floor: 0,
            versions,
            data,
        };
        // Two gateways set entries 3 and 5 of one block; each replica saw one first.
        let a = copy(vec![1, 9], entry(3, 7));
        let b = copy(vec![2, 8], entry(5, 7));
        let merged = merge(&[a, b], Some(7)).unwrap();
        assert_eq!(
            merged.versions,
            vec![2, 9],
            "the header is the newest copy's"
        );
        let table = &merged.data[BS as usize..];
        assert_eq!(table[12..16], 7u32.to_le_bytes());
        assert_eq!(table[20..24], 7u32.to_le_bytes());
    }
}
