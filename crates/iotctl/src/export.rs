//! `iotctl export`: one device's readings (or rollups) in a range, from the
//! archive for older days and the database for the rest, merged in time
//! order, as Parquet, CSV or JSON lines, to a file or stdout, with a
//! progress line on stderr.
//!
//! iotctl reads the database and the archive store directly, as `migrate`
//! does: an operator's tool with the platform's credentials. Owners get the
//! same through their own API (docs/design/cold-storage.md).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use ingest_writer::archive::export::{self, Format, Request, Rollup};

#[derive(clap::Args)]
pub struct Args {
    #[arg(
        long,
        env = "IOT_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/iot"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub store: crate::archive::StoreArgs,
    /// The device: its platform UUID or its external device_id.
    #[arg(long)]
    pub device: String,
    /// One sensor; all when absent.
    #[arg(long)]
    pub sensor: Option<String>,
    /// Start of the range (RFC 3339), inclusive.
    #[arg(long)]
    pub from: DateTime<Utc>,
    /// End of the range (RFC 3339), exclusive.
    #[arg(long)]
    pub to: DateTime<Utc>,
    /// parquet, csv or jsonl.
    #[arg(long, default_value = "parquet")]
    pub format: Format,
    /// Export a rollup (1h, 1d or 1w) instead of raw readings.
    #[arg(long)]
    pub rollup: Option<Rollup>,
    /// The file to write; stdout when absent.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Settings first: a wrong store fails before the output is created.
    let store = args.store.store()?;
    let client = iot_db::connect(&args.database_url).await?;
    let device = crate::archive::device_id(&client, &args.device).await?;
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let req = Request {
        device,
        sensor: args.sensor.clone(),
        from: args.from,
        to: args.to,
        format: args.format,
    };
    let progress = Arc::new(AtomicU64::new(0));
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} {human_pos} rows  {per_sec}  {elapsed}",
    )?);
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = match args.rollup {
        None => export::export_readings(&client, Some(&store), &req, out, progress.clone()).await,
        Some(width) => export::export_rollups(&client, &req, width, out, progress.clone()).await,
    };
    ticker.abort();
    let rows = result?;
    bar.finish_and_clear();
    eprintln!("exported {rows} rows");
    Ok(())
}
