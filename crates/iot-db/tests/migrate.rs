//! Migrations against the real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_db::{Backend, BackendChoice, MigrateError};
use iot_testkit as kit;

/// The versions of the files in `migrations/` (`0004_rollups.postgres.sql`
/// and `0004_rollups.timescaledb.sql` are one version), in order.
fn versions_in_migrations_folder() -> Vec<i32> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut v: Vec<i32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.split_once('_').and_then(|(n, _)| n.parse().ok())
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let url = kit::empty_database().await;
    let runs =
        futures::future::join_all((0..4).map(|_| iot_db::migrate(&url, BackendChoice::Auto))).await;
    let reports: Vec<_> = runs.into_iter().map(|r| r.unwrap()).collect();
    // Exactly one run applied the migrations; the others found them done.
    let appliers: Vec<_> = reports.iter().filter(|r| !r.applied.is_empty()).collect();
    assert_eq!(appliers.len(), 1);
    let every = versions_in_migrations_folder();
    assert_eq!(appliers[0].applied, every);
    for r in &reports {
        if r.applied.is_empty() {
            assert_eq!(r.already_applied, every);
        }
    }

    let db = kit::connect(&url).await;
    for table in [
        "devices",
        "device_config",
        "sensors",
        "sensor_readings",
        "device_alerts",
    ] {
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{table} missing");
    }
    let backend = iot_db::storage_backend(&db).await.unwrap().unwrap();
    assert_eq!(backend, reports[0].backend.as_str());

    // Idempotent: a later run applies nothing.
    let again = iot_db::migrate(&url, BackendChoice::Auto).await.unwrap();
    assert!(again.applied.is_empty());
}

#[tokio::test]
async fn plain_postgres_backend_partitions_by_day_and_rejects_duplicates() {
    let url = kit::empty_database().await;
    let report = iot_db::migrate(&url, BackendChoice::Force(Backend::Postgres))
        .await
        .unwrap();
    assert_eq!(report.backend, Backend::Postgres);
    let db = kit::connect(&url).await;
    // Partitions exist for today and ahead.
    let today: String = db
        .query_one(
            "SELECT 'sensor_readings_p' || to_char(current_date, 'YYYYMMDD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let exists: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&today])
        .await
        .unwrap()
        .get(0);
    assert!(exists, "{today} missing");
    // Readings far outside the prepared range land in the default partition.
    let ins = "INSERT INTO sensor_readings (time, device_id, sensor_name, value)
               VALUES ($1::text::timestamptz, gen_random_uuid(), 't', 1) ON CONFLICT DO NOTHING";
    assert_eq!(
        db.execute(ins, &[&"2001-01-01T00:00:00Z"]).await.unwrap(),
        1
    );
    let in_default: i64 = db
        .query_one("SELECT count(*) FROM sensor_readings_default", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_default, 1);
    // Re-running the partition function is harmless.
    let created: i32 = db
        .query_one("SELECT iot_ensure_partitions(7, 14)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0);
}

#[tokio::test]
async fn a_recorded_backend_is_never_switched() {
    let url = kit::empty_database().await;
    iot_db::migrate(&url, BackendChoice::Force(Backend::Postgres))
        .await
        .unwrap();
    let err = iot_db::migrate(&url, BackendChoice::Force(Backend::TimescaleDb))
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::BackendMismatch { .. }), "{err}");
}

#[test]
fn backend_choice_parses() {
    assert_eq!(
        "auto".parse::<BackendChoice>().unwrap(),
        BackendChoice::Auto
    );
    assert_eq!(
        "postgres".parse::<BackendChoice>().unwrap(),
        BackendChoice::Force(Backend::Postgres)
    );
    assert!(
        "mysql"
            .parse::<BackendChoice>()
            .unwrap_err()
            .contains("mysql")
    );
}
