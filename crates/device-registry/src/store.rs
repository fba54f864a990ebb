//! SQL access to the registry's tables.

use deadpool_postgres::{Pool, Transaction};
use iot_proto::v1;
use rust_decimal::Decimal;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::RegistryError;

const SELECT_DEVICE: &str = include_str!("sql/select_device.sql");
const INSERT_DEVICE: &str = include_str!("sql/insert_device.sql");
const INSERT_CONFIG: &str = include_str!("sql/insert_config.sql");
const UPSERT_CREDENTIALS: &str = include_str!("sql/upsert_credentials.sql");

/// A validated device to insert.
pub struct NewDevice {
    pub device_id: String,
    pub name: String,
    pub device_type: String,
    pub location: Option<String>,
    pub latitude: Option<Decimal>,
    pub longitude: Option<Decimal>,
    pub owner_id: Uuid,
    pub status: String,
    pub read_interval: i32,
    pub alert_threshold: Option<serde_json::Value>,
    pub data_retention_days: Option<i32>,
    pub custom_fields: Option<serde_json::Value>,
}

/// Inserts the device and its config in `tx` (not committed).
pub async fn insert(tx: &Transaction<'_>, d: &NewDevice) -> Result<Uuid, RegistryError> {
    let stmt = tx.prepare_cached(INSERT_DEVICE).await?;
    let row = tx
        .query_opt(
            &stmt,
            &[
                &d.device_id,
                &d.name,
                &d.device_type,
                &d.location,
                &d.latitude,
                &d.longitude,
                &d.owner_id,
                &d.status,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Err(RegistryError::AlreadyExists(d.device_id.clone()));
    };
    let id: Uuid = row.get(0);
    let stmt = tx.prepare_cached(INSERT_CONFIG).await?;
    tx.execute(
        &stmt,
        &[
            &id,
            &d.read_interval,
            &d.alert_threshold,
            &d.data_retention_days,
            &d.custom_fields,
        ],
    )
    .await?;
    Ok(id)
}

/// Records (or replaces) a device's credentials hash in `tx`.
pub async fn set_credentials(
    tx: &Transaction<'_>,
    device: Uuid,
    username: &str,
    password_hash: &str,
) -> Result<(), RegistryError> {
    let stmt = tx.prepare_cached(UPSERT_CREDENTIALS).await?;
    tx.execute(&stmt, &[&device, &username, &password_hash])
        .await?;
    Ok(())
}

/// Marks a device's credentials revoked in `tx`; false when it has none.
pub async fn revoke_credentials(tx: &Transaction<'_>, device: Uuid) -> Result<bool, RegistryError> {
    let n = tx
        .execute(
            "UPDATE device_credentials SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL",
            &[&device],
        )
        .await?;
    Ok(n > 0)
}

/// Finds a device by platform UUID or by external device_id.
pub async fn get(pool: &Pool, id: &str) -> Result<Option<v1::Device>, RegistryError> {
    let client = pool.get().await?;
    let row = match Uuid::parse_str(id) {
        Ok(uuid) => {
            let sql = format!(
                "{SELECT_DEVICE} WHERE d.id = $1 OR d.device_id = $2 ORDER BY (d.id = $1) DESC LIMIT 1"
            );
            let stmt = client.prepare_cached(&sql).await?;
            client.query_opt(&stmt, &[&uuid, &id]).await?
        }
        Err(_) => {
            let sql = format!("{SELECT_DEVICE} WHERE d.device_id = $1");
            let stmt = client.prepare_cached(&sql).await?;
            client.query_opt(&stmt, &[&id]).await?
        }
    };
    Ok(row.as_ref().map(device_from_row))
}

pub async fn list(
    pool: &Pool,
    device_type: Option<&str>,
    limit: i64,
) -> Result<Vec<v1::Device>, RegistryError> {
    let client = pool.get().await?;
    let sql = format!(
        "{SELECT_DEVICE} WHERE ($1::text IS NULL OR d.device_type = $1) ORDER BY d.created_at, d.id LIMIT $2"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &[&device_type, &limit]).await?;
    Ok(rows.iter().map(device_from_row).collect())
}

fn device_from_row(r: &Row) -> v1::Device {
    let id: Uuid = r.get("id");
    let owner: Uuid = r.get("owner_id");
    let lat: Option<Decimal> = r.get("latitude");
    let lon: Option<Decimal> = r.get("longitude");
    let hb: Option<chrono::DateTime<chrono::Utc>> = r.get("last_heartbeat");
    let created: chrono::DateTime<chrono::Utc> = r.get("created_at");
    let read_interval: Option<i32> = r.get("read_interval");
    let threshold: Option<serde_json::Value> = r.get("alert_threshold");
    let custom: Option<serde_json::Value> = r.get("custom_fields");
    v1::Device {
        id: id.to_string(),
        device_id: r.get("device_id"),
        name: r.get("name"),
        device_type: r.get("device_type"),
        location: r.get("location"),
        latitude: lat.map(|d| d.normalize().to_string()),
        longitude: lon.map(|d| d.normalize().to_string()),
        owner_id: owner.to_string(),
        status: r.get("status"),
        last_heartbeat: hb.map(iot_proto::timestamp),
        created_at: Some(iot_proto::timestamp(created)),
        config: read_interval.map(|read_interval| v1::DeviceConfig {
            read_interval,
            alert_threshold_json: threshold.map(|v| v.to_string()),
            data_retention_days: r.get("data_retention_days"),
            custom_fields_json: custom.map(|v| v.to_string()),
        }),
        credentials: None,
    }
}
