//! The peer service: replica requests from other nodes' gateways and recovery.

use super::ReplicaError;
use super::frames::Request as FrameRequest;
use crate::cluster::{ClusterView, Epoch};
use crate::freeze::{Change, Freezer};
use crate::local::Local;
use crate::store::ObjectSpec;
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

    /// A write from the replica data channel.
    pub async fn write_frame(&self, req: &FrameRequest, data: Bytes) -> Result<(), ReplicaError> {
        let epoch = self.admit_replica(req.epoch)?;
        let oid = self.frame_oid(req.oid)?;
        let spec = ObjectSpec {
            capacity: req.capacity,
            copies: req.copies,
        };
        self.local
            .write(&epoch, oid, spec, req.offset, data, req.fua)
            .await
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

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn zero_object(
        &self,
        req: Request<v1::ZeroObjectRequest>,
    ) -> Result<Response<v1::ZeroObjectResponse>, Status> {
        let req = req.into_inner();
        let epoch = self.admit(req.epoch)?;
        let zero = self
            .local
            .zero(&epoch, oid(req.oid)?, req.offset, req.length, req.fua);
        zero.await.map_err(|e| self.failed(e))?;
        Ok(Response::new(v1::ZeroObjectResponse {}))
    }

    async fn remove_object(
        &self,
        req: Request<v1::RemoveObjectRequest>,
    ) -> Result<Response<v1::RemoveObjectResponse>, Status> {
        let req = req.into_inner();
        let epoch = self.admit(req.epoch)?;
        self.local
            .remove(&epoch, oid(req.oid)?)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Response::new(v1::RemoveObjectResponse {}))
    }

    async fn list_objects(
        &self,
        req: Request<v1::ListObjectsRequest>,
    ) -> Result<Response<v1::ListObjectsResponse>, Status> {
        let req = req.into_inner();
        self.admit(req.epoch)?;
        let objects = self
            .local
            .store
            .list()
            .into_iter()
            .filter(|(oid, _)| !req.inodes_only || oid.is_inode())
            .filter(|(oid, _)| !self.view.is_retired(oid.vid()))
            .map(|(oid, copies)| v1::StoredObject {
                oid: oid.raw(),
                copies: u32::from(copies),
            })
            .collect();
        Ok(Response::new(v1::ListObjectsResponse { objects }))
    }

    async fn fetch_object(
        &self,
        req: Request<v1::FetchObjectRequest>,
    ) -> Result<Response<v1::FetchObjectResponse>, Status> {
        let oid = oid(req.into_inner().oid)?;
        let store = self.local.store.clone();
        let got = tokio::task::spawn_blocking(move || store.get(oid))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let got =
            got.map_err(|e| self.failed(ReplicaError::from_store(self.view.self_id(), &e)))?;
        Ok(Response::new(match got {
            Some((spec, data)) => v1::FetchObjectResponse {
                found: true,
                capacity: spec.capacity,
                data: data.into(),
                copies: u32::from(spec.copies),
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
            Ok(Some((_, data))) => v1::ObjectDigestResponse {
                found: true,
                digest: xxhash_rust::xxh3::xxh3_64(&data),
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
        self.admit(req.epoch)?;
        let oid = oid(req.oid)?;
        let copies =
            u8::try_from(req.copies).map_err(|_| Status::invalid_argument("copies too large"))?;
        let spec = ObjectSpec {
            capacity: req.capacity,
            copies,
        };
        let store = self.local.store.clone();
        let put = tokio::task::spawn_blocking(move || store.put(oid, spec, &req.data))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        put.map_err(|e| self.failed(ReplicaError::from_store(self.view.self_id(), &e)))?;
        tracing::info!(object = %oid, "copy replaced by a repair");
        Ok(Response::new(v1::PutObjectResponse {}))
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
        self.freezer.freeze(req.vid, ttl).await;
        Ok(Response::new(v1::FreezeVolumeResponse {}))
    }

    async fn thaw_volume(
        &self,
        req: Request<v1::ThawVolumeRequest>,
    ) -> Result<Response<v1::ThawVolumeResponse>, Status> {
        use v1::thaw_volume_request::Outcome;
        let req = req.into_inner();
        let change = match req.outcome() {
            Outcome::Unchanged => None,
            Outcome::Replaced => Some(Change::Replaced(req.successor_vid)),
            Outcome::Deleted => Some(Change::Deleted),
        };
        self.freezer.thaw(req.vid, change);
        Ok(Response::new(v1::ThawVolumeResponse {}))
    }
}
