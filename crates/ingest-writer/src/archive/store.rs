//! The archive store: a local directory (the default, and what the tests
//! run), laid out by day and owner, Hive-style so that DuckDB and Spark
//! read a whole tree as one table:
//!
//! `readings/day=2025-01-31/owner=<uuid>/readings.parquet`
//!
//! A file is written under a temporary name, fsync'd, renamed into place
//! and its directory fsync'd: a reader (or a crash) sees the old file or the
//! new one, never half of one.

use std::fs::{self, File};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::ArchiveError;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the rows of `owner` on `day` live, relative to the root.
    pub fn relative(day: NaiveDate, owner: Uuid) -> String {
        format!(
            "readings/day={}/owner={}/readings.parquet",
            day.format("%Y-%m-%d"),
            owner.hyphenated()
        )
    }

    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// A new temporary file beside `relative`'s place.
    pub fn create_temp(&self, relative: &str) -> Result<(PathBuf, File), ArchiveError> {
        let target = self.absolute(relative);
        let dir = target
            .parent()
            .ok_or_else(|| ArchiveError::io(&target, std::io::ErrorKind::InvalidInput.into()))?;
        fs::create_dir_all(dir).map_err(|e| ArchiveError::io(dir, e))?;
        let temp = dir.join(format!(".tmp-{}.parquet", Uuid::new_v4().simple()));
        let file = File::create(&temp).map_err(|e| ArchiveError::io(&temp, e))?;
        Ok((temp, file))
    }

    /// Makes `temp` (written and closed) durable as `relative`.
    pub fn commit(&self, temp: &Path, relative: &str) -> Result<(), ArchiveError> {
        File::open(temp)
            .and_then(|f| f.sync_all())
            .map_err(|e| ArchiveError::io(temp, e))?;
        let target = self.absolute(relative);
        fs::rename(temp, &target).map_err(|e| ArchiveError::io(&target, e))?;
        if let Some(dir) = target.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| ArchiveError::io(dir, e))?;
        }
        Ok(())
    }

    /// Size and SHA-256 (lowercase hex) of a stored file, read back from
    /// the disk.
    pub fn digest(&self, relative: &str) -> Result<(i64, String), ArchiveError> {
        let path = self.absolute(relative);
        let mut file = File::open(&path).map_err(|e| ArchiveError::io(&path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size: i64 = 0;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ArchiveError::io(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as i64;
        }
        let hex = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((size, hex))
    }

    pub fn exists(&self, relative: &str) -> bool {
        self.absolute(relative).is_file()
    }
}
