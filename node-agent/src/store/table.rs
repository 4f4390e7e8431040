//! The data tables of inode objects merge entry by entry instead of block by block.
//!
//! A table entry only ever moves toward its volume's own vid (0 or an ancestor's vid, then the
//! volume's vid), so two states of a table have a join: an entry is the vid if either says so,
//! else whichever is not 0. Every gateway sets entries of the same 4 KiB blocks as it writes
//! new objects; a write to the table is applied as this join, whatever the order requests
//! arrive in and whatever their versions, so concurrent gateways never undo each other's
//! entries and a late request changes nothing. The block keeps the newest version it has
//! seen. Block 0 of an inode object (its header) is ordered by versions like any data.

use sheepdog_model::ObjectId;

/// Offset of the first table entry in an inode object.
pub const TABLE_START: u64 = sheepdog_model::inode::HEADER_LEN as u64;

/// The volume whose table `oid` holds, when it is an inode object.
pub fn table_vid(oid: ObjectId) -> Option<u32> {
    oid.is_inode().then(|| oid.vid())
}

/// The join of two entries of the table of `vid`.
pub fn join_entry(vid: u32, a: u32, b: u32) -> u32 {
    if a == vid || b == vid {
        vid
    } else if a != 0 {
        a
    } else {
        b
    }
}

/// Joins the entries of `src` into `dst` (both whole entries, aligned alike).
pub fn join_into(vid: u32, dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
        let a = u32::from_le_bytes(d.try_into().unwrap());
        let b = u32::from_le_bytes(s.try_into().unwrap());
        d.copy_from_slice(&join_entry(vid, a, b).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_only_move_toward_the_volume() {
        let vid = 7;
        assert_eq!(join_entry(vid, 0, 7), 7);
        assert_eq!(
            join_entry(vid, 7, 0),
            7,
            "a late request for 0 changes nothing"
        );
        assert_eq!(join_entry(vid, 3, 7), 7);
        assert_eq!(join_entry(vid, 7, 3), 7);
        assert_eq!(join_entry(vid, 0, 3), 3);
        assert_eq!(join_entry(vid, 3, 0), 3);
        let mut a = [0u8; 12];
        a[4..8].copy_from_slice(&7u32.to_le_bytes());
        let mut b = [0u8; 12];
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        join_into(vid, &mut a, &b);
        assert_eq!(a[4..8], 7u32.to_le_bytes());
        assert_eq!(a[8..12], 7u32.to_le_bytes());
    }
}
