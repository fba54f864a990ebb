//! Kafka plumbing shared by the services: one place for client settings,
//! topic creation and the dead-letter writer.
//!
//! API Boundary: dead letters are encoded only here (as
//! `iot.v1.DeadLetter`), so every service writes them the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use iot_proto::Message as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

pub use rdkafka;

/// `fetch.wait.max.ms` of the platform's consumers: how long a broker may
/// hold a fetch that finds no data. It bounds the latency a consumer adds
/// from produce to row (or alert). Kafka answers a fetch as soon as data is
/// there, so a short wait costs it only empty polls of an idle consumer;
/// Tansu 0.6 holds every fetch for the full wait, data or not, so there it
/// is also the time per fetch round trip and caps a consumer's throughput.
pub const FETCH_WAIT_MS: &str = "10";

/// Prefetch limits of the readings consumers ([`KafkaConfig::readings_consumer`]),
/// which keep their memory bounded under a backlog while keeping them busy:
/// - librdkafka's `queued.*` limits apply per partition, and each
///   prefetched record costs some 300 bytes of librdkafka's own (its
///   message and the decompressed record set) beyond the compressed payload
///   the kbytes limit counts: at 16 MiB and 20,000 records per partition
///   the writer held a whole 200,000-record topic, 75 MB. 2 MiB and 4,000
///   records (24,000 over the default 6 partitions, more than a full writer
///   batch) keep a consumer busy now that the next fetch is not postponed
///   (below).
/// - A fetch response is one buffer, and every record set in it is
///   decompressed whole (lz4 shrinks the envelopes several times) and kept
///   until its last record is consumed. Tansu fills a response up to
///   `fetch.max.bytes` over all partitions (it ignores the per-partition
///   limit): at 4 MiB one glibc arena of the writer held 64 MB and it
///   peaked at 90-102 MiB with a backlog; at 1 MiB, 35-42 MiB, draining as
///   fast. alert-engine, on librdkafka's defaults (50 MB fetches, 64 MiB
///   per partition), peaked at 105 MiB catching up on 300,000 readings.
/// - With a full prefetch queue librdkafka postpones the next fetch by
///   `fetch.queue.backoff.ms` (default 1 s), long after the consumer has
///   drained the queue: with a fast database the writer sat idle a third
///   of the time.
const BOUNDED_PREFETCH: [(&str, &str); 4] = [
    ("queued.max.messages.kbytes", "2048"),
    ("queued.min.messages", "4000"),
    ("fetch.max.bytes", "1048576"),
    ("fetch.queue.backoff.ms", "10"),
];

/// Connection settings common to every Kafka client of a service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Topic of validated readings.
    pub readings_topic: String,
    /// Topic of rejected input.
    pub dead_letter_topic: String,
    /// Partitions for topics this service creates when missing.
    pub partitions: i32,
    /// Replication factor for topics this service creates when missing.
    pub replication: i32,
    /// Extra librdkafka properties, passed through as they are.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:19092".into(),
            readings_topic: "iot.readings.v1".into(),
            dead_letter_topic: "iot.dead-letter.v1".into(),
            partitions: 6,
            replication: 1,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Reports every problem with these settings.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.brokers.trim().is_empty() {
            p.push(format!("{prefix}.brokers is empty"));
        }
        for (name, topic) in [
            ("readings_topic", &self.readings_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
        ] {
            if !valid_topic_name(topic) {
                p.push(format!(
                    "{prefix}.{name} {topic:?} is not a Kafka topic name ([A-Za-z0-9._-]{{1,249}})"
                ));
            }
        }
        if self.readings_topic == self.dead_letter_topic {
            p.push(format!(
                "{prefix}.readings_topic and dead_letter_topic must differ"
            ));
        }
        if self.partitions < 1 {
            p.push(format!("{prefix}.partitions must be at least 1"));
        }
        if self.replication < 1 {
            p.push(format!("{prefix}.replication must be at least 1"));
        }
        p
    }

    /// A client config with the brokers and the pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }

    /// A client config with the brokers, then the service's `defaults`,
    /// then the operator's pass-through properties, which win.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // A consumer that subscribed before its topic existed (services
        // start in any order; the topic is created by whichever comes up
        // first) sees the topic at the next metadata refresh: every 5 s,
        // not librdkafka's default of 5 minutes.
        c.set("topic.metadata.refresh.interval.ms", "5000");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A consumer of the readings topic in group `group_id`, subscribed.
    /// Offsets are stored by the caller once a record is done with (written,
    /// evaluated): `enable.auto.offset.store` is off and cannot be
    /// overridden; librdkafka commits what is stored every second. Fetches
    /// wait at most [`FETCH_WAIT_MS`], prefetch is bounded
    /// ([`BOUNDED_PREFETCH`]), and statistics every 5 s feed `observer`'s
    /// lag gauge.
    pub fn readings_consumer(
        &self,
        client_id: &str,
        group_id: &str,
        observer: ConsumerObserver,
    ) -> Result<StreamConsumer<ConsumerObserver>, KafkaError> {
        let defaults: Vec<(&str, &str)> = [
            ("client.id", client_id),
            ("auto.offset.reset", "earliest"),
            ("auto.commit.interval.ms", "1000"),
            ("fetch.wait.max.ms", FETCH_WAIT_MS),
            ("statistics.interval.ms", "5000"),
        ]
        .into_iter()
        .chain(BOUNDED_PREFETCH)
        .collect();
        let consumer: StreamConsumer<ConsumerObserver> = self
            .client_config_with(&defaults)
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .create_with_context(observer)?;
        consumer.subscribe(&[&self.readings_topic])?;
        Ok(consumer)
    }

    /// An idempotent producer tuned for throughput: batches by time and size,
    /// lz4 compression, acks from all in-sync replicas. The tuning can be
    /// overridden through `properties`; idempotence and `acks=all` cannot,
    /// because acknowledging a device's message relies on them.
    pub fn producer(&self, client_id: &str) -> Result<FutureProducer, KafkaError> {
        self.client_config_with(&[
            ("client.id", client_id),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            // A bounded local queue: when it is full, sends wait (backpressure
            // up to the MQTT broker) instead of growing memory.
            ("queue.buffering.max.kbytes", "32768"),
            ("queue.buffering.max.messages", "100000"),
            ("message.timeout.ms", "30000"),
        ])
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
    }

    /// Like [`Self::ensure_topics`], but a broker that cannot be reached is
    /// only logged: services start while Kafka is down and simply make no
    /// progress (and acknowledge nothing) until it is back.
    pub async fn try_ensure_topics(&self) {
        if let Err(e) = self.ensure_topics().await {
            tracing::warn!(error = %e, brokers = %self.brokers, "cannot ensure topics now; continuing");
        }
    }

    /// Creates the readings and dead-letter topics when they do not exist.
    pub async fn ensure_topics(&self) -> Result<(), KafkaError> {
        ensure_topics(
            self,
            &[
                (self.readings_topic.as_str(), self.partitions),
                (self.dead_letter_topic.as_str(), self.partitions.min(3)),
            ],
        )
        .await
    }
}

fn valid_topic_name(t: &str) -> bool {
    (1..=249).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Creates topics that do not exist yet; existing ones are left alone.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.client_config().create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(cfg.replication)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, ?code, "cannot create topic");
                });
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write dead letter to {topic}: {source}")]
pub struct DeadLetterError {
    pub topic: String,
    #[source]
    pub source: KafkaError,
}

/// Writes rejected input to the dead-letter topic, with its reason, origin
/// and the original payload byte for byte.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    service: &'static str,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String, service: &'static str) -> Self {
        Self {
            producer,
            topic,
            service,
        }
    }

    /// Sends one dead letter and waits for Kafka's delivery report.
    pub async fn send(
        &self,
        rejection: &iot_domain::Rejection,
        origin: &str,
        payload: &[u8],
    ) -> Result<(), DeadLetterError> {
        let letter = iot_proto::v1::DeadLetter {
            reason: rejection.reason.code().to_owned(),
            detail: rejection.detail.clone(),
            origin: origin.to_owned(),
            payload: payload.to_vec(),
            rejected_at: Some(iot_proto::timestamp(chrono::Utc::now())),
            service: self.service.to_owned(),
        };
        let bytes = letter.encode_to_vec();
        let record = FutureRecord::to(&self.topic)
            .key(rejection.reason.code())
            .payload(&bytes);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(source, _)| DeadLetterError {
                topic: self.topic.clone(),
                source,
            })
    }
}

/// A consumer's context: counts partition assignments (a service reloads
/// per-partition state after each) and publishes the consumer lag per
/// partition from librdkafka's statistics (`statistics.interval.ms`) as
/// `<prefix>_kafka_consumer_lag{topic, partition}`.
#[derive(Default)]
pub struct ConsumerObserver {
    assignments: std::sync::atomic::AtomicU64,
    lag: std::sync::OnceLock<prometheus::IntGaugeVec>,
}

impl ConsumerObserver {
    /// An observer whose lag gauge is registered in `registry`.
    pub fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let lag = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "kafka_consumer_lag",
                "Records on each partition not yet consumed by this consumer",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        let o = Self::default();
        let _ = o.lag.set(lag);
        Ok(o)
    }

    /// How many assignments the consumer has had.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl rdkafka::ClientContext for ConsumerObserver {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(lag) = self.lag.get() else { return };
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a
                // negative lag is "not known yet".
                if *id >= 0 && p.consumer_lag >= 0 {
                    lag.with_label_values(&[name.as_str(), &id.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ConsumerObserver {
    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if matches!(rebalance, rdkafka::consumer::Rebalance::Assign(_)) {
            self.assignments
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// What a readiness check resolves to.
pub type CheckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// A readiness check that the brokers answer a metadata request for the
/// readings topic (one client, reused by every probe).
pub fn readiness_check(
    cfg: &KafkaConfig,
) -> Result<impl Fn() -> CheckFuture + Send + Sync + 'static, KafkaError> {
    let client: std::sync::Arc<rdkafka::consumer::BaseConsumer> =
        std::sync::Arc::new(cfg.client_config().create()?);
    let topic = cfg.readings_topic.clone();
    Ok(move || {
        let (client, topic) = (client.clone(), topic.clone());
        let check = async move {
            tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::Consumer as _;
                client
                    .fetch_metadata(Some(&topic), Duration::from_millis(1500))
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        };
        Box::pin(check) as CheckFuture
    })
}

/// The record's `traceparent` header (W3C trace context, set by the
/// producer of a traced reading), if any.
pub fn traceparent<M: rdkafka::message::Message>(m: &M) -> Option<&str> {
    use rdkafka::message::Headers as _;
    m.headers()?
        .iter()
        .find(|h| h.key == "traceparent")?
        .value
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_problems_are_all_reported() {
        let cfg = KafkaConfig {
            brokers: " ".into(),
            readings_topic: "bad topic".into(),
            dead_letter_topic: "bad topic".into(),
            partitions: 0,
            replication: 0,
            properties: BTreeMap::new(),
        };
        assert_eq!(cfg.problems("kafka").len(), 6);
        assert!(KafkaConfig::default().problems("kafka").is_empty());
    }
}
