//! mqtt-gateway: subscribes to the MQTT broker, validates readings with
//! `iot_domain`, produces them to Kafka keyed by device, and writes every
//! rejected message to the dead-letter topic with its reason.
//!
//! Architecture Invariant: a QoS 1 message is acknowledged only after Kafka's
//! delivery report for the reading or its dead letter.

mod broker_check;
mod config;
pub mod directory;
mod grpc;
mod http;
mod metrics;
mod mqtt;
pub mod pipeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_kafka::DeadLetters;
use iot_proto::v1::ingest_server::IngestServer;
use iot_runtime::CancellationToken;
use iot_telemetry::Readiness;
use tokio::task::JoinHandle;

pub use config::{Config, LimitsConfig, MqttConfig, Split};

pub const SERVICE: &str = "mqtt-gateway";

pub struct Running {
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Topics are created by ingest-writer (their consumer) or by operators;
    // until they exist, produces fail as transient errors and nothing is
    // acknowledged.
    let producer = config.kafka.producer(&config.mqtt.client_id)?;
    let dead_letters = DeadLetters::new(
        producer.clone(),
        config.kafka.dead_letter_topic.clone(),
        SERVICE,
    );
    let registry =
        iot_telemetry::prometheus::Registry::new_custom(Some("iot_gateway".into()), None)?;
    let metrics = metrics::Metrics::register(&registry)?;
    let grpc_metrics = iot_telemetry::grpc::GrpcMetrics::register(&registry)?;
    let pipeline = Arc::new(pipeline::Pipeline {
        directory: directory::Directory::new(
            &config.registry_url,
            Duration::from_secs(config.device_cache_ttl_secs),
            Duration::from_secs(config.unknown_device_ttl_secs),
        )?,
        producer: producer.clone(),
        readings_topic: config.kafka.readings_topic.clone(),
        dead_letters,
        limits: config.limits.limits(),
        topics: pipeline::Topics {
            single: config.mqtt.topic_prefix.clone(),
            batch: config.mqtt.batch_topic_prefix.clone(),
            senml: config.mqtt.senml_topic_prefix.clone(),
        },
        metrics,
    });
    let ready = Readiness::default();
    ready.check("kafka", iot_kafka::readiness_check(&config.kafka)?);
    let (admin_addr, admin_task) = iot_telemetry::serve_admin(
        config.admin_addr,
        iot_telemetry::admin_router(registry, ready.clone()),
        shutdown.clone(),
    )
    .await?;
    let (http_addr, http_task) = iot_telemetry::serve_admin(
        config.http_addr,
        http::router(pipeline.clone(), config.mqtt.max_packet_bytes),
        shutdown.clone(),
    )
    .await?;
    let (health, health_svc) = iot_runtime::grpc_health();
    health
        .set_serving::<IngestServer<grpc::IngestService>>()
        .await;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let grpc_addr = listener.local_addr()?;
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(iot_telemetry::trace::grpc_server_span)
            .layer(grpc_metrics)
            .add_service(health_svc)
            .add_service(IngestServer::new(grpc::IngestService::new(
                pipeline.clone(),
            )))
            .serve_with_incoming_shutdown(
                iot_runtime::grpc_incoming(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    {
        // Cache entries of changed devices go at once, not at their TTL.
        let (p, stop) = (pipeline.clone(), shutdown.clone());
        tokio::spawn(async move { p.directory.follow_changes(stop).await });
        // Heartbeats and first-seen sensors, coalesced.
        let (p, stop) = (pipeline.clone(), shutdown.clone());
        let every = Duration::from_secs(config.activity_flush_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                let last = tokio::select! {
                    () = stop.cancelled() => true,
                    _ = tick.tick() => false,
                };
                if let Err(e) = p.directory.flush_activity().await {
                    tracing::warn!(error = %e, "cannot report device activity; keeping it");
                }
                if last {
                    return;
                }
            }
        });
    }
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let task = tokio::spawn(async move {
        tracing::info!(%admin_addr, %http_addr, %grpc_addr, "mqtt-gateway starting");
        let result = mqtt::run_subscriber(
            config.mqtt,
            pipeline,
            config.max_in_flight,
            drain,
            ready,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        // Deliver what is still queued in the producer.
        let flushed = tokio::task::spawn_blocking(move || {
            use iot_kafka::rdkafka::producer::Producer as _;
            producer.flush(drain)
        })
        .await?;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
        http_task.await?;
        grpc_task.await??;
        admin_task.await?;
        tracing::info!("mqtt-gateway stopped");
        result
    });
    Ok(Running {
        admin_addr,
        http_addr,
        grpc_addr,
        task,
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
