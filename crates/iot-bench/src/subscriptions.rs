//! `iot-bench subscriptions`: live subscriptions pushed, not polled. One
//! release graphql-gateway on a release registry, writer and alert-engine;
//! 1,000 devices of one owner, each storing a reading a second (produced
//! to the readings topic, stored by the writer). Two phases in one run:
//!
//! 1. 100 subscriptions (50 `deviceStatus`, 50 `metrics`, one device each);
//! 2. 10,000 subscriptions (5,000 of each, five of each per device), over
//!    100 WebSocket connections of 100 subscriptions each.
//!
//! In each phase: the gateway's backend calls per second (its
//! `iot_grpc_client_requests_total`, streams counted once when opened)
//! over a 20 s window once the subscriptions are open and read; and in
//! phase 2 the delay from a reading stored (the writer's commit time, as
//! its `WatchStored` stream reports it) to each `metrics` message carrying
//! it, and the gateway's peak RSS. Targets (issue 28): p99 ≤ 1 s, RSS ≤
//! 200 MiB, calls per second flat between the phases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use iot_proto::v1;
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::procs::{self, Service};
use crate::query::stats;

const DEVICES: usize = 1000;
const PER_CONNECTION: usize = 100;
const WINDOW: Duration = Duration::from_secs(20);
const KEY: &str = "bench-subscriptions-key";
const OWNER: Uuid = Uuid::from_u128(0x5b5c_0000_0000_4000_8000_0000_0000_0001);

fn device(i: usize) -> Uuid {
    Uuid::from_u128(0x5b5c_0000_0000_4000_8000_0000_0000_0000 + 0x100 + i as u128)
}

const STATUS: &str = "subscription($d: ID!) { deviceStatus(deviceId: $d) { online status } }";
const METRICS: &str = "subscription($d: ID!) { metrics(deviceId: $d, sensorName: \"temperature\") { time max_value reading_count } }";

/// When each (device, value) was stored, from the writer's own stream.
type StoredAt = Arc<Mutex<HashMap<(String, i64), DateTime<Utc>>>>;

/// Opens `subs` (query, device) subscriptions over connections of
/// `PER_CONNECTION`; every `metrics` message's delay (ms) from its
/// reading's storage goes to `delays` (while `measure` is set).
async fn open(
    port: u16,
    subs: Vec<(&'static str, usize)>,
    stored: StoredAt,
    delays: Arc<Mutex<Vec<f64>>>,
    measure: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for chunk in subs.chunks(PER_CONNECTION) {
        let (mut ws, _) = tokio_tungstenite::connect_async(procs::graphql_ws_request(port))
            .await
            .unwrap();
        let text = |v: Value| Message::Text(v.to_string().into());
        ws.send(text(
            json!({"type": "connection_init", "payload": {"apiKey": KEY}}),
        ))
        .await
        .unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if matches!(&m, Message::Text(t) if t.contains("connection_ack")) {
                break;
            }
        }
        // Which device each subscription id follows.
        let mut of: HashMap<String, String> = HashMap::new();
        for (i, (query, d)) in chunk.iter().enumerate() {
            let id = format!("{i}");
            of.insert(id.clone(), device(*d).to_string());
            ws.send(text(json!({"id": id, "type": "subscribe",
                "payload": {"query": query, "variables": {"d": device(*d).to_string()}}})))
                .await
                .unwrap();
        }
        let (stored, delays, measure) = (stored.clone(), delays.clone(), measure.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let now = Utc::now();
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "ping" {
                    let _ = ws.send(text(json!({"type": "pong"}))).await;
                    continue;
                }
                if v["type"] == "error" || v["payload"].get("errors").is_some() {
                    eprintln!("subscription error: {v}");
                    continue;
                }
                let Some(max) = v["payload"]["data"]["metrics"]["max_value"].as_f64() else {
                    continue;
                };
                if !measure.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let dev = v["id"].as_str().and_then(|id| of.get(id)).cloned();
                let at = dev.and_then(|d| stored.lock().unwrap().get(&(d, max as i64)).copied());
                if let Some(at) = at {
                    let ms = (now - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    delays.lock().unwrap().push(ms);
                }
            }
        }));
    }
    tasks
}

/// The gateway's backend calls so far.
async fn calls(admin: u16) -> f64 {
    let m = procs::admin_metrics(admin).await;
    procs::metric_sum(&m, "iot_grpc_client_requests_total", "")
}

/// Backend calls per second over `WINDOW`.
async fn calls_per_sec(admin: u16) -> f64 {
    let before = calls(admin).await;
    tokio::time::sleep(WINDOW).await;
    (calls(admin).await - before) / WINDOW.as_secs_f64()
}

pub async fn run(ctx: &crate::Ctx) {
    let url = crate::fresh_db(ctx).await;
    let db = crate::connect(&url).await;
    let ids: Vec<Uuid> = (0..DEVICES).map(device).collect();
    db.execute(
        "INSERT INTO devices (id, device_id, name, device_type, owner_id)
         SELECT d, 'sub-' || d, 'Bench device', 'temperature_sensor', $1
         FROM unnest($2::uuid[]) d",
        &[&OWNER, &ids],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE device_heartbeats SET last_heartbeat = now() WHERE device_id = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap();
    let kafka = crate::fresh_topics(ctx).await;
    let registry = Service::registry(&url, ctx.mqtt_port);
    let writer = Service::writer(&url, &kafka, &format!("bench-subs-{}", crate::unique()));
    let alerts = Service::alerts(&url, &kafka, &registry.grpc_url());
    let key_sha: String = sha2::Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gql = Service::graphql(
        [&registry.grpc_url(), &writer.grpc_url(), &alerts.grpc_url()],
        &key_sha,
        &OWNER.to_string(),
    );
    // The writer's own account of when each reading was stored.
    let stored: StoredAt = Arc::default();
    let mut watch = loop {
        let c = iot_proto::connect(&Default::default(), "ingest-writer", &writer.grpc_url()).await;
        if let Ok(c) = c {
            let mut t =
                v1::telemetry_client::TelemetryClient::with_interceptor(c, iot_proto::Scope::Admin);
            if let Ok(s) = t.watch_stored(v1::WatchStoredRequest {}).await {
                break s.into_inner();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    {
        let stored = stored.clone();
        tokio::spawn(async move {
            while let Ok(Some(b)) = watch.message().await {
                let at = b
                    .stored_at
                    .as_ref()
                    .and_then(iot_proto::from_timestamp)
                    .unwrap_or_else(Utc::now);
                let mut s = stored.lock().unwrap();
                for r in b.readings {
                    if let Ok(v) = r.value.parse::<f64>() {
                        s.insert((r.device_uuid, v as i64), at);
                    }
                }
            }
        });
    }
    while tokio::net::TcpStream::connect(("127.0.0.1", gql.http_port))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every device stores a reading a second; its values count up, so a
    // `metrics` message's max names the reading that caused it.
    let producer = kafka.producer("bench").unwrap();
    let topic = kafka.readings_topic.clone();
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 1i64.. {
            tick.tick().await;
            let now = Utc::now();
            let sends = (0..DEVICES).map(|i| {
                let reading = iot_domain::Reading {
                    device_uuid: device(i),
                    device_id: format!("sub-{}", device(i)),
                    sensor_name: "temperature".into(),
                    value: rust_decimal::Decimal::from(n),
                    time: now,
                    unit: None,
                    quality: None,
                    received_at: now,
                };
                let bytes = iot_proto::reading::encode(&reading, "bench");
                let key = iot_proto::reading::key(&reading);
                let (producer, topic) = (&producer, &topic);
                async move {
                    let _ = producer
                        .send(
                            iot_kafka::rdkafka::producer::FutureRecord::to(topic)
                                .key(&key)
                                .payload(&bytes),
                            Duration::from_secs(10),
                        )
                        .await;
                }
            });
            futures::future::join_all(sends).await;
        }
    });
    let delays: Arc<Mutex<Vec<f64>>> = Arc::default();
    let measure = Arc::new(std::sync::atomic::AtomicBool::new(false));
    println!(
        "subscriptions benchmark: {DEVICES} devices storing a reading a second, release builds on one box"
    );

    // Phase 1: 100 subscriptions.
    let small: Vec<(&str, usize)> = (0..50).flat_map(|d| [(STATUS, d), (METRICS, d)]).collect();
    let mut tasks = open(
        gql.http_port,
        small,
        stored.clone(),
        delays.clone(),
        measure.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let small_rate = calls_per_sec(gql.admin_port).await;
    println!("100 subscriptions: {small_rate:.1} backend calls/s");

    // Phase 2: 10,000 (the first 100 and 9,900 more).
    let started = Instant::now();
    let more: Vec<(&str, usize)> = (0..DEVICES)
        .flat_map(|d| {
            let n = if d < 50 { 4 } else { 5 };
            std::iter::repeat_n([(STATUS, d), (METRICS, d)], n).flatten()
        })
        .collect();
    assert_eq!(more.len() + 100, 10_000);
    tasks.extend(
        open(
            gql.http_port,
            more,
            stored.clone(),
            delays.clone(),
            measure.clone(),
        )
        .await,
    );
    println!(
        "10,000 subscriptions open in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    measure.store(true, std::sync::atomic::Ordering::Relaxed);
    let large_rate = calls_per_sec(gql.admin_port).await;
    measure.store(false, std::sync::atomic::Ordering::Relaxed);
    println!("10,000 subscriptions: {large_rate:.1} backend calls/s");
    let d = std::mem::take(&mut *delays.lock().unwrap());
    let n = d.len();
    let s = stats(if d.is_empty() { vec![f64::NAN] } else { d });
    let rss_mib = gql.peak_rss_kib() as f64 / 1024.0;
    println!(
        "metrics messages measured: {n}; stored -> message p50 {:.0} ms, p99 {:.0} ms; gateway peak RSS {rss_mib:.0} MiB",
        s.p50, s.p99
    );
    publishing.abort();
    for t in tasks {
        t.abort();
    }
    let flat = large_rate <= small_rate * 1.5 + 1.0;
    let ok = |b: bool| if b { "met" } else { "**not met**" };
    let body = format!(
        "{}\n\n{DEVICES} devices of one owner each store a reading a second (produced to Kafka, stored by a release ingest-writer); one release graphql-gateway. Phase 1: 100 subscriptions (50 `deviceStatus`, 50 `metrics`). Phase 2, same run: 10,000 (5,000 of each, five per device), 100 per WebSocket connection. Backend calls are the gateway's `iot_grpc_client_requests_total` over {} s once the subscriptions are open; the delay runs from the writer's commit (its `WatchStored` time) to each `metrics` message carrying the reading.\n\n| | figure | target |\n|---|---|---|\n| backend calls/s, 100 subscriptions | {small_rate:.1} | |\n| backend calls/s, 10,000 subscriptions | {large_rate:.1} | flat: {} |\n| reading stored → `metrics` message, {n} messages | p50 {:.0} ms / p99 {:.0} ms | p99 ≤ 1 s: {} |\n| graphql-gateway peak RSS | {rss_mib:.0} MiB | ≤ 200 MiB: {} |\n",
        crate::report_header("Subscriptions (pushed)", "cargo xtask bench subscriptions"),
        WINDOW.as_secs(),
        ok(flat),
        s.p50,
        s.p99,
        ok(s.p99 <= 1000.0),
        ok(rss_mib <= 200.0),
    );
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        crate::replace_report_section(&path, "## Subscriptions (pushed)", &body);
    }
    println!("{body}");
}
