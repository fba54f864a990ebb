//! `iot-bench query`: telemetry query latency over a year of data, straight
//! against the database (the writer's `Store`, in this process: SQL and row
//! decoding) and through the gRPC API of a running ingest-writer, with the
//! ratio of the two measured in the same run.
//!
//! Data: `IOT_BENCH_SERIES` series (default 10) at one reading per 10 s for
//! 365 days (3,153,600 rows each: 31.5M in all), written with the writer's
//! own batch path so the rollups are what production keeps, plus 90 more
//! devices with a day of readings (for "latest readings of 100 devices").
//! The loaded database (`iot_bench_query`) is dropped at the end unless
//! `--keep` keeps it; a kept one is reused by the next run when it holds
//! the same data (`IOT_BENCH_RELOAD=1` loads it afresh).

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use ingest_writer::Store;
use ingest_writer::rollup::Width;
use ingest_writer::store::Row;
use iot_proto::v1::telemetry_client::TelemetryClient;
use iot_proto::v1::{LatestReadingsRequest, QueryMetricsRequest, QueryReadingsRequest};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::procs::Service;
use crate::{Ctx, connect, fresh_topics};

const DB_NAME: &str = "iot_bench_query";
const STEP_SECS: i64 = 10;
const DAYS: i64 = 365;
const LIGHT_DEVICES: usize = 90;
const SAMPLES: usize = 400;

/// Device `i` of the benchmark: stable ids so a kept database is reusable.
pub fn device(i: usize) -> Uuid {
    Uuid::from_u128(0x1075_0000_0000_4000_8000_0000_0000_0000 | i as u128)
}

/// A smooth, noisy signal; exact to 4 decimals.
fn value(series: usize, k: i64) -> Decimal {
    let x = (k as f64 / 360.0).sin() * 1000.0 + (k % 97) as f64 + series as f64;
    Decimal::new((x * 10_000.0).round() as i64, 4)
}

pub struct Data {
    series: usize,
    /// The last reading's time; series run back `DAYS` days from here.
    pub end: DateTime<Utc>,
}

impl Data {
    fn rows(&self) -> i64 {
        self.series as i64 * DAYS * 86_400 / STEP_SECS
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.end - TimeDelta::days(DAYS)
    }
}

/// Loads the year into database `name` (or finds it loaded); returns the
/// database URL.
pub async fn load(ctx: &Ctx, name: &str, series: usize) -> (String, Data) {
    crate::drop_unless_kept(name);
    let base = ctx.admin_db.rsplit_once('/').unwrap().0;
    let url = format!("{base}/{name}");
    let kept = crate::kept_data(&url, "bench_query_data").await;
    if let Some((n, end)) = kept.as_deref().and_then(|s| s.split_once(' '))
        && n == series.to_string()
        && let Ok(end) = end.parse::<DateTime<Utc>>()
    {
        println!("reusing the loaded year in database {name} (IOT_BENCH_RELOAD=1 reloads)");
        // Migrations added since it was loaded.
        iot_db::migrate(&url, iot_db::BackendChoice::Auto)
            .await
            .unwrap();
        return (url, Data { series, end });
    }
    let report = crate::remade_database(ctx, name, &url, iot_db::BackendChoice::Auto).await;
    let db = connect(&url).await;
    if report.backend == iot_db::Backend::Postgres {
        db.execute(
            "SELECT iot_ensure_partitions($1, 14)",
            &[&(DAYS as i32 + 2)],
        )
        .await
        .unwrap();
    }
    let end = Utc::now()
        .duration_trunc(TimeDelta::seconds(STEP_SECS))
        .unwrap();
    let data = Data { series, end };
    println!(
        "loading {} rows ({} series x {DAYS} days at one reading per {STEP_SECS} s) with the writer's batch path...",
        data.rows(),
        series
    );
    let store = Store::new(iot_db::pool(&url, 2).unwrap());
    let started = Instant::now();
    let per_series = DAYS * 86_400 / STEP_SECS;
    const BATCH: i64 = 50_000;
    // Two loaders: one per core.
    let loaders: Vec<_> = (0..2)
        .map(|w| {
            let store = store.clone();
            let start = data.start();
            tokio::spawn(async move {
                for s in (0..series).filter(|s| s % 2 == w) {
                    let mut k = 0;
                    while k < per_series {
                        let rows: Vec<Row> = (k..(k + BATCH).min(per_series))
                            .map(|k| Row {
                                time: start + TimeDelta::seconds((k + 1) * STEP_SECS),
                                device_id: device(s),
                                sensor_name: "temperature".into(),
                                value: value(s, k),
                                unit: Some("C".into()),
                                quality: None,
                            })
                            .collect();
                        store.write_batch(&rows).await.unwrap();
                        k += BATCH;
                    }
                }
            })
        })
        .collect();
    let mut done = 0;
    for l in loaders {
        l.await.unwrap();
        done += 1;
        println!(
            "  loader {done}/2 done after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    // The light devices: three sensors, a reading a minute over the last day.
    for d in series..series + LIGHT_DEVICES {
        let rows: Vec<Row> = (0..1440)
            .flat_map(|m| {
                ["temperature", "humidity", "battery"].map(|s| Row {
                    time: end - TimeDelta::minutes(m),
                    device_id: device(d),
                    sensor_name: s.into(),
                    value: value(d, m),
                    unit: None,
                    quality: None,
                })
            })
            .collect();
        store.write_batch(&rows).await.unwrap();
    }
    db.batch_execute("VACUUM ANALYZE").await.unwrap();
    crate::record_kept_data(
        &db,
        "bench_query_data",
        &format!("{series} {}", end.to_rfc3339()),
    )
    .await;
    println!(
        "loaded in {:.0} s ({:.0} rows/s)",
        started.elapsed().as_secs_f64(),
        data.rows() as f64 / started.elapsed().as_secs_f64()
    );
    (url, data)
}

/// Latency percentiles in milliseconds.
pub struct Stats {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

pub fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Stats {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// Samples `a` and `b` (each called with the sample's number) `samples`
/// times each after a warm-up, interleaved and alternating which goes first
/// (whichever runs second finds the first's pages in cache); both must
/// return the same number of items. Milliseconds of each, and that number.
pub async fn interleaved<A, AF, B, BF>(
    name: &str,
    samples: usize,
    a: &mut A,
    b: &mut B,
) -> (Vec<f64>, Vec<f64>, usize)
where
    A: FnMut(usize) -> AF,
    AF: Future<Output = usize>,
    B: FnMut(usize) -> BF,
    BF: Future<Output = usize>,
{
    // Warm-up: prepared statements, caches, connections.
    for i in 0..10 {
        a(i).await;
        b(i).await;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let mut items = 0;
    for i in 0..samples {
        let timed = |t: Instant, out: &mut Vec<f64>| out.push(t.elapsed().as_secs_f64() * 1000.0);
        let (na, nb);
        if i % 2 == 0 {
            let t = Instant::now();
            na = a(i).await;
            timed(t, &mut ta);
            let t = Instant::now();
            nb = b(i).await;
            timed(t, &mut tb);
        } else {
            let t = Instant::now();
            nb = b(i).await;
            timed(t, &mut tb);
            let t = Instant::now();
            na = a(i).await;
            timed(t, &mut ta);
        }
        assert_eq!(na, nb, "{name}: the two ways disagree");
        items = na;
    }
    (ta, tb, items)
}

/// A query run both ways: `direct` against the database, `grpc` through the
/// API. Samples interleave the two so that noise hits both alike. Returns
/// the query's row of the report's table.
async fn measure<D, DF, G, GF>(
    name: &str,
    target_p95_ms: Option<f64>,
    mut direct: D,
    mut grpc: G,
) -> String
where
    D: FnMut(usize) -> DF,
    DF: Future<Output = usize>,
    G: FnMut(usize) -> GF,
    GF: Future<Output = usize>,
{
    let (d, g, items) = interleaved(name, SAMPLES, &mut direct, &mut grpc).await;
    let (d, g) = (stats(d), stats(g));
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let absolute = target_p95_ms.map_or(String::new(), |t| format!("≤ {t}: {}", met(g.p95 <= t)));
    let row = format!(
        "| {name} ({items} items) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2}×, {:.2}× | {absolute} | {} |",
        d.p50,
        d.p95,
        d.p99,
        g.p50,
        g.p95,
        g.p99,
        g.p50 / d.p50,
        g.p95 / d.p95,
        met(g.p95 <= RATIO_TARGET * d.p95),
    );
    println!("{row}");
    row
}

/// Through gRPC at p95, at most this many times the direct query.
const RATIO_TARGET: f64 = 1.3;

/// Random-looking but reproducible offsets.
fn jitter(i: usize, modulo: i64) -> i64 {
    ((i as i64).wrapping_mul(2_654_435_761) >> 7).rem_euclid(modulo)
}

pub async fn run(ctx: &Ctx) {
    let series: usize = std::env::var("IOT_BENCH_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let (url, data) = load(ctx, DB_NAME, series).await;
    let backend = {
        let db = connect(&url).await;
        iot_db::storage_backend(&db).await.unwrap().unwrap()
    };
    let store = Store::new(iot_db::pool(&url, 4).unwrap());
    let kafka = fresh_topics(ctx).await;
    let writer = Service::writer(&url, &kafka, "bench-query");
    // The platform's scope: the loaded devices belong to no owner.
    let api = loop {
        match iot_proto::connect(&Default::default(), "ingest-writer", &writer.grpc_url()).await {
            Ok(c) => break TelemetryClient::with_interceptor(c, iot_proto::Scope::Admin),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    println!(
        "query benchmark: {} rows, backend {backend}, {SAMPLES} samples per query, gRPC through a release ingest-writer",
        data.rows()
    );
    // The floor: a gRPC round trip that does no work (the health check).
    let floor = {
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            tonic::transport::Endpoint::from_shared(writer.grpc_url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let mut ms = Vec::new();
        for i in 0..SAMPLES + 10 {
            let t = Instant::now();
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap();
            if i >= 10 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let s = stats(ms);
        println!(
            "gRPC round trip doing no work (health check): p50 {:.2} p95 {:.2} p99 {:.2} ms",
            s.p50, s.p95, s.p99
        );
        s.p50
    };
    let mut rows = Vec::new();
    let sensor = "temperature";
    let series_of = |i: usize| device(i % series);
    let ts = |t: DateTime<Utc>| Some(iot_proto::timestamp(t));

    // The metrics queries, each direct and through gRPC: (name, target p95,
    // granularity, range length, how far into the year it may start).
    let metrics_queries = [
        // A year of daily metrics (start not aligned to a day).
        (
            "metrics 1d over a year",
            Some(20.0),
            "1d",
            TimeDelta::days(DAYS),
            86_400,
        ),
        // A week of hourly metrics, somewhere in the year.
        (
            "metrics 1h over a week",
            Some(10.0),
            "1h",
            TimeDelta::days(7),
            (DAYS - 8) * 86_400,
        ),
    ];
    for (name, target, granularity, length, spread) in metrics_queries {
        rows.push(
            measure_metrics(&store, &api, name, target, granularity, |i| {
                let start = data.start() + TimeDelta::seconds(jitter(i, spread));
                (series_of(i), start, start + length)
            })
            .await,
        );
    }

    // 1000 raw readings, newest first, from a day somewhere in the year.
    let day = |i: usize| {
        let start = data.start() + TimeDelta::seconds(jitter(i, (DAYS - 2) * 86_400));
        (start, start + TimeDelta::days(1))
    };
    let raw = measure(
        "1000 raw readings",
        Some(20.0),
        |i| {
            let (s, e) = day(i);
            let store = store.clone();
            async move {
                store
                    .query_readings(series_of(i), sensor, s, e, 1000)
                    .await
                    .unwrap()
                    .len()
            }
        },
        |i| {
            let (s, e) = day(i);
            let mut api = api.clone();
            async move {
                api.query_readings(QueryReadingsRequest {
                    device_uuid: series_of(i).to_string(),
                    sensor_name: sensor.into(),
                    start: ts(s),
                    end: ts(e),
                    limit: 1000,
                    cursor: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .readings
                .len()
            }
        },
    )
    .await;

    // Latest readings of 100 devices in one call.
    let hundred: Vec<Uuid> = (0..series + LIGHT_DEVICES).take(100).map(device).collect();
    rows.push(raw);
    let latest = measure(
        "latest readings of 100 devices",
        Some(20.0),
        |_| {
            let store = store.clone();
            let ids = hundred.clone();
            async move { store.latest_readings(&ids).await.unwrap().len() }
        },
        |_| {
            let mut api = api.clone();
            let ids = hundred.iter().map(Uuid::to_string).collect();
            async move {
                api.latest_readings(LatestReadingsRequest { device_uuids: ids })
                    .await
                    .unwrap()
                    .into_inner()
                    .readings
                    .len()
            }
        },
    )
    .await;

    rows.push(latest);
    // 5-minute buckets over 6 hours: read from raw rows (no rollup fits).
    let five_minutes = measure_metrics(
        &store,
        &api,
        "metrics 5m over 6 hours, from raw rows",
        None,
        "5m",
        |i| {
            let start = data.start() + TimeDelta::seconds(jitter(i, (DAYS - 2) * 86_400));
            (series_of(i), start, start + TimeDelta::hours(6))
        },
    )
    .await;
    rows.push(five_minutes);
    drop(writer);
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let section = format!(
            "{}\n\nBackend {backend}; {} rows ({series} devices with a reading every \
             {STEP_SECS} s for a year, {LIGHT_DEVICES} more with a few); {SAMPLES} samples per \
             query, straight to the database and through ingest-writer's gRPC API interleaved; \
             release build. Milliseconds. A gRPC call that does no work (the health check) \
             takes {floor:.2} ms p50.\n\n\
             | query | direct p50 / p95 / p99 | gRPC p50 / p95 / p99 | gRPC ÷ direct (p50, p95) \
             | target: gRPC p95 | target: gRPC ≤ {RATIO_TARGET}× direct at p95 |\n\
             |---|---|---|---|---|---|\n{}\n",
            crate::report_header("Query", "cargo xtask bench query"),
            data.rows(),
            rows.join("\n")
        );
        crate::replace_report_section(&path, "## Query", &section);
    }
}

/// Measures one metrics query, direct and through gRPC; `args(i)` gives
/// sample i's series and range.
async fn measure_metrics(
    store: &Store,
    api: &TelemetryClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            iot_proto::Scope,
        >,
    >,
    name: &str,
    target_p95_ms: Option<f64>,
    granularity: &str,
    args: impl Fn(usize) -> (Uuid, DateTime<Utc>, DateTime<Utc>),
) -> String {
    let width: Width = granularity.parse().unwrap();
    measure(
        name,
        target_p95_ms,
        |i| {
            let (device, s, e) = args(i);
            let store = store.clone();
            async move {
                store
                    .query_metrics(device, "temperature", s, e, width)
                    .await
                    .unwrap()
                    .len()
            }
        },
        |i| {
            let (device, s, e) = args(i);
            let mut api = api.clone();
            async move {
                api.query_metrics(QueryMetricsRequest {
                    device_uuid: device.to_string(),
                    sensor_name: "temperature".into(),
                    start: Some(iot_proto::timestamp(s)),
                    end: Some(iot_proto::timestamp(e)),
                    granularity: granularity.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .metrics
                .len()
            }
        },
    )
    .await
}
