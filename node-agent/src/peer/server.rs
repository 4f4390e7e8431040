//! The peer service: replica requests from other nodes' gateways and recovery.

use super::ReplicaError;
use super::frames::Request as FrameRequest;
use crate::cluster::{ClusterView, Epoch};
use crate::freeze::{Change, Freezer};

/// How long a freeze waits for the writes in flight on this node before it is refused.
const FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
use crate::local::{Local, Mutation};
use crate::store::{Copy, ObjectSpec};
use bytes::Bytes;
use sheepdog_api::v1;
use sheepdog_api::v1::peer_service_server::PeerService;
use sheepdog_model::{ClusterMap, ObjectId};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PeerApi {
    pub view: Arc<ClusterView>,
    pub local: Arc<Local>,
    pub freezer: Arc<Freezer>,
    /// Injected for tests (`--inject-thaw-delay`): how long a thaw waits before it applies.
    pub thaw_delay: std::time::Duration,
}

impl PeerApi {
    /// The current epoch if the request is for it and this node holds a live lease.
    fn admit(&self, epoch: u64) -> Result<Arc<Epoch>, Status> {
        self.admit_replica(epoch)
            .map_err(|e| e.to_status(self.view.epoch()))
    }

    fn admit_replica(&self, epoch: u64) -> Result<Arc<Epoch>, ReplicaError> {
        let current = self.view.current();
        let node = self.view.self_id();
        if epoch != current.epoch() {
            return Err(ReplicaError::Epoch {
                node: node.into(),
                theirs: current.epoch(),
            });
        }
        if !self.view.lease_valid() {
            return Err(ReplicaError::Unreachable {
                node: node.into(),
                reason: "this node's lease has expired: it cannot reach the coordinator".into(),
            });
        }
        Ok(current)
    }

    /// A read from the replica data channel.
    pub async fn read_frame(&self, req: &FrameRequest) -> Result<Vec<u8>, ReplicaError> {
        let epoch = self.admit_replica(req.epoch)?;
        let oid = self.frame_oid(req.oid)?;
        self.local
            .read(&epoch, oid, req.offset, req.length as usize)
            .await
    }

    /// A write from the replica data channel; the newest newer version it met, if any.
    pub async fn write_frame(&self, req: &FrameRequest, data: Bytes) -> Result<u64, ReplicaError> {
        let epoch = self.admit_replica(req.epoch)?;
        let oid = self.frame_oid(req.oid)?;
        let spec = ObjectSpec {
            capacity: req.capacity,
            copies: req.copies,
        };
        let change = Mutation::Write {
            offset: req.offset,
            data,
            fence: req.fence,
        };
        let applied = self
            .local
            .change(&epoch, oid, spec, change, req.version, req.fua)
            .await?;
        Ok(applied.newer.unwrap_or(0))
    }

    /// A flush from the replica data channel.
    pub async fn flush_frame(&self, req: &FrameRequest) -> Result<(), ReplicaError> {
        self.admit_replica(req.epoch)?;
        self.local.flush().await
    }

    fn frame_oid(&self, raw: u64) -> Result<ObjectId, ReplicaError> {
        ObjectId::from_raw(raw).map_err(|e| ReplicaError::Invalid {
            node: self.view.self_id().into(),
            message: e.to_string(),
        })
    }

    fn failed(&self, err: ReplicaError) -> Status {
        tracing::debug!(error = %err, "peer request failed");
        err.to_status(self.view.epoch())
    }
}

fn oid(raw: u64) -> Result<ObjectId, Status> {
    ObjectId::from_raw(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn spec(capacity: u64, copies: u32) -> Result<ObjectSpec, Status> {
    let copies =
        u8::try_from(copies).map_err(|_| Status::invalid_argument("copies is too large"))?;
    Ok(ObjectSpec { capacity, copies })
}

/// Block versions on the wire: 8 bytes little-endian each.
pub fn encode_versions(versions: &[u64]) -> Vec<u8> {
    versions.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn decode_versions(bytes: &[u8]) -> Result<Vec<u64>, Status> {
    if !bytes.len().is_multiple_of(8) {
        return Err(Status::invalid_argument(
            "block versions must be 8 bytes each",
        ));
    }
    Ok(bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn zero_object(
        &self,
        req: Request<v1::ZeroObjectRequest>,
    ) -> Result<Response<v1::ZeroObjectResponse>, Status> {
        let req = req.into_inner();
        let epoch = self.admit(req.epoch)?;
        let change = Mutation::Zero {
            offset: req.offset,
            len: req.length,
        };
        let spec = spec(req.capacity, req.copies)?;
        let applied = self
            .local
            .change(&epoch, oid(req.oid)?, spec, change, req.version, req.fua)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Response::new(v1::ZeroObjectResponse {
            newer: applied.newer.unwrap_or(0),
        }))
    }

    async fn remove_object(
        &self,
        req: Request<v1::RemoveObjectRequest>,
    ) -> Result<Response<v1::RemoveObjectResponse>, Status> {
        let req = req.into_inner();
        let epoch = self.admit(req.epoch)?;
        let spec = spec(req.capacity, req.copies)?;
        let applied = self
            .local
            .change(
                &epoch,
                oid(req.oid)?,
                spec,
                Mutation::Remove {
                    garbage: req.garbage,
                    fence: req.fence,
                },
                req.version,
                req.fua,
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Response::new(v1::RemoveObjectResponse {
            newer: applied.newer.unwrap_or(0),
        }))
    }

    async fn list_objects(
        &self,
        req: Request<v1::ListObjectsRequest>,
    ) -> Result<Response<v1::ListObjectsResponse>, Status> {
        let req = req.into_inner();
        self.admit(req.epoch)?;
        if !req.inodes_only {
            self.local.drain(req.epoch).await;
        }
        let objects = self
            .local
            .store
            .list()
            .into_iter()
            .filter(|(oid, _)| !req.inodes_only || oid.is_inode())
            .filter(|(oid, _)| !self.view.retired.contains(oid.vid()))
            .map(|(oid, meta)| v1::StoredObject {
                oid: oid.raw(),
                copies: u32::from(meta.copies),
                summary: meta.summary,
                tombstone: meta.tombstone,
            })
            .collect();
        Ok(Response::new(v1::ListObjectsResponse { objects }))
    }

    async fn fetch_object(
        &self,
        req: Request<v1::FetchObjectRequest>,
    ) -> Result<Response<v1::FetchObjectResponse>, Status> {
        let req = req.into_inner();
        self.admit(req.epoch)?;
        self.local.drain(req.epoch).await;
        let oid = oid(req.oid)?;
        let store = self.local.store.clone();
        let got = tokio::task::spawn_blocking(move || store.get(oid))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let got =
            got.map_err(|e| self.failed(ReplicaError::from_store(self.view.self_id(), &e)))?;
        Ok(Response::new(match got {
            Some(copy) => v1::FetchObjectResponse {
                found: true,
                capacity: copy.spec.capacity,
                copies: u32::from(copy.spec.copies),
                floor: copy.floor,
                versions: encode_versions(&copy.versions).into(),
                data: copy.data.into(),
            },
            None => v1::FetchObjectResponse::default(),
        }))
    }

    async fn object_digest(
        &self,
        req: Request<v1::ObjectDigestRequest>,
    ) -> Result<Response<v1::ObjectDigestResponse>, Status> {
        let req = req.into_inner();
        let epoch = self.admit(req.epoch)?;
        let oid = oid(req.oid)?;
        self.local
            .recovery
            .before_io(&epoch, oid)
            .await
            .map_err(|e| self.failed(e))?;
        let store = self.local.store.clone();
        let got = tokio::task::spawn_blocking(move || store.get(oid))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match got {
            Ok(Some(copy)) => v1::ObjectDigestResponse {
                found: true,
                digest: xxhash_rust::xxh3::xxh3_64(&copy.data),
                corrupt: String::new(),
            },
            Ok(None) => v1::ObjectDigestResponse::default(),
            Err(
                e @ (crate::store::StoreError::Corrupt { .. }
                | crate::store::StoreError::BadHeader { .. }),
            ) => v1::ObjectDigestResponse {
                found: true,
                digest: 0,
                corrupt: e.to_string(),
            },
            Err(e) => return Err(self.failed(ReplicaError::from_store(self.view.self_id(), &e))),
        }))
    }

    async fn put_object(
        &self,
        req: Request<v1::PutObjectRequest>,
    ) -> Result<Response<v1::PutObjectResponse>, Status> {
        let req = req.into_inner();
        let epoch = self.admit(req.epoch)?;
        let oid = oid(req.oid)?;
        let spec = spec(req.capacity, req.copies)?;
        if req.if_absent {
            let data = req.data;
            let stored = self
                .local
                .put_if_absent(&epoch, oid, spec, data)
                .await
                .map_err(|e| self.failed(e))?;
            return Ok(Response::new(v1::PutObjectResponse { stored }));
        }
        let copy = Copy {
            spec,
            floor: req.floor,
            versions: decode_versions(&req.versions)?,
            data: req.data.into(),
        };
        let store = self.local.store.clone();
        let put = tokio::task::spawn_blocking(move || store.merge_in(oid, &[copy]))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        put.map_err(|e| self.failed(ReplicaError::from_store(self.view.self_id(), &e)))?;
        tracing::info!(object = %oid, "copy merged in by a repair");
        Ok(Response::new(v1::PutObjectResponse { stored: true }))
    }

    async fn get_map(
        &self,
        _: Request<v1::GetMapRequest>,
    ) -> Result<Response<v1::ClusterMapMessage>, Status> {
        Ok(Response::new(v1::ClusterMapMessage::from(
            &self.view.current().map,
        )))
    }

    async fn push_map(
        &self,
        req: Request<v1::ClusterMapMessage>,
    ) -> Result<Response<v1::PushMapResponse>, Status> {
        self.view.adopt(ClusterMap::from(req.into_inner()));
        Ok(Response::new(v1::PushMapResponse {}))
    }

    async fn freeze_volume(
        &self,
        req: Request<v1::FreezeVolumeRequest>,
    ) -> Result<Response<v1::FreezeVolumeResponse>, Status> {
        let req = req.into_inner();
        let ttl = std::time::Duration::from_millis(req.ttl_ms.clamp(1, 300_000));
        let held = if req.renewal {
            self.freezer.renew(req.vid, req.fence, ttl)
        } else {
            // Queued behind writes in flight, a freeze holds new writes back: give up (the
            // caller retries or fails) rather than wait past the caller's own time limit.
            tokio::time::timeout(FREEZE_WAIT, self.freezer.freeze(req.vid, req.fence, ttl))
                .await
                .unwrap_or(false)
        };
        Ok(Response::new(v1::FreezeVolumeResponse { held }))
    }

    async fn thaw_volume(
        &self,
        req: Request<v1::ThawVolumeRequest>,
    ) -> Result<Response<v1::ThawVolumeResponse>, Status> {
        use v1::thaw_volume_request::Outcome;
        let req = req.into_inner();
        if !self.thaw_delay.is_zero() {
            tokio::time::sleep(self.thaw_delay).await;
        }
        let change = match req.outcome() {
            Outcome::Unchanged => None,
            Outcome::Replaced => Some(Change::Replaced(req.successor_vid)),
            Outcome::Deleted => Some(Change::Deleted),
        };
        if matches!(change, Some(Change::Replaced(next)) if next != req.vid)
            || change == Some(Change::Deleted)
        {
            self.view.sealed.add(&[req.vid]);
        }
        self.freezer.thaw(req.vid, req.fence, change);
        Ok(Response::new(v1::ThawVolumeResponse {}))
    }
}
