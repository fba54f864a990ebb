//! `iot-bench late`: what keeping the rollups costs when readings arrive
//! late, spread over a year (devices flushing old buffers). Both phases
//! write the same rows into a fresh database of the backend the server
//! offers (TimescaleDB where available):
//! 1. baseline: binary `COPY` straight into `sensor_readings` (no rollups:
//!    what continuous aggregates cost the writer, before their refreshes);
//! 2. ingest-writer's `Store::write_batch` in batches of 5,000: raw rows,
//!    the 1h/1d/1w rollups and the latest readings in one transaction.
//!
//! 3. one more flush of late rows, through the writer;
//! 4. on TimescaleDB, the design not taken: continuous aggregates over the
//!    raw rows of phase 1, refreshed over the year, then again after the
//!    same flush.
//!
//! Rollups are checked against the raw rows, and the figures written to
//! `docs/benchmarks.md` (`IOT_BENCH_REPORT`).

use std::time::Instant;

use ingest_writer::store::Row;
use rust_decimal::Decimal;
use uuid::Uuid;

/// `n` readings of 1,000 series (100 devices, 10 sensors), at random
/// times over the past year, in a shuffled order.
fn late_rows(n: usize) -> Vec<Row> {
    let devices: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let now = chrono::Utc::now();
    let year_ms: i64 = 365 * 86_400_000;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            Row {
                time: now - chrono::Duration::milliseconds((r % year_ms as u64) as i64 + 3_600_000),
                device_id: devices[i % 100],
                sensor_name: format!("s{}", (i / 100) % 10),
                value: Decimal::new((r % 100_000) as i64, 2),
                unit: None,
                quality: None,
            }
        })
        .collect()
}

async fn copy_raw(db: &tokio_postgres::Client, rows: &[Row]) {
    crate::copy_in(db, rows, |r| {
        [&r.time, &r.device_id, &r.sensor_name, &r.value]
    })
    .await;
}

/// Late rows in one more flush, after the year is stored.
const FLUSH: usize = 5000;

pub async fn run(ctx: &crate::Ctx) {
    // Random times may repeat a key; the store ignores duplicates and COPY
    // would refuse them, so every phase gets the same unique rows.
    let mut seen = std::collections::HashSet::new();
    let mut unique = |rows: Vec<Row>| -> Vec<Row> {
        rows.into_iter()
            .filter(|r| seen.insert((r.device_id, r.sensor_name.clone(), r.time)))
            .collect()
    };
    let rows = unique(late_rows(ctx.rows));
    let flush = unique(late_rows(FLUSH));

    let raw_url = crate::fresh_db(ctx).await;
    let raw_db = crate::connect(&raw_url).await;
    let backend = iot_db::storage_backend(&raw_db).await.unwrap().unwrap();
    println!(
        "late readings: {} rows over the past year, 1,000 series, shuffled; backend {backend}",
        rows.len()
    );
    let started = Instant::now();
    copy_raw(&raw_db, &rows).await;
    let raw_secs = started.elapsed().as_secs_f64();
    let raw_rate = rows.len() as f64 / raw_secs;
    println!("raw COPY (baseline)                 {raw_rate:>10.0} rows/s   1.00x");

    let url = crate::fresh_db(ctx).await;
    let db = crate::connect(&url).await;
    let store = ingest_writer::Store::new(iot_db::pool(&url, 2).unwrap());
    let started = Instant::now();
    for chunk in rows.chunks(5000) {
        store.write_batch(chunk).await.unwrap();
    }
    let store_rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "writer, rollups kept               {store_rate:>10.0} rows/s   {:.2}x",
        store_rate / raw_rate
    );
    let started = Instant::now();
    store.write_batch(&flush).await.unwrap();
    let store_flush = started.elapsed().as_secs_f64();
    println!(
        "one more flush of {} late rows, rollups kept: {store_flush:.2} s",
        flush.len()
    );
    // Every level counts every raw row.
    let total = (rows.len() + flush.len()) as i64;
    for table in [
        "sensor_readings_1h",
        "sensor_readings_1d",
        "sensor_readings_1w",
    ] {
        let counted: i64 = db
            .query_one(
                &format!("SELECT COALESCE(sum(readings), 0)::int8 FROM {table}"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(counted, total, "{table}");
    }
    println!("every rollup level counts all {total} rows");

    // The design not taken, on TimescaleDB: continuous aggregates refreshed
    // over what late rows touched: the whole year once, then again after
    // one more flush.
    let refresh = if backend == "timescaledb" {
        let started = Instant::now();
        refresh_once(&raw_db).await;
        let first = started.elapsed().as_secs_f64();
        copy_raw(&raw_db, &flush).await;
        let started = Instant::now();
        refresh_all(&raw_db).await;
        let again = started.elapsed().as_secs_f64();
        println!(
            "continuous aggregates: first refresh {first:.1} s; after one more flush of {} late rows {again:.1} s",
            flush.len()
        );
        Some((first, again))
    } else {
        None
    };

    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let refresh_lines = refresh.map_or(String::new(), |(first, again)| {
            format!(
                "| the design not taken: refresh 1h/1d/1w continuous aggregates over the year, first time | {first:.1} s |\n\
                 | the design not taken: refresh again after one more flush of {} late rows | {again:.1} s |\n",
                flush.len()
            )
        });
        let section = format!(
            "{}\n\n{} readings at random times over the past year (1,000 series, shuffled), then one more flush of {} late rows; \
             backend {backend}. Targets: keeping the rollups in the writer costs at least 0.40× of a raw `COPY` when every reading is \
             late, and a late flush counts at every width faster than a refresh of continuous aggregates would make it visible.\n\n\
             | phase | figure |\n|---|---:|\n\
             | raw `COPY` into `sensor_readings` (baseline) | {raw_rate:.0} rows/s (1.00×) |\n\
             | ingest-writer `write_batch`, rollups kept | {store_rate:.0} rows/s ({:.2}×) |\n\
             | one more flush of {} late rows, rollups kept | {store_flush:.2} s |\n\
             {refresh_lines}",
            crate::report_header("Late readings", "cargo xtask bench late"),
            rows.len(),
            flush.len(),
            store_rate / raw_rate,
            flush.len(),
        );
        crate::replace_report_section(&path, "## Late readings", &section);
    }
}

async fn refresh_all(db: &tokio_postgres::Client) {
    for view in ["bench_1h", "bench_1d", "bench_1w"] {
        db.batch_execute(&format!(
            "CALL refresh_continuous_aggregate('{view}', NULL, NULL)"
        ))
        .await
        .unwrap();
    }
}

/// Hierarchical continuous aggregates like those migration 14 replaced,
/// created empty and refreshed once over everything.
async fn refresh_once(db: &tokio_postgres::Client) {
    db.batch_execute(
        "CREATE MATERIALIZED VIEW bench_1h WITH (timescaledb.continuous) AS
         SELECT device_id, sensor_name, time_bucket(INTERVAL '1 hour', time) AS bucket,
                count(*) AS readings, sum(value) AS sum_value, min(value) AS min_value,
                max(value) AS max_value
         FROM sensor_readings GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 hour', time)
         WITH NO DATA",
    )
    .await
    .unwrap();
    // Each level rolls up the one below.
    for (view, below, width) in [
        ("bench_1d", "bench_1h", "1 day"),
        ("bench_1w", "bench_1d", "1 week"),
    ] {
        db.batch_execute(&format!(
            "CREATE MATERIALIZED VIEW {view} WITH (timescaledb.continuous) AS
             SELECT device_id, sensor_name, time_bucket(INTERVAL '{width}', bucket) AS bucket,
                    sum(readings)::BIGINT AS readings, sum(sum_value) AS sum_value,
                    min(min_value) AS min_value, max(max_value) AS max_value
             FROM {below} GROUP BY device_id, sensor_name, time_bucket(INTERVAL '{width}', bucket)
             WITH NO DATA"
        ))
        .await
        .unwrap();
    }
    refresh_all(db).await;
}
