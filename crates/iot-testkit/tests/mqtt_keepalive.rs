//! mqtt-gateway's keep-alive: a broker that answers PINGREQ late while it
//! keeps delivering (one working through a backlog for the gateway) does
//! not cost the gateway its connection, and a link with nothing coming in
//! still ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iot_testkit as kit;
use iot_testkit::{MqttListener, Platform};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TCP proxy to the plain MQTT listener that passes every packet but the
/// broker's PINGRESPs, and counts the connections made through it.
struct PingrespEater {
    port: u16,
    connections: Arc<AtomicUsize>,
    eaten: Arc<AtomicUsize>,
}

impl PingrespEater {
    async fn start() -> Self {
        let (host, upstream) = MqttListener::Plain.addr();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let eaten = Arc::new(AtomicUsize::new(0));
        let (made, gone) = (connections.clone(), eaten.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect((host.as_str(), upstream)).await
                else {
                    continue;
                };
                made.fetch_add(1, Ordering::SeqCst);
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_broker, mut to_broker) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
                    let _ = to_broker.shutdown().await;
                });
                let gone = gone.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_broker.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        let mut out = Vec::new();
                        while let Some(len) = packet_len(&pending) {
                            let packet: Vec<u8> = pending.drain(..len).collect();
                            // PINGRESP: type 13, no flags, nothing after.
                            if packet == [0xD0, 0x00] {
                                gone.fetch_add(1, Ordering::SeqCst);
                            } else {
                                out.extend(packet);
                            }
                        }
                        if to_client.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown().await;
                });
            }
        });
        Self {
            port,
            connections,
            eaten,
        }
    }
}

/// The length of the whole MQTT packet at the start of `b`, once all of
/// it is there: a type byte, then its remaining length in 1 to 4 bytes.
fn packet_len(b: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (b.len() >= len).then_some(len);
        }
    }
    panic!("a remaining length of more than 4 bytes: not MQTT");
}

/// The gateway's keep-alive is 5 s here, the shortest it takes, so that
/// the test takes seconds. The rule does not depend on the interval (a
/// turn asks only whether any packet came since the last PINGREQ), and at
/// the shipped 30 s `cargo xtask bench scale` runs the gateway through a
/// backlog of hundreds of thousands of messages without a reconnect. Its
/// broker check is off here because the broker's `$SYS` samples are
/// traffic too, and the test's last part needs a link with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_delivers_is_kept_without_pingresps() {
    let eater = PingrespEater::start().await;
    let p = Platform::start_tuned_on(kit::kafka_config(), MqttListener::Plain, |c| {
        c.mqtt.host = "127.0.0.1".into();
        c.mqtt.port = eater.port;
        c.mqtt.keep_alive_secs = 5;
        c.mqtt.broker_received_topic = String::new();
    })
    .await;
    let device_id = format!("dev-{}", kit::unique());
    let device = p.create_device(&device_id, "active").await;
    let topic = format!("{}/{device_id}/temperature", p.prefix);
    // A reading every 200 ms for 16 s: three keep-alive turns and more,
    // none of whose PINGREQs is answered.
    let start = Instant::now();
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut sent = 0i64;
    while start.elapsed() < Duration::from_secs(16) {
        let time = t0 + chrono::Duration::seconds(sent);
        let payload = format!(
            r#"{{"value": {sent}, "timestamp": "{}"}}"#,
            time.to_rfc3339()
        );
        kit::publish_all_on(
            MqttListener::Plain,
            &[(topic.clone(), payload.into_bytes())],
        )
        .await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&device.id).unwrap();
    kit::eventually("every reading stored", Duration::from_secs(30), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM sensor_readings WHERE device_id = $1",
                &[&uuid],
            )
            .await
            .unwrap()
            .get(0);
        (n == sent).then_some(())
    })
    .await;
    assert!(
        eater.eaten.load(Ordering::SeqCst) >= 2,
        "the gateway pinged"
    );
    assert_eq!(
        eater.connections.load(Ordering::SeqCst),
        1,
        "the gateway kept its one connection"
    );
    // Nothing comes in any more: two keep-alive turns end the link.
    kit::eventually("a silent link ends", Duration::from_secs(30), || async {
        (eater.connections.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    p.stop().await;
}
