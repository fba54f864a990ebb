//! The registry and the readings flow: device changes reach a running
//! gateway at once (not at its cache TTL), and heartbeats and first-seen
//! sensors come back from the readings, coalesced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, GetDeviceRequest};
use iot_testkit as kit;
use iot_testkit::Platform;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_status_change_reaches_the_running_gateway_within_seconds() {
    // A cache TTL of an hour: only the change stream can make the gateway
    // notice in time.
    let p = Platform::start_tuned(kit::kafka_config(), |c| {
        c.device_cache_ttl_secs = 3600;
    })
    .await;
    let device_id = format!("dev-{}", kit::unique());
    let dev = p.create_device(&device_id, "active").await;
    let topic = format!("{}/{device_id}/temperature", p.prefix);
    kit::publish_all(&[(topic.clone(), br#"{"value": 20}"#.to_vec())]).await;
    let db = kit::connect(&p.db).await;
    let uuid = Uuid::parse_str(&dev.id).unwrap();
    kit::eventually("first reading stored", Duration::from_secs(20), || async {
        (kit::device_rows(&db, uuid).await == 1).then_some(())
    })
    .await;

    let mut registry = p.registry_client(Scope::Admin).await;
    registry
        .update_device(v1::UpdateDeviceRequest {
            id: dev.id.clone(),
            status: Some("inactive".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let changed = std::time::Instant::now();
    // Published until the gateway refuses the device as inactive.
    let series = r#"iot_gateway_readings_rejected_total{reason="inactive_device"}"#;
    kit::eventually("refused as inactive", Duration::from_secs(10), || {
        let topic = topic.clone();
        async move {
            kit::publish_all(&[(topic, br#"{"value": 21}"#.to_vec())]).await;
            let n = kit::metric(p.gateway_admin, series).await.unwrap_or(0);
            (n > 0).then_some(())
        }
    })
    .await;
    assert!(changed.elapsed() < Duration::from_secs(10));
    let letters = kit::dead_letters(&p.kafka.dead_letter_topic, 1, Duration::from_secs(10)).await;
    assert_eq!(letters[0].reason, "inactive_device");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_keep_the_heartbeat_and_record_undeclared_sensors() {
    // The shipped activity flush (every 5 s): the heartbeat must arrive
    // within the test's wait as it does in production.
    let p = Platform::start().await;
    let device_id = format!("dev-{}", kit::unique());
    let dev = p.create_device(&device_id, "active").await;
    let mut registry = p.registry_client(Scope::Admin).await;
    let summary = registry
        .device_status_summary(v1::DeviceStatusSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (summary.active, summary.offline),
        (1, 1),
        "never heard from"
    );

    let messages: Vec<(String, Vec<u8>)> = (0..20)
        .flat_map(|i| {
            ["humidity", "co2"].map(|s| {
                (
                    format!("{}/{device_id}/{s}", p.prefix),
                    format!(r#"{{"value": {i}}}"#).into_bytes(),
                )
            })
        })
        .collect();
    kit::publish_all(&messages).await;
    let seen = kit::eventually("heartbeat and sensors", Duration::from_secs(20), || {
        let mut r = registry.clone();
        let id = dev.id.clone();
        async move {
            let d = r
                .get_device(GetDeviceRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            let sensors = r
                .list_sensors(GetDeviceRequest { id })
                .await
                .unwrap()
                .into_inner()
                .sensors;
            (d.last_heartbeat.is_some() && sensors.len() == 2).then_some(sensors)
        }
    })
    .await;
    let names: Vec<_> = seen.iter().map(|s| s.sensor_name.as_str()).collect();
    assert_eq!(names, ["co2", "humidity"]);
    let summary = registry
        .device_status_summary(v1::DeviceStatusSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.active, summary.offline), (1, 0));
    // 40 readings, a handful of registry writes: the gateway's reports.
    let db = kit::connect(&p.db).await;
    let heartbeat_writes: i64 = db
        .query_one(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'devices'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        heartbeat_writes < 20,
        "{heartbeat_writes} updates for 40 readings"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_of_a_hundred_thousand_devices_go_in_one_flush() {
    let p = Platform::start().await;
    // Two real devices among 100,000 heartbeats: the window is far above
    // one gRPC message's limit, so it only goes through in chunks.
    let a = p
        .create_device(&format!("hb-{}", kit::unique()), "active")
        .await;
    let b = p
        .create_device(&format!("hb-{}", kit::unique()), "active")
        .await;
    let directory = mqtt_gateway::directory::Directory::new(
        &format!("http://{}", p.registry),
        &kit::pki::grpc_tls(mqtt_gateway::SERVICE),
        Duration::from_secs(60),
        Duration::from_secs(5),
        100_000,
    )
    .unwrap();
    let real = [
        Uuid::parse_str(&a.id).unwrap(),
        Uuid::parse_str(&b.id).unwrap(),
    ];
    for uuid in real {
        directory.record_activity(uuid, ["temperature"].into_iter());
    }
    for _ in 0..99_998 {
        directory.record_activity(Uuid::new_v4(), ["temperature"].into_iter());
    }
    assert_eq!(directory.flush_activity().await.unwrap(), 100_000);
    // Nothing is left to send, and the real devices were seen.
    assert_eq!(directory.flush_activity().await.unwrap(), 0);
    let mut registry = p.registry_client(Scope::Admin).await;
    for uuid in real {
        let dev = registry
            .get_device(GetDeviceRequest {
                id: uuid.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(dev.last_heartbeat.is_some(), "{dev:?}");
    }
    p.stop().await;
}
