//! The archive store: a local directory (the default, and what the tests
//! run), laid out by day and owner, Hive-style so that DuckDB and Spark
//! read a whole tree as one table:
//!
//! `readings/day=2025-01-31/owner=<uuid>/readings.parquet`
//!
//! A file is written under a temporary name, fsync'd, renamed into place
//! and its directory fsync'd: a reader (or a crash) sees the old file or the
//! new one, never half of one.
//!
//! With an S3-compatible remote (`retention.archive.store = "s3"`) the
//! directory is a staging area: a committed file is uploaded under
//! the same key (below the configured prefix), and the commit returns only
//! once the upload completed and a HEAD and a read-back of the object match
//! the local file's size and SHA-256, so the manifest row written after it
//! always names a durable object. Reads fetch the object into the
//! directory first, every time ([`LocalStore::local_copy`]).

use std::fs::{self, File};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::ArchiveError;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Where committed files go, when not only to `root`.
    remote: Option<Arc<Remote>>,
}

/// An object store the files are uploaded to, and the runtime its calls run
/// on (commits run on the file writer's blocking thread).
#[derive(Debug)]
pub struct Remote {
    store: Arc<dyn object_store::ObjectStore>,
    /// What errors call it, e.g. `s3://iot-archive/prod`.
    name: String,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

impl Remote {
    /// Calls go through `runtime` (the caller's, when it is one); `name`
    /// says which store it is in errors.
    pub fn new(
        store: Arc<dyn object_store::ObjectStore>,
        name: String,
        prefix: &str,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            store,
            name,
            prefix: prefix.trim_matches('/').to_owned(),
            runtime,
        }
    }

    fn key(&self, relative: &str) -> object_store::path::Path {
        if self.prefix.is_empty() {
            object_store::path::Path::from(relative)
        } else {
            object_store::path::Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Uploads `local` as `relative` in parts of 8 MiB (at most two in
    /// flight: memory stays bounded whatever the file's size), then checks
    /// the object against `size` and `sha256` by HEAD and a full read-back.
    async fn upload(
        &self,
        local: &Path,
        relative: &str,
        size: i64,
        sha256: &str,
    ) -> Result<(), ArchiveError> {
        use object_store::ObjectStoreExt as _;
        use tokio::io::AsyncReadExt as _;
        const PART: usize = 8 << 20;
        let key = self.key(relative);
        let upload = self.store.put_multipart(&key).await?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| ArchiveError::io(local, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| ArchiveError::io(local, e))?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(2).await?;
            w.write(&buf[..n]);
        }
        w.finish().await?;
        let head = self.store.head(&key).await?;
        let (got_size, got_sha) = self.digest(&key).await?;
        let want = u64::try_from(size).unwrap_or(u64::MAX);
        if head.size != want || got_size != want || got_sha != sha256 {
            return Err(ArchiveError::Verify {
                path: key.to_string(),
                want: format!("{size} bytes, sha256 {sha256}"),
                got: format!(
                    "HEAD {} bytes, read back {got_size} bytes, sha256 {got_sha}",
                    head.size
                ),
            });
        }
        Ok(())
    }

    /// Size and SHA-256 of the object, read back in full.
    async fn digest(&self, key: &object_store::path::Path) -> Result<(u64, String), ArchiveError> {
        use futures::StreamExt as _;
        use object_store::ObjectStoreExt as _;
        let mut stream = self.store.get(key).await?.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(bytes) = stream.next().await {
            let bytes = bytes?;
            size += bytes.len() as u64;
            hasher.update(&bytes);
        }
        Ok((size, hex(hasher)))
    }

    /// The object's size, or `None` where there is none.
    async fn size(&self, relative: &str) -> Result<Option<u64>, ArchiveError> {
        use object_store::ObjectStoreExt as _;
        match self.store.head(&self.key(relative)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Downloads the object to `local` (a temporary name, then a rename:
    /// a reader of the directory never sees half a file).
    async fn download(&self, relative: &str, local: &Path) -> Result<(), ArchiveError> {
        use futures::StreamExt as _;
        use object_store::ObjectStoreExt as _;
        use tokio::io::AsyncWriteExt as _;
        let dir = local
            .parent()
            .ok_or_else(|| ArchiveError::io(local, std::io::ErrorKind::InvalidInput.into()))?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ArchiveError::io(dir, e))?;
        let temp = dir.join(format!(".get-{}.parquet", Uuid::new_v4().simple()));
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| ArchiveError::io(&temp, e))?;
            let mut stream = self.store.get(&self.key(relative)).await?.into_stream();
            while let Some(bytes) = stream.next().await {
                file.write_all(&bytes?)
                    .await
                    .map_err(|e| ArchiveError::io(&temp, e))?;
            }
            file.sync_all()
                .await
                .map_err(|e| ArchiveError::io(&temp, e))?;
            tokio::fs::rename(&temp, local)
                .await
                .map_err(|e| ArchiveError::io(local, e))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl std::fmt::Display for LocalStore {
    /// `directory /path`, or the bucket and its staging directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.remote {
            None => write!(f, "directory {}", self.root.display()),
            Some(r) => write!(f, "{} (staging {})", r.name, self.root.display()),
        }
    }
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            remote: None,
        }
    }

    /// Files committed to `root` go to `remote` too; reads come from it.
    pub fn with_remote(root: impl Into<PathBuf>, remote: Remote) -> Self {
        Self {
            root: root.into(),
            remote: Some(Arc::new(remote)),
        }
    }

    /// The file of `relative` on the local disk, fetched from the remote
    /// store first where there is one; `None` where the store has no such
    /// file. A local copy is never trusted: another replica may have
    /// rewritten the object since (a day archived again), and a stale copy
    /// would lose the rows only the newer object holds.
    ///
    /// Errors name the store: an export or restore that cannot read it
    /// says which one it tried.
    pub async fn local_copy(&self, relative: &str) -> Result<Option<PathBuf>, ArchiveError> {
        self.fetch(relative).await.map_err(|e| ArchiveError::Store {
            store: self.to_string(),
            source: Box::new(e),
        })
    }

    async fn fetch(&self, relative: &str) -> Result<Option<PathBuf>, ArchiveError> {
        let path = self.absolute(relative);
        let Some(remote) = &self.remote else {
            return Ok(path.is_file().then_some(path));
        };
        if remote.size(relative).await?.is_none() {
            return Ok(None);
        }
        remote.download(relative, &path).await?;
        Ok(Some(path))
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
        if let Some(remote) = &self.remote {
            // On the file writer's blocking thread: waiting here is fine.
            let (size, sha256) = self.digest(relative)?;
            remote
                .runtime
                .block_on(remote.upload(&target, relative, size, &sha256))?;
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
        Ok((size, hex(hasher)))
    }

    pub fn exists(&self, relative: &str) -> bool {
        self.absolute(relative).is_file()
    }
}
