//! Storage and the telemetry query API against the real database. Every
//! test body runs once per storage backend the test server has (plain
//! PostgreSQL always; TimescaleDB where installed). Readings are written
//! with the writer's own `Store::write_batch`, then read back over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_writer::store::Row;
use ingest_writer::{Store, TelemetryService};
use iot_db::Backend;
use iot_proto::v1::telemetry_client::TelemetryClient;
use iot_proto::v1::telemetry_server::TelemetryServer;
use iot_proto::v1::{self, QueryMetricsRequest, QueryReadingsRequest};
use iot_testkit as kit;
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use tonic::transport::Channel;
use uuid::Uuid;

struct Env {
    backend: Backend,
    db: tokio_postgres::Client,
    store: Store,
    api:
        TelemetryClient<tonic::service::interceptor::InterceptedService<Channel, iot_proto::Scope>>,
    /// Dropped (with the database) when the test ends.
    _db: kit::TestDb,
}

/// A database of its own with `backend`, the writer's store on it, and the
/// Telemetry gRPC service in front of it on a local port.
async fn env(backend: Backend) -> Env {
    let url = kit::migrated_database_with(backend).await;
    let store = Store::new(iot_db::pool(&url, 4).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TelemetryServer::new(TelemetryService::new(
                store.clone(),
                &ingest_writer::QueryLimits::default(),
            )))
            .serve_with_incoming(iot_runtime::grpc_incoming(listener)),
    );
    // The platform's scope: these tests read every owner's devices.
    let api = TelemetryClient::with_interceptor(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        iot_proto::Scope::Admin,
    );
    Env {
        backend,
        db: kit::connect(&url).await,
        store,
        api,
        _db: url,
    }
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn row(device: Uuid, sensor: &str, time: DateTime<Utc>, value: &str) -> Row {
    Row {
        time,
        device_id: device,
        sensor_name: sensor.into(),
        value: Decimal::from_str(value).unwrap(),
        unit: Some("C".into()),
        quality: None,
    }
}

fn ts(t: DateTime<Utc>) -> Option<iot_proto::Timestamp> {
    Some(iot_proto::timestamp(t))
}

/// QueryMetrics' answer, after checking that StreamMetrics sends the same
/// buckets (or fails with the same status) in parts of at most
/// `METRICS_PART` buckets, none of them empty unless the answer is.
async fn metrics(
    env: &Env,
    device: Uuid,
    sensor: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    granularity: &str,
) -> Result<Vec<v1::SensorMetric>, tonic::Status> {
    let req = QueryMetricsRequest {
        device_uuid: device.to_string(),
        sensor_name: sensor.into(),
        start: ts(start),
        end: ts(end),
        granularity: granularity.into(),
    };
    let whole = env
        .api
        .clone()
        .query_metrics(req.clone())
        .await
        .map(|r| r.into_inner().metrics);
    let streamed = async {
        let mut parts = env.api.clone().stream_metrics(req).await?.into_inner();
        let mut got = Vec::new();
        while let Some(part) = parts.message().await? {
            got.push(part.metrics);
        }
        Ok::<_, tonic::Status>(got)
    }
    .await;
    match (&whole, streamed) {
        (Ok(whole), Ok(parts)) => {
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            assert!(
                sizes.iter().all(|&n| n <= ingest_writer::METRICS_PART),
                "{sizes:?}"
            );
            assert!(
                sizes == [0] || (!sizes.is_empty() && !sizes.contains(&0)),
                "{sizes:?}"
            );
            assert_eq!(&parts.concat(), whole);
        }
        (Err(w), Err(s)) => {
            assert_eq!((w.code(), w.message()), (s.code(), s.message()));
        }
        (w, s) => panic!("QueryMetrics {w:?} but StreamMetrics {s:?}"),
    }
    whole
}

/// (bucket, count, avg, min, max) of each metric.
fn summary(m: &[v1::SensorMetric]) -> Vec<(DateTime<Utc>, u64, f64, f64, f64)> {
    m.iter()
        .map(|m| {
            (
                iot_proto::from_timestamp(m.bucket.as_ref().unwrap()).unwrap(),
                m.count,
                m.avg,
                m.min,
                m.max,
            )
        })
        .collect()
}

/// Runs every TimescaleDB background job now (compression and any
/// other policy), as the scheduler would: explicitly, since a scheduler
/// may not run jobs on time (or at all). Nothing on plain PostgreSQL.
async fn run_jobs(env: &Env) {
    if env.backend == Backend::TimescaleDb {
        let jobs = env
            .db
            .query(
                "SELECT job_id FROM timescaledb_information.jobs WHERE job_id >= 1000",
                &[],
            )
            .await
            .unwrap();
        for job in jobs {
            let id: i32 = job.get(0);
            env.db
                .batch_execute(&format!("CALL run_job({id})"))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn hourly_aggregation_including_across_an_hour_boundary() {
    for backend in kit::backends().await {
        let env = env(backend).await;
        let device = Uuid::new_v4();
        // 20, 22, 21, 23, 24 within one hour: avg 22, min 20, max 24.
        let base = t("2026-11-27T10:00:00Z");
        let rows: Vec<Row> = ["20", "22", "21", "23", "24"]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                row(
                    device,
                    "temperature",
                    base + TimeDelta::minutes(10 * i as i64),
                    v,
                )
            })
            .collect();
        assert_eq!(env.store.write_batch(&rows).await.unwrap(), 5);
        for g in ["1h", "1d", "1w"] {
            let m = metrics(
                &env,
                device,
                "temperature",
                base,
                base + TimeDelta::hours(1),
                g,
            )
            .await
            .unwrap();
            assert_eq!(
                summary(&m)
                    .iter()
                    .map(|s| (s.1, s.2, s.3, s.4))
                    .collect::<Vec<_>>(),
                vec![(5, 22.0, 20.0, 24.0)],
                "{backend} {g}"
            );
            assert_eq!(m[0].sum, "110");
        }

        // The same five straddling 11:00 at 1h: two buckets, each exact.
        let device = Uuid::new_v4();
        let straddle = t("2026-11-27T10:58:00Z");
        let rows: Vec<Row> = ["20", "22", "21", "23", "24"]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                row(
                    device,
                    "temperature",
                    straddle + TimeDelta::minutes(i as i64),
                    v,
                )
            })
            .collect();
        env.store.write_batch(&rows).await.unwrap();
        let m = metrics(
            &env,
            device,
            "temperature",
            t("2026-11-27T00:00:00Z"),
            t("2026-11-28T00:00:00Z"),
            "1h",
        )
        .await
        .unwrap();
        assert_eq!(
            summary(&m),
            vec![
                (t("2026-11-27T10:00:00Z"), 2, 21.0, 20.0, 22.0),
                (
                    t("2026-11-27T11:00:00Z"),
                    3,
                    // (21 + 23 + 24) / 3, to the readings' 4 decimal places.
                    22.6667,
                    21.0,
                    24.0
                ),
            ],
            "{backend}"
        );
        // A range cutting the first reading off, not aligned to any bucket.
        let m = metrics(
            &env,
            device,
            "temperature",
            t("2026-11-27T10:58:30Z"),
            t("2026-11-27T11:01:30Z"),
            "1d",
        )
        .await
        .unwrap();
        assert_eq!(
            summary(&m),
            vec![(t("2026-11-27T00:00:00Z"), 3, 22.0, 21.0, 23.0)],
            "{backend}"
        );
    }
}

#[tokio::test]
async fn raw_readings_page_newest_first_and_redelivery_changes_nothing() {
    for backend in kit::backends().await {
        let mut env = env(backend).await;
        let device = Uuid::new_v4();
        let base = t("2026-11-20T00:00:00Z");
        let rows: Vec<Row> = (0..25)
            .map(|i| {
                row(
                    device,
                    "humidity",
                    base + TimeDelta::seconds(10 * i),
                    &i.to_string(),
                )
            })
            .collect();
        assert_eq!(env.store.write_batch(&rows[..10]).await.unwrap(), 10);
        // A redelivered batch overlapping the first: only new rows count,
        // in the raw table and in the rollups.
        assert_eq!(env.store.write_batch(&rows).await.unwrap(), 15);
        assert_eq!(env.store.write_batch(&rows).await.unwrap(), 0);
        let m = metrics(
            &env,
            device,
            "humidity",
            base,
            base + TimeDelta::days(1),
            "1d",
        )
        .await
        .unwrap();
        assert_eq!(m[0].count, 25);
        assert_eq!(m[0].sum, (0..25).sum::<i32>().to_string());

        let mut pages = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = env
                .api
                .query_readings(QueryReadingsRequest {
                    device_uuid: device.to_string(),
                    sensor_name: "humidity".into(),
                    start: ts(base),
                    end: ts(base + TimeDelta::days(1)),
                    limit: 10,
                    cursor: cursor.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            pages.push(
                page.readings
                    .iter()
                    .map(|r| r.value.clone())
                    .collect::<Vec<_>>(),
            );
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let expected: Vec<String> = (0..25).rev().map(|i: i32| i.to_string()).collect();
        assert_eq!(pages.len(), 3, "{backend}");
        assert_eq!(pages.concat(), expected, "{backend}");
    }
}

#[tokio::test]
async fn latest_readings_of_many_devices_in_one_call_and_fleet_stats() {
    for backend in kit::backends().await {
        let mut env = env(backend).await;
        let devices: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let now = Utc::now();
        let mut rows = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            for s in ["temperature", "battery"] {
                for k in 0..3 {
                    let v = format!("{}", i * 10 + k);
                    rows.push(row(*d, s, now - TimeDelta::seconds(30 - k as i64), &v));
                }
            }
        }
        // Out of order on purpose: the latest is by time, not arrival.
        rows.reverse();
        env.store.write_batch(&rows).await.unwrap();
        // An older reading arriving later does not replace the latest.
        env.store
            .write_batch(&[row(devices[0], "battery", now - TimeDelta::hours(1), "99")])
            .await
            .unwrap();
        let latest = env
            .api
            .latest_readings(v1::LatestReadingsRequest {
                device_uuids: devices[..2].iter().map(Uuid::to_string).collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .readings;
        let got: BTreeMap<(String, String), String> = latest
            .into_iter()
            .map(|r| ((r.device_uuid, r.sensor_name), r.value))
            .collect();
        assert_eq!(got.len(), 4, "{backend}");
        for (i, d) in devices[..2].iter().enumerate() {
            for s in ["temperature", "battery"] {
                assert_eq!(
                    got[&(d.to_string(), s.to_owned())],
                    (i * 10 + 2).to_string()
                );
            }
        }

        let stats = env
            .api
            .fleet_stats(v1::FleetStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.devices_reporting, 3);
        assert_eq!(stats.series, 6);
        // The 19 readings were stored within the last second or two: they
        // count once the second they were stored in is complete.
        let stats = kit::eventually(
            "readings counted",
            std::time::Duration::from_secs(5),
            || {
                let mut api = env.api.clone();
                async move {
                    let s = api
                        .fleet_stats(v1::FleetStatsRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    (s.readings_last_minute == 19).then_some(s)
                }
            },
        )
        .await;
        assert!((stats.readings_per_second - 19.0 / 60.0).abs() < 1e-9);
    }
}

/// A series' `sensor_latest` row is rewritten at most once per
/// `latest::REFRESH`; what is newer is read from the raw rows, so the
/// latest readings and the fleet counts stay exact.
#[tokio::test]
async fn readings_newer_than_the_latest_row_still_count_as_latest() {
    use ingest_writer::latest::REFRESH;
    for backend in kit::backends().await {
        let mut env = env(backend).await;
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        let mark = now - TimeDelta::minutes(5);
        let first = mark - TimeDelta::seconds(20);
        env.store
            .write_batch(&[
                row(a, "temperature", first, "1"),
                row(b, "temperature", first, "2"),
                row(
                    c,
                    "temperature",
                    mark - REFRESH - TimeDelta::seconds(30),
                    "3",
                ),
            ])
            .await
            .unwrap();
        // Within REFRESH of what was written: the row is not rewritten.
        let second = first + REFRESH / 2;
        env.store
            .write_batch(&[row(a, "temperature", second, "4")])
            .await
            .unwrap();
        // The time of a device's row, in µs (the database keeps no finer).
        async fn stored(db: &tokio_postgres::Client, device: Uuid) -> i64 {
            let t: DateTime<Utc> = db
                .query_one(
                    "SELECT time FROM sensor_latest WHERE device_id = $1",
                    &[&device],
                )
                .await
                .unwrap()
                .get(0);
            t.timestamp_micros()
        }
        assert_eq!(
            stored(&env.db, a).await,
            first.timestamp_micros(),
            "{backend}"
        );
        let latest = |env: &mut Env| {
            let mut api = env.api.clone();
            async move {
                api.latest_readings(v1::LatestReadingsRequest {
                    device_uuids: vec![a.to_string()],
                })
                .await
                .unwrap()
                .into_inner()
                .readings
                .into_iter()
                .map(|r| r.value)
                .collect::<Vec<_>>()
            }
        };
        assert_eq!(latest(&mut env).await, ["4"], "{backend}");
        let stats = env
            .api
            .fleet_stats(v1::FleetStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        // a's row says 5m20s ago, its raw rows 4m50s ago: it reports; b and
        // c do not.
        assert_eq!(
            (stats.devices_reporting, stats.devices_silent),
            (1, 2),
            "{backend}"
        );
        // REFRESH or more past what was written: the row is rewritten.
        env.store
            .write_batch(&[row(a, "temperature", first + REFRESH, "5")])
            .await
            .unwrap();
        assert_eq!(
            stored(&env.db, a).await,
            (first + REFRESH).timestamp_micros(),
            "{backend}"
        );
        assert_eq!(latest(&mut env).await, ["5"], "{backend}");
    }
}

#[tokio::test]
async fn streamed_metrics_come_in_parts_of_at_most_512_buckets() {
    let mut env = env(Backend::Postgres).await;
    let device = Uuid::new_v4();
    let base = t("2026-10-01T00:00:00Z");
    // 2,500 readings 90 s apart: 2,500 buckets of 90 s.
    let rows: Vec<Row> = (0..2_500)
        .map(|i| {
            let v = format!("{}.25", i % 40);
            row(device, "temperature", base + TimeDelta::seconds(90 * i), &v)
        })
        .collect();
    env.store.write_batch(&rows).await.unwrap();
    let end = base + TimeDelta::seconds(90 * 2_500);
    // `metrics` checks that the streamed buckets are QueryMetrics' own.
    let whole = metrics(&env, device, "temperature", base, end, "90s")
        .await
        .unwrap();
    assert_eq!(whole.len(), 2_500);
    let mut parts = env
        .api
        .stream_metrics(QueryMetricsRequest {
            device_uuid: device.to_string(),
            sensor_name: "temperature".into(),
            start: ts(base),
            end: ts(end),
            granularity: "90s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(part) = parts.message().await.unwrap() {
        sizes.push(part.metrics.len());
    }
    assert_eq!(sizes, [512, 512, 512, 512, 452]);
}

#[tokio::test]
async fn bad_arguments_name_the_field() {
    let mut env = env(Backend::Postgres).await;
    let d = Uuid::new_v4();
    let now = Utc::now();
    let cases = [
        (now, now - TimeDelta::hours(1), "1h", "end"),
        (now - TimeDelta::hours(1), now, "1y", "granularity"),
        (now - TimeDelta::days(365), now, "1m", "granularity"),
        (now - TimeDelta::days(60), now, "1h", "ok"),
        (now - TimeDelta::days(40), now, "30m", "end"),
    ];
    for (start, end, g, field) in cases {
        let r = metrics(&env, d, "temperature", start, end, g).await;
        if field == "ok" {
            assert!(r.is_ok(), "{g}: {r:?}");
            continue;
        }
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{g}");
        assert!(e.message().starts_with(&format!("{field}:")), "{e:?}");
    }
    let e = env
        .api
        .query_readings(QueryReadingsRequest {
            device_uuid: "boiler-7".into(),
            sensor_name: "temperature".into(),
            start: ts(now - TimeDelta::hours(1)),
            end: ts(now),
            limit: 50_000,
            cursor: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    for field in ["device_uuid:", "limit:", "cursor:"] {
        assert!(e.message().contains(field), "{e:?}");
    }
    let e = env
        .api
        .latest_readings(v1::LatestReadingsRequest {
            device_uuids: vec![d.to_string(), "x".into()],
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("device_uuids[1]:"), "{e:?}");
}

#[tokio::test]
async fn retention_per_device_keeps_rollups_and_other_devices() {
    for backend in kit::backends().await {
        let env = env(backend).await;
        // Device A keeps raw readings 10 days; B has no config (the default,
        // 30 days here).
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let owner = Uuid::new_v4();
        for (id, ext) in [(a, "ret-a"), (b, "ret-b")] {
            env.db
                .execute(
                    "INSERT INTO devices (id, device_id, name, device_type, owner_id)
                     VALUES ($1, $2, $2, 'sensor', $3)",
                    &[&id, &ext, &owner],
                )
                .await
                .unwrap();
        }
        env.db
            .execute(
                "INSERT INTO device_config (device_id, data_retention_days) VALUES ($1, 10)",
                &[&a],
            )
            .await
            .unwrap();
        if backend == Backend::Postgres {
            // Daily partitions for the whole range, so old days go by DROP.
            env.db
                .execute("SELECT iot_ensure_partitions(60, 14)", &[])
                .await
                .unwrap();
        }
        let now = Utc::now();
        let ages = [45, 20, 5, 0];
        let mut rows = Vec::new();
        for d in [a, b] {
            for age in ages {
                rows.push(row(d, "temperature", now - TimeDelta::days(age), "1.5"));
            }
        }
        env.store.write_batch(&rows).await.unwrap();
        run_jobs(&env).await;

        let archive = std::env::temp_dir().join(format!("iot-archive-{}", kit::unique()));
        let cfg = ingest_writer::retention::RetentionConfig {
            default_days: 30,
            hourly_days: 30,
            archive: ingest_writer::archive::ArchiveConfig {
                enabled: true,
                dir: archive.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, report) = ingest_writer::retention::maintain(env.store.pool(), backend, &cfg, now)
            .await
            .unwrap()
            .expect("no other maintenance runs on this database");
        std::fs::remove_dir_all(&archive).unwrap();
        assert_eq!(report.horizon_days, 30);
        assert_eq!(report.devices_trimmed, 1);
        if backend == Backend::Postgres {
            assert!(report.partitions_dropped >= 1, "{report:?}");
        }

        let raw = |d: Uuid| {
            let db = &env.db;
            async move {
                let ages: Vec<i64> = db
                    .query(
                        "SELECT time FROM sensor_readings WHERE device_id = $1 ORDER BY time",
                        &[&d],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (now - r.get::<_, DateTime<Utc>>(0)).num_days())
                    .collect();
                ages
            }
        };
        // A: older than 10 days gone. B: older than the 30-day default gone.
        assert_eq!(raw(a).await, vec![5, 0], "{backend}");
        assert_eq!(raw(b).await, vec![20, 5, 0], "{backend}");

        // Daily rollups outlive raw rows: A's month still counts all four.
        let start = now - TimeDelta::days(50);
        let end = now + TimeDelta::hours(1);
        let m = metrics(&env, a, "temperature", start, end, "1w")
            .await
            .unwrap();
        let total: u64 = m.iter().map(|m| m.count).sum();
        assert_eq!(total, 4, "{backend}: {m:?}");
        // Hourly rollups are kept 30 days: the 45-day-old hour is gone (and
        // this hour's reading reaches them only when the hour is sealed).
        let hourly: i64 = env
            .db
            .query_one(
                "SELECT count(*) FROM sensor_readings_1h WHERE device_id = $1",
                &[&a],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(hourly, 2, "{backend}");
    }
}

/// Whatever continuous aggregates the database has (none since migration
/// 14) are refreshed over `[start, end)`, bottom up, as a refresh policy
/// does for recent data: what a late reading then meets.
async fn refresh_aggregates(env: &Env, start: DateTime<Utc>, end: DateTime<Utc>) {
    if env.backend != Backend::TimescaleDb {
        return;
    }
    for view in [
        "sensor_readings_1h",
        "sensor_readings_1d",
        "sensor_readings_1w",
    ] {
        let cagg: bool = env
            .db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
                 WHERE view_name = $1)",
                &[&view],
            )
            .await
            .unwrap()
            .get(0);
        if cagg {
            env.db
                .batch_execute(&format!(
                    "CALL refresh_continuous_aggregate('{view}', '{start}', '{end}')"
                ))
                .await
                .unwrap();
        }
    }
}

/// A device flushes a buffer days late: the readings count at every width
/// at once, whatever the background jobs have done in between.
#[tokio::test]
async fn late_readings_count_at_every_width() {
    for backend in kit::backends().await {
        let env = env(backend).await;
        let device = Uuid::new_v4();
        let hour = Utc::now() - TimeDelta::days(10);
        let hour = hour - TimeDelta::seconds(hour.timestamp().rem_euclid(3600));
        let at = |min: i64, v: &str| row(device, "temperature", hour + TimeDelta::minutes(min), v);
        env.store
            .write_batch(&[at(1, "21.5"), at(2, "22.5")])
            .await
            .unwrap();
        let (start, end) = (hour - TimeDelta::weeks(2), hour + TimeDelta::weeks(2));
        run_jobs(&env).await;
        refresh_aggregates(&env, start, end).await;
        for g in ["5m", "1h", "1d", "1w"] {
            let m = metrics(&env, device, "temperature", start, end, g)
                .await
                .unwrap();
            let s = summary(&m);
            assert_eq!(
                s.iter().map(|s| (s.1, s.2, s.4)).collect::<Vec<_>>(),
                vec![(2, 22.0, 22.5)],
                "{backend} {g}: {s:?}"
            );
        }
        if backend == Backend::TimescaleDb {
            let compressed: bool = env
                .db
                .query_one(
                    "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks
                     WHERE hypertable_name = 'sensor_readings'
                       AND range_start <= $1 AND range_end > $1",
                    &[&hour],
                )
                .await
                .unwrap()
                .get(0);
            assert!(compressed, "the compression policy compressed the chunk");
        }
        // Late, into an hour the jobs have been over (on TimescaleDB, into a
        // compressed chunk); its redelivery changes nothing.
        env.store.write_batch(&[at(20, "30.0")]).await.unwrap();
        assert_eq!(env.store.write_batch(&[at(20, "30.0")]).await.unwrap(), 0);
        run_jobs(&env).await;
        let raw = raw_rows(&env, device).await;
        assert_eq!(raw.len(), 3);
        for (g, width) in [("1h", 3_600), ("1d", 86_400), ("1w", 604_800)] {
            let m = metrics(&env, device, "temperature", start, end, g)
                .await
                .unwrap();
            let got: Vec<_> = m.iter().map(|m| (m.count, m.max)).collect();
            let want: Vec<_> = naive(&raw, start, end, width)
                .iter()
                .map(|(_, n, _, _, hi)| (*n, hi.to_f64().unwrap()))
                .collect();
            assert_eq!(got, want, "{backend} {g}");
            assert_eq!(got, vec![(3, 30.0)], "{backend} {g}");
        }
    }
}

/// (time, value) of every raw row of `device`.
async fn raw_rows(env: &Env, device: Uuid) -> Vec<(DateTime<Utc>, Decimal)> {
    env.db
        .query(
            "SELECT time, value FROM sensor_readings WHERE device_id = $1",
            &[&device],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Naive per-bucket (count, sum, min, max) of raw rows in `[start, end)`,
/// buckets aligned to Monday 2000-01-03 UTC.
fn naive(
    raw: &[(DateTime<Utc>, Decimal)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    width: i64,
) -> Vec<(DateTime<Utc>, u64, Decimal, Decimal, Decimal)> {
    let origin = t("2000-01-03T00:00:00Z");
    let mut out: BTreeMap<DateTime<Utc>, (u64, Decimal, Decimal, Decimal)> = BTreeMap::new();
    for (time, v) in raw.iter().filter(|(time, _)| *time >= start && *time < end) {
        let k = (*time - origin)
            .num_microseconds()
            .unwrap()
            .div_euclid(width * 1_000_000);
        let bucket = origin + TimeDelta::seconds(k * width);
        let e = out.entry(bucket).or_insert((0, Decimal::ZERO, *v, *v));
        e.0 += 1;
        e.1 += *v;
        e.2 = e.2.min(*v);
        e.3 = e.3.max(*v);
    }
    out.into_iter()
        .map(|(b, (n, s, lo, hi))| (b, n, s, lo, hi))
        .collect()
}

/// QueryMetrics' answer for `[start, end)` at `name` (`width` seconds)
/// equals the naive computation over `raw`.
async fn answer_matches(
    env: &Env,
    device: Uuid,
    raw: &[(DateTime<Utc>, Decimal)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    name: &str,
    width: i64,
) {
    let backend = env.backend;
    let got = metrics(env, device, "s", start, end, name)
        .await
        .unwrap_or_else(|e| panic!("{name} {start} {end}: {e:?}"));
    let want = naive(raw, start, end, width);
    let f = |d: Decimal| d.to_f64().unwrap();
    let got: Vec<_> = got
        .iter()
        .map(|m| {
            (
                iot_proto::from_timestamp(m.bucket.as_ref().unwrap()).unwrap(),
                m.count,
                Decimal::from_str(&m.sum).unwrap(),
                m.min,
                m.max,
                m.avg,
            )
        })
        .collect();
    let want: Vec<_> = want
        .iter()
        .map(|(b, n, s, lo, hi)| {
            let mean = (*s / Decimal::from(*n))
                .round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            (*b, *n, *s, f(*lo), f(*hi), f(mean))
        })
        .collect();
    assert_eq!(got, want, "{backend} {name} [{start}, {end})");
}

/// Widths the metric tests ask for, and their seconds: raw-only, one
/// rollup level, and several.
const WIDTHS: [(&str, i64); 8] = [
    ("90s", 90),
    ("5m", 300),
    ("1h", 3_600),
    ("2h", 7_200),
    ("1d", 86_400),
    ("3d", 259_200),
    ("1w", 604_800),
    ("2w", 1_209_600),
];

#[test]
fn metrics_equal_a_naive_computation_over_the_raw_rows() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let widths = WIDTHS;
    for backend in rt.block_on(kit::backends()) {
        let env = rt.block_on(env(backend));
        let base = t("2026-09-30T07:13:21Z");
        let day = 86_400i64;
        let strategy = (
            prop::collection::vec(
                (0..21 * day, 0..1000i64, -9_999_999_999i64..10_000_000_000),
                1..300,
            ),
            prop::collection::vec((-day..22 * day, 1..23 * day, 0..widths.len()), 1..6),
        );
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 24,
            ..ProptestConfig::default()
        });
        runner
            .run(&strategy, |(readings, queries)| {
                rt.block_on(async {
                    let device = Uuid::new_v4();
                    let rows: Vec<Row> = readings
                        .iter()
                        .map(|(secs, millis, v)| Row {
                            time: base
                                + TimeDelta::seconds(*secs)
                                + TimeDelta::milliseconds(*millis),
                            device_id: device,
                            sensor_name: "s".into(),
                            value: Decimal::new(*v, 4),
                            unit: None,
                            quality: None,
                        })
                        .collect();
                    // Half first (the direct COPY), then all of it again
                    // (the de-duplicating path inserts only the rest).
                    env.store
                        .write_batch(&rows[..rows.len() / 2])
                        .await
                        .unwrap();
                    // Whatever the backend maintains in the background has
                    // run over the whole range before the rest arrives, as
                    // late as two months.
                    run_jobs(&env).await;
                    refresh_aggregates(&env, base - TimeDelta::days(1), base + TimeDelta::days(23))
                        .await;
                    env.store.write_batch(&rows).await.unwrap();
                    let raw = raw_rows(&env, device).await;
                    for (from, len, w) in queries {
                        let (name, width) = widths[w];
                        let start = base + TimeDelta::seconds(from);
                        let end = start + TimeDelta::seconds(len.min(9_000 * width));
                        answer_matches(&env, device, &raw, start, end, name, width).await;
                    }
                });
                Ok(())
            })
            .unwrap();
    }
}

/// Seals every hour that ends by `until` (an hour boundary), as the
/// writer's background seal does when `until` is a grace period ago.
async fn seal_until(env: &Env, until: DateTime<Utc>) -> ingest_writer::seal::Report {
    let ago = (Utc::now() - until - TimeDelta::seconds(1))
        .to_std()
        .unwrap();
    ingest_writer::seal::seal(env.store.pool(), ago, env.store.sealed())
        .await
        .unwrap()
        .expect("no other seal runs")
}

/// Puts the watermark at `at`: consistent in a database with no readings
/// yet, whatever `at` is.
async fn move_watermark(env: &Env, at: DateTime<Utc>) {
    env.db
        .execute(
            "UPDATE rollup_watermark SET sealed_until = $1, upsert_below = $1",
            &[&at],
        )
        .await
        .unwrap();
}

async fn watermark(env: &Env) -> (DateTime<Utc>, DateTime<Utc>) {
    let r = env
        .db
        .query_one(
            "SELECT sealed_until, upsert_below FROM rollup_watermark",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// `device`'s rows of a rollup table or view with buckets before `before`,
/// oldest first, as [`naive`] gives them.
async fn bucket_rows(
    env: &Env,
    relation: &str,
    device: Uuid,
    before: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, u64, Decimal, Decimal, Decimal)> {
    env.db
        .query(
            &format!(
                "SELECT bucket, readings, sum_value, min_value, max_value FROM {relation}
                 WHERE device_id = $1 AND bucket < $2 ORDER BY bucket"
            ),
            &[&device, &before],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let n: i64 = r.get(1);
            (r.get(0), n as u64, r.get(2), r.get(3), r.get(4))
        })
        .collect()
}

/// The rollup rows of `device` at every level whose bucket ends by the
/// watermark count exactly its raw rows; none exists past it.
async fn rollups_exact(env: &Env, device: Uuid) {
    let (sealed, _) = watermark(env).await;
    let raw = raw_rows(env, device).await;
    let (origin, never) = (t("2000-01-03T00:00:00Z"), t("2100-01-01T00:00:00Z"));
    for (table, width) in [
        ("sensor_readings_1h", 3_600i64),
        ("sensor_readings_1d", 86_400),
        ("sensor_readings_1w", 604_800),
    ] {
        // A bucket the watermark cuts holds what is before it.
        assert_eq!(
            bucket_rows(env, table, device, sealed).await,
            naive(&raw, origin, sealed, width),
            "{} {table} below {sealed}",
            env.backend
        );
        let after: i64 = env
            .db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE device_id = $1 AND bucket >= $2"),
                &[&device, &sealed],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(after, 0, "{} {table} past {sealed}", env.backend);
    }
    // The views dashboards read: every reading, sealed or not.
    for (view, width) in [
        ("sensor_readings_1h_live", 3_600i64),
        ("sensor_readings_1d_live", 86_400),
    ] {
        assert_eq!(
            bucket_rows(env, view, device, never).await,
            naive(&raw, origin, never, width),
            "{} {view}",
            env.backend
        );
    }
}

/// A small deterministic generator (xorshift) for the sealing tests.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as i64
    }
}

#[tokio::test]
async fn sealing_changes_no_answer_and_keeps_rollups_exact() {
    let widths = WIDTHS;
    for backend in kit::backends().await {
        let env = env(backend).await;
        let base = t("2026-09-28T00:00:00Z");
        move_watermark(&env, base).await;
        let mut rng = Rng(0x5ea1_5ea1);
        let mut devices = Vec::new();
        for round in 0..6i64 {
            let device = Uuid::new_v4();
            devices.push(device);
            let w0 = base + TimeDelta::days(4 * round);
            let hour = |h: i64| w0 + TimeDelta::hours(h);
            let at = |rng: &mut Rng, from: DateTime<Utc>, span_ms: i64| Row {
                time: from + TimeDelta::milliseconds(rng.below(span_ms)),
                device_id: device,
                sensor_name: "s".into(),
                value: Decimal::new(rng.below(2_000_000) - 1_000_000, 3),
                unit: None,
                quality: None,
            };
            let four_days = 4 * 86_400_000;
            let rows: Vec<Row> = (0..150).map(|_| at(&mut rng, w0, four_days)).collect();
            let check = |rng: &mut Rng| {
                let (from, len) = (rng.below(5 * 86_400) - 86_400, 1 + rng.below(6 * 86_400));
                let (name, width) = widths[rng.below(widths.len() as i64) as usize];
                (w0 + TimeDelta::seconds(from), len, name, width)
            };
            let answers = |rng: &mut Rng| {
                let qs: Vec<_> = (0..4).map(|_| check(rng)).collect();
                let env = &env;
                async move {
                    let raw = raw_rows(env, device).await;
                    for (start, len, name, width) in qs {
                        answer_matches(
                            env,
                            device,
                            &raw,
                            start,
                            start + TimeDelta::seconds(len),
                            name,
                            width,
                        )
                        .await;
                    }
                    // The whole window at once, at every level (and at
                    // widths that fit the bucket limit over 18 days).
                    for (name, width) in widths.into_iter().filter(|(_, w)| *w >= 300) {
                        answer_matches(
                            env,
                            device,
                            &raw,
                            w0 - TimeDelta::days(7),
                            w0 + TimeDelta::days(11),
                            name,
                            width,
                        )
                        .await;
                    }
                }
            };
            // Unsealed: nothing reaches the rollups, every answer is right.
            env.store.write_batch(&rows[..75]).await.unwrap();
            answers(&mut rng).await;
            rollups_exact(&env, device).await;
            let k1 = 1 + rng.below(48);
            let r = seal_until(&env, hour(k1)).await;
            assert_eq!((r.to, r.recovered), (hour(k1), false), "{backend}");
            answers(&mut rng).await;
            rollups_exact(&env, device).await;
            // All of it again: the older part is upserted with its batch.
            env.store.write_batch(&rows).await.unwrap();
            answers(&mut rng).await;
            rollups_exact(&env, device).await;
            if round % 2 == 1 {
                // A seal that died after moving upsert_below, and late
                // readings upserted into its range since.
                let k2 = k1 + 1 + rng.below(40);
                env.db
                    .execute(
                        "UPDATE rollup_watermark SET upsert_below = $1",
                        &[&hour(k2)],
                    )
                    .await
                    .unwrap();
                let span = (k2 - k1) * 3_600_000;
                let late: Vec<Row> = (0..12).map(|_| at(&mut rng, hour(k1), span)).collect();
                env.store.write_batch(&late).await.unwrap();
                answers(&mut rng).await;
            }
            let r = seal_until(&env, hour(96)).await;
            assert_eq!(r.to, hour(96), "{backend}");
            assert_eq!(r.recovered, round % 2 == 1, "{backend}");
            assert_eq!(watermark(&env).await, (hour(96), hour(96)));
            answers(&mut rng).await;
        }
        for d in devices {
            rollups_exact(&env, d).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_written_during_seals_count_once() {
    for backend in kit::backends().await {
        let env = std::sync::Arc::new(env(backend).await);
        let now = Utc::now();
        let base = now - TimeDelta::seconds(now.timestamp().rem_euclid(3_600)) - TimeDelta::days(3);
        move_watermark(&env, base).await;
        let device = Uuid::new_v4();
        // Two writers, each its own readings spread over three days, in
        // batches that race a seal every few milliseconds.
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let env = env.clone();
                tokio::spawn(async move {
                    let mut rng = Rng(0x0dd5 + w);
                    for batch in 0..60i64 {
                        let rows: Vec<Row> = (0..100i64)
                            .map(|i| Row {
                                time: base
                                    + TimeDelta::hours(rng.below(72))
                                    + TimeDelta::milliseconds(
                                        (w as i64 * 6_000 + batch * 100 + i) * 7,
                                    ),
                                device_id: device,
                                sensor_name: "s".into(),
                                value: Decimal::new(rng.below(100_000), 2),
                                unit: None,
                                quality: None,
                            })
                            .collect();
                        env.store.write_batch(&rows).await.unwrap();
                    }
                })
            })
            .collect();
        let mut h = 0;
        while writers.iter().any(|w| !w.is_finished()) && h < 72 {
            h += 1;
            seal_until(&env, base + TimeDelta::hours(h)).await;
        }
        for w in writers {
            w.await.unwrap();
        }
        assert!(
            h > 3,
            "{backend}: seals ran while the batches were written ({h})"
        );
        let raw = raw_rows(&env, device).await;
        assert_eq!(raw.len(), 12_000, "{backend}");
        rollups_exact(&env, device).await;
        seal_until(&env, base + TimeDelta::hours(72)).await;
        rollups_exact(&env, device).await;
        for (name, width) in [("1h", 3_600), ("1d", 86_400), ("1w", 604_800)] {
            answer_matches(
                &env,
                device,
                &raw,
                base - TimeDelta::days(7),
                now,
                name,
                width,
            )
            .await;
        }
    }
}
