//! A bandwidth limit for recovery traffic.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    bytes_per_second: u64,
    next: Mutex<Instant>,
}

impl Throttle {
    /// A limit of `bytes_per_second`; 0 means none.
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more may be moved.
    pub async fn take(&self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let start = {
            let mut next = self.next.lock().unwrap();
            let start = (*next).max(Instant::now());
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}
