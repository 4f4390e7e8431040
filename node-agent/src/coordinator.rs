//! The membership coordinator of a cluster without Kubernetes (the embedded default).
//!
//! It runs [`sheepdog_model::membership`] over the nodes' heartbeats: the same pure function
//! the operator runs on Kubernetes. Being a single process, it is the one writer of epochs.
//! Maps are persisted under `DIR/maps/`, so a restarted coordinator continues from the last
//! epoch and gives the known nodes one failure timeout to come back before removing any.
//! The data path does not go through it: if it stops, I/O goes on at the current epoch (as
//! long as the node leases last) and membership changes wait until it is back.

use crate::cluster::{load_history, save_map, write_durably};
use crate::leases::Leases;
use anyhow::Context;
use sheepdog_api::v1::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use sheepdog_api::v1::{
    ClusterMapMessage, GetMapAtRequest, HeartbeatRequest, HeartbeatResponse, LockRequest,
    LockResponse, RetireVidsRequest, RetireVidsResponse, SealVidsRequest, SealVidsResponse,
    UnlockRequest, UnlockResponse,
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

/// How long a coordinator without maps listens to heartbeats before it publishes one.
const QUIET_MS: u64 = 1_500;

struct State {
    membership: Membership,
    map: ClusterMap,
    history: BTreeMap<u64, ClusterMap>,
    heartbeats: BTreeMap<String, Heartbeat>,
    recovered: HashMap<String, u64>,
    /// Named locks (the metadata lock, volume attachments).
    locks: Leases,
    /// The newest fencing token issued or reported by a node (see [`next_token`]).
    fence: u32,
    /// Whether this coordinator restarted with maps of an earlier run: its locks are gone,
    /// so for half a lock's time limit it grants only renewals (see `LockRequest.renewal`).
    restarted: bool,
    /// Whether it started with no maps at all: a new cluster, or one whose coordinator lost
    /// its directory (then the nodes report epochs, and it waits as a restarted one).
    started_without_maps: bool,
    /// When a node first reported an epoch this coordinator never published (it lost its
    /// directory): lock holders from before get half a time limit to renew from then.
    foreign_epoch_at_ms: Option<u64>,
    /// Vids of deleted volumes, never to be used again; persisted.
    retired: VidFile,
    /// Vids that stopped being working volumes: their data never changes again; persisted.
    sealed: VidFile,
    /// The newest epoch any node reported: no new map is published at or below it, so an
    /// epoch is never given to two maps even if this coordinator lost its directory.
    reported_epoch: u64,
    /// Until then (ms) no map is published: a coordinator that lost its maps first hears
    /// every node's epoch.
    quiet_until_ms: u64,
    started: Instant,
    dir: PathBuf,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Refuses a commit of a metadata operation whose lock was granted again since.
    fn admit_token(&self, token: u32) -> Result<(), Status> {
        if token != 0 && token < self.fence {
            return Err(Status::aborted(format!(
                "fencing token {token} is older than {}: another gateway took the metadata lock since; the operation stopped, run it again",
                self.fence
            )));
        }
        Ok(())
    }

    /// Applies the membership function; persists and records a new map.
    fn step(&mut self) {
        if self.now_ms() < self.quiet_until_ms {
            return;
        }
        let mut base = self.map.clone();
        base.epoch = base.epoch.max(self.reported_epoch);
        let next = match self
            .membership
            .next_map(&base, &self.heartbeats, self.now_ms())
        {
            Some(next) => next,
            // A node has an epoch this coordinator never published (it lost its maps): the
            // same members get a map past it, so no epoch names two maps.
            None if self.reported_epoch > self.map.epoch && self.map.epoch > 0 => {
                ClusterMap::new(self.reported_epoch + 1, self.map.nodes.clone())
            }
            None => return,
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
    crate::store::create_dir_durably(&maps)
        .with_context(|| format!("cannot create {}", maps.display()))?;
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
    let retired = VidFile::open(config.dir.join("retired-vids.json"))?;
    let sealed = VidFile::open(config.dir.join("sealed-vids.json"))?;
    // Without any map of its own, it first listens a few heartbeats long: the nodes report
    // the epochs they have, and the next map goes past all of them. A node heard later with
    // a newer epoch gets a map past its own at its first heartbeat (see `State::step`).
    let quiet_until_ms = if history.is_empty() {
        tracing::warn!(
            "no cluster maps in the coordinator's directory: listening to the nodes before publishing any"
        );
        QUIET_MS.min(membership.failure_timeout_ms)
    } else {
        0
    };
    let restarted = !history.is_empty();
    let state = State {
        membership,
        map,
        history,
        heartbeats,
        recovered: HashMap::new(),
        locks: Leases::default(),
        fence: 0,
        restarted,
        started_without_maps: !restarted,
        foreign_epoch_at_ms: None,
        retired,
        sealed,
        reported_epoch: 0,
        quiet_until_ms,
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

/// The fencing token after `newest`: above it, and at least the clock in seconds, so a
/// coordinator that restarted and has not yet heard any node's newest token still issues newer
/// ones (tokens run ahead of the clock only past one grant a second).
fn next_token(newest: u32) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    newest.saturating_add(1).max(now)
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
        state.reported_epoch = state.reported_epoch.max(req.epoch);
        if req.epoch > state.map.epoch && state.foreign_epoch_at_ms.is_none() {
            tracing::warn!(node = %node.id, epoch = req.epoch, "a node has an epoch this coordinator never published: it lost its maps; granting only lock renewals for a while");
            state.foreign_epoch_at_ms = Some(at_ms);
        }
        state.fence = state.fence.max(req.fence);
        state.recovered.insert(node.id.clone(), req.recovered_epoch);
        state
            .heartbeats
            .insert(node.id.clone(), Heartbeat { node, at_ms });
        state.step();
        Ok(Response::new(HeartbeatResponse {
            map: Some(ClusterMapMessage::from(&state.map)),
            all_recovered: state.all_recovered(),
            failure_timeout_ms: state.membership.failure_timeout_ms,
            retired_vids: state.retired.list(),
            sealed_vids: state.sealed.list(),
            fence: state.fence,
        }))
    }

    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        if req.holder.is_empty() {
            return Err(Status::invalid_argument("a lock needs a holder"));
        }
        let mut state = self.state.lock().unwrap();
        let now = state.now_ms();
        let ttl = req.ttl_ms.clamp(1_000, 120_000);
        let until = now + ttl;
        // Holders renew every third of their time limit: half of it lets every live one
        // renew before a newcomer can take its lock. A coordinator that started without maps
        // first listens (its quiet time); a node that reports an epoch it never published
        // means it lost its directory and holders may be out there: from then on they get
        // the same half time limit.
        let window = if state.restarted {
            ttl / 2
        } else if state.started_without_maps && now < state.quiet_until_ms {
            state.quiet_until_ms
        } else {
            state.foreign_epoch_at_ms.map_or(0, |at| at + ttl / 2)
        };
        if !req.renewal && now < window {
            return Ok(Response::new(LockResponse {
                granted: false,
                holder: format!(
                    "nobody known yet: the coordinator restarted {} ms ago and lets holders renew first",
                    now
                ),
                retired_vids: Vec::new(),
                sealed_vids: Vec::new(),
                token: 0,
                restarting: true,
            }));
        }
        let granted = state
            .locks
            .acquire(&req.name, &req.holder, req.shared, now, until);
        Ok(Response::new(match granted {
            Ok(new) => {
                let token = match (new, req.fenced, req.renewal) {
                    // A holder renewing after a restart keeps its token while it is newest.
                    (true, true, true) if req.token >= state.fence => {
                        state.fence = req.token;
                        req.token
                    }
                    // A new hold, or a holder asking anew while its earlier hold is still
                    // listed (that operation was cancelled, or its release was lost): a new
                    // token, which also fences the earlier operation's writes.
                    (true, true, _) | (false, true, false) => {
                        state.fence = next_token(state.fence);
                        state.fence
                    }
                    // A renewal: the holder keeps its token.
                    _ => 0,
                };
                LockResponse {
                    granted: true,
                    holder: String::new(),
                    retired_vids: state.retired.list(),
                    sealed_vids: state.sealed.list(),
                    token,
                    restarting: false,
                }
            }
            Err(holder) => LockResponse {
                granted: false,
                holder,
                retired_vids: Vec::new(),
                sealed_vids: Vec::new(),
                token: 0,
                restarting: false,
            },
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let req = req.into_inner();
        if req.holder_prefix && req.holder.is_empty() {
            return Err(Status::invalid_argument(
                "releasing by holder prefix needs a non-empty prefix",
            ));
        }
        let mut state = self.state.lock().unwrap();
        if req.holder_prefix {
            state.locks.release_holders(&req.holder);
        } else {
            state.locks.release(&req.name, &req.holder);
        }
        Ok(Response::new(UnlockResponse {}))
    }

    async fn retire_vids(
        &self,
        req: Request<RetireVidsRequest>,
    ) -> Result<Response<RetireVidsResponse>, Status> {
        let req = req.into_inner();
        let mut state = self.state.lock().unwrap();
        state.admit_token(req.token)?;
        let vids = req.vids;
        if state.retired.add(&vids)? {
            tracing::info!(vids = ?vids, "retired vids of deleted volumes");
        }
        Ok(Response::new(RetireVidsResponse {}))
    }

    async fn seal_vids(
        &self,
        req: Request<SealVidsRequest>,
    ) -> Result<Response<SealVidsResponse>, Status> {
        let req = req.into_inner();
        let mut state = self.state.lock().unwrap();
        state.admit_token(req.token)?;
        let vids = req.vids;
        if state.sealed.add(&vids)? {
            tracing::info!(vids = ?vids, "sealed vids that stopped being working volumes");
        }
        Ok(Response::new(SealVidsResponse {}))
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

/// A set of vids persisted as a JSON list, written durably before it changes in memory.
struct VidFile {
    path: PathBuf,
    vids: BTreeSet<u32>,
}

impl VidFile {
    fn open(path: PathBuf) -> anyhow::Result<Self> {
        let vids = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a JSON list of vids", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, vids })
    }

    fn list(&self) -> Vec<u32> {
        self.vids.iter().copied().collect()
    }

    /// Adds `vids`, durably; whether the set grew.
    fn add(&mut self, vids: &[u32]) -> Result<bool, Status> {
        let mut next = self.vids.clone();
        next.extend(vids.iter().copied());
        if next.len() == self.vids.len() {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(&next).expect("a set of numbers serializes");
        write_durably(&self.path, &bytes).map_err(|e| {
            Status::unavailable(format!("cannot persist {}: {e}", self.path.display()))
        })?;
        self.vids = next;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::next_token;

    #[test]
    fn fencing_tokens_only_grow_and_keep_up_with_the_clock() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        assert!(
            next_token(0) >= now,
            "a restarted coordinator starts near the clock"
        );
        assert_eq!(next_token(now + 100), now + 101);
        assert_eq!(next_token(u32::MAX), u32::MAX);
    }
}

/// An in-process coordinator for the unit tests of its clients (metadata lock, attachments).
#[cfg(test)]
pub mod testing {
    use super::CoordinatorConfig;
    use sheepdog_api::v1::UnlockRequest;
    use sheepdog_api::v1::coordinator_service_client::CoordinatorServiceClient;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;
    use tonic::transport::Channel;

    pub struct Running {
        pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
        pub client: CoordinatorServiceClient<Channel>,
    }

    /// A coordinator on `listen` keeping its state in `dir`, answering.
    pub async fn coordinator(dir: &Path, listen: SocketAddr) -> Running {
        let config = CoordinatorConfig {
            dir: dir.to_owned(),
            listen,
            failure_timeout: Duration::from_secs(3),
        };
        let task = tokio::spawn(super::run(config));
        let addr = listen.to_string();
        let client = crate::gateway::metadata_lock::coordinator_client(Some(&addr)).unwrap();
        for _ in 0..100 {
            let probe = UnlockRequest {
                name: "probe".into(),
                holder: "probe".into(),
                holder_prefix: false,
            };
            if client.clone().unlock(probe).await.is_ok() {
                return Running { task, client };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the coordinator on {listen} does not answer");
    }

    /// Marks `dir` as the directory of a coordinator that ran before: it starts as restarted.
    pub fn ran_before(dir: &Path) {
        let maps = dir.join("maps");
        std::fs::create_dir_all(&maps).unwrap();
        let map = sheepdog_model::ClusterMap::new(1, vec![]);
        crate::cluster::save_map(&maps, &map).unwrap();
    }

    pub fn free_port() -> SocketAddr {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }
}
