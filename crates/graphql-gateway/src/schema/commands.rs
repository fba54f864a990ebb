//! Commands to devices and their desired state: the GraphQL face of
//! device-registry's `DeviceCommandsService` (docs/graphql.md, "Commands
//! and desired state"). The registry scopes every call to the caller's
//! owner; another owner's device or command answers NOT_FOUND.

use async_graphql::{Context, ID, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use iot_proto::v1;

use super::{page, shared, time, who};
use crate::upstream::{Answer as _, REGISTRY, error, status_error};

/// The most commands one page holds.
const MAX_PAGE: u32 = 1000;

fn json(s: &str) -> Option<Json<serde_json::Value>> {
    (!s.is_empty())
        .then(|| serde_json::from_str(s).ok())
        .flatten()
        .map(Json)
}

/// A command sent to a device, and how far it got.
pub struct Command(pub v1::Command);

/// A command sent to a device, and how far it got.
#[Object(rename_fields = "snake_case")]
impl Command {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The device's platform id.
    async fn device_id(&self) -> ID {
        ID(self.0.device_id.clone())
    }
    /// The device's own id (its MQTT username).
    async fn device_external_id(&self) -> &str {
        &self.0.device_external_id
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn payload(&self) -> Option<Json<serde_json::Value>> {
        json(&self.0.payload_json)
    }
    /// queued, sent (the broker holds it), delivered (the device
    /// acknowledged it), succeeded, failed (the device's answer),
    /// timed_out (delivered, unanswered at the deadline) or expired (not
    /// delivered by the deadline).
    async fn status(&self) -> &str {
        &self.0.status_code
    }
    /// The device's answer body (succeeded or failed).
    async fn result(&self) -> Option<Json<serde_json::Value>> {
        json(&self.0.result_json)
    }
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.created_at.as_ref())
    }
    async fn deadline(&self) -> Option<DateTime<Utc>> {
        time(self.0.deadline.as_ref())
    }
    async fn sent_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.sent_at.as_ref())
    }
    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.delivered_at.as_ref())
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.finished_at.as_ref())
    }
}

/// A page of a device's commands, newest first.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct CommandPage {
    pub commands: Vec<Command>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// What a device should be (desired, set by its owner) and what it says it
/// is (reported).
pub struct DeviceState(pub v1::DeviceState);

/// What a device should be (desired, set by its owner) and what it says it
/// is (reported).
#[Object(rename_fields = "snake_case")]
impl DeviceState {
    async fn device_id(&self) -> ID {
        ID(self.0.device_id.clone())
    }
    async fn desired(&self) -> Option<Json<serde_json::Value>> {
        json(&self.0.desired_json)
    }
    /// Pass it as `expectedVersion` to change the desired state; 0 before
    /// one was set.
    async fn desired_version(&self) -> u64 {
        self.0.desired_version
    }
    async fn desired_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.desired_at.as_ref())
    }
    /// The desired version the broker holds for the device (retained);
    /// below `desired_version` while it is being published.
    async fn published_version(&self) -> u64 {
        self.0.published_version
    }
    /// As the device last reported it; null before it has.
    async fn reported(&self) -> Option<Json<serde_json::Value>> {
        json(&self.0.reported_json)
    }
    async fn reported_at(&self) -> Option<DateTime<Utc>> {
        time(self.0.reported_at.as_ref())
    }
    /// The desired keys whose reported value differs (or is missing):
    /// `{"key": {"desired": .., "reported": ..}}`; empty when the device
    /// reports what is desired.
    async fn difference(&self) -> Json<serde_json::Value> {
        let desired = json(&self.0.desired_json).map(|j| j.0);
        let reported = json(&self.0.reported_json).map(|j| j.0);
        Json(difference(desired.as_ref(), reported.as_ref()))
    }
}

/// The desired keys whose reported value differs.
fn difference(
    desired: Option<&serde_json::Value>,
    reported: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let Some(desired) = desired.and_then(serde_json::Value::as_object) else {
        return out.into();
    };
    let reported = reported.and_then(serde_json::Value::as_object);
    for (k, want) in desired {
        let have = reported.and_then(|r| r.get(k));
        if have != Some(want) {
            out.insert(
                k.clone(),
                serde_json::json!({"desired": want, "reported": have}),
            );
        }
    }
    out.into()
}

pub(super) async fn send_command(
    ctx: &Context<'_>,
    device_id: ID,
    name: String,
    payload: Option<Json<serde_json::Value>>,
    timeout_secs: Option<i32>,
) -> Result<Command> {
    let timeout_secs = match timeout_secs {
        None => 0,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| error("BAD_USER_INPUT", "timeoutSecs: must be positive"))?,
    };
    let c = shared(ctx)
        .up
        .commands(who(ctx)?.scope())
        .send_command(v1::SendCommandRequest {
            device_id: device_id.0,
            name,
            payload_json: payload.map(|p| p.0.to_string()).unwrap_or_default(),
            timeout_secs,
        })
        .await
        .answer(REGISTRY)?;
    Ok(Command(c))
}

pub(super) async fn command(ctx: &Context<'_>, id: ID) -> Result<Option<Command>> {
    let got = shared(ctx)
        .up
        .commands(who(ctx)?.scope())
        .get_command(v1::GetCommandRequest { id: id.0 })
        .await;
    match got {
        Ok(c) => Ok(Some(Command(c.into_inner()))),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(status_error(REGISTRY, &s)),
    }
}

pub(super) async fn commands(
    ctx: &Context<'_>,
    device_id: ID,
    limit: i32,
    cursor: Option<String>,
) -> Result<CommandPage> {
    let limit = page(limit, MAX_PAGE, "limit")?;
    let r = shared(ctx)
        .up
        .commands(who(ctx)?.scope())
        .list_commands(v1::ListCommandsRequest {
            device_id: device_id.0,
            limit,
            cursor: cursor.unwrap_or_default(),
        })
        .await
        .answer(REGISTRY)?;
    Ok(CommandPage {
        commands: r.commands.into_iter().map(Command).collect(),
        next_cursor: (!r.next_cursor.is_empty()).then_some(r.next_cursor),
    })
}

pub(super) async fn device_state(ctx: &Context<'_>, device_id: ID) -> Result<DeviceState> {
    let s = shared(ctx)
        .up
        .commands(who(ctx)?.scope())
        .get_device_state(v1::GetDeviceStateRequest {
            device_id: device_id.0,
        })
        .await
        .answer(REGISTRY)?;
    Ok(DeviceState(s))
}

pub(super) async fn set_desired_state(
    ctx: &Context<'_>,
    device_id: ID,
    desired: Json<serde_json::Value>,
    expected_version: i64,
) -> Result<DeviceState> {
    let expected_version = u64::try_from(expected_version)
        .map_err(|_| error("BAD_USER_INPUT", "expectedVersion: must not be negative"))?;
    let s = shared(ctx)
        .up
        .commands(who(ctx)?.scope())
        .set_desired_state(v1::SetDesiredStateRequest {
            device_id: device_id.0,
            desired_json: desired.0.to_string(),
            expected_version,
        })
        .await
        .answer(REGISTRY)?;
    Ok(DeviceState(s))
}

/// The device's commands as they change, from now on.
pub(super) async fn command_updates(
    ctx: &Context<'_>,
    device_id: ID,
) -> Result<impl Stream<Item = Result<Command>> + use<>> {
    let stream = shared(ctx)
        .up
        .commands(who(ctx)?.scope())
        .watch_commands(v1::WatchCommandsRequest {
            device_id: device_id.0,
        })
        .await
        .answer(REGISTRY)?;
    Ok(stream.map(|item| item.map(Command).map_err(|s| status_error(REGISTRY, &s))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_difference_lists_desired_keys_not_reported_as_desired() {
        let desired = json!({"interval": 10, "max": 80, "mode": "eco"});
        let reported = json!({"interval": 10, "max": 70, "extra": 1});
        assert_eq!(
            difference(Some(&desired), Some(&reported)),
            json!({
                "max": {"desired": 80, "reported": 70},
                "mode": {"desired": "eco", "reported": null},
            })
        );
        assert_eq!(difference(Some(&desired), Some(&desired)), json!({}));
        assert_eq!(
            difference(Some(&json!({"a": 1})), None),
            json!({"a": {"desired": 1, "reported": null}})
        );
        assert_eq!(difference(None, Some(&reported)), json!({}));
    }
}
