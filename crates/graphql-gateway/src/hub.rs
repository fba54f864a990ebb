//! One alert stream from alert-engine, fanned out to every GraphQL
//! subscriber in this process (each filters to its owner). A thousand
//! subscribers cost one upstream stream, not a thousand.

use std::sync::Arc;
use std::time::Duration;

use iot_proto::v1;
use iot_runtime::CancellationToken;
use tokio::sync::broadcast;

use crate::upstream::Upstreams;

/// Counts a subscriber while it lives.
pub struct Subscribed(prometheus::IntGauge);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone)]
pub struct AlertHub {
    tx: broadcast::Sender<Arc<v1::AlertEvent>>,
    /// Subscribers right now, for the metrics.
    subscribers: prometheus::IntGauge,
}

impl AlertHub {
    /// `capacity` events may wait for the slowest subscriber; one that
    /// falls further behind is told how many it missed.
    pub fn new(capacity: usize, subscribers: prometheus::IntGauge) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            subscribers,
        }
    }

    /// A receiver of every event from now on, and a guard that counts the
    /// subscriber until it is dropped.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<v1::AlertEvent>>, Subscribed) {
        self.subscribers.inc();
        (self.tx.subscribe(), Subscribed(self.subscribers.clone()))
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
                                    let _ = self.tx.send(Arc::new(event));
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
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
