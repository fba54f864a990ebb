//! The Subscription root: live streams of alerts, device status and
//! metrics.

use async_graphql::{Context, ErrorExtensions, ID, Result, Subscription};
use chrono::Utc;
use futures::{Stream, StreamExt};
use iot_domain::bucket::Width;
use iot_proto::v1;

use super::ownership::find_device;
use super::{Alert, Device, SensorMetric, shared, who};
use crate::device_hub::{DeviceEvent, online};
use crate::hub::HubEvent;
use crate::metrics_hub::MetricEvent;
use crate::upstream::error;

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
    /// in the bucket of a newly stored reading, whenever one changes them:
    /// the current bucket, or the one before it for a reading stored after
    /// its bucket ended (the writer stores in batches). First the figures
    /// known now. Pushed as the writer stores readings, not polled; the
    /// stream ends when the device is deleted or is no longer the
    /// caller's. While the stored-readings stream is down it carries an
    /// error with code BACKEND_UNAVAILABLE and stays open; the figures are
    /// read again once it is back.
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
        let owner = who(ctx)?.owner.map(|o| o.to_string());
        // The device's own changes end the stream when it goes.
        let watch = s.devices.watch(&device);
        let metrics = s.metrics.watch(&device.id, width);
        let wanted = move |sensor: &str| sensor_name.as_ref().is_none_or(|n| n == sensor);
        let first: Vec<Result<SensorMetric>> = metrics
            .now
            .iter()
            .filter(|(sensor, _)| wanted(sensor))
            .filter_map(|(sensor, m)| SensorMetric::from(sensor, m))
            .map(Ok)
            .collect();
        let guards = (
            watch._registered,
            watch._counted,
            metrics.registered,
            metrics.counted,
        );
        let ends = tokio_stream::wrappers::BroadcastStream::new(watch.rx).filter_map(move |item| {
            let end = match item {
                Ok(e) => match &*e {
                    DeviceEvent::Gone => true,
                    DeviceEvent::Changed(d) => owner.as_ref().is_some_and(|o| *o != d.owner_id),
                    DeviceEvent::Interrupted => false,
                },
                Err(_) => false,
            };
            futures::future::ready(end.then_some(Step::<Result<SensorMetric>>::End))
        });
        let figures = tokio_stream::wrappers::BroadcastStream::new(metrics.rx).map(move |item| {
            match item {
                Ok(e) => match &*e {
                    MetricEvent::Metric { sensor, metric } if wanted(sensor) => {
                        match SensorMetric::from(sensor, metric) {
                            Some(m) => Step::Send(Ok(m)),
                            None => Step::Skip,
                        }
                    }
                    MetricEvent::Metric { .. } => Step::Skip,
                    MetricEvent::Interrupted => Step::Send(Err(error(
                        "BACKEND_UNAVAILABLE",
                        "ingest-writer's stored readings are unavailable; figures follow once it is back",
                    )
                    .extend_with(|_, e| e.set("service", "ingest-writer")))),
                },
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Step::Send(Err(error(
                        "EVENTS_DROPPED",
                        format!("this subscriber fell behind and missed {n} metric changes"),
                    )))
                }
            }
        });
        let rest = futures::stream::select(figures, ends)
            .take_while(|s| futures::future::ready(!matches!(s, Step::End)))
            .filter_map(move |s| {
                let _held = &guards;
                futures::future::ready(match s {
                    Step::Send(x) => Some(x),
                    Step::Skip | Step::End => None,
                })
            });
        Ok(futures::stream::iter(first).chain(rest))
    }
}
