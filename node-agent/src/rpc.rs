//! gRPC control API over the gateway: the volume and cluster services.

use crate::files::FilesError;
use crate::gateway::{Gateway, GatewayError};
use crate::peer::ReplicaError;
use crate::store::StoreError;
use sheepdog_api::v1;
use sheepdog_api::v1::cluster_service_server::ClusterService;
use sheepdog_api::v1::volume_service_server::VolumeService;
use sheepdog_model::{Inode, NodeInfo};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Largest ReadVolume/WriteVolume payload.
pub const MAX_IO: u64 = 4 << 20;
/// Message size limit of the gRPC server: an I/O payload plus room for the envelope.
pub const MAX_MESSAGE: usize = 5 << 20;

pub struct VolumeApi {
    pub gateway: Arc<Gateway>,
    pub files: Arc<crate::files::VolumeFiles>,
}

pub struct ClusterApi {
    pub gateway: Arc<Gateway>,
    pub recovery: Arc<crate::recovery::Recovery>,
}

fn volume(inode: &Inode) -> v1::Volume {
    let usage = inode.usage();
    let object_size = u64::from(inode.object_size);
    v1::Volume {
        name: inode.name.clone(),
        vid: inode.vid,
        size: inode.size,
        object_size: inode.object_size,
        copies: u32::from(inode.copies),
        parent_vid: inode.parent_vid,
        snapshot: inode.snapshot,
        tag: inode.tag.clone(),
        ctime_ns: inode.ctime_ns,
        allocated_bytes: usage.owned * object_size,
        shared_bytes: usage.shared * object_size,
        generation: inode.generation,
    }
}

/// The one mapping from gateway errors to gRPC status codes.
fn status(err: GatewayError) -> Status {
    let message = err.to_string();
    let code = match &err {
        GatewayError::NoSuchVolume { .. } | GatewayError::NoSuchSnapshot { .. } => {
            tonic::Code::NotFound
        }
        GatewayError::VolumeExists { .. } | GatewayError::SnapshotExists { .. } => {
            tonic::Code::AlreadyExists
        }
        GatewayError::InvalidVolume(_) => tonic::Code::InvalidArgument,
        GatewayError::OutOfRange { .. } => tonic::Code::OutOfRange,
        GatewayError::ReadOnly { .. }
        | GatewayError::Attached { .. }
        | GatewayError::Detached { .. } => tonic::Code::FailedPrecondition,
        GatewayError::VidsExhausted => tonic::Code::ResourceExhausted,
        GatewayError::NoReplicas { .. }
        | GatewayError::NotEnoughReplicas { .. }
        | GatewayError::Fenced
        | GatewayError::TimedOut { .. }
        | GatewayError::IncompleteView { .. } => tonic::Code::Unavailable,
        GatewayError::MetadataBusy { .. } => tonic::Code::Aborted,
        GatewayError::Replica(e) => match e {
            ReplicaError::Epoch { .. } | ReplicaError::Unreachable { .. } => {
                tonic::Code::Unavailable
            }
            ReplicaError::Corrupt { .. } => tonic::Code::DataLoss,
            ReplicaError::DiskFull { .. } => tonic::Code::ResourceExhausted,
            ReplicaError::Invalid { .. } => tonic::Code::OutOfRange,
            ReplicaError::Failed { .. } => tonic::Code::Internal,
            ReplicaError::Sealed { .. } | ReplicaError::Fenced { .. } => tonic::Code::Aborted,
        },
        GatewayError::Task(_) => tonic::Code::Internal,
        GatewayError::Store(e) => match e {
            StoreError::DiskFull { .. } => tonic::Code::ResourceExhausted,
            StoreError::Corrupt { .. } | StoreError::BadHeader { .. } => tonic::Code::DataLoss,
            StoreError::OutOfRange { .. } => tonic::Code::OutOfRange,
            StoreError::OpenObject { .. }
            | StoreError::ReadObject { .. }
            | StoreError::WriteObject { .. }
            | StoreError::Sync { .. }
            | StoreError::RemoveObject { .. }
            | StoreError::OpenDir { .. } => tonic::Code::Internal,
            StoreError::DiskFailed { .. } => tonic::Code::Unavailable,
        },
    };
    tracing::warn!(code = ?code, error = %message, "gRPC request failed");
    Status::new(code, message)
}

/// The one mapping from volume file errors to gRPC status codes.
fn files_status(err: FilesError) -> Status {
    let code = match &err {
        FilesError::Gateway(_) => {
            let FilesError::Gateway(e) = err else {
                unreachable!()
            };
            return status(e);
        }
        FilesError::Mount { .. } | FilesError::OtherAccess { .. } | FilesError::InUse { .. } => {
            tonic::Code::FailedPrecondition
        }
    };
    let message = err.to_string();
    tracing::warn!(code = ?code, error = %message, "gRPC request failed");
    Status::new(code, message)
}

fn exported(file: crate::files::Exported) -> v1::ExportedFile {
    v1::ExportedFile {
        name: file.name,
        path: file.path.display().to_string(),
        size: file.size,
        shared: file.shared,
        read_only: file.read_only,
        opened: file.opened,
        clients: file.clients,
    }
}

fn invalid(message: String) -> Status {
    tracing::warn!(error = %message, "gRPC request refused");
    Status::invalid_argument(message)
}

#[tonic::async_trait]
impl VolumeService for VolumeApi {
    async fn create_volume(
        &self,
        req: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = req.into_inner();
        let copies = u8::try_from(req.copies)
            .map_err(|_| invalid(format!("copies {} is too large", req.copies)))?;
        let inode = self
            .gateway
            .create_volume(&req.name, req.size, copies, req.object_size)
            .await
            .map_err(status)?;
        Ok(Response::new(volume(&inode)))
    }

    async fn delete_volume(
        &self,
        req: Request<v1::DeleteVolumeRequest>,
    ) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        let tag = (!req.tag.is_empty()).then_some(req.tag.as_str());
        self.gateway
            .delete_volume(&req.name, tag)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::DeleteVolumeResponse {}))
    }

    async fn get_volume(
        &self,
        req: Request<v1::GetVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let vol = self
            .gateway
            .open_volume(&req.into_inner().name)
            .await
            .map_err(status)?;
        let inode = vol.inode.read().unwrap().clone();
        Ok(Response::new(volume(&inode)))
    }

    async fn list_volumes(
        &self,
        _: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        let volumes = self
            .gateway
            .list_volumes()
            .await
            .map_err(status)?
            .visible()
            .into_iter()
            .map(volume)
            .collect();
        Ok(Response::new(v1::ListVolumesResponse { volumes }))
    }

    async fn resize_volume(
        &self,
        req: Request<v1::ResizeVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = req.into_inner();
        let inode = self
            .gateway
            .resize_volume(&req.name, req.size)
            .await
            .map_err(status)?;
        Ok(Response::new(volume(&inode)))
    }

    async fn read_volume(
        &self,
        req: Request<v1::ReadVolumeRequest>,
    ) -> Result<Response<v1::ReadVolumeResponse>, Status> {
        let req = req.into_inner();
        if u64::from(req.length) > MAX_IO {
            return Err(invalid(format!(
                "read of {} bytes is larger than {MAX_IO}; read in pieces",
                req.length
            )));
        }
        let vol = self.gateway.open_volume(&req.name).await.map_err(status)?;
        let data = self
            .gateway
            .read(&vol, req.offset, u64::from(req.length))
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ReadVolumeResponse { data: data.into() }))
    }

    async fn write_volume(
        &self,
        req: Request<v1::WriteVolumeRequest>,
    ) -> Result<Response<v1::WriteVolumeResponse>, Status> {
        // `dog vdi write` is a writer like any other: refused while another client has the
        // volume attached, and attached itself for the time of the write.
        let client = req
            .remote_addr()
            .map_or_else(|| "grpc".to_owned(), |a| format!("grpc-{}", a.ip()));
        let req = req.into_inner();
        if req.data.len() as u64 > MAX_IO {
            return Err(invalid(format!(
                "write of {} bytes is larger than {MAX_IO}; write in pieces",
                req.data.len()
            )));
        }
        let vol = self.gateway.open_volume(&req.name).await.map_err(status)?;
        let attachments = self.gateway.attachments();
        let _attached = attachments
            .attach(&req.name, &client, false)
            .await
            .map_err(status)?;
        self.gateway
            .write(&vol, req.offset, req.data, false)
            .await
            .map_err(status)?;
        if req.fua {
            self.gateway.flush().await.map_err(status)?;
        }
        Ok(Response::new(v1::WriteVolumeResponse {}))
    }

    async fn snapshot_volume(
        &self,
        req: Request<v1::SnapshotVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = req.into_inner();
        let inode = self
            .gateway
            .snapshot_volume(&req.name, &req.tag)
            .await
            .map_err(status)?;
        Ok(Response::new(volume(&inode)))
    }

    async fn clone_volume(
        &self,
        req: Request<v1::CloneVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = req.into_inner();
        let inode = self
            .gateway
            .clone_volume(&req.source, &req.tag, &req.name)
            .await
            .map_err(status)?;
        Ok(Response::new(volume(&inode)))
    }

    async fn rollback_volume(
        &self,
        req: Request<v1::RollbackVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = req.into_inner();
        let inode = self
            .gateway
            .rollback_volume(&req.name, &req.tag)
            .await
            .map_err(status)?;
        Ok(Response::new(volume(&inode)))
    }

    async fn export_file(
        &self,
        req: Request<v1::ExportFileRequest>,
    ) -> Result<Response<v1::ExportFileResponse>, Status> {
        let req = req.into_inner();
        let file = self
            .files
            .export(&req.name, req.shared, req.read_only, &req.client)
            .await
            .map_err(files_status)?;
        Ok(Response::new(v1::ExportFileResponse {
            file: Some(exported(file)),
        }))
    }

    async fn unexport_file(
        &self,
        req: Request<v1::UnexportFileRequest>,
    ) -> Result<Response<v1::UnexportFileResponse>, Status> {
        self.files
            .unexport(&req.into_inner().name)
            .map_err(files_status)?;
        Ok(Response::new(v1::UnexportFileResponse {}))
    }

    async fn list_exported_files(
        &self,
        _: Request<v1::ListExportedFilesRequest>,
    ) -> Result<Response<v1::ListExportedFilesResponse>, Status> {
        let files = self.files.list().into_iter().map(exported).collect();
        Ok(Response::new(v1::ListExportedFilesResponse { files }))
    }
}

fn node(info: &NodeInfo, usage: Option<crate::store::Usage>) -> v1::Node {
    let usage = usage.unwrap_or_default();
    v1::Node {
        id: info.id.clone(),
        peer_addr: info.peer_addr.clone(),
        nbd_addr: info.nbd_addr.clone(),
        zone: info.zone.clone(),
        capacity: info.weight,
        used_bytes: usage.bytes,
        object_count: usage.objects,
    }
}

impl ClusterApi {
    fn nodes(&self) -> Result<Vec<v1::Node>, Status> {
        let replicas = self.gateway.replicas();
        let usage = replicas.store().usage().map_err(|e| status(e.into()))?;
        // Usage of other nodes is not collected yet: only this node's is shown.
        let map = self.gateway.cluster_map();
        let local = |n: &NodeInfo| (n.id == replicas.self_id()).then_some(usage);
        Ok(map.nodes.iter().map(|n| node(n, local(n))).collect())
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn get_cluster_info(
        &self,
        _: Request<v1::GetClusterInfoRequest>,
    ) -> Result<Response<v1::ClusterInfo>, Status> {
        Ok(Response::new(v1::ClusterInfo {
            epoch: self.gateway.cluster_map().epoch,
            status: "running".into(),
            default_copies: u32::from(self.gateway.default_copies()),
            nodes: self.nodes()?,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        Ok(Response::new(v1::ListNodesResponse {
            nodes: self.nodes()?,
        }))
    }

    async fn get_recovery(
        &self,
        _: Request<v1::GetRecoveryRequest>,
    ) -> Result<Response<v1::RecoveryStatus>, Status> {
        let p = self.recovery.progress();
        Ok(Response::new(v1::RecoveryStatus {
            node_id: self.gateway.replicas().self_id().to_owned(),
            epoch: p.epoch,
            listed: p.listed,
            objects_total: p.total,
            objects_done: p.done,
            objects_missing: p.missing,
            recovered_epoch: p.recovered_epoch,
        }))
    }
}
