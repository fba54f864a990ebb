//! The registry's MQTT 5 session for talking back to devices: it publishes
//! queued commands and desired states, reads devices' answers and reported
//! states, and ends commands past their deadline.
//!
//! The database is the only memory. A command is published while it is
//! `queued` and no publisher holds its lease; it becomes `sent` only on the
//! broker's PUBACK, so a publish lost to a crash or a dropped connection is
//! published again once the lease runs out (devices see a command id at
//! least once). Answers are acknowledged to the broker only after the
//! database holds them; on a persistent session the broker keeps them
//! while the registry is down. Every replica subscribes to every answer
//! (not a shared subscription): a shared one would hand some answers to
//! the session of a replica that is gone (its session outlives it), where
//! nobody reads them; recording an answer twice changes nothing.
//!
//! As in mqtt-gateway, rumqttc's `EventLoop::poll` is not cancel-safe, so it
//! runs in a task of its own ([`drive`]) and the session's loop selects over
//! its events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use iot_runtime::CancellationToken;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use super::metrics::CommandMetrics;
use super::store::{self, Refusal};
use super::topics::{self, Topics};
use crate::broker::BrokerConfig;

/// How long a publisher holds a queued command before another publish may
/// take it.
const LEASE_SECS: f64 = 30.0;
/// Commands taken per database round trip.
const CLAIM_BATCH: i64 = 500;
/// Answers processed at once (also the Receive Maximum the session
/// announces, so the broker sends no more unacknowledged).
const ANSWERS_IN_FLIGHT: u16 = 64;
/// How long a session's subscriptions and undelivered answers outlive a
/// disconnect at the broker: a restart resumes it; a replica gone for good
/// stops costing the broker after an hour.
const SESSION_EXPIRY_SECS: u32 = 3600;

/// What a PUBACK confirms.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Command(Uuid),
    State(Uuid, i64),
}

/// The publishes handed to the client and not yet given a packet id, in
/// order, and those with a packet id awaiting their PUBACK.
#[derive(Default)]
struct Acks {
    requested: VecDeque<Sent>,
    by_pkid: HashMap<u16, Sent>,
}

/// The handle the gRPC service keeps: wakes the publisher when a command
/// or desired state is stored.
#[derive(Clone)]
pub struct Publisher {
    wake: Arc<Notify>,
}

impl Publisher {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Grants the registry's own broker account what it needs to talk to
/// devices (publish commands and desired states, read answers), then
/// starts the session. A TLS setting that cannot be used leaves the
/// publisher idle and says so; commands wait queued.
pub fn start(
    config: &BrokerConfig,
    dynsec: crate::broker::Dynsec,
    pool: Pool,
    metrics: CommandMetrics,
    shutdown: CancellationToken,
) -> Publisher {
    let wake = Arc::new(Notify::new());
    let publisher = Publisher { wake: wake.clone() };
    let link = iot_mqtt::Link::new(&config.host, config.port);
    let transport = match config.tls.transport() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %link.error(&e), "command session cannot start");
            return publisher;
        }
    };
    let mut opts = MqttOptions::new(
        format!("{}.commands", config.client_id),
        &config.host,
        config.port,
    );
    opts.set_transport(transport)
        .set_credentials(&config.username, &config.password)
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
        .set_receive_maximum(Some(ANSWERS_IN_FLIGHT))
        .set_outgoing_inflight_upper_limit(256)
        .set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let (events_tx, events) = mpsc::channel(256);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (connected_tx, connected) = watch::channel(false);
    let session = Session {
        topics: Topics::of(config),
        client: client.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        acks: acks.clone(),
    };
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = drive(eventloop, events_tx) => {}
            }
        }
    });
    tokio::spawn(session.clone().run(
        events,
        connected_tx,
        wake.clone(),
        link,
        dynsec,
        shutdown.clone(),
    ));
    tokio::spawn(dispatch(session, connected, wake, shutdown));
    publisher
}

#[derive(Clone)]
struct Session {
    topics: Topics,
    client: AsyncClient,
    pool: Pool,
    metrics: CommandMetrics,
    acks: Arc<Mutex<Acks>>,
}

impl Session {
    async fn run(
        self,
        mut events: mpsc::Receiver<Result<Event, ConnectionError>>,
        connected: watch::Sender<bool>,
        wake: Arc<Notify>,
        link: iot_mqtt::Link,
        dynsec: crate::broker::Dynsec,
        shutdown: CancellationToken,
    ) {
        let mut granted = false;
        loop {
            let ev = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !granted {
                        // Before subscribing: the account may not read
                        // answers until it has the role.
                        match dynsec.grant_commands().await {
                            Ok(()) => granted = true,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot grant the registry's command role; retrying on reconnect");
                            }
                        }
                    }
                    tracing::info!(
                        session_present = ack.session_present,
                        "command session connected"
                    );
                    let subs = [self.topics.answers(), self.topics.reports()]
                        .into_iter()
                        .map(|t| Filter::new(t, QoS::AtLeastOnce));
                    // Without waiting: the request queue may be full of
                    // publishes the event loop sends once this loop reads
                    // its events again.
                    if let Err(e) = self.client.try_subscribe_many(subs) {
                        tracing::warn!(error = %e, "cannot subscribe to device answers");
                    }
                    connected.send_replace(true);
                    wake.notify_one();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    let mut acks = lock(&self.acks);
                    // A packet id already known is a retransmission after a
                    // reconnect; a new one belongs to the oldest request.
                    if !acks.by_pkid.contains_key(&pkid)
                        && let Some(sent) = acks.requested.pop_front()
                    {
                        acks.by_pkid.insert(pkid, sent);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let sent = lock(&self.acks).by_pkid.remove(&ack.pkid);
                    if let Some(sent) = sent {
                        let pool = self.pool.clone();
                        tokio::spawn(async move { confirmed(&pool, sent, ack.reason).await });
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Bounded by the Receive Maximum the session announces
                    // (ANSWERS_IN_FLIGHT): the broker sends no more
                    // unacknowledged. The loop itself never waits on the
                    // handlers, so the event loop's task always drains.
                    let s = self.clone();
                    tokio::spawn(async move { s.incoming(p).await });
                }
                Ok(_) => {}
                Err(e) => {
                    connected.send_replace(false);
                    tracing::warn!(error = %link.error(&e), "command session lost; reconnecting");
                }
            }
        }
        connected.send_replace(false);
        let _ = self.client.disconnect().await;
    }

    /// An answer or a reported state: stored, then acknowledged. A message
    /// the database cannot take now is left unacknowledged: the broker
    /// sends it again on the next session.
    async fn incoming(&self, p: Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let stored = match self.topics.parse(&topic) {
            Some(topics::Incoming::Answer { device, command }) => {
                self.answer(&device, &command, &p.payload).await
            }
            Some(topics::Incoming::Reported { device }) => {
                match serde_json::from_slice::<serde_json::Value>(&p.payload) {
                    Ok(v) => store::set_reported(&self.pool, &device, &v)
                        .await
                        .map(|_| ()),
                    Err(_) => {
                        self.metrics.refused("malformed");
                        Ok(())
                    }
                }
            }
            None => {
                self.metrics.refused("malformed");
                Ok(())
            }
        };
        match stored {
            Ok(()) => {
                if let Err(e) = self.client.ack(&p).await {
                    tracing::warn!(error = %e, "cannot acknowledge an answer");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot store a device's answer; the broker sends it again")
            }
        }
    }

    async fn answer(
        &self,
        device: &str,
        command: &str,
        payload: &[u8],
    ) -> Result<(), crate::RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            status: String,
            #[serde(default)]
            body: Option<serde_json::Value>,
        }
        let parsed = serde_json::from_slice::<Answer>(payload).ok();
        let (Ok(id), Some(a)) = (Uuid::parse_str(command), parsed) else {
            self.metrics.refused("malformed");
            return Ok(());
        };
        let status = match a.status.as_str() {
            "received" => "delivered",
            "ok" => "succeeded",
            "error" => "failed",
            _ => {
                self.metrics.refused("malformed");
                return Ok(());
            }
        };
        let body = a.body.unwrap_or(serde_json::Value::Null);
        match store::answer(&self.pool, id, device, status, Some(&body)).await? {
            Ok(()) => self.metrics.answered(status),
            Err(why) => {
                if why == Refusal::NotItsCommand {
                    tracing::warn!(
                        device,
                        command,
                        "a device answered another device's command; refused"
                    );
                }
                self.metrics.refused(why.code());
            }
        }
        Ok(())
    }
}

/// The broker took a publish: the command is `sent`, or the desired state
/// is retained. A refusal (a PUBACK with an error reason) changes nothing:
/// the lease runs out and it is published again.
async fn confirmed(pool: &Pool, sent: Sent, reason: rumqttc::v5::mqttbytes::v5::PubAckReason) {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    if !matches!(
        reason,
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
    ) {
        tracing::warn!(?sent, ?reason, "the broker refused a publish to a device");
        return;
    }
    let done = match sent {
        Sent::Command(id) => store::mark_sent(pool, id).await,
        Sent::State(device, version) => store::mark_state_published(pool, device, version).await,
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, ?sent, "cannot record the broker's PUBACK");
    }
}

/// Publishes queued commands and unpublished desired states while
/// connected, when woken or every second, and ends commands past their
/// deadline.
async fn dispatch(
    s: Session,
    mut connected: watch::Receiver<bool>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Desired states handed to the client, not yet confirmed: published
    // again only after the lease.
    let mut states: HashMap<(Uuid, i64), tokio::time::Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            _ = tick.tick() => {
                match store::sweep(&s.pool).await {
                    Ok(n) if n > 0 => tracing::debug!(ended = n, "commands past their deadline"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot end commands past their deadline"),
                }
            }
            _ = connected.changed() => {}
        }
        if !*connected.borrow() {
            continue;
        }
        if let Err(e) = publish_commands(&s).await {
            tracing::warn!(error = %e, "cannot publish queued commands");
        }
        if let Err(e) = publish_states(&s, &mut states).await {
            tracing::warn!(error = %e, "cannot publish desired states");
        }
    }
}

async fn publish_commands(s: &Session) -> Result<(), crate::RegistryError> {
    loop {
        let batch = store::claim(&s.pool, LEASE_SECS, CLAIM_BATCH).await?;
        let full = i64::try_from(batch.len()).unwrap_or(0) == CLAIM_BATCH;
        for c in batch {
            let topic = s.topics.command(&c.device_id, &c.id);
            let body = serde_json::json!({
                "id": c.id,
                "name": c.name,
                "payload": c.payload,
                "deadline": c.deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            let props = PublishProperties {
                payload_format_indicator: Some(1),
                // The broker drops it, undelivered, at the deadline: a
                // device offline until then never sees it.
                message_expiry_interval: Some(c.remaining_secs.ceil().max(1.0) as u32),
                response_topic: Some(s.topics.answer(&c.device_id, &c.id)),
                correlation_data: Some(c.id.to_string().into()),
                content_type: Some("application/json".into()),
                ..Default::default()
            };
            lock(&s.acks).requested.push_back(Sent::Command(c.id));
            if let Err(e) = s
                .client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, body.to_string(), props)
                .await
            {
                lock(&s.acks).requested.pop_back();
                tracing::warn!(error = %e, command = %c.id, "cannot publish a command");
                return Ok(());
            }
            s.metrics.published.inc();
        }
        if !full {
            return Ok(());
        }
    }
}

async fn publish_states(
    s: &Session,
    pending: &mut HashMap<(Uuid, i64), tokio::time::Instant>,
) -> Result<(), crate::RegistryError> {
    let now = tokio::time::Instant::now();
    let lease = Duration::from_secs_f64(LEASE_SECS);
    pending.retain(|_, at| now.duration_since(*at) < lease);
    for d in store::unpublished_states(&s.pool, CLAIM_BATCH).await? {
        if pending.contains_key(&(d.device, d.version)) {
            continue;
        }
        let body = serde_json::json!({ "version": d.version, "state": d.desired });
        lock(&s.acks)
            .requested
            .push_back(Sent::State(d.device, d.version));
        if let Err(e) = s
            .client
            .publish(
                s.topics.desired(&d.device_id),
                QoS::AtLeastOnce,
                true,
                body.to_string(),
            )
            .await
        {
            lock(&s.acks).requested.pop_back();
            tracing::warn!(error = %e, device = d.device_id, "cannot publish a desired state");
            return Ok(());
        }
        pending.insert((d.device, d.version), now);
    }
    Ok(())
}

/// Polls the event loop, never dropping a `poll` half done; passes every
/// event on (after an error, the next poll reconnects one second later).
async fn drive(mut eventloop: EventLoop, events: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        if events.send(ev).await.is_err() {
            return;
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
