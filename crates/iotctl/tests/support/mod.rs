//! What both export tests start from: a migrated plain-PostgreSQL database
//! with one device holding ten readings of a day 40 days back (past the
//! 30-day retention the tests run) and five of the last hours.

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_writer::Store;
use ingest_writer::archive::floor_day;
use ingest_writer::store::Row;
use iot_testkit as kit;
use rust_decimal::Decimal;
use uuid::Uuid;

pub struct Seeded {
    pub url: kit::TestDb,
    pub db: tokio_postgres::Client,
    pub store: Store,
    pub device: Uuid,
    /// Microseconds, as the database keeps them.
    pub now: DateTime<Utc>,
    /// The first reading of the old day.
    pub old: DateTime<Utc>,
    /// The readings written: the old day's ten, then the recent five.
    pub rows: Vec<Row>,
}

/// Device `device_id`'s readings of `temperature`, reading `i` worth
/// `value(i)`.
pub async fn seeded(device_id: &str, value: impl Fn(usize) -> String) -> Seeded {
    let url = kit::migrated_database_with(iot_db::Backend::Postgres).await;
    let db = kit::connect(url.url()).await;
    db.execute("SELECT iot_ensure_partitions(60, 14)", &[])
        .await
        .unwrap();
    let store = Store::new(iot_db::pool(url.url(), 4).unwrap());
    let device = Uuid::new_v4();
    db.execute(
        "INSERT INTO devices (id, device_id, name, device_type, owner_id)
         VALUES ($1, $2, 'boiler', 'sensor', $3)",
        &[&device, &device_id, &Uuid::new_v4()],
    )
    .await
    .unwrap();
    let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let old = floor_day(now - TimeDelta::days(40)) + TimeDelta::hours(6);
    let times: Vec<DateTime<Utc>> = (0..10)
        .map(|i| old + TimeDelta::minutes(i))
        .chain((0..5).map(|i| now - TimeDelta::hours(i + 1)))
        .collect();
    let rows: Vec<Row> = times
        .iter()
        .enumerate()
        .map(|(i, t)| Row {
            time: *t,
            device_id: device,
            sensor_name: "temperature".into(),
            value: Decimal::from_str(&value(i)).unwrap(),
            unit: Some("C".into()),
            quality: None,
        })
        .collect();
    store.write_batch(&rows).await.unwrap();
    Seeded {
        url,
        db,
        store,
        device,
        now,
        old,
        rows,
    }
}
