//! `iot-bench export`: `iotctl export`'s path (ingest-writer's
//! `archive::export`) writing one device's readings to a Parquet file,
//! against a raw `COPY ... TO STDOUT` of the same rows (same query, same
//! order) in the same run; and the export's peak RSS.
//!
//! The rows (`IOT_BENCH_EXPORT_ROWS`, 10 million: one device, 10 sensors,
//! one reading a second each) are made by the server (`generate_series`),
//! so the program's own memory before the export is small; its peak RSS is
//! reset (`/proc/self/clear_refs`) before each export. Each side runs twice,
//! alternating; the better run of each counts. Targets: the export at least
//! 0.50× of `COPY`, peak RSS at most 150 MiB. `IOT_BENCH_BACKEND` picks the
//! backend (auto by default).

use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use ingest_writer::archive::LocalStore;
use ingest_writer::archive::export::{Format, Request, export_readings};
use uuid::Uuid;

use crate::{Ctx, connect, env};

const SENSORS: i64 = 10;

pub async fn run(ctx: &Ctx) {
    let rows: i64 = env("IOT_BENCH_EXPORT_ROWS", "10000000").parse().unwrap();
    let url = database(ctx).await;
    let db = connect(&url).await;
    let device = Uuid::new_v4();
    let seconds = rows / SENSORS;
    let to = floor_second(Utc::now());
    let from = to - TimeDelta::seconds(seconds);
    let started = Instant::now();
    db.execute(
        "INSERT INTO sensor_readings (time, device_id, sensor_name, value, unit, quality)
         SELECT $2::timestamptz + make_interval(secs => i), $1, 'sensor_' || k,
                round((random() * 2000 - 1000)::numeric, 4), 'C', NULL
         FROM generate_series(0, $3::bigint - 1) AS i, generate_series(1, $4::bigint) AS k",
        &[&device, &from, &seconds, &SENSORS],
    )
    .await
    .unwrap();
    db.batch_execute("ANALYZE sensor_readings").await.unwrap();
    let rows = seconds * SENSORS;
    println!(
        "{rows} rows made in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let query = format!(
        "COPY (SELECT time, device_id, sensor_name, value, unit, quality FROM sensor_readings
               WHERE device_id = '{device}' AND time >= '{}' AND time < '{}'
               ORDER BY time, sensor_name COLLATE \"C\") TO STDOUT",
        from.to_rfc3339(),
        to.to_rfc3339()
    );
    let dir = std::env::temp_dir().join(format!("iot-bench-export-{}", crate::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = LocalStore::new(dir.join("archive"));
    let file = dir.join("export.parquet");
    let req = Request {
        device,
        sensor: None,
        from,
        to,
        format: Format::Parquet,
    };

    let (mut copy_best, mut export_best, mut rss_peak) = (f64::MAX, f64::MAX, 0u64);
    let mut copy_bytes = 0u64;
    for round in 1..=2 {
        // Raw COPY TO: the same rows, as text, read off the socket.
        let started = Instant::now();
        let stream = db.copy_out(query.as_str()).await.unwrap();
        futures::pin_mut!(stream);
        copy_bytes = 0;
        while let Some(chunk) = stream.next().await {
            copy_bytes += chunk.unwrap().len() as u64;
        }
        let copy_secs = started.elapsed().as_secs_f64();
        copy_best = copy_best.min(copy_secs);

        reset_peak_rss();
        let started = Instant::now();
        let out = std::fs::File::create(&file).unwrap();
        let written = export_readings(&db, Some(&store), &req, Box::new(out), Arc::default())
            .await
            .unwrap();
        let export_secs = started.elapsed().as_secs_f64();
        let rss = peak_rss_kib();
        assert_eq!(written as i64, rows, "the export wrote every row");
        export_best = export_best.min(export_secs);
        rss_peak = rss_peak.max(rss);
        println!(
            "round {round}: COPY TO {:.0} rows/s; export to Parquet {:.0} rows/s; peak RSS {} MiB",
            rows as f64 / copy_secs,
            rows as f64 / export_secs,
            rss / 1024
        );
    }
    let parquet_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let copy_rate = rows as f64 / copy_best;
    let export_rate = rows as f64 / export_best;
    let ratio = export_rate / copy_rate;
    let rss_mib = rss_peak as f64 / 1024.0;
    println!(
        "export: {export_rate:.0} rows/s = {ratio:.2}x COPY TO ({copy_rate:.0} rows/s); peak RSS {rss_mib:.0} MiB; \
         Parquet {} MiB vs COPY text {} MiB",
        parquet_bytes >> 20,
        copy_bytes >> 20
    );
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        let section = format!(
            "{}\n\n{rows} readings of one device (10 sensors, one a second), made by the server; backend {}. \
             `iotctl export --format parquet`'s path (database rows merged with the archive, here empty, in time order, \
             written as Snappy-compressed Parquet with DECIMAL(10,4) values) against a raw `COPY (same query) TO STDOUT` \
             read off the socket, in the same run; each twice, alternating, the better run counts. Peak RSS is the \
             program's VmHWM, reset before each export.\n\n\
             | phase | figure |\n|---|---:|\n\
             | raw `COPY TO` (baseline) | {copy_rate:.0} rows/s (1.00×), {} MiB of text |\n\
             | export to Parquet | {export_rate:.0} rows/s ({ratio:.2}×; target ≥ 0.50×: {}), {} MiB file |\n\
             | export peak RSS | {rss_mib:.0} MiB (target ≤ 150 MiB: {}) |\n",
            crate::report_header("Export (cold storage)", "cargo xtask bench export"),
            backend(&db).await,
            copy_bytes >> 20,
            verdict(ratio >= 0.5),
            parquet_bytes >> 20,
            verdict(rss_mib <= 150.0),
        );
        crate::replace_report_section(&path, "## Export (cold storage)", &section);
    }
}

/// A fresh database, migrated with `IOT_BENCH_BACKEND` (auto,
/// postgres or timescaledb; auto by default), dropped when the program
/// ends.
async fn database(ctx: &Ctx) -> String {
    let choice: iot_db::BackendChoice = env("IOT_BENCH_BACKEND", "auto").parse().unwrap();
    let base = ctx.admin_db.rsplit_once('/').unwrap().0;
    let name = format!("iot_bench_{}", crate::unique());
    let url = format!("{base}/{name}");
    iot_db::ensure_database(&url).await.unwrap();
    crate::CREATED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(name);
    iot_db::migrate(&url, choice).await.unwrap();
    url
}

async fn backend(db: &tokio_postgres::Client) -> String {
    iot_db::storage_backend(db)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn floor_second(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Resets VmHWM to the current RSS (Linux: `5` to clear_refs).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS: {e}");
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
