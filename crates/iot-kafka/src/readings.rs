//! The one acknowledging consumer of the readings topic, shared by
//! ingest-writer and alert-engine: records in, offsets out only when the
//! service acknowledges them.
//!
//! **Architecture Invariant:** an offset is stored only after the work for
//! its record is done (the writer's transaction committed, the engine's
//! evaluation written). The consumer never stores offsets on its own
//! (`enable.auto.offset.store` is off, see
//! [`KafkaConfig::readings_consumer`](crate::KafkaConfig::readings_consumer)),
//! and [`ReadingsStream::ack`] and [`ReadingsStream::ack_record`] are the
//! only code that stores them; librdkafka commits what is stored every
//! second. Work that fails is retried ([`Retry`]) and never acknowledged
//! early; if the service stops first, its records are read again after a
//! restart, so every service's work must absorb a repeat.
//!
//! While a retry waits, the stream hands out no record ([`Throttle`]): the
//! records a service holds do not grow while its work fails, and
//! librdkafka's prefetch stops at its bounds (`BOUNDED_PREFETCH`). This is
//! not librdkafka's pause of the assignment, which drops the prefetch and
//! fetches again from the record after the last one received: Tansu 0.6,
//! the local broker, answers a fetch from an offset inside a record batch
//! with nothing, so a partition resumed there never moves again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ConsumerObserver;

/// A record of the readings topic, as received.
pub type Record<'a> = BorrowedMessage<'a>;

/// A readings consumer whose offsets are stored only when acknowledged
/// (see the module documentation). Made by
/// [`KafkaConfig::service_consumer`](crate::KafkaConfig::service_consumer).
pub struct ReadingsStream {
    shared: Arc<Shared>,
    /// The assignment count last seen by [`Self::reassigned`].
    seen: AtomicU64,
}

struct Shared {
    consumer: StreamConsumer<ConsumerObserver>,
    /// How many hold the stream paused ([`Throttle`]).
    paused: watch::Sender<usize>,
}

impl ReadingsStream {
    /// Takes over `consumer` (subscribed, offsets stored by the caller).
    pub fn new(consumer: StreamConsumer<ConsumerObserver>) -> Self {
        Self {
            shared: Arc::new(Shared {
                consumer,
                paused: watch::Sender::new(0),
            }),
            seen: AtomicU64::new(0),
        }
    }

    /// The next record, once the stream is not paused. Consumer errors (a
    /// broker down, say) are logged and skipped: librdkafka recovers by
    /// itself. Cancel-safe.
    pub async fn recv(&self) -> Record<'_> {
        let mut paused = self.shared.paused.subscribe();
        loop {
            // The sender lives as long as `self`: this ends when unpaused.
            let _ = paused.wait_for(|holders| *holders == 0).await;
            tokio::select! {
                _ = paused.wait_for(|holders| *holders > 0) => {}
                m = self.shared.consumer.recv() => match m {
                    Ok(m) => return m,
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                },
            }
        }
    }

    /// Whether the consumer's partitions were assigned anew since the last
    /// call: state kept per partition may then be stale (a partition may
    /// come from another replica, which did work this one has not seen).
    pub fn reassigned(&self) -> bool {
        let now = self.shared.consumer.context().assignments();
        self.seen.swap(now, Ordering::SeqCst) != now
    }

    /// Acknowledges records whose work is done: stores their offsets, for
    /// librdkafka to commit. Call it only once that work is done.
    pub fn ack(&self, done: &Offsets) {
        if done.0.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &done.0 {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            {
                tracing::error!(error = %e, "cannot build offset list");
            }
        }
        if let Err(e) = self.shared.consumer.store_offsets(&tpl) {
            // Happens when a rebalance took the partition away; its new
            // owner reads again from the last commit.
            tracing::warn!(error = %e, "cannot store offsets");
        }
    }

    /// Acknowledges one record whose work is done, like [`Self::ack`].
    pub fn ack_record(&self, done: &Record<'_>) {
        if let Err(e) = self.shared.consumer.store_offset_from_message(done) {
            tracing::warn!(error = %e, "cannot store offset");
        }
    }

    /// Commits what is acknowledged now, waiting for the broker: for a
    /// service that stops.
    pub fn commit(&self) {
        if let Err(e) = self.shared.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final offset commit");
        }
    }

    /// A handle that pauses this stream while work fails, for a task of
    /// its own.
    pub fn throttle(&self) -> Throttle {
        Throttle(self.shared.clone())
    }

    /// Retries of one piece of work: see [`Retry`].
    pub fn retry(&self, first: Duration, max: Duration) -> Retry {
        self.throttle().retry(first, max)
    }
}

/// The highest offset per (topic, partition) of records taken together
/// (a batch), to acknowledge once their work is done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offsets(BTreeMap<(String, i32), i64>);

impl Offsets {
    /// Adds a received record.
    pub fn add<M: Message>(&mut self, record: &M) {
        let offset = self
            .0
            .entry((record.topic().to_owned(), record.partition()))
            .or_insert(record.offset());
        *offset = (*offset).max(record.offset());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Pauses a stream while work fails: [`ReadingsStream::recv`] hands out
/// nothing from when the first holder comes until the last one goes.
/// Cheap to clone.
#[derive(Clone)]
pub struct Throttle(Arc<Shared>);

impl Throttle {
    /// Retries of one piece of work: see [`Retry`].
    pub fn retry(&self, first: Duration, max: Duration) -> Retry {
        Retry {
            backoff: Backoff::new(first, max),
            throttle: self.clone(),
            paused: None,
        }
    }

    /// Pauses the stream until the returned guard (and every other) is
    /// dropped.
    fn hold(&self) -> Paused {
        self.0.paused.send_modify(|holders| {
            if *holders == 0 {
                tracing::info!("consumption paused until the failing work succeeds");
            }
            *holders += 1;
        });
        Paused(self.0.clone())
    }
}

/// Holds the stream paused; it resumes when the last holder goes.
struct Paused(Arc<Shared>);

impl Drop for Paused {
    fn drop(&mut self) {
        self.0.paused.send_modify(|holders| {
            *holders -= 1;
            if *holders == 0 {
                tracing::info!("consumption resumed");
            }
        });
    }
}

/// Retries of one piece of work whose records are acknowledged only once
/// it succeeds: after each failure [`Retry::failed`] waits with
/// exponential backoff, and from the first failure until the retry is
/// dropped (the work succeeded, or the service stops) the stream is
/// paused.
pub struct Retry {
    backoff: Backoff,
    throttle: Throttle,
    paused: Option<Paused>,
}

impl Retry {
    /// After a failed attempt: pauses the stream (at the first failure)
    /// and waits before the next attempt. False when `stop` came first:
    /// the work is not done, and its records are not to be acknowledged.
    pub async fn failed(&mut self, stop: &CancellationToken) -> bool {
        if self.paused.is_none() {
            self.paused = Some(self.throttle.hold());
        }
        self.backoff.wait(stop).await
    }
}

/// Exponential backoff: `first`, then twice as long each time, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// Waits the current delay and doubles the next one. False when
    /// `stop` came first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.delay();
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// The delay to wait now; the next one is twice as long (up to the
    /// maximum).
    fn delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedMessage;
    use rdkafka::{Timestamp, message::OwnedHeaders};

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|_| b.delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[tokio::test]
    async fn backoff_gives_way_to_stop() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        stop.cancel();
        assert!(!b.wait(&stop).await);
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert!(b.wait(&CancellationToken::new()).await);
    }

    #[tokio::test]
    async fn a_failing_retry_pauses_the_stream_until_it_is_dropped() {
        let registry = prometheus::Registry::new();
        let consumer: StreamConsumer<ConsumerObserver> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "never-joined")
            .create_with_context(ConsumerObserver::new(&registry).unwrap())
            .unwrap();
        let stream = ReadingsStream::new(consumer);
        let holders = || *stream.shared.paused.borrow();
        let (stop, ms) = (CancellationToken::new(), Duration::from_millis(1));
        let mut write = stream.throttle().retry(ms, ms);
        let mut evaluation = stream.retry(ms, ms);
        assert_eq!(holders(), 0, "a retry pauses nothing before it fails");
        assert!(write.failed(&stop).await);
        assert!(write.failed(&stop).await);
        assert_eq!(holders(), 1, "one hold per retry, however often it fails");
        assert!(evaluation.failed(&stop).await);
        assert_eq!(holders(), 2);
        // Paused: nothing is handed out.
        let next = tokio::time::timeout(Duration::from_millis(50), stream.recv()).await;
        assert!(next.is_err());
        drop(write);
        assert_eq!(holders(), 1, "paused while any work fails");
        drop(evaluation);
        assert_eq!(holders(), 0);
    }

    #[test]
    fn offsets_keep_the_highest_per_partition() {
        let record = |partition: i32, offset: i64| {
            OwnedMessage::new(
                None,
                None,
                "t".into(),
                Timestamp::NotAvailable,
                partition,
                offset,
                None::<OwnedHeaders>,
            )
        };
        let mut o = Offsets::default();
        assert!(o.is_empty());
        for (p, off) in [(0, 5), (1, 3), (0, 7), (0, 6)] {
            o.add(&record(p, off));
        }
        let expected: BTreeMap<(String, i32), i64> =
            [(("t".into(), 0), 7), (("t".into(), 1), 3)].into();
        assert_eq!(o.0, expected);
    }
}
