//! Devices: the device, its config, MQTT account and sensors, the status
//! summary, and the inputs that create or change them.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use iot_proto::v1;

use super::{Alert, SensorReading};
use crate::schema::{
    DeviceLoader, LatestLoader, OpenAlertsLoader, SensorLoader, opt_decimal, shared, time, who,
};

/// A device: something that publishes sensor readings.
pub struct Device(pub v1::Device, pub(in crate::schema) Prefetched);

impl From<v1::Device> for Device {
    fn from(d: v1::Device) -> Self {
        Self(d, Prefetched::default())
    }
}

/// What a listing fetched for all its devices at once (one call each), so
/// a page costs a fixed number of backend calls whatever its size.
#[derive(Clone, Default)]
pub(in crate::schema) struct Prefetched {
    latest: Option<Arc<HashMap<String, Vec<v1::SensorReading>>>>,
    alerts: Option<Arc<HashMap<String, Vec<v1::Alert>>>>,
    sensors: Option<Arc<HashMap<String, Vec<v1::Sensor>>>>,
}

impl Prefetched {
    /// Fetches the fields `ctx`'s selection asks for, for `devices` (a
    /// page, or the one device of `device(id)`). A
    /// failure leaves the field to the per-device loaders (which report it).
    pub(in crate::schema) async fn for_page(
        ctx: &Context<'_>,
        devices: &[v1::Device],
    ) -> Result<Self> {
        let look = ctx.look_ahead();
        let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
        let up = &shared(ctx).up;
        let scope = who(ctx)?.scope();
        let latest = async {
            if !look.field("current_readings").exists() {
                return None;
            }
            LatestLoader {
                up: up.clone(),
                scope: scope.clone(),
            }
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
    /// Connected and heard from lately: false once the device disconnects
    /// (announced, or its last will: a lost connection) until it is heard
    /// from again, or once silent longer than its `readInterval` times 5
    /// (5 minutes without one). The platform's one definition of offline,
    /// as in offline alerts and `deviceStatusSummary`.
    async fn online(&self) -> bool {
        crate::device_hub::online(&self.0, Utc::now())
    }
    /// When the device last disconnected (announced, or a lost
    /// connection), if it has not been heard from since.
    async fn disconnected_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.disconnected_at.as_ref())
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
pub struct DeviceConfig(pub(in crate::schema) v1::DeviceConfig);

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

pub(super) async fn load_device(ctx: &Context<'_>, uuid: &str) -> Result<Option<Device>> {
    let loader = ctx.data_unchecked::<DataLoader<DeviceLoader>>();
    Ok(loader.load_one(uuid.to_owned()).await?.map(Device::from))
}

/// Device counts and platform figures (the ClusterHealth query).
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

/// Device configuration to set; fields left out stay as they are.
#[derive(InputObject, Default)]
pub struct DeviceConfigInput {
    /// Seconds between readings (also how long silence means offline).
    pub read_interval: Option<i32>,
    /// Per sensor `min` and/or `max`, e.g. {"temperature": {"max": 30}}.
    pub alert_threshold: Option<Json<serde_json::Value>>,
    /// Days raw readings are kept (unset: the platform default; at most the registry's limits.max_retention_days, 3650 by default).
    pub data_retention_days: Option<i32>,
    /// Free-form JSON kept with the device.
    pub custom_fields: Option<Json<serde_json::Value>>,
}

impl DeviceConfigInput {
    pub(in crate::schema) fn into_proto(self) -> v1::DeviceConfig {
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
