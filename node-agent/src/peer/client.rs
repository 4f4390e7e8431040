//! Clients to other nodes' peer services, one lazily connected channel per node.

use super::frame_client::Connection;
use super::frames::{Op, Request, Status};
use super::{MAX_MESSAGE, ReplicaError};
use crate::freeze::Change;
use crate::store::{Copy, Meta, ObjectSpec};
use bytes::Bytes;
use sheepdog_api::v1;
use sheepdog_api::v1::peer_service_client::PeerServiceClient;
use sheepdog_model::{ClusterMap, NodeInfo, ObjectId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;

/// How long a peer may take to answer one request before it counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct Peers {
    clients: Mutex<HashMap<String, PeerServiceClient<Channel>>>,
    /// Replica data channel connections (object reads and writes), by peer address.
    frames: Mutex<HashMap<String, Arc<Connection>>>,
}

type Reply<T> = Result<T, ReplicaError>;

impl Peers {
    fn client(&self, node: &NodeInfo) -> Reply<PeerServiceClient<Channel>> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(client) = clients.get(&node.peer_addr) {
            return Ok(client.clone());
        }
        let endpoint = super::endpoint(&node.peer_addr)
            .map_err(|e| ReplicaError::Invalid {
                node: node.id.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(super::WINDOW))
            .initial_connection_window_size(Some(4 * super::WINDOW));
        let client = PeerServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        clients.insert(node.peer_addr.clone(), client.clone());
        Ok(client)
    }

    /// The data-channel connection to `node`, opened if there is none or it broke.
    async fn connection(&self, node: &NodeInfo) -> Reply<Arc<Connection>> {
        let existing = self.frames.lock().unwrap().get(&node.peer_addr).cloned();
        if let Some(conn) = existing.filter(|c| !c.is_broken()) {
            return Ok(conn);
        }
        let conn = Connection::open(&node.peer_addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| ReplicaError::Unreachable {
                node: node.id.clone(),
                reason: format!("cannot connect to {}: {e}", node.peer_addr),
            })?;
        self.frames
            .lock()
            .unwrap()
            .insert(node.peer_addr.clone(), conn.clone());
        Ok(conn)
    }

    /// One request on the data channel; the reply's body and `newer`, or the error it carries.
    async fn frame(
        &self,
        node: &NodeInfo,
        request: Request,
        payload: &Bytes,
    ) -> Reply<(Bytes, u64)> {
        let conn = self.connection(node).await?;
        let (reply, body) = conn
            .call(&node.id, request, payload, REQUEST_TIMEOUT)
            .await?;
        if reply.status == Status::Ok {
            return Ok((body, reply.newer));
        }
        // Only an error's body is a message: a read's data is never decoded as text.
        let message = String::from_utf8_lossy(&body).into_owned();
        match reply.status.error(&node.id, reply.epoch, message) {
            Some(e) => Err(e),
            None => Ok((body, reply.newer)),
        }
    }

    pub async fn read(
        &self,
        node: &NodeInfo,
        epoch: u64,
        oid: ObjectId,
        offset: u64,
        length: u32,
    ) -> Reply<Vec<u8>> {
        let request = Request {
            op: Op::Read,
            fua: false,
            copies: 0,
            id: 0,
            epoch,
            oid: oid.raw(),
            offset,
            capacity: 0,
            length,
            fence: 0,
            version: 0,
        };
        let (data, _) = self.frame(node, request, &Bytes::new()).await?;
        Ok(data.into())
    }

    /// Writes at `version`; returns the newest version the node found newer, if any.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        node: &NodeInfo,
        epoch: u64,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        data: Bytes,
        version: u64,
        fua: bool,
        fence: u32,
    ) -> Reply<Option<u64>> {
        let request = Request {
            op: Op::Write,
            fua,
            copies: spec.copies,
            id: 0,
            epoch,
            oid: oid.raw(),
            offset,
            capacity: spec.capacity,
            length: data.len() as u32,
            fence,
            version,
        };
        let (_, newer) = self.frame(node, request, &data).await?;
        Ok((newer != 0).then_some(newer))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn zero(
        &self,
        node: &NodeInfo,
        epoch: u64,
        oid: ObjectId,
        spec: ObjectSpec,
        offset: u64,
        length: u64,
        version: u64,
        fua: bool,
    ) -> Reply<Option<u64>> {
        let req = v1::ZeroObjectRequest {
            epoch,
            oid: oid.raw(),
            offset,
            length,
            fua,
            version,
            capacity: spec.capacity,
            copies: u32::from(spec.copies),
        };
        let newer = answer(node, self.client(node)?.zero_object(req).await)?.newer;
        Ok((newer != 0).then_some(newer))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn remove(
        &self,
        node: &NodeInfo,
        epoch: u64,
        oid: ObjectId,
        spec: ObjectSpec,
        version: u64,
        garbage: bool,
        fence: u32,
    ) -> Reply<Option<u64>> {
        let req = v1::RemoveObjectRequest {
            epoch,
            oid: oid.raw(),
            version,
            capacity: spec.capacity,
            copies: u32::from(spec.copies),
            fua: false,
            garbage,
            fence,
        };
        let newer = answer(node, self.client(node)?.remove_object(req).await)?.newer;
        Ok((newer != 0).then_some(newer))
    }

    /// Creates `oid` on `node` with `data` at the copy version unless it has a copy already.
    pub async fn put_if_absent(
        &self,
        node: &NodeInfo,
        epoch: u64,
        oid: ObjectId,
        spec: ObjectSpec,
        data: Bytes,
    ) -> Reply<bool> {
        let req = v1::PutObjectRequest {
            epoch,
            oid: oid.raw(),
            capacity: spec.capacity,
            copies: u32::from(spec.copies),
            data,
            floor: 0,
            versions: Bytes::new(),
            if_absent: true,
        };
        Ok(answer(node, self.client(node)?.put_object(req).await)?.stored)
    }

    pub async fn flush(&self, node: &NodeInfo, epoch: u64) -> Reply<()> {
        let request = Request {
            op: Op::Flush,
            fua: false,
            copies: 0,
            id: 0,
            epoch,
            oid: 0,
            offset: 0,
            capacity: 0,
            length: 0,
            fence: 0,
            version: 0,
        };
        self.frame(node, request, &Bytes::new()).await.map(drop)
    }

    /// Objects on `node` (only inodes with `inodes_only`), tombstones included.
    pub async fn list(
        &self,
        node: &NodeInfo,
        epoch: u64,
        inodes_only: bool,
    ) -> Reply<Vec<(ObjectId, Meta)>> {
        let req = v1::ListObjectsRequest { epoch, inodes_only };
        let resp = answer(node, self.client(node)?.list_objects(req).await)?;
        Ok(resp
            .objects
            .into_iter()
            .filter_map(|o| {
                let meta = Meta {
                    copies: u8::try_from(o.copies).ok()?,
                    summary: o.summary,
                    tombstone: o.tombstone,
                };
                Some((ObjectId::from_raw(o.oid).ok()?, meta))
            })
            .collect())
    }

    /// The whole object with its block versions from `node`, if it has it.
    pub async fn fetch(&self, node: &NodeInfo, epoch: u64, oid: ObjectId) -> Reply<Option<Copy>> {
        let req = v1::FetchObjectRequest {
            oid: oid.raw(),
            epoch,
        };
        let resp = answer(node, self.client(node)?.fetch_object(req).await)?;
        if !resp.found {
            return Ok(None);
        }
        let invalid = |message: String| ReplicaError::Invalid {
            node: node.id.clone(),
            message,
        };
        let versions = super::server::decode_versions(&resp.versions)
            .map_err(|s| invalid(s.message().to_owned()))?;
        let copies = u8::try_from(resp.copies).map_err(|_| invalid("copies too large".into()))?;
        Ok(Some(Copy {
            spec: ObjectSpec {
                capacity: resp.capacity,
                copies,
            },
            floor: resp.floor,
            versions,
            data: resp.data.into(),
        }))
    }

    pub async fn get_map(&self, node: &NodeInfo) -> Reply<ClusterMap> {
        let resp = answer(node, self.client(node)?.get_map(v1::GetMapRequest {}).await)?;
        Ok(ClusterMap::from(resp))
    }

    pub async fn push_map(&self, node: &NodeInfo, map: &ClusterMap) -> Reply<()> {
        answer(
            node,
            self.client(node)?
                .push_map(v1::ClusterMapMessage::from(map))
                .await,
        )
        .map(drop)
    }

    /// Freezes `vid` on `node` for operation `fence`; whether `node` took the freeze (it
    /// refuses one that came after its operation's thaw, or after a newer operation's).
    pub async fn freeze(
        &self,
        node: &NodeInfo,
        vid: u32,
        fence: u64,
        ttl: Duration,
    ) -> Reply<bool> {
        self.freeze_volume(node, vid, fence, ttl, false).await
    }

    /// Extends a freeze `node` still holds for operation `fence`; whether it held it.
    pub async fn renew_freeze(
        &self,
        node: &NodeInfo,
        vid: u32,
        fence: u64,
        ttl: Duration,
    ) -> Reply<bool> {
        self.freeze_volume(node, vid, fence, ttl, true).await
    }

    async fn freeze_volume(
        &self,
        node: &NodeInfo,
        vid: u32,
        fence: u64,
        ttl: Duration,
        renewal: bool,
    ) -> Reply<bool> {
        let req = v1::FreezeVolumeRequest {
            vid,
            ttl_ms: ttl.as_millis() as u64,
            renewal,
            fence,
        };
        answer(node, self.client(node)?.freeze_volume(req).await).map(|r| r.held)
    }

    pub async fn thaw(
        &self,
        node: &NodeInfo,
        vid: u32,
        fence: u64,
        change: Option<Change>,
    ) -> Reply<()> {
        use v1::thaw_volume_request::Outcome;
        let (outcome, successor_vid) = match change {
            None | Some(Change::Unknown) => (Outcome::Unchanged, 0),
            Some(Change::Replaced(vid)) => (Outcome::Replaced, vid),
            Some(Change::Deleted) => (Outcome::Deleted, 0),
        };
        let req = v1::ThawVolumeRequest {
            vid,
            outcome: outcome as i32,
            successor_vid,
            fence,
        };
        answer(node, self.client(node)?.thaw_volume(req).await).map(drop)
    }
}

fn answer<T>(node: &NodeInfo, resp: Result<tonic::Response<T>, tonic::Status>) -> Reply<T> {
    resp.map(tonic::Response::into_inner)
        .map_err(|status| ReplicaError::from_status(&node.id, &status))
}
