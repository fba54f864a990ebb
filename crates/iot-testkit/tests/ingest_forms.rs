//! The three payload forms over MQTT, and the HTTP and gRPC doors, on the
//! real components.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use iot_proto::v1::ingest_client::IngestClient;
use iot_proto::v1::{IngestReading, IngestReadingsRequest};
use iot_testkit as kit;
use iot_testkit::Platform;
use rust_decimal::Decimal;
use uuid::Uuid;

/// Waits until `n` rows of the device are stored and returns (sensor, value) sorted.
async fn rows(p: &Platform, device: &str, n: usize) -> Vec<(String, Decimal)> {
    let db = kit::connect(&p.db).await;
    let uuid = Uuid::parse_str(device).unwrap();
    kit::eventually("rows stored", Duration::from_secs(30), || async {
        let rows = db
            .query(
                "SELECT sensor_name, value FROM sensor_readings WHERE device_id = $1 ORDER BY sensor_name, value",
                &[&uuid],
            )
            .await
            .unwrap();
        (rows.len() >= n).then(|| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .await
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// The `Authorization` header of the device's issued MQTT credentials,
/// which the HTTP door takes as HTTP Basic.
fn credentials_of(device: &iot_proto::v1::Device) -> (&'static str, String) {
    let c = device.credentials.as_ref().expect("issued credentials");
    let request = reqwest::Client::new()
        .post("http://unused.invalid/")
        .basic_auth(&c.username, Some(&c.password))
        .build()
        .unwrap();
    let value = request.headers()[reqwest::header::AUTHORIZATION]
        .to_str()
        .unwrap();
    ("Authorization", value.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_and_senml_messages_over_mqtt() {
    let p = Platform::start().await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let now = chrono::Utc::now();
    let batch = format!(
        r#"{{"readings": [
            {{"sensor": "temperature", "value": 21.5, "timestamp": "{t1}"}},
            {{"sensor": "temperature", "value": "warm"}},
            {{"sensor": "humidity", "value": 40, "unit": "%", "timestamp": "{t1}"}},
            {{"sensor": "pressure", "value": 1013.25, "timestamp": "{t2}"}}
        ]}}"#,
        t1 = (now - chrono::Duration::seconds(10)).to_rfc3339(),
        t2 = (now - chrono::Duration::seconds(9)).to_rfc3339(),
    );
    let senml = format!(
        r#"[{{"bn": "boiler.", "bt": {bt}, "bu": "Cel", "n": "flow_temp", "v": 55.5}},
            {{"n": "return_temp", "v": 40.25, "t": 1}}]"#,
        bt = now.timestamp() - 20
    );
    kit::publish_all(&[
        (
            format!("{}/{}", p.batch_prefix, dev.device_id),
            batch.clone().into_bytes(),
        ),
        (
            format!("{}/{}", p.senml_prefix, dev.device_id),
            senml.into_bytes(),
        ),
    ])
    .await;
    let got = rows(&p, &dev.id, 5).await;
    assert_eq!(
        got,
        vec![
            ("boiler.flow_temp".into(), d("55.5")),
            ("boiler.return_temp".into(), d("40.25")),
            ("humidity".into(), d("40")),
            ("pressure".into(), d("1013.25")),
            ("temperature".into(), d("21.5")),
        ]
    );
    // The one bad entry is dead-lettered with its index and the whole message.
    let letters = kit::dead_letters(&p.kafka.dead_letter_topic, 1, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "bad_value");
    assert!(
        letters[0].detail.starts_with("readings[1]:"),
        "{}",
        letters[0].detail
    );
    assert_eq!(letters[0].payload, batch.as_bytes());
    p.stop().await;
}

/// RFC 8428: a pack of an unknown version or with a must-understand field
/// is refused whole with its reason; a record named by its base name alone
/// is a reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn senml_packs_the_rfc_forbids_reading_are_dead_lettered_whole() {
    let p = Platform::start().await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let topic = format!("{}/{}", p.senml_prefix, dev.device_id);
    let t = chrono::Utc::now().timestamp() - 5;
    let newer = format!(r#"[{{"bver": 11, "bt": {t}, "n": "temperature", "v": 1}}]"#);
    let extended = format!(r#"[{{"bt": {t}, "n": "temperature", "v": 2, "rollover_": 7}}]"#);
    let base_named = format!(r#"[{{"bver": 10, "bn": "temperature", "bt": {t}, "v": 23.5}}]"#);
    kit::publish_all(&[
        (topic.clone(), newer.clone().into_bytes()),
        (topic.clone(), extended.clone().into_bytes()),
        (topic.clone(), base_named.into_bytes()),
    ])
    .await;
    assert_eq!(
        rows(&p, &dev.id, 1).await,
        vec![("temperature".into(), d("23.5"))]
    );
    let mut letters =
        kit::dead_letters(&p.kafka.dead_letter_topic, 2, Duration::from_secs(20)).await;
    letters.sort_by(|a, b| a.payload.cmp(&b.payload));
    let got: Vec<_> = letters
        .iter()
        .map(|l| (l.reason.as_str(), l.payload.as_slice()))
        .collect();
    let mut want = vec![
        ("unsupported_senml", newer.as_bytes()),
        ("unsupported_senml", extended.as_bytes()),
    ];
    want.sort_by(|a, b| a.1.cmp(b.1));
    assert_eq!(got, want);
    assert!(letters.iter().any(|l| l.detail.contains("\"bver\") 11")));
    assert!(letters.iter().any(|l| l.detail.contains("\"rollover_\"")));
    let series = r#"iot_gateway_readings_rejected_total{reason="unsupported_senml"}"#;
    assert_eq!(kit::metric(p.gateway_admin, series).await, Some(2));
    // Nothing of either refused pack was stored.
    let db = kit::connect(&p.db).await;
    assert_eq!(
        kit::device_rows(&db, Uuid::parse_str(&dev.id).unwrap()).await,
        1
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_door_answers_with_what_it_accepted() {
    let p = Platform::start().await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let path = format!("/v1/devices/{}/readings", dev.device_id);
    let (key, auth) = credentials_of(&dev);
    let auth = &[(key, auth.as_str())];
    let (status, body) = kit::http_post_with(
        p.gateway_http,
        &path,
        "application/json",
        auth,
        br#"[{"sensor": "temperature", "value": 19.75}, {"sensor": "bad name", "value": 1}]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["accepted"], 1);
    assert_eq!(json["rejected"][0]["index"], 1);
    assert_eq!(json["rejected"][0]["reason"], "bad_sensor_name");

    // SenML by content type, addressed by the platform UUID.
    let (status, body) = kit::http_post_with(
        p.gateway_http,
        &format!("/v1/devices/{}/readings", dev.id),
        "application/senml+json",
        auth,
        br#"[{"n": "humidity", "v": 51}]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A device posts only for itself (tests/http_auth.rs has the rest);
    // such a refusal is no dead letter.
    let (status, body) = kit::http_post_with(
        p.gateway_http,
        "/v1/devices/nobody/readings",
        "application/json",
        auth,
        br#"{"sensor": "t", "value": 1}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    let (status, body) =
        kit::http_post_with(p.gateway_http, &path, "application/json", auth, b"{oops").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_json"), "{body}");

    assert_eq!(
        rows(&p, &dev.id, 2).await,
        vec![
            ("humidity".into(), d("51")),
            ("temperature".into(), d("19.75"))
        ]
    );
    let letters = kit::dead_letters(&p.kafka.dead_letter_topic, 2, Duration::from_secs(20)).await;
    let mut reasons: Vec<_> = letters.iter().map(|l| l.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["bad_json", "bad_sensor_name"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_door_uses_the_same_validation() {
    let p = Platform::start().await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let mut c = IngestClient::new(kit::pki::channel(&format!("http://{}", p.gateway_grpc)).await);
    let reading = |sensor: &str, value: &str| IngestReading {
        sensor_name: sensor.into(),
        value: value.into(),
        ..Default::default()
    };
    let resp = c
        .ingest_readings(IngestReadingsRequest {
            device: dev.device_id.clone(),
            readings: vec![
                reading("temperature", "23.5"),
                reading("temperature", "1e9"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 1);
    assert_eq!(resp.rejected.len(), 1);
    assert_eq!(
        (resp.rejected[0].index, resp.rejected[0].reason.as_str()),
        (1, "bad_value")
    );

    let err = c
        .ingest_readings(IngestReadingsRequest {
            device: "nobody".into(),
            readings: vec![reading("t", "1")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .ingest_readings(IngestReadingsRequest {
            device: dev.id.clone(),
            readings: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    assert_eq!(
        rows(&p, &dev.id, 1).await,
        vec![("temperature".into(), d("23.5"))]
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_far_larger_than_the_in_flight_window_is_stored_whole() {
    // A small window: the broker must hold the rest, and the gateway must
    // keep acknowledging while it works (a stall here once lost liveness).
    let p = Platform::start_tuned(kit::kafka_config(), |c| c.max_in_flight = 8).await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(30);
    let messages: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| {
            let t = t0 + chrono::Duration::milliseconds(i);
            (
                format!("{}/{}/temperature", p.prefix, dev.device_id),
                format!(
                    r#"{{"value": {}, "timestamp": "{}"}}"#,
                    i % 100,
                    t.to_rfc3339()
                )
                .into_bytes(),
            )
        })
        .collect();
    kit::publish_all(&messages).await;
    let db = kit::connect(&p.db).await;
    let uuid = Uuid::parse_str(&dev.id).unwrap();
    kit::eventually("all 3000 stored", Duration::from_secs(120), || async {
        (kit::device_rows(&db, uuid).await == 3000).then_some(())
    })
    .await;
    let m = |series| kit::metric(p.gateway_admin, series);
    assert_eq!(m("iot_gateway_mqtt_acks_total").await, Some(3000));
    assert_eq!(m("iot_gateway_mqtt_in_flight_messages").await, Some(0));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_producer_queue_makes_readings_wait_not_fail() {
    // Room for one record in the producer's local queue: every other
    // reading of the batch finds it full and must wait for room.
    let p = Platform::start_tuned(kit::kafka_config(), |c| {
        c.kafka
            .properties
            .insert("queue.buffering.max.messages".into(), "1".into());
    })
    .await;
    let dev = p
        .create_device(&format!("dev-{}", kit::unique()), "active")
        .await;
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(5);
    let batch: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            serde_json::json!({
                "sensor": "temperature",
                "value": i,
                "timestamp": (t0 + chrono::Duration::seconds(i)).to_rfc3339(),
            })
        })
        .collect();
    let (key, auth) = credentials_of(&dev);
    let (status, body) = kit::http_post_with(
        p.gateway_http,
        &format!("/v1/devices/{}/readings", dev.device_id),
        "application/json",
        &[(key, auth.as_str())],
        serde_json::to_string(&batch).unwrap().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["accepted"], 30, "{body}");
    let stored = rows(&p, &dev.id, 30).await;
    let mut values: Vec<Decimal> = stored.into_iter().map(|(_, v)| v).collect();
    values.sort_unstable();
    assert_eq!(values, (0..30).map(Decimal::from).collect::<Vec<_>>());
    p.stop().await;
}
