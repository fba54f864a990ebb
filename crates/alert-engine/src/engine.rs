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
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use iot_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use iot_kafka::rdkafka::message::Message;
use iot_proto::Message as _;
use iot_proto::v1::GetDeviceRequest;
use iot_runtime::CancellationToken;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::thresholds::{self, Thresholds};

/// Thresholds per device, from the registry.
pub struct Devices {
    client: iot_proto::RegistryClient,
    cache: Mutex<HashMap<Uuid, Arc<Thresholds>>>,
}

impl Devices {
    pub fn new(client: iot_proto::RegistryClient) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Thresholds>>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The device's thresholds; an unknown device has none.
    pub async fn thresholds(&self, device: Uuid) -> Result<Arc<Thresholds>, tonic::Status> {
        if let Some(t) = self.cache().get(&device) {
            return Ok(t.clone());
        }
        let mut client = self.client.clone();
        let t = match client
            .get_device(GetDeviceRequest {
                id: device.to_string(),
            })
            .await
        {
            Ok(d) => thresholds::parse(
                d.into_inner()
                    .config
                    .and_then(|c| c.alert_threshold_json)
                    .as_deref(),
            ),
            Err(s) if s.code() == tonic::Code::NotFound => Thresholds::new(),
            Err(s) => return Err(s),
        };
        let t = Arc::new(t);
        self.cache().insert(device, t.clone());
        Ok(t)
    }

    /// Drops changed devices from the cache until `shutdown`.
    pub async fn follow_changes(&self, shutdown: CancellationToken) {
        iot_runtime::follow_device_changes(self.client.clone(), shutdown, |c| {
            match c.kind.as_str() {
                "sync" => {}
                "reset" => self.cache().clear(),
                _ => {
                    if let Ok(id) = Uuid::parse_str(&c.device_uuid) {
                        self.cache().remove(&id);
                    }
                }
            }
        })
        .await;
    }
}

/// (device, sensor, alert type) of an open alert.
type OpenKey = (Uuid, String, &'static str);

const RAISE: &str = "INSERT INTO device_alerts
    (device_id, alert_type, severity, sensor_name, message, value, threshold, created_at, last_seen_at)
VALUES ($1, $2, 'warning', $3, $4, $5, $6, $7, $7)
ON CONFLICT (device_id, COALESCE(sensor_name, ''), alert_type) WHERE resolved_at IS NULL
DO UPDATE SET occurrences = device_alerts.occurrences + 1,
              value = excluded.value,
              last_seen_at = GREATEST(device_alerts.last_seen_at, excluded.last_seen_at)";

const RESOLVE: &str = "UPDATE device_alerts SET resolved_at = now()
WHERE device_id = $1 AND sensor_name = $2 AND alert_type = ANY($3) AND resolved_at IS NULL";

const OPEN: &str = "SELECT device_id, sensor_name, alert_type FROM device_alerts
WHERE resolved_at IS NULL AND alert_type = ANY($1) AND sensor_name IS NOT NULL";

/// Conditions open in the database.
async fn load_open(pool: &Pool) -> Result<HashSet<OpenKey>, anyhow::Error> {
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

/// Evaluates every reading of the topic until `shutdown`. A reading's
/// offset is stored only once it is evaluated (and its alert written).
pub async fn run(
    consumer: StreamConsumer,
    pool: Pool,
    devices: Arc<Devices>,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut open = load_open(&pool).await?;
    let mut reload = tokio::time::interval(Duration::from_secs(10));
    reload.tick().await;
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = reload.tick() => {
                // Another replica may have raised or resolved meanwhile.
                match load_open(&pool).await {
                    Ok(o) => open = o,
                    Err(e) => tracing::warn!(error = %e, "cannot reload open alerts"),
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                continue;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match evaluate(
                msg.payload().unwrap_or_default(),
                &pool,
                &devices,
                &mut open,
                &metrics,
            )
            .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "alert evaluation failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(error = %e, "cannot store offset");
        }
    }
}

async fn evaluate(
    payload: &[u8],
    pool: &Pool,
    devices: &Devices,
    open: &mut HashSet<OpenKey>,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<()> {
    // The writer dead-letters undecodable records; here they are skipped.
    let Ok(env) = iot_proto::v1::ReadingEnvelope::decode(payload) else {
        return Ok(());
    };
    let (Ok(device), Ok(value)) = (
        Uuid::parse_str(&env.device_uuid),
        Decimal::from_str(&env.value),
    ) else {
        return Ok(());
    };
    metrics.evaluated.inc();
    let thresholds = devices.thresholds(device).await?;
    let Some(limits) = thresholds.get(&env.sensor_name) else {
        return Ok(());
    };
    let time = env
        .time
        .as_ref()
        .and_then(iot_proto::from_timestamp)
        .unwrap_or_else(chrono::Utc::now);
    match thresholds::check(limits, &env.sensor_name, value) {
        Some(v) => {
            let client = pool.get().await?;
            client
                .execute(
                    RAISE,
                    &[
                        &device,
                        &v.alert_type,
                        &env.sensor_name,
                        &v.message,
                        &value,
                        &v.threshold,
                        &time,
                    ],
                )
                .await?;
            if open.insert((device, env.sensor_name.clone(), v.alert_type)) {
                metrics.raised.inc();
            }
        }
        None => {
            let before = open.len();
            open.retain(|(d, s, _)| !(*d == device && *s == env.sensor_name));
            if open.len() < before {
                let client = pool.get().await?;
                let kinds: Vec<&str> = thresholds::KINDS.to_vec();
                let n = client
                    .execute(RESOLVE, &[&device, &env.sensor_name, &kinds])
                    .await?;
                metrics.resolved.inc_by(n);
            }
        }
    }
    Ok(())
}
