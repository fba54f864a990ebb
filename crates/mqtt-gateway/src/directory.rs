//! Device lookups, served from a cache of device-registry answers so that a
//! message costs no registry call once its device is known
//! ([`registry_client::DeviceCache`]), and device activity coalesced into
//! `RecordActivity` calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_proto::v1;
use registry_client::DeviceCache;
use uuid::Uuid;

/// (Device, sensor) pairs remembered as reported before starting again.
const MAX_KNOWN_PAIRS: usize = 1_000_000;

/// What the gateway needs to know of a device.
#[derive(Debug)]
pub struct DeviceInfo {
    pub uuid: Uuid,
    pub device_id: String,
    pub active: bool,
    /// The silence after which the platform counts it offline
    /// (`iot_domain::presence`), from its reporting interval.
    pub silence: Duration,
    /// When its heartbeat was last recorded by this process (Unix ms; 0:
    /// not yet). Kept with the cache entry, so it is as bounded as the
    /// cache and starts again when the entry goes.
    recorded_ms: AtomicI64,
}

impl DeviceInfo {
    /// A device known by `uuid` alone: active, without a reporting interval.
    pub fn new(uuid: Uuid, device_id: String) -> Self {
        Self {
            uuid,
            device_id,
            active: true,
            silence: iot_domain::presence::PLATFORM.silence_limit(None),
            recorded_ms: AtomicI64::new(0),
        }
    }

    fn of(uuid: Uuid, d: v1::Device) -> Self {
        let interval = d.config.as_ref().map(|c| c.read_interval);
        Self {
            active: d.status == "active",
            silence: iot_domain::presence::PLATFORM.silence_limit(interval),
            ..Self::new(uuid, d.device_id)
        }
    }
}

/// How the heartbeats of devices heard again and again are recorded: at
/// most every `hold` (never more than `max`), the latest one each time, so
/// the last one a device sends reaches the registry within a hold and a
/// flush of the one recorded before it. A device publishing every second or
/// every ten is then a registry write a minute, not one per flush or per
/// message, and the moment it goes silent, which decides when it is
/// offline, is still exact: it is recorded before that moment comes.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeartbeatHold {
    /// How often activity is flushed.
    pub flush: Duration,
    /// The longest a recorded heartbeat may trail a device heard since.
    pub max: Duration,
}

impl HeartbeatHold {
    /// How long the heartbeat of a device whose silence limit is `silence`
    /// may go unrecorded while it is heard from. The recorded one trails
    /// the device by at most this and a flush, and its last one is
    /// recorded within this and a flush: half of what is left of the limit
    /// after four flushes keeps both well inside it, so a device that keeps
    /// publishing never looks offline and one that stops is offline at the
    /// exact moment. Zero (every flush) for limits too short to hold
    /// anything.
    pub fn of(&self, silence: Duration) -> Duration {
        let hold = (silence.saturating_sub(self.flush * 4) / 2).min(self.max);
        if hold < self.flush {
            Duration::ZERO
        } else {
            hold
        }
    }
}

pub struct Directory {
    client: iot_proto::RegistryClient,
    devices: DeviceCache<DeviceInfo>,
    activity: Mutex<Activity>,
    hold: HeartbeatHold,
}

/// A device's activity not yet reported to the registry.
struct Pending {
    /// When its last reading was accepted.
    seen: chrono::DateTime<chrono::Utc>,
    /// Sensors not reported before.
    sensors: Vec<String>,
    info: Arc<DeviceInfo>,
    /// Sent by a flush that failed: goes with the next one whatever the
    /// hold.
    retry: bool,
}

impl Pending {
    fn activity(&self) -> v1::DeviceActivity {
        v1::DeviceActivity {
            device_uuid: self.info.uuid.to_string(),
            last_seen: Some(iot_proto::timestamp(self.seen)),
            new_sensors: self.sensors.clone(),
            presence: String::new(),
        }
    }
}

/// Adds `p` to what `map` holds for `uuid`: the later time, both lists of
/// new sensors, and a retry if either is one.
fn merge(map: &mut HashMap<Uuid, Pending>, uuid: Uuid, mut p: Pending) {
    match map.entry(uuid) {
        std::collections::hash_map::Entry::Occupied(mut e) => {
            let e = e.get_mut();
            e.seen = e.seen.max(p.seen);
            e.sensors.append(&mut p.sensors);
            e.retry |= p.retry;
        }
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(p);
        }
    }
}

/// Device activity not yet reported to the registry.
#[derive(Default)]
struct Activity {
    /// Devices heard since the last flush.
    pending: HashMap<Uuid, Pending>,
    /// Devices heard before the last flush whose heartbeat it held back:
    /// each goes with the first flush past its hold, heard since or not.
    held: HashMap<Uuid, Pending>,
    /// Every (device, sensor) pair reported by this process, as a keyed
    /// 64-bit hash: a few bytes a pair, where the names would cost a set
    /// per device (most of the gateway's memory with a large fleet). Two
    /// pairs sharing a hash (odds near 2^-64 a pair) would leave a sensor
    /// to be listed by the next process that hears it.
    known: std::collections::HashSet<u64>,
    hasher: std::hash::RandomState,
}

impl Directory {
    /// Looks devices up at the registry at `registry_url` (admin scope:
    /// a platform service resolves every owner's devices), without request
    /// metrics. Answers are trusted for `ttl`, "unknown device" for
    /// `unknown_ttl` (a change at the registry drops them at once), and at
    /// most `max_entries` are kept.
    pub fn new(
        registry_url: &str,
        tls: &iot_proto::GrpcTls,
        ttl: Duration,
        unknown_ttl: Duration,
        max_entries: u64,
    ) -> Result<Self, crate::GatewayError> {
        let client = registry_client::admin_client(registry_url, tls)?;
        Ok(Self::with_client(client, ttl, unknown_ttl, max_entries))
    }

    /// [`Self::new`] with `client` (an admin-scope client, such as
    /// `registry_client::measured_admin_client`'s).
    pub fn with_client(
        client: iot_proto::RegistryClient,
        ttl: Duration,
        unknown_ttl: Duration,
        max_entries: u64,
    ) -> Self {
        let settings = registry_client::Settings {
            max_capacity: max_entries,
            found_ttl: Some(ttl),
            not_found_ttl: Some(unknown_ttl),
        };
        Self {
            devices: DeviceCache::new(client.clone(), settings, DeviceInfo::of),
            client,
            activity: Mutex::default(),
            hold: HeartbeatHold::default(),
        }
    }

    /// Holds back the heartbeats of devices heard without pause (see
    /// [`HeartbeatHold`]); without it each flush records every device it
    /// heard from.
    pub fn holding_heartbeats(mut self, hold: HeartbeatHold) -> Self {
        self.hold = hold;
        self
    }

    /// Exports the cache's hit and miss counts.
    pub fn register_metrics(
        &self,
        registry: &iot_telemetry::prometheus::Registry,
    ) -> Result<(), iot_telemetry::prometheus::Error> {
        self.devices.register_metrics(registry)
    }

    /// Notes that `device` just reported readings of `sensors`.
    pub fn record_activity<'a>(
        &self,
        device: &Arc<DeviceInfo>,
        sensors: impl Iterator<Item = &'a str>,
    ) {
        let now = chrono::Utc::now();
        let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let Activity {
            pending,
            known,
            hasher,
            ..
        } = &mut *a;
        let entry = pending.entry(device.uuid).or_insert_with(|| Pending {
            seen: now,
            sensors: Vec::new(),
            info: device.clone(),
            retry: false,
        });
        entry.seen = now;
        for s in sensors {
            // Full: start again. The registry adds a sensor it has once
            // more as nothing, where one never reported would be missing.
            if known.len() >= MAX_KNOWN_PAIRS {
                known.clear();
            }
            // A lookup per reading; an allocation only for a new sensor.
            if known.insert(std::hash::BuildHasher::hash_one(&*hasher, (device.uuid, s))) {
                entry.sensors.push(s.to_owned());
            }
        }
    }

    /// Reports every device's activity not reported yet, held back or not:
    /// the last flush before the process stops.
    pub async fn flush_all_activity(&self) -> Result<usize, tonic::Status> {
        {
            let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
            let Activity { pending, held, .. } = &mut *a;
            for (uuid, p) in held.drain() {
                merge(pending, uuid, p);
            }
            for p in pending.values_mut() {
                p.retry = true;
            }
        }
        self.flush_activity().await
    }

    /// Reports the activity due since the last flush (see
    /// [`HeartbeatHold`]) in calls under gRPC's message limit; what a
    /// failed call did not report goes with the next flush. Answers the
    /// devices reported.
    pub async fn flush_activity(&self) -> Result<usize, tonic::Status> {
        let now = chrono::Utc::now();
        let (window, mut waiting) = {
            let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut a.pending), std::mem::take(&mut a.held))
        };
        for (uuid, p) in window {
            merge(&mut waiting, uuid, p);
        }
        let mut due = Vec::new();
        let mut held = HashMap::new();
        for (uuid, p) in waiting {
            let hold = self.hold.of(p.info.silence);
            let recorded = p.info.recorded_ms.load(Ordering::Relaxed);
            if p.retry
                || !p.sensors.is_empty()
                || now.timestamp_millis() - recorded >= hold.as_millis() as i64
            {
                due.push(p);
            } else {
                held.insert(uuid, p);
            }
        }
        self.activity.lock().unwrap_or_else(|p| p.into_inner()).held = held;
        if due.is_empty() {
            return Ok(0);
        }
        let n = due.len();
        let mut client = self.client.clone();
        let mut sent = 0;
        let mut rest = due.as_slice();
        for chunk in activity_chunks(
            due.iter().map(Pending::activity).collect(),
            ACTIVITY_CALL_BYTES,
        ) {
            let len = chunk.len();
            if let Err(e) = client
                .record_activity(v1::RecordActivityRequest { devices: chunk })
                .await
            {
                // What was not reported yet waits for the next flush,
                // whatever its hold (a chunk that went through may go
                // again: last-seen only moves forward).
                let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                for mut p in due.into_iter().skip(sent) {
                    let uuid = p.info.uuid;
                    a.held.remove(&uuid);
                    p.retry = true;
                    merge(&mut a.pending, uuid, p);
                }
                tracing::debug!(sent, "activity flush interrupted");
                return Err(e);
            }
            for p in &rest[..len] {
                p.info
                    .recorded_ms
                    .store(now.timestamp_millis(), Ordering::Relaxed);
            }
            rest = &rest[len..];
            sent += len;
        }
        Ok(n)
    }

    /// Reports a presence event of `device` to the registry now, stamped
    /// with the time it arrived.
    pub async fn record_presence(
        &self,
        device: Uuid,
        event: iot_domain::presence::PresenceEvent,
    ) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .record_activity(v1::RecordActivityRequest {
                devices: vec![v1::DeviceActivity {
                    device_uuid: device.to_string(),
                    last_seen: Some(iot_proto::timestamp(chrono::Utc::now())),
                    new_sensors: Vec::new(),
                    presence: event.as_str().into(),
                }],
            })
            .await?;
        Ok(())
    }

    /// Follows the registry's device changes and drops changed devices from
    /// the cache, until `shutdown`; `also` sees each change after the cache
    /// has applied it (one stream for every cache of the gateway).
    pub async fn follow_changes(
        &self,
        shutdown: iot_runtime::CancellationToken,
        also: impl Fn(&v1::DeviceChange),
    ) {
        let also = &also;
        registry_client::follow_device_changes(
            self.client.clone(),
            shutdown,
            |change| async move {
                // A device heard from again (or gone) is the same device
                // to the gateway: nothing it caches changes with presence.
                if change.kind != "presence" {
                    self.devices.apply(&change).await;
                }
                also(&change);
            },
        )
        .await;
    }

    /// Looks a device up by external id or UUID. `Ok(None)`: not registered.
    /// `Err`: the registry could not answer (the caller retries; the message
    /// is neither accepted nor rejected).
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<DeviceInfo>>, tonic::Status> {
        self.devices.get(id).await
    }
}

/// The largest RecordActivity call the gateway sends: some 2,000 devices
/// (about 60 bytes each). A call is one registry transaction, and one that
/// outlasts the client's timeout is rolled back and sent again whole, so a
/// call stays small enough to finish well inside it on a busy database (a
/// whole flush window of a large fleet in one call would also pass gRPC's
/// default 4 MiB message limit near 70,000 devices).
const ACTIVITY_CALL_BYTES: usize = 128 * 1024;

/// Splits a flush window into calls of at most `max_bytes` encoded each
/// (an entry larger than that alone goes in a call of its own).
fn activity_chunks(
    devices: Vec<v1::DeviceActivity>,
    max_bytes: usize,
) -> Vec<Vec<v1::DeviceActivity>> {
    use iot_proto::Message as _;
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for d in devices {
        // The entry's bytes plus its tag and length prefix.
        let len = d.encoded_len() + 8;
        if !chunk.is_empty() && size + len > max_bytes {
            chunks.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += len;
        chunk.push(d);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    #[test]
    fn a_hold_stays_well_inside_the_silence_limit() {
        let hold = HeartbeatHold {
            flush: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        let secs = |s| Duration::from_secs(s);
        // No reporting interval: 5 minutes of silence; the cap applies.
        assert_eq!(hold.of(secs(300)), secs(60));
        // Every 10 s: offline after 50 s of silence.
        assert_eq!(hold.of(secs(50)), secs(15));
        // The least limit, 10 s: too short to hold anything.
        assert_eq!(hold.of(secs(10)), Duration::ZERO);
        assert_eq!(hold.of(secs(25)), Duration::ZERO);
        // Whatever the limit, the recorded heartbeat trails by at most the
        // hold and a flush, and so is the last one: four flushes of room.
        for limit in 0..1000 {
            let h = hold.of(secs(limit));
            assert!(h.is_zero() || h + hold.flush * 4 < secs(limit), "{limit}");
        }
        assert_eq!(HeartbeatHold::default().of(secs(300)), Duration::ZERO);
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use iot_proto::Message as _;

    #[test]
    fn a_large_window_goes_in_calls_under_the_limit() {
        let devices: Vec<_> = (0..100_000)
            .map(|i| v1::DeviceActivity {
                device_uuid: Uuid::from_u128(i).to_string(),
                last_seen: Some(iot_proto::timestamp(chrono::Utc::now())),
                new_sensors: if i % 10 == 0 {
                    vec!["temperature".into()]
                } else {
                    vec![]
                },
                presence: String::new(),
            })
            .collect();
        let chunks = activity_chunks(devices, ACTIVITY_CALL_BYTES);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 100_000);
        for c in &chunks {
            let call = v1::RecordActivityRequest { devices: c.clone() };
            assert!(
                call.encoded_len() <= ACTIVITY_CALL_BYTES,
                "{}",
                call.encoded_len()
            );
        }
        assert!(activity_chunks(Vec::new(), 10).is_empty());
    }
}
