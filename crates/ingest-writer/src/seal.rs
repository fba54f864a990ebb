//! Sealed rollups (docs/design/sealed-rollups.md). A batch upserts the
//! rollups only for readings older than the watermark's `upsert_below`
//! (late ones); the rest reach the rollups when their hour is sealed, in
//! one aggregate of the raw rows per series and hour instead of three
//! upserts per reading. Queries read rollups below `sealed_until` and raw
//! rows from there on, so a reading counts at every width as soon as it is
//! stored, sealed or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;

use crate::error::WriterError;
use crate::rollup::Level;

/// Taken shared by every batch (`iot_rollup_upsert_below()`, migration 23)
/// and exclusively by a seal for the moment it moves `upsert_below`.
pub const WRITE_LOCK: i64 = 30_432_929;
/// Held (per session) by the one seal running among the replicas.
pub const SEAL_LOCK: i64 = 30_432_930;

/// The most one step of a seal covers: a writer that was stopped for days
/// seals its backlog a day at a time.
const STEP: TimeDelta = TimeDelta::days(1);

const AGGREGATE: &str = include_str!("sql/seal_aggregate.sql");
const MERGE: &str = include_str!("sql/seal_merge.sql");
const RECOMPUTE: &str = include_str!("sql/seal_recompute.sql");
const RECOMPUTE_LEVEL: &str = include_str!("sql/seal_recompute_level.sql");
const SEAL_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS iot_seal (
    device_id UUID, sensor_name VARCHAR(100), bucket TIMESTAMPTZ,
    readings INT8, sum_value NUMERIC, min_value NUMERIC, max_value NUMERIC)";
const WATERMARK: &str = "SELECT sealed_until, upsert_below,
    date_bin(INTERVAL '1 hour', now() - $1::float8 * INTERVAL '1 second', TIMESTAMPTZ '2000-01-03 00:00:00+00')
    FROM rollup_watermark";

/// `sealed_until` as this process last saw it. Queries read rollups only
/// below it; a stale value only moves more of a query to raw rows, since it
/// never goes back.
#[derive(Clone, Default)]
pub struct Sealed(Arc<AtomicI64>);

impl Sealed {
    /// Unknown until read from the database or moved by a seal.
    pub fn get(&self) -> Option<DateTime<Utc>> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            us => DateTime::from_timestamp_micros(us),
        }
    }

    pub fn advance(&self, to: DateTime<Utc>) {
        self.0.fetch_max(to.timestamp_micros(), Ordering::Relaxed);
    }

    /// The cached value, or the database's the first time.
    pub async fn read(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<DateTime<Utc>, WriterError> {
        if let Some(t) = self.get() {
            return Ok(t);
        }
        let t: DateTime<Utc> = client
            .query_one("SELECT sealed_until FROM rollup_watermark", &[])
            .await?
            .get(0);
        self.advance(t);
        Ok(t)
    }
}

/// What one [`seal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `sealed_until` before and after.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Hourly rollup rows aggregated from raw rows.
    pub hours: u64,
    /// Whether a seal that died half-way was redone first.
    pub recovered: bool,
}

/// Seals every whole hour that ended at least `grace` ago, unless another
/// replica is sealing (`Ok(None)`; `sealed` then follows the database).
pub async fn seal(
    pool: &Pool,
    grace: Duration,
    sealed: &Sealed,
) -> Result<Option<Report>, WriterError> {
    // Out of the pool: the seal leaves session state behind (advisory locks,
    // an open transaction, its table) whenever it stops early, on an error
    // or a cancelled task. Dropped, the connection closes and the server
    // drops that state with it.
    let c = Object::take(pool.get().await?);
    let mine: bool = c
        .query_one("SELECT pg_try_advisory_lock($1)", &[&SEAL_LOCK])
        .await?
        .get(0);
    if !mine {
        sealed.advance(
            c.query_one("SELECT sealed_until FROM rollup_watermark", &[])
                .await?
                .get(0),
        );
        return Ok(None);
    }
    let grace = grace.as_secs_f64();
    let mut report: Option<Report> = None;
    loop {
        let w = c.query_one(WATERMARK, &[&grace]).await?;
        let (from, upsert_below, due): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) =
            (w.get(0), w.get(1), w.get(2));
        sealed.advance(from);
        let r = report.get_or_insert(Report {
            from,
            to: from,
            hours: 0,
            recovered: false,
        });
        r.to = from;
        if upsert_below > from {
            recompute(&c, from, upsert_below).await?;
            r.recovered = true;
        } else if due > from {
            let to = due.min(from + STEP);
            r.hours += step(&c, from, to).await?;
        } else {
            break;
        }
    }
    // Now rather than when the server notices the closed connection: the
    // next seal may come at once.
    c.execute("SELECT pg_advisory_unlock($1)", &[&SEAL_LOCK])
        .await?;
    Ok(report)
}

/// Seals `[from, to)`. Writers stop only while `upsert_below` moves and a
/// snapshot is taken: every batch committed before it is in the snapshot
/// (and upserted nothing at or after `from`), every batch after it
/// upserts its readings older than `to` itself.
async fn step(
    c: &tokio_postgres::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, WriterError> {
    c.batch_execute(SEAL_TABLE).await?;
    c.execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK])
        .await?;
    c.execute("UPDATE rollup_watermark SET upsert_below = $1", &[&to])
        .await?;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    c.query_one("SELECT sealed_until FROM rollup_watermark", &[])
        .await?;
    c.execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK])
        .await?;
    let hours = c.execute(AGGREGATE, &[&from, &to]).await?;
    c.batch_execute("COMMIT; BEGIN").await?;
    // Hours, days, weeks, each in key order: the order in which batches
    // upsert late readings (`rollup::rollups`), so neither waits on the
    // other in a cycle.
    for level in [Level::Hour, Level::Day, Level::Week] {
        c.execute(&level.fill(MERGE), &[]).await?;
    }
    c.execute(
        "UPDATE rollup_watermark SET sealed_until = $2 WHERE sealed_until = $1",
        &[&from, &to],
    )
    .await?;
    c.batch_execute("TRUNCATE iot_seal; COMMIT").await?;
    Ok(hours)
}

/// Redoes `[from, upsert_below)` after a seal died in it, with writers
/// stopped: their late upserts into that range are what it replaces.
async fn recompute(
    c: &tokio_postgres::Client,
    from: DateTime<Utc>,
    upsert_below: DateTime<Utc>,
) -> Result<(), WriterError> {
    tracing::warn!(%from, %upsert_below, "a seal did not finish; computing its range again");
    c.execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK])
        .await?;
    c.batch_execute("BEGIN").await?;
    let params: [&(dyn ToSql + Sync); 2] = [&from, &upsert_below];
    let levels = [(Level::Day, Level::Hour), (Level::Week, Level::Day)]
        .map(|(l, finer)| l.fill(RECOMPUTE_LEVEL).replace("{finer}", finer.table()));
    for script in std::iter::once(RECOMPUTE).chain(levels.iter().map(String::as_str)) {
        let code: Vec<&str> = script
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        for sql in code
            .join("\n")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            c.execute(sql, &params).await?;
        }
    }
    c.execute(
        "UPDATE rollup_watermark SET sealed_until = $2 WHERE sealed_until = $1",
        &params,
    )
    .await?;
    c.batch_execute("COMMIT").await?;
    c.execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK])
        .await?;
    Ok(())
}

/// Seals every `interval` until shutdown; `sealed` also follows the seals
/// of other replicas.
pub async fn run(
    pool: Pool,
    grace: Duration,
    interval: Duration,
    sealed: Sealed,
    shutdown: iot_runtime::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match seal(&pool, grace, &sealed).await {
            Ok(Some(r)) if r.to > r.from => tracing::info!(
                from = %r.from, to = %r.to, hours = r.hours, recovered = r.recovered,
                "rollups sealed"
            ),
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("rollups sealed by another replica"),
            Err(e) => tracing::warn!(error = %e, "sealing rollups failed; retrying next tick"),
        }
    }
}
