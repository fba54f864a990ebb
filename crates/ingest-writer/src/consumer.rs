//! Kafka to PostgreSQL: batch by size and time, write in one transaction,
//! acknowledge the batch's records (store their offsets) only after the
//! commit. A batch is never skipped: database errors are retried with
//! backoff while consumption is paused.

use std::collections::VecDeque;
use std::time::Duration;
use tracing::Instrument as _;

use iot_domain::Rejection;
use iot_kafka::rdkafka::message::Message;
use iot_kafka::{Backoff, DeadLetters, Offsets, ReadingsStream, Throttle};
use iot_runtime::CancellationToken;

use crate::error::WriterError;
use crate::metrics::Metrics;
use crate::store::{Row, Store};

pub struct BatchSettings {
    pub max_rows: usize,
    pub max_wait: Duration,
    /// Batches written at once (each in its own transaction); their
    /// offsets are stored in the order the batches were taken.
    pub writes_in_flight: usize,
}

/// Decodes one record; `Err` is a poison record for the dead-letter topic:
/// one that is not a reading envelope, or a reading the table cannot hold
/// (which would otherwise fail its batch on every retry and stop the
/// writer). The gateway validates before it produces, but the topic may
/// have other producers.
pub fn decode(payload: &[u8]) -> Result<Row, Rejection> {
    let r = iot_proto::reading::decode(payload)?;
    let value = iot_domain::validate::check_storable(
        &r.sensor_name,
        r.value,
        r.unit.as_deref(),
        r.quality.as_deref(),
    )?;
    Ok(Row {
        time: r.time,
        device_id: r.device_uuid,
        sensor_name: r.sensor_name,
        value,
        unit: r.unit,
        quality: r.quality,
    })
}

pub async fn run(
    stream: ReadingsStream,
    store: Store,
    dead_letters: DeadLetters,
    settings: BatchSettings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), WriterError> {
    let max_writes = settings.writes_in_flight.max(1);
    let mut rows: Vec<Row> = Vec::with_capacity(settings.max_rows);
    // Highest offset seen per (topic, partition) in the current batch.
    let mut offsets = Offsets::default();
    // The batches being written, oldest first.
    let mut writing: VecDeque<Writing> = VecDeque::with_capacity(max_writes);
    // The traced readings of the batch, which its span links to.
    let mut links: Vec<String> = Vec::new();
    // Set when a batch was not written: no later one may be acknowledged,
    // or its offsets would skip the unwritten batch's records.
    let mut gap = false;
    'outer: loop {
        let mut batch = Batch {
            rows: &mut rows,
            offsets: &mut offsets,
            links: &mut links,
            dead_letters: &dead_letters,
            metrics: &metrics,
            shutdown: &shutdown,
        };
        // Wait for the first record of a batch; meanwhile acknowledge the
        // batches being written as soon as they are.
        let first = loop {
            tokio::select! {
                () = shutdown.cancelled() => break 'outer,
                m = stream.recv() => break m,
                Some(done) = oldest_written(&mut writing) => {
                    if !acknowledged(&stream, done) {
                        gap = true;
                        break 'outer;
                    }
                }
            }
        };
        if !batch.take(first).await {
            break 'outer;
        }
        // The batch is due at `max_wait` after its first record, or when
        // full. While every write slot is taken a due batch keeps growing
        // (up to `max_rows`) instead of waiting idle: under load the
        // batches grow to what the database takes per write, which costs no
        // latency, since its records would otherwise wait here.
        let deadline = tokio::time::Instant::now() + settings.max_wait;
        let mut due = false;
        while batch.rows.len() < settings.max_rows {
            tokio::select! {
                m = stream.recv() => if !batch.take(m).await {
                    break 'outer;
                },
                () = tokio::time::sleep_until(deadline), if !due => {
                    due = true;
                    if writing.len() < max_writes {
                        break;
                    }
                }
                Some(done) = oldest_written(&mut writing) => {
                    if !acknowledged(&stream, done) {
                        gap = true;
                        break 'outer;
                    }
                    if due {
                        break;
                    }
                }
            }
        }
        // Up to `max_writes` writes run while the next batch is collected;
        // offsets are stored in batch order, so a batch committed before
        // an older one is acknowledged only with it.
        while writing.len() >= max_writes {
            if !finish(&stream, writing.pop_front()).await {
                gap = true;
                break 'outer;
            }
        }
        let batch = std::mem::replace(&mut rows, Vec::with_capacity(settings.max_rows));
        let batch_offsets = std::mem::take(&mut offsets);
        let (store, metrics, shutdown) = (store.clone(), metrics.clone(), shutdown.clone());
        let throttle = stream.throttle();
        // One batch holds many readings, each of its own trace: the batch's
        // span links to them rather than belonging to one.
        let span = tracing::info_span!("writer.batch", rows = batch.len());
        for tp in links.drain(..) {
            iot_telemetry::trace::add_link(&span, &tp);
        }
        writing.push_back(tokio::spawn(
            async move {
                // The offsets come back only once the batch is written.
                let written =
                    write_with_retry(&store, &batch, &metrics, &throttle, &shutdown).await;
                written.then_some(batch_offsets)
            }
            .instrument(span),
        ));
    }
    while let Some(w) = writing.pop_front() {
        if gap {
            // Written or not, it stays unacknowledged: read again after a
            // restart, and its stored rows absorbed as redeliveries.
            let _ = w.await;
        } else if !finish(&stream, Some(w)).await {
            gap = true;
        }
    }
    stream.commit();
    Ok(())
}

/// The most readings a batch's span links to.
const MAX_LINKS: usize = 128;

/// The batch being collected.
struct Batch<'a> {
    rows: &'a mut Vec<Row>,
    offsets: &'a mut Offsets,
    links: &'a mut Vec<String>,
    dead_letters: &'a DeadLetters,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
}

impl Batch<'_> {
    /// Adds one received record: a row, or a poison record dead-lettered.
    /// False when the service stops before a poison record was taken by
    /// Kafka: nothing of this batch may be acknowledged then.
    async fn take<M: Message>(&mut self, m: M) -> bool {
        let payload = m.payload().unwrap_or_default();
        match decode(payload) {
            Ok(row) => {
                self.rows.push(row);
                if let Some(tp) = iot_kafka::traceparent(&m)
                    && self.links.len() < MAX_LINKS
                {
                    self.links.push(tp.to_owned());
                }
            }
            Err(rejection) => {
                let origin = format!("kafka:{}/{}@{}", m.topic(), m.partition(), m.offset());
                let sent = send_dead_letter(
                    self.dead_letters,
                    &rejection,
                    &origin,
                    payload,
                    self.metrics,
                    self.shutdown,
                )
                .await;
                if !sent {
                    // Stopping before Kafka took the dead letter: this
                    // batch (and the record's offset) is not acknowledged,
                    // so all of it is read again after a restart.
                    return false;
                }
            }
        }
        self.offsets.add(&m);
        true
    }
}

/// A batch being written: its offsets once it is written (`None` when the
/// service stopped first).
type Writing = tokio::task::JoinHandle<Option<Offsets>>;

/// The outcome of the oldest batch being written, once it is done (taken
/// off the queue); `None`, at once, when none is being written.
async fn oldest_written(
    writing: &mut VecDeque<Writing>,
) -> Option<Result<Option<Offsets>, tokio::task::JoinError>> {
    let done = writing.front_mut()?.await;
    writing.pop_front();
    Some(done)
}

/// Waits for the batch being written, then acknowledges it. False when it
/// was not written (shutdown came first): its records are not
/// acknowledged either, so they are read again after a restart.
async fn finish(stream: &ReadingsStream, writing: Option<Writing>) -> bool {
    let Some(writing) = writing else {
        return true;
    };
    acknowledged(stream, writing.await)
}

/// Acknowledges a written batch's records: the one place the writer stores
/// offsets, after the batch's transaction committed.
fn acknowledged(
    stream: &ReadingsStream,
    done: Result<Option<Offsets>, tokio::task::JoinError>,
) -> bool {
    match done {
        Ok(Some(offsets)) => {
            stream.ack(&offsets);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::error!(error = %e, "batch writer task failed");
            false
        }
    }
}

/// Dead-letters a poison record, retrying until Kafka takes it. False when
/// shutdown came first: the record was not dead-lettered.
async fn send_dead_letter(
    dead_letters: &DeadLetters,
    rejection: &Rejection,
    origin: &str,
    payload: &[u8],
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match dead_letters.send(rejection, origin, payload).await {
            Ok(()) => {
                metrics.poison(origin, rejection);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter write failed, retrying");
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Writes the batch, retrying on database errors with consumption paused
/// meanwhile. Returns false only when shutdown arrived before the batch
/// could be written.
async fn write_with_retry(
    store: &Store,
    rows: &[Row],
    metrics: &Metrics,
    throttle: &Throttle,
    shutdown: &CancellationToken,
) -> bool {
    if rows.is_empty() {
        return true;
    }
    let mut retry = throttle.retry(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        let started = std::time::Instant::now();
        match store.write_batch(rows).await {
            Ok(inserted) => {
                metrics.batch_written(rows.len(), inserted, started.elapsed());
                return true;
            }
            Err(e) => {
                metrics.db_error(&e);
                if !retry.failed(shutdown).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_domain::RejectReason;
    use iot_proto::Message as _;
    use rust_decimal::Decimal;
    use uuid::Uuid;

    #[test]
    fn poison_records_are_rejected_with_reason() {
        let err = decode(b"\xff\xff garbage").unwrap_err();
        assert_eq!(err.reason, RejectReason::Undecodable);
        let env = iot_proto::v1::ReadingEnvelope {
            device_uuid: "not-a-uuid".into(),
            ..Default::default()
        };
        assert_eq!(
            decode(&env.encode_to_vec()).unwrap_err().reason,
            RejectReason::Undecodable
        );
    }

    #[test]
    fn readings_the_table_cannot_hold_are_poison() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let env = |value: &str, unit: Option<&str>| iot_proto::v1::ReadingEnvelope {
            device_uuid: Uuid::nil().to_string(),
            device_id: "d".into(),
            sensor_name: "temperature".into(),
            value: value.into(),
            unit: unit.map(Into::into),
            time: Some(iot_proto::timestamp(t)),
            ..Default::default()
        };
        let reason = |e: iot_proto::v1::ReadingEnvelope| decode(&e.encode_to_vec()).map(|_| ());
        assert_eq!(
            reason(env("1000000", None)).unwrap_err().reason,
            RejectReason::BadValue
        );
        // Rounds to 1000000.0000 in NUMERIC(10,4): too large as well.
        assert_eq!(
            reason(env("999999.99995", None)).unwrap_err().reason,
            RejectReason::BadValue
        );
        assert_eq!(
            reason(env("1", Some("a unit longer than twenty")))
                .unwrap_err()
                .reason,
            RejectReason::BadField
        );
        // Stored as the column rounds it.
        let row = decode(&env("999999.99994", None).encode_to_vec()).unwrap();
        assert_eq!(row.value, Decimal::new(9_999_999_999, 4));
    }

    #[test]
    fn envelope_decodes() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let env = iot_proto::v1::ReadingEnvelope {
            device_uuid: Uuid::nil().to_string(),
            device_id: "d".into(),
            sensor_name: "temperature".into(),
            value: "23.5".into(),
            time: Some(iot_proto::timestamp(t)),
            ..Default::default()
        };
        let row = decode(&env.encode_to_vec()).unwrap();
        assert_eq!(row.value, Decimal::new(235, 1));
        assert_eq!(row.time, t);
    }
}
