//! Cold storage: raw readings that retention removes are first written as
//! Parquet files (one per UTC day and owner, [`store::LocalStore`]) and
//! recorded in the manifest `archive_files`; they can be exported and
//! restored later.
//!
//! Architecture Invariant: retention removes a raw row only after a
//! durable archive file holds it. A unit of work is one (day, owner): its
//! file is rewritten as the merge of the file already there (if any) and the
//! rows in the database, so a rerun after a crash, a late reading or a
//! restore never leaves a row twice or loses one. The drop that follows
//! checks, under a lock that keeps writers out, that each day still holds
//! exactly the rows archived (`retention.rs`).
//!
//! Design: docs/design/cold-storage.md.

pub mod export;
pub mod format;
pub mod restore;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use futures::{StreamExt as _, pin_mut};
use iot_telemetry::prometheus::{IntCounter, IntGauge, Registry};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::store::Row;
use format::{FileRows, Merge, RowWriter};
pub use store::LocalStore;

const PLAN_DAY: &str = include_str!("sql/archive_plan_day.sql");
const PLAN_DEVICE: &str = include_str!("sql/archive_plan_device.sql");
const ROWS: &str = include_str!("sql/archive_rows.sql");
const UPSERT: &str = include_str!("sql/archive_upsert.sql");
const LIST: &str = include_str!("sql/archive_list.sql");

/// Rows per message from the database to the file writer's thread.
const CHUNK_ROWS: usize = 4_096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Off: retention removes raw rows without keeping a copy (as before
    /// cold storage), and its cutoffs are not rounded to whole days.
    pub enabled: bool,
    /// The archive store's root directory; with `store = "s3"` its staging
    /// area (the files are the bucket's).
    pub dir: PathBuf,
    /// Where files are kept: `dir` (the directory alone) or `s3` (an
    /// S3-compatible bucket, `s3`).
    pub store: StoreKind,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Dir,
    S3,
}

/// An S3-compatible bucket. Unset credentials, region and endpoint come
/// from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT`), or the instance's role.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Keys are `{prefix}/readings/day=.../owner=.../readings.parquet`.
    pub prefix: String,
    /// e.g. `https://minio.example:9000`; unset: AWS's own.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain HTTP to the endpoint (a store on a private network or a test).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "/var/lib/iot-platform/archive".into(),
            store: StoreKind::Dir,
            s3: S3Config::default(),
        }
    }
}

impl ArchiveConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.enabled && self.dir.as_os_str().is_empty() {
            p.push(format!(
                "{prefix}.dir must be set while archiving is enabled"
            ));
        }
        if self.store == StoreKind::S3 && self.s3.bucket.is_empty() {
            p.push(format!(
                "{prefix}.s3.bucket must be set when store = \"s3\""
            ));
        }
        p
    }

    /// The configured store. An S3 store's calls run on the current Tokio
    /// runtime, which this must be called within.
    pub fn store(&self) -> Result<LocalStore, ArchiveError> {
        match self.store {
            StoreKind::Dir => Ok(LocalStore::new(&self.dir)),
            StoreKind::S3 => {
                let c = &self.s3;
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&c.bucket)
                    .with_allow_http(c.allow_http);
                if let Some(e) = &c.endpoint {
                    // A custom endpoint (MinIO, moto, Ceph) takes the bucket
                    // in the path.
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                if let Some(r) = &c.region {
                    b = b.with_region(r);
                }
                if let Some(k) = &c.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = &c.secret_access_key {
                    b = b.with_secret_access_key(k);
                }
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| ArchiveError::Writer(e.to_string()))?;
                let mut name = format!("s3://{}/{}", c.bucket, c.prefix.trim_matches('/'));
                if let Some(e) = &c.endpoint {
                    name = format!("{name} at {e}");
                }
                let remote = store::Remote::new(Arc::new(b.build()?), name, &c.prefix, runtime);
                Ok(LocalStore::with_remote(&self.dir, remote))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("archive file column {0} is not of the archive's schema")]
    Schema(usize),
    #[error("value {0} does not fit NUMERIC(10,4)")]
    Value(Decimal),
    #[error("{path}: the manifest records it but the archive store {store} does not hold it")]
    Missing { store: String, path: String },
    #[error("archive store {store}: {source}")]
    Store {
        store: String,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("{path}: {written} rows written but its footer says {footer}")]
    Count {
        path: String,
        written: i64,
        footer: i64,
    },
    #[error("the file writer stopped: {0}")]
    Writer(String),
    #[error("output: {0}")]
    Output(std::io::Error),
    #[error("object store: {0}")]
    Remote(#[from] object_store::Error),
    #[error("{path}: the stored object is not the file written (want {want}; got {got})")]
    Verify {
        path: String,
        want: String,
        got: String,
    },
}

impl ArchiveError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Cold storage's metrics.
#[derive(Clone)]
pub struct ArchiveMetrics {
    bytes: IntCounter,
    rows: IntCounter,
    files: IntCounter,
    failures: IntCounter,
    lag: IntGauge,
}

impl ArchiveMetrics {
    pub fn register(registry: &Registry) -> Result<Self, iot_telemetry::prometheus::Error> {
        let m = Self {
            bytes: IntCounter::new(
                "iot_writer_archive_bytes_written_total",
                "Bytes of Parquet files written to the archive",
            )?,
            rows: IntCounter::new(
                "iot_writer_archive_rows_total",
                "Rows written to archive files (a rewritten file counts again)",
            )?,
            files: IntCounter::new(
                "iot_writer_archive_files_written_total",
                "Archive files written and made durable",
            )?,
            failures: IntCounter::new(
                "iot_writer_archive_failures_total",
                "Retention runs whose archiving failed (nothing was dropped)",
            )?,
            lag: IntGauge::new(
                "iot_writer_archive_lag_seconds",
                "Age past its retention of the oldest raw reading still waiting to be archived and dropped (0: none)",
            )?,
        };
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.rows.clone()))?;
        registry.register(Box::new(m.files.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        Ok(m)
    }

    fn written(&self, f: &ArchivedFile) {
        tracing::info!(day = %f.day, owner = %f.owner, rows = f.row_count, bytes = f.bytes, path = %f.path, "archive file written");
        self.bytes.inc_by(f.bytes.max(0) as u64);
        self.rows.inc_by(f.row_count.max(0) as u64);
        self.files.inc();
    }

    pub fn failed(&self, e: &dyn std::fmt::Display) {
        tracing::warn!(error = %e, "archiving failed; nothing dropped this run");
        self.failures.inc();
    }

    pub fn lag(&self, seconds: i64) {
        self.lag.set(seconds.max(0));
    }
}

/// One manifest entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedFile {
    pub day: NaiveDate,
    pub owner: Uuid,
    pub path: String,
    pub min_time: DateTime<Utc>,
    pub max_time: DateTime<Utc>,
    pub row_count: i64,
    pub bytes: i64,
    pub sha256: String,
    pub state: String,
}

impl From<&tokio_postgres::Row> for ArchivedFile {
    fn from(r: &tokio_postgres::Row) -> Self {
        Self {
            day: r.get(0),
            owner: r.get(1),
            path: r.get(2),
            min_time: r.get(3),
            max_time: r.get(4),
            row_count: r.get(5),
            bytes: r.get(6),
            sha256: r.get(7),
            state: r.get(8),
        }
    }
}

/// The manifest entries of days in `[from, to]`, of one owner or all.
pub async fn list(
    client: &Client,
    from: NaiveDate,
    to: NaiveDate,
    owner: Option<Uuid>,
) -> Result<Vec<ArchivedFile>, ArchiveError> {
    Ok(client
        .query(LIST, &[&from, &to, &owner])
        .await?
        .iter()
        .map(ArchivedFile::from)
        .collect())
}

/// The UTC midnight at or before `t`: archiving works in whole days.
pub fn floor_day(t: DateTime<Utc>) -> DateTime<Utc> {
    midnight(t.date_naive())
}

pub fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// What archiving saw of the database: rows per day and per (device, day)
/// streamed into durable files. A drop or delete goes ahead only where the
/// database still holds exactly these counts.
#[derive(Debug, Default, Clone)]
pub struct Archived {
    pub per_day: BTreeMap<NaiveDate, i64>,
    pub per_device_day: HashMap<(Uuid, NaiveDate), i64>,
    pub files: Vec<ArchivedFile>,
}

/// The archiver of one store.
#[derive(Clone)]
pub struct Archiver {
    store: LocalStore,
    metrics: Option<ArchiveMetrics>,
}

struct Unit {
    day: NaiveDate,
    owner: Uuid,
    devices: Vec<Uuid>,
}

impl Archiver {
    pub fn new(store: LocalStore, metrics: Option<ArchiveMetrics>) -> Self {
        Self { store, metrics }
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    pub fn metrics(&self) -> Option<&ArchiveMetrics> {
        self.metrics.as_ref()
    }

    /// Archives every raw row older than `cutoff` (a UTC midnight).
    pub async fn archive_before(
        &self,
        client: &Client,
        cutoff: DateTime<Utc>,
    ) -> Result<Archived, ArchiveError> {
        let plan = client.query(PLAN_DAY, &[&cutoff]).await?;
        self.archive_plan(client, &plan).await
    }

    /// Archives one device's raw rows older than `cutoff` (a UTC midnight).
    pub async fn archive_device_before(
        &self,
        client: &Client,
        device: Uuid,
        cutoff: DateTime<Utc>,
    ) -> Result<Archived, ArchiveError> {
        let plan = client.query(PLAN_DEVICE, &[&device, &cutoff]).await?;
        self.archive_plan(client, &plan).await
    }

    async fn archive_plan(
        &self,
        client: &Client,
        plan: &[tokio_postgres::Row],
    ) -> Result<Archived, ArchiveError> {
        // Rows come ordered by day, owner, device.
        let mut units: Vec<Unit> = Vec::new();
        for r in plan {
            let (day, owner, device): (NaiveDate, Uuid, Uuid) = (r.get(0), r.get(1), r.get(2));
            match units.last_mut() {
                Some(u) if u.day == day && u.owner == owner => u.devices.push(device),
                _ => units.push(Unit {
                    day,
                    owner,
                    devices: vec![device],
                }),
            }
        }
        let mut done = Archived::default();
        for unit in units {
            let (file, counts) = self.archive_unit(client, &unit).await?;
            for (device, n) in counts {
                *done.per_day.entry(unit.day).or_default() += n;
                done.per_device_day.insert((device, unit.day), n);
            }
            if let Some(file) = file {
                done.files.push(file);
            }
        }
        Ok(done)
    }

    /// Writes the file of one (day, owner): the merge of the file already
    /// there and the rows of `devices` on that day in the database; makes
    /// it durable, checks it and records it in the manifest. Returns the
    /// manifest entry and the rows per device read from the database.
    async fn archive_unit(
        &self,
        client: &Client,
        unit: &Unit,
    ) -> Result<(Option<ArchivedFile>, HashMap<Uuid, i64>), ArchiveError> {
        let relative = LocalStore::relative(unit.day, unit.owner);
        let recorded = list(client, unit.day, unit.day, Some(unit.owner)).await?;
        let existing = if let Some(path) = self.store.local_copy(&relative).await? {
            Some(path)
        } else if recorded.is_empty() {
            None
        } else {
            // Overwriting it would lose the rows only the missing file held.
            return Err(ArchiveError::Missing {
                store: self.store.to_string(),
                path: relative,
            });
        };
        let (tx, rx) = mpsc::channel::<Chunk>(4);
        let store = self.store.clone();
        let rel = relative.clone();
        let writer = tokio::task::spawn_blocking(move || {
            write_merged(&store, &rel, existing.as_deref(), rx)
        });
        let start = midnight(unit.day);
        let end = start + TimeDelta::days(1);
        let counts = send_rows(client, &[&start, &end, &unit.devices], tx).await;
        let written = writer
            .await
            .map_err(|e| ArchiveError::Writer(e.to_string()))?;
        // The query's own error first: the writer's only says it was cut
        // short (and left no file).
        let counts = counts?;
        let written = written?;
        let Some(w) = written else {
            return Ok((None, counts));
        };
        let (bytes, sha256) = self.store.digest(&relative)?;
        let file = ArchivedFile {
            day: unit.day,
            owner: unit.owner,
            path: relative,
            min_time: w.min_time,
            max_time: w.max_time,
            row_count: w.rows,
            bytes,
            sha256,
            state: "archived".into(),
        };
        client
            .execute(
                UPSERT,
                &[
                    &file.day,
                    &file.owner,
                    &file.path,
                    &file.min_time,
                    &file.max_time,
                    &file.row_count,
                    &file.bytes,
                    &file.sha256,
                ],
            )
            .await?;
        if let Some(m) = &self.metrics {
            m.written(&file);
        }
        Ok((Some(file), counts))
    }
}

/// A message from the database to a file writer's thread: rows, or the
/// error that ended the query (the writer then abandons its file rather
/// than commit a partial one).
pub type Chunk = Result<Vec<Row>, ArchiveError>;

/// Streams the rows of `devices` in `[start, end)` to the writer, a chunk
/// at a time; returns the rows sent per device.
async fn send_rows(
    client: &Client,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    tx: mpsc::Sender<Chunk>,
) -> Result<HashMap<Uuid, i64>, ArchiveError> {
    let mut counts: HashMap<Uuid, i64> = HashMap::new();
    let sent = async {
        let stmt = client.prepare(ROWS).await?;
        let rows = client.query_raw(&stmt, params.iter().copied()).await?;
        pin_mut!(rows);
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        while let Some(r) = rows.next().await {
            let r = Row::from(&r?);
            *counts.entry(r.device_id).or_default() += 1;
            chunk.push(r);
            if chunk.len() == CHUNK_ROWS {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
                if tx.send(Ok(full)).await.is_err() {
                    // The writer stopped; its error is the one to report.
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(chunk)).await;
        }
        Ok::<_, ArchiveError>(())
    }
    .await;
    match sent {
        Ok(()) => Ok(counts),
        Err(e) => {
            let _ = tx
                .send(Err(ArchiveError::Writer(format!("query ended: {e}"))))
                .await;
            Err(e)
        }
    }
}

/// Rows arriving over a channel, for a blocking thread.
pub struct Received {
    rx: mpsc::Receiver<Chunk>,
    current: std::vec::IntoIter<Row>,
}

impl Received {
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            current: Vec::new().into_iter(),
        }
    }
}

impl Iterator for Received {
    type Item = Result<Row, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.current.next() {
                return Some(Ok(r));
            }
            match self.rx.blocking_recv()? {
                Ok(rows) => self.current = rows.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

struct Written {
    rows: i64,
    min_time: DateTime<Utc>,
    max_time: DateTime<Utc>,
}

/// The blocking half of `archive_unit`: merges, writes under a temporary
/// name, makes it durable, and checks the footer's row count.
fn write_merged(
    store: &LocalStore,
    relative: &str,
    existing: Option<&Path>,
    rx: mpsc::Receiver<Chunk>,
) -> Result<Option<Written>, ArchiveError> {
    let old: Box<dyn Iterator<Item = Result<Row, ArchiveError>>> = match existing {
        Some(path) => Box::new(FileRows::open(path)?),
        None => Box::new(std::iter::empty()),
    };
    let (temp, file) = store.create_temp(relative)?;
    let result = (|| {
        let mut w = RowWriter::new(BufWriter::with_capacity(1 << 20, file))?;
        let mut range: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        // The database's rows first: where both hold a key they are equal
        // (stored rows never change), and the database's copy is current.
        for r in Merge::new(Received::new(rx), old) {
            let r = r?;
            range = Some(match range {
                None => (r.time, r.time),
                Some((lo, hi)) => (lo.min(r.time), hi.max(r.time)),
            });
            w.push(&r)?;
        }
        let rows = w.rows() as i64;
        let mut out = w.finish()?;
        out.flush().map_err(|e| ArchiveError::io(&temp, e))?;
        drop(out);
        let Some((min_time, max_time)) = range else {
            return Ok(None);
        };
        store.commit(&temp, relative)?;
        let footer = format::footer_rows(&store.absolute(relative))?;
        if footer != rows {
            return Err(ArchiveError::Count {
                path: relative.into(),
                written: rows,
                footer,
            });
        }
        Ok(Some(Written {
            rows,
            min_time,
            max_time,
        }))
    })();
    if !matches!(result, Ok(Some(_))) {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_s3_store_needs_its_bucket_and_keeps_its_secret() {
        let c: ArchiveConfig =
            serde_json::from_value(serde_json::json!({"store": "s3", "s3": {"region": "x"}}))
                .unwrap();
        assert_eq!(c.store, StoreKind::S3);
        assert_eq!(
            c.problems("retention.archive"),
            vec!["retention.archive.s3.bucket must be set when store = \"s3\"".to_owned()]
        );
        assert!(
            serde_json::from_value::<ArchiveConfig>(serde_json::json!({"store": "gcs"})).is_err()
        );
        assert_eq!(ArchiveConfig::default().store, StoreKind::Dir);
        let c = ArchiveConfig {
            s3: S3Config {
                secret_access_key: Some("hunter2".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_query_cut_short_leaves_no_file() {
        let dir =
            std::env::temp_dir().join(format!("iot-archive-unit-{}", Uuid::new_v4().simple()));
        let store = LocalStore::new(&dir);
        let day = NaiveDate::from_ymd_opt(2025, 1, 31).unwrap();
        let relative = LocalStore::relative(day, Uuid::nil());
        let row = Row {
            time: midnight(day),
            device_id: Uuid::nil(),
            sensor_name: "t".into(),
            value: Decimal::ONE,
            unit: None,
            quality: None,
        };
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(vec![row])).unwrap();
        tx.try_send(Err(ArchiveError::Writer("query ended".into())))
            .unwrap();
        drop(tx);
        let written = write_merged(&store, &relative, None, rx);
        assert!(
            matches!(written, Err(ArchiveError::Writer(_))),
            "{:?}",
            written.err()
        );
        // Neither the file nor its temporary.
        let parent = store.absolute(&relative).parent().unwrap().to_owned();
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
