//! Attaches a Block volume through the CSI driver's socket as Kubernetes would (create, stage,
//! publish) and tears it down again, for benchmarks of the published device
//! (`bench/csi-attach.sh`):
//!
//! ```sh
//! csi_attach SOCKET up   NAME SIZE_MIB STAGING TARGET   # TARGET becomes the block device
//! csi_attach SOCKET down NAME STAGING TARGET
//! ```

use sheepdog_csi::proto::csi::controller_client::ControllerClient;
use sheepdog_csi::proto::csi::node_client::NodeClient;
use sheepdog_csi::proto::csi::volume_capability::access_mode::Mode;
use sheepdog_csi::proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume};
use sheepdog_csi::proto::csi::*;
use std::path::PathBuf;
use tonic::transport::{Endpoint, Uri};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: csi_attach SOCKET up NAME SIZE_MIB STAGING TARGET | SOCKET down NAME STAGING TARGET";
    let (socket, verb) = match args.as_slice() {
        [socket, verb, ..] => (PathBuf::from(socket), verb.as_str()),
        _ => return Err(usage.into()),
    };
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    let mut controller = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let capability = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    match &args[1..] {
        [_, name, size_mib, staging, target] if verb == "up" => {
            let created = controller
                .create_volume(CreateVolumeRequest {
                    name: name.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: size_mib.parse::<i64>()? << 20,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![capability.clone()],
                    ..Default::default()
                })
                .await?
                .into_inner();
            let id = created
                .volume
                .ok_or("CreateVolume answered no volume")?
                .volume_id;
            std::fs::create_dir_all(staging)?;
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(capability.clone()),
                ..Default::default()
            })
            .await?;
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id: id,
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(capability),
                ..Default::default()
            })
            .await?;
        }
        [_, name, staging, target] if verb == "down" => {
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: name.clone(),
                target_path: target.clone(),
            })
            .await?;
            node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: name.clone(),
                staging_target_path: staging.clone(),
            })
            .await?;
            controller
                .delete_volume(DeleteVolumeRequest {
                    volume_id: name.clone(),
                    secrets: Default::default(),
                })
                .await?;
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
