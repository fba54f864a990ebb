//! [`DeviceCache`]: device-registry's answers, kept until the change stream
//! reports the device (or their time is up, or room is needed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iot_proto::v1::{self, DeviceChange, GetDeviceRequest};
use iot_telemetry::prometheus::{self, IntCounter, IntCounterVec, Opts, Registry};
use moka::Expiry;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The `max_capacity` the services use.
pub const DEFAULT_MAX_CAPACITY: u64 = 100_000;

/// How much a [`DeviceCache`] keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Most devices kept. A device takes up to two entries (its answer
    /// under its UUID, and the id it was looked up by when that is another),
    /// so the cache holds twice this many entries: a fleet of exactly this
    /// size looked up by external id fits. Past it, the entries least
    /// likely to be asked for again go (moka's TinyLFU), not all of them.
    pub max_capacity: u64,
    /// How long a device's answer is trusted. `None`: until the change
    /// stream reports the device (or room is needed). Zero: not cached.
    pub found_ttl: Option<Duration>,
    /// How long a NOT_FOUND ("unknown device") is trusted; as `found_ttl`.
    pub not_found_ttl: Option<Duration>,
}

/// Builds a service's view `V` of a device from the registry's answer and
/// the device's UUID (parsed from `id`).
pub type MapDevice<V> = dyn Fn(Uuid, v1::Device) -> V + Send + Sync;

/// Device lookups (by external id or UUID) in front of device-registry's
/// `GetDevice`, each answer mapped once to the caller's `V`.
///
/// - An answer is cached under the id it was asked by; a device found by
///   another id than its UUID is cached under its UUID too, so that either
///   finds it and invalidating either drops both.
/// - NOT_FOUND is cached as `None` for [`Settings::not_found_ttl`]; other
///   errors are returned and not cached.
/// - Concurrent misses for one id make one registry call.
/// - [`DeviceCache::follow_changes`] drops changed devices at once, and the
///   whole cache on a "reset"; an answer fetched while a change arrived is
///   returned but not cached, since it may predate the change.
pub struct DeviceCache<V> {
    client: iot_proto::RegistryClient,
    map: Box<MapDevice<V>>,
    settings: Settings,
    entries: moka::future::Cache<String, Slot<V>>,
    /// Bumped by every invalidation: an answer fetched across a bump may
    /// predate it and is not cached.
    epoch: AtomicU64,
    lookups: IntCounterVec,
    hits: IntCounter,
    misses: IntCounter,
}

/// What is cached under an id.
enum Slot<V> {
    /// The device the registry answered for this id, its UUID.
    Found(Arc<V>),
    /// The device the registry answered for this id (not its UUID text):
    /// valid while its UUID's entry holds this very answer, so that
    /// dropping the UUID's entry drops every other way to it.
    Alias(Uuid, Arc<V>),
    /// NOT_FOUND.
    Missing,
}

// Derived Clone would ask for `V: Clone`.
impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        match self {
            Slot::Found(v) => Slot::Found(v.clone()),
            Slot::Alias(u, v) => Slot::Alias(*u, v.clone()),
            Slot::Missing => Slot::Missing,
        }
    }
}

impl<V> Slot<V> {
    fn answer(&self) -> Option<Arc<V>> {
        match self {
            Slot::Found(v) | Slot::Alias(_, v) => Some(v.clone()),
            Slot::Missing => None,
        }
    }
}

/// Why a miss left nothing in the cache; shared by the callers it
/// coalesced.
enum Unkept<V> {
    /// The registry answered, but the answer is not to be cached (it may
    /// predate a change, or its TTL is zero).
    Answer(Option<Arc<V>>),
    /// The registry did not answer.
    Failed(tonic::Status),
}

/// Per-entry lifetimes: a device's answer and a NOT_FOUND have their own.
struct Lifetimes {
    found: Option<Duration>,
    not_found: Option<Duration>,
}

impl Lifetimes {
    fn of<V>(&self, slot: &Slot<V>) -> Option<Duration> {
        match slot {
            Slot::Found(_) | Slot::Alias(..) => self.found,
            Slot::Missing => self.not_found,
        }
    }
}

impl<V> Expiry<String, Slot<V>> for Lifetimes {
    fn expire_after_create(&self, _: &String, slot: &Slot<V>, _: Instant) -> Option<Duration> {
        self.of(slot)
    }

    /// A new answer for an id lives as long as a first one.
    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.of(slot)
    }
}

/// The UUID's text as the registry writes it, in `buf` (from
/// [`Uuid::encode_buffer`]): no allocation.
fn uuid_key<'a>(uuid: &Uuid, buf: &'a mut [u8]) -> &'a str {
    uuid.hyphenated().encode_lower(buf)
}

/// Whether answers with this TTL are kept at all.
fn kept(ttl: Option<Duration>) -> bool {
    ttl.is_none_or(|t| !t.is_zero())
}

impl<V: Send + Sync + 'static> DeviceCache<V> {
    /// A cache that asks `client` (which needs the admin scope to follow
    /// changes) and maps each device found with `map`.
    pub fn new(
        client: iot_proto::RegistryClient,
        settings: Settings,
        map: impl Fn(Uuid, v1::Device) -> V + Send + Sync + 'static,
    ) -> Self {
        let entries = moka::future::Cache::builder()
            .name("devices")
            .max_capacity(settings.max_capacity.saturating_mul(2))
            .expire_after(Lifetimes {
                found: settings.found_ttl,
                not_found: settings.not_found_ttl,
            })
            .build();
        let lookups = IntCounterVec::new(
            Opts::new(
                "iot_device_cache_lookups_total",
                "Device lookups answered from the cache (hit) or by asking device-registry (miss)",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric options are valid: {e}"));
        Self {
            client,
            map: Box::new(map),
            settings,
            entries,
            epoch: AtomicU64::new(0),
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
            lookups,
        }
    }

    /// Exports the hit and miss counts to `registry`.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.lookups.clone()))
    }

    /// The registry client the cache asks.
    pub fn client(&self) -> &iot_proto::RegistryClient {
        &self.client
    }

    /// The device `id` (external id or UUID) names, from the cache or the
    /// registry. `Ok(None)`: the registry does not know it. `Err`: the
    /// registry did not answer (nothing is cached).
    pub async fn get(&self, id: &str) -> Result<Option<Arc<V>>, tonic::Status> {
        if let Some(answer) = self.cached(id).await {
            self.hits.inc();
            return Ok(answer);
        }
        self.misses.inc();
        // Boxed: a miss's state (the registry call's) is large, and every
        // lookup's future would otherwise carry it.
        Box::pin(self.load(id)).await
    }

    /// [`get`](Self::get) by UUID, allocating nothing on a hit.
    pub async fn get_uuid(&self, uuid: Uuid) -> Result<Option<Arc<V>>, tonic::Status> {
        let mut buf = Uuid::encode_buffer();
        self.get(uuid_key(&uuid, &mut buf)).await
    }

    /// The device `id` names, straight from the registry (not cached).
    pub async fn fetch(&self, id: &str) -> Result<Option<Arc<V>>, tonic::Status> {
        Ok(self.ask(id).await?.map(|(_, v)| v))
    }

    /// Drops what is cached of the device `id` names (external id or UUID):
    /// its answer under either. (Dropping the UUID's entry leaves the
    /// other ids' entries pointing at an answer it no longer holds: they
    /// are no longer valid.)
    pub async fn invalidate(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(Slot::Alias(uuid, _)) = self.entries.remove(id).await {
            let mut buf = Uuid::encode_buffer();
            self.entries.invalidate(uuid_key(&uuid, &mut buf)).await;
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Applies one message of the change stream: "sync" drops nothing,
    /// "reset" everything, any other the changed device (by UUID and
    /// external id).
    pub async fn apply(&self, change: &DeviceChange) {
        match change.kind.as_str() {
            "sync" => {}
            "reset" => self.clear(),
            _ => {
                if !change.device_uuid.is_empty() {
                    self.invalidate(&change.device_uuid).await;
                }
                if !change.device_id.is_empty() {
                    self.invalidate(&change.device_id).await;
                }
            }
        }
    }

    /// Follows the registry's change stream and [applies](Self::apply) it
    /// until `shutdown`.
    pub async fn follow_changes(&self, shutdown: CancellationToken) {
        crate::follow_device_changes(self.client.clone(), shutdown, |change| async move {
            self.apply(&change).await;
        })
        .await;
    }

    /// The cached answer for `id`: `None` on a miss.
    async fn cached(&self, id: &str) -> Option<Option<Arc<V>>> {
        match self.entries.get(id).await? {
            Slot::Found(v) => Some(Some(v)),
            Slot::Missing => Some(None),
            Slot::Alias(uuid, v) => {
                let mut buf = Uuid::encode_buffer();
                match self.entries.get(uuid_key(&uuid, &mut buf)).await {
                    Some(Slot::Found(w)) if Arc::ptr_eq(&v, &w) => Some(Some(v)),
                    _ => {
                        // The device changed (or its entry went): this way
                        // to it is stale too.
                        self.entries.invalidate(id).await;
                        None
                    }
                }
            }
        }
    }

    /// Asks the registry about `id` (one call for concurrent misses) and
    /// caches the answer unless a change arrived meanwhile.
    async fn load(&self, id: &str) -> Result<Option<Arc<V>>, tonic::Status> {
        let before = self.epoch.load(Ordering::SeqCst);
        let slot = self
            .entries
            .try_get_with_by_ref(id, self.fill(id, before))
            .await;
        if self.epoch.load(Ordering::SeqCst) != before {
            // A change arrived while the answer was on its way: the check in
            // `fill` may have passed just before it, and the answer been
            // stored just after its invalidation.
            if let Ok(Slot::Alias(uuid, _)) = &slot {
                let mut buf = Uuid::encode_buffer();
                self.entries.invalidate(uuid_key(uuid, &mut buf)).await;
            }
            self.entries.invalidate(id).await;
        }
        match slot {
            Ok(slot) => Ok(slot.answer()),
            Err(unkept) => match &*unkept {
                Unkept::Answer(answer) => Ok(answer.clone()),
                Unkept::Failed(status) => Err(status.clone()),
            },
        }
    }

    /// The entry for `id` from the registry's answer; `Err` for one that is
    /// not to be cached. A device found by another id than its UUID text is
    /// stored under its UUID here, and `id` gets an alias of it.
    async fn fill(&self, id: &str, before: u64) -> Result<Slot<V>, Unkept<V>> {
        let answer = self.ask(id).await.map_err(Unkept::Failed)?;
        let current = self.epoch.load(Ordering::SeqCst) == before;
        match answer {
            None if current && kept(self.settings.not_found_ttl) => Ok(Slot::Missing),
            Some((uuid, v)) if current && kept(self.settings.found_ttl) => {
                let mut buf = Uuid::encode_buffer();
                let key = uuid_key(&uuid, &mut buf);
                if key == id {
                    return Ok(Slot::Found(v));
                }
                self.entries
                    .insert(key.to_owned(), Slot::Found(v.clone()))
                    .await;
                Ok(Slot::Alias(uuid, v))
            }
            answer => Err(Unkept::Answer(answer.map(|(_, v)| v))),
        }
    }

    /// The registry's answer for `id`, mapped; `None` for NOT_FOUND.
    async fn ask(&self, id: &str) -> Result<Option<(Uuid, Arc<V>)>, tonic::Status> {
        let mut client = self.client.clone();
        let device = match client
            .get_device(GetDeviceRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s),
        };
        let uuid = Uuid::parse_str(&device.id)
            .map_err(|e| tonic::Status::internal(format!("registry sent a bad id: {e}")))?;
        Ok(Some((uuid, Arc::new((self.map)(uuid, device)))))
    }
}

#[cfg(test)]
mod tests;
