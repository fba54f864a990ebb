//! The Mutation root: devices, their config and credentials, readings,
//! alerts, alert rules and webhooks.

use async_graphql::{Context, ErrorExtensions, ID, Json, Object, Result};
use chrono::Utc;
use iot_proto::v1;

use super::ownership::find_device;
use super::{
    Alert, AlertRule, AlertRuleInput, AlertWebhook, Device, DeviceConfig, DeviceConfigInput,
    MqttCredentials, ReadingInput, RecordResult, RejectedReading, SensorInput, SensorReading,
    parse_time, shared, who,
};
use crate::upstream::{ALERTS, Answer as _, INGEST, REGISTRY, error};

/// Changes: devices, their config and credentials, readings, alerts.
pub struct MutationRoot;

fn num(v: Option<f64>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// Changes: devices, their config and credentials, readings, alerts.
#[Object(name = "Mutation")]
impl MutationRoot {
    /// Sends a command to a device over MQTT; answers at once with the
    /// command (queued). Undelivered after `timeoutSecs` (default 60) it
    /// expires; delivered and unanswered, it times out.
    async fn send_command(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        name: String,
        payload: Option<Json<serde_json::Value>>,
        timeout_secs: Option<i32>,
    ) -> Result<super::Command> {
        super::commands::send_command(ctx, device_id, name, payload, timeout_secs).await
    }

    /// Sets a device's desired state (a JSON object) if `expectedVersion`
    /// is its current version (0 for none yet); a stale version answers
    /// CONFLICT. The device gets it as a retained MQTT message.
    async fn set_desired_state(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        desired: Json<serde_json::Value>,
        expected_version: i64,
    ) -> Result<super::DeviceState> {
        super::commands::set_desired_state(ctx, device_id, desired, expected_version).await
    }

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
            s.up.registry(who(ctx)?.scope())
                .create_device(v1::CreateDeviceRequest {
                    device_id,
                    name,
                    device_type,
                    location,
                    latitude: num(latitude),
                    longitude: num(longitude),
                    owner_id: String::new(),
                    // GraphQL's statuses are the text form.
                    status: status.unwrap_or_default(),
                    status_code: 0,
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
                })
                .await
                .answer(REGISTRY)?;
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
            s.up.registry(who(ctx)?.scope())
                .update_device(v1::UpdateDeviceRequest {
                    id: id.0,
                    name,
                    device_type,
                    location,
                    latitude: num(latitude),
                    longitude: num(longitude),
                    status,
                    status_code: None,
                })
                .await
                .answer(REGISTRY)?;
        Ok(Device::from(d))
    }

    /// Removes the device, its config, sensors and MQTT account. Its stored
    /// readings age out with the platform's retention.
    async fn delete_device(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.registry(who(ctx)?.scope())
            .delete_device(v1::GetDeviceRequest { id: id.0.clone() })
            .await
            .answer(REGISTRY)?;
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
            s.up.registry(who(ctx)?.scope())
                .update_device_config(v1::UpdateDeviceConfigRequest {
                    id: id.0,
                    read_interval,
                    alert_threshold_json: c.alert_threshold_json,
                    data_retention_days: c.data_retention_days,
                    custom_fields_json: c.custom_fields_json,
                })
                .await
                .answer(REGISTRY)?;
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
            s.up.registry(who(ctx)?.scope())
                .rotate_credentials(v1::GetDeviceRequest { id: id.0 })
                .await
                .answer(REGISTRY)?;
        Ok(c.into())
    }

    /// Removes the device's MQTT account; a connected session is closed.
    async fn revoke_device_credentials(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.registry(who(ctx)?.scope())
            .revoke_credentials(v1::GetDeviceRequest { id: id.0 })
            .await
            .answer(REGISTRY)?;
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
            s.up.alerts(p.scope())
                .acknowledge_alert(v1::AlertActionRequest {
                    id: alert_id.0,
                    by: p.actor.to_string(),
                })
                .await
                .answer(ALERTS)?;
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
            s.up.alerts(who(ctx)?.scope())
                .create_rule(rule.into_proto(String::new()))
                .await
                .answer(ALERTS)?;
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
            s.up.alerts(who(ctx)?.scope())
                .update_rule(rule.into_proto(id.0))
                .await
                .answer(ALERTS)?;
        Ok(AlertRule(r))
    }

    /// Enables the seed's example rules as the caller's own, in one call:
    /// `high_temp` (temperature above 100, critical) and `low_battery`
    /// (battery_level below 10, warning); `device_offline` (silent 5
    /// minutes, warning) is built in and always on. Without `names`, all
    /// of them. A template the caller already has a rule of its name for
    /// answers with that rule.
    async fn enable_rule_templates(
        &self,
        ctx: &Context<'_>,
        names: Option<Vec<String>>,
    ) -> Result<Vec<AlertRule>> {
        let s = shared(ctx);
        let got =
            s.up.alerts(who(ctx)?.scope())
                .enable_rule_templates(v1::EnableRuleTemplatesRequest {
                    names: names.unwrap_or_default(),
                })
                .await
                .answer(ALERTS)?;
        Ok(got.rules.into_iter().map(AlertRule).collect())
    }

    /// Deletes one of the caller's rules (its open alerts are resolved).
    async fn delete_alert_rule(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.alerts(who(ctx)?.scope())
            .delete_rule(v1::DeleteRuleRequest { id: id.0 })
            .await
            .answer(ALERTS)?;
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
            s.up.alerts(who(ctx)?.scope())
                .create_webhook(v1::Webhook {
                    url,
                    min_severity,
                    secret: secret.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .answer(ALERTS)?;
        Ok(w.into())
    }

    /// Changes one of the caller's webhooks: its `url` and `minSeverity`
    /// are replaced, checked as createAlertWebhook checks them. The secret
    /// stays unless `rotateSecret`; then a new one is generated and shown
    /// only here. Deliveries not made yet go to the new URL.
    async fn update_alert_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
        url: String,
        #[graphql(default = "info")] min_severity: String,
        #[graphql(default = false)] rotate_secret: bool,
    ) -> Result<AlertWebhook> {
        let s = shared(ctx);
        let w =
            s.up.alerts(who(ctx)?.scope())
                .update_webhook(v1::UpdateWebhookRequest {
                    id: id.0,
                    url,
                    min_severity,
                    rotate_secret,
                    ..Default::default()
                })
                .await
                .answer(ALERTS)?;
        Ok(w.into())
    }

    /// Stops sending to one of the caller's webhooks.
    async fn delete_alert_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = shared(ctx);
        s.up.alerts(who(ctx)?.scope())
            .delete_webhook(v1::DeleteWebhookRequest { id: id.0 })
            .await
            .answer(ALERTS)?;
        Ok(true)
    }

    /// Resolves an alert by hand (if its condition still holds, the next
    /// reading raises a new one).
    async fn resolve_alert(&self, ctx: &Context<'_>, alert_id: ID) -> Result<Alert> {
        let s = shared(ctx);
        let p = who(ctx)?;
        let a =
            s.up.alerts(p.scope())
                .resolve_alert(v1::AlertActionRequest {
                    id: alert_id.0,
                    by: p.actor.to_string(),
                })
                .await
                .answer(ALERTS)?;
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
        s.up.ingest()
            .ingest_readings(v1::IngestReadingsRequest {
                device: device.id.clone(),
                readings: batch.clone(),
            })
            .await
            .answer(INGEST)?;
    Ok((device, batch, got))
}
