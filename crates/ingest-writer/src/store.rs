//! SQL access to the telemetry tables.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use uuid::Uuid;

const CREATE_STAGING: &str = include_str!("sql/create_staging.sql");
const COPY_STAGING: &str = include_str!("sql/copy_staging.sql");
const COPY_DIRECT: &str = include_str!("sql/copy_direct.sql");
const INSERT_READINGS: &str = include_str!("sql/insert_readings.sql");
const COLUMN_TYPES: [Type; 6] = [
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::TEXT,
    Type::NUMERIC,
    Type::TEXT,
    Type::TEXT,
];
const QUERY_READINGS: &str = include_str!("sql/query_readings.sql");

/// A reading as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub time: DateTime<Utc>,
    pub device_id: Uuid,
    pub sensor_name: String,
    pub value: Decimal,
    pub unit: Option<String>,
    pub quality: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Writes a batch in one transaction and returns the number of new rows.
///
/// Fast path: binary `COPY` straight into `sensor_readings`. If any reading
/// is already stored (a redelivery: same device, sensor and time) the unique
/// key refuses the whole `COPY`; the batch is then written again through a
/// session-local staging table and `INSERT ... ON CONFLICT DO NOTHING`, so
/// the stored readings are ignored, not duplicated.
pub async fn write_batch(pool: &Pool, rows: &[Row]) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    match copy_rows(&mut client, COPY_DIRECT, None, rows).await {
        Ok(n) => Ok(n),
        Err(StoreError::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            copy_rows(&mut client, COPY_STAGING, Some(INSERT_READINGS), rows).await
        }
        Err(e) => Err(e),
    }
}

/// One transaction: `COPY` the rows with `copy`, then run `then` (if any);
/// returns the rows `then` inserted, or the rows copied.
async fn copy_rows(
    client: &mut deadpool_postgres::Object,
    copy: &str,
    then: Option<&str>,
    rows: &[Row],
) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    if then.is_some() {
        tx.batch_execute(CREATE_STAGING).await?;
    }
    let sink = tx.copy_in(copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
    futures::pin_mut!(writer);
    for r in rows {
        writer
            .as_mut()
            .write(&[
                &r.time,
                &r.device_id,
                &r.sensor_name,
                &r.value,
                &r.unit,
                &r.quality,
            ])
            .await?;
    }
    let copied = writer.finish().await?;
    let n = match then {
        Some(sql) => {
            let stmt = tx.prepare_cached(sql).await?;
            tx.execute(&stmt, &[]).await?
        }
        None => copied,
    };
    tx.commit().await?;
    Ok(n)
}

/// Raw readings of one device and sensor in `[start, end)`, newest first.
pub async fn query_readings(
    pool: &Pool,
    device: Uuid,
    sensor: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Row>, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(QUERY_READINGS).await?;
    let rows = client
        .query(&stmt, &[&device, &sensor, &start, &end, &limit])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            time: r.get(0),
            device_id: r.get(1),
            sensor_name: r.get(2),
            value: r.get(3),
            unit: r.get(4),
            quality: r.get(5),
        })
        .collect())
}

/// Creates the partitions ahead (plain-PostgreSQL backend only).
pub async fn ensure_partitions(pool: &Pool) -> Result<i32, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT iot_ensure_partitions(7, 14)", &[])
        .await?;
    Ok(row.get(0))
}
