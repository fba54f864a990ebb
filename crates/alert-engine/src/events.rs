//! The alert outbox. Every alert change is written with an event row in
//! the same transaction (`change`); `relay` publishes the events to the
//! alerts topic in order and marks them published; `subscribe` streams
//! them to gRPC subscribers from the same log, so any replica serves every
//! alert.

use std::time::Duration;

use deadpool_postgres::Pool;
use iot_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use iot_proto::Message as _;
use iot_proto::v1;
use iot_runtime::CancellationToken;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::error::AlertError;

/// The columns every alert query returns, in `alert_from_row` order.
pub const COLUMNS: &str = "id, device_id, alert_type, severity, value, threshold, acknowledged,
       created_at, sensor_name, message, last_seen_at, occurrences, resolved_at,
       acknowledged_by, acknowledged_at, owner_id, rule_id";

/// Runs `sql` (which returns `COLUMNS` of the alerts it changed) and
/// records a `kind` event for each, in one transaction. Returns the alerts.
#[tracing::instrument(name = "alert.change", skip_all, fields(kind = kind))]
pub async fn change(
    pool: &Pool,
    kind: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<v1::Alert>, AlertError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let alerts = change_in(&tx, kind, sql, params).await?;
    tx.commit().await?;
    Ok(alerts)
}

/// [`change`] inside the caller's transaction `tx`.
pub async fn change_in(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<v1::Alert>, AlertError> {
    let stmt = tx.prepare_cached(sql).await?;
    let alerts: Vec<v1::Alert> = tx
        .query(&stmt, params)
        .await?
        .iter()
        .map(crate::service::alert_from_row)
        .collect();
    let record = tx
        .prepare_cached(
            "INSERT INTO alert_events (alert_id, device_id, kind, alert) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    for a in &alerts {
        let (id, device) = (Uuid::parse_str(&a.id)?, Uuid::parse_str(&a.device_uuid)?);
        tx.execute(&record, &[&id, &device, &kind, &a.encode_to_vec()])
            .await?;
    }
    Ok(alerts)
}

/// Arbitrary, fixed key of the relay's advisory lock.
const RELAY_LOCK: i64 = 0x0107_da7a_0003;

/// Publishes unpublished events to `topic` (key: device UUID) in order and
/// marks them, until `shutdown`. One replica relays at a time (a
/// transaction-scoped advisory lock); the others skip their turn. An event can go out twice (crash between the delivery
/// report and the commit); consumers tell by `resume_after`.
pub async fn relay(
    pool: Pool,
    producer: FutureProducer,
    topic: String,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = relay_once(&pool, &producer, &topic).await {
            tracing::warn!(error = %e, "alert events not published yet; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn relay_once(pool: &Pool, producer: &FutureProducer, topic: &str) -> Result<(), AlertError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // One relay at a time across replicas, so events go out in order.
    let ours: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RELAY_LOCK])
        .await?
        .get(0);
    if !ours {
        return Ok(());
    }
    let rows = tx
        .query(
            "SELECT seq, device_id, kind, alert FROM alert_events
             WHERE published_at IS NULL ORDER BY seq LIMIT 500",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut seqs = Vec::with_capacity(rows.len());
    for r in &rows {
        let (seq, device, kind, alert): (i64, Uuid, String, Vec<u8>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let event = v1::AlertEvent {
            kind,
            alert: Some(v1::Alert::decode(alert.as_slice())?.with_both_forms()),
            resume_after: u64::try_from(seq).unwrap_or(0),
        };
        let key = device.to_string();
        let payload = event.encode_to_vec();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        seqs.push(seq);
    }
    tx.execute(
        "UPDATE alert_events SET published_at = now() WHERE seq = ANY($1)",
        &[&seqs],
    )
    .await?;
    tx.execute(
        "DELETE FROM alert_events
         WHERE published_at < now() - INTERVAL '1 day' AND webhooks_at IS NOT NULL",
        &[],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Events after `after`, oldest first.
async fn events_after(
    pool: &Pool,
    after: i64,
) -> Result<Vec<iot_db::tail::Entry<(Uuid, v1::AlertEvent)>>, AlertError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT seq, device_id, kind, alert, extract(epoch FROM now() - at)::float8
             FROM alert_events WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .await?;
    let mut out = Vec::new();
    for r in client.query(&stmt, &[&after]).await? {
        let alert: Vec<u8> = r.get(3);
        out.push(iot_db::tail::Entry {
            seq: r.get(0),
            age_secs: r.get(4),
            item: (
                r.get(1),
                v1::AlertEvent {
                    kind: r.get(2),
                    alert: Some(v1::Alert::decode(alert.as_slice())?.with_both_forms()),
                    resume_after: 0,
                },
            ),
        });
    }
    Ok(out)
}

/// The newest event's sequence number (where "from now on" starts).
pub async fn newest(pool: &Pool) -> Result<i64, AlertError> {
    let client = pool.get().await?;
    Ok(client
        .query_one("SELECT COALESCE(max(seq), 0) FROM alert_events", &[])
        .await?
        .get(0))
}

/// Streams events after `from` (of `device`, or all; of `owner`'s devices,
/// or all) to `tx` until the subscriber goes away.
pub async fn subscribe(
    pool: Pool,
    from: i64,
    device: Option<Uuid>,
    owner: Option<Uuid>,
    tx: tokio::sync::mpsc::Sender<Result<v1::AlertEvent, tonic::Status>>,
    shutdown: CancellationToken,
) {
    let gone = tx.clone();
    let tail = iot_db::tail::tail(
        from,
        Duration::from_millis(50),
        |after| {
            let pool = pool.clone();
            async move { events_after(&pool, after).await }
        },
        |(of, mut event): (Uuid, v1::AlertEvent), resume| {
            let tx = tx.clone();
            async move {
                let owned = |o: Uuid| {
                    event
                        .alert
                        .as_ref()
                        .is_some_and(|a| a.owner_id == o.to_string())
                };
                if device.is_some_and(|d| d != of) || owner.is_some_and(|o| !owned(o)) {
                    return true;
                }
                event.resume_after = u64::try_from(resume).unwrap_or(0);
                tx.send(Ok(event)).await.is_ok()
            }
        },
    );
    tokio::select! {
        () = gone.closed() => {}
        () = shutdown.cancelled() => {}
        () = tail => {}
    }
}
