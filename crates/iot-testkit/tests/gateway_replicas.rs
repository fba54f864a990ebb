//! Two gateway replicas split the devices by hash, each on a durable
//! subscription of its own: every reading is stored once, each replica
//! handles some devices and acknowledges the others' messages unprocessed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_testkit as kit;
use iot_testkit::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_split_the_devices_and_store_each_reading_once() {
    let mut p = Platform::start_tuned(kit::kafka_config(), |c| {
        c.mqtt.replica = 0;
        c.mqtt.replicas = 2;
    })
    .await;
    // The second replica: its own client id (and so its own session), the
    // other half of the devices.
    let mut second = p.gateway_config.clone();
    second.mqtt.client_id = format!("{}-1", second.mqtt.client_id);
    second.mqtt.replica = 1;
    let g = mqtt_gateway::start(second, p.shutdown.child_token())
        .await
        .unwrap();
    let second_admin = g.admin_addr;
    p.tasks.push(tokio::spawn(g.wait()));
    kit::eventually("second replica ready", Duration::from_secs(30), || async {
        (kit::http_get(second_admin, "/readyz").await == "ready").then_some(())
    })
    .await;

    let devices = 20;
    let mut messages = Vec::new();
    for i in 0..devices {
        let id = format!("rep-{i}-{}", kit::unique());
        p.create_device(&id, "active").await;
        for v in 0..5 {
            messages.push((
                format!("{}/{id}/temperature", p.prefix),
                format!(
                    r#"{{"value": {v}, "timestamp": "{}"}}"#,
                    chrono::Utc::now().to_rfc3339()
                )
                .into_bytes(),
            ));
            // Distinct timestamps per device.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    kit::publish_all(&messages).await;
    let db = kit::connect(&p.db).await;
    let total = messages.len() as i64;
    kit::eventually("every reading stored", Duration::from_secs(30), || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM sensor_readings", &[])
            .await
            .unwrap()
            .get(0);
        (n >= total).then_some(())
    })
    .await;
    // Nothing stored twice (the unique key would hide it; the rollups and
    // the gateways' own counts would not). The rollups count what is sealed,
    // raw rows the rest.
    let counted: i64 = db
        .query_one(
            "SELECT (SELECT COALESCE(sum(h.readings), 0) FROM sensor_readings_1h h, rollup_watermark w
                     WHERE h.bucket < w.sealed_until)::int8
                  + (SELECT count(*) FROM sensor_readings r, rollup_watermark w
                     WHERE r.time >= w.sealed_until)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, total);
    let accepted = "iot_gateway_readings_accepted_total{source=\"mqtt\"}";
    let others = "iot_gateway_mqtt_other_replicas_messages_total";
    let a = [
        kit::metric(p.gateway_admin, accepted).await.unwrap_or(0),
        kit::metric(second_admin, accepted).await.unwrap_or(0),
    ];
    let o = [
        kit::metric(p.gateway_admin, others).await.unwrap_or(0),
        kit::metric(second_admin, others).await.unwrap_or(0),
    ];
    assert_eq!(a[0] + a[1], total as u64, "accepted {a:?}");
    assert!(a[0] > 0 && a[1] > 0, "both replicas handle devices: {a:?}");
    // Each replica saw every message: its own, and the other's unprocessed.
    assert_eq!(a[0] + o[0], total as u64, "replica 0: {a:?} {o:?}");
    assert_eq!(a[1] + o[1], total as u64, "replica 1: {a:?} {o:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_the_broker_took_but_never_delivered_raise_the_alarm() {
    // A low threshold (the default is 1000) so that a few hundred messages
    // the gateway never gets show, and a short hold (the default is 120 s,
    // past the bursts a gateway works through): the rule is the same at any
    // hold, and `broker_check`'s unit tests show that a backlog that drains
    // within it raises nothing.
    let p = Platform::start_tuned(kit::kafka_config(), |c| {
        c.mqtt.unreceived_alarm = 100;
        c.mqtt.unreceived_alarm_after_secs = 3;
    })
    .await;
    // The balance counts from the gateway's first sample of the broker's
    // count: messages published before it would be part of the baseline.
    kit::eventually("first broker sample", Duration::from_secs(30), || async {
        let body = kit::http_get(p.gateway_admin, "/metrics").await;
        iot_telemetry::samples(&body, "iot_gateway_broker_received_messages")
            .first()
            .is_some_and(|v| *v > 0.0)
            .then_some(())
    })
    .await;
    // The broker takes these, acknowledges them, and delivers them to no
    // gateway: the same, seen from the gateway, as messages a broker loses.
    let elsewhere: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("{}/elsewhere/{i}", p.root), b"{}".to_vec()))
        .collect();
    kit::publish_all(&elsewhere).await;
    // Mosquitto publishes its $SYS counts every 10 s; the 300 may straddle
    // two samples, and other tests' publishes on the same broker count too:
    // at least the 300, with the alarm up. Both from one scrape: a sample
    // arriving between two scrapes would pair an old alarm with a new count.
    kit::eventually("alarm raised", Duration::from_secs(45), || async {
        let body = kit::http_get(p.gateway_admin, "/metrics").await;
        let value = |series: &str| {
            iot_telemetry::samples(&body, series)
                .first()
                .map(|v| *v as u64)
        };
        let alarm = value("iot_gateway_broker_unreceived_alarm")?;
        let unreceived = value("iot_gateway_broker_unreceived_messages")?;
        (alarm == 1 && unreceived >= 300).then_some(())
    })
    .await;
    p.stop().await;
}
