//! The cluster, as the driver reaches it: a sheep's gRPC API (volumes and cluster state).
//! Its errors become CSI statuses here, once: the sheep's codes already say what the CSI spec
//! needs (NotFound, AlreadyExists, OutOfRange, ResourceExhausted, Aborted, Unavailable), and
//! the message says which call on which volume failed.

use sheepdog_api::v1::cluster_service_client::ClusterServiceClient;
use sheepdog_api::v1::volume_service_client::VolumeServiceClient;
use sheepdog_api::v1::{self as api};
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long one call to the sheep may take: metadata operations wait for the cluster-wide
/// lock (30 s at most) and for freezes.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to say which volumes it has exported, for ListVolumes.
const EXPORTS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Sheep {
    volumes: VolumeServiceClient<Channel>,
    cluster: ClusterServiceClient<Channel>,
    address: String,
}

pub type Reply<T> = Result<T, Status>;

impl Sheep {
    /// A client of the sheep at `address` (HOST:PORT), connected when first used.
    pub fn connect(address: &str) -> anyhow::Result<Self> {
        Self::connect_with(address, CALL_TIMEOUT)
    }

    fn connect_with(address: &str, timeout: Duration) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| anyhow::anyhow!("--cluster {address:?} is not HOST:PORT: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            // Pings drop a connection that died (the sheep's host cut off, then back): without
            // them every call on it would time out until TCP gives up, minutes later.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        Ok(Self {
            volumes: VolumeServiceClient::new(channel.clone()),
            cluster: ClusterServiceClient::new(channel),
            address: address.to_owned(),
        })
    }

    pub async fn cluster_info(&self) -> Reply<api::ClusterInfo> {
        let reply = self
            .cluster
            .clone()
            .get_cluster_info(api::GetClusterInfoRequest {})
            .await;
        self.answer("reading the cluster's state", reply)
    }

    /// Every visible volume and snapshot.
    pub async fn list(&self) -> Reply<Vec<api::Volume>> {
        let reply = self
            .volumes
            .clone()
            .list_volumes(api::ListVolumesRequest {})
            .await;
        Ok(self.answer("listing volumes", reply)?.volumes)
    }

    /// The volume `name` (or snapshot `name@tag`), `None` if there is none.
    pub async fn get(&self, name: &str) -> Reply<Option<api::Volume>> {
        let request = api::GetVolumeRequest { name: name.into() };
        match self.volumes.clone().get_volume(request).await {
            Err(status) if status.code() == Code::NotFound => Ok(None),
            reply => self
                .answer(&format!("looking up volume {name:?}"), reply)
                .map(Some),
        }
    }

    pub async fn create(&self, request: api::CreateVolumeRequest) -> Reply<api::Volume> {
        let what = format!("creating volume {:?}", request.name);
        let reply = self.volumes.clone().create_volume(request).await;
        self.answer(&what, reply)
    }

    /// Deletes the volume `name`, or its snapshot `tag`.
    pub async fn delete(&self, name: &str, tag: &str) -> Reply<()> {
        let request = api::DeleteVolumeRequest {
            name: name.into(),
            tag: tag.into(),
        };
        let reply = self.volumes.clone().delete_volume(request).await;
        self.answer(&format!("deleting {name:?} {tag:?}"), reply)
            .map(drop)
    }

    pub async fn resize(&self, name: &str, size: u64) -> Reply<api::Volume> {
        let request = api::ResizeVolumeRequest {
            name: name.into(),
            size,
        };
        let reply = self.volumes.clone().resize_volume(request).await;
        self.answer(&format!("resizing volume {name:?}"), reply)
    }

    pub async fn snapshot(&self, name: &str, tag: &str) -> Reply<api::Volume> {
        let request = api::SnapshotVolumeRequest {
            name: name.into(),
            tag: tag.into(),
        };
        let reply = self.volumes.clone().snapshot_volume(request).await;
        self.answer(&format!("snapshotting volume {name:?}"), reply)
    }

    pub async fn clone_volume(&self, source: &str, tag: &str, name: &str) -> Reply<api::Volume> {
        let request = api::CloneVolumeRequest {
            source: source.into(),
            tag: tag.into(),
            name: name.into(),
        };
        let reply = self.volumes.clone().clone_volume(request).await;
        self.answer(&format!("cloning {source}@{tag} as {name:?}"), reply)
    }

    /// Exposes `name` as a file on the sheep's host for the CSI node `client` (idempotent;
    /// the size follows the volume).
    pub async fn export_file(
        &self,
        name: &str,
        shared: bool,
        read_only: bool,
        client: &str,
    ) -> Reply<api::ExportedFile> {
        let request = api::ExportFileRequest {
            name: name.into(),
            shared,
            read_only,
            client: client.into(),
        };
        let reply = self.volumes.clone().export_file(request).await;
        let what = format!("exposing volume {name:?} as a file on this node");
        self.answer(&what, reply)?
            .file
            .ok_or_else(|| Status::internal(format!("{what}: the sheep answered no file")))
    }

    pub async fn unexport_file(&self, name: &str) -> Reply<()> {
        let request = api::UnexportFileRequest { name: name.into() };
        let reply = self.volumes.clone().unexport_file(request).await;
        self.answer(&format!("removing the file of volume {name:?}"), reply)
            .map(drop)
    }

    /// The CSI nodes each volume is exported to as a file, by volume name, asked of every node
    /// of the cluster at once. A node that does not answer within [`EXPORTS_TIMEOUT`] is left
    /// out and logged: the spec lets the list miss nodes, and a CO must cope with that.
    pub async fn published_nodes(&self) -> Reply<HashMap<String, Vec<String>>> {
        let nodes = self.cluster_info().await?.nodes;
        let mut asks = tokio::task::JoinSet::new();
        for node in nodes {
            asks.spawn(async move {
                let sheep = Sheep::connect_with(&node.peer_addr, EXPORTS_TIMEOUT)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let reply = sheep
                    .volumes
                    .clone()
                    .list_exported_files(api::ListExportedFilesRequest {})
                    .await;
                let what = format!("listing the exported files of node {}", node.id);
                Ok::<_, Status>(sheep.answer(&what, reply)?.files)
            });
        }
        let mut published: HashMap<String, Vec<String>> = HashMap::new();
        while let Some(asked) = asks.join_next().await {
            let files = match asked {
                Ok(Ok(files)) => files,
                Ok(Err(status)) => {
                    tracing::warn!(error = %status.message(), "leaving a node's attachments out of the published nodes");
                    continue;
                }
                Err(e) => return Err(Status::internal(format!("asking a node: {e}"))),
            };
            for file in files {
                published.entry(file.name).or_default().extend(file.clients);
            }
        }
        for clients in published.values_mut() {
            clients.sort();
            clients.dedup();
        }
        Ok(published)
    }

    /// The sheep's answer, or its failure as the CSI status to return.
    fn answer<T>(&self, what: &str, reply: Result<tonic::Response<T>, Status>) -> Reply<T> {
        reply.map(tonic::Response::into_inner).map_err(|status| {
            let code = match status.code() {
                // The transport failed: the sheep is down or unreachable; the CO retries.
                Code::Unknown | Code::Cancelled => Code::Unavailable,
                code => code,
            };
            let message = if code == Code::Unavailable && status.message().is_empty() {
                format!(
                    "{what}: sheep at {} does not answer; is the node agent running?",
                    self.address
                )
            } else {
                format!("{what}: {}", status.message())
            };
            tracing::warn!(%code, %message, "the cluster refused");
            Status::new(code, message)
        })
    }
}
