//! One validation, then Kafka or the dead-letter topic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use iot_domain::{Reading, RejectReason, Rejection};
use iot_kafka::rdkafka::error::KafkaError;
use iot_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use iot_kafka::{DeadLetterError, DeadLetters};
use iot_proto::Message as _;

use crate::directory::Directory;
use crate::metrics::Metrics;

/// What became of a message. Both outcomes mean Kafka holds it, so the
/// message may be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected(RejectReason),
}

/// A failure that says nothing about the message: retry it later, do not
/// acknowledge it now.
#[derive(Debug, thiserror::Error)]
pub enum Transient {
    #[error("device registry unavailable: {0}")]
    Registry(#[from] tonic::Status),
    #[error("kafka produce failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

impl Transient {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Registry(_) => "registry",
            Self::Kafka(_) => "kafka",
            Self::DeadLetter(_) => "dead_letter",
        }
    }
}

pub struct Pipeline {
    pub directory: Directory,
    pub producer: FutureProducer,
    pub readings_topic: String,
    pub dead_letters: DeadLetters,
    pub limits: iot_domain::Limits,
    pub topic_prefix: String,
    pub metrics: Metrics,
}

impl Pipeline {
    /// Handles one MQTT message from `topic`.
    pub async fn handle_mqtt(&self, topic: &str, payload: &[u8]) -> Result<Outcome, Transient> {
        let received_at = Utc::now();
        match self.validate_mqtt(topic, payload, received_at).await? {
            Ok(reading) => {
                self.produce(&reading, "mqtt").await?;
                self.metrics.accepted("mqtt");
                Ok(Outcome::Accepted)
            }
            Err(rejection) => {
                self.dead_letters.send(&rejection, topic, payload).await?;
                self.metrics.rejected(topic, &rejection);
                Ok(Outcome::Rejected(rejection.reason))
            }
        }
    }

    async fn validate_mqtt(
        &self,
        topic: &str,
        payload: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Result<Reading, Rejection>, Transient> {
        let (device, sensor) = match iot_domain::parse_topic(&self.topic_prefix, topic) {
            Ok(names) => names,
            Err(r) => return Ok(Err(r)),
        };
        let input = match iot_domain::parse_mqtt_payload(sensor, payload, &self.limits) {
            Ok(input) => input,
            Err(r) => return Ok(Err(r)),
        };
        let info = match self.directory.lookup(device).await? {
            Some(info) => info,
            None => {
                return Ok(Err(Rejection::new(
                    RejectReason::UnknownDevice,
                    format!("device {device:?} is not registered"),
                )));
            }
        };
        if !info.active {
            return Ok(Err(Rejection::new(
                RejectReason::InactiveDevice,
                format!("device {device:?} is not active"),
            )));
        }
        Ok(iot_domain::validate_reading(
            info.uuid,
            &info.device_id,
            input,
            received_at,
            &self.limits,
        ))
    }

    /// Produces a valid reading keyed by device and waits for Kafka's
    /// delivery report.
    async fn produce(&self, r: &Reading, source: &str) -> Result<(), KafkaError> {
        let envelope = iot_proto::v1::ReadingEnvelope {
            device_uuid: r.device_uuid.to_string(),
            device_id: r.device_id.clone(),
            sensor_name: r.sensor_name.clone(),
            value: r.value.to_string(),
            time: Some(iot_proto::timestamp(r.time)),
            unit: r.unit.clone(),
            quality: r.quality.clone(),
            received_at: Some(iot_proto::timestamp(r.received_at)),
            source: source.to_owned(),
        };
        let bytes = envelope.encode_to_vec();
        let key = envelope.device_uuid.as_bytes();
        let record = FutureRecord::to(&self.readings_topic)
            .key(key)
            .payload(&bytes)
            .timestamp(r.time.timestamp_millis());
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
