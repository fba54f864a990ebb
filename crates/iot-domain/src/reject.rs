//! Why a message was rejected. Every rejection has a stable code that is
//! written to the dead-letter topic and used as a Prometheus label.

use std::fmt;

/// A stable, machine-readable reason for rejecting input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The topic is not `{prefix}/{device_id}/{sensor_name}`.
    BadTopic,
    /// The payload is not the expected JSON object.
    BadJson,
    /// The payload is larger than the configured limit.
    PayloadTooLarge,
    /// No device with this id is registered.
    UnknownDevice,
    /// The device exists but is not `active`.
    InactiveDevice,
    /// Sensor name outside `[A-Za-z0-9_.-]{1,100}`.
    BadSensorName,
    /// Value is not a finite number or does not fit NUMERIC(10,4).
    BadValue,
    /// Timestamp is not RFC 3339.
    BadTimestamp,
    /// Timestamp too far in the future or the past.
    TimestampOutOfRange,
    /// `unit` or `quality` is not a short string.
    BadField,
    /// A Kafka record could not be decoded.
    Undecodable,
    /// Kafka refused the valid reading for good (too large for a record,
    /// topic not writable); retrying could never succeed.
    KafkaRefused,
    /// A SenML pack of a version other than 10 (`bver`), or with a
    /// must-understand field (name ending in `_`) the platform does not
    /// implement: RFC 8428 forbids reading any of it.
    UnsupportedSenml,
}

impl RejectReason {
    /// All reasons, for pre-registering metric labels.
    pub const ALL: [RejectReason; 13] = [
        Self::BadTopic,
        Self::BadJson,
        Self::PayloadTooLarge,
        Self::UnknownDevice,
        Self::InactiveDevice,
        Self::BadSensorName,
        Self::BadValue,
        Self::BadTimestamp,
        Self::TimestampOutOfRange,
        Self::BadField,
        Self::Undecodable,
        Self::KafkaRefused,
        Self::UnsupportedSenml,
    ];

    /// The stable code written to the dead-letter topic.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadTopic => "bad_topic",
            Self::BadJson => "bad_json",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnknownDevice => "unknown_device",
            Self::InactiveDevice => "inactive_device",
            Self::BadSensorName => "bad_sensor_name",
            Self::BadValue => "bad_value",
            Self::BadTimestamp => "bad_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::BadField => "bad_field",
            Self::Undecodable => "undecodable",
            Self::KafkaRefused => "kafka_refused",
            Self::UnsupportedSenml => "unsupported_senml",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected input: a reason code plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RejectReason;

    /// The device guide's table of reasons is the list devices and
    /// operators read: a new reason is documented there or this fails.
    #[test]
    fn the_device_guide_documents_every_reason() {
        let guide = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/mqtt-devices.md"),
        )
        .unwrap_or_default();
        for reason in RejectReason::ALL {
            assert!(
                guide.contains(&format!("| `{}` |", reason.code())),
                "docs/mqtt-devices.md has no row for {reason}"
            );
        }
    }
}
