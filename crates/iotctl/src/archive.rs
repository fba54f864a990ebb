//! `iotctl archive list|restore`: the cold-storage manifest, and archived
//! rows back into the database (restoring twice changes nothing: the
//! readings' unique key absorbs it).

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use ingest_writer::archive::{self, ArchiveConfig, LocalStore, S3Config, StoreKind};
use uuid::Uuid;

/// The archive store, chosen and set as ingest-writer's
/// `retention.archive` is (the S3 settings' variables are the writer's own,
/// so iotctl run beside it finds the same store); the store itself is the
/// writer's code. Credentials come from the `AWS_*` variables. Global, so
/// that they may follow `archive restore` too.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The archive store's root (ingest-writer's `retention.archive.dir`);
    /// with `--archive-store s3`, where files fetched from the bucket go.
    #[arg(
        long,
        global = true,
        env = "IOT_ARCHIVE_DIR",
        default_value = "/var/lib/iot-platform/archive"
    )]
    pub archive_dir: PathBuf,
    /// dir or s3 (`retention.archive.store`).
    #[arg(
        long,
        global = true,
        env = "INGEST_WRITER__RETENTION__ARCHIVE__STORE",
        default_value = "dir",
        value_parser = store_kind
    )]
    pub archive_store: StoreKind,
    #[arg(
        long,
        global = true,
        env = "INGEST_WRITER__RETENTION__ARCHIVE__S3__BUCKET"
    )]
    pub s3_bucket: Option<String>,
    /// Keys are `{prefix}/readings/day=.../owner=.../readings.parquet`.
    #[arg(
        long,
        global = true,
        env = "INGEST_WRITER__RETENTION__ARCHIVE__S3__PREFIX"
    )]
    pub s3_prefix: Option<String>,
    /// e.g. `https://minio.internal:9000`; unset: AWS (or `AWS_ENDPOINT`).
    #[arg(
        long,
        global = true,
        env = "INGEST_WRITER__RETENTION__ARCHIVE__S3__ENDPOINT"
    )]
    pub s3_endpoint: Option<String>,
    #[arg(
        long,
        global = true,
        env = "INGEST_WRITER__RETENTION__ARCHIVE__S3__REGION"
    )]
    pub s3_region: Option<String>,
    /// Plain HTTP to the endpoint.
    #[arg(
        long,
        global = true,
        env = "INGEST_WRITER__RETENTION__ARCHIVE__S3__ALLOW_HTTP"
    )]
    pub s3_allow_http: bool,
}

fn store_kind(s: &str) -> Result<StoreKind, String> {
    match s {
        "dir" => Ok(StoreKind::Dir),
        "s3" => Ok(StoreKind::S3),
        other => Err(format!(
            "unknown archive store {other:?}: expected dir or s3"
        )),
    }
}

impl StoreArgs {
    /// The store, built by ingest-writer's `ArchiveConfig::store` from these
    /// settings; must be called within a Tokio runtime.
    pub fn store(&self) -> anyhow::Result<LocalStore> {
        let cfg = ArchiveConfig {
            enabled: true,
            dir: self.archive_dir.clone(),
            store: self.archive_store,
            s3: S3Config {
                bucket: self.s3_bucket.clone().unwrap_or_default(),
                prefix: self.s3_prefix.clone().unwrap_or_default(),
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                access_key_id: None,
                secret_access_key: None,
                allow_http: self.s3_allow_http,
            },
        };
        let problems = cfg.problems("archive");
        anyhow::ensure!(
            problems.is_empty(),
            "archive store settings: {}",
            problems
                .join("; ")
                .replace("archive.s3.bucket", "--s3-bucket")
        );
        let store = cfg.store().context("archive store")?;
        Ok(store)
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(
        long,
        env = "IOT_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/iot"
    )]
    database_url: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The archive files (one per UTC day and owner), oldest first.
    List {
        /// First day (YYYY-MM-DD).
        #[arg(long, default_value = "1970-01-01")]
        from: NaiveDate,
        /// Last day (YYYY-MM-DD), inclusive.
        #[arg(long, default_value = "9999-12-31")]
        to: NaiveDate,
        #[arg(long)]
        owner: Option<Uuid>,
    },
    /// Re-import archived readings in [from, to) into the database.
    Restore {
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: DateTime<Utc>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: DateTime<Utc>,
        /// One device (platform UUID or external device_id); all when absent.
        #[arg(long)]
        device: Option<String>,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = iot_db::connect(&args.database_url).await?;
    match args.command {
        Cmd::List { from, to, owner } => {
            println!(
                "day         owner                                 rows        bytes  state     path"
            );
            for f in archive::list(&client, from, to, owner).await? {
                println!(
                    "{}  {}  {:>10}  {:>11}  {:<8}  {}",
                    f.day, f.owner, f.row_count, f.bytes, f.state, f.path
                );
            }
        }
        Cmd::Restore { from, to, device } => {
            let device = match device {
                Some(d) => Some(device_id(&client, &d).await?),
                None => None,
            };
            let store = args.store.store()?;
            let done = archive::restore::restore(&mut client, &store, from, to, device).await?;
            println!(
                "restored {} rows from {} files ({} already in the database)",
                done.rows_inserted,
                done.files,
                done.rows_read - done.rows_inserted
            );
        }
    }
    Ok(())
}

/// A device's platform UUID, from itself or its external device_id.
pub async fn device_id(client: &tokio_postgres::Client, device: &str) -> anyhow::Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(device) {
        return Ok(id);
    }
    let row = client
        .query_opt("SELECT id FROM devices WHERE device_id = $1", &[&device])
        .await?;
    row.map(|r| r.get(0))
        .with_context(|| format!("no device {device:?}"))
}
