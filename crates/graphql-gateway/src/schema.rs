//! The public GraphQL schema (the spec's FraiseQL schema, in async-graphql).
//!
//! Naming follows the spec's example queries: root fields and arguments are
//! camelCase, object fields snake_case. Every resolver acts for the
//! authenticated [`Principal`] and sees only its owner's data: devices are
//! looked up in device-registry with the caller's scope before any reading
//! or alert of theirs is fetched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{
    Context, Data, Enum, ErrorExtensions, ID, InputObject, Json, Object, Result, Schema,
    SimpleObject, Subscription,
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryFutureExt as _};
use iot_domain::bucket::{self, Width};
use iot_proto::v1;

use crate::auth::Principal;
use crate::config::Limits;
use crate::hub::{AlertHub, HubEvent};
use crate::upstream::{Upstreams, error};

pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What every resolver can reach.
pub struct Shared {
    pub up: Upstreams,
    pub limits: Limits,
    pub hub: AlertHub,
    pub known: KnownDevices,
}

/// Devices the registry has lately found in a scope, so that telemetry
/// queries about them (`sensorMetrics`, `sensorReadings`) skip its check.
/// A device's owner is set when the registry creates it (with a UUID of
/// its own making) and never changes, so a device found in a scope stays in
/// it until deleted: an entry is trusted for [`KNOWN_FOR`], and this
/// gateway forgets a device it deletes at once. A device deleted through
/// another replica can still answer its own owner's telemetry queries for
/// that long; it never becomes visible to anyone else. Entries are per
/// scope: another caller's lookup is never taken as one's own.
#[derive(Default)]
pub struct KnownDevices(std::sync::Mutex<HashMap<(String, String), std::time::Instant>>);

/// How long a device found in a scope is taken as still there.
pub const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// Most entries kept; past it, expired ones go, then all.
const KNOWN_MAX: usize = 100_000;

impl KnownDevices {
    fn key(scope: &iot_proto::Scope, uuid: &str) -> (String, String) {
        let scope = match scope {
            iot_proto::Scope::Admin => "*".to_owned(),
            iot_proto::Scope::Owner(o) => o.clone(),
        };
        (scope, uuid.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), std::time::Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether device `uuid` was found in `scope` within [`KNOWN_FOR`].
    pub fn knows(&self, scope: &iot_proto::Scope, uuid: &str) -> bool {
        self.lock()
            .get(&Self::key(scope, uuid))
            .is_some_and(|seen| seen.elapsed() < KNOWN_FOR)
    }

    /// The registry found device `uuid` in `scope` just now.
    pub fn found(&self, scope: &iot_proto::Scope, uuid: &str) {
        let mut known = self.lock();
        if known.len() >= KNOWN_MAX {
            known.retain(|_, seen| seen.elapsed() < KNOWN_FOR);
            if known.len() >= KNOWN_MAX {
                known.clear();
            }
        }
        known.insert(Self::key(scope, uuid), std::time::Instant::now());
    }

    /// Device `id` (a UUID or an external id) is gone, for every scope.
    pub fn forget(&self, id: &str) {
        let id = uuid::Uuid::parse_str(id).map_or_else(|_| id.to_owned(), |u| u.to_string());
        self.lock().retain(|(_, uuid), _| *uuid != id);
    }
}

pub fn build(shared: Shared) -> ApiSchema {
    let limits = shared.limits.clone();
    let mut b = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(shared)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .extension(crate::codes::ErrorCodes)
        .extension(crate::http::WsRateLimit);
    if !limits.introspection {
        b = b.disable_introspection();
    }
    b.finish()
}

/// The schema with no backends, for its SDL.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

/// Runs a loader's batch in the span of the request that started it, so
/// its backend calls carry the request's trace.
fn spawn_traced<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument as _;
    tokio::spawn(f.in_current_span())
}

/// Per-request (or per-connection) data: the caller and its loaders.
pub fn request_data(up: &Upstreams, who: Principal) -> Data {
    let mut data = Data::default();
    let scope = who.scope();
    data.insert(DataLoader::new(
        LatestLoader { up: up.clone() },
        spawn_traced,
    ));
    data.insert(DataLoader::new(
        OpenAlertsLoader {
            up: up.clone(),
            scope: scope.clone(),
        },
        spawn_traced,
    ));
    data.insert(DataLoader::new(
        DeviceLoader {
            up: up.clone(),
            scope: scope.clone(),
        },
        spawn_traced,
    ));
    data.insert(DataLoader::new(
        SensorLoader {
            up: up.clone(),
            scope,
        },
        spawn_traced,
    ));
    data.insert(who);
    data
}

fn shared<'a>(ctx: &Context<'a>) -> &'a Shared {
    ctx.data_unchecked::<Shared>()
}

fn who<'a>(ctx: &Context<'a>) -> Result<&'a Principal> {
    ctx.data::<Principal>()
        .map_err(|_| error("UNAUTHENTICATED", "not authenticated"))
}

pub(crate) fn decimal(s: &str) -> f64 {
    s.parse().unwrap_or(f64::NAN)
}

fn opt_decimal(s: Option<&String>) -> Option<f64> {
    s.map(|s| decimal(s))
}

fn time(t: Option<&iot_proto::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(iot_proto::from_timestamp)
}

/// An RFC 3339 argument; BAD_USER_INPUT naming the argument otherwise.
fn parse_time(arg: &str, s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            error(
                "BAD_USER_INPUT",
                format!("{arg}: {s:?} is not an RFC 3339 time ({e})"),
            )
        })
}

/// `[start, end)` of a telemetry query, within the configured longest range.
fn range(limits: &Limits, start: &str, end: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let (s, e) = (parse_time("startTime", start)?, parse_time("endTime", end)?);
    if e <= s {
        return Err(error("BAD_USER_INPUT", "endTime: must be after startTime"));
    }
    if e - s > chrono::TimeDelta::days(i64::from(limits.max_range_days)) {
        return Err(error(
            "BAD_USER_INPUT",
            format!(
                "endTime: the range may span at most {} days",
                limits.max_range_days
            ),
        ));
    }
    Ok((s, e))
}

fn page(limit: i32, max: u32, arg: &str) -> Result<u32> {
    match u32::try_from(limit) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(error(
            "BAD_USER_INPUT",
            format!("{arg}: must be between 1 and {max}, not {limit}"),
        )),
    }
}

/// The caller's device `id` (UUID or device_id), or NOT_FOUND.
async fn find_device(ctx: &Context<'_>, id: &str) -> Result<v1::Device> {
    get_device(&shared(ctx).up, who(ctx)?.scope(), id).await
}

/// Device `id` in `scope` (GetDevice), or NOT_FOUND: also what a live
/// stream asks at each poll to know the device is still the caller's.
async fn get_device(up: &Upstreams, scope: iot_proto::Scope, id: &str) -> Result<v1::Device> {
    up.call(
        "device-registry",
        "GetDevice",
        up.registry(scope)
            .get_device(v1::GetDeviceRequest { id: id.to_owned() }),
    )
    .await
}

/// `fetch`'s answer for the caller's device `id`. When `id` is a UUID (as
/// the spec's queries pass it), the device check and the fetch start at
/// once, so the check adds no round trip. The answer is released only once
/// the registry has found the device in the caller's scope; a failed check
/// returns its own error (not found) at once and drops the fetch, which
/// cancels the call, so the time to that error is the check's alone and
/// tells nothing about another owner's data. A device the registry found
/// in the caller's scope lately ([`KnownDevices`]) is not checked again.
/// Otherwise (an external `device_id`) the device is looked up first for
/// its UUID.
async fn of_device<T, F, Fut>(ctx: &Context<'_>, id: &str, fetch: F) -> Result<T>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    use futures::future::{Either, select};
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        let device = find_device(ctx, id).await?;
        return fetch(device.id).await;
    };
    let uuid = uuid.to_string();
    let (known, scope) = (&shared(ctx).known, who(ctx)?.scope());
    if known.knows(&scope, &uuid) {
        return fetch(uuid).await;
    }
    let check = std::pin::pin!(find_device(ctx, id));
    let fetching = std::pin::pin!(fetch(uuid.clone()));
    // Whichever ends first, the check is awaited before any answer.
    let (device, answer) = match select(check, fetching).await {
        Either::Left((device, fetching)) => (device?, Either::Left(fetching)),
        Either::Right((got, check)) => (check.await?, Either::Right(got)),
    };
    if device.id != uuid {
        // The registry resolved `id` as some device's external id.
        return fetch(device.id).await;
    }
    known.found(&scope, &uuid);
    match answer {
        Either::Left(fetching) => fetching.await,
        Either::Right(got) => got,
    }
}

// ---------------------------------------------------------------- objects

/// A device: something that publishes sensor readings.
pub struct Device(pub v1::Device, Prefetched);

impl From<v1::Device> for Device {
    fn from(d: v1::Device) -> Self {
        Self(d, Prefetched::default())
    }
}

/// What a listing fetched for all its devices at once (one call each), so
/// a page costs a fixed number of backend calls whatever its size.
#[derive(Clone, Default)]
struct Prefetched {
    latest: Option<Arc<HashMap<String, Vec<v1::SensorReading>>>>,
    alerts: Option<Arc<HashMap<String, Vec<v1::Alert>>>>,
    sensors: Option<Arc<HashMap<String, Vec<v1::Sensor>>>>,
}

impl Prefetched {
    /// Fetches the fields `ctx`'s selection asks for, for `devices` (a
    /// page, or the one device of `device(id)`). A
    /// failure leaves the field to the per-device loaders (which report it).
    async fn for_page(ctx: &Context<'_>, devices: &[v1::Device]) -> Result<Self> {
        let look = ctx.look_ahead();
        let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
        let up = &shared(ctx).up;
        let scope = who(ctx)?.scope();
        let latest = async {
            if !look.field("current_readings").exists() {
                return None;
            }
            LatestLoader { up: up.clone() }
                .load(&ids)
                .await
                .ok()
                .map(Arc::new)
        };
        let alerts = async {
            if !look.field("alerts").exists() {
                return None;
            }
            OpenAlertsLoader {
                up: up.clone(),
                scope: scope.clone(),
            }
            .load(&ids)
            .await
            .ok()
            .map(Arc::new)
        };
        let sensors = async {
            if !look.field("sensors").exists() {
                return None;
            }
            SensorLoader {
                up: up.clone(),
                scope: scope.clone(),
            }
            .load(&ids)
            .await
            .ok()
            .map(Arc::new)
        };
        let (latest, alerts, sensors) = futures::join!(latest, alerts, sensors);
        Ok(Self {
            latest,
            alerts,
            sensors,
        })
    }
}

/// A device: something that publishes sensor readings.
#[Object(rename_fields = "snake_case")]
impl Device {
    /// The platform's id (UUID).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The device's own id, as it appears in its MQTT topics.
    async fn device_id(&self) -> &str {
        &self.0.device_id
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// E.g. temperature_sensor, humidity_sensor.
    async fn device_type(&self) -> &str {
        &self.0.device_type
    }
    /// Building/room.
    async fn location(&self) -> Option<&str> {
        self.0.location.as_deref()
    }
    /// Degrees, NUMERIC(10,8).
    async fn latitude(&self) -> Option<f64> {
        opt_decimal(self.0.latitude.as_ref())
    }
    /// Degrees, NUMERIC(11,8).
    async fn longitude(&self) -> Option<f64> {
        opt_decimal(self.0.longitude.as_ref())
    }
    /// active, inactive or error.
    async fn status(&self) -> &str {
        &self.0.status
    }
    /// When the platform last heard from the device (any door: MQTT, HTTP,
    /// GraphQL).
    async fn last_heartbeat(&self) -> Option<DateTime<Utc>> {
        time(self.0.last_heartbeat.as_ref())
    }
    /// Heard from within the last 5 minutes.
    async fn online(&self) -> bool {
        time(self.0.last_heartbeat.as_ref())
            .is_some_and(|t| Utc::now() - t <= chrono::TimeDelta::minutes(5))
    }
    /// When the device was registered.
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.created_at.as_ref())
    }
    /// The owner (tenant) the device belongs to.
    async fn owner_id(&self) -> &str {
        &self.0.owner_id
    }
    /// Pass as `after` to `devices` to list the devices after this one.
    async fn cursor(&self) -> String {
        iot_proto::keyset_cursor(self.0.created_at.as_ref(), &self.0.id)
    }
    /// Reporting interval, alert thresholds, retention, custom fields.
    async fn config(&self) -> Option<DeviceConfig> {
        self.0.config.clone().map(DeviceConfig)
    }
    /// The device's MQTT account; only in the answer of `createDevice`
    /// (the password is never shown again).
    async fn credentials(&self) -> Option<MqttCredentials> {
        self.0.credentials.clone().map(MqttCredentials::from)
    }
    /// Declared sensors and sensors seen in readings.
    async fn sensors(&self, ctx: &Context<'_>) -> Result<Vec<Sensor>> {
        let got = match &self.1.sensors {
            Some(pre) => pre.get(&self.0.id).cloned(),
            None => {
                let loader = ctx.data_unchecked::<DataLoader<SensorLoader>>();
                loader.load_one(self.0.id.clone()).await?
            }
        };
        Ok(got
            .unwrap_or_default()
            .into_iter()
            .map(|s| Sensor {
                device: self.0.clone(),
                s,
            })
            .collect())
    }
    /// The latest reading of each sensor; null (with an error) when the
    /// telemetry service is unavailable, so the rest of the device still
    /// comes back.
    async fn current_readings(&self, ctx: &Context<'_>) -> Result<Option<Vec<SensorReading>>> {
        let got = match &self.1.latest {
            Some(pre) => pre.get(&self.0.id).cloned(),
            None => {
                let loader = ctx.data_unchecked::<DataLoader<LatestLoader>>();
                loader.load_one(self.0.id.clone()).await?
            }
        };
        Ok(Some(
            got.unwrap_or_default()
                .into_iter()
                .map(SensorReading)
                .collect(),
        ))
    }
    /// Alerts not resolved yet, newest first; null (with an error) when the
    /// alert service is unavailable.
    async fn alerts(&self, ctx: &Context<'_>) -> Result<Option<Vec<Alert>>> {
        let got = match &self.1.alerts {
            Some(pre) => pre.get(&self.0.id).cloned(),
            None => {
                let loader = ctx.data_unchecked::<DataLoader<OpenAlertsLoader>>();
                loader.load_one(self.0.id.clone()).await?
            }
        };
        Ok(Some(
            got.unwrap_or_default().into_iter().map(Alert).collect(),
        ))
    }
}

/// A device's configuration.
pub struct DeviceConfig(v1::DeviceConfig);

/// A device's configuration.
#[Object(rename_fields = "snake_case")]
impl DeviceConfig {
    /// Seconds between readings the device is expected to send.
    async fn read_interval(&self) -> i32 {
        self.0.read_interval
    }
    /// Per sensor `min` and/or `max`, e.g. {"temperature": {"max": 30}}.
    async fn alert_threshold(&self) -> Option<Json<serde_json::Value>> {
        json(self.0.alert_threshold_json.as_deref())
    }
    /// Raw readings are kept this long (unset: the platform default).
    async fn data_retention_days(&self) -> Option<i32> {
        self.0.data_retention_days
    }
    /// Free-form JSON the owner keeps with the device.
    async fn custom_fields(&self) -> Option<Json<serde_json::Value>> {
        json(self.0.custom_fields_json.as_deref())
    }
}

fn json(s: Option<&str>) -> Option<Json<serde_json::Value>> {
    s.and_then(|s| serde_json::from_str(s).ok()).map(Json)
}

/// A device's MQTT account.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct MqttCredentials {
    /// MQTT username (the device_id).
    pub username: String,
    /// Shown once, when issued.
    pub password: String,
    /// Topic filters the account may publish to.
    pub publish_topics: Vec<String>,
}

impl From<v1::MqttCredentials> for MqttCredentials {
    fn from(c: v1::MqttCredentials) -> Self {
        Self {
            username: c.username,
            password: c.password,
            publish_topics: c.publish_topics,
        }
    }
}

/// A sensor of a device.
pub struct Sensor {
    device: v1::Device,
    s: v1::Sensor,
}

/// A sensor of a device.
#[Object(rename_fields = "snake_case")]
impl Sensor {
    /// `{device id}/{sensor_name}`.
    async fn id(&self) -> ID {
        ID(format!("{}/{}", self.device.id, self.s.sensor_name))
    }
    /// The device the sensor belongs to.
    async fn device(&self) -> Device {
        Device::from(self.device.clone())
    }
    /// Name in [A-Za-z0-9_.-]{1,100}.
    async fn sensor_name(&self) -> &str {
        &self.s.sensor_name
    }
    /// Unit, e.g. C, %RH.
    async fn unit(&self) -> Option<&str> {
        self.s.unit.as_deref()
    }
    /// analog, digital, counter.
    async fn sensor_type(&self) -> Option<&str> {
        self.s.sensor_type.as_deref()
    }
    /// Declared accuracy, NUMERIC(5,2).
    async fn accuracy(&self) -> Option<f64> {
        opt_decimal(self.s.accuracy.as_ref())
    }
    /// When the sensor was declared or first seen.
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        time(self.s.created_at.as_ref())
    }
}

/// One stored reading.
pub struct SensorReading(v1::SensorReading);

/// One stored reading.
#[Object(rename_fields = "snake_case")]
impl SensorReading {
    /// When the reading was taken (the device's timestamp, or receipt time).
    async fn time(&self) -> Option<DateTime<Utc>> {
        time(self.0.time.as_ref())
    }
    /// The device that sent it.
    async fn device(&self, ctx: &Context<'_>) -> Result<Option<Device>> {
        load_device(ctx, &self.0.device_uuid).await
    }
    /// The sensor that measured it.
    async fn sensor_name(&self) -> &str {
        &self.0.sensor_name
    }
    /// NUMERIC(10,4), as a JSON number.
    async fn value(&self) -> f64 {
        decimal(&self.0.value)
    }
    /// Unit, e.g. C, %RH.
    async fn unit(&self) -> Option<&str> {
        self.0.unit.as_deref()
    }
    /// good, uncertain or bad.
    async fn quality(&self) -> Option<&str> {
        self.0.quality.as_deref()
    }
}

async fn load_device(ctx: &Context<'_>, uuid: &str) -> Result<Option<Device>> {
    let loader = ctx.data_unchecked::<DataLoader<DeviceLoader>>();
    Ok(loader.load_one(uuid.to_owned()).await?.map(Device::from))
}

/// Aggregates of one time bucket.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct SensorMetric {
    /// Start of the bucket.
    pub time: DateTime<Utc>,
    /// The sensor the figures are of.
    pub sensor_name: String,
    /// Mean of the bucket's values, rounded to 4 decimal places (the
    /// readings' own scale); the exact mean is `sum_value / reading_count`.
    pub avg_value: f64,
    /// Smallest value in the bucket.
    pub min_value: f64,
    /// Largest value in the bucket.
    pub max_value: f64,
    /// Exact sum of the bucket's values.
    pub sum_value: f64,
    /// Readings in the bucket.
    pub reading_count: u64,
}

impl SensorMetric {
    fn from(sensor: &str, m: &v1::SensorMetric) -> Option<Self> {
        Some(Self {
            time: time(m.bucket.as_ref())?,
            sensor_name: sensor.to_owned(),
            avg_value: m.avg,
            min_value: m.min,
            max_value: m.max,
            sum_value: decimal(&m.sum),
            reading_count: m.count,
        })
    }
}

/// The metrics of one sensor, as `[SensorMetric!]!`. A year of hourly
/// buckets is 8,760 objects; built as async-graphql values (a map per
/// object, then serialized) that cost more than the query behind it. So a
/// plain selection over HTTP is rendered as JSON text straight from the
/// backend's encoded answer ([`crate::metrics_json`]) and goes into the
/// response through [`crate::raw`]; anything else takes the general path.
pub enum MetricList {
    /// The placeholder of the list's JSON text in the request's
    /// [`crate::raw::RawJson`].
    Rendered(String),
    Decoded {
        sensor: String,
        metrics: Vec<v1::SensorMetric>,
    },
}

impl MetricList {
    /// How to render the list `ctx` (a `[SensorMetric!]!` field) selects
    /// straight to JSON, if its selection is plain and the request came
    /// over HTTP.
    fn plan<'a>(
        ctx: &'a Context<'_>,
        sensor: &str,
    ) -> Option<(&'a Arc<crate::raw::RawJson>, crate::metrics_json::Plan)> {
        let raw = ctx.data_opt::<Arc<crate::raw::RawJson>>()?;
        let fields = crate::metrics_json::plain_selection(&ctx.item.node.selection_set.node.items)?;
        Some((raw, crate::metrics_json::Plan::new(&fields, sensor)))
    }
}

impl async_graphql::OutputType for MetricList {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <Vec<SensorMetric> as async_graphql::OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Vec<SensorMetric> as async_graphql::OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <Vec<SensorMetric> as async_graphql::OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        match self {
            Self::Rendered(placeholder) => Ok(async_graphql::Value::String(placeholder.clone())),
            Self::Decoded { sensor, metrics } => {
                let objects: Vec<SensorMetric> = metrics
                    .iter()
                    .filter_map(|m| SensorMetric::from(sensor, m))
                    .collect();
                async_graphql::OutputType::resolve(&objects, ctx, field).await
            }
        }
    }
}

/// An alert: a condition seen on a device.
pub struct Alert(v1::Alert);

/// An alert: a condition seen on a device, open until it clears or is resolved.
#[Object(rename_fields = "snake_case")]
impl Alert {
    /// The alert's id (UUID).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The device the alert is about (null once the device is deleted).
    async fn device(&self, ctx: &Context<'_>) -> Result<Option<Device>> {
        load_device(ctx, &self.0.device_uuid).await
    }
    /// The device's platform id (UUID).
    async fn device_uuid(&self) -> &str {
        &self.0.device_uuid
    }
    /// threshold_exceeded, threshold_below, device_offline, ...
    async fn alert_type(&self) -> &str {
        &self.0.alert_type
    }
    /// info, warning or critical.
    async fn severity(&self) -> &str {
        &self.0.severity
    }
    /// The sensor whose readings raised it (none for device_offline).
    async fn sensor_name(&self) -> Option<&str> {
        self.0.sensor_name.as_deref()
    }
    /// Human-readable description.
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    /// The reading that raised it (the latest one, while it stays open).
    async fn value(&self) -> Option<f64> {
        opt_decimal(self.0.value.as_ref())
    }
    /// The limit the value crossed.
    async fn threshold(&self) -> Option<f64> {
        opt_decimal(self.0.threshold.as_ref())
    }
    /// Someone has acknowledged it.
    async fn acknowledged(&self) -> bool {
        self.0.acknowledged
    }
    /// Who acknowledged it (user UUID).
    async fn acknowledged_by(&self) -> Option<&str> {
        self.0.acknowledged_by.as_deref()
    }
    /// When it was acknowledged.
    async fn acknowledged_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.acknowledged_at.as_ref())
    }
    /// open, acknowledged or resolved.
    async fn state(&self) -> &str {
        &self.0.state
    }
    /// When the condition was first seen.
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.created_at.as_ref())
    }
    /// When the condition was last seen, and how many readings showed it.
    async fn last_seen_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.last_seen_at.as_ref())
    }
    /// Readings that showed the condition while the alert was open.
    async fn occurrences(&self) -> u64 {
        self.0.occurrences
    }
    /// When the condition cleared or the alert was resolved by hand.
    async fn resolved_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.resolved_at.as_ref())
    }
    /// Pass as `after` to `alerts` to list the alerts after this one.
    async fn cursor(&self) -> String {
        iot_proto::keyset_cursor(self.0.created_at.as_ref(), &self.0.id)
    }
    /// The rule that raised it (null: a built-in condition such as a
    /// device's alert_threshold or device_offline).
    async fn rule_id(&self) -> Option<&str> {
        (!self.0.rule_id.is_empty()).then_some(self.0.rule_id.as_str())
    }
}

/// An alert rule: a condition in the rule language over each reading, e.g.
/// `sensor_name == "battery" AND value < 20`. Variables: value,
/// sensor_name, unit, quality, device_id, device_type, location; operators
/// == != < <= > >= + - * / AND OR NOT and parentheses.
pub struct AlertRule(v1::Rule);

/// An alert rule: a condition in the rule language over each reading.
#[Object(rename_fields = "snake_case")]
impl AlertRule {
    /// The rule's id (UUID).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// [a-z0-9_]{1,50}; the alert_type of the alerts it raises.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// When to raise, e.g. `sensor_name == "temperature" AND value > 100`.
    async fn condition(&self) -> &str {
        &self.0.condition
    }
    /// Hysteresis: an open alert resolves only once this holds (null: as
    /// soon as the condition no longer holds).
    async fn clear_condition(&self) -> Option<&str> {
        self.0.clear_condition.as_deref()
    }
    /// info, warning or critical.
    async fn severity(&self) -> &str {
        &self.0.severity
    }
    /// The alerts' message (null: one describing the reading).
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    /// Seconds the condition must hold (every reading) before raising.
    async fn for_secs(&self) -> u32 {
        self.0.for_secs
    }
    /// Only devices of this type (null: all).
    async fn device_type(&self) -> Option<&str> {
        self.0.device_type.as_deref()
    }
    /// Disabled rules are kept but not evaluated.
    async fn enabled(&self) -> bool {
        self.0.enabled.unwrap_or(true)
    }
    /// Null: a platform-wide rule (read-only to owners).
    async fn owner_id(&self) -> Option<&str> {
        (!self.0.owner_id.is_empty()).then_some(self.0.owner_id.as_str())
    }
    /// When the rule was created.
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.created_at.as_ref())
    }
    /// When the rule last changed.
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.updated_at.as_ref())
    }
}

/// A receiver of the caller's alert events: each raise, acknowledgement
/// and resolution is POSTed as JSON, signed with `X-Iot-Signature:
/// sha256=<HMAC-SHA256 of the body with the secret>`, and retried with
/// backoff until it gets a 2xx.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct AlertWebhook {
    /// The webhook's id (UUID).
    pub id: ID,
    /// Where events are POSTed.
    pub url: String,
    /// The signing secret; only in the answer of createAlertWebhook.
    pub secret: Option<String>,
    /// Only events of alerts at least this severe.
    pub min_severity: String,
    /// Deliveries waiting or being retried.
    pub pending: u64,
    /// Deliveries a receiver accepted.
    pub delivered: u64,
    /// Deliveries given up after the configured attempts.
    pub failed: u64,
    /// The last failure's error.
    pub last_error: Option<String>,
}

impl From<v1::Webhook> for AlertWebhook {
    fn from(w: v1::Webhook) -> Self {
        Self {
            id: ID(w.id),
            url: w.url,
            secret: (!w.secret.is_empty()).then_some(w.secret),
            min_severity: w.min_severity,
            pending: w.pending,
            delivered: w.delivered,
            failed: w.failed,
            last_error: w.last_error,
        }
    }
}

/// An alert rule to create or to replace.
#[derive(InputObject)]
pub struct AlertRuleInput {
    /// [a-z0-9_]{1,50}; the alert_type of the alerts it raises.
    pub name: String,
    /// When to raise, in the rule language.
    pub condition: String,
    /// Hysteresis: resolve only once this holds.
    pub clear_condition: Option<String>,
    /// info, warning or critical.
    pub severity: String,
    /// The alerts' message.
    pub message: Option<String>,
    /// Seconds the condition must hold before raising (default 0).
    pub for_secs: Option<u32>,
    /// Only devices of this type.
    pub device_type: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
}

impl AlertRuleInput {
    fn into_proto(self, id: String) -> v1::Rule {
        v1::Rule {
            id,
            name: self.name,
            condition: self.condition,
            clear_condition: self.clear_condition,
            severity: self.severity,
            message: self.message,
            for_secs: self.for_secs.unwrap_or(0),
            device_type: self.device_type,
            enabled: self.enabled,
            ..Default::default()
        }
    }
}

/// Device counts and platform figures (the spec's ClusterHealth).
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct DeviceStatusSummary {
    /// All devices.
    pub total_devices: u64,
    /// Status active and heard from within 5 minutes.
    pub active_devices: u64,
    /// Status active but not heard from for 5 minutes.
    pub offline_devices: u64,
    /// Status inactive.
    pub inactive_devices: u64,
    /// Status error.
    pub error_devices: u64,
    /// Mean latency of the gateway's calls to the platform's services over
    /// the last minute, in milliseconds.
    pub average_response_time_ms: f64,
    /// Open (unresolved) critical alerts.
    pub critical_alerts_count: u64,
    /// Readings stored per second over the last minute.
    pub readings_per_second: f64,
}

/// The outcome of `recordReadings`.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct RecordResult {
    /// Readings Kafka now holds (they reach queries within a second or so).
    pub accepted: u32,
    /// Readings refused by validation.
    pub rejected: Vec<RejectedReading>,
}

/// A reading refused by validation (also kept in the dead-letter topic).
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct RejectedReading {
    /// Position in the `readings` argument.
    pub index: u32,
    /// Stable reason code, e.g. bad_value, bad_sensor_name.
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
}

// ---------------------------------------------------------------- loaders

/// Fetches the items of many devices with one `fetch` per 1000 device
/// UUIDs (the backends' limit per call) and groups them by device.
async fn per_device<T, F, Fut>(
    keys: &[String],
    device: fn(&T) -> &String,
    mut fetch: F,
) -> Result<HashMap<String, Vec<T>>>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut out: HashMap<String, Vec<T>> = HashMap::new();
    for chunk in keys.chunks(1000) {
        for item in fetch(chunk.to_vec()).await? {
            out.entry(device(&item).clone()).or_default().push(item);
        }
    }
    Ok(out)
}

/// The latest readings of many devices in one LatestReadings call.
pub struct LatestLoader {
    up: Upstreams,
}

impl Loader<String> for LatestLoader {
    type Value = Vec<v1::SensorReading>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        per_device(
            keys,
            |r: &v1::SensorReading| &r.device_uuid,
            |chunk| async move {
                let got = self
                    .up
                    .call(
                        "ingest-writer",
                        "LatestReadings",
                        self.up
                            .telemetry()
                            .latest_readings(v1::LatestReadingsRequest {
                                device_uuids: chunk,
                            }),
                    )
                    .await?;
                Ok(got.readings)
            },
        )
        .await
    }
}

/// Open alerts of many devices in one ListAlerts call (paged if needed).
pub struct OpenAlertsLoader {
    up: Upstreams,
    scope: iot_proto::Scope,
}

impl Loader<String> for OpenAlertsLoader {
    type Value = Vec<v1::Alert>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        per_device(
            keys,
            |a: &v1::Alert| &a.device_uuid,
            |chunk| async move {
                let mut alerts = Vec::new();
                let mut cursor = String::new();
                loop {
                    let got = self
                        .up
                        .call(
                            "alert-engine",
                            "ListAlerts",
                            self.up
                                .alerts(self.scope.clone())
                                .list_alerts(v1::ListAlertsRequest {
                                    device_uuids: chunk.clone(),
                                    only_open: true,
                                    limit: 1000,
                                    cursor,
                                    ..Default::default()
                                }),
                        )
                        .await?;
                    alerts.extend(got.alerts);
                    if got.next_cursor.is_empty() {
                        return Ok(alerts);
                    }
                    cursor = got.next_cursor;
                }
            },
        )
        .await
    }
}

/// Devices by UUID, in the caller's scope (absent when not theirs).
pub struct DeviceLoader {
    up: Upstreams,
    scope: iot_proto::Scope,
}

impl Loader<String> for DeviceLoader {
    type Value = v1::Device;
    type Error = async_graphql::Error;

    /// Device UUIDs (alerts name their devices so) in one ListDevices call
    /// per 1000; a key that is not a UUID names no device.
    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let uuids: Vec<(&String, uuid::Uuid)> = keys
            .iter()
            .filter_map(|k| Some((k, uuid::Uuid::parse_str(k).ok()?)))
            .collect();
        let mut found = HashMap::new();
        for chunk in uuids.chunks(1000) {
            let mut c = self.up.registry(self.scope.clone());
            let got = self
                .up
                .call(
                    "device-registry",
                    "ListDevices",
                    c.list_devices(v1::ListDevicesRequest {
                        ids: chunk.iter().map(|(_, u)| u.to_string()).collect(),
                        limit: chunk.len() as u32,
                        ..Default::default()
                    }),
                )
                .await?;
            let by_id: HashMap<uuid::Uuid, v1::Device> = got
                .devices
                .into_iter()
                .filter_map(|d| Some((uuid::Uuid::parse_str(&d.id).ok()?, d)))
                .collect();
            for (k, u) in chunk {
                if let Some(d) = by_id.get(u) {
                    found.insert((*k).clone(), d.clone());
                }
            }
        }
        Ok(found)
    }
}

/// The sensors of devices, by UUID.
pub struct SensorLoader {
    up: Upstreams,
    scope: iot_proto::Scope,
}

impl Loader<String> for SensorLoader {
    type Value = Vec<v1::Sensor>;
    type Error = async_graphql::Error;

    /// One ListSensorsOfDevices call per 1000 devices; a device with no
    /// sensors (or not the caller's) has none.
    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        per_device(
            keys,
            |s: &v1::Sensor| &s.device_uuid,
            |chunk| async move {
                let got = self
                    .up
                    .call(
                        "device-registry",
                        "ListSensorsOfDevices",
                        self.up
                            .registry(self.scope.clone())
                            .list_sensors_of_devices(v1::ListSensorsOfDevicesRequest {
                                device_uuids: chunk,
                            }),
                    )
                    .await?;
                Ok(got.sensors)
            },
        )
        .await
    }
}

fn is_not_found(e: &async_graphql::Error) -> bool {
    e.extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .is_some_and(|c| *c == async_graphql::Value::from("NOT_FOUND"))
}

// ---------------------------------------------------------------- queries

/// Reads: devices, telemetry, alerts, the status summary.
pub struct QueryRoot;

/// Alert states for filters.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(rename_items = "lowercase")]
pub enum AlertState {
    /// Raised, not acknowledged, not resolved.
    Open,
    /// Acknowledged, not resolved.
    Acknowledged,
    /// The condition cleared, or resolved by hand.
    Resolved,
}

impl AlertState {
    fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

/// Reads: devices, telemetry, alerts, the status summary.
#[Object(name = "Query")]
impl QueryRoot {
    /// A device by its platform id (UUID) or its device_id; null when the
    /// caller has no such device.
    async fn device(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Device>> {
        match find_device(ctx, &id).await {
            // Its readings and alerts are fetched at once, as for a page,
            // rather than through the loaders (which wait to batch).
            Ok(d) => {
                let pre = Prefetched::for_page(ctx, std::slice::from_ref(&d)).await?;
                Ok(Some(Device(d, pre)))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The caller's devices, oldest first, filtered; `after` is the
    /// `cursor` of the last device of the previous page.
    #[graphql(complexity = "limit.max(1) as usize * child_complexity")]
    async fn devices(
        &self,
        ctx: &Context<'_>,
        device_type: Option<String>,
        status: Option<String>,
        location: Option<String>,
        #[graphql(default = 100)] limit: i32,
        after: Option<String>,
    ) -> Result<Vec<Device>> {
        let s = shared(ctx);
        let limit = page(limit, s.limits.max_page, "limit")?;
        let got =
            s.up.call(
                "device-registry",
                "ListDevices",
                s.up.registry(who(ctx)?.scope())
                    .list_devices(v1::ListDevicesRequest {
                        device_type,
                        limit,
                        status,
                        owner_id: None,
                        location,
                        cursor: after.unwrap_or_default(),
                        ids: Vec::new(),
                    }),
            )
            .await?;
        let pre = Prefetched::for_page(ctx, &got.devices).await?;
        Ok(got
            .devices
            .into_iter()
            .map(|d| Device(d, pre.clone()))
            .collect())
    }

    /// Raw readings of one sensor in [startTime, endTime) (RFC 3339), newest
    /// first.
    #[graphql(complexity = "limit.max(1) as usize * child_complexity / 100 + 1")]
    async fn sensor_readings(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: String,
        start_time: String,
        end_time: String,
        #[graphql(default = 1000)] limit: i32,
    ) -> Result<Vec<SensorReading>> {
        let s = shared(ctx);
        let limit = page(limit, s.limits.max_readings, "limit")?;
        let (start, end) = range(&s.limits, &start_time, &end_time)?;
        let got = of_device(ctx, &device_id, |device_uuid| {
            let req = v1::QueryReadingsRequest {
                device_uuid,
                sensor_name: sensor_name.clone(),
                start: Some(iot_proto::timestamp(start)),
                end: Some(iot_proto::timestamp(end)),
                limit,
                cursor: String::new(),
            };
            let mut telemetry = s.up.telemetry();
            async move {
                s.up.call(
                    "ingest-writer",
                    "QueryReadings",
                    telemetry.query_readings(req),
                )
                .await
            }
        })
        .await?;
        Ok(got.readings.into_iter().map(SensorReading).collect())
    }

    /// Aggregates per bucket over [startTime, endTime), oldest first, from
    /// the rollups: granularity 1h, 1d, 1w, or any width such as 5m.
    async fn sensor_metrics(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: String,
        start_time: String,
        end_time: String,
        #[graphql(default = "1h")] granularity: String,
    ) -> Result<MetricList> {
        let s = shared(ctx);
        let (start, end) = range(&s.limits, &start_time, &end_time)?;
        let request = |device_uuid| v1::QueryMetricsRequest {
            device_uuid,
            sensor_name: sensor_name.clone(),
            start: Some(iot_proto::timestamp(start)),
            end: Some(iot_proto::timestamp(end)),
            granularity: granularity.clone(),
        };
        if let Some((raw, plan)) = MetricList::plan(ctx, &sensor_name) {
            let plan = &plan;
            let pieces = of_device(ctx, &device_id, |device_uuid| {
                let req = request(device_uuid);
                async move {
                    // Timed to the last part, rendered.
                    let fetch = crate::metrics_json::fetch(&s.up, plan, req);
                    s.up.call(
                        "ingest-writer",
                        "StreamMetrics",
                        fetch.map_ok(tonic::Response::new),
                    )
                    .await
                }
            })
            .await?;
            return Ok(MetricList::Rendered(raw.put_pieces(pieces)));
        }
        let got = of_device(ctx, &device_id, |device_uuid| {
            let req = request(device_uuid);
            let mut telemetry = s.up.telemetry();
            async move {
                s.up.call(
                    "ingest-writer",
                    "QueryMetrics",
                    telemetry.query_metrics(req),
                )
                .await
            }
        })
        .await?;
        Ok(MetricList::Decoded {
            sensor: sensor_name,
            metrics: got.metrics,
        })
    }

    /// Unacknowledged, unresolved alerts of the caller's devices, newest
    /// first.
    async fn active_alerts(
        &self,
        ctx: &Context<'_>,
        severity: Option<String>,
        #[graphql(default = 100)] limit: i32,
    ) -> Result<Vec<Alert>> {
        list_alerts(
            ctx,
            v1::ListAlertsRequest {
                only_unacknowledged: true,
                only_open: true,
                severity,
                ..Default::default()
            },
            limit,
        )
        .await
    }

    /// The caller's alerts, newest first, filtered; `after` is the `cursor`
    /// of the last alert of the previous page.
    #[allow(clippy::too_many_arguments)]
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        device_id: Option<ID>,
        severity: Option<String>,
        state: Option<AlertState>,
        start_time: Option<String>,
        end_time: Option<String>,
        #[graphql(default = 100)] limit: i32,
        after: Option<String>,
    ) -> Result<Vec<Alert>> {
        let device_uuid = match device_id {
            Some(id) => Some(find_device(ctx, &id).await?.id),
            None => None,
        };
        let t = |arg: &str, v: Option<String>| {
            v.map(|s| parse_time(arg, &s).map(iot_proto::timestamp))
                .transpose()
        };
        list_alerts(
            ctx,
            v1::ListAlertsRequest {
                device_uuid,
                severity,
                state: state.map(|s| s.as_str().to_owned()),
                start: t("startTime", start_time)?,
                end: t("endTime", end_time)?,
                cursor: after.unwrap_or_default(),
                ..Default::default()
            },
            limit,
        )
        .await
    }

    /// The caller's alert rules and the platform-wide ones.
    async fn alert_rules(&self, ctx: &Context<'_>) -> Result<Vec<AlertRule>> {
        let s = shared(ctx);
        let got =
            s.up.call(
                "alert-engine",
                "ListRules",
                s.up.alerts(who(ctx)?.scope())
                    .list_rules(v1::ListRulesRequest {}),
            )
            .await?;
        Ok(got.rules.into_iter().map(AlertRule).collect())
    }

    /// The caller's alert webhooks, with their delivery counts.
    async fn alert_webhooks(&self, ctx: &Context<'_>) -> Result<Vec<AlertWebhook>> {
        let s = shared(ctx);
        let got =
            s.up.call(
                "alert-engine",
                "ListWebhooks",
                s.up.alerts(who(ctx)?.scope())
                    .list_webhooks(v1::ListWebhooksRequest {}),
            )
            .await?;
        Ok(got.webhooks.into_iter().map(AlertWebhook::from).collect())
    }

    /// Device counts, open critical alerts and ingest rate, for the caller's
    /// devices.
    async fn device_status_summary(&self, ctx: &Context<'_>) -> Result<DeviceStatusSummary> {
        let s = shared(ctx);
        let p = who(ctx)?;
        let (mut registry, mut alerts, mut telemetry) = (
            s.up.registry(p.scope()),
            s.up.alerts(p.scope()),
            s.up.telemetry(),
        );
        let (devices, critical, fleet) = futures::try_join!(
            s.up.call(
                "device-registry",
                "DeviceStatusSummary",
                registry.device_status_summary(v1::DeviceStatusSummaryRequest::default()),
            ),
            s.up.call(
                "alert-engine",
                "CountAlerts",
                alerts.count_alerts(v1::ListAlertsRequest {
                    only_open: true,
                    severity: Some("critical".into()),
                    ..Default::default()
                }),
            ),
            s.up.call(
                "ingest-writer",
                "FleetStats",
                telemetry.fleet_stats(v1::FleetStatsRequest {
                    owner_id: p.owner.map(|o| o.to_string()),
                }),
            ),
        )?;
        Ok(DeviceStatusSummary {
            total_devices: devices.total,
            active_devices: devices.active.saturating_sub(devices.offline),
            offline_devices: devices.offline,
            inactive_devices: devices.inactive,
            error_devices: devices.error,
            average_response_time_ms: s.up.metrics.mean_ms_last_minute(),
            critical_alerts_count: critical.count,
            readings_per_second: fleet.readings_per_second,
        })
    }
}

async fn list_alerts(
    ctx: &Context<'_>,
    mut req: v1::ListAlertsRequest,
    limit: i32,
) -> Result<Vec<Alert>> {
    let s = shared(ctx);
    req.limit = page(limit, s.limits.max_page, "limit")?;
    let got =
        s.up.call(
            "alert-engine",
            "ListAlerts",
            s.up.alerts(who(ctx)?.scope()).list_alerts(req),
        )
        .await?;
    Ok(got.alerts.into_iter().map(Alert).collect())
}

// -------------------------------------------------------------- mutations

/// Device configuration to set; fields left out stay as they are.
#[derive(InputObject, Default)]
pub struct DeviceConfigInput {
    /// Seconds between readings (also how long silence means offline).
    pub read_interval: Option<i32>,
    /// Per sensor `min` and/or `max`, e.g. {"temperature": {"max": 30}}.
    pub alert_threshold: Option<Json<serde_json::Value>>,
    /// Days raw readings are kept (unset: the platform default; at most 36500).
    pub data_retention_days: Option<i32>,
    /// Free-form JSON kept with the device.
    pub custom_fields: Option<Json<serde_json::Value>>,
}

impl DeviceConfigInput {
    fn into_proto(self) -> v1::DeviceConfig {
        v1::DeviceConfig {
            read_interval: self.read_interval.unwrap_or(0),
            alert_threshold_json: self.alert_threshold.map(|j| j.0.to_string()),
            data_retention_days: self.data_retention_days,
            custom_fields_json: self.custom_fields.map(|j| j.0.to_string()),
        }
    }
}

/// A sensor to declare.
#[derive(InputObject)]
pub struct SensorInput {
    /// Name in [A-Za-z0-9_.-]{1,100}.
    pub sensor_name: String,
    /// Unit, e.g. C, %RH.
    pub unit: Option<String>,
    /// analog, digital, counter.
    pub sensor_type: Option<String>,
    /// Declared accuracy, NUMERIC(5,2).
    pub accuracy: Option<f64>,
}

/// One reading to record.
#[derive(InputObject)]
pub struct ReadingInput {
    /// Name in [A-Za-z0-9_.-]{1,100}.
    pub sensor_name: String,
    /// The reading; must fit NUMERIC(10,4).
    pub value: f64,
    /// RFC 3339; absent: now.
    pub timestamp: Option<String>,
    /// Unit, e.g. C, %RH.
    pub unit: Option<String>,
    /// good, uncertain, bad.
    pub quality: Option<String>,
}

/// Changes: devices, their config and credentials, readings, alerts.
pub struct MutationRoot;

fn num(v: Option<f64>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// Changes: devices, their config and credentials, readings, alerts.
#[Object(name = "Mutation")]
impl MutationRoot {
    /// Registers a device for the caller and issues its MQTT account (the
    /// password is in `credentials`, shown only here).
    #[allow(clippy::too_many_arguments)]
    async fn create_device(
        &self,
        ctx: &Context<'_>,
        device_id: String,
        name: String,
        device_type: String,
        location: Option<String>,
        latitude: Option<f64>,
        longitude: Option<f64>,
        status: Option<String>,
        #[graphql(desc = "Shorthand for config.alertThreshold.")] alert_threshold: Option<
            Json<serde_json::Value>,
        >,
        config: Option<DeviceConfigInput>,
        sensors: Option<Vec<SensorInput>>,
    ) -> Result<Device> {
        let s = shared(ctx);
        let mut config = config.unwrap_or_default();
        if let Some(t) = alert_threshold {
            if config.alert_threshold.is_some() {
                return Err(error(
                    "BAD_USER_INPUT",
                    "alertThreshold: give it or config.alertThreshold, not both",
                ));
            }
            config.alert_threshold = Some(t);
        }
        let d =
            s.up.call(
                "device-registry",
                "CreateDevice",
                s.up.registry(who(ctx)?.scope())
                    .create_device(v1::CreateDeviceRequest {
                        device_id,
                        name,
                        device_type,
                        location,
                        latitude: num(latitude),
                        longitude: num(longitude),
                        owner_id: String::new(),
                        status: status.unwrap_or_default(),
                        config: Some(config.into_proto()),
                        sensors: sensors
                            .unwrap_or_default()
                            .into_iter()
                            .map(|x| v1::Sensor {
                                sensor_name: x.sensor_name,
                                unit: x.unit,
                                sensor_type: x.sensor_type,
                                accuracy: num(x.accuracy),
                                ..Default::default()
                            })
                            .collect(),
                    }),
            )
            .await?;
        Ok(Device::from(d))
    }

    /// Changes the fields given.
    #[allow(clippy::too_many_arguments)]
    async fn update_device(
        &self,
        ctx: &Context<'_>,
        id: ID,
        name: Option<String>,
        device_type: Option<String>,
        location: Option<String>,
        latitude: Option<f64>,
        longitude: Option<f64>,
        status: Option<String>,
    ) -> Result<Device> {
        let s = shared(ctx);
        let d =
            s.up.call(
                "device-registry",
                "UpdateDevice",
                s.up.registry(who(ctx)?.scope())
                    .update_device(v1::UpdateDeviceRequest {
                        id: id.0,
                        name,
                        device_type,
                        location,
                        latitude: num(latitude),
                        longitude: num(longitude),
                        status,
                    }),
            )
            .await?;
        Ok(Device::from(d))
    }

    /// Removes the device, its config, sensors and MQTT account. Its stored
    /// readings age out with the platform's retention.
    async fn delete_device(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.call(
            "device-registry",
            "DeleteDevice",
            s.up.registry(who(ctx)?.scope())
                .delete_device(v1::GetDeviceRequest { id: id.0.clone() }),
        )
        .await?;
        s.known.forget(&id.0);
        Ok(true)
    }

    /// Changes the config fields given; returns the whole config.
    async fn update_device_config(
        &self,
        ctx: &Context<'_>,
        id: ID,
        config: DeviceConfigInput,
    ) -> Result<DeviceConfig> {
        let s = shared(ctx);
        let read_interval = config.read_interval;
        let c = config.into_proto();
        let got =
            s.up.call(
                "device-registry",
                "UpdateDeviceConfig",
                s.up.registry(who(ctx)?.scope()).update_device_config(
                    v1::UpdateDeviceConfigRequest {
                        id: id.0,
                        read_interval,
                        alert_threshold_json: c.alert_threshold_json,
                        data_retention_days: c.data_retention_days,
                        custom_fields_json: c.custom_fields_json,
                    },
                ),
            )
            .await?;
        Ok(DeviceConfig(got))
    }

    /// Issues a new MQTT password; the old one stops working at once.
    async fn rotate_device_credentials(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<MqttCredentials> {
        let s = shared(ctx);
        let c =
            s.up.call(
                "device-registry",
                "RotateCredentials",
                s.up.registry(who(ctx)?.scope())
                    .rotate_credentials(v1::GetDeviceRequest { id: id.0 }),
            )
            .await?;
        Ok(c.into())
    }

    /// Removes the device's MQTT account; a connected session is closed.
    async fn revoke_device_credentials(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.call(
            "device-registry",
            "RevokeCredentials",
            s.up.registry(who(ctx)?.scope())
                .revoke_credentials(v1::GetDeviceRequest { id: id.0 }),
        )
        .await?;
        Ok(true)
    }

    /// Records one reading through the same validation as MQTT. Returns it
    /// once Kafka holds it; queries see it within a second or so.
    #[allow(clippy::too_many_arguments)]
    async fn record_reading(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: String,
        value: f64,
        timestamp: Option<String>,
        unit: Option<String>,
        quality: Option<String>,
    ) -> Result<SensorReading> {
        let reading = ReadingInput {
            sensor_name,
            value,
            timestamp,
            unit,
            quality,
        };
        let (device, mut sent, got) = record(ctx, &device_id, vec![reading]).await?;
        if let Some(r) = got.rejected.first() {
            return Err(
                error("BAD_USER_INPUT", format!("{}: {}", r.reason, r.detail))
                    .extend_with(|_, e| e.set("reason", r.reason.clone())),
            );
        }
        let req = sent.pop().ok_or_else(|| error("INTERNAL", "no reading"))?;
        Ok(SensorReading(v1::SensorReading {
            time: req.time,
            device_uuid: device.id,
            sensor_name: req.sensor_name,
            value: req.value,
            unit: req.unit,
            quality: req.quality,
        }))
    }

    /// Records many readings of one device; each is accepted or rejected
    /// with its reason.
    async fn record_readings(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        readings: Vec<ReadingInput>,
    ) -> Result<RecordResult> {
        if readings.len() > 1000 {
            return Err(error("BAD_USER_INPUT", "readings: at most 1000 per call"));
        }
        let (_, _, got) = record(ctx, &device_id, readings).await?;
        Ok(RecordResult {
            accepted: got.accepted,
            rejected: got
                .rejected
                .into_iter()
                .map(|x| RejectedReading {
                    index: x.index,
                    reason: x.reason,
                    detail: x.detail,
                })
                .collect(),
        })
    }

    /// Marks an alert acknowledged by the caller.
    async fn acknowledge_alert(&self, ctx: &Context<'_>, alert_id: ID) -> Result<Alert> {
        let s = shared(ctx);
        let p = who(ctx)?;
        let a =
            s.up.call(
                "alert-engine",
                "AcknowledgeAlert",
                s.up.alerts(p.scope())
                    .acknowledge_alert(v1::AlertActionRequest {
                        id: alert_id.0,
                        by: p.actor.to_string(),
                    }),
            )
            .await?;
        Ok(Alert(a))
    }

    /// Creates an alert rule for the caller's devices. A condition that
    /// does not parse answers BAD_USER_INPUT naming the column.
    async fn create_alert_rule(
        &self,
        ctx: &Context<'_>,
        rule: AlertRuleInput,
    ) -> Result<AlertRule> {
        let s = shared(ctx);
        let r =
            s.up.call(
                "alert-engine",
                "CreateRule",
                s.up.alerts(who(ctx)?.scope())
                    .create_rule(rule.into_proto(String::new())),
            )
            .await?;
        Ok(AlertRule(r))
    }

    /// Replaces every field of one of the caller's rules.
    async fn update_alert_rule(
        &self,
        ctx: &Context<'_>,
        id: ID,
        rule: AlertRuleInput,
    ) -> Result<AlertRule> {
        let s = shared(ctx);
        let r =
            s.up.call(
                "alert-engine",
                "UpdateRule",
                s.up.alerts(who(ctx)?.scope())
                    .update_rule(rule.into_proto(id.0)),
            )
            .await?;
        Ok(AlertRule(r))
    }

    /// Deletes one of the caller's rules (its open alerts are resolved).
    async fn delete_alert_rule(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.call(
            "alert-engine",
            "DeleteRule",
            s.up.alerts(who(ctx)?.scope())
                .delete_rule(v1::DeleteRuleRequest { id: id.0 }),
        )
        .await?;
        Ok(true)
    }

    /// Sends the caller's alert events to `url` (http or https). Without a
    /// `secret` one is generated; either is shown only here.
    async fn create_alert_webhook(
        &self,
        ctx: &Context<'_>,
        url: String,
        #[graphql(default = "info")] min_severity: String,
        secret: Option<String>,
    ) -> Result<AlertWebhook> {
        let s = shared(ctx);
        let w =
            s.up.call(
                "alert-engine",
                "CreateWebhook",
                s.up.alerts(who(ctx)?.scope()).create_webhook(v1::Webhook {
                    url,
                    min_severity,
                    secret: secret.unwrap_or_default(),
                    ..Default::default()
                }),
            )
            .await?;
        Ok(w.into())
    }

    /// Stops sending to one of the caller's webhooks.
    async fn delete_alert_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.call(
            "alert-engine",
            "DeleteWebhook",
            s.up.alerts(who(ctx)?.scope())
                .delete_webhook(v1::DeleteWebhookRequest { id: id.0 }),
        )
        .await?;
        Ok(true)
    }

    /// Resolves an alert by hand (if its condition still holds, the next
    /// reading raises a new one).
    async fn resolve_alert(&self, ctx: &Context<'_>, alert_id: ID) -> Result<Alert> {
        let s = shared(ctx);
        let p = who(ctx)?;
        let a =
            s.up.call(
                "alert-engine",
                "ResolveAlert",
                s.up.alerts(p.scope())
                    .resolve_alert(v1::AlertActionRequest {
                        id: alert_id.0,
                        by: p.actor.to_string(),
                    }),
            )
            .await?;
        Ok(Alert(a))
    }
}

/// Sends readings of the caller's device to mqtt-gateway's Ingest in one
/// call; returns the device, the readings as sent, and the answer.
async fn record(
    ctx: &Context<'_>,
    device_id: &str,
    readings: Vec<ReadingInput>,
) -> Result<(
    v1::Device,
    Vec<v1::IngestReading>,
    v1::IngestReadingsResponse,
)> {
    let s = shared(ctx);
    let device = find_device(ctx, device_id).await?;
    let now = Utc::now();
    let mut batch = Vec::with_capacity(readings.len());
    for (i, r) in readings.into_iter().enumerate() {
        let t = match &r.timestamp {
            Some(ts) => parse_time(&format!("readings[{i}].timestamp"), ts)?,
            None => now,
        };
        batch.push(v1::IngestReading {
            sensor_name: r.sensor_name,
            value: r.value.to_string(),
            time: Some(iot_proto::timestamp(t)),
            unit: r.unit,
            quality: r.quality,
        });
    }
    let got =
        s.up.call(
            "mqtt-gateway",
            "IngestReadings",
            s.up.ingest().ingest_readings(v1::IngestReadingsRequest {
                device: device.id.clone(),
                readings: batch.clone(),
            }),
        )
        .await?;
    Ok((device, batch, got))
}

// ---------------------------------------------------------- subscriptions

/// Live streams over WebSocket (graphql-transport-ws or graphql-ws).
pub struct SubscriptionRoot;

/// Live streams over WebSocket (graphql-transport-ws or graphql-ws).
#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Every alert change (raised, acknowledged, resolved) of the caller's
    /// devices from now on, whichever alert-engine replica made it. While
    /// alert-engine is unreachable the stream carries an error with code
    /// BACKEND_UNAVAILABLE and stays open: the changes made meanwhile
    /// follow once it is back.
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        device_id: Option<ID>,
        severity: Option<String>,
    ) -> Result<impl Stream<Item = Result<Alert>> + use<>> {
        let owner = who(ctx)?.owner.map(|o| o.to_string());
        let device = match device_id {
            Some(id) => Some(find_device(ctx, &id).await?.id),
            None => None,
        };
        let (rx, down, guard) = shared(ctx).hub.subscribe();
        // Told as an error in the stream, which goes on: alert changes
        // made meanwhile follow once alert-engine is back.
        let interrupted = || {
            error(
                "BACKEND_UNAVAILABLE",
                "alert-engine is unavailable; alert changes follow once it is back",
            )
            .extend_with(|_, e| e.set("service", "alert-engine"))
        };
        let now = futures::stream::iter(down.then(|| Err(interrupted())));
        Ok(now.chain(
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
                let _counted = &guard;
                let keep = match item {
                    Ok(event) => match &*event {
                        HubEvent::Alert(event) => event
                            .alert
                            .clone()
                            .filter(|a| {
                                owner.as_ref().is_none_or(|o| *o == a.owner_id)
                                    && device.as_ref().is_none_or(|d| *d == a.device_uuid)
                                    && severity.as_ref().is_none_or(|s| *s == a.severity)
                            })
                            .map(|a| Ok(Alert(a))),
                        HubEvent::Interrupted => Some(Err(interrupted())),
                    },
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Err(error(
                            "EVENTS_DROPPED",
                            format!("this subscriber fell behind and missed {n} alert changes"),
                        )))
                    }
                };
                futures::future::ready(keep)
            }),
        ))
    }

    /// The device as it changes (status, last heartbeat, online), first as
    /// it is now.
    async fn device_status(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
    ) -> Result<impl Stream<Item = Result<Device>> + use<>> {
        let s = shared(ctx);
        let first = find_device(ctx, &device_id).await?;
        let (up, scope) = (s.up.clone(), who(ctx)?.scope());
        let every = Duration::from_millis(s.limits.poll_ms);
        let key = |d: &v1::Device| {
            (
                d.status.clone(),
                d.last_heartbeat,
                d.name.clone(),
                d.location.clone(),
            )
        };
        let id = first.id.clone();
        let state = (Some(first), None, up, scope);
        Ok(futures::stream::unfold(
            state,
            move |(pending, last, up, scope)| {
                let id = id.clone();
                async move {
                    if let Some(d) = pending {
                        let k = key(&d);
                        return Some((Ok(Device::from(d)), (None, Some(k), up, scope)));
                    }
                    loop {
                        tokio::time::sleep(every).await;
                        match get_device(&up, scope.clone(), &id).await {
                            Ok(d) if Some(key(&d)) != last => {
                                let k = key(&d);
                                return Some((Ok(Device::from(d)), (None, Some(k), up, scope)));
                            }
                            Ok(_) => {}
                            // The device is gone (or no longer the caller's): end.
                            Err(e) if is_not_found(&e) => return None,
                            Err(e) => return Some((Err(e), (None, last, up, scope))),
                        }
                    }
                }
            },
        ))
    }

    /// The aggregates of each of the device's sensors (or of `sensorName`)
    /// in the bucket of its newest reading, whenever a new reading changes
    /// them: the current bucket, or the one before it for a reading stored
    /// after its bucket ended (the writer stores in batches).
    async fn metrics(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: Option<String>,
        #[graphql(default = "1m")] granularity: String,
    ) -> Result<impl Stream<Item = Result<SensorMetric>> + use<>> {
        let s = shared(ctx);
        let device = find_device(ctx, &device_id).await?;
        let width = granularity
            .parse::<Width>()
            .map_err(|e| error("BAD_USER_INPUT", format!("granularity: {e}")))?
            .secs();
        let (up, scope) = (s.up.clone(), who(ctx)?.scope());
        let every = Duration::from_millis(s.limits.poll_ms);
        let seen: HashMap<String, DateTime<Utc>> = HashMap::new();
        let state = (up, seen, Vec::<Result<SensorMetric>>::new(), true);
        Ok(futures::stream::unfold(
            state,
            move |(up, mut seen, mut queue, mut first)| {
                let device = device.id.clone();
                let sensor_name = sensor_name.clone();
                let granularity = granularity.clone();
                let scope = scope.clone();
                async move {
                    loop {
                        if let Some(m) = queue.pop() {
                            return Some((m, (up, seen, queue, first)));
                        }
                        if !first {
                            tokio::time::sleep(every).await;
                        }
                        first = false;
                        // The device must still be the caller's at every
                        // poll (it may be deleted or change owner), as in
                        // `deviceStatus`; both calls run at once.
                        let mut telemetry = up.telemetry();
                        let (owned, latest) = tokio::join!(
                            get_device(&up, scope.clone(), &device),
                            up.call(
                                "ingest-writer",
                                "LatestReadings",
                                telemetry.latest_readings(v1::LatestReadingsRequest {
                                    device_uuids: vec![device.clone()],
                                }),
                            )
                        );
                        match owned {
                            Ok(_) => {}
                            // Gone, or no longer the caller's: end.
                            Err(e) if is_not_found(&e) => return None,
                            Err(e) => {
                                queue.push(Err(e));
                                continue;
                            }
                        }
                        let latest = match latest {
                            Ok(l) => l.readings,
                            Err(e) => {
                                queue.push(Err(e));
                                continue;
                            }
                        };
                        let oldest =
                            bucket::floor(Utc::now(), width) - chrono::TimeDelta::seconds(width);
                        for r in latest {
                            if sensor_name.as_ref().is_some_and(|n| *n != r.sensor_name) {
                                continue;
                            }
                            let Some(t) = time(r.time.as_ref()) else {
                                continue;
                            };
                            if seen.get(&r.sensor_name) == Some(&t) || t < oldest {
                                continue;
                            }
                            seen.insert(r.sensor_name.clone(), t);
                            let start = bucket::floor(t, width);
                            let got = up
                                .call(
                                    "ingest-writer",
                                    "QueryMetrics",
                                    up.telemetry().query_metrics(v1::QueryMetricsRequest {
                                        device_uuid: device.clone(),
                                        sensor_name: r.sensor_name.clone(),
                                        start: Some(iot_proto::timestamp(start)),
                                        end: Some(iot_proto::timestamp(
                                            start + chrono::TimeDelta::seconds(width),
                                        )),
                                        granularity: granularity.clone(),
                                    }),
                                )
                                .await;
                            match got {
                                Ok(m) => queue.extend(
                                    m.metrics
                                        .iter()
                                        .filter_map(|m| SensorMetric::from(&r.sensor_name, m))
                                        .map(Ok),
                                ),
                                Err(e) => queue.push(Err(e)),
                            }
                        }
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription};

    #[test]
    fn known_devices_are_per_scope_and_forgotten_when_deleted() {
        let known = KnownDevices::default();
        let (a, b) = (
            iot_proto::Scope::Owner("a".into()),
            iot_proto::Scope::Owner("b".into()),
        );
        let d = "0b6f7f4e-1f2a-4c3b-9d4e-5f6a7b8c9d0e";
        assert!(!known.knows(&a, d));
        known.found(&a, d);
        assert!(known.knows(&a, d));
        assert!(!known.knows(&b, d), "another owner's lookup is not b's");
        assert!(!known.knows(&iot_proto::Scope::Admin, d));
        known.found(&b, "other");
        known.forget(&d.to_uppercase());
        assert!(!known.knows(&a, d));
        assert!(known.knows(&b, "other"));
        // Expired entries are not trusted.
        known.lock().insert(
            KnownDevices::key(&a, d),
            std::time::Instant::now() - KNOWN_FOR,
        );
        assert!(!known.knows(&a, d));
    }

    struct Metrics;

    #[Object]
    impl Metrics {
        async fn metrics(&self, ctx: &Context<'_>, sensor: Option<String>) -> MetricList {
            let t = |s: &str| Some(iot_proto::timestamp(s.parse().unwrap()));
            let m = |bucket, count, avg, sum: &str| v1::SensorMetric {
                bucket,
                count,
                avg,
                min: avg - 1.25,
                max: avg + 0.5,
                sum: sum.into(),
            };
            let sensor = sensor.as_deref().unwrap_or("temp \"x\"");
            let metrics = vec![
                m(t("2026-01-01T00:00:00Z"), 3, 21.123_456_789, "63.3703"),
                m(None, 1, 1.0, "1"),
                m(t("2026-01-01T01:00:00.25Z"), 1, f64::NAN, "NaN"),
                m(t("1999-12-31T23:00:00Z"), 7, -0.5, "-3.5"),
            ];
            // As `sensorMetrics` does, with the backend's answer encoded here.
            match MetricList::plan(ctx, sensor) {
                Some((raw, plan)) => {
                    let answer =
                        prost::Message::encode_to_vec(&v1::QueryMetricsResponse { metrics });
                    let part = futures::stream::iter([Ok(answer.into())]);
                    let pieces = crate::metrics_json::render_parts(&plan, part);
                    MetricList::Rendered(raw.put_pieces(pieces.await.unwrap()))
                }
                None => MetricList::Decoded {
                    sensor: sensor.into(),
                    metrics,
                },
            }
        }
    }

    /// The response's JSON text as the HTTP handler sends it, and whether
    /// a list in it was rendered as text.
    async fn answer(query: &str, raw: bool) -> (String, bool) {
        let schema = Schema::new(Metrics, EmptyMutation, EmptySubscription);
        let mut req = async_graphql::Request::new(query);
        let parts = crate::raw::RawJson::new();
        if raw {
            req = req.data(parts.clone());
        }
        let body = serde_json::to_vec(&schema.execute(req).await).unwrap();
        let rendered = memchr::memmem::find(&body, b"iot-raw-json-").is_some();
        (String::from_utf8(parts.splice(body)).unwrap(), rendered)
    }

    #[tokio::test]
    async fn rendered_metrics_are_what_the_general_path_gives() {
        for query in [
            "{ metrics { time avg_value min_value max_value } }",
            "{ metrics { reading_count sum_value sensor_name __typename time } }",
            "{ a: metrics { t: time v: avg_value } b: metrics { max_value } }",
            "{ metrics { time time } }",
            "{ metrics { ... on SensorMetric { time } avg_value } }",
            "{ metrics { time @skip(if: true) avg_value } }",
            // Keys and a sensor name too long for the fixed-size copies.
            "{ metrics { the_time_of_the_bucket_as_rfc_3339_text: time sensor_name } }",
            &format!(
                "{{ metrics(sensor: \"{}\") {{ sensor_name reading_count sum_value }} }}",
                "s".repeat(600)
            ),
        ] {
            let (general, _) = answer(query, false).await;
            assert!(!general.contains("errors"), "{general}");
            let (text, rendered) = answer(query, true).await;
            assert_eq!(text, general, "{query}");
            // Plain selections are rendered as text (fragments, directives
            // and a key twice may take the general path).
            let plain = !query.contains(['.', '@']) && !query.contains("time time");
            assert!(rendered || !plain, "{query}");
        }
    }
}
