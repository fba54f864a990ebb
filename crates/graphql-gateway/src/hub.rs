//! One alert stream from alert-engine, fanned out to every GraphQL
//! subscriber in this process (each filters to its owner). A thousand
//! subscribers cost one upstream stream, not a thousand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iot_proto::v1;
use iot_runtime::CancellationToken;
use tokio::sync::broadcast;

use crate::upstream::Upstreams;

/// Counts a subscriber while it lives.
pub struct Subscribed(pub(crate) prometheus::IntGauge);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the hub passes on.
pub enum HubEvent {
    /// An alert change from alert-engine.
    Alert(Box<v1::AlertEvent>),
    /// The alert stream is down (alert-engine unreachable or the stream
    /// broke). Changes made meanwhile follow once it is back: the hub
    /// resumes after the last event it passed on.
    Interrupted,
}

#[derive(Clone)]
pub struct AlertHub {
    tx: broadcast::Sender<Arc<HubEvent>>,
    /// Subscribers right now, for the metrics.
    subscribers: prometheus::IntGauge,
    /// The stream is down now (new subscribers are told at once).
    down: Arc<AtomicBool>,
}

impl AlertHub {
    /// `capacity` events may wait for the slowest subscriber; one that
    /// falls further behind is told how many it missed.
    pub fn new(capacity: usize, subscribers: prometheus::IntGauge) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            subscribers,
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A receiver of every event from now on, whether the stream is down
    /// right now, and a guard that counts the subscriber until it is
    /// dropped.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<HubEvent>>, bool, Subscribed) {
        self.subscribers.inc();
        (
            self.tx.subscribe(),
            self.down.load(Ordering::Relaxed),
            Subscribed(self.subscribers.clone()),
        )
    }

    /// Marks the stream down (and tells the subscribers once per outage)
    /// or up.
    fn set_down(&self, down: bool) {
        if self.down.swap(down, Ordering::Relaxed) != down && down {
            // No receivers is fine: nobody is listening.
            let _ = self.tx.send(Arc::new(HubEvent::Interrupted));
        }
    }

    /// Follows alert-engine's SubscribeAlerts (admin scope) until
    /// `shutdown`, resuming after the last event on reconnect.
    pub async fn run(self, up: Upstreams, shutdown: CancellationToken) {
        let mut resume_after = 0;
        loop {
            let mut client = up.alerts(iot_proto::Scope::Admin);
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                s = client.subscribe_alerts(v1::SubscribeAlertsRequest {
                    device_uuid: None,
                    resume_after,
                }) => s,
            };
            match stream {
                Ok(s) => {
                    let mut s = s.into_inner();
                    tracing::info!(resume_after, "following the alert stream");
                    self.set_down(false);
                    loop {
                        let next = tokio::select! {
                            () = shutdown.cancelled() => return,
                            n = s.message() => n,
                        };
                        match next {
                            Ok(Some(event)) => {
                                resume_after = event.resume_after;
                                // "sync" only marks where the stream starts.
                                // No receivers is fine: nobody is listening.
                                if event.alert.is_some() {
                                    let _ =
                                        self.tx.send(Arc::new(HubEvent::Alert(Box::new(event))));
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "alert stream broke; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "alert stream unavailable; retrying"),
            }
            self.set_down(true);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
