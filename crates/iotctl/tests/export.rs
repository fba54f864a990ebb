//! `iotctl export` and `iotctl archive` as an operator runs them: the real
//! binary against a database whose retention has archived a day.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_writer::archive::ArchiveConfig;
use ingest_writer::archive::format::FileRows;
use ingest_writer::retention::{RetentionConfig, maintain};
use ingest_writer::store::Row;
use iot_testkit as kit;

mod support;
use rust_decimal::Decimal;

fn iotctl(url: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_iotctl"))
        .args(args)
        .env("IOT_DATABASE_URL", url)
        .env("IOT_ARCHIVE_DIR", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iotctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (bucket, readings, sum_value) of a rollup exported as Parquet.
fn rollup_rows(path: &std::path::Path) -> Vec<(String, i64, Decimal)> {
    use arrow_array::{Array, Decimal128Array, Int64Array, TimestampMicrosecondArray};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let column = |name: &str| b.column_by_name(name).unwrap().clone();
        let bucket = column("bucket");
        let bucket = bucket
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let readings = column("readings");
        let readings = readings.as_any().downcast_ref::<Int64Array>().unwrap();
        let sum = column("sum_value");
        let sum = sum.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(bucket.timezone(), Some("UTC"));
        for i in 0..b.num_rows() {
            let time = DateTime::<Utc>::from_timestamp_micros(bucket.value(i)).unwrap();
            out.push((
                time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                readings.value(i),
                Decimal::from_i128_with_scale(sum.value(i), 4),
            ));
        }
    }
    out
}

#[tokio::test]
async fn export_merges_archive_and_database_and_restore_is_idempotent() {
    let support::Seeded {
        url,
        db,
        store,
        device,
        now,
        old,
        rows,
    } = support::seeded("boiler-7", |_| "21.0625".into()).await;
    let dir = std::env::temp_dir().join(format!("iot-archive-{}", kit::unique()));
    let cfg = RetentionConfig {
        default_days: 30,
        archive: ArchiveConfig {
            enabled: true,
            dir: dir.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    maintain(store.pool(), iot_db::Backend::Postgres, &cfg, now)
        .await
        .unwrap()
        .unwrap();

    let listed = iotctl(url.url(), &dir, &["archive", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains(" 10 ") && listed.contains("dropped"),
        "{listed}"
    );

    let from = (old - TimeDelta::days(1)).to_rfc3339();
    let to = now.to_rfc3339();
    let range = ["--from", from.as_str(), "--to", to.as_str()];
    let csv = iotctl(
        url.url(),
        &dir,
        &[
            &["export", "--device", "boiler-7", "--format", "csv"][..],
            &range[..],
        ]
        .concat(),
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 15, "{csv}");
    assert!(lines[1].starts_with(&old.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)));
    assert!(
        lines[1].ends_with(",temperature,21.0625,C,"),
        "{}",
        lines[1]
    );

    let file = dir.join("out.parquet");
    let file_arg = file.to_str().unwrap();
    let device_arg = device.to_string();
    iotctl(
        url.url(),
        &dir,
        &[
            &[
                "export",
                "--device",
                device_arg.as_str(),
                "--output",
                file_arg,
            ][..],
            &range[..],
        ]
        .concat(),
    );
    let back: Vec<Row> = FileRows::open(&file).unwrap().map(Result::unwrap).collect();
    let mut want = rows.clone();
    want.sort_by_key(|r| r.time);
    assert_eq!(back, want);

    let jsonl = iotctl(
        url.url(),
        &dir,
        &[
            &[
                "export", "--device", "boiler-7", "--format", "jsonl", "--rollup", "1d",
            ][..],
            &range[..],
        ]
        .concat(),
    );
    let total: i64 = jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["readings"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 15, "{jsonl}");
    // The same rollup as Parquet: the same buckets, counts and exact sums.
    let rollup = dir.join("rollup.parquet");
    iotctl(
        url.url(),
        &dir,
        &[
            &[
                "export",
                "--device",
                "boiler-7",
                "--format",
                "parquet",
                "--rollup",
                "1d",
                "--output",
                rollup.to_str().unwrap(),
            ][..],
            &range[..],
        ]
        .concat(),
    );
    let want: Vec<(String, i64, Decimal)> = jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["bucket"].as_str().unwrap().to_owned(),
                v["readings"].as_i64().unwrap(),
                Decimal::from_str(v["sum_value"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(rollup_rows(&rollup), want);

    let restore = [
        "archive",
        "restore",
        "--from",
        from.as_str(),
        "--to",
        to.as_str(),
    ];
    let first = iotctl(url.url(), &dir, &restore);
    assert!(
        first.starts_with("restored 10 rows from 1 files"),
        "{first}"
    );
    let again = iotctl(url.url(), &dir, &restore);
    assert!(
        again.starts_with("restored 0 rows from 1 files (10 already"),
        "{again}"
    );
    assert_eq!(kit::device_rows(&db, device).await, 15);
    std::fs::remove_dir_all(&dir).unwrap();
}
