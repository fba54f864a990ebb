//! `iot-bench scale`: the platform over a large registry. 1,000,000 devices
//! across 1,000 owners (one of them with 100,000) are registered through
//! `CreateDevices`, the bulk path users have too (`iotctl devices import`),
//! and the GraphQL queries people run against a fleet are timed over them:
//! the first page and a page deep in the big owner's devices, and the
//! status summary for that owner and for an operator over all of them.
//!
//! The registry is loaded into database `iot_bench_scale`, dropped at the
//! end unless `--keep` keeps it for the next run to reuse
//! (`IOT_BENCH_RELOAD=1` loads it again); loading is timed when it
//! happens.

use std::time::{Duration, Instant};

use iot_proto::Scope;
use iot_proto::v1::{CreateDeviceRequest, CreateDevicesRequest};
use serde_json::{Value, json};
use sha2::Digest;
use uuid::Uuid;

use crate::procs::Service;
use crate::query::stats;
use crate::{Ctx, connect, fresh_topics};

const DB: &str = "iot_bench_scale";
const DEVICES: usize = 1_000_000;
const OWNERS: usize = 1000;
/// Owner 0's devices; the others share the rest.
const BIG_OWNER: usize = 100_000;
/// Devices per `CreateDevices` call, and calls under way at once.
const PER_CALL: usize = 1000;
const CONCURRENT_CALLS: usize = 4;
const SAMPLES: usize = 200;
/// Every this many devices one is online (heard from just before the
/// queries).
const ONLINE_EVERY: usize = 10;
const HEARTBEATS_PER_CALL: usize = 5000;
const PAGE: usize = 100;
/// How deep the deep page is in the big owner's devices.
const DEEP: usize = 50_000;

const OWNER_KEY: &str = "scale-owner-key";
const OPERATOR_KEY: &str = "scale-operator-key";

const DEVICES_PAGE: &str = "query Devices($limit: Int!, $after: String) {
  devices(limit: $limit, after: $after) { id device_id name status online cursor }
}";

/// Only the cursors: a thousand of them stay under the gateway's
/// complexity limit.
const CURSORS: &str = "query Cursors($after: String) {
  devices(limit: 1000, after: $after) { cursor }
}";

const SUMMARY: &str = "query { deviceStatusSummary {
  total_devices active_devices offline_devices inactive_devices error_devices critical_alerts_count
} }";

fn owner(i: usize) -> Uuid {
    Uuid::from_u128(0x5ca1_e000_0000_4000_8000_0000_0000_0000 | i as u128)
}

/// Device `n` in load order: the big owner's first, then the others' in
/// turn.
fn device(n: usize) -> CreateDeviceRequest {
    let o = if n < BIG_OWNER {
        0
    } else {
        1 + (n - BIG_OWNER) % (OWNERS - 1)
    };
    CreateDeviceRequest {
        // `iotctl simulate --device-prefix scale` names its devices so:
        // the active fleet is the big owner's.
        device_id: format!("scale-{:04}", n + 1),
        name: format!("Scale device {n}"),
        device_type: if n.is_multiple_of(3) {
            "meter"
        } else {
            "thermostat"
        }
        .into(),
        owner_id: owner(o).to_string(),
        ..Default::default()
    }
}

/// Registers the devices from `from` on; devices/s.
async fn load(client: &iot_proto::RegistryClient, from: usize) -> f64 {
    let start = Instant::now();
    let mut calls = futures::stream::iter((from..DEVICES).step_by(PER_CALL).map(|first| {
        let mut client = client.clone();
        async move {
            let devices = (first..(first + PER_CALL).min(DEVICES))
                .map(device)
                .collect();
            let results = client
                .create_devices(CreateDevicesRequest {
                    devices,
                    issue_credentials: false,
                })
                .await
                .expect("CreateDevices")
                .into_inner()
                .results;
            // A rerun after an interrupted load finds some taken.
            for r in &results {
                assert!(
                    r.error_code.is_empty() || r.error_code == "ALREADY_EXISTS",
                    "{}: {} {}",
                    r.device_id,
                    r.error_code,
                    r.error
                );
            }
            results.len()
        }
    }))
    .buffer_unordered(CONCURRENT_CALLS);
    use futures::StreamExt as _;
    let mut done = 0;
    let mut reported = Instant::now();
    while let Some(n) = calls.next().await {
        done += n;
        if reported.elapsed() > Duration::from_secs(10) {
            println!("  loaded {} of {DEVICES}", from + done);
            reported = Instant::now();
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn sha256(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Gql {
    http: reqwest::Client,
    url: String,
}

impl Gql {
    async fn post(&self, key: &str, query: &str, variables: Value) -> Value {
        let v: Value = self
            .http
            .post(&self.url)
            .header("X-Api-Key", key)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v.get("errors").is_none(), "GraphQL error: {v}");
        v["data"].clone()
    }

    /// Milliseconds of `SAMPLES` runs after a warm-up; `check` sees each
    /// answer.
    async fn time(
        &self,
        key: &str,
        query: &str,
        variables: Value,
        check: impl Fn(&Value),
    ) -> Vec<f64> {
        for _ in 0..5 {
            check(&self.post(key, query, variables.clone()).await);
        }
        let mut ms = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let v = self.post(key, query, variables.clone()).await;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            check(&v);
        }
        ms
    }
}

pub async fn run(ctx: &Ctx) {
    let base = ctx.admin_db.rsplit_once('/').unwrap().0;
    let url = format!("{base}/{DB}");
    if std::env::var("IOT_BENCH_RELOAD").is_ok_and(|v| v == "1") {
        connect(&ctx.admin_db)
            .await
            .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            .await
            .unwrap();
    }
    iot_db::ensure_database(&url).await.unwrap();
    crate::drop_unless_kept(DB);
    iot_db::migrate(&url, iot_db::BackendChoice::Auto)
        .await
        .unwrap();
    let db = connect(&url).await;
    let kafka = fresh_topics(ctx).await;
    let registry = Service::registry(&url, ctx.mqtt_port);
    let writer = Service::writer(&url, &kafka, "bench-scale");
    let alerts = Service::alerts(&url, &kafka, &registry.grpc_url());
    let client = loop {
        match iot_proto::registry_client(
            registry.grpc_url(),
            Scope::Admin,
            &iot_proto::GrpcTls::default(),
        )
        .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let loaded = count(&db).await;
    let load_rate = if loaded < DEVICES {
        println!(
            "registering {} devices through CreateDevices",
            DEVICES - loaded
        );
        // Resume at the first device not yet there (loads go in order,
        // and calls finish in about that order).
        let from = (loaded / PER_CALL).saturating_sub(CONCURRENT_CALLS) * PER_CALL;
        Some(load(&client, from).await)
    } else {
        println!("reusing the {loaded} devices in database {DB} (IOT_BENCH_RELOAD=1 reloads)");
        None
    };
    assert_eq!(count(&db).await, DEVICES);
    // A reused registry holds the last run's active fleet, heard from
    // minutes ago: every device starts never heard from.
    db.execute(
        "UPDATE device_heartbeats SET last_heartbeat = NULL, disconnected_at = NULL,
             online_until = '-infinity'
         WHERE last_heartbeat IS NOT NULL OR disconnected_at IS NOT NULL",
        &[],
    )
    .await
    .unwrap();
    let heartbeat_rate = heartbeats(&db, &client).await;
    // What autovacuum keeps (devices are vacuumed after 2 % changed), done
    // here because a server may run without it (CI machines do): the
    // dead row versions of the heartbeats gone.
    db.batch_execute("VACUUM ANALYZE devices, device_heartbeats")
        .await
        .unwrap();

    let keys = format!(
        r#"[{{name="owner", sha256="{}", owner="{}"}}, {{name="operator", sha256="{}", owner="*"}}]"#,
        sha256(OWNER_KEY),
        owner(0),
        sha256(OPERATOR_KEY)
    );
    let gql = Service::graphql_with(
        [&registry.grpc_url(), &writer.grpc_url(), &alerts.grpc_url()],
        &keys,
        &[
            ("LIMITS__RATE_PER_SEC", "1000000".into()),
            ("LIMITS__RATE_BURST", "1000000".into()),
        ],
    );
    let g = Gql {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        url: format!("http://127.0.0.1:{}/graphql", gql.http_port),
    };
    while tokio::net::TcpStream::connect(("127.0.0.1", gql.http_port))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let page_of = |n: usize| {
        move |v: &Value| assert_eq!(v["devices"].as_array().map(Vec::len), Some(n), "{v}")
    };
    let first = g
        .time(
            OWNER_KEY,
            DEVICES_PAGE,
            json!({"limit": PAGE}),
            page_of(PAGE),
        )
        .await;
    // The cursor DEEP devices in, walked to a thousand at a time.
    let mut after: Option<String> = None;
    for _ in 0..DEEP / 1000 {
        let v = g.post(OWNER_KEY, CURSORS, json!({"after": after})).await;
        after = v["devices"][999]["cursor"].as_str().map(str::to_owned);
    }
    assert!(after.is_some(), "the big owner has {DEEP} devices");
    let deep = g
        .time(
            OWNER_KEY,
            DEVICES_PAGE,
            json!({"limit": PAGE, "after": after}),
            page_of(PAGE),
        )
        .await;
    let counts_are = |total: usize| {
        move |v: &Value| {
            let s = &v["deviceStatusSummary"];
            assert_eq!(s["total_devices"].as_u64(), Some(total as u64), "{v}");
            assert_eq!(
                s["offline_devices"].as_u64(),
                Some((total - total / ONLINE_EVERY) as u64),
                "{v}"
            );
        }
    };
    let owner_summary = g
        .time(OWNER_KEY, SUMMARY, json!({}), counts_are(BIG_OWNER))
        .await;
    let operator_summary = g
        .time(OPERATOR_KEY, SUMMARY, json!({}), counts_are(DEVICES))
        .await;

    let (first, deep, owner_summary, operator_summary) = (
        stats(first),
        stats(deep),
        stats(owner_summary),
        stats(operator_summary),
    );
    println!(
        "scale benchmark: {DEVICES} devices across {OWNERS} owners, {SAMPLES} samples per query"
    );
    if let Some(rate) = load_rate {
        println!("registration through CreateDevices: {rate:.0} devices/s");
    }
    println!(
        "heartbeats of {} devices through RecordActivity: {heartbeat_rate:.0} devices/s",
        DEVICES / ONLINE_EVERY
    );
    let line = |what: &str, s: &crate::query::Stats, target: f64| {
        println!(
            "{what:<58} p50 {:>6.1} ms  p95 {:>6.1} ms  (target p95 <= {target} ms)",
            s.p50, s.p95
        )
    };
    line(
        "devices, first page of 100 (owner of 100,000)",
        &first,
        20.0,
    );
    line(
        "devices, page of 100 at 50,000 deep (same owner)",
        &deep,
        20.0,
    );
    line(
        "deviceStatusSummary, owner of 100,000",
        &owner_summary,
        50.0,
    );
    line(
        "deviceStatusSummary, operator over 1,000,000",
        &operator_summary,
        200.0,
    );
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
        let row = |what: &str, s: &crate::query::Stats, target: f64| {
            format!(
                "| {what} | {:.1} / {:.1} ms | p95 ≤ {target} ms: {} |\n",
                s.p50,
                s.p95,
                met(s.p95 <= target)
            )
        };
        let load = load_rate.map_or_else(
            || "loaded by an earlier run and reused".to_owned(),
            |r| format!("{r:.0} devices/s"),
        );
        let section = format!(
            "{}\n\n{DEVICES} devices across {OWNERS} owners (one with {BIG_OWNER}), \
             registered through `CreateDevices` ({PER_CALL} per call, {CONCURRENT_CALLS} \
             calls at once, no broker accounts); release builds of device-registry, \
             ingest-writer, alert-engine and graphql-gateway on one box; {SAMPLES} \
             samples per query after a warm-up, one at a time.\n\n\
             | figure | p50 / p95 | target |\n|---|---|---|\n\
             | registration through `CreateDevices` | {load} | |\n\
             | heartbeats of {} devices (every {ONLINE_EVERY}th) through `RecordActivity` \
             ({HEARTBEATS_PER_CALL} per call), then online | {heartbeat_rate:.0} devices/s | |\n\
             {}{}{}{}\n\
             The active fleet is the next section; alert rules at scale are in \
             \"Alert latency\", replicas in \"Replicas\".\n",
            crate::report_header("Scale: a large registry", "cargo xtask bench scale"),
            DEVICES / ONLINE_EVERY,
            row(
                "`devices`, first page of 100 (owner of 100,000)",
                &first,
                20.0
            ),
            row(
                "`devices`, page of 100 at 50,000 deep (same owner)",
                &deep,
                20.0
            ),
            row(
                "`deviceStatusSummary`, owner of 100,000",
                &owner_summary,
                50.0
            ),
            row(
                "`deviceStatusSummary`, operator over 1,000,000",
                &operator_summary,
                200.0
            ),
        );
        crate::replace_report_section(&path, "## Scale: a large registry", &section);
    }
    drop(gql);
    // The fleet's phases run their own (`active_fleet`).
    drop((writer, alerts));
    let fleet = active_fleet(ctx, &db, &url, &registry).await;
    println!(
        "active fleet: {} readings/s from {ACTIVE} devices, {} from 100 ({:.2}x); \
         gateway peak RSS {} MiB; heartbeats recorded for {} of {ACTIVE} devices; \
         {} acknowledged readings never stored",
        fleet.many.round(),
        fleet.few.round(),
        fleet.many / fleet.few,
        fleet.gateway_rss_mib,
        fleet.heard,
        fleet.lost
    );
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
        let backend = iot_db::storage_backend(&db).await.unwrap().unwrap();
        let section = format!(
            "{}\n\nBackend {backend}. The same registry; mqtt-gateway, ingest-writer, alert-engine and \
             device-registry (release builds, shipped defaults) on one box, each fleet size \
             with a gateway, writer and alert-engine of its own on topics of its own, deleted \
             before the next size starts (the local broker's cost per record grows with the \
             records it holds). `iotctl simulate` publishes \
             {FLEET_READINGS} single readings (QoS 1, 3 sensors per device) through the \
             platform publisher account over 4 connections, first as 100 devices, then \
             as 1,000, 10,000 and {ACTIVE} distinct devices (the big owner's); each rate is readings \
             stored per second. Each fleet is first heard from once (every device's every \
             sensor, a reading each: first contact fills the gateway's device cache and the \
             sensor lists, and inserts the latest-reading rows), then publishes the \
             {FLEET_READINGS} readings as a fleet that keeps reporting does.\n\n\
             | figure | value | target |\n|---|---|---|\n\
             | ingest from 100 devices | {:.0} readings/s | baseline |\n\
             | ingest from {ACTIVE} distinct devices | {:.0} readings/s ({:.2}×) | ≥ 0.8×: {} |\n\
             | first contact of the {ACTIVE} devices ({} readings) | {:.0} readings/s ({:.2}×) | |\n\
             | mqtt-gateway peak RSS over every phase | {} MiB | ≤ 150 MiB: {} |\n\
             | devices of the {ACTIVE} whose heartbeat was recorded | {} | all: {} |\n\
             | readings the broker acknowledged, never stored (every phase) | {} | none: {} |\n\n\
             How the cost grows with the active fleet (same run, same readings):\n\n\
             | active devices | readings/s | ÷ 100 devices |\n|---|---|---|\n\
             | 100 | {:.0} | 1.00× |\n{}",
            crate::report_header("Scale: an active fleet", "cargo xtask bench scale"),
            fleet.few,
            fleet.many,
            fleet.many / fleet.few,
            met(fleet.many / fleet.few >= 0.8),
            ACTIVE as u64 * SENSORS,
            fleet.first_contact,
            fleet.first_contact / fleet.few,
            fleet.gateway_rss_mib,
            met(fleet.gateway_rss_mib <= 150),
            fleet.heard,
            met(fleet.heard == ACTIVE),
            fleet.lost,
            met(fleet.lost == 0),
            fleet.few,
            fleet
                .growth
                .iter()
                .map(|(n, r)| format!("| {n} | {r:.0} | {:.2}× |\n", r / fleet.few))
                .collect::<String>(),
        );
        crate::replace_report_section(&path, "## Scale: an active fleet", &section);
    }
    drop(registry);
    // The other half of the cost-growth table: query cost over history.
    crate::history::run(ctx).await;
}

/// Devices of the active fleet, and the readings each phase publishes.
const ACTIVE: usize = BIG_OWNER;
/// Readings each fleet publishes as it keeps reporting: ten per device of
/// the largest, for about a minute, one of the gateway's heartbeat holds.
const FLEET_READINGS: u64 = 1_000_000;
/// Sensors of each simulated device.
const SENSORS: u64 = 3;

struct ActiveFleet {
    /// Readings stored per second from 100 devices, and from `ACTIVE`.
    few: f64,
    many: f64,
    /// Readings/s at 1,000, 10,000 and `ACTIVE` devices.
    growth: Vec<(u32, f64)>,
    /// Readings/s while each of `ACTIVE` devices is heard from first.
    first_contact: f64,
    gateway_rss_mib: u64,
    /// Devices of the `ACTIVE` whose heartbeat reached the registry.
    heard: usize,
    /// Readings the broker acknowledged that were never stored, in all
    /// phases.
    lost: u64,
}

/// The big owner's devices publish through the platform: first 100 of
/// them, then 1,000, 10,000 and all `ACTIVE`, the same number of readings
/// each time.
///
/// Each fleet size runs on topics of its own, with a gateway, a writer and
/// an alert-engine of its own, and its topics are deleted before the next
/// one starts. The local broker (Tansu's memory engine) costs more per
/// record the more records it holds, which a Kafka log does not: without
/// this, each phase would pay for the millions the phases before it left
/// behind, and the largest fleet, which runs last, for all of them.
async fn active_fleet(
    ctx: &Ctx,
    db: &tokio_postgres::Client,
    url: &str,
    registry: &Service,
) -> ActiveFleet {
    let lost = std::cell::Cell::new(0);
    let peak_rss_kib = std::cell::Cell::new(0);
    // `count` readings from `devices` devices through `platform`:
    // readings stored per second from the first publish.
    let publish = async |platform: &Platform, devices: u32, count: u64, label: &str| {
        let before = crate::stored(db).await;
        let args = iotctl::simulate::Args {
            device_prefix: "scale".into(),
            devices,
            count,
            sensors: SENSORS as u32,
            ..crate::simulator(ctx, &registry.grpc_url(), &platform.root)
        };
        // Every device exists already, and what finding that out costs
        // is not the fleet's.
        iotctl::simulate::register(&args).await.unwrap();
        let args = iotctl::simulate::Args {
            registered: true,
            ..args
        };
        let cpu = crate::CpuShares::start(&[
            ("mqtt-gateway", &platform.gateway),
            ("ingest-writer", &platform.writer),
            ("device-registry", registry),
            ("alert-engine", &platform.alerts),
        ]);
        let busy = crate::ActiveStatements::start(&ctx.admin_db, DB).await;
        let accepted_before = crate::procs::gateway_accepted(&platform.gateway).await;
        let s = iotctl::simulate::simulate(args).await.unwrap();
        let start = Instant::now() - s.elapsed;
        // The platform answers for what the broker acknowledged: a publish
        // the simulator's connection lost before its PUBACK was never
        // taken (single readings: a message is a reading).
        let acked = s.acked.min(s.readings);
        if acked < s.readings || s.errors > 0 {
            println!(
                "  {label}: {} of {} readings never acknowledged by the broker \
                 ({} connection errors at the simulator)",
                s.readings - acked,
                s.readings,
                s.errors
            );
        }
        // Two minutes without a new row: what has not come never will.
        let (done, have) =
            crate::wait_rows_while_coming(db, before + acked as i64, Duration::from_secs(120))
                .await;
        let stored = u64::try_from(have - before).unwrap_or(0).min(acked);
        if stored < acked {
            println!(
                "  {label}: {} readings acknowledged by the broker were never stored",
                acked - stored
            );
            lost.set(lost.get() + acked - stored);
        }
        crate::copies(label, &platform.gateway, accepted_before, s.readings).await;
        cpu.print_per_reading(label, done - start, stored);
        busy.print(label, 6);
        peak_rss_kib.set(peak_rss_kib.get().max(platform.gateway.peak_rss_kib()));
        stored as f64 / (done - start).as_secs_f64()
    };
    // A fleet that publishes within each minute is known to every cache
    // and table on the way: first contact (each device's every sensor
    // once) is its own figure, then `FLEET_READINGS` from the known fleet.
    let phase = async |devices: u32| {
        let platform = Platform::start(ctx, url, registry, devices).await;
        let first = publish(
            &platform,
            devices,
            u64::from(devices) * SENSORS,
            &format!("{devices} devices, first contact"),
        )
        .await;
        let steady = publish(
            &platform,
            devices,
            FLEET_READINGS,
            &format!("{devices} devices"),
        )
        .await;
        (first, steady, platform)
    };
    let mut growth = Vec::new();
    let (_, few, platform) = phase(100).await;
    platform.stop().await;
    for devices in [1000, 10_000] {
        let (_, rate, platform) = phase(devices).await;
        platform.stop().await;
        growth.push((devices, rate));
    }
    let since = chrono::Utc::now();
    let (first_contact, many, platform) = phase(ACTIVE as u32).await;
    growth.push((ACTIVE as u32, many));
    // Heartbeats go to the registry every `activity_flush_secs` (5 s by
    // default): two windows and then some.
    let heard = async || {
        db.query_one(
            "SELECT count(*) FROM devices d JOIN device_heartbeats h ON h.device_id = d.id
             WHERE d.device_id LIKE 'scale-%' AND h.last_heartbeat >= $1",
            &[&since],
        )
        .await
        .unwrap()
        .get::<_, i64>(0) as usize
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = heard().await;
    while n < ACTIVE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        n = heard().await;
    }
    platform.stop().await;
    ActiveFleet {
        few,
        many,
        growth,
        first_contact,
        gateway_rss_mib: peak_rss_kib.get() / 1024,
        heard: n,
        lost: lost.get(),
    }
}

/// One phase's ingest path: its topics, and a gateway, a writer and an
/// alert-engine on them (release builds, shipped defaults).
struct Platform {
    kafka: iot_kafka::KafkaConfig,
    /// The simulator's and the gateway's topic root.
    root: String,
    mqtt_port: u16,
    gateway: Service,
    writer: Service,
    alerts: Service,
}

impl Platform {
    async fn start(ctx: &Ctx, url: &str, registry: &Service, devices: u32) -> Self {
        let kafka = crate::fresh_topics(ctx).await;
        let root = format!("scale{}", crate::unique());
        let writer = Service::writer(url, &kafka, &format!("bench-scale-{devices}"));
        let alerts = Service::alerts(url, &kafka, &registry.grpc_url());
        let gateway = Service::gateway(&kafka, &root, ctx.mqtt_port, &registry.grpc_url());
        // Consumers that still join their groups when the fleet starts
        // would leave the first readings of the phase waiting.
        for (kind, consumer) in [("writer", &writer), ("alert-engine", &alerts)] {
            crate::wait_assigned(
                kind,
                &[consumer.admin_port],
                kafka.partitions,
                Duration::from_secs(60),
            )
            .await;
        }
        crate::procs::wait_ready(gateway.admin_port, Duration::from_secs(60)).await;
        Self {
            kafka,
            root,
            mqtt_port: ctx.mqtt_port,
            gateway,
            writer,
            alerts,
        }
    }

    /// Stops the services, then deletes the topics and ends the gateway's
    /// MQTT session.
    async fn stop(self) {
        let Self {
            kafka,
            root,
            mqtt_port,
            gateway,
            writer,
            alerts,
        } = self;
        drop((gateway, writer, alerts));
        crate::drop_topics(&kafka).await;
        end_session(mqtt_port, &format!("{root}-gw")).await;
    }
}

/// Ends a stopped gateway's durable session, as the phase's topics are
/// deleted: the broker keeps a session and what is queued in it after its
/// client is gone (Mosquitto rewrites all of it to disk every
/// `autosave_interval`), and the sessions of earlier phases would weigh on
/// the later ones. A clean-session connect with the same client id
/// discards it.
async fn end_session(port: u16, client_id: &str) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    let (user, password) = crate::procs::account("gateway");
    opts.set_credentials(user, password);
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert!(
        matches!(connected, Ok(true)),
        "ending the MQTT session of {client_id} failed"
    );
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// Every `ONLINE_EVERY`th device is heard from now through
/// `RecordActivity`, the call mqtt-gateway's heartbeat flush makes, so
/// that the summaries have online devices to count (a tenth of the fleet:
/// the issue's active fleet of 100,000). Devices/s.
async fn heartbeats(db: &tokio_postgres::Client, client: &iot_proto::RegistryClient) -> f64 {
    use iot_proto::v1::{DeviceActivity, RecordActivityRequest};
    let ids: Vec<String> = db
        .query(
            "SELECT id::text FROM devices WHERE substr(device_id, 7)::int % $1 = 0",
            &[&(ONLINE_EVERY as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), DEVICES / ONLINE_EVERY);
    let start = Instant::now();
    let now = iot_proto::timestamp(chrono::Utc::now());
    for chunk in ids.chunks(HEARTBEATS_PER_CALL) {
        let devices = chunk
            .iter()
            .map(|id| DeviceActivity {
                device_uuid: id.clone(),
                last_seen: Some(now),
                ..Default::default()
            })
            .collect();
        client
            .clone()
            .record_activity(RecordActivityRequest { devices })
            .await
            .expect("RecordActivity");
    }
    ids.len() as f64 / start.elapsed().as_secs_f64()
}

async fn count(db: &tokio_postgres::Client) -> usize {
    db.query_one("SELECT count(*) FROM devices", &[])
        .await
        .unwrap()
        .get::<_, i64>(0) as usize
}
