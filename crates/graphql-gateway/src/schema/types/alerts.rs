//! Alerts: the alert, alert rules and webhooks, the rule input, and the
//! alert states filters take.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use iot_proto::v1;

use super::Device;
use super::device::load_device;
use crate::schema::{opt_decimal, time};

/// An alert: a condition seen on a device.
pub struct Alert(pub(in crate::schema) v1::Alert);

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
pub struct AlertRule(pub(in crate::schema) v1::Rule);

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
    /// The signing secret; only in the answer of createAlertWebhook (and
    /// of updateAlertWebhook when it rotates the secret).
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
    pub(in crate::schema) fn into_proto(self, id: String) -> v1::Rule {
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
    pub(in crate::schema) fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}
