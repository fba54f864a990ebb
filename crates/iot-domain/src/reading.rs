//! A sensor reading, before and after validation.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

/// A reading as a device sent it, parsed but not yet checked against the
/// registry. The device is named by the caller (topic, URL or request).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingInput {
    pub sensor_name: String,
    pub value: Decimal,
    /// `None`: use the platform's receive time.
    pub time: Option<DateTime<Utc>>,
    pub unit: Option<String>,
    pub quality: Option<String>,
}

/// A validated reading of a known, active device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Platform id (`devices.id`).
    pub device_uuid: Uuid,
    /// External id (`devices.device_id`).
    pub device_id: String,
    pub sensor_name: String,
    /// Fits NUMERIC(10,4): at most 6 integer and 4 fractional digits.
    pub value: Decimal,
    pub time: DateTime<Utc>,
    pub unit: Option<String>,
    pub quality: Option<String>,
    pub received_at: DateTime<Utc>,
}
