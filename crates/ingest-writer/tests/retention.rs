//! The retention cap on the real database, with each backend: a device
//! asking for a century keeps old partitions (chunks) no longer than
//! `retention.max_days`, for everyone's readings and its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_writer::Store;
use ingest_writer::retention::{RetentionConfig, maintain};
use ingest_writer::store::Row;
use iot_db::Backend;
use iot_testkit as kit;
use rust_decimal::Decimal;
use uuid::Uuid;

/// Ages in days of `device`'s raw readings, oldest first.
async fn ages(db: &tokio_postgres::Client, device: Uuid, now: DateTime<Utc>) -> Vec<i64> {
    db.query(
        "SELECT time FROM sensor_readings WHERE device_id = $1 ORDER BY time",
        &[&device],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (now - r.get::<_, DateTime<Utc>>(0)).num_days())
    .collect()
}

#[tokio::test]
async fn a_century_of_retention_does_not_keep_old_partitions() {
    for backend in kit::backends().await {
        let url = kit::migrated_database_with(backend).await;
        let db = kit::connect(&url).await;
        let store = Store::new(iot_db::pool(&url, 4).unwrap());
        // `greedy` asks for 100 years; `plain` has no config (the default).
        let (greedy, plain) = (Uuid::new_v4(), Uuid::new_v4());
        let owner = Uuid::new_v4();
        for (id, ext) in [(greedy, "greedy"), (plain, "plain")] {
            db.execute(
                "INSERT INTO devices (id, device_id, name, device_type, owner_id)
                 VALUES ($1, $2, $2, 'sensor', $3)",
                &[&id, &ext, &owner],
            )
            .await
            .unwrap();
        }
        db.execute(
            "INSERT INTO device_config (device_id, data_retention_days) VALUES ($1, 36500)",
            &[&greedy],
        )
        .await
        .unwrap();
        if backend == Backend::Postgres {
            // Daily partitions for the whole range, so old days go by DROP.
            db.execute("SELECT iot_ensure_partitions(90, 14)", &[])
                .await
                .unwrap();
        }
        let now = Utc::now();
        let mut rows = Vec::new();
        for device in [greedy, plain] {
            for age in [80, 50, 20, 0] {
                rows.push(Row {
                    time: now - TimeDelta::days(age),
                    device_id: device,
                    sensor_name: "temperature".into(),
                    value: Decimal::from_str("1.5").unwrap(),
                    unit: None,
                    quality: None,
                });
            }
        }
        store.write_batch(&rows).await.unwrap();

        // Without a cap (the longest any device may ask for), the century
        // holds every partition: nothing is dropped.
        let archive = std::env::temp_dir().join(format!("iot-archive-{}", kit::unique()));
        let uncapped = RetentionConfig {
            default_days: 30,
            max_days: 36_500,
            archive: ingest_writer::archive::ArchiveConfig {
                enabled: true,
                dir: archive.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, report) = maintain(store.pool(), backend, &uncapped, now)
            .await
            .unwrap()
            .expect("no other maintenance runs on this database");
        assert_eq!(report.horizon_days, 36_500, "{backend}");
        assert_eq!(report.partitions_dropped, 0, "{backend}: {report:?}");
        assert_eq!(ages(&db, greedy, now).await, [80, 50, 20, 0], "{backend}");
        // The plain device was trimmed row by row instead.
        assert_eq!(ages(&db, plain, now).await, [20, 0], "{backend}");

        // Capped at 60 days: the century counts as 60, the 80-day-old
        // partition goes by DROP, and the greedy device keeps 60 days.
        let capped = RetentionConfig {
            max_days: 60,
            ..uncapped
        };
        let (_, report) = maintain(store.pool(), backend, &capped, now)
            .await
            .unwrap()
            .expect("no other maintenance runs on this database");
        assert_eq!(report.horizon_days, 60, "{backend}");
        assert_eq!(report.devices_capped, 1, "{backend}");
        assert!(report.partitions_dropped >= 1, "{backend}: {report:?}");
        assert_eq!(ages(&db, greedy, now).await, [50, 20, 0], "{backend}");
        assert_eq!(ages(&db, plain, now).await, [20, 0], "{backend}");
        std::fs::remove_dir_all(&archive).unwrap();
    }
}
