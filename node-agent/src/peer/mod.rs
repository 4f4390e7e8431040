//! The peer service between sheep nodes: replica I/O, object listing and fetching for
//! recovery, and map exchange. Every replica request carries the sender's epoch. Object
//! reads and writes use the replica data channel (`frames`); the rest is gRPC.

mod client;
mod frame_client;
mod frame_server;
pub mod frames;
pub mod listener;
mod server;

pub use client::Peers;
pub use server::{PeerApi, encode_versions};

use crate::store::StoreError;

/// gRPC metadata key holding the epoch of a node that refused a request for its epoch.
pub const EPOCH_METADATA: &str = "sheepdog-epoch";
/// Largest peer message: a whole 64 MiB object plus its envelope.
pub const MAX_MESSAGE: usize = 80 << 20;
/// HTTP/2 flow-control window of one peer stream: a whole object and more, so that replica
/// traffic does not wait for window updates.
pub const WINDOW: u32 = 8 << 20;

/// How often a long-lived channel pings its peer, and how long it waits for the answer before
/// it drops the connection; the next request then opens a new one. Without the pings, a
/// connection that died during a network partition is reused after the heal until TCP gives
/// up on it, minutes later, and every request on it times out meanwhile.
/// Short, so that even a cut of a few seconds drops the connection: TCP's retransmission
/// backoff would otherwise keep it dead for as long again after the heal (measured in the
/// partition test: with 2 s and 5 s here the cut-off node served again 15 s after the heal,
/// with these in under 1 s). Only a host stalled for seconds drops a healthy connection, and
/// the next request opens a new one.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);
pub const KEEP_ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The endpoint of a long-lived channel to another node or to the coordinator at `addr`.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true),
    )
}

/// How one replica failed an operation, classified for the gateway's retry logic.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    #[error("node {node} is on epoch {theirs}; the request was for another epoch")]
    Epoch { node: String, theirs: u64 },
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("the copy on node {node} is corrupt: {message}")]
    Corrupt { node: String, message: String },
    #[error("node {node} is out of disk space: {message}")]
    DiskFull { node: String, message: String },
    #[error("node {node} refused the request: {message}")]
    Invalid { node: String, message: String },
    #[error("node {node} failed: {message}")]
    Failed { node: String, message: String },
    #[error("node {node} refused the change: {message}")]
    Sealed { node: String, message: String },
    #[error("node {node} refused a metadata commit: {message}")]
    Fenced { node: String, message: String },
}

impl ReplicaError {
    /// The classification of a local store error on `node`.
    pub fn from_store(node: &str, err: &StoreError) -> Self {
        let (node, message) = (node.to_owned(), err.to_string());
        match err {
            StoreError::DiskFull { .. } => Self::DiskFull { node, message },
            StoreError::Corrupt { .. } | StoreError::BadHeader { .. } => {
                Self::Corrupt { node, message }
            }
            StoreError::OutOfRange { .. } => Self::Invalid { node, message },
            // The node stops heartbeating and leaves the map: wait for that, as for a crash.
            StoreError::DiskFailed { .. } => Self::Unreachable {
                node,
                reason: message,
            },
            StoreError::OpenObject { .. }
            | StoreError::ReadObject { .. }
            | StoreError::WriteObject { .. }
            | StoreError::Sync { .. }
            | StoreError::RemoveObject { .. }
            | StoreError::OpenDir { .. } => Self::Failed { node, message },
        }
    }

    /// The gRPC status a peer answers with for this error.
    pub fn to_status(&self, epoch: u64) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::Epoch { .. } => {
                let mut status = tonic::Status::failed_precondition(message);
                if let Ok(value) = epoch.to_string().parse() {
                    status.metadata_mut().insert(EPOCH_METADATA, value);
                }
                status
            }
            Self::Unreachable { .. } => tonic::Status::unavailable(message),
            Self::Corrupt { .. } => tonic::Status::data_loss(message),
            Self::DiskFull { .. } => tonic::Status::resource_exhausted(message),
            Self::Invalid { .. } => tonic::Status::invalid_argument(message),
            Self::Failed { .. } => tonic::Status::internal(message),
            Self::Sealed { .. } => tonic::Status::aborted(message),
            Self::Fenced { .. } => tonic::Status::permission_denied(message),
        }
    }

    /// The classification of a status received from `node`.
    pub fn from_status(node: &str, status: &tonic::Status) -> Self {
        let (node, message) = (node.to_owned(), status.message().to_owned());
        match status.code() {
            tonic::Code::FailedPrecondition => {
                let theirs = status
                    .metadata()
                    .get(EPOCH_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                match theirs {
                    Some(theirs) => Self::Epoch { node, theirs },
                    None => Self::Failed { node, message },
                }
            }
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => Self::Unreachable {
                node,
                reason: message,
            },
            tonic::Code::DataLoss => Self::Corrupt { node, message },
            tonic::Code::ResourceExhausted => Self::DiskFull { node, message },
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                Self::Invalid { node, message }
            }
            tonic::Code::Aborted => Self::Sealed { node, message },
            tonic::Code::PermissionDenied => Self::Fenced { node, message },
            tonic::Code::Ok
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unauthenticated => Self::Failed { node, message },
        }
    }
}
