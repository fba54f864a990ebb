//! The schema's object, enum and input types, by what they describe.

mod alerts;
mod device;
mod telemetry;

pub use alerts::{Alert, AlertRule, AlertRuleInput, AlertState, AlertWebhook};
pub(in crate::schema) use device::Prefetched;
pub use device::{
    Device, DeviceConfig, DeviceConfigInput, DeviceStatusSummary, MqttCredentials, SensorInput,
};
pub use telemetry::{
    MetricList, ReadingInput, RecordResult, RejectedReading, SensorMetric, SensorReading,
};
