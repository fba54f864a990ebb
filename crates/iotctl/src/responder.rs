//! Simulated devices that answer commands: each connects with its own
//! broker account (a device may read only its own commands), subscribes to
//! `{commands_root}/{device}/+`, acknowledges receipt and answers `ok` with
//! the command's name and payload echoed. Used by `iotctl simulate
//! --answer-commands` and the command round-trip benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::task::JoinSet;

/// Where and how the devices connect.
#[derive(Debug, Clone)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: iot_mqtt::TlsConfig,
    /// The registry's `broker.commands_root`.
    pub commands_root: String,
}

/// What the responders did.
#[derive(Debug, Default)]
pub struct Answered {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
}

/// One responder per `(username, password)` until `stop` turns true;
/// returns once every one is subscribed (or failed to be, counted in
/// `errors`).
pub async fn start(
    broker: &Broker,
    devices: Vec<(String, String)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(JoinSet<()>, Arc<Answered>)> {
    let transport = broker.tls.transport()?;
    let answered = Arc::new(Answered::default());
    let mut set = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(devices.len().max(1));
    let n = devices.len();
    for (user, password) in devices {
        let mut opts = MqttOptions::new(
            format!("{user}-responder"),
            broker.host.clone(),
            broker.port,
        );
        opts.set_credentials(&user, &password)
            .set_keep_alive(Duration::from_secs(30))
            .set_transport(transport.clone());
        let filter = format!("{}/{user}/+", broker.commands_root);
        let (answered, mut stop, ready) = (answered.clone(), stop.clone(), ready_tx.clone());
        set.spawn(async move {
            let (client, mut events) = AsyncClient::new(opts, 16);
            let mut told = false;
            loop {
                let ev = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    ev = events.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if client
                            .subscribe(filter.clone(), QoS::AtLeastOnce)
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) if !told => {
                        told = true;
                        let _ = ready.send(()).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        answer(&client, &p, &answered).await;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        answered.errors.fetch_add(1, Ordering::Relaxed);
                        if !told {
                            told = true;
                            let _ = ready.send(()).await;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            let _ = client.disconnect().await;
        });
    }
    drop(ready_tx);
    for _ in 0..n {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    Ok((set, answered))
}

/// Acknowledges receipt, then answers `ok`, on the response topic the
/// command names (MQTT 5) or its topic plus `/result` (the convention that
/// 3.1.1 devices use).
async fn answer(client: &AsyncClient, p: &rumqttc::v5::mqttbytes::v5::Publish, n: &Answered) {
    let topic = String::from_utf8_lossy(&p.topic).into_owned();
    let props = p.properties.as_ref();
    let response = props
        .and_then(|p| p.response_topic.clone())
        .unwrap_or_else(|| format!("{topic}/result"));
    let correlation = props.and_then(|p| p.correlation_data.clone());
    let command: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
    let body = serde_json::json!({"name": command["name"], "echo": command["payload"]});
    for reply in [
        serde_json::json!({"status": "received"}),
        serde_json::json!({"status": "ok", "body": body}),
    ] {
        let props = PublishProperties {
            correlation_data: correlation.clone(),
            ..Default::default()
        };
        if client
            .publish_with_properties(
                response.clone(),
                QoS::AtLeastOnce,
                false,
                reply.to_string(),
                props,
            )
            .await
            .is_err()
        {
            n.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    n.commands.fetch_add(1, Ordering::Relaxed);
}
