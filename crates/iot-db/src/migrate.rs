//! Numbered, idempotent migrations under an advisory lock, so several
//! replicas may run them at once. The storage backend (TimescaleDB or plain
//! PostgreSQL) is detected once, recorded in `platform_info`, and never
//! switched afterwards.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::Client;

/// Arbitrary, fixed key of the migration advisory lock.
const MIGRATION_LOCK: i64 = 0x0107_da7a_0001;

/// The storage backend for telemetry tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    TimescaleDb,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimescaleDb => "timescaledb",
            Self::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "timescaledb" => Ok(Self::TimescaleDb),
            "postgres" => Ok(Self::Postgres),
            other => Err(format!("unknown storage backend {other:?}")),
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// TimescaleDB when the extension is available, else PostgreSQL.
    #[default]
    Auto,
    Force(Backend),
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            other => other.parse().map(Self::Force).map_err(|_| {
                format!("unknown storage backend {other:?}: expected auto, timescaledb or postgres")
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Step {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "TimescaleDB was requested but the extension is not available on this server \
         (installed and in shared_preload_libraries)"
    )]
    TimescaleUnavailable,
    #[error("database was migrated with backend {recorded}, but {requested} was requested")]
    BackendMismatch {
        recorded: String,
        requested: Backend,
    },
}

struct Migration {
    version: i32,
    name: &'static str,
    postgres: &'static str,
    timescaledb: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        postgres: include_str!("../../../migrations/0001_registry.sql"),
        timescaledb: include_str!("../../../migrations/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "telemetry",
        postgres: include_str!("../../../migrations/0002_telemetry.postgres.sql"),
        timescaledb: include_str!("../../../migrations/0002_telemetry.timescaledb.sql"),
    },
    Migration {
        version: 3,
        name: "alerts",
        postgres: include_str!("../../../migrations/0003_alerts.sql"),
        timescaledb: include_str!("../../../migrations/0003_alerts.sql"),
    },
    Migration {
        version: 4,
        name: "rollups",
        postgres: include_str!("../../../migrations/0004_rollups.postgres.sql"),
        timescaledb: include_str!("../../../migrations/0004_rollups.timescaledb.sql"),
    },
    Migration {
        version: 5,
        name: "latest",
        postgres: include_str!("../../../migrations/0005_latest.sql"),
        timescaledb: include_str!("../../../migrations/0005_latest.sql"),
    },
    Migration {
        version: 6,
        name: "credentials",
        postgres: include_str!("../../../migrations/0006_credentials.sql"),
        timescaledb: include_str!("../../../migrations/0006_credentials.sql"),
    },
    Migration {
        version: 7,
        name: "device_changes",
        postgres: include_str!("../../../migrations/0007_device_changes.sql"),
        timescaledb: include_str!("../../../migrations/0007_device_changes.sql"),
    },
    Migration {
        version: 8,
        name: "alert_lifecycle",
        postgres: include_str!("../../../migrations/0008_alert_lifecycle.sql"),
        timescaledb: include_str!("../../../migrations/0008_alert_lifecycle.sql"),
    },
    Migration {
        version: 9,
        name: "alert_events",
        postgres: include_str!("../../../migrations/0009_alert_events.sql"),
        timescaledb: include_str!("../../../migrations/0009_alert_events.sql"),
    },
    Migration {
        version: 10,
        name: "alert_owner",
        postgres: include_str!("../../../migrations/0010_alert_owner.sql"),
        timescaledb: include_str!("../../../migrations/0010_alert_owner.sql"),
    },
    Migration {
        version: 11,
        name: "alert_rules",
        postgres: include_str!("../../../migrations/0011_alert_rules.sql"),
        timescaledb: include_str!("../../../migrations/0011_alert_rules.sql"),
    },
    Migration {
        version: 12,
        name: "webhooks",
        postgres: include_str!("../../../migrations/0012_webhooks.sql"),
        timescaledb: include_str!("../../../migrations/0012_webhooks.sql"),
    },
    Migration {
        version: 13,
        name: "rule_episodes",
        postgres: include_str!("../../../migrations/0013_rule_episodes.sql"),
        timescaledb: include_str!("../../../migrations/0013_rule_episodes.sql"),
    },
    Migration {
        version: 14,
        name: "rollup_tables",
        postgres: include_str!("../../../migrations/0014_rollup_tables.postgres.sql"),
        timescaledb: include_str!("../../../migrations/0014_rollup_tables.timescaledb.sql"),
    },
    Migration {
        version: 15,
        name: "device_owners",
        postgres: include_str!("../../../migrations/0015_device_owners.sql"),
        timescaledb: include_str!("../../../migrations/0015_device_owners.sql"),
    },
    Migration {
        version: 16,
        name: "commands",
        postgres: include_str!("../../../migrations/0016_commands.sql"),
        timescaledb: include_str!("../../../migrations/0016_commands.sql"),
    },
    Migration {
        version: 17,
        name: "desired_state",
        postgres: include_str!("../../../migrations/0017_desired_state.sql"),
        timescaledb: include_str!("../../../migrations/0017_desired_state.sql"),
    },
    Migration {
        version: 18,
        name: "alert_types",
        postgres: include_str!("../../../migrations/0018_alert_types.sql"),
        timescaledb: include_str!("../../../migrations/0018_alert_types.sql"),
    },
    Migration {
        version: 19,
        name: "archive",
        postgres: include_str!("../../../migrations/0019_archive.sql"),
        timescaledb: include_str!("../../../migrations/0019_archive.sql"),
    },
    Migration {
        version: 20,
        name: "fleet_scale",
        postgres: include_str!("../../../migrations/0020_fleet_scale.sql"),
        timescaledb: include_str!("../../../migrations/0020_fleet_scale.sql"),
    },
    Migration {
        version: 21,
        name: "in_place_updates",
        postgres: include_str!("../../../migrations/0021_in_place_updates.sql"),
        timescaledb: include_str!("../../../migrations/0021_in_place_updates.sql"),
    },
    Migration {
        version: 22,
        name: "heartbeat_statement",
        postgres: include_str!("../../../migrations/0022_heartbeat_statement.sql"),
        timescaledb: include_str!("../../../migrations/0022_heartbeat_statement.sql"),
    },
    Migration {
        version: 23,
        name: "rollup_watermark",
        postgres: include_str!("../../../migrations/0023_rollup_watermark.sql"),
        timescaledb: include_str!("../../../migrations/0023_rollup_watermark.sql"),
    },
    Migration {
        version: 24,
        name: "device_heartbeats",
        postgres: include_str!("../../../migrations/0024_device_heartbeats.sql"),
        timescaledb: include_str!("../../../migrations/0024_device_heartbeats.sql"),
    },
];

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub backend: Backend,
    pub applied: Vec<i32>,
    pub already_applied: Vec<i32>,
}

/// Applies every pending migration to the database at `url`.
pub async fn migrate(url: &str, choice: BackendChoice) -> Result<MigrationReport, MigrateError> {
    let crate::tls::Target { config, tls } =
        crate::tls::target(url).map_err(|e| MigrateError::BadUrl(e.to_string()))?;
    let (mut client, conn) = config.connect(tls).await?;
    let conn_task = tokio::spawn(conn);
    client
        .batch_execute("SET client_min_messages = warning")
        .await?;
    // Session-level lock: held across the per-migration transactions below,
    // released explicitly (and by the server if this process dies).
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(&mut client, choice).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = conn_task.await;
    let report = result?;
    unlocked?;
    Ok(report)
}

async fn migrate_locked(
    client: &mut Client,
    choice: BackendChoice,
) -> Result<MigrationReport, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INT PRIMARY KEY,
                 name       TEXT NOT NULL,
                 backend    TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );
             CREATE TABLE IF NOT EXISTS platform_info (
                 key   TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );",
        )
        .await?;
    let backend = decide_backend(client, choice).await?;
    let done: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = MigrationReport {
        backend,
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for m in MIGRATIONS {
        if done.contains(&m.version) {
            report.already_applied.push(m.version);
            continue;
        }
        let sql = match backend {
            Backend::Postgres => m.postgres,
            Backend::TimescaleDb => m.timescaledb,
        };
        let step = |source| MigrateError::Step {
            version: m.version,
            name: m.name,
            source,
        };
        let mut attempt = 1;
        loop {
            match apply(client, m, sql, backend).await {
                Ok(()) => break,
                Err(e) if attempt < STEP_ATTEMPTS && lost_a_race(&e) => {
                    tracing::warn!(
                        version = m.version,
                        name = m.name,
                        attempt,
                        error = %e,
                        "migration lost a race with a concurrent writer of the catalog; \
                         trying it again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                Err(e) => return Err(step(e)),
            }
        }
        tracing::info!(version = m.version, name = m.name, %backend, "migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}

/// How often one migration is tried when it loses a race (see
/// [`lost_a_race`]).
const STEP_ATTEMPTS: u32 = 5;

/// Errors after which the migration's transaction has rolled back and
/// trying it again can succeed: serialization failures, deadlocks, and the
/// catalog races of TimescaleDB's job scheduler, which updates a new
/// database's policy jobs while a migration drops them ("tuple
/// concurrently updated" / "deleted").
fn lost_a_race(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::T_R_SERIALIZATION_FAILURE
            || *d.code() == SqlState::T_R_DEADLOCK_DETECTED
            || d.message().starts_with("tuple concurrently")
    })
}

/// One migration and its record in `schema_migrations`, in one
/// transaction.
async fn apply(
    client: &mut Client,
    m: &Migration,
    sql: &str,
    backend: Backend,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(sql).await?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name, backend) VALUES ($1, $2, $3)",
        &[&m.version, &m.name, &backend.as_str()],
    )
    .await?;
    tx.commit().await
}

/// Whether the server can run TimescaleDB: the extension is installed and
/// preloaded (`shared_preload_libraries`). Installed alone, creating it
/// fails, so `auto` chooses plain PostgreSQL there.
pub async fn timescaledb_usable(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
                AND 'timescaledb' = ANY (string_to_array(
                    replace(current_setting('shared_preload_libraries'), ' ', ''), ','))",
            &[],
        )
        .await?
        .get(0))
}

async fn decide_backend(client: &Client, choice: BackendChoice) -> Result<Backend, MigrateError> {
    let recorded: Option<String> = client
        .query_opt(
            "SELECT value FROM platform_info WHERE key = 'storage_backend'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let available = timescaledb_usable(client).await?;
    if let Some(recorded) = recorded {
        let backend = if recorded == Backend::TimescaleDb.as_str() {
            Backend::TimescaleDb
        } else {
            Backend::Postgres
        };
        if let BackendChoice::Force(requested) = choice
            && requested != backend
        {
            return Err(MigrateError::BackendMismatch {
                recorded,
                requested,
            });
        }
        return Ok(backend);
    }
    let backend = match choice {
        BackendChoice::Auto if available => Backend::TimescaleDb,
        BackendChoice::Auto => Backend::Postgres,
        BackendChoice::Force(Backend::TimescaleDb) if !available => {
            return Err(MigrateError::TimescaleUnavailable);
        }
        BackendChoice::Force(b) => b,
    };
    client
        .execute(
            "INSERT INTO platform_info (key, value) VALUES ('storage_backend', $1)",
            &[&backend.as_str()],
        )
        .await?;
    tracing::info!(%backend, timescaledb_available = available, "storage backend chosen");
    Ok(backend)
}

/// The backend recorded at migration time, if the database was migrated.
pub async fn storage_backend(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('platform_info') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "SELECT value FROM platform_info WHERE key = 'storage_backend'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Why a service cannot use a database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Config(#[from] crate::DbError),
    #[error("database metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("database is not migrated to version {0} (run `iotctl migrate`): {1}")]
    NotMigrated(i32, String),
}

/// Fails unless the database has migration `version` applied: a service
/// checks at start for the newest migration whose tables or views it uses.
pub async fn require_version(
    pool: &deadpool_postgres::Pool,
    version: i32,
) -> Result<(), SchemaError> {
    let client = pool.get().await?;
    match client
        .query_opt(
            "SELECT 1 FROM schema_migrations WHERE version = $1",
            &[&version],
        )
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(SchemaError::NotMigrated(version, "not applied".into())),
        Err(e) => Err(SchemaError::NotMigrated(version, e.to_string())),
    }
}
