//! alert-engine: consumes the readings topic in its own consumer group,
//! raises and resolves threshold alerts (`engine.rs`), owns
//! `device_alerts` and serves them over gRPC (`iot.v1.Alerts`).

mod config;
mod engine;
mod error;
mod events;
/// The alert rule language (in iot-domain: no I/O).
pub use iot_domain::expr;
mod metrics;
mod rules;
pub mod service;
pub mod thresholds;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use iot_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use iot_kafka::rdkafka::error::KafkaError;
use iot_proto::v1::alerts_server::AlertsServer;
use iot_runtime::{CancellationToken, Skeleton};
use tonic::service::Routes;

pub use config::{Config, Limits, OfflineConfig};
pub use error::AlertError;
pub use service::AlertsService;

pub const SERVICE: &str = "alert-engine";

/// A started alert-engine.
pub type Running = iot_runtime::Running;

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, AlertError> {
    let mut skeleton = Skeleton::new(SERVICE, shutdown.clone())?;
    // 15, its newest migration: the device_owners view.
    let pool = skeleton
        .database(&config.database_url, config.pool_size, 15)
        .await?;
    // Check that the readings topic is reachable before reporting ready.
    let kafka = config.kafka.clone();
    let group = config.group_id.clone();
    tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
        let c: BaseConsumer = kafka.client_config().set("group.id", &group).create()?;
        c.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(())
    })
    .await??;

    let metrics = metrics::Metrics::register(&skeleton.registry)?;
    // A reading is acknowledged only once it is evaluated.
    let stream = config.kafka.service_consumer(
        SERVICE,
        &config.group_id,
        config.instance_id.as_deref(),
        &skeleton.registry,
        &skeleton.ready,
        shutdown.clone(),
    )?;
    // A platform service: it reads every owner's device config.
    let registry_calls = iot_telemetry::grpc::GrpcClientMetrics::register(&skeleton.registry)?;
    let devices = Arc::new(engine::Devices::new(
        registry_client::measured_admin_client(
            &config.registry_url,
            &config.grpc_tls,
            &registry_calls,
        )?,
    ));
    devices.register_metrics(&skeleton.registry)?;
    {
        let (d, stop) = (devices.clone(), shutdown.clone());
        tokio::spawn(async move { d.follow_changes(stop).await });
    }
    {
        // The alerts topic is created in the background (the service starts
        // while Kafka is down); the relay publishes the outbox to it.
        let producer = config.kafka.producer(SERVICE)?;
        let (kafka, topic) = (config.kafka.clone(), config.alerts_topic.clone());
        let (pool, stop) = (pool.clone(), shutdown.clone());
        tokio::spawn(async move {
            let partitions = kafka.partitions;
            if let Err(e) = iot_kafka::ensure_topics(&kafka, &[(topic.as_str(), partitions)]).await
            {
                tracing::warn!(error = %e, "cannot create the alerts topic now");
            }
            events::relay(pool, producer, topic, stop).await;
        });
    }
    tokio::spawn(webhooks::run(
        pool.clone(),
        config.webhooks.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    skeleton.serve_admin(config.admin_addr).await?;
    let alerts = AlertsServer::new(AlertsService::new(
        pool.clone(),
        config.limits.clone(),
        shutdown.clone(),
    ));
    skeleton
        .serve_grpc(
            config.grpc_addr,
            &config.grpc_tls,
            Routes::new(alerts),
            &["iot.v1.Alerts"],
        )
        .await?;
    skeleton.ready.set(true);
    let work = engine::run(stream, pool, devices, config.offline, metrics, shutdown);
    Ok(skeleton.run((), work)?)
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AlertError> {
    Ok(start(config, shutdown).await?.wait().await?)
}
