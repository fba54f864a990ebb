//! iotctl: the operator's and developer's command line.

use iotctl::{devices, simulate};

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
    Simulate(simulate::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate {
            database_url,
            backend,
        } => {
            if iot_db::ensure_database(&database_url).await? {
                println!("created database");
            }
            let report = iot_db::migrate(&database_url, backend).await?;
            println!(
                "storage backend: {}; applied {:?}; already applied {:?}",
                report.backend, report.applied, report.already_applied
            );
        }
        Command::Status { database_url } => status(&database_url).await?,
        Command::Devices(args) => devices::run(args).await?,
        Command::Simulate(args) => simulate::run(args).await?,
    }
    Ok(())
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
