//! The gRPC alerts API: list with filters and paging, acknowledge, resolve.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use iot_proto::TextCode;
use iot_proto::codes::{either, given};
use iot_proto::v1::{self, alerts_server::Alerts};
use rust_decimal::Decimal;
use tokio_postgres::types::ToSql;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::config::Limits;
use crate::error::AlertError;
use crate::events::{self, COLUMNS};
use crate::rules;

/// The state filter as SQL over one alert row.
const STATE: &str = "CASE WHEN resolved_at IS NOT NULL THEN 'resolved'
            WHEN acknowledged THEN 'acknowledged' ELSE 'open' END";

#[derive(Clone)]
pub struct AlertsService {
    pool: Pool,
    limits: Limits,
    /// Ends open alert streams when the service stops.
    shutdown: iot_runtime::CancellationToken,
}

impl AlertsService {
    pub fn new(pool: Pool, limits: Limits, shutdown: iot_runtime::CancellationToken) -> Self {
        Self {
            pool,
            limits,
            shutdown,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, AlertError> {
        Ok(self.pool.get().await?)
    }

    /// Runs `sql` (an update of alert `id` that returns it only when it
    /// changed) with its `kind` event; an alert already in that state is
    /// returned as it is; NotFound when there is none.
    async fn act(
        &self,
        kind: &str,
        sql: &str,
        id: Uuid,
        owner: Option<Uuid>,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<v1::Alert, AlertError> {
        let changed = events::change(&self.pool, kind, sql, params).await?;
        if let Some(a) = changed.into_iter().next() {
            return Ok(a);
        }
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM device_alerts
                     WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)"
                ),
                &[&id, &owner],
            )
            .await?
            .ok_or_else(|| AlertError::NotFound(format!("alert {id}")))?;
        Ok(alert_from_row(&row))
    }
}

/// A rule write's failure: a taken name, or the database.
fn rule_error(e: tokio_postgres::Error, name: &str) -> AlertError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        AlertError::RuleExists(name.to_owned())
    } else {
        e.into()
    }
}

/// What an owner's quota counts: its rows of one table.
#[derive(Clone, Copy)]
enum Quota {
    Rules,
    Webhooks,
}

impl Quota {
    /// The setting under `limits`, the table, and the first key of the
    /// advisory locks that serialise one owner's creations (the second is
    /// a hash of the owner).
    fn parts(self) -> (&'static str, &'static str, i32) {
        match self {
            Quota::Rules => ("rules_per_owner", "alert_rules", 0x0107_a001),
            Quota::Webhooks => ("webhooks_per_owner", "alert_webhooks", 0x0107_a002),
        }
    }
}

/// Refuses one more row of `quota` for `owner` (None: platform-wide
/// rules, counted as one owner's) when it has `limit` already. Takes the
/// owner's advisory lock until `tx` ends, so that concurrent creations
/// for one owner count each other: the count and the insert after it are
/// one step for that owner.
async fn check_quota(
    tx: &deadpool_postgres::Transaction<'_>,
    quota: Quota,
    owner: Option<Uuid>,
    limit: u32,
) -> Result<(), AlertError> {
    let (name, table, lock) = quota.parts();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE($2::uuid, '00000000-0000-0000-0000-000000000000')::text))",
        &[&lock, &owner],
    )
    .await?;
    // Counting stops at the limit.
    let n: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {table}
                 WHERE owner_id IS NOT DISTINCT FROM $1 LIMIT $2) o"
            ),
            &[&owner, &i64::from(limit)],
        )
        .await?
        .get(0);
    if n >= i64::from(limit) {
        return Err(AlertError::QuotaExceeded { quota: name, limit });
    }
    Ok(())
}

impl AlertsService {
    /// Deletes row `id` of `table` (alert_rules or alert_webhooks) if it is
    /// in `scope`; NOT_FOUND otherwise.
    async fn delete_owned(
        &self,
        table: &str,
        what: &str,
        id: &str,
        scope: Option<Uuid>,
    ) -> Result<(), AlertError> {
        let mut p = Vec::new();
        let uuid = parse_id("id", id, &mut p);
        invalid(p)?;
        let client = self.client().await?;
        let n = client
            .execute(
                &format!(
                    "DELETE FROM {table} WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)"
                ),
                &[&uuid, &scope],
            )
            .await?;
        if n == 0 {
            return Err(AlertError::NotFound(format!("{what} {id}")));
        }
        Ok(())
    }
}

/// An alert from a row of `events::COLUMNS`.
pub fn alert_from_row(r: &tokio_postgres::Row) -> v1::Alert {
    let id: Uuid = r.get(0);
    let device: Uuid = r.get(1);
    let value: Option<Decimal> = r.get(4);
    let threshold: Option<Decimal> = r.get(5);
    let ts = |i: usize| {
        r.get::<_, Option<DateTime<Utc>>>(i)
            .map(iot_proto::timestamp)
    };
    let acknowledged: bool = r.get(6);
    let state = if ts(12).is_some() {
        v1::AlertState::Resolved
    } else if acknowledged {
        v1::AlertState::Acknowledged
    } else {
        v1::AlertState::Open
    };
    let severity: String = r.get(3);
    v1::Alert {
        id: id.to_string(),
        device_uuid: device.to_string(),
        alert_type: r.get(2),
        severity_code: v1::Severity::code_of_text(&severity),
        severity,
        value: value.map(|v| v.normalize().to_string()),
        threshold: threshold.map(|v| v.normalize().to_string()),
        acknowledged,
        created_at: ts(7),
        sensor_name: r.get(8),
        message: r.get(9),
        last_seen_at: ts(10),
        occurrences: u64::try_from(r.get::<_, i64>(11)).unwrap_or(0),
        resolved_at: ts(12),
        acknowledged_by: r.get::<_, Option<Uuid>>(13).map(|u| u.to_string()),
        acknowledged_at: ts(14),
        state: state.as_text().into(),
        state_code: state.into(),
        owner_id: r.get::<_, Uuid>(15).to_string(),
        rule_id: r
            .get::<_, Option<Uuid>>(16)
            .map(|u| u.to_string())
            .unwrap_or_default(),
    }
}

/// A new webhook secret: 256 random bits (the thread's CSPRNG, seeded by
/// the OS), 64 lower-case hex digits.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A webhook's receiver must be an http(s) URL (of at most 2000 bytes).
fn check_url(url: &str, p: &mut Vec<String>) {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2000
        && url.parse::<reqwest::Url>().is_ok();
    if !ok {
        p.push(format!("url: {url:?} is not an http(s) URL"));
    }
}

/// A webhook's minimum severity, given as text and/or enum (neither: info).
fn min_severity(text: &str, code: i32, p: &mut Vec<String>) -> v1::Severity {
    either(
        p,
        ("min_severity", given(text)),
        ("min_severity_code", Some(code)),
    )
    .unwrap_or(v1::Severity::Info)
}

fn parse_id(field: &str, s: &str, p: &mut Vec<String>) -> Option<Uuid> {
    Uuid::parse_str(s)
        .map_err(|_| p.push(format!("{field}: {s:?} is not a UUID")))
        .ok()
}

fn invalid(p: Vec<String>) -> Result<(), AlertError> {
    if p.is_empty() {
        Ok(())
    } else {
        Err(AlertError::Invalid(p))
    }
}

/// The filters of a listing as SQL over `device_alerts`, parameters $1..$9
/// in [`Filter::params`] order.
fn where_sql() -> String {
    format!(
        "($1::uuid IS NULL OR device_id = $1)
   AND (NOT $2 OR NOT acknowledged)
   AND (NOT $3 OR resolved_at IS NULL)
   AND ($4::text IS NULL OR severity = $4)
   AND ($5::text IS NULL OR {STATE} = $5)
   AND ($6::timestamptz IS NULL OR created_at >= $6)
   AND ($7::timestamptz IS NULL OR created_at < $7)
   AND ($8::uuid IS NULL OR owner_id = $8)
   AND ($9::uuid[] IS NULL OR device_id = ANY($9))"
    )
}

/// A listing's filters, checked.
struct Filter {
    device: Option<Uuid>,
    only_unacknowledged: bool,
    only_open: bool,
    severity: Option<String>,
    state: Option<String>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    owner: Option<Uuid>,
    devices: Option<Vec<Uuid>>,
    limit: u32,
    after: Option<(DateTime<Utc>, Uuid)>,
}

impl Filter {
    /// The request's filters for a caller scoped to `owner` (None: all);
    /// INVALID_ARGUMENT naming every bad field.
    fn parse(req: v1::ListAlertsRequest, owner: Option<Uuid>) -> Result<Self, AlertError> {
        let mut p = Vec::new();
        let device = req
            .device_uuid
            .as_deref()
            .and_then(|s| parse_id("device_uuid", s, &mut p));
        if req.device_uuids.len() > 1000 {
            p.push(format!(
                "device_uuids: {} is more than 1000",
                req.device_uuids.len()
            ));
        }
        let devices = (!req.device_uuids.is_empty()).then(|| {
            req.device_uuids
                .iter()
                .filter_map(|s| parse_id("device_uuids", s, &mut p))
                .collect()
        });
        let limit = match req.limit {
            0 => 100,
            n if n > 1000 => {
                p.push(format!("limit: {n} is more than 1000"));
                n
            }
            n => n,
        };
        let severity: Option<v1::Severity> = either(
            &mut p,
            ("severity", req.severity.as_deref()),
            ("severity_code", req.severity_code),
        );
        let state: Option<v1::AlertState> = either(
            &mut p,
            ("state", req.state.as_deref()),
            ("state_code", req.state_code),
        );
        let time =
            |t: &Option<iot_proto::Timestamp>| t.as_ref().and_then(iot_proto::from_timestamp);
        let (start, end) = (time(&req.start), time(&req.end));
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            p.push("end: must be after start".into());
        }
        let after = if req.cursor.is_empty() {
            None
        } else {
            let c = iot_proto::parse_keyset_cursor(&req.cursor);
            if c.is_none() {
                p.push("cursor: is not a cursor this API returned".into());
            }
            c
        };
        invalid(p)?;
        Ok(Self {
            device,
            only_unacknowledged: req.only_unacknowledged,
            only_open: req.only_open,
            severity: severity.map(|s| s.as_text().to_owned()),
            state: state.map(|s| s.as_text().to_owned()),
            start,
            end,
            owner,
            devices,
            limit,
            after,
        })
    }

    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![
            &self.device,
            &self.only_unacknowledged,
            &self.only_open,
            &self.severity,
            &self.state,
            &self.start,
            &self.end,
            &self.owner,
            &self.devices,
        ]
    }
}

#[tonic::async_trait]
impl Alerts for AlertsService {
    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let owner = iot_proto::scope_of(&request)?;
        let f = Filter::parse(request.into_inner(), owner)?;
        let sql = format!(
            "SELECT {COLUMNS} FROM device_alerts WHERE {}
               AND ($10::timestamptz IS NULL OR (created_at, id) < ($10, $11))
             ORDER BY created_at DESC, id DESC
             LIMIT $12",
            where_sql()
        );
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(AlertError::from)?;
        let limit = i64::from(f.limit);
        let mut params = f.params();
        let (after_t, after_id) = (f.after.map(|a| a.0), f.after.map(|a| a.1));
        params.push(&after_t);
        params.push(&after_id);
        params.push(&limit);
        let rows = client
            .query(&stmt, &params)
            .await
            .map_err(AlertError::from)?;
        let alerts: Vec<v1::Alert> = rows.iter().map(alert_from_row).collect();
        let next_cursor = match alerts.last() {
            Some(a) if alerts.len() as i64 == limit => {
                iot_proto::keyset_cursor(a.created_at.as_ref(), &a.id)
            }
            _ => String::new(),
        };
        Ok(Response::new(v1::ListAlertsResponse {
            alerts,
            next_cursor,
        }))
    }

    async fn count_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::CountAlertsResponse>, Status> {
        let owner = iot_proto::scope_of(&request)?;
        let f = Filter::parse(request.into_inner(), owner)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT count(*) FROM device_alerts WHERE {}",
                where_sql()
            ))
            .await
            .map_err(AlertError::from)?;
        let n: i64 = client
            .query_one(&stmt, &f.params())
            .await
            .map_err(AlertError::from)?
            .get(0);
        Ok(Response::new(v1::CountAlertsResponse {
            count: u64::try_from(n).unwrap_or(0),
        }))
    }

    type SubscribeAlertsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::AlertEvent, Status>> + Send>>;

    async fn subscribe_alerts(
        &self,
        request: Request<v1::SubscribeAlertsRequest>,
    ) -> Result<Response<Self::SubscribeAlertsStream>, Status> {
        let owner = iot_proto::scope_of(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let device = req
            .device_uuid
            .as_deref()
            .and_then(|s| parse_id("device_uuid", s, &mut p));
        invalid(p)?;
        let from = match i64::try_from(req.resume_after).unwrap_or(i64::MAX) {
            0 => events::newest(&self.pool).await?,
            n => n,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        // Where the stream starts, so a subscriber can resume from it.
        let _ = tx
            .send(Ok(v1::AlertEvent {
                kind: "sync".into(),
                alert: None,
                resume_after: u64::try_from(from).unwrap_or(0),
            }))
            .await;
        tokio::spawn(events::subscribe(
            self.pool.clone(),
            from,
            device,
            owner,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn acknowledge_alert(
        &self,
        request: Request<v1::AlertActionRequest>,
    ) -> Result<Response<v1::Alert>, Status> {
        let owner = iot_proto::scope_of(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let id = parse_id("id", &req.id, &mut p);
        let by = parse_id("by", &req.by, &mut p);
        invalid(p)?;
        let sql = format!(
            "UPDATE device_alerts SET acknowledged = TRUE, acknowledged_by = $2, acknowledged_at = now()
             WHERE id = $1 AND NOT acknowledged AND ($3::uuid IS NULL OR owner_id = $3)
             RETURNING {COLUMNS}"
        );
        let id = id.unwrap_or_default();
        let a = self
            .act("acknowledged", &sql, id, owner, &[&id, &by, &owner])
            .await?;
        tracing::info!(alert = %a.id, by = ?a.acknowledged_by, "alert acknowledged");
        Ok(Response::new(a))
    }

    async fn resolve_alert(
        &self,
        request: Request<v1::AlertActionRequest>,
    ) -> Result<Response<v1::Alert>, Status> {
        let owner = iot_proto::scope_of(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let id = parse_id("id", &req.id, &mut p);
        let by = if req.by.is_empty() {
            None
        } else {
            parse_id("by", &req.by, &mut p)
        };
        invalid(p)?;
        let sql = format!(
            "UPDATE device_alerts SET resolved_at = now()
             WHERE id = $1 AND resolved_at IS NULL AND ($2::uuid IS NULL OR owner_id = $2)
             RETURNING {COLUMNS}"
        );
        let id = id.unwrap_or_default();
        let a = self
            .act("resolved", &sql, id, owner, &[&id, &owner])
            .await?;
        tracing::info!(alert = %a.id, by = ?by, "alert resolved by hand");
        Ok(Response::new(a))
    }

    async fn create_rule(&self, request: Request<v1::Rule>) -> Result<Response<v1::Rule>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        Ok(Response::new(
            self.insert_rule(scope, request.into_inner()).await?,
        ))
    }

    async fn enable_rule_templates(
        &self,
        request: Request<v1::EnableRuleTemplatesRequest>,
    ) -> Result<Response<v1::ListRulesResponse>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        let names = request.into_inner().names;
        let mut wanted = Vec::new();
        let mut p = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match rules::TEMPLATES.iter().find(|t| t.name == n) {
                Some(t) => wanted.push(t),
                None => p.push(format!(
                    "names[{i}]: {n:?} is not a template (high_temp, low_battery, device_offline)"
                )),
            }
        }
        if !p.is_empty() {
            return Err(AlertError::Invalid(p).into());
        }
        if names.is_empty() {
            wanted = rules::TEMPLATES.iter().collect();
        }
        let mut out = Vec::new();
        for t in wanted {
            // Built in: nothing to create.
            if t.condition.is_empty() {
                continue;
            }
            match self.insert_rule(scope, t.rule()).await {
                Ok(r) => out.push(r),
                Err(AlertError::RuleExists(_)) => {
                    let client = self.client().await?;
                    let row = client
                        .query_one(
                            &format!(
                                "SELECT {} FROM alert_rules
                                 WHERE owner_id IS NOT DISTINCT FROM $1 AND name = $2",
                                rules::COLUMNS
                            ),
                            &[&scope, &t.name],
                        )
                        .await
                        .map_err(AlertError::from)?;
                    out.push(rules::rule_from_row(&row));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Response::new(v1::ListRulesResponse { rules: out }))
    }

    async fn list_rules(
        &self,
        request: Request<v1::ListRulesRequest>,
    ) -> Result<Response<v1::ListRulesResponse>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {} FROM alert_rules
                     WHERE $1::uuid IS NULL OR owner_id = $1 OR owner_id IS NULL
                     ORDER BY created_at, id",
                    rules::COLUMNS
                ),
                &[&scope],
            )
            .await
            .map_err(AlertError::from)?;
        Ok(Response::new(v1::ListRulesResponse {
            rules: rows.iter().map(rules::rule_from_row).collect(),
        }))
    }

    async fn update_rule(&self, request: Request<v1::Rule>) -> Result<Response<v1::Rule>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        let r = request.into_inner();
        let mut p = Vec::new();
        let id = parse_id("id", &r.id, &mut p);
        invalid(p)?;
        let checked = rules::check(&r, scope)?;
        let fields = rules::Fields::of(&r, &checked);
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE alert_rules SET name = $3, condition = $4, clear_condition = $5,
                            severity = $6, message = $7, for_secs = $8, device_type = $9,
                            enabled = $10, updated_at = now()
                     WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)
                     RETURNING {}",
                    rules::COLUMNS
                ),
                &[&[&id as &(dyn ToSql + Sync), &scope], &fields.params()[..]].concat(),
            )
            .await
            .map_err(|e| rule_error(e, &r.name))?
            .ok_or_else(|| AlertError::NotFound(format!("rule {}", r.id)))?;
        Ok(Response::new(rules::rule_from_row(&row)))
    }

    async fn delete_rule(
        &self,
        request: Request<v1::DeleteRuleRequest>,
    ) -> Result<Response<v1::DeleteRuleResponse>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        let id = request.into_inner().id;
        let mut p = Vec::new();
        let rule = parse_id("id", &id, &mut p);
        invalid(p)?;
        // In one transaction: the rule is locked first, so a reading
        // raising its alert now either finished (and its alert is resolved
        // here) or waits and then raises nothing (the rule is gone); its
        // open alerts are resolved with their events (no rule is left to
        // clear them); then it goes.
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(AlertError::from)?;
        let found = tx
            .query_opt(
                "SELECT 1 FROM alert_rules WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2) FOR UPDATE",
                &[&rule, &scope],
            )
            .await
            .map_err(AlertError::from)?;
        if found.is_none() {
            return Err(AlertError::NotFound(format!("rule {id}")).into());
        }
        let sql = format!(
            "UPDATE device_alerts SET resolved_at = now()
             WHERE rule_id = $1 AND resolved_at IS NULL
             RETURNING {COLUMNS}"
        );
        events::change_in(&tx, "resolved", &sql, &[&rule]).await?;
        tx.execute("DELETE FROM alert_rules WHERE id = $1", &[&rule])
            .await
            .map_err(AlertError::from)?;
        tx.commit().await.map_err(AlertError::from)?;
        Ok(Response::new(v1::DeleteRuleResponse {}))
    }

    async fn create_webhook(
        &self,
        request: Request<v1::Webhook>,
    ) -> Result<Response<v1::Webhook>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        let w = request.into_inner();
        let mut p = Vec::new();
        let owner = match (scope, w.owner_id.as_str()) {
            (Some(s), "") => Some(s),
            (Some(s), o) if o == s.to_string() => Some(s),
            (Some(_), _) => {
                p.push("owner_id: an owner's webhooks belong to that owner".to_owned());
                None
            }
            (None, "") => {
                p.push("owner_id: the admin scope must name the owner".to_owned());
                None
            }
            (None, o) => parse_id("owner_id", o, &mut p),
        };
        check_url(&w.url, &mut p);
        let min = min_severity(&w.min_severity, w.min_severity_code, &mut p);
        if w.secret.len() > 200 {
            p.push("secret: at most 200 characters".into());
        }
        invalid(p)?;
        let secret = if w.secret.is_empty() {
            new_secret()
        } else {
            w.secret
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(AlertError::from)?;
        check_quota(&tx, Quota::Webhooks, owner, self.limits.webhooks_per_owner).await?;
        let row = tx
            .query_one(
                "INSERT INTO alert_webhooks (owner_id, url, secret, min_severity)
                 VALUES ($1, $2, $3, $4) RETURNING id, created_at",
                &[&owner, &w.url, &secret, &min.as_text()],
            )
            .await
            .map_err(AlertError::from)?;
        tx.commit().await.map_err(AlertError::from)?;
        let id: Uuid = row.get(0);
        tracing::info!(webhook = %id, url = %w.url, "webhook created");
        Ok(Response::new(v1::Webhook {
            id: id.to_string(),
            owner_id: owner.map(|o| o.to_string()).unwrap_or_default(),
            url: w.url,
            secret,
            min_severity: min.as_text().to_owned(),
            min_severity_code: min.into(),
            created_at: Some(iot_proto::timestamp(row.get(1))),
            ..Default::default()
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<v1::ListWebhooksRequest>,
    ) -> Result<Response<v1::ListWebhooksResponse>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        Ok(Response::new(v1::ListWebhooksResponse {
            webhooks: self.webhooks(scope, None).await?,
        }))
    }

    async fn update_webhook(
        &self,
        request: Request<v1::UpdateWebhookRequest>,
    ) -> Result<Response<v1::Webhook>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        let w = request.into_inner();
        let mut p = Vec::new();
        let id = parse_id("id", &w.id, &mut p);
        check_url(&w.url, &mut p);
        let min = min_severity(&w.min_severity, w.min_severity_code, &mut p);
        invalid(p)?;
        let secret = w.rotate_secret.then(new_secret);
        let client = self.client().await?;
        // Deliveries read the URL and secret when they are sent, so the
        // ones still pending follow the change.
        let n = client
            .execute(
                "UPDATE alert_webhooks SET url = $3, min_severity = $4, secret = COALESCE($5, secret)
                 WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)",
                &[&id, &scope, &w.url, &min.as_text(), &secret],
            )
            .await
            .map_err(AlertError::from)?;
        let not_found = || AlertError::NotFound(format!("webhook {}", w.id));
        if n == 0 {
            return Err(not_found().into());
        }
        let mut hook = self
            .webhooks(scope, id)
            .await?
            .pop()
            .ok_or_else(not_found)?;
        tracing::info!(webhook = %hook.id, url = %hook.url, rotated = secret.is_some(), "webhook updated");
        hook.secret = secret.unwrap_or_default();
        Ok(Response::new(hook))
    }

    async fn delete_webhook(
        &self,
        request: Request<v1::DeleteWebhookRequest>,
    ) -> Result<Response<v1::DeleteWebhookResponse>, Status> {
        let scope = iot_proto::scope_of(&request)?;
        self.delete_owned("alert_webhooks", "webhook", &request.into_inner().id, scope)
            .await?;
        Ok(Response::new(v1::DeleteWebhookResponse {}))
    }
}

impl AlertsService {
    /// The webhooks in `scope` (None: all), or only webhook `id`, with
    /// their delivery counts; never their secrets.
    async fn webhooks(
        &self,
        scope: Option<Uuid>,
        id: Option<Uuid>,
    ) -> Result<Vec<v1::Webhook>, AlertError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT w.id, w.owner_id, w.url, w.min_severity, w.created_at,
                        count(d.id) FILTER (WHERE d.delivered_at IS NULL AND d.failed_at IS NULL),
                        count(d.delivered_at), count(d.failed_at),
                        (SELECT last_error FROM webhook_deliveries e
                          WHERE e.webhook_id = w.id AND e.last_error IS NOT NULL
                          ORDER BY e.id DESC LIMIT 1)
                 FROM alert_webhooks w LEFT JOIN webhook_deliveries d ON d.webhook_id = w.id
                 WHERE ($1::uuid IS NULL OR w.owner_id = $1) AND ($2::uuid IS NULL OR w.id = $2)
                 GROUP BY w.id ORDER BY w.created_at, w.id",
                &[&scope, &id],
            )
            .await?;
        let n = |r: &tokio_postgres::Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|r| v1::Webhook {
                id: r.get::<_, Uuid>(0).to_string(),
                owner_id: r.get::<_, Uuid>(1).to_string(),
                url: r.get(2),
                secret: String::new(),
                min_severity_code: v1::Severity::code_of_text(r.get(3)),
                min_severity: r.get(3),
                created_at: Some(iot_proto::timestamp(r.get(4))),
                pending: n(r, 5),
                delivered: n(r, 6),
                failed: n(r, 7),
                last_error: r.get(8),
            })
            .collect())
    }

    /// Creates rule `r` for `scope` (checked, within its owner's quota).
    async fn insert_rule(&self, scope: Option<Uuid>, r: v1::Rule) -> Result<v1::Rule, AlertError> {
        let checked = rules::check(&r, scope)?;
        let owner = checked.owner;
        let fields = rules::Fields::of(&r, &checked);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(AlertError::from)?;
        check_quota(&tx, Quota::Rules, owner, self.limits.rules_per_owner).await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO alert_rules (owner_id, name, condition, clear_condition, severity,
                                              message, for_secs, device_type, enabled)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     RETURNING {}",
                    rules::COLUMNS
                ),
                &[&[&owner as &(dyn ToSql + Sync)], &fields.params()[..]].concat(),
            )
            .await
            .map_err(|e| rule_error(e, &r.name))?;
        tx.commit().await.map_err(AlertError::from)?;
        let rule = rules::rule_from_row(&row);
        tracing::info!(rule = %rule.id, name = %rule.name, "alert rule created");
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_256_random_bits_in_hex() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        for s in [&a, &b] {
            assert_eq!(s.len(), 64, "{s}");
            assert!(
                s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{s}"
            );
        }
    }
}
