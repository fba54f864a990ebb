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

use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::WriterError;

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
    /// Most rows one per-device `DELETE` removes.
    pub delete_batch: i32,
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
    let client = pool.get().await?;
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
        Ok::<_, WriterError>((created, apply(&client, cfg, now).await?))
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

/// Applies retention as of `now`.
pub async fn apply(
    client: &tokio_postgres::Client,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
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
    let partitions_dropped: i32 = client
        .query_one(
            "SELECT iot_drop_expired($1, $2, $3, $4)",
            &[
                &ago(horizon_days),
                &ago(cfg.hourly_days),
                &ago(cfg.daily_days),
                &ago(cfg.weekly_days),
            ],
        )
        .await?
        .get(0);
    let mut report = Report {
        horizon_days,
        partitions_dropped,
        devices_capped,
        ..Report::default()
    };
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
    client
        .execute(
            "DELETE FROM ingest_counts WHERE second < $1",
            &[&(now - TimeDelta::hours(1))],
        )
        .await?;
    Ok(report)
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
