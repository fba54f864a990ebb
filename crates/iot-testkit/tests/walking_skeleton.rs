//! End to end over the real components: MQTT publish -> mqtt-gateway ->
//! Kafka-API broker -> ingest-writer -> PostgreSQL, and bad input -> the
//! dead-letter topic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use iot_proto::Message as _;
use iot_proto::v1::telemetry_client::TelemetryClient;
use iot_proto::v1::{self, QueryReadingsRequest};
use iot_testkit as kit;
use iot_testkit::Platform;
use rust_decimal::Decimal;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_published_reading_reaches_the_database() {
    let p = Platform::start().await;
    let device_id = format!("dev-{}", kit::unique());
    let device = p.create_device(&device_id, "active").await;
    let time = chrono::Utc::now() - chrono::Duration::seconds(5);
    let time = chrono::DateTime::from_timestamp_millis(time.timestamp_millis()).unwrap();
    let payload = format!(r#"{{"value": 23.5, "timestamp": "{}"}}"#, time.to_rfc3339());
    kit::publish_all(&[(
        format!("{}/{device_id}/temperature", p.prefix),
        payload.into_bytes(),
    )])
    .await;

    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&device.id).unwrap();
    if kit::tls_required() {
        // Every connection to the test's database, the services' and
        // this one, is over TLS.
        let plain: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = current_database() AND NOT s.ssl",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(plain, 0, "connections without TLS");
        // And the server takes this run's role over TLS only.
        let without = p.db.replace("sslmode=verify-full", "sslmode=disable");
        assert_ne!(
            without, *p.db,
            "the run's database URL asks for verify-full"
        );
        let refused = iot_db::connect(&without).await.err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("no encryption")),
            "a connection without TLS is refused: {refused:?}"
        );
    }
    let row = kit::eventually(
        "reading in sensor_readings",
        Duration::from_secs(30),
        || async {
            db.query_opt(
                "SELECT time, sensor_name, value FROM sensor_readings WHERE device_id = $1",
                &[&uuid],
            )
            .await
            .unwrap()
        },
    )
    .await;
    let stored_time: chrono::DateTime<chrono::Utc> = row.get(0);
    let sensor: String = row.get(1);
    let value: Decimal = row.get(2);
    assert_eq!(stored_time, time);
    assert_eq!(sensor, "temperature");
    assert_eq!(value, Decimal::from_str("23.5").unwrap());

    // The same reading through the telemetry query API.
    let mut t = TelemetryClient::with_interceptor(
        kit::pki::channel(&format!("http://{}", p.telemetry)).await,
        iot_proto::Scope::Admin,
    );
    let resp = t
        .query_readings(QueryReadingsRequest {
            device_uuid: device.id.clone(),
            sensor_name: "temperature".into(),
            start: Some(iot_proto::timestamp(time - chrono::Duration::minutes(1))),
            end: Some(iot_proto::timestamp(chrono::Utc::now())),
            limit: 10,
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.readings.len(), 1);
    assert_eq!(resp.readings[0].value, "23.5");

    // On Kafka the reading is keyed by the device's platform id.
    let records = kit::read_topic(&p.kafka.readings_topic, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0.as_deref(), Some(device.id.as_bytes()));
    let env = v1::ReadingEnvelope::decode(records[0].1.as_slice()).unwrap();
    assert_eq!(
        (env.device_id.as_str(), env.value.as_str()),
        (device_id.as_str(), "23.5")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_goes_to_the_dead_letter_topic_with_its_reason() {
    let p = Platform::start().await;
    let good = format!("dev-{}", kit::unique());
    let idle = format!("idle-{}", kit::unique());
    let device = p.create_device(&good, "active").await;
    p.create_device(&idle, "inactive").await;
    let pre = &p.prefix;
    // Over the gateway's 64 KiB limit, under the broker's 1 MiB one.
    let big = format!(r#"{{"value": 1, "pad": "{}"}}"#, "x".repeat(70_000)).into_bytes();
    let cases: Vec<(String, &[u8], &str)> = vec![
        (
            format!("{pre}/no-such-device/temperature"),
            br#"{"value": 1}"#,
            "unknown_device",
        ),
        (
            format!("{pre}/{good}/temperature/extra"),
            br#"{"value": 1}"#,
            "bad_topic",
        ),
        (format!("{pre}/{good}"), br#"{"value": 1}"#, "bad_topic"),
        (
            format!("{pre}/{good}/temperature"),
            b"{not json",
            "bad_json",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": "hot"}"#,
            "bad_value",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": 12345678}"#,
            "bad_value",
        ),
        (
            format!("{pre}/{good}/bad sensor"),
            br#"{"value": 1}"#,
            "bad_sensor_name",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": 1, "timestamp": "soon"}"#,
            "bad_timestamp",
        ),
        (
            format!("{pre}/{idle}/temperature"),
            br#"{"value": 1}"#,
            "inactive_device",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": 1, "timestamp": "2001-01-01T00:00:00Z"}"#,
            "timestamp_out_of_range",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": 1, "timestamp": "2999-01-01T00:00:00Z"}"#,
            "timestamp_out_of_range",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": 1e400}"#,
            "bad_value",
        ),
        (
            format!("{pre}/{good}/temperature"),
            br#"{"value": 1, "unit": 7}"#,
            "bad_field",
        ),
        (
            format!("{pre}/{good}/temperature"),
            &big,
            "payload_too_large",
        ),
    ];
    let mut messages: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(t, b, _)| (t.clone(), b.to_vec()))
        .collect();
    // A valid reading after the bad ones: the gateway keeps going.
    messages.push((
        format!("{pre}/{good}/temperature"),
        br#"{"value": 21.25}"#.to_vec(),
    ));
    kit::publish_all(&messages).await;

    let letters = kit::read_topic(
        &p.kafka.dead_letter_topic,
        cases.len(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        letters.len(),
        cases.len(),
        "one dead letter per bad message"
    );
    let mut got: Vec<(String, String, Vec<u8>)> = letters
        .iter()
        .map(|(_, bytes)| {
            let l = v1::DeadLetter::decode(bytes.as_slice()).unwrap();
            assert_eq!(l.service, "mqtt-gateway");
            assert!(!l.detail.is_empty());
            assert!(l.rejected_at.is_some());
            (l.origin, l.reason, l.payload)
        })
        .collect();
    let mut want: Vec<(String, String, Vec<u8>)> = cases
        .iter()
        .map(|(t, b, r)| (t.clone(), (*r).to_owned(), b.to_vec()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // Counted per reason, every one of them.
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (_, _, reason) in &cases {
        *counts.entry(reason).or_default() += 1;
    }
    for (reason, n) in counts {
        let series = format!("iot_gateway_readings_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(
            kit::metric(p.gateway_admin, &series).await,
            Some(n as u64),
            "{series}"
        );
    }

    // The valid reading still lands; nothing else was written.
    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&device.id).unwrap();
    let v: Decimal = kit::eventually("valid reading stored", Duration::from_secs(30), || async {
        db.query_opt(
            "SELECT value FROM sensor_readings WHERE device_id = $1",
            &[&uuid],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
    })
    .await;
    assert_eq!(v, Decimal::from_str("21.25").unwrap());
    let total: i64 = db
        .query_one("SELECT count(*) FROM sensor_readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writer_ignores_redelivered_readings_and_dead_letters_poison() {
    let p = Platform::start().await;
    let device = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let producer = p.kafka.producer("test").unwrap();
    let t = chrono::Utc::now();
    let env = v1::ReadingEnvelope {
        device_uuid: device.id.clone(),
        device_id: device.device_id.clone(),
        sensor_name: "humidity".into(),
        value: "40.5".into(),
        time: Some(iot_proto::timestamp(t)),
        received_at: Some(iot_proto::timestamp(t)),
        source: "test".into(),
        ..Default::default()
    };
    let bytes = env.encode_to_vec();
    // The same reading twice (a redelivery), and one undecodable record.
    for payload in [&bytes[..], &bytes[..], b"\x00garbage\xff"] {
        producer
            .send(
                iot_kafka::rdkafka::producer::FutureRecord::to(&p.kafka.readings_topic)
                    .key(device.id.as_bytes())
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let letters = kit::read_topic(&p.kafka.dead_letter_topic, 1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1);
    let l = v1::DeadLetter::decode(letters[0].1.as_slice()).unwrap();
    assert_eq!(
        (l.reason.as_str(), l.service.as_str()),
        ("undecodable", "ingest-writer")
    );
    assert_eq!(l.payload, b"\x00garbage\xff");

    let db = kit::connect(&p.db).await;
    let uuid = uuid::Uuid::parse_str(&device.id).unwrap();
    kit::eventually("reading stored", Duration::from_secs(30), || async {
        (kit::device_rows(&db, uuid).await > 0).then_some(())
    })
    .await;
    // The writer saw the redelivery and ignored it.
    kit::eventually("duplicate counted", Duration::from_secs(30), || async {
        let n = kit::metric(p.writer_admin, "iot_writer_duplicates_ignored_total").await;
        (n == Some(1)).then_some(())
    })
    .await;
    let n = kit::device_rows(&db, uuid).await;
    assert_eq!(n, 1);
    p.stop().await;
}
