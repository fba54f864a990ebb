//! The Subscription root: live streams of alerts, device status and
//! metrics.

use std::collections::HashMap;
use std::time::Duration;

use async_graphql::{Context, ErrorExtensions, ID, Result, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use iot_domain::bucket::{self, Width};
use iot_proto::v1;

use super::ownership::{find_device, get_device};
use super::{Alert, Device, SensorMetric, is_not_found, shared, time, who};
use crate::device_hub::{DeviceEvent, online};
use crate::hub::HubEvent;
use crate::upstream::{Answer as _, TELEMETRY, error};

/// Live streams over WebSocket (graphql-transport-ws or graphql-ws).
pub struct SubscriptionRoot;

/// What a pushed event means to one subscriber.
enum Step<T> {
    Send(T),
    Skip,
    End,
}

/// Live streams over WebSocket (graphql-transport-ws or graphql-ws).
#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// A device's commands as they change (sent, delivered, answered,
    /// timed out, expired), from now on.
    async fn command_updates(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
    ) -> Result<impl Stream<Item = Result<super::Command>> + use<>> {
        super::commands::command_updates(ctx, device_id).await
    }

    /// Every alert change (raised, acknowledged, resolved) of the caller's
    /// devices from now on, whichever alert-engine replica made it. While
    /// alert-engine is unreachable the stream carries an error with code
    /// BACKEND_UNAVAILABLE and stays open: the changes made meanwhile
    /// follow once it is back.
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        device_id: Option<ID>,
        severity: Option<String>,
    ) -> Result<impl Stream<Item = Result<Alert>> + use<>> {
        let owner = who(ctx)?.owner.map(|o| o.to_string());
        let device = match device_id {
            Some(id) => Some(find_device(ctx, &id).await?.id),
            None => None,
        };
        let (rx, down, guard) = shared(ctx).hub.subscribe();
        // Told as an error in the stream, which goes on: alert changes
        // made meanwhile follow once alert-engine is back.
        let interrupted = || {
            error(
                "BACKEND_UNAVAILABLE",
                "alert-engine is unavailable; alert changes follow once it is back",
            )
            .extend_with(|_, e| e.set("service", "alert-engine"))
        };
        let now = futures::stream::iter(down.then(|| Err(interrupted())));
        Ok(now.chain(
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
                let _counted = &guard;
                let keep = match item {
                    Ok(event) => match &*event {
                        HubEvent::Alert(event) => event
                            .alert
                            .clone()
                            .filter(|a| {
                                owner.as_ref().is_none_or(|o| *o == a.owner_id)
                                    && device.as_ref().is_none_or(|d| *d == a.device_uuid)
                                    && severity.as_ref().is_none_or(|s| *s == a.severity)
                            })
                            .map(|a| Ok(Alert(a))),
                        HubEvent::Interrupted => Some(Err(interrupted())),
                    },
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Err(error(
                            "EVENTS_DROPPED",
                            format!("this subscriber fell behind and missed {n} alert changes"),
                        )))
                    }
                };
                futures::future::ready(keep)
            }),
        ))
    }

    /// The device as it changes (status, online, name, location, config),
    /// first as it is now. Pushed, not polled: a change at the registry,
    /// a presence event (connected, disconnected, a lost connection) or
    /// silence past the device's interval reaches the subscriber within
    /// seconds; `lastHeartbeat` is as of the last such change. Offline is
    /// the platform's one definition (docs/alerts.md, "Offline"). The
    /// stream ends when the device is deleted or is no longer the
    /// caller's; while device-registry is unreachable it carries an error
    /// with code BACKEND_UNAVAILABLE and stays open.
    async fn device_status(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
    ) -> Result<impl Stream<Item = Result<Device>> + use<>> {
        let first = find_device(ctx, &device_id).await?;
        let owner = who(ctx)?.owner.map(|o| o.to_string());
        let watch = shared(ctx).devices.watch(&first);
        // What a subscriber sees change; `online` is computed now.
        let key = |d: &v1::Device| {
            (
                d.status.clone(),
                online(d, Utc::now()),
                d.name.clone(),
                d.location.clone(),
                d.config.as_ref().map(|c| c.read_interval),
            )
        };
        let mut last = key(&first);
        let events = tokio_stream::wrappers::BroadcastStream::new(watch.rx);
        let guard = (watch._registered, watch._counted);
        let rest = events
            .map(move |item| {
                let _held = &guard;
                match item {
                    Ok(event) => match &*event {
                        // Another owner's now (or never): end, telling
                        // nothing of it.
                        DeviceEvent::Changed(d)
                            if owner.as_ref().is_some_and(|o| *o != d.owner_id) =>
                        {
                            Step::End
                        }
                        DeviceEvent::Changed(d) => {
                            let k = key(d);
                            if k == last {
                                Step::Skip
                            } else {
                                last = k;
                                Step::Send(Ok(Device::from((**d).clone())))
                            }
                        }
                        DeviceEvent::Gone => Step::End,
                        DeviceEvent::Interrupted => Step::Send(Err(error(
                            "BACKEND_UNAVAILABLE",
                            "device-registry is unavailable; device changes follow once it is back",
                        )
                        .extend_with(|_, e| e.set("service", "device-registry")))),
                    },
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Step::Send(Err(error(
                            "EVENTS_DROPPED",
                            format!("this subscriber fell behind and missed {n} device changes"),
                        )))
                    }
                }
            })
            .take_while(|s| futures::future::ready(!matches!(s, Step::End)))
            .filter_map(|s| {
                futures::future::ready(match s {
                    Step::Send(x) => Some(x),
                    Step::Skip | Step::End => None,
                })
            });
        Ok(futures::stream::once(futures::future::ready(Ok(Device::from(first)))).chain(rest))
    }

    /// The aggregates of each of the device's sensors (or of `sensorName`)
    /// in the bucket of its newest reading, whenever a new reading changes
    /// them: the current bucket, or the one before it for a reading stored
    /// after its bucket ended (the writer stores in batches).
    async fn metrics(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        sensor_name: Option<String>,
        #[graphql(default = "1m")] granularity: String,
    ) -> Result<impl Stream<Item = Result<SensorMetric>> + use<>> {
        let s = shared(ctx);
        let device = find_device(ctx, &device_id).await?;
        let width = granularity
            .parse::<Width>()
            .map_err(|e| error("BAD_USER_INPUT", format!("granularity: {e}")))?
            .secs();
        let (up, scope) = (s.up.clone(), who(ctx)?.scope());
        let every = Duration::from_millis(s.limits.poll_ms);
        let seen: HashMap<String, DateTime<Utc>> = HashMap::new();
        let state = (up, seen, Vec::<Result<SensorMetric>>::new(), true);
        Ok(futures::stream::unfold(
            state,
            move |(up, mut seen, mut queue, mut first)| {
                let device = device.id.clone();
                let sensor_name = sensor_name.clone();
                let granularity = granularity.clone();
                let scope = scope.clone();
                async move {
                    loop {
                        if let Some(m) = queue.pop() {
                            return Some((m, (up, seen, queue, first)));
                        }
                        if !first {
                            tokio::time::sleep(every).await;
                        }
                        first = false;
                        // The device must still be the caller's at every
                        // poll (it may be deleted or change owner), as in
                        // `deviceStatus`; both calls run at once.
                        let mut telemetry = up.telemetry(scope.clone());
                        let (owned, latest) =
                            tokio::join!(get_device(&up, scope.clone(), &device), async {
                                telemetry
                                    .latest_readings(v1::LatestReadingsRequest {
                                        device_uuids: vec![device.clone()],
                                    })
                                    .await
                                    .answer(TELEMETRY)
                            });
                        match owned {
                            Ok(_) => {}
                            // Gone, or no longer the caller's: end.
                            Err(e) if is_not_found(&e) => return None,
                            Err(e) => {
                                queue.push(Err(e));
                                continue;
                            }
                        }
                        let latest = match latest {
                            Ok(l) => l.readings,
                            Err(e) => {
                                queue.push(Err(e));
                                continue;
                            }
                        };
                        let oldest =
                            bucket::floor(Utc::now(), width) - chrono::TimeDelta::seconds(width);
                        for r in latest {
                            if sensor_name.as_ref().is_some_and(|n| *n != r.sensor_name) {
                                continue;
                            }
                            let Some(t) = time(r.time.as_ref()) else {
                                continue;
                            };
                            if seen.get(&r.sensor_name) == Some(&t) || t < oldest {
                                continue;
                            }
                            seen.insert(r.sensor_name.clone(), t);
                            let start = bucket::floor(t, width);
                            let got = up
                                .telemetry(scope.clone())
                                .query_metrics(v1::QueryMetricsRequest {
                                    device_uuid: device.clone(),
                                    sensor_name: r.sensor_name.clone(),
                                    start: Some(iot_proto::timestamp(start)),
                                    end: Some(iot_proto::timestamp(
                                        start + chrono::TimeDelta::seconds(width),
                                    )),
                                    granularity: granularity.clone(),
                                })
                                .await
                                .answer(TELEMETRY);
                            match got {
                                Ok(m) => queue.extend(
                                    m.metrics
                                        .iter()
                                        .filter_map(|m| SensorMetric::from(&r.sensor_name, m))
                                        .map(Ok),
                                ),
                                Err(e) => queue.push(Err(e)),
                            }
                        }
                    }
                }
            },
        ))
    }
}
