//! Write freezes: how a snapshot, rollback or delete stops every gateway of the cluster from
//! writing to a volume while its inode changes, and tells each what replaced the volume.
//!
//! Every write and zero of a working volume holds its vid's gate shared while it runs. A
//! freeze takes the gate exclusively: it waits until the writes in flight on this node have
//! finished (and were acknowledged or failed), then holds new ones back. The thaw records what
//! became of the vid and opens the gate; the held writes see the change and move to the new
//! working vid. A freeze whose thaw never comes (its gateway died) opens by itself after its
//! time limit and marks the vid for a fresh look-up.

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
    held: Option<(u64, OwnedRwLockWriteGuard<()>)>,
    change: Option<Change>,
}

/// The gates of the volumes this node writes to.
#[derive(Default)]
pub struct Freezer {
    gates: Mutex<HashMap<u32, Gate>>,
    tokens: std::sync::atomic::AtomicU64,
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

    /// Freezes `vid`: returns once no write to it is in flight on this node; new writes wait
    /// until [`Freezer::thaw`] or until `ttl` has passed.
    pub async fn freeze(self: &Arc<Self>, vid: u32, ttl: Duration) {
        let token = self
            .tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lock = {
            let mut gates = self.gates.lock().unwrap();
            let gate = gates.entry(vid).or_default();
            if let Some((held, _)) = &mut gate.held {
                // A freeze whose thaw never came (only one metadata operation runs at a time).
                *held = token;
                None
            } else {
                Some(gate.lock.clone())
            }
        };
        if let Some(lock) = lock {
            let guard = lock.write_owned().await;
            let mut gates = self.gates.lock().unwrap();
            let gate = gates.entry(vid).or_default();
            gate.held = Some((token, guard));
            gate.change = None;
        }
        self.expire(vid, token, ttl);
    }

    /// Extends the freeze of `vid` by `ttl` if it is still held (the operation that froze it
    /// runs long); returns whether it was. Never freezes a volume that is not frozen.
    pub fn renew(self: &Arc<Self>, vid: u32, ttl: Duration) -> bool {
        let token = self
            .tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut gates = self.gates.lock().unwrap();
            let Some((held, _)) = gates.get_mut(&vid).and_then(|g| g.held.as_mut()) else {
                return false;
            };
            *held = token;
        }
        self.expire(vid, token, ttl);
        true
    }

    /// Opens the gate of `vid` after `ttl` unless the freeze was thawed or renewed since.
    fn expire(self: &Arc<Self>, vid: u32, token: u64, ttl: Duration) {
        let freezer = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut gates = freezer.gates.lock().unwrap();
            if let Some(gate) = gates.get_mut(&vid)
                && gate.held.as_ref().is_some_and(|(t, _)| *t == token)
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

    /// Lets writes to `vid` go on, recording what became of it (`None`: nothing, the operation
    /// failed or did not change the vid).
    pub fn thaw(&self, vid: u32, change: Option<Change>) {
        let mut gates = self.gates.lock().unwrap();
        let gate = gates.entry(vid).or_default();
        gate.change = change;
        gate.held = None;
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
        let freeze = tokio::spawn(async move { f.freeze(7, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !freeze.is_finished(),
            "the freeze waits for the write in flight"
        );
        drop(write);
        freeze.await.unwrap();
        let f = freezer.clone();
        let held = tokio::spawn(async move { f.enter(7).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "a new write waits for the thaw");
        freezer.thaw(7, Some(Change::Replaced(8)));
        assert_eq!(held.await.unwrap(), Err(Change::Replaced(8)));
        assert!(freezer.enter(8).await.is_ok());
    }

    #[tokio::test]
    async fn a_freeze_never_thawed_expires() {
        let freezer = Arc::new(Freezer::default());
        freezer.freeze(3, Duration::from_millis(100)).await;
        assert_eq!(freezer.enter(3).await.map(drop), Err(Change::Unknown));
        freezer.clear(3);
        assert!(freezer.enter(3).await.is_ok());
    }

    #[tokio::test]
    async fn a_renewed_freeze_outlives_its_first_time_limit_and_a_late_renewal_freezes_nothing() {
        let freezer = Arc::new(Freezer::default());
        let ttl = Duration::from_millis(300);
        freezer.freeze(4, ttl).await;
        for _ in 0..4 {
            tokio::time::sleep(ttl / 3).await;
            assert!(freezer.renew(4, ttl), "the freeze is still held");
        }
        let f = freezer.clone();
        let held = tokio::spawn(async move { f.enter(4).await.map(drop) });
        tokio::time::sleep(ttl / 2).await;
        assert!(
            !held.is_finished(),
            "writes still wait, past the first time limit"
        );
        freezer.thaw(4, None);
        assert_eq!(held.await.unwrap(), Ok(()));
        assert!(
            !freezer.renew(4, ttl),
            "a renewal after the thaw holds nothing"
        );
        let write = tokio::time::timeout(Duration::from_secs(1), freezer.enter(4)).await;
        assert!(
            matches!(write, Ok(Ok(_))),
            "a late renewal must not freeze the volume"
        );
    }
}
