//! This node's view of the cluster: the current map and ring, past maps, and the lease.
//!
//! Maps only move forward (a map is adopted only if its epoch is newer). Every adopted map is
//! persisted under `DIR/maps/<epoch>.json`: recovery needs to know who held what before, and
//! a restarted node needs to know the last epoch it was part of.
//!
//! The lease fences a node cut off from the coordinator: it is renewed by each successful
//! heartbeat for less than the failure timeout, so a node stops serving I/O before the rest of
//! the cluster removes it and moves its objects elsewhere. Without a coordinator (a stand-alone
//! node) there is no lease to lose.

pub mod heartbeat;

use sheepdog_model::{ClusterMap, Ring};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::watch;

/// One epoch's map and its ring.
#[derive(Debug)]
pub struct Epoch {
    pub map: ClusterMap,
    pub ring: Ring,
}

impl Epoch {
    pub fn new(map: ClusterMap) -> Self {
        let ring = Ring::new(&map);
        Self { map, ring }
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// Nodes holding `oid` at this epoch, primary first.
    pub fn replicas(
        &self,
        oid: sheepdog_model::ObjectId,
        copies: u8,
    ) -> Vec<&sheepdog_model::NodeInfo> {
        let set = self.ring.replicas(oid, usize::from(copies));
        set.into_iter().map(|i| &self.map.nodes[i]).collect()
    }
}

/// A set of vids that only grows, read far more often than written.
#[derive(Default)]
pub struct VidSet(RwLock<Arc<std::collections::HashSet<u32>>>);

impl VidSet {
    pub fn add(&self, vids: &[u32]) {
        if vids.iter().all(|v| self.contains(*v)) {
            return;
        }
        let mut set = self.0.write().unwrap();
        let mut next = (**set).clone();
        next.extend(vids.iter().copied());
        *set = Arc::new(next);
    }

    pub fn contains(&self, vid: u32) -> bool {
        self.0.read().unwrap().contains(&vid)
    }

    /// How many vids are in the set (it only grows).
    pub fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct ClusterView {
    self_id: String,
    dir: PathBuf,
    current: RwLock<Arc<Epoch>>,
    history: Mutex<BTreeMap<u64, ClusterMap>>,
    changed: watch::Sender<u64>,
    /// Lease expiry, in ms since `started`; u64::MAX: no lease needed (stand-alone).
    lease_until_ms: AtomicU64,
    started: Instant,
    /// Whether every node of the current map has recovered the current epoch.
    all_recovered: AtomicBool,
    /// Nodes that left the map since this process started, and when this node saw it.
    departed: Mutex<HashMap<String, Instant>>,
    /// Vids of deleted volumes, from the coordinator: their objects are garbage everywhere.
    pub retired: VidSet,
    /// Vids that stopped being a working volume (snapshots, rolled back, deleted): nothing may
    /// change their data objects any more, except garbage collection.
    pub sealed: VidSet,
    /// The newest fencing token seen, from a commit write or from the coordinator: commit
    /// writes with older ones are refused (see `Local::change`).
    fence: std::sync::atomic::AtomicU32,
}

impl ClusterView {
    /// Loads the newest persisted map from `dir/maps`, or starts from `initial`.
    /// `fenced`: whether I/O needs a live lease (a node that has a coordinator).
    pub fn open(
        dir: &Path,
        self_id: String,
        initial: ClusterMap,
        fenced: bool,
    ) -> std::io::Result<Self> {
        let dir = dir.join("maps");
        crate::store::create_dir_durably(&dir)?;
        let history = load_history(&dir)?;
        let map = history.values().next_back().cloned().unwrap_or(initial);
        let (changed, _) = watch::channel(map.epoch);
        let view = Self {
            self_id,
            dir,
            current: RwLock::new(Arc::new(Epoch::new(map.clone()))),
            history: Mutex::new(history),
            changed,
            lease_until_ms: AtomicU64::new(if fenced { 0 } else { u64::MAX }),
            started: Instant::now(),
            // A stand-alone node is the whole cluster: nothing to wait for.
            all_recovered: AtomicBool::new(!fenced),
            departed: Mutex::default(),
            retired: VidSet::default(),
            sealed: VidSet::default(),
            fence: Default::default(),
        };
        view.persist(&map)?;
        Ok(view)
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// The newest fencing token seen.
    pub fn fence(&self) -> u32 {
        self.fence.load(Ordering::Acquire)
    }

    /// Admits a commit write carrying fencing token `token`: refused (`Err(newest)`) if a
    /// newer token was seen, else the token becomes the newest seen.
    pub fn admit_fence(&self, token: u32) -> Result<(), u32> {
        let newest = self.fence.fetch_max(token, Ordering::AcqRel);
        if token < newest {
            return Err(newest);
        }
        Ok(())
    }

    pub fn current(&self) -> Arc<Epoch> {
        self.current.read().unwrap().clone()
    }

    pub fn epoch(&self) -> u64 {
        self.current().epoch()
    }

    /// Notified with the epoch whenever a newer map is adopted.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The map at `epoch`, if this node knows it.
    pub fn map_at(&self, epoch: u64) -> Option<ClusterMap> {
        self.history.lock().unwrap().get(&epoch).cloned()
    }

    /// Adopts `map` if it is newer than the current one. Returns whether it was.
    pub fn adopt(&self, map: ClusterMap) -> bool {
        {
            let mut current = self.current.write().unwrap();
            if map.epoch <= current.epoch() {
                return false;
            }
            if let Err(e) = self.persist(&map) {
                tracing::error!(epoch = map.epoch, error = %e, "cannot persist the cluster map");
            }
            tracing::info!(
                epoch = map.epoch,
                nodes = ?map.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
                "adopted cluster map"
            );
            let mut departed = self.departed.lock().unwrap();
            for node in &current.map.nodes {
                if map.node(&node.id).is_none() {
                    departed.insert(node.id.clone(), Instant::now());
                }
            }
            for node in &map.nodes {
                departed.remove(&node.id);
            }
            drop(departed);
            *current = Arc::new(Epoch::new(map.clone()));
            self.all_recovered.store(false, Ordering::Release);
        }
        self.changed.send_replace(map.epoch);
        true
    }

    /// Records a past map (learnt from the coordinator) without making it current.
    pub fn remember(&self, map: ClusterMap) {
        if let Err(e) = self.persist(&map) {
            tracing::warn!(epoch = map.epoch, error = %e, "cannot persist a past cluster map");
        }
    }

    fn persist(&self, map: &ClusterMap) -> std::io::Result<()> {
        let mut history = self.history.lock().unwrap();
        if history.contains_key(&map.epoch) {
            return Ok(());
        }
        save_map(&self.dir, map)?;
        history.insert(map.epoch, map.clone());
        Ok(())
    }

    /// Extends the lease to `valid_for` after `sent`, the moment the heartbeat left.
    pub fn renew_lease(&self, sent: Instant, valid_for: std::time::Duration) {
        let until = (sent.duration_since(self.started) + valid_for).as_millis() as u64;
        self.lease_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// Whether this node may serve I/O now.
    pub fn lease_valid(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now < self.lease_until_ms.load(Ordering::Acquire)
    }

    pub fn set_all_recovered(&self, epoch: u64, all: bool) {
        if epoch == self.epoch() {
            self.all_recovered.store(all, Ordering::Release);
        }
    }

    /// A node that left the map within `grace` and has not come back, if any.
    pub fn departed_within(&self, grace: std::time::Duration) -> Option<String> {
        let departed = self.departed.lock().unwrap();
        departed
            .iter()
            .find(|(_, at)| at.elapsed() < grace)
            .map(|(id, _)| id.clone())
    }

    pub fn all_recovered(&self) -> bool {
        self.all_recovered.load(Ordering::Acquire)
    }
}

/// Reads every map persisted under `dir`.
pub fn load_history(dir: &Path) -> std::io::Result<BTreeMap<u64, ClusterMap>> {
    let mut history = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        match ClusterMap::from_json(&text) {
            Ok(map) => {
                history.insert(map.epoch, map);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "ignoring an unreadable cluster map")
            }
        }
    }
    Ok(history)
}

/// Writes `map` to `dir/<epoch>.json` atomically and durably: an epoch, once published or
/// adopted, survives a power cut.
pub fn save_map(dir: &Path, map: &ClusterMap) -> std::io::Result<()> {
    let path = dir.join(format!("{:020}.json", map.epoch));
    write_durably(&path, map.to_json().as_bytes())
}

/// Replaces `path` with `bytes`: a synced temporary file renamed over it, then the directory
/// synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod fence_tests {
    use super::*;

    #[test]
    fn commit_writes_with_an_older_fencing_token_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let map = ClusterMap::new(1, Vec::new());
        let view = ClusterView::open(dir.path(), "n0".into(), map, true).unwrap();
        assert_eq!(view.admit_fence(10), Ok(()));
        assert_eq!(view.admit_fence(10), Ok(()), "the holder's next commit");
        assert_eq!(view.admit_fence(12), Ok(()), "a newer holder");
        assert_eq!(view.admit_fence(10), Err(12), "the old holder, after it");
        assert_eq!(view.fence(), 12);
    }
}
