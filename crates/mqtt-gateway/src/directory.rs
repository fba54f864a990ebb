//! Device lookups, served from a cache of device-registry answers so that a
//! message costs no registry call once its device is known
//! ([`registry_client::DeviceCache`]), and device activity coalesced into
//! `RecordActivity` calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_proto::v1;
use registry_client::DeviceCache;
use uuid::Uuid;

/// (Device, sensor) pairs remembered as reported before starting again.
const MAX_KNOWN_PAIRS: usize = 1_000_000;

/// What the gateway needs to know of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub uuid: Uuid,
    pub device_id: String,
    pub active: bool,
}

impl DeviceInfo {
    fn of(uuid: Uuid, d: v1::Device) -> Self {
        Self {
            uuid,
            active: d.status == "active",
            device_id: d.device_id,
        }
    }
}

pub struct Directory {
    client: iot_proto::RegistryClient,
    devices: DeviceCache<DeviceInfo>,
    activity: Mutex<Activity>,
}

/// Device activity not yet reported to the registry.
#[derive(Default)]
struct Activity {
    /// Last reading accepted per device, and sensors not reported before.
    pending: HashMap<Uuid, (chrono::DateTime<chrono::Utc>, Vec<String>)>,
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
        }
    }

    /// Exports the cache's hit and miss counts.
    pub fn register_metrics(
        &self,
        registry: &iot_telemetry::prometheus::Registry,
    ) -> Result<(), iot_telemetry::prometheus::Error> {
        self.devices.register_metrics(registry)
    }

    /// Notes that `device` just reported readings of `sensors`.
    pub fn record_activity<'a>(&self, device: Uuid, sensors: impl Iterator<Item = &'a str>) {
        let now = chrono::Utc::now();
        let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let Activity {
            pending,
            known,
            hasher,
        } = &mut *a;
        let entry = pending.entry(device).or_insert_with(|| (now, Vec::new()));
        entry.0 = now;
        for s in sensors {
            // Full: start again. The registry adds a sensor it has once
            // more as nothing, where one never reported would be missing.
            if known.len() >= MAX_KNOWN_PAIRS {
                known.clear();
            }
            // A lookup per reading; an allocation only for a new sensor.
            if known.insert(std::hash::BuildHasher::hash_one(&*hasher, (device, s))) {
                entry.1.push(s.to_owned());
            }
        }
    }

    /// Reports the activity noted since the last flush, in one call; kept for
    /// the next flush if the registry does not answer.
    pub async fn flush_activity(&self) -> Result<usize, tonic::Status> {
        let pending = std::mem::take(
            &mut self
                .activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending,
        );
        if pending.is_empty() {
            return Ok(0);
        }
        let devices: Vec<v1::DeviceActivity> = pending
            .iter()
            .map(|(uuid, (seen, sensors))| v1::DeviceActivity {
                device_uuid: uuid.to_string(),
                last_seen: Some(iot_proto::timestamp(*seen)),
                new_sensors: sensors.clone(),
                presence: String::new(),
            })
            .collect();
        let n = devices.len();
        let mut client = self.client.clone();
        let mut sent = 0;
        for chunk in activity_chunks(devices, ACTIVITY_CALL_BYTES) {
            let len = chunk.len();
            if let Err(e) = client
                .record_activity(v1::RecordActivityRequest { devices: chunk })
                .await
            {
                // What was not reported yet waits for the next flush (a
                // chunk that went through may go again: last-seen only
                // moves forward).
                let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                for (uuid, (seen, sensors)) in pending {
                    let entry = a.pending.entry(uuid).or_insert((seen, Vec::new()));
                    entry.0 = entry.0.max(seen);
                    entry.1.extend(sensors);
                }
                tracing::debug!(sent, "activity flush interrupted");
                return Err(e);
            }
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
                self.devices.apply(&change).await;
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

/// The largest RecordActivity call the gateway sends: well under gRPC's
/// default 4 MiB message limit, which a whole flush window of a large fleet
/// (some 60 bytes a device) would pass near 70,000 devices.
const ACTIVITY_CALL_BYTES: usize = 1024 * 1024;

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
