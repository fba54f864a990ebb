//! iotctl: the operator's and developer's command line.

use iotctl::{archive, devices, export, simulate};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "iotctl", version, about = "Operate the IoT telemetry platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed and apply pending migrations (safe to
    /// run from several replicas at once).
    Migrate {
        #[arg(
            long,
            env = "IOT_DATABASE_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432/iot"
        )]
        database_url: String,
        /// auto (TimescaleDB when available), timescaledb or postgres.
        #[arg(long, env = "IOT_STORAGE_BACKEND", default_value = "auto")]
        backend: iot_db::BackendChoice,
        /// How long to keep trying while the database cannot be reached
        /// (a server still starting), with a growing pause; 0: try once.
        #[arg(long, env = "IOT_MIGRATE_WAIT_SECS", default_value_t = 120)]
        wait_secs: u64,
    },
    /// Show the schema version and the storage backend.
    Status {
        #[arg(
            long,
            env = "IOT_DATABASE_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432/iot"
        )]
        database_url: String,
    },
    /// Manage devices through device-registry.
    Devices(devices::Args),
    /// Publish readings from a simulated fleet over MQTT.
    Simulate(Box<simulate::Args>),
    /// Export a device's readings (database and archive) as Parquet, CSV
    /// or JSON lines.
    Export(export::Args),
    /// The cold-storage archive: list its files, restore readings.
    Archive(archive::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate {
            database_url,
            backend,
            wait_secs,
        } => {
            let report = migrate(&database_url, backend, wait_secs).await?;
            println!(
                "storage backend: {}; applied {:?}; already applied {:?}",
                report.backend, report.applied, report.already_applied
            );
        }
        Command::Status { database_url } => status(&database_url).await?,
        Command::Devices(args) => devices::run(args).await?,
        Command::Simulate(args) => simulate::run(*args).await?,
        Command::Export(args) => export::run(args).await?,
        Command::Archive(args) => archive::run(args).await?,
    }
    Ok(())
}

/// Creates the database when missing and applies every pending migration,
/// trying again with a growing pause (up to 5 s) for `wait_secs` while the
/// server cannot be reached; any other failure ends it at once.
async fn migrate(
    url: &str,
    backend: iot_db::BackendChoice,
    wait_secs: u64,
) -> anyhow::Result<iot_db::MigrationReport> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    let mut pause = std::time::Duration::from_millis(250);
    loop {
        let attempt = async {
            if iot_db::ensure_database(url).await? {
                println!("created database");
            }
            Ok::<_, anyhow::Error>(iot_db::migrate(url, backend).await?)
        };
        match attempt.await {
            Ok(report) => return Ok(report),
            Err(e) if unreachable(&e) && std::time::Instant::now() + pause < deadline => {
                eprintln!("database not reachable yet ({e}); trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `e` says the server cannot be reached (rather than refusing
/// what was asked).
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .is_some_and(iot_db::is_unreachable)
            || c.is::<std::io::Error>()
    })
}

async fn status(url: &str) -> anyhow::Result<()> {
    let client = iot_db::connect(url).await?;
    let backend = iot_db::storage_backend(&client).await?;
    let Some(backend) = backend else {
        println!("database not migrated (run `iotctl migrate`)");
        return Ok(());
    };
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let devices: i64 = client
        .query_one("SELECT count(*) FROM devices", &[])
        .await?
        .get(0);
    let readings: i64 = client
        .query_one("SELECT count(*) FROM sensor_readings", &[])
        .await?
        .get(0);
    println!("storage backend: {backend}");
    println!("migrations applied: {versions:?}");
    println!("devices: {devices}");
    println!("readings: {readings}");
    Ok(())
}
