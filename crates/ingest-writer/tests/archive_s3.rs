//! Cold storage in an S3-compatible bucket, on a real S3 API server (moto,
//! installed by `cargo xtask test` into the data venv with pyarrow):
//! retention archives a day into the bucket, under the same layout and
//! manifest as a directory, and drops it; the object read back from the
//! bucket holds exactly the dropped rows, its size and SHA-256 those of the
//! manifest; restore through an empty directory fetches it and brings the
//! rows back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use ingest_writer::Store;
use ingest_writer::archive::format::FileRows;
use ingest_writer::archive::restore::restore;
use ingest_writer::archive::{ArchiveConfig, LocalStore, StoreKind, list, midnight};
use ingest_writer::retention::{RetentionConfig, maintain};
use ingest_writer::store::Row;
use iot_db::Backend;
use iot_testkit as kit;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use rust_decimal::Decimal;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

fn reading(device: Uuid, sensor: &str, t: chrono::DateTime<Utc>, value: &str) -> Row {
    Row {
        time: t,
        device_id: device,
        sensor_name: sensor.into(),
        value: Decimal::from_str(value).unwrap(),
        unit: Some("C".into()),
        quality: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_archives_into_a_bucket_and_restore_reads_it_back() {
    let moto = kit::moto::Moto::start().await;
    let s3 = moto.new_bucket().await;
    let bucket = s3.bucket.clone();

    let db_url = kit::migrated_database_with(Backend::Postgres).await;
    let url = db_url.url();
    let db = kit::connect(url).await;
    db.execute("SELECT iot_ensure_partitions(60, 14)", &[])
        .await
        .unwrap();
    let store = Store::new(iot_db::pool(url, 4).unwrap());
    let owner = Uuid::new_v4();
    let device = Uuid::new_v4();
    db.execute(
        "INSERT INTO devices (id, device_id, name, device_type, owner_id)
         VALUES ($1, $2, $2, 'sensor', $3)",
        &[&device, &device.to_string(), &owner],
    )
    .await
    .unwrap();

    let now = Utc::now();
    let old_day = (now - TimeDelta::days(40)).date_naive();
    let start = midnight(old_day);
    let mut rows: Vec<Row> = (0..200)
        .map(|i| {
            reading(
                device,
                "temperature",
                start + TimeDelta::minutes(i * 7),
                &format!("{}.{:04}", i - 100, i * 37 % 10_000),
            )
        })
        .collect();
    store.write_batch(&rows).await.unwrap();
    rows.sort_by(|a, b| (a.time, &a.sensor_name).cmp(&(b.time, &b.sensor_name)));

    let staging = std::env::temp_dir().join(format!("iot-s3-dir-{}", Uuid::new_v4().simple()));
    let cfg = RetentionConfig {
        default_days: 30,
        archive: ArchiveConfig {
            enabled: true,
            dir: staging.clone(),
            store: StoreKind::S3,
            s3: s3.clone(),
        },
        ..Default::default()
    };
    let (_, report) = maintain(store.pool(), Backend::Postgres, &cfg, now)
        .await
        .unwrap()
        .expect("no other maintenance runs on this database");
    assert_eq!(report.files_archived, 1, "{report:?}");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM sensor_readings WHERE device_id = $1",
            &[&device],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the day is dropped");

    // The manifest names the object by the directory layout; the bucket
    // holds it under the prefix, with the manifest's size and checksum.
    let client = kit::connect(url).await;
    let manifest = list(&client, old_day, old_day, None).await.unwrap();
    assert_eq!(manifest.len(), 1, "{manifest:?}");
    let f = &manifest[0];
    assert_eq!(f.path, LocalStore::relative(old_day, owner));
    assert_eq!(f.row_count, 200);
    let bucket_store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(moto.endpoint())
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_allow_http(true)
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("platform-a/{}", f.path));
    let mut keys = Vec::new();
    let mut listing = bucket_store.list(None);
    while let Some(meta) = listing.next().await {
        keys.push(meta.unwrap().location.to_string());
    }
    assert_eq!(keys, vec![key.to_string()], "one object, nothing temporary");
    let body = bucket_store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len() as i64, f.bytes);
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha, f.sha256);
    let copy = std::env::temp_dir().join(format!("iot-s3-{}.parquet", Uuid::new_v4().simple()));
    std::fs::write(&copy, &body).unwrap();
    let back: Vec<Row> = FileRows::open(&copy).unwrap().map(Result::unwrap).collect();
    let _ = std::fs::remove_file(&copy);
    assert_eq!(back, rows, "the object holds exactly the dropped rows");

    // Restore through a store whose directory is empty: the file comes from
    // the bucket.
    let _ = std::fs::remove_dir_all(&staging);
    let cold = ArchiveConfig {
        dir: staging.clone(),
        ..cfg.archive.clone()
    }
    .store()
    .unwrap();
    let mut client = kit::connect(url).await;
    let done = restore(&mut client, &cold, start, start + TimeDelta::days(1), None)
        .await
        .unwrap();
    assert_eq!((done.files, done.rows_inserted), (1, 200), "{done:?}");
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
    assert_eq!(restored, rows);
    let _ = std::fs::remove_dir_all(&staging);
}
