//! gRPC clients to one sheep, with errors that say what to do.

use super::Target;
use anyhow::Context;
use sheepdog_api::v1::cluster_service_client::ClusterServiceClient;
use sheepdog_api::v1::volume_service_client::VolumeServiceClient;
use tonic::transport::Channel;

/// How long `dog` waits to connect to a sheep.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn channel(target: &Target) -> anyhow::Result<Channel> {
    let url = format!("http://{}:{}", target.address, target.port);
    let endpoint = Channel::from_shared(url.clone())?.connect_timeout(CONNECT_TIMEOUT);
    let hint = || {
        format!(
            "cannot reach sheep at {}:{}: is it running? start a local cluster with `dog cluster up --nodes 1 --dir DIR`, or pick another node with -a ADDR -p PORT",
            target.address, target.port
        )
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(connected) => connected.with_context(hint),
        Err(_) => Err(anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}")).with_context(hint),
    }
}

pub async fn volumes(target: &Target) -> anyhow::Result<VolumeServiceClient<Channel>> {
    Ok(VolumeServiceClient::new(channel(target).await?)
        .max_decoding_message_size(crate::rpc::MAX_MESSAGE)
        .max_encoding_message_size(crate::rpc::MAX_MESSAGE))
}

pub async fn cluster(target: &Target) -> anyhow::Result<ClusterServiceClient<Channel>> {
    Ok(ClusterServiceClient::new(channel(target).await?))
}

/// Turns a gRPC status into an error carrying the server's message.
pub fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// The cluster as the target node sees it.
pub async fn cluster_info(target: &Target) -> anyhow::Result<sheepdog_api::v1::ClusterInfo> {
    let request = sheepdog_api::v1::GetClusterInfoRequest {};
    Ok(cluster(target)
        .await?
        .get_cluster_info(request)
        .await
        .map_err(failed)?
        .into_inner())
}
