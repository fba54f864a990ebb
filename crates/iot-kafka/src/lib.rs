//! Kafka plumbing shared by the services: one place for client settings,
//! topic creation, the dead-letter writer and the acknowledging readings
//! consumer ([`ReadingsStream`]).
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

mod readings;
pub use readings::{Backoff, Offsets, ReadingsStream, Record, Retry, Throttle};

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
    /// `min.insync.replicas` of the topics it creates (unset: the
    /// cluster's default). With `acks=all`, a write is acknowledged only
    /// once this many replicas hold it: 2 of 3 survives one broker lost.
    pub min_insync_replicas: Option<i32>,
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
            min_insync_replicas: None,
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
        if let Some(m) = self.min_insync_replicas
            && !(1..=self.replication).contains(&m)
        {
            p.push(format!(
                "{prefix}.min_insync_replicas must be between 1 and replication ({})",
                self.replication
            ));
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
    ///
    /// `instance_id` makes the consumer a static member of its group
    /// (`group.instance.id`): a replica that restarts under the same name,
    /// after a crash say, takes its own partitions back at once instead of
    /// waiting for the group to give up on its previous incarnation (a
    /// session timeout on Kafka; on Tansu 0.6, whose coordinator notices a
    /// dead member only when a live one calls, much longer). Give each
    /// replica a stable name of its own (a StatefulSet's pod name).
    pub fn readings_consumer(
        &self,
        client_id: &str,
        group_id: &str,
        instance_id: Option<&str>,
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
        let mut config = self.client_config_with(&defaults);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        if let Some(id) = instance_id {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<ConsumerObserver> = config.create_with_context(observer)?;
        consumer.subscribe(&[&self.readings_topic])?;
        Ok(consumer)
    }

    /// A service's readings consumer, wired the one way every consumer of
    /// the platform is: [`Self::readings_consumer`] with its observer's
    /// gauges in `registry`, and `ready` checking that the brokers answer
    /// and that someone in the group consumes ([`watch_assignment`], a
    /// task until `stop`); its offsets are stored only when the service
    /// acknowledges its records ([`ReadingsStream`]).
    pub fn service_consumer(
        &self,
        service: &str,
        group_id: &str,
        instance_id: Option<&str>,
        registry: &prometheus::Registry,
        ready: &iot_telemetry::Readiness,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<ReadingsStream, SetupError> {
        let consumer = self.readings_consumer(
            service,
            group_id,
            instance_id,
            ConsumerObserver::new(registry)?,
        )?;
        ready.check("kafka", readiness_check(self)?);
        let held = consumer.context().assignment();
        ready.check(
            "partitions",
            watch_assignment(self.clone(), group_id.to_owned(), held, stop),
        );
        Ok(ReadingsStream::new(consumer))
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
    let min_insync = cfg.min_insync_replicas.map(|m| m.to_string());
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| {
            let topic = NewTopic::new(name, *parts, TopicReplication::Fixed(cfg.replication));
            match &min_insync {
                Some(m) => topic.set("min.insync.replicas", m),
                None => topic,
            }
        })
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

/// Deletes `topics` (for tools that make throwaway ones: the benchmarks);
/// one that is gone already is no error.
pub async fn delete_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.client_config().create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// Why a consumer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write dead letter to {topic}: {source}")]
pub struct DeadLetterError {
    pub topic: String,
    #[source]
    pub source: KafkaError,
}

/// Whether a produce error is a verdict on the record itself (or on the
/// client's rights), so that sending it again can never succeed: such a
/// record is dead-lettered and acknowledged, never retried. Everything else
/// (broker down, leader moving, timeouts, a full queue) may pass.
pub fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageProduction(code) => *code,
        _ => match e.rdkafka_error_code() {
            Some(code) => code,
            None => return false,
        },
    };
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::UnsupportedForMessageFormat
    )
}

/// Payloads up to this size go into a dead letter whole; larger ones only as
/// their first [`TRUNCATED_PREFIX`] bytes, with their size and SHA-256. A
/// letter must fit in one Kafka record (librdkafka's and Kafka's default
/// limit is about 1 MB).
pub const MAX_LETTER_PAYLOAD: usize = 512 * 1024;
/// What a truncated dead letter keeps of its payload.
pub const TRUNCATED_PREFIX: usize = 4096;

/// Writes rejected input to the dead-letter topic, with its reason, origin
/// and the original payload byte for byte (or, for payloads too large for a
/// record, its prefix, size and SHA-256).
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

    /// Sends one dead letter and waits for Kafka's delivery report. A letter
    /// Kafka refuses for good (too large, say) goes again with the payload
    /// truncated; only errors that may pass, or a refusal of the truncated
    /// letter too, are returned.
    pub async fn send(
        &self,
        rejection: &iot_domain::Rejection,
        origin: &str,
        payload: &[u8],
    ) -> Result<(), DeadLetterError> {
        let whole = payload.len() <= MAX_LETTER_PAYLOAD;
        match self.send_letter(rejection, origin, payload, whole).await {
            Err(e) if whole && is_permanent(&e.source) => {
                tracing::warn!(error = %e.source, size = payload.len(), "dead letter refused; sending it truncated");
                self.send_letter(rejection, origin, payload, false).await
            }
            other => other,
        }
    }

    async fn send_letter(
        &self,
        rejection: &iot_domain::Rejection,
        origin: &str,
        payload: &[u8],
        whole: bool,
    ) -> Result<(), DeadLetterError> {
        use sha2::Digest as _;
        let kept = if whole {
            payload
        } else {
            &payload[..payload.len().min(TRUNCATED_PREFIX)]
        };
        let letter = iot_proto::v1::DeadLetter {
            reason: rejection.reason.code().to_owned(),
            detail: rejection.detail.clone(),
            // An origin is a topic or path the sender chose: bound it too.
            origin: truncate_str(origin, TRUNCATED_PREFIX).to_owned(),
            payload: kept.to_vec(),
            rejected_at: Some(iot_proto::timestamp(chrono::Utc::now())),
            service: self.service.to_owned(),
            payload_size: payload.len() as u64,
            payload_sha256: sha2::Sha256::digest(payload).to_vec(),
            payload_truncated: kept.len() < payload.len(),
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

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A consumer's context: counts partition assignments (a service reloads
/// per-partition state after each), keeps how many partitions the consumer
/// holds (`<prefix>_kafka_assigned_partitions`), and publishes the consumer
/// lag per partition from librdkafka's statistics (`statistics.interval.ms`)
/// as `<prefix>_kafka_consumer_lag{topic, partition}`.
pub struct ConsumerObserver {
    assignments: std::sync::atomic::AtomicU64,
    held: std::sync::Arc<Assignment>,
    lag: prometheus::IntGaugeVec,
}

impl ConsumerObserver {
    /// An observer whose gauges are registered in `registry`.
    pub fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let lag = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "iot_kafka_consumer_lag",
                "Records on each partition not yet consumed by this consumer",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        let held = Assignment::new()?;
        registry.register(Box::new(held.partitions.clone()))?;
        registry.register(Box::new(held.alarm.clone()))?;
        Ok(Self {
            assignments: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::Arc::new(held),
            lag,
        })
    }

    /// How many assignments the consumer has had.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What the consumer holds, for [`watch_assignment`].
    pub fn assignment(&self) -> std::sync::Arc<Assignment> {
        self.held.clone()
    }
}

impl rdkafka::ClientContext for ConsumerObserver {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = &self.lag;
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
        use rdkafka::consumer::Rebalance;
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.assignments
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.held.set(tpl.count());
            }
            Rebalance::Revoke(_) => self.held.set(0),
            Rebalance::Error(_) => {}
        }
        // Partitions this consumer no longer holds keep no stale lag.
        self.lag.reset();
    }
}

/// How many partitions a consumer holds, since when it has held none, and
/// the alarm raised when it holds none while its group has no other live
/// member (so that nothing consumes the topic).
pub struct Assignment {
    partitions: prometheus::IntGauge,
    alarm: prometheus::IntGauge,
    empty_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Assignment {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            partitions: prometheus::IntGauge::new(
                "iot_kafka_assigned_partitions",
                "Partitions of the readings topic this consumer holds",
            )?,
            alarm: prometheus::IntGauge::new(
                "iot_kafka_consumer_stalled",
                "1 while this consumer holds no partition and its group has no other live member",
            )?,
            empty_since: std::sync::Mutex::new(Some(std::time::Instant::now())),
        })
    }

    fn set(&self, n: usize) {
        self.partitions.set(i64::try_from(n).unwrap_or(i64::MAX));
        let mut since = self
            .empty_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (n, *since) {
            (0, None) => *since = Some(std::time::Instant::now()),
            (0, Some(_)) => {}
            _ => *since = None,
        }
    }

    /// How long the consumer has held no partition, if it holds none.
    pub fn empty_for(&self) -> Option<Duration> {
        self.empty_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    /// The alarm as a readiness check.
    pub fn readiness_check(
        self: &std::sync::Arc<Self>,
    ) -> impl Fn() -> CheckFuture + Send + Sync + 'static + use<> {
        let held = self.clone();
        move || {
            let verdict = held.check();
            Box::pin(async move { verdict }) as CheckFuture
        }
    }

    /// The alarm, as a readiness verdict.
    pub fn check(&self) -> Result<(), String> {
        if self.alarm.get() == 0 {
            Ok(())
        } else {
            Err(
                "this consumer holds no partition and its group has no other live member: \
                 nothing consumes the readings topic"
                    .into(),
            )
        }
    }
}

/// How long a consumer may hold no partition before the group is asked
/// whether another member holds them: longer than a rebalance takes.
pub const EMPTY_GRACE: Duration = Duration::from_secs(30);

/// Watches a consumer's assignment until `stop` (a task of its own) and
/// returns the alarm as a readiness check: when the consumer has held no
/// partition for [`EMPTY_GRACE`], the group coordinator is asked for the
/// group's live members; with no other member the alarm goes up (gauge,
/// error log, readiness), and down again once the consumer holds partitions
/// or another member appears.
pub fn watch_assignment(
    cfg: KafkaConfig,
    group_id: String,
    held: std::sync::Arc<Assignment>,
    stop: tokio_util::sync::CancellationToken,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    let check = held.readiness_check();
    tokio::spawn(watch(cfg, group_id, held, stop));
    check
}

async fn watch(
    cfg: KafkaConfig,
    group_id: String,
    held: std::sync::Arc<Assignment>,
    stop: tokio_util::sync::CancellationToken,
) {
    let client: Result<rdkafka::consumer::BaseConsumer, _> = cfg.client_config().create();
    let client = match client {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the consumer group");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stalled = match held.empty_for() {
            Some(d) if d >= EMPTY_GRACE => {
                let (client, group) = (client.clone(), group_id.clone());
                let others = tokio::task::spawn_blocking(move || {
                    client
                        .fetch_group_list(Some(&group), Duration::from_secs(5))
                        .map(|list| {
                            list.groups()
                                .iter()
                                .filter(|g| g.name() == group)
                                .map(|g| g.members().len())
                                .sum::<usize>()
                        })
                })
                .await;
                match others {
                    // This consumer counts itself among the members.
                    Ok(Ok(members)) => members <= 1,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, group = %group_id, "cannot describe the consumer group");
                        true
                    }
                    Err(_) => true,
                }
            }
            _ => false,
        };
        if stalled && held.alarm.get() == 0 {
            tracing::error!(
                group = %group_id,
                "this consumer holds no partition and its group has no other live member: \
                 readings are not being consumed"
            );
        } else if !stalled && held.alarm.get() == 1 {
            tracing::info!(group = %group_id, "consumer group has its partitions again");
        }
        held.alarm.set(i64::from(stalled));
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

/// A consumer's group settings, checked: every problem, for its service
/// config's `Validate`.
pub fn member_problems(group_id: &str, instance_id: Option<&str>) -> Vec<String> {
    let mut p = Vec::new();
    if group_id.is_empty() {
        p.push("group_id is empty".into());
    }
    if instance_id.is_some_and(str::is_empty) {
        p.push("instance_id is empty (leave it out for a dynamic member)".into());
    }
    p
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
            min_insync_replicas: Some(2),
            properties: BTreeMap::new(),
        };
        assert_eq!(cfg.problems("kafka").len(), 7);
        assert!(KafkaConfig::default().problems("kafka").is_empty());
    }

    /// librdkafka is built with OpenSSL and SASL: clients for TLS and for
    /// SASL (PLAIN, SCRAM) over TLS are created (a build without them
    /// refuses these properties when the client is made).
    #[test]
    fn tls_and_sasl_clients_can_be_made() {
        for (protocol, mechanism) in [
            ("ssl", None),
            ("sasl_ssl", Some("PLAIN")),
            ("sasl_ssl", Some("SCRAM-SHA-256")),
            ("sasl_ssl", Some("SCRAM-SHA-512")),
        ] {
            let mut properties =
                BTreeMap::from([("security.protocol".to_owned(), protocol.to_owned())]);
            if let Some(m) = mechanism {
                properties.insert("sasl.mechanism".into(), m.into());
                properties.insert("sasl.username".into(), "iot".into());
                properties.insert("sasl.password".into(), "secret".into());
            }
            let cfg = KafkaConfig {
                properties,
                ..KafkaConfig::default()
            };
            if let Err(e) = cfg.producer("tls-check") {
                panic!("{protocol} {mechanism:?}: {e}");
            }
        }
    }

    #[test]
    fn permanent_errors_are_verdicts_on_the_record() {
        use RDKafkaErrorCode as C;
        let produce = |c| KafkaError::MessageProduction(c);
        assert!(is_permanent(&produce(C::MessageSizeTooLarge)));
        assert!(is_permanent(&produce(C::TopicAuthorizationFailed)));
        assert!(is_permanent(&produce(C::InvalidTopic)));
        assert!(!is_permanent(&produce(C::QueueFull)));
        assert!(!is_permanent(&produce(C::MessageTimedOut)));
        assert!(!is_permanent(&produce(C::BrokerTransportFailure)));
        assert!(!is_permanent(&produce(C::NotLeaderForPartition)));
        // A CRC mismatch is Kafka's "retriable" corrupt message.
        assert!(!is_permanent(&produce(C::InvalidMessage)));
        assert!(!is_permanent(&KafkaError::Canceled));
    }

    #[test]
    fn an_assignment_knows_since_when_it_is_empty() {
        let a = Assignment::new().unwrap();
        // A new consumer holds nothing yet.
        assert!(a.empty_for().is_some());
        a.set(3);
        assert_eq!(a.partitions.get(), 3);
        assert!(a.empty_for().is_none());
        a.set(0);
        let first = a.empty_for().unwrap();
        a.set(0);
        // A second revocation does not restart the clock.
        assert!(a.empty_for().unwrap() >= first);
        assert!(a.check().is_ok());
        a.alarm.set(1);
        assert!(a.check().unwrap_err().contains("no partition"));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_str("abc", 5), "abc");
        assert_eq!(truncate_str("aé", 2), "a");
        assert_eq!(truncate_str("aé", 3), "aé");
    }
}
