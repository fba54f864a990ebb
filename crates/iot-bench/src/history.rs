//! `iot-bench history`: how the cost of daily metrics grows with the length
//! of a series' history. Three series (a device with one sensor each) hold
//! 1 month, 1 year and 5 years of readings ending now, one every 5 minutes,
//! written with the writer's own batch path so the rollups are what
//! production keeps. Timed, interleaved: daily metrics over each whole
//! history and over its last 30 days through ingest-writer's gRPC
//! `QueryMetrics`, and, as the contrast, the same whole-history daily
//! aggregate computed from the raw rows in SQL.
//!
//! Data goes into database `iot_bench_history`, dropped at the end unless
//! `--keep` keeps it; a kept one is reused by the next run when it holds
//! the same data (`IOT_BENCH_RELOAD=1` loads it afresh).

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use ingest_writer::Store;
use ingest_writer::store::Row;
use iot_proto::v1::telemetry_client::TelemetryClient;
use iot_proto::v1::{QueryMetricsRequest, SensorMetric};
use rust_decimal::Decimal;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::procs::Service;
use crate::query::{Stats, stats};
use crate::{Ctx, connect, fresh_topics};

const DB_NAME: &str = "iot_bench_history";
/// One reading per 5 minutes: 288 a day, so a day's bucket stands for many
/// rows while five years still load in seconds.
const STEP_SECS: i64 = 300;
/// The histories, one series each: name and days.
const HISTORIES: [(&str, i64); 3] = [("1 month", 30), ("1 year", 365), ("5 years", 1826)];
/// The recent window every history is also asked for.
const RECENT_DAYS: i64 = 30;
const SENSOR: &str = "temperature";
const SAMPLES: usize = 200;
const WARM_UP: usize = 10;
const BATCH: i64 = 50_000;
/// Longest history ÷ shortest, at most this.
const TARGET: f64 = 1.5;

/// The whole-history daily aggregate straight from the raw rows, in UTC
/// days like the rollups' buckets.
const FROM_RAW: &str = "SELECT date_trunc('day', time, 'UTC'), count(*), sum(value)
    FROM sensor_readings
    WHERE device_id = $1 AND sensor_name = $2 AND time >= $3 AND time < $4
    GROUP BY 1 ORDER BY 1";

type Api = TelemetryClient<InterceptedService<Channel, iot_proto::Scope>>;

/// Series `i`'s device: stable ids so a kept database is reusable.
fn device(i: usize) -> Uuid {
    Uuid::from_u128(0x4157_0000_0000_4000_8000_0000_0000_0000 | i as u128)
}

/// A value that changes from reading to reading; exact to 4 decimals.
fn value(k: i64) -> Decimal {
    Decimal::new(200_000 + (k * 7_919) % 100_000, 4)
}

fn readings(days: i64) -> i64 {
    days * 86_400 / STEP_SECS
}

/// Series `i` holds readings in `(end - days, end]`; this is the range
/// that covers them all: `[end - days, end + step)`.
fn whole(end: DateTime<Utc>, days: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        end - TimeDelta::days(days),
        end + TimeDelta::seconds(STEP_SECS),
    )
}

/// Loads the three series into database `DB_NAME` (or finds them loaded);
/// returns the database URL and the last reading's time.
async fn load(ctx: &Ctx) -> (String, DateTime<Utc>) {
    crate::drop_unless_kept(DB_NAME);
    let base = ctx.admin_db.rsplit_once('/').unwrap().0;
    let url = format!("{base}/{DB_NAME}");
    let shape = format!(
        "{STEP_SECS} {}",
        HISTORIES.map(|(_, d)| d.to_string()).join(",")
    );
    // `auto`, `postgres` or `timescaledb`, as in the export benchmark.
    let choice: iot_db::BackendChoice = crate::env("IOT_BENCH_BACKEND", "auto").parse().unwrap();
    let kept = crate::kept_data(&url, "bench_history_data").await;
    if let Some((s, end)) = kept.as_deref().and_then(|s| s.rsplit_once(' '))
        && s == shape
        && let Ok(end) = end.parse::<DateTime<Utc>>()
    {
        // Migrations added since it was loaded; a backend other than
        // the one asked for means loading afresh.
        if iot_db::migrate(&url, choice).await.is_ok() {
            println!(
                "reusing the loaded histories in database {DB_NAME} (IOT_BENCH_RELOAD=1 reloads)"
            );
            return (url, end);
        }
    }
    let report = crate::remade_database(ctx, DB_NAME, &url, choice).await;
    let db = connect(&url).await;
    let started = Instant::now();
    if report.backend == iot_db::Backend::Postgres {
        // The daily partitions five years of readings live in, as the
        // writer's maintenance would have made them day by day. A few
        // hundred per transaction: each holds locks on the tables it makes.
        let longest = HISTORIES.map(|(_, d)| d).into_iter().max().unwrap_or(0) + 2;
        let mut back = 0;
        while back < longest {
            back = (back + 300).min(longest);
            db.execute("SELECT iot_ensure_partitions($1, 14)", &[&(back as i32)])
                .await
                .unwrap();
        }
        println!(
            "  daily partitions for {longest} days made after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let end = Utc::now()
        .duration_trunc(TimeDelta::seconds(STEP_SECS))
        .unwrap();
    let total: i64 = HISTORIES.iter().map(|(_, d)| readings(*d)).sum();
    println!(
        "loading {total} rows (3 series of {} days at one reading per {STEP_SECS} s) with the writer's batch path...",
        HISTORIES.map(|(_, d)| d.to_string()).join(", ")
    );
    let store = Store::new(iot_db::pool(&url, 2).unwrap());
    let loaders: Vec<_> = HISTORIES
        .iter()
        .enumerate()
        .map(|(i, (_, days))| {
            let (store, n) = (store.clone(), readings(*days));
            let start = end - TimeDelta::days(*days);
            tokio::spawn(async move {
                let mut written = 0;
                for from in (0..n).step_by(BATCH as usize) {
                    let rows: Vec<Row> = (from..(from + BATCH).min(n))
                        .map(|k| Row {
                            time: start + TimeDelta::seconds((k + 1) * STEP_SECS),
                            device_id: device(i),
                            sensor_name: SENSOR.into(),
                            value: value(k),
                            unit: Some("C".into()),
                            quality: None,
                        })
                        .collect();
                    written += store.write_batch(&rows).await.unwrap();
                }
                assert_eq!(written, n as u64, "series {i}: rows stored");
            })
        })
        .collect();
    for l in loaders {
        l.await.unwrap();
    }
    db.batch_execute("VACUUM ANALYZE").await.unwrap();
    crate::record_kept_data(
        &db,
        "bench_history_data",
        &format!("{shape} {}", end.to_rfc3339()),
    )
    .await;
    println!(
        "loaded in {:.0} s (partitions, rows, VACUUM ANALYZE)",
        started.elapsed().as_secs_f64()
    );
    (url, end)
}

async fn daily(
    api: &Api,
    series: usize,
    range: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<SensorMetric> {
    api.clone()
        .query_metrics(QueryMetricsRequest {
            device_uuid: device(series).to_string(),
            sensor_name: SENSOR.into(),
            start: Some(iot_proto::timestamp(range.0)),
            end: Some(iot_proto::timestamp(range.1)),
            granularity: "1d".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .metrics
}

async fn from_raw(
    db: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    series: usize,
    range: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<tokio_postgres::Row> {
    db.query(stmt, &[&device(series), &SENSOR, &range.0, &range.1])
        .await
        .unwrap()
}

#[derive(Clone, Copy)]
enum Kind {
    /// Daily metrics over the whole history, through gRPC.
    Whole,
    /// Daily metrics over the last `RECENT_DAYS`, through gRPC.
    Recent,
    /// The whole-history daily aggregate from raw rows, in SQL.
    Raw,
}

pub async fn run(ctx: &Ctx) {
    let (url, end) = load(ctx).await;
    let db = connect(&url).await;
    let backend = iot_db::storage_backend(&db).await.unwrap().unwrap();
    // Custom plans only: after five executions PostgreSQL would settle on
    // a generic plan over every daily partition, whose start-up cost (all
    // partitions locked and opened, then pruned) would swamp the rows the
    // short histories read.
    db.batch_execute("SET plan_cache_mode = force_custom_plan")
        .await
        .unwrap();
    let raw_stmt = db.prepare(FROM_RAW).await.unwrap();
    let kafka = fresh_topics(ctx).await;
    // Retention as long as the longest history: the shipped horizon (a
    // year of raw rows, two of hourly rollups) would trim the longer
    // series at start-up, and the contrast needs their raw rows.
    let writer = Service::writer_with(
        &url,
        &kafka,
        "bench-history",
        vec![
            ("RETENTION__DEFAULT_DAYS", "3650".into()),
            ("RETENTION__HOURLY_DAYS", "3650".into()),
        ],
    );
    // The platform's scope: the loaded devices belong to no owner.
    let api: Api = loop {
        match iot_proto::connect(&Default::default(), "ingest-writer", &writer.grpc_url()).await {
            Ok(c) => break TelemetryClient::with_interceptor(c, iot_proto::Scope::Admin),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // The rollups answer exactly what the raw rows hold: same days, same
    // counts and sums, every reading counted.
    for (i, (name, days)) in HISTORIES.iter().enumerate() {
        let m = daily(&api, i, whole(end, *days)).await;
        let r = from_raw(&db, &raw_stmt, i, whole(end, *days)).await;
        assert_eq!(m.len(), r.len(), "{name}: buckets, rollups vs raw rows");
        for (m, r) in m.iter().zip(&r) {
            let day: DateTime<Utc> = r.get(0);
            assert_eq!(m.bucket.as_ref().map(|b| b.seconds), Some(day.timestamp()));
            assert_eq!(m.count, r.get::<_, i64>(1) as u64, "{name}: count of {day}");
            assert_eq!(
                m.sum.parse::<Decimal>().unwrap(),
                r.get::<_, Decimal>(2),
                "{name}: sum of {day}"
            );
        }
        let counted: u64 = m.iter().map(|b| b.count).sum();
        assert_eq!(counted, readings(*days) as u64, "{name}: readings counted");
    }
    println!(
        "history benchmark: backend {backend}, one reading per {STEP_SECS} s, \
         {SAMPLES} samples per query after {WARM_UP} warm-up rounds, interleaved"
    );

    let cases: Vec<(usize, Kind)> = (0..HISTORIES.len())
        .flat_map(|i| [Kind::Whole, Kind::Recent, Kind::Raw].map(|k| (i, k)))
        .collect();
    let mut ms = vec![Vec::with_capacity(SAMPLES); cases.len()];
    let mut items = vec![None; cases.len()];
    for round in 0..WARM_UP + SAMPLES {
        // Each round in another order: what runs just before a query (a
        // raw scan pushing pages out, a large answer) differs each time
        // instead of always falling on the same query.
        for c in shuffled(cases.len(), round) {
            let (i, kind) = cases[c];
            let days = HISTORIES[i].1;
            let t = Instant::now();
            let n = match kind {
                Kind::Whole => daily(&api, i, whole(end, days)).await.len(),
                Kind::Recent => daily(&api, i, whole(end, RECENT_DAYS)).await.len(),
                Kind::Raw => from_raw(&db, &raw_stmt, i, whole(end, days)).await.len(),
            };
            let took = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(
                *items[c].get_or_insert(n),
                n,
                "buckets changed between samples"
            );
            if round >= WARM_UP {
                ms[c].push(took);
            }
        }
    }
    drop(writer);
    let mut figures = ms.into_iter().map(stats);
    let mut results = Vec::new();
    for (i, (name, days)) in HISTORIES.iter().enumerate() {
        let (w, r, raw) = (
            figures.next().unwrap(),
            figures.next().unwrap(),
            figures.next().unwrap(),
        );
        let buckets = items[3 * i].unwrap_or(0);
        let recent = items[3 * i + 1].unwrap_or(0);
        results.push(Growth {
            name,
            rows: readings(*days),
            buckets,
            recent,
            per_bucket_us: 1000.0 * w.p50 / buckets.max(1) as f64,
            whole: w,
            last: r,
            raw,
        });
    }
    let table = results.iter().map(Growth::row).collect::<Vec<_>>();
    let (first, last) = (&results[0], &results[results.len() - 1]);
    let recent_ratio = (
        last.last.p50 / first.last.p50,
        last.last.p95 / first.last.p95,
    );
    let bucket_ratio = last.per_bucket_us / first.per_bucket_us;
    let raw_ratio = last.raw.p50 / first.raw.p50;
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let recent_line = format!(
        "last {RECENT_DAYS} days at {} ÷ at {} (p50, p95): {:.2}×, {:.2}×; ≤ {TARGET}×: {}",
        last.name,
        first.name,
        recent_ratio.0,
        recent_ratio.1,
        met(recent_ratio.0 <= TARGET && recent_ratio.1 <= TARGET),
    );
    let bucket_line = format!(
        "per-bucket cost at {} ÷ at {} (p50): {bucket_ratio:.2}×; ≤ {TARGET}×: {}",
        last.name,
        first.name,
        met(bucket_ratio <= TARGET),
    );
    let raw_line = format!(
        "from raw rows at {} ÷ at {} (p50): {raw_ratio:.2}× for {:.0}× the rows",
        last.name,
        first.name,
        last.rows as f64 / first.rows as f64,
    );
    println!("{HEAD}");
    for row in &table {
        println!("{row}");
    }
    println!("{recent_line}\n{bucket_line}\n{raw_line}");
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let section = format!(
            "{}\n\nBackend {backend}. Three series, a device with one sensor each, hold 1 month, \
             1 year and 5 years of readings ending now at one every {STEP_SECS} s, written with \
             the writer's batch path (rollups as production keeps them), all in one database. \
             Through a release ingest-writer's gRPC `QueryMetrics`: daily metrics over each whole \
             history and over its last {RECENT_DAYS} days; as the contrast, the same whole-history \
             daily aggregate from the raw rows in SQL (`date_trunc('day', time)` over \
             `sensor_readings`, straight to the database, custom plans only: a generic plan \
             would open every daily partition on each call). The writer's retention keeps \
             all five years. {SAMPLES} samples each after a warm-up, the nine queries \
             interleaved in a shuffled order; milliseconds.\n\n\
             {HEAD}\n{}\n\n- {recent_line}\n- {bucket_line}\n- {raw_line}\n",
            crate::report_header("Scale: history growth", "cargo xtask bench history"),
            table.join("\n"),
        );
        crate::replace_report_section(&path, "## Scale: history growth", &section);
    }
}

/// `0..n` in an order of its own for each `round`, the same in every run
/// (Fisher-Yates driven by a xorshift seeded with the round).
fn shuffled(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (round as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

const HEAD: &str = "| history | rows | buckets | whole-history daily p50 / p95 | µs per bucket | \
    last 30 days p50 / p95 (buckets) | from raw rows p50 / p95 |\n|---|---|---|---|---|---|---|";

/// One history's figures.
struct Growth {
    name: &'static str,
    rows: i64,
    buckets: usize,
    /// Buckets of the last `RECENT_DAYS`.
    recent: usize,
    whole: Stats,
    /// Whole-history p50 per bucket, microseconds.
    per_bucket_us: f64,
    last: Stats,
    raw: Stats,
}

impl Growth {
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.2} / {:.2} | {:.1} | {:.2} / {:.2} ({}) | {:.2} / {:.2} |",
            self.name,
            self.rows,
            self.buckets,
            self.whole.p50,
            self.whole.p95,
            self.per_bucket_us,
            self.last.p50,
            self.last.p95,
            self.recent,
            self.raw.p50,
            self.raw.p95,
        )
    }
}
