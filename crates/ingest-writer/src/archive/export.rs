//! Export: one device's readings in a range (optionally one sensor), from
//! the archive for older days and the database for the rest, merged in time
//! order with one row per key, written as Parquet, CSV or JSON lines; or its
//! rollups from the database. Streams: memory stays bounded by a few
//! batches whatever the range.

use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures::{StreamExt as _, pin_mut};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use uuid::Uuid;

use super::format::{self, FileRows, Merge, RowWriter};
use super::{ArchiveError, Chunk, LocalStore, Received, list};
use crate::rollup::Level;
use crate::store::Row;

const READINGS: &str = include_str!("../sql/export_readings.sql");
const OWNER: &str = include_str!("../sql/device_owner.sql");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
    Jsonl,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "jsonl" => Ok(Self::Jsonl),
            other => Err(format!(
                "unknown format {other:?}: expected parquet, csv or jsonl"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub device: Uuid,
    pub sensor: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub format: Format,
}

type Rows = Box<dyn Iterator<Item = Result<Row, ArchiveError>> + Send>;

/// Writes the readings `req` asks for to `out`; returns the rows written.
/// `progress` counts rows as they are written.
pub async fn export_readings(
    client: &Client,
    store: Option<&LocalStore>,
    req: &Request,
    out: Box<dyn Write + Send>,
    progress: Arc<AtomicU64>,
) -> Result<u64, ArchiveError> {
    // The archive files that may hold the device: its owner's, and those of
    // devices without one (a deleted device's readings).
    let mut files: Vec<(chrono::NaiveDate, std::path::PathBuf)> = Vec::new();
    if let Some(store) = store
        && req.to > req.from
    {
        let owner: Uuid = client
            .query_opt(OWNER, &[&req.device])
            .await?
            .map_or(Uuid::nil(), |r| r.get(0));
        let last = (req.to - TimeDelta::microseconds(1)).date_naive();
        for f in list(client, req.from.date_naive(), last, None).await? {
            if f.owner == owner || f.owner.is_nil() {
                let Some(path) = store.local_copy(&f.path).await? else {
                    return Err(ArchiveError::Missing {
                        store: store.to_string(),
                        path: f.path,
                    });
                };
                files.push((f.day, path));
            }
        }
    }
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    let req2 = req.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let archived = archived_rows(files, &req2)?;
        let rows = Merge::new(Received::new(rx), archived);
        write_rows(rows, req2.format, out, &progress)
    });
    let sent = send_readings(client, req, tx).await;
    let written = writer
        .await
        .map_err(|e| ArchiveError::Writer(e.to_string()))?;
    // The query's own error first: the writer's only says it was cut short.
    sent?;
    written
}

/// The archived rows of the request, in order: the files of a day merged,
/// the days one after another.
fn archived_rows(
    files: Vec<(chrono::NaiveDate, std::path::PathBuf)>,
    req: &Request,
) -> Result<Rows, ArchiveError> {
    let mut days: Vec<Rows> = Vec::new();
    let mut current: Option<(chrono::NaiveDate, Rows)> = None;
    for (day, path) in files {
        let (device, sensor, from, to) = (req.device, req.sensor.clone(), req.from, req.to);
        let rows: Rows = Box::new(FileRows::open(&path)?.filter(move |r| match r {
            Ok(r) => {
                r.device_id == device
                    && r.time >= from
                    && r.time < to
                    && sensor.as_ref().is_none_or(|s| *s == r.sensor_name)
            }
            Err(_) => true,
        }));
        current = Some(match current.take() {
            Some((d, acc)) if d == day => (d, Box::new(Merge::new(acc, rows))),
            Some((_, acc)) => {
                days.push(acc);
                (day, rows)
            }
            None => (day, rows),
        });
    }
    days.extend(current.map(|(_, rows)| rows));
    Ok(Box::new(days.into_iter().flatten()))
}

async fn send_readings(
    client: &Client,
    req: &Request,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), ArchiveError> {
    let sent = send_readings_inner(client, req, &tx).await;
    if let Err(e) = &sent {
        // The writer stops too, with an error, rather than finish a file
        // that looks complete.
        let _ = tx
            .send(Err(ArchiveError::Writer(format!("query ended: {e}"))))
            .await;
    }
    sent
}

async fn send_readings_inner(
    client: &Client,
    req: &Request,
    tx: &mpsc::Sender<Chunk>,
) -> Result<(), ArchiveError> {
    let stmt = client.prepare(READINGS).await?;
    let rows = client
        .query_raw(
            &stmt,
            [
                &req.device as &(dyn tokio_postgres::types::ToSql + Sync),
                &req.sensor,
                &req.from,
                &req.to,
            ],
        )
        .await?;
    pin_mut!(rows);
    let mut chunk = Vec::with_capacity(4_096);
    while let Some(r) = rows.next().await {
        chunk.push(Row::from(&r?));
        if chunk.len() == 4_096 && tx.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
    Ok(())
}

fn write_rows(
    rows: impl Iterator<Item = Result<Row, ArchiveError>>,
    format: Format,
    out: Box<dyn Write + Send>,
    progress: &AtomicU64,
) -> Result<u64, ArchiveError> {
    let mut n = 0u64;
    let tick = |n: u64| {
        if n.is_multiple_of(4_096) {
            progress.store(n, Ordering::Relaxed);
        }
    };
    match format {
        Format::Parquet => {
            let mut w = RowWriter::new(std::io::BufWriter::with_capacity(1 << 20, out))?;
            for r in rows {
                w.push(&r?)?;
                n += 1;
                tick(n);
            }
            w.finish()?.flush().map_err(ArchiveError::Output)?;
        }
        Format::Csv | Format::Jsonl => {
            let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
            if format == Format::Csv {
                w.write_all(b"time,device_id,sensor_name,value,unit,quality\n")
                    .map_err(ArchiveError::Output)?;
            }
            let mut line = String::new();
            for r in rows {
                let r = r?;
                line.clear();
                if format == Format::Csv {
                    csv_line(&mut line, &r);
                } else {
                    json_line(&mut line, &r);
                }
                w.write_all(line.as_bytes()).map_err(ArchiveError::Output)?;
                n += 1;
                tick(n);
            }
            w.flush().map_err(ArchiveError::Output)?;
        }
    }
    progress.store(n, Ordering::Relaxed);
    Ok(n)
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A CSV field, quoted (RFC 4180) where it needs to be.
fn field(line: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        line.push('"');
        line.push_str(&s.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(s);
    }
}

/// One CSV record.
pub fn csv_line(line: &mut String, r: &Row) {
    line.push_str(&time_text(r.time));
    line.push(',');
    line.push_str(&r.device_id.to_string());
    line.push(',');
    field(line, &r.sensor_name);
    line.push(',');
    line.push_str(&r.value.to_string());
    line.push(',');
    field(line, r.unit.as_deref().unwrap_or(""));
    line.push(',');
    field(line, r.quality.as_deref().unwrap_or(""));
    line.push('\n');
}

/// One JSON object per line; the value as a string, to keep its scale.
pub fn json_line(line: &mut String, r: &Row) {
    let v = serde_json::json!({
        "time": time_text(r.time),
        "device_id": r.device_id,
        "sensor_name": r.sensor_name,
        "value": r.value.to_string(),
        "unit": r.unit,
        "quality": r.quality,
    });
    line.push_str(&v.to_string());
    line.push('\n');
}

/// Rollup widths an export can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    Hour,
    Day,
    Week,
}

impl FromStr for Rollup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1h" => Ok(Self::Hour),
            "1d" => Ok(Self::Day),
            "1w" => Ok(Self::Week),
            other => Err(format!("unknown rollup {other:?}: expected 1h, 1d or 1w")),
        }
    }
}

/// Writes a device's rollup rows in `[from, to)` as CSV, JSON lines or Parquet
/// (rollups stay in the database: they outlive raw rows).
pub async fn export_rollups(
    client: &Client,
    req: &Request,
    width: Rollup,
    mut out: Box<dyn Write + Send>,
    progress: Arc<AtomicU64>,
) -> Result<u64, ArchiveError> {
    let level = match width {
        Rollup::Hour => Level::Hour,
        Rollup::Day => Level::Day,
        Rollup::Week => Level::Week,
    };
    let sql = level.fill(include_str!("../sql/export_rollup.sql"));
    let rows = client
        .query_raw(
            sql.as_str(),
            [
                &req.device as &(dyn tokio_postgres::types::ToSql + Sync),
                &req.sensor,
                &req.from,
                &req.to,
            ],
        )
        .await?;
    pin_mut!(rows);
    let csv = match req.format {
        Format::Csv => true,
        Format::Jsonl => false,
        Format::Parquet => return rollups_as_parquet(rows, out, progress).await,
    };
    if csv {
        out.write_all(b"bucket,device_id,sensor_name,readings,sum_value,min_value,max_value\n")
            .map_err(ArchiveError::Output)?;
    }
    let mut n = 0u64;
    while let Some(r) = rows.next().await {
        let r = r?;
        let (bucket, device, sensor, readings, sum, min, max): (
            DateTime<Utc>,
            Uuid,
            String,
            i64,
            rust_decimal::Decimal,
            rust_decimal::Decimal,
            rust_decimal::Decimal,
        ) = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        );
        let line = if csv {
            let mut s = String::new();
            field(&mut s, &sensor);
            format!(
                "{},{device},{s},{readings},{sum},{min},{max}\n",
                time_text(bucket)
            )
        } else {
            let v = serde_json::json!({
                "bucket": time_text(bucket),
                "device_id": device,
                "sensor_name": sensor,
                "readings": readings,
                "sum_value": sum.to_string(),
                "min_value": min.to_string(),
                "max_value": max.to_string(),
            });
            format!("{v}\n")
        };
        out.write_all(line.as_bytes())
            .map_err(ArchiveError::Output)?;
        n += 1;
        progress.store(n, Ordering::Relaxed);
    }
    out.flush().map_err(ArchiveError::Output)?;
    Ok(n)
}

/// [`export_rollups`] as Parquet ([`format::rollup_schema`]).
async fn rollups_as_parquet(
    rows: std::pin::Pin<&mut tokio_postgres::RowStream>,
    out: Box<dyn Write + Send>,
    progress: Arc<AtomicU64>,
) -> Result<u64, ArchiveError> {
    let mut rows = rows;
    let mut writer = format::RollupWriter::new(out)?;
    let mut n = 0u64;
    while let Some(r) = rows.next().await {
        let r = r?;
        writer.push(&format::RollupRow {
            bucket: r.get(0),
            device_id: r.get(1),
            sensor_name: r.get(2),
            readings: r.get(3),
            sum_value: r.get(4),
            min_value: r.get(5),
            max_value: r.get(6),
        })?;
        n += 1;
        progress.store(n, Ordering::Relaxed);
    }
    writer.finish()?.flush().map_err(ArchiveError::Output)?;
    Ok(n)
}
