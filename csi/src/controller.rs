//! The controller service: volumes, snapshots, clones and expansion, each call one or two
//! calls to the cluster. See `ids` for how CSI names map to the cluster's, and `docs/csi.md`
//! for the parameters.

use crate::capabilities;
use crate::fields::{invalid, required};
use crate::ids::{self, CLONE_TAG_PREFIX};
use crate::inflight::InFlight;
use crate::proto::csi::controller_server::Controller as ControllerService;
use crate::proto::csi::controller_service_capability::rpc::Type as Rpc;
use crate::proto::csi::volume_content_source::{SnapshotSource, Type as Source, VolumeSource};
use crate::proto::csi::*;
use crate::sheep::{Reply, Sheep};
use sheepdog_api::v1 as api;
use sheepdog_model::inode::MAX_OBJECTS;
use sheepdog_model::{DEFAULT_OBJECT_SIZE, inode};
use std::collections::HashMap;
use tonic::{Request, Response, Status};

/// The size of a volume created without a capacity range.
const DEFAULT_SIZE: u64 = 1 << 30;
/// Sizes are whole MiB.
const GRAIN: u64 = 1 << 20;
/// Parameters the container orchestrator adds (PVC name and namespace, ...), passed through.
const CO_PREFIX: &str = "csi.storage.k8s.io/";

pub struct Controller {
    sheep: Sheep,
    inflight: InFlight,
}

impl Controller {
    pub fn new(sheep: Sheep) -> Self {
        Self {
            sheep,
            inflight: InFlight::default(),
        }
    }
}

/// What a StorageClass's parameters ask of a volume.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Parameters {
    /// 0: the cluster's default.
    copies: u32,
    /// 0: the default object size.
    object_size: u32,
}

fn parameters(given: &HashMap<String, String>) -> Reply<Parameters> {
    let mut parameters = Parameters::default();
    for (key, value) in given {
        match key.as_str() {
            "copies" => {
                parameters.copies = value
                    .parse()
                    .ok()
                    .filter(|c| (1..=31).contains(c))
                    .ok_or_else(|| {
                        invalid(format!(
                            "parameter copies={value:?}: give a number of copies from 1 to 31"
                        ))
                    })?;
            }
            "objectSize" => {
                let size = parse_size::parse_size(value).ok();
                let valid = u64::from(inode::MIN_OBJECT_SIZE)..=u64::from(inode::MAX_OBJECT_SIZE);
                parameters.object_size = size
                    .filter(|s| s.is_power_of_two() && valid.contains(s))
                    .map(|s| s as u32)
                    .ok_or_else(|| {
                        invalid(format!(
                            "parameter objectSize={value:?}: give a power of two from 64KiB to 64MiB, e.g. 4MiB"
                        ))
                    })?;
            }
            key if key.starts_with(CO_PREFIX) => {}
            key => {
                return Err(invalid(format!(
                    "unknown parameter {key:?}: the parameters are copies and objectSize"
                )));
            }
        }
    }
    Ok(parameters)
}

/// Refuses every parameter but the container orchestrator's own.
fn no_parameters(given: &HashMap<String, String>, what: &str) -> Reply<()> {
    match given.keys().find(|k| !k.starts_with(CO_PREFIX)) {
        Some(key) => Err(invalid(format!(
            "unknown parameter {key:?}: {what} take none"
        ))),
        None => Ok(()),
    }
}

/// The bytes a capacity range asks for, `None` if it asks for nothing in particular.
struct Range {
    required: u64,
    /// 0: no limit.
    limit: u64,
}

impl Range {
    fn from(range: Option<&CapacityRange>) -> Reply<Self> {
        let Some(range) = range else {
            return Ok(Self {
                required: 0,
                limit: 0,
            });
        };
        let (Ok(required), Ok(limit)) = (
            u64::try_from(range.required_bytes),
            u64::try_from(range.limit_bytes),
        ) else {
            return Err(invalid("capacity range: negative bytes"));
        };
        if limit != 0 && limit < required {
            return Err(invalid(format!(
                "capacity range: the limit {limit} is below the required {required} bytes"
            )));
        }
        Ok(Self { required, limit })
    }

    fn is_empty(&self) -> bool {
        self.required == 0 && self.limit == 0
    }

    /// The size to give a new volume: what is required, rounded up to whole MiB, within the
    /// limit; `default` when nothing is required.
    fn size(&self, default: u64, max: u64) -> Reply<u64> {
        let wanted = if self.required == 0 {
            default
        } else {
            self.required
        };
        let mut size = wanted.div_ceil(GRAIN) * GRAIN;
        if self.limit != 0 && size > self.limit {
            size = self.limit / GRAIN * GRAIN;
        }
        if size == 0 || size < self.required {
            return Err(Status::out_of_range(format!(
                "capacity range: no whole number of MiB lies between {} and {} bytes",
                self.required, self.limit
            )));
        }
        if size > max {
            return Err(Status::out_of_range(format!(
                "capacity range: {size} bytes is more than a volume can hold ({max} bytes with this object size)"
            )));
        }
        Ok(size)
    }

    fn admits(&self, size: u64) -> bool {
        size >= self.required && (self.limit == 0 || size <= self.limit)
    }
}

fn max_size(object_size: u32) -> u64 {
    let object_size = if object_size == 0 {
        DEFAULT_OBJECT_SIZE
    } else {
        object_size
    };
    MAX_OBJECTS * u64::from(object_size)
}

fn volume_context(volume: &api::Volume) -> HashMap<String, String> {
    HashMap::from([
        ("copies".to_owned(), volume.copies.to_string()),
        ("objectSize".to_owned(), volume.object_size.to_string()),
    ])
}

fn csi_volume(volume: &api::Volume, source: Option<Source>) -> Volume {
    Volume {
        capacity_bytes: volume.size as i64,
        volume_id: volume.name.clone(),
        volume_context: volume_context(volume),
        content_source: source.map(|source| VolumeContentSource {
            r#type: Some(source),
        }),
        accessible_topology: Vec::new(),
    }
}

fn csi_snapshot(snapshot: &api::Volume) -> Snapshot {
    Snapshot {
        size_bytes: snapshot.size as i64,
        snapshot_id: ids::snapshot_id(&snapshot.name, &snapshot.tag),
        source_volume_id: snapshot.name.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: (snapshot.ctime_ns / 1_000_000_000) as i64,
            nanos: (snapshot.ctime_ns % 1_000_000_000) as i32,
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// Whether a listed volume is a snapshot a CSI user sees (not the hidden one of a clone).
fn is_visible_snapshot(volume: &api::Volume) -> bool {
    volume.snapshot && !volume.tag.starts_with(CLONE_TAG_PREFIX)
}

/// One page of `items` from `token`, at most `max` (0: all), and the next page's token.
fn page<T>(items: Vec<T>, token: &str, max: i32) -> Reply<(Vec<T>, String)> {
    let max = usize::try_from(max).map_err(|_| invalid("max_entries is negative"))?;
    let start = ids::parse_token(token, items.len()).ok_or_else(|| {
        Status::aborted(format!(
            "starting_token {token:?} is not one this driver gave, or the listing shrank below it: list again from the start"
        ))
    })?;
    let end = if max == 0 {
        items.len()
    } else {
        items.len().min(start + max)
    };
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    let page = items.into_iter().skip(start).take(end - start).collect();
    Ok((page, next))
}

impl Controller {
    /// The condition of `volume`: abnormal when the cluster has fewer nodes than its copies.
    async fn condition(&self, volume: &api::Volume) -> Reply<VolumeCondition> {
        let nodes = self.sheep.cluster_info().await?.nodes.len();
        let copies = volume.copies as usize;
        Ok(if nodes < copies {
            VolumeCondition {
                abnormal: true,
                message: format!(
                    "the cluster has {nodes} node(s) for {copies} copies: the volume's objects have fewer copies than it asks for until nodes join"
                ),
            }
        } else {
            VolumeCondition {
                abnormal: false,
                message: format!("{copies} copies on {nodes} node(s)"),
            }
        })
    }

    async fn existing_volume(&self, id: &str) -> Reply<api::Volume> {
        let found = if ids::is_volume_id(id) {
            self.sheep.get(id).await?
        } else {
            None
        };
        found.ok_or_else(|| Status::not_found(format!("volume {id:?} does not exist")))
    }

    /// The snapshot `id`, `None` if there is none.
    async fn find_snapshot(&self, id: &str) -> Reply<Option<api::Volume>> {
        let Some((volume, tag)) = ids::parse_snapshot_id(id) else {
            return Ok(None);
        };
        let found = self.sheep.get(&ids::snapshot_id(volume, tag)).await?;
        Ok(found.filter(|s| s.snapshot))
    }

    /// Whether `existing` is what a CreateVolume asked for (same size range, parameters and
    /// source): then the call is answered with it.
    async fn matches(
        &self,
        existing: &api::Volume,
        range: &Range,
        parameters: Parameters,
        source: Option<&Source>,
    ) -> Reply<bool> {
        let same_parameters = (parameters.copies == 0 || parameters.copies == existing.copies)
            && (parameters.object_size == 0 || parameters.object_size == existing.object_size);
        if !same_parameters || !(range.is_empty() || range.admits(existing.size)) {
            return Ok(false);
        }
        let parent = match source {
            None => return Ok(existing.parent_vid == 0),
            Some(Source::Snapshot(SnapshotSource { snapshot_id })) => {
                self.find_snapshot(snapshot_id).await?
            }
            Some(Source::Volume(VolumeSource { volume_id })) => {
                let hidden = ids::snapshot_id(volume_id, &ids::clone_tag(&existing.name));
                self.sheep.get(&hidden).await?
            }
        };
        Ok(parent.is_some_and(|p| p.vid == existing.parent_vid))
    }

    /// Creates `name` as a clone of `source`, resized to what the range asks.
    async fn create_clone(&self, name: &str, range: &Range, source: &Source) -> Reply<api::Volume> {
        let snapshot = match source {
            Source::Snapshot(SnapshotSource { snapshot_id }) => {
                self.find_snapshot(snapshot_id).await?.ok_or_else(|| {
                    Status::not_found(format!("source snapshot {snapshot_id:?} does not exist"))
                })?
            }
            Source::Volume(VolumeSource { volume_id }) => {
                let source = self.existing_volume(volume_id).await.map_err(|_| {
                    Status::not_found(format!("source volume {volume_id:?} does not exist"))
                })?;
                let tag = ids::clone_tag(name);
                let hidden = ids::snapshot_id(&source.name, &tag);
                match self.sheep.get(&hidden).await? {
                    Some(snapshot) => snapshot,
                    None => self.sheep.snapshot(&source.name, &tag).await?,
                }
            }
        };
        if range.limit != 0 && snapshot.size > range.limit {
            return Err(Status::out_of_range(format!(
                "the source holds {} bytes, more than the limit of {} bytes",
                snapshot.size, range.limit
            )));
        }
        let size = if range.required > snapshot.size {
            range.size(snapshot.size, max_size(snapshot.object_size))?
        } else {
            snapshot.size
        };
        let clone = match self.sheep.get(name).await? {
            Some(clone) => clone,
            None => {
                self.sheep
                    .clone_volume(&snapshot.name, &snapshot.tag, name)
                    .await?
            }
        };
        if clone.size < size {
            return self.sheep.resize(name, size).await;
        }
        Ok(clone)
    }

    /// Deletes the hidden snapshot a clone of a volume was made from, if there is one.
    async fn delete_clone_source(&self, clone: &str) -> Reply<()> {
        let tag = ids::clone_tag(clone);
        let hidden: Vec<_> = self
            .sheep
            .list()
            .await?
            .into_iter()
            .filter(|v| v.snapshot && v.tag == tag)
            .collect();
        for snapshot in hidden {
            self.sheep.delete(&snapshot.name, &snapshot.tag).await?;
        }
        Ok(())
    }

    /// Snapshots a CSI user sees, in a stable order.
    async fn snapshots(&self) -> Reply<Vec<api::Volume>> {
        let mut snapshots: Vec<_> = self
            .sheep
            .list()
            .await?
            .into_iter()
            .filter(is_visible_snapshot)
            .collect();
        snapshots.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
        Ok(snapshots)
    }
}

#[tonic::async_trait]
impl ControllerService for Controller {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name), err(level = "warn"))]
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Reply<Response<CreateVolumeResponse>> {
        let req = req.into_inner();
        let csi_name = required(&req.name, "name")?;
        capabilities::check_all(&req.volume_capabilities).map_err(invalid)?;
        let parameters = parameters(&req.parameters)?;
        let range = Range::from(req.capacity_range.as_ref())?;
        let source = req.volume_content_source.and_then(|s| s.r#type);
        let name = ids::cluster_name(csi_name);
        let _running = self.inflight.start(&name)?;
        if let Some(existing) = self.sheep.get(&name).await? {
            if !self
                .matches(&existing, &range, parameters, source.as_ref())
                .await?
            {
                return Err(Status::already_exists(format!(
                    "volume {csi_name:?} exists ({} bytes, {} copies) and differs from this request",
                    existing.size, existing.copies
                )));
            }
            if source.is_none() {
                let volume = csi_volume(&existing, None);
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(volume),
                }));
            }
        }
        let volume = match &source {
            Some(source) => self.create_clone(&name, &range, source).await?,
            None => {
                let size = range.size(DEFAULT_SIZE, max_size(parameters.object_size))?;
                let request = api::CreateVolumeRequest {
                    name: name.clone(),
                    size,
                    copies: parameters.copies,
                    object_size: parameters.object_size,
                };
                self.sheep.create(request).await?
            }
        };
        tracing::info!(size = volume.size, copies = volume.copies, "created");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(csi_volume(&volume, source)),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Reply<Response<DeleteVolumeResponse>> {
        let id = required(&req.get_ref().volume_id, "volume_id")?;
        if ids::is_volume_id(id) {
            let _running = self.inflight.start(id)?;
            if self.sheep.get(id).await?.is_some() {
                self.sheep.delete(id, "").await?;
                tracing::info!("deleted");
            }
            self.delete_clone_source(id).await?;
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Reply<Response<ControllerPublishVolumeResponse>> {
        Err(Status::unimplemented(
            "no controller publish: every node reaches every volume (PUBLISH_UNPUBLISH_VOLUME is not offered)",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Reply<Response<ControllerUnpublishVolumeResponse>> {
        Err(Status::unimplemented(
            "no controller publish: every node reaches every volume (PUBLISH_UNPUBLISH_VOLUME is not offered)",
        ))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<Response<ValidateVolumeCapabilitiesResponse>> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(invalid("volume_capabilities are required"));
        }
        self.existing_volume(id).await?;
        let answer = match capabilities::check_all(&req.volume_capabilities)
            .and_then(|()| parameters(&req.parameters).map_err(|s| s.message().to_owned()))
        {
            Ok(_) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(why) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
        };
        Ok(Response::new(answer))
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Reply<Response<ListVolumesResponse>> {
        let req = req.into_inner();
        let mut volumes: Vec<_> = self
            .sheep
            .list()
            .await?
            .into_iter()
            .filter(|v| !v.snapshot)
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        let (volumes, next_token) = page(volumes, &req.starting_token, req.max_entries)?;
        let mut published = self.sheep.published_nodes().await?;
        let mut entries = Vec::with_capacity(volumes.len());
        for volume in volumes {
            let status = list_volumes_response::VolumeStatus {
                published_node_ids: published.remove(&volume.name).unwrap_or_default(),
                volume_condition: Some(self.condition(&volume).await?),
            };
            entries.push(list_volumes_response::Entry {
                volume: Some(csi_volume(&volume, None)),
                status: Some(status),
            });
        }
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Reply<Response<GetCapacityResponse>> {
        let req = req.into_inner();
        let parameters = parameters(&req.parameters)?;
        let info = self.sheep.cluster_info().await?;
        let free: u64 = info
            .nodes
            .iter()
            .map(|n| n.capacity.saturating_sub(n.used_bytes))
            .sum();
        let copies = match parameters.copies {
            0 => info.default_copies.max(1),
            copies => copies,
        };
        let supported = req
            .volume_capabilities
            .iter()
            .all(|c| capabilities::check(c).is_ok());
        let available = if supported {
            free / u64::from(copies)
        } else {
            0
        };
        Ok(Response::new(GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(max_size(parameters.object_size) as i64),
            minimum_volume_size: Some(GRAIN as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Reply<Response<ControllerGetCapabilitiesResponse>> {
        let rpc = |kind: Rpc| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc {
                    r#type: kind as i32,
                },
            )),
        };
        let capabilities = [
            Rpc::CreateDeleteVolume,
            Rpc::ListVolumes,
            Rpc::ListVolumesPublishedNodes,
            Rpc::GetCapacity,
            Rpc::CreateDeleteSnapshot,
            Rpc::ListSnapshots,
            Rpc::GetSnapshot,
            Rpc::CloneVolume,
            Rpc::ExpandVolume,
            Rpc::VolumeCondition,
            Rpc::GetVolume,
            Rpc::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(rpc)
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().source_volume_id, snapshot = %req.get_ref().name), err(level = "warn"))]
    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Reply<Response<CreateSnapshotResponse>> {
        let req = req.into_inner();
        let csi_name = required(&req.name, "name")?;
        let source = required(&req.source_volume_id, "source_volume_id")?;
        no_parameters(&req.parameters, "snapshots")?;
        let tag = ids::cluster_name(csi_name);
        let _running = self.inflight.start(&format!("snapshot {tag}"))?;
        let taken = self
            .sheep
            .list()
            .await?
            .into_iter()
            .find(|v| is_visible_snapshot(v) && v.tag == tag);
        let snapshot = match taken {
            Some(snapshot) if snapshot.name == source => snapshot,
            Some(snapshot) => {
                return Err(Status::already_exists(format!(
                    "snapshot {csi_name:?} exists, of volume {:?}, not {source:?}",
                    snapshot.name
                )));
            }
            None => {
                let volume = self.existing_volume(source).await.map_err(|_| {
                    Status::not_found(format!("source volume {source:?} does not exist"))
                })?;
                let snapshot = self.sheep.snapshot(&volume.name, &tag).await?;
                tracing::info!(size = snapshot.size, "snapshot taken");
                snapshot
            }
        };
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        }))
    }

    #[tracing::instrument(skip_all, fields(snapshot = %req.get_ref().snapshot_id), err(level = "warn"))]
    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Reply<Response<DeleteSnapshotResponse>> {
        let id = required(&req.get_ref().snapshot_id, "snapshot_id")?;
        if let Some((volume, tag)) = ids::parse_snapshot_id(id) {
            let _running = self.inflight.start(&format!("snapshot {tag}"))?;
            if self.find_snapshot(id).await?.is_some() {
                self.sheep.delete(volume, tag).await?;
                tracing::info!("snapshot deleted");
            }
        }
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Reply<Response<ListSnapshotsResponse>> {
        let req = req.into_inner();
        let snapshots: Vec<_> = self
            .snapshots()
            .await?
            .into_iter()
            .filter(|s| req.source_volume_id.is_empty() || s.name == req.source_volume_id)
            .filter(|s| {
                req.snapshot_id.is_empty() || ids::snapshot_id(&s.name, &s.tag) == req.snapshot_id
            })
            .collect();
        let (snapshots, next_token) = page(snapshots, &req.starting_token, req.max_entries)?;
        let entries = snapshots
            .iter()
            .map(|s| list_snapshots_response::Entry {
                snapshot: Some(csi_snapshot(s)),
            })
            .collect();
        Ok(Response::new(ListSnapshotsResponse {
            entries,
            next_token,
        }))
    }

    async fn get_snapshot(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Reply<Response<GetSnapshotResponse>> {
        let id = required(&req.get_ref().snapshot_id, "snapshot_id")?;
        let snapshot = self
            .find_snapshot(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("snapshot {id:?} does not exist")))?;
        Ok(Response::new(GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume_id), err(level = "warn"))]
    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Reply<Response<ControllerExpandVolumeResponse>> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| invalid("capacity_range is required"))?;
        let range = Range::from(Some(range))?;
        let _running = self.inflight.start(id)?;
        let volume = self.existing_volume(id).await?;
        // A block device grows by itself; a file system needs the node to grow it.
        let node_expansion_required = !matches!(
            req.volume_capability.as_ref().map(capabilities::check),
            Some(Ok((capabilities::Access::Block, _)))
        );
        let volume = if volume.size >= range.required {
            volume
        } else {
            let size = range.size(volume.size, max_size(volume.object_size))?;
            let grown = self.sheep.resize(id, size).await?;
            tracing::info!(from = volume.size, to = grown.size, "expanded");
            grown
        };
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: volume.size as i64,
            node_expansion_required,
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<ControllerGetVolumeRequest>,
    ) -> Reply<Response<ControllerGetVolumeResponse>> {
        let id = required(&req.get_ref().volume_id, "volume_id")?;
        let volume = self.existing_volume(id).await?;
        let mut published = self.sheep.published_nodes().await?;
        let status = controller_get_volume_response::VolumeStatus {
            published_node_ids: published.remove(&volume.name).unwrap_or_default(),
            volume_condition: Some(self.condition(&volume).await?),
        };
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(csi_volume(&volume, None)),
            status: Some(status),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Reply<Response<ControllerModifyVolumeResponse>> {
        Err(Status::unimplemented(
            "changing a volume's parameters is not offered yet (MODIFY_VOLUME)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: u64, limit: u64) -> Range {
        Range { required, limit }
    }

    #[test]
    fn sizes_are_whole_mib_within_the_range() {
        let max = max_size(0);
        assert_eq!(range(0, 0).size(DEFAULT_SIZE, max).unwrap(), DEFAULT_SIZE);
        assert_eq!(range(1, 0).size(DEFAULT_SIZE, max).unwrap(), GRAIN);
        assert_eq!(
            range(0, 5 * GRAIN).size(DEFAULT_SIZE, max).unwrap(),
            5 * GRAIN
        );
        assert_eq!(
            range(GRAIN + 1, 3 * GRAIN).size(DEFAULT_SIZE, max).unwrap(),
            2 * GRAIN
        );
        let err = range(GRAIN + 1, GRAIN + 2)
            .size(DEFAULT_SIZE, max)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        let err = range(max + 1, 0).size(DEFAULT_SIZE, max).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        let bad = CapacityRange {
            required_bytes: 10,
            limit_bytes: 5,
        };
        assert_eq!(
            Range::from(Some(&bad)).err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn parameters_are_copies_and_object_size_and_nothing_else() {
        let given = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let p = parameters(&given(&[
            ("copies", "2"),
            ("objectSize", "1MiB"),
            ("csi.storage.k8s.io/pvc/name", "disk"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            Parameters {
                copies: 2,
                object_size: 1 << 20
            }
        );
        for bad in [
            ("copies", "0"),
            ("copies", "x"),
            ("objectSize", "3MiB"),
            ("objectSize", "1GiB"),
            ("replicas", "3"),
        ] {
            let err = parameters(&given(&[bad])).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn pages_continue_where_the_last_ended_and_refuse_foreign_tokens() {
        let items: Vec<u32> = (0..5).collect();
        let (first, next) = page(items.clone(), "", 2).unwrap();
        assert_eq!((first, next.as_str()), (vec![0, 1], "2"));
        let (rest, next) = page(items.clone(), "2", 0).unwrap();
        assert_eq!((rest, next.as_str()), (vec![2, 3, 4], ""));
        assert_eq!(
            page(items.clone(), "zz", 0).err().unwrap().code(),
            tonic::Code::Aborted
        );
        assert_eq!(
            page(items, "", -1).err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
    }
}
