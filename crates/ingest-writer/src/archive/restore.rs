//! Restore: archived rows back into `sensor_readings`, one file per
//! transaction, through a staging table and `ON CONFLICT DO NOTHING`, so
//! restoring twice (or rows still there) changes nothing. Rollups are not
//! touched: they never lost these readings.
//!
//! Restored rows older than the retention horizon stay until the next
//! retention run, which finds them already archived (the merge keeps one
//! copy) and drops them again.

use chrono::{DateTime, TimeDelta, Utc};
use futures::pin_mut;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::format::FileRows;
use super::{ArchiveError, LocalStore, list};
use crate::store::Row;

const STAGING: &str = include_str!("../sql/restore_staging.sql");
const COPY: &str = include_str!("../sql/restore_copy.sql");
const INSERT: &str = include_str!("../sql/restore_insert.sql");
const TYPES: [Type; 6] = [
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::TEXT,
    Type::NUMERIC,
    Type::TEXT,
    Type::TEXT,
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub files: usize,
    /// Archived rows in the range.
    pub rows_read: u64,
    /// Of those, rows that were not in the database.
    pub rows_inserted: u64,
}

/// Re-imports the archived rows in `[from, to)`, of one device or all.
pub async fn restore(
    client: &mut Client,
    store: &LocalStore,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    device: Option<Uuid>,
) -> Result<Restored, ArchiveError> {
    let mut done = Restored::default();
    if to <= from {
        return Ok(done);
    }
    let last = (to - TimeDelta::microseconds(1)).date_naive();
    for file in list(client, from.date_naive(), last, None).await? {
        let Some(path) = store.local_copy(&file.path).await? else {
            return Err(ArchiveError::Missing {
                store: store.to_string(),
                path: file.path,
            });
        };
        let (tx, mut rx) = mpsc::channel::<Result<Vec<Row>, ArchiveError>>(4);
        let reader = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(4_096);
            let rows = match FileRows::open(&path) {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            for r in rows {
                match r {
                    Ok(r) if r.time < from || r.time >= to => {}
                    Ok(r) if device.is_some_and(|d| d != r.device_id) => {}
                    Ok(r) => {
                        chunk.push(r);
                        if chunk.len() == 4_096
                            && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.blocking_send(Ok(chunk));
            }
        });
        let t = client.transaction().await?;
        t.batch_execute(STAGING).await?;
        let sink = t.copy_in(COPY).await?;
        let writer = BinaryCopyInWriter::new(sink, &TYPES);
        pin_mut!(writer);
        let mut read = 0u64;
        while let Some(chunk) = rx.recv().await {
            for r in chunk? {
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
                read += 1;
            }
        }
        writer.finish().await?;
        reader
            .await
            .map_err(|e| ArchiveError::Writer(e.to_string()))?;
        let inserted = t.execute(INSERT, &[]).await?;
        t.commit().await?;
        done.files += 1;
        done.rows_read += read;
        done.rows_inserted += inserted;
    }
    Ok(done)
}
