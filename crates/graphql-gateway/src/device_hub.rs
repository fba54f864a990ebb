//! Live device state for `deviceStatus` subscriptions, pushed: one
//! device-change stream from device-registry (created, updated, config,
//! presence, deleted) and one presence clock for the whole process, fanned
//! out to every subscriber of a device. Backend calls follow changes and
//! devices, never the number of subscribers: a change costs one GetDevice
//! however many watch the device, and a device whose silence makes it
//! offline is confirmed with one GetDevice (its heartbeat may have moved
//! on) when its deadline passes.
//!
//! Offline is `iot_domain::presence::PLATFORM`, the one definition the
//! registry's summary and alert-engine use too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use iot_domain::presence::{PLATFORM, Seen};
use iot_proto::v1;
use iot_runtime::CancellationToken;
use tokio::sync::broadcast;

use crate::hub::Subscribed;
use crate::upstream::Upstreams;

/// How often the presence clock looks for devices whose silence has made
/// them offline: a subscriber hears of it within this (plus one GetDevice)
/// of the moment.
const CLOCK: Duration = Duration::from_secs(1);

/// Confirmations (GetDevice) the clock runs at once.
const CONFIRMS_AT_ONCE: usize = 16;

/// What a device's subscribers hear.
#[derive(Debug)]
pub enum DeviceEvent {
    /// The device as it is now (status, heartbeat, presence, config...).
    Changed(Box<v1::Device>),
    /// The device was deleted.
    Gone,
    /// The change stream is down; changes made meanwhile are re-read once
    /// it is back.
    Interrupted,
}

/// One watched device.
struct Watched {
    tx: broadcast::Sender<Arc<DeviceEvent>>,
    /// Its subscribers.
    count: usize,
    /// The newest record known, and whether it was online when last told.
    device: v1::Device,
    online: bool,
}

#[derive(Clone)]
pub struct DeviceHub {
    devices: Arc<Mutex<HashMap<String, Watched>>>,
    capacity: usize,
    subscribers: prometheus::IntGauge,
}

/// A subscriber of one device: its events, and the registration it drops
/// when it goes.
pub struct Watch {
    pub rx: broadcast::Receiver<Arc<DeviceEvent>>,
    pub _registered: Registered,
    pub _counted: Subscribed,
}

/// A subscriber's registration with its device; dropping it unwatches.
pub struct Registered {
    hub: DeviceHub,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut devices = lock(&self.hub.devices);
        if let Some(w) = devices.get_mut(&self.id) {
            w.count -= 1;
            if w.count == 0 {
                devices.remove(&self.id);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn seen_of(d: &v1::Device) -> Seen {
    Seen {
        last_heartbeat: d
            .last_heartbeat
            .as_ref()
            .and_then(iot_proto::from_timestamp),
        disconnected_at: d
            .disconnected_at
            .as_ref()
            .and_then(iot_proto::from_timestamp),
        read_interval: d.config.as_ref().map(|c| c.read_interval),
    }
}

/// Whether `d` is online at `now`, by the platform's one definition.
pub fn online(d: &v1::Device, now: DateTime<Utc>) -> bool {
    PLATFORM.is_online(&seen_of(d), now)
}

impl DeviceHub {
    /// `capacity` events per device may wait for its slowest subscriber;
    /// one that falls further behind is told how many it missed.
    pub fn new(capacity: usize, subscribers: prometheus::IntGauge) -> Self {
        Self {
            devices: Arc::default(),
            capacity,
            subscribers,
        }
    }

    /// Watches `device` (as the subscriber just read it) from now on.
    pub fn watch(&self, device: &v1::Device) -> Watch {
        let mut devices = lock(&self.devices);
        let w = devices.entry(device.id.clone()).or_insert_with(|| Watched {
            tx: broadcast::channel(self.capacity).0,
            count: 0,
            device: device.clone(),
            online: online(device, Utc::now()),
        });
        w.count += 1;
        self.subscribers.inc();
        Watch {
            rx: w.tx.subscribe(),
            _registered: Registered {
                hub: self.clone(),
                id: device.id.clone(),
            },
            _counted: Subscribed(self.subscribers.clone()),
        }
    }

    fn watched(&self) -> Vec<String> {
        lock(&self.devices).keys().cloned().collect()
    }

    /// Tells the subscribers of `id` what the registry says of it now.
    fn publish(&self, id: &str, got: Result<v1::Device, tonic::Status>) {
        let mut devices = lock(&self.devices);
        let Some(w) = devices.get_mut(id) else {
            return;
        };
        let event = match got {
            Ok(d) => {
                w.online = online(&d, Utc::now());
                w.device = d.clone();
                DeviceEvent::Changed(Box::new(d))
            }
            Err(s) if s.code() == tonic::Code::NotFound => DeviceEvent::Gone,
            Err(s) => {
                tracing::warn!(device = id, error = %s, "cannot read a changed device");
                return;
            }
        };
        // No receivers is fine: the last subscriber just left.
        let _ = w.tx.send(Arc::new(event));
    }

    fn interrupted(&self) {
        for w in lock(&self.devices).values() {
            let _ = w.tx.send(Arc::new(DeviceEvent::Interrupted));
        }
    }

    /// Re-reads `ids` (one GetDevice each, a few at once) and tells their
    /// subscribers.
    async fn refresh(&self, up: &Upstreams, ids: Vec<String>) {
        futures::stream::iter(ids)
            .map(|id| async move {
                let got = up
                    .registry(iot_proto::Scope::Admin)
                    .get_device(v1::GetDeviceRequest { id: id.clone() })
                    .await
                    .map(tonic::Response::into_inner);
                (id, got)
            })
            .buffer_unordered(CONFIRMS_AT_ONCE)
            .for_each(|(id, got)| {
                self.publish(&id, got);
                futures::future::ready(())
            })
            .await;
    }

    /// Watched devices whose silence (by their last known record) has made
    /// them offline since they were last told online.
    fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        lock(&self.devices)
            .iter()
            .filter(|(_, w)| w.online && !online(&w.device, now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Follows the registry's device changes (admin scope), and runs the
    /// presence clock, until `shutdown`.
    pub async fn run(self, up: Upstreams, shutdown: CancellationToken) {
        let clock = {
            let (hub, up, shutdown) = (self.clone(), up.clone(), shutdown.clone());
            async move {
                let mut tick = tokio::time::interval(CLOCK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    // A device that stays offline after the re-read is
                    // told (`online` false); one heard from meanwhile is
                    // told nothing new but its record moves on.
                    let due = hub.due(Utc::now());
                    if !due.is_empty() {
                        hub.refresh(&up, due).await;
                    }
                }
            }
        };
        tokio::join!(clock, self.follow(up, shutdown));
    }

    async fn follow(&self, up: Upstreams, shutdown: CancellationToken) {
        let mut resume_after = 0;
        // Subscribers are told of an outage once, not at every retry.
        let mut was_up = true;
        loop {
            let mut client = up.registry(iot_proto::Scope::Admin);
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                s = client.watch_device_changes(v1::WatchDeviceChangesRequest { resume_after }) => s,
            };
            match stream {
                Ok(s) => {
                    let mut s = s.into_inner();
                    was_up = true;
                    loop {
                        let next = tokio::select! {
                            () = shutdown.cancelled() => return,
                            n = s.message() => n,
                        };
                        match next {
                            Ok(Some(change)) => {
                                resume_after = change.resume_after;
                                match change.kind.as_str() {
                                    // The stream (re)starts: changes while it
                                    // was down may be lost, or (reset) it
                                    // cannot say which. Re-read every watched
                                    // device.
                                    "sync" | "reset" => {
                                        let ids = self.watched();
                                        self.refresh(&up, ids).await;
                                    }
                                    "deleted" => self.publish(
                                        &change.device_uuid,
                                        Err(tonic::Status::not_found("deleted")),
                                    ),
                                    _ => {
                                        let watched =
                                            lock(&self.devices).contains_key(&change.device_uuid);
                                        if watched {
                                            self.refresh(&up, vec![change.device_uuid]).await;
                                        }
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "device change stream broke; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "device change stream unavailable; retrying"),
            }
            if std::mem::replace(&mut was_up, false) {
                self.interrupted();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
