//! The one mapping from gateway errors to NBD error values.

use super::proto::*;
use crate::gateway::GatewayError;
use crate::peer::ReplicaError;
use crate::store::StoreError;

/// The NBD error for `err` raised by a request of command `kind`.
pub fn errno(err: &GatewayError, kind: u16) -> u32 {
    let writes = kind == CMD_WRITE || kind == CMD_WRITE_ZEROES;
    match err {
        GatewayError::OutOfRange { .. } if writes => ENOSPC,
        GatewayError::OutOfRange { .. } => EINVAL,
        GatewayError::ReadOnly { .. }
        | GatewayError::Attached { .. }
        | GatewayError::Detached { .. } => EPERM,
        GatewayError::InvalidVolume(_)
        | GatewayError::VolumeExists { .. }
        | GatewayError::SnapshotExists { .. } => EINVAL,
        GatewayError::VidsExhausted => ENOSPC,
        GatewayError::NoSuchVolume { .. }
        | GatewayError::NoSuchSnapshot { .. }
        | GatewayError::NoReplicas { .. }
        | GatewayError::NotEnoughReplicas { .. }
        | GatewayError::Fenced
        | GatewayError::TimedOut { .. }
        | GatewayError::MetadataBusy { .. }
        | GatewayError::IncompleteView { .. }
        | GatewayError::Task(_) => EIO,
        GatewayError::Store(e) => store_errno(e),
        GatewayError::Replica(e) => replica_errno(e, writes),
    }
}

fn replica_errno(err: &ReplicaError, writes: bool) -> u32 {
    match err {
        ReplicaError::DiskFull { .. } => ENOSPC,
        ReplicaError::Invalid { .. } if writes => ENOSPC,
        ReplicaError::Invalid { .. } => EINVAL,
        ReplicaError::Epoch { .. }
        | ReplicaError::Unreachable { .. }
        | ReplicaError::Corrupt { .. }
        | ReplicaError::Failed { .. }
        | ReplicaError::Sealed { .. }
        | ReplicaError::Fenced { .. } => EIO,
    }
}

fn store_errno(err: &StoreError) -> u32 {
    match err {
        StoreError::DiskFull { .. } => ENOSPC,
        StoreError::OutOfRange { .. } => EINVAL,
        StoreError::OpenObject { .. }
        | StoreError::ReadObject { .. }
        | StoreError::WriteObject { .. }
        | StoreError::Corrupt { .. }
        | StoreError::BadHeader { .. }
        | StoreError::Sync { .. }
        | StoreError::RemoveObject { .. }
        | StoreError::OpenDir { .. }
        | StoreError::DiskFailed { .. } => EIO,
    }
}
