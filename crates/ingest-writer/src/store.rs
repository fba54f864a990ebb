//! SQL access to the telemetry tables.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use futures::future::try_join_all;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::error::WriterError;
use crate::latest::{self, Written};
use crate::rollup::{self, Agg, Key, Level, Levels as _, Segment, Source, Width};
use crate::seal::Sealed;

const CREATE_STAGING: &str = include_str!("sql/create_staging.sql");
const COPY_STAGING: &str = include_str!("sql/copy_staging.sql");
const COPY_DIRECT: &str = include_str!("sql/copy_direct.sql");
const INSERT_READINGS: &str = include_str!("sql/insert_readings.sql");
const UPSERT_ROLLUP: &str = include_str!("sql/upsert_rollup.sql");
const UPSERT_BELOW: &str = "SELECT iot_rollup_upsert_below()";
const UPSERT_LATEST: &str = include_str!("sql/upsert_latest.sql");
const COUNT_READINGS: &str = include_str!("sql/count_readings.sql");
const QUERY_READINGS: &str = include_str!("sql/query_readings.sql");
const QUERY_METRICS: &str = include_str!("sql/query_metrics.sql");
const LATEST_READINGS: &str = include_str!("sql/latest_readings.sql");
const FLEET_STATS: &str = include_str!("sql/fleet_stats.sql");
const FLEET_STATS_OWNER: &str = include_str!("sql/fleet_stats_owner.sql");
const COLUMN_TYPES: [Type; 6] = [
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::TEXT,
    Type::NUMERIC,
    Type::TEXT,
    Type::TEXT,
];

/// A reading as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub time: DateTime<Utc>,
    pub device_id: Uuid,
    pub sensor_name: String,
    pub value: Decimal,
    pub unit: Option<String>,
    pub quality: Option<String>,
}

impl From<&tokio_postgres::Row> for Row {
    fn from(r: &tokio_postgres::Row) -> Self {
        Self {
            time: r.get(0),
            device_id: r.get(1),
            sensor_name: r.get(2),
            value: r.get(3),
            unit: r.get(4),
            quality: r.get(5),
        }
    }
}

/// The telemetry tables of one database.
#[derive(Clone)]
pub struct Store {
    /// Batch writes and maintenance.
    pool: Pool,
    /// API queries ([`crate::config::QueryLimits`]).
    queries: Pool,
    /// This process's rows in `ingest_counts`.
    writer_id: Uuid,
    /// The rollup upsert of each level, in `Level::ALL` order.
    upsert_rollup: [String; 3],
    /// Each committed batch's inserted rows, for `WatchStored`.
    stored: tokio::sync::broadcast::Sender<Stored>,
    /// Where queries stop reading rollups.
    sealed: Sealed,
    /// Which `sensor_latest` rows a batch rewrites.
    written: std::sync::Arc<Written>,
}

/// The rows one batch inserted, and when it committed.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rows: std::sync::Arc<Vec<Row>>,
    pub at: DateTime<Utc>,
}

/// Batches a slow `WatchStored` stream may fall behind before it is told
/// what it missed.
const STORED_BACKLOG: usize = 1024;

impl Store {
    /// The writer keeps the rollup tables on both backends: a late reading
    /// is upserted in the same transaction as its raw row, the others when
    /// their hour is sealed ([`crate::seal`]); either way a reading counts
    /// at every width as soon as it is stored
    /// (docs/design/late-readings.md, docs/design/sealed-rollups.md).
    pub fn new(pool: Pool) -> Self {
        Self::with_query_pool(pool.clone(), pool)
    }

    /// Writes through `pool`, API queries through `queries`.
    pub fn with_query_pool(pool: Pool, queries: Pool) -> Self {
        Self {
            pool,
            queries,
            writer_id: Uuid::new_v4(),
            upsert_rollup: Level::ALL.map(|l| l.fill(UPSERT_ROLLUP)),
            stored: tokio::sync::broadcast::channel(STORED_BACKLOG).0,
            sealed: Sealed::default(),
            written: Default::default(),
        }
    }

    /// Every batch committed from now on (its inserted rows).
    pub fn watch_stored(&self) -> tokio::sync::broadcast::Receiver<Stored> {
        self.stored.subscribe()
    }

    fn upsert_sql(&self, level: Level) -> &str {
        let [week, day, hour] = &self.upsert_rollup;
        match level {
            Level::Week => week,
            Level::Day => day,
            Level::Hour => hour,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where this process's queries stop reading rollups.
    pub fn sealed(&self) -> &Sealed {
        &self.sealed
    }

    /// The API queries' pool (exports hold one of its connections).
    pub fn query_pool(&self) -> &Pool {
        &self.queries
    }

    /// Writes a batch in one transaction and returns the number of new rows.
    ///
    /// Fast path: binary `COPY` straight into `sensor_readings`. If any
    /// reading is already stored (a redelivery: same device, sensor and
    /// time) the unique key refuses the whole `COPY`; the batch is then
    /// written again through a session-local staging table and `INSERT ...
    /// ON CONFLICT DO NOTHING`, so stored readings are ignored, not
    /// duplicated. Either way the rollups, the latest readings and the
    /// ingest counts are updated from the rows actually inserted, in the
    /// same transaction (the rollups only for readings the last seal has
    /// passed: [`crate::seal`]).
    pub async fn write_batch(&self, rows: &[Row]) -> Result<u64, WriterError> {
        let mut client = self.pool.get().await?;
        match self.write_tx(&mut client, rows, false).await {
            Err(WriterError::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.write_tx(&mut client, rows, true).await
            }
            other => other,
        }
    }

    async fn write_tx(
        &self,
        client: &mut deadpool_postgres::Object,
        rows: &[Row],
        dedup: bool,
    ) -> Result<u64, WriterError> {
        let tx = client.transaction().await?;
        let upsert_below: DateTime<Utc> = {
            let stmt = tx.prepare_cached(UPSERT_BELOW).await?;
            tx.query_one(&stmt, &[]).await?.get(0)
        };
        if dedup {
            tx.batch_execute(CREATE_STAGING).await?;
        }
        let sink = tx
            .copy_in(if dedup { COPY_STAGING } else { COPY_DIRECT })
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
        futures::pin_mut!(writer);
        for r in rows {
            writer
                .as_mut()
                .write(&[
                    &r.time,
                    &r.device_id,
                    &r.sensor_name,
                    &r.value,
                    &r.unit,
                    &r.quality,
                ])
                .await?;
        }
        writer.finish().await?;
        let inserted: Cow<[Row]> = if dedup {
            let stmt = tx.prepare_cached(INSERT_READINGS).await?;
            let new = tx.query(&stmt, &[]).await?;
            Cow::Owned(new.iter().map(Row::from).collect())
        } else {
            Cow::Borrowed(rows)
        };
        let latest = if inserted.is_empty() {
            Vec::new()
        } else {
            self.derive(&tx, &inserted, upsert_below).await?
        };
        tx.commit().await?;
        self.written.wrote(&latest);
        let n = inserted.len() as u64;
        // Copied only when a live stream is watching.
        if n > 0 && self.stored.receiver_count() > 0 {
            let _ = self.stored.send(Stored {
                rows: std::sync::Arc::new(inserted.into_owned()),
                at: Utc::now(),
            });
        }
        Ok(n)
    }

    /// Rollups of the inserted rows older than `upsert_below`, the latest
    /// readings that are due ([`latest`]) and ingest counts; the statements
    /// are pipelined on the connection. Returns the latest readings written.
    async fn derive<'a>(
        &self,
        tx: &Transaction<'_>,
        rows: &'a [Row],
        upsert_below: DateTime<Utc>,
    ) -> Result<Vec<&'a Row>, WriterError> {
        let late = rows.iter().filter(|r| r.time < upsert_below);
        let rollups: Vec<(&str, RollupArrays)> = rollup::rollups(late)
            .iter()
            .filter(|(_, aggs)| !aggs.is_empty())
            .map(|(level, aggs)| (self.upsert_sql(*level), RollupArrays::from(aggs)))
            .collect();
        let due = self.written.due(rollup::latest(rows));
        let latest = LatestArrays::from(due.as_slice());
        let n = rows.len() as i64;
        let mut work: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = rollups
            .iter()
            .map(|(sql, arrays)| (*sql, arrays.params()))
            .collect();
        if !due.is_empty() {
            work.push((UPSERT_LATEST, latest.params()));
        }
        work.push((COUNT_READINGS, vec![&self.writer_id, &n]));
        // Every statement is prepared before any runs, so they run in this
        // order whichever of them the connection had prepared already: two
        // batches then lock rollup and latest rows in the same order.
        let mut stmts = Vec::with_capacity(work.len());
        for (sql, _) in &work {
            stmts.push(tx.prepare_cached(sql).await?);
        }
        try_join_all(
            stmts
                .iter()
                .zip(&work)
                .map(|(stmt, (_, params))| tx.execute(stmt, params)),
        )
        .await?;
        Ok(due)
    }

    /// Raw readings of one device and sensor in `[start, end)`, newest first.
    pub async fn query_readings(
        &self,
        device: Uuid,
        sensor: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Row>, WriterError> {
        let client = self.queries.get().await?;
        let stmt = client.prepare_cached(QUERY_READINGS).await?;
        let rows = client
            .query(&stmt, &[&device, &sensor, &start, &end, &limit])
            .await?;
        Ok(rows.iter().map(Row::from).collect())
    }

    /// Count, sum, min and max per bucket of `width` over `[start, end)`,
    /// oldest first, stitched from the rollups and raw rows by
    /// [`rollup::plan`].
    pub async fn query_metrics(
        &self,
        device: Uuid,
        sensor: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        width: Width,
    ) -> Result<Vec<(DateTime<Utc>, Agg)>, WriterError> {
        self.stream_metrics(device, sensor, start, end, width)
            .await?
            .try_collect()
            .await
    }

    /// [`Store::query_metrics`]'s buckets as PostgreSQL yields them. The
    /// stream holds its pooled connection until it ends or is dropped.
    pub async fn stream_metrics(
        &self,
        device: Uuid,
        sensor: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        width: Width,
    ) -> Result<
        impl Stream<Item = Result<(DateTime<Utc>, Agg), WriterError>> + Send + 'static,
        WriterError,
    > {
        let client = self.queries.get().await?;
        let sealed = self.sealed.read(&client).await?;
        let plan = rollup::plan_sealed(start, end, &width.levels(), sealed);
        let ranges = slots(&plan, start);
        let width_secs = width.secs() as f64;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&device, &sensor, &width_secs];
        for (a, b) in &ranges {
            params.push(a);
            params.push(b);
        }
        let stmt = client.prepare_cached(QUERY_METRICS).await?;
        let rows = client.query_raw(&stmt, params).await?;
        Ok(rows.map(move |r| {
            // Back to the pool only when the rows are all read.
            let _held = &client;
            let r = r?;
            Ok((
                r.try_get(0)?,
                Agg {
                    count: r.try_get(1)?,
                    sum: r.try_get(2)?,
                    min: r.try_get(3)?,
                    max: r.try_get(4)?,
                },
            ))
        }))
    }

    /// The latest reading of every sensor of `devices`.
    pub async fn latest_readings(&self, devices: &[Uuid]) -> Result<Vec<Row>, WriterError> {
        let client = self.queries.get().await?;
        let stmt = client.prepare_cached(LATEST_READINGS).await?;
        let rows = client.query(&stmt, &[&devices]).await?;
        Ok(rows.iter().map(Row::from).collect())
    }

    /// Figures for the whole fleet, or for `owner`'s devices.
    /// Those of `devices` that `owner` does not own (registered to
    /// another owner, or to none).
    pub async fn not_owned(&self, owner: Uuid, devices: &[Uuid]) -> Result<Vec<Uuid>, WriterError> {
        let client = self.queries.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT d FROM unnest($2::uuid[]) AS d \
                 WHERE NOT EXISTS (SELECT 1 FROM device_owners o \
                                   WHERE o.device_id = d AND o.owner_id = $1)",
            )
            .await?;
        let rows = client.query(&stmt, &[&owner, &devices]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn fleet_stats(&self, owner: Option<Uuid>) -> Result<FleetStats, WriterError> {
        let client = self.queries.get().await?;
        let refresh = latest::REFRESH.as_seconds_f64();
        let r = match owner {
            None => {
                let stmt = client.prepare_cached(FLEET_STATS).await?;
                client.query_one(&stmt, &[&refresh]).await?
            }
            Some(o) => {
                let stmt = client.prepare_cached(FLEET_STATS_OWNER).await?;
                client.query_one(&stmt, &[&o, &refresh]).await?
            }
        };
        Ok(FleetStats {
            readings_last_minute: r.get(0),
            devices_reporting: r.get(1),
            devices_seen: r.get(2),
            series: r.get(3),
        })
    }
}

/// Fleet-wide figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetStats {
    pub readings_last_minute: i64,
    pub devices_reporting: i64,
    pub devices_seen: i64,
    pub series: i64,
}

/// The query's fixed slots, in `query_metrics.sql` order: 1w once, 1d
/// twice, 1h twice, raw twice. A level appears at most once in the middle
/// of a plan or twice at its edges (finer levels), so the slots suffice;
/// unused slots get an empty range.
fn slots(plan: &[Segment], at: DateTime<Utc>) -> [(DateTime<Utc>, DateTime<Utc>); 7] {
    let order = [
        Source::Rollup(Level::Week),
        Source::Rollup(Level::Day),
        Source::Rollup(Level::Day),
        Source::Rollup(Level::Hour),
        Source::Rollup(Level::Hour),
        Source::Raw,
        Source::Raw,
    ];
    let mut out = [(at, at); 7];
    let mut used = [false; 7];
    for seg in plan {
        let slot = order
            .iter()
            .enumerate()
            .position(|(i, s)| *s == seg.source && !used[i]);
        // rollup::plan never yields more segments per source than slots.
        if let Some(i) = slot {
            used[i] = true;
            out[i] = (seg.start, seg.end);
        }
    }
    out
}

/// Rollup rows as column arrays for `unnest`.
#[derive(Default)]
struct RollupArrays {
    device: Vec<Uuid>,
    sensor: Vec<String>,
    bucket: Vec<DateTime<Utc>>,
    count: Vec<i64>,
    sum: Vec<Decimal>,
    min: Vec<Decimal>,
    max: Vec<Decimal>,
}

impl From<&std::collections::BTreeMap<Key, Agg>> for RollupArrays {
    fn from(aggs: &std::collections::BTreeMap<Key, Agg>) -> Self {
        let mut a = Self::default();
        for ((d, s, t), g) in aggs {
            a.device.push(*d);
            a.sensor.push(s.clone());
            a.bucket.push(*t);
            a.count.push(g.count);
            a.sum.push(g.sum);
            a.min.push(g.min);
            a.max.push(g.max);
        }
        a
    }
}

impl RollupArrays {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.device,
            &self.sensor,
            &self.bucket,
            &self.count,
            &self.sum,
            &self.min,
            &self.max,
        ]
    }
}

/// Latest rows as column arrays for `unnest`.
struct LatestArrays<'a> {
    device: Vec<Uuid>,
    sensor: Vec<&'a str>,
    time: Vec<DateTime<Utc>>,
    value: Vec<Decimal>,
    unit: Vec<Option<&'a str>>,
    quality: Vec<Option<&'a str>>,
}

impl<'a> From<&[&'a Row]> for LatestArrays<'a> {
    fn from(rows: &[&'a Row]) -> Self {
        Self {
            device: rows.iter().map(|r| r.device_id).collect(),
            sensor: rows.iter().map(|r| r.sensor_name.as_str()).collect(),
            time: rows.iter().map(|r| r.time).collect(),
            value: rows.iter().map(|r| r.value).collect(),
            unit: rows.iter().map(|r| r.unit.as_deref()).collect(),
            quality: rows.iter().map(|r| r.quality.as_deref()).collect(),
        }
    }
}

impl LatestArrays<'_> {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.device,
            &self.sensor,
            &self.time,
            &self.value,
            &self.unit,
            &self.quality,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_fits_the_slots() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let (s, e) = (t("2026-01-01T10:30:00Z"), t("2026-03-20T05:15:00Z"));
        for levels in [
            &Level::ALL[..],
            &[Level::Day, Level::Hour],
            &[Level::Hour],
            &[],
        ] {
            let plan = rollup::plan(s, e, levels);
            let filled = slots(&plan, s);
            let used: Vec<_> = filled.iter().filter(|(a, b)| a < b).collect();
            assert_eq!(used.len(), plan.len(), "{levels:?}");
            let covered: i64 = used.iter().map(|(a, b)| (*b - *a).num_seconds()).sum();
            assert_eq!(covered, (e - s).num_seconds());
            for sealed in [
                s,
                e,
                t("2026-02-11T07:00:00Z"),
                t("2026-03-20T05:00:00Z"),
                t("2020-01-01T00:00:00Z"),
            ] {
                let plan = rollup::plan_sealed(s, e, levels, sealed);
                let filled = slots(&plan, s);
                let used: Vec<_> = filled.iter().filter(|(a, b)| a < b).collect();
                assert_eq!(used.len(), plan.len(), "{levels:?} sealed {sealed}");
                let covered: i64 = used.iter().map(|(a, b)| (*b - *a).num_seconds()).sum();
                assert_eq!(covered, (e - s).num_seconds());
                assert!(
                    plan.iter()
                        .all(|g| g.source == Source::Raw || g.end <= sealed),
                    "{plan:?}"
                );
            }
        }
    }
}
