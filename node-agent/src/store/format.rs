//! On-disk format of one object file, version 2.
//!
//! | offset        | size            | content                                          |
//! |---------------|-----------------|--------------------------------------------------|
//! | 0             | 4096            | header: magic `SHEEPOBJ`, version, copies, block size, oid, capacity, floor, CRC32C |
//! | 4096          | table_len       | 12 bytes per 4 KiB block: CRC32C(block) XOR CRC32C(zero block), then the block's version (u64) |
//! | 4096+table_len| capacity        | the object's bytes, sparse                        |
//!
//! Storing the checksum XOR the checksum of a zero block makes an all-zero block's entry 0, so
//! a never-written block (a hole in both the table and the data) and a punched block verify
//! without writing anything.
//!
//! **Versions.** Every block carries the version of the write that last changed it, and the
//! header a *floor*: the version of the removal that emptied the object (0 if none). A
//! block's version is the larger of the two. A write applies to a block only if its version
//! is newer, so a late or repeated request never overwrites a newer write, and recovery can
//! tell which copy of each block is current. An object removed at version V stays as a
//! *tombstone*, a header with floor V and nothing else, until no request older than V can
//! still arrive.
//!
//! Version 1 (no versions: 4-byte table entries, no floor) is read and converted to version 2
//! when the store opens, every block at version 0.

use sheepdog_model::{BLOCK_SIZE, ObjectId};
use std::sync::LazyLock;

const MAGIC: &[u8; 8] = b"SHEEPOBJ";
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 2;
/// The version before block versions, converted when the store opens.
pub const FORMAT_V1: u16 = 1;
/// Bytes of the header.
pub const HEADER_LEN: u64 = 4096;
const CRC_OFFSET: usize = 40;
const CRC_OFFSET_V1: usize = 32;
/// Bytes of one checksum-table entry: CRC (4) and version (8).
pub const ENTRY: usize = 12;
/// Bytes of one entry in version 1.
pub const ENTRY_V1: usize = 4;
pub const BS: u64 = BLOCK_SIZE as u64;

static ZERO_BLOCK_CRC: LazyLock<u32> =
    LazyLock::new(|| crc32c::crc32c(&[0u8; BLOCK_SIZE as usize]));

/// What the header of an object file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub oid: ObjectId,
    /// Bytes of object data the file can hold (a multiple of the block size).
    pub capacity: u64,
    /// Copies the cluster keeps of this object (its volume's copies): recovery needs it to
    /// place the object without reading the volume's inode.
    pub copies: u8,
    /// Version below which no block can be: the removal that emptied the object.
    pub floor: u64,
}

/// Why an object file's header cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("too short")]
    Truncated,
    #[error("no object magic")]
    BadMagic,
    #[error(
        "format version {0} is newer than this sheep understands ({FORMAT_VERSION}); upgrade sheep"
    )]
    UnsupportedVersion(u16),
    #[error("header checksum mismatch")]
    Checksum,
    #[error("block size {0} differs from {BLOCK_SIZE}")]
    BlockSize(u32),
    #[error("invalid object id: {0}")]
    Oid(#[from] sheepdog_model::oid::InvalidObjectId),
    #[error("format version {0} was not converted when the store opened")]
    NotConverted(u16),
}

impl ObjectHeader {
    pub fn blocks(&self) -> u64 {
        self.capacity.div_ceil(BS)
    }

    /// Bytes reserved for the checksum table, rounded up to whole blocks.
    pub fn table_len(&self) -> u64 {
        (self.blocks() * ENTRY as u64).div_ceil(BS) * BS
    }

    /// Table length in a version-1 file.
    pub fn table_len_v1(&self) -> u64 {
        (self.blocks() * ENTRY_V1 as u64).div_ceil(BS) * BS
    }

    /// File offset of the object's first data byte.
    pub fn data_offset(&self) -> u64 {
        HEADER_LEN + self.table_len()
    }

    /// Total file length: sparse, so only written blocks take space.
    pub fn file_len(&self) -> u64 {
        self.data_offset() + self.capacity
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN as usize];
        buf[0..8].copy_from_slice(MAGIC);
        buf[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf[10] = self.copies;
        buf[12..16].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        buf[16..24].copy_from_slice(&self.oid.raw().to_le_bytes());
        buf[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        buf[32..40].copy_from_slice(&self.floor.to_le_bytes());
        let crc = crc32c::crc32c(&buf[..CRC_OFFSET]);
        buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a header of this version.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        match Self::decode_any(buf)? {
            (header, FORMAT_VERSION) => Ok(header),
            (_, old) => Err(HeaderError::NotConverted(old)),
        }
    }

    /// Decodes a header of any known version, with that version.
    pub fn decode_any(buf: &[u8]) -> Result<(Self, u16), HeaderError> {
        if buf.len() < CRC_OFFSET + 4 {
            return Err(HeaderError::Truncated);
        }
        if &buf[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        let crc_at = match version {
            FORMAT_VERSION => CRC_OFFSET,
            FORMAT_V1 => CRC_OFFSET_V1,
            _ => return Err(HeaderError::UnsupportedVersion(version)),
        };
        let crc = u32::from_le_bytes(buf[crc_at..crc_at + 4].try_into().unwrap());
        if crc32c::crc32c(&buf[..crc_at]) != crc {
            return Err(HeaderError::Checksum);
        }
        let block_size = u32::from_le_bytes(buf[12..16].try_into().unwrap());
        if block_size != BLOCK_SIZE {
            return Err(HeaderError::BlockSize(block_size));
        }
        let oid = ObjectId::from_raw(u64::from_le_bytes(buf[16..24].try_into().unwrap()))?;
        let capacity = u64::from_le_bytes(buf[24..32].try_into().unwrap());
        let floor = match version {
            FORMAT_VERSION => u64_at(buf, 32),
            _ => 0,
        };
        let header = Self {
            oid,
            capacity,
            copies: buf[10],
            floor,
        };
        Ok((header, version))
    }
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// The table entry for one block of data.
pub fn block_checksum(block: &[u8]) -> u32 {
    crc32c::crc32c(block) ^ *ZERO_BLOCK_CRC
}

/// One table entry: a block's checksum and version.
pub fn entry(block: &[u8], version: u64) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..4].copy_from_slice(&block_checksum(block).to_le_bytes());
    e[4..].copy_from_slice(&version.to_le_bytes());
    e
}

/// The checksum of entry `i` of `table`.
pub fn entry_crc(table: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(table[i * ENTRY..i * ENTRY + 4].try_into().unwrap())
}

/// The version of entry `i` of `table`.
pub fn entry_version(table: &[u8], i: usize) -> u64 {
    u64_at(table, i * ENTRY + 4)
}

/// Table entries for consecutive whole blocks, all at `version`.
pub fn table_entries(blocks: &[u8], version: u64) -> Vec<u8> {
    blocks
        .chunks(BS as usize)
        .flat_map(|b| entry(b, version))
        .collect()
}

/// Index of the first block in `blocks` whose checksum in `table` does not match, if any.
pub fn first_mismatch(blocks: &[u8], table: &[u8]) -> Option<usize> {
    blocks
        .chunks(BS as usize)
        .enumerate()
        .position(|(i, b)| block_checksum(b) != entry_crc(table, i))
}

/// What block `block` with table entry `entry` (checksum and version) adds to an object's
/// summary: 0 for a never-written block. The checksum is in it, so two copies holding
/// different bytes at one version have different summaries and recovery merges them.
pub fn block_hash(block: u64, entry: &[u8]) -> u64 {
    if entry.iter().all(|&b| b == 0) {
        return 0;
    }
    let mut key = [0u8; 8 + ENTRY];
    key[..8].copy_from_slice(&block.to_le_bytes());
    key[8..].copy_from_slice(&entry[..ENTRY]);
    xxhash_rust::xxh3::xxh3_64(&key)
}

/// What block `i` of `table` adds to its object's summary.
pub fn table_hash(table: &[u8], first: u64, i: usize) -> u64 {
    block_hash(first + i as u64, &table[i * ENTRY..(i + 1) * ENTRY])
}

/// What an object's floor adds to its version summary.
pub fn floor_hash(floor: u64) -> u64 {
    let mut entry = [0u8; ENTRY];
    entry[4..].copy_from_slice(&floor.to_le_bytes());
    block_hash(u64::MAX, &entry)
}

/// Whether entry `i` of an object's table spans two pages of the file, so that a power cut
/// can keep its checksum from one write and its version from another.
pub fn entry_spans_pages(i: usize) -> bool {
    let start = HEADER_LEN as usize + i * ENTRY;
    start / 4096 != (start + ENTRY - 1) / 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = ObjectHeader {
            oid: ObjectId::data(5, 9),
            capacity: 4 << 20,
            copies: 3,
            floor: 77,
        };
        let mut bytes = header.encode();
        assert_eq!(ObjectHeader::decode(&bytes), Ok(header));
        assert_eq!(header.table_len(), 12288);
        assert_eq!(header.data_offset(), 16384);
        bytes[25] ^= 1;
        assert_eq!(ObjectHeader::decode(&bytes), Err(HeaderError::Checksum));
        bytes[8] = 7;
        assert_eq!(
            ObjectHeader::decode(&bytes),
            Err(HeaderError::UnsupportedVersion(7))
        );
    }

    #[test]
    fn zero_blocks_have_zero_entries() {
        assert_eq!(block_checksum(&[0u8; 4096]), 0);
        assert_ne!(block_checksum(&[1u8; 4096]), 0);
        let blocks = [[0u8; 4096], [7u8; 4096]].concat();
        let mut table = table_entries(&blocks, 9);
        assert_eq!(first_mismatch(&blocks, &table), None);
        assert_eq!(entry_version(&table, 1), 9);
        table[ENTRY + 1] ^= 1;
        assert_eq!(first_mismatch(&blocks, &table), Some(1));
    }

    #[test]
    fn version_1_headers_decode_with_a_zero_floor() {
        let header = ObjectHeader {
            oid: ObjectId::data(5, 9),
            capacity: 4 << 20,
            copies: 3,
            floor: 0,
        };
        let mut v1 = header.encode();
        v1[8..10].copy_from_slice(&FORMAT_V1.to_le_bytes());
        v1[32..44].fill(0);
        let crc = crc32c::crc32c(&v1[..CRC_OFFSET_V1]);
        v1[CRC_OFFSET_V1..CRC_OFFSET_V1 + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(ObjectHeader::decode_any(&v1), Ok((header, FORMAT_V1)));
        assert_eq!(ObjectHeader::decode(&v1), Err(HeaderError::NotConverted(1)));
    }
}
