//! [`DeviceCache`]: device-registry's answers, kept until the change stream
//! reports the device (or their time is up, or room is needed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iot_proto::v1::{self, DeviceChange, GetDeviceRequest};
use iot_telemetry::prometheus::{self, IntCounter, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The `max_capacity` the services use.
pub const DEFAULT_MAX_CAPACITY: u64 = 100_000;

/// How much a [`DeviceCache`] keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Most devices kept. A device takes up to two entries (its answer
    /// under its UUID, and the id it was looked up by when that is another),
    /// so the cache holds twice this many entries (and a little room over,
    /// since it is split into shards that fill unevenly): a fleet of this
    /// size looked up by external id fits. Past it, the entries least
    /// likely to be asked for again go (quick_cache's CLOCK-Pro, which a
    /// scan of devices heard once does not flush), not all of them.
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
/// - Concurrent misses for one id make one registry call (a failed one is
///   retried by the next waiting caller).
/// - [`DeviceCache::follow_changes`] drops changed devices at once, and the
///   whole cache on a "reset"; an answer fetched while a change arrived is
///   returned but not cached, since it may predate the change.
pub struct DeviceCache<V> {
    client: iot_proto::RegistryClient,
    map: Box<MapDevice<V>>,
    lifetimes: Lifetimes,
    /// Light per-entry bookkeeping (expiry is checked on lookup, with no
    /// timer wheel or access queues): with a large fleet this cache is most
    /// of a gateway's memory.
    entries: quick_cache::sync::Cache<String, Entry<V>>,
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

/// A slot and until when it may be used (`None`: until a change).
struct Entry<V> {
    slot: Slot<V>,
    expires: Option<Instant>,
}

// Derived Clone would ask for `V: Clone`.
impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            expires: self.expires,
        }
    }
}

impl<V> Entry<V> {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
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

    /// `slot` as stored at `now`.
    fn entry<V>(&self, slot: Slot<V>, now: Instant) -> Entry<V> {
        Entry {
            expires: self.of(&slot).and_then(|ttl| now.checked_add(ttl)),
            slot,
        }
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

/// The capacity and shard count that hold `entries`. The cache is split
/// into shards by hash, each with an equal part of the capacity, and the
/// entries do not split evenly: a shard's share of them varies by about its
/// square root. Each shard gets its share, six times that variation and an
/// eighth over, so a fleet of the named size fits (with quick_cache's own
/// count of shards, a fleet of 1,000 devices overflowed a shard about one
/// time in ten). A shard holds at least 64 entries' share, so that the
/// variation stays small beside it.
fn sized(entries: usize) -> (usize, usize) {
    let parallel = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let wanted = (parallel * 4).min(entries / 64).max(1);
    // quick_cache rounds the count up to a power of two: round it down.
    let shards = if wanted.is_power_of_two() {
        wanted
    } else {
        wanted.next_power_of_two() / 2
    };
    let share = entries.div_ceil(shards);
    // 6 × √share, in integers.
    let spread = 6 * (share as f64).sqrt().ceil() as usize;
    let per_shard = share
        .saturating_add(share / 8)
        .saturating_add(spread)
        .saturating_add(1);
    (per_shard.saturating_mul(shards), shards)
}

impl<V: Send + Sync + 'static> DeviceCache<V> {
    /// A cache that asks `client` (which needs the admin scope to follow
    /// changes) and maps each device found with `map`.
    pub fn new(
        client: iot_proto::RegistryClient,
        settings: Settings,
        map: impl Fn(Uuid, v1::Device) -> V + Send + Sync + 'static,
    ) -> Self {
        let (capacity, shards) =
            sized(usize::try_from(settings.max_capacity.saturating_mul(2)).unwrap_or(usize::MAX));
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(capacity)
            .weight_capacity(u64::try_from(capacity).unwrap_or(u64::MAX))
            .shards(shards)
            .build()
            .unwrap_or_else(|e| unreachable!("a capacity and a shard count are valid: {e:?}"));
        let entries = quick_cache::sync::Cache::with_options(
            options,
            quick_cache::UnitWeighter,
            quick_cache::DefaultHashBuilder::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
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
            lifetimes: Lifetimes {
                found: settings.found_ttl,
                not_found: settings.not_found_ttl,
            },
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
        if let Some((
            _,
            Entry {
                slot: Slot::Alias(uuid, _),
                ..
            },
        )) = self.entries.remove(id)
        {
            let mut buf = Uuid::encode_buffer();
            self.entries.remove(uuid_key(&uuid, &mut buf));
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
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
        self.cached_now(id, Instant::now())
    }

    fn cached_now(&self, id: &str, now: Instant) -> Option<Option<Arc<V>>> {
        let entry = self.entries.get(id)?;
        if !entry.live(now) {
            self.entries.remove_if(id, |e| !e.live(now));
            return None;
        }
        match entry.slot {
            Slot::Found(v) => Some(Some(v)),
            Slot::Missing => Some(None),
            Slot::Alias(uuid, v) => {
                let mut buf = Uuid::encode_buffer();
                match self.entries.get(uuid_key(&uuid, &mut buf)) {
                    Some(e)
                        if e.live(now)
                            && matches!(&e.slot, Slot::Found(w) if Arc::ptr_eq(&v, w)) =>
                    {
                        Some(Some(v))
                    }
                    _ => {
                        // The device changed (or its entry went): this way
                        // to it is stale too.
                        self.entries.remove(id);
                        None
                    }
                }
            }
        }
    }

    /// Asks the registry about `id` (one call at a time for concurrent
    /// misses: the others wait for its answer) and caches the answer
    /// unless a change arrived meanwhile.
    async fn load(&self, id: &str) -> Result<Option<Arc<V>>, tonic::Status> {
        let guard = loop {
            match self.entries.get_value_or_guard_async(id).await {
                // Filled while this caller waited.
                Ok(entry) if entry.live(Instant::now()) => {
                    return Ok(entry.slot.answer());
                }
                Ok(_) => {
                    self.entries.remove_if(id, |e| !e.live(Instant::now()));
                }
                Err(guard) => break guard,
            }
        };
        let before = self.epoch.load(Ordering::SeqCst);
        // Dropping the guard unfilled (an error, or an answer not to be
        // kept) hands the miss to the next waiting caller.
        let answer = self.ask(id).await?;
        if self.epoch.load(Ordering::SeqCst) != before {
            // A change arrived while the answer was on its way: it may
            // predate the change.
            return Ok(answer.map(|(_, v)| v));
        }
        let now = Instant::now();
        let slot = match answer {
            None if kept(self.lifetimes.not_found) => Slot::Missing,
            Some((uuid, v)) if kept(self.lifetimes.found) => {
                let mut buf = Uuid::encode_buffer();
                let key = uuid_key(&uuid, &mut buf);
                if key == id {
                    Slot::Found(v)
                } else {
                    self.entries.insert(
                        key.to_owned(),
                        self.lifetimes.entry(Slot::Found(v.clone()), now),
                    );
                    Slot::Alias(uuid, v)
                }
            }
            answer => return Ok(answer.map(|(_, v)| v)),
        };
        let answer = slot.answer();
        let _ = guard.insert(self.lifetimes.entry(slot, now));
        if self.epoch.load(Ordering::SeqCst) != before {
            // The change came between the check above and the insert: its
            // invalidation may have run before the answer was stored.
            if let Some(Entry {
                slot: Slot::Alias(uuid, _),
                ..
            }) = self.entries.get(id)
            {
                let mut buf = Uuid::encode_buffer();
                self.entries.remove(uuid_key(&uuid, &mut buf));
            }
            self.entries.remove(id);
        }
        Ok(answer)
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
