//! The replica data channel: object reads, writes and flushes between nodes as fixed binary
//! frames on a plain TCP connection, beside gRPC on the same port. They are the hot path of
//! every replicated write. Over gRPC each one crossed four tasks and an HTTP/2 stream. Here the
//! caller writes its frame straight to the socket, and one reader task per connection hands
//! back the replies by request id. Everything else between peers stays on gRPC.
//!
//! Request, 64 bytes, little-endian, then `length` bytes of data for a write:
//!
//! | offset | size | field                                      |
//! |--------|------|--------------------------------------------|
//! | 0      | 4    | magic `SHDP`                               |
//! | 4      | 1    | op: 1 read, 2 write, 3 flush               |
//! | 5      | 1    | flags: bit 0 FUA                           |
//! | 6      | 1    | copies (writes that create the object)     |
//! | 8      | 8    | request id, echoed in the reply            |
//! | 16     | 8    | the sender's epoch                         |
//! | 24     | 8    | object id                                  |
//! | 32     | 8    | offset in the object                       |
//! | 40     | 8    | capacity (writes that create the object)   |
//! | 48     | 4    | length: bytes to read, or of data that follows |
//! | 52     | 4    | fencing token of a metadata commit write (0: none) |
//! | 56     | 8    | version of a write (the gateway's version clock) |
//!
//! Reply, 40 bytes, then `length` bytes: the data of a read, or an error message.
//!
//! | offset | size | field                                      |
//! |--------|------|--------------------------------------------|
//! | 0      | 4    | magic `SHDR`                               |
//! | 4      | 1    | status (see [`Status`])                    |
//! | 8      | 8    | request id                                 |
//! | 16     | 8    | the replier's epoch                        |
//! | 24     | 4    | length                                     |
//! | 32     | 8    | newer: the newest block version a write found newer than its own (0: none) |

use super::{MAX_MESSAGE, ReplicaError};

pub const REQUEST_MAGIC: [u8; 4] = *b"SHDP";
pub const REPLY_MAGIC: [u8; 4] = *b"SHDR";
pub const REQUEST_LEN: usize = 64;
pub const REPLY_LEN: usize = 40;
/// Frames with up to this much data leave in one write (header and data copied together);
/// requests this small without FUA are also answered in the connection's own task.
pub const SMALL: u32 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 1,
    Write = 2,
    /// Make every completed write on the node durable (oid, offset and length unused).
    Flush = 3,
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub fua: bool,
    pub copies: u8,
    pub id: u64,
    pub epoch: u64,
    pub oid: u64,
    pub offset: u64,
    pub capacity: u64,
    pub length: u32,
    /// The metadata lock's fencing token, for a commit write; 0 for any other.
    pub fence: u32,
    pub version: u64,
}

/// How a request ended; the error kinds of [`ReplicaError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    Epoch = 1,
    Unavailable = 2,
    Corrupt = 3,
    DiskFull = 4,
    Invalid = 5,
    Failed = 6,
    /// The object belongs to a vid that is no longer a working volume.
    Sealed = 7,
    /// A commit write with a fencing token older than one the node has seen.
    Fenced = 8,
}

/// A reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub id: u64,
    pub epoch: u64,
    pub length: u32,
    pub newer: u64,
}

/// Why a frame was refused: the connection is closed after it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a replica data frame (bad magic)")]
    Magic,
    #[error("unknown op or status {0}")]
    Kind(u8),
    #[error("frame length {0} is over the {MAX_MESSAGE}-byte limit")]
    TooLong(u32),
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC);
        b[4] = self.op as u8;
        b[5] = u8::from(self.fua);
        b[6] = self.copies;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..32].copy_from_slice(&self.oid.to_le_bytes());
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.capacity.to_le_bytes());
        b[48..52].copy_from_slice(&self.length.to_le_bytes());
        b[52..56].copy_from_slice(&self.fence.to_le_bytes());
        b[56..64].copy_from_slice(&self.version.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, FrameError> {
        if b[0..4] != REQUEST_MAGIC {
            return Err(FrameError::Magic);
        }
        let op = match b[4] {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::Flush,
            other => return Err(FrameError::Kind(other)),
        };
        let length = u32_at(b, 48);
        if length as usize > MAX_MESSAGE {
            return Err(FrameError::TooLong(length));
        }
        Ok(Self {
            op,
            fua: b[5] & 1 != 0,
            copies: b[6],
            id: u64_at(b, 8),
            epoch: u64_at(b, 16),
            oid: u64_at(b, 24),
            offset: u64_at(b, 32),
            capacity: u64_at(b, 40),
            length,
            fence: u32_at(b, 52),
            version: u64_at(b, 56),
        })
    }
}

impl Reply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[0..4].copy_from_slice(&REPLY_MAGIC);
        b[4] = self.status as u8;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..28].copy_from_slice(&self.length.to_le_bytes());
        b[32..40].copy_from_slice(&self.newer.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; REPLY_LEN]) -> Result<Self, FrameError> {
        if b[0..4] != REPLY_MAGIC {
            return Err(FrameError::Magic);
        }
        let status = match b[4] {
            0 => Status::Ok,
            1 => Status::Epoch,
            2 => Status::Unavailable,
            3 => Status::Corrupt,
            4 => Status::DiskFull,
            5 => Status::Invalid,
            6 => Status::Failed,
            7 => Status::Sealed,
            8 => Status::Fenced,
            other => return Err(FrameError::Kind(other)),
        };
        let length = u32_at(b, 24);
        if length as usize > MAX_MESSAGE {
            return Err(FrameError::TooLong(length));
        }
        Ok(Self {
            status,
            id: u64_at(b, 8),
            epoch: u64_at(b, 16),
            length,
            newer: u64_at(b, 32),
        })
    }
}

impl Status {
    /// The status that carries `err`.
    pub fn of(err: &ReplicaError) -> Self {
        match err {
            ReplicaError::Epoch { .. } => Self::Epoch,
            ReplicaError::Unreachable { .. } => Self::Unavailable,
            ReplicaError::Corrupt { .. } => Self::Corrupt,
            ReplicaError::DiskFull { .. } => Self::DiskFull,
            ReplicaError::Invalid { .. } => Self::Invalid,
            ReplicaError::Failed { .. } => Self::Failed,
            ReplicaError::Sealed { .. } => Self::Sealed,
            ReplicaError::Fenced { .. } => Self::Fenced,
        }
    }

    /// The error a reply from `node` with this status, epoch and message stands for.
    pub fn error(self, node: &str, epoch: u64, message: String) -> Option<ReplicaError> {
        let node = node.to_owned();
        Some(match self {
            Self::Ok => return None,
            Self::Epoch => ReplicaError::Epoch {
                node,
                theirs: epoch,
            },
            Self::Unavailable => ReplicaError::Unreachable {
                node,
                reason: message,
            },
            Self::Corrupt => ReplicaError::Corrupt { node, message },
            Self::DiskFull => ReplicaError::DiskFull { node, message },
            Self::Invalid => ReplicaError::Invalid { node, message },
            Self::Failed => ReplicaError::Failed { node, message },
            Self::Sealed => ReplicaError::Sealed { node, message },
            Self::Fenced => ReplicaError::Fenced { node, message },
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn requests_round_trip(op in 1u8..=3, fua: bool, copies: u8, id: u64, epoch: u64, oid: u64,
                               offset: u64, capacity: u64, length in 0u32..=(MAX_MESSAGE as u32), fence: u32, version: u64) {
            let req = Request {
                op: match op { 1 => Op::Read, 2 => Op::Write, _ => Op::Flush },
                fua, copies, id, epoch, oid, offset, capacity, length, fence, version,
            };
            prop_assert_eq!(Request::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn replies_round_trip(status in 0u8..=8, id: u64, epoch: u64, length in 0u32..=(MAX_MESSAGE as u32), newer: u64) {
            let mut bytes = Reply { status: Status::Ok, id, epoch, length, newer }.encode();
            bytes[4] = status;
            let reply = Reply::decode(&bytes).unwrap();
            prop_assert_eq!(reply.status as u8, status);
            prop_assert_eq!(reply.encode(), bytes);
        }

        #[test]
        fn garbage_is_refused_or_decoded_never_panics(bytes in proptest::collection::vec(any::<u8>(), REQUEST_LEN)) {
            let _ = Request::decode(bytes.as_slice().try_into().unwrap());
            let _ = Reply::decode(bytes[..REPLY_LEN].try_into().unwrap());
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut b = Request {
            op: Op::Read,
            fua: false,
            copies: 3,
            id: 1,
            epoch: 1,
            oid: 1,
            offset: 0,
            capacity: 0,
            length: 4096,
            fence: 0,
            version: 0,
        }
        .encode();
        b[4] = 9;
        assert_eq!(Request::decode(&b), Err(FrameError::Kind(9)));
        b[4] = 1;
        b[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&b), Err(FrameError::TooLong(u32::MAX)));
        b[0] = b'P';
        assert_eq!(Request::decode(&b), Err(FrameError::Magic));
    }
}
