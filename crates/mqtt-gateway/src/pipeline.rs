//! One validation behind three doors (MQTT, HTTP, gRPC): then Kafka for
//! valid readings, the dead-letter topic for everything else.

use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use iot_domain::{Entry, Reading, RejectReason, Rejection};
use iot_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use iot_kafka::rdkafka::message::{Header, OwnedHeaders};
use iot_kafka::rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use iot_kafka::{DeadLetterError, DeadLetters};

use crate::directory::Directory;
use crate::metrics::Metrics;

/// How long a reading may wait for room in the producer's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which door a message came through; a label on metrics and envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Mqtt,
    Http,
    Grpc,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// What became of a message once Kafka holds all of it: how many readings
/// were produced, and each rejection (with the entry index for multi-reading
/// payloads; `None` when the whole message was refused).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub accepted: usize,
    pub rejected: Vec<(Option<usize>, Rejection)>,
}

impl Delivery {
    /// The whole message was refused for one reason.
    pub fn refused(&self) -> Option<&Rejection> {
        match self.rejected.as_slice() {
            [(None, r)] if self.accepted == 0 => Some(r),
            _ => None,
        }
    }
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

/// MQTT topic prefixes of the three payload forms.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `{single}/{device_id}/{sensor_name}`
    pub single: String,
    /// `{batch}/{device_id}`
    pub batch: String,
    /// `{senml}/{device_id}`
    pub senml: String,
    /// `{presence}/{device_id}/presence`
    pub presence: String,
}

pub struct Pipeline {
    pub directory: Directory,
    pub producer: FutureProducer,
    pub readings_topic: String,
    pub dead_letters: DeadLetters,
    pub limits: iot_domain::Limits,
    pub topics: Topics,
    pub metrics: Metrics,
}

fn under(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Pipeline {
    /// Handles one MQTT message, routed by its topic to the payload form.
    /// Its span starts the reading's trace.
    #[tracing::instrument(name = "mqtt.message", skip_all, fields(otel.kind = "consumer", mqtt.topic = topic))]
    pub async fn handle_mqtt(&self, topic: &str, payload: &[u8]) -> Result<Delivery, Transient> {
        if under(&self.topics.presence, topic) {
            return Box::pin(self.presence(topic, payload)).await;
        }
        let parsed = if under(&self.topics.batch, topic) {
            iot_domain::parse_device_topic(&self.topics.batch, topic).and_then(|device| {
                Ok((
                    device,
                    iot_domain::parse_batch(payload, &self.limits)?,
                    true,
                ))
            })
        } else if under(&self.topics.senml, topic) {
            iot_domain::parse_device_topic(&self.topics.senml, topic).and_then(|device| {
                Ok((
                    device,
                    iot_domain::parse_senml(payload, &self.limits, Utc::now())?,
                    true,
                ))
            })
        } else {
            iot_domain::parse_topic(&self.topics.single, topic).map(|(device, sensor)| {
                let entry = iot_domain::parse_single(sensor, payload, &self.limits);
                (device, vec![entry], false)
            })
        };
        match parsed {
            Ok((device, entries, multi)) => {
                self.ingest(Door::Mqtt, device, entries, multi, topic, payload)
                    .await
            }
            Err(rejection) => Box::pin(self.refuse(rejection, topic, payload)).await,
        }
    }

    /// Validates the entries of one message for `device` (external id or
    /// UUID), produces the valid ones, dead-letters the rest, and returns
    /// once Kafka holds all of it.
    #[tracing::instrument(name = "gateway.ingest", skip_all, fields(door = door.as_str(), device = device))]
    pub async fn ingest(
        &self,
        door: Door,
        device: &str,
        entries: Vec<Entry>,
        multi: bool,
        origin: &str,
        payload: &[u8],
    ) -> Result<Delivery, Transient> {
        let received_at = Utc::now();
        let info = match self.directory.lookup(device).await? {
            Some(info) if info.active => info,
            Some(_) => {
                let r = Rejection::new(
                    RejectReason::InactiveDevice,
                    format!("device {device:?} is not active"),
                );
                return Box::pin(self.refuse(r, origin, payload)).await;
            }
            None => {
                let r = Rejection::new(
                    RejectReason::UnknownDevice,
                    format!("device {device:?} is not registered"),
                );
                return Box::pin(self.refuse(r, origin, payload)).await;
            }
        };
        let mut readings = Vec::with_capacity(entries.len());
        // Entry index of each reading, for the details of a refused one.
        let mut indices = Vec::with_capacity(entries.len());
        let mut rejected = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let checked = entry.and_then(|input| {
                iot_domain::validate_reading(
                    info.uuid,
                    &info.device_id,
                    input,
                    received_at,
                    &self.limits,
                )
                .map_err(|r| {
                    if multi {
                        Rejection::new(r.reason, format!("readings[{i}]: {}", r.detail))
                    } else {
                        r
                    }
                })
            });
            match checked {
                Ok(reading) => {
                    readings.push(reading);
                    indices.push(i);
                }
                Err(r) => rejected.push((multi.then_some(i), r)),
            }
        }
        // Enqueue every reading first, then wait for the delivery reports:
        // librdkafka holds its own copy of each record, so what waits here
        // is one small receiver per reading, not a produce future. A reading
        // Kafka refuses for good is dead-lettered like an invalid one: a
        // retry could never succeed, and would hold the message forever.
        let mut refused = Vec::new();
        let mut deliveries = Vec::with_capacity(readings.len());
        for (k, r) in readings.iter().enumerate() {
            let delivery = match self.try_enqueue(r, door) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    // Rare: boxed, so that every message's future does not
                    // carry this wait's state.
                    Box::pin(self.enqueue_when_room(r, door)).await
                }
                other => other,
            };
            match delivery {
                Ok(d) => deliveries.push((k, d)),
                Err(e) if iot_kafka::is_permanent(&e) => refused.push((k, e)),
                Err(e) => return Err(e.into()),
            }
        }
        for (k, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) if iot_kafka::is_permanent(&e) => refused.push((k, e)),
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(KafkaError::Canceled.into()),
            }
        }
        if !refused.is_empty() {
            refused.sort_by_key(|(k, _)| *k);
            for (k, e) in refused.iter().rev() {
                let i = indices[*k];
                let detail = format!("kafka refused the reading: {e}");
                let detail = if multi {
                    format!("readings[{i}]: {detail}")
                } else {
                    detail
                };
                rejected.push((
                    multi.then_some(i),
                    Rejection::new(RejectReason::KafkaRefused, detail),
                ));
                readings.remove(*k);
            }
        }
        let letters = join_all(
            letters(&rejected)
                .iter()
                .map(|r| self.dead_letters.send(r, origin, payload)),
        )
        .await;
        letters.into_iter().collect::<Result<Vec<()>, _>>()?;
        self.metrics.accepted(door.as_str(), readings.len());
        if !readings.is_empty() {
            self.directory
                .record_activity(&info, readings.iter().map(|r| r.sensor_name.as_str()));
        }
        for (_, r) in &rejected {
            self.metrics.rejected(origin, r);
        }
        Ok(Delivery {
            accepted: readings.len(),
            rejected,
        })
    }

    /// Reports a presence message (birth, announced disconnect, last will)
    /// to the registry at once: it is a change subscribers wait for, not
    /// activity to coalesce. A message that is not one, or of no active
    /// device, is dead-lettered with its reason.
    async fn presence(&self, topic: &str, payload: &[u8]) -> Result<Delivery, Transient> {
        use iot_domain::presence::PresenceEvent;
        let device = topic
            .strip_prefix(self.topics.presence.as_str())
            .and_then(|t| t.strip_prefix('/'))
            .and_then(|t| t.strip_suffix("/presence"))
            .filter(|d| !d.is_empty() && !d.contains('/'));
        let Some(device) = device else {
            let r = Rejection::new(
                RejectReason::BadTopic,
                format!("{topic}: a presence topic is {{prefix}}/{{device_id}}/presence"),
            );
            return self.refuse(r, topic, payload).await;
        };
        // An empty payload clears a retained message: nothing happened.
        if payload.is_empty() {
            return Ok(Delivery::default());
        }
        let Some(event) = PresenceEvent::parse(payload) else {
            let r = Rejection::new(
                RejectReason::BadJson,
                "a presence payload is online, offline or lost (bare or as {\"status\": ...})",
            );
            return self.refuse(r, topic, payload).await;
        };
        let Some(info) = self.directory.lookup(device).await? else {
            let r = Rejection::new(
                RejectReason::UnknownDevice,
                format!("no device {device:?} is registered"),
            );
            return self.refuse(r, topic, payload).await;
        };
        self.directory.record_presence(info.uuid, event).await?;
        self.metrics.presence(event.as_str());
        Ok(Delivery::default())
    }

    /// Dead-letters a whole message. (The hot path boxes this call: its
    /// produce future would otherwise make every message's future larger.)
    pub async fn refuse(
        &self,
        rejection: Rejection,
        origin: &str,
        payload: &[u8],
    ) -> Result<Delivery, Transient> {
        self.dead_letters.send(&rejection, origin, payload).await?;
        self.metrics.rejected(origin, &rejection);
        Ok(Delivery {
            accepted: 0,
            rejected: vec![(None, rejection)],
        })
    }

    /// Hands a valid reading, keyed by device, to the producer; the returned
    /// future resolves with Kafka's delivery report. `QueueFull` when the
    /// producer's bounded local queue has no room now.
    fn try_enqueue(&self, r: &Reading, door: Door) -> Result<DeliveryFuture, KafkaError> {
        let bytes = iot_proto::reading::encode(r, door.as_str());
        let key = iot_proto::reading::key(r);
        // The reading's trace goes on in the writer and alert-engine.
        let traceparent = iot_telemetry::trace::traceparent();
        let mut record = FutureRecord::to(&self.readings_topic)
            .key(key.as_bytes())
            .payload(&bytes)
            .timestamp(r.time.timestamp_millis());
        if let Some(tp) = &traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: iot_telemetry::trace::TRACEPARENT,
                value: Some(tp.as_str()),
            }));
        }
        self.producer.send_result(record).map_err(|(e, _)| e)
    }

    /// [`Self::try_enqueue`], waiting while the producer's queue is full
    /// (backpressure up to the MQTT broker), for at most `QUEUE_TIMEOUT`.
    async fn enqueue_when_room(
        &self,
        r: &Reading,
        door: Door,
    ) -> Result<DeliveryFuture, KafkaError> {
        let deadline = tokio::time::Instant::now() + QUEUE_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match self.try_enqueue(r, door) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if tokio::time::Instant::now() < deadline => {}
                other => return other,
            }
        }
    }
}

/// Most entries' details one dead letter lists.
const MAX_DETAILS: usize = 10;

/// The dead letters for a message's rejected entries: one per reason, each
/// with the original payload once and the details of (at most
/// [`MAX_DETAILS`] of) its entries. One letter per entry would copy the
/// payload once per bad entry: a 64 KiB batch of bad entries would become
/// gigabytes on the dead-letter topic.
fn letters(rejected: &[(Option<usize>, Rejection)]) -> Vec<Rejection> {
    let mut by_reason: Vec<(RejectReason, Vec<&str>)> = Vec::new();
    for (_, r) in rejected {
        match by_reason.iter_mut().find(|(reason, _)| *reason == r.reason) {
            Some((_, details)) => details.push(&r.detail),
            None => by_reason.push((r.reason, vec![&r.detail])),
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, details)| {
            let mut detail = details[..details.len().min(MAX_DETAILS)].join("; ");
            if details.len() > MAX_DETAILS {
                detail.push_str(&format!(
                    "; and {} more entries",
                    details.len() - MAX_DETAILS
                ));
            }
            Rejection::new(reason, detail)
        })
        .collect()
}

#[cfg(test)]
mod letter_tests {
    use super::*;

    #[test]
    fn one_letter_per_reason_with_bounded_details() {
        let bad = |i: usize, reason| (Some(i), Rejection::new(reason, format!("readings[{i}]: x")));
        let mut rejected: Vec<_> = (0..25).map(|i| bad(i, RejectReason::BadValue)).collect();
        rejected.insert(3, bad(99, RejectReason::BadSensorName));
        let got = letters(&rejected);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].reason, RejectReason::BadValue);
        assert!(got[0].detail.starts_with("readings[0]: x; readings[1]: x;"));
        assert!(
            got[0]
                .detail
                .ends_with("readings[9]: x; and 15 more entries")
        );
        assert_eq!(
            got[1],
            Rejection::new(RejectReason::BadSensorName, "readings[99]: x")
        );
        // A single rejection is its own letter, unchanged.
        let one = [bad(1, RejectReason::BadField)];
        assert_eq!(letters(&one), vec![one[0].1.clone()]);
    }
}
