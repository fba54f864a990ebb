//! SQL access to the registry's tables.

use deadpool_postgres::{Pool, Transaction};
use iot_domain::presence::PresenceEvent;
use iot_proto::{TextCode, v1};
use rust_decimal::Decimal;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::RegistryError;

const SELECT_DEVICE: &str = include_str!("sql/select_device.sql");
const INSERT_DEVICE: &str = include_str!("sql/insert_device.sql");
const INSERT_CONFIG: &str = include_str!("sql/insert_config.sql");
const UPSERT_CREDENTIALS: &str = include_str!("sql/upsert_credentials.sql");
const SELECT_CREDENTIALS: &str = include_str!("sql/select_credentials.sql");
const INSERT_DEVICES: &str = include_str!("sql/insert_devices.sql");
const INSERT_CONFIGS: &str = include_str!("sql/insert_configs.sql");
const RECORD_CHANGES: &str = include_str!("sql/record_changes.sql");

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
    pub sensors: Vec<NewSensor>,
}

/// First key of the advisory locks that serialise one owner's device
/// creations (the second is a hash of the owner).
const DEVICE_QUOTA_LOCK: i32 = 0x0107_d001;

/// Refuses a device for `owner` in `tx` when the owner has `limit`
/// devices already. Takes the owner's advisory lock until `tx` ends, so
/// that concurrent creations for one owner count each other: the count
/// and the insert that follows are one step for that owner.
pub async fn check_device_quota(
    tx: &Transaction<'_>,
    owner: Uuid,
    limit: u32,
) -> Result<(), RegistryError> {
    if device_quota_room(tx, owner, limit).await? == 0 {
        return Err(RegistryError::QuotaExceeded {
            quota: "devices_per_owner",
            limit,
        });
    }
    Ok(())
}

/// How many more devices `owner` may have under `limit`, with the owner's
/// advisory lock taken until `tx` ends (see [`check_device_quota`]).
pub async fn device_quota_room(
    tx: &Transaction<'_>,
    owner: Uuid,
    limit: u32,
) -> Result<u32, RegistryError> {
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))")
        .await?;
    tx.execute(&lock, &[&DEVICE_QUOTA_LOCK, &owner]).await?;
    // The owner's counters (kept by the triggers of migration 0020), not
    // its devices: a bulk call checks up to a thousand owners, each
    // possibly near its limit. Holding the owner's lock, this reads what
    // the previous holder committed.
    let count = tx
        .prepare_cached(
            "SELECT COALESCE(sum(n), 0)::int8 FROM device_status_counts WHERE owner_id = $1",
        )
        .await?;
    let n: i64 = tx.query_one(&count, &[&owner]).await?.get(0);
    Ok(u32::try_from(i64::from(limit) - n).unwrap_or(0))
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

/// A device's current credentials.
pub struct Credentials {
    pub device: Uuid,
    pub device_id: String,
    /// As `broker::hash_password` makes it.
    pub password_hash: String,
}

/// The credentials whose username is `username`, unless revoked.
pub async fn credentials_of(
    pool: &Pool,
    username: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(SELECT_CREDENTIALS).await?;
    let row = client.query_opt(&stmt, &[&username]).await?;
    Ok(row.map(|r| Credentials {
        device: r.get(0),
        device_id: r.get(1),
        password_hash: r.get(2),
    }))
}

/// Finds a device by platform UUID or by external device_id, within
/// `owner` (None: any owner).
pub async fn get(
    pool: &Pool,
    id: &str,
    owner: Option<Uuid>,
) -> Result<Option<v1::Device>, RegistryError> {
    let client = pool.get().await?;
    let uuid = Uuid::parse_str(id).ok();
    let sql = format!(
        "{SELECT_DEVICE} WHERE (d.id = $1 OR d.device_id = $2) AND ($3::uuid IS NULL OR d.owner_id = $3)
         ORDER BY (d.id = $1) DESC NULLS LAST LIMIT 1"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&stmt, &[&uuid, &id, &owner]).await?;
    Ok(row.as_ref().map(device_from_row))
}

/// Filters of a device listing; `None` matches anything.
pub struct ListFilter<'a> {
    pub device_type: Option<&'a str>,
    pub status: Option<&'a str>,
    pub owner: Option<Uuid>,
    pub location: Option<&'a str>,
    /// Only these devices.
    pub ids: Option<&'a [Uuid]>,
    /// Continue after this (created_at, id).
    pub after: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    pub limit: i64,
}

/// The statement names only the filters given: one written as
/// `$n IS NULL OR ...` would make a generic plan that cannot walk the
/// (owner, created_at, id) index, and a page deep in a large owner's
/// devices would read all of them. One cached statement per combination.
pub async fn list<'a>(
    pool: &Pool,
    f: &'a ListFilter<'_>,
) -> Result<Vec<v1::Device>, RegistryError> {
    use tokio_postgres::types::ToSql;
    let client = pool.get().await?;
    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    // Each `?` in `condition` takes the next of `values`.
    let mut filter = |condition: &str, values: &[&'a (dyn ToSql + Sync)]| {
        let mut c = String::new();
        let mut values = values.iter();
        for (i, part) in condition.split('?').enumerate() {
            if i > 0 {
                params.extend(values.next().copied());
                c.push_str(&format!("${}", params.len()));
            }
            c.push_str(part);
        }
        conditions.push(c);
    };
    if let Some(t) = &f.device_type {
        filter("d.device_type = ?", &[t]);
    }
    if let Some(s) = &f.status {
        filter("d.status = ?", &[s]);
    }
    if let Some(o) = &f.owner {
        filter("d.owner_id = ?", &[o]);
    }
    if let Some(l) = &f.location {
        filter("d.location = ?", &[l]);
    }
    if let Some((t, id)) = &f.after {
        filter("(d.created_at, d.id) > (?, ?)", &[t, id]);
    }
    if let Some(ids) = &f.ids {
        filter("d.id = ANY(?)", &[ids]);
    }
    let limit = format!("${}", params.len() + 1);
    params.push(&f.limit);
    let sql = format!(
        "{SELECT_DEVICE} WHERE {} ORDER BY d.created_at, d.id LIMIT {limit}",
        if conditions.is_empty() {
            "true".to_owned()
        } else {
            conditions.join(" AND ")
        }
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    Ok(rows.iter().map(device_from_row).collect())
}

/// Changed device fields; `None` keeps the stored value.
#[derive(Default)]
pub struct DeviceChange {
    pub name: Option<String>,
    pub device_type: Option<String>,
    pub location: Option<String>,
    pub latitude: Option<Decimal>,
    pub longitude: Option<Decimal>,
    pub status: Option<String>,
}

pub async fn update(tx: &Transaction<'_>, id: Uuid, c: &DeviceChange) -> Result<(), RegistryError> {
    let client = tx;
    let stmt = client
        .prepare_cached(
            "UPDATE devices SET
                 name = COALESCE($2, name),
                 device_type = COALESCE($3, device_type),
                 location = COALESCE($4, location),
                 latitude = COALESCE($5, latitude),
                 longitude = COALESCE($6, longitude),
                 status = COALESCE($7, status)
             WHERE id = $1",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &id,
                &c.name,
                &c.device_type,
                &c.location,
                &c.latitude,
                &c.longitude,
                &c.status,
            ],
        )
        .await?;
    Ok(())
}

/// Changed config fields; `None` keeps the stored value.
#[derive(Default)]
pub struct ConfigChange {
    pub read_interval: Option<i32>,
    pub alert_threshold: Option<serde_json::Value>,
    pub data_retention_days: Option<i32>,
    pub custom_fields: Option<serde_json::Value>,
}

pub async fn update_config(
    tx: &Transaction<'_>,
    id: Uuid,
    c: &ConfigChange,
) -> Result<(), RegistryError> {
    let client = tx;
    let stmt = client
        .prepare_cached(
            "INSERT INTO device_config (device_id, read_interval, alert_threshold, data_retention_days, custom_fields)
             VALUES ($1, COALESCE($2, 60), $3, $4, $5)
             ON CONFLICT (device_id) DO UPDATE SET
                 read_interval = COALESCE($2, device_config.read_interval),
                 alert_threshold = COALESCE($3, device_config.alert_threshold),
                 data_retention_days = COALESCE($4, device_config.data_retention_days),
                 custom_fields = COALESCE($5, device_config.custom_fields),
                 updated_at = now()",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &id,
                &c.read_interval,
                &c.alert_threshold,
                &c.data_retention_days,
                &c.custom_fields,
            ],
        )
        .await?;
    Ok(())
}

/// Deletes the device in `tx` (config, sensors and credentials go with it).
pub async fn delete(tx: &Transaction<'_>, id: Uuid) -> Result<(), RegistryError> {
    tx.execute("DELETE FROM devices WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// A declared sensor.
pub struct NewSensor {
    pub name: String,
    pub unit: Option<String>,
    pub sensor_type: Option<String>,
    pub accuracy: Option<Decimal>,
}

pub async fn insert_sensors(
    tx: &Transaction<'_>,
    device: Uuid,
    sensors: &[NewSensor],
) -> Result<(), RegistryError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO sensors (device_id, sensor_name, unit, sensor_type, accuracy)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    for s in sensors {
        tx.execute(
            &stmt,
            &[&device, &s.name, &s.unit, &s.sensor_type, &s.accuracy],
        )
        .await?;
    }
    Ok(())
}

pub async fn sensors(pool: &Pool, device: Uuid) -> Result<Vec<v1::Sensor>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT sensor_name, unit, sensor_type, accuracy, created_at, device_id FROM sensors
             WHERE device_id = $1 ORDER BY sensor_name",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&device])
        .await?
        .iter()
        .map(sensor)
        .collect())
}

/// The sensors of `devices` that are `owner`'s (any owner's for `None`), by
/// device, then name.
pub async fn sensors_of(
    pool: &Pool,
    devices: &[Uuid],
    owner: Option<Uuid>,
) -> Result<Vec<v1::Sensor>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT s.sensor_name, s.unit, s.sensor_type, s.accuracy, s.created_at, s.device_id
             FROM sensors s JOIN devices d ON d.id = s.device_id
             WHERE s.device_id = ANY($1) AND ($2::uuid IS NULL OR d.owner_id = $2)
             ORDER BY s.device_id, s.sensor_name",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&devices, &owner])
        .await?
        .iter()
        .map(sensor)
        .collect())
}

fn sensor(r: &Row) -> v1::Sensor {
    let accuracy: Option<Decimal> = r.get(3);
    let device: Uuid = r.get(5);
    v1::Sensor {
        sensor_name: r.get(0),
        unit: r.get(1),
        sensor_type: r.get(2),
        accuracy: accuracy.map(|a| a.normalize().to_string()),
        created_at: Some(iot_proto::timestamp(r.get(4))),
        device_uuid: device.to_string(),
    }
}

/// Device counts by status within `owner`. Active devices count as
/// offline by the platform's one definition
/// (`iot_domain::presence::OfflinePolicy`, kept in
/// `device_heartbeats.online_until`),
/// or, when `offline_after_secs` is given, when silent that long.
///
/// The status counts come from `device_status_counts` and the online
/// count from the index of active devices by `online_until`, so the cost
/// follows the online devices, not the fleet; a caller's own silence
/// limit reads every device of the scope.
pub async fn status_summary(
    pool: &Pool,
    owner: Option<Uuid>,
    offline_after_secs: Option<f64>,
) -> Result<v1::DeviceStatusSummaryResponse, RegistryError> {
    const COUNTS: &str = "SELECT COALESCE(sum(n), 0)::int8,
                    COALESCE(sum(n) FILTER (WHERE status = 'active'), 0)::int8,
                    COALESCE(sum(n) FILTER (WHERE status = 'inactive'), 0)::int8,
                    COALESCE(sum(n) FILTER (WHERE status = 'error'), 0)::int8
             FROM device_status_counts";
    const ACTIVE_ONLINE: &str =
        "SELECT count(*) FROM device_heartbeats d WHERE d.active AND d.online_until > now()";
    let silent = |secs: &str| {
        format!(
            "SELECT count(*) FROM device_heartbeats d WHERE d.active
                AND (d.last_heartbeat IS NULL
                     OR d.last_heartbeat < now() - {secs}::float8 * INTERVAL '1 second')"
        )
    };
    // One statement, one snapshot: the counts and the online count agree.
    let sql = match (owner.is_some(), offline_after_secs.is_some()) {
        (true, false) => format!(
            "SELECT c.*, c.active - o.count FROM ({COUNTS} WHERE owner_id = $1) c(total, active, inactive, error),
                    ({ACTIVE_ONLINE} AND d.owner_id = $1) o"
        ),
        (false, false) => format!(
            "SELECT c.*, c.active - o.count FROM ({COUNTS}) c(total, active, inactive, error),
                    ({ACTIVE_ONLINE}) o"
        ),
        (true, true) => format!(
            "SELECT c.*, s.count FROM ({COUNTS} WHERE owner_id = $1) c, ({} AND d.owner_id = $1) s",
            silent("$2")
        ),
        (false, true) => format!("SELECT c.*, s.count FROM ({COUNTS}) c, ({}) s", silent("$1")),
    };
    let client = pool.get().await?;
    let stmt = client.prepare_cached(&sql).await?;
    let r = match (owner, offline_after_secs) {
        (Some(o), None) => client.query_one(&stmt, &[&o]).await?,
        (None, None) => client.query_one(&stmt, &[]).await?,
        (Some(o), Some(secs)) => client.query_one(&stmt, &[&o, &secs]).await?,
        (None, Some(secs)) => client.query_one(&stmt, &[&secs]).await?,
    };
    let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
    Ok(v1::DeviceStatusSummaryResponse {
        total: n(0),
        active: n(1),
        inactive: n(2),
        error: n(3),
        offline: n(4),
    })
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
    let status: String = r.get("status");
    v1::Device {
        id: id.to_string(),
        device_id: r.get("device_id"),
        name: r.get("name"),
        device_type: r.get("device_type"),
        location: r.get("location"),
        latitude: lat.map(|d| d.normalize().to_string()),
        longitude: lon.map(|d| d.normalize().to_string()),
        owner_id: owner.to_string(),
        status_code: v1::DeviceStatus::code_of_text(&status),
        status,
        last_heartbeat: hb.map(iot_proto::timestamp),
        created_at: Some(iot_proto::timestamp(created)),
        disconnected_at: r
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>("disconnected_at")
            .map(iot_proto::timestamp),
        config: read_interval.map(|read_interval| v1::DeviceConfig {
            read_interval,
            alert_threshold_json: threshold.map(|v| v.to_string()),
            data_retention_days: r.get("data_retention_days"),
            custom_fields_json: custom.map(|v| v.to_string()),
        }),
        credentials: None,
    }
}

/// Logs a change of `device` in `tx`, for watchers.
pub async fn record_change(
    tx: &Transaction<'_>,
    device: Uuid,
    external_id: &str,
    kind: &str,
) -> Result<(), RegistryError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO device_changes (device_id, external_id, kind) VALUES ($1, $2, $3)",
        )
        .await?;
    tx.execute(&stmt, &[&device, &external_id, &kind]).await?;
    Ok(())
}

/// A logged change.
pub struct Change {
    pub device: Uuid,
    pub external_id: String,
    pub kind: String,
}

/// Changes after `after`, oldest first.
pub async fn changes_after(
    pool: &Pool,
    after: i64,
) -> Result<Vec<iot_db::tail::Entry<Change>>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT seq, device_id, external_id, kind, extract(epoch FROM now() - at)::float8
             FROM device_changes WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&after])
        .await?
        .iter()
        .map(|r| iot_db::tail::Entry {
            seq: r.get(0),
            age_secs: r.get(4),
            item: Change {
                device: r.get(1),
                external_id: r.get(2),
                kind: r.get(3),
            },
        })
        .collect())
}

/// (oldest kept seq - 1, newest seq): the range a watcher can resume in.
pub async fn change_bounds(pool: &Pool) -> Result<(i64, i64), RegistryError> {
    let client = pool.get().await?;
    let r = client
        .query_one(
            "SELECT COALESCE(min(seq) - 1, 0), COALESCE(max(seq), 0) FROM device_changes",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Drops changes older than a day.
pub async fn trim_changes(pool: &Pool) -> Result<u64, RegistryError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM device_changes WHERE at < now() - INTERVAL '1 day'",
            &[],
        )
        .await?)
}

/// Heartbeats (newest wins: an older one writes nothing), presence events and first-seen sensors, in
/// one transaction. A device heard from while offline, and every presence
/// event, is logged as a "presence" change for watchers (the gateway's
/// live subscriptions, alert-engine's cache).
pub async fn record_activity(
    pool: &Pool,
    seen: &[(Uuid, chrono::DateTime<chrono::Utc>)],
    presence: &[(Uuid, PresenceEvent, chrono::DateTime<chrono::Utc>)],
    sensors: &[(Uuid, String)],
) -> Result<(), RegistryError> {
    // The state before (`old`) is read from the statement's snapshot: the
    // update takes no row locks beyond its own, as before presence. It
    // sets `online_until` itself, with the function the row trigger would
    // call (which then does not run: 0022, 0024). It writes only the
    // narrow `device_heartbeats` rows, never `devices`.
    const HEARD: &str =
        "WITH a AS (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) AS a(id, seen))
         UPDATE device_heartbeats h SET last_heartbeat = a.seen,
             online_until = device_online_until(a.seen, h.disconnected_at, c.read_interval)
         FROM a JOIN device_heartbeats old ON old.device_id = a.id
             LEFT JOIN device_config c ON c.device_id = a.id
         WHERE h.device_id = a.id AND (h.last_heartbeat IS NULL OR h.last_heartbeat < a.seen)
         RETURNING h.device_id, old.online_until <= now()";
    const NAMES: &str = "SELECT id, device_id FROM devices WHERE id = ANY($1::uuid[])";
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let (ids, times): (Vec<Uuid>, Vec<chrono::DateTime<chrono::Utc>>) =
        seen.iter().copied().unzip();
    let stmt = tx.prepare_cached(HEARD).await?;
    // Devices back from offline (all of a fleet heard from for the first
    // time): their changes go in one statement.
    let back: Vec<Uuid> = tx
        .query(&stmt, &[&ids, &times])
        .await?
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if !back.is_empty() {
        let names = tx.prepare_cached(NAMES).await?;
        let back: Vec<(Uuid, String)> = tx
            .query(&names, &[&back])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        record_changes(&tx, &back, "presence").await?;
    }
    for (device, event, at) in presence {
        let sql = match event {
            PresenceEvent::Connected => {
                "UPDATE device_heartbeats h SET last_heartbeat = GREATEST(h.last_heartbeat, $2),
                     disconnected_at = NULL
                 FROM devices d WHERE h.device_id = $1 AND d.id = h.device_id RETURNING d.device_id"
            }
            // A disconnect older than the last word from the device is
            // history, not its state.
            PresenceEvent::Disconnected | PresenceEvent::Lost => {
                "UPDATE device_heartbeats h SET disconnected_at = CASE
                    WHEN h.last_heartbeat IS NULL OR h.last_heartbeat <= $2 THEN $2
                    ELSE h.disconnected_at END
                 FROM devices d WHERE h.device_id = $1 AND d.id = h.device_id RETURNING d.device_id"
            }
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [device, at];
        let Some(row) = tx.query_opt(sql, &params).await? else {
            continue;
        };
        tx.execute(
            "INSERT INTO device_presence (device_id, event, at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[device, &event.as_str(), at],
        )
        .await?;
        record_change(&tx, *device, row.get::<_, &str>(0), "presence").await?;
    }
    let (devs, names): (Vec<Uuid>, Vec<String>) = sensors.iter().cloned().unzip();
    tx.execute(
        "INSERT INTO sensors (device_id, sensor_name)
         SELECT s.d, s.n FROM unnest($1::uuid[], $2::text[]) AS s(d, n)
         WHERE EXISTS (SELECT 1 FROM devices WHERE id = s.d)
         ON CONFLICT (device_id, sensor_name) DO NOTHING",
        &[&devs, &names],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts `devices` and their configs in `tx` (not committed) in two
/// statements; answers the UUID of each device_id that went in (one taken
/// already, or given twice, goes in at most once).
pub async fn insert_many(
    tx: &Transaction<'_>,
    devices: &[&NewDevice],
) -> Result<std::collections::HashMap<String, Uuid>, RegistryError> {
    let col = |f: fn(&NewDevice) -> String| devices.iter().map(|d| f(d)).collect::<Vec<_>>();
    let stmt = tx.prepare_cached(INSERT_DEVICES).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &col(|d| d.device_id.clone()),
                &col(|d| d.name.clone()),
                &col(|d| d.device_type.clone()),
                &devices
                    .iter()
                    .map(|d| d.location.clone())
                    .collect::<Vec<_>>(),
                &devices.iter().map(|d| d.latitude).collect::<Vec<_>>(),
                &devices.iter().map(|d| d.longitude).collect::<Vec<_>>(),
                &devices.iter().map(|d| d.owner_id).collect::<Vec<_>>(),
                &col(|d| d.status.clone()),
            ],
        )
        .await?;
    let ids: std::collections::HashMap<String, Uuid> =
        rows.iter().map(|r| (r.get(1), r.get(0))).collect();
    // Each inserted device's config: the first row of its device_id.
    let mut configs = Vec::with_capacity(ids.len());
    let mut seen = std::collections::HashSet::new();
    for d in devices {
        if let Some(id) = ids.get(&d.device_id)
            && seen.insert(*id)
        {
            configs.push((*id, *d));
        }
    }
    let stmt = tx.prepare_cached(INSERT_CONFIGS).await?;
    tx.execute(
        &stmt,
        &[
            &configs.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            &configs
                .iter()
                .map(|(_, d)| d.read_interval)
                .collect::<Vec<_>>(),
            &configs
                .iter()
                .map(|(_, d)| d.alert_threshold.clone())
                .collect::<Vec<_>>(),
            &configs
                .iter()
                .map(|(_, d)| d.data_retention_days)
                .collect::<Vec<_>>(),
            &configs
                .iter()
                .map(|(_, d)| d.custom_fields.clone())
                .collect::<Vec<_>>(),
        ],
    )
    .await?;
    Ok(ids)
}

/// Logs the same change of many devices in `tx`, for watchers.
pub async fn record_changes(
    tx: &Transaction<'_>,
    devices: &[(Uuid, String)],
    kind: &str,
) -> Result<(), RegistryError> {
    let stmt = tx.prepare_cached(RECORD_CHANGES).await?;
    tx.execute(
        &stmt,
        &[
            &devices.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            &devices.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            &kind,
        ],
    )
    .await?;
    Ok(())
}
