//! Named, time-limited leases, exclusive or shared: the coordinator's locks (the metadata lock,
//! volume attachments), and a standalone node's own.
//!
//! A lease is held by one exclusive holder or by any number of shared holders, each until
//! its own expiry; a holder renews by asking again. A holder that dies blocks nobody past its
//! expiry.

use std::collections::HashMap;

#[derive(Default)]
pub struct Leases {
    held: HashMap<String, Lease>,
}

struct Lease {
    shared: bool,
    /// Holder and the time (ms) its hold ends.
    holders: HashMap<String, u64>,
}

impl Leases {
    /// Grants or renews `name` to `holder` until `until` (ms), shared or exclusive, or
    /// returns a holder that keeps it from being granted. A sole holder may change its mode.
    /// `Ok(true)`: a new hold, `Ok(false)`: a renewal.
    pub fn acquire(
        &mut self,
        name: &str,
        holder: &str,
        shared: bool,
        now: u64,
        until: u64,
    ) -> Result<bool, String> {
        let lease = self.held.entry(name.to_owned()).or_insert_with(|| Lease {
            shared,
            holders: HashMap::new(),
        });
        lease.holders.retain(|_, expiry| *expiry > now);
        let other = lease.holders.keys().find(|h| *h != holder).cloned();
        match other {
            Some(other) if !(shared && lease.shared) => return Err(other),
            Some(_) => {}
            None => lease.shared = shared,
        }
        Ok(lease.holders.insert(holder.to_owned(), until).is_none())
    }

    /// Ends `holder`'s hold on `name`, if it has one.
    pub fn release(&mut self, name: &str, holder: &str) {
        if let Some(lease) = self.held.get_mut(name) {
            lease.holders.remove(holder);
            if lease.holders.is_empty() {
                self.held.remove(name);
            }
        }
    }

    /// Ends every hold of every holder whose name starts with `prefix`: a restarted node's
    /// holds from before its restart.
    pub fn release_holders(&mut self, prefix: &str) {
        for lease in self.held.values_mut() {
            lease
                .holders
                .retain(|holder, _| !holder.starts_with(prefix));
        }
        self.held.retain(|_, lease| !lease.holders.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_lease_has_one_holder_until_it_expires_or_is_released() {
        let mut leases = Leases::default();
        assert_eq!(leases.acquire("v", "a", false, 0, 100), Ok(true));
        assert_eq!(leases.acquire("v", "b", false, 50, 150), Err("a".into()));
        assert_eq!(leases.acquire("v", "b", true, 50, 150), Err("a".into()));
        assert_eq!(
            leases.acquire("v", "a", false, 60, 160),
            Ok(false),
            "renewal"
        );
        assert_eq!(leases.acquire("v", "b", false, 120, 220), Err("a".into()));
        assert_eq!(
            leases.acquire("v", "b", false, 160, 260),
            Ok(true),
            "expired"
        );
        leases.release("v", "b");
        assert_eq!(leases.acquire("v", "c", false, 170, 270), Ok(true));
    }

    #[test]
    fn shared_holders_exclude_exclusive_ones_and_the_reverse() {
        let mut leases = Leases::default();
        assert_eq!(leases.acquire("v", "a", true, 0, 100), Ok(true));
        assert_eq!(leases.acquire("v", "b", true, 0, 100), Ok(true));
        assert!(leases.acquire("v", "c", false, 0, 100).is_err());
        assert!(
            leases.acquire("v", "a", false, 0, 100).is_err(),
            "b shares it"
        );
        leases.release("v", "b");
        assert_eq!(
            leases.acquire("v", "a", false, 0, 100),
            Ok(false),
            "sole holder"
        );
        assert!(leases.acquire("v", "b", true, 0, 100).is_err());
        assert_eq!(
            leases.acquire("w", "b", false, 0, 100),
            Ok(true),
            "another name"
        );
    }

    #[test]
    fn a_restarted_node_drops_its_old_holds() {
        let mut leases = Leases::default();
        leases.acquire("v", "node1/7", false, 0, 100).unwrap();
        leases.acquire("w", "node1/8", true, 0, 100).unwrap();
        leases.acquire("w", "node2/1", true, 0, 100).unwrap();
        leases.release_holders("node1/");
        assert_eq!(leases.acquire("v", "node2/2", false, 1, 100), Ok(true));
        assert!(
            leases.acquire("w", "node3/1", false, 1, 100).is_err(),
            "node2 shares w"
        );
    }
}
