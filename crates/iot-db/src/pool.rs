//! Connection pools and database creation.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("database URL names no database")]
    NoDatabase,
    #[error("invalid database name {0:?}: use letters, digits and underscores")]
    BadName(String),
    #[error("cannot build connection pool: {0}")]
    Pool(String),
    #[error("database error: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// `e` and the errors under it: tokio-postgres leaves the cause out of its
/// message ("error performing TLS handshake", and not which certificate
/// failed how).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A pool of at most `max_size` connections to `url`.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    pool_with(url, max_size, PoolLimits::default())
}

/// How long a pool's callers wait and its statements run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// The most a caller waits for a free connection (`None`: until one is
    /// free). Past it, `get` fails with `PoolError::Timeout(Wait)`.
    pub wait: Option<Duration>,
    /// The server cancels a statement that runs longer (PostgreSQL's
    /// `statement_timeout`, SQLSTATE 57014).
    pub statement_timeout: Option<Duration>,
}

/// [`pool`] with `limits`.
pub fn pool_with(url: &str, max_size: usize, limits: PoolLimits) -> Result<Pool, DbError> {
    let crate::tls::Target { mut config, tls } = crate::tls::target(url)?;
    let cfg = &mut config;
    if let Some(t) = limits.statement_timeout {
        let timeout = format!("-c statement_timeout={}", t.as_millis());
        let options = match cfg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {timeout}"),
            _ => timeout,
        };
        cfg.options(&options);
    }
    let mgr = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(limits.wait)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Whether a statement was cancelled by the pool's `statement_timeout`.
pub fn is_statement_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
}

/// Creates the database that `url` names if it does not exist, connecting to
/// the `postgres` maintenance database of the same server. Returns whether it
/// was created.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let crate::tls::Target { config: cfg, tls } = crate::tls::target(url)?;
    let name = cfg.get_dbname().ok_or(DbError::NoDatabase)?.to_owned();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(DbError::BadName(name));
    }
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(tls).await?;
    let conn_task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    let mut created = false;
    if !exists {
        // The name was checked above to be a plain identifier.
        match client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
        {
            Ok(()) => created = true,
            // Another replica created it between our check and our CREATE.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = conn_task.await;
    Ok(created)
}

/// A readiness check: the database answers `SELECT 1` through the pool.
pub async fn ping(pool: Pool) -> Result<(), String> {
    let c = pool.get().await.map_err(|e| e.to_string())?;
    c.query_one("SELECT 1", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The pool's usage, read at each scrape: `iot_db_pool_connections` by
/// state (`in_use`, `idle`), `iot_db_pool_max_connections` and
/// `iot_db_pool_waiting` (callers waiting for a connection), each labelled
/// with the pool's name (`pool`: `main`, or `queries` for a service that
/// keeps a pool of its own for API queries).
pub struct PoolMetrics {
    pool: Pool,
    connections: prometheus::IntGaugeVec,
    max: prometheus::IntGauge,
    waiting: prometheus::IntGauge,
}

impl PoolMetrics {
    pub fn new(pool: Pool, name: &str) -> prometheus::Result<Self> {
        let opts = |metric: &str, help: &str| {
            prometheus::Opts::new(metric, help).const_label("pool", name)
        };
        Ok(Self {
            pool,
            connections: prometheus::IntGaugeVec::new(
                opts("iot_db_pool_connections", "Database connections by state"),
                &["state"],
            )?,
            max: prometheus::IntGauge::with_opts(opts(
                "iot_db_pool_max_connections",
                "The most connections the pool opens",
            ))?,
            waiting: prometheus::IntGauge::with_opts(opts(
                "iot_db_pool_waiting",
                "Callers waiting for a database connection",
            ))?,
        })
    }
}

impl prometheus::core::Collector for PoolMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.connections.desc();
        d.extend(self.max.desc());
        d.extend(self.waiting.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let s = self.pool.status();
        let idle = i64::try_from(s.available).unwrap_or(0);
        let size = i64::try_from(s.size).unwrap_or(0);
        self.connections
            .with_label_values(&["in_use"])
            .set(size - idle);
        self.connections.with_label_values(&["idle"]).set(idle);
        self.max.set(i64::try_from(s.max_size).unwrap_or(0));
        self.waiting.set(i64::try_from(s.waiting).unwrap_or(0));
        let mut out = self.connections.collect();
        out.extend(self.max.collect());
        out.extend(self.waiting.collect());
        out
    }
}

/// The pool of a service that owns tables, wired the one way every such
/// service is: at most `max_size` connections to `url`, refused unless
/// migration `min_version` (the newest whose tables or views the service
/// uses) is applied, its usage exported in `registry`, and a `database`
/// check in `ready`.
pub async fn service_pool(
    url: &str,
    max_size: usize,
    min_version: i32,
    registry: &prometheus::Registry,
    ready: &iot_telemetry::Readiness,
) -> Result<Pool, crate::SchemaError> {
    let pool = pool(url, max_size)?;
    crate::require_version(&pool, min_version).await?;
    registry.register(Box::new(PoolMetrics::new(pool.clone(), "main")?))?;
    let checked = pool.clone();
    ready.check("database", move || ping(checked.clone()));
    Ok(pool)
}

/// A service's database settings, checked: every problem, for its config's
/// `Validate`.
pub fn settings_problems(database_url: &str, pool_size: usize) -> Vec<String> {
    let mut p = Vec::new();
    match crate::tls::parse(database_url) {
        Err(e) => p.push(format!("database_url: {e}")),
        Ok((config, _, _)) => {
            if config
                .get_password()
                .is_some_and(|pw| pw.starts_with(b"change-me"))
            {
                p.push(
                    "database_url: the password is a placeholder (change-me...): set one of your own"
                        .into(),
                );
            }
        }
    }
    if pool_size == 0 {
        p.push("pool_size must be at least 1".into());
    }
    p
}

/// Whether a query failed because the database cannot be reached (the
/// connection is gone, the server shuts down or refuses connections now),
/// rather than because of the query.
pub fn is_unreachable(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            let class = &c.code()[..2];
            // Connection exception, insufficient resources, shutdown.
            class == "08" || class == "53" || c.code().starts_with("57P")
        })
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// One connection to `url` (TLS as its `sslmode` says), driven in the
/// background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let crate::tls::Target { config, tls } = crate::tls::target(url)?;
    let (client, conn) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}
