//! At most a few API queries of one owner run at once, so that one owner
//! cannot take every connection of the query pool while the others wait.
//! The owner is the caller's `x-iot-owner` scope (`*` for the platform's
//! own callers). A query past the limit waits for one of its owner's to
//! end, at most as long as a query waits for a connection; then it is
//! refused with RESOURCE_EXHAUSTED, so the caller learns to back off while
//! a dashboard's handful of parallel queries simply queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Status};

type Owners = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

#[derive(Clone)]
pub struct OwnerQueries {
    per_owner: usize,
    wait: Duration,
    owners: Owners,
}

/// One admitted query; its owner's slot frees when it is dropped.
pub struct Permit {
    /// The caller's scope: the one owner whose devices it may read, or
    /// `None` for the platform (every owner's).
    pub scope: Option<uuid::Uuid>,
    owner: String,
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    owners: Owners,
}

impl OwnerQueries {
    pub fn new(per_owner: usize, wait: Duration) -> Self {
        Self {
            per_owner,
            wait,
            owners: Arc::default(),
        }
    }

    /// Admits `request`'s query once its owner has fewer than `per_owner`
    /// running, waiting at most `wait`. Refused as `iot_proto::scope_of`
    /// refuses a caller without a scope or beyond its rights.
    pub async fn admit<T>(&self, request: &Request<T>) -> Result<Permit, Status> {
        let scope = iot_proto::scope_of(request)?;
        let owner = scope.map_or_else(|| "*".to_owned(), |o| o.to_string());
        let slots = self
            .owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(owner.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_owner)))
            .clone();
        let mut admitted = Permit {
            scope,
            owner,
            slots: slots.clone(),
            permit: None,
            owners: self.owners.clone(),
        };
        match tokio::time::timeout(self.wait, slots.acquire_owned()).await {
            Ok(Ok(p)) => {
                admitted.permit = Some(p);
                Ok(admitted)
            }
            _ => Err(Status::resource_exhausted(format!(
                "{} queries of this owner are running, the most at once (queries.per_owner), \
                 and none ended within {} ms: retry later",
                self.per_owner,
                self.wait.as_millis()
            ))),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget an owner nobody else holds or waits for (the map's Arc
        // and this one are the only two).
        if Arc::strong_count(&self.slots) == 2 {
            owners.remove(&self.owner);
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

    #[tokio::test]
    async fn an_owner_past_its_limit_waits_then_is_refused_and_others_are_not() {
        let q = OwnerQueries::new(2, Duration::from_millis(300));
        let a = "7a1c3a52-1d8e-4a59-9f43-0f3b8f8b1b01";
        let b = "7a1c3a52-1d8e-4a59-9f43-0f3b8f8b1b02";
        let first = q.admit(&of(a)).await.unwrap();
        let _second = q.admit(&of(a)).await.unwrap();
        let refused = q.admit(&of(a)).await.err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("queries.per_owner"));
        let _other = q.admit(&of(b)).await.unwrap();
        // A waiting query gets the slot a finished one frees.
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.admit(&of(a)).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(q.owners.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn owners_with_nothing_running_are_forgotten() {
        let q = OwnerQueries::new(2, Duration::from_secs(2));
        drop(q.admit(&of("*")).await.unwrap());
        assert!(q.owners.lock().unwrap().is_empty());
    }
}
