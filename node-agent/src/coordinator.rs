//! The membership coordinator of a cluster without Kubernetes (the embedded default).
//!
//! It runs [`sheepdog_model::membership`] over the nodes' heartbeats: the same pure function
//! the operator runs on Kubernetes. Being a single process, it is the one writer of epochs.
//! Maps are persisted under `DIR/maps/`, so a restarted coordinator continues from the last
//! epoch and gives the known nodes one failure timeout to come back before removing any.
//! The data path does not go through it: if it stops, I/O goes on at the current epoch (as
//! long as the node leases last) and membership changes wait until it is back.

use crate::cluster::{load_history, save_map};
use anyhow::Context;
use sheepdog_api::v1::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use sheepdog_api::v1::{
    ClusterMapMessage, GetMapAtRequest, HeartbeatRequest, HeartbeatResponse, LockRequest,
    LockResponse, RetireVidsRequest, RetireVidsResponse, UnlockRequest, UnlockResponse,
};
use sheepdog_model::membership::{Heartbeat, Membership};
use sheepdog_model::{ClusterMap, NodeInfo};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorConfig {
    /// Directory for the persisted cluster maps.
    #[arg(long, env = "SHEEP_COORDINATOR_DIR")]
    pub dir: PathBuf,
    /// Address to serve the coordinator API on.
    #[arg(
        long,
        env = "SHEEP_COORDINATOR_LISTEN",
        default_value = "127.0.0.1:6999"
    )]
    pub listen: SocketAddr,
    /// A node silent for this long is removed from the map (e.g. 10s, 3s).
    #[arg(long, env = "SHEEP_FAILURE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub failure_timeout: Duration,
}

struct State {
    membership: Membership,
    map: ClusterMap,
    history: BTreeMap<u64, ClusterMap>,
    heartbeats: BTreeMap<String, Heartbeat>,
    recovered: HashMap<String, u64>,
    /// Named locks: holder and expiry in ms.
    locks: HashMap<String, (String, u64)>,
    /// Vids of deleted volumes, never to be used again; persisted in `retired_file`.
    retired: BTreeSet<u32>,
    retired_file: PathBuf,
    started: Instant,
    dir: PathBuf,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Applies the membership function; persists and records a new map.
    fn step(&mut self) {
        let Some(next) = self
            .membership
            .next_map(&self.map, &self.heartbeats, self.now_ms())
        else {
            return;
        };
        if let Err(e) = save_map(&self.dir, &next) {
            tracing::error!(epoch = next.epoch, error = %e, "cannot persist the new map; keeping the old one");
            return;
        }
        let ids: Vec<&str> = next.nodes.iter().map(|n| n.id.as_str()).collect();
        tracing::info!(epoch = next.epoch, nodes = ?ids, "new cluster map");
        self.history.insert(next.epoch, next.clone());
        self.map = next;
    }

    fn all_recovered(&self) -> bool {
        let epoch = self.map.epoch;
        self.map
            .nodes
            .iter()
            .all(|n| self.recovered.get(&n.id).is_some_and(|&e| e >= epoch))
    }
}

pub struct Coordinator {
    state: Arc<Mutex<State>>,
}

/// Runs the coordinator until SIGTERM or SIGINT.
pub async fn run(config: CoordinatorConfig) -> anyhow::Result<()> {
    let maps = config.dir.join("maps");
    std::fs::create_dir_all(&maps).with_context(|| format!("cannot create {}", maps.display()))?;
    let history = load_history(&maps).context("cannot read the persisted maps")?;
    let map = history
        .values()
        .next_back()
        .cloned()
        .unwrap_or_else(|| ClusterMap::new(0, vec![]));
    let started = Instant::now();
    let membership = Membership {
        failure_timeout_ms: config.failure_timeout.as_millis() as u64,
    };
    // Known nodes get one failure timeout to come back before they are removed.
    let heartbeats = map
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.clone(),
                Heartbeat {
                    node: n.clone(),
                    at_ms: 0,
                },
            )
        })
        .collect();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), epoch = map.epoch, listen = %config.listen, "coordinator starting");
    let retired_file = config.dir.join("retired-vids.json");
    let retired = load_retired(&retired_file)?;
    let state = State {
        membership,
        map,
        history,
        heartbeats,
        recovered: HashMap::new(),
        locks: HashMap::new(),
        retired,
        retired_file,
        started,
        dir: maps,
    };
    let state = Arc::new(Mutex::new(state));
    let ticker = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ticker.lock().unwrap().step();
        }
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the coordinator", config.listen))?;
    tonic::transport::Server::builder()
        .add_service(CoordinatorServiceServer::new(Coordinator { state }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            crate::daemon::shutdown_signal(),
        )
        .await
        .context("coordinator gRPC server failed")
}

#[tonic::async_trait]
impl CoordinatorService for Coordinator {
    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let node: NodeInfo = req
            .node
            .ok_or_else(|| Status::invalid_argument("heartbeat without a node"))?
            .into();
        if node.id.is_empty() {
            return Err(Status::invalid_argument("heartbeat with an empty node id"));
        }
        let mut state = self.state.lock().unwrap();
        let at_ms = state.now_ms();
        state.recovered.insert(node.id.clone(), req.recovered_epoch);
        state
            .heartbeats
            .insert(node.id.clone(), Heartbeat { node, at_ms });
        state.step();
        Ok(Response::new(HeartbeatResponse {
            map: Some(ClusterMapMessage::from(&state.map)),
            all_recovered: state.all_recovered(),
            failure_timeout_ms: state.membership.failure_timeout_ms,
            retired_vids: state.retired.iter().copied().collect(),
        }))
    }

    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        if req.holder.is_empty() {
            return Err(Status::invalid_argument("a lock needs a holder"));
        }
        let mut state = self.state.lock().unwrap();
        let now = state.now_ms();
        let until = now + req.ttl_ms.clamp(1_000, 120_000);
        let free = match state.locks.get(&req.name) {
            Some((holder, expiry)) => holder == &req.holder || *expiry <= now,
            None => true,
        };
        if free {
            state.locks.insert(req.name, (req.holder, until));
            return Ok(Response::new(LockResponse {
                granted: true,
                holder: String::new(),
                retired_vids: state.retired.iter().copied().collect(),
            }));
        }
        let holder = state.locks[&req.name].0.clone();
        Ok(Response::new(LockResponse {
            granted: false,
            holder,
            retired_vids: Vec::new(),
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let req = req.into_inner();
        let mut state = self.state.lock().unwrap();
        if state
            .locks
            .get(&req.name)
            .is_some_and(|(holder, _)| holder == &req.holder)
        {
            state.locks.remove(&req.name);
        }
        Ok(Response::new(UnlockResponse {}))
    }

    async fn retire_vids(
        &self,
        req: Request<RetireVidsRequest>,
    ) -> Result<Response<RetireVidsResponse>, Status> {
        let vids = req.into_inner().vids;
        let mut state = self.state.lock().unwrap();
        let mut next = state.retired.clone();
        next.extend(vids.iter().copied());
        if next.len() != state.retired.len() {
            save_retired(&state.retired_file, &next).map_err(|e| {
                Status::unavailable(format!("cannot persist the retired vids: {e}"))
            })?;
            tracing::info!(vids = ?vids, total = next.len(), "retired vids of deleted volumes");
            state.retired = next;
        }
        Ok(Response::new(RetireVidsResponse {}))
    }

    async fn get_map_at(
        &self,
        req: Request<GetMapAtRequest>,
    ) -> Result<Response<ClusterMapMessage>, Status> {
        let epoch = req.into_inner().epoch;
        let state = self.state.lock().unwrap();
        let map = if epoch == 0 {
            Some(&state.map)
        } else {
            state.history.get(&epoch)
        };
        map.map(|m| Response::new(ClusterMapMessage::from(m)))
            .ok_or_else(|| Status::not_found(format!("no map at epoch {epoch}")))
    }
}

fn load_retired(path: &std::path::Path) -> anyhow::Result<BTreeSet<u32>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON list of vids", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the set to a temporary file, syncs it and renames it over the old one.
fn save_retired(path: &std::path::Path, retired: &BTreeSet<u32>) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(retired).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
