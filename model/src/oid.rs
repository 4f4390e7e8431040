//! Object ids.
//!
//! Layout of the 64 bits, after Sheepdog's:
//!
//! | bits  | meaning                                  |
//! |-------|------------------------------------------|
//! | 63    | inode flag: the object holds a volume's metadata |
//! | 56-62 | reserved, zero                           |
//! | 32-55 | vid (24 bits)                            |
//! | 0-31  | object index inside the volume           |

use std::fmt;

/// Set on the object that holds a volume's inode.
pub const INODE_FLAG: u64 = 1 << 63;
const VID_SHIFT: u32 = 32;
const VID_MASK: u64 = 0x00ff_ffff;
const RESERVED_MASK: u64 = 0x7f00_0000_0000_0000;

/// Largest volume id: vids are 24 bits wide inside an object id.
pub const MAX_VID: u32 = (1 << 24) - 1;

/// The name of one stored object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(u64);

/// A raw 64-bit value that is not a valid object id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:#018x} is not a valid object id (reserved bits set or vid 0)")]
pub struct InvalidObjectId(pub u64);

impl ObjectId {
    /// The data object at `index` of volume `vid`.
    pub fn data(vid: u32, index: u32) -> Self {
        debug_assert!(vid != 0 && vid <= MAX_VID);
        Self((u64::from(vid) << VID_SHIFT) | u64::from(index))
    }

    /// The object holding the inode of volume `vid`.
    pub fn inode(vid: u32) -> Self {
        debug_assert!(vid != 0 && vid <= MAX_VID);
        Self(INODE_FLAG | (u64::from(vid) << VID_SHIFT))
    }

    /// Checks a raw value read from disk or the wire.
    pub fn from_raw(raw: u64) -> Result<Self, InvalidObjectId> {
        let vid = (raw >> VID_SHIFT) & VID_MASK;
        if raw & RESERVED_MASK != 0 || vid == 0 {
            return Err(InvalidObjectId(raw));
        }
        if raw & INODE_FLAG != 0 && raw as u32 != 0 {
            return Err(InvalidObjectId(raw));
        }
        Ok(Self(raw))
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    pub fn vid(self) -> u32 {
        ((self.0 >> VID_SHIFT) & VID_MASK) as u32
    }

    /// Index of a data object inside its volume (0 for an inode).
    pub fn index(self) -> u32 {
        self.0 as u32
    }

    pub fn is_inode(self) -> bool {
        self.0 & INODE_FLAG != 0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_are_where_the_layout_says() {
        let oid = ObjectId::data(0x12_3456, 0xdead_beef);
        assert_eq!(oid.raw(), 0x0012_3456_dead_beef);
        assert_eq!(oid.vid(), 0x12_3456);
        assert_eq!(oid.index(), 0xdead_beef);
        assert!(!oid.is_inode());
        let inode = ObjectId::inode(7);
        assert_eq!(inode.raw(), 0x8000_0007_0000_0000);
        assert!(inode.is_inode());
        assert_eq!(inode.to_string(), "8000000700000000");
    }

    #[test]
    fn invalid_raw_values_are_rejected() {
        assert!(ObjectId::from_raw(0).is_err(), "vid 0");
        assert!(
            ObjectId::from_raw(0x0100_0001_0000_0000).is_err(),
            "reserved bit"
        );
        assert!(
            ObjectId::from_raw(0x8000_0001_0000_0001).is_err(),
            "inode with index"
        );
    }

    proptest! {
        #[test]
        fn raw_round_trips(vid in 1..=MAX_VID, index: u32, inode: bool) {
            let oid = if inode { ObjectId::inode(vid) } else { ObjectId::data(vid, index) };
            prop_assert_eq!(ObjectId::from_raw(oid.raw()), Ok(oid));
            prop_assert_eq!(oid.vid(), vid);
        }
    }
}
