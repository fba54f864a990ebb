//! `iotctl archive list|restore`: the cold-storage manifest, and archived
//! rows back into the database (restoring twice changes nothing: the
//! readings' unique key absorbs it).

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use ingest_writer::archive::{self, LocalStore};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[arg(
        long,
        env = "IOT_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/iot"
    )]
    database_url: String,
    /// The archive store's root (ingest-writer's `retention.archive.dir`).
    #[arg(
        long,
        env = "IOT_ARCHIVE_DIR",
        default_value = "/var/lib/iot-platform/archive"
    )]
    archive_dir: PathBuf,
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
            let store = LocalStore::new(&args.archive_dir);
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
