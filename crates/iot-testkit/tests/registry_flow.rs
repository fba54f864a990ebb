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
    let directory = directory(&p, 100_000);
    let real = [
        Uuid::parse_str(&a.id).unwrap(),
        Uuid::parse_str(&b.id).unwrap(),
    ];
    for uuid in real {
        directory.record_activity(&known(uuid), ["temperature"].into_iter());
    }
    for _ in 0..99_998 {
        directory.record_activity(&known(Uuid::new_v4()), ["temperature"].into_iter());
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

/// A device as the gateway's directory knows it, by its UUID alone.
fn known(uuid: Uuid) -> std::sync::Arc<mqtt_gateway::directory::DeviceInfo> {
    std::sync::Arc::new(mqtt_gateway::directory::DeviceInfo::new(
        uuid,
        uuid.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_heard_again_and_again_is_recorded_once_a_hold_and_its_last_word_too() {
    let p = Platform::start().await;
    let d = p
        .create_device(&format!("hold-{}", kit::unique()), "active")
        .await;
    // Flushes are called by hand here; a 2 s hold keeps the test short
    // (the shipped cap is a minute, well inside a 5-minute silence limit).
    let directory =
        directory(&p, 1000).holding_heartbeats(mqtt_gateway::directory::HeartbeatHold {
            flush: Duration::from_millis(100),
            max: Duration::from_secs(2),
        });
    let device = known(Uuid::parse_str(&d.id).unwrap());
    let mut registry = p.registry_client(Scope::Admin).await;
    let mut heartbeat = async || {
        let dev = registry
            .get_device(GetDeviceRequest { id: d.id.clone() })
            .await
            .unwrap()
            .into_inner();
        dev.last_heartbeat
            .as_ref()
            .and_then(iot_proto::from_timestamp)
    };
    // First heard: recorded at once.
    directory.record_activity(&device, std::iter::empty());
    assert_eq!(directory.flush_activity().await.unwrap(), 1);
    let first = heartbeat().await.expect("recorded");
    // Heard again within the hold: held back, flush after flush.
    for _ in 0..3 {
        directory.record_activity(&device, std::iter::empty());
        assert_eq!(directory.flush_activity().await.unwrap(), 0);
    }
    assert_eq!(heartbeat().await, Some(first));
    // A new sensor is not held back.
    directory.record_activity(&device, ["humidity"].into_iter());
    assert_eq!(directory.flush_activity().await.unwrap(), 1);
    directory.record_activity(&device, ["humidity"].into_iter());
    let last_heard = chrono::Utc::now();
    assert_eq!(directory.flush_activity().await.unwrap(), 0);
    // Quiet since: held until its hold has passed, then its last word goes,
    // heard since or not.
    for _ in 0..3 {
        assert_eq!(directory.flush_activity().await.unwrap(), 0);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(directory.flush_activity().await.unwrap(), 1);
    let quiet = heartbeat().await.unwrap();
    assert!(
        (quiet - last_heard).num_milliseconds().abs() < 50,
        "{quiet} for {last_heard}"
    );
    assert_eq!(directory.flush_activity().await.unwrap(), 0);
    // Heard again and again: one write a hold, the latest heartbeat.
    directory.record_activity(&device, std::iter::empty());
    assert_eq!(directory.flush_activity().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    directory.record_activity(&device, std::iter::empty());
    assert_eq!(directory.flush_activity().await.unwrap(), 1);
    let due = heartbeat().await.unwrap();
    assert!(due > quiet);
    // The flush's statement sets `online_until` itself (the row trigger
    // stands aside): the same moment the trigger's function names, with
    // the device's own interval.
    let db = kit::connect(&p.db).await;
    let agrees = async || -> bool {
        db.query_one(
            "SELECT h.online_until = device_online_until(h.last_heartbeat, h.disconnected_at, c.read_interval)
                    AND h.online_until > now()
             FROM device_heartbeats h LEFT JOIN device_config c ON c.device_id = h.device_id
             WHERE h.device_id = $1",
            &[&device.uuid],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert!(agrees().await);
    db.execute(
        "UPDATE device_config SET read_interval = 20 WHERE device_id = $1",
        &[&device.uuid],
    )
    .await
    .unwrap();
    assert!(agrees().await);
    // Held back when the process stops: the last flush sends it anyway.
    directory.record_activity(&device, std::iter::empty());
    assert_eq!(directory.flush_activity().await.unwrap(), 0);
    assert_eq!(directory.flush_all_activity().await.unwrap(), 1);
    assert!(heartbeat().await.unwrap() > due);
    assert!(agrees().await);
    p.stop().await;
}

/// mqtt-gateway's directory on `p`'s registry, holding `max_entries`
/// devices.
fn directory(p: &Platform, max_entries: u64) -> mqtt_gateway::directory::Directory {
    mqtt_gateway::directory::Directory::new(
        &format!("http://{}", p.registry),
        &kit::pki::grpc_tls(mqtt_gateway::SERVICE),
        Duration::from_secs(60),
        Duration::from_secs(5),
        max_entries,
    )
    .unwrap()
}
