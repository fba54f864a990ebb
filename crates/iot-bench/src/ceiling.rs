//! The broker's own ceiling: the ingest benchmark's simulator publishing
//! QoS 1 single readings straight to one plain subscriber, with no
//! platform in between, on the same machine and broker. End-to-end
//! throughput is reported against it, so that what the platform costs is
//! told apart from what the broker and the machine allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{procs, unique};

/// Messages per second the subscriber received while `args` (the
/// simulator, whose topics the subscriber takes as `{topic_prefix}/#`)
/// published, and the CPU each message cost in each process.
pub async fn measure(mqtt_port: u16, args: iotctl::simulate::Args) -> (f64, crate::PerReading) {
    let mut opts = MqttOptions::new(format!("ceiling-{}", unique()), "127.0.0.1", mqtt_port);
    let (user, password) = procs::account("gateway");
    opts.set_credentials(user, password)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let (r, l) = (received.clone(), last.clone());
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    // rumqttc acknowledges each QoS 1 message as it arrives: the plain
    // subscriber does no work beyond receiving.
    let events = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    r.fetch_add(1, Ordering::Relaxed);
                    *l.lock().unwrap() = Instant::now();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("the ceiling's subscriber lost its connection: {e}"),
            }
        }
    });
    client
        .subscribe(format!("{}/#", args.topic_prefix), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("SUBACK")
        .unwrap();
    let start = Instant::now();
    let cpu = crate::CpuShares::start(&[]);
    let s = iotctl::simulate::simulate(args).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < s.acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = received.load(Ordering::Relaxed);
    assert!(
        got >= s.acked,
        "the plain subscriber received {got} of the {} messages the broker accepted",
        s.acked
    );
    let took = *last.lock().unwrap() - start;
    let per_reading = cpu.print_per_reading("broker ceiling", took, got);
    events.abort();
    let _ = client.disconnect().await;
    println!(
        "  broker ceiling: {got} QoS 1 messages to a plain subscriber in {:.1} s",
        took.as_secs_f64()
    );
    (got as f64 / took.as_secs_f64(), per_reading)
}
