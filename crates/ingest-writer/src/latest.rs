//! Which series' `sensor_latest` rows a batch rewrites
//! (docs/design/latest-readings.md). A series' row is rewritten when this
//! process has not written it yet, or when the batch's newest reading of it
//! is at least [`REFRESH`] newer than what this process last wrote; readers
//! take anything newer from the raw rows. The stored time therefore trails
//! a series' newest reading by less than [`REFRESH`], and a fleet that
//! reports often rewrites each row once per [`REFRESH`] instead of once per
//! reading.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use chrono::TimeDelta;
use uuid::Uuid;

use crate::store::Row;

/// The most a series' `sensor_latest` time trails its newest stored
/// reading. The fleet counts (`fleet_stats.sql`) rely on this bound.
pub const REFRESH: TimeDelta = TimeDelta::seconds(60);

/// Series remembered before the stale ones are forgotten (about 40 bytes
/// each).
const MAX_SERIES: usize = 1_000_000;

/// A series: its device and a hash of its sensor's name (a device's own
/// sensors colliding would only delay that row's rewrite).
type Series = (Uuid, u64);

/// Per series, the reading time (µs) this process last wrote to
/// `sensor_latest`.
#[derive(Default)]
pub struct Written {
    hasher: RandomState,
    last: Mutex<HashMap<Series, i64>>,
}

impl Written {
    fn series(&self, r: &Row) -> Series {
        (r.device_id, self.hasher.hash_one(r.sensor_name.as_str()))
    }

    /// The rows of `latest` (one per series) whose `sensor_latest` row the
    /// batch rewrites.
    pub fn due<'a>(&self, latest: Vec<&'a Row>) -> Vec<&'a Row> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let refresh = REFRESH.num_microseconds().unwrap_or(i64::MAX);
        latest
            .into_iter()
            .filter(|r| match last.get(&self.series(r)) {
                None => true,
                Some(&w) => r.time.timestamp_micros() >= w.saturating_add(refresh),
            })
            .collect()
    }

    /// Records rows written by a committed transaction.
    pub fn wrote(&self, rows: &[&Row]) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for r in rows {
            let t = r.time.timestamp_micros();
            let w = last.entry(self.series(r)).or_insert(t);
            *w = (*w).max(t);
        }
        if last.len() > MAX_SERIES {
            // A forgotten series only costs one more rewrite; those last
            // written more than REFRESH ago would be rewritten next anyway.
            let fresh = chrono::Utc::now() - REFRESH;
            last.retain(|_, w| *w >= fresh.timestamp_micros());
            if last.len() > MAX_SERIES {
                last.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use rust_decimal::Decimal;

    fn row(device: u128, sensor: &str, time: DateTime<Utc>) -> Row {
        Row {
            time,
            device_id: Uuid::from_u128(device),
            sensor_name: sensor.into(),
            value: Decimal::ONE,
            unit: None,
            quality: None,
        }
    }

    #[test]
    fn a_series_is_rewritten_when_new_and_then_once_per_refresh() {
        let w = Written::default();
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let first = [row(1, "t", t0), row(1, "h", t0), row(2, "t", t0)];
        let due = w.due(first.iter().collect());
        assert_eq!(due.len(), 3, "series never written are all due");
        w.wrote(&due);

        let s = TimeDelta::seconds(1);
        let soon = [row(1, "t", t0 + REFRESH - s), row(2, "t", t0 - s)];
        assert!(
            w.due(soon.iter().collect()).is_empty(),
            "newer by less than REFRESH, or older: not due"
        );
        let later = [
            row(1, "t", t0 + REFRESH),
            row(1, "h", t0 + s),
            row(3, "t", t0),
        ];
        let due: Vec<_> = w
            .due(later.iter().collect())
            .iter()
            .map(|r| (r.device_id.as_u128(), r.sensor_name.clone()))
            .collect();
        assert_eq!(due, [(1, "t".to_string()), (3, "t".to_string())]);
    }

    #[test]
    fn an_uncommitted_write_is_not_remembered() {
        let w = Written::default();
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let r = [row(1, "t", t0)];
        assert_eq!(w.due(r.iter().collect()).len(), 1);
        // The batch failed: nothing recorded, so the retry writes it again.
        assert_eq!(w.due(r.iter().collect()).len(), 1);
    }
}
