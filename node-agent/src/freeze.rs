//! Write freezes: how a snapshot, rollback or delete stops every gateway of the cluster from
//! writing to a volume while its inode changes, and tells each what replaced the volume.
//!
//! Every read, write and zero of a working volume holds its vid's gate shared while it runs.
//! A freeze takes the gate exclusively: it waits until the requests in flight on this node
//! have finished (and were acknowledged or failed), then holds new ones back. The thaw records
//! what became of the vid and opens the gate; the held requests see the change and move to
//! the new working vid (a read held here must not read the old vid: a gateway thawed sooner
//! may already have acknowledged writes to the new one). A freeze whose thaw never comes (its
//! gateway died) opens by itself after its time limit and marks the vid for a fresh look-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// What happened to a frozen volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The volume now writes to this vid (a snapshot or rollback committed).
    Replaced(u32),
    /// The volume was deleted.
    Deleted,
    /// The freeze timed out: look the volume up again by name.
    Unknown,
}

#[derive(Default)]
struct Gate {
    lock: Arc<RwLock<()>>,
    held: Option<Held>,
    /// The newest fence thawed: a freeze at or below it arrived after its operation ended.
    thawed: u64,
    change: Option<Change>,
}

/// A freeze in force on one vid.
struct Held {
    /// The operation's fence: the metadata lock's fencing token in the high half, so that a
    /// later operation's freeze is always greater.
    fence: u64,
    /// Tells this term of the freeze from a later renewal, for its expiry.
    term: u64,
    _guard: OwnedRwLockWriteGuard<()>,
}

/// The gates of the volumes this node writes to.
#[derive(Default)]
pub struct Freezer {
    gates: Mutex<HashMap<u32, Gate>>,
    terms: std::sync::atomic::AtomicU64,
}

/// Held by a write while it runs: the volume cannot be frozen under it.
pub type Entered = OwnedRwLockReadGuard<()>;

impl Freezer {
    /// Waits while `vid` is frozen, then keeps freezes off until the guard is dropped. Fails
    /// with what became of the volume if it is no longer the vid to write to.
    pub async fn enter(&self, vid: u32) -> Result<Entered, Change> {
        let lock = self
            .gates
            .lock()
            .unwrap()
            .entry(vid)
            .or_default()
            .lock
            .clone();
        let guard = lock.read_owned().await;
        match self.change(vid) {
            Some(change) => Err(change),
            None => Ok(guard),
        }
    }

    /// What became of `vid`, if anything.
    pub fn change(&self, vid: u32) -> Option<Change> {
        self.gates.lock().unwrap().get(&vid).and_then(|g| g.change)
    }

    /// Forgets a change once the gateway has followed it and found the vid still current.
    pub fn clear(&self, vid: u32) {
        if let Some(gate) = self.gates.lock().unwrap().get_mut(&vid) {
            gate.change = None;
        }
    }

    /// Freezes `vid` for the operation `fence`: returns once no write to it is in flight on
    /// this node; new writes wait until [`Freezer::thaw`] or until `ttl` has passed. Refuses
    /// (false) a freeze that comes too late: its operation was thawed already, or a newer
    /// operation froze the vid since. A request delayed in the network must not stop writes.
    pub async fn freeze(self: &Arc<Self>, vid: u32, fence: u64, ttl: Duration) -> bool {
        let term = self.next_term();
        let lock = {
            let mut gates = self.gates.lock().unwrap();
            let gate = gates.entry(vid).or_default();
            if fence <= gate.thawed {
                return false;
            }
            match &mut gate.held {
                Some(held) if held.fence > fence => return false,
                // The same operation again (its first answer was lost), or a freeze whose
                // thaw never came (only one metadata operation runs at a time).
                Some(held) => {
                    (held.fence, held.term) = (fence, term);
                    None
                }
                None => Some(gate.lock.clone()),
            }
        };
        if let Some(lock) = lock {
            let guard = lock.write_owned().await;
            let mut gates = self.gates.lock().unwrap();
            let gate = gates.entry(vid).or_default();
            if fence <= gate.thawed {
                // Thawed while this waited for the writes.
                return false;
            }
            gate.held = Some(Held {
                fence,
                term,
                _guard: guard,
            });
        }
        self.expire(vid, term, ttl);
        true
    }

    /// Extends the freeze of `vid` by `ttl` if operation `fence` still holds it (the
    /// operation runs long); returns whether it does. Never freezes a volume.
    pub fn renew(self: &Arc<Self>, vid: u32, fence: u64, ttl: Duration) -> bool {
        let term = self.next_term();
        {
            let mut gates = self.gates.lock().unwrap();
            let Some(held) = gates.get_mut(&vid).and_then(|g| g.held.as_mut()) else {
                return false;
            };
            if held.fence != fence {
                return false;
            }
            held.term = term;
        }
        self.expire(vid, term, ttl);
        true
    }

    fn next_term(&self) -> u64 {
        self.terms
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the gate of `vid` after `ttl` unless the freeze was thawed or renewed since.
    fn expire(self: &Arc<Self>, vid: u32, term: u64, ttl: Duration) {
        let freezer = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut gates = freezer.gates.lock().unwrap();
            if let Some(gate) = gates.get_mut(&vid)
                && gate.held.as_ref().is_some_and(|h| h.term == term)
            {
                tracing::warn!(
                    vdi.id = vid,
                    "a volume freeze was never thawed (its gateway died?); writes resume after a fresh look-up"
                );
                gate.held = None;
                gate.change = Some(Change::Unknown);
            }
        });
    }

    /// Ends operation `fence`'s freeze of `vid`, recording what became of the volume (`None`:
    /// nothing, the operation failed or did not change the vid: news of an earlier operation,
    /// such as a resize, is kept for the gateways that have not followed it yet). A late thaw
    /// of an older operation leaves a newer operation's freeze in force, and one older than
    /// the last thaw is ignored.
    pub fn thaw(&self, vid: u32, fence: u64, change: Option<Change>) {
        let mut gates = self.gates.lock().unwrap();
        let gate = gates.entry(vid).or_default();
        if fence < gate.thawed {
            return;
        }
        gate.thawed = fence;
        if change.is_some() {
            gate.change = change;
        }
        if gate.held.as_ref().is_some_and(|h| h.fence <= fence) {
            gate.held = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_freeze_waits_for_writes_in_flight_and_holds_new_ones() {
        let freezer = Arc::new(Freezer::default());
        let write = freezer.enter(7).await.unwrap();
        let f = freezer.clone();
        let freeze = tokio::spawn(async move { f.freeze(7, 1, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !freeze.is_finished(),
            "the freeze waits for the write in flight"
        );
        drop(write);
        assert!(freeze.await.unwrap());
        let f = freezer.clone();
        let held = tokio::spawn(async move { f.enter(7).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "a new write waits for the thaw");
        freezer.thaw(7, 1, Some(Change::Replaced(8)));
        assert_eq!(held.await.unwrap(), Err(Change::Replaced(8)));
        assert!(freezer.enter(8).await.is_ok());
    }

    #[tokio::test]
    async fn a_freeze_never_thawed_expires() {
        let freezer = Arc::new(Freezer::default());
        assert!(freezer.freeze(3, 1, Duration::from_millis(100)).await);
        assert_eq!(freezer.enter(3).await.map(drop), Err(Change::Unknown));
        freezer.clear(3);
        assert!(freezer.enter(3).await.is_ok());
    }

    #[tokio::test]
    async fn a_renewed_freeze_outlives_its_first_time_limit_and_a_late_renewal_freezes_nothing() {
        let freezer = Arc::new(Freezer::default());
        let ttl = Duration::from_millis(300);
        assert!(freezer.freeze(4, 1, ttl).await);
        for _ in 0..4 {
            tokio::time::sleep(ttl / 3).await;
            assert!(freezer.renew(4, 1, ttl), "the freeze is still held");
        }
        let f = freezer.clone();
        let held = tokio::spawn(async move { f.enter(4).await.map(drop) });
        tokio::time::sleep(ttl / 2).await;
        assert!(
            !held.is_finished(),
            "writes still wait, past the first time limit"
        );
        freezer.thaw(4, 1, None);
        assert_eq!(held.await.unwrap(), Ok(()));
        assert!(
            !freezer.renew(4, 1, ttl),
            "a renewal after the thaw holds nothing"
        );
        let write = tokio::time::timeout(Duration::from_secs(1), freezer.enter(4)).await;
        assert!(
            matches!(write, Ok(Ok(_))),
            "a late renewal must not freeze the volume"
        );
    }

    #[tokio::test]
    async fn a_freeze_that_arrives_after_its_thaw_freezes_nothing() {
        let freezer = Arc::new(Freezer::default());
        let ttl = Duration::from_secs(30);
        // The thaw overtook the freeze (the freeze was delayed in a partition).
        freezer.thaw(5, 9, Some(Change::Replaced(6)));
        assert!(
            !freezer.freeze(5, 9, ttl).await,
            "the late freeze is refused"
        );
        assert!(!freezer.freeze(5, 8, ttl).await, "so is an older one");
        assert_eq!(
            freezer.change(5),
            Some(Change::Replaced(6)),
            "the thaw's news is kept"
        );
        // A newer operation still freezes the vid.
        assert!(freezer.freeze(5, 10, ttl).await);
        freezer.thaw(5, 10, None);
        let write = tokio::time::timeout(Duration::from_secs(1), freezer.enter(5)).await;
        assert!(
            matches!(write, Ok(Err(Change::Replaced(6)))),
            "writes are not held after the thaws, and still learn where the volume went"
        );
    }

    #[tokio::test]
    async fn a_failed_operation_keeps_the_news_of_an_earlier_one() {
        let freezer = Arc::new(Freezer::default());
        let ttl = Duration::from_secs(30);
        // A resize: same vid, new header.
        assert!(freezer.freeze(6, 1, ttl).await);
        freezer.thaw(6, 1, Some(Change::Replaced(6)));
        // A snapshot of the same vid fails before this gateway did any I/O.
        assert!(freezer.freeze(6, 2, ttl).await);
        freezer.thaw(6, 2, None);
        assert_eq!(
            freezer.enter(6).await.map(drop),
            Err(Change::Replaced(6)),
            "the gateway still learns of the resize"
        );
    }

    #[tokio::test]
    async fn a_late_thaw_leaves_a_newer_operations_freeze_in_force() {
        let freezer = Arc::new(Freezer::default());
        let ttl = Duration::from_secs(30);
        assert!(freezer.freeze(2, 3, ttl).await);
        // Operation 3's gateway died; operation 4 froze the vid again.
        assert!(freezer.freeze(2, 4, ttl).await);
        assert!(
            !freezer.freeze(2, 3, ttl).await,
            "an older freeze is refused"
        );
        assert!(!freezer.renew(2, 3, ttl), "and its renewal");
        freezer.thaw(2, 3, None);
        let f = freezer.clone();
        let held = tokio::spawn(async move { f.enter(2).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "operation 4's freeze still holds");
        assert!(freezer.renew(2, 4, ttl));
        // The same operation's freeze again (its first answer was lost) holds too.
        assert!(freezer.freeze(2, 4, ttl).await);
        freezer.thaw(2, 4, None);
        assert_eq!(held.await.unwrap(), Ok(()));
    }
}
