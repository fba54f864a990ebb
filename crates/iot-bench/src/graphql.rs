//! `iot-bench graphql`: what the GraphQL layer adds. The documented
//! DeviceDashboard (10,000 devices in the registry) and TemperatureTrend (a
//! year of hourly metrics) through a release graphql-gateway, next to the
//! same data fetched from the gRPC services directly, in the same run; and
//! 1,000 concurrent `alerts` subscribers over WebSocket, each of which must
//! receive every alert change, with the delay from the change to delivery.
//!
//! Data: one series of a year at one reading per 10 s (3.15M rows in
//! database `iot_bench_graphql`, reused when an earlier run kept it with
//! `--keep`; `IOT_BENCH_RELOAD=1` reloads),
//! 10,000 devices of one owner inserted straight into the registry's table
//! (their broker accounts play no part here), a few open alerts on the
//! dashboard's devices, and fresh alerts to acknowledge for the subscribers.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::{SinkExt, StreamExt};
use iot_proto::Scope;
use iot_proto::v1::{self, telemetry_client::TelemetryClient};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::procs::{self, Service};
use crate::query::{self, device, stats};
use crate::{Ctx, connect, fresh_topics};

const DB: &str = "iot_bench_graphql";
const DEVICES: usize = 10_000;
const SAMPLES: usize = 300;
const SUBSCRIBERS: usize = 1000;
const EVENTS: usize = 20;
const KEY: &str = "bench-api-key";
const OWNER: Uuid = Uuid::from_u128(0x1075_0000_0000_4000_8000_0000_00ff_ffff);

const DEVICE_DASHBOARD: &str = "query DeviceDashboard($deviceId: ID!) {
  device(id: $deviceId) {
    id
    name
    status
    current_readings { sensor_name value unit time }
    alerts { id alert_type severity value }
  }
}";

const TEMPERATURE_TREND: &str = "query TemperatureTrend($deviceId: ID!, $startTime: String!, $endTime: String!) {
  sensorMetrics(deviceId: $deviceId, sensorName: \"temperature\", startTime: $startTime, endTime: $endTime, granularity: \"1h\") {
    time avg_value min_value max_value
  }
}";

/// Devices of the owner (device 0 holds the year), three open alerts on
/// each of the first 100, and `EVENTS` fresh alerts for the subscribers.
async fn seed(url: &str) {
    let db = connect(url).await;
    db.execute(
        "INSERT INTO devices (id, device_id, name, device_type, owner_id)
         SELECT ('10750000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                'bench-' || i, 'Bench device ' || i, 'temperature_sensor', $1
         FROM generate_series(0, $2::int - 1) i
         ON CONFLICT DO NOTHING",
        &[&OWNER, &(DEVICES as i32)],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE device_heartbeats SET last_heartbeat = now() WHERE owner_id = $1",
        &[&OWNER],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO device_alerts (device_id, alert_type, severity, sensor_name, value, threshold, owner_id)
         SELECT ('10750000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                'threshold_exceeded', 'warning', s, 35, 30, $1
         FROM generate_series(0, 99) i, unnest(ARRAY['a', 'b', 'c']) s
         ON CONFLICT DO NOTHING",
        &[&OWNER],
    )
    .await
    .unwrap();
    db.batch_execute("DELETE FROM device_alerts WHERE alert_type = 'bench_event'")
        .await
        .unwrap();
    db.execute(
        "INSERT INTO device_alerts (device_id, alert_type, severity, owner_id)
         SELECT ('10750000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                'bench_event', 'info', $1
         FROM generate_series(200, 199 + $2::int) i",
        &[&OWNER, &(EVENTS as i32)],
    )
    .await
    .unwrap();
}

/// TemperatureTrend's answer, typed.
#[derive(serde::Deserialize)]
struct TrendResponse {
    data: TrendData,
    errors: Option<Value>,
}

#[derive(serde::Deserialize)]
struct TrendData {
    #[serde(rename = "sensorMetrics")]
    sensor_metrics: Vec<TrendPoint>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct TrendPoint {
    time: String,
    avg_value: f64,
    min_value: f64,
    max_value: f64,
}

/// TemperatureTrend's per-sample timings, in ms: to the answer's last
/// byte, and decoding it after that, for each way of fetching it.
#[derive(Default)]
struct TrendTimings {
    /// `QueryMetrics` (unary), `StreamMetrics` (in parts), GraphQL.
    wire: [Vec<f64>; 3],
    decode: [Vec<f64>; 3],
}

const WAYS: [&str; 3] = ["QueryMetrics", "StreamMetrics", "GraphQL"];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A keep-alive HTTP/1.1 client for `POST /graphql`.
struct Http(BufReader<tokio::net::TcpStream>);

impl Http {
    async fn connect(port: u16) -> Self {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.set_nodelay(true).unwrap();
        Self(BufReader::new(s))
    }

    async fn post(&mut self, query: &str, variables: Value) -> Value {
        let v: Value = serde_json::from_slice(&self.post_raw(query, variables).await).unwrap();
        assert!(v.get("errors").is_none(), "GraphQL error: {v}");
        v["data"].clone()
    }

    /// The response body, not parsed.
    async fn post_raw(&mut self, query: &str, variables: Value) -> Vec<u8> {
        let body = json!({"query": query, "variables": variables}).to_string();
        let head = format!(
            "POST /graphql HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nX-Api-Key: {KEY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.0.get_mut();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut buf = Vec::with_capacity(length);
        (&mut self.0)
            .take(length as u64)
            .read_to_end(&mut buf)
            .await
            .unwrap();
        assert_eq!(buf.len(), length, "the answer ended early");
        buf
    }
}

/// Interleaved samples of the direct gRPC calls and the GraphQL query
/// (the order alternates, so caches favour neither); both must return the
/// same number of items.
async fn compare<D, DF, G, GF>(name: &str, mut direct: D, mut graphql: G)
where
    D: FnMut(usize) -> DF,
    DF: Future<Output = usize>,
    G: FnMut(usize) -> GF,
    GF: Future<Output = usize>,
{
    let (d, g, items) = query::interleaved(name, SAMPLES, &mut direct, &mut graphql).await;
    let (d, g) = (stats(d), stats(g));
    println!("{name:<28} {items:>5} items | {}", versus(&d, &g));
    row(versus_row(&format!("{name} ({items} items)"), &d, &g, ""));
}

/// The rows of this run's section of `docs/benchmarks.md`.
static ROWS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn row(r: String) {
    ROWS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(r);
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// A table row: both sides' p50 / p99 and what GraphQL adds at p50.
fn versus_row(what: &str, d: &query::Stats, g: &query::Stats, extra: &str) -> String {
    let added = g.p50 - d.p50;
    format!(
        "| {what} | {:.2} / {:.2} | {:.2} / {:.2} | {added:.2}{extra} | ≤ 2 ms added: {} |",
        d.p50,
        d.p99,
        g.p50,
        g.p99,
        met(added <= 2.0)
    )
}

/// Both sides' p50 and p99, their ratio, and what GraphQL adds at p50
/// against the target.
fn versus(d: &query::Stats, g: &query::Stats) -> String {
    let added = g.p50 - d.p50;
    format!(
        "gRPC direct p50 {:>6.2} p99 {:>6.2} | GraphQL p50 {:>6.2} p99 {:>6.2} ms | GraphQL/gRPC p50 {:.2}x | added at p50 {added:.2} ms (target <= 2 ms: {})",
        d.p50,
        d.p99,
        g.p50,
        g.p99,
        g.p50 / d.p50,
        if added <= 2.0 { "ok" } else { "MISSED" }
    )
}

pub async fn run(ctx: &Ctx) {
    let (url, data) = query::load(ctx, DB, 1).await;
    seed(&url).await;
    let kafka = fresh_topics(ctx).await;
    let registry = Service::registry(&url, ctx.mqtt_port);
    let writer = Service::writer(&url, &kafka, "bench-graphql");
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
    let scope = Scope::Owner(OWNER.to_string());
    let (reg, tel, al) = loop {
        let r = iot_proto::registry_client(
            registry.grpc_url(),
            scope.clone(),
            &iot_proto::GrpcTls::default(),
        )
        .await;
        let t = iot_proto::connect(&Default::default(), "ingest-writer", &writer.grpc_url())
            .await
            .map(|c| TelemetryClient::with_interceptor(c, scope.clone()));
        let a = iot_proto::alerts_client(
            alerts.grpc_url(),
            scope.clone(),
            &iot_proto::GrpcTls::default(),
        )
        .await;
        let h = tokio::net::TcpStream::connect(("127.0.0.1", gql.http_port)).await;
        match (r, t, a, h) {
            (Ok(r), Ok(t), Ok(a), Ok(_)) => break (r, t, a),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let http = std::sync::Arc::new(tokio::sync::Mutex::new(Http::connect(gql.http_port).await));
    println!(
        "GraphQL benchmark: {DEVICES} devices, a year of readings, {SAMPLES} samples per query, release builds on one box"
    );

    // Where the gateway's time goes: its own metrics, per query.
    let mut seen = procs::admin_metrics(gql.admin_port).await;
    let mut gateway_side = async |query: &str| {
        let now = procs::admin_metrics(gql.admin_port).await;
        // Mean of a histogram since the last call, in ms.
        let mean = |name: &str, labels: &str| {
            let since = |suffix: &str| {
                let series = format!("{name}_{suffix}");
                procs::metric_sum(&now, &series, labels) - procs::metric_sum(&seen, &series, labels)
            };
            since("sum") / since("count").max(1.0) * 1000.0
        };
        let call = |m: &str| {
            mean(
                "iot_grpc_client_request_duration_seconds",
                &format!("method=\"{m}\""),
            )
        };
        println!(
            "  {query}, gateway-side means: whole request {:.2} ms (until its body is serialized); backend calls GetDevice {:.2}, StreamMetrics {:.2} (to its last part), LatestReadings {:.2}, ListAlerts {:.2} ms",
            mean("iot_graphql_request_duration_seconds", ""),
            call("GetDevice"),
            call("StreamMetrics"),
            call("LatestReadings"),
            call("ListAlerts"),
        );
        seen = now;
    };

    // DeviceDashboard, over the 10,000 devices.
    let pick = |i: usize| device((i * 7919) % 100).to_string();
    compare(
        "DeviceDashboard",
        |i| {
            let (mut reg, mut tel, mut al) = (reg.clone(), tel.clone(), al.clone());
            let id = pick(i);
            async move {
                let d = reg
                    .get_device(v1::GetDeviceRequest { id })
                    .await
                    .unwrap()
                    .into_inner();
                let (l, a) = tokio::join!(
                    tel.latest_readings(v1::LatestReadingsRequest {
                        device_uuids: vec![d.id.clone()],
                    }),
                    al.list_alerts(v1::ListAlertsRequest {
                        device_uuids: vec![d.id.clone()],
                        only_open: true,
                        limit: 1000,
                        ..Default::default()
                    })
                );
                l.unwrap().into_inner().readings.len() + a.unwrap().into_inner().alerts.len()
            }
        },
        |i| {
            let http = http.clone();
            let id = pick(i);
            async move {
                let d = http
                    .lock()
                    .await
                    .post(DEVICE_DASHBOARD, json!({"deviceId": id}))
                    .await;
                let n = |f: &str| d["device"][f].as_array().map_or(0, Vec::len);
                n("current_readings") + n("alerts")
            }
        },
    )
    .await;

    gateway_side("DeviceDashboard").await;

    // TemperatureTrend: a year of hourly metrics of the loaded series,
    // timed twice per sample on each side: to the last byte of the answer,
    // and once it is decoded into types.
    let raw_channel = tonic::transport::Endpoint::from_shared(writer.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let timings = std::sync::Arc::new(std::sync::Mutex::new(TrendTimings::default()));
    let body_bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let range = |i: usize| -> (DateTime<Utc>, DateTime<Utc>) {
        let s = data.start() + TimeDelta::seconds(((i * 7919) % 86_400) as i64);
        (s, s + TimeDelta::days(364))
    };
    let trend_device = device(0).to_string();
    let (_, _, items) = query::interleaved(
        "TemperatureTrend",
        SAMPLES,
        &mut |i| {
            let grpc = tonic::client::Grpc::new(raw_channel.clone());
            let (s, e) = range(i);
            let id = trend_device.clone();
            let timings = timings.clone();
            async move {
                // The one call a trusted gRPC client that knows the device
                // makes (the gateway also checks the device's owner, with
                // GetDevice at the same time, unless the registry found it
                // in the caller's scope in the last 10 s), each way, in
                // turns; the answer received whole, then decoded with prost
                // as a generated client decodes it.
                let req = v1::QueryMetricsRequest {
                    device_uuid: id,
                    sensor_name: "temperature".into(),
                    start: Some(iot_proto::timestamp(s)),
                    end: Some(iot_proto::timestamp(e)),
                    granularity: "1h".into(),
                };
                let mut items = [0; 2];
                for way in [i % 2, 1 - i % 2] {
                    let (wire, decode, n) = trend_direct(grpc.clone(), req.clone(), way == 1).await;
                    let mut t = timings.lock().unwrap();
                    t.wire[way].push(wire);
                    t.decode[way].push(decode);
                    items[way] = n;
                }
                assert_eq!(items[0], items[1], "QueryMetrics and StreamMetrics disagree");
                items[0]
            }
        },
        &mut |i| {
            let http = http.clone();
            let (s, e) = range(i);
            let id = trend_device.clone();
            let (timings, body_bytes) = (timings.clone(), body_bytes.clone());
            async move {
                // Decoded into types, as a generated client would.
                let started = Instant::now();
                let body = http
                    .lock()
                    .await
                    .post_raw(
                        TEMPERATURE_TREND,
                        json!({"deviceId": id, "startTime": s.to_rfc3339(), "endTime": e.to_rfc3339()}),
                    )
                    .await;
                let received = Instant::now();
                body_bytes.store(body.len(), std::sync::atomic::Ordering::Relaxed);
                let r: TrendResponse = serde_json::from_slice(&body).unwrap();
                let mut t = timings.lock().unwrap();
                t.wire[2].push(ms(received - started));
                t.decode[2].push(ms(received.elapsed()));
                assert!(r.errors.is_none(), "GraphQL error: {:?}", r.errors);
                r.data.sensor_metrics.len()
            }
        },
    )
    .await;
    let mut t = std::mem::take(&mut *timings.lock().unwrap());
    // The warm-up's samples (the closures record those too) are left out;
    // sample i of one way ran next to sample i of the others.
    for v in t.wire.iter_mut().chain(t.decode.iter_mut()) {
        v.drain(..v.len().saturating_sub(SAMPLES));
    }
    let wire = t.wire.clone().map(stats);
    let total: [query::Stats; 3] = std::array::from_fn(|w| {
        stats(
            t.wire[w]
                .iter()
                .zip(&t.decode[w])
                .map(|(a, b)| a + b)
                .collect(),
        )
    });
    println!(
        "TemperatureTrend (1 year, 1h)  {items:>5} items, to the answer's last byte: p50 / p99 {} ms",
        (0..3)
            .map(|w| format!("{} {:.2} / {:.2}", WAYS[w], wire[w].p50, wire[w].p99))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The baseline is the faster direct way at p50.
    let base = if wire[1].p50 < wire[0].p50 { 1 } else { 0 };
    let paired: Vec<f64> = t.wire[2]
        .iter()
        .zip(&t.wire[base])
        .map(|(g, d)| g - d)
        .collect();
    let paired_median = stats(paired).p50;
    println!(
        "  against {} (the faster): {}; median of the paired differences {:.2} ms",
        WAYS[base],
        versus(&wire[base], &wire[2]),
        paired_median
    );
    row(versus_row(
        &format!(
            "TemperatureTrend, a year of hourly metrics ({items} buckets), to the last byte; direct = {}",
            WAYS[base]
        ),
        &wire[base],
        &wire[2],
        &format!(" (paired median {paired_median:.2})"),
    ));
    let base = if total[1].p50 < total[0].p50 { 1 } else { 0 };
    println!(
        "  and decoded into types as well (protobuf by prost, JSON of {} bytes by serde_json): {} p50 {:.2} p99 {:.2} | GraphQL p50 {:.2} p99 {:.2} ms | added at p50 {:.2} ms; decoding alone p50 {:.2} ({}) and {:.2} ms (JSON)",
        body_bytes.load(std::sync::atomic::Ordering::Relaxed),
        WAYS[base],
        total[base].p50,
        total[base].p99,
        total[2].p50,
        total[2].p99,
        total[2].p50 - total[base].p50,
        stats(t.decode[base].clone()).p50,
        WAYS[base],
        stats(t.decode[2].clone()).p50,
    );
    gateway_side("TemperatureTrend").await;

    subscribers(gql.http_port, al.clone(), &url).await;
    drop((gql, alerts, writer, registry));
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let rows = std::mem::take(
            &mut *ROWS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let section = format!(
            "{}\n\n{DEVICES} devices in the registry, a year of readings, {SAMPLES} samples \
             per query, gRPC straight to the service and GraphQL interleaved; release builds, \
             every process on one box. Milliseconds.\n\n\
             | measure | gRPC direct p50 / p99 | GraphQL p50 / p99 | added at p50 | target |\n\
             |---|---|---|---|---|\n{}\n",
            crate::report_header("GraphQL", "cargo xtask bench graphql"),
            rows.join("\n")
        );
        crate::replace_report_section(&path, "## GraphQL", &section);
    }
}

/// One TemperatureTrend fetched straight from ingest-writer, with
/// `QueryMetrics` or, when `streamed`, `StreamMetrics`: ms to the answer's
/// last byte, ms to decode it after that, and its number of buckets.
async fn trend_direct(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    req: v1::QueryMetricsRequest,
    streamed: bool,
) -> (f64, f64, usize) {
    use tonic::codegen::http::uri::PathAndQuery;
    let codec = iot_proto::WireCodec::default;
    let decode = |b: tonic::codegen::Bytes| {
        <v1::QueryMetricsResponse as iot_proto::Message>::decode(b)
            .unwrap()
            .metrics
            .len()
    };
    let started = Instant::now();
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(req);
    // The owner's scope, as the gateway calls.
    Scope::Owner(OWNER.to_string())
        .apply(req.metadata_mut())
        .unwrap();
    if streamed {
        let path = PathAndQuery::from_static("/iot.v1.Telemetry/StreamMetrics");
        let mut answer = grpc
            .server_streaming(req, path, codec())
            .await
            .unwrap()
            .into_inner();
        let mut parts = Vec::new();
        while let Some(part) = answer.message().await.unwrap() {
            parts.push(part);
        }
        let received = Instant::now();
        let n = parts.into_iter().map(decode).sum();
        (ms(received - started), ms(received.elapsed()), n)
    } else {
        let path = PathAndQuery::from_static("/iot.v1.Telemetry/QueryMetrics");
        let answer = grpc.unary(req, path, codec()).await.unwrap().into_inner();
        let received = Instant::now();
        let n = decode(answer);
        (ms(received - started), ms(received.elapsed()), n)
    }
}

/// `SUBSCRIBERS` WebSocket clients subscribe to `alerts`; `EVENTS` alerts
/// are acknowledged one after another; each delivery's delay is measured
/// from just before the acknowledgement was sent (so it includes the
/// acknowledgement's own commit).
async fn subscribers(port: u16, mut api: iot_proto::AlertsClient, url: &str) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let tx = tx.clone();
        let req = crate::procs::graphql_ws_request(port);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
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
        ws.send(text(json!({"id": "1", "type": "subscribe",
            "payload": {"query": "subscription { alerts { id state } }"}})))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let at = Instant::now();
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                if let Some(id) = v["payload"]["data"]["alerts"]["id"].as_str() {
                    let _ = tx.send((id.to_owned(), at));
                }
            }
        }));
    }
    println!(
        "{SUBSCRIBERS} subscribers connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Let the last subscriptions reach the hub.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = connect(url).await;
    let ids: Vec<Uuid> = db
        .query(
            "SELECT id FROM device_alerts WHERE alert_type = 'bench_event' ORDER BY device_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut delays = Vec::new();
    let mut missing = 0;
    for id in &ids {
        let t0 = Instant::now();
        api.acknowledge_alert(v1::AlertActionRequest {
            id: id.to_string(),
            by: OWNER.to_string(),
        })
        .await
        .unwrap();
        let want = id.to_string();
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got < SUBSCRIBERS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((aid, at))) if aid == want => {
                    got += 1;
                    delays.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        missing += SUBSCRIBERS - got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = delays.len();
    let s = stats(delays);
    row(format!(
        "| `alerts` subscription: {} alert changes to {SUBSCRIBERS} WebSocket subscribers, {delivered} of {} delivered | | p50 {:.1} / p99 {:.1} from the change | | p99 ≤ 200 ms, none missing: {} |",
        ids.len(),
        ids.len() * SUBSCRIBERS,
        s.p50,
        s.p99,
        met(s.p99 <= 200.0 && missing == 0)
    ));
    println!(
        "alerts subscription: {delivered}/{} deliveries ({} alert changes x {SUBSCRIBERS} subscribers; missing {missing}) | delay from the change p50 {:.1} p95 {:.1} p99 {:.1} ms (target p99 <= 200 ms: {})",
        ids.len() * SUBSCRIBERS,
        ids.len(),
        s.p50,
        s.p95,
        s.p99,
        if s.p99 <= 200.0 && missing == 0 {
            "ok"
        } else {
            "MISSED"
        }
    );
    for t in tasks {
        t.abort();
    }
}
