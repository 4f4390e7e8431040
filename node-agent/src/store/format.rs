//! On-disk format of one object file, version 1.
//!
//! | offset        | size            | content                                          |
//! |---------------|-----------------|--------------------------------------------------|
//! | 0             | 4096            | header: magic `SHEEPOBJ`, version, copies, block size, oid, capacity, CRC32C |
//! | 4096          | table_len       | one u32 per 4 KiB block: CRC32C(block) XOR CRC32C(zero block) |
//! | 4096+table_len| capacity        | the object's bytes, sparse                        |
//!
//! Storing the checksum XOR the checksum of a zero block makes an all-zero block's entry 0, so
//! a never-written block (a hole in both the table and the data) and a punched block verify
//! without writing anything.

use sheepdog_model::{BLOCK_SIZE, ObjectId};
use std::sync::LazyLock;

const MAGIC: &[u8; 8] = b"SHEEPOBJ";
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_LEN: u64 = 4096;
const CRC_OFFSET: usize = 32;
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
}

impl ObjectHeader {
    pub fn blocks(&self) -> u64 {
        self.capacity.div_ceil(BS)
    }

    /// Bytes reserved for the checksum table, rounded up to whole blocks.
    pub fn table_len(&self) -> u64 {
        (self.blocks() * 4).div_ceil(BS) * BS
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
        let crc = crc32c::crc32c(&buf[..CRC_OFFSET]);
        buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        if buf.len() < CRC_OFFSET + 4 {
            return Err(HeaderError::Truncated);
        }
        if &buf[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let crc = u32::from_le_bytes(buf[CRC_OFFSET..CRC_OFFSET + 4].try_into().unwrap());
        if crc32c::crc32c(&buf[..CRC_OFFSET]) != crc {
            return Err(HeaderError::Checksum);
        }
        let block_size = u32::from_le_bytes(buf[12..16].try_into().unwrap());
        if block_size != BLOCK_SIZE {
            return Err(HeaderError::BlockSize(block_size));
        }
        let oid = ObjectId::from_raw(u64::from_le_bytes(buf[16..24].try_into().unwrap()))?;
        let capacity = u64::from_le_bytes(buf[24..32].try_into().unwrap());
        Ok(Self {
            oid,
            capacity,
            copies: buf[10],
        })
    }
}

/// The table entry for one block of data.
pub fn block_checksum(block: &[u8]) -> u32 {
    crc32c::crc32c(block) ^ *ZERO_BLOCK_CRC
}

/// Table entries for consecutive whole blocks, ready to write.
pub fn table_entries(blocks: &[u8]) -> Vec<u8> {
    blocks
        .chunks(BS as usize)
        .flat_map(|b| block_checksum(b).to_le_bytes())
        .collect()
}

/// Index of the first block in `blocks` whose entry in `table` does not match, if any.
pub fn first_mismatch(blocks: &[u8], table: &[u8]) -> Option<usize> {
    blocks
        .chunks(BS as usize)
        .zip(table.chunks(4))
        .position(|(b, t)| block_checksum(b) != u32::from_le_bytes(t.try_into().unwrap()))
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
        };
        let mut bytes = header.encode();
        assert_eq!(ObjectHeader::decode(&bytes), Ok(header));
        assert_eq!(header.table_len(), 4096);
        assert_eq!(header.data_offset(), 8192);
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
        let mut table = table_entries(&blocks);
        assert_eq!(first_mismatch(&blocks, &table), None);
        table[5] ^= 1;
        assert_eq!(first_mismatch(&blocks, &table), Some(1));
    }
}
