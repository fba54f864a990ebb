//! SQL access to `device_commands` and `device_state`.

use deadpool_postgres::Pool;
use iot_proto::v1;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::RegistryError;

const INSERT: &str = include_str!("../sql/commands/insert.sql");
const SELECT: &str = include_str!("../sql/commands/select.sql");
const LIST: &str = include_str!("../sql/commands/list.sql");
const CHANGES: &str = include_str!("../sql/commands/changes.sql");
const CLAIM: &str = include_str!("../sql/commands/claim.sql");
const MARK_SENT: &str = include_str!("../sql/commands/mark_sent.sql");
const ANSWER: &str = include_str!("../sql/commands/answer.sql");
const ANSWER_REFUSAL: &str = include_str!("../sql/commands/answer_refusal.sql");
const SWEEP: &str = include_str!("../sql/commands/sweep.sql");
const SET_DESIRED: &str = include_str!("../sql/commands/set_desired.sql");
const SELECT_STATE: &str = include_str!("../sql/commands/select_state.sql");
const UNPUBLISHED_STATE: &str = include_str!("../sql/commands/unpublished_state.sql");
const MARK_STATE_PUBLISHED: &str = include_str!("../sql/commands/mark_state_published.sql");
const SET_REPORTED: &str = include_str!("../sql/commands/set_reported.sql");

/// The lifecycle's statuses, in the database's words.
pub const STATUSES: [(&str, v1::CommandStatus); 7] = [
    ("queued", v1::CommandStatus::Queued),
    ("sent", v1::CommandStatus::Sent),
    ("delivered", v1::CommandStatus::Delivered),
    ("succeeded", v1::CommandStatus::Succeeded),
    ("failed", v1::CommandStatus::Failed),
    ("timed_out", v1::CommandStatus::TimedOut),
    ("expired", v1::CommandStatus::Expired),
];

fn ts(row: &Row, col: &str) -> Option<iot_proto::Timestamp> {
    row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(col)
        .map(iot_proto::timestamp)
}

/// A command row as the API shows it, with its change sequence number and
/// the seconds since that change.
pub fn command(row: &Row) -> (v1::Command, i64, f64) {
    let status: String = row.get("status");
    let code = STATUSES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(v1::CommandStatus::Unspecified, |(_, c)| *c);
    let id: Uuid = row.get("id");
    let device: Uuid = row.get("device_id");
    let c = v1::Command {
        id: id.to_string(),
        device_id: device.to_string(),
        name: row.get("name"),
        payload_json: row.get::<_, serde_json::Value>("payload").to_string(),
        status: code as i32,
        result_json: row
            .get::<_, Option<serde_json::Value>>("result")
            .map(|v| v.to_string())
            .unwrap_or_default(),
        created_at: ts(row, "created_at"),
        deadline: ts(row, "deadline"),
        sent_at: ts(row, "sent_at"),
        delivered_at: ts(row, "delivered_at"),
        finished_at: ts(row, "finished_at"),
        status_code: status,
        device_external_id: row.get("external_id"),
    };
    (c, row.get("seq"), row.get("age_secs"))
}

pub struct NewCommand<'a> {
    pub id: Uuid,
    pub device: Uuid,
    pub owner: Uuid,
    pub name: &'a str,
    pub payload: serde_json::Value,
    pub timeout_secs: u32,
}

pub async fn insert(pool: &Pool, c: &NewCommand<'_>) -> Result<v1::Command, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(INSERT).await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &c.id,
                &c.device,
                &c.owner,
                &c.name,
                &c.payload,
                &f64::from(c.timeout_secs),
            ],
        )
        .await?;
    Ok(command(&row).0)
}

pub async fn get(
    pool: &Pool,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<v1::Command>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(SELECT).await?;
    Ok(client
        .query_opt(&stmt, &[&id, &owner])
        .await?
        .map(|r| command(&r).0))
}

/// A page of the device's commands, newest first, after the cursor's
/// (created_at, id).
pub async fn list(
    pool: &Pool,
    device: Uuid,
    after: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: u32,
) -> Result<Vec<v1::Command>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(LIST).await?;
    let (at, id) = after.unzip();
    let rows = client
        .query(&stmt, &[&device, &at, &id, &i64::from(limit)])
        .await?;
    Ok(rows.iter().map(|r| command(r).0).collect())
}

/// The device's command changes after sequence number `after`.
pub async fn changes(
    pool: &Pool,
    device: Uuid,
    after: i64,
) -> Result<Vec<iot_db::tail::Entry<v1::Command>>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(CHANGES).await?;
    let rows = client.query(&stmt, &[&device, &after]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (item, seq, age_secs) = command(r);
            iot_db::tail::Entry {
                seq,
                age_secs,
                item,
            }
        })
        .collect())
}

/// The newest change sequence number of the device's commands (0 if none).
pub async fn last_change(pool: &Pool, device: Uuid) -> Result<i64, RegistryError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM device_commands WHERE device_id = $1")
        .await?;
    Ok(client.query_one(&stmt, &[&device]).await?.get(0))
}

/// A command to publish.
pub struct Outgoing {
    pub id: Uuid,
    pub device_id: String,
    pub name: String,
    pub payload: serde_json::Value,
    pub deadline: chrono::DateTime<chrono::Utc>,
    pub remaining_secs: f64,
}

/// Takes up to `limit` queued commands for `lease_secs`.
pub async fn claim(
    pool: &Pool,
    lease_secs: f64,
    limit: i64,
) -> Result<Vec<Outgoing>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(CLAIM).await?;
    let rows = client.query(&stmt, &[&lease_secs, &limit]).await?;
    Ok(rows
        .iter()
        .map(|r| Outgoing {
            id: r.get("id"),
            device_id: r.get("external_id"),
            name: r.get("name"),
            payload: r.get("payload"),
            deadline: r.get("deadline"),
            remaining_secs: r.get("remaining_secs"),
        })
        .collect())
}

pub async fn mark_sent(pool: &Pool, id: Uuid) -> Result<(), RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(MARK_SENT).await?;
    client.execute(&stmt, &[&id]).await?;
    Ok(())
}

/// Why an answer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The command is another device's.
    NotItsCommand,
    /// No such command, or it is past that stage (answered, timed out,
    /// expired, or a receipt after the answer).
    Late,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::NotItsCommand => "not_its_command",
            Self::Late => "unknown_or_late",
        }
    }
}

/// Records `device`'s answer to command `id`: `status` is `delivered`,
/// `succeeded` or `failed`.
pub async fn answer(
    pool: &Pool,
    id: Uuid,
    device: &str,
    status: &str,
    body: Option<&serde_json::Value>,
) -> Result<Result<(), Refusal>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(ANSWER).await?;
    if client
        .query_opt(&stmt, &[&id, &device, &status, &body])
        .await?
        .is_some()
    {
        return Ok(Ok(()));
    }
    let why = client.prepare_cached(ANSWER_REFUSAL).await?;
    Ok(match client.query_opt(&why, &[&id]).await? {
        Some(r) if r.get::<_, String>("external_id") != device => Err(Refusal::NotItsCommand),
        // The same answer again (redelivered, or read by another replica
        // first): already recorded.
        Some(r) if r.get::<_, String>("status") == status => Ok(()),
        _ => Err(Refusal::Late),
    })
}

/// Ends commands past their deadline; returns how many.
pub async fn sweep(pool: &Pool) -> Result<u64, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(SWEEP).await?;
    Ok(client.execute(&stmt, &[]).await?)
}

fn state(device: Uuid, row: Option<&Row>) -> v1::DeviceState {
    let Some(row) = row else {
        return v1::DeviceState {
            device_id: device.to_string(),
            desired_json: "{}".into(),
            ..Default::default()
        };
    };
    let version = |c: &str| u64::try_from(row.get::<_, i64>(c)).unwrap_or(0);
    v1::DeviceState {
        device_id: device.to_string(),
        desired_json: row.get::<_, serde_json::Value>("desired").to_string(),
        desired_version: version("desired_version"),
        desired_at: ts(row, "desired_at"),
        reported_json: row
            .get::<_, Option<serde_json::Value>>("reported")
            .map(|v| v.to_string())
            .unwrap_or_default(),
        reported_at: ts(row, "reported_at"),
        published_version: version("published_version"),
    }
}

/// Sets the desired state if `expected` is the current version; `None`
/// when it is not.
pub async fn set_desired(
    pool: &Pool,
    device: Uuid,
    desired: &serde_json::Value,
    expected: i64,
) -> Result<Option<v1::DeviceState>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(SET_DESIRED).await?;
    let row = client
        .query_opt(&stmt, &[&device, desired, &expected])
        .await?;
    Ok(row.map(|r| state(device, Some(&r))))
}

pub async fn get_state(pool: &Pool, device: Uuid) -> Result<v1::DeviceState, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(SELECT_STATE).await?;
    let row = client.query_opt(&stmt, &[&device]).await?;
    Ok(state(device, row.as_ref()))
}

/// A desired state to publish.
pub struct Desired {
    pub device: Uuid,
    pub device_id: String,
    pub desired: serde_json::Value,
    pub version: i64,
}

pub async fn unpublished_states(pool: &Pool, limit: i64) -> Result<Vec<Desired>, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(UNPUBLISHED_STATE).await?;
    Ok(client
        .query(&stmt, &[&limit])
        .await?
        .iter()
        .map(|r| Desired {
            device: r.get("device_id"),
            device_id: r.get("external_id"),
            desired: r.get("desired"),
            version: r.get("desired_version"),
        })
        .collect())
}

pub async fn mark_state_published(
    pool: &Pool,
    device: Uuid,
    version: i64,
) -> Result<(), RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(MARK_STATE_PUBLISHED).await?;
    client.execute(&stmt, &[&device, &version]).await?;
    Ok(())
}

/// Stores `device`'s (external id) reported state; false when no such
/// device.
pub async fn set_reported(
    pool: &Pool,
    device: &str,
    reported: &serde_json::Value,
) -> Result<bool, RegistryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(SET_REPORTED).await?;
    Ok(client
        .query_opt(&stmt, &[&device, reported])
        .await?
        .is_some())
}
