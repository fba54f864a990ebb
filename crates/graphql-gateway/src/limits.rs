//! What one caller's operation may cost, beyond the depth and complexity
//! limits async-graphql keeps: how many root fields and aliases one
//! operation may carry, what a telemetry field costs (it grows with the
//! buckets it returns and the raw days it scans), and how many
//! subscriptions one caller may hold open at once, over all its
//! connections. Each refusal carries its own `extensions.code`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextSubscribe, NextValidation,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use iot_domain::bucket::Width;

use crate::auth::Principal;
use crate::http::RateLimiter;

/// More root fields in one operation than `limits.max_root_fields`.
pub const TOO_MANY_ROOT_FIELDS: &str = "TOO_MANY_ROOT_FIELDS";
/// More aliased fields in one operation than `limits.max_aliases`.
pub const TOO_MANY_ALIASES: &str = "TOO_MANY_ALIASES";
/// The caller already holds `limits.max_subscriptions` subscriptions.
pub const TOO_MANY_SUBSCRIPTIONS: &str = "TOO_MANY_SUBSCRIPTIONS";

fn refusal(code: &'static str, message: String) -> ServerError {
    crate::codes::with_code(ServerError::new(message, None), code)
}

/// Refuses an operation with more root fields or aliases than allowed
/// (fragments counted where they are spread), before it is validated.
pub struct OperationShape {
    pub max_root_fields: usize,
    pub max_aliases: usize,
}

impl ExtensionFactory for OperationShape {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationShape {
            max_root_fields: self.max_root_fields,
            max_aliases: self.max_aliases,
        })
    }
}

/// Root fields and aliased fields of each operation of `doc`.
fn shape(doc: &ExecutableDocument) -> Vec<(usize, usize)> {
    fn walk(
        doc: &ExecutableDocument,
        set: &SelectionSet,
        root: bool,
        seen: &mut HashSet<String>,
        out: &mut (usize, usize),
    ) {
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    out.0 += usize::from(root);
                    out.1 += usize::from(f.node.alias.is_some());
                    walk(doc, &f.node.selection_set.node, false, seen, out);
                }
                Selection::InlineFragment(f) => {
                    walk(doc, &f.node.selection_set.node, root, seen, out);
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    // A fragment spread twice at one level counts once per
                    // operation: validation refuses cycles, not repeats.
                    if seen.insert(format!("{root}:{name}"))
                        && let Some(f) = doc.fragments.get(name)
                    {
                        walk(doc, &f.node.selection_set.node, root, seen, out);
                    }
                }
            }
        }
    }
    doc.operations
        .iter()
        .map(|(_, op)| {
            let mut out = (0, 0);
            walk(
                doc,
                &op.node.selection_set.node,
                true,
                &mut HashSet::new(),
                &mut out,
            );
            out
        })
        .collect()
}

#[async_trait::async_trait]
impl Extension for OperationShape {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        for (roots, aliases) in shape(&doc) {
            if roots > self.max_root_fields {
                return Err(refusal(
                    TOO_MANY_ROOT_FIELDS,
                    format!(
                        "an operation has {roots} root fields, more than {} (limits.max_root_fields)",
                        self.max_root_fields
                    ),
                ));
            }
            if aliases > self.max_aliases {
                return Err(refusal(
                    TOO_MANY_ALIASES,
                    format!(
                        "an operation has {aliases} aliased fields, more than {} (limits.max_aliases)",
                        self.max_aliases
                    ),
                ));
            }
        }
        Ok(doc)
    }
}

/// Charges an operation's cost to its caller's rate limit: besides the one
/// token each request takes at the door, one more per `cost_per_token`
/// complexity points, once the operation is validated and before anything
/// runs. Cheap operations cost nothing more; one that makes the database
/// aggregate a year twenty times takes as many tokens as a second's worth
/// of dashboards, so an owner cannot turn a fair request rate into an
/// unfair load. Refused with RATE_LIMITED and `extensions.retryAfterSecs`.
pub struct CostBudget {
    pub limiter: Arc<RateLimiter>,
    pub cost_per_token: usize,
}

impl ExtensionFactory for CostBudget {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CostBudget {
            limiter: self.limiter.clone(),
            cost_per_token: self.cost_per_token,
        })
    }
}

#[async_trait::async_trait]
impl Extension for CostBudget {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        let tokens =
            u32::try_from(result.complexity / self.cost_per_token.max(1)).unwrap_or(u32::MAX);
        let Some(caller) = ctx.data_opt::<Principal>().map(|p| p.name.clone()) else {
            return Ok(result);
        };
        if let Err(wait) = self.limiter.take(&caller, tokens) {
            let mut e = refusal(
                "RATE_LIMITED",
                format!(
                    "this operation costs {} complexity points, {tokens} requests' worth of the caller's rate limit \
                     (limits.cost_per_token): retry in {:.1} s, or ask for less",
                    result.complexity,
                    wait.as_secs_f64()
                ),
            );
            if let Some(ext) = e.extensions.as_mut() {
                ext.set("retryAfterSecs", wait.as_secs_f64().ceil() as u64);
            }
            return Err(vec![e]);
        }
        Ok(result)
    }
}

/// What a `sensorMetrics` field counts toward `limits.max_complexity`: one
/// per hundred buckets, and [`RAW_DAY_COST`] per day read from raw rows
/// (a width of whole hours is read from the rollups). Arguments that do
/// not parse cost 1: the resolver refuses them.
pub fn metrics_cost(start: &str, end: &str, granularity: &str) -> usize {
    let (Some(days), Ok(width)) = (span_days(start, end), granularity.parse::<Width>()) else {
        return 1;
    };
    let buckets = days * 86_400.0 / width.secs() as f64;
    let raw_days = if width.secs() % 3600 == 0 { 0.0 } else { days };
    1 + (buckets / 100.0) as usize + (raw_days * RAW_DAY_COST as f64) as usize
}

/// What a `sensorReadings` field counts: one per hundred readings asked
/// for, and one per day of raw rows it may scan (newest first, it stops at
/// its limit, so a day costs less than a day of raw metrics).
pub fn readings_cost(start: &str, end: &str, limit: i32) -> usize {
    let days = span_days(start, end).unwrap_or(0.0);
    1 + usize::try_from(limit.max(0)).unwrap_or(0) / 100 + days as usize
}

/// The cost of aggregating a day of one sensor's raw rows.
pub const RAW_DAY_COST: usize = 10;

fn span_days(start: &str, end: &str) -> Option<f64> {
    let t = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let (s, e) = (t(start)?, t(end)?);
    (e > s).then(|| (e - s).num_seconds() as f64 / 86_400.0)
}

/// At most `per_caller` subscriptions of one caller open at once, over all
/// its WebSocket connections; one more is answered with a single
/// TOO_MANY_SUBSCRIPTIONS error and ends.
pub struct SubscriptionCap {
    per_caller: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl SubscriptionCap {
    pub fn new(per_caller: usize) -> Self {
        Self {
            per_caller,
            open: Arc::default(),
        }
    }
}

impl ExtensionFactory for SubscriptionCap {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(SubscriptionCap {
            per_caller: self.per_caller,
            open: self.open.clone(),
        })
    }
}

/// One open subscription; its caller's count drops with it.
struct Open {
    caller: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

impl Extension for SubscriptionCap {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let caller = ctx
            .data_opt::<Principal>()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let held = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let n = open.entry(caller.clone()).or_default();
            if *n >= self.per_caller {
                None
            } else {
                *n += 1;
                Some(Open {
                    caller,
                    open: self.open.clone(),
                })
            }
        };
        let Some(held) = held else {
            let e = refusal(
                TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "this caller holds {} subscriptions, the most at once (limits.max_subscriptions): end one first",
                    self.per_caller
                ),
            );
            return futures::stream::once(async move { Response::from_errors(vec![e]) }).boxed();
        };
        next.run(ctx, stream)
            .map(move |r| {
                let _held = &held;
                r
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_fields_and_aliases_are_counted_through_fragments() {
        let doc = async_graphql::parser::parse_query(
            "query A { a: device(id: \"1\") { id } ...F ... on Query { c: devices { n: name } } }
             fragment F on Query { b: device(id: \"2\") { id } ...F2 }
             fragment F2 on Query { devices { id } }
             query B { devices { id } }",
        )
        .unwrap();
        let mut got = shape(&doc);
        got.sort();
        assert_eq!(got, vec![(1, 0), (4, 4)]);
    }

    #[test]
    fn telemetry_costs_grow_with_buckets_and_raw_days() {
        let year = ("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        assert_eq!(metrics_cost(year.0, year.1, "1h"), 1 + 87);
        assert_eq!(metrics_cost(year.0, year.1, "1d"), 1 + 3);
        let day = ("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z");
        // 5-minute buckets are read from raw rows.
        assert_eq!(metrics_cost(day.0, day.1, "5m"), 1 + 2 + RAW_DAY_COST);
        assert_eq!(metrics_cost(day.0, day.1, "nonsense"), 1);
        assert_eq!(readings_cost(day.0, day.1, 1000), 1 + 10 + 1);
        assert_eq!(readings_cost(year.0, year.1, 1000), 1 + 10 + 365);
        assert_eq!(readings_cost("x", day.1, 100), 2);
    }
}
