//! The node service: a volume becomes a block device on this host, then a file system or a
//! raw device in a pod.
//!
//! - **Stage**: the local sheep exposes the volume as a file (FUSE, see the node agent's
//!   `files`), a loop device with direct I/O goes over it, and for a Filesystem volume the
//!   device gets a file system (only when blank) mounted at the staging path. The node agent
//!   serves the file, so a restart of this plugin leaves the device working. Every step
//!   looks first whether it is done, so staging again converges (after a host reboot too).
//! - **Publish**: a bind mount of the device (Block) or of the staged file system onto the
//!   pod's target path, read-only when asked.
//! - **Unpublish, Unstage**: undo, idempotent, leaving no mount, device or export behind.
//!
//! What was staged is recorded under the state directory, so a restarted plugin knows.

use crate::capabilities::{self, Access};
use crate::fields::{invalid, required};
use crate::host;
use crate::inflight::InFlight;
use crate::proto::csi::node_server::Node as NodeService;
use crate::proto::csi::node_service_capability::rpc::Type as Rpc;
use crate::proto::csi::*;
use crate::sheep::{Reply, Sheep};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tonic::{Request, Response, Status};

pub struct Node {
    sheep: Sheep,
    node_id: String,
    state_dir: PathBuf,
    inflight: InFlight,
}

/// What staging a volume did, as recorded in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Staged {
    volume_id: String,
    staging_path: PathBuf,
    /// The exported file the loop device is over.
    file: PathBuf,
    device: PathBuf,
    /// The file system mounted at the staging path; `None` for a Block volume.
    fs_type: Option<String>,
    read_only: bool,
    shared: bool,
    /// Where it is published, and whether that publication is its only writer (access mode
    /// SINGLE_NODE_SINGLE_WRITER: no second target).
    #[serde(default)]
    published: Vec<(PathBuf, bool)>,
}

/// How a capability asks for the volume: access, read-only, shared (several nodes write),
/// and whether one publication is the only one allowed.
fn capability(capability: Option<&VolumeCapability>) -> Reply<(Access, bool, bool, bool)> {
    let capability = capability.ok_or_else(|| invalid("volume_capability is required"))?;
    let (access, mode) = capabilities::check(capability).map_err(invalid)?;
    Ok((
        access,
        capabilities::is_read_only(mode),
        capabilities::is_multi_writer(mode),
        mode == volume_capability::access_mode::Mode::SingleNodeSingleWriter,
    ))
}

impl Node {
    pub fn new(sheep: Sheep, node_id: String, state_dir: PathBuf) -> anyhow::Result<Self> {
        let staged = state_dir.join("staged");
        std::fs::create_dir_all(&staged).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the state directory {}: {e}; choose another with --state-dir",
                staged.display()
            )
        })?;
        Ok(Self {
            sheep,
            node_id,
            state_dir,
            inflight: InFlight::default(),
        })
    }

    fn record_path(&self, volume_id: &str) -> PathBuf {
        self.state_dir
            .join("staged")
            .join(format!("{volume_id}.json"))
    }

    fn staged(&self, volume_id: &str) -> Reply<Option<Staged>> {
        let path = self.record_path(volume_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Status::internal(format!("the record {} is damaged: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Status::internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Records `staged` durably (a new file renamed over the old one).
    fn record(&self, staged: &Staged) -> Reply<()> {
        let path = self.record_path(&staged.volume_id);
        let temporary = path.with_extension("json.new");
        let failed =
            |e: std::io::Error| Status::internal(format!("cannot record {}: {e}", path.display()));
        let bytes =
            serde_json::to_vec_pretty(staged).map_err(|e| Status::internal(e.to_string()))?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(failed)?;
            file.write_all(&bytes).map_err(failed)?;
            file.sync_all().map_err(failed)?;
        }
        std::fs::rename(&temporary, &path).map_err(failed)
    }

    fn forget(&self, volume_id: &str) -> Reply<()> {
        match std::fs::remove_file(self.record_path(volume_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Status::internal(format!(
                "cannot remove the record of {volume_id}: {e}"
            ))),
        }
    }

    /// Not found when the volume does not exist, else not staged here.
    async fn not_staged(&self, volume_id: &str) -> Status {
        match self.sheep.get(volume_id).await {
            Ok(None) => Status::not_found(format!("volume {volume_id:?} does not exist")),
            Ok(Some(_)) => Status::failed_precondition(format!(
                "volume {volume_id:?} is not staged on node {}: stage it first",
                self.node_id
            )),
            Err(status) => status,
        }
    }
}

#[tonic::async_trait]
impl NodeService for Node {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Reply<Response<NodeStageVolumeResponse>> {
        let req = req.into_inner();
        let volume_id = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let (access, read_only, shared, _) = capability(req.volume_capability.as_ref())?;
        let _running = self.inflight.start(volume_id)?;
        if let Some(staged) = self.staged(volume_id)? {
            let same = staged.staging_path == staging
                && staged.read_only == read_only
                && staged.shared == shared
                && staged.fs_type.is_some() == matches!(access, Access::Mount { .. });
            if !same {
                return Err(Status::already_exists(format!(
                    "volume {volume_id:?} is staged on this node at {} with another capability; unstage it first",
                    staged.staging_path.display()
                )));
            }
        }
        if self.sheep.get(volume_id).await?.is_none() {
            return Err(Status::not_found(format!(
                "volume {volume_id:?} does not exist"
            )));
        }
        let file = self
            .sheep
            .export_file(volume_id, shared, read_only, &self.node_id)
            .await?;
        let file = PathBuf::from(file.path);
        let device = host::attach_loop(&file, read_only)?;
        let fs_type = match access {
            Access::Block => None,
            Access::Mount { fs_type, flags } => {
                let kind = match host::file_system(&device)? {
                    Some(existing) => {
                        if existing != fs_type {
                            tracing::warn!(%existing, asked = %fs_type, "the volume has another file system than asked: mounting the one it has");
                        }
                        existing
                    }
                    None if read_only => {
                        return Err(Status::failed_precondition(format!(
                            "volume {volume_id:?} has no file system, and a read-only volume cannot be given one"
                        )));
                    }
                    None => {
                        host::make_file_system(&device, &fs_type)?;
                        tracing::info!(fs = %fs_type, "file system made");
                        fs_type
                    }
                };
                if host::mounted_at(&staging)?.is_none() {
                    std::fs::create_dir_all(&staging).map_err(|e| {
                        Status::internal(format!("cannot create {}: {e}", staging.display()))
                    })?;
                    host::mount(&device, &staging, &kind, read_only, &flags)?;
                }
                Some(kind)
            }
        };
        let staged = Staged {
            volume_id: volume_id.to_owned(),
            staging_path: staging,
            file,
            device,
            fs_type,
            read_only,
            shared,
            published: Vec::new(),
        };
        self.record(&staged)?;
        tracing::info!(device = %staged.device.display(), "staged");
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Reply<Response<NodeUnstageVolumeResponse>> {
        let req = req.into_inner();
        let volume_id = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let _running = self.inflight.start(volume_id)?;
        let Some(staged) = self.staged(volume_id)? else {
            return Ok(Response::new(NodeUnstageVolumeResponse {}));
        };
        if staged.fs_type.is_some() {
            host::unmount(&staging)?;
        }
        if let Some(device) = host::loop_device_of(&staged.file)? {
            host::detach_loop(&device)?;
        }
        // A loop device still opened by someone (udev probing it after the unmount) lets go
        // of its file only once they close it, and the kernel tells FUSE of the last close
        // a moment later: wait for both, briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let released = host::loop_device_of(&staged.file)?.is_none();
            let unexported = match released {
                true => self.sheep.unexport_file(volume_id).await,
                false => Err(Status::failed_precondition(format!(
                    "the loop device over {} is still in use",
                    staged.file.display()
                ))),
            };
            match unexported {
                Ok(()) => break,
                Err(status)
                    if status.code() == tonic::Code::FailedPrecondition
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(status) => return Err(status),
            }
        }
        self.forget(volume_id)?;
        tracing::info!("unstaged");
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Reply<Response<NodePublishVolumeResponse>> {
        let req = req.into_inner();
        let volume_id = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let (access, mode_read_only, _, single) = capability(req.volume_capability.as_ref())?;
        let read_only = req.readonly || mode_read_only;
        let _running = self.inflight.start(volume_id)?;
        let Some(mut staged) = self.staged(volume_id)? else {
            return Err(self.not_staged(volume_id).await);
        };
        if staged.staging_path != staging {
            return Err(Status::failed_precondition(format!(
                "volume {volume_id:?} is staged at {}, not {}",
                staged.staging_path.display(),
                staging.display()
            )));
        }
        if host::mounted_at(&target)?.is_some() {
            return Ok(Response::new(NodePublishVolumeResponse {}));
        }
        if let Some((other, _)) = staged
            .published
            .iter()
            .find(|(path, only)| path != &target && (single || *only))
        {
            return Err(Status::failed_precondition(format!(
                "volume {volume_id:?} is published at {} for a single writer: unpublish it there first",
                other.display()
            )));
        }
        let source = match access {
            Access::Block => {
                if staged.fs_type.is_some() {
                    return Err(Status::already_exists(format!(
                        "volume {volume_id:?} is staged with a file system: it cannot be published as a block device"
                    )));
                }
                make_file(&target)?;
                staged.device.clone()
            }
            Access::Mount { .. } => {
                if staged.fs_type.is_none() {
                    return Err(Status::already_exists(format!(
                        "volume {volume_id:?} is staged as a block device: it cannot be published as a file system"
                    )));
                }
                std::fs::create_dir_all(&target).map_err(|e| {
                    Status::internal(format!("cannot create {}: {e}", target.display()))
                })?;
                staging.clone()
            }
        };
        host::bind(&source, &target, read_only)?;
        staged.published.retain(|(path, _)| path != &target);
        staged.published.push((target.clone(), single));
        self.record(&staged)?;
        tracing::info!(target = %target.display(), read_only, "published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Reply<Response<NodeUnpublishVolumeResponse>> {
        let req = req.into_inner();
        let volume_id = required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let _running = self.inflight.start(volume_id)?;
        host::unmount(&target)?;
        remove_target(&target)?;
        if let Some(mut staged) = self.staged(volume_id)? {
            staged.published.retain(|(path, _)| path != &target);
            self.record(&staged)?;
        }
        tracing::info!(target = %target.display(), "unpublished");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Reply<Response<NodeGetVolumeStatsResponse>> {
        let req = req.into_inner();
        let volume_id = required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let Some(staged) = self.staged(volume_id)? else {
            return Err(Status::not_found(format!(
                "volume {volume_id:?} is not staged on node {}",
                self.node_id
            )));
        };
        let metadata = std::fs::metadata(&path).map_err(|_| {
            Status::not_found(format!("volume path {} does not exist", path.display()))
        })?;
        let usage = if metadata.is_dir() {
            let stats = rustix::fs::statvfs(&path)
                .map_err(|e| Status::internal(format!("statvfs {}: {e}", path.display())))?;
            let unit = stats.f_frsize;
            let bytes = |n: u64| (n * unit) as i64;
            vec![
                VolumeUsage {
                    available: bytes(stats.f_bavail),
                    total: bytes(stats.f_blocks),
                    used: bytes(stats.f_blocks - stats.f_bfree),
                    unit: volume_usage::Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: stats.f_favail as i64,
                    total: stats.f_files as i64,
                    used: (stats.f_files - stats.f_ffree) as i64,
                    unit: volume_usage::Unit::Inodes as i32,
                },
            ]
        } else {
            vec![VolumeUsage {
                available: 0,
                total: host::size_of(&path)? as i64,
                used: 0,
                unit: volume_usage::Unit::Bytes as i32,
            }]
        };
        let condition = match host::loop_device_of(&staged.file)? {
            Some(device) if device == staged.device => VolumeCondition {
                abnormal: false,
                message: format!("attached as {}", device.display()),
            },
            _ => VolumeCondition {
                abnormal: true,
                message: format!(
                    "{} is no longer over the volume's file (the node agent restarted?): unpublish and unstage the volume, then stage it again",
                    staged.device.display()
                ),
            },
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Reply<Response<NodeExpandVolumeResponse>> {
        let req = req.into_inner();
        let volume_id = required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let _running = self.inflight.start(volume_id)?;
        let Some(staged) = self.staged(volume_id)? else {
            return Err(Status::not_found(format!(
                "volume {volume_id:?} is not staged on node {}",
                self.node_id
            )));
        };
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                path.display()
            )));
        }
        // Exporting again makes the file take the volume's new size; then the loop device.
        let file = self
            .sheep
            .export_file(volume_id, staged.shared, staged.read_only, &self.node_id)
            .await?;
        let required_bytes = req
            .capacity_range
            .as_ref()
            .map_or(0, |r| r.required_bytes.max(0) as u64);
        if file.size < required_bytes {
            return Err(Status::out_of_range(format!(
                "volume {volume_id:?} holds {} bytes, less than the {required_bytes} asked: expand it through the controller first",
                file.size
            )));
        }
        host::refresh_loop_size(&staged.device, &staged.file)?;
        let block = matches!(
            req.volume_capability.as_ref().map(capabilities::check),
            Some(Ok((Access::Block, _)))
        );
        if let (Some(kind), false) = (&staged.fs_type, block) {
            host::grow_file_system(&staged.device, &staged.staging_path, kind)?;
        }
        let size = host::size_of(&staged.device)?;
        tracing::info!(size, "expanded on the node");
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Reply<Response<NodeGetCapabilitiesResponse>> {
        let rpc = |kind: Rpc| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc {
                    r#type: kind as i32,
                },
            )),
        };
        let capabilities = [
            Rpc::StageUnstageVolume,
            Rpc::GetVolumeStats,
            Rpc::ExpandVolume,
            Rpc::VolumeCondition,
            Rpc::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(rpc)
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Reply<Response<NodeGetInfoResponse>> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

/// An empty file at `target` to bind a device on (an empty directory there is replaced).
fn make_file(target: &Path) -> Reply<()> {
    if target.is_dir() {
        std::fs::remove_dir(target).map_err(|e| {
            Status::internal(format!(
                "cannot replace the directory {} with a file for the device: {e}",
                target.display()
            ))
        })?;
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target)
        .map(drop)
        .map_err(|e| Status::internal(format!("cannot create {}: {e}", target.display())))
}

/// Removes the target path (a file or an empty directory) once nothing is mounted on it.
fn remove_target(target: &Path) -> Reply<()> {
    let removed = if target.is_dir() {
        std::fs::remove_dir(target)
    } else {
        std::fs::remove_file(target)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Status::internal(format!(
            "cannot remove {}: {e}",
            target.display()
        ))),
    }
}
