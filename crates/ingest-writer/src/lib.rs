//! ingest-writer: consumes readings from Kafka and batches them into
//! `sensor_readings`; owns the telemetry tables and serves them over gRPC
//! (`iot.v1.Telemetry`).
//!
//! Architecture Invariant: a Kafka offset is stored only after the
//! transaction holding its reading has committed (`consumer.rs`
//! acknowledges a batch's records to `iot_kafka::ReadingsStream` once the
//! batch is written).

mod admission;
pub mod archive;
mod config;
pub mod consumer;
mod error;
pub mod latest;
mod metrics;
pub mod retention;
pub mod rollup;
pub mod seal;
mod service;
pub mod store;

use std::time::Duration;

use iot_kafka::DeadLetters;
use iot_proto::v1::telemetry_server::TelemetryServer;
use iot_runtime::{CancellationToken, Skeleton};
use tonic::service::Routes;

pub use config::{Config, QueryLimits};
pub use error::WriterError;
pub use service::{METRICS_PART, TelemetryService};
pub use store::Store;

pub const SERVICE: &str = "ingest-writer";

/// A started ingest-writer.
pub type Running = iot_runtime::Running;

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, WriterError> {
    let mut skeleton = Skeleton::new(SERVICE, shutdown.clone())?;
    // 23, its newest migration: the rollup watermark.
    let pool = skeleton
        .database(&config.database_url, config.pool_size, 23)
        .await?;
    let backend = {
        let client = pool.get().await?;
        iot_db::storage_backend(&client)
            .await?
            .ok_or(WriterError::NotMigrated)?
    };
    let backend = backend
        .parse::<iot_db::Backend>()
        .map_err(WriterError::Backend)?;
    let queries = skeleton.query_pool(
        &config.database_url,
        config.queries.pool_size,
        config.queries.pool_limits(),
    )?;
    let store = Store::with_query_pool(pool.clone(), queries);
    {
        // In the background: the service starts (and makes no progress)
        // while Kafka is down.
        let kafka = config.kafka.clone();
        tokio::spawn(async move { kafka.try_ensure_topics().await });
    }
    // Records are acknowledged only after the database commit.
    let stream = config.kafka.service_consumer(
        SERVICE,
        &config.group_id,
        config.instance_id.as_deref(),
        &skeleton.registry,
        &skeleton.ready,
        shutdown.clone(),
    )?;
    let producer = config.kafka.producer(SERVICE)?;
    let dead_letters = DeadLetters::new(producer, config.kafka.dead_letter_topic.clone(), SERVICE);
    let metrics = metrics::Metrics::register(&skeleton.registry)?;
    let archive_metrics = archive::ArchiveMetrics::register(&skeleton.registry)?;
    skeleton.serve_admin(config.admin_addr).await?;
    let telemetry = TelemetryServer::new(
        TelemetryService::new(store.clone(), &config.queries)
            .with_archive(config.retention.archive.store()?),
    );
    skeleton
        .serve_grpc(
            config.grpc_addr,
            &config.grpc_tls,
            Routes::new(telemetry),
            &["iot.v1.Telemetry"],
        )
        .await?;

    tokio::spawn(maintenance(
        pool.clone(),
        backend,
        config.retention.clone(),
        archive_metrics,
        shutdown.clone(),
    ));
    tokio::spawn(seal::run(
        pool.clone(),
        Duration::from_secs(config.seal_grace_secs),
        Duration::from_secs(config.seal_interval_secs),
        store.sealed().clone(),
        shutdown.clone(),
    ));
    if backend == iot_db::Backend::TimescaleDb {
        let failed = iot_telemetry::prometheus::IntGauge::new(
            "iot_writer_timescale_failed_jobs",
            "TimescaleDB background jobs (compression and other policies) whose last run failed",
        )?;
        skeleton.registry.register(Box::new(failed.clone()))?;
        tokio::spawn(watch_timescale_jobs(pool.clone(), failed, shutdown.clone()));
    }

    let settings = consumer::BatchSettings {
        max_rows: config.batch_max_rows,
        max_wait: Duration::from_millis(config.batch_max_wait_ms),
        writes_in_flight: config.batch_writes_in_flight,
    };
    tracing::info!(%backend, "storage backend");
    skeleton.ready.set(true);
    let work = consumer::run(stream, store, dead_letters, settings, metrics, shutdown);
    Ok(skeleton.run((), work)?)
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WriterError> {
    Ok(start(config, shutdown).await?.wait().await?)
}

/// Counts TimescaleDB jobs whose last run failed, every minute, and logs
/// them: a scheduler that fails its jobs (compression, say) is otherwise
/// silent.
async fn watch_timescale_jobs(
    pool: deadpool_postgres::Pool,
    failed: iot_telemetry::prometheus::IntGauge,
    shutdown: CancellationToken,
) {
    const FAILED_JOBS: &str = "SELECT j.job_id, j.proc_name, s.total_failures
         FROM timescaledb_information.jobs j
         JOIN timescaledb_information.job_stats s USING (job_id)
         WHERE s.last_run_status = 'Failed'";
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let rows = match pool.get().await {
            Ok(client) => client.query(FAILED_JOBS, &[]).await,
            Err(e) => {
                tracing::debug!(error = %e, "cannot check TimescaleDB jobs now");
                continue;
            }
        };
        match rows {
            Ok(rows) => {
                for r in &rows {
                    let (id, name, failures): (i32, String, i64) = (r.get(0), r.get(1), r.get(2));
                    tracing::warn!(job_id = id, job = %name, failures, "TimescaleDB job failed its last run");
                }
                failed.set(i64::try_from(rows.len()).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(error = %e, "cannot check TimescaleDB jobs now"),
        }
    }
}

/// Keeps daily partitions prepared ahead of time (plain PostgreSQL backend)
/// and applies retention, every `retention.interval_secs`.
async fn maintenance(
    pool: deadpool_postgres::Pool,
    backend: iot_db::Backend,
    retention: retention::RetentionConfig,
    archive_metrics: archive::ArchiveMetrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(retention.interval_secs));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now();
        match retention::maintain_measured(&pool, backend, &retention, now, Some(&archive_metrics))
            .await
        {
            Ok(Some((created, r))) => tracing::info!(
                partitions_created = created,
                horizon_days = r.horizon_days,
                partitions_dropped = r.partitions_dropped,
                devices_trimmed = r.devices_trimmed,
                rows_deleted = r.rows_deleted,
                files_archived = r.files_archived,
                days_deferred = r.days_deferred,
                "maintenance done"
            ),
            Ok(None) => tracing::debug!("maintenance running in another replica"),
            Err(e) => tracing::warn!(error = %e, "maintenance failed"),
        }
    }
}
