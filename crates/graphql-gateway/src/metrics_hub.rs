//! Live metrics for `metrics` subscriptions, pushed: one `WatchStored`
//! stream from ingest-writer (the readings each batch stored, after its
//! commit) for the whole process, and per watched (device, bucket width)
//! the aggregates of the current and the previous bucket of each sensor,
//! kept up to date from that stream. A stored reading costs no backend
//! call however many subscribe to its device; a series is read from the
//! database (one LatestReadings, then one QueryReadings per sensor bucket)
//! only when its first subscriber arrives or after the stream was broken.
//!
//! A bucket read from the database while readings arrive could count a
//! reading twice (stored before the read, announced after). So while a
//! bucket is read, the readings announced for it wait, and only those the
//! read did not return (by time: one reading per device, sensor and time)
//! are added.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use iot_domain::bucket;
use iot_proto::v1;
use iot_runtime::CancellationToken;
use rust_decimal::prelude::ToPrimitive as _;
use rust_decimal::{Decimal, RoundingStrategy};
use tokio::sync::broadcast;

use crate::hub::Subscribed;
use crate::upstream::Upstreams;

/// Most readings of one bucket read back at once; a busier bucket is read
/// as aggregates instead (readings announced meanwhile are then left out).
const MAX_BUCKET_READINGS: u32 = 10_000;

/// What a series' subscribers hear.
#[derive(Debug)]
pub enum MetricEvent {
    /// The aggregates of `sensor` in the bucket `metric.bucket`.
    Metric {
        sensor: String,
        metric: v1::SensorMetric,
    },
    /// The stored-readings stream is down (or fell behind): figures may
    /// be behind until it is back, when every series is read again.
    Interrupted,
}

type Key = (String, i64);

#[derive(Default, Clone)]
struct Agg {
    count: u64,
    sum: Decimal,
    min: Decimal,
    max: Decimal,
}

impl Agg {
    fn add(&mut self, v: Decimal) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
    }

    fn metric(&self, bucket: DateTime<Utc>) -> v1::SensorMetric {
        let f = |d: Decimal| d.to_f64().unwrap_or(f64::NAN);
        let avg = if self.count == 0 {
            Decimal::ZERO
        } else {
            (self.sum / Decimal::from(self.count))
                .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
        };
        v1::SensorMetric {
            bucket: Some(iot_proto::timestamp(bucket)),
            count: self.count,
            avg: f(avg),
            min: f(self.min),
            max: f(self.max),
            sum: self.sum.normalize().to_string(),
        }
    }
}

/// One bucket of one sensor.
enum Bucket {
    /// Being read from the database; readings announced meanwhile wait.
    Reading(Vec<(DateTime<Utc>, Decimal)>),
    Known(Agg),
}

struct Series {
    tx: broadcast::Sender<Arc<MetricEvent>>,
    count: usize,
    /// When the hub started following it: buckets starting later hold
    /// only readings the hub was told of.
    since: DateTime<Utc>,
    /// By sensor, by bucket start (seconds): the current and previous.
    sensors: HashMap<String, BTreeMap<i64, Bucket>>,
}

#[derive(Clone)]
pub struct MetricsHub {
    series: Arc<Mutex<HashMap<Key, Series>>>,
    capacity: usize,
    subscribers: prometheus::IntGauge,
    up: Arc<Mutex<Option<Upstreams>>>,
}

/// A subscriber of one series.
pub struct MetricsWatch {
    pub rx: broadcast::Receiver<Arc<MetricEvent>>,
    /// Known aggregates now, for the subscriber's first messages.
    pub now: Vec<(String, v1::SensorMetric)>,
    pub registered: MetricsRegistered,
    pub counted: Subscribed,
}

/// Dropping it unwatches the series.
pub struct MetricsRegistered {
    hub: MetricsHub,
    key: Key,
}

impl Drop for MetricsRegistered {
    fn drop(&mut self) {
        let mut series = lock(&self.hub.series);
        if let Some(s) = series.get_mut(&self.key) {
            s.count -= 1;
            if s.count == 0 {
                series.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

impl MetricsHub {
    pub fn new(capacity: usize, subscribers: prometheus::IntGauge) -> Self {
        Self {
            series: Arc::default(),
            capacity,
            subscribers,
            up: Arc::default(),
        }
    }

    /// Watches the aggregates of `device`'s sensors in buckets of `width`
    /// seconds. The first subscriber of a series has it read (in the
    /// background): its figures arrive as messages.
    pub fn watch(&self, device: &str, width: i64) -> MetricsWatch {
        let key = (device.to_owned(), width);
        let mut series = lock(&self.series);
        let mut fresh = false;
        let s = series.entry(key.clone()).or_insert_with(|| {
            fresh = true;
            Series {
                tx: broadcast::channel(self.capacity).0,
                count: 0,
                since: Utc::now(),
                sensors: HashMap::new(),
            }
        });
        s.count += 1;
        self.subscribers.inc();
        let now = s
            .sensors
            .iter()
            .flat_map(|(sensor, buckets)| {
                buckets.iter().filter_map(move |(b, bucket)| match bucket {
                    Bucket::Known(a) if a.count > 0 => Some((sensor.clone(), a.metric(at(*b)))),
                    _ => None,
                })
            })
            .collect();
        let watch = MetricsWatch {
            rx: s.tx.subscribe(),
            now,
            registered: MetricsRegistered {
                hub: self.clone(),
                key: key.clone(),
            },
            counted: Subscribed(self.subscribers.clone()),
        };
        drop(series);
        if fresh {
            let hub = self.clone();
            tokio::spawn(async move { hub.load(key).await });
        }
        watch
    }

    /// Reads the current bucket of each sensor of a series that has
    /// readings in it (one LatestReadings, one read per such sensor).
    async fn load(&self, key: Key) {
        let Some(up) = lock(&self.up).clone() else {
            return;
        };
        let (device, width) = key.clone();
        let latest = up
            .telemetry(iot_proto::Scope::Admin)
            .latest_readings(v1::LatestReadingsRequest {
                device_uuids: vec![device.clone()],
            })
            .await;
        let Ok(latest) = latest else {
            return;
        };
        let oldest = bucket::floor(Utc::now(), width) - TimeDelta::seconds(width);
        for r in latest.into_inner().readings {
            let Some(t) = r.time.as_ref().and_then(iot_proto::from_timestamp) else {
                continue;
            };
            if t >= oldest {
                let start = bucket::floor(t, width).timestamp();
                self.read_bucket(&up, &key, &r.sensor_name, start).await;
            }
        }
    }

    /// Reads one bucket of one sensor from the database, then adds the
    /// readings announced meanwhile that it did not hold, and tells the
    /// subscribers.
    async fn read_bucket(&self, up: &Upstreams, key: &Key, sensor: &str, start: i64) {
        {
            let mut series = lock(&self.series);
            let Some(s) = series.get_mut(key) else {
                return;
            };
            let buckets = s.sensors.entry(sensor.to_owned()).or_default();
            if buckets.contains_key(&start) {
                return;
            }
            buckets.insert(start, Bucket::Reading(Vec::new()));
        }
        let (device, width) = key;
        let (from, to) = (at(start), at(start + width));
        let rows = up
            .telemetry(iot_proto::Scope::Admin)
            .query_readings(v1::QueryReadingsRequest {
                device_uuid: device.clone(),
                sensor_name: sensor.to_owned(),
                start: Some(iot_proto::timestamp(from)),
                end: Some(iot_proto::timestamp(to)),
                limit: MAX_BUCKET_READINGS,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner);
        let (mut agg, held): (Agg, Option<std::collections::HashSet<DateTime<Utc>>>) = match rows {
            Ok(r) if r.next_cursor.is_empty() => {
                let mut agg = Agg::default();
                let mut held = std::collections::HashSet::new();
                for x in r.readings {
                    if let (Some(t), Ok(v)) = (
                        x.time.as_ref().and_then(iot_proto::from_timestamp),
                        x.value.parse::<Decimal>(),
                    ) {
                        agg.add(v);
                        held.insert(t);
                    }
                }
                (agg, Some(held))
            }
            _ => match self.read_aggregate(up, key, sensor, from, to).await {
                Some(agg) => (agg, None),
                None => {
                    // Unreadable now: forgotten, read again at its next
                    // reading.
                    let mut series = lock(&self.series);
                    if let Some(b) = series.get_mut(key).and_then(|s| s.sensors.get_mut(sensor)) {
                        b.remove(&start);
                    }
                    return;
                }
            },
        };
        let mut series = lock(&self.series);
        let Some(s) = series.get_mut(key) else {
            return;
        };
        let buckets = s.sensors.entry(sensor.to_owned()).or_default();
        if let Some(Bucket::Reading(waiting)) = buckets.remove(&start) {
            for (t, v) in waiting {
                // Without the read's times (a busy bucket), the waiting
                // readings are left out rather than perhaps counted twice.
                if held.as_ref().is_some_and(|h| !h.contains(&t)) {
                    agg.add(v);
                }
            }
        }
        if agg.count > 0 {
            let _ = s.tx.send(Arc::new(MetricEvent::Metric {
                sensor: sensor.to_owned(),
                metric: agg.metric(from),
            }));
        }
        buckets.insert(start, Bucket::Known(agg));
    }

    async fn read_aggregate(
        &self,
        up: &Upstreams,
        (device, width): &Key,
        sensor: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<Agg> {
        let got = up
            .telemetry(iot_proto::Scope::Admin)
            .query_metrics(v1::QueryMetricsRequest {
                device_uuid: device.clone(),
                sensor_name: sensor.to_owned(),
                start: Some(iot_proto::timestamp(from)),
                end: Some(iot_proto::timestamp(to)),
                granularity: format!("{width}s"),
            })
            .await
            .ok()?
            .into_inner();
        let m = got.metrics.first();
        Some(m.map_or_else(Agg::default, |m| Agg {
            count: m.count,
            sum: m.sum.parse().unwrap_or_default(),
            min: Decimal::try_from(m.min).unwrap_or_default(),
            max: Decimal::try_from(m.max).unwrap_or_default(),
        }))
    }

    /// Applies one stored batch: every watched series of its devices.
    /// Buckets to read from the database are returned.
    fn apply(&self, batch: &v1::StoredReadings) -> Vec<(Key, String, i64)> {
        let mut series = lock(&self.series);
        if series.is_empty() {
            return Vec::new();
        }
        let now = Utc::now();
        let mut to_read = Vec::new();
        // Changed (series, sensor, bucket), each told once per batch.
        let mut changed: Vec<(Key, String, i64)> = Vec::new();
        for r in &batch.readings {
            let (Some(t), Ok(v)) = (
                r.time.as_ref().and_then(iot_proto::from_timestamp),
                r.value.parse::<Decimal>(),
            ) else {
                continue;
            };
            for ((device, width), s) in series.iter_mut() {
                if *device != r.device_uuid {
                    continue;
                }
                let oldest = bucket::floor(now, *width) - TimeDelta::seconds(*width);
                if t < oldest {
                    continue;
                }
                let start = bucket::floor(t, *width);
                let key = (device.clone(), *width);
                let buckets = s.sensors.entry(r.sensor_name.clone()).or_default();
                match buckets.get_mut(&start.timestamp()) {
                    Some(Bucket::Known(a)) => a.add(v),
                    Some(Bucket::Reading(waiting)) => {
                        waiting.push((t, v));
                        continue;
                    }
                    // A bucket that began after the hub followed the series
                    // holds only readings it was told of.
                    None if start >= s.since => {
                        let mut a = Agg::default();
                        a.add(v);
                        buckets.insert(start.timestamp(), Bucket::Known(a));
                    }
                    None => {
                        to_read.push((key, r.sensor_name.clone(), start.timestamp()));
                        continue;
                    }
                }
                // Only the current and previous buckets are kept.
                let keep = oldest.timestamp();
                buckets.retain(|b, _| *b >= keep);
                let c = (key, r.sensor_name.clone(), start.timestamp());
                if !changed.contains(&c) {
                    changed.push(c);
                }
            }
        }
        for (key, sensor, start) in changed {
            if let Some(s) = series.get(&key)
                && let Some(Bucket::Known(a)) = s.sensors.get(&sensor).and_then(|b| b.get(&start))
            {
                let _ = s.tx.send(Arc::new(MetricEvent::Metric {
                    sensor,
                    metric: a.metric(at(start)),
                }));
            }
        }
        to_read.sort();
        to_read.dedup();
        to_read
    }

    /// Forgets every figure (they may have missed readings) and tells the
    /// subscribers.
    fn interrupted(&self) {
        for s in lock(&self.series).values_mut() {
            s.sensors.clear();
            s.since = Utc::now();
            let _ = s.tx.send(Arc::new(MetricEvent::Interrupted));
        }
    }

    /// Reads every watched series again (after an interruption).
    async fn reload(&self) {
        let keys: Vec<Key> = lock(&self.series).keys().cloned().collect();
        for k in keys {
            self.load(k).await;
        }
    }

    /// Follows ingest-writer's WatchStored (admin scope) until `shutdown`.
    pub async fn run(self, up: Upstreams, shutdown: CancellationToken) {
        *lock(&self.up) = Some(up.clone());
        let mut was_up = false;
        // Subscribers are told of an outage once, not at every retry.
        let mut told = false;
        loop {
            let mut client = up.telemetry(iot_proto::Scope::Admin);
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                s = client.watch_stored(v1::WatchStoredRequest {}) => s,
            };
            match stream {
                Ok(s) => {
                    let mut s = s.into_inner();
                    if was_up {
                        // Reconnected: what was stored meanwhile is read.
                        self.reload().await;
                    }
                    (was_up, told) = (true, false);
                    loop {
                        let next = tokio::select! {
                            () = shutdown.cancelled() => return,
                            n = s.message() => n,
                        };
                        match next {
                            Ok(Some(batch)) => {
                                if batch.missed > 0 {
                                    tracing::warn!(
                                        missed = batch.missed,
                                        "stored-readings stream fell behind; reading live series again"
                                    );
                                    self.interrupted();
                                    let hub = self.clone();
                                    tokio::spawn(async move { hub.reload().await });
                                }
                                for (key, sensor, start) in self.apply(&batch) {
                                    let (hub, up) = (self.clone(), up.clone());
                                    tokio::spawn(async move {
                                        hub.read_bucket(&up, &key, &sensor, start).await;
                                    });
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "stored-readings stream broke; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stored-readings stream unavailable; retrying")
                }
            }
            if was_up && !told {
                self.interrupted();
                told = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
