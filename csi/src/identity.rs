//! The identity service: the driver's name and version, what it offers, and whether it is
//! ready (the cluster answers and serves I/O).

use crate::proto::csi::identity_server::Identity as IdentityService;
use crate::proto::csi::plugin_capability::{self, service, volume_expansion};
use crate::proto::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use crate::server::Roles;
use crate::sheep::Sheep;
use tonic::{Request, Response, Status};

/// The driver's name, as StorageClasses and the CSIDriver object give it.
pub const DRIVER_NAME: &str = "csi.sheepdog.io";

pub struct Identity {
    sheep: Sheep,
    roles: Roles,
}

impl Identity {
    pub fn new(sheep: Sheep, roles: Roles) -> Self {
        Self { sheep, roles }
    }
}

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let service = |kind: service::Type| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service {
                    r#type: kind as i32,
                },
            )),
        };
        let expansion = PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                },
            )),
        };
        // No accessibility constraints: every node reaches every volume.
        let mut capabilities = vec![expansion];
        if self.roles.controller {
            capabilities.push(service(service::Type::ControllerService));
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    /// Not ready (rather than failed) while the cluster is unreachable or not serving: the
    /// driver itself is healthy, and restarting it would not help.
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = match self.sheep.cluster_info().await {
            Ok(info) if info.status == "running" => true,
            Ok(info) => {
                tracing::warn!(status = %info.status, "not ready: the cluster does not serve I/O");
                false
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "not ready: the cluster does not answer");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
