//! SQL access to the telemetry tables.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use uuid::Uuid;

const INSERT_READINGS: &str = include_str!("sql/insert_readings.sql");
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

/// Writes a batch in one transaction; a reading already stored (same device,
/// sensor and time) is ignored. Returns the number of new rows.
pub async fn write_batch(pool: &Pool, rows: &[Row]) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx.prepare_cached(INSERT_READINGS).await?;
    let times: Vec<_> = rows.iter().map(|r| r.time).collect();
    let devices: Vec<_> = rows.iter().map(|r| r.device_id).collect();
    let sensors: Vec<_> = rows.iter().map(|r| r.sensor_name.as_str()).collect();
    let values: Vec<_> = rows.iter().map(|r| r.value).collect();
    let units: Vec<_> = rows.iter().map(|r| r.unit.as_deref()).collect();
    let qualities: Vec<_> = rows.iter().map(|r| r.quality.as_deref()).collect();
    let inserted = tx
        .execute(
            &stmt,
            &[&times, &devices, &sensors, &values, &units, &qualities],
        )
        .await?;
    tx.commit().await?;
    Ok(inserted)
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
