//! The Query root: devices, telemetry, alerts, the status summary.

use async_graphql::{Context, ID, Object, Result};
use iot_proto::v1;

use super::ownership::{find_device, of_device};
use super::types::Prefetched;
use super::{
    Alert, AlertRule, AlertState, AlertWebhook, Device, DeviceStatusSummary, MetricList,
    SensorReading, is_not_found, page, parse_time, range, shared, who,
};
use crate::upstream::{ALERTS, Answer as _, REGISTRY, TELEMETRY, status_error};

/// Reads: devices, telemetry, alerts, the status summary.
pub struct QueryRoot;

/// Reads: devices, telemetry, alerts, the status summary.
#[Object(name = "Query")]
impl QueryRoot {
    /// A command by its id; null when the caller has no such command.
    async fn command(&self, ctx: &Context<'_>, id: ID) -> Result<Option<super::Command>> {
        super::commands::command(ctx, id).await
    }

    /// A device's commands, newest first (`nextCursor` continues).
    async fn commands(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        #[graphql(default = 50)] limit: i32,
        cursor: Option<String>,
    ) -> Result<super::CommandPage> {
        super::commands::commands(ctx, device_id, limit, cursor).await
    }

    /// A device's desired and reported state, and how they differ.
    async fn device_state(&self, ctx: &Context<'_>, device_id: ID) -> Result<super::DeviceState> {
        super::commands::device_state(ctx, device_id).await
    }

    /// A device by its platform id (UUID) or its device_id; null when the
    /// caller has no such device.
    async fn device(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Device>> {
        match find_device(ctx, &id).await {
            // Its readings and alerts are fetched at once, as for a page,
            // rather than through the loaders (which wait to batch).
            Ok(d) => {
                let pre = Prefetched::for_page(ctx, std::slice::from_ref(&d)).await?;
                Ok(Some(Device(d, pre)))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The caller's devices, oldest first, filtered; `after` is the
    /// `cursor` of the last device of the previous page.
    #[graphql(complexity = "limit.max(1) as usize * child_complexity")]
    async fn devices(
        &self,
        ctx: &Context<'_>,
        device_type: Option<String>,
        status: Option<String>,
        location: Option<String>,
        #[graphql(default = 100)] limit: i32,
        after: Option<String>,
    ) -> Result<Vec<Device>> {
        let s = shared(ctx);
        let limit = page(limit, s.limits.max_page, "limit")?;
        let got =
            s.up.registry(who(ctx)?.scope())
                .list_devices(v1::ListDevicesRequest {
                    device_type,
                    limit,
                    status,
                    status_code: None,
                    owner_id: None,
                    location,
                    cursor: after.unwrap_or_default(),
                    ids: Vec::new(),
                })
                .await
                .answer(REGISTRY)?;
        let pre = Prefetched::for_page(ctx, &got.devices).await?;
        Ok(got
            .devices
            .into_iter()
            .map(|d| Device(d, pre.clone()))
            .collect())
    }

    /// Raw readings of one sensor in [startTime, endTime) (RFC 3339), newest
    /// first.
    #[graphql(
        complexity = "crate::limits::readings_cost(&start_time, &end_time, limit) + limit.max(1) as usize * child_complexity / 100"
    )]
    async fn sensor_readings(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: String,
        start_time: String,
        end_time: String,
        #[graphql(default = 1000)] limit: i32,
    ) -> Result<Vec<SensorReading>> {
        let s = shared(ctx);
        let scope = who(ctx)?.scope();
        let limit = page(limit, s.limits.max_readings, "limit")?;
        let (start, end) = range(&s.limits, &start_time, &end_time)?;
        let got = of_device(ctx, &device_id, |device_uuid| {
            let req = v1::QueryReadingsRequest {
                device_uuid,
                sensor_name: sensor_name.clone(),
                start: Some(iot_proto::timestamp(start)),
                end: Some(iot_proto::timestamp(end)),
                limit,
                cursor: String::new(),
            };
            let mut telemetry = s.up.telemetry(scope.clone());
            async move { telemetry.query_readings(req).await.answer(TELEMETRY) }
        })
        .await?;
        Ok(got.readings.into_iter().map(SensorReading).collect())
    }

    /// Aggregates per bucket over [startTime, endTime), oldest first, from
    /// the rollups: granularity 1h, 1d, 1w, or any width such as 5m.
    #[graphql(
        complexity = "crate::limits::metrics_cost(&start_time, &end_time, &granularity) + child_complexity"
    )]
    async fn sensor_metrics(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: String,
        start_time: String,
        end_time: String,
        #[graphql(default = "1h")] granularity: String,
    ) -> Result<MetricList> {
        let s = shared(ctx);
        let scope = who(ctx)?.scope();
        let (start, end) = range(&s.limits, &start_time, &end_time)?;
        let request = |device_uuid| v1::QueryMetricsRequest {
            device_uuid,
            sensor_name: sensor_name.clone(),
            start: Some(iot_proto::timestamp(start)),
            end: Some(iot_proto::timestamp(end)),
            granularity: granularity.clone(),
        };
        if let Some((raw, plan)) = MetricList::plan(ctx, &sensor_name) {
            let (plan, scope) = (&plan, &scope);
            let pieces = of_device(ctx, &device_id, |device_uuid| {
                let req = request(device_uuid);
                async move {
                    crate::metrics_json::fetch(&s.up, scope, plan, req)
                        .await
                        .map_err(|e| status_error(TELEMETRY, &e))
                }
            })
            .await?;
            return Ok(MetricList::Rendered(raw.put_pieces(pieces)));
        }
        let got = of_device(ctx, &device_id, |device_uuid| {
            let req = request(device_uuid);
            let mut telemetry = s.up.telemetry(scope.clone());
            async move { telemetry.query_metrics(req).await.answer(TELEMETRY) }
        })
        .await?;
        Ok(MetricList::Decoded {
            sensor: sensor_name,
            metrics: got.metrics,
        })
    }

    /// Unacknowledged, unresolved alerts of the caller's devices, newest
    /// first.
    async fn active_alerts(
        &self,
        ctx: &Context<'_>,
        severity: Option<String>,
        #[graphql(default = 100)] limit: i32,
    ) -> Result<Vec<Alert>> {
        list_alerts(
            ctx,
            v1::ListAlertsRequest {
                only_unacknowledged: true,
                only_open: true,
                severity,
                ..Default::default()
            },
            limit,
        )
        .await
    }

    /// The caller's alerts, newest first, filtered; `after` is the `cursor`
    /// of the last alert of the previous page.
    #[allow(clippy::too_many_arguments)]
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        device_id: Option<ID>,
        severity: Option<String>,
        state: Option<AlertState>,
        start_time: Option<String>,
        end_time: Option<String>,
        #[graphql(default = 100)] limit: i32,
        after: Option<String>,
    ) -> Result<Vec<Alert>> {
        let device_uuid = match device_id {
            Some(id) => Some(find_device(ctx, &id).await?.id),
            None => None,
        };
        let t = |arg: &str, v: Option<String>| {
            v.map(|s| parse_time(arg, &s).map(iot_proto::timestamp))
                .transpose()
        };
        list_alerts(
            ctx,
            v1::ListAlertsRequest {
                device_uuid,
                severity,
                state: state.map(|s| s.as_str().to_owned()),
                start: t("startTime", start_time)?,
                end: t("endTime", end_time)?,
                cursor: after.unwrap_or_default(),
                ..Default::default()
            },
            limit,
        )
        .await
    }

    /// The caller's alert rules and the platform-wide ones.
    async fn alert_rules(&self, ctx: &Context<'_>) -> Result<Vec<AlertRule>> {
        let s = shared(ctx);
        let got =
            s.up.alerts(who(ctx)?.scope())
                .list_rules(v1::ListRulesRequest {})
                .await
                .answer(ALERTS)?;
        Ok(got.rules.into_iter().map(AlertRule).collect())
    }

    /// The caller's alert webhooks, with their delivery counts.
    async fn alert_webhooks(&self, ctx: &Context<'_>) -> Result<Vec<AlertWebhook>> {
        let s = shared(ctx);
        let got =
            s.up.alerts(who(ctx)?.scope())
                .list_webhooks(v1::ListWebhooksRequest {})
                .await
                .answer(ALERTS)?;
        Ok(got.webhooks.into_iter().map(AlertWebhook::from).collect())
    }

    /// Device counts, open critical alerts and ingest rate, for the caller's
    /// devices.
    async fn device_status_summary(&self, ctx: &Context<'_>) -> Result<DeviceStatusSummary> {
        let s = shared(ctx);
        let p = who(ctx)?;
        // Only the services whose figures are asked for: the fleet
        // figures read every series of the scope, a cost the device
        // counts alone do not pay.
        let look = ctx.look_ahead();
        let want_critical = look.field("critical_alerts_count").exists();
        let want_rate = look.field("readings_per_second").exists();
        let (mut registry, mut alerts, mut telemetry) = (
            s.up.registry(p.scope()),
            s.up.alerts(p.scope()),
            s.up.telemetry(p.scope()),
        );
        let (devices, critical, fleet) = futures::try_join!(
            async {
                registry
                    .device_status_summary(v1::DeviceStatusSummaryRequest::default())
                    .await
                    .answer(REGISTRY)
            },
            async {
                if !want_critical {
                    return Ok(v1::CountAlertsResponse::default());
                }
                alerts
                    .count_alerts(v1::ListAlertsRequest {
                        only_open: true,
                        severity: Some("critical".into()),
                        ..Default::default()
                    })
                    .await
                    .answer(ALERTS)
            },
            async {
                if !want_rate {
                    return Ok(v1::FleetStatsResponse::default());
                }
                telemetry
                    .fleet_stats(v1::FleetStatsRequest {
                        owner_id: p.owner.map(|o| o.to_string()),
                    })
                    .await
                    .answer(TELEMETRY)
            },
        )?;
        Ok(DeviceStatusSummary {
            total_devices: devices.total,
            active_devices: devices.active.saturating_sub(devices.offline),
            offline_devices: devices.offline,
            inactive_devices: devices.inactive,
            error_devices: devices.error,
            average_response_time_ms: s.up.times.mean_ms_last_minute(),
            critical_alerts_count: critical.count,
            readings_per_second: fleet.readings_per_second,
        })
    }
}

async fn list_alerts(
    ctx: &Context<'_>,
    mut req: v1::ListAlertsRequest,
    limit: i32,
) -> Result<Vec<Alert>> {
    let s = shared(ctx);
    req.limit = page(limit, s.limits.max_page, "limit")?;
    let got =
        s.up.alerts(who(ctx)?.scope())
            .list_alerts(req)
            .await
            .answer(ALERTS)?;
    Ok(got.alerts.into_iter().map(Alert).collect())
}
