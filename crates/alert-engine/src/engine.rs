//! Threshold rules on the readings topic: raise one alert per (device,
//! sensor, condition) while it holds, resolve it when a reading is back
//! within limits. Thresholds come from device-registry, cached and dropped
//! as soon as the registry reports a change.
//!
//! Architecture Invariant: "one open alert per condition" is the database's
//! unique index (`device_alerts_one_open`); the engine's memory only saves
//! writes (it knows which conditions are open so that a normal reading
//! costs no query), and is reloaded from the database.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use iot_kafka::ReadingsStream;
use iot_kafka::rdkafka::message::Message;
use iot_runtime::CancellationToken;
use registry_client::DeviceCache;
use rust_decimal::Decimal;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::error::AlertError;
use crate::events;
use crate::rules::{self, Action, DeviceFacts, Evaluator};
use crate::thresholds::{self, Thresholds};
use iot_domain::presence::{PLATFORM, Seen};

/// What the rules need to know of a device.
#[derive(Debug, Default)]
pub struct Rules {
    pub thresholds: Thresholds,
    pub read_interval: Option<i32>,
    pub active: bool,
    pub last_heartbeat: Option<chrono::DateTime<chrono::Utc>>,
    /// When it disconnected, if not heard from since.
    pub disconnected_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What alert rules can see of the device.
    pub facts: DeviceFacts,
}

/// Rules per device, from the registry: cached until the registry's change
/// stream reports the device (an unknown device is asked about again).
pub struct Devices {
    cache: DeviceCache<Rules>,
    /// Devices with a presence change (connected, disconnected) not yet
    /// tracked by the offline check: a device may connect and die without
    /// a reading.
    presence: std::sync::Mutex<HashSet<Uuid>>,
}

/// Devices whose rules are kept; past it, the least likely to be used
/// again go.
const MAX_DEVICES: u64 = registry_client::DEFAULT_MAX_CAPACITY;

impl Devices {
    pub fn new(client: iot_proto::RegistryClient) -> Self {
        let settings = registry_client::Settings {
            max_capacity: MAX_DEVICES,
            found_ttl: None,
            not_found_ttl: Some(Duration::ZERO),
        };
        Self {
            cache: DeviceCache::new(client, settings, Rules::of),
            presence: std::sync::Mutex::default(),
        }
    }

    fn client(&self) -> &iot_proto::RegistryClient {
        self.cache.client()
    }

    /// Exports the cache's hit and miss counts.
    pub fn register_metrics(
        &self,
        registry: &iot_telemetry::prometheus::Registry,
    ) -> Result<(), iot_telemetry::prometheus::Error> {
        self.cache.register_metrics(registry)
    }

    /// The device's rules (cached); `None` for a device the registry does
    /// not know.
    pub async fn rules(&self, device: Uuid) -> Result<Option<Arc<Rules>>, tonic::Status> {
        self.cache.get_uuid(device).await
    }

    /// The device's rules straight from the registry (with its current
    /// heartbeat).
    pub async fn fetch(&self, device: Uuid) -> Result<Option<Arc<Rules>>, tonic::Status> {
        self.cache.fetch(&device.to_string()).await
    }

    /// Drops changed devices from the cache, and notes presence changes,
    /// until `shutdown`.
    pub async fn follow_changes(&self, shutdown: CancellationToken) {
        registry_client::follow_device_changes(
            self.client().clone(),
            shutdown,
            |change| async move {
                self.cache.apply(&change).await;
                if change.kind == "presence"
                    && let Ok(id) = Uuid::parse_str(&change.device_uuid)
                {
                    self.presence
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id);
                }
            },
        )
        .await;
    }

    /// The devices with presence changes since the last call.
    fn take_presence(&self) -> HashSet<Uuid> {
        std::mem::take(
            &mut *self
                .presence
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Rules {
    /// The rules of the registry's `d`.
    fn of(_: Uuid, d: iot_proto::v1::Device) -> Self {
        let config = d.config.unwrap_or_default();
        Rules {
            thresholds: thresholds::parse(config.alert_threshold_json.as_deref()),
            read_interval: (config.read_interval > 0).then_some(config.read_interval),
            active: d.status == "active",
            last_heartbeat: d
                .last_heartbeat
                .as_ref()
                .and_then(iot_proto::from_timestamp),
            disconnected_at: d
                .disconnected_at
                .as_ref()
                .and_then(iot_proto::from_timestamp),
            facts: DeviceFacts {
                owner: Uuid::parse_str(&d.owner_id).ok(),
                device_id: d.device_id,
                device_type: d.device_type,
                location: d.location.unwrap_or_default(),
            },
        }
    }
}

/// (device, sensor, alert type) of an open alert.
type OpenKey = (Uuid, String, &'static str);

/// Raises an alert, or counts it again if open; returns it only when it
/// was raised now (that is the change subscribers hear of). Parameters:
/// device, alert type, severity, sensor, message, value, threshold, time,
/// rule (NULL for the built-in conditions). Nothing is raised for a rule
/// that no longer exists.
fn raise_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH up AS (
                INSERT INTO device_alerts
                    (device_id, alert_type, severity, sensor_name, message, value, threshold,
                     created_at, last_seen_at, owner_id, rule_id)
                SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text, $6::numeric, $7::numeric,
                       $8::timestamptz, $8::timestamptz,
                       (SELECT owner_id FROM device_owners WHERE device_id = $1), $9::uuid
                -- A rule deleted meanwhile raises nothing (its deletion, in
                -- progress, is waited for: see AlertsService::delete_rule).
                WHERE $9::uuid IS NULL
                   OR EXISTS (SELECT 1 FROM alert_rules WHERE id = $9 FOR KEY SHARE)
                ON CONFLICT (device_id, COALESCE(sensor_name, ''), alert_type) WHERE resolved_at IS NULL
                DO UPDATE SET occurrences = device_alerts.occurrences + 1,
                              value = excluded.value,
                              last_seen_at = GREATEST(device_alerts.last_seen_at, excluded.last_seen_at)
                RETURNING *, (xmax = 0) AS inserted)
             SELECT {} FROM up WHERE inserted",
            events::COLUMNS
        )
    });
    &SQL
}

fn resolve_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE device_alerts SET resolved_at = now()
             WHERE device_id = $1 AND sensor_name = $2 AND alert_type = ANY($3) AND resolved_at IS NULL
             RETURNING {}",
            events::COLUMNS
        )
    });
    &SQL
}

fn resolve_rule_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE device_alerts SET resolved_at = now()
             WHERE device_id = $1 AND sensor_name = $2 AND rule_id = $3 AND resolved_at IS NULL
             RETURNING {}",
            events::COLUMNS
        )
    });
    &SQL
}

/// Open alerts raised by rules: (rule, device, sensor).
async fn open_rule_alerts(pool: &Pool) -> Result<HashSet<(Uuid, Uuid, String)>, AlertError> {
    let db = pool.get().await?;
    Ok(db
        .query(
            "SELECT rule_id, device_id, sensor_name FROM device_alerts
             WHERE resolved_at IS NULL AND rule_id IS NOT NULL AND sensor_name IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

const OPEN: &str = "SELECT device_id, sensor_name, alert_type FROM device_alerts
WHERE resolved_at IS NULL AND alert_type = ANY($1) AND sensor_name IS NOT NULL";

fn raise_offline_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO device_alerts (device_id, alert_type, severity, message, created_at, last_seen_at, owner_id)
             VALUES ($1, 'device_offline', 'warning', $2, now(), now(), (SELECT owner_id FROM device_owners WHERE device_id = $1))
             ON CONFLICT (device_id, COALESCE(sensor_name, ''), alert_type) WHERE resolved_at IS NULL
             DO NOTHING
             RETURNING {}",
            events::COLUMNS
        )
    });
    &SQL
}

fn resolve_offline_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE device_alerts SET resolved_at = now()
             WHERE device_id = $1 AND alert_type = 'device_offline' AND resolved_at IS NULL
             RETURNING {}",
            events::COLUMNS
        )
    });
    &SQL
}

const OPEN_OFFLINE: &str = "SELECT device_id FROM device_alerts WHERE resolved_at IS NULL AND alert_type = 'device_offline'";

/// Devices with an open offline alert (whoever raised or resolved it).
async fn open_offline(pool: &Pool) -> Result<HashSet<Uuid>, AlertError> {
    let db = pool.get().await?;
    Ok(db
        .query(OPEN_OFFLINE, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Devices and when they were last heard from, and which are offline.
#[derive(Default)]
pub struct Presence {
    last_seen: HashMap<Uuid, chrono::DateTime<chrono::Utc>>,
    offline: HashSet<Uuid>,
}

impl Presence {
    /// Starts from the database (open offline alerts) and the registry's
    /// heartbeats, so a restart raises no false alert and misses no device
    /// that went silent while the engine was down.
    pub async fn load(pool: &Pool, client: &iot_proto::RegistryClient) -> Result<Self, AlertError> {
        let mut p = Presence {
            offline: open_offline(pool).await?,
            ..Presence::default()
        };
        if let Err(e) = p.seed(client).await {
            // Devices are then tracked from their next reading on.
            tracing::warn!(error = %e, "cannot read heartbeats from the registry; tracking devices from their readings");
        }
        Ok(p)
    }

    /// Last-seen times from the registry's heartbeats of active devices.
    async fn seed(&mut self, client: &iot_proto::RegistryClient) -> Result<(), tonic::Status> {
        let mut client = client.clone();
        let mut cursor = String::new();
        loop {
            let page = client
                .list_devices(iot_proto::v1::ListDevicesRequest {
                    status: Some("active".into()),
                    limit: 1000,
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            for d in &page.devices {
                if let (Ok(id), Some(hb)) = (
                    Uuid::parse_str(&d.id),
                    d.last_heartbeat
                        .as_ref()
                        .and_then(iot_proto::from_timestamp),
                ) {
                    self.last_seen.insert(id, hb);
                }
            }
            if page.next_cursor.is_empty() {
                return Ok(());
            }
            cursor = page.next_cursor;
        }
    }
}

/// What the engine knows of `device`'s presence: its newest reading here
/// and the registry's record.
fn seen_of(rules: &Rules, seen: chrono::DateTime<chrono::Utc>) -> Seen {
    Seen {
        last_heartbeat: Some(rules.last_heartbeat.map_or(seen, |h| h.max(seen))),
        disconnected_at: rules.disconnected_at,
        read_interval: rules.read_interval,
    }
}

/// Raises `device_offline` for devices offline by the platform's one
/// definition (`iot_domain::presence`: disconnected, or silent past their
/// interval times the factor), and resolves it for devices back online
/// without a reading (a birth message). The registry's record (kept
/// current by every gateway; a presence change drops it from the cache) is
/// read again before raising, so a device reporting through another
/// replica's partitions is not taken for offline.
async fn check_offline(
    pool: &Pool,
    devices: &Devices,
    presence: &mut Presence,
    metrics: &crate::metrics::Metrics,
) -> Result<(), AlertError> {
    let now = chrono::Utc::now();
    // A device heard of by presence alone is tracked from its record.
    for device in devices.take_presence() {
        if presence.last_seen.contains_key(&device) {
            continue;
        }
        if let Some(h) = devices
            .rules(device)
            .await?
            .and_then(|r| r.last_heartbeat.or(r.disconnected_at))
        {
            presence.last_seen.insert(device, h);
        }
    }
    let tracked: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> =
        presence.last_seen.iter().map(|(d, t)| (*d, *t)).collect();
    for (device, seen) in tracked {
        let is_offline = presence.offline.contains(&device);
        let Some(cached) = devices.rules(device).await? else {
            presence.last_seen.remove(&device);
            continue;
        };
        let online = PLATFORM.is_online(&seen_of(&cached, seen), now);
        if is_offline {
            // Back by a birth message (a reading resolves in `evaluate`).
            if online && cached.disconnected_at.is_none() {
                let resolved =
                    events::change(pool, "resolved", resolve_offline_sql(), &[&device]).await?;
                presence.offline.remove(&device);
                metrics.resolved.inc_by(resolved.len() as u64);
            }
            continue;
        }
        if online {
            continue;
        }
        let Some(rules) = devices.fetch(device).await? else {
            presence.last_seen.remove(&device);
            continue;
        };
        let known = seen_of(&rules, seen);
        if let Some(h) = known.last_heartbeat {
            presence.last_seen.insert(device, h);
        }
        if !rules.active || PLATFORM.is_online(&known, now) {
            continue;
        }
        let message = match (known.disconnected_at, known.last_heartbeat) {
            (Some(d), _) => format!("disconnected at {}", d.to_rfc3339()),
            (None, Some(h)) => format!(
                "no reading since {} (expected within {} s)",
                h.to_rfc3339(),
                PLATFORM.silence_limit(known.read_interval).as_secs()
            ),
            (None, None) => "never heard from".to_owned(),
        };
        events::change(pool, "raised", raise_offline_sql(), &[&device, &message]).await?;
        presence.offline.insert(device);
        metrics.raised.inc();
        tracing::info!(%device, "device offline");
    }
    Ok(())
}

/// Conditions open in the database.
async fn load_open(pool: &Pool) -> Result<HashSet<OpenKey>, AlertError> {
    let client = pool.get().await?;
    let kinds: Vec<&str> = thresholds::KINDS.to_vec();
    let rows = client.query(OPEN, &[&kinds]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind: String = r.get(2);
            let kind = thresholds::KINDS.into_iter().find(|k| *k == kind)?;
            Some((r.get(0), r.get(1), kind))
        })
        .collect())
}

/// Reloads the open alerts (another replica, or someone by hand, may
/// have raised or resolved meanwhile).
async fn reload_open(
    pool: &Pool,
    open: &mut HashSet<OpenKey>,
    presence: &mut Presence,
    ruled: &mut Ruled,
) -> Result<(), AlertError> {
    let (o, off, r) =
        tokio::try_join!(load_open(pool), open_offline(pool), open_rule_alerts(pool))?;
    *open = o;
    presence.offline = off;
    ruled.eval.set_open(r);
    Ok(())
}

/// Evaluates every reading of the topic until `shutdown`. A reading is
/// acknowledged (its offset stored) only once it is evaluated (and its
/// alert written).
pub async fn run(
    stream: ReadingsStream,
    pool: Pool,
    devices: Arc<Devices>,
    offline: crate::config::OfflineConfig,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) -> Result<(), AlertError> {
    let mut open = HashSet::new();
    let mut presence = Presence::load(&pool, devices.client()).await?;
    let mut ruled = Ruled {
        rules: rules::load(&pool).await?,
        eval: Evaluator::default(),
    };
    let mut reload = tokio::time::interval(Duration::from_secs(10));
    reload.tick().await;
    // Rule changes apply within two seconds.
    let mut reload_rules = tokio::time::interval(Duration::from_secs(2));
    reload_rules.tick().await;
    let mut check = tokio::time::interval(Duration::from_secs(offline.check_secs));
    check.tick().await;
    // The state is (re)loaded before the first reading, after every
    // assignment and after every failed evaluation (whose writes may be
    // partly done): the database is the truth, memory a copy.
    let mut stale = true;
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = check.tick() => {
                if let Err(e) = check_offline(&pool, &devices, &mut presence, &metrics).await {
                    tracing::warn!(error = %e, "offline check failed");
                }
                continue;
            }
            _ = reload.tick() => {
                if let Err(e) = reload_open(&pool, &mut open, &mut presence, &mut ruled).await {
                    tracing::warn!(error = %e, "cannot reload open alerts");
                }
                continue;
            }
            _ = reload_rules.tick() => {
                match rules::load(&pool).await {
                    Ok(r) => ruled.rules = r,
                    Err(e) => tracing::warn!(error = %e, "cannot reload alert rules"),
                }
                continue;
            }
            m = stream.recv() => m,
        };
        // The reading's trace, from the gateway's record header.
        // (A span per reading only when spans go somewhere.)
        let span = if iot_telemetry::trace::exporting() {
            let span = tracing::info_span!("alerts.evaluate", otel.kind = "consumer");
            iot_telemetry::trace::set_remote_parent(&span, iot_kafka::traceparent(&msg));
            span
        } else {
            tracing::Span::none()
        };
        // Consumption is paused while the evaluation fails.
        let mut retry = stream.retry(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            // After an assignment a partition may come from another
            // replica, whose episodes and alerts this one has not seen.
            if stream.reassigned() {
                stale = true;
            }
            let mut evaluated = Ok(());
            if stale {
                evaluated = async {
                    reload_open(&pool, &mut open, &mut presence, &mut ruled).await?;
                    ruled.eval.set_episodes(rules::load_episodes(&pool).await?);
                    Ok::<_, AlertError>(())
                }
                .await;
                stale = evaluated.is_err();
            }
            if evaluated.is_ok() {
                evaluated = evaluate(
                    msg.payload().unwrap_or_default(),
                    &pool,
                    &devices,
                    &mut open,
                    &mut presence,
                    &mut ruled,
                    &metrics,
                )
                .instrument(span.clone())
                .await;
            }
            match evaluated {
                Ok(()) => break,
                Err(e) => {
                    stale = true;
                    tracing::warn!(error = %e, "alert evaluation failed; retrying");
                    if !retry.failed(&shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
        drop(retry);
        stream.ack_record(&msg);
    }
}

async fn evaluate(
    payload: &[u8],
    pool: &Pool,
    devices: &Devices,
    open: &mut HashSet<OpenKey>,
    presence: &mut Presence,
    ruled: &mut Ruled,
    metrics: &crate::metrics::Metrics,
) -> Result<(), AlertError> {
    // The writer dead-letters undecodable records; here they are skipped.
    let Ok(env) = iot_proto::reading::decode(payload) else {
        return Ok(());
    };
    let (device, value, time) = (env.device_uuid, env.value, env.time);
    metrics.evaluated.inc();
    // The device is heard from: an offline alert resolves.
    let received = env.received_at;
    let seen = presence.last_seen.entry(device).or_insert(received);
    *seen = (*seen).max(received);
    if presence.offline.contains(&device) {
        let resolved = events::change(pool, "resolved", resolve_offline_sql(), &[&device]).await?;
        presence.offline.remove(&device);
        metrics.resolved.inc_by(resolved.len() as u64);
    }
    let Some(rules) = devices.rules(device).await? else {
        return Ok(());
    };
    if !ruled.rules.is_empty() {
        evaluate_rules(
            pool,
            ruled,
            device,
            &rules.facts,
            &env,
            value,
            time,
            metrics,
        )
        .await?;
    }
    let Some(limits) = rules.thresholds.get(&env.sensor_name) else {
        return Ok(());
    };
    match thresholds::check(limits, &env.sensor_name, value) {
        Some(v) => {
            events::change(
                pool,
                "raised",
                raise_sql(),
                &[
                    &device,
                    &v.alert_type,
                    &"warning",
                    &env.sensor_name,
                    &v.message,
                    &value,
                    &v.threshold,
                    &time,
                    &None::<Uuid>,
                ],
            )
            .await?;
            if open.insert((device, env.sensor_name.clone(), v.alert_type)) {
                metrics.raised.inc();
            }
        }
        None => {
            let mut was_open = false;
            for kind in thresholds::KINDS {
                was_open |= open.remove(&(device, env.sensor_name.clone(), kind));
            }
            if was_open {
                let kinds: Vec<&str> = thresholds::KINDS.to_vec();
                let resolved = events::change(
                    pool,
                    "resolved",
                    resolve_sql(),
                    &[&device, &env.sensor_name, &kinds],
                )
                .await?;
                metrics.resolved.inc_by(resolved.len() as u64);
            }
        }
    }
    Ok(())
}

/// The alert rules and their per-series state.
struct Ruled {
    rules: rules::RuleSet,
    eval: Evaluator,
}

/// Runs the rules on one reading and writes what they decide.
#[allow(clippy::too_many_arguments)]
async fn evaluate_rules(
    pool: &Pool,
    ruled: &mut Ruled,
    device: Uuid,
    facts: &DeviceFacts,
    env: &iot_domain::Reading,
    value: Decimal,
    time: chrono::DateTime<chrono::Utc>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), AlertError> {
    let reading = crate::expr::Reading {
        // Through its text, as the rule language reads numbers.
        value: env.value.to_string().parse().unwrap_or(f64::NAN),
        sensor_name: &env.sensor_name,
        unit: env.unit.as_deref().unwrap_or_default(),
        quality: env.quality.as_deref().unwrap_or_default(),
        device_id: &facts.device_id,
        device_type: &facts.device_type,
        location: &facts.location,
    };
    let decided = ruled
        .eval
        .decide(&ruled.rules, device, facts, &reading, time);
    for (rule, action) in decided {
        match action {
            Action::Raise => {
                let message = rule.message.clone().unwrap_or_else(|| {
                    format!(
                        "{} = {} matched rule {}",
                        env.sensor_name, env.value, rule.name
                    )
                });
                let raised = events::change(
                    pool,
                    "raised",
                    raise_sql(),
                    &[
                        &device,
                        &rule.name,
                        &rule.severity,
                        &env.sensor_name,
                        &message,
                        &value,
                        &None::<Decimal>,
                        &time,
                        &Some(rule.id),
                    ],
                )
                .await?;
                metrics.raised.inc_by(raised.len() as u64);
            }
            Action::Resolve => {
                let resolved = events::change(
                    pool,
                    "resolved",
                    resolve_rule_sql(),
                    &[&device, &env.sensor_name, &rule.id],
                )
                .await?;
                ruled.eval.resolved(rule.id, device, &env.sensor_name);
                metrics.resolved.inc_by(resolved.len() as u64);
            }
            Action::EpisodeStarted(since) => {
                pool.get()
                    .await?
                    .execute(
                        rules::EPISODE_STARTED,
                        &[&rule.id, &rule.version, &device, &env.sensor_name, &since],
                    )
                    .await?;
            }
            Action::EpisodeEnded => {
                pool.get()
                    .await?
                    .execute(rules::EPISODE_ENDED, &[&rule.id, &device, &env.sensor_name])
                    .await?;
            }
        }
    }
    Ok(())
}
