//! Device lookups, served from a cache of device-registry answers so that a
//! message costs no registry call once its device is known.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iot_proto::v1::device_registry_client::DeviceRegistryClient;
use iot_proto::v1::{self, GetDeviceRequest};
use tonic::transport::Channel;
use uuid::Uuid;

/// Entries kept before expired ones are swept.
const MAX_ENTRIES: usize = 100_000;

/// What the gateway needs to know of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub uuid: Uuid,
    pub device_id: String,
    pub active: bool,
}

pub struct Directory {
    client: iot_proto::RegistryClient,
    ttl: Duration,
    unknown_ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    activity: Mutex<Activity>,
}

/// A registry answer and when it came: shared, so that a hit copies no
/// strings.
type Cached = (Option<Arc<DeviceInfo>>, Instant);

/// Device activity not yet reported to the registry.
#[derive(Default)]
struct Activity {
    /// Last reading accepted per device, and sensors not reported before.
    pending: HashMap<Uuid, (chrono::DateTime<chrono::Utc>, Vec<String>)>,
    /// Every sensor reported by this process, per device.
    known: HashMap<Uuid, std::collections::HashSet<String>>,
    /// Number of (device, sensor) pairs in `known`.
    known_pairs: usize,
}

impl Directory {
    pub fn new(registry_url: &str, ttl: Duration, unknown_ttl: Duration) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(registry_url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            // A platform service: it resolves every owner's devices.
            client: DeviceRegistryClient::with_interceptor(channel, iot_proto::Scope::Admin),
            ttl,
            unknown_ttl,
            cache: Mutex::new(HashMap::new()),
            activity: Mutex::default(),
        })
    }

    /// Drops what is cached of a device (after a change at the registry).
    pub fn forget(&self, uuid: &str, device_id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|key, (hit, _)| {
            key != device_id
                && key != uuid
                && hit.as_ref().is_none_or(|d| d.uuid.to_string() != uuid)
        });
    }

    /// Drops the whole cache.
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Notes that `device` just reported readings of `sensors`.
    pub fn record_activity<'a>(&self, device: Uuid, sensors: impl Iterator<Item = &'a str>) {
        let now = chrono::Utc::now();
        let mut a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let Activity {
            pending,
            known,
            known_pairs,
        } = &mut *a;
        let entry = pending.entry(device).or_insert_with(|| (now, Vec::new()));
        entry.0 = now;
        let seen = known.entry(device).or_default();
        for s in sensors {
            // A lookup per reading; an allocation only for a new sensor.
            if !seen.contains(s) && *known_pairs < MAX_ENTRIES * 10 {
                seen.insert(s.to_owned());
                *known_pairs += 1;
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

    /// Follows the registry's device changes and drops changed devices from
    /// the cache, until `shutdown`.
    pub async fn follow_changes(&self, shutdown: iot_runtime::CancellationToken) {
        iot_runtime::follow_device_changes(self.client.clone(), shutdown, |change| {
            match change.kind.as_str() {
                "sync" => {}
                "reset" => self.clear(),
                _ => self.forget(&change.device_uuid, &change.device_id),
            }
        })
        .await;
    }

    /// Looks a device up by external id or UUID. `Ok(None)`: not registered.
    /// `Err`: the registry could not answer (the caller retries; the message
    /// is neither accepted nor rejected).
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<DeviceInfo>>, tonic::Status> {
        let now = Instant::now();
        if let Some((hit, at)) = self.cache_get(id) {
            let ttl = if hit.is_some() {
                self.ttl
            } else {
                self.unknown_ttl
            };
            if now.duration_since(at) < ttl {
                return Ok(hit);
            }
        }
        // Boxed: the registry call's state is some 1.5 kB, which every
        // message's future would otherwise carry (and copy) for the rare
        // miss.
        Box::pin(self.fetch(id, now)).await
    }

    /// Asks the registry about `id` and caches the answer.
    async fn fetch(
        &self,
        id: &str,
        now: Instant,
    ) -> Result<Option<Arc<DeviceInfo>>, tonic::Status> {
        let mut client = self.client.clone();
        let answer = match client
            .get_device(GetDeviceRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => {
                let d = resp.into_inner();
                let uuid = Uuid::parse_str(&d.id)
                    .map_err(|e| tonic::Status::internal(format!("registry sent a bad id: {e}")))?;
                Some(Arc::new(DeviceInfo {
                    uuid,
                    device_id: d.device_id,
                    active: d.status == "active",
                }))
            }
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        self.cache_put(id, answer.clone(), now);
        Ok(answer)
    }

    fn cache_get(&self, id: &str) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(id).cloned()
    }

    fn cache_put(&self, id: &str, answer: Option<Arc<DeviceInfo>>, now: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let (ttl, unknown_ttl) = (self.ttl, self.unknown_ttl);
            cache.retain(|_, (hit, at)| {
                let keep_for = if hit.is_some() { ttl } else { unknown_ttl };
                now.duration_since(*at) < keep_for
            });
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(id.to_owned(), (answer, now));
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
