//! The MQTT door: a shared subscription on a persistent MQTT 5 session, with
//! manual acknowledgements sent only after Kafka holds the message (as a
//! reading or as a dead letter).
//!
//! The event loop never waits on anything but the network and finished
//! work: a handler hands its message back when Kafka holds it, and the loop
//! queues the PUBACK. Flow control is layered:
//! - the gateway announces a Receive Maximum of `max_in_flight`, so a
//!   compliant broker never has more unacknowledged messages out to it;
//! - at most `max_in_flight` messages are processed at once, the rest wait;
//! - if a broker sends more anyway and the waiting queue reaches
//!   `4 * max_in_flight`, the loop stops taking events, the event loop's
//!   task stops reading the socket until work drains, so memory stays
//!   bounded whatever the broker does.
//!
//! A PUBACK names a packet id, and a packet id means a message only on the
//! connection it came in on: a resumed session redelivers the unacknowledged
//! messages under their ids, the broker reuses an id once acknowledged, and
//! an ack left over from the connection before would acknowledge whatever
//! message holds that id now, before the gateway has it (lost if the gateway
//! then drops it). So every message carries the connection it came in on
//! ([`Epoch`]), and a message from an earlier connection is never
//! acknowledged: the broker redelivers it, and the writer ignores the copy.
//!
//! rumqttc's `EventLoop::poll` is not cancel-safe: dropped while it writes,
//! the packets it took from the request queue are lost (for the gateway,
//! PUBACKs: each one lost shrinks the broker's window of unacknowledged
//! messages for good, until the gateway stalls). So it runs in a task of
//! its own that is never cancelled mid-call ([`drive`]), and the flow logic
//! selects over that task's events instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::GatewayError;
use crate::config::{MqttConfig, Split};
use crate::pipeline::Pipeline;

/// Outgoing publishes the client keeps slots for: the gateway sends none.
const OUTGOING_PUBLISH_SLOTS: u16 = 16;

/// The connection a message came in on, counted from the first: moved by
/// [`drive`] at each connection error, under its lock, while rumqttc's
/// queue of requests is cleared of acks; read under the same lock when an
/// ack is queued. An ack is queued only on the connection it is for.
#[derive(Clone, Default)]
struct Epoch(Arc<Mutex<u64>>);

impl Epoch {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A message and the connection it came in on.
type Received = (Publish, u64);

/// The subscriber's state between events.
struct Flow {
    client: AsyncClient,
    epoch: Epoch,
    pipeline: Arc<Pipeline>,
    work: CancellationToken,
    handlers: JoinSet<()>,
    done_tx: mpsc::UnboundedSender<Received>,
    /// Received, not yet being processed.
    waiting: VecDeque<Received>,
    /// Processed (Kafka holds them) or another replica's, PUBACK not yet
    /// queued to the client; `true` for processed ones.
    to_ack: VecDeque<(Received, bool)>,
    in_flight: usize,
    max_in_flight: usize,
    /// Which messages this replica handles (the rest it only acknowledges).
    shard: Shard,
}

/// With `split = "hashed"`, the devices this replica owns.
struct Shard {
    prefixes: [String; 4],
    replica: u32,
    replicas: u32,
}

impl Shard {
    fn owns(&self, topic: &[u8]) -> bool {
        self.replicas <= 1 || owner(topic, &self.prefixes, self.replicas) == self.replica
    }
}

/// The replica (of `replicas`) that handles a topic's device: a stable hash
/// (FNV-1a) of the device segment after the topic's prefix. A topic with no
/// device segment belongs to replica 0, which dead-letters it.
fn owner(topic: &[u8], prefixes: &[String], replicas: u32) -> u32 {
    let device = prefixes.iter().find_map(|p| {
        let rest = topic.strip_prefix(p.as_bytes())?.strip_prefix(b"/")?;
        let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
        Some(&rest[..end]).filter(|d| !d.is_empty())
    });
    let Some(device) = device else { return 0 };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(replicas.max(1))).unwrap_or(0)
}

impl Flow {
    /// Starts waiting messages while there is capacity, and queues every
    /// PUBACK the client will take now.
    fn advance(&mut self) {
        while self.in_flight < self.max_in_flight {
            let Some((publish, epoch)) = self.waiting.pop_front() else {
                break;
            };
            if !self.shard.owns(&publish.topic) {
                // Another replica's device: its own session holds the
                // message for it.
                self.pipeline.metrics.mqtt_others.inc();
                self.to_ack.push_back(((publish, epoch), false));
                continue;
            }
            self.in_flight += 1;
            self.pipeline.metrics.in_flight.inc();
            let (pipeline, work, done) = (
                self.pipeline.clone(),
                self.work.clone(),
                self.done_tx.clone(),
            );
            // Boxed: the task would otherwise copy the handler's state on
            // spawn and again on completion (6% of the gateway's CPU with
            // one reading per message when that state was 2.5 kB; the rare
            // paths are boxed now, and it is some 750 bytes).
            self.handlers.spawn(Box::pin(async move {
                if handle(&pipeline, &publish, &work).await {
                    let _ = done.send((publish, epoch));
                }
            }));
        }
        let current = self.epoch.lock();
        while let Some(((publish, epoch), processed)) = self.to_ack.front() {
            // From a connection before this one: the broker redelivers it.
            if *epoch == *current && self.client.try_ack(publish).is_err() {
                // The request queue is full; the event loop drains it.
                break;
            }
            if *processed && *epoch == *current {
                self.pipeline.metrics.mqtt_acks.inc();
            }
            self.to_ack.pop_front();
        }
        drop(current);
        while self.handlers.try_join_next().is_some() {}
    }

    fn finished(&mut self, done: Received) {
        self.in_flight -= 1;
        self.pipeline.metrics.in_flight.dec();
        self.to_ack.push_back((done, true));
    }
}

/// The session's options; TLS as `mqtt.tls` says (its files read here).
fn options(cfg: &MqttConfig, max_in_flight: usize) -> Result<MqttOptions, iot_mqtt::TlsError> {
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_transport(cfg.tls.transport()?);
    let receive_maximum = u16::try_from(max_in_flight).unwrap_or(u16::MAX);
    let max_packet = u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(cfg.session_expiry_secs))
        .set_receive_maximum(Some(receive_maximum))
        .set_max_packet_size(Some(max_packet))
        // The gateway publishes nothing over MQTT; without a limit the client
        // keeps a slot for 65,535 outgoing publishes (about 14 MB).
        .set_outgoing_inflight_upper_limit(OUTGOING_PUBLISH_SLOTS)
        .set_manual_acks(true);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u, p);
    }
    Ok(opts)
}

pub async fn run_subscriber(
    cfg: MqttConfig,
    pipeline: Arc<Pipeline>,
    max_in_flight: usize,
    drain_timeout: Duration,
    ready: Readiness,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let link = iot_mqtt::Link::new(&cfg.host, cfg.port);
    // A CA or key file that cannot be used stops the gateway: no retry
    // mends it.
    let opts = options(&cfg, max_in_flight)
        .map_err(|e| iot_runtime::ServiceError::Failed(Box::new(link.error(&e))))?;
    let (client, eventloop) = AsyncClient::new(opts, 2 * max_in_flight + 64);
    let (events_tx, mut events) = mpsc::channel(EVENTS_BUFFERED);
    let epoch = Epoch::default();
    let driver = tokio::spawn(drive(eventloop, events_tx, epoch.clone()));
    // `#`, not `+/+`: a topic of the wrong shape under a prefix must reach
    // the gateway to be dead-lettered, not be ignored by the broker.
    let prefixes = [
        cfg.topic_prefix.clone(),
        cfg.batch_topic_prefix.clone(),
        cfg.senml_topic_prefix.clone(),
        cfg.presence_topic_prefix.clone(),
    ];
    // Presence messages (retained births and wills) are `+/presence`: the
    // rest of that tree is not the gateway's.
    let filters: Vec<String> = prefixes
        .iter()
        .map(|prefix| {
            let tail = if *prefix == cfg.presence_topic_prefix {
                "+/presence"
            } else {
                "#"
            };
            match cfg.split {
                Split::Hashed => format!("{prefix}/{tail}"),
                Split::Shared => format!("$share/{}/{prefix}/{tail}", cfg.share_group),
            }
        })
        .collect();
    let shard = Shard {
        prefixes,
        replica: cfg.replica,
        replicas: match cfg.split {
            Split::Hashed => cfg.replicas,
            Split::Shared => 1,
        },
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut flow = Flow {
        client: client.clone(),
        epoch,
        pipeline,
        work: CancellationToken::new(),
        handlers: JoinSet::new(),
        done_tx,
        waiting: VecDeque::new(),
        to_ack: VecDeque::new(),
        in_flight: 0,
        max_in_flight,
        shard,
    };
    let hold_limit = 4 * max_in_flight;
    let mut broker_check = crate::broker_check::BrokerCheck::new(
        cfg.broker_received_topic.clone(),
        cfg.unreceived_alarm,
        Duration::from_secs(cfg.unreceived_alarm_after_secs),
        flow.pipeline.metrics.broker_unreceived.clone(),
        flow.pipeline.metrics.broker_unreceived_alarm.clone(),
        flow.pipeline.metrics.broker_received.clone(),
    );

    // The broker check also judges between samples (`broker_check`).
    let mut check_tick = tokio::time::interval(Duration::from_secs(1));
    check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        flow.advance();
        let can_read = flow.waiting.len() < hold_limit;
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = check_tick.tick() => broker_check.tick(Instant::now()),
            Some(publish) = done_rx.recv() => flow.finished(publish),
            Some((ev, epoch)) = events.recv(), if can_read => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(session_present = ack.session_present, ?filters, "connected to MQTT broker");
                    // One SUBSCRIBE for both: once its SUBACK says the
                    // gateway is ready, the broker's first count (retained)
                    // is on its way ahead of any device message published
                    // after, so the check counts from before them.
                    let mut subs: Vec<Filter> = filters
                        .iter()
                        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce))
                        .collect();
                    if let Some(topic) = broker_check.topic() {
                        subs.push(Filter::new(topic.to_owned(), QoS::AtMostOnce));
                    }
                    client.try_subscribe_many(subs)?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => ready.set(true),
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if broker_check.is_sample(&publish.topic) {
                        broker_check.sample(&publish.payload, Instant::now());
                    } else {
                        broker_check.delivered(publish.dup);
                        flow.waiting.push_back((publish, epoch));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    ready.set(false);
                    // Named by its link: "MQTT broker host:8883: TLS:
                    // invalid peer certificate: UnknownIssuer".
                    tracing::warn!(error = %link.error(&e), "MQTT connection error, reconnecting");
                    // Messages not yet acknowledged are redelivered on the
                    // resumed session; drop our copies of the unstarted ones.
                    flow.waiting.clear();
                }
            },
        }
    }
    ready.set(false);
    drain(flow, &mut events, &mut done_rx, drain_timeout).await;
    let _ = client.disconnect().await;
    // Let the event loop flush the DISCONNECT and pending acks: it ends at
    // its first error once the connection is closed.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some((Ok(_), _)) = events.recv().await {}
    })
    .await;
    driver.abort();
    Ok(())
}

/// Events the event loop's task may hold before the flow takes them.
const EVENTS_BUFFERED: usize = 64;

/// Polls the event loop until the flow is gone, never dropping a `poll`
/// half done; passes every event on with the connection it came in on
/// (after an error, the next poll reconnects: one second later).
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<(Result<Event, ConnectionError>, u64)>,
    epoch: Epoch,
) {
    loop {
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        let on = if failed {
            // rumqttc dropped the queued acks when the connection failed;
            // it drops those queued since now, and the flow queues none for
            // this connection's messages from here on.
            let mut e = epoch.lock();
            eventloop.clean();
            *e += 1;
            *e
        } else {
            *epoch.lock()
        };
        if events.send((ev, on)).await.is_err() {
            return;
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Lets in-flight messages finish and be acknowledged while the event loop
/// keeps sending acks; messages not started are left to the broker.
async fn drain(
    mut flow: Flow,
    events: &mut mpsc::Receiver<(Result<Event, ConnectionError>, u64)>,
    done_rx: &mut mpsc::UnboundedReceiver<Received>,
    timeout: Duration,
) {
    flow.waiting.clear();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        flow.advance();
        if flow.in_flight == 0 && flow.to_ack.is_empty() {
            break;
        }
        tokio::select! {
            () = &mut deadline => {
                tracing::warn!(
                    in_flight = flow.in_flight,
                    "drain deadline reached; unacknowledged messages will be redelivered"
                );
                flow.work.cancel();
                flow.handlers.abort_all();
                break;
            }
            Some(publish) = done_rx.recv() => flow.finished(publish),
            ev = events.recv() => match ev {
                // A publish arriving now is not ours to process any more:
                // unacknowledged, the broker redelivers it.
                Some((Ok(_), _)) => {}
                Some((Err(_), _)) | None => break,
            },
        }
    }
}

/// Processes one message until Kafka holds it (returns true: acknowledge
/// it). On a transient failure it retries with backoff; if the service stops
/// first it returns false and the broker redelivers the message.
async fn handle(pipeline: &Pipeline, publish: &Publish, work: &CancellationToken) -> bool {
    let topic = String::from_utf8_lossy(&publish.topic);
    let mut backoff = Duration::from_millis(100);
    loop {
        match pipeline.handle_mqtt(&topic, &publish.payload).await {
            Ok(_) => return true,
            Err(e) => {
                pipeline.metrics.transient(e.kind(), &e);
                tokio::select! {
                    () = work.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_of_a_device_has_one_owner() {
        let prefixes = [
            "sensors".to_owned(),
            "batches".to_owned(),
            "a/senml".to_owned(),
        ];
        for replicas in 1..6 {
            for d in 0..200 {
                let dev = format!("device-{d}");
                let o = owner(
                    format!("sensors/{dev}/temp").as_bytes(),
                    &prefixes,
                    replicas,
                );
                assert!(o < replicas);
                assert_eq!(
                    o,
                    owner(format!("sensors/{dev}/hum").as_bytes(), &prefixes, replicas)
                );
                assert_eq!(
                    o,
                    owner(format!("batches/{dev}").as_bytes(), &prefixes, replicas)
                );
                assert_eq!(
                    o,
                    owner(format!("a/senml/{dev}").as_bytes(), &prefixes, replicas)
                );
            }
        }
        // Malformed topics go to replica 0, which dead-letters them.
        assert_eq!(owner(b"sensors", &prefixes, 3), 0);
        assert_eq!(owner(b"sensors//x", &prefixes, 3), 0);
        assert_eq!(owner(b"elsewhere/d/x", &prefixes, 3), 0);
    }

    #[test]
    fn devices_spread_over_replicas() {
        let prefixes = ["sensors".to_owned(), "b".to_owned(), "s".to_owned()];
        let mut counts = [0u32; 3];
        for d in 0..3000 {
            let t = format!("sensors/dev-{d}/t");
            counts[owner(t.as_bytes(), &prefixes, 3) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
