//! At most a few API queries of one owner run at once, so that one owner
//! cannot take every connection of the query pool while the others wait.
//! The owner is the caller's `x-iot-owner` scope (`*` for the platform's
//! own callers); a query past the limit is refused with RESOURCE_EXHAUSTED
//! at once rather than queued, so the caller learns to back off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::{Request, Status};

#[derive(Clone)]
pub struct OwnerQueries {
    per_owner: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// One admitted query; its owner's count drops when it is dropped.
pub struct Permit {
    owner: String,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl OwnerQueries {
    pub fn new(per_owner: usize) -> Self {
        Self {
            per_owner,
            running: Arc::default(),
        }
    }

    /// Admits `request`'s query, or refuses it while its owner has
    /// `per_owner` queries running.
    pub fn admit<T>(&self, request: &Request<T>) -> Result<Permit, Status> {
        let owner = request
            .metadata()
            .get(iot_proto::SCOPE_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let n = running.entry(owner.clone()).or_default();
        if *n >= self.per_owner {
            return Err(Status::resource_exhausted(format!(
                "{} queries of this owner are running, the most at once (queries.per_owner): retry when one ends",
                self.per_owner
            )));
        }
        *n += 1;
        Ok(Permit {
            owner,
            running: self.running.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(owner: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(iot_proto::SCOPE_METADATA, owner.parse().unwrap());
        r
    }

    #[test]
    fn an_owner_past_its_limit_is_refused_and_others_are_not() {
        let q = OwnerQueries::new(2);
        let a = "7a1c3a52-1d8e-4a59-9f43-0f3b8f8b1b01";
        let b = "7a1c3a52-1d8e-4a59-9f43-0f3b8f8b1b02";
        let first = q.admit(&of(a)).unwrap();
        let _second = q.admit(&of(a)).unwrap();
        let refused = q.admit(&of(a)).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("queries.per_owner"));
        let _other = q.admit(&of(b)).unwrap();
        drop(first);
        let _again = q.admit(&of(a)).unwrap();
        assert!(q.admit(&of(a)).is_err());
    }
}
