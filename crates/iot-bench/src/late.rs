//! `iot-bench late`: what keeping the rollups costs when readings arrive
//! late, spread over a year (devices flushing old buffers). Both phases
//! write the same rows into a fresh database of the backend the server
//! offers (TimescaleDB where available):
//! 1. baseline: binary `COPY` straight into `sensor_readings` (no rollups:
//!    what continuous aggregates cost the writer, before their refreshes);
//! 2. ingest-writer's `Store::write_batch` in batches of 5,000: raw rows,
//!    the 1h/1d/1w rollups and the latest readings in one transaction.
//!
//! Rollups are then checked against the raw rows, and the figures written
//! to `docs/benchmarks.md` (`IOT_BENCH_REPORT`).

use std::time::Instant;

use futures::pin_mut;
use ingest_writer::store::Row;
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
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
    for chunk in rows.chunks(5000) {
        let sink = db
            .copy_in("COPY sensor_readings (time, device_id, sensor_name, value) FROM STDIN BINARY")
            .await
            .unwrap();
        let w = BinaryCopyInWriter::new(
            sink,
            &[Type::TIMESTAMPTZ, Type::UUID, Type::VARCHAR, Type::NUMERIC],
        );
        pin_mut!(w);
        for r in chunk {
            w.as_mut()
                .write(&[&r.time, &r.device_id, &r.sensor_name, &r.value])
                .await
                .unwrap();
        }
        w.finish().await.unwrap();
    }
}

pub async fn run(ctx: &crate::Ctx) {
    let n = ctx.rows;
    let rows = late_rows(n);
    // Duplicate keys are possible in random times; the store ignores them
    // and COPY would refuse them, so both phases get the same unique set.
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| seen.insert((r.device_id, r.sensor_name.clone(), r.time)))
        .collect();

    let raw_url = crate::fresh_db(ctx).await;
    let raw_db = crate::connect(&raw_url).await;
    let backend = iot_db::storage_backend(&raw_db).await.unwrap().unwrap();
    println!(
        "late readings: {} rows over the past year, 1,000 series, backend {backend}",
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
    let store_secs = started.elapsed().as_secs_f64();
    let store_rate = rows.len() as f64 / store_secs;
    println!(
        "writer, rollups kept               {store_rate:>10.0} rows/s   {:.2}x",
        store_rate / raw_rate
    );

    // Every level counts every raw row.
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
        assert_eq!(counted, rows.len() as i64, "{table}");
    }
    println!("every rollup level counts all {} rows", rows.len());

    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let section = format!(
            "{}\n\n{} readings at random times over the past year (1,000 series, shuffled), backend {backend}. \
             Target: keeping the rollups in the writer's transaction costs at most half the raw rate (≥ 0.50×).\n\n\
             | phase | rows/s | ratio |\n|---|---:|---:|\n\
             | raw `COPY` into `sensor_readings` (baseline) | {raw_rate:.0} | 1.00× |\n\
             | ingest-writer `write_batch`, rollups kept | {store_rate:.0} | {:.2}× |\n",
            crate::report_header("Late readings", "cargo xtask bench late"),
            rows.len(),
            store_rate / raw_rate,
        );
        crate::replace_report_section(&path, "## Late readings", &section);
    }
}
