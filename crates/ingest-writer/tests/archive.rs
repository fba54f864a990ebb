//! Cold storage on the real database, with each backend: retention archives
//! a day before dropping it, a crash between the two loses nothing and
//! leaves one copy, restore brings the rows back, export merges the archive
//! with the database, and the files read back in pyarrow with their
//! decimals and UTC times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use ingest_writer::Store;
use ingest_writer::archive::export::{Format, Request, export_readings};
use ingest_writer::archive::format::FileRows;
use ingest_writer::archive::restore::restore;
use ingest_writer::archive::{ArchiveConfig, Archiver, LocalStore, floor_day, list, midnight};
use ingest_writer::retention::{RetentionConfig, drop_archived, maintain};
use ingest_writer::store::Row;
use iot_db::Backend;
use iot_testkit as kit;
use rust_decimal::Decimal;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

struct Setup {
    db: tokio_postgres::Client,
    store: Store,
    dir: PathBuf,
    cfg: RetentionConfig,
    now: DateTime<Utc>,
    /// The UTC day 40 days ago: past the 30-day retention.
    old_day: NaiveDate,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn setup(backend: Backend, url: &str) -> Setup {
    let db = kit::connect(url).await;
    let store = Store::new(iot_db::pool(url, 4).unwrap());
    if backend == Backend::Postgres {
        // Daily partitions for the whole range, so old days go by DROP.
        db.execute("SELECT iot_ensure_partitions(60, 14)", &[])
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("iot-archive-{}", Uuid::new_v4().simple()));
    let cfg = RetentionConfig {
        default_days: 30,
        archive: ArchiveConfig {
            enabled: true,
            dir: dir.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let now = Utc::now();
    let old_day = (now - TimeDelta::days(40)).date_naive();
    Setup {
        db,
        store,
        dir,
        cfg,
        now,
        old_day,
    }
}

async fn device(db: &tokio_postgres::Client, owner: Uuid) -> Uuid {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO devices (id, device_id, name, device_type, owner_id)
         VALUES ($1, $2, $2, 'sensor', $3)",
        &[&id, &id.to_string(), &owner],
    )
    .await
    .unwrap();
    id
}

fn reading(device: Uuid, sensor: &str, time: DateTime<Utc>, value: &str) -> Row {
    Row {
        time,
        device_id: device,
        sensor_name: sensor.into(),
        value: Decimal::from_str(value).unwrap(),
        unit: (sensor == "temperature").then(|| "C".into()),
        quality: (sensor == "humidity").then(|| "good".into()),
    }
}

/// Rows of `devices` on `day` in the database, in the archive's order.
async fn rows_on(db: &tokio_postgres::Client, day: NaiveDate, devices: &[Uuid]) -> Vec<Row> {
    let start = midnight(day);
    let mut rows: Vec<Row> = db
        .query(
            "SELECT time, device_id, sensor_name, value, unit, quality FROM sensor_readings
             WHERE time >= $1 AND time < $2 AND device_id = ANY($3)",
            &[&start, &(start + TimeDelta::days(1)), &devices],
        )
        .await
        .unwrap()
        .iter()
        .map(Row::from)
        .collect();
    sort(&mut rows);
    rows
}

fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (a.time, a.device_id, &a.sensor_name).cmp(&(b.time, b.device_id, &b.sensor_name))
    });
}

fn read_file(path: &Path) -> Vec<Row> {
    FileRows::open(path).unwrap().map(Result::unwrap).collect()
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file under `dir`, relative (temporary files included: none may be
/// left).
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

async fn count_before(db: &tokio_postgres::Client, t: DateTime<Utc>) -> i64 {
    db.query_one(
        "SELECT count(*) FROM sensor_readings WHERE time < $1",
        &[&t],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn retention_archives_a_day_then_drops_it_once_and_restore_brings_it_back() {
    for backend in kit::backends().await {
        let url = kit::migrated_database_with(backend).await;
        let s = setup(backend, url.url()).await;
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = device(&s.db, alice).await;
        let a2 = device(&s.db, alice).await;
        let b1 = device(&s.db, bob).await;
        // Readings of a device the registry no longer knows: no owner.
        let gone = Uuid::new_v4();
        let day_start = midnight(s.old_day);
        let mut rows = Vec::new();
        for (i, d) in [a1, a2, b1, gone].into_iter().enumerate() {
            for h in 0..24 {
                let t = day_start + TimeDelta::hours(h) + TimeDelta::microseconds(i as i64 * 7 + 1);
                rows.push(reading(
                    d,
                    "temperature",
                    t,
                    &format!("{}.{:04}", -20 + h, 1234 + h),
                ));
                rows.push(reading(d, "humidity", t, "99999.9999"));
            }
            // Recent rows stay in the database.
            rows.push(reading(d, "temperature", s.now - TimeDelta::days(2), "1.5"));
        }
        s.store.write_batch(&rows).await.unwrap();
        let cutoff = floor_day(s.now - TimeDelta::days(30));
        let expected_old = count_before(&s.db, cutoff).await;
        assert_eq!(expected_old, 4 * 48, "{backend}");

        // The first half of a retention run, then a crash: files durable and
        // recorded, nothing dropped.
        let archiver = Archiver::new(s.cfg.archive.store().unwrap(), None);
        let mut client = kit::connect(url.url()).await;
        let first = archiver.archive_before(&client, cutoff).await.unwrap();
        assert_eq!(first.files.len(), 3, "{backend}: alice, bob, no owner");
        assert_eq!(count_before(&s.db, cutoff).await, expected_old, "{backend}");
        let manifest = list(&client, s.old_day, s.old_day, None).await.unwrap();
        assert!(
            manifest.iter().all(|f| f.state == "archived"),
            "{backend}: {manifest:?}"
        );
        // A late reading arrives in the archived day before the rerun.
        let late = reading(
            a1,
            "pressure",
            day_start + TimeDelta::minutes(90),
            "1013.2500",
        );
        s.store
            .write_batch(std::slice::from_ref(&late))
            .await
            .unwrap();

        // The rerun: archives the day again (merging) and drops it.
        let (_, report) = maintain(s.store.pool(), backend, &s.cfg, s.now)
            .await
            .unwrap()
            .expect("no other maintenance runs on this database");
        assert_eq!(report.days_deferred, 0, "{backend}: {report:?}");
        assert_eq!(
            count_before(&s.db, cutoff).await,
            0,
            "{backend}: the day is gone"
        );
        // Recent rows stay.
        assert_eq!(count_before(&s.db, s.now).await, 4, "{backend}");

        // Exactly one file per owner of the day, no temporary file left, and
        // each holds exactly that owner's rows of the day, once.
        let manifest = list(&client, s.old_day, s.old_day, None).await.unwrap();
        let owners: BTreeSet<Uuid> = manifest.iter().map(|f| f.owner).collect();
        assert_eq!(
            owners,
            BTreeSet::from([alice, bob, Uuid::nil()]),
            "{backend}"
        );
        let on_disk = files_under(&s.dir);
        let recorded: BTreeSet<String> = manifest.iter().map(|f| f.path.clone()).collect();
        assert_eq!(on_disk, recorded, "{backend}");
        let mut total = 0;
        for f in &manifest {
            assert_eq!(f.state, "dropped", "{backend}: {f:?}");
            let path = s.dir.join(&f.path);
            assert_eq!(f.sha256, sha256(&path), "{backend}: {}", f.path);
            let back = read_file(&path);
            assert_eq!(back.len() as i64, f.row_count, "{backend}");
            let mut want: Vec<Row> = rows
                .iter()
                .chain([&late])
                .filter(|r| r.time < cutoff)
                .filter(|r| match f.owner {
                    o if o == alice => [a1, a2].contains(&r.device_id),
                    o if o == bob => r.device_id == b1,
                    _ => r.device_id == gone,
                })
                .cloned()
                .collect();
            sort(&mut want);
            // Values compare as decimals; the archive keeps scale 4.
            assert_eq!(back, want, "{backend}: {}", f.path);
            assert!(back.iter().all(|r| r.value.scale() == 4), "{backend}");
            total += f.row_count;
        }
        assert_eq!(total, expected_old + 1, "{backend}: the dropped rows, once");

        // Export of one device merges the archive with the database.
        let out = SharedBuf::default();
        let req = Request {
            device: a1,
            sensor: None,
            from: day_start - TimeDelta::days(1),
            to: s.now + TimeDelta::hours(1),
            format: Format::Csv,
        };
        let n = export_readings(
            &client,
            Some(archiver.store()),
            &req,
            Box::new(out.clone()),
            Arc::default(),
        )
        .await
        .unwrap();
        let text = out.text();
        assert_eq!(n, 48 + 1 + 1, "{backend}: archived, late and recent");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "time,device_id,sensor_name,value,unit,quality");
        assert_eq!(lines.len() as u64, n + 1, "{backend}");
        let times: Vec<DateTime<Utc>> = lines[1..]
            .iter()
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(times.is_sorted(), "{backend}: time order");
        assert!(
            text.contains(",pressure,1013.2500,,\n"),
            "{backend}: {text}"
        );

        // Restore, twice: the rows come back once, and queries see them.
        let store = LocalStore::new(&s.dir);
        let to = day_start + TimeDelta::days(1);
        let first = restore(&mut client, &store, day_start, to, None)
            .await
            .unwrap();
        assert_eq!(first.rows_inserted as i64, expected_old + 1, "{backend}");
        let again = restore(&mut client, &store, day_start, to, None)
            .await
            .unwrap();
        assert_eq!(again.rows_read as i64, expected_old + 1, "{backend}");
        assert_eq!(again.rows_inserted, 0, "{backend}");
        assert_eq!(
            rows_on(&s.db, s.old_day, &[a1, a2, b1, gone]).await.len() as i64,
            expected_old + 1
        );
        let seen = s
            .store
            .query_readings(b1, "humidity", day_start, to, 1000)
            .await
            .unwrap();
        assert_eq!(seen.len(), 24, "{backend}");
        assert!(
            seen.iter().all(|r| r.value.to_string() == "99999.9999"),
            "{backend}"
        );
        // One device only.
        s.db.execute("DELETE FROM sensor_readings WHERE time < $1", &[&cutoff])
            .await
            .unwrap();
        // Alice's a1 (48 readings and the late one) but not her a2: the
        // next run must merge, not overwrite, her file.
        let one = restore(&mut client, &store, day_start, to, Some(a1))
            .await
            .unwrap();
        assert_eq!(one.rows_inserted, 49, "{backend}");
        assert_eq!(count_before(&s.db, cutoff).await, 49, "{backend}");

        // The next run finds the restored rows archived already: it drops
        // them again and the archive still holds each row once.
        let sums: Vec<String> = manifest.iter().map(|f| f.sha256.clone()).collect();
        maintain(s.store.pool(), backend, &s.cfg, s.now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(count_before(&s.db, cutoff).await, 0, "{backend}");
        let after = list(&client, s.old_day, s.old_day, None).await.unwrap();
        let sums_after: Vec<String> = after.iter().map(|f| f.sha256.clone()).collect();
        assert_eq!(sums_after, sums, "{backend}: the same files");
    }
}

#[tokio::test]
async fn a_day_that_changed_after_archiving_is_not_dropped() {
    for backend in kit::backends().await {
        let url = kit::migrated_database_with(backend).await;
        let s = setup(backend, url.url()).await;
        let owner = Uuid::new_v4();
        let d = device(&s.db, owner).await;
        let day_start = midnight(s.old_day);
        let rows: Vec<Row> = (0..5)
            .map(|i| reading(d, "temperature", day_start + TimeDelta::hours(i), "7.25"))
            .collect();
        s.store.write_batch(&rows).await.unwrap();
        let cutoff = floor_day(s.now - TimeDelta::days(30));
        let archiver = Archiver::new(s.cfg.archive.store().unwrap(), None);
        let mut client = kit::connect(url.url()).await;
        let archived = archiver.archive_before(&client, cutoff).await.unwrap();
        assert_eq!(archived.per_day.get(&s.old_day), Some(&5), "{backend}");
        // A late reading lands between archiving and the drop.
        let late = reading(d, "temperature", day_start + TimeDelta::hours(20), "8.5");
        s.store
            .write_batch(std::slice::from_ref(&late))
            .await
            .unwrap();
        let keep = [s.now - TimeDelta::days(3_650); 3];
        let (_, deferred) = drop_archived(&mut client, cutoff, &archived, &keep)
            .await
            .unwrap();
        assert_eq!(deferred, 1, "{backend}");
        assert_eq!(
            count_before(&s.db, cutoff).await,
            6,
            "{backend}: nothing dropped"
        );
        let files = list(&client, s.old_day, s.old_day, None).await.unwrap();
        assert_eq!(files[0].state, "archived", "{backend}");
        assert_eq!(files[0].row_count, 5, "{backend}");
        // The next run archives the late reading too, then drops the day.
        let (_, report) = maintain(s.store.pool(), backend, &s.cfg, s.now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.days_deferred, 0, "{backend}");
        assert_eq!(count_before(&s.db, cutoff).await, 0, "{backend}");
        let files = list(&client, s.old_day, s.old_day, None).await.unwrap();
        assert_eq!(
            (files[0].state.as_str(), files[0].row_count),
            ("dropped", 6),
            "{backend}"
        );
        assert_eq!(read_file(&s.dir.join(&files[0].path)).len(), 6, "{backend}");
    }
}

#[tokio::test]
async fn a_device_trim_archives_the_trimmed_days() {
    for backend in kit::backends().await {
        let url = kit::migrated_database_with(backend).await;
        let s = setup(backend, url.url()).await;
        let owner = Uuid::new_v4();
        let short = device(&s.db, owner).await;
        let long = device(&s.db, owner).await;
        s.db.execute(
            "INSERT INTO device_config (device_id, data_retention_days) VALUES ($1, 5)",
            &[&short],
        )
        .await
        .unwrap();
        let mut rows = Vec::new();
        for d in [short, long] {
            for age in [10, 8, 1] {
                rows.push(reading(
                    d,
                    "temperature",
                    s.now - TimeDelta::days(age),
                    "21.0625",
                ));
            }
        }
        s.store.write_batch(&rows).await.unwrap();
        let (_, report) = maintain(s.store.pool(), backend, &s.cfg, s.now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.devices_trimmed, 1, "{backend}");
        assert_eq!(report.rows_deleted, 2, "{backend}");
        let left = |d: Uuid| {
            let db = &s.db;
            async move {
                db.query_one(
                    "SELECT count(*) FROM sensor_readings WHERE device_id = $1",
                    &[&d],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
            }
        };
        assert_eq!(left(short).await, 1, "{backend}");
        assert_eq!(left(long).await, 3, "{backend}");
        // Two days archived, each holding the short device's row only.
        let client = kit::connect(url.url()).await;
        let from = (s.now - TimeDelta::days(20)).date_naive();
        let files = list(&client, from, s.now.date_naive(), Some(owner))
            .await
            .unwrap();
        assert_eq!(files.len(), 2, "{backend}: {files:?}");
        for f in files {
            let back = read_file(&s.dir.join(&f.path));
            assert_eq!(back.len(), 1, "{backend}");
            assert_eq!(back[0].device_id, short, "{backend}");
            assert_eq!(back[0].value.to_string(), "21.0625", "{backend}");
        }
    }
}

/// The files read back in pyarrow (what data engineers' tools use): the
/// schema has DECIMAL(10,4) and UTC timestamps, and the values match.
#[tokio::test]
async fn pyarrow_reads_the_archive_with_its_decimals_and_utc_times() {
    let url = kit::migrated_database_with(Backend::Postgres).await;
    let s = setup(Backend::Postgres, url.url()).await;
    let owner = Uuid::new_v4();
    let d = device(&s.db, owner).await;
    let t0 = midnight(s.old_day) + TimeDelta::hours(13) + TimeDelta::microseconds(123_456);
    let values = ["-999999.9999", "0.0001", "42", "123456.7891"];
    let rows: Vec<Row> = values
        .iter()
        .enumerate()
        .map(|(i, v)| reading(d, "temperature", t0 + TimeDelta::seconds(i as i64), v))
        .collect();
    s.store.write_batch(&rows).await.unwrap();
    maintain(s.store.pool(), Backend::Postgres, &s.cfg, s.now)
        .await
        .unwrap()
        .unwrap();
    let client = kit::connect(url.url()).await;
    let files = list(&client, s.old_day, s.old_day, Some(owner))
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    let path = s.dir.join(&files[0].path);
    let script = r#"
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(t.schema.field("value").type)
print(t.schema.field("time").type)
for r in t.to_pylist():
    print(r["time"].isoformat(), r["device_id"], r["sensor_name"], r["value"], r["unit"])
"#;
    let out = std::process::Command::new(kit::moto::python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("python with pyarrow (cargo xtask test installs it; or set IOT_TEST_PYTHON)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut want = vec![
        "decimal128(10, 4)".to_owned(),
        "timestamp[us, tz=UTC]".to_owned(),
    ];
    for (i, v) in values.iter().enumerate() {
        let t = t0 + TimeDelta::seconds(i as i64);
        let v = Decimal::from_str(v).unwrap();
        let mut v4 = v;
        v4.rescale(4);
        want.push(format!(
            "{} {d} temperature {v4} C",
            t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        ));
    }
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
}

/// A `Write` whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
