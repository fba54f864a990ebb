//! Retention: raw readings by whole partitions (chunks on TimescaleDB) at
//! the platform horizon, per-device retention shorter than it by bounded
//! deletes, and rollups kept longer than raw rows.
//!
//! The platform horizon is the longest retention any device asks for (and
//! at least the default), so no device loses data early; devices that ask
//! for less are trimmed one bounded `DELETE` at a time. A device's
//! retention counts for at most `max_days`: one device asking for a
//! century must not keep every owner's old partitions, and leave all the
//! others to be trimmed row by row. The SQL functions it calls
//! (`iot_drop_expired`, `iot_delete_device_readings`) come with each
//! backend's migration.
//!
//! With cold storage on (`retention.archive`, the default), cutoffs are
//! whole UTC days and every row goes to the archive before it goes from the
//! database: the rows older than the horizon are archived, then, in one
//! transaction holding a lock that keeps writers out, each day is counted,
//! the days still holding exactly the rows archived are dropped and their
//! manifest entries marked `dropped`. A day that gained a row meanwhile (a
//! late reading) is kept for the next run. Per-device trims archive a day of
//! the device, then delete that day in a transaction that commits only if
//! it deleted exactly the rows archived.

use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::archive::{self, ArchiveConfig, ArchiveMetrics, Archived, Archiver};
use crate::error::WriterError;

const COUNT_DAYS: &str = include_str!("sql/archive_count_days.sql");
const MARK_DROPPED: &str = include_str!("sql/archive_mark_dropped.sql");
const DELETE_DEVICE_DAY: &str = include_str!("sql/archive_delete_device_day.sql");
const LOCK: &str = include_str!("sql/archive_lock.sql");
const OLDEST: &str = include_str!("sql/archive_oldest.sql");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw readings of a device without `device_config.data_retention_days`.
    pub default_days: i64,
    /// The longest a device's raw readings are kept, whatever its
    /// `data_retention_days` says: the cap on the partition horizon. At
    /// least `default_days`; keep device-registry's
    /// `limits.max_retention_days` equal to it.
    pub max_days: i64,
    /// Rollups, kept longer than raw rows (downsampled history).
    pub hourly_days: i64,
    pub daily_days: i64,
    pub weekly_days: i64,
    /// How often the job runs.
    pub interval_secs: u64,
    /// Most rows one per-device `DELETE` removes (without archiving; with
    /// it, a device's day goes in one `DELETE`).
    pub delete_batch: i32,
    /// Cold storage of the raw rows retention removes.
    pub archive: ArchiveConfig,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            default_days: 365,
            // Ten years: as long as the daily and weekly rollups are kept,
            // so raw rows never outlive the longest downsampled history.
            max_days: 3_650,
            hourly_days: 730,
            daily_days: 3_650,
            weekly_days: 3_650,
            interval_secs: 3_600,
            delete_batch: 10_000,
            archive: ArchiveConfig::default(),
        }
    }
}

impl RetentionConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        for (name, days) in [
            ("default_days", self.default_days),
            ("max_days", self.max_days),
            ("hourly_days", self.hourly_days),
            ("daily_days", self.daily_days),
            ("weekly_days", self.weekly_days),
        ] {
            if !(1..=36_500).contains(&days) {
                p.push(format!("{prefix}.{name} must be in 1..=36500"));
            }
        }
        if self.max_days < self.default_days {
            p.push(format!(
                "{prefix}.max_days ({}) is less than {prefix}.default_days ({})",
                self.max_days, self.default_days
            ));
        }
        if self.interval_secs == 0 {
            p.push(format!("{prefix}.interval_secs must be positive"));
        }
        if self.delete_batch <= 0 {
            p.push(format!("{prefix}.delete_batch must be positive"));
        }
        p.extend(self.archive.problems(&format!("{prefix}.archive")));
        p
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Raw readings older than this are gone for every device.
    pub horizon_days: i64,
    pub partitions_dropped: i32,
    /// Devices trimmed to a retention shorter than the horizon.
    pub devices_trimmed: usize,
    /// Devices asking for more than `max_days`, kept `max_days`.
    pub devices_capped: usize,
    pub rows_deleted: i64,
    /// Archive files written (or rewritten) this run.
    pub files_archived: usize,
    /// Days kept although past the horizon: they changed after archiving
    /// (a late reading), and go at the next run.
    pub days_deferred: usize,
}

/// Arbitrary, fixed key of the maintenance advisory lock.
const MAINTENANCE_LOCK: i64 = 0x0107_da7a_0002;

/// One maintenance run: daily partitions ahead (plain PostgreSQL) and
/// retention as of `now`. Replicas take turns: while one runs, the others
/// skip (`None`) rather than race to create or drop the same partitions.
pub async fn maintain(
    pool: &Pool,
    backend: iot_db::Backend,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<Option<(i32, Report)>, WriterError> {
    maintain_measured(pool, backend, cfg, now, None).await
}

/// [`maintain`], counting archive work in `metrics`.
pub async fn maintain_measured(
    pool: &Pool,
    backend: iot_db::Backend,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    metrics: Option<&ArchiveMetrics>,
) -> Result<Option<(i32, Report)>, WriterError> {
    let mut client = pool.get().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let result = async {
        let created = match backend {
            iot_db::Backend::Postgres => client
                .query_one("SELECT iot_ensure_partitions(7, 14)", &[])
                .await?
                .get(0),
            iot_db::Backend::TimescaleDb => 0,
        };
        let archiver = if cfg.archive.enabled {
            Some(Archiver::new(cfg.archive.store()?, metrics.cloned()))
        } else {
            None
        };
        let report = apply(&mut client, cfg, now, archiver.as_ref()).await;
        if let (Err(e), Some(m)) = (&report, metrics) {
            m.failed(e);
        }
        Ok::<_, WriterError>((created, report?))
    }
    .await;
    // Session lock: released here, or by the server if the connection died.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await;
    let done = result?;
    unlocked?;
    Ok(Some(done))
}

/// Applies retention as of `now`, archiving first when `archiver` is set.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    archiver: Option<&Archiver>,
) -> Result<Report, WriterError> {
    let asked: Vec<(Uuid, i64)> = client
        .query(
            "SELECT device_id, retention_days FROM device_retention",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let days: Option<i32> = r.get(1);
            (r.get(0), days.map_or(cfg.default_days, i64::from))
        })
        .collect();
    let devices_capped = asked.iter().filter(|(_, d)| *d > cfg.max_days).count();
    if devices_capped > 0 {
        tracing::warn!(
            devices = devices_capped,
            max_days = cfg.max_days,
            "devices ask for a retention longer than retention.max_days; kept max_days"
        );
    }
    let devices: Vec<(Uuid, i64)> = asked
        .into_iter()
        .map(|(device, days)| (device, days.min(cfg.max_days)))
        .collect();
    let horizon_days = devices
        .iter()
        .map(|(_, d)| *d)
        .chain([cfg.default_days])
        .max()
        .unwrap_or(cfg.default_days);
    let ago = |days: i64| now - TimeDelta::days(days);
    let mut report = Report {
        horizon_days,
        devices_capped,
        ..Report::default()
    };
    let rollups = [
        ago(cfg.hourly_days),
        ago(cfg.daily_days),
        ago(cfg.weekly_days),
    ];
    if let Some(archiver) = archiver {
        let cutoff = archive::floor_day(ago(horizon_days));
        let archived = archiver.archive_before(client, cutoff).await?;
        report.files_archived += archived.files.len();
        let (dropped, deferred) = drop_archived(client, cutoff, &archived, &rollups).await?;
        report.partitions_dropped = dropped;
        report.days_deferred = deferred;
        for (device, days) in devices.iter().filter(|(_, d)| *d < horizon_days) {
            report.devices_trimmed += 1;
            let before = archive::floor_day(ago(*days));
            let archived = archiver
                .archive_device_before(client, *device, before)
                .await?;
            report.files_archived += archived.files.len();
            report.rows_deleted += delete_archived(client, *device, &archived).await?;
        }
        if let Some(m) = archiver.metrics() {
            m.lag(archive_lag(client, cutoff).await?);
        }
        return finish(client, now, report).await;
    }
    report.partitions_dropped = client
        .query_one(
            "SELECT iot_drop_expired($1, $2, $3, $4)",
            &[&ago(horizon_days), &rollups[0], &rollups[1], &rollups[2]],
        )
        .await?
        .get(0);
    let stmt = client
        .prepare("SELECT iot_delete_device_readings($1, $2, $3)")
        .await?;
    for (device, days) in devices.iter().filter(|(_, d)| *d < horizon_days) {
        report.devices_trimmed += 1;
        loop {
            let n: i32 = client
                .query_one(&stmt, &[device, &ago(*days), &cfg.delete_batch])
                .await?
                .get(0);
            report.rows_deleted += i64::from(n);
            if n < cfg.delete_batch {
                break;
            }
        }
    }
    finish(client, now, report).await
}

async fn finish(
    client: &tokio_postgres::Client,
    now: DateTime<Utc>,
    report: Report,
) -> Result<Report, WriterError> {
    client
        .execute(
            "DELETE FROM ingest_counts WHERE second < $1",
            &[&(now - TimeDelta::hours(1))],
        )
        .await?;
    Ok(report)
}

/// Drops the raw rows older than `cutoff` that `archived` holds, and the
/// expired rollups, in one transaction; returns the partitions (chunks)
/// dropped and the days kept because they changed after archiving. The
/// second half of a run ([`apply`] calls it after
/// [`Archiver::archive_before`]); public so that tests can change the
/// database between the halves.
pub async fn drop_archived(
    client: &mut tokio_postgres::Client,
    cutoff: DateTime<Utc>,
    archived: &Archived,
    rollups: &[DateTime<Utc>; 3],
) -> Result<(i32, usize), WriterError> {
    let tx = client.transaction().await?;
    tx.batch_execute(LOCK).await?;
    let mut upto = cutoff;
    let mut deferred = 0;
    for r in tx.query(COUNT_DAYS, &[&cutoff]).await? {
        let (day, n): (chrono::NaiveDate, i64) = (r.get(0), r.get(1));
        if archived.per_day.get(&day) != Some(&n) {
            tracing::info!(%day, rows = n, archived = ?archived.per_day.get(&day), "day changed since archived; kept for the next run");
            deferred += 1;
            upto = upto.min(archive::midnight(day));
        }
    }
    let dropped: i32 = tx
        .query_one(
            "SELECT iot_drop_expired($1, $2, $3, $4)",
            &[&upto, &rollups[0], &rollups[1], &rollups[2]],
        )
        .await?
        .get(0);
    tx.execute(MARK_DROPPED, &[&upto.date_naive()]).await?;
    tx.commit().await?;
    Ok((dropped, deferred))
}

/// Deletes a trimmed device's archived days, each in a transaction that
/// commits only if it deleted exactly the rows archived.
async fn delete_archived(
    client: &mut tokio_postgres::Client,
    device: Uuid,
    archived: &Archived,
) -> Result<i64, WriterError> {
    let mut deleted = 0;
    for (&(d, day), &n) in &archived.per_device_day {
        if d != device {
            continue;
        }
        let start = archive::midnight(day);
        let end = start + TimeDelta::days(1);
        let tx = client.transaction().await?;
        let gone = tx
            .execute(DELETE_DEVICE_DAY, &[&device, &start, &end])
            .await?;
        if i64::try_from(gone).ok() == Some(n) {
            tx.commit().await?;
            deleted += n;
        } else {
            tracing::info!(%device, %day, rows = gone, archived = n, "device day changed since archived; kept for the next run");
            tx.rollback().await?;
        }
    }
    Ok(deleted)
}

/// How far past `cutoff` the oldest raw reading still waiting for the
/// archive is, in seconds (0: none).
async fn archive_lag(
    client: &tokio_postgres::Client,
    cutoff: DateTime<Utc>,
) -> Result<i64, WriterError> {
    let oldest: Option<DateTime<Utc>> = client.query_one(OLDEST, &[&cutoff]).await?.get(0);
    Ok(oldest.map_or(0, |t| (cutoff - t).num_seconds()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_checked_against_the_default() {
        assert!(RetentionConfig::default().problems("retention").is_empty());
        let c = RetentionConfig {
            default_days: 400,
            max_days: 365,
            ..Default::default()
        };
        assert_eq!(
            c.problems("retention"),
            ["retention.max_days (365) is less than retention.default_days (400)"]
        );
        let c = RetentionConfig {
            max_days: 36_501,
            ..Default::default()
        };
        assert_eq!(
            c.problems("retention"),
            ["retention.max_days must be in 1..=36500"]
        );
    }
}
