//! The MQTT door: a shared subscription on a persistent session, with manual
//! acknowledgements sent only after Kafka holds the message (as a reading or
//! as a dead letter).

use std::sync::Arc;
use std::time::Duration;

use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::Semaphore;

use crate::config::MqttConfig;
use crate::pipeline::Pipeline;

/// Largest MQTT packet the client accepts; the pipeline rejects (with a
/// dead letter) anything above the configured payload limit below this.
pub fn max_packet_bytes(max_payload: usize) -> usize {
    (max_payload * 2).max(1024 * 1024)
}

pub async fn run_subscriber(
    cfg: MqttConfig,
    pipeline: Arc<Pipeline>,
    max_in_flight: usize,
    drain_timeout: Duration,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)))
        .set_clean_session(false)
        .set_manual_acks(true);
    let max_packet = max_packet_bytes(pipeline.limits.max_payload_bytes);
    opts.set_max_packet_size(max_packet, max_packet);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    // `#`, not `+/+`: a topic of the wrong shape under a prefix must reach
    // the gateway to be dead-lettered, not be ignored by the broker.
    let filters: Vec<String> = [
        &cfg.topic_prefix,
        &cfg.batch_topic_prefix,
        &cfg.senml_topic_prefix,
    ]
    .iter()
    .map(|prefix| format!("$share/{}/{prefix}/#", cfg.share_group))
    .collect();
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let work = CancellationToken::new();
    let mut handlers = tokio::task::JoinSet::new();

    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    ?filters,
                    "connected to MQTT broker"
                );
                let subs = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                client.subscribe_many(subs).await?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => ready.set(true),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let permit = permits.clone().acquire_owned().await?;
                let pipeline = pipeline.clone();
                let client = client.clone();
                let work = work.clone();
                handlers.spawn(async move {
                    handle(&pipeline, &client, publish, &work).await;
                    drop(permit);
                });
                // Reap finished handlers so the set stays small.
                while handlers.try_join_next().is_some() {}
            }
            Ok(_) => {}
            Err(e) => {
                ready.set(false);
                tracing::warn!(error = %e, "MQTT connection error, reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    // Drain: let in-flight messages finish (and be acknowledged) while the
    // event loop keeps running to send the acks out.
    ready.set(false);
    let drain = async {
        let _all = permits.acquire_many(max_in_flight as u32).await;
    };
    tokio::pin!(drain);
    let deadline = tokio::time::sleep(drain_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut drain => break,
            () = &mut deadline => {
                tracing::warn!(
                    in_flight = handlers.len(),
                    "drain deadline reached; unacknowledged messages will be redelivered"
                );
                work.cancel();
                handlers.abort_all();
                break;
            }
            ev = eventloop.poll() => if ev.is_err() { break },
        }
    }
    let _ = client.disconnect().await;
    // Flush the DISCONNECT and pending acks.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

/// Processes one message until it is in Kafka, then acknowledges it. On a
/// transient failure it retries with backoff; if the service stops first the
/// message stays unacknowledged and the broker redelivers it.
async fn handle(
    pipeline: &Pipeline,
    client: &AsyncClient,
    publish: Publish,
    work: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match pipeline.handle_mqtt(&publish.topic, &publish.payload).await {
            Ok(_) => {
                if let Err(e) = client.ack(&publish).await {
                    tracing::warn!(error = %e, "could not send PUBACK; broker will redeliver");
                }
                return;
            }
            Err(e) => {
                pipeline.metrics.transient(e.kind(), &e);
                tokio::select! {
                    () = work.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
