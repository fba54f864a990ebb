//! The public GraphQL schema, in async-graphql.
//!
//! Naming follows the documented example queries (docs/graphql.md): root fields and arguments are
//! camelCase, object fields snake_case. Every resolver acts for the
//! authenticated [`Principal`] and sees only its owner's data: devices are
//! looked up in device-registry with the caller's scope before any reading
//! or alert of theirs is fetched.

mod commands;
mod known;
mod loaders;
mod mutation;
mod ownership;
mod query;
mod subscription;
mod types;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Data, Result, Schema};
use chrono::{DateTime, Utc};

use crate::auth::Principal;
use crate::config::Limits;
use crate::hub::AlertHub;
use crate::upstream::{Upstreams, error};

pub use commands::{Command, CommandPage, DeviceState};
pub use known::KnownDevices;
pub use loaders::{DeviceLoader, LatestLoader, OpenAlertsLoader, SensorLoader};
pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use subscription::SubscriptionRoot;
pub use types::{
    Alert, AlertRule, AlertRuleInput, AlertState, AlertWebhook, Device, DeviceConfig,
    DeviceConfigInput, DeviceStatusSummary, MetricList, MqttCredentials, ReadingInput,
    RecordResult, RejectedReading, SensorInput, SensorMetric, SensorReading,
};

pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What every resolver can reach.
pub struct Shared {
    pub up: Upstreams,
    pub limits: Limits,
    pub hub: AlertHub,
    /// Live device state for `deviceStatus`.
    pub devices: crate::device_hub::DeviceHub,
    /// Live aggregates for `metrics`.
    pub metrics: crate::metrics_hub::MetricsHub,
    pub known: KnownDevices,
}

/// The schema; operations' costs are charged to the callers' buckets in
/// `limiter`.
pub fn build(
    shared: Shared,
    limiter: std::sync::Arc<crate::http::RateLimiter>,
    dev_mode: bool,
) -> ApiSchema {
    let limits = shared.limits.clone();
    let mut b = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(shared)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .extension(crate::codes::ErrorCodes)
        .extension(crate::limits::OperationShape {
            max_root_fields: limits.max_root_fields,
            max_aliases: limits.max_aliases,
        })
        .extension(crate::limits::SubscriptionCap::new(
            limits.max_subscriptions,
        ))
        .extension(crate::limits::CostBudget {
            limiter,
            cost_per_token: limits.cost_per_token,
        })
        .extension(crate::ws::WsRateLimit);
    if !(limits.introspection || dev_mode) {
        b = b.disable_introspection();
    }
    b.finish()
}

/// The schema with no backends, for its SDL.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

/// Runs a loader's batch in the span of the request that started it, so
/// its backend calls carry the request's trace.
fn spawn_traced<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument as _;
    tokio::spawn(f.in_current_span())
}

/// Per-request (or per-connection) data: the caller and its loaders.
pub fn request_data(up: &Upstreams, who: Principal) -> Data {
    let mut data = Data::default();
    let scope = who.scope();
    data.insert(DataLoader::new(
        LatestLoader {
            up: up.clone(),
            scope: scope.clone(),
        },
        spawn_traced,
    ));
    data.insert(DataLoader::new(
        OpenAlertsLoader {
            up: up.clone(),
            scope: scope.clone(),
        },
        spawn_traced,
    ));
    data.insert(DataLoader::new(
        DeviceLoader {
            up: up.clone(),
            scope: scope.clone(),
        },
        spawn_traced,
    ));
    data.insert(DataLoader::new(
        SensorLoader {
            up: up.clone(),
            scope,
        },
        spawn_traced,
    ));
    data.insert(who);
    data
}

fn shared<'a>(ctx: &Context<'a>) -> &'a Shared {
    ctx.data_unchecked::<Shared>()
}

fn who<'a>(ctx: &Context<'a>) -> Result<&'a Principal> {
    ctx.data::<Principal>()
        .map_err(|_| error("UNAUTHENTICATED", "not authenticated"))
}

pub(crate) fn decimal(s: &str) -> f64 {
    s.parse().unwrap_or(f64::NAN)
}

fn opt_decimal(s: Option<&String>) -> Option<f64> {
    s.map(|s| decimal(s))
}

fn time(t: Option<&iot_proto::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(iot_proto::from_timestamp)
}

/// An RFC 3339 argument; BAD_USER_INPUT naming the argument otherwise.
fn parse_time(arg: &str, s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            error(
                "BAD_USER_INPUT",
                format!("{arg}: {s:?} is not an RFC 3339 time ({e})"),
            )
        })
}

/// `[start, end)` of a telemetry query, within the configured longest range.
fn range(limits: &Limits, start: &str, end: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let (s, e) = (parse_time("startTime", start)?, parse_time("endTime", end)?);
    if e <= s {
        return Err(error("BAD_USER_INPUT", "endTime: must be after startTime"));
    }
    if e - s > chrono::TimeDelta::days(i64::from(limits.max_range_days)) {
        return Err(error(
            "BAD_USER_INPUT",
            format!(
                "endTime: the range may span at most {} days",
                limits.max_range_days
            ),
        ));
    }
    Ok((s, e))
}

fn page(limit: i32, max: u32, arg: &str) -> Result<u32> {
    match u32::try_from(limit) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(error(
            "BAD_USER_INPUT",
            format!("{arg}: must be between 1 and {max}, not {limit}"),
        )),
    }
}

fn is_not_found(e: &async_graphql::Error) -> bool {
    e.extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .is_some_and(|c| *c == async_graphql::Value::from("NOT_FOUND"))
}
