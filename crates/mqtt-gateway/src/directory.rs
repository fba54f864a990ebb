//! Device lookups, served from a cache of device-registry answers so that a
//! message costs no registry call once its device is known.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iot_proto::v1::GetDeviceRequest;
use iot_proto::v1::device_registry_client::DeviceRegistryClient;
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
    cache: Mutex<HashMap<String, (Option<DeviceInfo>, Instant)>>,
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
        })
    }

    /// Looks a device up by external id or UUID. `Ok(None)`: not registered.
    /// `Err`: the registry could not answer (the caller retries; the message
    /// is neither accepted nor rejected).
    pub async fn lookup(&self, id: &str) -> Result<Option<DeviceInfo>, tonic::Status> {
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
        let mut client = self.client.clone();
        let answer = match client
            .get_device(GetDeviceRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => {
                let d = resp.into_inner();
                let uuid = Uuid::parse_str(&d.id)
                    .map_err(|e| tonic::Status::internal(format!("registry sent a bad id: {e}")))?;
                Some(DeviceInfo {
                    uuid,
                    device_id: d.device_id,
                    active: d.status == "active",
                })
            }
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        self.cache_put(id, answer.clone(), now);
        Ok(answer)
    }

    fn cache_get(&self, id: &str) -> Option<(Option<DeviceInfo>, Instant)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(id).cloned()
    }

    fn cache_put(&self, id: &str, answer: Option<DeviceInfo>, now: Instant) {
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
