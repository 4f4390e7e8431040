//! One call at a time per volume or snapshot: a second call on the same id while the first
//! runs is answered Aborted, as the CSI spec asks, and the CO retries it later.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tonic::Status;

#[derive(Default, Clone)]
pub struct InFlight {
    ids: Arc<Mutex<HashSet<String>>>,
}

/// Held while a call on one id runs.
pub struct Running {
    ids: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl InFlight {
    pub fn start(&self, id: &str) -> Result<Running, Status> {
        if !self.ids.lock().unwrap().insert(id.to_owned()) {
            return Err(Status::aborted(format!(
                "an operation on {id:?} is already in progress; try again when it has finished"
            )));
        }
        Ok(Running {
            ids: self.ids.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ids.lock().unwrap().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_call_on_one_id_is_aborted_until_the_first_ends() {
        let inflight = InFlight::default();
        let first = inflight.start("vm1").unwrap();
        assert_eq!(
            inflight.start("vm1").err().unwrap().code(),
            tonic::Code::Aborted
        );
        let _other = inflight.start("vm2").unwrap();
        drop(first);
        assert!(inflight.start("vm1").is_ok());
    }
}
