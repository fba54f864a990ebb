//! Following an append-only log table with a `BIGSERIAL` sequence (device
//! changes, alert events) for a stream that a client can resume.
//!
//! Sequence numbers are taken at insert but become visible at commit, so a
//! later number can show up before an earlier one. The resume point passes
//! a missing number only once a later entry is older than `GAP_GRACE_SECS`
//! (by then the missing one rolled back); entries past a gap are delivered
//! at once and not again.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

/// How long a gap in the sequence may wait for its transaction.
pub const GAP_GRACE_SECS: f64 = 2.0;

/// One log entry as read: its sequence number, its age in seconds, and the
/// item to deliver.
pub struct Entry<T> {
    pub seq: i64,
    pub age_secs: f64,
    pub item: T,
}

/// Polls `fetch(after)` every `every` from `from` on, and hands each new
/// item to `deliver` with the current resume point; stops when `deliver`
/// returns false. Fetch errors are logged and retried.
pub async fn tail<T, E, F, Fut, D, DFut>(from: i64, every: Duration, mut fetch: F, mut deliver: D)
where
    E: std::fmt::Display,
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<Vec<Entry<T>>, E>>,
    D: FnMut(T, i64) -> DFut,
    DFut: Future<Output = bool>,
{
    let mut resume = from;
    // Delivered, but not yet passed by `resume`.
    let mut sent = BTreeSet::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let entries = match fetch(resume).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the log");
                continue;
            }
        };
        let mut contiguous = true;
        for e in entries {
            if contiguous && (e.seq == resume + 1 || e.age_secs > GAP_GRACE_SECS) {
                resume = e.seq;
            } else {
                contiguous = false;
            }
            if sent.insert(e.seq) && !deliver(e.item, resume).await {
                return;
            }
        }
        sent.retain(|seq| *seq > resume);
    }
}
