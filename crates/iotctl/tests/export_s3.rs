//! `iotctl export` and `iotctl archive restore` with the archive in an
//! S3-compatible bucket, on a real S3 API server (moto, installed by
//! `cargo xtask test` into the data venv): retention archives a day into the
//! bucket and drops it, and the real binary, given the writer's store
//! settings and a directory of its own, exports exactly the rows and
//! restores them; pointed at a store without the file, it fails naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use chrono::TimeDelta;
use ingest_writer::archive::format::FileRows;
use ingest_writer::archive::{ArchiveConfig, StoreKind};
use ingest_writer::retention::{RetentionConfig, maintain};
use ingest_writer::store::Row;
use iot_testkit as kit;

mod support;

/// The binary with only the settings given: none of the caller's archive
/// or AWS variables leak in.
fn iotctl(url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iotctl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("INGEST_WRITER__") || k == "IOT_ARCHIVE_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("IOT_DATABASE_URL", url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap()
}

fn ok(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "iotctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_restore_read_an_s3_archive() {
    let moto = kit::moto::Moto::start().await;
    let s3 = moto.new_bucket().await;
    let bucket = s3.bucket.clone();

    let support::Seeded {
        url,
        db,
        store,
        device,
        now,
        old,
        rows,
    } = support::seeded("boiler-9", |i| format!("{i}.0625")).await;

    let tmp = std::env::temp_dir().join(format!("iot-s3-export-{}", kit::unique()));
    let staging = tmp.join("writer");
    let cfg = RetentionConfig {
        default_days: 30,
        archive: ArchiveConfig {
            enabled: true,
            dir: staging.clone(),
            store: StoreKind::S3,
            s3,
        },
        ..Default::default()
    };
    let (_, report) = maintain(store.pool(), iot_db::Backend::Postgres, &cfg, now)
        .await
        .unwrap()
        .expect("no other maintenance runs on this database");
    assert_eq!(report.files_archived, 1, "{report:?}");
    assert_eq!(
        kit::device_rows(&db, device).await,
        5,
        "the old day is dropped"
    );
    // Only the bucket holds the file now.
    std::fs::remove_dir_all(&staging).unwrap();

    let endpoint = moto.endpoint();
    let cli_dir = tmp.join("iotctl");
    let cli_dir_arg = cli_dir.to_str().unwrap().to_owned();
    let s3_args = [
        "--archive-dir",
        cli_dir_arg.as_str(),
        "--archive-store",
        "s3",
        "--s3-bucket",
        bucket.as_str(),
        "--s3-prefix",
        "platform-a",
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-region",
        "us-east-1",
        "--s3-allow-http",
    ];
    let from = (old - TimeDelta::days(1)).to_rfc3339();
    let to = now.to_rfc3339();
    let range = ["--from", from.as_str(), "--to", to.as_str()];

    let file = tmp.join("out.parquet");
    let export = [
        &[
            "export",
            "--device",
            "boiler-9",
            "--output",
            file.to_str().unwrap(),
        ][..],
        &range[..],
        &s3_args[..],
    ]
    .concat();
    ok(iotctl(url.url(), &export), &export);
    let back: Vec<Row> = FileRows::open(&file).unwrap().map(Result::unwrap).collect();
    let mut want = rows.clone();
    want.sort_by_key(|r| r.time);
    assert_eq!(back, want, "the archived day from the bucket and the rest");

    // The same export from a store without the file fails, naming the
    // store, before a single row goes out.
    let empty = tmp.join("empty");
    let empty_arg = empty.to_str().unwrap();
    let dir_export = [
        &["export", "--device", "boiler-9", "--format", "csv"][..],
        &range[..],
        &["--archive-dir", empty_arg][..],
    ]
    .concat();
    let out = iotctl(url.url(), &dir_export);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!("directory {empty_arg}")),
        "{stderr}"
    );
    let other = format!("{bucket}-other");
    let wrong_bucket: Vec<&str> = export
        .iter()
        .map(|a| if *a == bucket { other.as_str() } else { a })
        .collect();
    let out = iotctl(url.url(), &wrong_bucket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("s3://{other}/platform-a")),
        "{stderr}"
    );

    let restore = [&["archive", "restore"][..], &range[..], &s3_args[..]].concat();
    let done = ok(iotctl(url.url(), &restore), &restore);
    assert!(done.starts_with("restored 10 rows from 1 files"), "{done}");
    let restored: Vec<Row> = db
        .query(
            "SELECT time, device_id, sensor_name, value, unit, quality FROM sensor_readings
             WHERE device_id = $1 ORDER BY time",
            &[&device],
        )
        .await
        .unwrap()
        .iter()
        .map(Row::from)
        .collect();
    assert_eq!(restored, want);
    std::fs::remove_dir_all(&tmp).unwrap();
}
