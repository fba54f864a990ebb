//! alert-engine: consumes the readings topic in its own consumer group,
//! raises and resolves threshold alerts (`engine.rs`), owns
//! `device_alerts` and serves them over gRPC (`iot.v1.Alerts`).

mod config;
mod engine;
mod events;
/// The alert rule language (in iot-domain: no I/O).
pub use iot_domain::expr;
mod metrics;
mod rules;
pub mod service;
pub mod thresholds;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use iot_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use iot_proto::v1::alerts_server::AlertsServer;
use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use tokio::task::JoinHandle;

pub use config::{Config, OfflineConfig};
pub use service::AlertsService;

pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let pool = iot_db::pool(&config.database_url, config.pool_size)?;
    pool.get()
        .await?
        .query_one("SELECT 1 FROM schema_migrations WHERE version = 13", &[])
        .await
        .map_err(|e| anyhow::anyhow!("database is not migrated (run `iotctl migrate`): {e}"))?;
    // Check that the readings topic is reachable before reporting ready.
    let kafka = config.kafka.clone();
    let group = config.group_id.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let c: BaseConsumer = kafka.client_config().set("group.id", &group).create()?;
        c.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(())
    })
    .await??;

    let registry =
        iot_telemetry::prometheus::Registry::new_custom(Some("iot_alerts".into()), None)?;
    let metrics = metrics::Metrics::register(&registry)?;
    let grpc_metrics = iot_telemetry::grpc::GrpcMetrics::register(&registry)?;
    registry.register(Box::new(iot_db::PoolMetrics::new(pool.clone())?))?;
    // An offset is stored only once its reading is evaluated.
    let consumer = config.kafka.readings_consumer(
        "alert-engine",
        &config.group_id,
        config.instance_id.as_deref(),
        iot_kafka::ConsumerObserver::new(&registry)?,
    )?;
    let assignment = consumer.context().assignment();
    let channel = tonic::transport::Endpoint::from_shared(config.registry_url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    // A platform service: it reads every owner's device config.
    let devices = Arc::new(engine::Devices::new(
        iot_proto::v1::device_registry_client::DeviceRegistryClient::with_interceptor(
            channel,
            iot_proto::Scope::Admin,
        ),
    ));
    {
        let (d, stop) = (devices.clone(), shutdown.clone());
        tokio::spawn(async move { d.follow_changes(stop).await });
    }
    {
        // The alerts topic is created in the background (the service starts
        // while Kafka is down); the relay publishes the outbox to it.
        let producer = config.kafka.producer("alert-engine")?;
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
    let ready = Readiness::default();
    {
        let pool = pool.clone();
        ready.check("database", move || iot_db::ping(pool.clone()));
    }
    ready.check("kafka", iot_kafka::readiness_check(&config.kafka)?);
    ready.check(
        "partitions",
        iot_kafka::watch_assignment(
            config.kafka.clone(),
            config.group_id.clone(),
            assignment,
            shutdown.clone(),
        ),
    );
    let (admin_addr, admin_task) = iot_telemetry::serve_admin(
        config.admin_addr,
        iot_telemetry::admin_router(registry, ready.clone()),
        shutdown.clone(),
    )
    .await?;
    let (health, health_svc) = iot_runtime::grpc_health();
    health.set_serving::<AlertsServer<AlertsService>>().await;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let grpc_addr = listener.local_addr()?;
    let svc = AlertsService::new(pool.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        tracing::info!(%grpc_addr, %admin_addr, "alert-engine serving");
        ready.set(true);
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .trace_fn(iot_telemetry::trace::grpc_server_span)
                .layer(grpc_metrics)
                .add_service(health_svc)
                .add_service(AlertsServer::new(svc))
                .serve_with_incoming_shutdown(
                    iot_runtime::grpc_incoming(listener),
                    shutdown.clone().cancelled_owned(),
                ),
        );
        let evaluated = engine::run(
            consumer,
            pool,
            devices,
            config.offline,
            metrics,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        grpc.await??;
        evaluated?;
        ready.set(false);
        admin_task.await?;
        tracing::info!("alert-engine stopped");
        Ok(())
    });
    Ok(Running {
        grpc_addr,
        admin_addr,
        task,
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
