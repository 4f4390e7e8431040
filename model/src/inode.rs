//! The volume inode: a volume's metadata and its data table, stored as a replicated object.
//!
//! Binary format, version 1 (all integers little-endian):
//!
//! | offset | size | field                                             |
//! |--------|------|---------------------------------------------------|
//! | 0      | 8    | magic `SHEEPINO`                                  |
//! | 8      | 2    | format version                                    |
//! | 10     | 2    | flags (bit 0: snapshot, bit 1: deleted)           |
//! | 12     | 4    | vid                                               |
//! | 16     | 8    | size in bytes                                     |
//! | 24     | 1    | log2 of the object size                           |
//! | 25     | 1    | copies                                            |
//! | 28     | 4    | parent vid (0 = none)                             |
//! | 32     | 8    | creation time, nanoseconds since the Unix epoch   |
//! | 40     | 2+256| name: length, then UTF-8 bytes                    |
//! | 298    | 2+256| snapshot tag: length, then UTF-8 bytes            |
//! | 556    | 8    | generation among inodes of the same name          |
//! | 564    | 4    | CRC32C of bytes 0..564                            |
//! | 4096   | 4*n  | data table: for each object index, the owning vid |
//!
//! The data table sits at a fixed offset so that the gateway updates one entry with a 4-byte
//! write. Entries past the end of what was written read as zero (no owner), which keeps the
//! inode object sparse. A deleted inode is hidden: it stays only while objects it owns are
//! still read by other volumes (see `directory`). The generation orders the working inodes
//! of one name: the highest wins, which makes writing a new working inode the commit point of
//! a snapshot or a rollback. Decoding dispatches on the version: a future version 2 adds a branch
//! that converts version-1 inodes, it never reinterprets old bytes.

use crate::oid::MAX_VID;

const MAGIC: &[u8; 8] = b"SHEEPINO";
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the data table.
pub const HEADER_LEN: usize = 4096;
const GENERATION_OFFSET: usize = 556;
const CRC_OFFSET: usize = 564;
const NAME_OFFSET: usize = 40;
const TAG_OFFSET: usize = 298;
/// Longest volume name or snapshot tag, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Largest number of objects in one volume (16 TiB at 4 MiB objects).
pub const MAX_OBJECTS: u64 = 1 << 22;
/// Bytes reserved for an inode object: header plus the largest data table.
pub const INODE_OBJECT_CAPACITY: u64 = HEADER_LEN as u64 + 4 * MAX_OBJECTS;
/// Smallest and largest object sizes accepted at volume creation.
pub const MIN_OBJECT_SIZE: u32 = 1 << 16;
pub const MAX_OBJECT_SIZE: u32 = 1 << 26;
const SNAPSHOT_FLAG: u16 = 1;
const DELETED_FLAG: u16 = 2;

/// A volume's metadata and data table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub vid: u32,
    pub name: String,
    pub size: u64,
    pub object_size: u32,
    pub copies: u8,
    pub parent_vid: u32,
    pub snapshot: bool,
    /// Deleted but kept while other volumes still read objects it owns.
    pub deleted: bool,
    pub tag: String,
    pub ctime_ns: u64,
    /// Orders the working inodes of one name; the highest is the volume.
    pub generation: u64,
    /// For each object index, the vid that owns that object's data (0 = never written).
    pub data_vids: Vec<u32>,
}

/// Objects of a volume's data table, counted as Sheepdog's `dog vdi list` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Objects the volume owns (written since it was created).
    pub owned: u64,
    /// Objects it reads from an ancestor (shared copy-on-write).
    pub shared: u64,
}

/// Why an inode could not be made or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InodeError {
    #[error("inode object is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("inode object does not start with the inode magic: not an inode, or overwritten")]
    BadMagic,
    #[error(
        "inode format version {found} is newer than this sheep understands ({FORMAT_VERSION}); upgrade sheep"
    )]
    UnsupportedVersion { found: u16 },
    #[error("inode header checksum mismatch: the inode object is corrupt")]
    HeaderChecksum,
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid volume size {size}: {reason}")]
    InvalidSize { size: u64, reason: String },
    #[error("invalid object size {0}: it must be a power of two from 64 KiB to 64 MiB")]
    InvalidObjectSize(u32),
    #[error("invalid copies {0}: it must be from 1 to 31")]
    InvalidCopies(u8),
    #[error("invalid vid {0}: it must be from 1 to {MAX_VID}")]
    InvalidVid(u32),
}

impl Inode {
    /// A new, empty, writable volume.
    pub fn new(
        vid: u32,
        name: &str,
        size: u64,
        object_size: u32,
        copies: u8,
        ctime_ns: u64,
    ) -> Result<Self, InodeError> {
        validate_name(name)?;
        if vid == 0 || vid > MAX_VID {
            return Err(InodeError::InvalidVid(vid));
        }
        if !(MIN_OBJECT_SIZE..=MAX_OBJECT_SIZE).contains(&object_size)
            || !object_size.is_power_of_two()
        {
            return Err(InodeError::InvalidObjectSize(object_size));
        }
        if copies == 0 || copies > 31 {
            return Err(InodeError::InvalidCopies(copies));
        }
        let mut inode = Self {
            vid,
            name: name.to_owned(),
            size: 0,
            object_size,
            copies,
            parent_vid: 0,
            snapshot: false,
            deleted: false,
            tag: String::new(),
            ctime_ns,
            generation: 1,
            data_vids: Vec::new(),
        };
        inode.resize(size)?;
        Ok(inode)
    }

    /// What the volume owns and what it shares with its ancestors.
    pub fn usage(&self) -> Usage {
        let owned = self.data_vids.iter().filter(|&&v| v == self.vid).count() as u64;
        let shared = self
            .data_vids
            .iter()
            .filter(|&&v| v != 0 && v != self.vid)
            .count() as u64;
        Usage { owned, shared }
    }

    /// Number of objects that cover `size` bytes.
    pub fn object_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.object_size))
    }

    /// Largest volume size for this object size.
    pub fn max_size(&self) -> u64 {
        MAX_OBJECTS * u64::from(self.object_size)
    }

    /// Changes the size, growing or shrinking the data table.
    pub fn resize(&mut self, size: u64) -> Result<(), InodeError> {
        if size == 0 {
            return Err(InodeError::InvalidSize {
                size,
                reason: "a volume needs at least one byte".into(),
            });
        }
        if size > self.max_size() {
            let reason = format!(
                "larger than the {} bytes allowed with {}-byte objects",
                self.max_size(),
                self.object_size
            );
            return Err(InodeError::InvalidSize { size, reason });
        }
        self.size = size;
        self.data_vids.resize(self.object_count() as usize, 0);
        Ok(())
    }

    /// Byte offset of the data-table entry for `index` inside the inode object.
    pub fn table_offset(index: u32) -> u64 {
        HEADER_LEN as u64 + 4 * u64::from(index)
    }

    /// Bytes of the encoded inode, header and data table.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + 4 * self.data_vids.len()
    }

    /// Encodes the header and the whole data table.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.encoded_len()];
        self.encode_header(&mut buf[..HEADER_LEN]);
        for (i, vid) in self.data_vids.iter().enumerate() {
            let at = HEADER_LEN + 4 * i;
            buf[at..at + 4].copy_from_slice(&vid.to_le_bytes());
        }
        buf
    }

    /// Encodes just the header block.
    pub fn encode_header(&self, buf: &mut [u8]) {
        buf[..HEADER_LEN].fill(0);
        buf[0..8].copy_from_slice(MAGIC);
        buf[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.snapshot { SNAPSHOT_FLAG } else { 0 }
            | if self.deleted { DELETED_FLAG } else { 0 };
        buf[10..12].copy_from_slice(&flags.to_le_bytes());
        buf[12..16].copy_from_slice(&self.vid.to_le_bytes());
        buf[16..24].copy_from_slice(&self.size.to_le_bytes());
        buf[24] = self.object_size.trailing_zeros() as u8;
        buf[25] = self.copies;
        buf[28..32].copy_from_slice(&self.parent_vid.to_le_bytes());
        buf[32..40].copy_from_slice(&self.ctime_ns.to_le_bytes());
        put_string(&mut buf[NAME_OFFSET..], &self.name);
        put_string(&mut buf[TAG_OFFSET..], &self.tag);
        buf[GENERATION_OFFSET..GENERATION_OFFSET + 8]
            .copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&buf[..CRC_OFFSET]);
        buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes an inode from its header followed by as much of the data table as was read.
    /// Missing table entries are zero (never written).
    pub fn decode(bytes: &[u8]) -> Result<Self, InodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(InodeError::Truncated { len: bytes.len() });
        }
        if &bytes[0..8] != MAGIC {
            return Err(InodeError::BadMagic);
        }
        match u16::from_le_bytes([bytes[8], bytes[9]]) {
            1 => decode_v1(bytes),
            found => Err(InodeError::UnsupportedVersion { found }),
        }
    }
}

fn decode_v1(bytes: &[u8]) -> Result<Inode, InodeError> {
    let stored_crc = le_u32(&bytes[CRC_OFFSET..]);
    if crc32c::crc32c(&bytes[..CRC_OFFSET]) != stored_crc {
        return Err(InodeError::HeaderChecksum);
    }
    let shift = bytes[24];
    if shift >= 32 {
        return Err(InodeError::HeaderChecksum);
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    let mut inode = Inode {
        vid: le_u32(&bytes[12..]),
        name: get_string(&bytes[NAME_OFFSET..])?,
        size: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
        object_size: 1u32 << shift,
        copies: bytes[25],
        parent_vid: le_u32(&bytes[28..]),
        snapshot: flags & SNAPSHOT_FLAG != 0,
        deleted: flags & DELETED_FLAG != 0,
        tag: get_string(&bytes[TAG_OFFSET..])?,
        ctime_ns: u64::from_le_bytes(bytes[32..40].try_into().unwrap()),
        generation: u64::from_le_bytes(
            bytes[GENERATION_OFFSET..GENERATION_OFFSET + 8]
                .try_into()
                .unwrap(),
        ),
        data_vids: Vec::new(),
    };
    let count = inode.object_count().min(MAX_OBJECTS) as usize;
    let table = &bytes[HEADER_LEN..];
    inode.data_vids = (0..count)
        .map(|i| table.get(4 * i..4 * i + 4).map(le_u32).unwrap_or(0))
        .collect();
    Ok(inode)
}

/// Checks a volume name: 1 to 256 bytes, printable, no `@` (it separates snapshot tags) or `/`.
pub fn validate_name(name: &str) -> Result<(), InodeError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 256 bytes")
    } else if name.contains(['@', '/']) {
        Some("it contains '@' or '/'")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InodeError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn put_string(buf: &mut [u8], s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(MAX_NAME_LEN)];
    buf[0..2].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
    buf[2..2 + bytes.len()].copy_from_slice(bytes);
}

fn get_string(buf: &[u8]) -> Result<String, InodeError> {
    let len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
    if len > MAX_NAME_LEN {
        return Err(InodeError::HeaderChecksum);
    }
    String::from_utf8(buf[2..2 + len].to_vec()).map_err(|_| InodeError::HeaderChecksum)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[0..4].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Inode {
        let mut inode = Inode::new(42, "vm-disk", 10 << 20, 4 << 20, 3, 1_700_000_000).unwrap();
        inode.data_vids[1] = 42;
        inode
    }

    #[test]
    fn table_entries_are_at_their_documented_offsets() {
        let bytes = sample().encode();
        assert_eq!(bytes.len(), HEADER_LEN + 3 * 4);
        assert_eq!(
            &bytes[Inode::table_offset(1) as usize..][..4],
            &42u32.to_le_bytes()
        );
        assert_eq!(&bytes[0..8], b"SHEEPINO");
    }

    #[test]
    fn a_short_table_reads_as_unwritten() {
        let inode = sample();
        let bytes = inode.encode();
        let decoded = Inode::decode(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(decoded.data_vids, vec![0, 0, 0]);
    }

    #[test]
    fn corruption_and_future_versions_are_refused() {
        let mut bytes = sample().encode();
        bytes[20] ^= 1;
        assert_eq!(Inode::decode(&bytes), Err(InodeError::HeaderChecksum));
        let mut bytes = sample().encode();
        bytes[8] = 2;
        assert_eq!(
            Inode::decode(&bytes),
            Err(InodeError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(
            Inode::decode(&[0; 10]),
            Err(InodeError::Truncated { len: 10 })
        );
        assert_eq!(Inode::decode(&[0; HEADER_LEN]), Err(InodeError::BadMagic));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Inode::new(1, "a@b", 1, 4 << 20, 3, 0).is_err());
        assert!(Inode::new(1, "", 1, 4 << 20, 3, 0).is_err());
        assert!(Inode::new(1, "a", 0, 4 << 20, 3, 0).is_err());
        assert!(Inode::new(1, "a", 1, 3 << 20, 3, 0).is_err());
        assert!(Inode::new(1, "a", 1, 4 << 20, 0, 0).is_err());
        assert!(Inode::new(1, "a", (16 << 40) + 1, 4 << 20, 3, 0).is_err());
        assert!(Inode::new(0, "a", 1, 4 << 20, 3, 0).is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(
            vid in 1..=MAX_VID,
            name in "[a-zA-Z0-9._-]{1,256}",
            tag in "[a-z0-9]{0,256}",
            objects in 1u64..2000,
            shift in 16u32..=26,
            copies in 1u8..=31,
            parent in 0..=MAX_VID,
            snapshot: bool,
            deleted: bool,
            generation: u64,
            ctime: u64,
            seed: u32,
        ) {
            let object_size = 1u32 << shift;
            let size = objects * u64::from(object_size) - u64::from(seed % object_size);
            let mut inode = Inode::new(vid, &name, size, object_size, copies, ctime).unwrap();
            inode.parent_vid = parent;
            inode.snapshot = snapshot;
            inode.deleted = deleted;
            inode.generation = generation;
            inode.tag = tag;
            for (i, v) in inode.data_vids.iter_mut().enumerate() {
                *v = if (i as u32 ^ seed).is_multiple_of(3) { vid } else { 0 };
            }
            prop_assert_eq!(Inode::decode(&inode.encode()), Ok(inode));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = Inode::decode(&bytes);
        }
    }
}
